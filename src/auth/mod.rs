//! Credentials: the role to assume, its external ID, and renewal ahead of expiry.
//!
//! A leaf module: base credentials come from aws-config's default chain; when a role
//! is given, [`StsSource`] assumes it through STS with the external ID, and
//! [`renew::RenewingCredentials`] keeps the result fresh for the S3 client.

pub mod keys;
pub mod renew;
pub mod secret;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::sts::AssumeRoleProvider;
use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::provider::error::CredentialsError;

pub use self::keys::{BaseCredentials, StaticKeys};
pub use self::renew::CredentialStatus;
pub use self::secret::{Secret, read_secret_file};
use crate::logging::error_chain;
use crate::startup::{Kind, StartError};

/// The role a volume is reached through.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RoleOptions {
    pub role_arn: String,
    pub external_id: Option<Secret>,
    pub session_name: String,
    pub duration: Duration,
    /// STS endpoint, for STS-compatible servers; AWS_ENDPOINT_URL_STS also works.
    pub sts_endpoint_url: Option<String>,
}

/// The AWS configuration a volume starts from, with `--region` applied: the
/// default chain (environment, shared files, web identity, container and
/// instance metadata), from a profile if one is named; without the shared files
/// when `base` says so; or signing with static keys.
pub async fn load_base_config(
    region: Option<&str>,
    base: &BaseCredentials,
) -> aws_config::SdkConfig {
    use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_string()));
    }
    if !base.reads_shared_files() {
        // An empty file in place of ~/.aws/config and ~/.aws/credentials (and of
        // AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE): nothing a profile says is
        // read, and nothing it names is run.
        loader = loader.profile_files(
            EnvConfigFiles::builder()
                .with_contents(EnvConfigFileKind::Config, "")
                .build(),
        );
    }
    match base {
        BaseCredentials::Profile(profile) => loader = loader.profile_name(profile),
        BaseCredentials::Keys(keys) => loader = loader.credentials_provider(keys.credentials()),
        BaseCredentials::Chain | BaseCredentials::ChainWithoutSharedFiles => {}
    }
    loader.load().await
}

/// The credentials a volume signs with, renewed ahead of expiry for as long as the
/// process lives: the role's when one is given (assumed over the default chain),
/// else the default chain's own (which may itself assume a role from a profile, or
/// use a web identity token). Static keys are used as they are. The error says
/// what to check, never a secret.
pub async fn volume_credentials(
    role: Option<&RoleOptions>,
    renew_before: Duration,
    base: &aws_config::SdkConfig,
) -> Result<renew::RenewingCredentials, StartError> {
    let config = renew::RenewConfig {
        renew_before,
        ..renew::RenewConfig::default()
    };
    let clock = Arc::new(renew::SystemClock);
    let Some(role) = role else {
        let chain = base.credentials_provider().ok_or_else(|| {
            StartError::new(Kind::Denied, "no AWS credential provider is configured")
        })?;
        let (credentials, _task) = renew::RenewingCredentials::start(
            Arc::new(ProviderSource(chain)),
            config,
            clock,
            "the default credential chain".into(),
        )
        .await
        .map_err(|cause| {
            // Instance or container credentials that never answered are an
            // endpoint to reach; anything else, credentials to give.
            let kind = match cause.cause {
                renew::FetchCause::Unreachable => Kind::Unreachable,
                _ => Kind::Denied,
            };
            StartError::new(
                kind,
                format!(
                    "no usable AWS credentials: {cause}. Set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, pick a profile with --profile, or run where \
                     instance or container credentials are available"
                ),
            )
        })?;
        return Ok(credentials);
    };
    let mut sts_config = base.clone();
    if let Some(url) = &role.sts_endpoint_url {
        sts_config = sts_config.into_builder().endpoint_url(url).build();
    }
    if sts_config.region().is_none() {
        // STS is global; any region reaches it (and local servers ignore it).
        sts_config = sts_config
            .into_builder()
            .region(aws_config::Region::new("us-east-1"))
            .build();
    }
    // The provider signs each AssumeRole with base credentials it fetches anew
    // (no cache), so a web identity token file is re-read at every renewal.
    let mut builder = AssumeRoleProvider::builder(&role.role_arn)
        .session_name(&role.session_name)
        .session_length(role.duration)
        .configure(&sts_config);
    if let Some(id) = &role.external_id {
        builder = builder.external_id(id.expose());
    }
    let source = ProviderSource(SharedCredentialsProvider::new(builder.build().await));
    let label = format!("role {} (session {})", role.role_arn, role.session_name);
    let (credentials, _task) =
        renew::RenewingCredentials::start(Arc::new(source), config, clock, label)
            .await
            .map_err(|e| explain_role_failure(role, &e))?;
    Ok(credentials)
}

/// Why the role could not be assumed, as the user should read it: only a
/// refusal from STS is about the external ID or the trust policy.
fn explain_role_failure(role: &RoleOptions, e: &renew::FetchError) -> StartError {
    let arn = &role.role_arn;
    let (kind, message) = match e.cause {
        renew::FetchCause::Unreachable => {
            let sts = role
                .sts_endpoint_url
                .as_deref()
                .unwrap_or("the AWS STS endpoint");
            let message = format!(
                "cannot reach STS at {sts} to assume role {arn}: {e}. Check \
                 --sts-endpoint-url (or AWS_ENDPOINT_URL_STS), that the endpoint is up, and \
                 the network between here and it"
            );
            (Kind::Unreachable, message)
        }
        renew::FetchCause::Denied => {
            let hint = if role.external_id.is_some() {
                "check that the external ID matches the one in the role's trust policy, and \
                 that the trust policy names the principal s3vol runs as"
            } else {
                "if the role's trust policy requires an external ID, give it with \
                 --external-id-file (or --external-id); check that the trust policy names \
                 the principal s3vol runs as"
            };
            let message =
                format!("STS refused to let these credentials assume role {arn}: {e}. {hint}");
            (Kind::Denied, message)
        }
        renew::FetchCause::Other => (
            Kind::Other,
            format!(
                "cannot assume role {arn}: {e}. Check the role ARN, --region and the base \
                 credentials (--profile, AWS_* variables)"
            ),
        ),
    };
    StartError::new(kind, message)
}

/// A session name that says who is reading: `s3vol-HOSTNAME`.
pub fn default_session_name() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    session_name(&format!("s3vol-{host}"))
}

/// `text` cut to what STS accepts as a session name (2-64 characters of
/// letters, digits and `+=,.@-`; anything else becomes `-`).
pub fn session_name(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
}

/// Fetches from an SDK credentials provider on every renewal.
struct ProviderSource(SharedCredentialsProvider);

#[async_trait]
impl renew::CredentialSource for ProviderSource {
    async fn fetch(&self) -> Result<Credentials, renew::FetchError> {
        self.0
            .provide_credentials()
            .await
            .map_err(|e| renew::FetchError {
                cause: cause_of(&e),
                message: error_chain(&e),
            })
    }
}

/// What kind of failure a credentials provider met: STS's own answer, read from
/// the error it carries, tells a refusal from an endpoint that never answered.
fn cause_of(e: &CredentialsError) -> renew::FetchCause {
    use aws_sdk_sts::error::ProvideErrorMetadata;
    use aws_sdk_sts::operation::assume_role::AssumeRoleError;
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use aws_smithy_runtime_api::client::result::SdkError;
    if matches!(e, CredentialsError::ProviderTimedOut(_)) {
        return renew::FetchCause::Unreachable;
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(sdk) = cause.downcast_ref::<SdkError<AssumeRoleError, HttpResponse>>() {
            return match sdk {
                SdkError::TimeoutError(_) => renew::FetchCause::Unreachable,
                SdkError::DispatchFailure(failure) if failure.is_io() || failure.is_timeout() => {
                    renew::FetchCause::Unreachable
                }
                // Not sent for another reason: the base credentials the
                // request is signed with failed (a web identity or a profile
                // refused). What they met says more.
                SdkError::DispatchFailure(_) => base_cause(cause),
                // Some STS-compatible servers send an error body the SDK cannot
                // read; a 403 says "refused" all the same.
                SdkError::ServiceError(context)
                    if context.err().code().is_some_and(refuses_credentials)
                        || context.raw().status().as_u16() == 403 =>
                {
                    renew::FetchCause::Denied
                }
                _ => renew::FetchCause::Other,
            };
        }
        source = cause.source();
    }
    renew::FetchCause::Other
}

/// The cause the base credentials' own failure under `e` gives, if they failed.
fn base_cause(e: &(dyn std::error::Error + 'static)) -> renew::FetchCause {
    let mut source = e.source();
    while let Some(cause) = source {
        if let Some(base) = cause.downcast_ref::<CredentialsError>() {
            return match cause_of(base) {
                renew::FetchCause::Other => renew::FetchCause::Denied,
                known => known,
            };
        }
        source = cause.source();
    }
    renew::FetchCause::Other
}

/// STS's codes for credentials it will not take: refused, unknown, expired or
/// badly signed.
fn refuses_credentials(code: &str) -> bool {
    matches!(
        code,
        "AccessDenied"
            | "ExpiredToken"
            | "ExpiredTokenException"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "InvalidAccessKeyId"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sts::operation::assume_role::AssumeRoleError;
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use aws_smithy_runtime_api::client::result::SdkError;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn sts_answer(status: u16, code: &str) -> CredentialsError {
        let error = AssumeRoleError::generic(ErrorMetadata::builder().code(code).build());
        let response = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        CredentialsError::provider_error(SdkError::service_error(error, response))
    }

    /// STS's refusals of the credentials themselves, at whatever status, are
    /// refusals: a volume that cannot start for them says PermissionDenied.
    #[test]
    fn sts_refusing_the_credentials_is_a_refusal_whatever_the_status() {
        for code in [
            "AccessDenied",
            "ExpiredTokenException",
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
        ] {
            assert_eq!(
                cause_of(&sts_answer(400, code)),
                renew::FetchCause::Denied,
                "{code}"
            );
        }
        assert_eq!(cause_of(&sts_answer(403, "Odd")), renew::FetchCause::Denied);
        assert_eq!(
            cause_of(&sts_answer(400, "MalformedPolicyDocument")),
            renew::FetchCause::Other
        );
        let unreached = CredentialsError::provider_timed_out(Duration::from_secs(5));
        assert_eq!(cause_of(&unreached), renew::FetchCause::Unreachable);
    }
}

//! Credentials: the role to assume, its external ID, and renewal ahead of expiry.
//!
//! A leaf module: base credentials come from aws-config's default chain; when a role
//! is given, [`StsSource`] assumes it through STS with the external ID, and
//! [`renew::RenewingCredentials`] keeps the result fresh for the S3 client.

pub mod renew;
pub mod secret;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::sts::AssumeRoleProvider;
use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use tokio::task::JoinHandle;

pub use self::secret::Secret;
use crate::store::s3::error_chain;

/// The role a volume is reached through.
#[derive(Clone, Debug)]
pub struct RoleOptions {
    pub role_arn: String,
    pub external_id: Option<Secret>,
    pub session_name: String,
    pub duration: Duration,
    pub renew_before: Duration,
    /// STS endpoint, for STS-compatible servers; AWS_ENDPOINT_URL_STS also works.
    pub sts_endpoint_url: Option<String>,
}

/// The AWS default configuration chain (environment, shared files, web identity,
/// container and instance metadata), with `--region` and `--profile` applied.
pub async fn load_base_config(
    region: Option<&str>,
    profile: Option<&str>,
) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_string()));
    }
    if let Some(profile) = profile {
        loader = loader.profile_name(profile);
    }
    loader.load().await
}

/// Assumes `role` and starts renewing its credentials. The returned task renews
/// until aborted. The error says what to check, never a secret.
pub async fn assume_role(
    role: &RoleOptions,
    base: &aws_config::SdkConfig,
) -> Result<(SharedCredentialsProvider, JoinHandle<()>), String> {
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
    let source = Arc::new(StsSource::new(role, &sts_config).await);
    let label = format!("role {} (session {})", role.role_arn, role.session_name);
    let config = renew::RenewConfig {
        renew_before: role.renew_before,
        ..renew::RenewConfig::default()
    };
    let (credentials, task) =
        renew::RenewingCredentials::start(source, config, Arc::new(renew::SystemClock), label)
            .await
            .map_err(|cause| {
                let hint = if role.external_id.is_some() {
                    "check that the external ID matches the one in the role's trust policy, and \
                     that the trust policy names the principal s3vol runs as"
                } else {
                    "if the role's trust policy requires an external ID, give it with \
                     --external-id-file (or --external-id); check that the trust policy names \
                     the principal s3vol runs as"
                };
                format!("cannot assume role {}: {cause}. {hint}", role.role_arn)
            })?;
    Ok((SharedCredentialsProvider::new(credentials), task))
}

/// A session name that says who is reading: `s3vol-HOSTNAME`, cut to what STS
/// accepts (2-64 characters of letters, digits and `+=,.@-`).
pub fn default_session_name() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let clean: String = format!("s3vol-{host}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    clean
}

/// Assumes the role through STS on every fetch, over the base credentials (which
/// aws-config reloads each time, so a web identity token file is re-read).
pub struct StsSource {
    provider: AssumeRoleProvider,
}

impl StsSource {
    pub async fn new(role: &RoleOptions, base: &aws_config::SdkConfig) -> Self {
        let mut builder = AssumeRoleProvider::builder(&role.role_arn)
            .session_name(&role.session_name)
            .session_length(role.duration)
            .configure(base);
        if let Some(id) = &role.external_id {
            builder = builder.external_id(id.expose());
        }
        Self {
            provider: builder.build().await,
        }
    }
}

#[async_trait]
impl renew::CredentialSource for StsSource {
    async fn fetch(&self) -> Result<Credentials, String> {
        self.provider
            .provide_credentials()
            .await
            .map_err(|e| error_chain(&e))
    }
}

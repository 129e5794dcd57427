//! Credentials: the role to assume, its external ID, and renewal ahead of expiry.
//!
//! A leaf module: base credentials come from aws-config's default chain; when a role
//! is given, [`StsSource`] assumes it through STS with the external ID, and
//! [`renew::RenewingCredentials`] keeps the result fresh for the S3 client.

pub mod renew;
pub mod secret;

use async_trait::async_trait;
use aws_config::sts::AssumeRoleProvider;
use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;

pub use self::secret::Secret;
use crate::store::s3::error_chain;

/// The role a volume is reached through.
#[derive(Clone, Debug)]
pub struct RoleOptions {
    pub role_arn: String,
    pub external_id: Option<Secret>,
    pub session_name: String,
    pub duration: std::time::Duration,
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

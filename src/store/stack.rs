//! The store a volume or a command talks to, assembled in one place.
//!
//! From the top, a mounted volume's store is: [`retry::RetryingStore`] (failed
//! requests sent again within `--io-timeout`), [`counted::CountedStore`] (every
//! request sent, each retry included, counted for `s3vol stats`),
//! [`expiry::RenewOnExpiry`] (an ExpiredToken answer renews the credentials and
//! sends the request once more) and [`s3::S3Store`], signing with credentials
//! that `auth` renews ahead of expiry. The start-up probes and the one-shot
//! commands use the same stack without the counting: they are not the volume's
//! traffic.

use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;

use super::counted::{CountedStore, RequestStats};
use super::expiry::RenewOnExpiry;
use super::retry::{RetryPolicy, RetryingStore};
use super::s3::{S3Options, S3Store};
use super::{Encryption, ObjectStore};
use crate::auth::{self, RoleOptions};
use crate::startup::StartError;

/// Where S3 is, and the credentials to reach it with.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Connection {
    /// The bucket's region (default: the AWS configuration's, else us-east-1).
    pub region: Option<String>,
    /// An S3-compatible endpoint instead of AWS's.
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    /// Where the base credentials come from (a role is assumed with them).
    pub base: auth::BaseCredentials,
    /// Server-side encryption asked for on every upload and copy.
    pub encryption: Option<Encryption>,
    /// How long a failing or silent request is retried before it fails.
    pub io_timeout: Duration,
    /// The role to assume, if any.
    pub role: Option<RoleOptions>,
    /// Credentials are renewed when this much of their lifetime is left.
    pub renew_before: Duration,
    /// Sign upload payloads: the endpoint is plain http beyond this host, with
    /// no TLS to keep the bytes from being changed on the way.
    pub sign_payloads: bool,
}

/// How a store's credentials stand: renewals, expiry, a failing renewal.
pub type CredentialState = Arc<dyn Fn() -> auth::CredentialStatus + Send + Sync>;

/// How many HEADs a store sent and read without the SDK's request pipeline,
/// and how many of their answers it sent again through the SDK.
pub type HeadsWithoutTheSdk = Arc<dyn Fn() -> (u64, u64) + Send + Sync>;

/// The stores of a mounted volume.
pub struct VolumeStack {
    /// For the start-up probes: retried, not counted.
    pub probe: Arc<dyn ObjectStore>,
    /// The volume's own: retried and counted.
    pub store: Arc<dyn ObjectStore>,
    /// What `store` has sent.
    pub requests: Arc<RequestStats>,
    pub credentials: CredentialState,
    /// The AWS configuration with the volume's renewed credentials, for the
    /// other services a volume uses (KMS, for client-side encryption).
    pub sdk: aws_config::SdkConfig,
    /// What `s3vol stats` says of the HEADs sent without the SDK.
    pub heads_without_the_sdk: HeadsWithoutTheSdk,
}

/// A store signing with renewed credentials, and the configuration that
/// shares them.
struct Connected {
    store: Arc<dyn ObjectStore>,
    credentials: CredentialState,
    sdk: aws_config::SdkConfig,
    heads_without_the_sdk: HeadsWithoutTheSdk,
}

impl Connection {
    /// The endpoint as messages name it.
    pub fn endpoint(&self) -> String {
        self.endpoint_url
            .clone()
            .unwrap_or_else(|| "the AWS S3 endpoint".to_string())
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::within(self.io_timeout)
    }

    fn retrying(&self, store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(RetryingStore::new(store, self.retry_policy()))
    }

    /// The S3 store for `bucket`, signing with the role's or the default chain's
    /// credentials, renewed ahead of expiry by a task that lives as long as the
    /// runtime, and retrying a request once with new ones when S3 calls them
    /// expired. The error says what to check.
    async fn connect(&self, bucket: &str) -> Result<Connected, StartError> {
        let base = auth::load_base_config(self.region.as_deref(), &self.base).await;
        let credentials =
            auth::volume_credentials(self.role.as_ref(), self.renew_before, &base).await?;
        let shared = SharedCredentialsProvider::new(credentials.clone());
        let sdk = base
            .to_builder()
            .credentials_provider(shared.clone())
            .build();
        let options = S3Options {
            endpoint_url: self.endpoint_url.clone(),
            force_path_style: self.force_path_style,
            credentials: Some(shared),
            encryption: self.encryption.clone(),
            stall_timeout: Some(self.retry_policy().stall_timeout()),
            sign_payloads: self.sign_payloads,
        };
        let s3 = Arc::new(S3Store::from_sdk_config(bucket, &base, &options));
        let credentials = Arc::new(credentials);
        let state: CredentialState = {
            let credentials = credentials.clone();
            Arc::new(move || credentials.status())
        };
        let heads_without_the_sdk: HeadsWithoutTheSdk = {
            let s3 = s3.clone();
            Arc::new(move || s3.heads_without_the_sdk())
        };
        Ok(Connected {
            store: Arc::new(RenewOnExpiry::new(s3, credentials)),
            credentials: state,
            sdk,
            heads_without_the_sdk,
        })
    }

    /// The store of a one-shot command (`check`, `cleanup`, a CSI controller
    /// call): retried, not counted; and the AWS configuration with the same
    /// credentials, renewed for as long as either is held.
    pub async fn command_store(
        &self,
        bucket: &str,
    ) -> Result<(Arc<dyn ObjectStore>, aws_config::SdkConfig), StartError> {
        let connected = self.connect(bucket).await?;
        Ok((self.retrying(connected.store), connected.sdk))
    }

    /// The stores of a volume on `bucket`.
    pub async fn volume_stack(&self, bucket: &str) -> Result<VolumeStack, StartError> {
        let Connected {
            store,
            credentials,
            sdk,
            heads_without_the_sdk,
        } = self.connect(bucket).await?;
        let probe = self.retrying(store.clone());
        // Counted below the retries, so the statistics show every request sent.
        let counted = CountedStore::new(store);
        let requests = counted.stats();
        Ok(VolumeStack {
            probe,
            store: self.retrying(Arc::new(counted)),
            requests,
            credentials,
            sdk,
            heads_without_the_sdk,
        })
    }
}

//! The seam between the filesystem and encryption: how a volume keeps a
//! file's content in its object.
//!
//! The filesystem holds one [`Codec`] and asks it what a file shows of an
//! object, how to open a version for reading (a [`Decryption`]: plaintext and
//! the verdict on its tag) and how to seal a new object's bytes (a
//! [`ContentKey`] that encrypts and hashes each part, and a [`Tagger`] that
//! makes the tag from the parts' hashes). [`Plain`] keeps content as it is;
//! [`VolumeEncryption`] encrypts it in the S3 Encryption Client's format.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::envelope::Envelope;
use super::gcm::{MAX_CONTENT, TAG_LEN};
use super::reading::VersionId;
use super::volume::{Content, VolumeEncryption};
use crate::store::{ObjectHeaders, ObjectInfo};

pub use super::envelope::ContentKey;
pub use super::gcm::{Piece, Tagger};
pub use super::reading::{Decryption, Verdict};
pub use super::volume::CseError;

/// Why a version cannot be opened for reading.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The volume does not read it (see [`CseError::is_refusal`]), or KMS
    /// would not unwrap its key.
    #[error(transparent)]
    Refused(#[from] CseError),
    /// What S3 says of it cannot be true of an object the codec wrote.
    #[error("{0}")]
    Impossible(String),
}

/// A version of an object to open: its key, ETag and the size its file
/// shows.
#[derive(Clone, Copy, Debug)]
pub struct Version<'a> {
    pub key: &'a str,
    pub etag: &'a str,
    pub size: u64,
}

/// How a volume keeps file content in objects.
#[async_trait]
pub trait Codec: Send + Sync + std::fmt::Debug + 'static {
    /// Whether content is encrypted. What is kept beside it (a link's
    /// target, an extended attribute) would be stored in clear, and a URL's
    /// holder would get ciphertext: an encrypting volume refuses those.
    fn encrypts(&self) -> bool;

    /// The size a file shows of the object `info` describes.
    fn shown_size(&self, info: &ObjectInfo) -> u64;

    /// The length in S3 of a file of `size` bytes.
    fn stored_size(&self, size: u64) -> u64;

    /// The most content one object may hold.
    fn max_content(&self) -> u64;

    /// Whether bytes of a version are released only once it is
    /// authenticated (but to a sequential read from its start).
    fn authenticates_first(&self) -> bool;

    /// How the stored bytes of `version`, whose HEAD gave `headers`, become
    /// its content: `None` when they are its content.
    async fn open(
        &self,
        version: Version<'_>,
        headers: &ObjectHeaders,
    ) -> Result<Option<Decryption>, OpenError>;

    /// What a new object carrying `headers` is stored with, and the key that
    /// seals its bytes (`None`: they are stored as they are).
    async fn seal(
        &self,
        headers: ObjectHeaders,
    ) -> Result<(ObjectHeaders, Option<ContentKey>), CseError>;

    /// What an object's user metadata says of its encryption, for `s3vol
    /// info`: `None` when it is not client-side encrypted.
    fn describe(&self, metadata: &BTreeMap<String, String>) -> Option<String> {
        match Envelope::read(metadata) {
            Ok(Some(envelope)) => Some(format!(
                "S3 Encryption Client format {:?}, context {}",
                envelope.format,
                serde_json::to_string(&envelope.context).expect("strings serialize")
            )),
            Ok(None) => None,
            Err(e) => Some(format!(
                "S3 Encryption Client metadata that cannot be used: {e}"
            )),
        }
    }
}

/// Content kept as it is.
#[derive(Debug, Default)]
pub struct Plain;

#[async_trait]
impl Codec for Plain {
    fn encrypts(&self) -> bool {
        false
    }

    fn shown_size(&self, info: &ObjectInfo) -> u64 {
        info.size
    }

    fn stored_size(&self, size: u64) -> u64 {
        size
    }

    fn max_content(&self) -> u64 {
        u64::MAX
    }

    fn authenticates_first(&self) -> bool {
        false
    }

    async fn open(
        &self,
        _: Version<'_>,
        _: &ObjectHeaders,
    ) -> Result<Option<Decryption>, OpenError> {
        Ok(None)
    }

    async fn seal(
        &self,
        headers: ObjectHeaders,
    ) -> Result<(ObjectHeaders, Option<ContentKey>), CseError> {
        Ok((headers, None))
    }
}

#[async_trait]
impl Codec for VolumeEncryption {
    fn encrypts(&self) -> bool {
        true
    }

    fn shown_size(&self, info: &ObjectInfo) -> u64 {
        self.plain_size(info)
    }

    fn stored_size(&self, size: u64) -> u64 {
        size + TAG_LEN as u64
    }

    fn max_content(&self) -> u64 {
        MAX_CONTENT
    }

    fn authenticates_first(&self) -> bool {
        VolumeEncryption::authenticates_first(self)
    }

    /// One KMS Decrypt of the version's data key; its verdict starts from
    /// what the volume knows of it.
    async fn open(
        &self,
        version: Version<'_>,
        headers: &ObjectHeaders,
    ) -> Result<Option<Decryption>, OpenError> {
        let (key, envelope) = match VolumeEncryption::open(self, headers).await? {
            Content::Encrypted { key, envelope } => (key, envelope),
            Content::Plain => return Ok(None),
        };
        let id = VersionId {
            key: version.key.into(),
            etag: version.etag.into(),
            envelope,
        };
        self.decryption(key, version.size, id)
            .map(Some)
            .map_err(|e| OpenError::Impossible(e.to_string()))
    }

    /// A data key of its own from KMS, its envelope in the metadata.
    async fn seal(
        &self,
        mut headers: ObjectHeaders,
    ) -> Result<(ObjectHeaders, Option<ContentKey>), CseError> {
        let (metadata, key) = VolumeEncryption::seal(self).await?;
        headers.user.extend(metadata);
        Ok((headers, Some(key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cse::kms::Kms;
    use crate::cse::volume::CseOptions;
    use std::time::SystemTime;

    /// A volume's encryption whose KMS is never reached by these checks.
    fn encrypted(allow_plaintext: bool) -> VolumeEncryption {
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new("us-east-1"))
            .build();
        let kms = Kms::new(aws_sdk_kms::Client::from_conf(config), "alias/k");
        let options = CseOptions {
            key_id: "alias/k".into(),
            allow_plaintext,
            ..CseOptions::default()
        };
        VolumeEncryption::new(kms, &options)
    }

    fn object(size: u64, metadata: &[(&str, &str)]) -> (ObjectInfo, ObjectHeaders) {
        let headers = ObjectHeaders {
            user: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ObjectHeaders::default()
        };
        let info = ObjectInfo {
            key: "k".into(),
            size,
            etag: "\"e\"".into(),
            last_modified: SystemTime::UNIX_EPOCH,
            version_id: None,
            headers: Some(headers.clone()),
        };
        (info, headers)
    }

    const VERSION: Version<'static> = Version {
        key: "k",
        etag: "\"e\"",
        size: 100,
    };

    #[tokio::test]
    async fn plain_content_is_stored_and_shown_as_it_is() {
        let (info, headers) = object(100, &[("x-amz-c", "115")]);
        assert!(!Plain.encrypts());
        assert_eq!(Plain.shown_size(&info), 100);
        assert_eq!(Plain.stored_size(100), 100);
        assert!(!Plain.authenticates_first());
        assert!(Plain.open(VERSION, &headers).await.unwrap().is_none());
        let (sealed, key) = Plain.seal(headers.clone()).await.unwrap();
        assert_eq!(sealed, headers);
        assert!(key.is_none());
    }

    #[tokio::test]
    async fn encrypted_content_is_its_tag_longer_and_plaintext_is_refused_unless_allowed() {
        let codec = encrypted(false);
        assert!(codec.encrypts() && codec.authenticates_first());
        assert_eq!(codec.stored_size(100), 100 + TAG_LEN as u64);
        assert_eq!(codec.max_content(), MAX_CONTENT);
        // Marked as encrypted, or not known (a listing): the tag is not shown.
        let (marked, _) = object(116, &[("x-amz-c", "115")]);
        assert_eq!(codec.shown_size(&marked), 100);
        let listed = ObjectInfo {
            headers: None,
            ..marked
        };
        assert_eq!(codec.shown_size(&listed), 100);
        let (plain, headers) = object(100, &[]);
        assert_eq!(codec.shown_size(&plain), 100);
        assert_eq!(codec.describe(&headers.user), None);
        let refused = Codec::open(&codec, VERSION, &headers).await;
        assert!(matches!(
            refused,
            Err(OpenError::Refused(CseError::Plaintext))
        ));
        let allowed = Codec::open(&encrypted(true), VERSION, &headers).await;
        assert!(matches!(allowed, Ok(None)));
    }
}

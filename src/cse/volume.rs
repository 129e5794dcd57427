//! A volume's client-side encryption: which objects it reads, the key each
//! new object gets, and the size a file shows.
//!
//! Every object written gets a data key of its own from KMS, bound to the
//! volume's encryption context, in the current format (V3). Reading takes V3,
//! and V2 (without key commitment) only where the volume's commitment policy
//! allows it, from any S3 Encryption Client, whose stored context is the
//! volume's. The context names neither the object's key nor the volume's
//! prefix, so a renamed object (a server-side copy, metadata and all) stays
//! readable: what the context binds is who may unwrap, not where the bytes
//! live.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::envelope::{ContentKey, Envelope, EnvelopeError, Format, context_for};
use super::gcm::TAG_LEN;
use super::kms::{Kms, KmsError};
use super::reading::{Decryption, Verdicts, VersionId};
use crate::store::{ObjectHeaders, ObjectInfo};

/// How a volume encrypts: `--cse-kms-key-id`, `--cse-context` and
/// `--cse-allow-plaintext`.
pub struct VolumeEncryption {
    kms: Kms,
    /// The volume's own pairs of the encryption context.
    pairs: BTreeMap<String, String>,
    allow_plaintext: bool,
    commitment: Commitment,
    /// Release bytes of a version before it is authenticated, to any read.
    unauthenticated_ranges: bool,
    /// The versions the volume has checked, authentic or forged.
    verdicts: Arc<Verdicts>,
}

impl std::fmt::Debug for VolumeEncryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeEncryption")
            .field("kms", &self.kms)
            .field("pairs", &self.pairs)
            .field("allow_plaintext", &self.allow_plaintext)
            .field("commitment", &self.commitment)
            .field("unauthenticated_ranges", &self.unauthenticated_ranges)
            .finish_non_exhaustive()
    }
}

/// Which objects a volume decrypts, by whether their data key commits to the
/// content key (`--cse-commitment`), as the S3 Encryption Clients' commitment
/// policies say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Commitment {
    /// Only V3 objects, whose data key commits: the official clients' default
    /// (REQUIRE_ENCRYPT_REQUIRE_DECRYPT).
    #[default]
    Require,
    /// V2 objects too (REQUIRE_ENCRYPT_ALLOW_DECRYPT), for buckets older
    /// clients wrote. New objects are V3 either way.
    AllowV2,
}

/// Why an object cannot be read or written encrypted.
#[derive(Debug, thiserror::Error)]
pub enum CseError {
    #[error(
        "it is not encrypted, and this volume reads only encrypted objects \
         (--cse-allow-plaintext reads both)"
    )]
    Plaintext,
    #[error(
        "it is in the S3 Encryption Client's V2 format, whose data key does not commit \
         to its content key, and this volume reads only V3 objects, as the official \
         clients do by default (--cse-commitment allow-v2 reads both)"
    )]
    Uncommitted,
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Kms(#[from] KmsError),
}

impl CseError {
    /// Whether the object is refused to this volume rather than broken: not
    /// encrypted, encrypted for another context, or a key the credentials may
    /// not use.
    pub fn is_refusal(&self) -> bool {
        match self {
            CseError::Plaintext | CseError::Uncommitted => true,
            CseError::Envelope(e) => matches!(e, EnvelopeError::Context { .. }),
            CseError::Kms(e) => e.refuses_key(),
        }
    }
}

/// What an object holds, as far as this volume is concerned.
pub enum Content {
    /// Encrypted: decrypt with this key, made from the envelope named.
    Encrypted { key: ContentKey, envelope: [u8; 32] },
    /// Not encrypted, and the volume reads such objects as they are.
    Plain,
}

impl VolumeEncryption {
    pub fn new(kms: Kms, options: &CseOptions) -> Self {
        VolumeEncryption {
            kms,
            pairs: options.context.clone(),
            allow_plaintext: options.allow_plaintext,
            commitment: options.commitment,
            unauthenticated_ranges: options.unauthenticated_ranges,
            verdicts: Arc::default(),
        }
    }

    /// The encryption `options` ask for, with KMS reached through `sdk` (the
    /// volume's credentials; `AWS_ENDPOINT_URL_KMS`, if set, names KMS).
    pub fn connect(options: &CseOptions, sdk: &aws_config::SdkConfig) -> Self {
        let kms = Kms::new(aws_sdk_kms::Client::new(sdk), &options.key_id);
        VolumeEncryption::new(kms, options)
    }

    /// Whether bytes of a version are released only once it is authenticated
    /// (but to a sequential read from its start); not with
    /// `--cse-unauthenticated-ranges`.
    pub fn authenticates_first(&self) -> bool {
        !self.unauthenticated_ranges
    }

    /// The decryption of `version` of `plain_size` bytes with `key`, sharing
    /// the volume's verdicts; refused past what one GCM message holds.
    pub fn decryption(
        &self,
        key: ContentKey,
        plain_size: u64,
        version: VersionId,
    ) -> Result<Decryption, super::gcm::TooLong> {
        Decryption::new(key, plain_size, version, self.verdicts.clone())
    }

    pub fn key_id(&self) -> &str {
        self.kms.key_id()
    }

    /// The encryption context of objects this volume writes.
    pub fn context(&self) -> BTreeMap<String, String> {
        context_for(Format::V3, &self.pairs)
    }

    /// The size of the plaintext of `info`'s object. A listing does not say
    /// whether an object is encrypted: it is taken to be (a plaintext object
    /// then shows 16 bytes short until a HEAD tells, which every lookup of a
    /// volume that keeps metadata makes).
    pub fn plain_size(&self, info: &ObjectInfo) -> u64 {
        let encrypted = match &info.headers {
            Some(headers) => Envelope::marked(&headers.user),
            None => true,
        };
        match encrypted {
            true => info.size.saturating_sub(TAG_LEN as u64),
            false => info.size,
        }
    }

    /// How to read the object whose HEAD gave `headers`: its content key,
    /// unwrapped by KMS now, or the refusal.
    pub async fn open(&self, headers: &ObjectHeaders) -> Result<Content, CseError> {
        let Some(envelope) = Envelope::read(&headers.user)? else {
            return match self.allow_plaintext {
                true => Ok(Content::Plain),
                false => Err(CseError::Plaintext),
            };
        };
        if envelope.format == Format::V2 && self.commitment == Commitment::Require {
            return Err(CseError::Uncommitted);
        }
        envelope.check_context(&self.pairs)?;
        let data_key = self
            .kms
            .unwrap(&envelope.wrapped_key, &envelope.context)
            .await?;
        Ok(Content::Encrypted {
            key: envelope.content_key(&data_key)?,
            envelope: envelope.identity(),
        })
    }

    /// A new object's key: the metadata to store it with, and its content key.
    pub async fn seal(&self) -> Result<(Vec<(String, String)>, ContentKey), CseError> {
        let context = self.context();
        let data_key = self.kms.generate(&context).await?;
        let (envelope, key) =
            Envelope::seal(Format::V3, &data_key.plaintext, data_key.wrapped, context);
        Ok((envelope.metadata(), key))
    }

    /// For `s3vol check`: GenerateDataKey with the volume's context, as
    /// writing needs, then the Decrypt of the key made (the inner result), as
    /// reading needs.
    pub async fn generate_probe(&self) -> Result<Result<(), KmsError>, KmsError> {
        let context = self.context();
        let data_key = self.kms.generate(&context).await?;
        Ok(self
            .kms
            .unwrap(&data_key.wrapped, &context)
            .await
            .map(|_| ()))
    }

    /// For `s3vol check`: the Decrypt of the data key of the object whose
    /// HEAD gave `headers`; `None` when it is not encrypted for this volume.
    pub async fn open_probe(&self, headers: &ObjectHeaders) -> Option<Result<(), KmsError>> {
        match self.open(headers).await {
            Ok(Content::Encrypted { .. }) => Some(Ok(())),
            Err(CseError::Kms(e)) => Some(Err(e)),
            Ok(Content::Plain) | Err(_) => None,
        }
    }
}

/// What `--cse-kms-key-id`, `--cse-context` and `--cse-allow-plaintext` ask
/// for, as plain values.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CseOptions {
    /// The KMS key: an ID, an ARN or an alias.
    pub key_id: String,
    /// The volume's pairs of the encryption context.
    pub context: BTreeMap<String, String>,
    pub allow_plaintext: bool,
    pub commitment: Commitment,
    /// `--cse-unauthenticated-ranges`.
    pub unauthenticated_ranges: bool,
}

/// Parses `--cse-context`: `name=value` pairs separated by commas.
pub fn parse_context(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut pairs = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not NAME=VALUE (write name=value,name=value)"))?;
        if name.is_empty() {
            return Err(format!("{pair:?} has an empty name"));
        }
        if name.starts_with("aws:") {
            return Err(format!(
                "{name:?}: names beginning with aws: are AWS's own (the S3 Encryption \
                 Client adds aws:x-amz-cek-alg itself)"
            ));
        }
        if pairs.insert(name.to_string(), value.to_string()).is_some() {
            return Err(format!("{name:?} is given twice"));
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_is_name_value_pairs_and_aws_names_are_refused() {
        let pairs = parse_context("tenant=a,project=x=y,empty=").unwrap();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs["project"], "x=y");
        assert_eq!(pairs["empty"], "");
        assert!(parse_context("").unwrap().is_empty());
        for (bad, says) in [
            ("tenant", "not NAME=VALUE"),
            ("=a", "empty name"),
            ("aws:x-amz-cek-alg=115", "AWS's own"),
            ("a=1,a=2", "twice"),
        ] {
            let err = parse_context(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}

//! What the S3 Encryption Client format keeps in an object's user metadata,
//! read and written, and the content key it leads to.
//!
//! Two formats, both with AES-256-GCM content and a data key wrapped by KMS
//! with an encryption context ("kms+context"):
//!
//! - the current one (V3, suite 115, `ALG_AES_256_GCM_HKDF_SHA512_COMMIT_KEY`):
//!   `x-amz-c` 115, `x-amz-3` the wrapped key, `x-amz-w` 12 (kms+context),
//!   `x-amz-t` the encryption context (JSON), `x-amz-i` a random 28-byte message
//!   ID and `x-amz-d` a 28-byte key commitment. The content key and the
//!   commitment are derived from the data key with HKDF-SHA512 (salt: the
//!   message ID; info: the suite ID then `DERIVEKEY` or `COMMITKEY`); the IV is
//!   twelve 0x01 bytes and the suite ID is the AAD. A data key that does not
//!   commit to the stored value is refused before any byte is decrypted.
//! - the older one (V2, `ALG_AES_256_GCM_IV12_TAG16_NO_KDF`): `x-amz-key-v2`,
//!   `x-amz-iv` (12 random bytes), `x-amz-cek-alg` AES/GCM/NoPadding,
//!   `x-amz-wrap-alg` kms+context, `x-amz-matdesc` the context, `x-amz-tag-len`
//!   128; the data key is the content key, with no AAD.
//!
//! Binary values are base64. Either way the stored context names the content
//! algorithm (`aws:x-amz-cek-alg`), which KMS binds to the wrapped key, so an
//! object cannot be passed off under the weaker format.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::Zeroizing;

use super::gcm;

/// The context key that names the content algorithm.
pub const CEK_ALG: &str = "aws:x-amz-cek-alg";
/// What it names for each format s3vol reads: V3, then V2.
pub const CONTENT_ALGORITHMS: [&str; 2] = [V3_SUITE, V2_CIPHER];
const V3_SUITE: &str = "115";
const V3_SUITE_ID: &[u8] = b"\x00\x73";
const V3_IV: [u8; 12] = [1; 12];
const V3_KMS_CONTEXT: &str = "12";
const V2_CIPHER: &str = "AES/GCM/NoPadding";
const V2_WRAP: &str = "kms+context";
const MESSAGE_ID_LEN: usize = 28;
const COMMITMENT_LEN: usize = 28;

/// The format an object is (or is to be) written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The current format, with key commitment.
    V3,
    /// The older format, which every S3 Encryption Client reads.
    V2,
}

/// Why an object's encryption cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("its encryption metadata is incomplete: {0} is missing")]
    Missing(&'static str),
    #[error("its encryption metadata is damaged: {0}")]
    Damaged(String),
    #[error(
        "it is encrypted with {0}, which s3vol does not read (it reads AES-GCM, formats V2 and V3)"
    )]
    Unsupported(String),
    #[error("it was encrypted with the context [{stored}], not this volume's [{expected}]")]
    Context { stored: String, expected: String },
    #[error(
        "its data key does not match the key commitment stored with it: the key or the metadata was changed"
    )]
    Commitment,
}

/// An object's encryption, as its metadata describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub format: Format,
    /// The data key as KMS wrapped it.
    pub wrapped_key: Vec<u8>,
    /// The encryption context KMS bound the key to, as stored.
    pub context: BTreeMap<String, String>,
    /// V2: the content IV. V3: the message ID, then the key commitment.
    nonce: Vec<u8>,
    commitment: Vec<u8>,
}

/// The key and IV an object's content is encrypted with.
pub type ContentKey = gcm::Cipher;

impl Envelope {
    /// What names this envelope among all others: a hash of everything the
    /// content key and IV are made from (the wrapped key, the context, the
    /// IV or message ID, the commitment). Two objects with the same bytes
    /// (and so, on S3, the same ETag) but other envelopes decrypt differently.
    pub fn identity(&self) -> [u8; 32] {
        let mut hash = blake3::Hasher::new();
        hash.update(&[self.format as u8]);
        for part in [&self.wrapped_key, &self.nonce, &self.commitment] {
            hash.update(&(part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        for (name, value) in &self.context {
            for text in [name, value] {
                hash.update(&(text.len() as u64).to_be_bytes());
                hash.update(text.as_bytes());
            }
        }
        hash.finalize().into()
    }
}

/// The context KMS is asked to bind a new data key to in `format`: the
/// volume's own pairs and the content algorithm.
pub fn context_for(format: Format, pairs: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut context = pairs.clone();
    context.insert(CEK_ALG.into(), content_algorithm(format).into());
    context
}

/// What the context's `aws:x-amz-cek-alg` says of content in `format`.
fn content_algorithm(format: Format) -> &'static str {
    match format {
        Format::V3 => V3_SUITE,
        Format::V2 => V2_CIPHER,
    }
}

impl Envelope {
    /// A new object's envelope for a data key KMS generated (`data_key`,
    /// wrapped as `wrapped_key` under `context`), and its content key.
    pub fn seal(
        format: Format,
        data_key: &[u8; 32],
        wrapped_key: Vec<u8>,
        context: BTreeMap<String, String>,
    ) -> (Envelope, ContentKey) {
        let mut random = [0u8; MESSAGE_ID_LEN];
        getrandom::fill(&mut random).expect("the system's random source");
        match format {
            Format::V3 => {
                let (key, commitment) = derive(data_key, &random);
                let envelope = Envelope {
                    format,
                    wrapped_key,
                    context,
                    nonce: random.to_vec(),
                    commitment: commitment.to_vec(),
                };
                (envelope, ContentKey::new(key, V3_IV, V3_SUITE_ID))
            }
            Format::V2 => {
                let iv: [u8; 12] = random[..12].try_into().unwrap();
                let envelope = Envelope {
                    format,
                    wrapped_key,
                    context,
                    nonce: iv.to_vec(),
                    commitment: Vec::new(),
                };
                (
                    envelope,
                    ContentKey::new(Zeroizing::new(*data_key), iv, b""),
                )
            }
        }
    }

    /// Whether an object with this user metadata says it is encrypted (in any
    /// version of the format), without reading the envelope.
    pub fn marked(metadata: &BTreeMap<String, String>) -> bool {
        ["x-amz-c", "x-amz-key-v2", "x-amz-key"]
            .iter()
            .any(|name| metadata.contains_key(*name))
    }

    /// The envelope of an object with this user metadata (names without
    /// `x-amz-meta-`), or `None` if the object is not encrypted.
    pub fn read(metadata: &BTreeMap<String, String>) -> Result<Option<Envelope>, EnvelopeError> {
        let get = |name: &'static str| metadata.get(name).map(String::as_str);
        let need = |name: &'static str| get(name).ok_or(EnvelopeError::Missing(name));
        let bytes = |name: &'static str, len: Option<usize>| -> Result<Vec<u8>, EnvelopeError> {
            let value = BASE64
                .decode(need(name)?)
                .map_err(|e| EnvelopeError::Damaged(format!("{name} is not base64: {e}")))?;
            match len {
                Some(len) if value.len() != len => Err(EnvelopeError::Damaged(format!(
                    "{name} holds {} bytes, not {len}",
                    value.len()
                ))),
                _ => Ok(value),
            }
        };
        let context = |name: &'static str| -> Result<BTreeMap<String, String>, EnvelopeError> {
            serde_json::from_str(need(name)?).map_err(|e| {
                EnvelopeError::Damaged(format!("{name} is not a JSON object of strings: {e}"))
            })
        };
        let envelope = if let Some(suite) = get("x-amz-c") {
            if suite != V3_SUITE {
                return Err(EnvelopeError::Unsupported(format!(
                    "content algorithm {suite}"
                )));
            }
            let wrap = get("x-amz-w").unwrap_or(V3_KMS_CONTEXT);
            if wrap != V3_KMS_CONTEXT {
                return Err(EnvelopeError::Unsupported(format!("key wrapping {wrap}")));
            }
            Envelope {
                format: Format::V3,
                wrapped_key: bytes("x-amz-3", None)?,
                context: context("x-amz-t")?,
                nonce: bytes("x-amz-i", Some(MESSAGE_ID_LEN))?,
                commitment: bytes("x-amz-d", Some(COMMITMENT_LEN))?,
            }
        } else if metadata.contains_key("x-amz-key-v2") {
            let cipher = need("x-amz-cek-alg")?;
            if cipher != V2_CIPHER {
                return Err(EnvelopeError::Unsupported(format!(
                    "content algorithm {cipher}"
                )));
            }
            let wrap = need("x-amz-wrap-alg")?;
            if wrap != V2_WRAP {
                return Err(EnvelopeError::Unsupported(format!("key wrapping {wrap}")));
            }
            if let Some(len) = get("x-amz-tag-len")
                && len != "128"
            {
                return Err(EnvelopeError::Unsupported(format!("a {len}-bit GCM tag")));
            }
            Envelope {
                format: Format::V2,
                wrapped_key: bytes("x-amz-key-v2", None)?,
                context: context("x-amz-matdesc")?,
                nonce: bytes("x-amz-iv", Some(12))?,
                commitment: Vec::new(),
            }
        } else if metadata.contains_key("x-amz-key") {
            return Err(EnvelopeError::Unsupported(
                "the V1 format (AES-CBC, no authentication)".into(),
            ));
        } else {
            return Ok(None);
        };
        let expected = content_algorithm(envelope.format);
        match envelope.context.get(CEK_ALG) {
            Some(alg) if alg == expected => Ok(Some(envelope)),
            other => Err(EnvelopeError::Damaged(format!(
                "its encryption context names content algorithm {other:?}, not {expected:?}"
            ))),
        }
    }

    /// Whether the object was written for this volume: its stored context,
    /// less the content algorithm, is exactly the volume's pairs (as the S3
    /// Encryption Client checks the context a reader gives).
    pub fn check_context(&self, pairs: &BTreeMap<String, String>) -> Result<(), EnvelopeError> {
        let mut stored = self.context.clone();
        stored.remove(CEK_ALG);
        if stored == *pairs {
            return Ok(());
        }
        // Names and values: a context is no secret (S3 shows it with the
        // object), and two contexts may differ only in a value.
        let shown = |m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        Err(EnvelopeError::Context {
            stored: shown(&stored),
            expected: shown(pairs),
        })
    }

    /// The user metadata that describes this envelope.
    pub fn metadata(&self) -> Vec<(String, String)> {
        let context = serde_json::to_string(&self.context).expect("strings serialize");
        let pairs: Vec<(&str, String)> = match self.format {
            Format::V3 => vec![
                ("x-amz-c", V3_SUITE.into()),
                ("x-amz-3", BASE64.encode(&self.wrapped_key)),
                ("x-amz-w", V3_KMS_CONTEXT.into()),
                ("x-amz-t", context),
                ("x-amz-i", BASE64.encode(&self.nonce)),
                ("x-amz-d", BASE64.encode(&self.commitment)),
            ],
            Format::V2 => vec![
                ("x-amz-key-v2", BASE64.encode(&self.wrapped_key)),
                ("x-amz-iv", BASE64.encode(&self.nonce)),
                ("x-amz-cek-alg", V2_CIPHER.into()),
                ("x-amz-wrap-alg", V2_WRAP.into()),
                ("x-amz-matdesc", context),
                ("x-amz-tag-len", "128".into()),
            ],
        };
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// The content key for the data key KMS unwrapped; for V3, only if the
    /// data key commits to the stored value.
    pub fn content_key(&self, data_key: &[u8; 32]) -> Result<ContentKey, EnvelopeError> {
        match self.format {
            Format::V3 => {
                use subtle::ConstantTimeEq;
                let (key, commitment) = derive(data_key, &self.nonce);
                if !bool::from(commitment.as_slice().ct_eq(&self.commitment)) {
                    return Err(EnvelopeError::Commitment);
                }
                Ok(ContentKey::new(key, V3_IV, V3_SUITE_ID))
            }
            Format::V2 => Ok(ContentKey::new(
                Zeroizing::new(*data_key),
                self.nonce[..].try_into().expect("checked at read"),
                b"",
            )),
        }
    }
}

/// The V3 content key and key commitment of `data_key` for `message_id`.
fn derive(data_key: &[u8; 32], message_id: &[u8]) -> (Zeroizing<[u8; 32]>, [u8; COMMITMENT_LEN]) {
    let hkdf = hkdf::Hkdf::<sha2::Sha512>::new(Some(message_id), data_key);
    let mut key = Zeroizing::new([0u8; 32]);
    let mut commitment = [0u8; COMMITMENT_LEN];
    let info = |label: &[u8]| [V3_SUITE_ID, label].concat();
    hkdf.expand(&info(b"DERIVEKEY"), &mut key[..])
        .expect("32 bytes is a valid HKDF-SHA512 length");
    hkdf.expand(&info(b"COMMITKEY"), &mut commitment)
        .expect("28 bytes is a valid HKDF-SHA512 length");
    (key, commitment)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HKDF-SHA512 (RFC 5869) of a data key with a message ID as salt, as an
    /// independent implementation (Python's hmac and hashlib) computes it.
    #[test]
    fn the_v3_keys_are_hkdf_sha512_of_the_data_key() {
        let data_key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let message_id: Vec<u8> = (100..128).collect();
        let (key, commitment) = derive(&data_key, &message_id);
        assert_eq!(
            hex::encode(&key[..]),
            "95e0b2ff3f50200a0e3015f67f680fa0e4bce4c2e63c817f1ff465eb4b974f85"
        );
        assert_eq!(
            hex::encode(commitment),
            "2d59a480d136f5982791c93a93d760ceade5011ccf465dbfc303c597"
        );
    }

    fn as_map(pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
        pairs.into_iter().collect()
    }

    #[test]
    fn an_envelope_reads_back_as_written_and_its_key_decrypts() {
        let data_key = [42u8; 32];
        for format in [Format::V3, Format::V2] {
            let mut pairs = BTreeMap::new();
            pairs.insert("tenant".to_string(), "a".to_string());
            let context = context_for(format, &pairs);
            let (envelope, key) = Envelope::seal(format, &data_key, vec![1, 2, 3], context);
            let read = Envelope::read(&as_map(envelope.metadata()))
                .unwrap()
                .unwrap();
            assert_eq!(read, envelope);
            let mut data = b"some content".to_vec();
            key.seal(&mut data).unwrap();
            let again = read.content_key(&data_key).unwrap();
            assert_eq!(again.open(data).unwrap(), b"some content");
        }
    }

    #[test]
    fn the_stored_context_must_be_the_volume_s_exactly() {
        let pairs: BTreeMap<String, String> = [("tenant".to_string(), "a".to_string())].into();
        let (envelope, _) = Envelope::seal(
            Format::V3,
            &[1u8; 32],
            vec![9],
            context_for(Format::V3, &pairs),
        );
        envelope.check_context(&pairs).unwrap();
        let other: BTreeMap<String, String> = [("tenant".to_string(), "b".to_string())].into();
        assert!(envelope.check_context(&other).is_err());
        let err = envelope.check_context(&BTreeMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "it was encrypted with the context [tenant=a], not this volume's []"
        );
    }

    #[test]
    fn a_v3_data_key_must_commit_to_the_stored_value() {
        let context = context_for(Format::V3, &BTreeMap::new());
        let (envelope, _) = Envelope::seal(Format::V3, &[1u8; 32], vec![9], context);
        assert_eq!(
            envelope.content_key(&[2u8; 32]).unwrap_err(),
            EnvelopeError::Commitment
        );
        let mut metadata = as_map(envelope.metadata());
        metadata.insert("x-amz-i".into(), BASE64.encode([0u8; 28]));
        let changed = Envelope::read(&metadata).unwrap().unwrap();
        assert_eq!(
            changed.content_key(&[1u8; 32]).unwrap_err(),
            EnvelopeError::Commitment
        );
    }

    #[test]
    fn objects_without_encryption_and_damaged_metadata_are_told_apart() {
        assert_eq!(Envelope::read(&BTreeMap::new()).unwrap(), None);
        let context = context_for(Format::V3, &BTreeMap::new());
        let (envelope, _) = Envelope::seal(Format::V3, &[1u8; 32], vec![9], context);
        let good = as_map(envelope.metadata());
        let with = |key: &str, value: Option<&str>| {
            let mut m = good.clone();
            match value {
                Some(v) => m.insert(key.into(), v.into()),
                None => m.remove(key),
            };
            Envelope::read(&m).unwrap_err().to_string()
        };
        assert!(with("x-amz-3", None).contains("x-amz-3 is missing"));
        assert!(with("x-amz-i", Some("AAAA")).contains("not 28"));
        assert!(with("x-amz-d", Some("%%%")).contains("not base64"));
        assert!(with("x-amz-c", Some("114")).contains("does not read"));
        assert!(with("x-amz-t", Some("[1]")).contains("JSON object"));
        // A context that names the weaker algorithm is refused.
        assert!(
            with(
                "x-amz-t",
                Some(r#"{"aws:x-amz-cek-alg":"AES/GCM/NoPadding"}"#)
            )
            .contains("names content algorithm")
        );
        let v1: BTreeMap<String, String> = [("x-amz-key".to_string(), "AAAA".to_string())].into();
        assert!(Envelope::read(&v1).unwrap_err().to_string().contains("V1"));
        // Marked as encrypted exactly when read finds an envelope or a fault.
        assert!(!Envelope::marked(&BTreeMap::new()));
        assert!(Envelope::marked(&good) && Envelope::marked(&v1));
        let v2 = as_map(
            Envelope::seal(
                Format::V2,
                &[1u8; 32],
                vec![9],
                context_for(Format::V2, &BTreeMap::new()),
            )
            .0
            .metadata(),
        );
        assert!(Envelope::marked(&v2));
    }
}

//! The client-side encryption options of a volume (`crate::cse`).

use std::collections::BTreeMap;

use clap::Args;

use crate::cse::volume::{Commitment, CseOptions, parse_context};

/// Client-side encryption, in the S3 Encryption Client's format.
#[derive(Debug, Clone, Default, Args)]
pub struct CseArgs {
    /// Encrypt every file written and decrypt every file read with data keys
    /// of this KMS key (ID, ARN or alias), in the format of AWS's S3
    /// Encryption Client. KMS is reached with the volume's credentials (at
    /// AWS_ENDPOINT_URL_KMS, if set).
    #[arg(long, value_name = "KEY")]
    pub cse_kms_key_id: Option<String>,
    /// The encryption context every object's data key is bound to, besides
    /// the content algorithm: name=value pairs separated by commas. Objects
    /// written with another context are refused (EACCES).
    #[arg(long, value_name = "NAME=VALUE,...", requires = "cse_kms_key_id",
          value_parser = parse_context)]
    pub cse_context: Option<BTreeMap<String, String>>,
    /// Also read objects that are not encrypted, as they are (for a bucket
    /// being migrated); without it they are refused with EACCES.
    #[arg(long, requires = "cse_kms_key_id")]
    pub cse_allow_plaintext: bool,
    /// Which objects to decrypt: `require` (the default, as AWS's clients)
    /// only those in the current format (V3), whose data key commits to its
    /// content key; `allow-v2` also those in the older V2 format.
    #[arg(long, value_name = "POLICY", requires = "cse_kms_key_id",
          value_parser = ["require", "allow-v2"])]
    pub cse_commitment: Option<String>,
    /// Release the bytes of an encrypted file to any read before its GCM tag
    /// is checked, as before: random reads and the start of large files are
    /// then confidential but not authenticated (docs/ENCRYPTION.md). By
    /// default, a version is authenticated before any of it is released, but
    /// to a sequential read from its start, whose end waits for the check.
    #[arg(long, requires = "cse_kms_key_id")]
    pub cse_unauthenticated_ranges: bool,
}

impl CseArgs {
    /// The encryption asked for, if any.
    pub fn options(&self) -> Option<CseOptions> {
        Some(CseOptions {
            key_id: self.cse_kms_key_id.clone()?,
            context: self.cse_context.clone().unwrap_or_default(),
            allow_plaintext: self.cse_allow_plaintext,
            commitment: match self.cse_commitment.as_deref() {
                Some("allow-v2") => Commitment::AllowV2,
                _ => Commitment::Require,
            },
            unauthenticated_ranges: self.cse_unauthenticated_ranges,
        })
    }
}

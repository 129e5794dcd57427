//! Client-side encryption in the format of AWS's S3 Encryption Client: each
//! object's content encrypted with a data key of its own, wrapped by KMS.
//!
//! `gcm` is the content cipher; `envelope` reads and writes what the format
//! keeps in an object's metadata and derives the content key; `kms` wraps and
//! unwraps data keys.

pub mod codec;
pub mod envelope;
pub mod gcm;
pub mod kms;
pub mod reading;
pub mod volume;

//! The object store boundary: one request type for the S3 calls s3vol makes
//! ([`Request`]), sent through [`ObjectStore`].
//!
//! Everything above this module speaks in terms of [`ObjectStore`]; the only
//! implementation that talks to the network is [`s3::S3Store`]. Tests run the
//! filesystem on `memory::MemoryStore`, optionally wrapped in
//! `faulty::FaultyStore` to fail or delay chosen calls; both exist only in test
//! builds (`cfg(test)` and the `testing` feature), never in the release binary. The conformance suite in
//! `tests/e2e/store_conformance.rs` runs the same checks against the memory store and the
//! S3 store pointed at a local server, so the fake cannot drift from S3.

pub mod counted;
mod error;
pub mod expiry;
#[cfg(any(test, feature = "testing"))]
pub mod faulty;
pub mod journaled;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod request;
pub mod retry;
pub mod s3;
pub mod stack;
pub mod versioned;

pub use error::{OUTCOMES, ServiceInfo, StoreError, StoreResult};
pub use request::{GetOptions, GetResult, ObjectStore, Pin, Read, Request, Response};

use std::collections::BTreeMap;
use std::fmt;
use std::hash::BuildHasher;
use std::time::{Duration, SystemTime};

use md5::{Digest, Md5};

/// The slowest transfer s3vol waits for before calling a request stalled, in bytes
/// per second. A stalled request is only noticed after the time its body needs at
/// this rate: low enough for a poor uplink, high enough that an 8 MiB part that
/// stopped moving is sent again about ten seconds later.
pub const MIN_TRANSFER_RATE: u64 = 1 << 20;

/// The time a request's own body of `bytes` may take to send: see
/// [`MIN_TRANSFER_RATE`].
pub fn transfer_allowance(bytes: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / MIN_TRANSFER_RATE as f64)
}

/// The time a server-side copy of `bytes` may take before its answer: S3 copies up
/// to 5 GiB in one request, at well over 16 MiB/s.
pub fn copy_allowance(bytes: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / (16 << 20) as f64)
}

/// The ETag S3 gives an object completed from `parts`: the MD5 of the parts' binary
/// MD5s, then `-` and the number of parts. `None` when a part's ETag is not an MD5.
pub fn multipart_etag(parts: &[UploadedPart]) -> Option<String> {
    let mut md5 = Md5::new();
    for part in parts {
        let digest: [u8; 16] = hex::FromHex::from_hex(part.etag.trim_matches('"')).ok()?;
        md5.update(digest);
    }
    Some(format!(
        "\"{}-{}\"",
        hex::encode(md5.finalize()),
        parts.len()
    ))
}

/// What S3 knows about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Entity tag as S3 returns it, quotes included. Reads pin to it.
    pub etag: String,
    pub last_modified: SystemTime,
    /// The version a HEAD or GET found, in a bucket with versioning (S3 names
    /// none otherwise); a listing does not tell.
    pub version_id: Option<String>,
    /// What the object carries besides its bytes: a HEAD tells, a listing does
    /// not (`None`).
    pub headers: Option<ObjectHeaders>,
}

/// What a presigned URL lets its bearer do with one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlMethod {
    Get,
    Put,
}

impl UrlMethod {
    /// The HTTP method, as the URL's user sends it.
    pub fn as_str(self) -> &'static str {
        match self {
            UrlMethod::Get => "GET",
            UrlMethod::Put => "PUT",
        }
    }
}

/// A presigned URL, and when it stops working.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresignedUrl {
    pub url: String,
    pub expires: SystemTime,
    /// Whether the expiry was cut short by the end of the credentials' session.
    pub cut_by_session: bool,
    /// The headers the request must carry, as signed (a PUT's metadata and
    /// server-side encryption, which S3 takes only as headers): a request
    /// without them is refused.
    pub headers: Vec<(String, String)>,
}

/// What a presigned URL is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presign {
    pub method: UrlMethod,
    pub valid_for: Duration,
    /// The version a GET reads; the current one when `None`.
    pub version_id: Option<String>,
    /// What a PUT stores with the object (its user metadata); the store's
    /// server-side encryption is added.
    pub headers: ObjectHeaders,
}

/// The longest a presigned URL may be valid: SigV4's limit.
pub const MAX_URL_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// What an object carries besides its bytes, as a HEAD shows it: what an upload
/// sets and what a copy that replaces the metadata must set again, lest S3 reset
/// it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectHeaders {
    /// User metadata (`x-amz-meta-NAME`) by NAME, in lower case as S3 keeps it.
    pub user: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    pub cache_control: Option<String>,
    /// The server-side encryption the object is stored with (`AES256`,
    /// `aws:kms`, `aws:kms:dsse`) and its KMS key. An upload or copy with none
    /// gets the volume's `--sse`, else the bucket's default.
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// `None` is S3's STANDARD.
    pub storage_class: Option<String>,
}

/// Whether a bucket keeps the versions of its objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versioning {
    /// Never switched on: every object has the one version `null`.
    Never,
    Enabled,
    /// Switched on once, off now: the versions kept then are still there.
    Suspended,
}

/// One version of an object, or a delete marker, as ListObjectVersions shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionEntry {
    pub key: String,
    /// `null` for what was written while versioning was off.
    pub version_id: String,
    pub last_modified: SystemTime,
    /// 0 for a delete marker.
    pub size: u64,
    /// Empty for a delete marker.
    pub etag: String,
    pub delete_marker: bool,
    /// The current version of its key.
    pub latest: bool,
}

/// One page of a ListObjectVersions answer: the versions and delete markers of
/// each key, newest first, keys in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionsPage {
    pub versions: Vec<VersionEntry>,
    /// Common prefixes (with their trailing delimiter) when a delimiter was given.
    pub common_prefixes: Vec<String>,
    /// The key and version markers of the next page, when one follows.
    pub next: Option<(String, String)>,
}

/// Arguments of a ListObjectVersions call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionsRequest<'a> {
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    /// Where the previous page ended (its `next`).
    pub after: Option<(&'a str, &'a str)>,
    pub max_keys: Option<i32>,
}

/// An object, or one version of it, for [`ObjectStore::delete_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    pub key: String,
    /// The version deleted for good; `None` deletes the object as a DELETE
    /// does (on a bucket that keeps versions, a delete marker hides it).
    pub version_id: Option<String>,
}

/// The most objects one DeleteObjects request may name (S3's bound).
pub const MAX_DELETE_BATCH: usize = 1000;

/// One page of a ListObjectsV2 answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    /// Common prefixes (with their trailing delimiter) when a delimiter was given.
    pub common_prefixes: Vec<String>,
    /// Set when more pages follow.
    pub next_token: Option<String>,
}

/// Arguments of a ListObjectsV2 call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListRequest<'a> {
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    pub continuation: Option<&'a str>,
    pub max_keys: Option<i32>,
}

/// The most entries s3vol takes from one listing (one directory, or the uploads
/// under a prefix): about 170 bytes each in memory, so a server whose listing
/// never ends costs at most some 85 MiB before the listing fails (EIO).
pub const MAX_LISTING_ENTRIES: usize = 500_000;

/// The most pages s3vol asks for in one listing: twenty times what
/// [`MAX_LISTING_ENTRIES`] takes at S3's 1,000 entries a page.
pub const MAX_LISTING_PAGES: usize = 10_000;

/// The entries a listing is given its patience (`--io-timeout`) for, beyond
/// its first: five of S3's pages, which S3 sends in about half a second. A
/// server that drips entries keeps a listing at most 101 times its patience
/// (at [`MAX_LISTING_ENTRIES`]).
pub const ENTRIES_PER_PATIENCE: usize = 5000;

/// The longest continuation token s3vol sends back. S3's are a few hundred
/// bytes; servers that put the last key in theirs need at most a key's 1,024
/// bytes, base64-encoded.
pub const MAX_CONTINUATION_LEN: usize = 4096;

/// How long a listing may go on bringing no entry, page after page, when no
/// `--io-timeout` says otherwise.
pub const LISTING_PATIENCE: Duration = Duration::from_secs(30);

/// Keeps a paginated listing honest: a continuation seen before (the listing
/// would go round forever), more than [`MAX_LISTING_ENTRIES`] entries or
/// [`MAX_LISTING_PAGES`] pages, or pages that bring no entry for longer than
/// its patience (`--io-timeout`: a server answering with endless empty pages,
/// each with a new continuation) is the server's fault and ends it with
/// [`StoreError::BadAnswer`].
pub struct Pagination {
    op: Operation,
    prefix: String,
    seen: std::collections::HashSet<u64>,
    hasher: std::collections::hash_map::RandomState,
    entries: usize,
    pages: usize,
    patience: Duration,
    /// When the last entry came (or the listing began).
    progress: std::time::Instant,
    started: std::time::Instant,
}

impl Pagination {
    pub fn new(op: Operation, prefix: &str, patience: Duration) -> Self {
        Self {
            op,
            prefix: prefix.to_string(),
            seen: std::collections::HashSet::new(),
            hasher: std::collections::hash_map::RandomState::new(),
            entries: 0,
            pages: 0,
            patience,
            progress: std::time::Instant::now(),
            started: std::time::Instant::now(),
        }
    }

    /// Counts a page of `entries` whose continuation is `next`; the continuation
    /// to ask for, or `None` at the end.
    pub fn next(&mut self, entries: usize, next: Option<String>) -> StoreResult<Option<String>> {
        self.entries += entries;
        self.pages += 1;
        let bad = |detail: String| StoreError::BadAnswer {
            op: self.op,
            key: self.prefix.clone(),
            detail,
        };
        if self.entries > MAX_LISTING_ENTRIES {
            return Err(bad(format!(
                "the listing did not end after {MAX_LISTING_ENTRIES} entries, the most \
                 s3vol takes from one listing (mount a prefix below this one)"
            )));
        }
        if next.is_none() {
            return Ok(None);
        }
        if self.pages >= MAX_LISTING_PAGES {
            return Err(bad(format!(
                "the listing did not end after {} pages ({} entries), the most s3vol asks \
                 for in one listing",
                self.pages, self.entries
            )));
        }
        if entries > 0 {
            self.progress = std::time::Instant::now();
        } else if self.progress.elapsed() > self.patience {
            return Err(bad(format!(
                "the listing went on for {} with pages that bring no entry ({} pages so \
                 far), longer than --io-timeout {}",
                humantime::format_duration(Duration::from_secs(self.progress.elapsed().as_secs())),
                self.pages,
                humantime::format_duration(self.patience)
            )));
        }
        // However many entries a server drips page by page, the listing has
        // its patience for each ENTRIES_PER_PATIENCE, and once more. (Empty
        // pages are bounded above, from the last entry.)
        let allowed = self
            .patience
            .saturating_mul(1 + (self.entries / ENTRIES_PER_PATIENCE) as u32);
        if entries > 0 && self.started.elapsed() > allowed {
            return Err(bad(format!(
                "the listing went on for {} for {} entries in {} pages, longer than \
                 --io-timeout {} for each {ENTRIES_PER_PATIENCE}",
                humantime::format_duration(Duration::from_secs(self.started.elapsed().as_secs())),
                self.entries,
                self.pages,
                humantime::format_duration(self.patience)
            )));
        }
        let Some(token) = next else { return Ok(None) };
        if token.len() > MAX_CONTINUATION_LEN {
            return Err(bad(format!(
                "the listing's continuation is {} bytes long, more than the {MAX_CONTINUATION_LEN} \
                 s3vol sends back",
                token.len()
            )));
        }
        // Kept as hashes: 10,000 of them take 80 KB, whatever the tokens.
        if !self.seen.insert(self.hasher.hash_one(&token)) {
            return Err(bad(format!(
                "the listing came back to continuation {token:?}, and would go round forever"
            )));
        }
        Ok(Some(token))
    }
}

/// A part of a multipart upload, as CompleteMultipartUpload lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadedPart {
    /// 1 to 10,000.
    pub number: i32,
    pub etag: String,
}

/// A multipart upload in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: SystemTime,
}

/// Server-side encryption requested on every upload and copy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Encryption {
    /// SSE-S3: `x-amz-server-side-encryption: AES256`.
    Aes256,
    /// SSE-KMS with the bucket's default key or the one named.
    Kms { key_id: Option<String> },
}

/// The S3 operations s3vol performs, named as IAM names their permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    HeadObject,
    GetObject,
    ListObjectsV2,
    PutObject,
    CreateMultipartUpload,
    UploadPart,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    ListMultipartUploads,
    CopyObject,
    UploadPartCopy,
    DeleteObject,
    GetBucketVersioning,
    ListObjectVersions,
    /// A HEAD or GET of one version of an object, by its version ID.
    GetObjectVersion,
    /// DeleteObjects: many objects in one request.
    DeleteObjects,
    /// DeleteObjects naming versions: each version is deleted for good.
    DeleteObjectVersions,
}

impl Operation {
    /// Every operation, in a fixed order (for per-operation counters).
    pub const ALL: [Operation; 17] = [
        Operation::HeadObject,
        Operation::GetObject,
        Operation::ListObjectsV2,
        Operation::PutObject,
        Operation::CreateMultipartUpload,
        Operation::UploadPart,
        Operation::CompleteMultipartUpload,
        Operation::AbortMultipartUpload,
        Operation::ListMultipartUploads,
        Operation::CopyObject,
        Operation::UploadPartCopy,
        Operation::DeleteObject,
        Operation::GetBucketVersioning,
        Operation::ListObjectVersions,
        Operation::GetObjectVersion,
        Operation::DeleteObjects,
        Operation::DeleteObjectVersions,
    ];

    /// The IAM action that authorises this operation. (A copy also needs
    /// s3:GetObject on its source; the destination is what a denial names.)
    pub fn iam_action(self) -> &'static str {
        match self {
            Operation::HeadObject | Operation::GetObject => "s3:GetObject",
            Operation::ListObjectsV2 => "s3:ListBucket",
            Operation::PutObject
            | Operation::CreateMultipartUpload
            | Operation::UploadPart
            | Operation::CompleteMultipartUpload
            | Operation::CopyObject
            | Operation::UploadPartCopy => "s3:PutObject",
            Operation::AbortMultipartUpload => "s3:AbortMultipartUpload",
            Operation::ListMultipartUploads => "s3:ListBucketMultipartUploads",
            Operation::DeleteObject | Operation::DeleteObjects => "s3:DeleteObject",
            Operation::DeleteObjectVersions => "s3:DeleteObjectVersion",
            Operation::GetBucketVersioning => "s3:GetBucketVersioning",
            Operation::ListObjectVersions => "s3:ListBucketVersions",
            Operation::GetObjectVersion => "s3:GetObjectVersion",
        }
    }

    /// Whether the operation changes the bucket (a read-only volume sends none).
    pub fn mutates(self) -> bool {
        !matches!(
            self,
            Operation::HeadObject
                | Operation::GetObject
                | Operation::ListObjectsV2
                | Operation::ListMultipartUploads
                | Operation::GetBucketVersioning
                | Operation::ListObjectVersions
                | Operation::GetObjectVersion
        )
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The ARN of an object or of every key under a prefix, as IAM policies name them.
pub fn object_arn(bucket: &str, key: &str) -> String {
    format!("arn:aws:s3:::{bucket}/{key}")
}

/// The ARN of a bucket (what s3:ListBucket is granted on).
pub fn bucket_arn(bucket: &str) -> String {
    format!("arn:aws:s3:::{bucket}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages() -> Pagination {
        Pagination::new(Operation::ListObjectsV2, "p/", Duration::from_secs(60))
    }

    fn refused(result: StoreResult<Option<String>>, what: &str) -> String {
        match result {
            Err(StoreError::BadAnswer { detail, .. }) => detail,
            other => panic!("{what}: {other:?}"),
        }
    }

    #[test]
    fn a_listing_ends_after_its_last_page_or_at_its_bounds() {
        let mut listing = pages();
        assert_eq!(
            listing.next(1000, Some("a".into())).unwrap(),
            Some("a".into())
        );
        assert_eq!(listing.next(1000, None).unwrap(), None);

        // One entry a page, each with a new continuation: bounded by pages.
        let mut listing = pages();
        for page in 1..MAX_LISTING_PAGES {
            assert!(listing.next(1, Some(format!("t{page}"))).is_ok());
        }
        let detail = refused(listing.next(1, Some("last".into())), "page 10,000");
        assert!(detail.contains("10000 pages"), "{detail}");
        // A last page is taken at the bound.
        let mut listing = pages();
        for page in 1..MAX_LISTING_PAGES {
            listing.next(1, Some(format!("t{page}"))).unwrap();
        }
        assert_eq!(listing.next(1, None).unwrap(), None);
    }

    #[test]
    fn a_listing_that_comes_back_to_a_continuation_or_sends_a_huge_one_is_refused() {
        let mut listing = pages();
        listing.next(1, Some("a".into())).unwrap();
        listing.next(1, Some("b".into())).unwrap();
        let detail = refused(listing.next(1, Some("a".into())), "a token seen before");
        assert!(detail.contains("go round forever"), "{detail}");

        let mut listing = pages();
        let longest = "k".repeat(MAX_CONTINUATION_LEN);
        assert_eq!(
            listing.next(1, Some(longest.clone())).unwrap(),
            Some(longest)
        );
        let detail = refused(
            listing.next(1, Some("k".repeat(MAX_CONTINUATION_LEN + 1))),
            "a token over the bound",
        );
        assert!(detail.contains("4097 bytes"), "{detail}");
    }

    #[test]
    fn a_listing_that_drips_entries_is_bounded_by_its_patience_per_thousand() {
        let mut listing =
            Pagination::new(Operation::ListObjectsV2, "p/", Duration::from_millis(20));
        // One entry a page, each in time to keep the empty-page rule quiet.
        let mut pages = 0;
        let refused = loop {
            std::thread::sleep(Duration::from_millis(5));
            pages += 1;
            match listing.next(1, Some(format!("t{pages}"))) {
                Ok(_) => assert!(pages < 100, "not bounded after {pages} pages"),
                Err(StoreError::BadAnswer { detail, .. }) => break detail,
                Err(e) => panic!("{e}"),
            }
        };
        assert!(refused.contains("for each 5000"), "{refused}");
        // 5,000 entries buy the listing its patience once more.
        let mut listing =
            Pagination::new(Operation::ListObjectsV2, "p/", Duration::from_millis(50));
        listing.next(5000, Some("a".into())).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert!(listing.next(1000, Some("b".into())).is_ok());
    }

    #[test]
    fn a_listing_of_empty_pages_is_bounded_by_its_patience() {
        let mut listing =
            Pagination::new(Operation::ListObjectsV2, "p/", Duration::from_millis(100));
        // A page with entries resets the clock (and its 5,000 entries buy
        // the listing time); an empty one past the patience ends it.
        std::thread::sleep(Duration::from_millis(10));
        assert!(listing.next(5000, Some("a".into())).is_ok());
        std::thread::sleep(Duration::from_millis(120));
        let detail = refused(listing.next(0, Some("b".into())), "an empty page");
        assert!(detail.contains("bring no entry"), "{detail}");
    }
}

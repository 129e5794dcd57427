//! `s3vol cleanup`: find and abort stale multipart uploads under a volume's prefix.
//!
//! A multipart upload that was never completed or aborted (its daemon was killed,
//! or the abort itself could not reach S3) holds its parts, and S3 bills for them,
//! until someone aborts it. It is invisible to readers: no object exists until an
//! upload completes. Cleanup lists the uploads under the prefix and, only when
//! asked to, aborts those older than a threshold, so that uploads a running mount
//! is still writing are left alone.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use super::{fail, one_shot};
use crate::daemon::Failure;
use crate::names::Source;
use crate::store::stack::Connection;
use crate::store::{ObjectStore, PendingUpload, StoreError};

/// What to clean up.
#[derive(Clone, Debug)]
pub struct CleanupPlan<'a> {
    /// Uploads of keys starting with this are considered.
    pub prefix: &'a str,
    /// Uploads started less than this long ago are left alone.
    pub older_than: Duration,
    /// Abort the stale uploads; otherwise only list them.
    pub abort: bool,
}

/// One upload found, and what became of it.
#[derive(Debug)]
pub struct Found {
    pub upload: PendingUpload,
    pub age: Duration,
    pub outcome: Outcome,
}

#[derive(Debug)]
pub enum Outcome {
    /// Too recent: perhaps a mount is writing it now.
    Recent,
    /// Stale; a dry run leaves it.
    WouldAbort,
    Aborted,
    Failed(StoreError),
}

/// Lists the uploads under `plan.prefix` and aborts the stale ones if asked.
pub async fn cleanup(
    store: &dyn ObjectStore,
    plan: &CleanupPlan<'_>,
    now: SystemTime,
) -> Result<Vec<Found>, StoreError> {
    let uploads = store.list_multipart_uploads(plan.prefix).await?;
    let mut found = Vec::with_capacity(uploads.len());
    for upload in uploads {
        // A clock behind S3's makes a fresh upload look as if from the future.
        let age = now.duration_since(upload.initiated).unwrap_or_default();
        let outcome = if age < plan.older_than {
            Outcome::Recent
        } else if !plan.abort {
            Outcome::WouldAbort
        } else {
            match store
                .abort_multipart_upload(&upload.key, &upload.upload_id)
                .await
            {
                Ok(()) => Outcome::Aborted,
                // Gone meanwhile: completed or aborted by someone else.
                Err(StoreError::NotFound { .. }) => Outcome::Aborted,
                Err(e) => Outcome::Failed(e),
            }
        };
        found.push(Found {
            upload,
            age,
            outcome,
        });
    }
    Ok(found)
}

/// The report: one line per upload, then a summary that says what to do next.
pub fn render(found: &[Found], plan: &CleanupPlan<'_>, location: &str) -> String {
    let mut out = String::new();
    for f in found {
        let age = humantime::format_duration(Duration::from_secs(f.age.as_secs()));
        let what = match &f.outcome {
            Outcome::Recent => "recent, kept".to_string(),
            Outcome::WouldAbort => "stale".to_string(),
            Outcome::Aborted => "aborted".to_string(),
            Outcome::Failed(e) => format!("abort failed: {e}"),
        };
        let _ = writeln!(
            out,
            "{what:<14} {age:>16} old  {}  (upload {})",
            f.upload.key, f.upload.upload_id
        );
    }
    let count = |pred: fn(&Outcome) -> bool| found.iter().filter(|f| pred(&f.outcome)).count();
    let stale = count(|o| matches!(o, Outcome::WouldAbort));
    let aborted = count(|o| matches!(o, Outcome::Aborted));
    let failed = count(|o| matches!(o, Outcome::Failed(_)));
    let recent = count(|o| matches!(o, Outcome::Recent));
    let threshold = humantime::format_duration(plan.older_than);
    if found.is_empty() {
        let _ = writeln!(out, "no multipart uploads in progress under {location}");
    } else if plan.abort {
        let _ = writeln!(
            out,
            "aborted {aborted} upload(s) under {location}; {failed} failed; \
             {recent} younger than {threshold} kept"
        );
    } else {
        let _ = writeln!(
            out,
            "dry run: {stale} upload(s) under {location} older than {threshold}, \
             {recent} younger kept; nothing was aborted. Run again with --abort to \
             abort them."
        );
    }
    out
}

/// `s3vol cleanup`: lists the multipart uploads under the volume's prefix and
/// aborts the stale ones when asked; exit 1 when listing or an abort failed.
pub fn run(
    source: &Source,
    older_than: Duration,
    abort: bool,
    connection: &Connection,
) -> ExitCode {
    let location = format!("s3://{}/{}", source.bucket, source.prefix);
    let plan = CleanupPlan {
        prefix: source.prefix.as_str(),
        older_than,
        abort,
    };
    let result = one_shot(connection, &source.bucket, None, async |store, _| {
        cleanup(store.as_ref(), &plan, SystemTime::now())
            .await
            .map_err(|e| Failure(format!("cannot list the uploads under {location}: {e:#}")))
    });
    match result {
        Ok(found) => {
            print!("{}", render(&found, &plan, &location));
            let failed = found
                .iter()
                .any(|f| matches!(f.outcome, Outcome::Failed(_)));
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(Failure(message)) => fail(&message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    async fn store_with_uploads() -> MemoryStore {
        let store = MemoryStore::new("bkt");
        for key in ["vol/a", "vol/sub/b", "other/c"] {
            store
                .create_multipart_upload(key, &Default::default())
                .await
                .unwrap();
        }
        store
    }

    fn plan(older_than: Duration, abort: bool) -> CleanupPlan<'static> {
        CleanupPlan {
            prefix: "vol/",
            older_than,
            abort,
        }
    }

    #[tokio::test]
    async fn a_dry_run_lists_and_aborts_nothing() {
        let store = store_with_uploads().await;
        let plan = plan(Duration::ZERO, false);
        let found = cleanup(&store, &plan, SystemTime::now()).await.unwrap();
        let keys: Vec<&str> = found.iter().map(|f| f.upload.key.as_str()).collect();
        assert_eq!(keys, ["vol/a", "vol/sub/b"]);
        assert!(
            found
                .iter()
                .all(|f| matches!(f.outcome, Outcome::WouldAbort))
        );
        assert_eq!(store.pending_uploads().len(), 3);
        let report = render(&found, &plan, "s3://bkt/vol/");
        assert!(report.contains("dry run: 2 upload(s)"), "{report}");
        assert!(report.contains("--abort"), "{report}");
    }

    #[tokio::test]
    async fn abort_removes_stale_uploads_under_the_prefix_only() {
        let store = store_with_uploads().await;
        let plan = plan(Duration::ZERO, true);
        let found = cleanup(&store, &plan, SystemTime::now()).await.unwrap();
        assert!(found.iter().all(|f| matches!(f.outcome, Outcome::Aborted)));
        assert_eq!(store.pending_uploads(), ["other/c"]);
        let report = render(&found, &plan, "s3://bkt/vol/");
        assert!(report.contains("aborted 2 upload(s)"), "{report}");
    }

    #[tokio::test]
    async fn recent_uploads_are_kept() {
        let store = store_with_uploads().await;
        let plan = plan(Duration::from_secs(3600), true);
        // As seen ten minutes after they started.
        let now = SystemTime::now() + Duration::from_secs(600);
        let found = cleanup(&store, &plan, now).await.unwrap();
        assert!(found.iter().all(|f| matches!(f.outcome, Outcome::Recent)));
        assert_eq!(store.pending_uploads().len(), 3);
        // And once they are older than the threshold, they go.
        let later = SystemTime::now() + Duration::from_secs(7200);
        cleanup(&store, &plan, later).await.unwrap();
        assert_eq!(store.pending_uploads(), ["other/c"]);
    }

    #[tokio::test]
    async fn a_failed_abort_is_reported() {
        use crate::store::Operation;
        use crate::store::faulty::{Fault, FaultyStore};
        let memory = std::sync::Arc::new(store_with_uploads().await);
        let store = FaultyStore::new(memory.clone());
        store.fail_nth(Operation::AbortMultipartUpload, 1, Fault::AccessDenied);
        let plan = plan(Duration::ZERO, true);
        let found = cleanup(&store, &plan, SystemTime::now()).await.unwrap();
        assert!(matches!(found[0].outcome, Outcome::Failed(_)));
        assert!(matches!(found[1].outcome, Outcome::Aborted));
        assert_eq!(memory.pending_uploads().len(), 2);
        let report = render(&found, &plan, "s3://bkt/vol/");
        assert!(report.contains("abort failed: AccessDenied"), "{report}");
        assert!(
            report.contains("aborted 1 upload(s) under s3://bkt/vol/; 1 failed"),
            "{report}"
        );
    }

    #[tokio::test]
    async fn nothing_to_clean_says_so() {
        let store = MemoryStore::new("bkt");
        let plan = plan(Duration::ZERO, false);
        let found = cleanup(&store, &plan, SystemTime::now()).await.unwrap();
        let report = render(&found, &plan, "s3://bkt/vol/");
        assert_eq!(
            report,
            "no multipart uploads in progress under s3://bkt/vol/\n"
        );
    }
}

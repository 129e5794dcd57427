//! What a mount has done: requests to S3 by operation, bytes each way, the block
//! cache's hits and misses, memory held and waited for, uploads and credential
//! renewals.
//!
//! The daemon answers the ioctl [`crate::control::STATS`] on the volume's root
//! directory with a JSON report, so `s3vol stats MOUNTPOINT` works wherever the
//! mount is visible. The same report is logged at unmount.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::audit::AuditStats;
use crate::cache::BlockCache;
use crate::memory::MemoryBudget;
use crate::store::Operation;
use crate::store::counted::RequestStats;

/// Where a mount's counters live.
pub struct MountStats {
    /// `BUCKET/PREFIX` as mounted.
    pub source: String,
    pub read_write: bool,
    pub started: SystemTime,
    pub requests: Arc<RequestStats>,
    pub cache: Option<Arc<BlockCache>>,
    /// The memory budget (`--max-memory`).
    pub memory: Option<Arc<MemoryBudget>>,
    /// Credential renewals so far, when the credentials are renewed at all.
    pub renewals: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
    /// The audit log's counters (`--audit-log`).
    pub audit: Option<Arc<AuditStats>>,
    /// Whether the daemon can tell its callers apart.
    pub callers: CallerStats,
}

/// Whether the daemon sees who calls it: the kernel names each caller by PID
/// in the daemon's PID namespace, and a caller outside it as PID 0. Which
/// close publishes a file depends on who closes it (SEMANTICS.md).
#[derive(Debug)]
pub struct CallerStats {
    /// The daemon runs in the host's PID namespace, where every process has a
    /// PID it sees.
    pub host_pid_namespace: bool,
    /// Closes by processes the daemon could not see (PID 0).
    pub unseen_closes: AtomicU64,
}

impl Default for CallerStats {
    /// This process's namespace, no close counted.
    fn default() -> Self {
        Self {
            host_pid_namespace: crate::procfs::in_host_pid_namespace(),
            unseen_closes: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for MountStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountStats")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl MountStats {
    /// The report, as `s3vol stats --json` prints it.
    pub fn report(&self) -> Value {
        let requests = &self.requests;
        let count = |op| requests.requests(op);
        let done = |op| requests.succeeded(op);
        let by_operation: serde_json::Map<String, Value> = Operation::ALL
            .iter()
            .map(|op| (op.to_string(), json!(count(*op))))
            .collect();
        let cache = match &self.cache {
            None => json!({ "enabled": false }),
            Some(cache) => {
                let stats = &cache.stats;
                let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
                json!({
                    "enabled": true,
                    "memory_hits": load(&stats.memory_hits),
                    "disk_hits": load(&stats.disk_hits),
                    "misses": load(&stats.misses),
                    "bytes_from_cache": load(&stats.bytes_from_cache),
                    "evictions": load(&stats.evictions),
                    "damaged_blocks": load(&stats.corrupt),
                    "disk_used": cache.disk_used(),
                    "disk_capacity": cache.capacity(),
                    "dir": cache.dir().display().to_string(),
                })
            }
        };
        let memory = self.memory.as_ref().map(|memory| {
            let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
            json!({
                "limit": memory.limit(),
                "pool": memory.pool_size(),
                "pool_in_use": memory.in_use(),
                "reads_without_room": load(&memory.stats.reads_without_room),
                "upload_waits": load(&memory.stats.upload_waits),
                "upload_wait_ms": load(&memory.stats.upload_wait_ms),
            })
        });
        let uptime = SystemTime::now()
            .duration_since(self.started)
            .unwrap_or_default()
            .as_secs();
        json!({
            "source": self.source,
            "mode": if self.read_write { "read-write" } else { "read-only" },
            "uptime_seconds": uptime,
            "requests": by_operation,
            "request_errors": requests.errors(),
            "bytes_from_s3": requests.bytes_downloaded(),
            "bytes_to_s3": requests.bytes_uploaded(),
            "cache": cache,
            "memory": memory,
            "uploads": {
                "objects": done(Operation::PutObject)
                    + done(Operation::CompleteMultipartUpload)
                    + done(Operation::CopyObject),
                "parts": done(Operation::UploadPart) + done(Operation::UploadPartCopy),
                "aborted": done(Operation::AbortMultipartUpload),
            },
            "credential_renewals": self.renewals.as_ref().map(|renewals| renewals()),
            "audit": self.audit.as_ref().map(|audit| json!({
                "lines_written": audit.written.load(Ordering::Relaxed),
                "lines_dropped": audit.dropped.load(Ordering::Relaxed),
            })),
            "callers": {
                "host_pid_namespace": self.callers.host_pid_namespace,
                "unseen_closes": self.callers.unseen_closes.load(Ordering::Relaxed),
            },
        })
    }
}

/// The report as people read it: one line per subject.
pub fn render(mountpoint: &str, report: &Value) -> String {
    let number = |path: &[&str]| {
        path.iter()
            .try_fold(report, |v, k| v.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let text = |key: &str| report.get(key).and_then(Value::as_str).unwrap_or("?");
    let mut out = format!(
        "{mountpoint}: {} ({}), up {}\n",
        text("source"),
        text("mode"),
        humantime::format_duration(std::time::Duration::from_secs(number(&["uptime_seconds"])))
    );
    let requests: Vec<String> = report
        .get("requests")
        .and_then(Value::as_object)
        .map(|ops| {
            ops.iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(op, n)| format!("{op} {n}"))
                .collect()
        })
        .unwrap_or_default();
    let requests = if requests.is_empty() {
        "none".to_string()
    } else {
        requests.join(", ")
    };
    out += &format!(
        "  requests     {requests} ({} failed)\n",
        number(&["request_errors"])
    );
    out += &format!(
        "  transferred  {} from S3, {} to S3\n",
        bytes(number(&["bytes_from_s3"])),
        bytes(number(&["bytes_to_s3"]))
    );
    if report
        .pointer("/cache/enabled")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let memory = number(&["cache", "memory_hits"]);
        let disk = number(&["cache", "disk_hits"]);
        out += &format!(
            "  cache        {} hits ({memory} memory, {disk} disk), {} misses, {} served from cache\n",
            memory + disk,
            number(&["cache", "misses"]),
            bytes(number(&["cache", "bytes_from_cache"]))
        );
        out += &format!(
            "  cache disk   {} of {} used, {} evictions, {} damaged blocks removed\n",
            bytes(number(&["cache", "disk_used"])),
            bytes(number(&["cache", "disk_capacity"])),
            number(&["cache", "evictions"]),
            number(&["cache", "damaged_blocks"])
        );
    } else {
        out += "  cache        off\n";
    }
    if report.get("memory").is_some_and(Value::is_object) {
        out += &format!(
            "  memory       limit {}: read-ahead and uploads hold {} of {}; {} reads \
             fetched without read-ahead, {} uploads waited ({:.1} s in all)\n",
            bytes(number(&["memory", "limit"])),
            bytes(number(&["memory", "pool_in_use"])),
            bytes(number(&["memory", "pool"])),
            number(&["memory", "reads_without_room"]),
            number(&["memory", "upload_waits"]),
            number(&["memory", "upload_wait_ms"]) as f64 / 1000.0
        );
    }
    out += &format!(
        "  uploads      {} objects, {} parts, {} aborted\n",
        number(&["uploads", "objects"]),
        number(&["uploads", "parts"]),
        number(&["uploads", "aborted"])
    );
    match report.get("credential_renewals").and_then(Value::as_u64) {
        Some(n) => out += &format!("  credentials  {n} renewals\n"),
        None => out += "  credentials  static (never renewed)\n",
    }
    let unseen = number(&["callers", "unseen_closes"]);
    let host = report
        .pointer("/callers/host_pid_namespace")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if !host || unseen > 0 {
        out += &format!(
            "  callers      {}; {unseen} closes by processes it cannot see (PID 0), each \
             of which publishes what was written through it\n",
            if host {
                "the daemon sees the host's PIDs"
            } else {
                "the daemon runs in a PID namespace of its own and cannot see processes \
                 outside it"
            }
        );
    }
    if report.get("audit").is_some_and(Value::is_object) {
        out += &format!(
            "  audit log    {} lines written, {} dropped\n",
            number(&["audit", "lines_written"]),
            number(&["audit", "lines_dropped"])
        );
    }
    out
}

/// A byte count in binary units, as `ls -h` would show it.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectStore;
    use crate::store::counted::CountedStore;
    use crate::store::memory::MemoryStore;

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1 << 30), "1.0 GiB");
    }

    #[tokio::test]
    async fn the_report_counts_what_the_store_did() {
        let store = CountedStore::new(Arc::new(MemoryStore::new("bkt")));
        store
            .put_object(
                "a",
                bytes::Bytes::from_static(b"12345"),
                &Default::default(),
            )
            .await
            .unwrap();
        store.get_range("a", 0..5, None).await.unwrap();
        let stats = MountStats {
            source: "bkt/data".into(),
            read_write: true,
            started: SystemTime::now(),
            requests: store.stats(),
            cache: None,
            memory: None,
            renewals: Some(Arc::new(|| 3)),
            audit: None,
            callers: CallerStats {
                host_pid_namespace: false,
                unseen_closes: AtomicU64::new(2),
            },
        };
        let report = stats.report();
        assert_eq!(report["requests"]["GetObject"], 1);
        assert_eq!(report["requests"]["PutObject"], 1);
        assert_eq!(report["bytes_from_s3"], 5);
        assert_eq!(report["uploads"]["objects"], 1);
        assert_eq!(report["credential_renewals"], 3);
        let text = render("/mnt", &report);
        assert!(text.contains("bkt/data (read-write)"), "{text}");
        assert!(
            text.contains("GetObject 1, PutObject 1 (0 failed)"),
            "{text}"
        );
        assert!(text.contains("5 B from S3, 5 B to S3"), "{text}");
        assert!(text.contains("cache        off"), "{text}");
        assert!(text.contains("3 renewals"), "{text}");
        assert_eq!(report["callers"]["unseen_closes"], 2);
        assert!(text.contains("PID namespace of its own"), "{text}");
        assert!(
            text.contains("2 closes by processes it cannot see"),
            "{text}"
        );
    }
}

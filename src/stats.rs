//! What a mount has done: requests to S3 by operation and outcome and how long
//! they took, bytes each way, the block cache's hits and misses, memory held
//! and waited for, uploads, credential renewals and errors by errno; and what
//! is wrong with the volume, if anything is ([`trouble`]).
//!
//! The daemon answers the ioctl [`crate::control::REPORT`] on the volume's root
//! directory with a JSON report, so `s3vol stats MOUNTPOINT` works wherever the
//! mount is visible. The same report is logged at unmount, and the metrics
//! endpoint serves it in Prometheus's format.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::audit::AuditStats;
use crate::auth::CredentialStatus;
use crate::cache::BlockCache;
use crate::memory::MemoryBudget;
use crate::metrics::histogram::BOUNDS;
use crate::store::counted::RequestStats;
use crate::store::{OUTCOMES, Operation};

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
    /// How the volume's credentials stand.
    pub credentials: Option<Arc<dyn Fn() -> CredentialStatus + Send + Sync>>,
    /// The audit log's counters (`--audit-log`).
    pub audit: Option<Arc<AuditStats>>,
    /// Whether the daemon can tell its callers apart.
    pub callers: CallerStats,
    /// Filesystem calls answered with an error.
    pub errors: ErrnoStats,
    /// `--io-timeout`: how long the endpoint may fail every request before
    /// the volume is reported sick.
    pub io_timeout: Duration,
    /// Which files the kernel reads from the disk cache directly.
    pub passthrough: std::sync::OnceLock<Arc<dyn Fn() -> PassthroughStatus + Send + Sync>>,
    /// HEADs sent and read without the SDK's request pipeline, and those sent
    /// again through it (see `store::s3::head`).
    pub heads_without_the_sdk: Option<crate::store::stack::HeadsWithoutTheSdk>,
}

/// What `s3vol stats` says of passthrough (the kernel reading files whole in
/// the disk cache directly).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassthroughStatus {
    /// Why it is off, once known.
    pub off: Option<String>,
    /// Opens answered with passthrough since the mount.
    pub opens: u64,
    /// Inodes read through passthrough now.
    pub inodes_now: usize,
}

/// Filesystem calls answered with an error, by errno.
#[derive(Debug)]
pub struct ErrnoStats([AtomicU64; ERRNOS]);

/// Linux's errnos are below this.
const ERRNOS: usize = 134;

impl Default for ErrnoStats {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl ErrnoStats {
    /// Counts an answer of `errno` (one above Linux's last is counted with it).
    pub fn record(&self, errno: i32) {
        if let Ok(slot) = usize::try_from(errno)
            && slot > 0
        {
            self.0[slot.min(ERRNOS - 1)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `{"ENOENT": 3, ...}`, the errnos seen.
    fn to_json(&self) -> Value {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(errno, n)| {
                let n = n.load(Ordering::Relaxed);
                let name = format!("{:?}", nix::errno::Errno::from_raw(errno as i32));
                (n > 0).then(|| (name, json!(n)))
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
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
                    "memory_hit_bytes": load(&stats.memory_hit_bytes),
                    "disk_hit_bytes": load(&stats.disk_hit_bytes),
                    "evictions": load(&stats.evictions),
                    "damaged_blocks": load(&stats.corrupt),
                    "memory_used": cache.memory_used().0,
                    "memory_capacity": cache.memory_used().1,
                    "disk_used": cache.disk_used(),
                    "disk_writing": cache.disk_writing(),
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
        let failing_for = requests.failing().map_or(Duration::ZERO, |run| {
            run.lasted(failure_window(self.io_timeout))
        });
        let credentials = self.credentials.as_ref().map(|state| state());
        json!({
            "version": crate::VERSION,
            // The worker's process, in its own PID namespace: `s3vol restart`
            // sees it change.
            "worker_pid": std::process::id(),
            "source": self.source,
            "mode": if self.read_write { "read-write" } else { "read-only" },
            "uptime_seconds": uptime,
            "requests": by_operation,
            "requests_by_outcome": self.outcomes(),
            "latency": self.latency(),
            "request_errors": requests.errors(),
            "bytes_from_s3": requests.bytes_downloaded(),
            "bytes_to_s3": requests.bytes_uploaded(),
            "cache": cache,
            "passthrough": self.passthrough.get().map(|status| {
                let status = status();
                json!({
                    "on": status.off.is_none(),
                    "off_because": status.off,
                    "opens": status.opens,
                    "files_now": status.inodes_now,
                })
            }),
            // (Counted in "requests" as well.)
            "heads_without_the_sdk": self.heads_without_the_sdk.as_ref().map(|heads| {
                let (answered, resent) = heads();
                json!({ "answered": answered, "resent": resent })
            }),
            "memory": memory,
            "uploads": {
                "objects": done(Operation::PutObject)
                    .saturating_add(done(Operation::CompleteMultipartUpload))
                    .saturating_add(done(Operation::CopyObject)),
                "parts": done(Operation::UploadPart).saturating_add(done(Operation::UploadPartCopy)),
                "aborted": done(Operation::AbortMultipartUpload),
                "in_flight": requests.uploads_in_flight(),
            },
            "credential_renewals": credentials.as_ref().map(|c| c.renewals),
            "credentials": credentials.map(|c| json!({
                "renewals": c.renewals,
                "failed_renewals": c.failed_renewals,
                "expires_in_seconds": c.expires.map(|at| {
                    at.duration_since(SystemTime::now()).unwrap_or_default().as_secs()
                }),
                "renews_in_seconds": c.next_renewal.map(|at| {
                    at.duration_since(SystemTime::now()).unwrap_or_default().as_secs()
                }),
                "renewal_failing": c.renewal_failing.map(|cause| cause.word()),
            })),
            "endpoint": {
                "failing_for_seconds": (failing_for.as_secs_f64() * 10.0).round() / 10.0,
                "last_failure": requests.failing().map(|run| run.outcome),
                "io_timeout_seconds": self.io_timeout.as_secs_f64(),
            },
            "errors_by_errno": self.errors.to_json(),
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

    /// `{"GetObject": {"ok": 10, "changed": 1}, ...}`: the requests of each
    /// operation used, by outcome.
    fn outcomes(&self) -> Value {
        let mut ops = serde_json::Map::new();
        for op in Operation::ALL {
            let outcomes: serde_json::Map<String, Value> = OUTCOMES
                .iter()
                .map(|outcome| (outcome.to_string(), self.requests.outcome(op, outcome)))
                .filter(|(_, n)| *n > 0)
                .map(|(outcome, n)| (outcome, json!(n)))
                .collect();
            if !outcomes.is_empty() {
                ops.insert(op.to_string(), outcomes.into());
            }
        }
        ops.into()
    }

    /// The time histograms of each operation used, whole and to the first
    /// byte, with their buckets' bounds.
    fn latency(&self) -> Value {
        let of = |first_byte: bool| -> serde_json::Map<String, Value> {
            Operation::ALL
                .iter()
                .map(|op| (op, self.requests.latency(*op, first_byte)))
                .filter(|(_, histogram)| histogram.count() > 0)
                .map(|(op, histogram)| (op.to_string(), histogram.to_json()))
                .collect()
        };
        json!({ "bounds": BOUNDS, "total": of(false), "first_byte": of(true) })
    }

    /// The report in at most `room` bytes of JSON: without the latency
    /// histograms if it must (the ioctl's buffer is bounded); the length it
    /// needs if even that does not fit.
    pub fn report_within(&self, room: usize) -> Result<Vec<u8>, usize> {
        let mut report = self.report();
        let text = report.to_string();
        if text.len() <= room {
            return Ok(text.into_bytes());
        }
        report["latency"] = json!({ "omitted": "the report was too large with them" });
        let text = report.to_string();
        if text.len() <= room {
            Ok(text.into_bytes())
        } else {
            Err(text.len())
        }
    }
}

/// A mount's own metrics endpoint serves its report.
impl crate::metrics::Scrape for MountStats {
    fn scrape(&self) -> futures::future::BoxFuture<'_, String> {
        let mut text = crate::metrics::Exposition::default();
        text.add_report(&Vec::new(), &self.report());
        Box::pin(std::future::ready(text.render()))
    }
}

/// How recent a run of failures' last must be to count: a retried request's
/// failures come a stall period or a backoff apart, so a window of
/// `--io-timeout` alone would flap while the endpoint stays down.
fn failure_window(io_timeout: Duration) -> Duration {
    (io_timeout * 2).max(Duration::from_secs(10))
}

/// Credentials that expire within this long, and cannot be renewed, make a
/// volume sick even when STS is only unreachable (a refusal does at once).
const CREDENTIALS_LOW: Duration = Duration::from_secs(120);

/// What is wrong with a volume by its `report`, in words that say what to do;
/// `None` when nothing is.
pub fn trouble(report: &Value) -> Option<String> {
    let renewal = report
        .pointer("/credentials/renewal_failing")
        .and_then(Value::as_str);
    let left = report
        .pointer("/credentials/expires_in_seconds")
        .and_then(Value::as_u64)
        .map(Duration::from_secs);
    let low = left.is_some_and(|left| left < CREDENTIALS_LOW);
    if let Some(how) = renewal
        && (how == "refused" || low)
    {
        let left = match left {
            Some(Duration::ZERO) => "they have expired, and every request fails".to_string(),
            Some(left) => format!(
                "the current ones expire in {}",
                humantime::format_duration(left)
            ),
            None => "the current ones stay usable".to_string(),
        };
        let what = match how {
            "refused" => "STS refused the renewal",
            "unreachable" => "STS could not be reached",
            _ => "the renewal failed",
        };
        return Some(format!(
            "the volume's credentials cannot be renewed: {what} (the driver's log has its \
             answer); {left}. Check the role's trust policy and the external ID, or the \
             keys, that the volume's Secret gives, and that STS is reachable from the node"
        ));
    }
    let failing = report
        .pointer("/endpoint/failing_for_seconds")
        .and_then(Value::as_f64);
    let limit = report
        .pointer("/endpoint/io_timeout_seconds")
        .and_then(Value::as_f64);
    if let (Some(failing), Some(limit)) = (failing, limit)
        && failing > limit
    {
        let (failing, limit) = (
            Duration::from_secs_f64(failing),
            Duration::from_secs_f64(limit),
        );
        let last = report
            .pointer("/endpoint/last_failure")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        return Some(format!(
            "every request to S3 has failed for {} (the last: {last}), longer than the \
             volume's --io-timeout of {}; check that the endpoint is up and reachable from \
             this node, and the daemon's log",
            humantime::format_duration(Duration::from_secs(failing.as_secs())),
            humantime::format_duration(limit)
        ));
    }
    None
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
    if let Some(passthrough) = report.get("passthrough").filter(|p| p.is_object()) {
        out += &match passthrough.get("off_because").and_then(Value::as_str) {
            Some(why) => format!("  passthrough  off: {why}\n"),
            None => format!(
                "  passthrough  on: {} opens read by the kernel from the disk cache, {} files now\n",
                number(&["passthrough", "opens"]),
                number(&["passthrough", "files_now"])
            ),
        };
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
        Some(n) => {
            let expires = report
                .pointer("/credentials/expires_in_seconds")
                .and_then(Value::as_u64)
                .map(|secs| {
                    let left = humantime::format_duration(Duration::from_secs(secs));
                    format!(", the current ones expire in {left}")
                })
                .unwrap_or_default();
            let failed = number(&["credentials", "failed_renewals"]);
            out += &format!("  credentials  {n} renewals, {failed} failed{expires}\n");
        }
        None => out += "  credentials  static (never renewed)\n",
    }
    if let Some(errnos) = report.get("errors_by_errno").and_then(Value::as_object)
        && !errnos.is_empty()
    {
        let shown: Vec<String> = errnos.iter().map(|(e, n)| format!("{e} {n}")).collect();
        out += &format!("  errors       {}\n", shown.join(", "));
    }
    out += &format!(
        "  health       {}\n",
        trouble(report).unwrap_or_else(|| "ok".to_string())
    );
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

    fn stats_of(requests: Arc<RequestStats>) -> MountStats {
        MountStats {
            source: "b".repeat(1024),
            read_write: true,
            started: SystemTime::now(),
            requests,
            cache: None,
            memory: None,
            credentials: Some(Arc::new(|| CredentialStatus {
                renewal_failing: Some(crate::auth::renew::FetchCause::Denied),
                ..Default::default()
            })),
            audit: None,
            callers: CallerStats::default(),
            errors: ErrnoStats::default(),
            io_timeout: Duration::from_secs(30),
            passthrough: Default::default(),
            heads_without_the_sdk: None,
        }
    }

    #[test]
    fn the_largest_report_fits_the_ioctl_and_a_smaller_room_drops_the_histograms() {
        let requests = Arc::new(RequestStats::default());
        requests.fill(u64::MAX / 2);
        let stats = stats_of(requests);
        (0..ERRNOS as i32).for_each(|errno| stats.errors.record(errno));
        let full = stats
            .report_within(crate::control::REPORT_BUF)
            .expect("fits");
        let room = full.len() - 1;
        let full: Value = serde_json::from_slice(&full).unwrap();
        assert_eq!(
            full["latency"]["total"].as_object().unwrap().len(),
            Operation::ALL.len()
        );
        // A smaller room (the older ioctl's) gets what fits.
        let small = stats.report_within(room).expect("fits without histograms");
        let small: Value = serde_json::from_slice(&small).unwrap();
        assert!(small["latency"]["omitted"].is_string(), "{small}");
        assert_eq!(small["requests"], full["requests"]);
        assert!(matches!(stats.report_within(100), Err(needed) if needed > 100));
    }

    #[test]
    fn a_volume_is_sick_when_renewal_is_refused_or_time_runs_out_or_the_endpoint_fails() {
        let report = |renewal: Option<&str>, left: Option<u64>, failing: f64| {
            json!({
                "credentials": {"renewal_failing": renewal, "expires_in_seconds": left},
                "endpoint": {"failing_for_seconds": failing, "io_timeout_seconds": 2.0,
                             "last_failure": "unreachable"},
            })
        };
        assert_eq!(trouble(&report(None, Some(3600), 0.0)), None);
        let refused = trouble(&report(Some("refused"), Some(3600), 0.0)).unwrap();
        assert!(refused.contains("STS refused the renewal"), "{refused}");
        assert!(refused.contains("expire in 1h"), "{refused}");
        // STS out of reach for a moment, with an hour left: not yet.
        assert_eq!(trouble(&report(Some("unreachable"), Some(3600), 0.0)), None);
        let low = trouble(&report(Some("unreachable"), Some(60), 0.0)).unwrap();
        assert!(low.contains("could not be reached"), "{low}");
        let expired = trouble(&report(Some("unreachable"), Some(0), 0.0)).unwrap();
        assert!(expired.contains("have expired"), "{expired}");
        assert_eq!(
            trouble(&report(None, None, 2.0)),
            None,
            "not longer than the timeout"
        );
        let failing = trouble(&report(None, None, 3.5)).unwrap();
        assert!(
            failing.contains("failed for 3s (the last: unreachable)"),
            "{failing}"
        );
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
            credentials: Some(Arc::new(|| CredentialStatus {
                renewals: 3,
                ..Default::default()
            })),
            audit: None,
            callers: CallerStats {
                host_pid_namespace: false,
                unseen_closes: AtomicU64::new(2),
            },
            errors: ErrnoStats::default(),
            io_timeout: Duration::from_secs(30),
            passthrough: Default::default(),
            heads_without_the_sdk: None,
        };
        stats.errors.record(libc::ENOENT);
        stats.errors.record(libc::ENOENT);
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
        assert!(text.contains("3 renewals, 0 failed"), "{text}");
        assert_eq!(report["errors_by_errno"], json!({"ENOENT": 2}));
        assert!(text.contains("errors       ENOENT 2"), "{text}");
        assert_eq!(report["requests_by_outcome"]["GetObject"], json!({"ok": 1}));
        assert_eq!(
            report["latency"]["total"]["GetObject"]["counts"]
                .as_array()
                .unwrap()
                .len(),
            15
        );
        assert!(text.contains("health       ok"), "{text}");
        assert_eq!(report["callers"]["unseen_closes"], 2);
        assert!(text.contains("PID namespace of its own"), "{text}");
        assert!(
            text.contains("2 closes by processes it cannot see"),
            "{text}"
        );
    }
}

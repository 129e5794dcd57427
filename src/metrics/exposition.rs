//! The Prometheus text exposition format (version 0.0.4) of one or more
//! volumes' reports: what `s3vol stats --json` prints, turned into metric
//! families. A mount serves its own; the CSI driver serves every volume it
//! runs, each series labelled with its volume.
//!
//! Nothing here names an object, a key or a credential: the report holds
//! counts, sizes and times, and the labels are fixed words, the volume's source
//! and the driver's volume IDs.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

use super::histogram::BOUNDS;

/// The labels a volume's series carry besides their own (the CSI driver's
/// `volume` and `target`).
pub type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Type {
    Counter,
    Gauge,
    Histogram,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        }
    }
}

struct Family {
    help: &'static str,
    kind: Type,
    /// Each line after the name: the name's suffix, the labels and the value.
    samples: Vec<(&'static str, Labels, f64)>,
}

/// Metric families by name, in the order the text shows them.
#[derive(Default)]
pub struct Exposition {
    families: BTreeMap<&'static str, Family>,
}

impl Exposition {
    fn family(&mut self, name: &'static str, help: &'static str, kind: Type) -> &mut Family {
        let family = self.families.entry(name).or_insert(Family {
            help,
            kind,
            samples: Vec::new(),
        });
        debug_assert_eq!(family.kind, kind, "{name}");
        family
    }

    fn sample(
        &mut self,
        (name, help, kind): (&'static str, &'static str, Type),
        labels: Labels,
        value: f64,
    ) {
        self.family(name, help, kind)
            .samples
            .push(("", labels, value));
    }

    /// A gauge of one value with `labels`; for series that are not in a
    /// volume's report (the driver's own).
    pub fn gauge(&mut self, name: &'static str, help: &'static str, labels: Labels, value: f64) {
        self.sample((name, help, Type::Gauge), labels, value);
    }

    /// Adds the series of one volume's `report`, each with `labels` first.
    pub fn add_report(&mut self, labels: &Labels, report: &Value) {
        let with = |extra: &[(&'static str, &str)]| -> Labels {
            let mut all = labels.clone();
            all.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
            all
        };
        let number = |path: &str| report.pointer(path).and_then(Value::as_f64);
        let put = |this: &mut Self, metric, path: &str, extra: &[(&'static str, &str)]| {
            if let Some(value) = number(path) {
                this.sample(metric, with(extra), value);
            }
        };
        let version = report["version"].as_str().unwrap_or("");
        let source = report["source"].as_str().unwrap_or("");
        let mode = report["mode"].as_str().unwrap_or("");
        self.sample(
            INFO,
            with(&[("version", version), ("source", source), ("mode", mode)]),
            1.0,
        );
        put(self, UPTIME, "/uptime_seconds", &[]);
        if let Some(ops) = report["requests_by_outcome"].as_object() {
            for (op, outcomes) in ops {
                for (outcome, n) in outcomes.as_object().into_iter().flatten() {
                    let value = n.as_f64().unwrap_or(0.0);
                    self.sample(
                        REQUESTS,
                        with(&[("operation", op), ("outcome", outcome)]),
                        value,
                    );
                }
            }
        }
        // The bounds the volume's daemon counted with (another version's may
        // differ).
        let bounds: Vec<f64> = match report["latency"]["bounds"].as_array() {
            Some(bounds) => bounds.iter().filter_map(Value::as_f64).collect(),
            None => BOUNDS.to_vec(),
        };
        for (key, metric) in [("total", DURATION), ("first_byte", FIRST_BYTE)] {
            let Some(ops) = report["latency"][key].as_object() else {
                continue;
            };
            for (op, histogram) in ops {
                self.histogram(metric, with(&[("operation", op)]), &bounds, histogram);
            }
        }
        put(
            self,
            S3_BYTES,
            "/bytes_from_s3",
            &[("direction", "received")],
        );
        put(self, S3_BYTES, "/bytes_to_s3", &[("direction", "sent")]);
        put(
            self,
            CACHE_HITS,
            "/cache/memory_hits",
            &[("tier", "memory")],
        );
        put(self, CACHE_HITS, "/cache/disk_hits", &[("tier", "disk")]);
        put(
            self,
            CACHE_HIT_BYTES,
            "/cache/memory_hit_bytes",
            &[("tier", "memory")],
        );
        put(
            self,
            CACHE_HIT_BYTES,
            "/cache/disk_hit_bytes",
            &[("tier", "disk")],
        );
        put(self, CACHE_MISSES, "/cache/misses", &[]);
        put(self, CACHE_EVICTIONS, "/cache/evictions", &[]);
        put(self, CACHE_DAMAGED, "/cache/damaged_blocks", &[]);
        put(self, CACHE_DISK_USED, "/cache/disk_used", &[]);
        put(self, CACHE_DISK_CAPACITY, "/cache/disk_capacity", &[]);
        put(self, MEMORY_LIMIT, "/memory/limit", &[]);
        put(self, MEMORY_POOL, "/memory/pool", &[]);
        put(self, MEMORY_IN_USE, "/memory/pool_in_use", &[]);
        put(self, MEMORY_NO_ROOM, "/memory/reads_without_room", &[]);
        put(self, MEMORY_WAITS, "/memory/upload_waits", &[]);
        if let Some(ms) = number("/memory/upload_wait_ms") {
            self.sample(MEMORY_WAITED, with(&[]), ms / 1000.0);
        }
        put(self, UPLOADS, "/uploads/objects", &[]);
        put(self, UPLOAD_PARTS, "/uploads/parts", &[]);
        put(self, UPLOADS_ABORTED, "/uploads/aborted", &[]);
        put(self, UPLOADS_IN_FLIGHT, "/uploads/in_flight", &[]);
        put(self, RENEWALS, "/credentials/renewals", &[]);
        put(self, RENEWAL_FAILURES, "/credentials/failed_renewals", &[]);
        put(
            self,
            CREDENTIALS_LEFT,
            "/credentials/expires_in_seconds",
            &[],
        );
        put(self, ENDPOINT_FAILING, "/endpoint/failing_for_seconds", &[]);
        if let Some(errnos) = report["errors_by_errno"].as_object() {
            for (errno, n) in errnos {
                let value = n.as_f64().unwrap_or(0.0);
                self.sample(FS_ERRORS, with(&[("errno", errno)]), value);
            }
        }
        put(self, AUDIT_LINES, "/audit/lines_written", &[]);
        put(self, AUDIT_DROPPED, "/audit/lines_dropped", &[]);
        put(self, UNSEEN_CLOSES, "/callers/unseen_closes", &[]);
    }

    /// A histogram from the report's `{"counts": [...], "sum": s}` over
    /// buckets `bounds`, with the cumulative buckets Prometheus reads.
    fn histogram(
        &mut self,
        (name, help, _): (&'static str, &'static str, Type),
        labels: Labels,
        bounds: &[f64],
        histogram: &Value,
    ) {
        let counts: Vec<f64> = histogram["counts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| n.as_f64().unwrap_or(0.0))
            .collect();
        if counts.len() != bounds.len() + 1 {
            return; // not shown rather than shown wrong
        }
        let family = self.family(name, help, Type::Histogram);
        let mut total = 0.0;
        for (i, n) in counts.iter().enumerate() {
            total += n;
            let le = bounds.get(i).map_or("+Inf".to_string(), f64::to_string);
            let mut bucket = labels.clone();
            bucket.push(("le", le));
            family.samples.push(("_bucket", bucket, total));
        }
        let sum = histogram["sum"].as_f64().unwrap_or(0.0);
        family.samples.push(("_sum", labels.clone(), sum));
        family.samples.push(("_count", labels, total));
    }

    /// The text, each family with its HELP and TYPE once.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, family) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.name());
            for (suffix, labels, value) in &family.samples {
                out.push_str(name);
                out.push_str(suffix);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (key, value)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{key}=\"{}\"", escape(value));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {value}");
            }
        }
        out
    }
}

/// A label value as the text format quotes it.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

type Metric = (&'static str, &'static str, Type);

const INFO: Metric = (
    "s3vol_info",
    "The volume: s3vol's version, the bucket and prefix mounted, and the mode (always 1).",
    Type::Gauge,
);
const UPTIME: Metric = (
    "s3vol_uptime_seconds",
    "Seconds since the volume was mounted.",
    Type::Gauge,
);
const REQUESTS: Metric = (
    "s3vol_requests_total",
    "Requests sent to S3 (every retry included), by S3 call and outcome.",
    Type::Counter,
);
const DURATION: Metric = (
    "s3vol_request_duration_seconds",
    "Time from sending a request to S3 to its whole answer (a GET's whole body), or until s3vol \
     gave it up, by S3 call.",
    Type::Histogram,
);
const FIRST_BYTE: Metric = (
    "s3vol_request_first_byte_seconds",
    "Time from sending a GET to S3 to the start of its answer, by S3 call.",
    Type::Histogram,
);
const S3_BYTES: Metric = (
    "s3vol_s3_bytes_total",
    "Object bytes received from S3 (GET bodies) and sent to it (PUT and part bodies).",
    Type::Counter,
);
const CACHE_HITS: Metric = (
    "s3vol_cache_hits_total",
    "Block reads answered by the block cache, by tier.",
    Type::Counter,
);
const CACHE_HIT_BYTES: Metric = (
    "s3vol_cache_hit_bytes_total",
    "Bytes the block cache delivered, by tier.",
    Type::Counter,
);
const CACHE_MISSES: Metric = (
    "s3vol_cache_misses_total",
    "Blocks the block cache fetched from S3.",
    Type::Counter,
);
const CACHE_EVICTIONS: Metric = (
    "s3vol_cache_evictions_total",
    "Block files removed to keep the disk cache within its size.",
    Type::Counter,
);
const CACHE_DAMAGED: Metric = (
    "s3vol_cache_damaged_blocks_total",
    "Block files found damaged (checksum mismatch) and removed.",
    Type::Counter,
);
const CACHE_DISK_USED: Metric = (
    "s3vol_cache_disk_used_bytes",
    "Bytes the disk cache holds.",
    Type::Gauge,
);
const CACHE_DISK_CAPACITY: Metric = (
    "s3vol_cache_disk_capacity_bytes",
    "The most the disk cache may hold (--cache-size).",
    Type::Gauge,
);
const MEMORY_LIMIT: Metric = (
    "s3vol_memory_limit_bytes",
    "The memory budget for file data (--max-memory).",
    Type::Gauge,
);
const MEMORY_POOL: Metric = (
    "s3vol_memory_pool_bytes",
    "Bytes of the memory budget's buffer pool.",
    Type::Gauge,
);
const MEMORY_IN_USE: Metric = (
    "s3vol_memory_pool_in_use_bytes",
    "Bytes of the buffer pool in use now.",
    Type::Gauge,
);
const MEMORY_NO_ROOM: Metric = (
    "s3vol_memory_reads_without_room_total",
    "Reads served without read-ahead because the memory budget was spent.",
    Type::Counter,
);
const MEMORY_WAITS: Metric = (
    "s3vol_memory_upload_waits_total",
    "Uploads that waited for room in the memory budget.",
    Type::Counter,
);
const MEMORY_WAITED: Metric = (
    "s3vol_memory_upload_wait_seconds_total",
    "Seconds uploads spent waiting for room in the memory budget.",
    Type::Counter,
);
const UPLOADS: Metric = (
    "s3vol_uploads_total",
    "Objects written to S3 (single PUTs, completed multipart uploads and copies).",
    Type::Counter,
);
const UPLOAD_PARTS: Metric = (
    "s3vol_upload_parts_total",
    "Parts uploaded or copied into multipart uploads.",
    Type::Counter,
);
const UPLOADS_ABORTED: Metric = (
    "s3vol_uploads_aborted_total",
    "Multipart uploads aborted.",
    Type::Counter,
);
const UPLOADS_IN_FLIGHT: Metric = (
    "s3vol_uploads_in_flight",
    "Multipart uploads begun and not yet completed or aborted.",
    Type::Gauge,
);
const RENEWALS: Metric = (
    "s3vol_credential_renewals_total",
    "Successful renewals of the volume's temporary credentials.",
    Type::Counter,
);
const RENEWAL_FAILURES: Metric = (
    "s3vol_credential_renewal_failures_total",
    "Attempts to renew the volume's credentials that failed (each is retried).",
    Type::Counter,
);
const CREDENTIALS_LEFT: Metric = (
    "s3vol_credentials_remaining_seconds",
    "Seconds until the volume's current credentials expire (absent for keys that do not).",
    Type::Gauge,
);
const ENDPOINT_FAILING: Metric = (
    "s3vol_endpoint_failing_seconds",
    "Seconds every request to S3 has failed for (0 while requests succeed).",
    Type::Gauge,
);
const FS_ERRORS: Metric = (
    "s3vol_fs_errors_total",
    "Filesystem calls answered with an error, by errno (ENOENT includes every lookup of a name that is not there).",
    Type::Counter,
);
const AUDIT_LINES: Metric = (
    "s3vol_audit_lines_total",
    "Lines written to the audit log.",
    Type::Counter,
);
const AUDIT_DROPPED: Metric = (
    "s3vol_audit_lines_dropped_total",
    "Audit lines dropped because the log could not keep up or be written.",
    Type::Counter,
);
const UNSEEN_CLOSES: Metric = (
    "s3vol_unseen_closes_total",
    "Closes by processes the daemon could not see (PID 0: another PID namespace).",
    Type::Counter,
);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn families_are_named_once_and_histograms_are_cumulative() {
        let mut counts = vec![0u64; BOUNDS.len() + 1];
        counts[0] = 2;
        counts[3] = 1;
        counts[BOUNDS.len()] = 1;
        let report = |source: &str| {
            json!({
                "version": "1.2.3", "source": source, "mode": "read-only",
                "uptime_seconds": 5,
                "requests_by_outcome": {"GetObject": {"ok": 3, "changed": 1}},
                "latency": {"total": {"GetObject": {"counts": counts, "sum": 40.5}}},
                "bytes_from_s3": 10, "bytes_to_s3": 0,
                "errors_by_errno": {"EIO": 2},
            })
        };
        let mut text = Exposition::default();
        text.add_report(&vec![("volume", "a".into())], &report("b/p\"x"));
        text.add_report(&vec![("volume", "b".into())], &report("c"));
        // A name cannot end a line or a value and start a series of its own.
        text.add_report(
            &vec![("volume", "x\"} 1\ns3vol_forged 1\\".into())],
            &report("d"),
        );
        let text = text.render();
        assert_eq!(
            text.matches("# TYPE s3vol_requests_total counter").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains(
                r#"s3vol_requests_total{volume="a",operation="GetObject",outcome="changed"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"source="b/p\"x""#), "{text}");
        assert!(
            !text.lines().any(|l| l.starts_with("s3vol_forged")),
            "{text}"
        );
        assert!(
            text.contains(r#"volume="x\"} 1\ns3vol_forged 1\\""#),
            "{text}"
        );
        assert!(
            text.contains(r#"s3vol_request_duration_seconds_bucket{volume="b",operation="GetObject",le="0.01"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"s3vol_request_duration_seconds_bucket{volume="b",operation="GetObject",le="+Inf"} 4"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"s3vol_request_duration_seconds_count{volume="a",operation="GetObject"} 4"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"s3vol_fs_errors_total{volume="a",errno="EIO"} 2"#),
            "{text}"
        );
        // What the report does not hold is not made up.
        assert!(!text.contains("s3vol_cache_misses_total"), "{text}");
    }
}

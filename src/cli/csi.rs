//! The options of `s3vol csi`: the node plugin's, and the controller's.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::values::*;

#[derive(Debug, Clone, Args)]
pub struct CsiArgs {
    /// Where kubelet reaches the plugin: unix:///PATH.
    #[arg(long, value_name = "unix:///PATH", env = "CSI_ENDPOINT", value_parser = parse_csi_endpoint)]
    pub endpoint: PathBuf,
    /// This node's name, as Kubernetes knows it (the DaemonSet passes
    /// spec.nodeName).
    #[arg(
        long,
        value_name = "NODE",
        env = "CSI_NODE_ID",
        required_unless_present = "controller"
    )]
    pub node_id: Option<String>,
    /// Serve the Controller service instead of the Node service: make a
    /// volume (a prefix of the StorageClass's bucket) for each claim, and
    /// delete it with the claim, with the provisioner Secret's credentials.
    /// Needs no root and mounts nothing.
    #[arg(long, conflicts_with_all = [
        "node_id", "state_dir", "cache_dir", "node_cache_size", "node_staging_size",
        "max_volumes", "mount_timeout", "stop_timeout", "metrics_listen",
    ])]
    pub controller: bool,
    /// Root's directory for what a published volume keeps (the pod's token).
    #[arg(long, value_name = "DIR", default_value = "/run/s3vol-csi")]
    pub state_dir: PathBuf,
    /// Directory for every volume's local data (cached blocks, files being
    /// written), a subdirectory per volume; as `s3vol mount --cache-dir`.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Let volumes sign with the driver's own identity (the node's instance
    /// profile, the driver's service account): to assume the role their
    /// Secret names, when that Secret holds no keys, or as themselves when
    /// they name nothing. Off by default: a volume's Secret must then bring
    /// keys, or the volume the pod's identity.
    #[arg(long)]
    pub allow_driver_credentials: bool,
    /// An S3 or STS endpoint volumes may name in endpoint_url or
    /// sts_endpoint_url (repeat for each; an http:// one is then allowed in
    /// clear). None: volumes use AWS's own endpoints only.
    #[arg(long = "allow-endpoint", value_name = "URL", value_parser = parse_url)]
    pub allow_endpoints: Vec<String>,
    /// Disk space every volume's block cache may take together (default: an
    /// eighth of the space free in --cache-dir when the driver starts).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub node_cache_size: Option<u64>,
    /// Disk space every volume's files being written may take together
    /// (default: an eighth of the space free in --cache-dir when the driver
    /// starts).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub node_staging_size: Option<u64>,
    /// The most volumes the node serves at once, reported to Kubernetes; a
    /// volume's default share of the budget is the budget divided by it.
    #[arg(long, value_name = "N", default_value = "32",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_volumes: u32,
    /// How long a publish waits for the volume to be mounted.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_ttl)]
    pub mount_timeout: Duration,
    /// How long an unpublish waits for the volume's daemon to stop: open files
    /// get 5 s to be closed and uploaded, then their uploads are aborted.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_ttl)]
    pub stop_timeout: Duration,
    /// Serve every volume's Prometheus metrics, each series labelled with its
    /// volume, at http://ADDR/metrics: a PORT (on 127.0.0.1), or IP:PORT.
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_listen)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Least severe messages to log.
    #[arg(long, value_name = "LEVEL", default_value = "info",
          value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: String,
}

//! `s3vol csi`: a CSI node plugin for Kubernetes. kubelet asks it, over gRPC on
//! a Unix socket, to publish a volume at a pod's target path; it mounts the
//! volume there with the credentials the PersistentVolume's Secret (or the
//! pod's own token) gives, one supervised daemon per target, and stops that
//! daemon when the pod goes.
//!
//! `request` checks what a publish asks for, `credentials` where its
//! credentials come from, and `budget` what of the node's disk it may take;
//! `volumes` runs the daemons (`tokens` keeps the pods' tokens for them);
//! `health` asks them how they are, for NodeGetVolumeStats and the metrics;
//! `service` answers the calls; `authority` relays each connection to them.
//!
//! With `--controller` it is the controller instead: for each claim of an
//! s3vol StorageClass the external-provisioner asks it to make a volume, a
//! prefix of the class's bucket, and later to delete it. `controller` answers
//! those calls; `provision` checks what a CreateVolume asks for, `volume_id`
//! is what a volume is known by, `lifecycle` makes it in its bucket and
//! `purge` deletes it.

mod authority;
pub mod budget;
pub mod controller;
pub mod credentials;
pub mod health;
pub mod lifecycle;
pub mod provision;
pub mod purge;
pub mod request;
pub mod service;
mod tokens;
pub mod volume_id;
pub mod volumes;

/// The messages and services of `csi.proto` (CSI spec v1.9, the calls s3vol
/// serves), with a client for tests and tools.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("csi.v1");

    /// Debug for a request that carries a Secret: its fields, the secrets
    /// but for their keys.
    macro_rules! debug_without_secrets {
        ($message:ident { $($field:ident),* }) => {
            impl std::fmt::Debug for $message {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    let mut secrets: Vec<&String> = self.secrets.keys().collect();
                    secrets.sort();
                    f.debug_struct(stringify!($message))
                        $(.field(stringify!($field), &self.$field))*
                        .field("secrets", &secrets)
                        .finish()
                }
            }
        };
    }

    debug_without_secrets!(CreateVolumeRequest {
        name,
        capacity_range,
        volume_capabilities,
        parameters,
        volume_content_source,
        accessibility_requirements,
        mutable_parameters
    });
    debug_without_secrets!(DeleteVolumeRequest { volume_id });
    debug_without_secrets!(ValidateVolumeCapabilitiesRequest {
        volume_id,
        volume_context,
        volume_capabilities,
        parameters,
        mutable_parameters
    });
    debug_without_secrets!(CreateSnapshotRequest {
        source_volume_id,
        name
    });

    impl std::fmt::Debug for NodePublishVolumeRequest {
        /// Everything but the secrets, which only their keys stand for.
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let mut secrets: Vec<&String> = self.secrets.keys().collect();
            secrets.sort();
            f.debug_struct("NodePublishVolumeRequest")
                .field("volume_id", &self.volume_id)
                .field("target_path", &self.target_path)
                .field("volume_capability", &self.volume_capability)
                .field("readonly", &self.readonly)
                .field("secrets", &secrets)
                .field(
                    "volume_context",
                    &self.volume_context.keys().collect::<Vec<_>>(),
                )
                .finish()
        }
    }
}

use std::path::PathBuf;
use std::sync::Arc;

use tracing::{error, info};

/// How `s3vol csi` was asked to run.
#[derive(Clone, Debug)]
pub struct CsiConfig {
    /// The Unix socket to listen on.
    pub socket: PathBuf,
    pub node_id: String,
    /// What the operator allows volumes.
    pub rules: request::Rules,
    pub volumes: volumes::Settings,
    /// The disk space and number of volumes the node gives its volumes.
    pub budget: budget::NodeBudget,
    /// Where every volume's metrics are served (`--metrics-listen`).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Serves the plugin until SIGTERM or SIGINT, then stops every volume.
pub async fn serve(config: CsiConfig) -> Result<(), String> {
    let volumes = Arc::new(volumes::Volumes::new(
        config.volumes.clone(),
        config.budget,
    )?);
    let metrics = config
        .metrics_listen
        .map(crate::metrics::bind)
        .transpose()?;
    let listener = listen(&config.socket)?;
    let prober = Arc::new(health::Prober::default());
    let plugin = Arc::new(service::Plugin {
        node_id: config.node_id.clone(),
        volumes: volumes.clone(),
        rules: config.rules.clone(),
        max_volumes: config.budget.max_volumes,
        prober: prober.clone(),
    });
    if let Some(metrics) = metrics {
        let scrape = Arc::new(service::DriverMetrics {
            volumes: volumes.clone(),
            prober,
        });
        tokio::spawn(crate::metrics::serve(metrics, scrape));
    }
    let stopping = stopping()?;
    info!(socket = %config.socket.display(), node = %config.node_id, driver = service::DRIVER_NAME,
          "serving CSI");
    info!(
        cache = %crate::stats::bytes(config.budget.cache),
        staging = %crate::stats::bytes(config.budget.staging),
        max_volumes = config.budget.max_volumes,
        endpoints = ?config.rules.endpoints,
        driver_credentials = config.rules.allow_driver_credentials,
        "the node's volumes share this budget and may use these endpoints"
    );
    let identity = service::PluginIdentity { controller: false };
    let served = tonic::transport::Server::builder()
        .add_service(proto::identity_server::IdentityServer::new(identity))
        .add_service(proto::node_server::NodeServer::new(plugin))
        .serve_with_incoming_shutdown(connections(listener), stopping)
        .await;
    volumes.stop_all().await;
    let _ = std::fs::remove_file(&config.socket);
    served.map_err(server_failed)
}

/// Serves the Controller service (`s3vol csi --controller`) until SIGTERM or
/// SIGINT; a deletion under way is cut short, and finished by the call that
/// the provisioner sends again to the next controller.
pub async fn serve_controller(socket: PathBuf, rules: request::Rules) -> Result<(), String> {
    let stopping = stopping()?;
    let listener = listen(&socket)?;
    info!(socket = %socket.display(), driver = service::DRIVER_NAME,
          endpoints = ?rules.endpoints, driver_credentials = rules.allow_driver_credentials,
          "serving the CSI controller");
    let controller = Arc::new(controller::Provisioner::new(rules));
    let identity = service::PluginIdentity { controller: true };
    let served = tonic::transport::Server::builder()
        .add_service(proto::identity_server::IdentityServer::new(identity))
        .add_service(proto::controller_server::ControllerServer::new(controller))
        .serve_with_incoming_shutdown(connections(listener), stopping)
        .await;
    let _ = std::fs::remove_file(&socket);
    served.map_err(server_failed)
}

/// The gRPC server's failure, logged and said.
fn server_failed(e: tonic::transport::Error) -> String {
    error!("gRPC server failed: {e}");
    format!("the gRPC server failed: {e}")
}

/// What resolves at SIGTERM or SIGINT.
fn stopping() -> Result<impl Future<Output = ()>, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let watch = |kind| signal(kind).map_err(|e| format!("cannot watch for stop signals: {e}"));
    let (mut terminate, mut interrupt) = (
        watch(SignalKind::terminate())?,
        watch(SignalKind::interrupt())?,
    );
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        info!("signal received; stopping");
    })
}

/// The connections to the socket, each through a relay that lets any client
/// name any `:authority` ([`authority`]).
fn connections(
    listener: tokio::net::UnixListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::io::DuplexStream>> {
    use tokio_stream::StreamExt;
    /// Room for a frame or two each way; CSI calls are small.
    const RELAY_BUFFER: usize = 64 << 10;
    tokio_stream::wrappers::UnixListenerStream::new(listener).map(|accepted| {
        let client = accepted?;
        let (server, relayed) = tokio::io::duplex(RELAY_BUFFER);
        tokio::spawn(authority::relay(client, relayed));
        Ok(server)
    })
}

/// The socket, replacing one a previous run left behind (but no other file).
fn listen(socket: &std::path::Path) -> Result<tokio::net::UnixListener, String> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    let shown = socket.display();
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create the socket's directory for {shown}: {e}"))?;
    }
    match std::fs::symlink_metadata(socket) {
        // Replaced below, at once: never a moment without one.
        Ok(meta) if meta.file_type().is_socket() => {}
        Ok(_) => {
            return Err(format!(
                "{shown} exists and is not a socket; give --endpoint a path of its own"
            ));
        }
        Err(_) => {}
    }
    // Made listening and private in a directory of its own, then put in
    // place: whoever finds the socket can connect (no refusal while it is
    // being set up), and only root (kubelet, the sidecars) ever can.
    let parent = socket.parent().unwrap_or(std::path::Path::new("."));
    let private = parent.join(format!(".s3vol-csi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| format!("cannot create {}: {e}", private.display()))?;
    let made = private.join("s");
    let listened = tokio::net::UnixListener::bind(&made)
        .map_err(|e| {
            format!(
                "cannot listen on {} (made there, then put at {shown}): {e}",
                made.display()
            )
        })
        .and_then(|listener| {
            std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("cannot restrict {shown}: {e}"))?;
            std::fs::rename(&made, socket)
                .map_err(|e| format!("cannot put the socket at {shown}: {e}"))?;
            Ok(listener)
        });
    let _ = std::fs::remove_dir_all(&private);
    listened
}

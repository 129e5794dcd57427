//! The CSI Identity and Node services, over the volumes this node serves.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::{info, warn};

use futures::future::BoxFuture;

use super::health::{Prober, Published};
use super::proto::identity_server::Identity;
use super::proto::node_server::Node;
use super::proto::*;
use super::request;
use super::volumes::Volumes;
use crate::metrics::{Exposition, Scrape};

/// The driver's name: the CSIDriver object and the PVs' `csi.driver` say it.
pub const DRIVER_NAME: &str = "csi.s3vol.io";

pub struct Plugin {
    pub node_id: String,
    pub volumes: Arc<Volumes>,
    /// What the operator allows volumes: endpoints, the driver's identity.
    pub rules: request::Rules,
    /// The most volumes the node serves at once, for the scheduler.
    pub max_volumes: u32,
    /// Asks the volumes how they are.
    pub prober: Arc<Prober>,
}

/// The Identity service: the driver's name, and whether it serves the
/// Controller service (`s3vol csi --controller`) or the Node service.
pub struct PluginIdentity {
    pub controller: bool,
}

#[tonic::async_trait]
impl Identity for PluginIdentity {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        use plugin_capability::service::Type;
        let capabilities = match self.controller {
            true => vec![PluginCapability {
                r#type: Some(plugin_capability::Type::Service(
                    plugin_capability::Service {
                        r#type: Type::ControllerService as i32,
                    },
                )),
            }],
            false => Vec::new(),
        };
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}

/// Runs `work` to its end even if the call that asked for it is given up (its
/// deadline passes, or the client goes): a publish half done would hold a
/// share of the node's budget, and a daemon no one supervises.
pub(super) async fn to_the_end<T: Send + 'static>(
    work: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(work)
        .await
        .unwrap_or_else(|e| Err(Status::internal(format!("the call failed: {e}"))))
}

#[tonic::async_trait]
impl Node for Arc<Plugin> {
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let request = request.into_inner();
        let refused = |request::Invalid(why)| Status::invalid_argument(why);
        let mut publish = request::parse(&request, crate::cli::mount_option).map_err(refused)?;
        publish.authorize(&self.rules).map_err(refused)?;
        // The option values are checked by the mount's own parser, so a bad one
        // is refused here with its name rather than by the daemon.
        crate::cli::check_mount_options(&publish.mount_options())
            .map_err(Status::invalid_argument)?;
        info!(volume = %publish.volume_id, target = %publish.target.display(),
              source = %publish.source, read_write = publish.read_write, "publish");
        let volumes = self.volumes.clone();
        let result = to_the_end(async move { volumes.publish(publish).await }).await;
        if let Err(status) = &result {
            warn!(volume = %request.volume_id, code = ?status.code(), "publish failed: {}",
                  status.message());
        }
        result.map(|()| Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let request = request.into_inner();
        let target = request::unpublish_target(&request)
            .map_err(|request::Invalid(why)| Status::invalid_argument(why))?;
        info!(volume = %request.volume_id, target = %target.display(), "unpublish");
        let volumes = self.volumes.clone();
        to_the_end(async move { volumes.unpublish(&target).await }).await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    /// Volume stats, with the volume's condition: kubelet shows it on the
    /// pod's events and in its metrics.
    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::rpc::Type;
        let capability = |kind: Type| NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(
                node_service_capability::Rpc {
                    r#type: kind as i32,
                },
            )),
        };
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![
                capability(Type::GetVolumeStats),
                capability(Type::VolumeCondition),
            ],
        }))
    }

    /// Whether the volume is well (see `health`). S3 has no capacity and
    /// s3vol does not count a prefix's bytes, so the usage is all zeros: there
    /// because kubelet requires one, and zero because nothing is known.
    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let request = request.into_inner();
        let path = request::stats_path(&request)
            .map_err(|request::Invalid(why)| Status::invalid_argument(why))?;
        let volume = match self.volumes.published_at(&path) {
            Some(volume) if volume.volume_id == request.volume_id => volume,
            Some(volume) => {
                return Err(Status::not_found(format!(
                    "volume_path {} has volume {} published, not {}",
                    path.display(),
                    volume.volume_id,
                    request.volume_id
                )));
            }
            // Published by a driver that ran before this one (its daemon may
            // have died with it): asked as it is, until the next republish
            // records it.
            None if crate::mountinfo::mounted_at(&path).as_deref() == Some("fuse.s3vol") => {
                Published::new(&request.volume_id, &path, None)
            }
            None => {
                return Err(Status::not_found(format!(
                    "volume {} is not published at volume_path {} on this node",
                    request.volume_id,
                    path.display()
                )));
            }
        };
        let (trouble, _) = self.prober.condition(&volume).await;
        if let Some(why) = &trouble {
            warn!(volume = %volume.volume_id, target = %path.display(), "abnormal: {why}");
        }
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage: vec![VolumeUsage {
                unit: volume_usage::Unit::Bytes as i32,
                ..Default::default()
            }],
            volume_condition: Some(VolumeCondition {
                abnormal: trouble.is_some(),
                message: trouble.unwrap_or_else(|| "the volume answers and reaches S3".into()),
            }),
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: i64::from(self.max_volumes),
            accessible_topology: None,
        }))
    }
}

/// The driver's metrics endpoint: every published volume's report, each
/// series labelled with the volume and its target, and whether each answers.
pub struct DriverMetrics {
    pub volumes: Arc<Volumes>,
    pub prober: Arc<Prober>,
}

impl Scrape for DriverMetrics {
    fn scrape(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            let published = self.volumes.published();
            let conditions = published.iter().map(|volume| self.prober.condition(volume));
            let conditions = futures::future::join_all(conditions).await;
            let mut text = Exposition::default();
            text.gauge(
                "s3vol_csi_volumes",
                "Volumes this node plugin has published.",
                Vec::new(),
                published.len() as f64,
            );
            for (volume, (trouble, report)) in published.iter().zip(conditions) {
                let labels = vec![
                    ("volume", volume.volume_id.clone()),
                    ("target", volume.target.display().to_string()),
                ];
                text.gauge(
                    "s3vol_volume_up",
                    "Whether the volume's daemon answered the scrape (1) or not (0).",
                    labels.clone(),
                    if report.is_some() { 1.0 } else { 0.0 },
                );
                text.gauge(
                    "s3vol_volume_abnormal",
                    "Whether NodeGetVolumeStats reports the volume abnormal (1) or not (0).",
                    labels.clone(),
                    if trouble.is_some() { 1.0 } else { 0.0 },
                );
                if let Some(report) = report {
                    text.add_report(&labels, &report);
                }
            }
            text.render()
        })
    }
}

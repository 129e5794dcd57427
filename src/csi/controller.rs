//! The CSI Controller service (`s3vol csi --controller`): CreateVolume makes
//! a volume as a prefix of the StorageClass's bucket ([`provision`] checks
//! the call, [`lifecycle`] makes it in S3), DeleteVolume deletes it
//! ([`purge`]), each with the provisioner Secret's credentials and nothing of
//! the controller's own unless the operator allows it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::credentials::{Credentials, Invalid};
use super::lifecycle::{self, MakeError, Marker, Volume};
use super::proto::controller_server::Controller;
use super::proto::*;
use super::provision::{self, Plan};
use super::purge::{self, Progress, Purged};
use super::request::{self, Rules};
use super::service::to_the_end;
use super::volume_id::{Location, Unusable};
use crate::auth::{BaseCredentials, RoleOptions};
use crate::preflight::{self, Outcome, ProbeMode};
use crate::store::stack::Connection;
use crate::store::{Encryption, ObjectStore, StoreError};

/// How long a role session the controller assumes lasts: the shortest AWS
/// allows, as a call needs minutes at most.
const SESSION: Duration = Duration::from_secs(900);

/// The controller: what the operator allows, and the deletions under way.
pub struct Provisioner {
    pub rules: Rules,
    /// Deletions under way, by volume ID: a second call for one (its first
    /// was given up on by its caller, whose retry comes while the work goes
    /// on) is told so, not started twice.
    deleting: Mutex<HashMap<String, Arc<Progress>>>,
}

impl Provisioner {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            deleting: Mutex::default(),
        }
    }
}

fn refused(Invalid(why): Invalid) -> Status {
    Status::invalid_argument(why)
}

/// A store for the volume at `location`, signing with `credentials` (the
/// provisioner Secret's), as `session` in CloudTrail when a role is assumed.
async fn store(
    location: &Location,
    credentials: &Credentials,
    session: &str,
    encryption: Option<Encryption>,
) -> Result<Arc<dyn ObjectStore>, Status> {
    let Credentials::Secret { keys, role } = credentials else {
        return Err(Status::invalid_argument(
            "the provisioner's credentials come from its Secret, never a pod's token",
        ));
    };
    let connection = Connection {
        region: location.region.clone(),
        endpoint_url: location.endpoint.clone(),
        force_path_style: location.path_style,
        // No profile file of the controller's container is read or run.
        base: keys.clone().map_or(
            BaseCredentials::ChainWithoutSharedFiles,
            BaseCredentials::Keys,
        ),
        encryption,
        io_timeout: Duration::from_secs(30),
        role: role.as_ref().map(|role| RoleOptions {
            role_arn: role.arn.clone(),
            external_id: role.external_id.clone(),
            session_name: session.to_string(),
            duration: SESSION,
            sts_endpoint_url: location.sts_endpoint.clone(),
        }),
        renew_before: Duration::from_secs(300),
        sign_payloads: location
            .endpoint
            .as_deref()
            .is_some_and(crate::values::in_clear_beyond_this_host),
    };
    let (store, _) = connection
        .command_store(&location.source.bucket)
        .await
        .map_err(failure_status)?;
    Ok(store)
}

/// The gRPC answer to a request S3 failed: a refusal names the IAM action the
/// provisioner Secret's credentials lack. What the endpoint said is quoted
/// without its control characters, and cut short.
fn store_status(e: StoreError) -> Status {
    let (code, text) = match &e {
        StoreError::AccessDenied { op, resource, info } => (
            tonic::Code::PermissionDenied,
            format!(
                "AccessDenied: {} on {resource} ({info}): the provisioner Secret's \
                 credentials may not do this; allow it in the policy of the role or user \
                 they are for",
                op.iam_action()
            ),
        ),
        StoreError::BadSignature { op, info } => (
            tonic::Code::PermissionDenied,
            match info.code.as_str() {
                "RequestTimeTooSkewed" => format!(
                    "{op}: S3 refused the request's time ({info}): this node's clock is more \
                     than 15 minutes from S3's; set it right"
                ),
                _ => format!(
                    "{op}: S3 refused the signature of the provisioner Secret's credentials \
                     ({info}): check the access key ID and secret access key in the Secret"
                ),
            },
        ),
        StoreError::NoSuchBucket { .. } => (tonic::Code::NotFound, e.to_string()),
        e if e.is_endpoint_failure() => (tonic::Code::Unavailable, e.to_string()),
        e => (tonic::Code::Internal, e.to_string()),
    };
    Status::new(code, quoted(&text))
}

/// [`super::volumes::failure_status`], its words quoted.
fn failure_status(failure: crate::startup::StartError) -> Status {
    let status = super::volumes::failure_status(failure);
    Status::new(status.code(), quoted(status.message()))
}

/// `text` from an endpoint, fit for a status and a claim's events.
fn quoted(text: &str) -> String {
    /// Enough for any message S3 gives.
    const LONGEST: usize = 1000;
    let mut text = super::volumes::without_controls(text);
    if text.len() > LONGEST {
        let mut end = LONGEST;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Checks, without changing anything, that the provisioner's credentials may
/// list the unfinished uploads deleting the volume will abort. (What it lists
/// of versions, `lifecycle::make` lists anyway; deleting itself cannot be
/// tried without leaving a trace on a versioned bucket.)
async fn probe_deletion(store: &dyn ObjectStore, location: &Location) -> Result<(), Status> {
    store
        .first_multipart_uploads(location.marker_key(), 1)
        .await
        .map_err(store_status)?;
    Ok(())
}

/// The session name the controller's calls appear under in CloudTrail.
fn session_name(volume: &str) -> String {
    crate::auth::session_name(&format!("s3vol-provisioner-{volume}"))
}

impl Provisioner {
    /// Checks with the provisioner credentials what a read-write volume
    /// needs under the prefix (the probes of `s3vol check --read-write`),
    /// then makes the volume, or finds it made.
    async fn create(&self, plan: Plan) -> Result<Volume, Status> {
        let option = |name| plan.publish.option(name).cloned().flatten();
        let encryption = crate::cli::encryption(
            option("sse").as_deref(),
            option("sse-kms-key-id").as_deref(),
        )
        .map_err(Status::invalid_argument)?;
        let store = store(
            &plan.location,
            &plan.credentials,
            &session_name(&plan.name),
            encryption,
        )
        .await?;
        let source = &plan.location.source;
        let endpoint = plan
            .location
            .endpoint
            .clone()
            .unwrap_or_else(|| "the AWS S3 endpoint".into());
        let mode = ProbeMode {
            read_write: true,
            delete: false,
        };
        let probes = preflight::probe_access(store.as_ref(), source, mode, &endpoint, None)
            .await
            .map_err(failure_status)?;
        for probe in probes {
            if let Outcome::Denied { fix, info } = probe.outcome {
                return Err(Status::permission_denied(quoted(&format!(
                    "AccessDenied: {} on {} ({info}): the provisioner Secret's credentials \
                     cannot make a read-write volume there: {fix} in their policy",
                    probe.action, probe.resource
                ))));
            }
        }
        probe_deletion(store.as_ref(), &plan.location).await?;
        let volume = Volume {
            name: plan.name.clone(),
            volume_id: plan.volume_id.clone(),
        };
        lifecycle::make(store.as_ref(), &plan.location, &volume)
            .await
            .map_err(|e| match e {
                MakeError::Store(e) => store_status(e),
                e @ (MakeError::Taken { .. } | MakeError::Changed { .. }) => {
                    Status::already_exists(e.to_string())
                }
                e @ MakeError::NotEmpty { .. } => Status::failed_precondition(e.to_string()),
            })?;
        Ok(volume)
    }

    /// Deletes the volume `volume_id` names, if its marker says it is one of
    /// this driver's; the deletion goes on if the call is given up on.
    async fn delete(
        self: &Arc<Self>,
        volume_id: &str,
        secrets: &HashMap<String, String>,
    ) -> Result<(), Status> {
        let location = match Location::parse(volume_id, &self.rules.endpoints) {
            Ok(Some(location)) => location,
            Ok(None) => {
                // Not an ID this driver makes: no volume of its to delete.
                warn!(
                    volume = volume_id,
                    "not a volume this driver made; nothing deleted"
                );
                return Ok(());
            }
            Err(Unusable::Malformed(why)) => {
                warn!(volume = volume_id, "{why}; nothing deleted");
                return Ok(());
            }
            Err(Unusable::Endpoint(why)) => return Err(Status::failed_precondition(why)),
        };
        let credentials =
            provision::provisioner_credentials(secrets, &self.rules).map_err(refused)?;
        let progress = {
            let mut deleting = self.deleting.lock();
            if let Some(progress) = deleting.get(volume_id) {
                return Err(Status::aborted(format!(
                    "volume {volume_id} is being deleted ({} objects so far); ask again later",
                    progress.deleted()
                )));
            }
            let progress = Arc::new(Progress::default());
            deleting.insert(volume_id.to_string(), progress.clone());
            progress
        };
        let done = Done {
            provisioner: self.clone(),
            volume_id: volume_id.to_string(),
        };
        to_the_end(async move {
            let id = &done.volume_id;
            done.provisioner
                .purge(id, &location, &credentials, &progress)
                .await
        })
        .await
    }

    async fn purge(
        &self,
        volume_id: &str,
        location: &Location,
        credentials: &Credentials,
        progress: &Progress,
    ) -> Result<(), Status> {
        let prefix = location.marker_key();
        let session = session_name(
            prefix
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(""),
        );
        let store = store(location, credentials, &session, None).await?;
        let volume = match lifecycle::marker(store.as_ref(), location)
            .await
            .map_err(store_status)?
        {
            Marker::Volume(volume) if volume.volume_id == volume_id => volume,
            Marker::Volume(other) => {
                // This volume is gone, and its prefix made another's since.
                info!(
                    volume = volume_id,
                    other = other.volume_id,
                    "{prefix} is another volume now; nothing deleted"
                );
                return Ok(());
            }
            Marker::Absent | Marker::Foreign => {
                // Gone, unless its marker alone was removed (by whoever may
                // write there): then what is left is not known to be the
                // volume's, and stays, but not unsaid.
                if lifecycle::first_object(store.as_ref(), location)
                    .await
                    .map_err(store_status)?
                    .is_some()
                {
                    return Err(Status::failed_precondition(format!(
                        "{prefix} in bucket {} holds objects but no marker of volume \
                         {volume_id}, so they are not known to be the volume's: nothing was \
                         deleted; delete them by hand, or leave them and delete the \
                         PersistentVolume",
                        location.source.bucket
                    )));
                }
                info!(volume = volume_id, "no volume at {prefix}: already deleted");
                return Ok(());
            }
        };
        info!(
            volume = volume_id,
            name = volume.name,
            versions = location.delete_versions,
            "deleting every object under {prefix}"
        );
        let until = std::time::Instant::now() + purge::ONE_CALL;
        match purge::purge(store.as_ref(), location, progress, until).await {
            Ok(Purged::Done) => Ok(()),
            Ok(Purged::Paused) => Err(Status::unavailable(format!(
                "{} objects of volume {volume_id} deleted so far; the deletion goes on at the \
                 next call",
                progress.deleted()
            ))),
            Err(e) => Err(store_status(e)),
        }
    }
}

/// Ends a deletion's record when the deletion ends, even by a panic.
struct Done {
    provisioner: Arc<Provisioner>,
    volume_id: String,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.provisioner.deleting.lock().remove(&self.volume_id);
    }
}

#[tonic::async_trait]
impl Controller for Arc<Provisioner> {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let request = request.into_inner();
        let plan = provision::plan(&request, &self.rules).map_err(refused)?;
        info!(name = plan.name, volume = plan.volume_id, "create");
        let (volume_id, context, capacity_bytes) = (
            plan.volume_id.clone(),
            plan.context.clone(),
            plan.capacity_bytes,
        );
        let this = self.clone();
        let result = to_the_end(async move { this.create(plan).await }).await;
        if let Err(status) = &result {
            warn!(name = request.name, code = ?status.code(), "create failed: {}", status.message());
        }
        result?;
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(super::proto::Volume {
                capacity_bytes,
                volume_id,
                volume_context: context,
                ..Default::default()
            }),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let request = request.into_inner();
        if request.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is missing"));
        }
        info!(volume = request.volume_id, "delete");
        let result = self.delete(&request.volume_id, &request.secrets).await;
        if let Err(status) = &result {
            warn!(volume = request.volume_id, code = ?status.code(), "delete failed: {}",
                  status.message());
        }
        result.map(|()| Response::new(DeleteVolumeResponse {}))
    }

    /// Every filesystem access mode is served; a block volume is not.
    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let request = request.into_inner();
        if request.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is missing"));
        }
        if request.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is missing"));
        }
        match Location::parse(&request.volume_id, &self.rules.endpoints) {
            Ok(Some(_)) | Err(Unusable::Endpoint(_)) => {}
            Ok(None) | Err(Unusable::Malformed(_)) => {
                return Err(Status::not_found(format!(
                    "volume_id {:?} is not a volume this driver made",
                    request.volume_id
                )));
            }
        }
        let unsupported = request
            .volume_capabilities
            .iter()
            .find_map(|c| request::writer(Some(c), "volume_capabilities").err());
        Ok(Response::new(match unsupported {
            Some(Invalid(why)) => ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: why,
            },
            None => ValidateVolumeCapabilitiesResponse {
                confirmed: Some(validate_volume_capabilities_response::Confirmed {
                    volume_context: request.volume_context,
                    volume_capabilities: request.volume_capabilities,
                    parameters: request.parameters,
                    mutable_parameters: Default::default(),
                }),
                message: String::new(),
            },
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        use controller_service_capability::rpc::Type;
        let capability = ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(
                controller_service_capability::Rpc {
                    r#type: Type::CreateDeleteVolume as i32,
                },
            )),
        };
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![capability],
        }))
    }

    async fn create_snapshot(
        &self,
        _: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        Err(Status::unimplemented(
            "source_volume_id: s3vol volumes have no snapshots; use the bucket's versioning \
             and s3vol's --version-at to see a volume as it was",
        ))
    }

    async fn controller_expand_volume(
        &self,
        _: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "capacity_range: an s3vol volume has no size to expand (S3 sets no bound); its \
             capacity is a label",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::lifecycle::tests::location;
    use crate::store::Operation;
    use crate::store::faulty::{Fault, FaultyStore};
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn a_claim_whose_volume_could_not_be_deleted_is_refused_with_the_action_named() {
        let store = FaultyStore::new(Arc::new(MemoryStore::new("bkt")));
        probe_deletion(&store, &location("vols/a")).await.unwrap();
        store.fail_all(Operation::ListMultipartUploads, Fault::AccessDenied);
        let status = probe_deletion(&store, &location("vols/a"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("s3:ListBucketMultipartUploads"),
            "{status:?}"
        );
    }

    /// A signature S3 refuses (a provisioner Secret with a wrong secret key,
    /// or a clock far off) is a refusal, with what to fix, not an internal
    /// error.
    #[tokio::test]
    async fn a_refused_signature_is_a_refusal_that_says_what_to_fix() {
        let store = FaultyStore::new(Arc::new(MemoryStore::new("bkt")));
        for (code, says) in [
            ("RequestTimeTooSkewed", "clock"),
            ("SignatureDoesNotMatch", "provisioner Secret"),
        ] {
            store.clear();
            store.fail_all(Operation::ListMultipartUploads, Fault::Forbidden(code));
            let status = probe_deletion(&store, &location("vols/a"))
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{code}");
            let said = status.message();
            assert!(said.contains(says), "{code}: {said}");
            assert!(!said.contains("--profile"), "{code}: {said}");
        }
    }

    #[test]
    fn an_endpoint_s_words_are_quoted_without_control_characters_and_cut_short() {
        let said = quoted(&format!("AccessDenied\nforged line {}", "é".repeat(2000)));
        assert!(!said.contains('\n'), "{said}");
        assert!(said.len() <= 1000 + '…'.len_utf8(), "{}", said.len());
        assert!(said.ends_with('…'));
    }
}

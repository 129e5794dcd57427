//! Start-up checks: can these credentials read (and, for a read-write volume,
//! write) this volume? Each failure becomes one sentence that says what is wrong and
//! what to do, instead of a stack of SDK errors.

use crate::cse::kms::KmsError;
use crate::cse::volume::VolumeEncryption;
use crate::names::Source;
use crate::startup::{Kind, StartError};
use crate::store::{
    ListRequest, ObjectHeaders, ObjectStore, ServiceInfo, StoreError, Versioning, VersionsRequest,
    bucket_arn,
};

/// Why a volume cannot be mounted, as the user should read it.
pub type PreflightError = StartError;

/// The mount's start-up check: the probes of `s3vol check` for the mode (a one-key
/// listing under the prefix and HeadObject of the first object, exactly where the
/// mount will need s3:ListBucket and s3:GetObject, never HeadBucket, which a
/// prefix-scoped policy rightly denies; for read-write, an upload started and
/// aborted), failing on the first denial. A read-only volume of a prefix with no
/// key is refused too: it could only ever show nothing.
pub async fn check_mount(
    store: &dyn ObjectStore,
    source: &Source,
    read_write: bool,
    endpoint: &str,
    encryption: Option<&VolumeEncryption>,
) -> Result<(), PreflightError> {
    let mode = ProbeMode {
        read_write,
        delete: false,
    };
    let probes = probe_access(store, source, mode, endpoint, encryption).await?;
    for probe in &probes {
        match &probe.outcome {
            Outcome::Denied { fix, info } => {
                // A bucket policy that denies aws:SecureTransport false refuses
                // every request over http, whatever the IAM policy allows.
                let tls = if endpoint.starts_with("http://") {
                    format!(
                        ". The endpoint is plain http: if the bucket policy requires TLS \
                         (denies aws:SecureTransport false), every request over http is \
                         refused like this; use https:// for {endpoint}"
                    )
                } else {
                    String::new()
                };
                return Err(StartError::new(
                    Kind::Denied,
                    format!(
                        "AccessDenied: {} on {} ({info}). The credentials in use are not \
                     allowed to do this: {fix} in the IAM policy, or check which credentials \
                     are in use (--profile, --role-arn, AWS_* variables){tls}",
                        probe.action, probe.resource
                    ),
                ));
            }
            Outcome::Skipped(_)
                if probe.action == "s3:GetObject" && !source.prefix.is_root() && !read_write =>
            {
                return Err(StartError::new(
                    Kind::NotFound,
                    format!(
                        "prefix '{}' does not exist in bucket '{}': no key starts with it. \
                     Check the spelling (keys are case-sensitive); a read-only volume of an \
                     empty prefix would show nothing",
                        source.prefix, source.bucket
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks, for a view of the past (`--version-at`), that the bucket keeps
/// versions and that the credentials may list and read them.
pub async fn check_versions(
    store: &dyn ObjectStore,
    source: &Source,
    endpoint: &str,
) -> Result<(), PreflightError> {
    let bucket = &source.bucket;
    let denied = |action: &str, resource: String, info: &ServiceInfo| {
        StartError::new(
            Kind::Denied,
            format!(
                "AccessDenied: {action} on {resource} ({info}). A view of the past (--version-at) \
             needs s3:GetBucketVersioning, s3:ListBucketVersions and s3:GetObjectVersion \
             besides what a read-only volume needs: `s3vol policy {source} --version-at 1d` \
             prints them"
            ),
        )
    };
    match store.bucket_versioning().await {
        Ok(Versioning::Never) => {
            return Err(StartError::other(format!(
                "bucket '{bucket}' does not keep versions (versioning was never turned on), \
                 so it cannot be shown as it was: --version-at needs versioning, which keeps \
                 what is overwritten and deleted from then on (aws s3api \
                 put-bucket-versioning --bucket {bucket} --versioning-configuration \
                 Status=Enabled)"
            )));
        }
        Ok(_) => {}
        Err(StoreError::AccessDenied { op, resource, info }) => {
            return Err(denied(op.iam_action(), resource, &info));
        }
        Err(e) => return Err(explain(e, source, endpoint)),
    }
    let listing = VersionsRequest {
        prefix: source.prefix.as_str(),
        max_keys: Some(1),
        ..VersionsRequest::default()
    };
    match store.list_versions(listing).await {
        Ok(_) => Ok(()),
        Err(StoreError::AccessDenied { op, resource, info }) => {
            Err(denied(op.iam_action(), resource, &info))
        }
        Err(e) => Err(explain(e, source, endpoint)),
    }
}

/// Turns a store error met during start-up into advice. (Denials are not errors
/// here: [`probe_access`] reports them with their fix.)
fn explain(err: StoreError, source: &Source, endpoint: &str) -> PreflightError {
    let bucket = &source.bucket;
    let prefix = source.prefix.as_str();
    let (kind, text) = match &err {
        StoreError::NoSuchBucket { info, .. } => (
            Kind::NotFound,
            format!(
                "bucket '{bucket}' does not exist at {endpoint} ({info}). Check the bucket name, \
             --region and --endpoint-url (some servers also answer this when the \
             credentials in use have no access to the bucket)"
            ),
        ),
        StoreError::Unreachable { detail, .. } => (
            Kind::Unreachable,
            format!(
                "cannot reach S3 at {endpoint}: {detail}. Check --endpoint-url, that the \
             server is running, and the network between here and it"
            ),
        ),
        StoreError::Credentials { detail } => (
            Kind::Denied,
            format!(
                "no usable AWS credentials: {detail}. Set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, pick a profile with --profile, or run where instance or \
             container credentials are available"
            ),
        ),
        StoreError::ExpiredToken { info, .. } => (
            Kind::Denied,
            format!(
                "S3 at {endpoint} refuses freshly issued credentials as expired ({info}). Check \
             this machine's clock (timedatectl) and that the role session was not revoked"
            ),
        ),
        StoreError::AccessDenied { .. } | StoreError::BadSignature { .. } => (
            Kind::Denied,
            format!("cannot read s3://{bucket}/{prefix} at {endpoint}: {err}"),
        ),
        other => (
            Kind::Other,
            format!("cannot read s3://{bucket}/{prefix} at {endpoint}: {other}"),
        ),
    };
    StartError::new(kind, text)
}

/// One probed permission and what S3 answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub action: &'static str,
    pub resource: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// Denied, with the statement that would allow it and what S3 said.
    Denied {
        fix: String,
        info: String,
    },
    /// Not tried, and why.
    Skipped(String),
}

/// What `s3vol check` probes beyond reading.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProbeMode {
    /// Uploads: CreateMultipartUpload then AbortMultipartUpload, which leaves
    /// nothing behind and meets policies that demand encryption headers or TLS.
    pub read_write: bool,
    /// DeleteObject of a key that does not exist; off by default because on a
    /// versioned bucket it leaves a delete marker.
    pub delete: bool,
}

/// Probes exactly what a volume in `mode` needs, under the prefix. Errors other
/// than AccessDenied (missing bucket, unreachable endpoint) end the probe.
pub async fn probe_access(
    store: &dyn ObjectStore,
    source: &Source,
    mode: ProbeMode,
    endpoint: &str,
    encryption: Option<&VolumeEncryption>,
) -> Result<Vec<Probe>, PreflightError> {
    let prefix = source.prefix.as_str();
    let objects = crate::store::object_arn(&source.bucket, &format!("{prefix}*"));
    let grant = |action: &str, resource: &str| format!("allow {action} on {resource}");
    let mut probes = Vec::new();
    let judge = |result: Result<(), StoreError>, fix: String| match result {
        Ok(()) => Ok(Outcome::Allowed),
        Err(StoreError::AccessDenied { info, .. }) => Ok(Outcome::Denied {
            fix,
            info: info.to_string(),
        }),
        Err(e) => Err(explain(e, source, endpoint)),
    };

    let listing = store
        .list_objects(ListRequest {
            prefix,
            max_keys: Some(1),
            ..Default::default()
        })
        .await;
    let first_object = listing
        .as_ref()
        .ok()
        .and_then(|page| page.objects.first().map(|o| o.key.clone()));
    let list_fix = if source.prefix.is_root() {
        grant("s3:ListBucket", &bucket_arn(&source.bucket))
    } else {
        format!(
            "{} with the condition s3:prefix like '{prefix}*'",
            grant("s3:ListBucket", &bucket_arn(&source.bucket))
        )
    };
    probes.push(Probe {
        action: "s3:ListBucket",
        resource: format!("{} (prefix '{prefix}')", bucket_arn(&source.bucket)),
        outcome: judge(listing.map(|_| ()), list_fix)?,
    });

    let mut first_headers = None;
    let get = match &first_object {
        Some(key) => Probe {
            action: "s3:GetObject",
            resource: crate::store::object_arn(&source.bucket, key),
            outcome: judge(
                store.head_object(key).await.map(|info| {
                    first_headers = info.headers;
                }),
                grant("s3:GetObject", &objects),
            )?,
        },
        None => Probe {
            action: "s3:GetObject",
            resource: objects.clone(),
            outcome: Outcome::Skipped("no object under the prefix to read".into()),
        },
    };
    probes.push(get);

    let probe_key = format!("{prefix}.s3vol-check-{}", std::process::id());
    let probe_arn = crate::store::object_arn(&source.bucket, &probe_key);
    if mode.read_write {
        match store
            .create_multipart_upload(&probe_key, &ObjectHeaders::default())
            .await
        {
            Ok(upload_id) => {
                probes.push(Probe {
                    action: "s3:PutObject",
                    resource: probe_arn.clone(),
                    outcome: Outcome::Allowed,
                });
                let aborted = store.abort_multipart_upload(&probe_key, &upload_id).await;
                probes.push(Probe {
                    action: "s3:AbortMultipartUpload",
                    resource: probe_arn.clone(),
                    outcome: judge(aborted, grant("s3:AbortMultipartUpload", &objects))?,
                });
            }
            Err(e) => {
                probes.push(Probe {
                    action: "s3:PutObject",
                    resource: probe_arn.clone(),
                    outcome: judge(Err(e), grant("s3:PutObject", &objects))?,
                });
                probes.push(Probe {
                    action: "s3:AbortMultipartUpload",
                    resource: probe_arn.clone(),
                    outcome: Outcome::Skipped("no upload to abort".into()),
                });
            }
        }
    }
    if let Some(encryption) = encryption {
        probes.extend(probe_kms(encryption, mode, first_headers.as_ref()).await?);
    }
    if mode.delete {
        probes.push(Probe {
            action: "s3:DeleteObject",
            resource: probe_arn.clone(),
            outcome: judge(
                store.delete_object(&probe_key).await,
                grant("s3:DeleteObject", &objects),
            )?,
        });
    }
    Ok(probes)
}

/// What an encrypted volume needs of its KMS key: Decrypt of an object's data
/// key with the volume's context (of the first object, if it is encrypted),
/// and for writing, GenerateDataKey and Decrypt of the key made.
async fn probe_kms(
    encryption: &VolumeEncryption,
    mode: ProbeMode,
    first: Option<&ObjectHeaders>,
) -> Result<Vec<Probe>, PreflightError> {
    let resource = format!("KMS key {}", encryption.key_id());
    let condition = encryption
        .context()
        .iter()
        .map(|(k, v)| format!("kms:EncryptionContext:{k} = {v:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let judge = |action: &'static str, result: Result<(), KmsError>| {
        let outcome = match result {
            Ok(()) => Outcome::Allowed,
            Err(e) if e.is_access_denied() => Outcome::Denied {
                fix: format!("allow {action} on the key, with the conditions {condition}"),
                info: e.to_string(),
            },
            Err(e) => {
                return Err(StartError::new(
                    e.start_kind(),
                    format!(
                        "{e}. Check --cse-kms-key-id and that KMS can be reached \
                         (AWS_ENDPOINT_URL_KMS for a KMS of your own)"
                    ),
                ));
            }
        };
        Ok(Probe {
            action,
            resource: resource.clone(),
            outcome,
        })
    };
    let mut probes = Vec::new();
    if mode.read_write {
        // Decrypt is probed on the key just made, when one could be.
        match encryption.generate_probe().await {
            Ok(unwrapped) => {
                probes.push(judge("kms:GenerateDataKey", Ok(()))?);
                probes.push(judge("kms:Decrypt", unwrapped)?);
                return Ok(probes);
            }
            Err(e) => probes.push(judge("kms:GenerateDataKey", Err(e))?),
        }
    }
    let read = match first {
        Some(headers) => encryption.open_probe(headers).await,
        None => None,
    };
    probes.push(match read {
        Some(result) => judge("kms:Decrypt", result)?,
        None => Probe {
            action: "kms:Decrypt",
            resource,
            outcome: Outcome::Skipped("no encrypted object under the prefix to unwrap".into()),
        },
    });
    Ok(probes)
}

/// The probe results as a table for people.
pub fn render(probes: &[Probe]) -> String {
    let width = probes
        .iter()
        .map(|p| p.resource.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut out = format!("{:<24} {:<width$} RESULT\n", "ACTION", "RESOURCE");
    for p in probes {
        let result = match &p.outcome {
            Outcome::Allowed => "allowed".to_string(),
            Outcome::Denied { fix, .. } => format!("DENIED; fix: {fix}"),
            Outcome::Skipped(why) => format!("not probed: {why}"),
        };
        out.push_str(&format!(
            "{:<24} {:<width$} {result}\n",
            p.action, p.resource
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Operation;
    use crate::store::faulty::{Fault, FaultyStore};
    use crate::store::memory::MemoryStore;
    use std::sync::Arc;

    fn source() -> Source {
        "bkt/root".parse().unwrap()
    }

    #[tokio::test]
    async fn everything_allowed_leaves_nothing_behind() {
        let memory = Arc::new(MemoryStore::new("bkt"));
        memory.put("root/a", "x");
        let mode = ProbeMode {
            read_write: true,
            delete: true,
        };
        let probes = probe_access(memory.as_ref(), &source(), mode, "test", None)
            .await
            .unwrap();
        let actions: Vec<_> = probes.iter().map(|p| p.action).collect();
        assert_eq!(
            actions,
            [
                "s3:ListBucket",
                "s3:GetObject",
                "s3:PutObject",
                "s3:AbortMultipartUpload",
                "s3:DeleteObject"
            ]
        );
        assert!(
            probes.iter().all(|p| p.outcome == Outcome::Allowed),
            "{probes:?}"
        );
        assert_eq!(memory.keys(), ["root/a"]);
        assert!(memory.pending_uploads().is_empty());
        for call in memory.calls() {
            assert!(call.key.starts_with("root/"), "{call:?}");
        }
    }

    #[tokio::test]
    async fn read_only_probes_send_nothing_that_writes() {
        let memory = Arc::new(MemoryStore::new("bkt"));
        memory.put("root/a", "x");
        probe_access(
            memory.as_ref(),
            &source(),
            ProbeMode::default(),
            "test",
            None,
        )
        .await
        .unwrap();
        let ops: Vec<_> = memory.calls().into_iter().map(|c| c.op).collect();
        assert_eq!(ops, [Operation::ListObjectsV2, Operation::HeadObject]);
    }

    #[tokio::test]
    async fn denials_name_the_action_resource_and_fix() {
        let memory = Arc::new(MemoryStore::new("bkt"));
        memory.put("root/a", "x");
        let faulty = FaultyStore::new(memory.clone());
        faulty.fail_all(Operation::CreateMultipartUpload, Fault::AccessDenied);
        faulty.fail_all(Operation::HeadObject, Fault::AccessDenied);
        let mode = ProbeMode {
            read_write: true,
            delete: false,
        };
        let probes = probe_access(&faulty, &source(), mode, "test", None)
            .await
            .unwrap();
        let table = render(&probes);
        assert!(
            table.contains("DENIED; fix: allow s3:GetObject on arn:aws:s3:::bkt/root/*"),
            "{table}"
        );
        assert!(
            table.contains("DENIED; fix: allow s3:PutObject on arn:aws:s3:::bkt/root/*"),
            "{table}"
        );
        assert!(table.contains("not probed: no upload to abort"), "{table}");
        assert_eq!(probes[0].outcome, Outcome::Allowed);

        faulty.clear();
        faulty.fail_all(Operation::ListObjectsV2, Fault::Unreachable);
        let err = probe_access(&faulty, &source(), mode, "http://x", None)
            .await
            .unwrap_err();
        assert!(err.message.contains("cannot reach S3 at http://x"), "{err}");
        assert_eq!(err.kind, Kind::Unreachable);
    }

    /// S3 refuses a request whose signature it cannot check with 403, as it
    /// refuses what a policy denies: a mount with a wrong secret key, an
    /// unknown key ID or a clock far off is told what is wrong, never to
    /// change an IAM policy.
    #[tokio::test]
    async fn a_signature_refused_is_not_called_a_policy_denial() {
        let memory = Arc::new(MemoryStore::new("bkt"));
        memory.put("root/a", "x");
        let faulty = FaultyStore::new(memory.clone());
        for (code, says) in [
            ("SignatureDoesNotMatch", "secret access key"),
            ("InvalidAccessKeyId", "does not know the access key ID"),
            ("RequestTimeTooSkewed", "clock"),
        ] {
            faulty.clear();
            faulty.fail_all(Operation::ListObjectsV2, Fault::Forbidden(code));
            let err = check_mount(&faulty, &source(), false, "http://x", None)
                .await
                .unwrap_err();
            assert!(err.message.contains(says), "{code}: {err}");
            assert!(!err.message.contains("IAM policy"), "{code}: {err}");
            assert_eq!(err.kind, Kind::Denied, "{code}");
        }
    }
}

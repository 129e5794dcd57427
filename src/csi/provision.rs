//! What a CreateVolume asks for, checked and turned into a [`Plan`]: the
//! volume's prefix (the StorageClass's `bucket` and `prefix`, then a name made
//! from the claim by its `volume_name` rule), its ID, the volume_context the
//! node will mount it with, and the provisioner's credentials. Every refusal
//! names the field or parameter to fix.

use std::collections::HashMap;

use super::credentials::{Credentials, Invalid};
use super::proto::{CreateVolumeRequest, NodePublishVolumeRequest, VolumeCapability};
use super::request::{self, BUCKET, Publish, Rules};
use super::volume_id::{self, Location};
use crate::names::{Prefix, Source};

/// The StorageClass parameter under which, in the bucket, volumes are made.
pub const PREFIX: &str = "prefix";
/// The StorageClass parameter that names each claim's volume under `prefix`.
pub const VOLUME_NAME: &str = "volume_name";
/// The StorageClass parameter that makes DeleteVolume delete every version.
pub const DELETE_VERSIONS: &str = "delete_versions";
/// What the external-provisioner adds with `--extra-create-metadata`.
const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
const PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
const PV_NAME: &str = "csi.storage.k8s.io/pv/name";
/// Kubernetes' prefix for the parameters it adds or reads itself.
const KUBERNETES_PREFIX: &str = "csi.storage.k8s.io/";

/// The naming rule when the provisioner says whose claim it is: readable,
/// and the same claim finds the same prefix.
pub const CLAIM_NAMING: &str = "${pvc.namespace}/${pvc.name}";
/// The naming rule when it does not: the PersistentVolume's name.
pub const VOLUME_NAMING: &str = "${pv.name}";

/// A CreateVolume, checked: what to make and how the node will mount it.
#[derive(Debug)]
pub struct Plan {
    /// The CreateVolume name (the PersistentVolume's): what makes a second
    /// call for it the same volume.
    pub name: String,
    pub location: Location,
    pub volume_id: String,
    /// What the node's publish gets: `bucket` and the volume options.
    pub context: HashMap<String, String>,
    pub capacity_bytes: i64,
    /// The volume as the node will read its context (its mount options).
    pub publish: Publish,
    /// The provisioner Secret's credentials.
    pub credentials: Credentials,
}

/// Checks `request` against what the operator allows (`rules`).
pub fn plan(request: &CreateVolumeRequest, rules: &Rules) -> Result<Plan, Invalid> {
    let invalid = |message: String| Err(Invalid(message));
    plain_text(request)?;
    if request.name.is_empty() {
        return invalid("name is missing".into());
    }
    if request.volume_capabilities.is_empty() {
        return invalid("volume_capabilities is missing: say how the volume will be used".into());
    }
    for capability in &request.volume_capabilities {
        request::writer(Some(capability), "volume_capabilities")?;
    }
    if request.volume_content_source.is_some() {
        return invalid(
            "volume_content_source: s3vol makes empty volumes only; it cannot clone a volume \
             or restore a snapshot (leave dataSource out of the claim)"
                .into(),
        );
    }
    if !request.mutable_parameters.is_empty() {
        return invalid(
            "mutable_parameters: s3vol volumes cannot be modified (leave the \
             VolumeAttributesClass out)"
                .into(),
        );
    }
    let capacity_bytes = capacity(request)?;
    let params = &request.parameters;
    let Some(bucket) = params.get(BUCKET).filter(|b| !b.is_empty()) else {
        return invalid(format!(
            "parameter {BUCKET} is missing: the StorageClass names the bucket volumes are made in"
        ));
    };
    let within: Source = bucket
        .parse()
        .ok()
        .filter(|s: &Source| s.prefix.is_root())
        .ok_or_else(|| {
            Invalid(format!(
                "parameter {BUCKET} {bucket:?} is not a bucket name (3-63 lower-case letters, \
                 digits, '.' and '-'); put a prefix in parameter {PREFIX}"
            ))
        })?;
    let prefix = params.get(PREFIX).map_or("", String::as_str);
    // The volume's ID, which holds the prefix, travels in the marker's
    // metadata: an HTTP header, which carries ASCII alone.
    if !prefix.is_ascii() {
        return invalid(format!(
            "parameter {PREFIX} {prefix:?} holds a character that is not ASCII; a \
             provisioned volume's prefix is ASCII"
        ));
    }
    let prefix = Prefix::parse(prefix)
        .map_err(|e| Invalid(format!("parameter {PREFIX} {prefix:?}: {e}")))?;
    let delete_versions = match params.get(DELETE_VERSIONS).map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return invalid(format!(
                "parameter {DELETE_VERSIONS} is \"true\" or \"false\", not {other:?}"
            ));
        }
    };
    let name = volume_name(request)?;
    let source = Source {
        bucket: within.bucket,
        prefix: Prefix::parse(&format!("{prefix}{name}"))
            .map_err(|e| Invalid(format!("the volume's prefix: {e}")))?,
    };

    let mut context: HashMap<String, String> = params
        .iter()
        .filter(|(key, _)| {
            ![BUCKET, PREFIX, VOLUME_NAME, DELETE_VERSIONS].contains(&key.as_str())
                && !key.starts_with(KUBERNETES_PREFIX)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    context.insert(BUCKET.into(), source.to_string());
    context.insert(request::PROVISIONED.into(), "true".into());
    let publish = node_view(&request.volume_capabilities, &context, rules)?;
    let location = Location {
        region: publish.option("region").cloned().flatten(),
        endpoint: publish.endpoint.clone(),
        sts_endpoint: publish.sts_endpoint.clone(),
        path_style: publish.option("force-path-style").is_some(),
        source,
        delete_versions,
        name_tag: volume_id::name_tag(&request.name),
    };
    let volume_id = location.volume_id();
    volume_id::fits(
        &volume_id,
        "shorten the StorageClass's bucket or prefix, or its volume_name rule",
    )?;
    let credentials = provisioner_credentials(&request.secrets, rules)?;
    Ok(Plan {
        name: request.name.clone(),
        location,
        volume_id,
        context,
        capacity_bytes,
        publish,
        credentials,
    })
}

/// The provisioner Secret's credentials, if the operator allows what they
/// come to: a Secret without keys signs with the controller's own identity.
pub fn provisioner_credentials(
    secrets: &HashMap<String, String>,
    rules: &Rules,
) -> Result<Credentials, Invalid> {
    let credentials = super::credentials::parse(&HashMap::new(), secrets, "provisioner")?;
    if matches!(credentials, Credentials::Secret { keys: None, .. })
        && !rules.allow_driver_credentials
    {
        return Err(Invalid(
            "the provisioner Secret holds no access_key_id and secret_access_key, so the \
             controller would use its own identity; name the tenant's Secret in the \
             StorageClass's csi.storage.k8s.io/provisioner-secret-name (and -namespace), or \
             start s3vol csi --controller with --allow-driver-credentials"
                .into(),
        ));
    }
    Ok(credentials)
}

/// The capacity the volume reports: what the claim asks for. S3 enforces
/// none; it is a label, not a quota.
fn capacity(request: &CreateVolumeRequest) -> Result<i64, Invalid> {
    let Some(range) = &request.capacity_range else {
        return Ok(0);
    };
    if range.required_bytes < 0 || range.limit_bytes < 0 {
        return Err(Invalid("capacity_range holds a negative size".into()));
    }
    if range.limit_bytes > 0 && range.limit_bytes < range.required_bytes {
        return Err(Invalid(format!(
            "capacity_range limit_bytes {} is below required_bytes {}",
            range.limit_bytes, range.required_bytes
        )));
    }
    Ok(range.required_bytes)
}

/// The volume's name under the StorageClass's prefix, by its `volume_name`
/// rule: `${pvc.namespace}`, `${pvc.name}` and `${pv.name}` replaced, each of
/// them one path segment.
fn volume_name(request: &CreateVolumeRequest) -> Result<String, Invalid> {
    let params = &request.parameters;
    let has_claim = params.contains_key(PVC_NAME) && params.contains_key(PVC_NAMESPACE);
    let rule = match params.get(VOLUME_NAME) {
        Some(rule) => rule.as_str(),
        None if has_claim => CLAIM_NAMING,
        None => VOLUME_NAMING,
    };
    let refuse = |why: String| Invalid(format!("parameter {VOLUME_NAME} {rule:?}: {why}"));
    let pv_name = params.get(PV_NAME).unwrap_or(&request.name);
    let mut name = String::new();
    let mut rest = rule;
    let mut names_one = false;
    while let Some(start) = rest.find("${") {
        literal(&rest[..start]).map_err(&refuse)?;
        name.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| refuse("a ${ is not closed".into()))?;
        let variable = &rest[start + 2..start + end];
        let value = match variable {
            "pv.name" => pv_name,
            "pvc.name" | "pvc.namespace" => {
                let key = if variable == "pvc.name" {
                    PVC_NAME
                } else {
                    PVC_NAMESPACE
                };
                params.get(key).ok_or_else(|| {
                    refuse(format!(
                        "${{{variable}}} needs the claim's name, which the external-provisioner \
                         passes when started with --extra-create-metadata"
                    ))
                })?
            }
            other => {
                return Err(refuse(format!(
                    "${{{other}}} is not one of ${{pvc.namespace}}, ${{pvc.name}} and ${{pv.name}}"
                )));
            }
        };
        names_one |= variable != "pvc.namespace";
        let segment = !value.is_empty()
            && value != "."
            && value != ".."
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !segment {
            return Err(refuse(format!(
                "${{{variable}}} is {value:?}, which cannot be a segment of a prefix"
            )));
        }
        name.push_str(value);
        rest = &rest[start + end + 1..];
    }
    literal(rest).map_err(&refuse)?;
    name.push_str(rest);
    if !names_one {
        return Err(refuse(
            "it must hold ${pvc.name} or ${pv.name}, or every claim would get the same prefix"
                .into(),
        ));
    }
    Ok(name)
}

/// Refuses literal text of a naming rule that is not letters, digits, `.`,
/// `_`, `-` and `/`.
fn literal(text: &str) -> Result<(), String> {
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-/".contains(*c)))
    {
        Some(c) => Err(format!("{c:?} cannot be part of a prefix")),
        None => Ok(()),
    }
}

/// The volume as the node will read `context` with each of `capabilities`:
/// a volume option the node would refuse is refused now, at provisioning,
/// named as the StorageClass parameter it came from.
fn node_view(
    capabilities: &[VolumeCapability],
    context: &HashMap<String, String>,
    rules: &Rules,
) -> Result<Publish, Invalid> {
    let as_parameter =
        |Invalid(why): Invalid| Invalid(why.replace("volume_context ", "parameter "));
    let mut context = context.clone();
    let mut secrets = HashMap::new();
    if context
        .get(super::credentials::AUTHENTICATION_SOURCE)
        .map(String::as_str)
        == Some("pod")
    {
        // The pod's token comes at publish; any stands for it here.
        let audience = context
            .get(super::credentials::TOKEN_AUDIENCE)
            .map_or(super::credentials::DEFAULT_AUDIENCE, String::as_str);
        let tokens = serde_json::json!({ audience: { "token": "token" } });
        context.insert(super::credentials::TOKENS.into(), tokens.to_string());
    } else {
        // The node-publish Secret comes at publish; a role stands for it here,
        // so that the role's options (sts_endpoint_url) are checked too.
        let role = "arn:aws:iam::000000000000:role/node-publish-secret";
        secrets.insert(super::credentials::ROLE_ARN.to_string(), role.to_string());
    }
    // Which credentials the node uses is its Secret's to say, not checked here.
    let rules = Rules {
        allow_driver_credentials: true,
        ..rules.clone()
    };
    let mut last = None;
    for capability in capabilities {
        let publish = NodePublishVolumeRequest {
            volume_id: "provisioning".into(),
            target_path: "/provisioning".into(),
            volume_capability: Some(capability.clone()),
            volume_context: context.clone(),
            secrets: secrets.clone(),
            ..Default::default()
        };
        let mut publish =
            request::parse(&publish, crate::cli::mount_option).map_err(as_parameter)?;
        publish.authorize(&rules).map_err(as_parameter)?;
        crate::cli::check_mount_options(&publish.mount_options())
            .map_err(|e| as_parameter(Invalid(e)))?;
        last = Some(publish);
    }
    last.ok_or_else(|| Invalid("volume_capabilities is missing".into()))
}

/// Refuses a request with a control character in its name, a parameter or
/// the Secret (named, never shown: it may be secret).
fn plain_text(request: &CreateVolumeRequest) -> Result<(), Invalid> {
    let has_control = |text: &str| text.chars().any(char::is_control);
    let refuse = |field: String| {
        Err(Invalid(format!(
            "{field} holds a control character (a newline or another); give the value alone"
        )))
    };
    if has_control(&request.name) {
        return refuse("name".into());
    }
    let mut parameters: Vec<_> = request.parameters.iter().collect();
    parameters.sort();
    for (key, value) in parameters {
        if has_control(key) || has_control(value) {
            return refuse(format!("parameter {:?}", key.escape_debug().to_string()));
        }
    }
    let mut secrets: Vec<_> = request.secrets.iter().collect();
    secrets.sort();
    for (key, value) in secrets {
        if has_control(key) || has_control(value) {
            return refuse("a key or value of the provisioner Secret".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::proto::volume_capability::access_mode::Mode;
    use crate::csi::proto::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
    use crate::csi::proto::{CapacityRange, VolumeContentSource, volume_content_source};

    const MINIO: &str = "https://minio.storage.svc:9000";

    fn capability(mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    fn request(parameters: &[(&str, &str)]) -> CreateVolumeRequest {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        CreateVolumeRequest {
            name: "pvc-6f1c".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 5 << 30,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![capability(Mode::MultiNodeMultiWriter)],
            parameters: map(parameters),
            secrets: map(&[("access_key_id", "AKIA1"), ("secret_access_key", "s3cr3t")]),
            ..Default::default()
        }
    }

    fn rules() -> Rules {
        Rules {
            endpoints: vec![MINIO.into()],
            allow_driver_credentials: false,
        }
    }

    const CLAIM: [(&str, &str); 3] = [
        ("csi.storage.k8s.io/pvc/namespace", "team-a"),
        ("csi.storage.k8s.io/pvc/name", "data"),
        ("csi.storage.k8s.io/pv/name", "pvc-6f1c"),
    ];

    fn refusal(
        parameters: &[(&str, &str)],
        change: impl FnOnce(&mut CreateVolumeRequest),
    ) -> String {
        let mut req = request(parameters);
        change(&mut req);
        plan(&req, &rules()).unwrap_err().0
    }

    #[test]
    fn a_claim_becomes_a_prefix_an_id_and_the_node_s_volume_context() {
        let mut parameters = vec![
            ("bucket", "tenant-bucket"),
            ("prefix", "volumes"),
            ("endpoint_url", MINIO),
            ("force_path_style", "true"),
            ("region", "eu-west-1"),
            ("metadata_ttl", "10s"),
            ("delete_versions", "true"),
        ];
        parameters.extend(CLAIM);
        let plan = plan(&request(&parameters), &rules()).unwrap();
        assert_eq!(
            plan.location.source.to_string(),
            "tenant-bucket/volumes/team-a/data"
        );
        assert!(plan.location.path_style);
        assert_eq!(plan.location.endpoint.as_deref(), Some(MINIO));
        assert_eq!(
            Location::parse(&plan.volume_id, &[MINIO.into()]).unwrap(),
            Some(plan.location.clone())
        );
        assert_eq!(plan.capacity_bytes, 5 << 30);
        assert!(plan.location.delete_versions);
        let mut context: Vec<_> = plan.context.iter().collect();
        context.sort();
        assert_eq!(
            context,
            [
                (
                    &"bucket".to_string(),
                    &"tenant-bucket/volumes/team-a/data".to_string()
                ),
                (&"endpoint_url".into(), &MINIO.to_string()),
                (&"force_path_style".into(), &"true".into()),
                (&"metadata_ttl".into(), &"10s".into()),
                (&"provisioned".into(), &"true".into()),
                (&"region".into(), &"eu-west-1".into()),
            ]
        );
        assert!(!format!("{plan:?}").contains("s3cr3t"));
        assert!(!format!("{:?}", request(&parameters)).contains("s3cr3t"));
    }

    #[test]
    fn the_naming_rule_follows_what_the_provisioner_passes() {
        let name = |parameters: &[(&str, &str)]| {
            let mut all = vec![("bucket", "bkt"), ("prefix", "v/")];
            all.extend(parameters);
            plan(&request(&all), &rules())
                .map(|p| p.location.source.prefix.to_string())
                .map_err(|e| e.0)
        };
        // Without the claim's name, the PersistentVolume's.
        assert_eq!(name(&[]).unwrap(), "v/pvc-6f1c/");
        assert_eq!(name(&CLAIM).unwrap(), "v/team-a/data/");
        let mut rule = CLAIM.to_vec();
        rule.push((
            "volume_name",
            "claims/${pvc.namespace}-${pvc.name}.${pv.name}",
        ));
        assert_eq!(name(&rule).unwrap(), "v/claims/team-a-data.pvc-6f1c/");
        let err = name(&[("volume_name", "${pvc.name}")]).unwrap_err();
        assert!(err.contains("--extra-create-metadata"), "{err}");
        for (rule, says) in [
            ("${pvc.uid}", "is not one of"),
            ("${pv.name", "not closed"),
            ("fixed", "every claim would get the same prefix"),
            ("${pvc.namespace}", "every claim would get the same prefix"),
            ("a b/${pv.name}", "' ' cannot be part of a prefix"),
            ("../${pv.name}", "the volume's prefix"),
        ] {
            let mut parameters = CLAIM.to_vec();
            parameters.push(("volume_name", rule));
            let err = name(&parameters).unwrap_err();
            assert!(err.contains(says), "{rule}: {err}");
        }
        let mut odd = request(&[("bucket", "bkt")]);
        odd.name = "../escape".into();
        assert!(
            plan(&odd, &rules())
                .unwrap_err()
                .0
                .contains("cannot be a segment")
        );
    }

    #[test]
    fn each_refusal_names_its_field_or_parameter() {
        let bucket = [("bucket", "bkt")];
        let cases: Vec<(String, &str)> = vec![
            (refusal(&bucket, |r| r.name.clear()), "name is missing"),
            (
                refusal(&bucket, |r| r.volume_capabilities.clear()),
                "volume_capabilities is missing",
            ),
            (
                refusal(&bucket, |r| {
                    r.volume_capabilities[0].access_type =
                        Some(AccessType::Block(BlockVolume::default()))
                }),
                "volume_capabilities block",
            ),
            (
                refusal(&bucket, |r| r.volume_capabilities[0].access_mode = None),
                "volume_capabilities access_mode",
            ),
            (
                refusal(&bucket, |r| {
                    r.volume_content_source = Some(VolumeContentSource {
                        r#type: Some(volume_content_source::Type::Snapshot(
                            volume_content_source::SnapshotSource {
                                snapshot_id: "s".into(),
                            },
                        )),
                    })
                }),
                "volume_content_source",
            ),
            (
                refusal(&bucket, |r| {
                    r.mutable_parameters.insert("x".into(), "y".into());
                }),
                "mutable_parameters",
            ),
            (
                refusal(&bucket, |r| {
                    r.capacity_range = Some(CapacityRange {
                        required_bytes: 10,
                        limit_bytes: 5,
                    })
                }),
                "capacity_range limit_bytes",
            ),
            (refusal(&[], |_| {}), "parameter bucket is missing"),
            (
                refusal(&[("bucket", "bkt/pre")], |_| {}),
                "parameter bucket",
            ),
            (
                refusal(&[("bucket", "bkt"), ("prefix", "données")], |_| {}),
                "not ASCII",
            ),
            (
                refusal(&[("bucket", "bkt"), ("prefix", "a//b")], |_| {}),
                "parameter prefix",
            ),
            (
                refusal(&[("bucket", "bkt"), ("delete_versions", "yes")], |_| {}),
                "parameter delete_versions",
            ),
            (
                refusal(&[("bucket", "bkt"), ("cache_dir", "/tmp")], |_| {}),
                "parameter cache_dir is not accepted",
            ),
            (
                refusal(&[("bucket", "bkt"), ("colour", "blue")], |_| {}),
                "parameter colour is not an s3vol volume option",
            ),
            (
                refusal(&[("bucket", "bkt"), ("metadata_ttl", "soon")], |_| {}),
                "metadata-ttl",
            ),
            (
                refusal(
                    &[("bucket", "bkt"), ("endpoint_url", "https://evil.example")],
                    |_| {},
                ),
                "parameter endpoint_url https://evil.example is not an endpoint",
            ),
            (
                refusal(&[("bucket", "bkt"), ("prefix", &"p".repeat(120))], |_| {}),
                "more than the 128 CSI allows",
            ),
            (
                refusal(&bucket, |r| {
                    r.secrets.insert("token".into(), "t".into());
                }),
                "the provisioner Secret has a key \"token\"",
            ),
            (
                refusal(
                    &[
                        ("bucket", "bkt"),
                        ("authentication_source", "pod"),
                        ("role_arn", "arn:aws:iam::123456789012:role/pods"),
                    ],
                    |_| {},
                ),
                "credentials come from its node-publish Secret",
            ),
            (
                refusal(&bucket, |r| r.secrets.clear()),
                "--allow-driver-credentials",
            ),
            (
                refusal(&bucket, |r| {
                    r.parameters.insert("region".into(), "eu\nwest".into());
                }),
                "parameter \"region\" holds a control character",
            ),
        ];
        for (refusal, says) in cases {
            assert!(refusal.contains(says), "{says:?} not in: {refusal}");
        }
        // The driver's own identity, where the operator allows it.
        let mut no_keys = request(&bucket);
        no_keys.secrets.clear();
        let allowed = Rules {
            allow_driver_credentials: true,
            ..rules()
        };
        assert!(plan(&no_keys, &allowed).is_ok());
    }
}

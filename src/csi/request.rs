//! What a NodePublishVolume asks for, checked and turned into a [`Publish`]: the
//! `s3vol mount` arguments of the volume (never a secret among them) and the
//! credentials it signs with. Every refusal names the field to fix.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use super::budget::Share;
pub use super::credentials::{
    AUTHENTICATION_SOURCE, Credentials, DEFAULT_AUDIENCE, Invalid, ROLE_ARN, Role, TOKEN_AUDIENCE,
};
use super::proto::volume_capability::AccessType;
use super::proto::volume_capability::access_mode::Mode;
use super::proto::{
    NodeGetVolumeStatsRequest, NodePublishVolumeRequest, NodeUnpublishVolumeRequest,
    VolumeCapability,
};
use crate::cli::options;

/// The volume_context key that names the bucket and prefix.
pub const BUCKET: &str = "bucket";
/// The volume_context key the controller sets on the volumes it makes: their
/// credentials come from the node-publish Secret only (never the driver's
/// own identity alone, nor the pod's), as the StorageClass's provisioning
/// was checked with a Secret.
pub const PROVISIONED: &str = "provisioned";
/// Kubernetes' prefix for what it adds to volume_context itself.
const KUBERNETES_PREFIX: &str = "csi.storage.k8s.io/";

/// Mount options a volume may set, by `s3vol mount`'s long names. What is left
/// out is the driver's to decide (the mode, who may use the mount, where local
/// data and logs go, how the daemon runs) or belongs in the Secret.
const ALLOWED: &[&str] = &[
    "region",
    "endpoint-url",
    "force-path-style",
    "sse",
    "sse-kms-key-id",
    "cse-kms-key-id",
    "cse-context",
    "cse-allow-plaintext",
    "cse-commitment",
    "cse-unauthenticated-ranges",
    "io-timeout",
    "role-session-name",
    "role-duration",
    "renew-before",
    "sts-endpoint-url",
    "version-at",
    "uid",
    "gid",
    "file-mode",
    "dir-mode",
    "noexec",
    "metadata-ttl",
    "no-metadata",
    "no-content-type",
    "part-size",
    "max-concurrency",
    "cache-size",
    "staging-size",
    "no-cache",
    "max-memory",
    "log-level",
];

/// Options that are refused with a word on where the setting belongs.
fn refused_because(name: &str) -> Option<&'static str> {
    Some(match name {
        "external-id" | "external-id-file" => {
            "the external ID is a secret: put it in the node-publish Secret as external_id"
        }
        "read-write" | "read-only" => {
            "the volume's access mode decides: ReadWriteOnce or ReadWriteMany mount \
             read-write, ReadOnlyMany (or readOnly: true) read-only"
        }
        "profile" => "credentials come from the Secret or the pod, not from a profile",
        "cache-dir" | "log-file" | "audit-log" | "foreground" => {
            "the driver decides where local data and logs go"
        }
        "metrics-listen" => {
            "the driver serves every volume's metrics on its own s3vol csi --metrics-listen"
        }
        "allow-http" => {
            "the driver decides which endpoints volumes may use: the operator lists them, \
             http:// ones included, with s3vol csi --allow-endpoint"
        }
        "credentials-file" | "no-shared-config" => {
            "credentials come from the node-publish Secret or the pod"
        }
        _ => return None,
    })
}

/// One publish, ready to mount once [`Publish::authorize`] has checked it
/// against what the driver's operator allows.
#[derive(Clone, Debug)]
pub struct Publish {
    pub volume_id: String,
    pub target: PathBuf,
    /// BUCKET[/PREFIX].
    pub source: String,
    pub read_write: bool,
    /// `s3vol mount` options (long names, with their values) from
    /// volume_context and the mount flags, but for the endpoints and those of
    /// the role below.
    pub options: Vec<(String, Option<String>)>,
    /// Where S3 is, if the volume says (canonical, see [`crate::names::endpoint_url`]).
    pub endpoint: Option<String>,
    /// Where STS is, if the volume says.
    pub sts_endpoint: Option<String>,
    /// Plain http to the endpoints: set by [`Publish::authorize`] when the
    /// operator listed them so.
    allow_http: bool,
    pub session_name: String,
    pub credentials: Credentials,
}

/// What the driver's operator allows volumes (`s3vol csi` options).
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// The S3 and STS endpoints a volume may name, canonical; none: a volume
    /// uses AWS's own.
    pub endpoints: Vec<String>,
    /// A volume may sign with the driver's own identity, or assume the role
    /// in its Secret with it.
    pub allow_driver_credentials: bool,
}

impl Publish {
    /// The `s3vol mount` arguments of the volume, with its endpoints and those
    /// of its role (the secrets aside, which go through files); a pod's role
    /// is reached through the environment instead.
    pub fn mount_options(&self) -> Vec<OsString> {
        self.arguments(self.options.clone())
    }

    /// [`Publish::mount_options`] for the volume's daemon, with the sizes of
    /// its local data those of its `share` of the node's budget.
    pub fn daemon_options(&self, share: Share) -> Vec<OsString> {
        const SIZES: [&str; 3] = ["cache-size", "staging-size", "no-cache"];
        let mut options: Vec<_> = self
            .options
            .iter()
            .filter(|(name, _)| !SIZES.contains(&name.as_str()))
            .cloned()
            .collect();
        options.push(match share.cache {
            0 => ("no-cache".into(), None),
            size => ("cache-size".into(), Some(size.to_string())),
        });
        if self.read_write {
            options.push(("staging-size".into(), Some(share.staging.to_string())));
        }
        self.arguments(options)
    }

    /// `options` and the endpoints and role's options as arguments.
    fn arguments(&self, mut options: Vec<(String, Option<String>)>) -> Vec<OsString> {
        if let Some(url) = &self.endpoint {
            options.push(("endpoint-url".into(), Some(url.clone())));
        }
        if let Credentials::Secret { role, .. } = &self.credentials {
            if let Some(role) = role {
                options.push(("role-arn".into(), Some(role.arn.clone())));
                options.push(("role-session-name".into(), Some(self.session_name.clone())));
            }
            if let Some(url) = &self.sts_endpoint {
                options.push(("sts-endpoint-url".into(), Some(url.clone())));
            }
        }
        if self.allow_http {
            options.push(("allow-http".into(), None));
        }
        options
            .into_iter()
            .map(|(name, value)| match value {
                Some(value) => format!("--{name}={value}").into(),
                None => format!("--{name}").into(),
            })
            .collect()
    }

    /// The value of option `name` (a long name), if the volume gives it.
    pub fn option(&self, name: &str) -> Option<&Option<String>> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value)
    }

    /// Whether the volume signs with the driver's identity: directly, or to
    /// assume the role its Secret names.
    pub fn uses_driver_credentials(&self) -> bool {
        matches!(self.credentials, Credentials::Secret { keys: None, .. })
    }

    /// Checks what the operator decides: the endpoints (each must be one the
    /// driver was given with --allow-endpoint; plain http is then allowed to
    /// it) and the use of the driver's own identity.
    pub fn authorize(&mut self, rules: &Rules) -> Result<(), Invalid> {
        for (field, url) in [
            ("endpoint_url", &self.endpoint),
            ("sts_endpoint_url", &self.sts_endpoint),
        ] {
            let Some(url) = url else { continue };
            if !rules.endpoints.contains(url) {
                let listed = match rules.endpoints.as_slice() {
                    [] => "none, so volumes use AWS's own endpoints".to_string(),
                    list => list.join(", "),
                };
                return Err(Invalid(format!(
                    "volume_context {field} {url} is not an endpoint this driver may send \
                     credentials to; the operator lists those with s3vol csi \
                     --allow-endpoint URL (listed: {listed})"
                )));
            }
        }
        self.allow_http = [&self.endpoint, &self.sts_endpoint]
            .into_iter()
            .flatten()
            .any(|url| url.starts_with("http://"));
        if self.uses_driver_credentials() && !rules.allow_driver_credentials {
            let what = match &self.credentials {
                Credentials::Secret { role: Some(_), .. } => {
                    "the Secret names a role but no keys, so the role would be assumed with \
                     the driver's own identity (the node's); if customers' roles trust that \
                     identity, start s3vol csi with --allow-driver-credentials, else put \
                     access_key_id and secret_access_key in the Secret"
                }
                _ => {
                    "the volume names no role_arn, keys or authentication_source pod, so it \
                     would sign with the driver's own credentials, which every volume on the \
                     node could then use; give it its own in the node-publish Secret, or start \
                     s3vol csi with --allow-driver-credentials"
                }
            };
            return Err(Invalid(what.into()));
        }
        Ok(())
    }

    /// What makes two publishes of a target the same volume: everything but the
    /// secrets and the token, which may change between republishes.
    pub fn fingerprint(&self) -> String {
        let role = match &self.credentials {
            Credentials::Secret { keys, role } => format!(
                "secret keys={} role={}",
                keys.as_ref().map_or("", |k| &k.access_key_id),
                role.as_ref().map_or("", |r| &r.arn)
            ),
            Credentials::Pod { role_arn, .. } => format!("pod role={role_arn}"),
        };
        format!(
            "{}\n{}\n{}\n{:?}\n{:?}\n{:?}\n{role}",
            self.volume_id,
            self.source,
            self.read_write,
            self.options,
            self.endpoint,
            self.sts_endpoint
        )
    }
}

/// Checks `request` and says what to mount. `known` answers for an option name
/// of `s3vol mount` whether it takes a value (`None`: no such option).
pub fn parse(
    request: &NodePublishVolumeRequest,
    known: impl Fn(&str) -> Option<bool>,
) -> Result<Publish, Invalid> {
    let invalid = |message: String| Err(Invalid(message));
    plain_text(request)?;
    if request.volume_id.is_empty() {
        return invalid("volume_id is missing".into());
    }
    too_long(&request.volume_id)?;
    if request.target_path.is_empty() {
        return invalid("target_path is missing".into());
    }
    let target = PathBuf::from(&request.target_path);
    if !target.is_absolute() {
        return invalid(format!(
            "target_path {:?} is not an absolute path",
            request.target_path
        ));
    }
    let mut read_write = read_write(request)?;
    let context = &request.volume_context;
    let Some(source) = context.get(BUCKET).filter(|b| !b.is_empty()) else {
        return invalid(format!(
            "volume_context has no {BUCKET}: set volumeAttributes.{BUCKET} to BUCKET or \
             BUCKET/PREFIX"
        ));
    };
    crate::values::parse_source(source)
        .map_err(|e| Invalid(format!("volume_context {BUCKET} {source:?}: {e}")))?;

    // Options: volume_context first, then the PV's mountOptions.
    let mut options = Vec::new();
    let reserved = [
        BUCKET,
        AUTHENTICATION_SOURCE,
        TOKEN_AUDIENCE,
        ROLE_ARN,
        PROVISIONED,
    ];
    let sorted: BTreeMap<&String, &String> = context.iter().collect();
    for (key, value) in sorted {
        if reserved.contains(&key.as_str()) || key.starts_with(KUBERNETES_PREFIX) {
            continue;
        }
        options.extend(option(
            &format!("volume_context {key}"),
            key,
            Some(value),
            &known,
        )?);
    }
    if let Some(AccessType::Mount(mount)) = request
        .volume_capability
        .as_ref()
        .and_then(|c| c.access_type.as_ref())
    {
        for flag in &mount.mount_flags {
            let list = options::split(flag)
                .map_err(|e| Invalid(format!("volume_capability mount_flags: {e}")))?;
            for (name, value) in list {
                // What mount(8) would make of them: "ro" makes the volume
                // read-only; "rw" is every mount's default and says nothing.
                match name.as_str() {
                    "ro" => read_write = false,
                    "rw" => {}
                    _ => options.extend(option(
                        &format!("mount option {name}"),
                        &name,
                        value.as_ref(),
                        &known,
                    )?),
                }
            }
        }
    }
    // The endpoints are checked against the operator's list; the role's own
    // options go with the credentials they are for.
    let endpoint = endpoint_option(&mut options, "endpoint-url")?;
    let sts_endpoint = endpoint_option(&mut options, "sts-endpoint-url")?;
    let session_name = take_value(&mut options, "role-session-name");

    let credentials = super::credentials::parse(context, &request.secrets, "node-publish")?;
    // A volume ID of the controller's makes the volume a provisioned one too,
    // whatever its volume_context says.
    let provisioned = match context.get(PROVISIONED).map(String::as_str) {
        None => super::volume_id::is_provisioned(&request.volume_id),
        Some("true") => true,
        Some(other) => {
            return invalid(format!(
                "volume_context {PROVISIONED} {other:?}: only the controller sets it, to \"true\""
            ));
        }
    };
    if provisioned {
        match &credentials {
            Credentials::Secret {
                keys: None,
                role: None,
            }
            | Credentials::Pod { .. } => {
                return invalid(
                    "a provisioned volume's credentials come from its node-publish Secret: set \
                     csi.storage.k8s.io/node-publish-secret-name (and -namespace) in the \
                     StorageClass, to a Secret with a role_arn or keys"
                        .into(),
                );
            }
            Credentials::Secret { .. } => {}
        }
    }
    let session_name =
        session_name.unwrap_or_else(|| super::credentials::pod_session_name(context));
    Ok(Publish {
        volume_id: request.volume_id.clone(),
        target,
        source: source.clone(),
        read_write,
        options,
        endpoint,
        sts_endpoint,
        allow_http: false,
        session_name,
        credentials,
    })
}

/// The target path of an unpublish, checked as a publish's is.
pub fn unpublish_target(request: &NodeUnpublishVolumeRequest) -> Result<PathBuf, Invalid> {
    checked_path(&request.volume_id, "target_path", &request.target_path)
}

/// The volume path NodeGetVolumeStats asks about, checked as a target path is.
pub fn stats_path(request: &NodeGetVolumeStatsRequest) -> Result<PathBuf, Invalid> {
    too_long(&request.volume_id)?;
    checked_path(&request.volume_id, "volume_path", &request.volume_path)
}

/// Refuses a volume ID over the CSI spec's bound: each of a volume's metric
/// series carries it. (An unpublish takes any: a volume an older driver
/// published must be unpublished all the same.)
fn too_long(volume_id: &str) -> Result<(), Invalid> {
    use super::volume_id::MAX_VOLUME_ID;
    if volume_id.len() > MAX_VOLUME_ID {
        return Err(Invalid(format!(
            "volume_id is {} bytes long, more than the {MAX_VOLUME_ID} CSI allows",
            volume_id.len()
        )));
    }
    Ok(())
}

/// `path` (the request's field `field`) as an absolute path, with the request's
/// `volume_id`: both there, without a control character.
fn checked_path(volume_id: &str, field: &str, path: &str) -> Result<PathBuf, Invalid> {
    for (field, value) in [("volume_id", volume_id), (field, path)] {
        if value.is_empty() {
            return Err(Invalid(format!("{field} is missing")));
        }
        if value.chars().any(char::is_control) {
            return Err(Invalid(format!("{field} holds a control character")));
        }
    }
    let target = PathBuf::from(path);
    if !target.is_absolute() {
        return Err(Invalid(format!("{field} {path:?} is not an absolute path")));
    }
    Ok(target)
}

/// Refuses a request that holds a control character in any field a PV, a
/// Secret or kubelet fills: such a value is never meant, and a newline in one
/// would be a line of its own to anything that reads it as text. The refusal
/// names the field, never the value (it may be a secret).
fn plain_text(request: &NodePublishVolumeRequest) -> Result<(), Invalid> {
    let has_control = |text: &str| text.chars().any(char::is_control);
    let refuse = |field: String| {
        Err(Invalid(format!(
            "{field} holds a control character (a newline or another); give the value alone"
        )))
    };
    for (field, value) in [
        ("volume_id", &request.volume_id),
        ("target_path", &request.target_path),
    ] {
        if has_control(value) {
            return refuse(field.into());
        }
    }
    let mut context: Vec<_> = request.volume_context.iter().collect();
    context.sort();
    for (key, value) in context {
        if has_control(key) {
            return refuse(format!("a volume_context key {key:?}"));
        }
        if has_control(value) {
            return refuse(format!("volume_context {key}"));
        }
    }
    let mut secrets: Vec<_> = request.secrets.iter().collect();
    secrets.sort();
    for (key, value) in secrets {
        if has_control(key) {
            return refuse("a key of the node-publish Secret".into());
        }
        if has_control(value) {
            return refuse(format!("the node-publish Secret's {key}"));
        }
    }
    if let Some(AccessType::Mount(mount)) = request
        .volume_capability
        .as_ref()
        .and_then(|c| c.access_type.as_ref())
        && mount.mount_flags.iter().any(|flag| has_control(flag))
    {
        return refuse("volume_capability mount_flags".into());
    }
    Ok(())
}

/// Removes option `name` (an endpoint URL) from `options` and gives it in its
/// canonical form.
fn endpoint_option(
    options: &mut Vec<(String, Option<String>)>,
    name: &str,
) -> Result<Option<String>, Invalid> {
    take_value(options, name)
        .map(|url| {
            crate::names::endpoint_url(&url)
                .map_err(|e| Invalid(format!("volume_context {}: {e}", name.replace('-', "_"))))
        })
        .transpose()
}

/// Removes option `name` from `options`, with the last value it was given.
fn take_value(options: &mut Vec<(String, Option<String>)>, name: &str) -> Option<String> {
    let value = options
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .and_then(|(_, value)| value.clone());
    options.retain(|(n, _)| n != name);
    value
}

/// One option, checked: `Ok(None)` for mount(8)'s generic options, which mean
/// nothing here.
fn option(
    field: &str,
    key: &str,
    value: Option<&String>,
    known: &impl Fn(&str) -> Option<bool>,
) -> Result<Option<(String, Option<String>)>, Invalid> {
    let name = key.replace('_', "-");
    if let Some(why) = refused_because(&name) {
        return Err(Invalid(format!("{field} is not accepted: {why}")));
    }
    // mount(8)'s generic options mean nothing here, and the driver always lets
    // the pod's users in (as allow_other, which PVs written for other FUSE
    // drivers often ask for).
    const IGNORED: &[&str] = &[
        "defaults",
        "nodev",
        "nosuid",
        "noatime",
        "relatime",
        "allow-other",
        "allow-root",
    ];
    if IGNORED.contains(&name.as_str()) {
        return Ok(None);
    }
    let Some(takes_value) = known(&name).filter(|_| ALLOWED.contains(&name.as_str())) else {
        return Err(Invalid(format!(
            "{field} is not an s3vol volume option; the options are {}",
            ALLOWED.join(", ").replace('-', "_")
        )));
    };
    match (takes_value, value) {
        (true, Some(value)) if !value.is_empty() => Ok(Some((name, Some(value.clone())))),
        (true, _) => Err(Invalid(format!("{field} needs a value"))),
        // A flag given in volume_context as "true"/"false".
        (false, None) => Ok(Some((name, None))),
        (false, Some(value)) => match value.as_str() {
            "true" | "" => Ok(Some((name, None))),
            "false" => Ok(None),
            _ => Err(Invalid(format!(
                "{field} is a flag: give it \"true\" or \"false\", not {value:?}"
            ))),
        },
    }
}

/// Read-write for the writer access modes, unless the publish is read-only.
fn read_write(request: &NodePublishVolumeRequest) -> Result<bool, Invalid> {
    let writer = writer(request.volume_capability.as_ref(), "volume_capability")?;
    Ok(writer && !request.readonly)
}

/// Whether `capability` (the request's field `field`) is one an s3vol volume
/// serves, a filesystem of any access mode; and whether its mode writes.
pub(super) fn writer(capability: Option<&VolumeCapability>, field: &str) -> Result<bool, Invalid> {
    let Some(capability) = capability else {
        return Err(Invalid(format!("{field} is missing")));
    };
    match &capability.access_type {
        Some(AccessType::Mount(mount)) => {
            if !matches!(mount.fs_type.as_str(), "" | "s3vol" | "fuse.s3vol") {
                return Err(Invalid(format!(
                    "{field} fs_type {:?}: s3vol volumes are s3vol filesystems; leave fsType out",
                    mount.fs_type
                )));
            }
        }
        Some(AccessType::Block(_)) => {
            return Err(Invalid(format!(
                "{field} block: an s3vol volume is a filesystem; use volumeMode: Filesystem"
            )));
        }
        None => return Err(Invalid(format!("{field} access_type is missing"))),
    }
    let mode = capability
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok())
        .unwrap_or(Mode::Unknown);
    match mode {
        Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly => Ok(false),
        Mode::SingleNodeWriter
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter
        | Mode::MultiNodeSingleWriter
        | Mode::MultiNodeMultiWriter => Ok(true),
        Mode::Unknown => Err(Invalid(format!(
            "{field} access_mode is missing or unknown"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;
    use crate::csi::proto::VolumeCapability;
    use crate::csi::proto::volume_capability::{AccessMode, MountVolume};

    const ROLE: &str = "arn:aws:iam::123456789012:role/customer";

    /// volume_context or secrets, as written in a test.
    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn request(
        mode: Mode,
        context: &[(&str, &str)],
        secrets: &[(&str, &str)],
    ) -> NodePublishVolumeRequest {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        NodePublishVolumeRequest {
            volume_id: "customer-a".into(),
            target_path: "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/a/mount".into(),
            volume_capability: Some(VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume::default())),
                access_mode: Some(AccessMode { mode: mode as i32 }),
            }),
            volume_context: map(context),
            secrets: map(secrets),
            ..Default::default()
        }
    }

    fn parsed(request: &NodePublishVolumeRequest) -> Result<Publish, Invalid> {
        parse(request, crate::cli::mount_option)
    }

    fn refusal(request: &NodePublishVolumeRequest) -> String {
        parsed(request).unwrap_err().0
    }

    #[test]
    fn a_volume_with_a_role_and_options_becomes_mount_arguments() {
        let req = request(
            Mode::SingleNodeWriter,
            &[
                ("bucket", "vol/root"),
                ("metadata_ttl", "10s"),
                ("no_cache", "true"),
                ("no_metadata", "false"),
                ("csi.storage.k8s.io/pod.name", "web-0"),
                ("csi.storage.k8s.io/pod.namespace", "team a"),
            ],
            &[("role_arn", ROLE), ("external_id", "id-1")],
        );
        let publish = parsed(&req).unwrap();
        assert_eq!(publish.source, "vol/root");
        assert!(publish.read_write);
        assert_eq!(
            publish.mount_options(),
            [
                "--metadata-ttl=10s",
                "--no-cache",
                &format!("--role-arn={ROLE}"),
                "--role-session-name=s3vol-team-a-web-0",
            ]
        );
        assert_eq!(publish.session_name, "s3vol-team-a-web-0");
        assert_eq!(
            publish.credentials,
            Credentials::Secret {
                keys: None,
                role: Some(Role {
                    arn: ROLE.into(),
                    external_id: Some(Secret::new("id-1")),
                }),
            }
        );
        // Neither the external ID nor any secret is in what is compared or shown.
        assert!(!publish.fingerprint().contains("id-1"));
        assert!(!format!("{req:?}").contains("id-1"));
        assert!(!format!("{publish:?}").contains("id-1"));
    }

    #[test]
    fn the_access_mode_and_readonly_decide_the_mode() {
        let rw = |mode, readonly, flags: &[&str]| {
            let mut req = request(mode, &[("bucket", "vol")], &[]);
            req.readonly = readonly;
            if let Some(AccessType::Mount(m)) = req
                .volume_capability
                .as_mut()
                .and_then(|c| c.access_type.as_mut())
            {
                m.mount_flags = flags.iter().map(|f| f.to_string()).collect();
            }
            parsed(&req).unwrap().read_write
        };
        assert!(rw(Mode::SingleNodeWriter, false, &[]));
        assert!(rw(Mode::MultiNodeMultiWriter, false, &["rw"]));
        assert!(!rw(Mode::MultiNodeMultiWriter, true, &[]));
        assert!(!rw(Mode::MultiNodeReaderOnly, false, &[]));
        assert!(!rw(Mode::SingleNodeWriter, false, &["ro"]));
        let err = refusal(&request(Mode::Unknown, &[("bucket", "vol")], &[]));
        assert!(err.contains("access_mode"), "{err}");
    }

    #[test]
    fn mount_flags_are_options_too() {
        let mut req = request(Mode::MultiNodeReaderOnly, &[("bucket", "vol")], &[]);
        if let Some(AccessType::Mount(m)) = req
            .volume_capability
            .as_mut()
            .and_then(|c| c.access_type.as_mut())
        {
            m.mount_flags = vec![
                "uid=1000,gid=1000".into(),
                "noatime".into(),
                "allow-other".into(),
            ];
        }
        assert_eq!(
            parsed(&req).unwrap().mount_options(),
            ["--uid=1000", "--gid=1000"]
        );
    }

    #[test]
    fn a_provisioned_volume_takes_its_credentials_from_the_node_publish_secret_only() {
        let context = [("bucket", "vol/claims/ns/c"), ("provisioned", "true")];
        let secret = [("role_arn", ROLE), ("external_id", "id-1")];
        assert!(parsed(&request(Mode::SingleNodeWriter, &context, &secret)).is_ok());
        let keys = [("access_key_id", "AKIA1"), ("secret_access_key", "k")];
        assert!(parsed(&request(Mode::SingleNodeWriter, &context, &keys)).is_ok());
        // No Secret: the driver's own identity, which a static volume may use.
        let err = refusal(&request(Mode::SingleNodeWriter, &context, &[]));
        assert!(err.contains("node-publish-secret-name"), "{err}");
        assert!(parsed(&request(Mode::SingleNodeWriter, &context[..1], &[])).is_ok());
        let tokens = r#"{"sts.amazonaws.com":{"token":"jwt"}}"#;
        let pod = [
            ("bucket", "vol/claims/ns/c"),
            ("provisioned", "true"),
            ("authentication_source", "pod"),
            ("role_arn", ROLE),
            ("csi.storage.k8s.io/serviceAccount.tokens", tokens),
        ];
        let err = refusal(&request(Mode::SingleNodeWriter, &pod, &[]));
        assert!(err.contains("node-publish Secret"), "{err}");
        // An ID of the controller's is a provisioned volume, said or not.
        let mut unsaid = request(Mode::SingleNodeWriter, &context[..1], &[]);
        unsaid.volume_id = "s3vol1:-:-:-:pk:0123456789ab:vol/claims/ns/c".into();
        assert!(refusal(&unsaid).contains("node-publish-secret-name"));
        let forged = [("bucket", "vol"), ("provisioned", "no")];
        let err = refusal(&request(Mode::SingleNodeWriter, &forged, &secret));
        assert!(err.contains("volume_context provisioned"), "{err}");
    }

    #[test]
    fn each_refusal_names_the_field() {
        let cases: &[(Pairs, Pairs, &str)] = &[
            (&[], &[], "volume_context has no bucket"),
            (&[("bucket", "")], &[], "volume_context has no bucket"),
            (&[("bucket", "Bad_Bucket!")], &[], "volume_context bucket"),
            (
                &[("bucket", "vol"), ("colour", "blue")],
                &[],
                "volume_context colour",
            ),
            (
                &[("bucket", "vol"), ("external_id", "x")],
                &[],
                "node-publish Secret",
            ),
            (
                &[("bucket", "vol"), ("read_write", "true")],
                &[],
                "access mode decides",
            ),
            (
                &[("bucket", "vol"), ("cache_dir", "/tmp")],
                &[],
                "driver decides",
            ),
            (
                &[("bucket", "vol"), ("metrics_listen", "0.0.0.0:9100")],
                &[],
                "driver serves every volume's metrics",
            ),
            (
                &[("bucket", "vol"), ("metadata_ttl", "")],
                &[],
                "needs a value",
            ),
            (&[("bucket", "vol"), ("no_cache", "yes")], &[], "is a flag"),
            (
                &[("bucket", "vol")],
                &[("external_id", "id-1")],
                "no role_arn",
            ),
            (
                &[("bucket", "vol")],
                &[("role_arn", "nope")],
                "role_arn \"nope\"",
            ),
            (
                &[("bucket", "vol")],
                &[("access_key_id", "AK")],
                "only one of",
            ),
            (
                &[("bucket", "vol")],
                &[("password", "x")],
                "key \"password\"",
            ),
            (
                &[("bucket", "vol")],
                &[("session_token", "t0ken")],
                "a session_token but no access_key_id",
            ),
            (
                &[
                    ("bucket", "vol"),
                    ("authentication_source", "pod"),
                    ("role_arn", ROLE),
                    (
                        "csi.storage.k8s.io/serviceAccount.tokens",
                        r#"{"sts.amazonaws.com":{"token":"jwt\nx"}}"#,
                    ),
                ],
                &[],
                "holds a control character",
            ),
            (
                &[("bucket", "vol"), ("role_arn", ROLE)],
                &[("external_id", "id-1")],
                "put role_arn in the node-publish Secret",
            ),
            (
                &[
                    ("bucket", "vol"),
                    ("role_arn", ROLE),
                    ("authentication_source", "pod"),
                ],
                &[("role_arn", "arn:aws:iam::123456789012:role/other")],
                "different roles",
            ),
            (
                &[("bucket", "vol"), ("allow_http", "true")],
                &[],
                "--allow-endpoint",
            ),
            (
                &[
                    ("bucket", "vol"),
                    ("endpoint_url", "https://evil@s3.example.com"),
                ],
                &[],
                "volume_context endpoint_url",
            ),
            (
                &[
                    ("bucket", "vol"),
                    ("region", "eu-west-1\ncredential_process=id"),
                ],
                &[],
                "volume_context region holds a control character",
            ),
            (
                &[("bucket", "vol")],
                &[("role_arn", ROLE), ("external_id", "id\u{1b}[2J")],
                "the node-publish Secret's external_id holds a control character",
            ),
            (
                &[("bucket", "vol"), ("authentication_source", "node")],
                &[],
                "authentication_source \"node\"",
            ),
            (
                &[("bucket", "vol"), ("authentication_source", "pod")],
                &[],
                "needs role_arn",
            ),
            (
                &[
                    ("bucket", "vol"),
                    ("authentication_source", "pod"),
                    ("role_arn", ROLE),
                ],
                &[],
                "tokenRequests",
            ),
        ];
        for (context, secrets, expected) in cases {
            let err = refusal(&request(Mode::SingleNodeWriter, context, secrets));
            assert!(err.contains(expected), "{context:?} {secrets:?}: {err}");
            for (_, value) in secrets.iter() {
                if value.len() > 2 && !expected.contains(value) {
                    assert!(!err.contains(value), "a secret in {err}");
                }
            }
        }
        let mut block = request(Mode::SingleNodeWriter, &[("bucket", "vol")], &[]);
        block.volume_capability.as_mut().unwrap().access_type =
            Some(AccessType::Block(Default::default()));
        assert!(refusal(&block).contains("volumeMode: Filesystem"));
        let mut long = request(Mode::SingleNodeWriter, &[("bucket", "vol")], &[]);
        long.volume_id = "v".repeat(129);
        assert!(refusal(&long).contains("volume_id is 129 bytes long"));
        let stats = NodeGetVolumeStatsRequest {
            volume_id: "v".repeat(129),
            volume_path: "/pods/a".into(),
            ..Default::default()
        };
        assert!(stats_path(&stats).unwrap_err().0.contains("volume_id"));
    }

    #[test]
    fn a_pod_volume_takes_the_token_for_its_audience() {
        let tokens = r#"{"sts.amazonaws.com":{"token":"jwt-1","expirationTimestamp":"2026-12-01T10:00:00Z"},"other":{"token":"jwt-2"}}"#;
        let context = [
            ("bucket", "vol"),
            ("authentication_source", "pod"),
            ("role_arn", ROLE),
            ("csi.storage.k8s.io/serviceAccount.tokens", tokens),
        ];
        let publish = parsed(&request(Mode::SingleNodeWriter, &context, &[])).unwrap();
        assert_eq!(
            publish.credentials,
            Credentials::Pod {
                role_arn: ROLE.into(),
                token: Secret::new("jwt-1")
            }
        );
        let mut other = context.to_vec();
        other.push(("token_audience", "other"));
        let publish = parsed(&request(Mode::SingleNodeWriter, &other, &[])).unwrap();
        assert!(
            matches!(publish.credentials, Credentials::Pod { token, .. } if token.expose() == "jwt-2")
        );
        // A new token is the same volume.
        let renewed = tokens.replace("jwt-1", "jwt-3");
        let mut again = context.to_vec();
        again[3].1 = &renewed;
        let republished = parsed(&request(Mode::SingleNodeWriter, &again, &[])).unwrap();
        let first = parsed(&request(Mode::SingleNodeWriter, &context, &[])).unwrap();
        assert_eq!(first.fingerprint(), republished.fingerprint());
    }

    #[test]
    fn the_sts_endpoint_goes_to_the_role_that_uses_it() {
        let sts = ("sts_endpoint_url", "http://127.0.0.1:4566");
        let role = parsed(&request(
            Mode::SingleNodeWriter,
            &[("bucket", "vol"), sts],
            &[("role_arn", ROLE)],
        ))
        .unwrap();
        assert!(
            role.mount_options()
                .contains(&"--sts-endpoint-url=http://127.0.0.1:4566".into())
        );
        // A pod's role is reached through the daemon's environment instead.
        let tokens = r#"{"sts.amazonaws.com":{"token":"jwt"}}"#;
        let pod = parsed(&request(
            Mode::SingleNodeWriter,
            &[
                ("bucket", "vol"),
                sts,
                ("authentication_source", "pod"),
                ("role_arn", ROLE),
                ("csi.storage.k8s.io/serviceAccount.tokens", tokens),
            ],
            &[],
        ))
        .unwrap();
        assert_eq!(pod.sts_endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert!(pod.mount_options().is_empty(), "{:?}", pod.mount_options());
    }

    #[test]
    fn a_control_character_in_any_key_field_is_refused_by_name() {
        let injected = "\ncredential_process = sh -c 'touch /tmp/s3vol-marker'";
        for field in ["access_key_id", "secret_access_key", "session_token"] {
            let mut secrets = vec![
                ("access_key_id", "AKIDEXAMPLE".to_string()),
                ("secret_access_key", "hush-hush".to_string()),
                ("session_token", "token".to_string()),
            ];
            for (name, value) in &mut secrets {
                if *name == field {
                    value.push_str(injected);
                }
            }
            let secrets: Vec<(&str, &str)> =
                secrets.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let err = refusal(&request(
                Mode::SingleNodeWriter,
                &[("bucket", "vol")],
                &secrets,
            ));
            assert!(
                err.contains(&format!(
                    "the node-publish Secret's {field} holds a control"
                )),
                "{field}: {err}"
            );
            assert!(
                !err.contains("hush-hush") && !err.contains("touch"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_operator_decides_endpoints_and_the_driver_s_identity() {
        let rules = |endpoints: &[&str], driver: bool| Rules {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            allow_driver_credentials: driver,
        };
        let keys = [("access_key_id", "AK"), ("secret_access_key", "hush-hush")];
        let with = |context: &[(&str, &str)], secrets: &[(&str, &str)]| {
            let mut all = vec![("bucket", "vol")];
            all.extend_from_slice(context);
            parsed(&request(Mode::SingleNodeWriter, &all, secrets)).unwrap()
        };
        // No endpoint named: AWS's own, whatever the list.
        assert!(with(&[], &keys).authorize(&rules(&[], false)).is_ok());
        // An endpoint the operator did not list, by field and option.
        for field in ["endpoint_url", "sts_endpoint_url"] {
            let mut publish = with(&[(field, "https://s3.attacker.example")], &keys);
            let err = publish
                .authorize(&rules(&["https://s3.internal.example"], true))
                .unwrap_err()
                .0;
            assert!(err.contains(&format!("volume_context {field}")), "{err}");
            assert!(err.contains("--allow-endpoint"), "{err}");
        }
        // A listed one, however spelt; plain http to it becomes allowed.
        let mut publish = with(
            &[
                ("endpoint_url", "HTTP://Minio.internal:9000/"),
                ("sts_endpoint_url", "https://sts.internal"),
            ],
            &[
                ("access_key_id", "AK"),
                ("secret_access_key", "hush-hush"),
                ("role_arn", ROLE),
            ],
        );
        assert!(
            !publish
                .mount_options()
                .contains(&OsString::from("--allow-http"))
        );
        publish
            .authorize(&rules(
                &["http://minio.internal:9000", "https://sts.internal"],
                false,
            ))
            .unwrap();
        let options = publish.mount_options();
        for expected in [
            "--endpoint-url=http://minio.internal:9000",
            "--sts-endpoint-url=https://sts.internal",
            "--allow-http",
        ] {
            assert!(options.contains(&OsString::from(expected)), "{options:?}");
        }
        // A role assumed with the node's identity needs the operator's consent.
        let mut node_role = with(&[], &[("role_arn", ROLE), ("external_id", "id-1")]);
        let err = node_role.authorize(&rules(&[], false)).unwrap_err().0;
        assert!(err.contains("--allow-driver-credentials"), "{err}");
        assert!(node_role.authorize(&rules(&[], true)).is_ok());
        let mut nothing = with(&[], &[]);
        assert!(nothing.authorize(&rules(&[], false)).is_err());
    }

    #[test]
    fn a_daemon_is_given_its_share_in_place_of_the_sizes_asked_for() {
        let asked = |mode, context: &[(&str, &str)]| {
            let mut all = vec![("bucket", "vol"), ("metadata_ttl", "1s")];
            all.extend_from_slice(context);
            parsed(&request(mode, &all, &[])).unwrap()
        };
        let share = Share {
            cache: 3 << 20,
            staging: 5 << 20,
        };
        let rw = asked(
            Mode::SingleNodeWriter,
            &[("cache_size", "1GiB"), ("staging_size", "2GiB")],
        );
        assert!(
            rw.mount_options()
                .contains(&OsString::from("--cache-size=1GiB"))
        );
        assert_eq!(
            rw.daemon_options(share),
            [
                "--metadata-ttl=1s",
                "--cache-size=3145728",
                "--staging-size=5242880"
            ]
        );
        let ro = asked(Mode::MultiNodeReaderOnly, &[("no_cache", "true")]);
        let none = Share {
            cache: 0,
            staging: 0,
        };
        assert_eq!(ro.daemon_options(none), ["--metadata-ttl=1s", "--no-cache"]);
    }
}

//! End to end: `s3vol csi` driven over its Unix socket by a gRPC client, as
//! kubelet drives it, against moto (roles with external IDs, pod tokens) and
//! Garage (static keys from the Secret).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, ServerKind, wait_until};
use s3vol::csi::proto::identity_client::IdentityClient;
use s3vol::csi::proto::node_client::NodeClient;
use s3vol::csi::proto::volume_capability::access_mode::Mode;
use s3vol::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use s3vol::csi::proto::*;
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

/// A running `s3vol csi`, with a directory for its socket, state and the
/// pods' target paths. Dropping it stops it (which stops its volumes) and
/// unmounts whatever a test left.
struct Driver {
    child: Child,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Driver {
    fn start(env: &[(String, String)]) -> Driver {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("driver.log");
        let socket = dir.path().join("plugin/csi.sock");
        let child = Command::new(common::binary())
            .args(["csi", "--node-id", "node-1", "--stop-timeout", "20s"])
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .envs(env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let driver = Driver { child, dir, log };
        assert!(
            wait_until(Duration::from_secs(10), || socket.exists()),
            "the plugin did not listen: {}",
            driver.log_text()
        );
        driver
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("plugin/csi.sock")
    }

    async fn channel(&self) -> Channel {
        let socket = self.socket();
        tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .unwrap()
    }

    async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel().await)
    }

    /// A pod's target path; its parent exists, as kubelet makes it.
    fn target(&self, pod: &str) -> PathBuf {
        let parent = self.dir.path().join("pods").join(pod);
        std::fs::create_dir_all(&parent).unwrap();
        parent.join("mount")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The state directory's files, as `ls` would list them.
    fn state_files(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("state"))
            .map(|dir| {
                dir.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the plugin's log:\n{}", self.log_text());
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            // SAFETY: kill(2) on the child this test started, not yet reaped.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(40) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(pods) = std::fs::read_dir(self.dir.path().join("pods")) {
            for pod in pods.flatten() {
                common::unmount(&pod.path().join("mount"));
            }
        }
    }
}

/// volume_context or secrets, as written in a test.
type Pairs<'a> = &'a [(&'a str, &'a str)];

fn strings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn publish_request(
    volume_id: &str,
    target: &Path,
    mode: Mode,
    context: &[(&str, &str)],
    secrets: &[(&str, &str)],
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.to_str().unwrap().into(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }),
        volume_context: strings(context),
        secrets: strings(secrets),
        ..Default::default()
    }
}

async fn publish(
    node: &mut NodeClient<Channel>,
    request: NodePublishVolumeRequest,
) -> Result<(), tonic::Status> {
    node.node_publish_volume(request).await.map(drop)
}

async fn unpublish(node: &mut NodeClient<Channel>, volume_id: &str, target: &Path) {
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.to_str().unwrap().into(),
    })
    .await
    .unwrap_or_else(|status| panic!("unpublish {}: {status:?}", target.display()));
}

/// The customer's moto, as `scripts/moto_roles.py` sets it up, and the driver
/// running as the platform's user.
struct Customers {
    server: Server,
    setup: serde_json::Value,
}

impl Customers {
    fn new() -> Customers {
        let server = Server::start(ServerKind::Moto);
        let setup = server.setup_roles();
        Customers { server, setup }
    }

    fn field(&self, name: &str) -> String {
        self.setup[name].as_str().unwrap().to_string()
    }

    /// The driver's own environment: the platform user's keys.
    fn driver_env(&self) -> Vec<(String, String)> {
        let mut env = self.server.env();
        env.retain(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"));
        env.push(("AWS_ACCESS_KEY_ID".into(), self.field("access_key")));
        env.push(("AWS_SECRET_ACCESS_KEY".into(), self.field("secret_key")));
        env.push(("AWS_ENDPOINT_URL_STS".into(), self.server.endpoint.clone()));
        env
    }

    fn context<'a>(&'a self, bucket: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("bucket", bucket),
            ("endpoint_url", &self.server.endpoint),
            ("force_path_style", "true"),
            ("sts_endpoint_url", &self.server.endpoint),
            ("metadata_ttl", "0"),
        ]
    }

    fn assumed_roles(&self) -> Vec<(String, String)> {
        self.server.moto_state()["sts"]["AssumedRole"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|call| {
                (
                    call["arn"].as_str().unwrap_or_default().to_string(),
                    call["external_id"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

/// Whether `secret` appears in any process's command line or environment, or
/// in a file under `dir` that users other than root may read.
fn exposed(secret: &str, dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name();
        for what in ["cmdline", "environ"] {
            let text = std::fs::read(entry.path().join(what)).unwrap_or_default();
            if text.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                found.push(format!("/proc/{}/{what}", pid.to_string_lossy()));
            }
        }
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() && !common::is_mounted(&path) {
                stack.push(path);
            } else if meta.is_file() {
                use std::os::unix::fs::PermissionsExt;
                let text = std::fs::read(&path).unwrap_or_default();
                if meta.permissions().mode() & 0o077 != 0
                    && text.windows(secret.len()).any(|w| w == secret.as_bytes())
                {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

/// The in-memory secret files (`memfd:s3vol-secret`) process `pid` holds.
fn inherited_secrets(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| {
            let link = std::fs::read_link(fd.path()).ok()?;
            let link = link.to_string_lossy();
            link.contains("s3vol-secret")
                .then(|| format!("{} -> {link}", fd.file_name().to_string_lossy()))
        })
        .collect()
}

#[tokio::test]
async fn the_plugin_says_who_it_is_and_refuses_bad_publishes_by_field() {
    let driver = Driver::start(&[]);
    let mut identity = IdentityClient::new(driver.channel().await);
    let info = identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "csi.s3vol.io");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let probe = identity.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
    let capabilities = identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(capabilities.capabilities.is_empty(), "{capabilities:?}");

    let mut node = driver.node().await;
    let info = node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "node-1");
    let capabilities = node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(capabilities.capabilities.is_empty(), "{capabilities:?}");

    let target = driver.target("pod-a");
    let cases: &[(Pairs, Pairs, &str)] = &[
        (&[], &[], "volume_context has no bucket"),
        (
            &[("bucket", "vol"), ("metadata_tll", "5s")],
            &[],
            "volume_context metadata_tll",
        ),
        (
            &[("bucket", "vol"), ("metadata_ttl", "soon")],
            &[],
            "--metadata-ttl",
        ),
        (
            &[("bucket", "vol"), ("external_id", "s3vol-secret-id")],
            &[],
            "node-publish Secret",
        ),
        (
            &[("bucket", "vol"), ("endpoint_url", "http://192.0.2.1:9000")],
            &[],
            "allow-http",
        ),
    ];
    for (context, secrets, expected) in cases {
        let request = publish_request("v", &target, Mode::SingleNodeWriter, context, secrets);
        let status = publish(&mut node, request).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{context:?}: {status:?}"
        );
        assert!(
            status.message().contains(expected),
            "{context:?}: {}",
            status.message()
        );
        assert!(!status.message().contains("s3vol-secret-id"));
        assert!(
            !target.exists(),
            "a refused publish made {}",
            target.display()
        );
    }
    // A volume with no credentials of its own would sign as the driver.
    let request = publish_request(
        "v",
        &target,
        Mode::SingleNodeWriter,
        &[("bucket", "vol")],
        &[],
    );
    let status = publish(&mut node, request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("--allow-driver-credentials"),
        "{}",
        status.message()
    );
    let mut missing = publish_request("v", &target, Mode::SingleNodeWriter, &[], &[]);
    missing.volume_capability = None;
    let status = publish(&mut node, missing).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("volume_capability"), "{status:?}");

    // Unpublishing what was never published succeeds, as the spec asks.
    unpublish(&mut node, "v", &target).await;
    let status = node
        .node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: "v".into(),
            target_path: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(!driver.log_text().contains("s3vol-secret-id"));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs moto; run scripts/test.sh"]
async fn two_customers_volumes_with_their_own_roles_and_ids_on_one_node() {
    let customers = Customers::new();
    let driver = Driver::start(&customers.driver_env());
    let mut node = driver.node().await;
    let (reader, tenant_b) = (customers.field("role_arn"), customers.field("tenant_b_arn"));
    let (id_a, id_b) = (
        customers.field("external_id"),
        customers.field("tenant_b_external_id"),
    );

    // Customer A: its reader role, read-only.
    let target_a = driver.target("pod-a");
    let request_a = publish_request(
        "customer-a",
        &target_a,
        Mode::MultiNodeReaderOnly,
        &customers.context("vol/root"),
        &[("role_arn", &reader), ("external_id", &id_a)],
    );
    publish(&mut node, request_a.clone()).await.unwrap();
    // Customer B: its own role and external ID, read-write, on the same node.
    let target_b = driver.target("pod-b");
    let request_b = publish_request(
        "customer-b",
        &target_b,
        Mode::SingleNodeWriter,
        &customers.context("vol/tenant-b"),
        &[("role_arn", &tenant_b), ("external_id", &id_b)],
    );
    publish(&mut node, request_b.clone()).await.unwrap();

    eprintln!(
        "published customer-a ({reader}, read-only) at {}",
        target_a.display()
    );
    eprintln!(
        "published customer-b ({tenant_b}, read-write) at {}",
        target_b.display()
    );
    let a = std::fs::read(target_a.join("a.txt")).unwrap();
    assert_eq!(a, b"inside the volume\n");
    eprintln!("customer-a reads a.txt: {:?}", String::from_utf8_lossy(&a));
    let b = std::fs::read(target_b.join("hello.txt")).unwrap();
    assert_eq!(b, b"tenant b\n");
    eprintln!(
        "customer-b reads hello.txt: {:?}",
        String::from_utf8_lossy(&b)
    );
    let write_a = std::fs::write(target_a.join("new.txt"), b"x").unwrap_err();
    assert_eq!(write_a.raw_os_error(), Some(libc::EROFS), "{write_a}");
    eprintln!("customer-a write: {write_a}");
    std::fs::write(target_b.join("from-pod.txt"), b"written by pod b\n").unwrap();
    eprintln!("customer-b writes from-pod.txt: ok");

    // Each volume assumed its own role with its own external ID, and no ID is
    // in a command line, an environment or a file others may read.
    let roles = customers.assumed_roles();
    eprintln!("AssumeRole calls (role, external ID): {roles:?}");
    assert!(
        roles
            .iter()
            .any(|(arn, id)| arn.contains("role/reader") && *id == id_a)
    );
    assert!(
        roles
            .iter()
            .any(|(arn, id)| arn.contains("role/tenant-b") && *id == id_b)
    );
    assert!(
        !roles
            .iter()
            .any(|(arn, id)| arn.contains("role/tenant-b") && *id == id_a)
    );
    // Each daemon holds its own secret and nothing of the other's.
    for target in [&target_a, &target_b] {
        let pids = common::daemon_pids(target);
        assert_eq!(pids.len(), 1, "{pids:?}");
        let secrets = inherited_secrets(pids[0]);
        assert_eq!(
            secrets.len(),
            1,
            "daemon of {}: {secrets:?}",
            target.display()
        );
    }
    for id in [&id_a, &id_b] {
        assert_eq!(exposed(id, driver.dir.path()), Vec::<String>::new());
        assert!(!driver.log_text().contains(id.as_str()));
    }

    // A republish of the same volume at the same target (kubelet retries) is
    // the one mount; with other options it is refused.
    publish(&mut node, request_a.clone()).await.unwrap();
    assert_eq!(common::mount_count(&target_a), 1);
    let mut other = request_a.clone();
    other
        .volume_context
        .insert("metadata_ttl".into(), "30s".into());
    let status = publish(&mut node, other).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    // The same volume at a second pod's target: two mounts, either one can go.
    let target_a2 = driver.target("pod-a2");
    let mut second = request_a.clone();
    second.target_path = target_a2.to_str().unwrap().into();
    publish(&mut node, second).await.unwrap();
    unpublish(&mut node, "customer-a", &target_a).await;
    assert!(!target_a.exists());
    assert_eq!(
        std::fs::read(target_a2.join("a.txt")).unwrap(),
        b"inside the volume\n"
    );
    unpublish(&mut node, "customer-a", &target_a2).await;
    unpublish(&mut node, "customer-a", &target_a2).await;

    // What customer B wrote is in S3: a new mount reads it back.
    unpublish(&mut node, "customer-b", &target_b).await;
    assert!(!common::is_mounted(&target_b) && !target_b.exists());
    let target_b2 = driver.target("pod-b2");
    let mut again = request_b.clone();
    again.target_path = target_b2.to_str().unwrap().into();
    publish(&mut node, again).await.unwrap();
    assert_eq!(
        std::fs::read(target_b2.join("from-pod.txt")).unwrap(),
        b"written by pod b\n"
    );
    unpublish(&mut node, "customer-b", &target_b2).await;
    assert!(common::daemon_pids(&target_b2).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs moto; run scripts/test.sh"]
async fn a_wrong_external_id_is_permission_denied_with_the_mounts_words() {
    let customers = Customers::new();
    let driver = Driver::start(&customers.driver_env());
    let mut node = driver.node().await;
    let target = driver.target("pod-a");
    let request = publish_request(
        "customer-a",
        &target,
        Mode::SingleNodeReaderOnly,
        &customers.context("vol/root"),
        &[
            ("role_arn", &customers.field("role_arn")),
            ("external_id", "s3vol-not-the-id-0000"),
        ],
    );
    let status = publish(&mut node, request).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // The sentence `s3vol mount` prints for the same refusal.
    assert!(
        status.message().contains(&format!(
            "STS refused to let these credentials assume role {}",
            customers.field("role_arn")
        )),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("external ID"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains("s3vol-not-the-id-0000"));
    assert!(!common::is_mounted(&target));
    assert!(!driver.log_text().contains("s3vol-not-the-id-0000"));
    // A role that does not exist for this user is denied too.
    let mut b = publish_request(
        "customer-b",
        &target,
        Mode::SingleNodeReaderOnly,
        &customers.context("vol/tenant-b"),
        &[
            ("role_arn", &customers.field("tenant_b_arn")),
            ("external_id", &customers.field("external_id")),
        ],
    );
    let status = publish(&mut node, b.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // With its own ID the role is assumed, but it may not read customer A's
    // prefix: S3's code, as the mount names it.
    b.secrets.insert(
        "external_id".into(),
        customers.field("tenant_b_external_id"),
    );
    let mut elsewhere = b.clone();
    elsewhere
        .volume_context
        .insert("bucket".into(), "vol/root".into());
    let status = publish(&mut node, elsewhere).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("AccessDenied: s3:"),
        "{}",
        status.message()
    );
    assert!(!common::is_mounted(&target));
    // Its own prefix mounts.
    publish(&mut node, b).await.unwrap();
    unpublish(&mut node, "customer-b", &target).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs moto; run scripts/test.sh"]
async fn a_pods_token_is_exchanged_and_a_republished_one_is_used_without_a_remount() {
    let customers = Customers::new();
    customers.server.sessions(json!({"lifetime": 6}));
    let driver = Driver::start(&customers.driver_env());
    let mut node = driver.node().await;
    let target = driver.target("pod-a");
    let tokens = |token: &str| {
        json!({"sts.amazonaws.com": {"token": token, "expirationTimestamp": "2026-12-01T00:00:00Z"}})
            .to_string()
    };
    let role = customers.field("role_arn");
    let mut context = customers.context("vol/root");
    let first = tokens("pod-token-one");
    context.extend([
        ("authentication_source", "pod"),
        ("role_arn", role.as_str()),
        ("renew_before", "2"),
        ("csi.storage.k8s.io/pod.name", "web-0"),
        ("csi.storage.k8s.io/pod.namespace", "team-a"),
        ("csi.storage.k8s.io/serviceAccount.tokens", first.as_str()),
    ]);
    let request = publish_request(
        "pod-volume",
        &target,
        Mode::SingleNodeReaderOnly,
        &context,
        &[],
    );
    publish(&mut node, request.clone()).await.unwrap();
    assert_eq!(
        std::fs::read(target.join("a.txt")).unwrap(),
        b"inside the volume\n"
    );
    let seen = || customers.server.sessions(json!({}))["web_identity_tokens"].clone();
    assert_eq!(seen()[0], "pod-token-one");
    let pids = common::daemon_pids(&target);
    assert_eq!(pids.len(), 1);
    // kubelet republishes with a fresh token (requiresRepublish): the same
    // daemon sends it at its next renewal.
    let second = tokens("pod-token-two");
    let mut republish = request.clone();
    republish.volume_context.insert(
        "csi.storage.k8s.io/serviceAccount.tokens".into(),
        second.clone(),
    );
    publish(&mut node, republish).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || seen()
            .as_array()
            .unwrap()
            .contains(&json!("pod-token-two"))),
        "{}",
        seen()
    );
    assert_eq!(
        common::daemon_pids(&target),
        pids,
        "the volume was remounted"
    );
    assert_eq!(
        std::fs::read(target.join("a.txt")).unwrap(),
        b"inside the volume\n"
    );
    let state = driver.state_files();
    assert_eq!(state.len(), 1, "{state:?}");
    assert_eq!(
        exposed("pod-token-two", driver.dir.path()),
        Vec::<String>::new()
    );
    unpublish(&mut node, "pod-volume", &target).await;
    assert_eq!(driver.state_files(), Vec::<String>::new());
}

/// Garage, with the keys in the Secret (no role): the volume's daemon signs
/// with those keys, not with the driver's.
struct Garage {
    server: Server,
}

impl Garage {
    async fn new() -> Garage {
        let server = Server::start(ServerKind::Garage);
        server.create_bucket("vol").await;
        server.put("vol", "data/seed.txt", b"seed\n".to_vec()).await;
        Garage { server }
    }

    fn context(&self) -> Vec<(&str, &str)> {
        vec![
            ("bucket", "vol/data"),
            ("endpoint_url", &self.server.endpoint),
            ("force_path_style", "true"),
            ("region", &self.server.region),
            ("metadata_ttl", "0"),
        ]
    }

    fn secrets(&self) -> Vec<(&str, &str)> {
        vec![
            ("access_key_id", &self.server.access_key),
            ("secret_access_key", &self.server.secret_key),
        ]
    }

    /// The driver has no credentials of its own.
    fn driver_env(&self) -> Vec<(String, String)> {
        let mut env = self.server.env();
        env.retain(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"));
        env
    }

    /// A driver with the volume vol/data published read-write for `pod`.
    async fn published(&self, pod: &str) -> Published {
        let driver = Driver::start(&self.driver_env());
        let mut node = driver.node().await;
        let target = driver.target(pod);
        let request = publish_request(
            "data",
            &target,
            Mode::SingleNodeWriter,
            &self.context(),
            &self.secrets(),
        );
        publish(&mut node, request.clone()).await.unwrap();
        Published {
            driver,
            node,
            target,
            request,
        }
    }
}

struct Published {
    driver: Driver,
    node: NodeClient<Channel>,
    target: PathBuf,
    request: NodePublishVolumeRequest,
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn unpublish_with_a_file_open_stops_within_the_bound_and_leaves_no_parts() {
    let garage = Garage::new().await;
    let Published {
        driver,
        mut node,
        target,
        ..
    } = garage.published("pod-w").await;
    assert_eq!(std::fs::read(target.join("seed.txt")).unwrap(), b"seed\n");
    assert_eq!(
        exposed(&garage.server.secret_key, driver.dir.path()),
        Vec::<String>::new()
    );

    // A file closed before the unpublish is in S3; one still open (20 MiB,
    // so a multipart upload is under way) is abandoned and its upload aborted.
    std::fs::write(target.join("closed.txt"), b"closed\n").unwrap();
    let mut open = std::fs::File::create(target.join("open.bin")).unwrap();
    open.write_all(&common::pattern(20 << 20, 7)).unwrap();
    let started = Instant::now();
    unpublish(&mut node, "data", &target).await;
    let took = started.elapsed();
    eprintln!("unpublish with a file open took {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(!common::is_mounted(&target));
    assert!(common::daemon_pids(&target).is_empty());
    drop(open);
    assert_eq!(
        garage.server.get("vol", "data/closed.txt").await.as_deref(),
        Some(&b"closed\n"[..])
    );
    assert_eq!(garage.server.get("vol", "data/open.bin").await, None);
    assert_eq!(
        garage.server.pending_uploads("vol", "data/").await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_daemon_killed_between_publish_and_unpublish_is_cleaned_and_remounted() {
    let garage = Garage::new().await;
    // The driver must outlive the test: bound, not dropped.
    let Published {
        driver: _driver,
        mut node,
        target,
        request,
    } = garage.published("pod-k").await;
    let kill = |target: &Path| {
        let pids = common::daemon_pids(target);
        assert_eq!(pids.len(), 1, "{pids:?}");
        // SAFETY: kill(2) on the volume's daemon, found by its command line.
        unsafe { libc::kill(pids[0], libc::SIGKILL) };
        assert!(wait_until(Duration::from_secs(10), || {
            std::fs::metadata(target)
                .err()
                .and_then(|e| e.raw_os_error())
                == Some(libc::ENOTCONN)
        }));
    };

    // The next publish (kubelet's periodic one) finds the dead mount and mounts
    // the volume again.
    kill(&target);
    publish(&mut node, request.clone()).await.unwrap();
    assert_eq!(common::mount_count(&target), 1);
    assert_eq!(std::fs::read(target.join("seed.txt")).unwrap(), b"seed\n");

    // An unpublish of a dead mount cleans it up.
    kill(&target);
    unpublish(&mut node, "data", &target).await;
    assert!(!common::is_mounted(&target));
    assert!(!target.exists());

    // A bucket that does not exist is NotFound, in the mount's words.
    let mut missing = request.clone();
    missing
        .volume_context
        .insert("bucket".into(), "no-such-bucket".into());
    let status = publish(&mut node, missing).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status
            .message()
            .contains("bucket 'no-such-bucket' does not exist")
    );
    assert!(!common::is_mounted(&target));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_stopping_driver_stops_its_volumes() {
    let garage = Garage::new().await;
    let Published {
        mut driver, target, ..
    } = garage.published("pod-s").await;
    std::fs::write(target.join("before-stop.txt"), b"kept\n").unwrap();
    assert_eq!(common::daemon_pids(&target).len(), 1);
    // SAFETY: kill(2) on the driver this test started.
    unsafe { libc::kill(driver.child.id() as i32, libc::SIGTERM) };
    let status = driver.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", driver.log_text());
    assert!(!common::is_mounted(&target));
    // The driver waited for its volume's daemon before it exited.
    assert_eq!(common::daemon_pids(&target), Vec::<i32>::new());
    assert!(!driver.socket().exists());
    assert_eq!(
        garage
            .server
            .get("vol", "data/before-stop.txt")
            .await
            .as_deref(),
        Some(&b"kept\n"[..])
    );
}

/// The manifests in deploy/kubernetes, as JSON documents.
fn manifests() -> (Vec<PathBuf>, Vec<serde_json::Value>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let python = validator_dir().join("python");
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml\n\
             for f in sys.argv[1:]:\n\
             \x20   for d in yaml.safe_load_all(open(f)):\n\
             \x20       print(json.dumps(d))",
        ])
        .args(&files)
        .output()
        .unwrap();
    assert!(common::succeeded(&out));
    let documents = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (files, documents)
}

fn validator_dir() -> PathBuf {
    common::tools_dir().join("kubernetes-validate-1.37.0/bin")
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    Command::new(validator_dir().join("kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .args(files)
        .output()
        .unwrap()
}

/// deploy/kubernetes against the Kubernetes API's schemas, strictly (an unknown
/// field fails), and against the driver itself: its name, its socket, and each
/// example volume's attributes, mount options and Secret as a publish takes them.
#[test]
#[ignore = "needs kubernetes-validate; run scripts/test.sh"]
fn the_kubernetes_manifests_are_valid_and_fit_this_driver() {
    use s3vol::csi::service::DRIVER_NAME;
    let (files, documents) = manifests();
    let out = validate(&files);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The check fails on a misspelt field.
    let broken = tempfile::tempdir().unwrap();
    let copy = broken.path().join("csidriver.yaml");
    let text = std::fs::read_to_string(
        files
            .iter()
            .find(|f| f.ends_with("csidriver.yaml"))
            .unwrap(),
    )
    .unwrap();
    std::fs::write(&copy, text.replace("attachRequired", "attachRequird")).unwrap();
    assert!(!validate(&[copy]).status.success());

    let of_kind = |kind: &str| -> Vec<&serde_json::Value> {
        documents.iter().filter(|d| d["kind"] == kind).collect()
    };
    let driver = of_kind("CSIDriver");
    assert_eq!(driver.len(), 1);
    assert_eq!(driver[0]["metadata"]["name"], DRIVER_NAME);
    assert_eq!(driver[0]["spec"]["attachRequired"], false);
    let daemonset = serde_json::to_string(&of_kind("DaemonSet")).unwrap();
    assert!(daemonset.contains(&format!("/var/lib/kubelet/plugins/{DRIVER_NAME}/csi.sock")));
    assert!(daemonset.contains("unix:///csi/csi.sock"));

    let volumes = of_kind("PersistentVolume");
    assert!(volumes.len() >= 2);
    for pv in volumes {
        let spec = &pv["spec"];
        assert_eq!(spec["csi"]["driver"], DRIVER_NAME);
        let text = |v: &serde_json::Value| -> HashMap<String, String> {
            v.as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut context = text(&spec["csi"]["volumeAttributes"]);
        if context.get("authentication_source").map(String::as_str) == Some("pod") {
            context.insert(
                "csi.storage.k8s.io/serviceAccount.tokens".into(),
                json!({"sts.amazonaws.com": {"token": "jwt"}}).to_string(),
            );
        }
        let secrets = match spec["csi"]["nodePublishSecretRef"]["name"].as_str() {
            Some(name) => {
                let secret = of_kind("Secret")
                    .into_iter()
                    .find(|s| s["metadata"]["name"] == name)
                    .unwrap_or_else(|| panic!("no Secret {name}"));
                text(&secret["stringData"])
            }
            None => HashMap::new(),
        };
        let mode = match spec["accessModes"][0].as_str().unwrap() {
            "ReadOnlyMany" => Mode::MultiNodeReaderOnly,
            "ReadWriteMany" => Mode::MultiNodeMultiWriter,
            _ => Mode::SingleNodeWriter,
        };
        let flags = spec["mountOptions"]
            .as_array()
            .map(|a| a.iter().map(|f| f.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        let request = NodePublishVolumeRequest {
            volume_id: spec["csi"]["volumeHandle"].as_str().unwrap().into(),
            target_path: "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/v/mount".into(),
            volume_capability: Some(VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume {
                    mount_flags: flags,
                    ..Default::default()
                })),
                access_mode: Some(AccessMode { mode: mode as i32 }),
            }),
            volume_context: context,
            secrets,
            ..Default::default()
        };
        let publish = s3vol::csi::request::parse(&request, s3vol::cli::mount_option)
            .unwrap_or_else(|e| panic!("{}: {}", pv["metadata"]["name"], e.0));
        s3vol::cli::check_mount_options(&publish.mount_options())
            .unwrap_or_else(|e| panic!("{}: {e}", pv["metadata"]["name"]));
    }
}

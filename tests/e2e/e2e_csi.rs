//! End to end: `s3vol csi` driven over its Unix socket by a gRPC client, as
//! kubelet drives it, against moto (roles with external IDs, pod tokens) and
//! Garage (static keys from the Secret).

use crate::common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, ServerKind, wait_until};
use s3vol::csi::proto::controller_client::ControllerClient;
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
pub(crate) struct Driver {
    pub(crate) child: Child,
    pub(crate) dir: tempfile::TempDir,
    log: PathBuf,
}

/// How a test runs the driver: its environment and options beyond the ones
/// every test gives, and a command to run it under (`unshare`).
#[derive(Default)]
pub(crate) struct DriverSetup {
    env: Vec<(String, String)>,
    args: Vec<String>,
    wrapper: Vec<String>,
    /// `s3vol csi --controller` rather than the node plugin.
    controller: bool,
}

impl DriverSetup {
    fn env(env: Vec<(String, String)>) -> Self {
        Self {
            env,
            ..Self::default()
        }
    }

    pub(crate) fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Lets volumes name `server`'s endpoint.
    pub(crate) fn endpoint_of(self, server: &Server) -> Self {
        let allow = format!("--allow-endpoint={}", server.endpoint);
        self.args(&[&allow])
    }

    /// The controller (`--controller`) rather than the node plugin.
    pub(crate) fn controller(mut self) -> Self {
        self.controller = true;
        self
    }

    pub(crate) fn start(self) -> Driver {
        Driver::start(self)
    }
}

impl Driver {
    fn start(setup: DriverSetup) -> Driver {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("driver.log");
        let child = Driver::launch(dir.path(), &log, setup);
        let driver = Driver { child, dir, log };
        driver.wait_for_socket();
        driver
    }

    /// Kills the driver (SIGKILL: its volumes' daemons stay) and starts another
    /// with `setup` on the same socket and state directory, as a restarted
    /// DaemonSet pod would.
    pub(crate) fn restart(&mut self, setup: DriverSetup) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.socket());
        self.child = Driver::launch(self.dir.path(), &self.log, setup);
        self.wait_for_socket();
    }

    fn launch(dir: &Path, log: &Path, setup: DriverSetup) -> Child {
        let socket = dir.join("plugin/csi.sock");
        let mut command = match setup.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(common::binary());
                command
            }
            None => Command::new(common::binary()),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        command
            .arg("csi")
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()));
        if setup.controller {
            command.arg("--controller");
        } else {
            command
                .args(["--node-id", "node-1", "--stop-timeout", "20s"])
                .arg("--state-dir")
                .arg(dir.join("state"))
                .arg("--cache-dir")
                .arg(dir.join("cache"));
        }
        command
            .args(&setup.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .envs(setup.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn wait_for_socket(&self) {
        let socket = self.socket();
        assert!(
            wait_until(Duration::from_secs(10), || socket.exists()),
            "the plugin did not listen: {}",
            self.log_text()
        );
        // Once it is there, it takes connections, from root only.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        std::os::unix::net::UnixStream::connect(&socket).unwrap();
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("plugin/csi.sock")
    }

    pub(crate) async fn channel(&self) -> Channel {
        socket_channel(self.socket()).await
    }

    pub(crate) async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel().await)
    }

    pub(crate) async fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel().await)
    }

    /// A pod's target path; its parent exists, as kubelet makes it.
    pub(crate) fn target(&self, pod: &str) -> PathBuf {
        let parent = self.dir.path().join("pods").join(pod);
        std::fs::create_dir_all(&parent).unwrap();
        parent.join("mount")
    }

    pub(crate) fn log_text(&self) -> String {
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
                // A daemon the driver could not stop (one a failed test left
                // stopped) would hang the unmount.
                common::kill_leftovers(&pod.path().join("mount"));
                common::unmount(&pod.path().join("mount"));
            }
        }
    }
}

/// A gRPC channel to the plugin listening on `socket`.
pub(crate) async fn socket_channel(socket: PathBuf) -> Channel {
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

/// A role ARN for requests that never reach STS.
const ROLE: &str = "arn:aws:iam::123456789012:role/customer";

/// volume_context or secrets, as written in a test.
type Pairs<'a> = &'a [(&'a str, &'a str)];

fn strings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(crate) fn publish_request(
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

pub(crate) async fn publish(
    node: &mut NodeClient<Channel>,
    request: NodePublishVolumeRequest,
) -> Result<(), tonic::Status> {
    node.node_publish_volume(request).await.map(drop)
}

pub(crate) async fn unpublish(node: &mut NodeClient<Channel>, volume_id: &str, target: &Path) {
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.to_str().unwrap().into(),
    })
    .await
    .unwrap_or_else(|status| panic!("unpublish {}: {status:?}", target.display()));
}

/// The customer's moto, as `scripts/moto_roles.py` sets it up, and the driver
/// running as the platform's user.
pub(crate) struct Customers {
    pub(crate) server: Server,
    setup: serde_json::Value,
}

impl Customers {
    pub(crate) fn new() -> Customers {
        let server = Server::start(ServerKind::Moto);
        let setup = server.setup_roles();
        Customers { server, setup }
    }

    pub(crate) fn field(&self, name: &str) -> String {
        self.setup[name].as_str().unwrap().to_string()
    }

    /// The driver as the platform runs it: its own identity is the platform
    /// user's keys, which customers' roles trust, and volumes may name moto.
    pub(crate) fn driver(&self) -> DriverSetup {
        let mut env = self.server.env();
        env.retain(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"));
        env.push(("AWS_ACCESS_KEY_ID".into(), self.field("access_key")));
        env.push(("AWS_SECRET_ACCESS_KEY".into(), self.field("secret_key")));
        env.push(("AWS_ENDPOINT_URL_STS".into(), self.server.endpoint.clone()));
        DriverSetup::env(env)
            .endpoint_of(&self.server)
            .args(&["--allow-driver-credentials"])
    }

    pub(crate) fn context<'a>(&'a self, bucket: &'a str) -> Vec<(&'a str, &'a str)> {
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

// On more than one thread: the client's connection must answer the driver's
// goodbye while the driver is stopped at the end.
#[tokio::test(flavor = "multi_thread")]
async fn the_plugin_says_who_it_is_and_refuses_bad_publishes_by_field() {
    let driver = DriverSetup::default().start();
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
    // The default most volumes, for the scheduler.
    assert_eq!(info.max_volumes_per_node, 32);
    // Volume stats with the volume's condition (e2e_csi_health), nothing else.
    let capabilities = node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capabilities.capabilities.len(), 2, "{capabilities:?}");

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
            &[
                ("access_key_id", "AK"),
                ("secret_access_key", "s3vol-secret-id"),
            ],
            "--metadata-ttl",
        ),
        (
            &[("bucket", "vol"), ("external_id", "s3vol-secret-id")],
            &[],
            "node-publish Secret",
        ),
        (
            &[("bucket", "vol"), ("endpoint_url", "http://192.0.2.1:9000")],
            &[
                ("access_key_id", "AK"),
                ("secret_access_key", "s3vol-secret-id"),
            ],
            "volume_context endpoint_url http://192.0.2.1:9000 is not an endpoint this \
             driver may send credentials to; the operator lists those with s3vol csi \
             --allow-endpoint",
        ),
        (
            &[
                ("bucket", "vol"),
                ("sts_endpoint_url", "https://sts.attacker.example"),
            ],
            &[
                ("role_arn", ROLE),
                ("access_key_id", "AK"),
                ("secret_access_key", "s3vol-secret-id"),
            ],
            "volume_context sts_endpoint_url",
        ),
        (
            &[("bucket", "vol"), ("allow_http", "true")],
            &[],
            "--allow-endpoint",
        ),
        (
            &[("bucket", "vol"), ("role_arn", ROLE)],
            &[("external_id", "s3vol-secret-id")],
            "put role_arn in the node-publish Secret",
        ),
        (
            &[("bucket", "vol")],
            &[("role_arn", ROLE), ("external_id", "s3vol-secret-id")],
            "--allow-driver-credentials",
        ),
        (
            &[("bucket", "vol")],
            &[("role_arn", ROLE), ("external_id", "s3vol-secret-id\n")],
            "the node-publish Secret's external_id holds a control character",
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
    let driver = customers.driver().start();
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
    // A CSI volume outlives its worker too: the same daemon, the same files.
    let daemon = common::daemon_pids(&target_a2);
    common::kill_worker(&target_a2);
    assert_eq!(common::daemon_pids(&target_a2), daemon);
    assert_eq!(
        std::fs::read(target_a2.join("a.txt")).unwrap(),
        b"inside the volume\n"
    );
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
    let driver = customers.driver().start();
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
    let driver = customers.driver().start();
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
pub(crate) struct Garage {
    pub(crate) server: Server,
}

impl Garage {
    pub(crate) async fn new() -> Garage {
        let server = Server::start(ServerKind::Garage);
        server.create_bucket("vol").await;
        server.put("vol", "data/seed.txt", b"seed\n".to_vec()).await;
        Garage { server }
    }

    pub(crate) fn context(&self) -> Vec<(&str, &str)> {
        vec![
            ("bucket", "vol/data"),
            ("endpoint_url", &self.server.endpoint),
            ("force_path_style", "true"),
            ("region", &self.server.region),
            ("metadata_ttl", "0"),
        ]
    }

    pub(crate) fn secrets(&self) -> Vec<(&str, &str)> {
        vec![
            ("access_key_id", &self.server.access_key),
            ("secret_access_key", &self.server.secret_key),
        ]
    }

    /// The driver has no credentials of its own; volumes may name Garage.
    pub(crate) fn driver(&self) -> DriverSetup {
        let mut env = self.server.env();
        env.retain(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"));
        DriverSetup::env(env).endpoint_of(&self.server)
    }

    /// A read-write publish of volume `id` (vol/data) at `target`, with the
    /// Secret's keys.
    pub(crate) fn request(&self, id: &str, target: &Path) -> NodePublishVolumeRequest {
        publish_request(
            id,
            target,
            Mode::SingleNodeWriter,
            &self.context(),
            &self.secrets(),
        )
    }

    /// A driver with the volume vol/data published read-write for `pod`.
    async fn published(&self, pod: &str) -> Published {
        let driver = self.driver().start();
        let mut node = driver.node().await;
        let target = driver.target(pod);
        let request = self.request("data", &target);
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
        common::kill_volume(target);
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

/// A shell command that makes `marker`, as a profile's credential_process or
/// an injected line would run it.
fn touch(marker: &Path) -> String {
    format!("sh -c 'touch {}'", marker.display())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn secrets_and_profiles_never_run_a_command() {
    let garage = Garage::new().await;
    let files = tempfile::tempdir().unwrap();
    // The driver's container holds AWS profile files whose default profile
    // runs a command; a daemon it starts must never read them.
    let profile_marker = files.path().join("profile-ran");
    let profile = format!(
        "[default]\ncredential_process = {}\n",
        touch(&profile_marker)
    );
    let (config, credentials) = (
        files.path().join("config"),
        files.path().join("credentials"),
    );
    std::fs::write(&config, &profile).unwrap();
    std::fs::write(&credentials, &profile).unwrap();
    let mut setup = garage.driver().args(&["--allow-driver-credentials"]);
    setup.env.retain(|(k, _)| !k.ends_with("_FILE"));
    setup
        .env
        .push(("AWS_CONFIG_FILE".into(), config.display().to_string()));
    setup.env.push((
        "AWS_SHARED_CREDENTIALS_FILE".into(),
        credentials.display().to_string(),
    ));
    let driver = setup.start();
    let mut node = driver.node().await;

    // A line added to any of the Secret's keys is refused, naming the key.
    let field_marker = files.path().join("field-ran");
    let injected = format!("\ncredential_process = {}", touch(&field_marker));
    for field in ["access_key_id", "secret_access_key", "session_token"] {
        let target = driver.target(&format!("pod-{}", field.replace('_', "-")));
        let mut secrets: Vec<(String, String)> = garage
            .secrets()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("session_token".to_string(), "token".to_string())])
            .collect();
        for (name, value) in &mut secrets {
            if name == field {
                value.push_str(&injected);
            }
        }
        let secrets: Vec<(&str, &str)> = secrets
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let request = publish_request(
            "data",
            &target,
            Mode::SingleNodeWriter,
            &garage.context(),
            &secrets,
        );
        let status = publish(&mut node, request).await.unwrap_err();
        eprintln!(
            "{field} with a line added: {:?} {}",
            status.code(),
            status.message()
        );
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(&format!(
                "the node-publish Secret's {field} holds a control character"
            )),
            "{}",
            status.message()
        );
        assert!(!target.exists());
    }

    // Keys from the Secret reach the daemon as data: the volume mounts with
    // them, and no profile is read.
    let target = driver.target("pod-keys");
    let request = garage.request("data", &target);
    publish(&mut node, request).await.unwrap();
    assert_eq!(std::fs::read(target.join("seed.txt")).unwrap(), b"seed\n");
    unpublish(&mut node, "data", &target).await;

    // A volume that signs as the driver takes the driver's identity from its
    // environment, web identity or metadata, never from a profile: here there
    // is none, so the mount fails without running anything.
    let target = driver.target("pod-driver");
    let request = publish_request(
        "data",
        &target,
        Mode::SingleNodeReaderOnly,
        &garage.context(),
        &[],
    );
    let status = publish(&mut node, request).await.unwrap_err();
    eprintln!(
        "a volume signing as the driver: {:?} {}",
        status.code(),
        status.message()
    );
    assert!(
        status.message().contains("no usable AWS credentials"),
        "{status:?}"
    );
    assert!(!common::is_mounted(&target));

    assert!(!field_marker.exists(), "an injected line ran");
    assert!(
        !profile_marker.exists(),
        "a profile's credential_process ran"
    );
    // The driver's log is plain text, with no terminal escape codes.
    assert!(!driver.log_text().contains('\x1b'), "{}", driver.log_text());
}

/// The `--cache-size` and `--staging-size` each volume's daemon was started
/// with, from their command lines.
fn daemon_shares(targets: &[PathBuf]) -> Vec<(u64, u64)> {
    targets
        .iter()
        .filter(|t| common::is_mounted(t))
        .map(|target| {
            let pids = common::daemon_pids(target);
            assert_eq!(pids.len(), 1, "{}: {pids:?}", target.display());
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
            let value = |name: &str| {
                cmdline
                    .split(|b| *b == 0)
                    .filter_map(|arg| std::str::from_utf8(arg).ok()?.strip_prefix(name))
                    .map(|v| v.parse::<u64>().unwrap())
                    .next_back()
                    .unwrap_or(0)
            };
            (value("--cache-size="), value("--staging-size="))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn the_node_s_volumes_never_take_more_than_its_budget() {
    const MIB: u64 = 1 << 20;
    let garage = Garage::new().await;
    let driver = garage
        .driver()
        .args(&[
            "--node-cache-size=64MiB",
            "--node-staging-size=40MiB",
            "--max-volumes=4",
        ])
        .start();
    let mut node = driver.node().await;
    let info = node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.max_volumes_per_node, 4);

    let mut targets = Vec::new();
    let mut publish_one = async |pod: &str, mode: Mode, extra: &[(&str, &str)]| {
        let target = driver.target(pod);
        let mut context = garage.context();
        context.extend_from_slice(extra);
        let request = publish_request(pod, &target, mode, &context, &garage.secrets());
        let result = publish(&mut node, request).await;
        targets.push(target);
        result
    };
    // Two volumes that ask for 24 MiB of cache each, and the default share of
    // staging (40 MiB / 4).
    publish_one("pod-1", Mode::SingleNodeWriter, &[("cache_size", "24MiB")])
        .await
        .unwrap();
    publish_one("pod-2", Mode::SingleNodeWriter, &[("cache_size", "24MiB")])
        .await
        .unwrap();
    // A third would bring the caches to 72 MiB.
    let status = publish_one("pod-3", Mode::SingleNodeWriter, &[("cache_size", "24MiB")])
        .await
        .unwrap_err();
    eprintln!("a third volume: {:?} {}", status.code(), status.message());
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("--node-cache-size 64.0 MiB"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("16.0 MiB left"),
        "{}",
        status.message()
    );
    // One that asks for more staging than is left.
    let status = publish_one(
        "pod-4",
        Mode::SingleNodeWriter,
        &[("staging_size", "30MiB"), ("no_cache", "true")],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("--node-staging-size"),
        "{}",
        status.message()
    );
    // The default share fits: 16 MiB of cache, and a read-only volume
    // without a cache takes nothing but a place.
    publish_one("pod-5", Mode::SingleNodeWriter, &[])
        .await
        .unwrap();
    publish_one("pod-6", Mode::MultiNodeReaderOnly, &[("no_cache", "true")])
        .await
        .unwrap();
    let status = publish_one("pod-7", Mode::MultiNodeReaderOnly, &[("no_cache", "true")])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("--max-volumes"),
        "{}",
        status.message()
    );

    // What the daemons were given never passes the budget.
    let shares = daemon_shares(&targets);
    eprintln!("the daemons' (cache, staging): {shares:?}");
    assert_eq!(shares.len(), 4);
    assert!(shares.iter().map(|s| s.0).sum::<u64>() <= 64 * MIB);
    assert!(shares.iter().map(|s| s.1).sum::<u64>() <= 40 * MIB);
    assert!(shares.contains(&(16 * MIB, 10 * MIB)), "{shares:?}");
    // A volume's cache keeps to its share: what it reads stays within it.
    let big = common::pattern(40 << 20, 3);
    garage.server.put("vol", "data/big.bin", big.clone()).await;
    assert_eq!(std::fs::read(targets[0].join("big.bin")).unwrap(), big);
    let stats = volume_stats(&targets[0]);
    assert!(
        stats["cache"]["disk_used"].as_u64().unwrap() <= 24 * MIB,
        "{stats}"
    );
    assert_eq!(stats["cache"]["disk_capacity"], 24 * MIB);

    // An unpublished volume gives its share back.
    unpublish(&mut node, "pod-1", &targets[0]).await;
    let again = driver.target("pod-8");
    let request = publish_request(
        "pod-8",
        &again,
        Mode::SingleNodeWriter,
        &[garage.context(), vec![("cache_size", "40MiB")]].concat(),
        &garage.secrets(),
    );
    let status = publish(&mut node, request.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let mut fits = request;
    fits.volume_context
        .insert("cache_size".into(), "24MiB".into());
    publish(&mut node, fits).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_publish_its_caller_gave_up_on_gives_its_share_back() {
    let garage = Garage::new().await;
    let silent = common::procs::silent_endpoint();
    let driver = garage
        .driver()
        .args(&[
            "--max-volumes=1",
            "--mount-timeout=3s",
            &format!("--allow-endpoint={silent}"),
        ])
        .start();
    let mut node = driver.node().await;
    // A volume whose endpoint never answers, asked for by a caller that gives
    // up after a second (kubelet's deadline, shorter).
    let stuck = driver.target("pod-stuck");
    let mut context = garage.context();
    context[1] = ("endpoint_url", &silent);
    let request = publish_request(
        "stuck",
        &stuck,
        Mode::SingleNodeWriter,
        &context,
        &garage.secrets(),
    );
    let mut call = tonic::Request::new(request);
    call.set_timeout(Duration::from_secs(1));
    let status = node.node_publish_volume(call).await.unwrap_err();
    eprintln!("the caller gave up: {:?}", status.code());
    // The publish runs to its end (the mount's deadline) and gives the only
    // place on the node back, so another volume is published.
    let target = driver.target("pod-next");
    let request = garage.request("next", &target);
    let started = Instant::now();
    let published = loop {
        match publish(&mut node, request.clone()).await {
            Ok(()) => break true,
            Err(status) if status.code() == Code::ResourceExhausted => {
                if started.elapsed() > Duration::from_secs(60) {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    };
    assert!(
        published,
        "the given-up publish kept its share: {}",
        driver.log_text()
    );
    eprintln!(
        "the next volume was published {:?} later",
        started.elapsed()
    );
    assert!(!common::is_mounted(&stuck));
    assert!(common::daemon_pids(&stuck).is_empty());
    assert_eq!(std::fs::read(target.join("seed.txt")).unwrap(), b"seed\n");
}

/// `s3vol stats --json` of a mounted volume.
pub(crate) fn volume_stats(target: &Path) -> serde_json::Value {
    let out = common::s3vol()
        .args(["stats", "--json"])
        .arg(target)
        .output()
        .unwrap();
    assert!(common::succeeded(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_pod_in_a_pid_namespace_of_its_own_is_seen_and_its_child_s_exit_publishes_nothing() {
    let garage = Garage::new().await;
    garage
        .server
        .put("vol", "data/d.txt", b"good v1\n".to_vec())
        .await;
    // The driver in the host's PID namespace, as node.yaml runs it (hostPID).
    let Published { driver, target, .. } = garage.published("pod-p").await;
    assert!(!driver.log_text().contains("PID namespace of its own"));
    // The pod: a PID namespace of its own, with its own /proc, as a
    // container's. The writer forks a child that exits while the file is
    // open, then waits to be told to finish.
    let writer = r#"
import os, sys
f = open(sys.argv[1], 'w')
f.write('PARTIAL'); f.flush()
child = os.fork()
if child == 0:
    os._exit(0)
os.waitpid(child, 0)
print('child-exited', os.getpid(), flush=True)
sys.stdin.readline()
f.write(' and the rest\n'); f.close()
print('closed', flush=True)
"#;
    let mut pod = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "python3", "-c", writer])
        .arg(target.join("d.txt"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(pod.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    eprintln!("the pod's writer: {first}");
    // PID 1 in the pod's namespace: not the PID the daemon knows it by.
    assert_eq!(first, "child-exited 1");
    // The child's exit closed a descriptor of the file: S3 keeps what it had.
    assert_eq!(
        garage.server.get("vol", "data/d.txt").await.as_deref(),
        Some(&b"good v1\n"[..])
    );
    writeln!(pod.stdin.as_mut().unwrap(), "go").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "closed");
    assert!(pod.wait().unwrap().success());
    assert_eq!(
        garage.server.get("vol", "data/d.txt").await.as_deref(),
        Some(&b"PARTIAL and the rest\n"[..])
    );
    let stats = volume_stats(&target);
    assert_eq!(stats["callers"]["host_pid_namespace"], true, "{stats}");
    assert_eq!(stats["callers"]["unseen_closes"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_driver_without_the_host_s_pids_says_it_cannot_see_its_callers() {
    let garage = Garage::new().await;
    // The driver in a PID namespace of its own, as a DaemonSet without
    // hostPID runs it (the mounts stay in the host's mount namespace).
    let mut setup = garage.driver();
    setup.wrapper = ["unshare", "--pid", "--fork", "--kill-child=SIGTERM"]
        .map(String::from)
        .to_vec();
    let driver = setup.start();
    let mut node = driver.node().await;
    let target = driver.target("pod-u");
    let request = garage.request("data", &target);
    publish(&mut node, request).await.unwrap();
    // The daemon says so before it is ready; the driver relays its lines
    // as they come, which may be a moment after the publish returns.
    let said = wait_until(Duration::from_secs(5), || {
        driver
            .log_text()
            .contains("this daemon runs in a PID namespace of its own")
    });
    assert!(said, "{}", driver.log_text());
    // This test's process is outside the daemon's namespace: its close is
    // PID 0 to the daemon, and is counted as one it cannot see.
    std::fs::write(target.join("from-outside.txt"), b"x\n").unwrap();
    let stats = volume_stats(&target);
    eprintln!("callers: {}", stats["callers"]);
    assert_eq!(stats["callers"]["host_pid_namespace"], false);
    assert!(
        stats["callers"]["unseen_closes"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    let out = common::s3vol().arg("stats").arg(&target).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cannot see processes outside it"), "{text}");
    assert_eq!(
        garage
            .server
            .get("vol", "data/from-outside.txt")
            .await
            .as_deref(),
        Some(&b"x\n"[..])
    );
    unpublish(&mut node, "data", &target).await;
}

#[tokio::test]
#[ignore = "needs gRPC for Python; run scripts/test.sh"]
async fn a_grpc_core_client_is_served_whatever_authority_it_names() {
    let driver = DriverSetup::default().start();
    // grpc-core names the socket's path as the authority over a Unix socket;
    // the calls' messages are passed as bytes and decoded here.
    let client = r#"
import sys, grpc
channel = grpc.insecure_channel('unix:' + sys.argv[1])
for method in sys.argv[2:]:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    print(call(b'', timeout=10).hex(), flush=True)
"#;
    let python = common::tools_dir().join("grpcio-1.85.3/bin/python");
    let out = Command::new(python)
        .args(["-c", client])
        .arg(driver.socket())
        .args(["/csi.v1.Identity/GetPluginInfo", "/csi.v1.Node/NodeGetInfo"])
        .env("GRPC_VERBOSITY", "ERROR")
        .output()
        .unwrap();
    assert!(common::succeeded(&out), "{}", driver.log_text());
    let answers: Vec<Vec<u8>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| hex::decode(line).unwrap())
        .collect();
    use prost::Message;
    let info = GetPluginInfoResponse::decode(&answers[0][..]).unwrap();
    assert_eq!(info.name, "csi.s3vol.io");
    let node = NodeGetInfoResponse::decode(&answers[1][..]).unwrap();
    assert_eq!(node.node_id, "node-1");
    eprintln!(
        "grpcio: {} {}, node {}",
        info.name, info.vendor_version, node.node_id
    );
}

/// The manifests in deploy/kubernetes, as JSON documents.
pub(crate) fn manifests() -> (Vec<PathBuf>, Vec<serde_json::Value>) {
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
    let daemonsets = of_kind("DaemonSet");
    let daemonset = serde_json::to_string(&daemonsets).unwrap();
    assert!(daemonset.contains(&format!("/var/lib/kubelet/plugins/{DRIVER_NAME}/csi.sock")));
    assert!(daemonset.contains("unix:///csi/csi.sock"));
    // The volumes' daemons see the pods' processes.
    assert_eq!(daemonsets[0]["spec"]["template"]["spec"]["hostPID"], true);
    // What the driver's options allow the example volumes.
    let driver_args: Vec<&str> = daemonsets[0]["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "s3vol")
        .unwrap()["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let rules = s3vol::csi::request::Rules {
        endpoints: driver_args
            .iter()
            .filter_map(|a| a.strip_prefix("--allow-endpoint="))
            .map(|url| s3vol::names::endpoint_url(url).unwrap())
            .collect(),
        allow_driver_credentials: driver_args.contains(&"--allow-driver-credentials"),
    };

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
        let mut publish = s3vol::csi::request::parse(&request, s3vol::cli::mount_option)
            .unwrap_or_else(|e| panic!("{}: {}", pv["metadata"]["name"], e.0));
        publish
            .authorize(&rules)
            .unwrap_or_else(|e| panic!("{}: {}", pv["metadata"]["name"], e.0));
        s3vol::cli::check_mount_options(&publish.mount_options())
            .unwrap_or_else(|e| panic!("{}: {e}", pv["metadata"]["name"]));
    }
}

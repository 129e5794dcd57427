//! End to end: NodeGetVolumeStats with VOLUME_CONDITION and the driver's
//! metrics endpoint, through the plugin's socket as kubelet and Prometheus use
//! them, for each way a volume can be sick: its daemon stuck, dead, its
//! endpoint failing, its credentials no longer renewable.

use crate::common;
use crate::e2e_csi::{Customers, Garage, publish, publish_request, unpublish, volume_stats};

use std::path::Path;
use std::time::{Duration, Instant};

use common::metrics::{free_port, parse, scrape, sum};
use common::proxy::{FaultProxy, Outage};
use s3vol::csi::proto::node_client::NodeClient;
use s3vol::csi::proto::node_service_capability::rpc::Type;
use s3vol::csi::proto::volume_capability::access_mode::Mode;
use s3vol::csi::proto::*;
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

fn stats_request(volume_id: &str, path: &Path) -> NodeGetVolumeStatsRequest {
    NodeGetVolumeStatsRequest {
        volume_id: volume_id.into(),
        volume_path: path.to_str().unwrap().into(),
        ..Default::default()
    }
}

/// The volume's condition: (abnormal, message). A driver that does not answer
/// within 30 s fails the test (a stopped worker is then resumed, not waited on).
async fn condition(node: &mut NodeClient<Channel>, id: &str, target: &Path) -> (bool, String) {
    let asked = node.node_get_volume_stats(stats_request(id, target));
    let answer = tokio::time::timeout(Duration::from_secs(30), asked)
        .await
        .expect("NodeGetVolumeStats answered within 30 s")
        .unwrap_or_else(|status| panic!("NodeGetVolumeStats: {status:?}"))
        .into_inner();
    assert_eq!(answer.usage.len(), 1, "kubelet needs a usage: {answer:?}");
    let condition = answer.volume_condition.expect("a condition");
    (condition.abnormal, condition.message)
}

/// Asks until the condition's abnormality is `abnormal` (within `limit`);
/// returns its message.
async fn condition_becomes(
    node: &mut NodeClient<Channel>,
    id: &str,
    target: &Path,
    abnormal: bool,
    limit: Duration,
) -> String {
    let started = Instant::now();
    loop {
        let (now, message) = condition(node, id, target).await;
        if now == abnormal {
            return message;
        }
        assert!(
            started.elapsed() < limit,
            "still abnormal={now} after {limit:?}: {message}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The volume's worker stopped with SIGSTOP (it answers the kernel: the
/// volume hangs) until this is dropped. Dropped on a failed assertion too: a
/// worker left stopped would hang the test's cleanup, which looks at the
/// mount, and with it the whole test run.
struct Stopped(i32);

impl Stopped {
    fn worker_of(target: &Path) -> Self {
        let pids = common::worker_pids(target);
        assert_eq!(pids.len(), 1, "{pids:?}");
        // SAFETY: kill(2) on the volume's worker, found by its command line.
        unsafe { libc::kill(pids[0], libc::SIGSTOP) };
        let stopped = Self(pids[0]);
        // kill(2) returns before every thread has stopped: one that had read
        // a request could still answer it. Stopped is when all say so.
        let all_stopped = || {
            std::fs::read_dir(format!("/proc/{}/task", pids[0]))
                .unwrap()
                .flatten()
                .all(|task| {
                    let stat =
                        std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('T'))
                })
        };
        assert!(common::wait_until(Duration::from_secs(5), all_stopped));
        stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the worker this guard stopped.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_volume_is_abnormal_while_its_daemon_is_stuck_or_dead_or_its_endpoint_fails() {
    let garage = Garage::new().await;
    let proxy = FaultProxy::start(&garage.server.endpoint);
    let port = free_port();
    let driver = garage
        .driver()
        .args(&[
            &format!("--allow-endpoint={}", proxy.endpoint()),
            &format!("--metrics-listen={port}"),
        ])
        .start();
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut node = driver.node().await;
    let capabilities: Vec<i32> = node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .into_iter()
        .filter_map(|c| match c.r#type? {
            node_service_capability::Type::Rpc(rpc) => Some(rpc.r#type),
        })
        .collect();
    assert!(capabilities.contains(&(Type::GetVolumeStats as i32)));
    assert!(capabilities.contains(&(Type::VolumeCondition as i32)));

    let target = driver.target("pod-h");
    let endpoint = proxy.endpoint();
    let mut context: Vec<(&str, &str)> = garage
        .context()
        .into_iter()
        .filter(|(k, _)| *k != "endpoint_url")
        .collect();
    context.extend([("endpoint_url", endpoint.as_str()), ("io_timeout", "2s")]);
    let request = publish_request(
        "data",
        &target,
        Mode::SingleNodeWriter,
        &context,
        &garage.secrets(),
    );
    publish(&mut node, request.clone()).await.unwrap();
    let (abnormal, message) = condition(&mut node, "data", &target).await;
    assert!(!abnormal, "{message}");

    // Questions about nothing, or about another volume, are refused by field.
    let refused = |status: tonic::Status, code: Code, says: &str| {
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(says), "{status:?}");
    };
    let asker = node.clone();
    let ask = |request| {
        let mut node = asker.clone();
        async move { node.node_get_volume_stats(request).await.unwrap_err() }
    };
    refused(
        ask(stats_request("", &target)).await,
        Code::InvalidArgument,
        "volume_id",
    );
    refused(
        ask(stats_request("data", Path::new("pods/x"))).await,
        Code::InvalidArgument,
        "volume_path",
    );
    refused(
        ask(stats_request("data", &driver.target("pod-none"))).await,
        Code::NotFound,
        "not published",
    );
    refused(
        ask(stats_request("other", &target)).await,
        Code::NotFound,
        "has volume data published",
    );

    // Asking how a volume is sends nothing to S3 (a listing of the root, say).
    let before = volume_stats(&target)["requests"].clone();
    for _ in 0..3 {
        condition(&mut node, "data", &target).await;
    }
    scrape(metrics);
    assert_eq!(volume_stats(&target)["requests"], before);

    // The driver's endpoint serves the volume's numbers with its labels, as
    // `s3vol stats` gives them.
    assert_eq!(std::fs::read(target.join("seed.txt")).unwrap(), b"seed\n");
    let (status, text) = scrape(metrics);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let samples = parse(&text);
    let labels = [("volume", "data"), ("target", target.to_str().unwrap())];
    assert_eq!(sum(&samples, "s3vol_volume_up", &labels), 1.0, "{text}");
    assert_eq!(sum(&samples, "s3vol_volume_abnormal", &labels), 0.0);
    assert_eq!(sum(&samples, "s3vol_csi_volumes", &[]), 1.0);
    let stats = volume_stats(&target);
    assert_eq!(
        sum(
            &samples,
            "s3vol_requests_total",
            &[("volume", "data"), ("operation", "GetObject")]
        ),
        stats["requests"]["GetObject"].as_f64().unwrap(),
        "{text}"
    );
    assert!(!text.contains(&garage.server.secret_key));

    // The endpoint refuses every connection: once every request has failed
    // for longer than the volume's --io-timeout (an application that keeps
    // trying), the volume is abnormal, and says why.
    proxy.set_outage(Outage::Refused);
    let trying = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let application = {
        let (trying, target) = (trying.clone(), target.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while trying.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                assert!(std::fs::metadata(target.join(format!("new-{n}"))).is_err());
            }
        })
    };
    let message =
        condition_becomes(&mut node, "data", &target, true, Duration::from_secs(30)).await;
    assert!(
        message.contains("every request to S3 has failed"),
        "{message}"
    );
    assert!(message.contains("unreachable"), "{message}");
    let samples = parse(&scrape(metrics).1);
    assert_eq!(sum(&samples, "s3vol_volume_abnormal", &labels), 1.0);
    assert!(sum(&samples, "s3vol_endpoint_failing_seconds", &labels) > 2.0);
    trying.store(false, std::sync::atomic::Ordering::Relaxed);
    application.join().unwrap();
    // It answers again: the next request brings the volume back.
    proxy.set_outage(Outage::None);
    let probe = target.clone();
    tokio::task::spawn_blocking(move || std::fs::read(probe.join("seed.txt")).unwrap())
        .await
        .unwrap();
    condition_becomes(&mut node, "data", &target, false, Duration::from_secs(10)).await;
    let samples = parse(&scrape(metrics).1);
    assert_eq!(
        sum(&samples, "s3vol_endpoint_failing_seconds", &labels),
        0.0
    );

    // Questions asked while one is out share its answer: a daemon slow for a
    // second is not reported silent to the second caller.
    let stopped = Stopped::worker_of(&target);
    let ask_twice = {
        let (mut first, mut second) = (node.clone(), node.clone());
        let (a, b) = (target.clone(), target.clone());
        tokio::spawn(async move {
            let one = tokio::spawn(async move { condition(&mut first, "data", &a).await });
            tokio::time::sleep(Duration::from_millis(200)).await;
            let two = condition(&mut second, "data", &b).await;
            (one.await.unwrap(), two)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(stopped);
    let (one, two) = ask_twice.await.unwrap();
    assert!(!one.0 && !two.0, "{one:?} {two:?}");

    // A daemon that does not answer (stopped) is abnormal within the probe's
    // bound, and the next question does not wait again.
    let stopped = Stopped::worker_of(&target);
    let started = Instant::now();
    let (abnormal, message) = condition(&mut node, "data", &target).await;
    assert!(
        abnormal && message.contains("did not answer within 5 s"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // Asked again, the scrape would wait the probe's 5 s; the parse is not
    // timed (a Python start on loaded cores).
    let started = Instant::now();
    let text = scrape(metrics).1;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a question still unanswered is not asked again: {:?}",
        started.elapsed()
    );
    assert_eq!(sum(&parse(&text), "s3vol_volume_up", &labels), 0.0);
    drop(stopped);
    condition_becomes(&mut node, "data", &target, false, Duration::from_secs(10)).await;

    // A daemon killed: abnormal until the next republish mounts it again.
    common::kill_volume(&target);
    let message =
        condition_becomes(&mut node, "data", &target, true, Duration::from_secs(10)).await;
    assert!(
        message.contains("daemon is gone") && message.contains("republish"),
        "{message}"
    );
    publish(&mut node, request.clone()).await.unwrap();
    condition_becomes(&mut node, "data", &target, false, Duration::from_secs(10)).await;

    unpublish(&mut node, "data", &target).await;
    refused(
        ask(stats_request("data", &target)).await,
        Code::NotFound,
        "not published",
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs moto; run scripts/test.sh"]
async fn a_volume_whose_credentials_cannot_be_renewed_is_abnormal_until_they_can() {
    let customers = Customers::new();
    // Sessions of 20 s, renewed when 15 s are left: a renewal every 5 s.
    customers.server.sessions(json!({"lifetime": 20}));
    let driver = customers.driver().start();
    let mut node = driver.node().await;
    let target = driver.target("pod-c");
    let mut context = customers.context("vol/root");
    context.push(("renew_before", "15"));
    let request = publish_request(
        "customer-a",
        &target,
        Mode::SingleNodeReaderOnly,
        &context,
        &[
            ("role_arn", &customers.field("role_arn")),
            ("external_id", &customers.field("external_id")),
        ],
    );
    publish(&mut node, request).await.unwrap();
    let (abnormal, message) = condition(&mut node, "customer-a", &target).await;
    assert!(!abnormal, "{message}");

    customers.server.sessions(json!({"sts": "deny"}));
    let message = condition_becomes(
        &mut node,
        "customer-a",
        &target,
        true,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        message.contains("credentials cannot be renewed: STS refused"),
        "{message}"
    );
    assert!(message.contains("external ID"), "what to check: {message}");
    // STS's own words stay in the log: they may name the node's identity.
    assert!(!message.contains("switched off by the test"), "{message}");
    let stats = volume_stats(&target);
    assert!(
        stats["credentials"]["failed_renewals"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    assert_eq!(
        stats["credentials"]["renewal_failing"], "refused",
        "{stats}"
    );

    customers.server.sessions(json!({"sts": "allow"}));
    condition_becomes(
        &mut node,
        "customer-a",
        &target,
        false,
        Duration::from_secs(90),
    )
    .await;
    unpublish(&mut node, "customer-a", &target).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn after_a_driver_restart_its_volumes_are_still_reported() {
    let garage = Garage::new().await;
    let mut driver = garage.driver().start();
    let mut node = driver.node().await;
    let target = driver.target("pod-r");
    let request = garage.request("data", &target);
    publish(&mut node, request.clone()).await.unwrap();

    // A new driver has not published the volume itself: it finds it mounted
    // and asks it, rather than calling it unknown.
    driver.restart(garage.driver());
    let mut node = driver.node().await;
    let (abnormal, message) = condition(&mut node, "data", &target).await;
    assert!(!abnormal, "{message}");
    common::kill_volume(&target);
    let message =
        condition_becomes(&mut node, "data", &target, true, Duration::from_secs(10)).await;
    assert!(message.contains("daemon is gone"), "{message}");
    // kubelet's next republish mounts it again.
    publish(&mut node, request).await.unwrap();
    condition_becomes(&mut node, "data", &target, false, Duration::from_secs(10)).await;
    unpublish(&mut node, "data", &target).await;
}

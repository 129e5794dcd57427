//! End to end: mounting through an assumed role with an external ID, against moto
//! with authentication and IAM enforcement on.

use crate::common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{Mount, Server, ServerKind, s3vol};
use serde_json::json;

struct Customer {
    server: Server,
    setup: serde_json::Value,
    id_file: tempfile::NamedTempFile,
}

impl Customer {
    fn new() -> Customer {
        let server = Server::start(ServerKind::Moto);
        let setup = server.setup_roles();
        let id_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            id_file.path(),
            format!("{}\n", setup["external_id"].as_str().unwrap()),
        )
        .unwrap();
        Customer {
            server,
            setup,
            id_file,
        }
    }

    fn field(&self, name: &str) -> String {
        self.setup[name].as_str().unwrap().to_string()
    }

    /// The platform user's environment plus the role options.
    fn args(&self, external_id_file: &Path) -> Vec<String> {
        vec![
            "--role-arn".into(),
            self.field("role_arn"),
            "--external-id-file".into(),
            external_id_file.to_str().unwrap().into(),
            "--sts-endpoint-url".into(),
            self.server.endpoint.clone(),
        ]
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = self.server.env();
        env.retain(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"));
        env.push(("AWS_ACCESS_KEY_ID".into(), self.field("access_key")));
        env.push(("AWS_SECRET_ACCESS_KEY".into(), self.field("secret_key")));
        env
    }

    fn mount(&self, source: &str, extra: &[&str]) -> Mount {
        let args = self.args(self.id_file.path());
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        Mount::with_env(&self.server, source, &all, &self.env())
    }

    fn mount_fails(&self, source: &str, external_id_file: &Path) -> String {
        let dir = tempfile::tempdir().unwrap();
        let out: Output = s3vol()
            .args(["mount", source, dir.path().to_str().unwrap()])
            .args(self.server.endpoint_args())
            .args(self.args(external_id_file))
            .envs(self.env())
            .output()
            .unwrap();
        assert!(!out.status.success(), "mount should fail");
        assert!(!common::is_mounted(dir.path()));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn assume_role_calls(&self) -> Vec<serde_json::Value> {
        self.server.moto_state()["sts"]["AssumedRole"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

#[test]
#[ignore = "needs moto; run scripts/test.sh"]
fn the_right_external_id_mounts_and_reads() {
    let customer = Customer::new();
    let mount = customer.mount("vol/root", &[]);
    assert_eq!(
        std::fs::read(mount.path().join("a.txt")).unwrap(),
        b"inside the volume\n"
    );
    let calls = customer.assume_role_calls();
    assert!(!calls.is_empty());
    for call in &calls {
        assert_eq!(call["external_id"], customer.setup["external_id"]);
        assert!(call["session_name"].as_str().unwrap().starts_with("s3vol-"));
    }
    let log = mount.log_text();
    assert!(log.contains("credentials obtained"), "{log}");
    assert!(
        !log.contains(&customer.field("external_id")),
        "the log shows the external ID"
    );
    let id = customer.field("external_id");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&id), "/proc/mounts shows the external ID");
    // No process's command line (what `ps` shows) holds it either.
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&id),
            "ps shows the external ID in {:?}",
            entry.path()
        );
    }
}

#[test]
#[ignore = "needs moto; run scripts/test.sh"]
fn a_wrong_external_id_fails_the_mount_with_the_likely_cause() {
    let customer = Customer::new();
    let wrong = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wrong.path(), "not-the-right-id").unwrap();
    let err = customer.mount_fails("vol/root", wrong.path());
    assert!(
        err.contains(
            "STS refused to let these credentials assume role \
             arn:aws:iam::123456789012:role/reader"
        ),
        "{err}"
    );
    assert!(err.contains("external ID"), "{err}");
    assert!(
        !err.contains("not-the-right-id"),
        "the message shows the external ID: {err}"
    );
}

#[test]
#[ignore = "needs moto; run scripts/test.sh"]
fn reads_outside_the_prefix_are_denied_with_the_action_and_resource() {
    let customer = Customer::new();
    // The whole bucket: the first object is outside the policy's prefix.
    let err = customer.mount_fails("vol", customer.id_file.path());
    assert!(
        err.contains("AccessDenied: s3:GetObject on arn:aws:s3:::vol/aaa-outside.txt"),
        "{err}"
    );
}

#[test]
#[ignore = "needs moto; run scripts/test.sh"]
fn short_sessions_are_renewed_under_a_continuous_read() {
    let customer = Customer::new();
    // Sessions that really end after 6 s: the layer in front of moto shortens the
    // expiry STS hands out and refuses credentials past it. Renewed when 2 s are left.
    customer.server.sessions(json!({"lifetime": 6}));
    let mount = customer.mount("vol/root", &["--renew-before", "2", "--metadata-ttl", "0"]);
    let expected = std::fs::read(mount.path().join("data/b.bin")).unwrap();
    let start = Instant::now();
    let (mut reads, mut failures) = (0u32, Vec::new());
    while start.elapsed() < Duration::from_secs(60) {
        match std::fs::read(mount.path().join("data/b.bin")) {
            Ok(data) if data == expected => reads += 1,
            Ok(_) => failures.push("content differs".to_string()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let log = mount.log_text();
    let renewals = log.matches("credentials renewed").count();
    // Each renewal names the role, the session and the new expiry, never a secret.
    let line = log
        .lines()
        .find(|l| l.contains("credentials renewed"))
        .unwrap_or_default();
    assert!(line.contains("role/reader (session s3vol-"), "{line}");
    assert!(line.contains("expires=\"20"), "{line}");
    for secret in ["secret_key", "external_id"] {
        assert!(
            !log.contains(&customer.field(secret)),
            "the log shows the {secret}"
        );
    }
    eprintln!(
        "{reads} reads, {} failed, {renewals} renewals",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(renewals >= 10, "{renewals} renewals in 60 s");
    // s3vol stats counts them too (read just after the log, so perhaps one more).
    let counted = mount.stats()["credential_renewals"].as_u64().unwrap();
    assert!(
        (renewals as u64..=renewals as u64 + 1).contains(&counted),
        "{counted}"
    );
    let layer = customer.server.sessions(json!({}));
    assert_eq!(layer["expired_answers"], 0, "expired credentials were sent");
    let calls = customer.assume_role_calls();
    assert!(calls.len() > renewals, "{} AssumeRole calls", calls.len());
    assert!(
        calls
            .iter()
            .all(|c| c["external_id"] == customer.setup["external_id"])
    );
}

#[test]
#[ignore = "needs moto; run scripts/test.sh"]
fn a_session_refused_as_expired_is_renewed_at_once_and_the_request_retried() {
    let customer = Customer::new();
    let mount = customer.mount("vol/root", &["--metadata-ttl", "0"]);
    let file = mount.path().join("a.txt");
    assert_eq!(std::fs::read(&file).unwrap(), b"inside the volume\n");
    let before = customer.assume_role_calls().len();
    // S3 now calls the current session expired (revoked, or a clock behind S3's).
    customer.server.sessions(json!({"revoke": true}));
    assert_eq!(std::fs::read(&file).unwrap(), b"inside the volume\n");
    let layer = customer.server.sessions(json!({}));
    assert!(layer["expired_answers"].as_u64().unwrap() >= 1, "{layer}");
    assert_eq!(customer.assume_role_calls().len(), before + 1);
    let log = mount.log_text();
    assert!(log.contains("refused the credentials as expired"), "{log}");
}

#[test]
#[ignore = "needs moto; run scripts/test.sh"]
fn expired_credentials_fail_with_eacces_and_the_mount_recovers() {
    let customer = Customer::new();
    customer.server.sessions(json!({"lifetime": 8}));
    let mount = customer.mount("vol/root", &["--renew-before", "4", "--metadata-ttl", "0"]);
    let file = mount.path().join("a.txt");
    assert!(std::fs::read(&file).is_ok());
    // Renewal fails from now on; the session ends within 8 s.
    customer.server.sessions(json!({"sts": "deny"}));
    let denied =
        || std::fs::read(&file).is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
    assert!(common::wait_until(Duration::from_secs(30), denied));
    let says_why = || mount.log_text().contains("renewal is failing");
    assert!(
        common::wait_until(Duration::from_secs(10), says_why),
        "{}",
        mount.log_text()
    );
    let log = mount.log_text();
    assert!(log.contains("expired at"), "{log}");
    assert!(log.contains("switched off by the test"), "{log}");
    // STS answers again: the mount recovers by itself.
    customer.server.sessions(json!({"sts": "allow"}));
    assert!(common::wait_until(Duration::from_secs(90), || {
        std::fs::read(&file).is_ok()
    }));
}

/// The platform user's keys as a profile, and a profile that assumes the role
/// with the external ID from it, as `aws configure` would write them.
fn profile_config(customer: &Customer) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!(
            "[profile platform]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n\
             [profile volume]\nrole_arn = {}\nexternal_id = {}\nsource_profile = platform\n\
             role_session_name = s3vol-profile\n",
            customer.field("access_key"),
            customer.field("secret_key"),
            customer.field("role_arn"),
            customer.field("external_id"),
        ),
    )
    .unwrap();
    file
}

/// The environment without keys, with STS at moto through the SDK's own variable.
fn env_without_keys(customer: &Customer) -> Vec<(String, String)> {
    let mut env = customer.server.env();
    env.retain(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"));
    env.push((
        "AWS_ENDPOINT_URL_STS".into(),
        customer.server.endpoint.clone(),
    ));
    env
}

#[test]
#[ignore = "needs moto; run scripts/test.sh"]
fn a_profile_that_assumes_the_role_is_renewed_like_the_role_options() {
    let customer = Customer::new();
    customer.server.sessions(json!({"lifetime": 6}));
    let config = profile_config(&customer);
    let mut env = env_without_keys(&customer);
    env.retain(|(k, _)| k != "AWS_CONFIG_FILE");
    env.push((
        "AWS_CONFIG_FILE".into(),
        config.path().display().to_string(),
    ));
    let mount = Mount::with_env(
        &customer.server,
        "vol/root",
        &[
            "--profile",
            "volume",
            "--renew-before",
            "2",
            "--metadata-ttl",
            "0",
        ],
        &env,
    );
    let file = mount.path().join("a.txt");
    assert_eq!(std::fs::read(&file).unwrap(), b"inside the volume\n");
    assert!(common::wait_until(Duration::from_secs(20), || {
        mount.log_text().matches("credentials renewed").count() >= 2
    }));
    assert_eq!(std::fs::read(&file).unwrap(), b"inside the volume\n");
    let calls: Vec<_> = customer
        .assume_role_calls()
        .into_iter()
        .filter(|c| c["session_name"] == "s3vol-profile")
        .collect();
    assert!(calls.len() >= 3, "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|c| c["external_id"] == customer.setup["external_id"])
    );
    assert_eq!(customer.server.sessions(json!({}))["expired_answers"], 0);
}

#[test]
#[ignore = "needs moto; run scripts/test.sh"]
fn web_identity_tokens_are_reread_at_every_renewal() {
    let customer = Customer::new();
    customer.server.sessions(json!({"lifetime": 6}));
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "token-one").unwrap();
    let mut env = env_without_keys(&customer);
    env.extend([
        ("AWS_ROLE_ARN".into(), customer.field("role_arn")),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE".into(),
            token.path().display().to_string(),
        ),
        ("AWS_ROLE_SESSION_NAME".into(), "s3vol-web".into()),
    ]);
    let mount = Mount::with_env(
        &customer.server,
        "vol/root",
        &["--renew-before", "2", "--metadata-ttl", "0"],
        &env,
    );
    let file = mount.path().join("a.txt");
    assert_eq!(std::fs::read(&file).unwrap(), b"inside the volume\n");
    // A rotated token (as Kubernetes rotates them) is what the next renewal sends.
    std::fs::write(token.path(), "token-two").unwrap();
    let tokens = || customer.server.sessions(json!({}))["web_identity_tokens"].clone();
    assert!(
        common::wait_until(Duration::from_secs(20), || {
            tokens().as_array().unwrap().contains(&json!("token-two"))
        }),
        "{}",
        tokens()
    );
    assert_eq!(tokens()[0], "token-one");
    assert_eq!(std::fs::read(&file).unwrap(), b"inside the volume\n");
}

#[test]
#[ignore = "needs moto; run scripts/test.sh"]
fn check_prints_what_the_role_may_do_and_fails_on_denials() {
    let customer = Customer::new();
    let run = |extra: &[&str]| {
        s3vol()
            .args(["check", "vol/root"])
            .args(customer.server.endpoint_args())
            .args(customer.args(customer.id_file.path()))
            .args(extra)
            .envs(customer.env())
            .output()
            .unwrap()
    };
    let read_only = run(&[]);
    let table = String::from_utf8_lossy(&read_only.stdout);
    assert!(
        read_only.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&read_only.stderr)
    );
    assert!(table.contains("s3:ListBucket"), "{table}");
    assert!(table.contains("s3:GetObject"), "{table}");
    assert!(!table.contains("DENIED"), "{table}");
    // Whether a volume here outlives its worker, as the kernel allows.
    let heals = if s3vol::fuse::session::kernel_resends() {
        "kernel: heals (FUSE_NOTIFY_RESEND)"
    } else {
        "kernel: does not heal"
    };
    assert!(table.contains(heals), "{table}");

    // The role's policy is read-only: uploads are denied, with the fix.
    let read_write = run(&["--read-write"]);
    let table = String::from_utf8_lossy(&read_write.stdout);
    assert_eq!(read_write.status.code(), Some(1), "{table}");
    assert!(
        table.contains("DENIED; fix: allow s3:PutObject on arn:aws:s3:::vol/root/*"),
        "{table}"
    );
    assert!(String::from_utf8_lossy(&read_write.stderr).contains("read-write volume needs"));
}

#[test]
#[ignore = "needs moto; run scripts/test.sh"]
fn an_encrypted_volume_calls_kms_with_the_role_and_its_renewed_sessions() {
    let customer = Customer::new();
    let key = customer.field("kms_key_arn");
    // KMS is moto's too; only the writer role may use the key, neither the
    // platform user's own keys nor the reader role.
    let mut env = customer.env();
    env.push((
        "AWS_ENDPOINT_URL_KMS".into(),
        customer.server.endpoint.clone(),
    ));
    let check = |role: &str| {
        let mut args = customer.args(customer.id_file.path());
        args[1] = customer.field(role);
        s3vol()
            .args([
                "check",
                "vol/scratch",
                "--read-write",
                "--cse-kms-key-id",
                &key,
            ])
            .args(customer.server.endpoint_args())
            .args(args)
            .envs(env.clone())
            .output()
            .unwrap()
    };
    let denied = check("role_arn");
    let table = String::from_utf8_lossy(&denied.stdout);
    assert_eq!(
        denied.status.code(),
        Some(1),
        "{table}{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("kms:GenerateDataKey") && l.contains("DENIED")),
        "{table}{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let allowed = check("writer_arn");
    let table = String::from_utf8_lossy(&allowed.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("kms:GenerateDataKey") && l.ends_with("allowed")),
        "{table}{}",
        String::from_utf8_lossy(&allowed.stderr)
    );

    // Sessions of 6 s, renewed with 2 s left: files written and read across
    // renewals unwrap their keys with the session current at the time.
    customer.server.sessions(json!({"lifetime": 6}));
    let mut args = customer.args(customer.id_file.path());
    args[1] = customer.field("writer_arn");
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend([
        "--read-write",
        "--renew-before",
        "2",
        "--cse-kms-key-id",
        &key,
    ]);
    let mount = Mount::with_env(&customer.server, "vol/scratch", &args, &env);
    let start = Instant::now();
    let mut written = 0;
    while start.elapsed() < Duration::from_secs(15) {
        let name = format!("sealed-{written}.txt");
        let content = format!("file {written} of an encrypted volume\n");
        std::fs::write(mount.path().join(&name), &content).unwrap();
        assert_eq!(
            std::fs::read_to_string(mount.path().join(&name)).unwrap(),
            content
        );
        written += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let renewals = mount.stats()["credential_renewals"].as_u64().unwrap();
    assert!(renewals >= 2, "{renewals} renewals");
    let layer = customer.server.sessions(json!({}));
    assert_eq!(layer["expired_answers"], 0, "expired credentials were sent");
    eprintln!("{written} files written and read back across {renewals} renewals");
}

#[test]
#[ignore = "needs moto; run scripts/test.sh"]
fn the_deploy_guides_role_line_mounts_with_mount_a() {
    let customer = Customer::new();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("team-a");
    std::fs::create_dir(&mnt).unwrap();
    // The guide's line, pointed at moto: its bucket, role and external ID file.
    let endpoint = &customer.server.endpoint;
    let line = common::guide_fstab_line(
        "customer-bucket/team-a",
        &mnt,
        |options| {
            options
                .replace(
                    "arn:aws:iam::444455556666:role/s3vol-team-a",
                    &customer.field("role_arn"),
                )
                .replace(
                    "/etc/s3vol/team-a.external-id",
                    customer.id_file.path().to_str().unwrap(),
                )
                .replace(
                    "/var/log/s3vol-team-a.log",
                    dir.path().join("team-a.log").to_str().unwrap(),
                )
        },
        &format!(
            "endpoint_url={endpoint},force_path_style,sts_endpoint_url={endpoint},cache_dir={}",
            dir.path().join("cache").display()
        ),
    );
    // Its bucket and prefix are moto's.
    let fstab = dir.path().join("fstab");
    std::fs::write(
        &fstab,
        line.replacen("customer-bucket/team-a", "vol/root", 1),
    )
    .unwrap();

    let id = customer.field("external_id");
    common::host::in_helper_namespace(|| {
        let _mnt = common::Unmount(&mnt);
        let out = common::mount8(&customer.env(), &["-a", "-T", fstab.to_str().unwrap()]);
        assert!(common::succeeded(&out));
        let shown = common::findmnt(&mnt);
        println!("{}\n{shown}", std::fs::read_to_string(&fstab).unwrap());
        assert!(shown.starts_with("fuse.s3vol vol/root ro,"), "{shown}");
        assert_eq!(
            std::fs::read(mnt.join("a.txt")).unwrap(),
            b"inside the volume\n"
        );
        let mounts = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        assert!(!mounts.contains(&id), "/proc/mounts shows the external ID");
    });
    let calls = customer.assume_role_calls();
    assert!(!calls.is_empty());
    assert!(calls.iter().all(|call| call["external_id"] == id.as_str()));
}

/// The soak (scripts/soak.sh; not part of the test run): a role volume with
/// short sessions, behind the fault-injecting proxy for S3 and STS alike, under
/// a mixed workload for S3VOL_SOAK_SECONDS. Reports operations, errors,
/// renewals and the daemon's memory over time, and fails on any error an
/// application saw.
#[test]
#[ignore = "the soak; run scripts/soak.sh"]
fn soak() {
    use common::proxy::{Fault, FaultProxy};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    let setting = |name: &str, default: f64| -> f64 {
        std::env::var(name)
            .ok()
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v}")))
            .unwrap_or(default)
    };
    let seconds = setting("S3VOL_SOAK_SECONDS", 600.0);
    let share = setting("S3VOL_SOAK_FAULTS", 0.05);
    let lifetime = setting("S3VOL_SOAK_SESSION", 60.0);
    let workers = setting("S3VOL_SOAK_WORKERS", 4.0) as usize;

    let customer = Customer::new();
    customer.server.sessions(json!({ "lifetime": lifetime }));
    let proxy = FaultProxy::start(&customer.server.endpoint);
    proxy.inject(share, &Fault::ALL);
    let mut args = customer.args(customer.id_file.path());
    // The role that may write under scratch/; STS through the proxy too, so that
    // renewals meet the faults.
    let role = args.iter().position(|a| a == "--role-arn").unwrap();
    args[role + 1] = customer.field("writer_arn");
    let sts = args.iter().position(|a| a == "--sts-endpoint-url").unwrap();
    args[sts + 1] = proxy.endpoint();
    let renew_before = format!("{}", (lifetime / 3.0).ceil() as u64);
    args.extend(
        [
            "--read-write",
            "--renew-before",
            &renew_before,
            "--io-timeout",
            "10s",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mount = Mount::at_endpoint(&proxy.endpoint(), "vol/scratch", &args, &customer.env());
    let pid = common::daemon_pids(mount.path())[0];
    eprintln!(
        "soak: {seconds} s, {workers} workers, {:.0}% of requests failing, sessions of {lifetime} s",
        share * 100.0
    );

    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..workers)
        .map(|worker| {
            let (ops, errors, stop) = (ops.clone(), errors.clone(), stop.clone());
            let dir = mount.path().join(format!("soak/w{worker}"));
            std::thread::spawn(move || soak_worker(worker, &dir, &ops, &errors, &stop))
        })
        .collect();

    let rss_mib = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    let renewals = || mount.log_text().matches("credentials renewed").count();
    let interval = Duration::from_secs_f64((seconds / 20.0).clamp(5.0, 60.0));
    eprintln!(
        "{:>7} {:>8} {:>7} {:>9} {:>8} {:>8} {:>7}",
        "time", "ops", "errors", "renewals", "rss_mib", "requests", "faults"
    );
    let report = || {
        let counts = proxy.counts();
        eprintln!(
            "{:>6.0}s {:>8} {:>7} {:>9} {:>8.1} {:>8} {:>7}",
            started.elapsed().as_secs_f64(),
            ops.load(Ordering::Relaxed),
            errors.lock().unwrap().len(),
            renewals(),
            rss_mib(),
            counts.requests(),
            counts.total_faults()
        );
    };
    while started.elapsed().as_secs_f64() < seconds {
        std::thread::sleep(interval.min(Duration::from_secs_f64(
            (seconds - started.elapsed().as_secs_f64()).max(0.1),
        )));
        report();
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    report();
    let stats = mount.stats();
    eprintln!(
        "s3vol stats: {} request errors, {} credential renewals, requests {}",
        stats["request_errors"], stats["credential_renewals"], stats["requests"]
    );
    let layer = customer.server.sessions(json!({}));
    eprintln!("expired credentials sent: {}", layer["expired_answers"]);
    let kept = std::env::temp_dir().join("s3vol-soak.log");
    std::fs::copy(&mount.log, &kept).unwrap();
    eprintln!("the daemon's log: {}", kept.display());
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} errors; first: {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    assert_eq!(layer["expired_answers"], 0, "expired credentials were sent");
}

/// Writes a new file and reports the error of its close, where s3vol reports a
/// failed upload (`std::fs::write` would drop it).
fn write_and_close(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::IntoRawFd;
    let mut file = std::fs::File::create(path)?;
    file.write_all(data)?;
    nix::unistd::close(file.into_raw_fd()).map_err(std::io::Error::from)
}

/// One soak worker: writes, reads back, lists, renames and deletes files in a
/// directory of its own, checking every byte, until told to stop.
fn soak_worker(
    worker: usize,
    dir: &Path,
    ops: &std::sync::atomic::AtomicU64,
    errors: &std::sync::Mutex<Vec<String>>,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering;

    let failed = |what: String| {
        let mut errors = errors.lock().unwrap();
        eprintln!("soak error: {what}");
        errors.push(what);
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        failed(format!("mkdir {}: {e}", dir.display()));
        return;
    }
    // Name -> (length, seed) of every file this worker has left in place.
    let mut files: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let seed = (worker as u64) << 32 | n;
        let choice = fastrand::u32(..100);
        let some_file = || {
            let names: Vec<&String> = files.keys().collect();
            (!names.is_empty()).then(|| names[fastrand::usize(..names.len())].clone())
        };
        let result: Result<(), String> = match choice {
            0..40 => {
                let len = fastrand::usize(1..64 * 1024);
                let name = format!("f{n}");
                write_and_close(&dir.join(&name), &common::pattern(len, seed))
                    .map(|()| {
                        files.insert(name, (len, seed));
                    })
                    .map_err(|e| format!("write f{n}: {e}"))
            }
            40..45 => {
                // Over one part: a multipart upload.
                let len = 9 * 1024 * 1024 + fastrand::usize(..4096);
                let name = format!("big{n}");
                write_and_close(&dir.join(&name), &common::pattern(len, seed))
                    .map(|()| {
                        files.insert(name, (len, seed));
                    })
                    .map_err(|e| format!("write big{n}: {e}"))
            }
            45..80 => match some_file() {
                None => Ok(()),
                Some(name) => {
                    let (len, seed) = files[&name];
                    match std::fs::read(dir.join(&name)) {
                        Ok(data) if data == common::pattern(len, seed) => Ok(()),
                        Ok(data) => Err(format!(
                            "{name}: {} bytes read, content differs",
                            data.len()
                        )),
                        Err(e) => Err(format!("read {name}: {e}")),
                    }
                }
            },
            80..90 => match std::fs::read_dir(dir) {
                Ok(entries) => {
                    let listed: std::collections::BTreeSet<String> = entries
                        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect();
                    let missing: Vec<&String> =
                        files.keys().filter(|n| !listed.contains(*n)).collect();
                    let extra: Vec<&String> =
                        listed.iter().filter(|n| !files.contains_key(*n)).collect();
                    if missing.is_empty() && extra.is_empty() {
                        Ok(())
                    } else {
                        let stat = missing.first().map(|n| {
                            format!("{:?}", std::fs::metadata(dir.join(n)).map(|m| m.len()))
                        });
                        Err(format!(
                            "listing lacks {missing:?} (stat: {stat:?}) and shows {extra:?} too"
                        ))
                    }
                }
                Err(e) => Err(format!("list: {e}")),
            },
            90..95 => match some_file() {
                None => Ok(()),
                Some(name) => {
                    let to = format!("r{n}");
                    std::fs::rename(dir.join(&name), dir.join(&to))
                        .map(|()| {
                            let entry = files.remove(&name).unwrap();
                            files.insert(to, entry);
                        })
                        .map_err(|e| format!("rename {name}: {e}"))
                }
            },
            _ => match some_file() {
                None => Ok(()),
                Some(name) => std::fs::remove_file(dir.join(&name))
                    .map(|()| {
                        files.remove(&name);
                    })
                    .map_err(|e| format!("unlink {name}: {e}")),
            },
        };
        ops.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            failed(format!("worker {worker}: {e}"));
        }
    }
}

#[test]
#[ignore = "needs moto; run scripts/test.sh"]
fn the_most_detailed_log_shows_no_secret() {
    let customer = Customer::new();
    // Sessions short enough that the log covers renewals too.
    customer.server.sessions(json!({"lifetime": 4}));
    let mut env = customer.env();
    env.push(("RUST_LOG".into(), "trace".into()));
    let args = customer.args(customer.id_file.path());
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend(["--log-level", "trace", "--renew-before", "2"]);
    let mount = Mount::with_env(&customer.server, "vol/root", &all, &env);
    std::fs::read(mount.path().join("a.txt")).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    std::fs::read(mount.path().join("a.txt")).unwrap();
    let log = mount.log_text();
    assert!(log.contains("credentials renewed"), "renewed while logged");
    assert!(
        log.len() > 10_000,
        "trace level logs plenty: {} bytes",
        log.len()
    );
    let issued: Vec<String> = customer.server.sessions(json!({}))["issued_secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert!(issued.len() >= 4, "two sessions or more: {issued:?}");
    let mut secrets = vec![
        ("the external ID", customer.field("external_id")),
        ("the base secret key", customer.field("secret_key")),
        ("an AssumeRole request body", "ExternalId=".to_string()),
        ("an STS answer's secret key", "SecretAccessKey>".to_string()),
        ("an STS answer's session token", "SessionToken>".to_string()),
        ("a signature", "Signature=".to_string()),
    ];
    secrets.extend(issued.into_iter().map(|s| ("a secret STS handed out", s)));
    for (what, secret) in secrets {
        let secret = secret.to_lowercase();
        let line = log.lines().find(|l| l.to_lowercase().contains(&secret));
        // The line's start names the code that logged it.
        let start = line.map(|l| l.chars().take(160).collect::<String>());
        assert_eq!(start, None, "the trace log shows {what}");
    }
}

#[test]
#[ignore = "needs moto; run scripts/test.sh"]
fn a_url_signed_with_the_role_session_works_until_it_expires() {
    let customer = Customer::new();
    // Sessions that end after 10 minutes, renewed when one is left: a URL asked
    // for an hour is cut to the session it is signed with.
    customer.server.sessions(json!({"lifetime": 600}));
    let mount = customer.mount("vol/root", &["--renew-before", "60"]);
    let file = mount.path().join("a.txt");
    let out = s3vol()
        .args(["url", "--json", "--expires", "1h", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(common::succeeded(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["cut_by_session"], true, "{answer}");
    let left = answer["expires_in_secs"].as_u64().unwrap();
    assert!((500..=600).contains(&left), "{answer}");
    let url = answer["url"].as_str().unwrap();
    // Signed by the role's session (its token is in the URL), not the platform's keys.
    assert!(url.contains("X-Amz-Security-Token="), "{url}");
    assert!(!url.contains(&customer.field("access_key")), "{url}");
    // A plain HTTP client fetches it; the layer in front of moto checks the
    // signature and the expiry as S3 does (moto itself cannot, with
    // authentication on), and moto checks the role's permissions.
    let curl = |url: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "--silent",
                "--max-time",
                "30",
                "--write-out",
                "\n%{http_code}",
                url,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.to_string(), body.to_string())
    };
    assert_eq!(
        curl(url),
        ("200".to_string(), "inside the volume\n".to_string())
    );
    // One digit of the signature changed: refused.
    let at = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if &url[at..=at] == "0" { "1" } else { "0" };
    let forged = format!("{}{flipped}{}", &url[..at], &url[at + 1..]);
    assert!(
        curl(&forged).1.contains("SignatureDoesNotMatch"),
        "a forged URL"
    );
    // Past its expiry: refused.
    let short = s3vol()
        .args(["url", "--expires", "1s", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(common::succeeded(&short));
    std::thread::sleep(Duration::from_millis(2500));
    let (status, body) = curl(String::from_utf8_lossy(&short.stdout).trim());
    assert_eq!(status, "403", "{body}");
    assert!(body.contains("Request has expired"), "{body}");
    // Nothing secret in what the command printed.
    let printed = String::from_utf8_lossy(&out.stdout);
    for secret in ["secret_key", "external_id"] {
        assert!(!printed.contains(&customer.field(secret)), "the {secret}");
    }
}

//! End to end: a stop storm. Round after round, writers create and overwrite
//! files of 0 B to 40 MiB on a read-write volume over Garage while the daemon
//! gets SIGTERM (sometimes twice) at a random moment, and in half the rounds
//! its worker is killed with SIGKILL before that (a new one takes over; the
//! files open for writing then fail with EIO). After each round:
//!
//! - every file whose close returned 0 is in S3, byte for byte (one whose
//!   close failed with EIO as its worker died may be too: the dead worker may
//!   have finished it before it could say so);
//! - no other object appears, and an overwrite that did not close well left the
//!   previous version whole;
//! - no multipart upload is left once the daemon has exited;
//! - the daemon exits 0 exactly when no file was lost, else 1 with every lost
//!   file named in its log.
//!
//! `S3VOL_STORM_ROUNDS` sets the number of rounds (a few by default, so the suite
//! stays quick; run 200 or more to look for rare races) and `S3VOL_STORM_SEED`
//! replays a storm: each round prints its seed.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::foreground::Foreground;
use common::{Server, ServerKind, pattern};

const BUCKET: &str = "vol";
const MIB: usize = 1024 * 1024;
const LARGEST: usize = 40 * MIB;
const WRITERS: usize = 3;

/// A writer process: opens the volume's root (checking it is the volume, by its
/// device), then writes the files of its plan one after another, relative to that
/// directory, so that a volume detached by the stop is still the one written.
/// Each file's bytes are a slice of the source file. It prints one line per file
/// (`name ok`, or `name STAGE ERRNO`) and stops at the first failure.
const WRITER: &str = r#"
import json, os, sys, time
source = open(sys.argv[1], "rb").read()
plan = json.loads(sys.argv[2])
root = os.open(plan["root"], os.O_RDONLY | os.O_DIRECTORY)
if os.fstat(root).st_dev != plan["dev"]:
    print("- unmounted", flush=True)
    sys.exit(0)
for f in plan["files"]:
    stage = "open"
    try:
        fd = os.open(f["name"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=root)
        stage = "write"
        data = memoryview(source)[f["offset"]:f["offset"] + f["size"]]
        while data:
            data = data[os.write(fd, data[:1 << 20]):]
            if f["pause"]:
                time.sleep(f["pause"])
        stage = "close"
        os.close(fd)
        print(f["name"], "ok", flush=True)
    except OSError as e:
        print(f["name"], stage, e.errno, flush=True)
        break
"#;

/// One file of a writer's plan.
#[derive(Clone, Debug)]
struct Planned {
    name: String,
    offset: usize,
    size: usize,
    /// Seconds between 1 MiB writes: a slow writer outlives the stop's grace.
    pause: f64,
}

/// What became of a planned file.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Closed,
    /// Failed at open, write or close, with the errno.
    Failed(String, i32),
    /// Never tried: the writer stopped before it.
    Untried,
}

fn size(rng: &mut fastrand::Rng) -> usize {
    match rng.u8(0..10) {
        0 => 0,
        1 => rng.usize(1..4096),
        // Around the 8 MiB part size: one part, and one byte more.
        2 => 8 * MIB - 1 + rng.usize(0..3),
        3 => LARGEST,
        _ => rng.usize(0..=LARGEST),
    }
}

struct Round {
    prefix: String,
    /// Objects put before the round, with their content: writer `w` may
    /// overwrite `old{w}`.
    existing: BTreeMap<String, Vec<u8>>,
    writers: Vec<Vec<Planned>>,
    /// Milliseconds from the writers' start to a SIGKILL of the worker (which
    /// comes before the stop: the SIGTERM waits for the new worker).
    worker_kill_ms: Option<u64>,
    /// Milliseconds from the writers' start to the SIGTERM, and to a second one.
    sigterm_ms: u64,
    second_sigterm_ms: Option<u64>,
}

impl Round {
    fn plan(number: usize, rng: &mut fastrand::Rng, source_len: usize) -> Round {
        let prefix = format!("storm/{number}");
        let existing: BTreeMap<String, Vec<u8>> = (0..WRITERS)
            .map(|i| {
                let size = rng.usize(1..2 * MIB);
                (format!("old{i}"), pattern(size, rng.u64(..)))
            })
            .collect();
        let writers = (0..WRITERS)
            .map(|w| {
                (0..rng.usize(1..=4))
                    .map(|f| {
                        let size = size(rng);
                        // Each writer overwrites only its own old file: two
                        // writers of one file share it, as on any filesystem.
                        let name = if rng.u8(0..6) == 0 {
                            format!("old{w}")
                        } else {
                            format!("w{w}-{f}")
                        };
                        Planned {
                            name,
                            offset: rng.usize(0..=source_len - size),
                            size,
                            pause: if rng.u8(0..5) == 0 {
                                rng.f64() * 0.4
                            } else {
                                0.0
                            },
                        }
                    })
                    .collect()
            })
            .collect();
        let worker_kill_ms = rng.bool().then(|| rng.u64(0..1200));
        let sigterm_ms = rng.u64(0..1500);
        let second_sigterm_ms = (rng.u8(0..5) == 0).then(|| sigterm_ms + rng.u64(0..2000));
        Round {
            prefix,
            existing,
            writers,
            worker_kill_ms,
            sigterm_ms,
            second_sigterm_ms,
        }
    }
}

/// The bytes the writers take their files from, in a file for them.
struct Source {
    file: tempfile::NamedTempFile,
    bytes: Vec<u8>,
}

/// What a storm did, for its closing line.
#[derive(Debug, Default)]
struct Tally {
    rounds: usize,
    rounds_with_losses: usize,
    closed: usize,
    closed_bytes: usize,
    lost: usize,
    refused_at_open: usize,
    untried: usize,
}

/// Runs one round and counts it in `tally`; a description of what went wrong,
/// if anything did.
async fn run_round(
    server: &Server,
    round: &Round,
    source: &Source,
    tally: &mut Tally,
) -> Vec<String> {
    for (name, data) in &round.existing {
        server
            .put(BUCKET, &format!("{}/{name}", round.prefix), data.clone())
            .await;
    }
    let mut mount = Foreground::start_at(server, &format!("{BUCKET}/{}", round.prefix));
    let dev = std::fs::metadata(mount.path()).unwrap().dev();
    let writers: Vec<_> = round
        .writers
        .iter()
        .map(|files| {
            let plan = serde_json::json!({
                "root": mount.path(),
                "dev": dev,
                "files": files.iter().map(|f| serde_json::json!({
                    "name": f.name, "offset": f.offset, "size": f.size, "pause": f.pause,
                })).collect::<Vec<_>>(),
            });
            Command::new("python3")
                .args(["-c", WRITER])
                .arg(source.file.path())
                .arg(plan.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();

    let pid = nix::unistd::Pid::from_raw(mount.pid());
    let started = tokio::time::Instant::now();
    if let Some(at) = round.worker_kill_ms {
        tokio::time::sleep(Duration::from_millis(at)).await;
        let old = common::worker_pids(mount.path());
        for worker in &old {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*worker),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // The stop comes once the new worker serves.
        let serving = || mount.log_text().contains("told the supervisor Serving");
        assert!(
            common::wait_until(Duration::from_secs(10), serving),
            "no new worker served"
        );
    }
    let sigterm_at = started + Duration::from_millis(round.sigterm_ms);
    tokio::time::sleep_until(sigterm_at).await;
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    if let Some(at) = round.second_sigterm_ms {
        tokio::time::sleep(Duration::from_millis(at - round.sigterm_ms)).await;
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }

    // What each writer says became of its files, in the order of its plan.
    let mut outcomes: Vec<(Planned, Outcome)> = Vec::new();
    for (files, mut child) in round.writers.iter().zip(writers) {
        let mut said = Vec::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            let words: Vec<&str> = line.split(' ').collect();
            said.push(match words[..] {
                // The stop came before this writer got to the volume.
                ["-", "unmounted"] => break,
                [_, "ok"] => Outcome::Closed,
                [_, stage, errno] => Outcome::Failed(stage.to_string(), errno.parse().unwrap()),
                _ => panic!("the writer said {line:?}"),
            });
        }
        assert!(child.wait().unwrap().success(), "a writer failed");
        let said = said.into_iter().chain(std::iter::repeat(Outcome::Untried));
        outcomes.extend(files.iter().cloned().zip(said));
    }
    let code = mount.exit_code();
    let log = mount.log_text();
    drop(mount);

    // What S3 must hold: for each name, the bytes of its last close that
    // returned 0, else what it held before the round (if anything).
    let mut problems = Vec::new();
    let mut expected: BTreeMap<String, Vec<u8>> = round.existing.clone();
    let mut lost: BTreeSet<String> = BTreeSet::new();
    // Names whose close failed with EIO as the worker died, with the bytes
    // the dead worker may have finished uploading.
    let mut maybe: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let allowed = if round.worker_kill_ms.is_some() {
        &[libc::ENOTCONN, libc::ECONNABORTED, libc::EIO][..]
    } else {
        &[libc::ENOTCONN, libc::ECONNABORTED][..]
    };
    for (planned, outcome) in &outcomes {
        match outcome {
            Outcome::Closed => {
                let data = &source.bytes[planned.offset..planned.offset + planned.size];
                expected.insert(planned.name.clone(), data.to_vec());
                tally.closed += 1;
                tally.closed_bytes += data.len();
            }
            Outcome::Failed(stage, errno) => {
                if stage == "open" {
                    tally.refused_at_open += 1;
                } else {
                    lost.insert(planned.name.clone());
                    tally.lost += 1;
                }
                if stage == "close" && *errno == libc::EIO {
                    let data = &source.bytes[planned.offset..planned.offset + planned.size];
                    maybe.insert(planned.name.clone(), data.to_vec());
                }
                if !allowed.contains(errno) {
                    problems.push(format!(
                        "{} failed at {stage} with errno {errno}",
                        planned.name
                    ));
                }
            }
            Outcome::Untried => tally.untried += 1,
        }
    }
    tally.rounds += 1;
    tally.rounds_with_losses += usize::from(!lost.is_empty());
    let keys = server.keys(BUCKET, &format!("{}/", round.prefix)).await;
    for key in &keys {
        let name = &key[round.prefix.len() + 1..];
        let held = server.get(BUCKET, key).await.unwrap();
        if maybe.get(name) == Some(&held) {
            continue;
        }
        match expected.get(name) {
            None => problems.push(format!(
                "{key} ({} bytes) appeared, though no close of it returned 0",
                held.len()
            )),
            Some(data) if *data != held => problems.push(format!(
                "{key} holds {} bytes, not the {} of its last close that returned 0 \
                 (or of the version before)",
                held.len(),
                data.len()
            )),
            Some(_) => {}
        }
    }
    for name in expected.keys() {
        if !keys.contains(&format!("{}/{name}", round.prefix)) {
            problems.push(format!("{name} is missing from S3"));
        }
    }
    let pending = server
        .pending_uploads(BUCKET, &format!("{}/", round.prefix))
        .await;
    if !pending.is_empty() {
        problems.push(format!("multipart uploads left behind: {pending:?}"));
    }
    // The exit says whether anything was lost, and the log names what.
    match code {
        Some(0) if lost.is_empty() => {}
        Some(1) if !lost.is_empty() => {
            for name in &lost {
                if !log.contains(&format!("{}/{name}", round.prefix)) {
                    problems.push(format!("{name} was lost, and the log does not name it"));
                }
            }
        }
        code => problems.push(format!("exit {code:?} with lost files {lost:?}")),
    }
    if !problems.is_empty() {
        problems.push(format!("outcomes: {outcomes:?}"));
        problems.push(format!("log:\n{log}"));
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn every_close_that_returned_0_survives_a_stop_at_any_moment() {
    let rounds: usize = std::env::var("S3VOL_STORM_ROUNDS")
        .ok()
        .map(|v| v.parse().expect("S3VOL_STORM_ROUNDS is a number"))
        .unwrap_or(6);
    let seed: u64 = std::env::var("S3VOL_STORM_SEED")
        .ok()
        .map(|v| v.parse().expect("S3VOL_STORM_SEED is a number"))
        .unwrap_or_else(|| fastrand::u64(..));
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    let source = Source {
        file: tempfile::NamedTempFile::new().unwrap(),
        bytes: pattern(LARGEST + 4 * MIB, seed),
    };
    std::fs::write(source.file.path(), &source.bytes).unwrap();
    let mut tally = Tally::default();
    for number in 0..rounds {
        let round_seed = seed.wrapping_add(number as u64);
        let mut rng = fastrand::Rng::with_seed(round_seed);
        let round = Round::plan(number, &mut rng, source.bytes.len());
        eprintln!("round {number}: S3VOL_STORM_SEED={seed} (round seed {round_seed})");
        let problems = run_round(&server, &round, &source, &mut tally).await;
        assert!(
            problems.is_empty(),
            "round {number} of storm {seed}:\n{}",
            problems.join("\n")
        );
    }
    eprintln!("{tally:?}");
}

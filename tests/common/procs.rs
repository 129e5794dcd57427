//! Processes as other local users see them, and an endpoint that never answers,
//! to look at processes while they wait.

use std::process::{Command, Stdio};

/// A TCP endpoint on 127.0.0.1 that accepts connections and never answers, so
/// whoever calls it waits; its URL.
pub fn silent_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    url
}

/// Runs `command` with made-up access keys while it waits on a silent
/// endpoint, and returns what other local users could read of it and of every
/// process it started (their command lines and environments), then kills them.
pub fn seen_by_others_while_it_waits(command: &mut Command) -> String {
    let mut child = command
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let pids = family(child.id());
    let seen = visible_to_others(&pids);
    for pid in pids {
        // SAFETY: kill(2) of processes this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let _ = child.wait();
    seen
}

/// `pid` and its descendants.
fn family(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut pending = vec![pid];
    while let Some(pid) = pending.pop() {
        found.push(pid);
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        pending.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    found
}

/// The command lines and environments of `pids`, as other users read them in
/// /proc.
fn visible_to_others(pids: &[u32]) -> String {
    let mut seen = String::new();
    for pid in pids {
        for file in ["cmdline", "environ"] {
            if let Ok(bytes) = std::fs::read(format!("/proc/{pid}/{file}")) {
                seen.push_str(&String::from_utf8_lossy(&bytes).replace('\0', " "));
                seen.push('\n');
            }
        }
    }
    seen
}

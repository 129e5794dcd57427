//! Processes as other local users see them, and an endpoint that never answers,
//! to look at processes while they wait.

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

/// `pid` and its descendants.
pub fn family(pid: u32) -> Vec<u32> {
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
pub fn visible_to_others(pids: &[u32]) -> String {
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

//! The scripts that start the local test servers: a server counts as started only
//! when its own process listens on its ports. Tests start servers in parallel, and
//! two may pick the same free port at the same moment; the one that loses must not
//! take the winner's answers for its own (two tests then shared one moto server,
//! and the second to set it up found the first's user already there).

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

/// Runs `body` in bash with scripts/lib.sh sourced and returns its exit status.
fn with_lib(body: &str) -> i32 {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib.sh");
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!("source '{}'; {body}", lib.display()))
        .status()
        .unwrap();
    status.code().unwrap_or(-1)
}

#[test]
fn a_port_held_by_another_process_is_not_taken_for_the_servers() {
    // This test holds the port; the "server" is a process that never listens and
    // exits, as one whose bind failed does.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let status = with_lib(&format!("sleep 1 & wait_for_ports $! server {port}"));
    assert_eq!(status, 1, "the port's other owner was taken for the server");
}

#[test]
fn a_server_listening_on_its_ports_is_ready() {
    let ports = tempfile::NamedTempFile::new().unwrap();
    let status = with_lib(&format!(
        r#"ports='{}'
        python3 -c '
import socket, sys, time
servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
print(" ".join(str(s.getsockname()[1]) for s in servers), flush=True)
time.sleep(30)
' > "$ports" &
        pid=$!
        for _ in $(seq 1 100); do [ -s "$ports" ] && break; sleep 0.05; done
        wait_for_ports "$pid" server $(cat "$ports")
        status=$?
        kill "$pid"
        exit $status"#,
        ports.path().display()
    ));
    assert_eq!(status, 0);
}

#[test]
fn a_server_that_goes_on_without_its_port_is_stopped_for_another_try() {
    // Garage runs on without its admin port when another process holds it.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let status = with_lib(&format!(
        "sleep 60 & pid=$!; status=0; wait_for_ports $pid server {port} || status=$?; \
         sleep 0.2; ! kill -0 $pid 2>/dev/null || exit 99; exit $status"
    ));
    assert_eq!(status, 1, "99: the server was left running");
}

//! A fault-injecting HTTP proxy between s3vol and a local S3 server.
//!
//! It forwards each HTTP/1.1 request over a connection of its own to the server
//! (asking the server to close it after the answer, so the end of an answer is
//! always the end of the stream) and keeps the client's connection alive. A chosen
//! share of requests meets a fault instead:
//!
//! - `Reset`: the connection is reset (RST) either before the request reaches the
//!   server, part-way through its body, or after the server carried it out (a lost
//!   answer);
//! - `Stall`: the connection goes silent until the client gives up: a request
//!   for a byte range (a ranged GET) part-way through its answer's body, any other
//!   request before it is forwarded;
//! - `Cut`: the answer is relayed up to a random byte of its body, then reset;
//! - `InternalError` and `SlowDown`: the proxy answers 500 InternalError or 503
//!   SlowDown itself, as S3 does under load.
//!
//! The whole server can also go away: `Outage::Refused` closes the listening
//! socket (connections are refused) and `Outage::Silent` accepts connections and
//! never answers (a host that vanished); both drop the connections already open.
//! Or it can lie ([`Lie`], in `lies`): answers that no S3 would give.

mod lies;

pub use self::lies::Lie;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    Reset,
    Stall,
    Cut,
    InternalError,
    SlowDown,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::Reset,
        Fault::Stall,
        Fault::Cut,
        Fault::InternalError,
        Fault::SlowDown,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outage {
    /// Serving.
    None,
    /// Nothing listens on the port.
    Refused,
    /// Connections are accepted and never answered.
    Silent,
}

/// Which faults to inject and how often.
#[derive(Clone, Debug, Default)]
struct Plan {
    share: f64,
    faults: Vec<Fault>,
    /// Faults for the next requests, before any chosen at random; those marked
    /// `true` wait for a request for a byte range (a ranged GET).
    forced: std::collections::VecDeque<(Fault, bool)>,
}

impl Plan {
    /// The fault, if any, for a request (`ranged`: it asks for a byte range).
    fn choose(&mut self, ranged: bool) -> Option<Fault> {
        if let Some(&(fault, ranged_only)) = self.forced.front()
            && (ranged || !ranged_only)
        {
            self.forced.pop_front();
            return Some(fault);
        }
        (!self.faults.is_empty() && fastrand::f64() < self.share)
            .then(|| self.faults[fastrand::usize(..self.faults.len())])
    }
}

/// What the proxy has done so far.
#[derive(Debug, Default)]
pub struct ProxyCounts {
    requests: AtomicU64,
    faults: [AtomicU64; 5],
    /// Each request's start line and its `x-amz-content-sha256` (how its
    /// payload was signed), in order.
    payload_signing: Mutex<Vec<(String, String)>>,
}

impl ProxyCounts {
    /// Each request's start line and how its payload was signed.
    pub fn payload_signing(&self) -> Vec<(String, String)> {
        self.payload_signing.lock().unwrap().clone()
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn faults(&self, fault: Fault) -> u64 {
        self.faults[Fault::ALL.iter().position(|f| *f == fault).unwrap()].load(Ordering::Relaxed)
    }

    pub fn total_faults(&self) -> u64 {
        Fault::ALL.iter().map(|f| self.faults(*f)).sum()
    }

    /// One line for a test's output: requests, and faults by kind.
    pub fn summary(&self) -> String {
        let by_kind: Vec<String> = Fault::ALL
            .iter()
            .map(|f| format!("{f:?} {}", self.faults(*f)))
            .collect();
        format!(
            "proxy: {} requests, {} faults ({})",
            self.requests(),
            self.total_faults(),
            by_kind.join(", ")
        )
    }

    fn count(&self, fault: Fault) {
        self.faults[Fault::ALL.iter().position(|f| *f == fault).unwrap()]
            .fetch_add(1, Ordering::Relaxed);
    }
}

struct Shared {
    upstream: String,
    plan: Mutex<Plan>,
    counts: Arc<ProxyCounts>,
    /// The lie told to every request it fits, if any.
    lie: Mutex<Option<Lie>>,
    /// How long every request waits before it is forwarded.
    delay: Mutex<Duration>,
}

pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
    outage: watch::Sender<Outage>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy on a free 127.0.0.1 port in front of `upstream` (`http://host:port`),
    /// injecting no faults until told to.
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http:// endpoint")
            .trim_end_matches('/')
            .to_string();
        let shared = Arc::new(Shared {
            upstream,
            plan: Mutex::new(Plan::default()),
            lie: Mutex::new(None),
            delay: Mutex::new(Duration::ZERO),
            counts: Arc::default(),
        });
        let (outage, watcher) = watch::channel(Outage::None);
        let (stop, mut stopped) = watch::channel(false);
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        // A thread and runtime of its own: tests may be async themselves.
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind the proxy");
                    let port = listener.local_addr().unwrap().port();
                    port_tx.send(port).unwrap();
                    tokio::select! {
                        _ = accept_loop(listener, port, shared, watcher) => {}
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                });
                // Dropping the runtime ends every connection task.
            })
        };
        FaultProxy {
            port: port_rx.recv().expect("the proxy started"),
            shared,
            outage,
            stop,
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Injects one of `faults`, chosen at random, into `share` (0 to 1) of requests.
    pub fn inject(&self, share: f64, faults: &[Fault]) {
        let mut plan = self.shared.plan.lock().unwrap();
        plan.share = share;
        plan.faults = faults.to_vec();
    }

    /// Injects `faults` into the next requests, one each, in order; with
    /// `ranged_only`, into the next requests for a byte range (ranged GETs).
    pub fn force(&self, faults: &[Fault], ranged_only: bool) {
        let mut plan = self.shared.plan.lock().unwrap();
        plan.forced
            .extend(faults.iter().map(|fault| (*fault, ranged_only)));
    }

    /// Tells `lie` to every request it fits from now on (`None`: the truth).
    pub fn lie(&self, lie: Option<Lie>) {
        *self.shared.lie.lock().unwrap() = lie;
    }

    /// Makes every request wait `delay` before it is forwarded: a slow
    /// endpoint, to catch a long job part-way.
    pub fn delay(&self, delay: Duration) {
        *self.shared.delay.lock().unwrap() = delay;
    }

    pub fn set_outage(&self, outage: Outage) {
        self.outage.send_replace(outage);
    }

    pub fn counts(&self) -> Arc<ProxyCounts> {
        self.shared.counts.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    mut listener: TcpListener,
    port: u16,
    shared: Arc<Shared>,
    mut outage: watch::Receiver<Outage>,
) {
    loop {
        let state = *outage.borrow_and_update();
        if state == Outage::Refused {
            drop(listener);
            while *outage.borrow_and_update() == Outage::Refused {
                if outage.changed().await.is_err() {
                    return;
                }
            }
            // The port was ours a moment ago; std sets SO_REUSEADDR, so it can
            // be bound again at once.
            listener = loop {
                match TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(listener) => break listener,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            continue;
        }
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let _ = client.set_nodelay(true);
                let shared = shared.clone();
                let mut watcher = outage.clone();
                tokio::spawn(async move {
                    if state == Outage::Silent {
                        // Hold the connection, answering nothing, until the
                        // outage ends; then drop it.
                        let _ = watcher.wait_for(|o| *o != Outage::Silent).await;
                        reset(client);
                        return;
                    }
                    tokio::select! {
                        _ = serve(client, &shared) => {}
                        // An outage drops every open connection.
                        _ = watcher.wait_for(|o| *o != Outage::None) => {}
                    }
                });
            }
            _ = outage.changed() => {}
        }
    }
}

/// Closes `stream` with a reset rather than an orderly shutdown.
fn reset(stream: TcpStream) {
    let linger = nix::sys::socket::sockopt::Linger;
    let _ = nix::sys::socket::setsockopt(
        &stream,
        linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
    drop(stream);
}

/// One HTTP message head: the start line and the headers.
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> u64 {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The head as bytes, with `connection` set as given (or removed).
    fn encode(&self, connection: Option<&str>) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (name, value) in &self.headers {
            if !name.eq_ignore_ascii_case("connection") {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        if let Some(connection) = connection {
            out.push_str(&format!("connection: {connection}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// Reads a message head from `stream`, with `buf` holding bytes already read;
/// leaves in `buf` what follows the head. `None` at a clean end of stream.
async fn read_head(stream: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Option<Head> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.drain(..end + 4);
            let mut lines = text.split("\r\n");
            let start = lines.next()?.to_string();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .collect();
            return Some(Head { start, headers });
        }
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Copies exactly `len` bytes from `buf` (bytes already read) and then `from` to
/// `to`. Returns false if either side failed.
async fn pump(
    buf: &mut Vec<u8>,
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    mut len: u64,
) -> bool {
    let first = (buf.len() as u64).min(len) as usize;
    if to.write_all(&buf[..first]).await.is_err() {
        return false;
    }
    buf.drain(..first);
    len -= first as u64;
    let mut chunk = vec![0u8; 256 * 1024];
    while len > 0 {
        let want = (chunk.len() as u64).min(len) as usize;
        match from.read(&mut chunk[..want]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                if to.write_all(&chunk[..n]).await.is_err() {
                    return false;
                }
                len -= n as u64;
            }
        }
    }
    true
}

/// Serves one client connection, request after request.
async fn serve(mut client: TcpStream, shared: &Shared) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_head(&mut client, &mut buf).await else {
            return;
        };
        let n = shared.counts.requests.fetch_add(1, Ordering::Relaxed) + 1;
        shared.counts.payload_signing.lock().unwrap().push((
            request.start.clone(),
            request
                .header("x-amz-content-sha256")
                .unwrap_or_default()
                .to_string(),
        ));
        if request.header("transfer-encoding").is_some() {
            let _ = client
                .write_all(&error_answer(501, "NotImplemented", n, "chunked requests"))
                .await;
            return;
        }
        let delay = *shared.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let ranged = request.header("range").is_some();
        let lie = *shared.lie.lock().unwrap();
        if let Some(lie) = lie.filter(|lie| lie.fits(&request)) {
            if !lies::tell(lie, &mut client, &request, shared).await {
                return;
            }
            continue;
        }
        let fault = shared.plan.lock().unwrap().choose(ranged);
        if let Some(fault) = fault {
            shared.counts.count(fault);
        }
        let body_len = request.content_length();
        match fault {
            Some(Fault::InternalError | Fault::SlowDown) => {
                let (status, code) = if fault == Some(Fault::SlowDown) {
                    (503, "SlowDown")
                } else {
                    (500, "InternalError")
                };
                // Read the body first: a reset before the client has sent it
                // would hide the answer.
                if !pump(&mut buf, &mut client, &mut tokio::io::sink(), body_len).await {
                    return;
                }
                let answer = error_answer(status, code, n, "injected by the test proxy");
                if client.write_all(&answer).await.is_err() {
                    return;
                }
            }
            Some(Fault::Stall) if !ranged => {
                silence(&mut client).await;
                return;
            }
            Some(Fault::Reset) if fastrand::bool() => {
                // Before the server sees it, part-way through the body.
                let part = fastrand::u64(..=body_len);
                pump(&mut buf, &mut client, &mut tokio::io::sink(), part).await;
                reset(client);
                return;
            }
            // A reset after the server acted, a cut answer, or no fault at all.
            _ => {
                if !forward(&mut client, &mut buf, &request, body_len, fault, shared).await {
                    reset(client);
                    return;
                }
            }
        }
    }
}

/// Forwards one request to the server and relays its answer, cut or lost as
/// `fault` says. Returns false when the client connection must be reset.
async fn forward(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    request: &Head,
    body_len: u64,
    fault: Option<Fault>,
    shared: &Shared,
) -> bool {
    let stall = fault == Some(Fault::Stall);
    let Ok(mut server) = TcpStream::connect(&shared.upstream).await else {
        return false;
    };
    let _ = server.set_nodelay(true);
    let (mut server_read, mut server_write) = server.split();
    let (mut client_read, mut client_write) = client.split();
    if server_write
        .write_all(&request.encode(Some("close")))
        .await
        .is_err()
    {
        return false;
    }
    // The body goes up while the answer (perhaps an early one) comes down.
    let upload = pump(buf, &mut client_read, &mut server_write, body_len);
    let answer = async {
        let mut down = Vec::new();
        loop {
            let head = read_head(&mut server_read, &mut down).await?;
            if head.status() >= 200 {
                return Some((head, down));
            }
            // 100 Continue and its kind go to the client as they are.
            client_write.write_all(&head.encode(None)).await.ok()?;
        }
    };
    let (sent, answer) = tokio::join!(upload, answer);
    let Some((head, mut down)) = answer else {
        return false;
    };
    if !sent || fault == Some(Fault::Reset) {
        // The server acted; the client never hears of it.
        return false;
    }
    // The answer to HEAD, 204 and 304 carry no body whatever their headers say.
    let bodiless = request.start.starts_with("HEAD ") || matches!(head.status(), 204 | 304);
    let length = if bodiless {
        Some(0)
    } else {
        head.header("content-length").map(|_| head.content_length())
    };
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    // An answer that ends only where the stream ends must close the connection.
    let keep_alive = length.is_some() || chunked;
    if matches!(fault, Some(Fault::Cut | Fault::Stall)) && length.is_none() {
        return false;
    }
    let connection = (!keep_alive).then_some("close");
    if client_write
        .write_all(&head.encode(connection))
        .await
        .is_err()
    {
        return false;
    }
    match length {
        Some(len) if matches!(fault, Some(Fault::Cut | Fault::Stall)) => {
            let part = fastrand::u64(..=len.saturating_sub(1));
            pump(&mut down, &mut server_read, &mut client_write, part).await;
            if stall {
                silence(&mut client_read).await;
            }
            false
        }
        Some(len) => pump(&mut down, &mut server_read, &mut client_write, len).await,
        None => {
            // Chunked or delimited by the end of the stream: relay to the end.
            if client_write.write_all(&down).await.is_err() {
                return false;
            }
            tokio::io::copy(&mut server_read, &mut client_write)
                .await
                .is_ok()
                && keep_alive
        }
    }
}

/// Says nothing until the client hangs up (or ten minutes pass), discarding what
/// it sends.
async fn silence(client: &mut (impl AsyncRead + Unpin)) {
    let mut sink = [0u8; 64 * 1024];
    let wait = async { while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(600), wait).await;
}

/// An S3 error answer from the proxy itself.
fn error_answer(status: u16, code: &str, n: u64, message: &str) -> Vec<u8> {
    let reason = match status {
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Not Implemented",
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>proxy-{n}</RequestId></Error>"
    );
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/xml\r\n\
         x-amz-request-id: proxy-{n}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

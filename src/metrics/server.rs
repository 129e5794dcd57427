//! The `--metrics-listen` endpoint: HTTP/1.1 on a TCP address, where `GET
//! /metrics` answers the Prometheus text and nothing else is served.
//!
//! The listener is bound before the volume is mounted: an address that cannot
//! be listened on fails the start, and a port another process holds is taken
//! as soon as it is free (a volume does not fail because its metrics cannot be
//! served yet). It serves one request per connection, a bounded number of
//! connections at once, each for a bounded time: a client that connects and
//! says nothing cannot hold the daemon's memory or threads.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, StatusCode};
use tracing::{info, warn};

/// What answers a scrape: the text of every series, gathered now.
pub trait Scrape: Send + Sync + 'static {
    fn scrape(&self) -> BoxFuture<'_, String>;
}

/// What one client may take of the endpoint.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// The most connections served at once; more are closed at once.
    connections: usize,
    /// How long a client has to send its request's headers.
    header_timeout: Duration,
    /// The longest a connection stays open.
    connection_life: Duration,
}

const LIMITS: Limits = Limits {
    connections: 16,
    header_timeout: Duration::from_secs(5),
    connection_life: Duration::from_secs(30),
};

/// How often a port another process holds is tried again.
const RETRY: Duration = Duration::from_secs(10);

/// Where the endpoint listens: bound, or waiting for its port.
#[derive(Debug)]
pub enum Listener {
    Bound(std::net::TcpListener),
    /// Another process holds the port; it is tried every [`RETRY`].
    Waiting(SocketAddr),
}

fn bind_now(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The media type of the text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr` now: an address this host cannot listen on is an error to
/// report at start; a port in use is waited for.
pub fn bind(addr: SocketAddr) -> Result<Listener, String> {
    match bind_now(addr) {
        Ok(listener) => Ok(Listener::Bound(listener)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            warn!(
                %addr,
                "--metrics-listen {addr}: another process holds the port; the metrics are \
                 served there once it is free (ports below 1024 are root's alone)"
            );
            Ok(Listener::Waiting(addr))
        }
        Err(e) => Err(format!(
            "--metrics-listen {addr}: cannot listen there: {e}; give an address of this \
             host and a port that is free"
        )),
    }
}

/// Serves `source` on `listener` for as long as the runtime runs.
pub async fn serve(listener: Listener, source: Arc<dyn Scrape>) {
    serve_within(listener, source, LIMITS, RETRY).await
}

async fn serve_within(
    listener: Listener,
    source: Arc<dyn Scrape>,
    limits: Limits,
    retry: Duration,
) {
    let listener = match listener {
        Listener::Bound(listener) => listener,
        Listener::Waiting(addr) => loop {
            tokio::time::sleep(retry).await;
            match bind_now(addr) {
                Ok(listener) => break listener,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => {
                    warn!(%addr, "cannot serve metrics: {e}");
                    return;
                }
            }
        },
    };
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            warn!("cannot serve metrics: {e}");
            return;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving Prometheus metrics at http://{addr}/metrics");
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                warn!("metrics endpoint: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // dropped: closed at once
        };
        let source = source.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let source = source.clone();
                async move { Ok::<_, Infallible>(answer(source.as_ref(), request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive(false)
                .header_read_timeout(limits.header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.connection_life, connection).await;
            drop(slot);
        });
    }
}

async fn answer(source: &dyn Scrape, request: hyper::Request<Incoming>) -> Response {
    let path = request.uri().path();
    if path != "/metrics" && path != "/" {
        return respond(
            StatusCode::NOT_FOUND,
            "not found; the metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut refused = respond(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        refused
            .headers_mut()
            .insert(hyper::header::ALLOW, "GET, HEAD".parse().expect("a header"));
        return refused;
    }
    if path == "/" {
        return respond(StatusCode::OK, "s3vol: the metrics are at /metrics\n");
    }
    let mut response = hyper::Response::new(Full::new(Bytes::from(source.scrape().await)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        TEXT_FORMAT.parse().expect("a header"),
    );
    response
}

type Response = hyper::Response<Full<Bytes>>;

fn respond(status: StatusCode, text: &'static str) -> Response {
    let mut response = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    struct Fixed;
    impl Scrape for Fixed {
        fn scrape(&self) -> BoxFuture<'_, String> {
            Box::pin(async { "s3vol_up 1\n".to_string() })
        }
    }

    /// Sends `request` and returns the whole answer (the server closes after
    /// `Connection: close`).
    fn ask(addr: SocketAddr, request: &str) -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_the_text_at_metrics_and_nothing_else() {
        let listener = bind_now("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(Listener::Bound(listener), Arc::new(Fixed)));
        let get =
            |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answers = tokio::task::spawn_blocking(move || {
            (
                ask(addr, &get("/metrics")),
                ask(addr, &get("/secret")),
                ask(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            )
        })
        .await
        .unwrap();
        assert!(answers.0.starts_with("HTTP/1.1 200"), "{}", answers.0);
        assert!(
            answers
                .0
                .contains("content-type: text/plain; version=0.0.4"),
            "{}",
            answers.0
        );
        assert!(answers.0.ends_with("\r\n\r\ns3vol_up 1\n"), "{}", answers.0);
        assert!(answers.1.starts_with("HTTP/1.1 404"), "{}", answers.1);
        assert!(answers.2.starts_with("HTTP/1.1 405"), "{}", answers.2);
        // One request per connection: a second one on it is not served.
        let twice = format!(
            "{}{}",
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let answer = tokio::task::spawn_blocking(move || ask(addr, &twice))
            .await
            .unwrap();
        assert_eq!(answer.matches("HTTP/1.1 200").count(), 1, "{answer}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_clients_hold_a_bounded_number_of_connections_for_a_bounded_time() {
        let limits = Limits {
            connections: 4,
            header_timeout: Duration::from_millis(1500),
            connection_life: Duration::from_secs(5),
        };
        let listener = bind_now("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_within(
            Listener::Bound(listener),
            Arc::new(Fixed),
            limits,
            RETRY,
        ));
        let answer = tokio::task::spawn_blocking(move || {
            use std::time::Instant;
            // Clients that connect and say nothing: past the bound, each is
            // closed at once.
            let idle: Vec<_> = (0..10)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect();
            std::thread::sleep(Duration::from_millis(100));
            let closed_at_once = idle
                .iter()
                .filter(|stream| {
                    let mut stream = *stream;
                    stream
                        .set_read_timeout(Some(Duration::from_millis(20)))
                        .unwrap();
                    matches!(stream.read(&mut [0u8; 1]), Ok(0))
                })
                .count();
            // Those served are closed once their time to speak is over, and
            // a scrape is answered again.
            let started = Instant::now();
            let get = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            let answer = loop {
                let answer = std::panic::catch_unwind(|| ask(addr, get)).unwrap_or_default();
                if answer.starts_with("HTTP/1.1 200") || started.elapsed() > Duration::from_secs(5)
                {
                    break answer;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            (closed_at_once, answer, started.elapsed())
        })
        .await
        .unwrap();
        assert_eq!(answer.0, 6, "the connections past the bound");
        assert!(answer.1.starts_with("HTTP/1.1 200"), "{}", answer.1);
        assert!(answer.2 < Duration::from_secs(3), "{:?}", answer.2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_taken_port_is_served_once_free_and_a_foreign_address_is_refused() {
        let holder = bind_now("127.0.0.1:0".parse().unwrap()).unwrap();
        let taken = holder.local_addr().unwrap();
        let waiting = bind(taken).unwrap();
        assert!(matches!(waiting, Listener::Waiting(addr) if addr == taken));
        tokio::spawn(serve_within(
            waiting,
            Arc::new(Fixed),
            LIMITS,
            Duration::from_millis(100),
        ));
        drop(holder);
        let get = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let answer = tokio::task::spawn_blocking(move || {
            for _ in 0..50 {
                std::thread::sleep(Duration::from_millis(100));
                if let Ok(answer) = std::panic::catch_unwind(|| ask(taken, get)) {
                    return answer;
                }
            }
            String::new()
        })
        .await
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // An address of no interface here (TEST-NET-1) is refused at once.
        let e = bind("192.0.2.1:9464".parse().unwrap()).unwrap_err();
        assert!(
            e.starts_with("--metrics-listen 192.0.2.1:9464: cannot listen"),
            "{e}"
        );
    }
}

//! A TLS front for a local S3 server: clients speak HTTPS to it on a free
//! 127.0.0.1 port, and it relays every connection to the server in plain HTTP.
//!
//! Its certificate is issued for 127.0.0.1 by a certificate authority made
//! for the one front (with `openssl`), which a client trusts through
//! `SSL_CERT_FILE`: the SDK's HTTP client reads its trusted roots from there,
//! and the test process itself is left as it was.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

pub struct TlsFront {
    port: u16,
    dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (Debian's openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority and a certificate it issued for 127.0.0.1, in
/// `dir`: `ca.pem`, `leaf.pem` and `leaf.key`.
fn make_certificates(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=s3vol test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    let mut leaf = vec!["req", "-subj", "/CN=127.0.0.1"];
    leaf.extend(ec);
    leaf.extend(["-keyout", "leaf.key", "-out", "leaf.csr"]);
    openssl(dir, &leaf);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ],
    );
}

impl TlsFront {
    /// A front on a free port for the server at `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> TlsFront {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http:// endpoint")
            .trim_end_matches('/')
            .to_string();
        let dir = tempfile::tempdir().unwrap();
        make_certificates(dir.path());
        let certs = CertificateDer::pem_file_iter(dir.path().join("leaf.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.path().join("leaf.key")).unwrap();
        let config = ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (stop, mut stopped) = watch::channel(false);
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        // A thread and runtime of its own: the test may block its own thread
        // on the commands it runs.
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                port_tx.send(listener.local_addr().unwrap().port()).unwrap();
                let accept = async {
                    while let Ok((client, _)) = listener.accept().await {
                        let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                        tokio::spawn(async move {
                            let Ok(mut client) = acceptor.accept(client).await else {
                                return;
                            };
                            let Ok(mut server) = TcpStream::connect(&upstream).await else {
                                return;
                            };
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped.wait_for(|s| *s) => {}
                }
            });
        });
        TlsFront {
            port: port_rx.recv().expect("the front started"),
            dir,
            stop,
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The environment a client needs to trust the front's certificate.
    pub fn trust(&self) -> (String, String) {
        let ca: PathBuf = self.dir.path().join("ca.pem");
        ("SSL_CERT_FILE".into(), ca.to_str().unwrap().into())
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

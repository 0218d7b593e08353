//! A real HTTPS server on loopback with its own test CA (made at test
//! time): HTTP/1.1 and HTTP/2, and endpoints that exercise the proxy:
//! /hello, /echo (reflects the request, secrets included), /sse (two
//! events 1.5 s apart), /ws (WebSocket echo), /big (1 MiB).

use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::{Request, Response, body::Frame, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// The URI's authority: HTTP/2's :authority (HTTP/1.1 names the host
    /// in its Host header instead).
    pub authority: Option<String>,
    pub path: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct TlsUpstream {
    pub port: u16,
    pub ca_pem: PathBuf,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    _runtime: tokio::runtime::Runtime,
}

impl TlsUpstream {
    /// Serve `names` (all on 127.0.0.1) with a leaf signed by a fresh CA
    /// whose certificate is written to `dir/upstream-ca.pem`.
    pub fn start(dir: &Path, names: &[&str]) -> TlsUpstream {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Airlock test upstream CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params")
                .signed_by(&leaf_key, &ca, &ca_key)
                .expect("leaf cert");
        let ca_pem = dir.join("upstream-ca.pem");
        std::fs::write(&ca_pem, ca.pem()).expect("write ca");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind upstream");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_srv = seen.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let seen = seen_srv.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| handle(req, seen.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsUpstream {
            port,
            ca_pem,
            seen,
            _runtime: runtime,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).boxed()
}

async fn handle(
    mut req: Request<hyper::body::Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Body>, Infallible> {
    let record = Seen {
        method: req.method().to_string(),
        authority: req.uri().authority().map(|a| a.to_string()),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: format!("{:?}", req.version()),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    seen.lock().expect("seen").push(record.clone());
    if req.version() == hyper::Version::HTTP_2 && req.headers().contains_key(hyper::header::HOST) {
        // As strict as nginx: over HTTP/2 the host travels as :authority,
        // and a Host header as well is answered 400 ("client sent duplicate
        // host header"). A proxy that forwards an HTTP/1.1 agent's Host
        // over HTTP/2 fails here, as it would against such a server.
        let mut r = Response::new(full("duplicate host header\n"));
        *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
        return Ok(r);
    }
    let path = req.uri().path().to_string();
    let resp = match path.as_str() {
        "/hello" => Response::new(full("hello from upstream\n")),
        "/echo" => {
            // Reflects everything, as a careless or hostile upstream would.
            let body = serde_json::json!({
                "path": record.path,
                "headers": record.headers,
            });
            let mut r = Response::new(full(body.to_string()));
            if let Some(auth) = req.headers().get("authorization") {
                r.headers_mut().insert("x-echo-authorization", auth.clone());
            }
            r
        }
        "/sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"data: first\n\n")).await;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = tx.send(Bytes::from_static(b"data: second\n\n")).await;
            });
            let mut r = Response::new(ChannelBody(rx).boxed());
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().expect("ct"));
            r
        }
        "/ws" => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("upgrade", "websocket".parse().expect("h"));
            r.headers_mut()
                .insert("connection", "upgrade".parse().expect("h"));
            r
        }
        "/big" => Response::new(full(vec![b'x'; 1024 * 1024])),
        _ => {
            let mut r = Response::new(full("not found\n"));
            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
            r
        }
    };
    Ok(resp)
}

/// A body fed by a channel: each message is sent as soon as it arrives.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

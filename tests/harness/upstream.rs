//! A real HTTPS server on loopback with its own test CA (made at test
//! time): HTTP/1.1 and HTTP/2, and endpoints that exercise the proxy:
//! /hello, /tail (each request seen after it, as a live event stream),
//! /log (every request seen so far; honours a `Range` of one
//! part, and `?part=FIRST-LAST` has it answer 206 with those bytes
//! unasked), /bighead (an 80 KiB response header), /echo (reflects the request,
//! secrets included, gzipped when asked), /echo-coded?as=CODING (compressed
//! in gzip, deflate, br or zstd whatever was asked; any other CODING is only
//! named, over the plain body), /sse (two
//! events 1.5 s apart), /early and /early-slow (a 413 before the body is
//! read; the second writes its body 300 ms after its head), /ws (WebSocket echo; quotes the Authorization header first), /big (1 MiB), and two token
//! endpoints: /oauth/token (OAuth2 client credentials, `?ttl=SECS`) and
//! /app/installations/ID/access_tokens (GitHub App, RS256 JWT checked
//! against the key given to [`TlsUpstream::set_app_key`]), the two LLM
//! APIs agents call most (/v1/messages as Anthropic's, /v1/chat/completions
//! as OpenAI's, each with a fixed answer, streamed when asked), and git's smart
//! HTTP under /git/ once [`TlsUpstream::serve_git`] says what to serve.
//! A connection for [`GO_AWAY_HOST`] gets no HTTP at all: an HTTP/2
//! GOAWAY that refuses its first request, carrying the debug text given
//! to [`TlsUpstream::go_away_with`].

use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use super::git_http::{self, GitHost};
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
    /// The far end of the TCP connection the request came on: which of
    /// the proxy's upstream connections carried it.
    pub peer: std::net::SocketAddr,
    /// Set once the request's body has been read to its end (`/upload`
    /// reads it): a server acts on a body only then.
    pub body_whole: Arc<std::sync::atomic::AtomicBool>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The client the OAuth2 endpoint accepts.
pub const OAUTH_CLIENT_ID: &str = "test-client";
pub const OAUTH_CLIENT_SECRET: &str = "test-client-s3cret/+&";

/// What the token endpoints know and hand out.
#[derive(Default)]
pub struct Grants {
    /// Tokens issued, in order: `tok-N` (OAuth2), `ghs_testN` (GitHub).
    pub issued: Mutex<Vec<String>>,
    /// The GitHub App's public key (PKCS#1 DER) and app id.
    app: Mutex<Option<(Vec<u8>, String)>>,
}

/// A fresh test CA and a leaf for `names` signed by it, as upstreams on
/// loopback serve; the CA's certificate is written to
/// `dir/upstream-ca.pem`, for the daemon's `upstream_ca`.
pub struct TestPki {
    pub ca_pem: PathBuf,
    pub ca: rcgen::Certificate,
    pub leaf: rcgen::Certificate,
    pub leaf_key: rcgen::KeyPair,
}

impl TestPki {
    pub fn new(dir: &Path, names: &[&str]) -> TestPki {
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
        TestPki {
            ca_pem,
            ca,
            leaf,
            leaf_key,
        }
    }
}

pub struct TlsUpstream {
    pub port: u16,
    pub ca_pem: PathBuf,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub grants: Arc<Grants>,
    git: Arc<Mutex<Option<GitHost>>>,
    go_away: Arc<Mutex<Vec<u8>>>,
    _runtime: tokio::runtime::Runtime,
}

impl TlsUpstream {
    /// Serve `names` (all on 127.0.0.1) with a leaf signed by a fresh CA
    /// whose certificate is written to `dir/upstream-ca.pem`.
    pub fn start(dir: &Path, names: &[&str]) -> TlsUpstream {
        let TestPki {
            ca_pem,
            ca,
            leaf,
            leaf_key,
        } = TestPki::new(dir, names);
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
        let grants = Arc::new(Grants::default());
        let grants_srv = grants.clone();
        let git: Arc<Mutex<Option<GitHost>>> = Arc::default();
        let git_srv = git.clone();
        let go_away: Arc<Mutex<Vec<u8>>> = Arc::default();
        let go_away_srv = go_away.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let seen = seen_srv.clone();
                let grants = grants_srv.clone();
                let git = git_srv.clone();
                let go_away = go_away_srv.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if tls.get_ref().1.server_name() == Some(GO_AWAY_HOST) {
                        let debug = go_away.lock().expect("go away").clone();
                        refuse_with_go_away(tls, &debug).await;
                        return;
                    }
                    let service = service_fn(move |req| {
                        let git = git.lock().expect("git").clone();
                        handle(req, peer, seen.clone(), grants.clone(), git)
                    });
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
            grants,
            git,
            go_away,
            _runtime: runtime,
        }
    }

    /// Serve the bare repositories under `root` at /git/, to requests that
    /// authenticate as [`git_http::GIT_USER`] with `token`.
    pub fn serve_git(&self, root: &Path, token: &str) {
        *self.git.lock().expect("git") = Some(GitHost {
            root: root.to_path_buf(),
            token: token.to_owned(),
        });
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    /// The request log as /log serves it now. Later requests only add to
    /// its end, so an offset in it stays good.
    pub fn log_text(&self) -> String {
        log_text(&self.seen.lock().expect("seen"))
    }

    pub fn issued(&self) -> Vec<String> {
        self.grants.issued.lock().expect("issued").clone()
    }

    /// The debug text of the GOAWAY a connection for [`GO_AWAY_HOST`]
    /// gets.
    pub fn go_away_with(&self, debug: &[u8]) {
        *self.go_away.lock().expect("go away") = debug.to_vec();
    }

    /// The GitHub App whose JWTs the installation endpoint accepts: its id
    /// and its private key in PEM.
    pub fn set_app_key(&self, app_id: &str, pem: &str) {
        let der = rustls_pemfile::private_key(&mut pem.as_bytes())
            .expect("pem")
            .expect("a private key");
        let rustls::pki_types::PrivateKeyDer::Pkcs1(k) = &der else {
            panic!("GitHub hands out PKCS#1 keys");
        };
        let pair = ring::signature::RsaKeyPair::from_der(k.secret_pkcs1_der()).expect("rsa");
        *self.grants.app.lock().expect("app") =
            Some((pair.public().as_ref().to_vec(), app_id.to_owned()));
    }
}

/// The name whose connections [`refuse_with_go_away`] serves.
pub const GO_AWAY_HOST: &str = "goaway.example.test";

/// HTTP/2 by hand, as far as a GOAWAY: reads frames until the client's
/// first HEADERS, then sends SETTINGS and a GOAWAY that processed no
/// stream (ENHANCE_YOUR_CALM), with `debug` as its debug data, and reads
/// on until the client closes.
async fn refuse_with_go_away<S>(mut tls: S, debug: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut preface = [0u8; 24];
    if tls.read_exact(&mut preface).await.is_err() {
        return;
    }
    loop {
        let mut head = [0u8; 9];
        if tls.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if tls.read_exact(&mut payload).await.is_err() {
            return;
        }
        // HEADERS
        if head[3] == 0x1 {
            break;
        }
    }
    let frame = |kind: u8, payload: &[u8]| {
        let len = u32::try_from(payload.len())
            .expect("a small frame")
            .to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        frame
    };
    let mut go_away = vec![0, 0, 0, 0, 0, 0, 0, 0xb];
    go_away.extend_from_slice(debug);
    let mut out = frame(0x4, &[]);
    out.extend(frame(0x7, &go_away));
    if tls.write_all(&out).await.is_err() || tls.flush().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
}

type Body = BoxBody<Bytes, Infallible>;

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).boxed()
}

/// The text both model APIs answer, in two pieces when streamed.
const LLM_TEXT: [&str; 2] = ["hello from", " the test upstream"];

/// /v1/messages (Anthropic's Messages API) and /v1/chat/completions
/// (OpenAI's): a fixed answer, or, when the request asks for a stream, the
/// same as the server-sent events each API sends, its text in two deltas
/// a second apart.
async fn llm_answer(req: Request<hyper::body::Incoming>, path: &str) -> Response<Body> {
    let streamed = req
        .into_body()
        .collect()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b.to_bytes()).ok())
        .is_some_and(|v| v["stream"] == true);
    let anthropic = path == "/v1/messages";
    let text = LLM_TEXT.concat();
    if !streamed {
        return json_answer(if anthropic {
            serde_json::json!({
                "id": "msg_test", "type": "message", "role": "assistant", "model": "claude-test",
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 3, "output_tokens": 5},
            })
        } else {
            serde_json::json!({
                "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "gpt-test",
                "choices": [{
                    "index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                }],
                "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
            })
        });
    }
    // Anthropic names each event; OpenAI sends data lines and `[DONE]`.
    let event = |name: &str, data: serde_json::Value| {
        if anthropic {
            format!("event: {name}\ndata: {data}\n\n")
        } else {
            format!("data: {data}\n\n")
        }
    };
    let delta = |piece: &str| {
        if anthropic {
            event(
                "content_block_delta",
                serde_json::json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": piece}}),
            )
        } else {
            event(
                "",
                serde_json::json!({"id": "chatcmpl-test", "object": "chat.completion.chunk",
                    "created": 0, "model": "gpt-test",
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]}),
            )
        }
    };
    let (head, tail) = if anthropic {
        (
            event(
                "message_start",
                serde_json::json!({"type": "message_start", "message": {
                    "id": "msg_test", "type": "message", "role": "assistant", "model": "claude-test",
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 3, "output_tokens": 0}}}),
            ) + &event(
                "content_block_start",
                serde_json::json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
            ),
            event(
                "content_block_stop",
                serde_json::json!({"type": "content_block_stop", "index": 0}),
            ) + &event(
                "message_delta",
                serde_json::json!({"type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                    "usage": {"output_tokens": 5}}),
            ) + &event("message_stop", serde_json::json!({"type": "message_stop"})),
        )
    } else {
        (
            event(
                "",
                serde_json::json!({"id": "chatcmpl-test", "object": "chat.completion.chunk",
                    "created": 0, "model": "gpt-test",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                        "finish_reason": null}]}),
            ),
            event(
                "",
                serde_json::json!({"id": "chatcmpl-test", "object": "chat.completion.chunk",
                    "created": 0, "model": "gpt-test",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            ) + "data: [DONE]\n\n",
        )
    };
    let first = head + &delta(LLM_TEXT[0]);
    let rest = delta(LLM_TEXT[1]) + &tail;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let _ = tx.send(Bytes::from(first)).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let _ = tx.send(Bytes::from(rest)).await;
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().expect("ct"));
    r
}

/// /upload: the size and SHA-256 of the request body, read as it streams
/// in (and once hyper has answered an `Expect: 100-continue`).
async fn upload_digest(
    req: Request<hyper::body::Incoming>,
    whole: Arc<std::sync::atomic::AtomicBool>,
) -> Response<Body> {
    use sha2::Digest as _;
    let mut body = req.into_body();
    let (mut size, mut digest) = (0, sha2::Sha256::new());
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return status(400, "the upload broke off\n");
        };
        if let Ok(data) = frame.into_data() {
            size += data.len();
            digest.update(&data);
        }
    }
    whole.store(true, std::sync::atomic::Ordering::SeqCst);
    Response::new(full(format!("{size} {:x}\n", digest.finalize())))
}

fn json_answer(value: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(value.to_string()));
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("h"));
    r
}

async fn handle(
    mut req: Request<hyper::body::Incoming>,
    peer: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    grants: Arc<Grants>,
    git: Option<GitHost>,
) -> Result<Response<Body>, Infallible> {
    let record = Seen {
        peer,
        method: req.method().to_string(),
        authority: req.uri().authority().map(|a| a.to_string()),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: format!("{:?}", req.version()),
        body_whole: Arc::default(),
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
    let head = req.method() == hyper::Method::HEAD;
    if let Some(host) = git.filter(|_| path.starts_with("/git/")) {
        return Ok(git_http::serve(req, &host).await.map(full));
    }
    if path == "/oauth/token" {
        return Ok(oauth_token(req, &grants).await);
    }
    if path.starts_with("/app/installations/") && path.ends_with("/access_tokens") {
        return Ok(installation_token(&req, &grants));
    }
    let resp = match path.as_str() {
        "/hello" => Response::new(full("hello from upstream\n")),
        "/v1/messages" | "/v1/chat/completions" => llm_answer(req, &path).await,
        "/reason" => {
            // An HTTP/1.1 status line that quotes the request, as careless
            // servers' error pages do.
            let mut r = Response::new(full("denied\n"));
            *r.status_mut() = hyper::StatusCode::UNAUTHORIZED;
            if let Some(auth) = req.headers().get("authorization")
                && let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(auth.as_bytes().to_vec())
            {
                r.extensions_mut().insert(phrase);
            }
            r
        }
        "/log" => {
            // Every request seen so far, as a request log or a request bin
            // shows them: what one request sent, another reads back, whole
            // or, as a file server would give it, in byte ranges.
            let log = log_text(&seen.lock().expect("seen"));
            // At most this many first bytes, as a log read with a byte
            // limit gives them (Kubernetes' `limitBytes`): a whole 200.
            if let Some(limit) = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("limit="))
                .and_then(|n| n.parse::<usize>().ok())
            {
                return Ok(Response::new(full(
                    log.as_bytes()[..limit.min(log.len())].to_vec(),
                )));
            }
            let unasked = req.uri().query().and_then(|q| q.strip_prefix("part="));
            let asked = req.headers().get("range").and_then(|v| v.to_str().ok());
            match unasked.or(asked).and_then(|r| part(r, log.len())) {
                Some((first, last)) => {
                    let mut r = Response::new(full(log.as_bytes()[first..=last].to_vec()));
                    *r.status_mut() = hyper::StatusCode::PARTIAL_CONTENT;
                    r.headers_mut().insert(
                        "content-range",
                        format!("bytes {first}-{last}/{}", log.len())
                            .parse()
                            .expect("h"),
                    );
                    r
                }
                None => Response::new(full(log)),
            }
        }
        "/bighead" => {
            // A response head past what Airlock reads of one (64 KiB).
            let mut r = Response::new(full("unreachable body\n"));
            let big = "a".repeat(80 * 1024);
            r.headers_mut()
                .insert("x-big", big.parse().expect("header value"));
            r
        }
        "/echo" | "/echo-coded" => {
            // Reflects everything, as a careless or hostile upstream would,
            // gzipped when the client accepts it, as servers do (and
            // /echo-coded in the coding its query names, whatever the
            // client asked for).
            let body = serde_json::json!({
                "path": record.path,
                "headers": record.headers,
            })
            .to_string();
            let accepts_gzip = req
                .headers()
                .get_all("accept-encoding")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("gzip"));
            let forced = (path == "/echo-coded")
                .then(|| req.uri().query().and_then(|q| q.strip_prefix("as=")))
                .flatten();
            let mut r = match (forced, accepts_gzip) {
                (Some(coding), _) => {
                    let coded = match coding {
                        "gzip" => gzip(body.as_bytes()),
                        "deflate" => zlib(body.as_bytes()),
                        "br" => brotli(body.as_bytes()),
                        "zstd" => zstd::encode_all(body.as_bytes(), 3).expect("zstd"),
                        // Named only: were it let through, the secret
                        // would be there to see.
                        _ => body.into_bytes(),
                    };
                    let mut r = Response::new(full(coded));
                    r.headers_mut()
                        .insert("content-encoding", coding.parse().expect("h"));
                    r.headers_mut()
                        .insert("etag", "\"echo-1\"".parse().expect("h"));
                    r
                }
                (None, true) => {
                    let mut r = Response::new(full(gzip(body.as_bytes())));
                    r.headers_mut()
                        .insert("content-encoding", "gzip".parse().expect("h"));
                    r
                }
                (None, false) => Response::new(full(body)),
            };
            if let Some(auth) = req.headers().get("authorization") {
                r.headers_mut().insert("x-echo-authorization", auth.clone());
            }
            r
        }
        "/tail" => {
            // A live request log, as request bins and debug consoles
            // offer: each request seen after this one, as an event, for
            // ten seconds.
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
            let mut next = seen.lock().expect("seen").len();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b": tailing\n\n")).await;
                let until = tokio::time::Instant::now() + Duration::from_secs(10);
                while tokio::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let new: Vec<Seen> = seen.lock().expect("seen")[next..].to_vec();
                    next += new.len();
                    for request in new {
                        let event = format!("data: {}\n\n", log_text(&[request]));
                        if tx.send(Bytes::from(event)).await.is_err() {
                            return;
                        }
                    }
                }
            });
            let mut r = Response::new(ChannelBody(rx).boxed());
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().expect("ct"));
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
        // A server that answers with whatever status it is asked for,
        // behind a front end that tunnels once it sees a 101: nothing
        // switched, so what comes next is read as HTTP requests again
        // (recorded as seen, answered 200). WebSocket smuggling.
        "/ws" if req.uri().query() == Some("answer=bare") => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            let seen = seen.clone();
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let _ = requests_after_a_false_switch(TokioIo::new(upgraded), peer, seen).await;
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
        "/ws" => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.as_bytes().to_vec());
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let _ = websocket_echo(TokioIo::new(upgraded), auth).await;
                }
            });
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
            if let Some(key) = req.headers().get("sec-websocket-key") {
                // RFC 6455 §4.2.2: the key and a fixed GUID, SHA-1, base64.
                use base64::Engine as _;
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
                ctx.update(key.as_bytes());
                ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
                let accept =
                    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref());
                r.headers_mut()
                    .insert("sec-websocket-accept", accept.parse().expect("h"));
            }
            r.headers_mut()
                .insert("upgrade", "websocket".parse().expect("h"));
            r.headers_mut()
                .insert("connection", "upgrade".parse().expect("h"));
            r
        }
        "/big" => Response::new(full(vec![b'x'; 1024 * 1024])),
        "/upload" => upload_digest(req, record.body_whole.clone()).await,
        // As servers that check a length first answer: before reading
        // the body, which hyper then resets (HTTP/2) or cuts off.
        "/early" => status(413, "too large, said before reading\n"),
        // The same, its head written first and its body 300 ms later.
        "/early-slow" => {
            const SAID: &[u8] = b"too large, said before reading\n";
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = tx.send(Bytes::from_static(SAID)).await;
            });
            let mut r = Response::new(ChannelBody(rx).boxed());
            *r.status_mut() = hyper::StatusCode::PAYLOAD_TOO_LARGE;
            r.headers_mut().insert("content-length", SAID.len().into());
            r
        }
        _ => {
            let mut r = Response::new(full("not found\n"));
            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
            r
        }
    };
    if head {
        // hyper leaves a HEAD answer's body out over HTTP/1.1 but sends it
        // over HTTP/2, which clients refuse: state the length, send none.
        let (mut parts, body) = resp.into_parts();
        if let Some(len) = hyper::body::Body::size_hint(&body).exact() {
            parts.headers.insert("content-length", len.into());
        }
        return Ok(Response::from_parts(parts, full(Bytes::new())));
    }
    Ok(resp)
}

/// Each request head that comes over `io`, recorded as seen (method and
/// path), and answered `200 smuggled`.
async fn requests_after_a_false_switch(
    mut io: TokioIo<hyper::upgrade::Upgraded>,
    peer: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = pending.drain(..end + 4).collect();
            let line = String::from_utf8_lossy(&head);
            let mut words = line.split_whitespace();
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            seen.lock().expect("seen").push(Seen {
                method: method.to_owned(),
                authority: None,
                path: path.to_owned(),
                version: "HTTP/1.1 after a 101".to_owned(),
                headers: Vec::new(),
                peer,
                body_whole: Arc::default(),
            });
            io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nsmuggled\n")
                .await?;
        }
    }
}

/// A WebSocket echo (RFC 6455, no extensions). A handshake with an
/// Authorization header is first answered with a text message quoting it,
/// sent as two fragments split inside the value, a ping between them.
async fn websocket_echo(
    mut io: TokioIo<hyper::upgrade::Upgraded>,
    auth: Option<Vec<u8>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(n as u8),
            n @ 126..=0xffff => {
                out.push(126);
                out.extend((n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend((n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }
    let mut text = b"you sent: ".to_vec();
    text.extend(auth.as_deref().unwrap_or_default());
    if auth.is_some() {
        let (a, b) = text.split_at(text.len() - 6);
        let mut greeting = frame(0x01, a);
        greeting.extend(frame(0x89, b"ping"));
        greeting.extend(frame(0x80, b));
        io.write_all(&greeting).await?;
    }
    loop {
        let mut head = [0u8; 2];
        io.read_exact(&mut head).await?;
        let len = match head[1] & 0x7f {
            126 => u64::from(io.read_u16().await?),
            127 => io.read_u64().await?,
            n => u64::from(n),
        };
        let mut mask = [0u8; 4];
        io.read_exact(&mut mask).await?;
        let mut payload = vec![0u8; usize::try_from(len).expect("frame length")];
        io.read_exact(&mut payload).await?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        match head[0] & 0x0f {
            0x8 => {
                io.write_all(&frame(0x88, &payload)).await?;
                return io.shutdown().await;
            }
            0x9 => io.write_all(&frame(0x8a, &payload)).await?,
            0xa => {}
            // The greeting again, as two whole messages with the cut
            // inside the Authorization value: as a log streamed in
            // messages of a fixed size cuts its lines. `split` cuts it 12
            // bytes before its end, `split-3` 3 bytes after its start.
            0x1 if payload == b"split" || payload == b"split-3" => {
                let at = match payload.as_slice() {
                    b"split" => text.len() - 12,
                    _ => b"you sent: Bearer ".len() + 3,
                };
                let (a, b) = text.split_at(at);
                let mut two = frame(0x81, a);
                two.extend(frame(0x81, b));
                io.write_all(&two).await?;
            }
            // Data frames go back as they came, fragmentation included.
            _ => io.write_all(&frame(head[0], &payload)).await?,
        }
    }
}

/// The body of /log: each request's path and headers, as JSON.
fn log_text(seen: &[Seen]) -> String {
    let log: Vec<_> = seen
        .iter()
        .map(|s| serde_json::json!({"path": s.path, "headers": s.headers}))
        .collect();
    serde_json::Value::from(log).to_string()
}

/// `FIRST-LAST` of one `bytes=` range (or bare, from the query) within
/// `len` bytes; anything else is answered whole, as RFC 9110 lets a
/// server do.
fn part(range: &str, len: usize) -> Option<(usize, usize)> {
    let spec = range.strip_prefix("bytes=").unwrap_or(range);
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.parse::<usize>().ok()?, last.parse::<usize>().ok()?);
    (first <= last && last < len).then_some((first, last))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

fn zlib(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("zlib into memory");
    encoder.finish().expect("zlib into memory")
}

fn brotli(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = Vec::new();
    let mut encoder = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
    encoder.write_all(bytes).expect("brotli into memory");
    drop(encoder);
    out
}

fn status(code: u16, body: &str) -> Response<Body> {
    let mut r = Response::new(full(body.to_owned()));
    *r.status_mut() = hyper::StatusCode::from_u16(code).expect("status");
    r
}

/// RFC 6749 §4.4: Basic client authentication and a form body.
async fn oauth_token(req: Request<hyper::body::Incoming>, grants: &Grants) -> Response<Body> {
    use base64::Engine as _;
    let ttl = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("ttl="))
        .unwrap_or("3600")
        .to_owned();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{OAUTH_CLIENT_ID}:test-client-s3cret%2F%2B%26"))
    );
    let authorized = req.method() == hyper::Method::POST
        && req
            .headers()
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !authorized {
        return status(401, r#"{"error":"invalid_client"}"#);
    }
    if body.as_ref() != b"grant_type=client_credentials&scope=api.read" {
        return status(400, r#"{"error":"invalid_request"}"#);
    }
    let mut issued = grants.issued.lock().expect("issued");
    let token = format!("tok-{}", issued.len() + 1);
    issued.push(token.clone());
    Response::new(full(format!(
        r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{ttl}}}"#
    )))
}

/// GitHub's installation token endpoint: a JWT signed by the App's key,
/// issued by the App, living at most ten minutes.
fn installation_token(req: &Request<hyper::body::Incoming>, grants: &Grants) -> Response<Body> {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    let Some((public, app_id)) = grants.app.lock().expect("app").clone() else {
        return status(500, "no app key set");
    };
    let jwt = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let mut parts = jwt.split('.');
    let (Some(head), Some(claims), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return status(
            401,
            r#"{"message":"A JSON web token could not be decoded"}"#,
        );
    };
    let signed = format!("{head}.{claims}");
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap_or_default();
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public,
    );
    let claims: serde_json::Value = URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|c| serde_json::from_slice(&c).ok())
        .unwrap_or_default();
    let lifetime = claims["exp"].as_u64().unwrap_or(0) - claims["iat"].as_u64().unwrap_or(0);
    let valid = req.method() == hyper::Method::POST
        && key.verify(signed.as_bytes(), &sig).is_ok()
        && claims["iss"] == app_id.as_str()
        && lifetime <= 600
        && req.headers().contains_key("user-agent");
    if !valid {
        return status(
            401,
            r#"{"message":"'Issuer' claim is invalid or signature bad"}"#,
        );
    }
    let mut issued = grants.issued.lock().expect("issued");
    let token = format!("ghs_test{}", issued.len() + 1);
    issued.push(token.clone());
    let expires = std::time::SystemTime::now() + Duration::from_secs(3600);
    let secs = expires
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut r = status(
        201,
        &format!(r#"{{"token":"{token}","expires_at":"{}"}}"#, rfc3339(secs)),
    );
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("ct"));
    r
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time, by `date`, which the test host has.
fn rfc3339(secs: u64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
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

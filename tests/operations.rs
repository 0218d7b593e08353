//! Operating Airlock: metrics that move, rate limits, the human approval
//! queue with its webhook, and `airlock status`. Real daemon, real agents,
//! a real HTTPS upstream on loopback.

mod harness;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use harness::{Daemon, DaemonOptions, describe, stdout, upstream::TlsUpstream};

/// A webhook receiver on loopback: keeps each request body it gets.
fn webhook_receiver() -> (u16, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook");
    let port = listener.local_addr().expect("addr").port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_ok()
                && let Ok(v) = serde_json::from_slice(&body)
            {
                store.lock().expect("store").push(v);
            }
            let _ = reader.get_mut().write_all(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (port, got)
}

fn setup(rules: &str, extra_config: &str) -> (Daemon, TlsUpstream) {
    let dir = tempfile::tempdir().expect("dir").keep();
    let up = TlsUpstream::start(&dir, &["api.example.test"]);
    let policy = format!(
        "agent: ops-bot\nrules:\n{}",
        rules.replace("{PORT}", &up.port.to_string())
    );
    let d = Daemon::start(DaemonOptions {
        policies: vec![("ops-bot.yaml".into(), policy)],
        extra_config: format!(
            "resolve:\n  api.example.test: 127.0.0.1\nupstream_ca: [{}]\n{extra_config}",
            up.ca_pem.display()
        ),
    });
    (d, up)
}

/// One HTTPS GET from an agent; returns the status code curl saw.
fn agent_get(d: &Daemon, url: &str) -> String {
    agent_request(d, "GET", url)
}

/// One HTTPS request from an agent; returns the status code curl saw.
fn agent_request(d: &Daemon, method: &str, url: &str) -> String {
    let options = ["--max-time", "20", "-X", method, url];
    let out = d.run_agent_dns("ops-bot", &[&harness::CURL_STATUS[..], &options].concat());
    stdout(&out)
}

/// What `airlock status` prints for a person.
fn human_status(d: &Daemon) -> String {
    let out = std::process::Command::new(harness::AIRLOCK)
        .args(["status", "--config"])
        .arg(&d.config)
        .output()
        .expect("status");
    stdout(&out)
}

fn counter(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_move_as_agents_make_allowed_and_denied_requests() {
    let (d, up) = setup(
        "  - host: api.example.test:{PORT}\n    methods: [GET]\n    paths: [\"/hello\"]\n",
        "",
    );
    let before = d.metrics();
    let allowed =
        "airlock_requests_total{agent=\"ops-bot\",decision=\"allow\",host=\"api.example.test\"}";
    let denied =
        "airlock_requests_total{agent=\"ops-bot\",decision=\"deny\",host=\"api.example.test\"}";
    assert_eq!(counter(&before, allowed), 0.0);
    let p = up.port;
    assert_eq!(
        agent_get(&d, &format!("https://api.example.test:{p}/hello")),
        "200"
    );
    assert_eq!(
        agent_get(&d, &format!("https://api.example.test:{p}/hello")),
        "200"
    );
    assert_eq!(
        agent_get(&d, &format!("https://api.example.test:{p}/secret")),
        "403"
    );
    let after = d.metrics();
    assert_eq!(counter(&after, allowed), 2.0, "{after}");
    assert_eq!(counter(&after, denied), 1.0, "{after}");
    assert!(
        counter(&after, "airlock_bpf_redirects_total") >= 3.0,
        "{after}"
    );
    assert!(
        counter(&after, "airlock_connections_total{agent=\"ops-bot\"") >= 3.0,
        "{after}"
    );
    assert!(
        counter(&after, "airlock_request_duration_seconds_count") >= 2.0,
        "{after}"
    );
    assert!(
        counter(&after, "airlock_dns_queries_total{agent=\"ops-bot\"") >= 1.0,
        "the agent's lookups went through Airlock's resolver: {after}"
    );
    // The audit log's health, for alerts: taking records, none lost.
    let line = |name: &str| {
        after
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(str::to_owned)
    };
    assert_eq!(
        line("airlock_audit_accepting").as_deref(),
        Some("airlock_audit_accepting 1"),
        "{after}"
    );
    assert_eq!(
        line("airlock_audit_lost_records_total").as_deref(),
        Some("airlock_audit_lost_records_total 0"),
        "{after}"
    );
    assert_eq!(
        line("airlock_audit_sync_failures_total").as_deref(),
        Some("airlock_audit_sync_failures_total 0"),
        "{after}"
    );
    assert!(line("airlock_audit_backlog").is_some(), "{after}");
}

#[test]
fn the_sixth_request_inside_five_per_minute_gets_429() {
    let (d, up) = setup(
        "  - host: api.example.test:{PORT}\n    methods: [GET]\n    rate_limit: 5/minute\n",
        "",
    );
    let url = format!("https://api.example.test:{}/hello", up.port);
    // One agent process, six requests on fresh connections.
    let py = format!(
        "import requests\nfor i in range(6):\n    r = requests.get('{url}', timeout=10)\n    print(r.status_code, r.headers.get('retry-after'), r.json().get('reason') if r.status_code != 200 else '-')\n"
    );
    let out = d.run_agent_dns("ops-bot", &["/usr/bin/python3", "-c", &py]);
    assert!(out.status.success(), "{}", describe(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines[..5], vec!["200 None -".to_string(); 5], "{lines:?}");
    let last: Vec<&str> = lines[5].split(' ').collect();
    assert_eq!(last[0], "429", "{lines:?}");
    let retry: u64 = last[1].parse().expect("Retry-After seconds");
    assert!((1..=12).contains(&retry), "Retry-After {retry}");
    assert_eq!(last[2], "rate_limited");
    assert_eq!(
        up.seen().len(),
        5,
        "the limited request reached the upstream"
    );
    let rec = d.wait_audit("for the 429", |r| r["action"] == "rate_limited");
    assert_eq!(rec["status"], 429);
}

/// Wait for one pending approval and return its id.
fn pending_id(d: &Daemon, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = std::process::Command::new(harness::AIRLOCK)
            .args(["approvals", "list", "--json", "--config"])
            .arg(&d.config)
            .output()
            .expect("approvals list");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let fresh = v["pending"].as_array().into_iter().flatten().find_map(|p| {
            let id = p["id"].as_str()?.to_owned();
            (!seen.contains(&id)).then(|| {
                assert_eq!(p["agent"], "ops-bot", "{p}");
                assert_eq!(p["method"], "POST", "{p}");
                assert_eq!(p["host"], "api.example.test", "{p}");
                assert_eq!(p["path"], "/hello", "{p}");
                // The human sees what will be sent: SHA-256 of `x=1`.
                assert_eq!(
                    p["body_digest"],
                    "1f206b11c23e28cc250ded7fc0098d3823a8467a54340f1ac4e535cb8544493f",
                    "{p}"
                );
                id
            })
        });
        if let Some(id) = fresh {
            seen.push(id.clone());
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "no pending approval appeared: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A request that claims another method (an override header, a
/// `_method` in its query or body) is that method to a server that honours
/// the claim, so it gets no more than the claimed method's rule gives: a
/// human's approval where that rule wants one, that rule's rate limit, and
/// only the secrets that rule binds. Before, a POST claiming DELETE went
/// through on the POST rule's terms.
#[test]
fn a_claimed_method_gets_no_more_than_its_own_rule_gives() {
    let (d, up) = setup(
        "  - host: api.example.test:{PORT}\n    methods: [GET, POST]\n    credentials: [{secret: tok}]\n  - host: api.example.test:{PORT}\n    methods: [DELETE]\n    approval: true\n    credentials: [{secret: tok}]\n  - host: api.example.test:{PORT}\n    methods: [PATCH]\n    rate_limit: 2/minute\nenv:\n  TOK: \"{{ placeholder: tok }}\"\n",
        "approval_timeout_secs: 10\n",
    );
    d.secret_set("tok", "claimed-method-secret-4b1d");
    // `/upload` reads the body to its end, and says when it has.
    let url = format!("https://api.example.test:{}/upload", up.port);
    let curl = |args: &str| {
        let cmd = format!("curl -sS --max-time 30 -w ' %{{http_code}}' -X POST {args} {url}");
        let out = d.run_agent_dns("ops-bot", &["sh", "-c", &cmd]);
        assert!(out.status.success(), "{}", describe(&out));
        stdout(&out)
    };

    // Claiming DELETE: held for a human, who is told of the claim.
    std::thread::scope(|s| {
        let held = s.spawn(|| curl("-H 'X-HTTP-Method-Override: DELETE' -d x=1"));
        let deadline = Instant::now() + Duration::from_secs(15);
        let pending = loop {
            let out = std::process::Command::new(harness::AIRLOCK)
                .args(["approvals", "list", "--json", "--config"])
                .arg(&d.config)
                .output()
                .expect("approvals list");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if let Some(p) = v["pending"].as_array().and_then(|all| all.first()) {
                break p.clone();
            }
            assert!(
                Instant::now() < deadline,
                "a POST claiming DELETE was not held for approval: {}",
                held.join().expect("request")
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(pending["method"], "POST", "{pending}");
        assert_eq!(
            pending["claimed_methods"],
            serde_json::json!(["DELETE"]),
            "{pending}"
        );
        let human = std::process::Command::new(harness::AIRLOCK)
            .args(["approvals", "list", "--config"])
            .arg(&d.config)
            .output()
            .expect("approvals list");
        assert!(
            stdout(&human).contains("POST CLAIMING DELETE https://api.example.test"),
            "{}",
            describe(&human)
        );
        let id = pending["id"].as_str().expect("id");
        let no = std::process::Command::new(harness::AIRLOCK)
            .args(["approvals", "deny", id, "--config"])
            .arg(&d.config)
            .output()
            .expect("deny");
        assert!(no.status.success(), "{}", describe(&no));
        let answer = held.join().expect("request");
        assert!(
            answer.contains("approval_denied") && answer.ends_with(" 403"),
            "{answer}"
        );
    });
    let placeholder = "-H \"Authorization: Bearer $TOK\"";
    for (args, status, reason) in [
        // In its body, where it is read only as the body streams: refused,
        // as no human was asked.
        (
            "-d _method=DELETE".to_owned(),
            " 403",
            "claim_needs_approval",
        ),
        // Claiming PATCH, whose rule binds no secret and allows two a
        // minute (the first request below is charged too).
        (
            format!("{placeholder} -H 'X-HTTP-Method-Override: PATCH'"),
            " 403",
            "placeholder_not_allowed",
        ),
        (
            format!("{placeholder} -d _method=PATCH"),
            " 403",
            "placeholder_not_allowed",
        ),
        ("-H 'X-HTTP-Method-Override: PATCH'".to_owned(), " 200", ""),
        ("-d _method=PATCH".to_owned(), " 429", "rate_limited"),
        // The POST rule's own terms are untouched, and a body claiming a
        // method that rule allows goes.
        (format!("{placeholder} -d x=1"), " 200", ""),
        ("-d _method=GET".to_owned(), " 200", ""),
    ] {
        let answer = curl(&args);
        assert!(
            answer.ends_with(status) && answer.contains(reason),
            "{args}: {answer}"
        );
    }
    // The audit says what the request claimed, whatever became of it.
    let rec = d.wait_audit("for the approval denied", |r| {
        r["reason"] == "approval_denied"
    });
    assert_eq!(rec["method"], "POST");
    assert_eq!(
        rec["claimed_methods"],
        serde_json::json!(["DELETE"]),
        "{rec}"
    );
    let claimed =
        |r: &serde_json::Value, method: &str| r["claimed_methods"] == serde_json::json!([method]);
    for (what, status, method) in [
        ("for the allowed header claim", 200, "PATCH"),
        ("for the body claim over its rate limit", 429, "PATCH"),
        ("for the allowed body claim", 200, "GET"),
    ] {
        d.wait_audit(what, |r| r["status"] == status && claimed(r, method));
    }
    // A refused body claim leaves the upstream with an unfinished body,
    // which no server acts on; only the two allowed requests came whole.
    let whole: Vec<Option<String>> = up
        .seen()
        .iter()
        .filter(|r| r.body_whole.load(std::sync::atomic::Ordering::SeqCst))
        .map(|r| r.header("x-http-method-override").map(str::to_owned))
        .collect();
    assert_eq!(whole, [Some("PATCH".to_owned()), None, None], "{whole:?}");
}

/// A request held for a human whose body claims a method the policy
/// refuses outright is refused then, before anyone is asked: no human is
/// shown a request that cannot go.
#[test]
fn a_held_body_claiming_a_refused_method_is_refused_without_asking() {
    let (d, up) = setup(
        "  - host: api.example.test:{PORT}\n    methods: [POST]\n    approval: true\n  - host: api.example.test:{PORT}\n    methods: [GET]\n",
        "approval_timeout_secs: 20\n",
    );
    let url = format!("https://api.example.test:{}/upload", up.port);
    let started = Instant::now();
    let cmd = format!("curl -sS --max-time 30 -w ' %{{http_code}}' -d _method=DELETE {url}");
    let out = d.run_agent_dns("ops-bot", &["sh", "-c", &cmd]);
    let answer = stdout(&out);
    // The answer names the claim: the request's own method, POST, is allowed.
    let names_claim = answer.contains(r#""claimed_method":"DELETE""#);
    assert!(
        names_claim && answer.contains("method_not_allowed") && answer.ends_with(" 403"),
        "{}",
        describe(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the request waited for a human: {:?}",
        started.elapsed()
    );
    assert!(up.seen().is_empty(), "it reached the upstream");
    let rec = d.wait_audit("for the refusal", |r| r["reason"] == "method_not_allowed");
    assert_eq!(rec["method"], "POST");
    // What the body claimed is on record, though it never streamed.
    assert_eq!(
        rec["claimed_methods"],
        serde_json::json!(["DELETE"]),
        "{rec}"
    );
}

#[test]
fn approvals_hold_requests_until_a_human_answers_or_the_timeout() {
    let (hook_port, notices) = webhook_receiver();
    let (d, up) = setup(
        "  - host: api.example.test:{PORT}\n    methods: [POST]\n    approval: true\n  - host: api.example.test:{PORT}\n    methods: [GET]\n",
        &format!(
            "approval_timeout_secs: 2\napproval_webhook: http://127.0.0.1:{hook_port}/airlock\n"
        ),
    );
    let url = format!("https://api.example.test:{}/hello", up.port);
    let post = || {
        let d = &d;
        let url = url.clone();
        move || {
            d.run_agent_dns(
                "ops-bot",
                &[
                    "curl",
                    "-sS",
                    "-X",
                    "POST",
                    "-d",
                    "x=1",
                    "-w",
                    " %{http_code}",
                    "--max-time",
                    "30",
                    &url,
                ],
            )
        }
    };
    let mut seen = Vec::new();
    std::thread::scope(|s| {
        // Approved: the request completes.
        let held = s.spawn(post());
        let id = pending_id(&d, &mut seen);
        assert_eq!(up.seen().len(), 0, "a held request reached the upstream");
        let ok = std::process::Command::new(harness::AIRLOCK)
            .args(["approvals", "approve", &id, "--config"])
            .arg(&d.config)
            .output()
            .expect("approve");
        assert!(ok.status.success(), "{}", describe(&ok));
        let out = held.join().expect("approved request");
        assert!(stdout(&out).ends_with(" 200"), "{}", describe(&out));
        assert_eq!(up.seen().len(), 1);
        assert_eq!(
            up.seen()[0].header("content-length"),
            Some("3"),
            "the held body went upstream whole"
        );

        // Denied: 403 with the reason.
        let held = s.spawn(post());
        let id = pending_id(&d, &mut seen);
        let ok = std::process::Command::new(harness::AIRLOCK)
            .args(["approvals", "deny", &id, "--config"])
            .arg(&d.config)
            .output()
            .expect("deny");
        assert!(ok.status.success(), "{}", describe(&ok));
        let out = held.join().expect("denied request");
        let text = stdout(&out);
        assert!(
            text.contains("approval_denied") && text.ends_with(" 403"),
            "{}",
            describe(&out)
        );

        // Unanswered: refused after the timeout.
        let held = s.spawn(post());
        let _ = pending_id(&d, &mut seen);
        let out = held.join().expect("timed out request");
        let text = stdout(&out);
        assert!(
            text.contains("approval_timeout") && text.ends_with(" 403"),
            "{}",
            describe(&out)
        );
    });
    assert_eq!(
        up.seen().len(),
        1,
        "only the approved request reached the upstream"
    );
    // An unknown id is an error that says so.
    let out = std::process::Command::new(harness::AIRLOCK)
        .args(["approvals", "approve", "nosuchid", "--config"])
        .arg(&d.config)
        .output()
        .expect("approve unknown");
    assert!(!out.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = notices.lock().expect("notices").clone();
        if got.len() >= 3 {
            let ids: Vec<&str> = got.iter().filter_map(|n| n["id"].as_str()).collect();
            for id in &seen {
                assert!(
                    ids.contains(&id.as_str()),
                    "no webhook notice for {id}: {got:?}"
                );
            }
            assert!(
                got.iter()
                    .all(|n| n["agent"] == "ops-bot" && n["event"] == "approval_requested")
            );
            break;
        }
        assert!(Instant::now() < deadline, "webhook notices: {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let approved = d.wait_audit("for the approved request", |r| r["action"] == "approve");
    assert_eq!(approved["status"], 200);
}

#[test]
fn status_reports_health_programs_agents_and_denials() {
    let (d, up) = setup(
        "  - host: api.example.test:{PORT}\n    methods: [GET]\n",
        "",
    );
    // Allowed by policy; the upstream itself answers 404.
    assert_eq!(
        agent_get(&d, &format!("https://api.example.test:{}/nope", up.port)),
        "404"
    );
    assert_eq!(
        agent_get(&d, &format!("https://api.example.test:{}/hello", up.port)),
        "200"
    );
    assert_eq!(
        agent_request(
            &d,
            "DELETE",
            &format!("https://api.example.test:{}/x", up.port)
        ),
        "403"
    );
    let status = d.status().expect("status");
    assert_eq!(status["healthy"], true, "{status}");
    assert_eq!(status["attached_programs"], 11, "{status}");
    let agents = status["agents"].as_array().expect("agents");
    assert!(
        agents
            .iter()
            .any(|a| a["agent"] == "ops-bot" && a["policy"].is_string()),
        "{status}"
    );
    let denials = status["recent_denials"].as_array().expect("denials");
    assert!(denials.iter().any(|r| r["method"] == "DELETE"), "{status}");
    // Live connections: an SSE stream (open ~1.5 s) counts while it is
    // open and no longer once it has ended.
    let live = |d: &Daemon| {
        d.status().expect("status")["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["agent"] == "ops-bot")
            .and_then(|a| a["live_connections"].as_u64())
            .expect("live_connections for ops-bot")
    };
    assert_eq!(live(&d), 0, "no agent connection is open yet");
    std::thread::scope(|s| {
        let sse = s.spawn(|| agent_get(&d, &format!("https://api.example.test:{}/sse", up.port)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while live(&d) == 0 {
            assert!(
                Instant::now() < deadline,
                "the open SSE stream never showed in status"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(sse.join().expect("sse"), "200");
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while live(&d) != 0 {
        assert!(
            Instant::now() < deadline,
            "a closed connection is still counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = human_status(&d);
    assert!(
        text.contains("healthy") && text.contains("ops-bot") && text.contains("11 attached"),
        "{text}"
    );
    assert!(
        text.contains(&format!("audit:    writing to {}, ", d.audit.display())),
        "status must say where the audit log is: {text}"
    );
    // A daemon that is down: status says so, with the fix, and fails.
    let mut d = d;
    d.kill9();
    let out = std::process::Command::new(harness::AIRLOCK)
        .args(["status", "--config"])
        .arg(&d.config)
        .output()
        .expect("status");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the Airlock daemon") && err.contains("airlock daemon"),
        "{err}"
    );
}

/// The paths of the HTTP requests in the audit log at `path` (lookups
/// and connections have none), each line of which must be whole JSON.
fn audit_paths(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a whole JSON line ({e}): {l}"));
            v["path"].as_str().map(str::to_owned)
        })
        .collect()
}

#[test]
fn audit_records_outlive_a_killed_daemon_and_are_written_once() {
    let (mut d, up) = setup(
        "  - host: api.example.test:{PORT}\n    methods: [GET]\n",
        "",
    );
    // A burst on one connection, and SIGKILL the moment it is answered:
    // the writer lets records gather for up to 100 ms, so the last ones
    // are not in the log yet when the daemon dies.
    let urls: Vec<String> = (0..40)
        .map(|i| format!("https://api.example.test:{}/hello?burst={i}", up.port))
        .collect();
    let mut cmd = vec!["curl", "-sS", "-w", "%{http_code} ", "--max-time", "20"];
    for url in &urls {
        cmd.extend(["-o", "/dev/null", url.as_str()]);
    }
    let out = d.run_agent_dns("ops-bot", &cmd);
    d.kill9();
    assert_eq!(
        stdout(&out).trim(),
        ["200"; 40].join(" "),
        "{}",
        describe(&out)
    );

    d.spawn();
    let log = d.audit.clone();
    d.wait_audit("of the burst's last request, after the restart", |r| {
        r["path"] == "/hello?burst=39"
    });
    // Whether the burst's last records were still waiting is down to
    // timing; the FIFO below makes sure one is.
    let recoveries = |d: &Daemon| {
        d.log_text()
            .matches("writing them to the log first")
            .count()
    };
    let before = recoveries(&d);
    let expected: Vec<String> = (0..40).map(|i| format!("/hello?burst={i}")).collect();
    assert_eq!(
        audit_paths(&log),
        expected,
        "every answered request recorded once, in order"
    );
    // A request whose record cannot be written yet, then SIGKILL: before
    // the journal, records waiting for their write died with the daemon.
    // The log is rotated away and a FIFO with no reader put in its place:
    // the writer's open of the new log waits, as on a hung disk, and what
    // is recorded meanwhile waits with it.
    let rotated = log.with_extension("jsonl.1");
    std::fs::rename(&log, &rotated).expect("mv audit log");
    let fifo = std::ffi::CString::new(log.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
    assert_eq!(
        agent_get(
            &d,
            &format!("https://api.example.test:{}/hello?held", up.port)
        ),
        "200"
    );
    d.kill9();
    std::fs::remove_file(&log).expect("rm fifo");

    d.spawn();
    d.wait_audit("of the held request, after the restart", |r| {
        r["path"] == "/hello?held"
    });
    assert_eq!(
        recoveries(&d),
        before + 1,
        "the restart must say it wrote the record the killed run left:\n{}",
        d.log_text()
    );
    assert_eq!(audit_paths(&rotated), expected);
    assert_eq!(audit_paths(&log), ["/hello?held"]);
    // And status says so, with where records wait.
    let status = d.status().expect("status");
    assert!(
        status["audit"]["recovered_at_start"].as_u64() > Some(0),
        "{status}"
    );
    let text = human_status(&d);
    let journal = d.dir.path().join("run/audit.journal");
    assert!(
        text.contains(&format!("records queued in {}, ", journal.display()))
            && text.contains("that a killed run left were found at start"),
        "{text}"
    );
}

/// A tmpfs of `mib` MiB mounted at a folder for one test; unmounted when
/// dropped (lazily: a daemon may still hold a file on it).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount tmpfs: {}", describe(&out));
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_disk_short_of_room_for_the_audit_log_refuses_agents_and_loses_no_record() {
    let (mut d, up) = setup(
        "  - host: api.example.test:{PORT}\n    methods: [GET]\n",
        "audit_min_free_mib: 8\n",
    );
    // The log on a file system of its own, which the test fills.
    d.stop();
    let log_dir = d.audit.parent().expect("log folder").to_path_buf();
    let disk = Tmpfs::mount(&log_dir, 24);
    d.spawn();
    let url = |query: &str| format!("https://api.example.test:{}/hello?{query}", up.port);
    // The requests that reached the proxy's HTTP layer, answered or
    // refused with 503, and how many were refused, either so or by a
    // closed connection (a new one, refused before TLS: curl says 000).
    let mut asked = Vec::new();
    let mut refused = 0;
    let ask = |query: String, asked: &mut Vec<String>, refused: &mut usize| {
        let code = agent_get(&d, &url(&query));
        match code.as_str() {
            "200" => asked.push(query),
            "503" => {
                asked.push(query);
                *refused += 1;
            }
            "000" => *refused += 1,
            other => panic!("HTTP {other}"),
        }
        code == "200"
    };
    assert!(ask("before".into(), &mut asked, &mut refused));

    // 20 of the 24 MiB taken: under the 8 MiB kept free. A request may
    // still go out before the writer next looks (its record waits in the
    // journal); the next is refused.
    let filler = log_dir.join("filler");
    std::fs::write(&filler, vec![0u8; 20 << 20]).expect("fill the disk");
    for i in 0.. {
        assert!(i < 3, "never refused");
        if !ask(format!("low-{i}"), &mut asked, &mut refused) {
            break;
        }
    }
    let text = human_status(&d);
    assert!(
        text.contains("audit:    WRITES FAILING, requests are refused")
            && text.contains(
                "why: the audit log's file system is down to the 8 MiB that audit_min_free_mib keeps free for the rest of the host"
            ),
        "{text}"
    );
    let size_at_refusal = std::fs::metadata(&d.audit).expect("log").len();
    for i in 0..3 {
        assert!(!ask(format!("refused-{i}"), &mut asked, &mut refused));
    }
    assert_eq!(
        std::fs::metadata(&d.audit).expect("log").len(),
        size_at_refusal,
        "the log grew while short of room"
    );

    // Room again: requests go out, with no restart and no signal.
    std::fs::remove_file(&filler).expect("rm filler");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ask(format!("after-{refused}"), &mut asked, &mut refused) {
        assert!(Instant::now() < deadline, "still refused with room");
        std::thread::sleep(Duration::from_millis(100));
    }
    let last = format!("/hello?{}", asked.last().expect("asked"));
    d.wait_audit("of the first request after", |r| r["path"] == last.as_str());
    // Every request has its record, once, in order, and every refusal
    // says why.
    let records = d.audit_records();
    let paths: Vec<&str> = records.iter().filter_map(|r| r["path"].as_str()).collect();
    let expected: Vec<String> = asked.iter().map(|q| format!("/hello?{q}")).collect();
    assert_eq!(paths, expected);
    let unavailable = records
        .iter()
        .filter(|r| r["reason"] == "audit_unavailable")
        .count();
    assert_eq!(unavailable, refused, "{records:?}");
    assert!(
        d.log_text()
            .contains("audit log not writable; requests are refused until it is"),
        "{}",
        d.log_text()
    );
    d.stop();
    drop(disk);
}

/// A mapping of a process that holds resident pages and is not locked, as
/// `/proc/PID/smaps` shows it.
#[derive(Debug)]
struct Unlocked {
    header: String,
    anonymous: String,
    // Read only in failure messages.
    #[allow(dead_code)]
    rss: String,
    #[allow(dead_code)]
    flags: String,
}

impl Unlocked {
    /// Pages that may differ from any file: the process's own, where a
    /// secret could be.
    fn may_hold_secrets(&self) -> bool {
        let perms = self.header.split_whitespace().nth(1).unwrap_or("");
        perms.contains('w') || self.anonymous != "0 kB"
    }
}

/// The mappings of a process that hold resident pages and are not locked,
/// but for the kernel's own pages mapped into it (the vDSO, BPF maps),
/// which are never swapped.
fn unlocked_mappings(pid: u32) -> Vec<Unlocked> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let mut out = Vec::new();
    let (mut header, mut rss, mut anonymous) = (String::new(), String::new(), String::new());
    for line in text.lines() {
        if line.starts_with(|c: char| c.is_ascii_hexdigit()) && line.contains('-') {
            header = line.to_owned();
            anonymous.clear();
        } else if let Some(value) = line.strip_prefix("Rss:") {
            rss = value.trim().to_owned();
        } else if let Some(value) = line.strip_prefix("Anonymous:") {
            anonymous = value.trim().to_owned();
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            let kernels = ["[vdso]", "[vvar]", "[vvar_vclock]", "anon_inode:bpf-map"]
                .iter()
                .any(|name| header.ends_with(name));
            if !kernels && rss != "0 kB" && !flags.split_whitespace().any(|f| f == "lo") {
                out.push(Unlocked {
                    header: header.clone(),
                    rss: rss.clone(),
                    anonymous: anonymous.clone(),
                    flags: flags.trim().to_owned(),
                });
            }
        }
    }
    out
}

/// The whole process's memory figures from `/proc/PID/smaps_rollup`, in KiB.
fn memory_kib(pid: u32) -> std::collections::HashMap<String, u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps_rollup");
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let kib = rest.trim().strip_suffix(" kB")?.trim().parse().ok()?;
            Some((key.to_owned(), kib))
        })
        .collect()
}

#[test]
fn the_daemon_s_memory_is_locked_so_secrets_never_reach_swap() {
    let (d, up) = setup(
        "  - host: api.example.test:{PORT}\n    methods: [GET]\n    credentials:\n      - secret: ops-token\n",
        "",
    );
    d.secret_set("ops-token", "ops-value-that-must-stay-in-ram");
    // The secret is in the daemon's memory, swapped into a request.
    let url = format!("https://api.example.test:{}/hello", up.port);
    let options = [
        "--max-time",
        "20",
        "-H",
        "Authorization: Bearer airlock-ph-ops-token",
        &url,
    ];
    let out = d.run_agent_dns("ops-bot", &[&harness::CURL_STATUS[..], &options].concat());
    assert_eq!(stdout(&out), "200", "{}", describe(&out));

    // Every page of its own the daemon has in RAM is locked there. Its
    // binary's code and read-only data, which are the file's and hold no
    // secret, are not: once it has started, the kernel may reclaim them.
    let pid = d.pid().expect("daemon pid");
    let memory = memory_kib(pid);
    let (own, file): (Vec<_>, Vec<_>) = unlocked_mappings(pid)
        .into_iter()
        .partition(Unlocked::may_hold_secrets);
    assert!(
        memory["Locked"] > 1024 && own.is_empty(),
        "{memory:?}; resident and not locked: {own:#?}"
    );
    let airlock = std::fs::canonicalize(harness::AIRLOCK).expect("airlock binary");
    assert!(
        file.iter()
            .any(|m| m.header.ends_with(&*airlock.to_string_lossy())
                && m.header.split_whitespace().nth(1) == Some("r-xp")),
        "the binary's code is locked: {file:#?}"
    );

    // Where it cannot lock (no CAP_IPC_LOCK, 8 MiB of locked memory
    // allowed), neither the daemon nor `airlock secret` starts, and both
    // say what to do.
    for command in [&["daemon"][..], &["secret", "list"][..]] {
        let out = std::process::Command::new("setpriv")
            .args(["--bounding-set=-ipc_lock", "prlimit", "--memlock=8388608"])
            .arg(harness::AIRLOCK)
            .args(command)
            .arg("--config")
            .arg(&d.config)
            .output()
            .expect("setpriv");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command:?} ran: {}", describe(&out));
        assert!(
            err.contains("cannot lock this process's memory into RAM")
                && err.contains(&format!(
                    "set `lock_memory: false` in {}",
                    d.config.display()
                )),
            "{command:?}: {}",
            describe(&out)
        );
    }
    // The running daemon was not disturbed by the one that did not start.
    assert!(d.status().is_ok_and(|s| s["healthy"] == true));
}

/// The daemon holds the capabilities its unit grants and no more, however
/// it was started (here by a test, as root with all of them), less the one
/// it needs only to make its cgroup at the top of the mount. Every
/// end-to-end test runs the daemon so: a capability it needs and the unit
/// lacks would fail them.
#[test]
fn the_daemon_keeps_only_the_capabilities_its_unit_grants() {
    let (d, up) = setup(
        "  - host: api.example.test:{PORT}\n    methods: [GET]\n",
        "",
    );
    let unit = include_str!("../systemd/airlock.service");
    let granted = |key: &str| -> u64 {
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in the unit"));
        line.split_whitespace()
            .map(|name| match name {
                "CAP_NET_ADMIN" => 1 << 12,
                "CAP_IPC_LOCK" => 1 << 14,
                "CAP_SYS_ADMIN" => 1 << 21,
                "CAP_SYS_RESOURCE" => 1 << 24,
                "CAP_PERFMON" => 1 << 38,
                "CAP_BPF" => 1 << 39,
                "CAP_DAC_OVERRIDE" => 1 << 1,
                other => panic!("a capability this test does not know: {other}"),
            })
            .fold(0, |mask, bit| mask | bit)
    };
    let unit_set = granted("CapabilityBoundingSet=");
    assert_eq!(unit_set, granted("AmbientCapabilities="));
    let dac_override = 1 << 1;
    assert_ne!(
        unit_set & dac_override,
        0,
        "the unit lets the daemon make its cgroup"
    );
    let caps = |pid: &str, key: &str| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in {status}"));
        u64::from_str_radix(hex.trim(), 16).expect("hex")
    };
    // What the test was given (a container may hold back some).
    let expected = unit_set & !dac_override & caps("self", "CapBnd:");
    let pid = d.pid().expect("daemon pid").to_string();
    for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let held = caps(&pid, set);
        assert_eq!(held, expected, "{set} {held:#x}, expected {expected:#x}");
    }
    assert_eq!(caps(&pid, "CapInh:"), 0);
    // With them it serves agents.
    let code = agent_get(&d, &format!("https://api.example.test:{}/hello", up.port));
    assert_eq!(code, "200");
}

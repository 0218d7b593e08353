//! One request from an agent: check the host, ask the policy, apply the
//! brakes (rate limit, human approval), swap placeholders for secrets,
//! forward, scrub the answer, and audit it when it is done.

use std::{
    borrow::Cow,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{
    HeaderName, Method, Request, Response, StatusCode, Uri, Version, header,
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tracing::warn;

use super::{
    Intercept,
    agent_body::AgentBody,
    body::{Counted, OnDone, ProxyBody, Report, boxed, empty},
    h1_pool::Slot,
    h2_pools::Start,
    headers,
    last_decision::LastDecision,
    orig_dst::Origin,
    rescue::{Asked, ProxyError},
    upstream::{self, TokenTransport, error_chain},
    websocket,
    whole_body::{self, FOR_APPROVAL, FOR_SIGV4, Held, WholeBody},
};
use crate::{
    approvals::{Approvals, PendingRequest, Verdict},
    audit::{Action, AuditRecord},
    creds::{self, SwapError, Swapped},
    policy::HttpDecision,
};

/// Streaming APIs (LLMs) may think for a while before the first byte.
const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Names the request in the answer, as in the audit log.
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-airlock-request-id");

/// What is fixed for every request on one agent connection.
pub struct ConnCtx {
    pub agent: Arc<str>,
    pub origin: Origin,
    /// The SNI (or, without one, the dialled address) for TLS; None for
    /// plain HTTP, where each request's Host names it.
    pub tls_host: Option<Arc<str>>,
    /// Where a TLS connection's requests go, made once per connection.
    tls_authority: Option<Authority>,
    pub port: u16,
    /// The dialled address as the audit writes it, formatted once per
    /// connection rather than per request.
    pub dst: Arc<str>,
    /// `requests_total` for allowed requests to the connection's first
    /// host. Looked up once: the lookup hashes three labels under a lock.
    allowed: OnceLock<(Box<str>, prometheus::IntCounter)>,
    /// The upstream connection the connection's HTTP/1.1 requests go on.
    upstream: Slot,
    /// The policy's answer to the last request, for the next if it is
    /// the same.
    decided: LastDecision,
}

impl ConnCtx {
    pub fn new(
        agent: Arc<str>,
        origin: Origin,
        tls_host: Option<String>,
        upstream: Slot,
    ) -> ConnCtx {
        let port = origin.dst.0.port();
        ConnCtx {
            agent,
            tls_authority: tls_host
                .as_deref()
                .and_then(|host| authority(host, port).ok()),
            tls_host: tls_host.map(Arc::from),
            port,
            dst: origin.dst.0.to_string().into(),
            origin,
            allowed: OnceLock::new(),
            upstream,
            decided: LastDecision::default(),
        }
    }

    /// Counts an allowed request to `host` in `requests_total`.
    fn count_allowed(&self, requests: &prometheus::IntCounterVec, host: &str) {
        if let Some((first, counter)) = self.allowed.get()
            && **first == *host
        {
            counter.inc();
            return;
        }
        let counter = requests.with_label_values(&[&self.agent, host, "allow"]);
        counter.inc();
        let _ = self.allowed.set((host.into(), counter));
    }

    fn tls(&self) -> bool {
        self.tls_host.is_some()
    }
}

/// Where requests for `host` go: "host:port", "[v6]:port".
fn authority(host: &str, port: u16) -> Result<Authority, http::uri::InvalidUri> {
    if host.contains(':') {
        Authority::try_from(format!("[{host}]:{port}"))
    } else {
        Authority::try_from(format!("{host}:{port}"))
    }
}

/// The standard methods' names without an allocation per request.
fn method_name(method: &Method) -> Cow<'static, str> {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::CONNECT,
        Method::TRACE,
    ];
    const NAMES: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match STANDARD.iter().position(|m| m == method) {
        Some(i) => Cow::Borrowed(NAMES[i]),
        None => Cow::Owned(method.as_str().to_owned()),
    }
}

/// The name a Host header gives, as the policy compares names: no port, no
/// trailing dot, lower case. Borrowed when it is already so.
fn normalize_host(h: &str) -> Cow<'_, str> {
    let h = h.trim().trim_end_matches('.');
    // Strip a port: "host:443", "[::1]:443"; keep bare IPv6.
    let h = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if h.matches(':').count() == 1 {
        h.split(':').next().unwrap_or(h)
    } else {
        h
    };
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(h.to_ascii_lowercase())
    } else {
        Cow::Borrowed(h)
    }
}

impl Intercept {
    pub async fn handle(
        self: Arc<Self>,
        ctx: Arc<ConnCtx>,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let mut outgoing = Outgoing::Streamed(AgentBody::new(body, &parts.headers));
        let method = method_name(&parts.method);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let (host, mismatch) = {
            // One Host, in text, or none: servers that route on another of
            // several, or read bytes this one cannot, would pick a host the
            // policy never saw.
            let mut hosts = parts.headers.get_all(header::HOST).iter();
            let first = hosts.next();
            let unreadable = hosts.next().is_some() || first.is_some_and(|v| v.to_str().is_err());
            let named = first
                .and_then(|v| v.to_str().ok())
                .or_else(|| parts.uri.authority().map(|a| a.as_str()))
                .map(normalize_host);
            match (&ctx.tls_host, named) {
                // The SNI decided which certificate the agent got; a Host
                // naming another server on the same connection would dodge
                // that decision.
                (Some(sni), named) => (
                    sni.clone(),
                    unreadable || named.is_some_and(|n| *n != **sni),
                ),
                (None, Some(h)) => (Arc::from(h.as_ref()), unreadable),
                (None, None) => (Arc::from(ctx.origin.dst.0.ip().to_string()), unreadable),
            }
        };
        let mut record = AuditRecord {
            agent: Some(ctx.agent.clone()),
            cgroup: ctx.origin.cgroup_id,
            pid: ctx.origin.pid,
            uid: ctx.origin.uid,
            host: host.clone(),
            port: ctx.port,
            dst: ctx.dst.clone(),
            proto: if ctx.tls() { "https" } else { "http" },
            method: Some(method.clone()),
            path: Some(path.as_str().to_owned()),
            request_id: self.audit.request_id(),
            ..AuditRecord::default()
        };
        let outcome = if mismatch {
            Err(ProxyError::Denied {
                reason: "host_mismatch",
                rule: None,
            })
        } else if !self.audit.accepting() {
            // Fail closed: what cannot be recorded does not go out.
            Err(ProxyError::AuditUnavailable)
        } else {
            self.clone()
                .pipeline(
                    &ctx,
                    &host,
                    &method,
                    &path,
                    &mut parts,
                    &mut outgoing,
                    &mut record,
                    started,
                )
                .await
        };
        match outcome {
            Ok(resp) => resp,
            Err(err) => {
                let asked = Asked {
                    agent: &ctx.agent,
                    host: &host,
                    method: &method,
                    path: path.as_str(),
                };
                self.metrics
                    .requests
                    .with_label_values(&[&ctx.agent, &host, err.decision()])
                    .inc();
                let resp = err.to_response(&asked);
                record.action = Some(err.action());
                record.reason = Some(Cow::Borrowed(err.reason()));
                if record.rule.is_none() {
                    record.rule = err.rule().cloned();
                }
                record.status = Some(resp.status().as_u16());
                record.duration_ms = started.elapsed().as_millis() as u64;
                self.audit.record(record);
                resp
            }
        }
    }

    /// The awaits off the common path (a body read whole, a human's
    /// answer, a token fetch) are boxed: their futures would otherwise sit
    /// inside every request's future, which was 5 KB and is copied as it
    /// is built; boxed, it is 2.8 KB.
    #[allow(clippy::too_many_arguments)]
    async fn pipeline(
        self: Arc<Self>,
        ctx: &ConnCtx,
        host: &str,
        method: &str,
        path: &PathAndQuery,
        parts: &mut http::request::Parts,
        outgoing: &mut Outgoing,
        record: &mut AuditRecord,
        started: Instant,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // The policy in force now, not the version the connection opened
        // under: a rule a reload took away must stop the next request on a
        // keep-alive connection too, and a policy removed stops them all.
        let Some((policy, decision)) =
            ctx.decided
                .decide(&self.policies, &ctx.agent, host, ctx.port, method, path)
        else {
            return Err(ProxyError::Denied {
                reason: "no_policy",
                rule: None,
            });
        };
        let allowed = match decision {
            HttpDecision::Allow(a) => a,
            HttpDecision::Deny(d) => {
                return Err(ProxyError::Denied {
                    reason: d.reason.as_str(),
                    rule: d.rule_label,
                });
            }
        };
        // Frameworks (Rails, Google's APIs) take the method from these
        // headers: a POST that says DELETE is a DELETE to them, and must
        // pass the policy as one too.
        for name in &headers::METHOD_OVERRIDES {
            for value in parts.headers.get_all(name) {
                let overridden = value.to_str().unwrap_or("(not text)").trim();
                if let HttpDecision::Deny(d) =
                    policy.decide_http(host, ctx.port, overridden, path.as_str())
                {
                    return Err(ProxyError::Denied {
                        reason: d.reason.as_str(),
                        rule: d.rule_label,
                    });
                }
            }
        }
        record.rule = Some(allowed.rule_label.clone());
        if let Some(limit) = &allowed.rate_limit {
            self.limiter
                .check(&ctx.agent, allowed.rule.0, limit.count, limit.per)
                .map_err(|retry| ProxyError::RateLimited {
                    rule: allowed.rule_label.clone(),
                    retry_after: retry.0,
                })?;
        }
        let mut action = Action::Allow;
        // The budget taken by a body read whole, given back when this
        // function returns: the request has gone upstream by then.
        let mut held_budget = Vec::new();
        if allowed.approval
            && let Outgoing::Streamed(body) = std::mem::replace(outgoing, Outgoing::Sent)
        {
            let held = Box::pin(read(body, &allowed.rule_label, FOR_APPROVAL)).await?;
            held_budget.push(held.budget);
            *outgoing = Outgoing::Held(held.bytes);
        }
        if let Outgoing::Held(held) = &*outgoing {
            let body_digest = Some(PendingRequest::digest_body(held));
            let pending = PendingRequest {
                id: Approvals::new_id(),
                agent: ctx.agent.to_string(),
                method: method.to_owned(),
                host: host.to_owned(),
                path: path.as_str().to_owned(),
                body_digest,
                created_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                rule: allowed.rule_label.to_string(),
            };
            self.metrics.approvals_pending.inc();
            let verdict = Box::pin(self.approvals.request(pending)).await;
            self.metrics.approvals_pending.dec();
            match verdict {
                Verdict::Approved => action = Action::Approve,
                Verdict::Denied => return Err(ProxyError::ApprovalDenied),
                Verdict::TimedOut => return Err(ProxyError::ApprovalTimeout),
            }
        }

        let (creds, mut scrubber) = self.credentials.current(started);
        let Swapped {
            injected,
            resign,
            encoded,
        } = if creds.placeholders_in(parts).is_empty() {
            Swapped::default()
        } else {
            if !ctx.tls() {
                return Err(ProxyError::CredentialOverPlainHttp);
            }
            let refused = |err| match err {
                SwapError::NotAllowed { secret } => {
                    // What an exfiltration attempt looks like.
                    if let Some(held_back) = self.warnings.open(&ctx.agent) {
                        warn!(agent = %ctx.agent, host, secret = %secret, held_back, "placeholder sent where no rule allows it");
                    }
                    ProxyError::PlaceholderNotAllowed { secret }
                }
                SwapError::InvalidHeader { .. } | SwapError::InvalidUri => ProxyError::Denied {
                    reason: "invalid_request_after_swap",
                    rule: None,
                },
                SwapError::AwsSigV4 { secret, problem } => {
                    if let Some(held_back) = self.warnings.open(&ctx.agent) {
                        warn!(agent = %ctx.agent, host, secret = %secret, %problem, held_back, "request not re-signed");
                    }
                    ProxyError::Denied {
                        reason: problem.reason(),
                        rule: Some(allowed.rule_label.clone()),
                    }
                }
                err @ SwapError::Misplaced { .. } => {
                    if let Some(held_back) = self.warnings.open(&ctx.agent) {
                        warn!(agent = %ctx.agent, host, problem = %err, held_back, "placeholder where its kind is not swapped");
                    }
                    ProxyError::PlaceholderMisplaced {
                        detail: err.to_string(),
                    }
                }
                SwapError::NoToken { secret } => ProxyError::TokenUnavailable {
                    secret,
                    problem: "no token was fetched".into(),
                },
            };
            let needed = creds
                .to_fetch(parts, &allowed.credentials)
                .map_err(refused)?;
            let tokens = if needed.is_empty() {
                Vec::new()
            } else {
                let (tokens, knows_them) = Box::pin(self.credentials.tokens(
                    &needed,
                    &TokenTransport(&self.pool_h1),
                    Instant::now(),
                ))
                .await
                .map_err(|(secret, err)| ProxyError::TokenUnavailable {
                    secret,
                    problem: err.to_string(),
                })?;
                scrubber = knows_them;
                tokens
            };
            creds
                .swap(parts, &allowed.credentials, &tokens)
                .map_err(refused)?
        };
        if !encoded.is_empty() {
            scrubber = scrubber.with(encoded);
        }
        // A host a rule binds secrets to knows them, and may give them back
        // to this request or, having kept them, to a later one without any,
        // from this agent or another: its answers are scrubbed, and asked
        // for whole and uncompressed so that the scrubber can read them.
        // With no secrets at all, there is nothing to give back. Cheapest
        // first: the store's index of every host a policy has bound secrets
        // to is looked up only when the request's own rule leaves it open.
        let guarded = !scrubber.is_empty()
            && (!injected.is_empty()
                || allowed.binds_secrets_to_host
                || self.policies.holds_secrets(host, ctx.port));
        if guarded {
            creds::ask_for_identity(&mut parts.headers);
            creds::ask_for_whole(&mut parts.headers);
            if creds::is_grpc(&parts.headers) {
                creds::ask_for_uncompressed_messages(&mut parts.headers);
            }
        }
        let bodiless_answer = parts.method == Method::HEAD;
        let sigv4_refused = |problem: creds::SigV4Error| ProxyError::Denied {
            reason: problem.reason(),
            rule: Some(allowed.rule_label.clone()),
        };
        // The key and the payload hash it signs travel together, so a
        // request to re-sign cannot go out signed by the agent alone.
        let signing = match resign {
            None => None,
            Some(resign) => {
                match creds::declared_payload_hash(&parts.headers).map_err(sigv4_refused)? {
                    Some(declared) => Some((resign, declared)),
                    None => {
                        let bytes = match std::mem::replace(outgoing, Outgoing::Sent) {
                            Outgoing::Held(bytes) => bytes,
                            Outgoing::Streamed(body) => {
                                let held =
                                    Box::pin(read(body, &allowed.rule_label, FOR_SIGV4)).await?;
                                held_budget.push(held.budget);
                                held.bytes
                            }
                            // The body goes upstream only below.
                            Outgoing::Sent => Bytes::new(),
                        };
                        let hash = creds::hex_sha256(&bytes);
                        *outgoing = Outgoing::Held(bytes);
                        Some((resign, hash))
                    }
                }
            }
        };
        for name in &injected {
            self.metrics
                .credential_injections
                .with_label_values(&[name])
                .inc();
        }
        record.credentials = injected.clone();

        let agent_h2 = parts.version == Version::HTTP_2;
        let upgrade = parts.version == Version::HTTP_11 && headers::is_upgrade(&parts.headers);
        let agent_upgrade = if upgrade {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        if upgrade && guarded {
            // The scrubber reads WebSocket frames only, and uncompressed.
            if !headers::is_websocket(&parts.headers) {
                return Err(ProxyError::Denied {
                    reason: "upgrade_not_scrubbable",
                    rule: Some(allowed.rule_label.clone()),
                });
            }
            parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        }
        // gRPC asks for trailers with `te: trailers`, the one TE value
        // HTTP/2 allows, and gRPC's C core refuses a call without it.
        let trailers = agent_h2 && headers::asks_for_trailers(&parts.headers);
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        if trailers {
            parts.headers.insert(header::TE, headers::TRAILERS.clone());
        }
        if agent_h2 {
            // Toward an h2 upstream the host travels as :authority, from
            // the URI below; a Host header as well makes servers such as
            // nginx answer 400. If the upstream turns out to speak only
            // HTTP/1.1, hyper writes Host from the URI.
            parts.headers.remove(header::HOST);
        }
        let authority = match &ctx.tls_authority {
            Some(a) => a.clone(),
            None => authority(host, ctx.port).map_err(|_| ProxyError::Denied {
                reason: "invalid_uri",
                rule: None,
            })?,
        };
        // The path as the swap left it (a query credential is in it now);
        // `path`, which the audit record and the policy saw, keeps the
        // placeholder.
        let outgoing_path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| path.clone());
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(if ctx.tls() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        uri.authority = Some(authority);
        uri.path_and_query = Some(outgoing_path);
        parts.uri = Uri::from_parts(uri).map_err(|_| ProxyError::Denied {
            reason: "invalid_uri",
            rule: None,
        })?;
        parts.version = Version::HTTP_11;
        // Last, so that the signature covers the request exactly as sent.
        if let Some((resign, hash)) = &signing {
            creds::resign(parts, &resign.key, &resign.placeholder, hash).map_err(sigv4_refused)?;
        }
        // Most requests (GET) have no body: nothing to count or box.
        let bytes_out = match &*outgoing {
            Outgoing::Streamed(body) if body.is_end_stream() => None,
            Outgoing::Sent => None,
            _ => Some(Arc::new(AtomicU64::new(0))),
        };
        let upstream_body = match (std::mem::replace(outgoing, Outgoing::Sent), &bytes_out) {
            (Outgoing::Held(bytes), Some(tally)) => {
                boxed(Counted::new(Full::new(bytes), tally.clone()))
            }
            (Outgoing::Streamed(body), Some(tally)) => boxed(Counted::new(body, tally.clone())),
            _ => empty(),
        };
        let upstream_req = Request::from_parts(
            std::mem::replace(parts, Request::new(()).into_parts().0),
            upstream_body,
        );

        // The upstream leg speaks the agent's protocol. An HTTP/1.1 agent has
        // one request in flight per connection, so its own pooled
        // connection costs less per request than a stream on a shared h2
        // connection (no hop through the h2 connection's task, no flow
        // control windows on large bodies), and it is what the agent would
        // have used without Airlock.
        let sent = if agent_h2 && !upgrade {
            tokio::time::timeout(
                RESPONSE_HEAD_TIMEOUT,
                self.pools_h2
                    .of(&ctx.agent, Start::over(ctx.tls()))
                    .request(upstream_req),
            )
            .await
            .map(|resp| resp.map_err(|err| error_chain(&err)))
        } else {
            tokio::time::timeout(
                RESPONSE_HEAD_TIMEOUT,
                self.pool_h1.send(&ctx.upstream, upstream_req),
            )
            .await
            .map(|resp| resp.map_err(|err| error_chain(&err)))
        };
        let resp = sent
            .map_err(|_| ProxyError::UpstreamTimeout)?
            .map_err(|reason| ProxyError::Upstream {
                // An HTTP/2 GOAWAY's debug data is the upstream's text, and
                // hyper's error quotes it.
                reason: if guarded {
                    scrubbed_text(&scrubber, reason)
                } else {
                    reason
                },
            })?;
        if upstream::head_size(resp.headers()) > upstream::RESPONSE_HEAD_MAX {
            return Err(ProxyError::Upstream {
                reason: format!(
                    "the response head is larger than {} KiB",
                    upstream::RESPONSE_HEAD_MAX / 1024
                ),
            });
        }
        let answer_has_body =
            !(bodiless_answer || matches!(resp.status().as_u16(), 101 | 204 | 304));
        // An upstream that compressed all the same, in a coding Airlock
        // decodes: the scrubber reads the decoded bytes.
        let decode = if guarded && answer_has_body {
            creds::decodable_coding(resp.headers())
        } else {
            None
        };
        if guarded
            && answer_has_body
            && decode.is_none()
            && let Some(coding) = creds::unreadable_coding(resp.headers())
        {
            if let Some(held_back) = self.warnings.open(&ctx.agent) {
                warn!(agent = %ctx.agent, host, coding = %coding, held_back, "answer in a coding Airlock cannot decode, from a host that holds secrets");
            }
            return Err(ProxyError::Upstream {
                reason: format!(
                    "the upstream compressed its answer ({coding}) though Airlock asked for none; Airlock decodes gzip, deflate, br and zstd, and a body in any other coding cannot be checked for echoed credentials"
                ),
            });
        }
        if guarded && resp.status() == StatusCode::PARTIAL_CONTENT {
            // Airlock sent no Range: a part nobody asked for may be a piece
            // of a kept secret, shorter than the secret.
            if let Some(held_back) = self.warnings.open(&ctx.agent) {
                warn!(agent = %ctx.agent, host, held_back, "partial answer from a host that holds secrets");
            }
            return Err(ProxyError::Upstream {
                reason: "the upstream answered 206 Partial Content though Airlock asked for the whole body; a part of a body cannot be checked for echoed credentials".into(),
            });
        }
        self.metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
        ctx.count_allowed(&self.metrics.requests, host);

        let (mut rparts, rbody) = resp.into_parts();
        let switching = rparts.status == http::StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(agent_side)) = (switching, agent_upgrade)
            && let Some(upstream_side) = rparts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        {
            let scrubber = guarded.then(|| scrubber.clone());
            // A reload that no longer allows the upgrade's request ends the
            // WebSocket too, and the audit log says so under the request's
            // id.
            let this = self.clone();
            let (host, port, method, path) =
                (host.to_owned(), ctx.port, method.to_owned(), path.clone());
            let mut closed = record.clone();
            tokio::spawn(async move {
                let Some(agent) = closed.agent.clone() else {
                    return;
                };
                let revoked = this.policies.revoked(&agent, |policy| {
                    matches!(
                        policy.decide_http(&host, port, &method, path.as_str()),
                        HttpDecision::Allow(_)
                    )
                });
                tokio::select! {
                    unscrubbable = websocket::splice(agent_side, upstream_side, scrubber) => {
                        let Some(problem) = unscrubbable else {
                            return;
                        };
                        // What the upstream sent was withheld: a refusal,
                        // in the audit log as every other is.
                        closed.action = Some(Action::Deny);
                        closed.reason = Some(Cow::Borrowed("frame_not_scrubbable"));
                        closed.status = Some(StatusCode::SWITCHING_PROTOCOLS.as_u16());
                        closed.duration_ms = started.elapsed().as_millis() as u64;
                        this.audit.record(closed);
                        if let Some(held_back) = this.warnings.open(&agent) {
                            warn!(%agent, host, %problem, held_back, "WebSocket connection closed: a frame could not be scrubbed");
                        }
                    }
                    () = revoked => {
                        tracing::info!(%agent, host, "WebSocket closed: the policy no longer allows it");
                        closed.action = Some(Action::Deny);
                        closed.reason = Some(Cow::Borrowed("policy_revoked"));
                        closed.status = Some(StatusCode::SWITCHING_PROTOCOLS.as_u16());
                        closed.duration_ms = started.elapsed().as_millis() as u64;
                        this.audit.record(closed);
                    }
                }
            });
        }
        headers::strip_hop_by_hop(&mut rparts.headers, switching && upgrade);
        let body = if !guarded {
            Either::Left(rbody)
        } else {
            // An HTTP/1.1 reason phrase is the upstream's own text, which
            // hyper would hand on as it came; the status code says it all.
            rparts.extensions.remove::<hyper::ext::ReasonPhrase>();
            for value in rparts.headers.values_mut() {
                if let Some(clean) = scrubber.scrub_header_value(value) {
                    *value = clean;
                }
            }
            // No body should follow a HEAD, 204 or 304, and the length is
            // the resource's, kept. Whatever an upstream sends all the same
            // is scrubbed like any body.
            if !(bodiless_answer || matches!(rparts.status.as_u16(), 204 | 304)) {
                // Scrubbing can change the length.
                rparts.headers.remove(header::CONTENT_LENGTH);
            }
            let readable = match decode {
                Some(coding) => {
                    creds::mark_decoded(&mut rparts.headers);
                    Either::Right(creds::Decoded::new(rbody, coding))
                }
                None => Either::Left(rbody),
            };
            // gRPC's messages carry their lengths, which a placeholder of
            // another length than its secret would make wrong.
            if creds::is_grpc(&rparts.headers) {
                Either::Right(Either::Right(creds::GrpcScrubBody::new(
                    readable,
                    &scrubber,
                    whole_body::try_hold,
                )))
            } else {
                Either::Right(Either::Left(scrubber.wrap(readable)))
            }
        };
        rparts
            .headers
            .insert(REQUEST_ID_HEADER, record.request_id.header_value());
        record.action = Some(action);
        record.status = Some(rparts.status.as_u16());
        let done = AuditWhenDone {
            intercept: self.clone(),
            record: std::mem::take(record),
            bytes_out,
            started,
        };
        let body = boxed(Counted::new(body, Report::new(done)));
        Ok(Response::from_parts(rparts, body))
    }
}

/// `text` with the secrets `scrubber` knows replaced by their placeholders.
fn scrubbed_text(scrubber: &creds::Scrubber, text: String) -> String {
    match scrubber.scrub_bytes(text.as_bytes()) {
        Some(clean) => String::from_utf8_lossy(&clean).into_owned(),
        None => text,
    }
}

/// What goes upstream: the agent's body as it streams, or a body read
/// whole before a human approved it; Sent once it is on its way.
enum Outgoing {
    Streamed(AgentBody),
    Held(Bytes),
    Sent,
}

fn read(
    body: AgentBody,
    rule: &str,
    limits: WholeBody,
) -> impl Future<Output = Result<Held, ProxyError>> {
    whole_body::read_whole(body, rule, limits, &whole_body::BUDGET)
}

/// Writes the request's audit record when the response body is finished
/// (or abandoned), with the bytes that really moved.
struct AuditWhenDone {
    /// For its audit log: one reference count, where a clone of the log's
    /// handle is six.
    intercept: Arc<Intercept>,
    record: AuditRecord,
    /// None when the request had no body.
    bytes_out: Option<Arc<AtomicU64>>,
    started: Instant,
}

impl OnDone for AuditWhenDone {
    fn done(self, bytes_in: u64) {
        let mut record = self.record;
        record.bytes_in = bytes_in;
        record.bytes_out = self
            .bytes_out
            .map_or(0, |tally| tally.load(Ordering::Relaxed));
        record.duration_ms = self.started.elapsed().as_millis() as u64;
        self.intercept.audit.record(record);
    }
}

#[cfg(test)]
mod tests {
    use super::{normalize_host, scrubbed_text};
    use crate::{creds::Scrubber, secret::Secret};

    #[test]
    fn an_upstream_error_quoting_a_secret_is_scrubbed() {
        let scrubber = Scrubber::new(vec![(
            Secret::new(b"test-value-0123456789abcdef".to_vec()),
            b"airlock-ph-key".to_vec(),
        )]);
        // As hyper words an HTTP/2 GOAWAY that carries debug data.
        let text = "connection error received: not a result of an error (b\"token test-value-0123456789abcdef\")";
        assert_eq!(
            scrubbed_text(&scrubber, text.to_owned()),
            "connection error received: not a result of an error (b\"token airlock-ph-key\")"
        );
        assert_eq!(scrubbed_text(&scrubber, "clean".to_owned()), "clean");
    }

    #[test]
    fn host_headers_normalize_to_bare_lower_case_names() {
        assert_eq!(normalize_host("API.Example.test:443"), "api.example.test");
        assert_eq!(normalize_host("api.example.test."), "api.example.test");
        assert_eq!(normalize_host("[::1]:8443"), "::1");
        assert_eq!(normalize_host("::1"), "::1");
        assert_eq!(normalize_host("127.0.0.1"), "127.0.0.1");
    }
}

//! One request from an agent, stage by stage: `handle` checks the host;
//! `admit` asks the policy and applies its rate limit; `approval` waits
//! for a human where the rule asks for one; `swap` puts secrets in place
//! of placeholders; `outbound` makes the upstream request and sends it;
//! `answer` vets and scrubs what comes back (`upgrade` for a WebSocket;
//! `early_answer` for one that comes while an HTTP/2 agent still uploads);
//! and the audit record is written when the answer's body is done.

mod admit;
mod answer;
mod approval;
mod outbound;
mod swap;
mod upgrade;

use std::{
    borrow::Cow,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{
    HeaderName, Method, Request, Response, StatusCode, Version, header,
    uri::{Authority, PathAndQuery},
};
use http_body::Body as _;
use http_body_util::Either;
use hyper::body::Incoming;

use self::{outbound::Outbound, swap::Swap, upgrade::UpgradeAsked};
use super::{
    Intercept,
    agent_body::AgentBody,
    body::{Counted, OnDone, ProxyBody, Report, Upload, boxed},
    body_claims::Judged,
    early_answer,
    h1_pool::Slot,
    headers,
    last_decision::LastDecision,
    orig_dst::Origin,
    rescue::{Asked, ProxyError},
    whole_body::{self, Held, WholeBody},
};
use crate::{
    audit::{Action, AuditRecord},
    creds,
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
    fn count_allowed(&self, metrics: &crate::metrics::Metrics, host: &str) {
        if let Some((first, counter)) = self.allowed.get()
            && **first == *host
        {
            counter.inc();
            return;
        }
        let counter = metrics.request_counter(&self.agent, host, "allow");
        counter.inc();
        let _ = self.allowed.set((host.into(), counter));
    }

    fn tls(&self) -> bool {
        self.tls_host.is_some()
    }
}

/// Where requests for `host` go: `host:port`, `[v6]:port`.
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
/// trailing dot, lower case. Borrowed when it is already so. `None` when
/// what follows the name is not a port (`a.example:@b.example`,
/// `[::1]x`): a front end that parses the authority otherwise may route
/// the request to a server the policy never saw named.
fn normalize_host(h: &str) -> Option<Cow<'_, str>> {
    let h = h.trim();
    let (name, port) = match h.strip_prefix('[') {
        Some(rest) => match rest.split_once(']')? {
            (inside, "") => (inside, ""),
            (inside, after) => (inside, after.strip_prefix(':')?),
        },
        None if h.matches(':').count() == 1 => h.split_once(':')?,
        // A name, or a bare IPv6 address.
        None => (h, ""),
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let name = name.trim_end_matches('.');
    Some(if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
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
            let named = first
                .and_then(|v| v.to_str().ok())
                .or_else(|| parts.uri.authority().map(|a| a.as_str()))
                .map(normalize_host);
            let unreadable = hosts.next().is_some()
                || first.is_some_and(|v| v.to_str().is_err())
                || matches!(named, Some(None));
            let named = named.flatten();
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
                    .request_counter(&ctx.agent, &host, err.decision())
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
                // Like an early answer (`early_answer`), a refusal reaches
                // an HTTP/2 agent still uploading once it has sent all it
                // declared: curl ends its stream short at an error's head,
                // and the stream's reset would lose the JSON.
                if parts.version == Version::HTTP_2
                    && let Outgoing::Streamed(body) = &mut outgoing
                    && let Some(sent) = body.until_sent()
                {
                    // Dropped, the body is read to its end in a task of its own.
                    drop(std::mem::replace(&mut outgoing, Outgoing::Sent));
                    let _ = Box::pin(tokio::time::timeout(early_answer::GATHER_TIME, sent)).await;
                }
                resp
            }
        }
    }

    /// The request's stages, in order; each is in the submodule of its
    /// name. The awaits off the common path (a body read whole, a human's
    /// answer, a token fetch) are boxed: their futures would otherwise sit
    /// inside every request's future, which was 5 KB and is copied as it
    /// is built; boxed, it is 2.8 KB.
    #[allow(clippy::too_many_arguments)]
    async fn pipeline(
        self: Arc<Self>,
        ctx: &ConnCtx,
        host: &Arc<str>,
        method: &str,
        path: &PathAndQuery,
        parts: &mut http::request::Parts,
        outgoing: &mut Outgoing,
        record: &mut AuditRecord,
        started: Instant,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let admit::Admitted {
            allowed,
            mut body_check,
            claimed,
        } = self.admit(ctx, host, method, path, parts, record)?;
        record.rule = Some(allowed.rule_label.clone());
        // An answer that comes while an HTTP/2 agent still uploads waits
        // for the upload (`early_answer`).
        let agent_sent = match outgoing {
            Outgoing::Streamed(body) if parts.version == Version::HTTP_2 => body.until_sent(),
            _ => None,
        };
        // A body read whole (for a human, or a signature) is read for
        // claims then: if the request is refused from there on, for a
        // claim or not, its record lists them still.
        let body_claims = body_check.as_ref().map(|check| check.judged());
        let note_body_claims = |record: &mut AuditRecord| {
            if let Some(judged) = &body_claims {
                record.note_claims(judged.claims());
            }
        };
        // The budget taken by a body read whole, given back when this
        // function returns: the request has gone upstream by then.
        let mut held_budget = Vec::new();
        let action = if allowed.approval {
            Box::pin(self.approval(
                ctx,
                (host, method, path),
                &allowed,
                (claimed, body_check.as_deref()),
                outgoing,
                &mut held_budget,
            ))
            .await
            .inspect_err(|_| note_body_claims(record))?
        } else {
            Action::Allow
        };
        let swapped = self
            .swap(
                ctx,
                host,
                parts,
                outgoing,
                &allowed,
                started,
                &mut held_budget,
            )
            .await
            .inspect_err(|_| note_body_claims(record))?;
        for name in &swapped.injected {
            self.metrics
                .credential_injections
                .with_label_values(&[name])
                .inc();
        }
        let Swap {
            injected,
            signing,
            scrubber,
            scrub_seen,
            guarded,
        } = swapped;
        if let Some(check) = body_check.as_mut() {
            check.grant(action == Action::Approve, injected.clone());
        }
        record.credentials = injected;

        let agent_h2 = parts.version == Version::HTTP_2;
        let bodiless_answer = parts.method == Method::HEAD;
        let upgrade = parts.version == Version::HTTP_11 && headers::is_upgrade(&parts.headers);
        let (agent_upgrade, upgrade_asked) = if upgrade {
            (
                parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
                Some(UpgradeAsked::of(&parts.headers)),
            )
        } else {
            (None, None)
        };
        let Outbound {
            request,
            upload,
            judged,
        } = outbound::build(
            ctx,
            host,
            parts,
            outgoing,
            &allowed.rule_label,
            signing,
            guarded,
            agent_h2,
            upgrade,
            body_check,
        )
        .inspect_err(|_| note_body_claims(record))?;
        let resp = self
            .send(
                ctx,
                request,
                agent_h2 && !upgrade,
                guarded.then_some(&scrubber),
            )
            .await;
        let resp = match resp {
            Ok(resp) => resp,
            Err(err) => {
                let Some(judged) = &judged else {
                    return Err(err);
                };
                record.note_claims(judged.claims());
                // The upstream request failed because its body claimed a
                // method the policy refuses: that is the answer.
                return Err(match judged.refused.get() {
                    Some(refusal) => refusal.clone().into(),
                    None => err,
                });
            }
        };
        let decode = self.vet(ctx, host, &resp, bodiless_answer, guarded)?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(problem) = match &upgrade_asked {
                Some(asked) => asked.unanswered(resp.headers()),
                None => Some("the upstream switched protocols, which the agent did not ask for"),
            }
        {
            return Err(ProxyError::Upstream {
                reason: problem.to_owned(),
            });
        }
        self.metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
        ctx.count_allowed(&self.metrics, host);

        let (mut rparts, rbody) = resp.into_parts();
        let switching = rparts.status == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(agent_side)) = (switching, agent_upgrade)
            && let Some(upstream_side) = rparts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        {
            self.clone().splice_upgrade(
                agent_side,
                upstream_side,
                guarded.then(|| (scrubber.clone(), self.follow_secrets(scrub_seen))),
                record.clone(),
                started,
            );
        }
        headers::strip_hop_by_hop(&mut rparts.headers, switching && upgrade);
        let gather = agent_h2
            && upload.as_ref().is_some_and(|u| !u.ended())
            && early_answer::worth_gathering(&rbody.size_hint());
        let mut withheld = None;
        let body = if guarded {
            let noted = answer::Withheld::default();
            withheld = Some(noted.clone());
            Either::Right(answer::scrubbed(
                &mut rparts,
                rbody,
                &scrubber,
                self.follow_secrets(scrub_seen),
                decode,
                bodiless_answer,
                noted,
            ))
        } else {
            Either::Left(rbody)
        };
        let body = if gather {
            Either::Right(
                Box::pin(early_answer::gather(
                    Box::pin(body),
                    early_answer::GATHER_TIME,
                    agent_sent,
                ))
                .await,
            )
        } else {
            Either::Left(body)
        };
        rparts
            .headers
            .insert(REQUEST_ID_HEADER, record.request_id.header_value());
        record.action = Some(action);
        record.status = Some(rparts.status.as_u16());
        let done = AuditWhenDone {
            intercept: self.clone(),
            record: std::mem::take(record),
            upload,
            judged,
            withheld,
            started,
        };
        let body = boxed(Counted::new(body, Report::new(done)));
        Ok(Response::from_parts(rparts, body))
    }
}

impl Intercept {
    /// A streamed answer's link to the credentials, from the generation
    /// its request's scrubber was taken at.
    fn follow_secrets(&self, seen: u64) -> creds::Follow {
        creds::Follow::new(self.credentials.clone(), seen)
    }
}

/// `text` with the secrets `scrubber` knows replaced by their placeholders,
/// and cut where it may end inside one.
fn scrubbed_text(scrubber: &creds::Scrubber, text: String) -> String {
    match scrubber.scrub_final(text.as_bytes()) {
        Some(clean) => String::from_utf8_lossy(&clean).into_owned(),
        None => text,
    }
}

/// What goes upstream: the agent's body as it streams, or the body read
/// whole (for a human to approve, or for a SigV4 payload hash); Sent once
/// it is on its way.
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
    upload: Option<Arc<Upload>>,
    /// What its body claimed, when it was read for claims.
    judged: Option<Arc<Judged>>,
    /// Whether the scrubber ended the answer early; None when the answer
    /// was not scrubbed.
    withheld: Option<answer::Withheld>,
    started: Instant,
}

impl OnDone for AuditWhenDone {
    fn done(self, bytes_in: u64) {
        let mut record = self.record;
        record.bytes_in = bytes_in;
        record.bytes_out = self.upload.map_or(0, |tally| tally.bytes());
        record.duration_ms = self.started.elapsed().as_millis() as u64;
        if let Some(judged) = &self.judged {
            record.note_claims(judged.claims());
        }
        if self.withheld.is_some_and(|w| w.happened()) {
            // What the upstream sent was withheld: a refusal, in the
            // audit log as every other is.
            record.action = Some(Action::Deny);
            record.reason = Some(Cow::Borrowed("answer_not_scrubbable"));
            if let Some(agent) = &record.agent
                && let Some(held_back) = self.intercept.warnings.open(agent)
            {
                tracing::warn!(%agent, host = &*record.host, held_back, "answer ended early: its end could not be scrubbed");
            }
        }
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
        let normal = |h| normalize_host(h).map(std::borrow::Cow::into_owned);
        assert_eq!(normal("API.Example.test:443").unwrap(), "api.example.test");
        assert_eq!(normal("api.example.test.").unwrap(), "api.example.test");
        assert_eq!(normal("api.example.test.:443").unwrap(), "api.example.test");
        assert_eq!(normal("api.example.test:").unwrap(), "api.example.test");
        assert_eq!(normal("[::1]:8443").unwrap(), "::1");
        assert_eq!(normal("[::1]").unwrap(), "::1");
        assert_eq!(normal("::1").unwrap(), "::1");
        assert_eq!(normal("127.0.0.1").unwrap(), "127.0.0.1");
    }

    /// What follows the name must be a port, or the header names no host
    /// Airlock can stand by: the request is refused as a mismatch.
    #[test]
    fn a_host_header_with_more_than_a_port_after_the_name_names_none() {
        for odd in [
            "api.example.test:@evil.example",
            "api.example.test:443@evil.example",
            "api.example.test:44x",
            "[::1]evil.example",
            "[::1]:443x",
            "[::1",
        ] {
            assert_eq!(normalize_host(odd), None, "{odd}");
        }
    }
}

//! A request body read for the methods it claims as it goes upstream,
//! piece by piece. Until every claim has passed the policy, the upstream
//! does not get the body's end: the last piece, where the body's length
//! says which it is, is held back; otherwise what marks the end (HTTP/2's
//! END_STREAM, the last chunk of a chunked body) is only written once the
//! body ends here. A claim the policy refuses ends the body with an error
//! instead, so the upstream never has it whole, and the refusal is left
//! for the request's stage to answer with.

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http_body::{Body, Frame, SizeHint};

use super::{BodyKind, Scanner};
use crate::{
    policy::{Allowed, HttpDecision, Policy, RuleId},
    proxy::{body::BoxError, rescue::ProxyError},
    ratelimit::RateLimiter,
};

/// Why a claim was refused, as the policy gave it.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The method claimed, as read: at most 64 bytes, or `(unreadable)`.
    pub claimed: String,
    pub reason: &'static str,
    pub rule: Option<Arc<str>>,
    /// Set when the claimed method's rule is over its rate limit.
    pub retry_after: Option<Duration>,
}

/// What a body was found to claim once it had ended, and the claim
/// refused, if one was: the request's stage answers with the refusal, and
/// its audit record lists the claims.
#[derive(Debug, Default)]
pub struct Judged {
    pub claims: OnceLock<Vec<String>>,
    pub refused: OnceLock<Refusal>,
}

impl Judged {
    /// Judged already: a body read whole.
    fn of(claims: Vec<String>) -> Arc<Judged> {
        let judged = Judged::default();
        if !claims.is_empty() {
            let _ = judged.claims.set(claims);
        }
        Arc::new(judged)
    }

    /// The methods claimed, as far as the body was read.
    pub fn claims(&self) -> &[String] {
        self.claims.get().map_or(&[], Vec::as_slice)
    }
}

/// A claim whose rule wants a human's approval that the request did not
/// get: its own rule did not ask for one.
pub const NEEDS_APPROVAL: &str = "claim_needs_approval";

impl From<Refusal> for ProxyError {
    fn from(refusal: Refusal) -> ProxyError {
        match (refusal.retry_after, refusal.rule) {
            (Some(retry_after), Some(rule)) => ProxyError::RateLimited { rule, retry_after },
            (_, rule) => ProxyError::ClaimDenied {
                claimed: refusal.claimed,
                reason: refusal.reason,
                rule,
            },
        }
    }
}

/// The request a body's claims are decided for.
pub struct Check {
    kind: BodyKind,
    policy: Arc<Policy>,
    host: Arc<str>,
    port: u16,
    path: PathAndQuery,
    limiter: Arc<RateLimiter>,
    agent: Arc<str>,
    granted: Granted,
    /// What the body was found to claim, however it was read.
    judged: Arc<Judged>,
}

/// What the request was let do before its body was read: a claim's rule
/// must allow no less.
#[derive(Default)]
struct Granted {
    /// Its own rule and those of the methods its headers claim, whose rate
    /// limits were charged already.
    charged: Vec<RuleId>,
    approved: bool,
    /// The secrets swapped into it.
    injected: Vec<String>,
}

impl Check {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: BodyKind,
        policy: Arc<Policy>,
        host: Arc<str>,
        port: u16,
        path: PathAndQuery,
        limiter: Arc<RateLimiter>,
        agent: Arc<str>,
        charged: Vec<RuleId>,
    ) -> Check {
        Check {
            kind,
            policy,
            host,
            port,
            path,
            limiter,
            agent,
            granted: Granted {
                charged,
                ..Granted::default()
            },
            judged: Arc::default(),
        }
    }

    /// What the body claims, once it has been read: for the audit record,
    /// whatever became of the request.
    pub fn judged(&self) -> Arc<Judged> {
        self.judged.clone()
    }

    fn found(&self, claims: &[String]) {
        if !claims.is_empty() {
            let _ = self.judged.claims.set(claims.to_vec());
        }
    }

    /// Record what the request got on its way here: a human's approval,
    /// and the secrets swapped into it.
    pub fn grant(&mut self, approved: bool, injected: Vec<String>) {
        self.granted.approved = approved;
        self.granted.injected = injected;
    }

    /// The methods `bytes`, a whole body held for a human, claims: to show
    /// the human, unless the policy refuses one outright, which no human
    /// is asked about.
    pub fn before_approval(&self, bytes: &[u8]) -> Result<Vec<String>, Refusal> {
        let mut scanner = Scanner::new(self.kind.clone());
        scanner.feed(bytes);
        let claims = scanner.finish();
        self.found(&claims);
        for claim in claims.iter().filter(|claim| !claim.is_empty()) {
            if let HttpDecision::Deny(d) =
                self.policy
                    .decide_http(&self.host, self.port, claim, self.path.as_str())
            {
                return Err(Refusal {
                    claimed: claim.clone(),
                    reason: d.reason.as_str(),
                    rule: d.rule_label,
                    retry_after: None,
                });
            }
        }
        Ok(claims)
    }

    /// The first claim the policy refuses, if any.
    fn refusal(&self, claims: &[String]) -> Option<Refusal> {
        let mut charged = self.granted.charged.clone();
        claims
            .iter()
            .filter(|claim| !claim.is_empty())
            .find_map(|claim| {
                match self
                    .policy
                    .decide_http(&self.host, self.port, claim, self.path.as_str())
                {
                    HttpDecision::Deny(d) => Some(Refusal {
                        claimed: claim.clone(),
                        reason: d.reason.as_str(),
                        rule: d.rule_label,
                        retry_after: None,
                    }),
                    HttpDecision::Allow(rule) => self.beyond_grant(claim, &rule, &mut charged),
                }
            })
    }

    /// Whether a claim's rule, which allows it, asks for more than the
    /// request was granted.
    fn beyond_grant(
        &self,
        claim: &str,
        rule: &Allowed,
        charged: &mut Vec<RuleId>,
    ) -> Option<Refusal> {
        let refuse = |reason| {
            Some(Refusal {
                claimed: claim.to_owned(),
                reason,
                rule: Some(rule.rule_label.clone()),
                retry_after: None,
            })
        };
        if rule.approval && !self.granted.approved {
            return refuse(NEEDS_APPROVAL);
        }
        if self
            .granted
            .injected
            .iter()
            .any(|name| !rule.credentials.contains(name))
        {
            return refuse("placeholder_not_allowed");
        }
        if let Some(limit) = rule.rate_limit
            && !charged.contains(&rule.rule)
        {
            charged.push(rule.rule);
            if let Err(retry) =
                self.limiter
                    .check(&self.agent, rule.limit_key, limit.count, limit.per)
            {
                return Some(Refusal {
                    claimed: claim.to_owned(),
                    reason: "rate_limited",
                    rule: Some(rule.rule_label.clone()),
                    retry_after: Some(retry.0),
                });
            }
        }
        None
    }

    /// A body read whole already (for approval, or a SigV4 hash): what it
    /// claims, unless a claim is refused.
    pub fn held(&self, bytes: &[u8]) -> Result<Arc<Judged>, Refusal> {
        let mut scanner = Scanner::new(self.kind.clone());
        scanner.feed(bytes);
        let claims = scanner.finish();
        self.found(&claims);
        match self.refusal(&claims) {
            Some(refusal) => Err(refusal),
            None => Ok(Judged::of(claims)),
        }
    }

    /// `body`, checked as it streams; what it claims, and a refusal, land
    /// in the slots once it has ended.
    pub fn streamed<B>(self, body: B) -> (Checked<B>, Arc<Judged>) {
        let judged = self.judged.clone();
        let checked = Checked {
            inner: body,
            scanner: Some(Scanner::new(self.kind.clone())),
            check: self,
            held: None,
            judged: judged.clone(),
            over: false,
        };
        (checked, judged)
    }
}

pub struct Checked<B> {
    inner: B,
    /// None once the body has ended and been judged.
    scanner: Option<Scanner>,
    check: Check,
    /// The body's last frame, sent once the body has passed.
    held: Option<Frame<Bytes>>,
    judged: Arc<Judged>,
    /// The inner body has ended, or the claims were refused: nothing more
    /// goes on.
    over: bool,
}

/// The error the upstream request ends with when a claim is refused.
#[derive(Debug, thiserror::Error)]
#[error("the request body claims a method the policy refuses")]
pub struct ClaimRefused;

impl<B> Body for Checked<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(scanner) = this.scanner.as_mut() else {
            if let Some(held) = this.held.take() {
                return Poll::Ready(Some(Ok(held)));
            }
            if this.over || this.inner.is_end_stream() {
                this.over = true;
                return Poll::Ready(None);
            }
            // Judged at the last declared byte: what the agent still
            // sends (HTTP/2 trailers, END_STREAM) goes on as it comes.
            let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
            this.over = !matches!(polled, Some(Ok(_)));
            return Poll::Ready(polled.map(|frame| frame.map_err(Into::into)));
        };
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    scanner.feed(data);
                }
                // An HTTP/2 body ends at END_STREAM, which may come later
                // than the last byte its Content-Length declares; an
                // upstream reached over HTTP/1.1 has the whole request
                // with that byte.
                let last = this.inner.is_end_stream() || this.inner.size_hint().exact() == Some(0);
                if !last {
                    return Poll::Ready(Some(Ok(frame)));
                }
                // The body's last piece: it waits for the verdict.
                this.held = Some(frame);
            }
            Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
            None => this.over = true,
        }
        // The body has ended: judged once, then what was held goes on.
        let claims = this.scanner.take().map(Scanner::finish).unwrap_or_default();
        let refusal = this.check.refusal(&claims);
        if !claims.is_empty() {
            let _ = this.judged.claims.set(claims);
        }
        if let Some(refusal) = refusal {
            this.held = None;
            this.over = true;
            let _ = this.judged.refused.set(refusal);
            return Poll::Ready(Some(Err(Box::new(ClaimRefused))));
        }
        Poll::Ready(this.held.take().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.scanner.is_none() && self.held.is_none() && (self.over || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held = self
            .held
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |data| data.len() as u64);
        let inner = if self.scanner.is_some() {
            self.inner.size_hint()
        } else {
            SizeHint::with_exact(0)
        };
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

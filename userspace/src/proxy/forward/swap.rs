//! Placeholders swapped for secrets, on a request its rule allows them
//! on, and what that makes of the answer: whether it must be scrubbed,
//! and, for `aws_sigv4`, the key and payload hash to re-sign with.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use tokio::sync::SemaphorePermit;
use tracing::warn;

use super::{ConnCtx, Outgoing, read};
use crate::{
    creds::{self, Resign, Scrubber, SecretsSource as _, SigV4Error, SwapError, Swapped},
    policy::Allowed,
    proxy::{Intercept, rescue::ProxyError, upstream::TokenTransport, whole_body::FOR_SIGV4},
};

/// What the swap left for the rest of the request.
pub(super) struct Swap {
    /// Names of the secrets swapped in, unique and sorted.
    pub injected: Vec<String>,
    /// The real key and the payload hash it signs, for a request to
    /// re-sign once it is final.
    pub signing: Option<(Resign, String)>,
    /// Every secret an answer could give back, with what replaces it.
    pub scrubber: Scrubber,
    /// The credentials' scrubber generation read before `scrubber` was
    /// taken: a streamed answer catches up with what came after.
    pub scrub_seen: u64,
    /// The answer comes from a host that may know secrets: it is asked
    /// for whole and uncompressed, and scrubbed.
    pub guarded: bool,
}

/// A request refused for how it would have to be signed.
pub(super) fn sigv4_refused(problem: SigV4Error, rule: &Arc<str>) -> ProxyError {
    ProxyError::Denied {
        reason: problem.reason(),
        rule: Some(rule.clone()),
    }
}

impl Intercept {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn swap(
        &self,
        ctx: &ConnCtx,
        host: &str,
        parts: &mut http::request::Parts,
        outgoing: &mut Outgoing,
        allowed: &Allowed,
        started: Instant,
        held_budget: &mut Vec<Option<SemaphorePermit<'static>>>,
    ) -> Result<Swap, ProxyError> {
        let scrub_seen = self.credentials.generation();
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
            let refused = |err| self.refused(ctx, host, allowed, err);
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
        // A token endpoint, sent a client secret by Airlock itself or
        // handing out tokens, is such a host too.
        let guarded = !scrubber.is_empty()
            && (!injected.is_empty()
                || allowed.binds_secrets_to_host
                || self.policies.holds_secrets(host, ctx.port)
                || creds.is_token_endpoint(host, ctx.port));
        if guarded {
            creds::ask_for_identity(&mut parts.headers);
            creds::ask_for_whole(&mut parts.headers);
            if creds::is_grpc(&parts.headers) {
                creds::ask_for_uncompressed_messages(&mut parts.headers);
            }
        }
        // The key and the payload hash it signs travel together, so a
        // request to re-sign cannot go out signed by the agent alone.
        let signing = match resign {
            None => None,
            Some(resign) => match creds::declared_payload_hash(&parts.headers)
                .map_err(|p| sigv4_refused(p, &allowed.rule_label))?
            {
                Some(declared) => Some((resign, declared)),
                None => {
                    let bytes = match std::mem::replace(outgoing, Outgoing::Sent) {
                        Outgoing::Held(bytes) => bytes,
                        Outgoing::Streamed(body) => {
                            let held = Box::pin(read(body, &allowed.rule_label, FOR_SIGV4)).await?;
                            held_budget.push(held.budget);
                            held.bytes
                        }
                        // The body goes upstream only later.
                        Outgoing::Sent => Bytes::new(),
                    };
                    let hash = creds::hex_sha256(&bytes);
                    *outgoing = Outgoing::Held(bytes);
                    Some((resign, hash))
                }
            },
        };
        Ok(Swap {
            injected,
            signing,
            scrubber,
            scrub_seen,
            guarded,
        })
    }

    /// The answer to a placeholder that may not be swapped here, with a
    /// warning (at most one a second for the agent) where it looks like
    /// an attempt to send a secret somewhere else.
    fn refused(&self, ctx: &ConnCtx, host: &str, allowed: &Allowed, err: SwapError) -> ProxyError {
        match err {
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
        }
    }
}

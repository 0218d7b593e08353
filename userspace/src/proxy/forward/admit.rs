//! Whether the policy lets a request through: the rule it falls under,
//! the methods it claims besides its own (`method_claims`; its body's,
//! `body_claims`, are checked as it streams), and the rules' rate limits.
//! A claimed method's rule also narrows what the request may do (a human's
//! approval, the secrets it may carry): a server that honours the claim
//! acts as that method.

use std::sync::Arc;

use http::{request::Parts, uri::PathAndQuery};

use super::ConnCtx;
use crate::{
    audit::AuditRecord,
    policy::{Allowed, HttpDecision},
    proxy::{
        Intercept,
        body_claims::{BodyKind, Check},
        method_claims,
        rescue::ProxyError,
    },
};

/// A request the policy lets through, and the check its body's claims
/// must pass on the way, where they could change the decision.
pub(super) struct Admitted {
    pub allowed: Allowed,
    pub body_check: Option<Box<Check>>,
    /// The methods its headers and query claim besides its own, for the
    /// human asked to approve it.
    pub claimed: Vec<String>,
}

impl Intercept {
    /// The allow rule the request falls under, or why it is refused.
    pub(super) fn admit(
        &self,
        ctx: &ConnCtx,
        host: &Arc<str>,
        method: &str,
        path: &PathAndQuery,
        parts: &Parts,
        record: &mut AuditRecord,
    ) -> Result<Admitted, ProxyError> {
        let headers = &parts.headers;
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
        let mut allowed = allowed;
        let claims = method_claims::claimed(headers, path.query());
        let mut claimed_methods: Vec<String> = Vec::new();
        for claimed in &claims {
            if !claimed_methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(claimed))
            {
                claimed_methods.push(claimed.to_string());
            }
        }
        // In the record whatever is decided: a refusal for a method the
        // request does not name reads as nonsense without them.
        if !claimed_methods.is_empty() {
            record.claimed_methods = claimed_methods.clone();
        }
        let mut claimed_rules: Vec<Allowed> = Vec::new();
        for claimed in &claims {
            match policy.decide_http(host, ctx.port, claimed, path.as_str()) {
                HttpDecision::Deny(d) => {
                    return Err(ProxyError::ClaimDenied {
                        claimed: claimed.to_string(),
                        reason: d.reason.as_str(),
                        rule: d.rule_label,
                    });
                }
                HttpDecision::Allow(rule) => claimed_rules.push(rule),
            }
        }
        for rule in &claimed_rules {
            allowed.narrow_to(rule);
        }
        // Each rule the request falls under is charged once: its own, and
        // those of the methods it claims.
        let under = || std::iter::once(&allowed).chain(&claimed_rules);
        for (i, rule) in under().enumerate() {
            let Some(limit) = rule.rate_limit else {
                continue;
            };
            if under().take(i).any(|earlier| earlier.rule == rule.rule) {
                continue;
            }
            self.limiter
                .check(&ctx.agent, rule.limit_key, limit.count, limit.per)
                .map_err(|retry| ProxyError::RateLimited {
                    rule: rule.rule_label.clone(),
                    retry_after: retry.0,
                })?;
        }
        // Only a POST's body is read for claims, and only where the host's
        // rules name methods could one change the decision. Boxed: it is
        // rare, and the request's future carries it across every await.
        let body_check = BodyKind::of(&parts.method, headers)
            .filter(|_| policy.decides_by_method(host, ctx.port))
            .map(|kind| {
                Box::new(Check::new(
                    kind,
                    policy.clone(),
                    host.clone(),
                    ctx.port,
                    path.clone(),
                    self.limiter.clone(),
                    ctx.agent.clone(),
                    // Charged above.
                    under().map(|r| r.rule).collect(),
                ))
            });
        Ok(Admitted {
            allowed,
            body_check,
            claimed: claimed_methods,
        })
    }
}

//! Whether the policy lets a request through: the rule it falls under,
//! the methods it claims besides its own (`method_claims`; its body's,
//! `body_claims`, are checked as it streams), and the rule's rate limit.

use std::sync::Arc;

use http::{request::Parts, uri::PathAndQuery};

use super::ConnCtx;
use crate::{
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
        for claimed in method_claims::claimed(headers, path.query()) {
            if let HttpDecision::Deny(d) =
                policy.decide_http(host, ctx.port, &claimed, path.as_str())
            {
                return Err(ProxyError::Denied {
                    reason: d.reason.as_str(),
                    rule: d.rule_label,
                });
            }
        }
        if let Some(limit) = &allowed.rate_limit {
            self.limiter
                .check(&ctx.agent, allowed.rule.0, limit.count, limit.per)
                .map_err(|retry| ProxyError::RateLimited {
                    rule: allowed.rule_label.clone(),
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
                ))
            });
        Ok(Admitted {
            allowed,
            body_check,
        })
    }
}

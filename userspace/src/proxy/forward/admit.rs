//! Whether the policy lets a request through: the rule it falls under,
//! the methods it claims besides its own (`method_claims`), and the
//! rule's rate limit.

use http::{HeaderMap, uri::PathAndQuery};

use super::ConnCtx;
use crate::{
    policy::{Allowed, HttpDecision},
    proxy::{Intercept, method_claims, rescue::ProxyError},
};

impl Intercept {
    /// The allow rule the request falls under, or why it is refused.
    pub(super) fn admit(
        &self,
        ctx: &ConnCtx,
        host: &str,
        method: &str,
        path: &PathAndQuery,
        headers: &HeaderMap,
    ) -> Result<Allowed, ProxyError> {
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
        Ok(allowed)
    }
}

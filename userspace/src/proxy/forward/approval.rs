//! A rule with `approval: true`: the request waits, its body read whole
//! so that the human approves the bytes that will go, until someone
//! answers with `airlock approvals approve` or `deny`, or the wait ends.

use std::time::{SystemTime, UNIX_EPOCH};

use http::uri::PathAndQuery;
use tokio::sync::SemaphorePermit;

use super::{ConnCtx, Outgoing, read};
use crate::{
    approvals::{Approvals, PendingRequest, Verdict},
    audit::Action,
    policy::Allowed,
    proxy::{Intercept, body_claims::Check, rescue::ProxyError, whole_body::FOR_APPROVAL},
};

impl Intercept {
    /// Holds the request's body and waits for the human's verdict. The
    /// human is shown every method the request claims besides its own
    /// (`claimed`, from its headers and query, and those its body claims,
    /// read by `body_check`): a server that honours a claim acts on it.
    pub(super) async fn approval(
        &self,
        ctx: &ConnCtx,
        (host, method, path): (&str, &str, &PathAndQuery),
        allowed: &Allowed,
        (mut claimed, body_check): (Vec<String>, Option<&Check>),
        outgoing: &mut Outgoing,
        held_budget: &mut Vec<Option<SemaphorePermit<'static>>>,
    ) -> Result<Action, ProxyError> {
        if let Outgoing::Streamed(body) = std::mem::replace(outgoing, Outgoing::Sent) {
            let held = read(body, &allowed.rule_label, FOR_APPROVAL).await?;
            held_budget.push(held.budget);
            *outgoing = Outgoing::Held(held.bytes);
        }
        let body_digest = match &*outgoing {
            Outgoing::Held(held) => Some(PendingRequest::digest_body(held)),
            _ => None,
        };
        if let (Some(check), Outgoing::Held(held)) = (body_check, &*outgoing) {
            for claim in check.before_approval(held)? {
                if !claim.is_empty() && !claimed.iter().any(|c| c.eq_ignore_ascii_case(&claim)) {
                    claimed.push(claim);
                }
            }
        }
        let pending = PendingRequest {
            id: Approvals::new_id(),
            agent: ctx.agent.to_string(),
            method: method.to_owned(),
            host: host.to_owned(),
            path: path.as_str().to_owned(),
            body_digest,
            claimed_methods: claimed,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            rule: allowed.rule_label.to_string(),
        };
        self.metrics.approvals_pending.inc();
        let verdict = self.approvals.request(pending).await;
        self.metrics.approvals_pending.dec();
        match verdict {
            Verdict::Approved => Ok(Action::Approve),
            Verdict::Denied => Err(ProxyError::ApprovalDenied),
            Verdict::TimedOut => Err(ProxyError::ApprovalTimeout),
        }
    }
}

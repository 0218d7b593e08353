//! A switched connection (a WebSocket): the two sides spliced, frames
//! scrubbed when the host may know secrets, and the splice ended, and
//! audited, when a reload no longer allows the request that opened it or
//! a frame cannot be scrubbed.

use std::{borrow::Cow, sync::Arc, time::Instant};

use http::StatusCode;
use hyper::upgrade::OnUpgrade;
use tracing::warn;

use crate::{
    audit::{Action, AuditRecord},
    creds::{Follow, Scrubber},
    policy::HttpDecision,
    proxy::{Intercept, websocket},
};

impl Intercept {
    /// Splices the agent's side to the upstream's in a task of its own.
    /// `opened` is the audit record of the request that opened it, whose
    /// host, port, method and path the policy is asked again on reloads.
    pub(super) fn splice_upgrade(
        self: Arc<Self>,
        agent_side: OnUpgrade,
        upstream_side: OnUpgrade,
        scrubbing: Option<(Scrubber, Follow)>,
        opened: AuditRecord,
        started: Instant,
    ) {
        tokio::spawn(async move {
            let (Some(agent), Some(method), Some(path)) = (
                opened.agent.clone(),
                opened.method.clone(),
                opened.path.clone(),
            ) else {
                return;
            };
            let (host, port) = (opened.host.clone(), opened.port);
            let revoked = self.policies.revoked(&agent, |policy| {
                matches!(
                    policy.decide_http(&host, port, &method, &path),
                    HttpDecision::Allow(_)
                )
            });
            let mut closed = opened;
            tokio::select! {
                unscrubbable = websocket::splice(agent_side, upstream_side, scrubbing) => {
                    let Some(problem) = unscrubbable else {
                        return;
                    };
                    // What the upstream sent was withheld: a refusal, in
                    // the audit log as every other is.
                    closed.reason = Some(Cow::Borrowed("frame_not_scrubbable"));
                    if let Some(held_back) = self.warnings.open(&agent) {
                        warn!(%agent, host = &*host, %problem, held_back, "WebSocket connection closed: a frame could not be scrubbed");
                    }
                }
                () = revoked => {
                    tracing::info!(%agent, host = &*host, "WebSocket closed: the policy no longer allows it");
                    closed.reason = Some(Cow::Borrowed("policy_revoked"));
                }
            }
            closed.action = Some(Action::Deny);
            closed.status = Some(StatusCode::SWITCHING_PROTOCOLS.as_u16());
            closed.duration_ms = started.elapsed().as_millis() as u64;
            self.audit.record(closed);
        });
    }
}

//! A switched connection (a WebSocket): the upstream's 101 checked
//! against what the agent asked, the two sides spliced, frames scrubbed
//! when the host may know secrets, and the splice ended, and audited, when
//! a reload no longer allows the request that opened it or a frame cannot
//! be scrubbed.

use std::{borrow::Cow, sync::Arc, time::Instant};

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use tracing::warn;

use crate::{
    audit::{Action, AuditRecord},
    creds::{Follow, Scrubber},
    policy::HttpDecision,
    proxy::{Intercept, websocket},
};

/// RFC 6455 §1.3: what a server appends to the agent's key before it
/// hashes it.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What an upstream's 101 must say to be taken for a switch. Once
/// switched, the connection is spliced and no request on it is judged. A
/// 101 from a server that did not switch (an endpoint that answers with
/// any status it is asked for, relayed by a front end that then tunnels)
/// would let the agent's next bytes reach that server as requests of any
/// method and path: WebSocket smuggling. So a WebSocket's 101 must carry
/// the accept value that only a server that read the agent's key can give
/// (RFC 6455 §4.1, what clients check too), and any other upgrade's must
/// name a protocol the agent asked for.
pub(super) enum UpgradeAsked {
    WebSocket { accept: Option<String> },
    Other { protocols: Vec<HeaderValue> },
}

impl UpgradeAsked {
    pub(super) fn of(request: &HeaderMap) -> UpgradeAsked {
        if !crate::proxy::headers::is_websocket(request) {
            return UpgradeAsked::Other {
                protocols: request.get_all(header::UPGRADE).iter().cloned().collect(),
            };
        }
        let accept = request.get(header::SEC_WEBSOCKET_KEY).map(|key| {
            let mut digest = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
            digest.update(key.as_bytes());
            digest.update(WEBSOCKET_GUID);
            base64::engine::general_purpose::STANDARD.encode(digest.finish())
        });
        UpgradeAsked::WebSocket { accept }
    }

    /// Why `response` (a 101's headers) is no answer to what was asked.
    pub(super) fn unanswered(&self, response: &HeaderMap) -> Option<&'static str> {
        let switched_to = |protocol: &[u8]| {
            response
                .get_all(header::UPGRADE)
                .iter()
                .flat_map(|value| value.as_bytes().split(|b| *b == b','))
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(protocol))
        };
        match self {
            UpgradeAsked::WebSocket { accept: None } => Some(
                "the upstream switched protocols for a WebSocket request without a Sec-WebSocket-Key",
            ),
            UpgradeAsked::WebSocket {
                accept: Some(accept),
            } => {
                let accepted = response
                    .get(header::SEC_WEBSOCKET_ACCEPT)
                    .is_some_and(|value| value.as_bytes().trim_ascii() == accept.as_bytes());
                match (switched_to(b"websocket"), accepted) {
                    (true, true) => None,
                    (false, _) => {
                        Some("the upstream's 101 does not name the WebSocket protocol in Upgrade")
                    }
                    (true, false) => Some(
                        "the upstream's 101 does not carry the Sec-WebSocket-Accept value for the agent's key: it did not read the WebSocket handshake",
                    ),
                }
            }
            UpgradeAsked::Other { protocols } => {
                let mut asked = protocols
                    .iter()
                    .flat_map(|value| value.as_bytes().split(|b| *b == b','))
                    .map(<[u8]>::trim_ascii)
                    .filter(|token| !token.is_empty());
                match asked.any(switched_to) {
                    true => None,
                    false => {
                        Some("the upstream's 101 names no protocol the agent asked to upgrade to")
                    }
                }
            }
        }
    }
}

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

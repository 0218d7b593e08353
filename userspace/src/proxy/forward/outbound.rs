//! The request as it goes upstream: an upgrade the scrubber could not
//! follow refused, hop-by-hop headers gone, addressed to the host the
//! policy decided on, re-signed last; then sent on the agent's own
//! upstream connection, in the agent's protocol.

use std::sync::Arc;

use http::{
    Request, Response, Uri, Version, header,
    uri::{self, Scheme},
};
use http_body::Body as _;
use http_body_util::Full;
use hyper::body::Incoming;

use super::{
    ConnCtx, Outgoing, RESPONSE_HEAD_TIMEOUT, authority, scrubbed_text, swap::sigv4_refused,
};
use crate::{
    creds::{self, Resign, Scrubber},
    proxy::{
        Intercept,
        body::{Counted, ProxyBody, Upload, boxed, empty},
        body_claims::{Check, Judged},
        h2_pools::Start,
        headers,
        rescue::ProxyError,
        upstream::error_chain,
    },
};

pub(super) struct Outbound {
    pub request: Request<ProxyBody>,
    /// What of the agent's body went upstream, counted as it goes; None
    /// when there is no body.
    pub upload: Option<Arc<Upload>>,
    /// Where a streamed body's refused claim is left, when it is checked.
    pub judged: Option<Arc<Judged>>,
}

/// The upstream request made of the agent's (`parts` is left empty).
#[allow(clippy::too_many_arguments)]
pub(super) fn build(
    ctx: &ConnCtx,
    host: &str,
    parts: &mut http::request::Parts,
    outgoing: &mut Outgoing,
    rule: &Arc<str>,
    signing: Option<(Resign, String)>,
    guarded: bool,
    agent_h2: bool,
    upgrade: bool,
    body_check: Option<Box<Check>>,
) -> Result<Outbound, ProxyError> {
    if upgrade && guarded {
        // The scrubber reads WebSocket frames only, and uncompressed.
        if !headers::is_websocket(&parts.headers) {
            return Err(ProxyError::Denied {
                reason: "upgrade_not_scrubbable",
                rule: Some(rule.clone()),
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
        None => authority(host, ctx.port).map_err(|_| invalid_uri())?,
    };
    // The path as the swap left it (a query credential is in it now); the
    // audit record and the policy saw the agent's, with the placeholder.
    let outgoing_path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| uri::PathAndQuery::from_static("/"));
    let mut target = uri::Parts::default();
    target.scheme = Some(if ctx.tls() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    });
    target.authority = Some(authority);
    target.path_and_query = Some(outgoing_path);
    parts.uri = Uri::from_parts(target).map_err(|_| invalid_uri())?;
    parts.version = Version::HTTP_11;
    // Last, so that the signature covers the request exactly as sent.
    if let Some((resign, hash)) = &signing {
        creds::resign(parts, &resign.key, &resign.placeholder, hash)
            .map_err(|p| sigv4_refused(p, rule))?;
    }
    // Most requests (GET) have no body: nothing to count or box.
    let upload = match &*outgoing {
        Outgoing::Streamed(body) if body.is_end_stream() => None,
        Outgoing::Sent => None,
        _ => Some(Arc::new(Upload::default())),
    };
    let mut judged = None;
    let body = match (std::mem::replace(outgoing, Outgoing::Sent), &upload) {
        (Outgoing::Held(bytes), Some(tally)) => {
            if let Some(check) = &body_check {
                judged = Some(check.held(&bytes)?);
            }
            boxed(Counted::new(Full::new(bytes), tally.clone()))
        }
        (Outgoing::Streamed(body), Some(tally)) => match body_check {
            Some(check) => {
                let (checked, slot) = (*check).streamed(body);
                judged = Some(slot);
                boxed(Counted::new(checked, tally.clone()))
            }
            None => boxed(Counted::new(body, tally.clone())),
        },
        _ => empty(),
    };
    let request = Request::from_parts(
        std::mem::replace(parts, Request::new(()).into_parts().0),
        body,
    );
    Ok(Outbound {
        request,
        upload,
        judged,
    })
}

fn invalid_uri() -> ProxyError {
    ProxyError::Denied {
        reason: "invalid_uri",
        rule: None,
    }
}

impl Intercept {
    /// Sends `request` and waits for the answer's head. The upstream leg
    /// speaks the agent's protocol. An HTTP/1.1 agent has one request in
    /// flight per connection, so its own pooled connection costs less per
    /// request than a stream on a shared h2 connection (no hop through the
    /// h2 connection's task, no flow control windows on large bodies), and
    /// it is what the agent would have used without Airlock.
    pub(super) async fn send(
        &self,
        ctx: &ConnCtx,
        request: Request<ProxyBody>,
        over_h2: bool,
        scrubber: Option<&Scrubber>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let sent = if over_h2 {
            tokio::time::timeout(
                RESPONSE_HEAD_TIMEOUT,
                self.pools_h2
                    .of(&ctx.agent, Start::over(ctx.tls()))
                    .request(request),
            )
            .await
            .map(|resp| resp.map_err(|err| error_chain(&err)))
        } else {
            tokio::time::timeout(
                RESPONSE_HEAD_TIMEOUT,
                self.pool_h1.send(&ctx.upstream, request),
            )
            .await
            .map(|resp| resp.map_err(|err| error_chain(&err)))
        };
        sent.map_err(|_| ProxyError::UpstreamTimeout)?
            .map_err(|reason| ProxyError::Upstream {
                // An HTTP/2 GOAWAY's debug data is the upstream's text, and
                // hyper's error quotes it.
                reason: match scrubber {
                    Some(scrubber) => scrubbed_text(scrubber, reason),
                    None => reason,
                },
            })
    }
}

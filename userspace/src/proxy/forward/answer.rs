//! The upstream's answer on its way to the agent: refused when it could
//! hide a secret from the scrubber (a head too large, a coding Airlock
//! cannot read, a part of a body), and scrubbed when it comes from a host
//! that may know secrets.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;
use http::{Response, StatusCode, header, response};
use http_body::Body;
use http_body_util::{BodyExt as _, Either};
use hyper::body::Incoming;
use tracing::warn;

use super::ConnCtx;
use crate::{
    creds::{self, Coding, Follow, GrpcScrubError, ScrubBodyError, Scrubber},
    proxy::{Intercept, body::BoxError, rescue::ProxyError, upstream, whole_body},
};

impl Intercept {
    /// Whether the answer may go on, and in which coding its body must be
    /// decoded for the scrubber to read it.
    pub(super) fn vet(
        &self,
        ctx: &ConnCtx,
        host: &str,
        resp: &Response<Incoming>,
        bodiless_answer: bool,
        guarded: bool,
    ) -> Result<Option<Coding>, ProxyError> {
        if upstream::head_size(resp.headers()) > upstream::RESPONSE_HEAD_MAX {
            return Err(ProxyError::Upstream {
                reason: format!(
                    "the response head is larger than {} KiB",
                    upstream::RESPONSE_HEAD_MAX / 1024
                ),
            });
        }
        if !guarded {
            return Ok(None);
        }
        let has_body = !(bodiless_answer || matches!(resp.status().as_u16(), 101 | 204 | 304));
        // An upstream that compressed all the same, in a coding Airlock
        // decodes: the scrubber reads the decoded bytes.
        let decode = if has_body {
            creds::decodable_coding(resp.headers())
        } else {
            None
        };
        if has_body
            && decode.is_none()
            && let Some(coding) = creds::unreadable_coding(resp.headers())
        {
            if let Some(held_back) = self.warnings.open(&ctx.agent) {
                warn!(agent = %ctx.agent, host, coding = %coding, held_back, "answer in a coding Airlock cannot decode, from a host that holds secrets");
            }
            return Err(ProxyError::Upstream {
                reason: format!(
                    "the upstream compressed its answer ({coding}) though Airlock asked for none; Airlock decodes gzip, deflate, br and zstd, and a body in any other coding cannot be checked for echoed credentials"
                ),
            });
        }
        if resp.status() == StatusCode::PARTIAL_CONTENT {
            // Airlock sent no Range: a part nobody asked for may be a piece
            // of a kept secret, shorter than the secret.
            if let Some(held_back) = self.warnings.open(&ctx.agent) {
                warn!(agent = %ctx.agent, host, held_back, "partial answer from a host that holds secrets");
            }
            return Err(ProxyError::Upstream {
                reason: "the upstream answered 206 Partial Content though Airlock asked for the whole body; a part of a body cannot be checked for echoed credentials".into(),
            });
        }
        Ok(decode)
    }
}

/// Set when the scrubber ended an answer early rather than send what it
/// could not scrub (a secret that may have been cut short, a gRPC
/// message it cannot read), for the request's audit record.
#[derive(Clone, Default)]
pub(super) struct Withheld(Arc<AtomicBool>);

impl Withheld {
    pub fn happened(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn note(&self, err: &BoxError) {
        let by_the_scrubber = match err.downcast_ref::<ScrubBodyError>() {
            Some(ScrubBodyError::Upstream(_)) => false,
            Some(_) => true,
            None => err
                .downcast_ref::<GrpcScrubError>()
                .is_some_and(|e| !matches!(e, GrpcScrubError::Upstream(_))),
        };
        if by_the_scrubber {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// The answer's head scrubbed in place, and its body as the scrubber
/// hands it on: decoded first if it came in `decode`. An end withheld is
/// noted in `withheld`.
pub(super) fn scrubbed(
    rparts: &mut response::Parts,
    rbody: Incoming,
    scrubber: &Scrubber,
    follow: Follow,
    decode: Option<Coding>,
    bodiless_answer: bool,
    withheld: Withheld,
) -> impl Body<Data = Bytes, Error = BoxError> + Send + 'static {
    // An HTTP/1.1 reason phrase is the upstream's own text, which
    // hyper would hand on as it came; the status code says it all.
    rparts.extensions.remove::<hyper::ext::ReasonPhrase>();
    for value in rparts.headers.values_mut() {
        if let Some(clean) = scrubber.scrub_header_value(value) {
            *value = clean;
        }
    }
    // No body should follow a HEAD, 204 or 304, and the length is
    // the resource's, kept. Whatever an upstream sends all the same
    // is scrubbed like any body.
    if !(bodiless_answer || matches!(rparts.status.as_u16(), 204 | 304)) {
        // Scrubbing can change the length.
        rparts.headers.remove(header::CONTENT_LENGTH);
    }
    let readable = match decode {
        Some(coding) => {
            creds::mark_decoded(&mut rparts.headers);
            Either::Right(creds::Decoded::new(rbody, coding))
        }
        None => Either::Left(rbody),
    };
    // gRPC's messages carry their lengths, which a placeholder of
    // another length than its secret would make wrong.
    let body = if creds::is_grpc(&rparts.headers) {
        Either::Right(
            creds::GrpcScrubBody::new(readable, scrubber, whole_body::try_hold)
                .following(Some(follow)),
        )
    } else {
        Either::Left(scrubber.wrap(readable).following(Some(follow)))
    };
    body.map_err(move |err: BoxError| {
        withheld.note(&err);
        err
    })
}

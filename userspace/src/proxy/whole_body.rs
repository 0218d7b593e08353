//! Request bodies read whole before they are forwarded: to show a human
//! their digest before approval, or to sign their hash (SigV4). Each is
//! bounded in size and time, and all of them together by one budget, so
//! that many concurrent requests cannot make the daemon hold more memory
//! than [`BUDGET_BYTES`].

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt as _;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::rescue::ProxyError;

/// Bytes held by all bodies read whole at once.
pub const BUDGET_BYTES: usize = 64 << 20;
/// The budget is counted in these units.
const UNIT: usize = 1024;

/// Shared by every connection of the daemon.
pub static BUDGET: Semaphore = Semaphore::const_new(BUDGET_BYTES / UNIT);

/// A share of the budget for `bytes` held at once, or `None` when it is
/// spent: for answers read whole a message at a time (gRPC's, scrubbed).
pub fn try_hold(bytes: usize) -> Option<SemaphorePermit<'static>> {
    let units = u32::try_from(bytes.div_ceil(UNIT)).ok()?;
    BUDGET.try_acquire_many(units).ok()
}

/// Limits for reading a request body whole, and the reasons given when they
/// are passed.
pub struct WholeBody {
    pub max: usize,
    pub timeout: Duration,
    pub too_large: &'static str,
    pub too_slow: &'static str,
}

/// A request held for approval is read whole first, so that the human is
/// shown the digest of exactly the bytes that will be sent. Bigger bodies
/// are refused rather than approved unseen. An agent that stops sending
/// half-way must not pin an approval slot.
pub const FOR_APPROVAL: WholeBody = WholeBody {
    max: 1 << 20,
    timeout: Duration::from_secs(30),
    too_large: "approval_body_too_large",
    too_slow: "approval_body_timeout",
};

/// A SigV4 request without `x-amz-content-sha256` (every AWS service but
/// S3) is signed over its body's hash, so the body is read whole first.
/// These APIs take JSON or form bodies; S3 uploads declare their hash.
pub const FOR_SIGV4: WholeBody = WholeBody {
    max: 8 << 20,
    timeout: Duration::from_secs(30),
    too_large: "aws_sigv4_body_too_large",
    too_slow: "aws_sigv4_body_timeout",
};

/// A body read whole, and its share of the budget, given back when this
/// is dropped (once the request has gone upstream).
pub struct Held {
    pub bytes: Bytes,
    pub budget: Option<SemaphorePermit<'static>>,
}

/// The whole body, within `limits` and what is left of `budget`. When the
/// budget is spent, the request gets a 503 at once rather than waiting:
/// the agent can retry, and no connection sits on a half-read body.
pub async fn read_whole<B>(
    body: B,
    rule: &str,
    limits: WholeBody,
    budget: &'static Semaphore,
) -> Result<Held, ProxyError>
where
    B: Body<Data = Bytes> + Unpin,
{
    let refused = |reason| ProxyError::Denied {
        reason,
        rule: Some(rule.into()),
    };
    let read = async {
        let mut body = body;
        let mut buf = BytesMut::new();
        let mut held: Option<SemaphorePermit<'static>> = None;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Err(refused("request_body_error"));
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let len = buf.len() + data.len();
            if len > limits.max {
                return Err(refused(limits.too_large));
            }
            let units = len.div_ceil(UNIT) as u32;
            let have = held.as_ref().map_or(0, |p| p.num_permits() as u32);
            if units > have {
                let more =
                    budget
                        .try_acquire_many(units - have)
                        .map_err(|_| ProxyError::Overloaded {
                            reason: "body_buffer_full",
                        })?;
                match &mut held {
                    Some(p) => p.merge(more),
                    None => held = Some(more),
                }
            }
            buf.extend_from_slice(&data);
        }
        Ok(Held {
            bytes: buf.freeze(),
            budget: held,
        })
    };
    tokio::time::timeout(limits.timeout, read)
        .await
        .map_err(|_| refused(limits.too_slow))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    fn reason(result: Result<Held, ProxyError>) -> &'static str {
        match result {
            Ok(_) => "read",
            Err(err) => err.reason(),
        }
    }

    #[test]
    fn bodies_held_at_once_share_one_budget_given_back_when_they_go() {
        static SMALL: Semaphore = Semaphore::const_new(3);
        rt().block_on(async {
            let body = |n: usize| Full::new(Bytes::from(vec![b'x'; n]));
            let first = read_whole(body(2 * UNIT), "r", FOR_SIGV4, &SMALL)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(first.bytes.len(), 2 * UNIT);
            assert_eq!(SMALL.available_permits(), 1);
            let second = read_whole(body(UNIT + 1), "r", FOR_SIGV4, &SMALL).await;
            assert_eq!(reason(second), "body_buffer_full");
            assert_eq!(SMALL.available_permits(), 1, "a refused body holds nothing");
            drop(first);
            let third = read_whole(body(3 * UNIT), "r", FOR_SIGV4, &SMALL).await;
            assert_eq!(reason(third), "read");
            assert_eq!(SMALL.available_permits(), 3);
        });
    }

    #[test]
    fn a_body_over_its_limit_is_refused_with_its_reason() {
        static ROOMY: Semaphore = Semaphore::const_new(4096);
        rt().block_on(async {
            let big = Full::new(Bytes::from(vec![b'x'; FOR_APPROVAL.max + 1]));
            let result = read_whole(big, "r", FOR_APPROVAL, &ROOMY).await;
            assert_eq!(reason(result), "approval_body_too_large");
            assert_eq!(ROOMY.available_permits(), 4096);
        });
    }
}

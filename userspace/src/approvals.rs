//! The human-in-the-loop queue: a request under an `approval: true` rule
//! waits here until `airlock approvals approve|deny ID` or the timeout.
//!
//! Each waiting request owns a oneshot channel; the map only holds the
//! sending half. Whoever removes an entry from the map decides its verdict,
//! so a request is answered exactly once.

mod webhook;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use rand::RngCore as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;

use webhook::Webhook;

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("no pending approval with id {id}")]
    NotFound { id: String },
    /// `url` keeps only scheme and host: webhook paths often embed a token.
    #[error("approval webhook {url} is not usable: {reason}")]
    BadWebhook { url: String, reason: &'static str },
    #[error("approval webhook {target}: cannot connect: {source}")]
    WebhookConnect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("approval webhook {target}: HTTP exchange failed: {source}")]
    WebhookHttp {
        target: String,
        #[source]
        source: hyper::Error,
    },
    #[error("approval webhook {target}: cannot build the request: {source}")]
    WebhookRequest {
        target: String,
        #[source]
        source: http::Error,
    },
    #[error("approval webhook {target} answered HTTP {status}")]
    WebhookStatus { target: String, status: u16 },
    #[error("approval webhook {target} did not answer within {timeout:?}")]
    WebhookTimeout { target: String, timeout: Duration },
}

/// What the human sees. Never header values or bodies: a body is known only
/// by its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingRequest {
    pub id: String,
    pub agent: String,
    pub method: String,
    pub host: String,
    pub path: String,
    /// Hex SHA-256 of the request body, when the body was read before asking.
    pub body_digest: Option<String>,
    /// Methods the request claims besides its own (an override header, a
    /// `_method` in its query or body): a server that honours one acts as
    /// that method.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub claimed_methods: Vec<String>,
    pub created_unix: u64,
    pub rule: String,
}

impl PendingRequest {
    /// The `body_digest` of a body.
    pub fn digest_body(body: &[u8]) -> String {
        hex::encode(Sha256::digest(body))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approved,
    Denied,
    TimedOut,
}

pub struct Approvals {
    timeout: Duration,
    webhook: Option<Webhook>,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: HashMap<String, Waiting>,
    /// Insertion order for `list()`; `created_unix` has only 1 s resolution.
    next_seq: u64,
}

struct Waiting {
    seq: u64,
    request: PendingRequest,
    answer: oneshot::Sender<Verdict>,
}

impl Approvals {
    /// `webhook`, if any, must be an `http://host[:port][/path]` URL.
    pub fn new(timeout: Duration, webhook: Option<String>) -> Result<Arc<Self>, ApprovalError> {
        let webhook = webhook.as_deref().map(Webhook::parse).transpose()?;
        Ok(Arc::new(Approvals {
            timeout,
            webhook,
            queue: Mutex::new(Queue::default()),
        }))
    }

    /// A short id that another agent cannot guess (48 random bits).
    pub fn new_id() -> String {
        let mut bytes = [0u8; 6];
        rand::thread_rng().fill_bytes(&mut bytes);
        hex::encode(bytes)
    }

    /// Queues `req` and waits for a human, at most the configured timeout.
    /// If the caller stops waiting (the agent hung up), the entry goes too.
    pub async fn request(&self, req: PendingRequest) -> Verdict {
        let id = req.id.clone();
        let notice = self.webhook.clone().map(|hook| {
            let expires_unix = req.created_unix.saturating_add(ceil_secs(self.timeout));
            (hook, notice_json(&req, expires_unix))
        });
        let (answer, mut verdict) = oneshot::channel();
        let seq = {
            let mut queue = self.lock();
            if queue.waiting.contains_key(&id) {
                // Replacing the entry would strand the first waiter; ids are
                // random, so this is a caller bug and refusing is the safe side.
                tracing::warn!(id = %id, "approval id already pending; denying the duplicate");
                return Verdict::Denied;
            }
            let seq = queue.next_seq;
            queue.next_seq += 1;
            queue.waiting.insert(
                id.clone(),
                Waiting {
                    seq,
                    request: req,
                    answer,
                },
            );
            seq
        };
        let entry = Withdraw {
            approvals: self,
            id: &id,
            seq,
        };

        // Sent only once the entry exists, so a quick human cannot approve an
        // id that is not there yet.
        if let Some((hook, body)) = notice {
            let id = id.clone();
            tokio::spawn(async move {
                if let Err(error) = hook.post(body).await {
                    tracing::warn!(id = %id, %error, "approval webhook notice failed");
                }
            });
        }

        match tokio::time::timeout(self.timeout, &mut verdict).await {
            Ok(Ok(verdict)) => verdict,
            // The sender went without an answer; nothing may pass unapproved.
            Ok(Err(_closed)) => Verdict::Denied,
            Err(_elapsed) => {
                if entry.withdraw() {
                    Verdict::TimedOut
                } else {
                    // A human decided just as the clock ran out: the verdict
                    // was sent under the lock, so it is already there.
                    verdict.try_recv().unwrap_or(Verdict::Denied)
                }
            }
        }
    }

    /// Waiting requests, oldest first.
    pub fn list(&self) -> Vec<PendingRequest> {
        let queue = self.lock();
        let mut waiting: Vec<&Waiting> = queue.waiting.values().collect();
        waiting.sort_by_key(|entry| entry.seq);
        waiting
            .into_iter()
            .map(|entry| entry.request.clone())
            .collect()
    }

    pub fn approve(&self, id: &str) -> Result<(), ApprovalError> {
        self.decide(id, Verdict::Approved)
    }

    pub fn deny(&self, id: &str) -> Result<(), ApprovalError> {
        self.decide(id, Verdict::Denied)
    }

    pub fn pending(&self) -> usize {
        self.lock().waiting.len()
    }

    fn decide(&self, id: &str, verdict: Verdict) -> Result<(), ApprovalError> {
        let mut queue = self.lock();
        let not_found = || ApprovalError::NotFound { id: id.to_owned() };
        let entry = queue.waiting.remove(id).ok_or_else(not_found)?;
        // Sent while still locked: see the timeout branch of `request`.
        entry.answer.send(verdict).map_err(|_| not_found())
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Every critical section is a single map operation, so a panic
        // elsewhere cannot leave the queue half-updated; refusing to go on
        // would strand every waiting agent until its timeout.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes a request's entry when its waiter stops waiting for any reason.
struct Withdraw<'a> {
    approvals: &'a Approvals,
    id: &'a str,
    seq: u64,
}

impl Withdraw<'_> {
    /// True if the entry was still there, i.e. nobody has decided it.
    fn withdraw(&self) -> bool {
        let mut queue = self.approvals.lock();
        // The seq check keeps a late guard from removing a newer entry that
        // reuses the id.
        if queue
            .waiting
            .get(self.id)
            .is_some_and(|w| w.seq == self.seq)
        {
            queue.waiting.remove(self.id);
            true
        } else {
            false
        }
    }
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        self.withdraw();
    }
}

fn notice_json(req: &PendingRequest, expires_unix: u64) -> Vec<u8> {
    serde_json::json!({
        "event": "approval_requested",
        "id": req.id,
        "agent": req.agent,
        "method": req.method,
        "host": req.host,
        "path": req.path,
        "body_digest": req.body_digest,
        "claimed_methods": req.claimed_methods,
        "rule": req.rule,
        "expires_unix": expires_unix,
    })
    .to_string()
    .into_bytes()
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests;

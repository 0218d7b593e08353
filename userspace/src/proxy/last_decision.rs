//! The policy's answer to a connection's last request, kept for its next
//! one: a keep-alive client asks the same thing again and again, and the
//! answer is a pure function of the policy and the request's host, port,
//! method and path. It holds until the policy store reloads; a different
//! request, or any reload, asks the policy again.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::uri::PathAndQuery;

use crate::policy::{HttpDecision, Policy, PolicyStore};

#[derive(Default)]
pub struct LastDecision {
    kept: Mutex<Option<Kept>>,
}

struct Kept {
    /// The store's generation read before `policy` was.
    generation: u64,
    policy: Arc<Policy>,
    host: Box<str>,
    port: u16,
    method: Box<str>,
    /// A copy: the request's own path shares the buffer its head was read
    /// into, and keeping it would keep that buffer allocated for as long
    /// as the connection asks the same thing.
    path: Box<str>,
    decision: HttpDecision,
}

impl Kept {
    fn answers(&self, generation: u64, host: &str, port: u16, method: &str, path: &str) -> bool {
        self.generation == generation
            && self.port == port
            && *self.host == *host
            && *self.method == *method
            && *self.path == *path
    }
}

impl LastDecision {
    /// `agent`'s policy in force and its decision on the request; None
    /// when the agent has no policy.
    pub fn decide(
        &self,
        store: &PolicyStore,
        agent: &str,
        host: &str,
        port: u16,
        method: &str,
        path: &PathAndQuery,
    ) -> Option<(Arc<Policy>, HttpDecision)> {
        // Before the policy: a reload after this read moves it, and the
        // next request asks again.
        let generation = store.generation();
        if let Some(kept) = self.lock().as_ref()
            && kept.answers(generation, host, port, method, path.as_str())
        {
            return Some((kept.policy.clone(), kept.decision.clone()));
        }
        let policy = store.get(agent)?;
        let decision = policy.decide_http(host, port, method, path.as_str());
        *self.lock() = Some(Kept {
            generation,
            policy: policy.clone(),
            host: host.into(),
            port,
            method: method.into(),
            path: path.as_str().into(),
            decision: decision.clone(),
        });
        Some((policy, decision))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Kept>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;

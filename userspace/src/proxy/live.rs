//! The connections each agent holds open right now: for `airlock status`,
//! and to hold each agent to its share (`max_connections_per_agent`). A
//! guard per connection: the count cannot drift, whichever way the
//! connection ends.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
};

pub struct LiveConns {
    by_agent: Mutex<HashMap<Arc<str>, u64>>,
    /// Connections one agent may hold at once.
    limit: u64,
}

/// Counts one connection of `agent` until dropped.
pub struct LiveGuard {
    table: Arc<LiveConns>,
    agent: Arc<str>,
}

impl LiveConns {
    pub fn new(limit: u64) -> Self {
        Self {
            by_agent: Mutex::default(),
            limit,
        }
    }

    /// Counts one more connection of `agent`, unless it holds its limit
    /// already.
    pub fn enter(self: &Arc<Self>, agent: Arc<str>) -> Option<LiveGuard> {
        let mut map = self.lock();
        let n = map.entry(agent.clone()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(LiveGuard {
            table: self.clone(),
            agent,
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Agent -> open connections; agents with none are absent.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.lock()
            .iter()
            .map(|(agent, n)| (agent.to_string(), *n))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u64>> {
        // A counter map has no invariant a panic could break.
        self.by_agent.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut map = self.table.lock();
        if let Some(n) = map.get_mut(&self.agent) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.agent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_guards() {
        let live = Arc::new(LiveConns::new(10));
        let a = live.enter("bot".into()).expect("under the limit");
        let b = live.enter("bot".into()).expect("under the limit");
        let c = live.enter("other".into()).expect("under the limit");
        assert_eq!(live.snapshot().get("bot"), Some(&2));
        drop(a);
        drop(c);
        assert_eq!(live.snapshot().get("bot"), Some(&1));
        assert_eq!(live.snapshot().get("other"), None);
        drop(b);
        assert!(live.snapshot().is_empty());
    }

    #[test]
    fn an_agent_at_its_limit_gets_no_more_until_one_closes() {
        let live = Arc::new(LiveConns::new(2));
        let a = live.enter("bot".into()).expect("first");
        let _b = live.enter("bot".into()).expect("second");
        assert!(
            live.enter("bot".into()).is_none(),
            "a third over a limit of 2"
        );
        assert_eq!(
            live.snapshot().get("bot"),
            Some(&2),
            "a refusal is not counted"
        );
        // Another agent's share is its own.
        let _c = live.enter("other".into()).expect("another agent");
        drop(a);
        assert!(
            live.enter("bot".into()).is_some(),
            "room again after a close"
        );
    }
}

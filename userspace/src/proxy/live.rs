//! The connections each agent holds open right now, for `airlock status`.
//! A guard per connection: the count cannot drift, whichever way the
//! connection ends.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
};

#[derive(Default)]
pub struct LiveConns {
    by_agent: Mutex<HashMap<Arc<str>, u64>>,
}

/// Counts one connection of `agent` until dropped.
pub struct LiveGuard {
    table: Arc<LiveConns>,
    agent: Arc<str>,
}

impl LiveConns {
    pub fn enter(self: &Arc<Self>, agent: Arc<str>) -> LiveGuard {
        *self.lock().entry(agent.clone()).or_insert(0) += 1;
        LiveGuard {
            table: self.clone(),
            agent,
        }
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
        let live = Arc::new(LiveConns::default());
        let a = live.enter("bot".into());
        let b = live.enter("bot".into());
        let c = live.enter("other".into());
        assert_eq!(live.snapshot().get("bot"), Some(&2));
        drop(a);
        drop(c);
        assert_eq!(live.snapshot().get("bot"), Some(&1));
        assert_eq!(live.snapshot().get("other"), None);
        drop(b);
        assert!(live.snapshot().is_empty());
    }
}

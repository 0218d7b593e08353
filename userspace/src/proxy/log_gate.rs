//! At most one warning per interval for a failure that can repeat as fast
//! as a peer can cause it (an agent looping on connect, `accept` out of
//! descriptors, an agent sending placeholders where no rule allows them):
//! the log says it happens and how often, without filling the disk the
//! audit log shares. The audit log keeps a record of every one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

/// When a gate last opened, and how many were held back since.
type Opened = Option<(Instant, u64)>;

pub struct LogGate {
    every: Duration,
    state: Mutex<Opened>,
}

impl LogGate {
    pub const fn every(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new(None),
        }
    }

    /// `Some(held back since the last warning)` when this one should be
    /// logged; `None` when it is held back.
    pub fn open(&self) -> Option<u64> {
        self.open_at(Instant::now())
    }

    fn open_at(&self, now: Instant) -> Option<u64> {
        // A timestamp and a count: no invariant a panic could break.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        pass(&mut state, self.every, now)
    }
}

/// A [`LogGate`] for each agent: one agent's flood holds back its own
/// warnings, not another's attempt in the same second.
pub struct AgentLogGates {
    every: Duration,
    /// One entry per agent that was warned about: agents are few, named
    /// by the policies.
    gates: Mutex<HashMap<Arc<str>, Opened>>,
}

impl AgentLogGates {
    pub fn every(every: Duration) -> Self {
        Self {
            every,
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// As [`LogGate::open`], for `agent`'s warnings.
    pub fn open(&self, agent: &Arc<str>) -> Option<u64> {
        self.open_at(agent, Instant::now())
    }

    fn open_at(&self, agent: &Arc<str>, now: Instant) -> Option<u64> {
        let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
        let state = match gates.get_mut(agent) {
            Some(state) => state,
            None => gates.entry(agent.clone()).or_default(),
        };
        pass(state, self.every, now)
    }
}

/// Whether a gate last opened at `state` opens again at `now`, and with
/// how many held back since.
fn pass(state: &mut Opened, every: Duration, now: Instant) -> Option<u64> {
    match state {
        Some((at, held)) if now.duration_since(*at) < every => {
            *held += 1;
            None
        }
        Some((_, held)) => {
            let held_back = *held;
            *state = Some((now, 0));
            Some(held_back)
        }
        None => {
            *state = Some((now, 0));
            Some(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_an_interval_with_the_count_held_back() {
        let gate = LogGate::every(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(gate.open_at(t0), Some(0));
        assert_eq!(gate.open_at(t0 + Duration::from_millis(10)), None);
        assert_eq!(gate.open_at(t0 + Duration::from_millis(900)), None);
        assert_eq!(gate.open_at(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(gate.open_at(t0 + Duration::from_millis(1500)), None);
        assert_eq!(gate.open_at(t0 + Duration::from_secs(5)), Some(1));
    }

    #[test]
    fn one_agent_s_flood_holds_back_only_its_own_warnings() {
        let gates = AgentLogGates::every(Duration::from_secs(1));
        let (a, b): (Arc<str>, Arc<str>) = ("flooder".into(), "other".into());
        let t0 = Instant::now();
        assert_eq!(gates.open_at(&a, t0), Some(0));
        for ms in 1..=50 {
            assert_eq!(gates.open_at(&a, t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(
            gates.open_at(&b, t0 + Duration::from_millis(60)),
            Some(0),
            "another agent's warning in the same second"
        );
        assert_eq!(gates.open_at(&b, t0 + Duration::from_millis(70)), None);
        assert_eq!(gates.open_at(&a, t0 + Duration::from_secs(1)), Some(50));
        assert_eq!(gates.open_at(&b, t0 + Duration::from_secs(2)), Some(1));
    }
}

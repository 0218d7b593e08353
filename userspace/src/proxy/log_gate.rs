//! At most one warning per interval for a failure that can repeat as fast
//! as a peer can cause it (an agent looping on connect, `accept` out of
//! descriptors): the log says it happens and how often, without filling
//! the disk the audit log shares.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

pub struct LogGate {
    every: Duration,
    /// When the gate last opened, and how many were held back since.
    state: Mutex<Option<(Instant, u64)>>,
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
        match &mut *state {
            Some((at, held)) if now.duration_since(*at) < self.every => {
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
}

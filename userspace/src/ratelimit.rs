//! Per (agent, rule) token buckets for `rate_limit: N/period`.
//!
//! Each bucket is kept as a single "theoretical arrival time" (the GCRA form
//! of a token bucket): the instant at which the bucket would be full again.
//! That makes refill exact integer arithmetic on `Instant`s, with no float
//! drift, and "is this bucket idle?" a single comparison.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Buckets kept at most; a key set this large only comes from many policies
/// with many limited rules, so reaching it is rare and eviction may scan.
pub const MAX_BUCKETS: usize = 65_536;

/// What a denied caller is told when the limiter cannot decide (poisoned
/// lock, degenerate limit): come back later, never "go ahead".
const FAIL_CLOSED_RETRY: Duration = Duration::from_secs(1);

/// How long until the next token; the `Retry-After` of a 429.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds, rounded up and at least 1: `Retry-After: 0` would
    /// invite an immediate retry that is certain to fail.
    pub fn secs_ceil(&self) -> u64 {
        let secs = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        secs.max(1)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// When the bucket is full again; at or before `now` means full.
    full_at: Instant,
    count: u32,
    per: Duration,
}

impl Bucket {
    fn new(count: u32, per: Duration, now: Instant) -> Self {
        Bucket {
            full_at: now,
            count,
            per,
        }
    }

    fn is_full(&self, now: Instant) -> bool {
        self.full_at <= now
    }

    /// Re-expresses the tokens in use under a new limit so that a policy
    /// reload neither refills an exhausted bucket nor empties an idle one.
    fn rescale(&mut self, count: u32, per: Duration, now: Instant) {
        let debt = self.full_at.saturating_duration_since(now).min(self.per);
        let used = if self.per.is_zero() {
            1.0
        } else {
            debt.as_secs_f64() / self.per.as_secs_f64()
        };
        let new_debt = per.mul_f64(used.clamp(0.0, 1.0));
        // Only an absurd period overflows `Instant`; keeping the old deadline
        // then errs on the side of still limiting.
        if let Some(full_at) = now.checked_add(new_debt) {
            self.full_at = full_at;
        }
        self.count = count;
        self.per = per;
    }

    /// Takes one token if there is one.
    fn take(&mut self, now: Instant) -> Result<(), RetryAfter> {
        if self.count == 0 || self.per.is_zero() {
            // `0/minute` allows nothing; a zero period has no meaning. Neither
            // may turn into "unlimited".
            return Err(RetryAfter(self.per.max(FAIL_CLOSED_RETRY)));
        }
        let interval = self.per / self.count;
        let start = self.full_at.max(now);
        let Some(next) = start.checked_add(interval) else {
            return Err(RetryAfter(FAIL_CLOSED_RETRY));
        };
        let debt = next.saturating_duration_since(now);
        if debt <= self.per {
            self.full_at = next;
            Ok(())
        } else {
            Err(RetryAfter(debt - self.per))
        }
    }
}

/// Shared by every connection (behind an `Arc`); one lock, held only for a
/// map lookup and a few comparisons.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: Mutex<Table>,
    max_buckets: usize,
}

#[derive(Debug, Default)]
struct Table {
    /// Keyed by agent first so that a lookup borrows the agent's `&str`
    /// instead of allocating a `(String, u64)` key per request. The second
    /// key is the rule's `limit_key`: what it covers, not its place.
    by_agent: HashMap<String, HashMap<u64, Bucket>>,
    len: usize,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    pub fn new() -> Self {
        Self::with_capacity(MAX_BUCKETS)
    }

    /// A limiter holding at most `max_buckets` buckets (at least one).
    pub fn with_capacity(max_buckets: usize) -> Self {
        RateLimiter {
            buckets: Mutex::new(Table::default()),
            max_buckets: max_buckets.max(1),
        }
    }

    /// `count` requests per `per` for this agent's rule (its `limit_key`), with a burst of
    /// `count`. `Err` carries the wait until one token is back.
    pub fn check(
        &self,
        agent: &str,
        rule: u64,
        count: u32,
        per: Duration,
    ) -> Result<(), RetryAfter> {
        self.check_at(agent, rule, count, per, Instant::now())
    }

    /// [`check`](Self::check) at a given instant, so tests can move time.
    pub fn check_at(
        &self,
        agent: &str,
        rule: u64,
        count: u32,
        per: Duration,
        now: Instant,
    ) -> Result<(), RetryAfter> {
        // A poisoned lock means another request panicked mid-update; the
        // buckets may be wrong, and a wrong bucket must not let traffic by.
        let Ok(mut table) = self.buckets.lock() else {
            return Err(RetryAfter(FAIL_CLOSED_RETRY));
        };
        if let Some(bucket) = table
            .by_agent
            .get_mut(agent)
            .and_then(|rules| rules.get_mut(&rule))
        {
            if bucket.count != count || bucket.per != per {
                bucket.rescale(count, per, now);
            }
            return bucket.take(now);
        }

        if table.len >= self.max_buckets {
            table.evict_full(now);
        }
        if table.len >= self.max_buckets {
            // Every bucket is holding back some traffic; dropping one would
            // reset its limit. Refuse the newcomer until one goes idle.
            let wait = table.soonest_full(now).unwrap_or(FAIL_CLOSED_RETRY);
            tracing::warn!(
                agent,
                rule,
                buckets = table.len,
                "rate limiter full of active buckets; refusing a new key"
            );
            return Err(RetryAfter(wait.max(FAIL_CLOSED_RETRY)));
        }

        let mut bucket = Bucket::new(count, per, now);
        let verdict = bucket.take(now);
        table
            .by_agent
            .entry(agent.to_owned())
            .or_default()
            .insert(rule, bucket);
        table.len += 1;
        verdict
    }

    /// Buckets currently held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        match self.buckets.lock() {
            Ok(table) => table.len,
            Err(poisoned) => poisoned.into_inner().len,
        }
    }
}

impl Table {
    /// Drops buckets that are full: recreating one later gives exactly the
    /// same state, so forgetting it changes no decision.
    fn evict_full(&mut self, now: Instant) {
        let mut removed = 0;
        self.by_agent.retain(|_, rules| {
            let before = rules.len();
            rules.retain(|_, bucket| !bucket.is_full(now));
            removed += before - rules.len();
            !rules.is_empty()
        });
        self.len -= removed;
    }

    fn soonest_full(&self, now: Instant) -> Option<Duration> {
        self.by_agent
            .values()
            .flat_map(|rules| rules.values())
            .map(|bucket| bucket.full_at.saturating_duration_since(now))
            .min()
    }
}

#[cfg(test)]
mod tests;

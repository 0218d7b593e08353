use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use super::{RateLimiter, RetryAfter};

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn five_per_minute_allows_five_then_asks_for_twelve_seconds() {
    let limiter = RateLimiter::new();
    let now = Instant::now();
    for n in 0..5 {
        assert_eq!(
            limiter.check_at("bot", 0, 5, MINUTE, now),
            Ok(()),
            "request {n}"
        );
    }
    let denied = limiter.check_at("bot", 0, 5, MINUTE, now);
    assert_eq!(denied, Err(RetryAfter(Duration::from_secs(12))));
    assert_eq!(denied.unwrap_err().secs_ceil(), 12);
}

#[test]
fn tokens_come_back_at_the_configured_rate() {
    let limiter = RateLimiter::new();
    let start = Instant::now();
    for _ in 0..5 {
        limiter.check_at("bot", 0, 5, MINUTE, start).unwrap();
    }
    // One token every 12 s: just before, still none; at 12 s, exactly one.
    let almost = start + Duration::from_millis(11_900);
    assert_eq!(
        limiter.check_at("bot", 0, 5, MINUTE, almost),
        Err(RetryAfter(Duration::from_millis(100)))
    );
    let one = start + Duration::from_secs(12);
    assert_eq!(limiter.check_at("bot", 0, 5, MINUTE, one), Ok(()));
    assert!(limiter.check_at("bot", 0, 5, MINUTE, one).is_err());

    // After a long idle spell the bucket holds N again, never more.
    let later = start + Duration::from_secs(3600);
    for _ in 0..5 {
        assert_eq!(limiter.check_at("bot", 0, 5, MINUTE, later), Ok(()));
    }
    assert!(limiter.check_at("bot", 0, 5, MINUTE, later).is_err());
}

#[test]
fn agents_and_rules_have_their_own_buckets() {
    let limiter = RateLimiter::new();
    let now = Instant::now();
    limiter.check_at("a", 0, 1, MINUTE, now).unwrap();
    assert!(limiter.check_at("a", 0, 1, MINUTE, now).is_err());

    assert_eq!(limiter.check_at("a", 1, 1, MINUTE, now), Ok(()));
    assert_eq!(limiter.check_at("b", 0, 1, MINUTE, now), Ok(()));
    assert!(limiter.check_at("a", 1, 1, MINUTE, now).is_err());
    assert!(limiter.check_at("b", 0, 1, MINUTE, now).is_err());
    assert_eq!(limiter.len(), 3);
}

#[test]
fn eight_threads_take_exactly_the_burst() {
    let limiter = Arc::new(RateLimiter::new());
    let allowed = Arc::new(AtomicU32::new(0));
    let now = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let limiter = Arc::clone(&limiter);
            let allowed = Arc::clone(&allowed);
            thread::spawn(move || {
                for _ in 0..100 {
                    if limiter.check_at("bot", 3, 30, MINUTE, now).is_ok() {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(allowed.load(Ordering::Relaxed), 30);
}

#[test]
fn eight_threads_on_the_real_clock_take_exactly_the_burst() {
    // One token an hour: no refill can happen while the test runs, so any
    // count other than 10 is a race in the limiter.
    let limiter = Arc::new(RateLimiter::new());
    let allowed = Arc::new(AtomicU32::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let limiter = Arc::clone(&limiter);
            let allowed = Arc::clone(&allowed);
            thread::spawn(move || {
                for _ in 0..50 {
                    if limiter
                        .check("bot", 0, 10, Duration::from_secs(36_000))
                        .is_ok()
                    {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(allowed.load(Ordering::Relaxed), 10);
}

#[test]
fn eviction_drops_idle_buckets_but_never_a_limiting_one() {
    let limiter = RateLimiter::with_capacity(3);
    let start = Instant::now();
    // "limited" is exhausted for the next minute.
    limiter.check_at("limited", 0, 1, MINUTE, start).unwrap();
    assert!(limiter.check_at("limited", 0, 1, MINUTE, start).is_err());

    // A stream of new keys, each idle again by the time the next arrives,
    // keeps the table at capacity and forces evictions.
    for n in 0..20u64 {
        let at = start + Duration::from_millis(n * 100);
        let agent = format!("short-{n}");
        limiter
            .check_at(&agent, 0, 10, Duration::from_millis(50), at)
            .unwrap();
        assert!(limiter.len() <= 3);
        assert!(
            limiter.check_at("limited", 0, 1, MINUTE, at).is_err(),
            "the limited key got through after {n} evictions"
        );
    }
}

#[test]
fn a_full_table_of_active_buckets_refuses_new_keys() {
    let limiter = RateLimiter::with_capacity(2);
    let now = Instant::now();
    limiter.check_at("a", 0, 2, MINUTE, now).unwrap();
    limiter.check_at("b", 0, 1, MINUTE, now).unwrap();

    let refused = limiter.check_at("c", 0, 5, MINUTE, now).unwrap_err();
    // "a" is the first to become full again (30 s): that is when room appears.
    assert_eq!(refused, RetryAfter(Duration::from_secs(30)));
    assert_eq!(limiter.len(), 2);
    // The refusal did not cost the existing keys anything.
    assert_eq!(limiter.check_at("a", 0, 2, MINUTE, now), Ok(()));
    assert!(limiter.check_at("b", 0, 1, MINUTE, now).is_err());

    // A minute on, both are full again and make way for "c".
    let later = now + MINUTE;
    assert_eq!(limiter.check_at("c", 0, 5, MINUTE, later), Ok(()));
    assert_eq!(limiter.len(), 1);
}

#[test]
fn a_changed_limit_keeps_the_fill_ratio() {
    let limiter = RateLimiter::new();
    let now = Instant::now();
    for _ in 0..5 {
        limiter.check_at("bot", 0, 10, MINUTE, now).unwrap();
    }
    // Half used under 10/minute is half used under 4/minute: two left.
    assert_eq!(limiter.check_at("bot", 0, 4, MINUTE, now), Ok(()));
    assert_eq!(limiter.check_at("bot", 0, 4, MINUTE, now), Ok(()));
    assert!(limiter.check_at("bot", 0, 4, MINUTE, now).is_err());

    // An exhausted bucket stays exhausted when the limit is raised.
    let limiter = RateLimiter::new();
    limiter.check_at("bot", 0, 1, MINUTE, now).unwrap();
    assert!(limiter.check_at("bot", 0, 100, MINUTE, now).is_err());
    // ...and an idle one is full under the new limit.
    let limiter = RateLimiter::new();
    limiter.check_at("bot", 0, 1, MINUTE, now).unwrap();
    let idle = now + MINUTE;
    for _ in 0..3 {
        assert_eq!(
            limiter.check_at("bot", 0, 3, Duration::from_secs(1), idle),
            Ok(())
        );
    }
    assert!(
        limiter
            .check_at("bot", 0, 3, Duration::from_secs(1), idle)
            .is_err()
    );
}

#[test]
fn degenerate_limits_deny() {
    let limiter = RateLimiter::new();
    let now = Instant::now();
    assert!(limiter.check_at("bot", 0, 0, MINUTE, now).is_err());
    assert!(limiter.check_at("bot", 1, 5, Duration::ZERO, now).is_err());
}

#[test]
fn a_poisoned_lock_denies() {
    let limiter = Arc::new(RateLimiter::new());
    let poisoner = Arc::clone(&limiter);
    let _ = thread::spawn(move || {
        let _held = poisoner.buckets.lock().unwrap();
        panic!("poison the limiter");
    })
    .join();
    assert_eq!(
        limiter.check("fresh", 0, 1000, MINUTE),
        Err(RetryAfter(Duration::from_secs(1)))
    );
}

#[test]
fn retry_after_rounds_up_to_at_least_one_second() {
    assert_eq!(RetryAfter(Duration::ZERO).secs_ceil(), 1);
    assert_eq!(RetryAfter(Duration::from_millis(1)).secs_ceil(), 1);
    assert_eq!(RetryAfter(Duration::from_secs(12)).secs_ceil(), 12);
    assert_eq!(RetryAfter(Duration::from_millis(12_001)).secs_ceil(), 13);
}

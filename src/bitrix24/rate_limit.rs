//! Client-side mirror of the portal's leaky bucket (protocol §10.1): every request adds
//! one, the bucket drains `per_sec` per second, and a full bucket means the portal
//! answers `503 QUERY_LIMIT_EXCEEDED`. Callers wait for room instead. Several
//! instances of the service share the bucket through a [`SharedBucket`].

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::error::StoreError;

/// A portal's request budget: `per_sec` drain rate, `burst` bucket size.
/// Bitrix24 cloud: 2/50 on most plans, 5/250 on Enterprise (protocol §10.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_sec: f64,
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_sec: 2.0,
            burst: 50,
        }
    }
}

/// A rate written as `<per_sec>/<burst>` that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ожидается «запросов в секунду/размер пачки», например 2/50; получено «{0}»")]
pub struct RateLimitParseError(String);

impl FromStr for RateLimit {
    type Err = RateLimitParseError;

    /// `"2/50"` → 2 per second, burst 50. Both parts must be positive.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let bad = || RateLimitParseError(raw.to_owned());
        let (rate, burst) = raw.trim().split_once('/').ok_or_else(bad)?;
        let per_sec: f64 = rate.trim().parse().map_err(|_| bad())?;
        let burst: u32 = burst.trim().parse().map_err(|_| bad())?;
        if !per_sec.is_finite() || per_sec <= 0.0 || burst == 0 {
            return Err(bad());
        }
        Ok(Self { per_sec, burst })
    }
}

impl RateLimit {
    /// Time one request occupies in the bucket.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_sec)
    }

    /// How far ahead of the bucket-empty time a request may go. One slot is kept
    /// free so that requests reordered on their way never overfill the portal's
    /// bucket.
    pub fn tolerance(&self) -> Duration {
        self.interval() * self.burst.saturating_sub(2)
    }
}

impl RateLimit {
    /// The share of the portal's budget kept for identity checks (install, deal tab,
    /// admin page): a fifth of the rate and of the bucket. Anyone who can reach the
    /// service can ask for a check, so checks never draw on the rest, which robot
    /// and outbox work use alone ([`RateLimit::work_share`]). Together the two
    /// shares stay inside the portal's bucket. At least three checks go at once:
    /// an install makes that many in a row.
    pub fn verification_share(&self) -> RateLimit {
        RateLimit {
            per_sec: self.per_sec / 5.0,
            burst: (self.burst / 5).max(4).min(self.burst / 2).max(1),
        }
    }

    /// What is left for robot and outbox work after [`RateLimit::verification_share`].
    pub fn work_share(&self) -> RateLimit {
        let verify = self.verification_share();
        RateLimit {
            per_sec: self.per_sec - verify.per_sec,
            burst: self.burst.saturating_sub(verify.burst).max(1),
        }
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.per_sec, self.burst)
    }
}

/// Portal buckets kept where every instance of the service sees them, so that the
/// instances together stay inside the portal's limit (the portal counts requests
/// per application, not per caller: protocol §10.1). Same algorithm as [`Limiter`].
#[async_trait]
pub trait SharedBucket: Send + Sync + 'static {
    /// Counts a request to `key` and says how long to wait before sending it.
    async fn reserve(&self, key: &str, rate: RateLimit) -> Result<Duration, StoreError>;
    /// The portal said its bucket is full: the shared one is made full too.
    async fn mark_full(&self, key: &str, rate: RateLimit) -> Result<(), StoreError>;
    /// Counts a request to `key` only if it may go within `max_wait`, and says how
    /// long to wait (`Ok(Ok)`); otherwise counts nothing (`Ok(Err(retry after))`).
    /// A store that cannot do this answers `Err`, and the process paces alone.
    async fn try_reserve(
        &self,
        key: &str,
        rate: RateLimit,
        max_wait: Duration,
    ) -> Result<Result<Duration, Duration>, StoreError> {
        let _ = (key, rate, max_wait);
        Err(StoreError::new("conditional reservation not supported"))
    }
}

/// Bucket key of the identity-check share of a portal's budget.
fn verify_key(key: &str) -> String {
    format!("verify:{key}")
}

/// Leaky buckets by portal key, as a generic cell rate algorithm: each request
/// reserves the next free slot and sleeps until it, so waiting callers are served
/// in arrival order without polling. With a [`SharedBucket`] the slots come from
/// there, and the process's own buckets only stand in while it cannot be reached.
pub(crate) struct Limiter {
    /// Robot and outbox work: [`RateLimit::work_share`] of the portal's budget.
    rate: RateLimit,
    /// Identity checks: [`RateLimit::verification_share`].
    verify_rate: RateLimit,
    shared: Option<Arc<dyn SharedBucket>>,
    /// Per key: the theoretical time at which the bucket is empty again.
    buckets: Mutex<HashMap<String, Instant>>,
}

impl Limiter {
    /// Splits the portal's budget `rate` between work and identity checks.
    pub(crate) fn new(rate: RateLimit, shared: Option<Arc<dyn SharedBucket>>) -> Self {
        Self {
            rate: rate.work_share(),
            verify_rate: rate.verification_share(),
            shared,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a slot of `key`'s identity-check share if one is free within
    /// `max_wait`, and waits for it; otherwise takes nothing and says when to come
    /// back. Nobody queues here: a flood of forged checks is turned away at once
    /// instead of holding slots it may never use.
    pub(crate) async fn try_acquire_verify(
        &self,
        key: &str,
        max_wait: Duration,
    ) -> Result<(), Duration> {
        let key = verify_key(key);
        if let Some(shared) = &self.shared {
            match shared.try_reserve(&key, self.verify_rate, max_wait).await {
                Ok(Ok(wait)) => {
                    tokio::time::sleep(wait).await;
                    return Ok(());
                }
                Ok(Err(retry_after)) => return Err(retry_after),
                Err(err) => {
                    tracing::warn!(portal = %key, error = %err, "Общий лимит запросов в базе недоступен; темп запросов держит этот процесс");
                }
            }
        }
        let ready_at = {
            let mut buckets = self
                .buckets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let tat = buckets.get(&key).copied().unwrap_or(now).max(now);
            let ready_at = tat
                .checked_sub(self.verify_rate.tolerance())
                .unwrap_or(now)
                .max(now);
            if ready_at - now > max_wait {
                return Err(ready_at - now);
            }
            buckets.insert(key, tat + self.verify_rate.interval());
            ready_at
        };
        tokio::time::sleep_until(ready_at).await;
        Ok(())
    }

    /// Waits until a request to `key` fits into the bucket, and counts it.
    pub(crate) async fn acquire(&self, key: &str) {
        if let Some(shared) = &self.shared {
            match shared.reserve(key, self.rate).await {
                Ok(wait) => return tokio::time::sleep(wait).await,
                Err(err) => {
                    tracing::warn!(portal = key, error = %err, "Общий лимит запросов в базе недоступен; темп запросов держит этот процесс");
                }
            }
        }
        self.acquire_local(key).await;
    }

    async fn acquire_local(&self, key: &str) {
        let ready_at = {
            let mut buckets = self
                .buckets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let tat = buckets.get(key).copied().unwrap_or(now).max(now);
            let ready_at = tat
                .checked_sub(self.rate.tolerance())
                .unwrap_or(now)
                .max(now);
            buckets.insert(key.to_owned(), tat + self.rate.interval());
            ready_at
        };
        tokio::time::sleep_until(ready_at).await;
    }

    /// The portal said its bucket is full: treat ours as full too.
    pub(crate) async fn mark_full(&self, key: &str) {
        if let Some(shared) = &self.shared
            && let Err(err) = shared.mark_full(key, self.rate).await
        {
            tracing::warn!(portal = key, error = %err, "Общий лимит запросов в базе недоступен");
        }
        self.mark_full_local(key);
    }

    fn mark_full_local(&self, key: &str) {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let full = now + self.rate.tolerance() + self.rate.interval();
        let tat = buckets.entry(key.to_owned()).or_insert(now);
        if *tat < full {
            *tat = full;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(
            "2/50".parse::<RateLimit>(),
            Ok(RateLimit {
                per_sec: 2.0,
                burst: 50
            })
        );
        assert_eq!(" 0.5 / 10 ".parse::<RateLimit>().map(|r| r.burst), Ok(10));
        for bad in ["2/", "/50", "0/50", "2/0", "-1/5", "abc", "2/50/1", "NaN/5"] {
            let err = bad.parse::<RateLimit>().expect_err(bad);
            assert!(err.to_string().contains("например 2/50"), "{err}");
        }
    }

    // The clock is paused: it moves only when every task waits, by exactly the wait,
    // so "went at once" is `elapsed() == 0` whatever the machine's load.
    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        // Work gets 16/s and a bucket of 5 of the portal's 20/9.
        let limiter = Limiter::new(
            RateLimit {
                per_sec: 20.0,
                burst: 9,
            },
            None,
        );
        let start = Instant::now();
        for _ in 0..4 {
            limiter.acquire("p").await;
        }
        // the burst minus the safety slot goes without waiting
        assert_eq!(start.elapsed(), Duration::ZERO);
        limiter.acquire("other").await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        limiter.acquire("p").await;
        assert!(start.elapsed() >= Duration::from_millis(45));
    }

    #[tokio::test(start_paused = true)]
    async fn identity_checks_are_turned_away_without_touching_work() {
        let limiter = Limiter::new(
            RateLimit {
                per_sec: 2.0,
                burst: 50,
            },
            None,
        );
        // A fifth of the bucket (10), less the safety slot, goes at once.
        let mut admitted = 0;
        let mut refused = 0;
        for _ in 0..100 {
            match limiter.try_acquire_verify("p", Duration::ZERO).await {
                Ok(()) => admitted += 1,
                Err(retry) => {
                    assert!(retry > Duration::ZERO);
                    refused += 1;
                }
            }
        }
        assert_eq!(admitted, 9);
        assert_eq!(refused, 91);
        // Work on the same portal starts at once, as if no check had been made.
        let start = Instant::now();
        for _ in 0..30 {
            limiter.acquire("p").await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}

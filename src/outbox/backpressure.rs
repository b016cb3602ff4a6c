//! A portal that pushes back (over its request limit, 503/429, refusing connections)
//! is not failing: it will take the calls again soon. Its queue pauses and is probed
//! on a short schedule that grows per consecutive pushback and never exceeds
//! [`PROBE_CAP`], with jitter so instances and portals do not probe in step. Other
//! portals' queues are not touched.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

/// The longest a paused portal waits for its next probe: once it recovers, its queue
/// moves within this time (one request per portal per probe costs the portal nothing).
pub const PROBE_CAP: Duration = Duration::from_secs(10);
/// The first probe after a pushback; doubled per consecutive pushback.
const PROBE_BASE: Duration = Duration::from_secs(1);

/// Consecutive pushbacks per portal (`None`: the webhook setup), in this process.
#[derive(Default)]
pub struct Probes {
    streaks: Mutex<HashMap<Option<i64>, u32>>,
}

impl Probes {
    /// When to probe a portal that just pushed back; `hint` is the earliest time the
    /// portal itself named (an operating pause's end), capped like the rest.
    pub fn next(
        &self,
        portal: Option<i64>,
        hint: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let streak = {
            let mut streaks = self.streaks.lock().unwrap_or_else(PoisonError::into_inner);
            let s = streaks.entry(portal).or_insert(0);
            *s = s.saturating_add(1);
            *s
        };
        let grown = PROBE_BASE.saturating_mul(1u32 << streak.saturating_sub(1).min(8));
        // Jitter in [50 %, 100 %]: never later than the cap.
        let delay = grown
            .min(PROBE_CAP)
            .mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
        let at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::seconds(1));
        let cap =
            now + chrono::Duration::from_std(PROBE_CAP).unwrap_or(chrono::Duration::seconds(10));
        at.max(hint).min(cap)
    }

    /// The portal answered: its next pushback starts the schedule over.
    pub fn clear(&self, portal: Option<i64>) {
        self.streaks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&portal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_grow_per_pushback_and_stay_under_the_cap() {
        let probes = Probes::default();
        let now = Utc::now();
        let first = probes.next(Some(1), now, now) - now;
        assert!(first <= chrono::Duration::seconds(1), "{first}");
        let mut last = first;
        for _ in 0..20 {
            last = probes.next(Some(1), now, now) - now;
            assert!(last <= chrono::Duration::seconds(10), "{last}");
        }
        assert!(last >= chrono::Duration::seconds(5), "{last}");
        // Another portal has its own schedule.
        assert!(probes.next(Some(2), now, now) - now <= chrono::Duration::seconds(1));
        // A portal's own hint is kept, within the cap.
        let hint = now + chrono::Duration::minutes(10);
        assert_eq!(
            probes.next(Some(3), hint, now) - now,
            chrono::Duration::seconds(10)
        );
        probes.clear(Some(1));
        assert!(probes.next(Some(1), now, now) - now <= chrono::Duration::seconds(1));
    }
}

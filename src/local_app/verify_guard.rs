//! Cheap refusals in front of identity checks. Anyone can POST an install, a deal
//! tab or the admin page, and each such POST would make the service ask a portal
//! who the caller is. Here, before any portal is asked:
//! - an address, or a portal, with repeated failed checks is refused with 429 for a
//!   while (addresses that passed a check for that portal lately are not held up by
//!   the portal's count, so an attacker cannot lock a clinic's doctors out);
//! - only a check that cost an outbound call counts as failed: the portal or the
//!   OAuth server refused the token. What is decided here without asking anyone (an
//!   unknown `member_id`, a malformed POST, a `DOMAIN` that is not the installed
//!   one) costs nothing and counts against nobody: behind a proxy every visitor
//!   shares one address, and such POSTs must not lock them all out;
//! - a doctor's tab token that the portal confirmed is remembered, by its SHA-256
//!   and never itself, until it expires (protocol §6.2: `AUTH_EXPIRES` is a lifetime
//!   in seconds), with the documents it was allowed to read, so reopening the tab
//!   asks the portal nothing.
//!
//! Every map here is bounded; a full map forgets its oldest entries first, except
//! the failure counts, which forget lapsed and then the smallest counts first, and
//! keep addresses and portals apart: a flood of new addresses (one host has a whole
//! IPv6 /64 to cycle through) cannot push a portal's count out, nor a flood of
//! claimed portals an address's.
//!
//! The install handler uses the same guard:
//! ```ignore
//! let attempt = state.verify_guard.admit(ip, &domain).map_err(|r| r.json())?;
//! match state.b24.call_to_verify(&target, "app.info", json!({})).await {
//!     Ok(_) => attempt.succeeded(),
//!     Err(B24Error::VerifyBudgetSpent { retry_after }) => return Err(Refused { retry_after }.json()),
//!     Err(e) if e.is_retryable() => {} // the portal's trouble, not the caller's
//!     Err(_) => attempt.failed(),
//! }
//! ```

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use poem::http::StatusCode;
use poem::{IntoResponse, Request, Response};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::error::ErrorBody;
use crate::invitations::EntityRef;

/// Failures are counted over this window; a refusal lasts until it ends.
const WINDOW: Duration = Duration::from_secs(10 * 60);
/// Failed checks from one address (a clinic behind one NAT shares it) within WINDOW.
const MAX_FAILURES_PER_ADDRESS: u32 = 10;
/// Failed checks for one portal within WINDOW, from addresses it has not seen pass.
const MAX_FAILURES_PER_PORTAL: u32 = 20;
/// How long a caller refused only for checks still under way waits before trying again.
const PENDING_RETRY: Duration = Duration::from_secs(5);
/// How long an address that passed a check stays exempt from its portal's count.
const TRUSTED_FOR: Duration = Duration::from_secs(12 * 60 * 60);
/// Bounds of the maps (addresses, portals, trusted pairs, remembered tokens).
const MAX_TRACKED: usize = 10_000;
/// A tab token is remembered no longer than this, whatever `AUTH_EXPIRES` says.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// The stable code of a refusal.
pub const REFUSED_CODE: &str = crate::error::ErrorCode::TooManyAttempts.as_str();
const REFUSED_MESSAGE: &str =
    "Слишком много попыток входа за короткое время. Подождите немного и откройте страницу снова.";

/// A check refused before it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: Duration,
}

impl Refused {
    fn seconds(&self) -> String {
        self.retry_after.as_secs().max(1).to_string()
    }

    /// 429 as a page inside the portal's frame.
    pub fn error_page(&self) -> Response {
        let mut response = super::page::error(StatusCode::TOO_MANY_REQUESTS, REFUSED_MESSAGE);
        self.mark(&mut response);
        response
    }

    /// 429 as the service's JSON error body (events, `ONAPPINSTALL`).
    pub fn json(&self) -> Response {
        let body = ErrorBody {
            code: REFUSED_CODE.to_owned(),
            message: REFUSED_MESSAGE.to_owned(),
            errors: None,
        };
        let mut response = poem::web::Json(body)
            .with_status(StatusCode::TOO_MANY_REQUESTS)
            .into_response();
        self.mark(&mut response);
        response
    }

    fn mark(&self, response: &mut Response) {
        if let Ok(v) = self.seconds().parse() {
            response.headers_mut().insert("retry-after", v);
        }
        response.headers_mut().insert(
            "x-error-code",
            poem::http::HeaderValue::from_static(REFUSED_CODE),
        );
    }
}

/// The caller's address as the guard counts it: IPv4, or the /64 of an IPv6
/// address (one host gets a whole /64).
pub fn client_ip(req: &Request) -> Option<IpAddr> {
    let ip = req.remote_addr().as_socket_addr()?.ip();
    Some(match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
        v4 => v4,
    })
}

/// SHA-256 of a tab's `AUTH_ID`: the only form in which it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }
}

/// What the portal confirmed about a tab token.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub portal_id: i64,
    pub user_id: i64,
    pub user_name: String,
    /// Documents the portal let this token read (protocol §11 (4)).
    readable: HashSet<EntityRef>,
    /// `user.admin` for this token, once asked.
    admin: Option<bool>,
    expires_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    failures: u32,
    since: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Address(IpAddr),
    Portal(String),
}

#[derive(Default)]
struct Inner {
    /// Failed checks per address (an IPv4 address or an IPv6 /64).
    addresses: HashMap<IpAddr, Count>,
    /// Failed checks per portal (a member_id, or `install:` and a claimed domain).
    portals: HashMap<String, Count>,
    /// Checks admitted and not yet answered, per key. They count as failures until
    /// they are answered: a burst of forged POSTs sent at once must not all pass the
    /// door before the first of them has failed.
    pending: HashMap<Key, u32>,
    /// (portal, address) → last passed check.
    trusted: HashMap<(String, IpAddr), Instant>,
    tokens: HashMap<TokenHash, VerifiedToken>,
}

/// See the module documentation. One per process (`AppState::verify_guard`).
#[derive(Default)]
pub struct VerifyGuard {
    inner: Mutex<Inner>,
}

/// An admitted check; tell the guard how it went. Dropped without a word (the
/// portal did not answer), it counts for nothing.
#[must_use]
pub struct Attempt<'a> {
    guard: &'a VerifyGuard,
    ip: Option<IpAddr>,
    portal: String,
    /// Keys whose pending count this attempt holds; given back when it is dropped.
    held: Vec<Key>,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut inner = self.guard.lock();
        for key in self.held.drain(..) {
            if let Some(n) = inner.pending.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    inner.pending.remove(&key);
                }
            }
        }
    }
}

impl Attempt<'_> {
    /// The portal confirmed the caller: the address is trusted for this portal.
    pub fn succeeded(self) {
        let Some(ip) = self.ip else { return };
        let mut inner = self.guard.lock();
        let now = Instant::now();
        insert_bounded(&mut inner.trusted, (self.portal.clone(), ip), now, |at| *at);
    }

    /// The portal or the OAuth server refused the caller's token: the check cost an
    /// outbound call. A refusal decided without one is not reported (drop the attempt).
    pub fn failed(self) {
        self.guard.record_failure(self.ip, Some(&self.portal));
    }
}

/// Inserts into a bounded map; when full, first drops what `age` says is oldest.
fn insert_bounded<K, V, F>(map: &mut HashMap<K, V>, key: K, value: V, age: F)
where
    K: Eq + std::hash::Hash + Clone,
    F: Fn(&V) -> Instant,
{
    if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
        let oldest = map
            .iter()
            .min_by_key(|(_, v)| age(v))
            .map(|(k, _)| k.clone());
        if let Some(oldest) = oldest {
            map.remove(&oldest);
        }
    }
    map.insert(key, value);
}

/// Adds a failure to `key`'s count. A full map first forgets lapsed counts, then the
/// smallest (oldest among equals): a count that refuses is the last to go.
fn count_failure<K>(map: &mut HashMap<K, Count>, key: K, now: Instant)
where
    K: Eq + std::hash::Hash + Clone,
{
    let count = match map.get(&key) {
        Some(c) if c.current(now) => Count {
            failures: c.failures.saturating_add(1),
            since: c.since,
        },
        _ => Count {
            failures: 1,
            since: now,
        },
    };
    if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
        map.retain(|_, c| c.current(now));
        if map.len() >= MAX_TRACKED {
            let least = map
                .iter()
                .min_by_key(|(_, c)| (c.failures, c.since))
                .map(|(k, _)| k.clone());
            if let Some(least) = least {
                map.remove(&least);
            }
        }
    }
    map.insert(key, count);
}

impl Inner {
    fn count(&self, key: &Key) -> Option<&Count> {
        match key {
            Key::Address(ip) => self.addresses.get(ip),
            Key::Portal(p) => self.portals.get(p),
        }
    }
}

impl Count {
    fn current(&self, now: Instant) -> bool {
        now.duration_since(self.since) < WINDOW
    }

    fn refusal(&self, now: Instant, max: u32) -> Option<Refused> {
        (self.current(now) && self.failures >= max).then(|| Refused {
            retry_after: WINDOW.saturating_sub(now.duration_since(self.since)),
        })
    }
}

impl VerifyGuard {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refuses an address with too many recent failures; asks no portal.
    pub fn check_address(&self, ip: Option<IpAddr>) -> Result<(), Refused> {
        let Some(ip) = ip else { return Ok(()) };
        let inner = self.lock();
        match inner.addresses.get(&ip) {
            Some(count) => count
                .refusal(Instant::now(), MAX_FAILURES_PER_ADDRESS)
                .map_or(Ok(()), Err),
            None => Ok(()),
        }
    }

    /// Admits a check of a caller at `ip` for `portal` (a member_id or a domain),
    /// or refuses it: too many failures from the address, or for the portal. An
    /// address that passed a check for this portal lately is admitted whatever the
    /// counts: behind a proxy or a clinic's NAT many people share one address, and
    /// an attacker among them must not lock the others out (the checks' share of
    /// the portal's budget still bounds what they can spend).
    pub fn admit(&self, ip: Option<IpAddr>, portal: &str) -> Result<Attempt<'_>, Refused> {
        let now = Instant::now();
        let mut inner = self.lock();
        let trusted = ip
            .and_then(|ip| inner.trusted.get(&(portal.to_owned(), ip)))
            .is_some_and(|at| now.duration_since(*at) < TRUSTED_FOR);
        let mut held = Vec::new();
        if !trusted {
            let counts = [
                ip.map(|ip| (Key::Address(ip), MAX_FAILURES_PER_ADDRESS)),
                Some((Key::Portal(portal.to_owned()), MAX_FAILURES_PER_PORTAL)),
            ];
            for (key, max) in counts.into_iter().flatten() {
                if let Some(refused) = inner.count(&key).and_then(|c| c.refusal(now, max)) {
                    return Err(refused);
                }
                let failed = inner
                    .count(&key)
                    .filter(|c| c.current(now))
                    .map_or(0, |c| c.failures);
                let pending = inner.pending.get(&key).copied().unwrap_or(0);
                if failed.saturating_add(pending) >= max {
                    return Err(Refused {
                        retry_after: PENDING_RETRY,
                    });
                }
                held.push(key);
            }
            // Bounded like the other maps: an entry lives only while its checks run.
            if inner.pending.len() < MAX_TRACKED {
                for key in &held {
                    *inner.pending.entry(key.clone()).or_insert(0) += 1;
                }
            } else {
                held.clear();
            }
        }
        Ok(Attempt {
            guard: self,
            ip,
            portal: portal.to_owned(),
            held,
        })
    }

    /// Counts a failed check against the address and, when known, the portal. Only
    /// for a check that cost an outbound call (see the module documentation).
    pub fn record_failure(&self, ip: Option<IpAddr>, portal: Option<&str>) {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(ip) = ip {
            count_failure(&mut inner.addresses, ip, now);
        }
        if let Some(portal) = portal {
            count_failure(&mut inner.portals, portal.to_owned(), now);
        }
    }

    /// A tab token the portal confirmed, if it has not expired.
    pub fn token(&self, hash: &TokenHash) -> Option<VerifiedToken> {
        let mut inner = self.lock();
        match inner.tokens.get(hash) {
            Some(t) if t.expires_at > Instant::now() => Some(t.clone()),
            Some(_) => {
                inner.tokens.remove(hash);
                None
            }
            None => None,
        }
    }

    /// Remembers a confirmed tab token for `lifetime` (its `AUTH_EXPIRES`, capped at
    /// an hour). A token already remembered keeps its first expiry: a replayed POST
    /// with a larger `AUTH_EXPIRES` cannot stretch it.
    pub fn remember_token(
        &self,
        hash: TokenHash,
        portal_id: i64,
        user_id: i64,
        user_name: &str,
        lifetime: Duration,
    ) {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner
            .tokens
            .get(&hash)
            .is_some_and(|t| t.expires_at > now && t.portal_id == portal_id)
        {
            return;
        }
        let token = VerifiedToken {
            portal_id,
            user_id,
            user_name: user_name.to_owned(),
            readable: HashSet::new(),
            admin: None,
            expires_at: now + lifetime.min(MAX_TOKEN_LIFETIME),
        };
        inner.tokens.retain(|_, t| t.expires_at > now);
        insert_bounded(&mut inner.tokens, hash, token, |t| t.expires_at);
    }

    /// Whether the portal already let this token read `entity`.
    pub fn may_read(&self, hash: &TokenHash, entity: EntityRef) -> bool {
        self.token(hash)
            .is_some_and(|t| t.readable.contains(&entity))
    }

    /// The portal let this token read `entity`.
    pub fn note_readable(&self, hash: &TokenHash, entity: EntityRef) {
        if let Some(t) = self.lock().tokens.get_mut(hash) {
            t.readable.insert(entity);
        }
    }

    /// `user.admin` for this token, if the portal was asked already.
    pub fn admin(&self, hash: &TokenHash) -> Option<bool> {
        self.token(hash).and_then(|t| t.admin)
    }

    pub fn note_admin(&self, hash: &TokenHash, admin: bool) {
        if let Some(t) = self.lock().tokens.get_mut(hash) {
            t.admin = Some(admin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([203, 0, 113, last]))
    }

    #[test]
    fn an_address_is_refused_after_its_failures() {
        let guard = VerifyGuard::default();
        for _ in 0..MAX_FAILURES_PER_ADDRESS {
            guard.admit(ip(1), "p").expect("admitted").failed();
        }
        let refused = guard.admit(ip(1), "p").err().expect("refused");
        assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= WINDOW);
        assert!(guard.check_address(ip(1)).is_err());
        assert!(guard.admit(ip(2), "other").is_ok());
    }

    #[test]
    fn checks_under_way_count_until_answered() {
        let guard = VerifyGuard::default();
        // A burst from many addresses, all admitted before any has failed.
        let running: Vec<_> = (0..MAX_FAILURES_PER_PORTAL as u8)
            .map(|n| guard.admit(ip(n), "p").expect("admitted"))
            .collect();
        let refused = guard
            .admit(ip(200), "p")
            .err()
            .expect("refused while running");
        assert_eq!(refused.retry_after, PENDING_RETRY);
        // Answered without a verdict (the portal was down): the door opens again.
        drop(running);
        let attempt = guard.admit(ip(200), "p").expect("admitted again");
        attempt.succeeded();
        assert!(guard.lock().pending.is_empty(), "nothing left pending");
    }

    #[test]
    fn an_address_that_passed_is_not_locked_out_by_others_behind_it() {
        let guard = VerifyGuard::default();
        guard.admit(ip(9), "p").expect("admitted").succeeded();
        for _ in 0..MAX_FAILURES_PER_ADDRESS {
            guard.record_failure(ip(9), None);
        }
        assert!(guard.check_address(ip(9)).is_err());
        assert!(guard.admit(ip(9), "p").is_ok(), "trusted for its portal");
        assert!(guard.admit(ip(9), "other").is_err());
    }

    #[test]
    fn a_portal_under_attack_still_admits_addresses_that_passed() {
        let guard = VerifyGuard::default();
        guard.admit(ip(200), "p").expect("admitted").succeeded();
        for n in 0..MAX_FAILURES_PER_PORTAL {
            guard.admit(ip(n as u8), "p").expect("admitted").failed();
        }
        assert!(guard.admit(ip(100), "p").is_err(), "a stranger is refused");
        assert!(
            guard.admit(ip(200), "p").is_ok(),
            "the clinic's address passes"
        );
        assert!(guard.admit(ip(100), "other").is_ok());
    }

    #[test]
    fn maps_stay_bounded() {
        let guard = VerifyGuard::default();
        for n in 0..(MAX_TRACKED as u32 + 50) {
            let addr = Some(IpAddr::from(n.to_be_bytes()));
            guard.record_failure(addr, None);
        }
        assert!(guard.lock().addresses.len() <= MAX_TRACKED);
    }

    #[test]
    fn new_addresses_cannot_push_out_a_portal_or_a_refused_address() {
        let guard = VerifyGuard::default();
        for n in 0..MAX_FAILURES_PER_PORTAL {
            guard.record_failure(ip(n as u8), Some("p"));
        }
        for _ in 0..MAX_FAILURES_PER_ADDRESS {
            guard.record_failure(ip(250), None);
        }
        assert!(guard.admit(ip(100), "p").is_err());
        // Cycling through IPv6 /64s: a new address for every failure.
        for n in 0..(MAX_TRACKED as u64 + 1000) {
            let mut octets = [0u8; 16];
            octets[..8].copy_from_slice(&(0x2001_0db8_0000_0000 + n).to_be_bytes());
            guard.record_failure(Some(IpAddr::from(octets)), None);
        }
        assert!(guard.lock().addresses.len() <= MAX_TRACKED);
        assert!(
            guard.admit(ip(100), "p").is_err(),
            "the portal's count stands"
        );
        assert!(
            guard.check_address(ip(250)).is_err(),
            "the refused address too"
        );
        // And a flood of claimed portals does not push out the refused one.
        for n in 0..(MAX_TRACKED + 50) {
            guard.record_failure(None, Some(&format!("install:{n}.example")));
        }
        assert!(guard.lock().portals.len() <= MAX_TRACKED);
        assert!(guard.admit(ip(100), "p").is_err());
    }

    #[test]
    fn tokens_are_kept_by_hash_with_their_first_expiry() {
        let guard = VerifyGuard::default();
        let hash = TokenHash::of("token");
        assert!(guard.token(&hash).is_none());
        guard.remember_token(hash, 1, 17, "Игорь", Duration::from_secs(3600));
        let entity = EntityRef {
            kind: crate::invitations::EntityType::Deal,
            id: 5,
        };
        assert!(!guard.may_read(&hash, entity));
        guard.note_readable(&hash, entity);
        assert!(guard.may_read(&hash, entity));
        guard.remember_token(hash, 1, 17, "Игорь", Duration::ZERO);
        assert!(guard.token(&hash).is_some(), "the first expiry stands");
        let gone = TokenHash::of("short");
        guard.remember_token(gone, 1, 17, "Игорь", Duration::ZERO);
        assert!(guard.token(&gone).is_none());
    }
}

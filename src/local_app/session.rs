//! Short-lived signed sessions for the pages Bitrix24 opens in an iframe. The frame
//! POST is verified with the portal once; the page's follow-up requests (PDF, a new
//! link, the admin's actions) carry this session instead of the doctor's token, and
//! it binds them to the portal, the user and the one deal (or to the admin page).
//!
//! Format: `<portal>.<user>.<scope>.<expires>.<hmac>`, where scope is `D<id>` (deal),
//! `L<id>` (lead) or `A` (admin) and the MAC is HMAC-SHA256 over the rest, in hex.
//! Only ASCII digits, letters and dots: safe in a query string and a form field.

use chrono::{DateTime, Duration, Utc};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::invitations::{EntityRef, EntityType};

/// Long enough for a consultation with the tab open, short enough that a leaked
/// link stops working the same day.
pub const SESSION_TTL: Duration = Duration::minutes(30);

/// Domain separation: a MAC made for something else with the same key never passes.
const CONTEXT: &[u8] = b"opros-frame-session-v1:";

/// What a session allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The deal (or lead) tab of one document.
    Entity(EntityRef),
    /// The application's settings page.
    Admin,
}

/// A verified session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub portal_id: i64,
    pub user_id: i64,
    pub scope: Scope,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Malformed, tampered or signed with another key.
    #[error("session invalid")]
    Invalid,
    #[error("session expired")]
    Expired,
    /// Genuine, but for another portal, document or page.
    #[error("session belongs elsewhere")]
    WrongScope,
}

impl Session {
    /// A session for `scope`, valid for [`SESSION_TTL`] from `now`.
    pub fn new(portal_id: i64, user_id: i64, scope: Scope, now: DateTime<Utc>) -> Self {
        Session {
            portal_id,
            user_id,
            scope,
            expires_at: now + SESSION_TTL,
        }
    }

    /// The signed token.
    pub fn sign(&self, key: &[u8]) -> String {
        let payload = format!(
            "{}.{}.{}.{}",
            self.portal_id,
            self.user_id,
            scope_text(self.scope),
            self.expires_at.timestamp()
        );
        format!("{payload}.{}", hex::encode(mac(key, &payload)))
    }

    /// Checks the MAC and the expiry.
    pub fn verify(key: &[u8], token: &str, now: DateTime<Utc>) -> Result<Session, SessionError> {
        let (payload, tag) = token.rsplit_once('.').ok_or(SessionError::Invalid)?;
        let tag = hex::decode(tag).map_err(|_| SessionError::Invalid)?;
        let mut check = keyed(key);
        check.update(CONTEXT);
        check.update(payload.as_bytes());
        check
            .verify_slice(&tag)
            .map_err(|_| SessionError::Invalid)?;
        let parts: Vec<&str> = payload.split('.').collect();
        let [portal, user, scope, expires] = parts.as_slice() else {
            return Err(SessionError::Invalid);
        };
        let expires_at = expires
            .parse::<i64>()
            .ok()
            .and_then(|t| DateTime::from_timestamp(t, 0))
            .ok_or(SessionError::Invalid)?;
        if expires_at <= now {
            return Err(SessionError::Expired);
        }
        Ok(Session {
            portal_id: portal.parse().map_err(|_| SessionError::Invalid)?,
            user_id: user.parse().map_err(|_| SessionError::Invalid)?,
            scope: parse_scope(scope).ok_or(SessionError::Invalid)?,
            expires_at,
        })
    }

    /// The portal a token names, unverified: only for choosing who may frame the
    /// answer to it (see `page::frame_for`), never for access.
    pub fn portal_hint(token: &str) -> Option<i64> {
        token.split('.').next()?.parse().ok()
    }

    /// Verifies and requires the tab of some document.
    pub fn verify_tab(
        key: &[u8],
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<(Session, EntityRef), SessionError> {
        let s = Self::verify(key, token, now)?;
        match s.scope {
            Scope::Entity(e) => Ok((s, e)),
            Scope::Admin => Err(SessionError::WrongScope),
        }
    }

    /// Verifies and requires the admin page.
    pub fn verify_admin(
        key: &[u8],
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Session, SessionError> {
        let s = Self::verify(key, token, now)?;
        match s.scope {
            Scope::Admin => Ok(s),
            Scope::Entity(_) => Err(SessionError::WrongScope),
        }
    }
}

fn keyed(key: &[u8]) -> Hmac<Sha256> {
    // A key of one SHA-256 block never makes `new_from_slice` fail: hash any key to 32
    // bytes and zero-pad it to the block, which is what HMAC itself does with short keys.
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(&Sha256::digest(key));
    <Hmac<Sha256> as KeyInit>::new(&block.into())
}

fn mac(key: &[u8], payload: &str) -> Vec<u8> {
    let mut m = keyed(key);
    m.update(CONTEXT);
    m.update(payload.as_bytes());
    m.finalize().into_bytes().to_vec()
}

fn scope_text(scope: Scope) -> String {
    match scope {
        Scope::Entity(EntityRef {
            kind: EntityType::Deal,
            id,
        }) => format!("D{id}"),
        Scope::Entity(EntityRef {
            kind: EntityType::Lead,
            id,
        }) => format!("L{id}"),
        // `T<entityTypeId>_<id>`: the item's type is part of what the session opens.
        Scope::Entity(EntityRef {
            kind: EntityType::Dynamic(t),
            id,
        }) => format!("T{t}_{id}"),
        Scope::Admin => "A".to_owned(),
    }
}

fn parse_scope(s: &str) -> Option<Scope> {
    if s == "A" {
        return Some(Scope::Admin);
    }
    let (kind, id) = match s.get(..1)? {
        "D" => (EntityType::Deal, s.get(1..)?),
        "L" => (EntityType::Lead, s.get(1..)?),
        "T" => {
            let (t, id) = s.get(1..)?.split_once('_')?;
            let t = t.bytes().all(|b| b.is_ascii_digit()).then_some(t)?;
            (EntityType::dynamic(t.parse().ok()?)?, id)
        }
        _ => return None,
    };
    // Digits only: `parse` would take a sign, and a scope has one spelling.
    let id = id.bytes().all(|b| b.is_ascii_digit()).then_some(id)?;
    let id = id.parse::<i64>().ok().filter(|id| *id > 0)?;
    Some(Scope::Entity(EntityRef { kind, id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn deal(id: i64) -> Scope {
        Scope::Entity(EntityRef {
            kind: EntityType::Deal,
            id,
        })
    }

    #[test]
    fn round_trip_and_scopes() {
        let now = Utc::now();
        let s = Session::new(3, 17, deal(4217), now);
        let token = s.sign(KEY);
        let back = Session::verify(KEY, &token, now).expect("valid");
        assert_eq!(back.portal_id, 3);
        assert_eq!(back.user_id, 17);
        assert_eq!(back.scope, deal(4217));
        assert!(Session::verify_tab(KEY, &token, now).is_ok());
        assert_eq!(
            Session::verify_admin(KEY, &token, now),
            Err(SessionError::WrongScope)
        );
        let admin = Session::new(3, 1, Scope::Admin, now).sign(KEY);
        assert!(Session::verify_admin(KEY, &admin, now).is_ok());
        assert_eq!(
            Session::verify_tab(KEY, &admin, now).map(|(_, e)| e),
            Err(SessionError::WrongScope)
        );
    }

    #[test]
    fn an_item_scope_names_its_type_and_id() {
        let item = |t, id| {
            Scope::Entity(EntityRef {
                kind: EntityType::Dynamic(t),
                id,
            })
        };
        let now = Utc::now();
        let token = Session::new(3, 17, item(128, 4217), now).sign(KEY);
        assert!(token.contains(".T128_4217."), "{token}");
        let back = Session::verify(KEY, &token, now).expect("valid");
        assert_eq!(back.scope, item(128, 4217));
        // The same id of another type or a deal is another scope.
        assert_ne!(back.scope, item(130, 4217));
        assert_ne!(back.scope, deal(4217));
        for scope in [
            "T128_4217",
            "T31_5",
            "T128_0",
            "T128",
            "T_5",
            "T128_5_6",
            "T+128_5",
        ] {
            let expected = (scope == "T128_4217").then(|| item(128, 4217));
            assert_eq!(parse_scope(scope), expected, "{scope}");
        }
    }

    #[test]
    fn tampering_expiry_and_other_keys_fail() {
        let now = Utc::now();
        let token = Session::new(3, 17, deal(4217), now).sign(KEY);
        let other_deal = token.replacen("D4217", "D4218", 1);
        assert_eq!(
            Session::verify(KEY, &other_deal, now),
            Err(SessionError::Invalid)
        );
        assert_eq!(
            Session::verify(b"another key", &token, now),
            Err(SessionError::Invalid)
        );
        assert_eq!(
            Session::verify(KEY, &token, now + SESSION_TTL + Duration::seconds(1)),
            Err(SessionError::Expired)
        );
        for junk in ["", ".", "a.b.c.d.e", "3.17.D4217.1", "3.17.X1.99.00"] {
            assert_eq!(Session::verify(KEY, junk, now), Err(SessionError::Invalid));
        }
    }
}

//! Patient links: `{PUBLIC_URL}/s/{token}`, the token a compact JWT (HS256) carrying
//! the invitation id and its expiry. Short enough for an SMS (~115 characters).

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::crm::InvitationId;
use crate::db::entities::invitation;
use crate::secret::Secret;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// Invitation id; one letter keeps the link short.
    i: String,
    exp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Signature valid, time is up: the patient gets «срок истёк».
    #[error("link expired")]
    Expired { invitation: InvitationId },
    /// Anything else: tampered, truncated, signed with another key. No hint why.
    #[error("link invalid")]
    Invalid,
}

#[derive(Clone)]
pub struct LinkSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSigner(***)")
    }
}

impl LinkSigner {
    pub fn new(secret: &Secret<String>) -> Self {
        let key = secret.expose().as_bytes();
        Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
        }
    }

    pub fn sign(&self, invitation: &str, expires_at: DateTime<Utc>) -> String {
        let header = Header {
            typ: None,
            ..Header::new(Algorithm::HS256)
        };
        let claims = Claims {
            i: invitation.to_owned(),
            exp: expires_at.timestamp(),
        };
        // HS256 with an in-memory key cannot fail to encode these claims.
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap_or_default()
    }

    /// The invitation id behind a token, or why it is refused.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<InvitationId, LinkError> {
        if token.len() > 512 {
            return Err(LinkError::Invalid);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked below, after the signature, so that an expired but
        // genuine link can be told apart from a forged one.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| LinkError::Invalid)?;
        if data.claims.exp <= now.timestamp() {
            return Err(LinkError::Expired {
                invitation: data.claims.i.into(),
            });
        }
        Ok(data.claims.i.into())
    }
}

/// The patient's link `{PUBLIC_URL}/s/{token}` for an invitation: the one place it
/// is built (the robot's answer, the link field, the doctor's «Отправить новую
/// ссылку», the webhook robot's answer all come through here).
pub fn survey_url(config: &Config, signer: &LinkSigner, inv: &invitation::Model) -> String {
    config.public(&survey_path(&signer.sign(&inv.id, inv.expires_at)))
}

fn survey_path(token: &str) -> String {
    format!("/s/{token}")
}

/// A new invitation's id: [`crate::db::ordered_id`] (~70 random bits after the
/// time, unambiguous letters, short enough for the link and the timeline marker).
pub fn new_invitation_id() -> InvitationId {
    InvitationId::fresh()
}

/// A random secret for signing links when none is configured.
pub fn generate_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn signer(s: &str) -> LinkSigner {
        LinkSigner::new(&Secret::new(s.to_owned()))
    }

    #[test]
    fn round_trip_and_short() {
        let s = signer("k1");
        let now = Utc::now();
        let id = new_invitation_id();
        let token = s.sign(id.as_str(), now + Duration::days(7));
        assert!(token.len() < 130, "{} chars", token.len());
        assert_eq!(s.verify(&token, now).unwrap(), id);
    }

    #[test]
    fn expired_is_told_apart_from_forged() {
        let s = signer("k1");
        let now = Utc::now();
        let token = s.sign("abc", now - Duration::seconds(1));
        assert_eq!(
            s.verify(&token, now),
            Err(LinkError::Expired {
                invitation: "abc".to_owned().into()
            })
        );
        let other = signer("k2").sign("abc", now + Duration::days(1));
        assert_eq!(s.verify(&other, now), Err(LinkError::Invalid));
        let good = s.sign("abc", now + Duration::days(1));
        let at = good.len() - 10;
        let swap = if &good[at..=at] == "x" { "y" } else { "x" };
        let tampered = format!("{}{}{}", &good[..at], swap, &good[at + 1..]);
        assert_eq!(s.verify(&tampered, now), Err(LinkError::Invalid));
        assert_eq!(s.verify("garbage", now), Err(LinkError::Invalid));
    }
}

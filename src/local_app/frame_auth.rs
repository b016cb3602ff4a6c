//! Who opened a page inside Bitrix24 (the deal tab, the admin page). The iframe POST
//! comes from a browser and can be forged, so nothing in it is believed (protocol
//! §6.2, §11): the portal is found by `member_id` among the installed ones, and the
//! `AUTH_ID` is shown to that portal's stored endpoint — never to the POST's `DOMAIN` —
//! which answers with the user it belongs to. Repeated failures are refused before
//! any portal is asked, and a confirmed token is remembered by its hash until it
//! expires (`verify_guard`); the checks draw on their own share of the portal's
//! budget (`B24Client::call_to_verify`).

use std::net::IpAddr;

use poem::Response;
use poem::http::StatusCode;
use serde_json::json;
use url::Url;

use super::install::PortalQuery;
use super::verify_guard::{Refused, TokenHash};
use super::{page, portals};
use crate::bitrix24::callback::FrameCall;
use crate::bitrix24::{B24Error, Profile, Target};
use crate::db::entities::portal;
use crate::secret::Secret;
use crate::state::AppState;

/// A user the portal confirmed, with the token to act as them.
pub struct FrameCaller {
    pub portal: portal::Model,
    pub user_id: i64,
    /// «Игорь Воронцов», for the page header.
    pub user_name: String,
    /// Calls as this user on the portal's stored endpoint; never refreshed or stored.
    pub target: Target,
    /// The token's hash, under which the guard remembers what the portal confirmed.
    pub token: TokenHash,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameAuthError {
    #[error("unknown or uninstalled portal")]
    UnknownPortal,
    #[error("the portal did not confirm the token")]
    NotConfirmed,
    #[error("the portal could not be asked: {0}")]
    Unavailable(String),
    /// Too many failed checks lately, or the checks' budget is spent: nobody asked.
    #[error("refused before asking the portal")]
    Refused(Refused),
}

impl FrameAuthError {
    /// The page shown instead of anything else.
    pub fn error_page(&self) -> Response {
        match self {
            FrameAuthError::UnknownPortal => page::error(
                StatusCode::FORBIDDEN,
                "Приложение «Анкета пациента» не установлено на этом портале. \
                 Попросите администратора установить его заново.",
            ),
            FrameAuthError::NotConfirmed => page::error(
                StatusCode::FORBIDDEN,
                "Не удалось подтвердить вход: портал не узнал пользователя. \
                 Закройте вкладку и откройте её снова из карточки Битрикс24.",
            ),
            FrameAuthError::Unavailable(_) => page::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Битрикс24 не ответил. Попробуйте открыть вкладку ещё раз через минуту.",
            ),
            FrameAuthError::Refused(refused) => refused.error_page(),
        }
    }
}

/// Verifies an iframe POST (already decoded) with the portal. `ip` is the caller's
/// address (`verify_guard::client_ip`).
pub async fn verify(
    state: &AppState,
    ip: Option<IpAddr>,
    query: &PortalQuery,
    call: &FrameCall,
) -> Result<FrameCaller, FrameAuthError> {
    let guard = &state.verify_guard;
    // Refusals decided here, before any portal is asked, cost nothing and count
    // against nobody (`verify_guard`): behind a proxy they would lock out everyone.
    let Some(member_id) = call.member_id.as_deref() else {
        return Err(FrameAuthError::UnknownPortal);
    };
    let portal = portals::by_member(&state.db, member_id)
        .await
        .map_err(|e| FrameAuthError::Unavailable(e.to_string()))?
        .filter(|p| p.status == portal::INSTALLED);
    let Some(portal) = portal else {
        return Err(FrameAuthError::UnknownPortal);
    };
    // protocol §11 (1): a POST naming another domain than the one installed is not
    // from this portal's page.
    let claimed = query.domain.as_ref().or(call.domain.as_ref());
    if claimed.is_some_and(|d| !d.eq_ignore_ascii_case(&portal.domain)) {
        tracing::warn!(portal = %portal.domain, "Фрейм с чужим DOMAIN для известного member_id");
        return Err(FrameAuthError::NotConfirmed);
    }
    let Some(access) = call.auth_id.clone() else {
        return Err(FrameAuthError::NotConfirmed);
    };
    // Refused before the portal is asked (see `VerifyGuard::admit`).
    let attempt = guard
        .admit(ip, &portal.member_id)
        .map_err(FrameAuthError::Refused)?;
    // The AUTH_ID goes only to an endpoint the trusted OAuth server has named.
    let portal = match portals::with_vouched_endpoint(state, portal.clone()).await {
        Ok(current) => current,
        Err(portals::Revouch::Refused(e)) => {
            let err = refused(&portal, e);
            // A dead refresh token is asked about again only within the guard's
            // limits: forged POSTs naming this portal cannot hammer the OAuth server.
            if matches!(err, FrameAuthError::NotConfirmed) {
                attempt.failed();
            }
            return Err(err);
        }
        Err(portals::Revouch::Db(e)) => return Err(FrameAuthError::Unavailable(e.to_string())),
        Err(portals::Revouch::Gone) => return Err(FrameAuthError::UnknownPortal),
    };
    let endpoint = Url::parse(&portal.client_endpoint)
        .map_err(|e| FrameAuthError::Unavailable(e.to_string()))?;
    let token = TokenHash::of(&access);
    let target = Target::UserToken {
        endpoint,
        access_token: Secret::new(access),
    };
    // A token the portal confirmed lately: reopening the tab asks nothing.
    if let Some(known) = guard.token(&token).filter(|t| t.portal_id == portal.id) {
        return Ok(FrameCaller {
            portal,
            user_id: known.user_id,
            user_name: known.user_name,
            target,
            token,
        });
    }
    let profile = match state
        .b24
        .call_to_verify(&target, "profile", json!({}))
        .await
    {
        Ok(profile) => profile,
        Err(e) => {
            let err = refused(&portal, e);
            if matches!(err, FrameAuthError::NotConfirmed) {
                attempt.failed();
            }
            return Err(err);
        }
    };
    // An inactive user gets an empty profile (§11): not a login.
    let profile = Profile::from_answer(&profile);
    let Some(user_id) = profile.user_id() else {
        attempt.failed();
        return Err(FrameAuthError::NotConfirmed);
    };
    attempt.succeeded();
    let user_name = profile.full_name();
    // protocol §6.2: AUTH_EXPIRES is the token's lifetime in seconds.
    let lifetime = call.auth_lifetime();
    guard.remember_token(token, portal.id, user_id, &user_name, lifetime);
    Ok(FrameCaller {
        portal,
        user_id,
        user_name,
        target,
        token,
    })
}

/// Whether the caller may manage the application (`user.admin`, protocol §11).
pub async fn is_admin(state: &AppState, caller: &FrameCaller) -> Result<bool, FrameAuthError> {
    if let Some(known) = state.verify_guard.admin(&caller.token) {
        return Ok(known);
    }
    let answer = state
        .b24
        .call_to_verify(&caller.target, "user.admin", json!({}))
        .await
        .map_err(|e| refused(&caller.portal, e))?;
    let admin = crate::bitrix24::truthy(&answer);
    state.verify_guard.note_admin(&caller.token, admin);
    Ok(admin)
}

/// What a failed check means for the page.
pub fn refused(portal: &portal::Model, e: B24Error) -> FrameAuthError {
    if let B24Error::VerifyBudgetSpent { retry_after } = e {
        tracing::warn!(portal = %portal.domain, "Бюджет проверок входа для портала исчерпан");
        return FrameAuthError::Refused(Refused { retry_after });
    }
    // An answer that is no answer is the portal's trouble, not the caller's.
    let no_answer = matches!(
        e,
        B24Error::ResponseTooLarge { .. } | B24Error::InvalidResponse { .. }
    );
    if e.is_retryable() || no_answer {
        tracing::warn!(portal = %portal.domain, error = %e, "Портал не ответил на проверку входа");
        FrameAuthError::Unavailable(e.to_string())
    } else {
        tracing::warn!(portal = %portal.domain, code = ?e.code(), "Портал не подтвердил токен фрейма");
        FrameAuthError::NotConfirmed
    }
}

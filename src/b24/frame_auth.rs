//! Who opened a page inside Bitrix24 (the deal tab, the admin page). The iframe POST
//! comes from a browser and can be forged, so nothing in it is believed (protocol
//! §6.2, §11): the portal is found by `member_id` among the installed ones, and the
//! `AUTH_ID` is shown to that portal's stored endpoint — never to the POST's `DOMAIN` —
//! which answers with the user it belongs to.

use poem::Response;
use poem::http::StatusCode;
use serde_json::{Value, json};
use url::Url;

use super::inbound::text;
use super::install::PortalQuery;
use super::{page, portals};
use crate::bitrix24::{B24Error, Target};
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
}

#[derive(Debug, thiserror::Error)]
pub enum FrameAuthError {
    #[error("unknown or uninstalled portal")]
    UnknownPortal,
    #[error("the portal did not confirm the token")]
    NotConfirmed,
    #[error("the portal could not be asked: {0}")]
    Unavailable(String),
}

impl FrameAuthError {
    /// The page shown instead of anything else.
    pub fn page(&self) -> Response {
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
        }
    }
}

/// Verifies an iframe POST (already decoded) with the portal.
pub async fn verify(
    state: &AppState,
    query: &PortalQuery,
    form: &Value,
) -> Result<FrameCaller, FrameAuthError> {
    let member_id = text(form, &["member_id"]).ok_or(FrameAuthError::UnknownPortal)?;
    let portal = portals::by_member(&state.db, &member_id)
        .await
        .map_err(|e| FrameAuthError::Unavailable(e.to_string()))?
        .filter(|p| p.status == portal::INSTALLED)
        .ok_or(FrameAuthError::UnknownPortal)?;
    // protocol §11 (1): a POST naming another domain than the one installed is not
    // from this portal's page.
    let claimed = query.domain.clone().or_else(|| text(form, &["DOMAIN"]));
    if claimed.is_some_and(|d| !d.eq_ignore_ascii_case(&portal.domain)) {
        tracing::warn!(portal = %portal.domain, "Фрейм с чужим DOMAIN для известного member_id");
        return Err(FrameAuthError::NotConfirmed);
    }
    let access = text(form, &["AUTH_ID"]).ok_or(FrameAuthError::NotConfirmed)?;
    let endpoint = Url::parse(&portal.client_endpoint)
        .map_err(|e| FrameAuthError::Unavailable(e.to_string()))?;
    let target = Target::UserToken {
        endpoint,
        access_token: Secret::new(access),
    };
    let profile = state
        .b24
        .call(&target, "profile", json!({}))
        .await
        .map_err(|e| refused(&portal, e))?;
    // An inactive user gets an empty profile (§11): not a login.
    let user_id = text(&profile, &["ID"])
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or(FrameAuthError::NotConfirmed)?;
    let user_name = [text(&profile, &["NAME"]), text(&profile, &["LAST_NAME"])]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    Ok(FrameCaller {
        portal,
        user_id,
        user_name,
        target,
    })
}

/// Whether the caller may manage the application (`user.admin`, protocol §11).
pub async fn is_admin(state: &AppState, caller: &FrameCaller) -> Result<bool, FrameAuthError> {
    let answer = state
        .b24
        .call(&caller.target, "user.admin", json!({}))
        .await
        .map_err(|e| refused(&caller.portal, e))?;
    Ok(super::inbound::truthy(&answer))
}

fn refused(portal: &portal::Model, e: B24Error) -> FrameAuthError {
    if e.is_retryable() {
        tracing::warn!(portal = %portal.domain, error = %e, "Портал не ответил на проверку входа");
        FrameAuthError::Unavailable(e.to_string())
    } else {
        tracing::warn!(portal = %portal.domain, code = ?e.code(), "Портал не подтвердил токен фрейма");
        FrameAuthError::NotConfirmed
    }
}

//! `POST /b24/install`: the install page POST from the admin's browser and the
//! `ONAPPINSTALL` event (protocol §3). Nothing in either is taken on trust: the tokens
//! are checked with the portal itself before the portal is stored.

use chrono::{Duration, Utc};
use poem::http::StatusCode;
use poem::web::{Data, Query};
use poem::{Body, IntoResponse, Request, Response, handler};
use sea_orm::{ActiveModelTrait, ActiveValue::Set};
use serde_json::{Value, json};
use url::Url;

use super::inbound::{text, truthy};
use super::{page, portals, registration};
use crate::bitrix24::Target;
use crate::db::entities::portal;
use crate::secret::{Secret, constant_time_eq};
use crate::state::AppState;

#[derive(Debug, serde::Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub struct PortalQuery {
    pub domain: Option<String>,
    pub protocol: Option<String>,
    pub lang: Option<String>,
}

/// What the portal sent, from either source.
struct Claim {
    member_id: String,
    domain: String,
    client_endpoint: Url,
    server_endpoint: Option<String>,
    access_token: String,
    refresh_token: Option<String>,
    expires_in: i64,
    application_token: Option<String>,
    scope: Option<String>,
}

pub enum InstallError {
    BadRequest(String),
    Forbidden(String),
    Unavailable(String),
    /// The identity checks' budget is spent (`B24Client::call_to_verify`).
    Refused(super::verify_guard::Refused),
}

/// A failed check of the install's token; `say` words the portal's refusal.
fn not_verified(e: crate::bitrix24::B24Error, say: impl Fn(&str) -> String) -> InstallError {
    match e {
        crate::bitrix24::B24Error::VerifyBudgetSpent { retry_after } => {
            InstallError::Refused(super::verify_guard::Refused { retry_after })
        }
        e => InstallError::Forbidden(say(&e.admin_message())),
    }
}

/// A portal host as Bitrix24 sends it in `DOMAIN`: a host name, optionally with a port.
pub fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 255
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
}

/// `PROTOCOL=0` means plain http (protocol §3.2); anything else https.
pub fn endpoint_for(domain: &str, protocol: Option<&str>) -> Option<Url> {
    if !valid_domain(domain) {
        return None;
    }
    let scheme = if protocol == Some("0") {
        "http"
    } else {
        "https"
    };
    Url::parse(&format!("{scheme}://{domain}/rest/")).ok()
}

#[handler]
pub async fn install(
    req: &Request,
    Query(query): Query<PortalQuery>,
    body: Body,
    Data(state): Data<&AppState>,
) -> Response {
    let Some(form) = super::inbound::read(req, body).await else {
        let refused = page::error(StatusCode::BAD_REQUEST, "Не удалось прочитать запрос");
        return page::frame_for(refused, page::claimed_origin(&query).as_deref());
    };
    // Repeated failures from one address, or for one claimed portal, are refused
    // before any portal is asked (`verify_guard`).
    let ip = super::verify_guard::client_ip(req);
    let claimed = query
        .domain
        .clone()
        .or_else(|| text(&form, &["DOMAIN"]))
        .or_else(|| text(&form, &["auth", "domain"]))
        .filter(|d| valid_domain(d))
        .map(|d| format!("install:{}", d.to_ascii_lowercase()));
    let attempt = match &claimed {
        Some(portal) => state.verify_guard.admit(ip, portal).map(Some),
        None => state.verify_guard.check_address(ip).map(|()| None),
    };
    // The install page shows in the portal's frame: its result names the stored
    // portal (install_page), its refusals the portal the request claims.
    let claimed_origin = page::claimed_origin(&query);
    let attempt = match attempt {
        Ok(a) => a,
        Err(refused) => return page::frame_for(refused.page(), claimed_origin.as_deref()),
    };
    let response =
        if text(&form, &["event"]).is_some_and(|e| e.eq_ignore_ascii_case("ONAPPINSTALL")) {
            on_app_install(state, &form).await
        } else {
            let shown = install_page(state, &query, &form).await;
            if shown.status().is_success() {
                shown
            } else {
                page::frame_for(shown, claimed_origin.as_deref())
            }
        };
    match (attempt, response.status()) {
        (Some(a), StatusCode::OK) => a.succeeded(),
        (Some(a), StatusCode::FORBIDDEN) => a.failed(),
        (None, StatusCode::FORBIDDEN) => state.verify_guard.record_failure(ip, None),
        _ => {}
    }
    response
}

async fn install_page(state: &AppState, query: &PortalQuery, form: &Value) -> Response {
    if !state.config.oauth_enabled() {
        return page::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Режим локального приложения не настроен: задайте B24_CLIENT_ID и B24_CLIENT_SECRET \
             (из формы локального приложения в Битрикс24) и перезапустите сервис.",
        )
        .into_response();
    }
    let claim = match claim_from_page(query, form) {
        Ok(c) => c,
        Err(e) => return install_error(e),
    };
    match accept(state, claim, true).await {
        Ok((portal, installer)) => {
            let target = Target::Portal {
                member_id: portal.member_id.clone(),
            };
            let report = registration::ensure(state, &target, installer).await;
            store_report(state, &portal, &report).await;
            tracing::info!(
                portal = %portal.domain,
                complete = report.all_critical_ok(),
                "Приложение установлено на портал"
            );
            page::frame_for(
                page::install_result(&portal.domain, &report, state),
                page::portal_origin(&portal).as_deref(),
            )
        }
        Err(e) => install_error(e),
    }
}

fn install_error(e: InstallError) -> Response {
    let (status, msg) = match e {
        InstallError::Refused(refused) => return refused.page(),
        InstallError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
        InstallError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
        InstallError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
    };
    tracing::warn!(status = status.as_u16(), reason = %msg, "Установка отклонена");
    page::error(status, &msg).into_response()
}

fn claim_from_page(query: &PortalQuery, form: &Value) -> Result<Claim, InstallError> {
    let need = |k: &str| {
        text(form, &[k]).ok_or_else(|| {
            InstallError::BadRequest(format!(
                "В запросе установки нет поля {k}. Откройте приложение из Битрикс24 заново."
            ))
        })
    };
    let domain = query
        .domain
        .clone()
        .or_else(|| text(form, &["DOMAIN"]))
        .ok_or_else(|| InstallError::BadRequest("В запросе установки нет DOMAIN".into()))?;
    let protocol = query.protocol.clone().or_else(|| text(form, &["PROTOCOL"]));
    let client_endpoint = endpoint_for(&domain, protocol.as_deref())
        .ok_or_else(|| InstallError::BadRequest("Неверный адрес портала (DOMAIN)".into()))?;
    Ok(Claim {
        member_id: need("member_id")?,
        domain,
        client_endpoint,
        server_endpoint: text(form, &["SERVER_ENDPOINT"]),
        access_token: need("AUTH_ID")?,
        refresh_token: Some(need("REFRESH_ID")?),
        // protocol §3.2: AUTH_EXPIRES is a lifetime in seconds, not a timestamp.
        expires_in: text(form, &["AUTH_EXPIRES"])
            .and_then(|s| s.parse().ok())
            .unwrap_or(3600),
        application_token: text(form, &["APPLICATION_TOKEN"]),
        scope: text(form, &["APPLICATION_SCOPE"]),
    })
}

fn claim_from_event(form: &Value) -> Result<Claim, InstallError> {
    let auth = |k: &str| text(form, &["auth", k]);
    let domain =
        auth("domain").ok_or_else(|| InstallError::BadRequest("нет auth[domain]".into()))?;
    // The event names the endpoint; it must be the portal's own, or we fall back to
    // the domain's https endpoint.
    let client_endpoint = auth("client_endpoint")
        .and_then(|e| Url::parse(&e).ok())
        .filter(|u| {
            let host = match u.port() {
                Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
                None => u.host_str().unwrap_or_default().to_owned(),
            };
            host == domain
        })
        .or_else(|| endpoint_for(&domain, None))
        .ok_or_else(|| InstallError::BadRequest("неверный auth[domain]".into()))?;
    Ok(Claim {
        member_id: auth("member_id")
            .ok_or_else(|| InstallError::BadRequest("нет auth[member_id]".into()))?,
        domain,
        client_endpoint,
        server_endpoint: auth("server_endpoint"),
        access_token: auth("access_token")
            .ok_or_else(|| InstallError::BadRequest("нет auth[access_token]".into()))?,
        refresh_token: auth("refresh_token"),
        expires_in: auth("expires_in")
            .and_then(|s| s.parse().ok())
            .unwrap_or(3600),
        application_token: auth("application_token"),
        scope: auth("scope"),
    })
}

/// Verifies the claim with the portal and stores it. Returns the portal and the
/// installing user's id.
async fn accept(
    state: &AppState,
    claim: Claim,
    from_page: bool,
) -> Result<(portal::Model, Option<i64>), InstallError> {
    let existing = portals::by_member(&state.db, &claim.member_id)
        .await
        .map_err(|e| InstallError::Unavailable(format!("база данных недоступна: {e}")))?;

    if let Some(p) = &existing
        && p.domain != claim.domain
    {
        // A renamed portal keeps its member_id; only its own application token may move it.
        let same_app = match (&p.application_token, &claim.application_token) {
            (Some(a), Some(b)) => constant_time_eq(a.as_bytes(), b.as_bytes()),
            _ => false,
        };
        if !same_app {
            return Err(InstallError::Forbidden(
                "Этот портал уже установлен под другим адресом; запрос отклонён".into(),
            ));
        }
    }

    // protocol §11: a call with the token on the portal's own endpoint proves the token;
    // app.info only answers in an application context, so it proves it is ours.
    let target = Target::UserToken {
        endpoint: claim.client_endpoint.clone(),
        access_token: Secret::new(claim.access_token.clone()),
    };
    let info = state
        .b24
        .call_to_verify(&target, "app.info", json!({}))
        .await
        .map_err(|e| {
            not_verified(e, |why| {
                format!(
                    "Портал не подтвердил установку ({why}). Откройте приложение из Битрикс24 заново."
                )
            })
        })?;
    let profile = state
        .b24
        .call_to_verify(&target, "profile", json!({}))
        .await
        .map_err(|e| {
            not_verified(e, |why| {
                format!("Портал не подтвердил пользователя ({why})")
            })
        })?;
    if from_page {
        let is_admin = match profile.get("ADMIN") {
            Some(flag) => truthy(flag),
            // protocol §11: `ADMIN` in `profile` equals `user.admin`; ask that when absent.
            None => state
                .b24
                .call_to_verify(&target, "user.admin", json!({}))
                .await
                .map(|v| truthy(&v))
                .map_err(|e| {
                    if e.is_retryable() {
                        InstallError::Unavailable(e.admin_message())
                    } else {
                        InstallError::Forbidden(format!(
                            "Портал не подтвердил права пользователя ({})",
                            e.admin_message()
                        ))
                    }
                })?,
        };
        if !is_admin {
            return Err(InstallError::Forbidden(
                "Установить приложение может только администратор портала".into(),
            ));
        }
    }
    let installer = text(&profile, &["ID"]).and_then(|s| s.parse().ok());
    tracing::debug!(app = ?info.get("CODE"), "Портал подтвердил токен приложения");

    if !from_page
        && let (Some(p), Some(new)) = (&existing, &claim.application_token)
        && p.status == portal::INSTALLED
        && let Some(stored) = &p.application_token
        && !constant_time_eq(stored.as_bytes(), new.as_bytes())
    {
        return Err(InstallError::Forbidden(
            "application_token события не совпадает с полученным при установке".into(),
        ));
    }

    let now = Utc::now();
    let mut row: portal::ActiveModel = match existing.clone() {
        Some(p) => p.into(),
        None => portal::ActiveModel {
            member_id: Set(claim.member_id.clone()),
            created_at: Set(now),
            registration: Set(None),
            ..Default::default()
        },
    };
    row.domain = Set(claim.domain.clone());
    row.client_endpoint = Set(claim.client_endpoint.to_string());
    if claim.server_endpoint.is_some() {
        row.server_endpoint = Set(claim.server_endpoint.clone());
    }
    row.access_token = Set(Some(claim.access_token.clone()));
    if claim.refresh_token.is_some() {
        row.refresh_token = Set(claim.refresh_token.clone());
    }
    row.expires_at = Set(Some(
        now + Duration::seconds(claim.expires_in.clamp(60, 86_400)),
    ));
    let keep_token = existing
        .as_ref()
        .filter(|p| p.status == portal::INSTALLED)
        .and_then(|p| p.application_token.clone());
    row.application_token = Set(match (from_page, &claim.application_token) {
        // A verified admin install (a reinstall issues a new application token).
        (true, Some(t)) => Some(t.clone()),
        (_, Some(t)) if keep_token.is_none() => Some(t.clone()),
        _ => keep_token,
    });
    if claim.scope.is_some() {
        row.scope = Set(claim.scope.clone());
    }
    if installer.is_some() {
        row.installed_by = Set(installer);
    }
    row.status = Set(portal::INSTALLED.to_owned());
    row.updated_at = Set(now);
    let saved = match existing {
        Some(_) => row.update(&state.db).await,
        None => row.insert(&state.db).await,
    }
    .map_err(|e| InstallError::Unavailable(format!("база данных недоступна: {e}")))?;
    let _ = crate::db::audit(
        &state.db,
        Some(saved.id),
        &format!("user:{}", installer.unwrap_or_default()),
        if from_page {
            "install"
        } else {
            "install_event"
        },
        Some(&saved.domain),
    )
    .await;
    Ok((saved, installer))
}

async fn store_report(state: &AppState, portal: &portal::Model, report: &registration::Report) {
    let mut row: portal::ActiveModel = portal.clone().into();
    row.registration = Set(serde_json::to_value(report).ok());
    row.updated_at = Set(Utc::now());
    if let Err(e) = row.update(&state.db).await {
        tracing::warn!(error = %e, "Не удалось сохранить результат регистрации");
    }
}

/// `ONAPPINSTALL` (protocol §3.3): may come late or never; it refreshes the stored
/// tokens and registers only if the install page never did.
pub async fn on_app_install(state: &AppState, form: &Value) -> Response {
    let claim = match claim_from_event(form) {
        Ok(c) => c,
        Err(e) => return install_error_json(e),
    };
    match accept(state, claim, false).await {
        Ok((portal, installer)) => {
            if portal.registration.is_none() {
                let target = Target::Portal {
                    member_id: portal.member_id.clone(),
                };
                let report = registration::ensure(state, &target, installer).await;
                store_report(state, &portal, &report).await;
            }
            tracing::info!(portal = %portal.domain, "Получено событие ONAPPINSTALL");
            poem::web::Json(json!({"ok": true})).into_response()
        }
        Err(e) => install_error_json(e),
    }
}

fn install_error_json(e: InstallError) -> Response {
    let err = match e {
        InstallError::Refused(refused) => return refused.json(),
        InstallError::BadRequest(m) => crate::error::ApiError::bad_request("bad_install_event", m),
        InstallError::Forbidden(m) => crate::error::ApiError::forbidden("install_not_verified", m),
        InstallError::Unavailable(m) => crate::error::ApiError::unavailable("unavailable", m),
    };
    tracing::warn!(reason = %err.body().message, "Событие установки отклонено");
    err.into_response()
}

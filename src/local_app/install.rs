//! `POST /b24/install`: the install page POST from the admin's browser and the
//! `ONAPPINSTALL` event (protocol §3). Nothing in either is taken on trust (CONTRACT
//! "Trust rules"): the offered refresh token is exchanged once at the trusted OAuth
//! server, whose answer says which portal it belongs to (`member_id`) and where that
//! portal lives (`client_endpoint`); the portal then confirms with the new token that
//! the app is ours and the user is its admin. The request's own `DOMAIN`,
//! `server_endpoint` and `client_endpoint` are never called: they only have to agree
//! with what was vouched for.

use chrono::Utc;
use poem::http::StatusCode;
use poem::web::Data;
use poem::{IntoResponse, Request, Response, handler};
use sea_orm::{ActiveModelTrait, ActiveValue::Set};
use serde_json::{Value, json};
use url::Url;

use super::frame_post::FramePost;
use super::{page, portals, registration};
use crate::bitrix24::callback::{Auth, FrameCall, InstallCall};
use crate::bitrix24::truthy;
use crate::bitrix24::{B24Error, Profile, Target, Vouched};
use crate::db::entities::portal;
use crate::error::ErrorCode;
use crate::secret::{Secret, constant_time_eq};
use crate::state::AppState;

#[derive(Debug, serde::Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub struct PortalQuery {
    pub domain: Option<String>,
    pub protocol: Option<String>,
    pub lang: Option<String>,
}

/// What the request claims, from either source. Only compared, never called.
struct Claim {
    member_id: String,
    /// `host[:port]`, lower case.
    domain: String,
    /// Chooses the OAuth server only as `bitrix24::token_url` allows.
    server_endpoint: Option<Url>,
    refresh_token: Secret<String>,
    application_token: Option<String>,
    /// `AUTH_ID` / `auth[access_token]`: confirms an admin on the stored endpoint
    /// when the offered pair was already exchanged (see [`Accepted::AlreadyInstalled`]).
    access_token: Option<Secret<String>>,
}

/// What [`accept`] found.
enum Accepted {
    /// Vouched for by the OAuth server, confirmed by the portal and stored; with the
    /// installing user's id.
    Stored(portal::Model, Option<i64>),
    /// The OAuth server refused the offered refresh token as used (`invalid_grant`),
    /// and the request names a portal installed here with its stored application
    /// token. Bitrix24 hands the same pair to every frame within the access token's
    /// hour (protocol §2.1, §3.2), and `ONAPPINSTALL` may carry the pair the install
    /// page already exchanged (§3.3), so a genuine request looks like this. Nothing
    /// is stored: the stored tokens stay as they are.
    AlreadyInstalled(portal::Model),
}

/// A refused install: HTTP status, a stable code (the event's JSON answer) and a
/// fixed Russian message. No remote text goes into either.
pub struct InstallError {
    status: StatusCode,
    code: ErrorCode,
    message: &'static str,
    /// Set when the identity checks' budget is spent (`B24Client::call_to_verify`):
    /// answered as the guard's 429 with `Retry-After`.
    busy: Option<super::verify_guard::Refused>,
    /// Decided without asking the OAuth server or the portal: counts against nobody.
    local: bool,
}

const fn refused(status: StatusCode, code: ErrorCode, message: &'static str) -> InstallError {
    InstallError {
        status,
        code,
        message,
        busy: None,
        local: false,
    }
}

impl InstallError {
    const fn decided_locally(self) -> Self {
        InstallError {
            local: true,
            ..self
        }
    }

    fn mark(&self, mut response: Response) -> Response {
        if self.local {
            response.extensions_mut().insert(DecidedLocally);
        }
        response
    }
}

/// On a refusal's response: no outbound call was made for it (`verify_guard`).
#[derive(Debug, Clone, Copy)]
struct DecidedLocally;

/// On a 200 that confirmed nobody (an exchanged pair, a repeated token): it must not
/// make the caller's address trusted (`verify_guard`).
#[derive(Debug, Clone, Copy)]
struct ConfirmedNobody;

fn confirmed_nobody(mut response: Response) -> Response {
    response.extensions_mut().insert(ConfirmedNobody);
    response
}

/// Runs an install-kind request (the install page, `ONAPPINSTALL`, `ONAPPUPDATE`)
/// under the guard (`verify_guard`), keyed by the portal it names: refused at once
/// after repeated failures; afterwards a refusal by the OAuth server or the portal
/// counts against the address and the key, a refusal decided here counts against
/// nobody, and a 200 that confirmed nobody but cost an outbound call counts against
/// the key alone — so a loop of such requests is bounded too, while nobody is
/// trusted for it.
pub(super) async fn guarded(
    state: &AppState,
    req: &Request,
    key: Option<String>,
    refusal: impl FnOnce(super::verify_guard::Refused) -> Response,
    run: impl std::future::Future<Output = Response>,
) -> Response {
    let ip = super::verify_guard::client_ip(req);
    let attempt = match &key {
        Some(key) => state.verify_guard.admit(ip, key).map(Some),
        None => state.verify_guard.check_address(ip).map(|()| None),
    };
    let attempt = match attempt {
        Ok(a) => a,
        Err(refused) => return refusal(refused),
    };
    let response = run.await;
    let costly = response.extensions().get::<DecidedLocally>().is_none();
    let confirmed = response.extensions().get::<ConfirmedNobody>().is_none();
    match (attempt, response.status()) {
        (Some(a), StatusCode::OK) if confirmed => a.succeeded(),
        (Some(a), StatusCode::OK) if costly => {
            drop(a);
            state.verify_guard.record_failure(None, key.as_deref());
        }
        (Some(a), StatusCode::FORBIDDEN) if costly => a.failed(),
        (None, StatusCode::FORBIDDEN) if costly => state.verify_guard.record_failure(ip, None),
        _ => {}
    }
    response
}

const NOT_VOUCHED: InstallError = refused(
    StatusCode::FORBIDDEN,
    ErrorCode::InstallNotVouched,
    "Сервер авторизации Битрикс24 не подтвердил установку. Откройте приложение из Битрикс24 заново.",
);
const MISMATCH: InstallError = refused(
    StatusCode::FORBIDDEN,
    ErrorCode::PortalMismatch,
    "Адрес портала или member_id в запросе не совпадают с подтверждёнными сервером авторизации.",
);
const NOT_ALLOWED: InstallError = refused(
    StatusCode::FORBIDDEN,
    ErrorCode::PortalNotAllowed,
    "Этому порталу установка не разрешена (B24_ALLOWED_DOMAINS).",
);
const NOT_VERIFIED: InstallError = refused(
    StatusCode::FORBIDDEN,
    ErrorCode::InstallNotVerified,
    "Портал не подтвердил установку. Откройте приложение из Битрикс24 заново.",
);
const FOREIGN_APP: InstallError = refused(
    StatusCode::FORBIDDEN,
    ErrorCode::ForeignApplication,
    "Токен выдан другому приложению, а не этому сервису (B24_CLIENT_ID).",
);
const NOT_ADMIN: InstallError = refused(
    StatusCode::FORBIDDEN,
    ErrorCode::NotAdmin,
    "Установить приложение может только администратор портала.",
);
const STILL_INSTALLED: InstallError = refused(
    StatusCode::FORBIDDEN,
    ErrorCode::ApplicationTokenMismatch,
    "Приложение уже установлено на этом портале, а токен приложения в запросе другой; запрос отклонён.",
);
const UPDATE_REFUSED: InstallError = refused(
    StatusCode::FORBIDDEN,
    ErrorCode::AppUpdateRefused,
    "Приложение не установлено на этом портале; обновление не принято.",
);
const UNAVAILABLE: InstallError = refused(
    StatusCode::SERVICE_UNAVAILABLE,
    ErrorCode::Unavailable,
    "Битрикс24 или база данных сейчас недоступны. Попробуйте ещё раз через минуту.",
);

fn bad_request(message: &'static str) -> InstallError {
    refused(
        StatusCode::BAD_REQUEST,
        ErrorCode::BadInstallRequest,
        message,
    )
}

/// A portal host as Bitrix24 sends it in `DOMAIN`: a host name, optionally with a port.
pub fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 255
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
}

/// `B24_ALLOWED_DOMAINS`: empty = any portal the OAuth server vouches for.
fn allowed(state: &AppState, domain: &str) -> bool {
    let list = &state.config.b24_allowed_domains;
    list.is_empty() || list.iter().any(|d| d == domain)
}

#[handler]
pub async fn install(
    req: &Request,
    FramePost {
        query,
        call,
        claimed_origin,
    }: FramePost<InstallCall>,
    Data(state): Data<&AppState>,
) -> Response {
    let claimed = query
        .domain
        .clone()
        .or_else(|| call.frame.domain.clone())
        .or_else(|| call.auth.domain.clone());
    // The install page shows in the portal's frame: its result names the stored
    // portal (install_page), its refusals the portal the request claims.
    let run = async {
        if call
            .event
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case("ONAPPINSTALL"))
        {
            on_app_install(state, &call.auth).await
        } else {
            let shown = install_page(state, &query, &call.frame).await;
            if shown.status().is_success() {
                shown
            } else {
                page::frame_for(shown, claimed_origin.as_deref())
            }
        }
    };
    guarded(
        state,
        req,
        install_key(claimed.as_deref()),
        |refused| page::frame_for(refused.error_page(), claimed_origin.as_deref()),
        run,
    )
    .await
}

/// The guard's key of an install naming `domain`.
pub(super) fn install_key(domain: Option<&str>) -> Option<String> {
    domain
        .filter(|d| valid_domain(d))
        .map(|d| format!("install:{}", d.to_ascii_lowercase()))
}

async fn install_page(state: &AppState, query: &PortalQuery, frame: &FrameCall) -> Response {
    if !state.config.oauth_enabled() {
        return page::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Режим локального приложения не настроен: задайте B24_CLIENT_ID и B24_CLIENT_SECRET \
             (из формы локального приложения в Битрикс24) и перезапустите сервис.",
        )
        .into_response();
    }
    let claim = match claim_from_page(query, frame) {
        Ok(c) => c,
        Err(e) => return install_error(e),
    };
    let access_token = claim.access_token.clone();
    let accepted = match accept(state, claim, "install").await {
        Ok(Accepted::Stored(portal, installer)) => Ok((portal, installer)),
        // "Re-install repairs" within the hour, or a retry: the admin is confirmed
        // on the stored endpoint and the stored tokens register.
        Ok(Accepted::AlreadyInstalled(portal)) => confirm_on_stored(state, &portal, access_token)
            .await
            .map(|installer| (portal, installer)),
        Err(e) => Err(e),
    };
    match accepted {
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
    if let Some(busy) = e.busy {
        return busy.error_page();
    }
    tracing::warn!(
        status = e.status.as_u16(),
        code = %e.code,
        "Установка отклонена"
    );
    e.mark(page::error(e.status, e.message).into_response())
}

fn domain_of(raw: &str) -> Result<String, InstallError> {
    let domain = raw.trim().to_ascii_lowercase();
    if valid_domain(&domain) {
        Ok(domain)
    } else {
        Err(bad_request("Неверный адрес портала (DOMAIN)"))
    }
}

fn claim_from_page(query: &PortalQuery, frame: &FrameCall) -> Result<Claim, InstallError> {
    let domain = query
        .domain
        .clone()
        .or_else(|| frame.domain.clone())
        .ok_or_else(|| bad_request("В запросе установки нет DOMAIN"))?;
    Ok(Claim {
        domain: domain_of(&domain)?,
        member_id: frame.member_id.clone().ok_or_else(|| {
            bad_request(
                "В запросе установки нет поля member_id. Откройте приложение из Битрикс24 заново.",
            )
        })?,
        server_endpoint: frame
            .server_endpoint
            .as_deref()
            .and_then(|s| Url::parse(s).ok()),
        refresh_token: Secret::new(frame.refresh_id.clone().ok_or_else(|| {
            bad_request(
                "В запросе установки нет поля REFRESH_ID. Откройте приложение из Битрикс24 заново.",
            )
        })?),
        application_token: frame.application_token.clone(),
        access_token: frame.auth_id.clone().map(Secret::new),
    })
}

fn claim_from_event(auth: &Auth) -> Result<Claim, InstallError> {
    let domain = auth
        .domain
        .as_deref()
        .ok_or_else(|| bad_request("В событии нет auth[domain]"))?;
    Ok(Claim {
        domain: domain_of(domain)?,
        member_id: auth
            .member_id
            .clone()
            .ok_or_else(|| bad_request("В событии нет auth[member_id]"))?,
        server_endpoint: auth
            .server_endpoint
            .as_deref()
            .and_then(|s| Url::parse(s).ok()),
        // protocol §3.3: ONAPPINSTALL carries refresh_token. Without it the OAuth server
        // cannot say whose portal this is, so nothing may change.
        refresh_token: Secret::new(
            auth.refresh_token
                .clone()
                .ok_or(NOT_VOUCHED.decided_locally())?,
        ),
        application_token: auth.application_token.clone(),
        access_token: auth.access_token.clone().map(Secret::new),
    })
}

/// The OAuth server's answer about the offered refresh token. Its refusal (an
/// attacker's token, a used one) is `RefreshRejected`; see [`vouch_refused`].
async fn vouch(state: &AppState, claim: &Claim) -> Result<(Vouched, String), B24Error> {
    let vouched = state
        .b24
        .vouch(claim.server_endpoint.as_ref(), &claim.refresh_token)
        .await
        .inspect_err(|e| {
            tracing::warn!(code = e.code().unwrap_or_default(), error = %e, "Сервер авторизации не подтвердил токен установки");
        })?;
    // protocol §2.3: the answer's `domain` is the OAuth server's own; the portal is
    // the host of `client_endpoint`.
    let domain = Target::endpoint_host(&vouched.auth.client_endpoint).to_ascii_lowercase();
    Ok((vouched, domain))
}

/// A refusal and a failure to reach the OAuth server look the same to the caller
/// except for the status.
fn vouch_refused(e: &B24Error) -> InstallError {
    if e.is_retryable() || matches!(e, B24Error::OAuthNotConfigured) {
        UNAVAILABLE
    } else {
        NOT_VOUCHED
    }
}

/// The portal installed here that the request names by `member_id` and `DOMAIN`,
/// if the request carries its stored application token (compared in constant time).
async fn installed_here(
    state: &AppState,
    claim: &Claim,
) -> Result<Option<portal::Model>, InstallError> {
    let stored = portals::by_member(&state.db, &claim.member_id)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "База данных недоступна при установке");
            UNAVAILABLE
        })?;
    Ok(stored.filter(|p| {
        p.status == portal::INSTALLED
            && p.domain == claim.domain
            && match (&p.application_token, &claim.application_token) {
                (Some(a), Some(b)) => constant_time_eq(a.as_bytes(), b.as_bytes()),
                _ => false,
            }
    }))
}

/// The request's own access token, shown only to the portal's STORED endpoint (the
/// one the OAuth server named), must belong to an admin of our app there.
async fn confirm_on_stored(
    state: &AppState,
    stored: &portal::Model,
    access_token: Option<Secret<String>>,
) -> Result<Option<i64>, InstallError> {
    let Some(access_token) = access_token else {
        return Err(NOT_VERIFIED);
    };
    // The token goes only to an endpoint the trusted OAuth server has named.
    let stored = match portals::with_vouched_endpoint(state, stored.clone()).await {
        Ok(current) => current,
        Err(portals::Revouch::Refused(e)) if e.is_retryable() => return Err(UNAVAILABLE),
        Err(portals::Revouch::Db(_)) => return Err(UNAVAILABLE),
        Err(portals::Revouch::Refused(_) | portals::Revouch::Gone) => return Err(NOT_VERIFIED),
    };
    let Ok(endpoint) = Url::parse(&stored.client_endpoint) else {
        return Err(NOT_VERIFIED);
    };
    let target = Target::UserToken {
        endpoint,
        access_token,
    };
    confirm_admin(state, &target, None).await
}

/// protocol §11 does not promise that `app.info`'s `CODE` is the client id, so only a
/// field that clearly names a local application's client id (`local.…`) other than
/// ours counts as another application.
fn names_other_app(info: &Value, client_id: &str) -> bool {
    ["CODE", "ID", "CLIENT_ID", "client_id"]
        .iter()
        .filter_map(|k| info.get(*k).and_then(Value::as_str))
        .any(|v| v.starts_with("local.") && v != client_id)
}

/// With a user's token on an endpoint the OAuth server named (`target`): `app.info`
/// answers only in an application context (protocol §11) and must not name another
/// app; `profile` says who the user is, and only an admin installs. `token_owner` is
/// the user the OAuth server named, when it named one. Returns the user's id.
async fn confirm_admin(
    state: &AppState,
    target: &Target,
    token_owner: Option<i64>,
) -> Result<Option<i64>, InstallError> {
    let portal_refused = |e: B24Error| {
        tracing::warn!(code = e.code().unwrap_or_default(), error = %e, "Портал не подтвердил токен установки");
        if let B24Error::VerifyBudgetSpent { retry_after } = e {
            InstallError {
                busy: Some(super::verify_guard::Refused { retry_after }),
                ..UNAVAILABLE
            }
        } else if e.is_retryable() {
            UNAVAILABLE
        } else {
            NOT_VERIFIED
        }
    };
    let info = state
        .b24
        .call_to_verify(target, "app.info", json!({}))
        .await
        .map_err(portal_refused)?;
    if let Some(ours) = &state.config.b24_client_id
        && names_other_app(&info, ours)
    {
        return Err(FOREIGN_APP);
    }
    let profile = state
        .b24
        .call_to_verify(target, "profile", json!({}))
        .await
        .map_err(portal_refused)?;
    let profile = Profile::from_answer(&profile);
    let is_admin = match &profile.admin {
        Some(flag) => truthy(flag),
        // protocol §11: `ADMIN` in `profile` equals `user.admin`; ask that when absent.
        None => state
            .b24
            .call_to_verify(target, "user.admin", json!({}))
            .await
            .map(|v| truthy(&v))
            .map_err(portal_refused)?,
    };
    let user = profile.user_id();
    // The token's owner as the OAuth server named it must be the one the portal sees.
    if let (Some(vouched), Some(seen)) = (token_owner, user)
        && vouched != seen
    {
        return Err(NOT_VERIFIED);
    }
    if !is_admin {
        return Err(NOT_ADMIN);
    }
    Ok(user)
}

/// A portal that is installed here changes hands only with its stored
/// `application_token`. A genuine reinstall after an `ONAPPUNINSTALL` that never
/// arrived carries a new token; it is told from a forgery by asking the OAuth server
/// about the stored refresh token: after an uninstall it is dead (`invalid_grant`,
/// protocol §2.5, §7.3), while a live one means the installation it belongs to still
/// exists and the request is not its owner. A live token is refreshed and saved by
/// the client as any refresh is, so asking loses nothing.
async fn may_replace(
    state: &AppState,
    stored: &portal::Model,
    claim: &Claim,
) -> Result<(), InstallError> {
    if stored.status != portal::INSTALLED {
        return Ok(());
    }
    let same_app = match (&stored.application_token, &claim.application_token) {
        (Some(a), Some(b)) => constant_time_eq(a.as_bytes(), b.as_bytes()),
        _ => false,
    };
    if same_app {
        return Ok(());
    }
    match state.b24.renew(&stored.member_id).await {
        Err(B24Error::RefreshRejected | B24Error::NotInstalled { .. }) => {
            tracing::info!(portal = %stored.domain, "Переустановка: прежняя установка больше не действует");
            Ok(())
        }
        Ok(()) => Err(STILL_INSTALLED),
        // The request comes from a confirmed admin of our app on this portal, so any
        // final refusal of the stored token (`invalid_client` after the local app was
        // re-created, 404 for an unknown installation) means that installation is
        // dead too; only a failure to get an answer keeps it.
        Err(e) if !e.is_retryable() => {
            tracing::info!(portal = %stored.domain, code = e.code().unwrap_or_default(), "Переустановка: прежний токен отклонён окончательно");
            Ok(())
        }
        Err(_) => Err(UNAVAILABLE),
    }
}

/// Verifies the claim with the OAuth server and the portal and stores the portal.
async fn accept(
    state: &AppState,
    claim: Claim,
    source: &'static str,
) -> Result<Accepted, InstallError> {
    match verify_claim(state, &claim).await? {
        Verified::AlreadyInstalled(portal) => Ok(Accepted::AlreadyInstalled(portal)),
        Verified::Admin {
            vouched,
            domain,
            installer,
        } => {
            let saved = store_portal(state, &claim, vouched, domain, installer, source).await?;
            Ok(Accepted::Stored(saved, installer))
        }
    }
}

/// What the OAuth server and the portal said about a claim.
enum Verified {
    /// The offered pair was exchanged before; the portal is installed here with it.
    AlreadyInstalled(portal::Model),
    /// A fresh pair, vouched for this portal, of one of its administrators.
    Admin {
        vouched: Vouched,
        /// The vouched `host[:port]`, lower case.
        domain: String,
        installer: Option<i64>,
    },
}

/// The claim checked against the OAuth server (which portal the offered pair is
/// for), the allow list, and the portal (whose token it is, and an admin's).
async fn verify_claim(state: &AppState, claim: &Claim) -> Result<Verified, InstallError> {
    // Cheap refusal first: no outbound call for a portal that may not install.
    if !allowed(state, &claim.domain) {
        return Err(NOT_ALLOWED.decided_locally());
    }
    let (vouched, domain) = match vouch(state, claim).await {
        Ok(v) => v,
        Err(B24Error::RefreshRejected) => {
            return match installed_here(state, claim).await? {
                Some(p) => Ok(Verified::AlreadyInstalled(p)),
                None => Err(NOT_VOUCHED),
            };
        }
        Err(e) => return Err(vouch_refused(&e)),
    };
    if !vouched.member_id.eq_ignore_ascii_case(&claim.member_id) || domain != claim.domain {
        tracing::warn!(claimed = %claim.domain, vouched = %domain, "Запрос установки не совпал с подтверждённым порталом");
        return Err(MISMATCH);
    }
    if !allowed(state, &domain) {
        return Err(NOT_ALLOWED);
    }
    let target = Target::UserToken {
        endpoint: vouched.auth.client_endpoint.clone(),
        access_token: vouched.auth.access_token.clone(),
    };
    let installer = confirm_admin(state, &target, vouched.user_id).await?;
    Ok(Verified::Admin {
        vouched,
        domain,
        installer,
    })
}

/// Stores the vouched portal: a new row, or the existing one when it may be
/// replaced (`may_replace`), with the audit line.
async fn store_portal(
    state: &AppState,
    claim: &Claim,
    vouched: Vouched,
    domain: String,
    installer: Option<i64>,
    source: &'static str,
) -> Result<portal::Model, InstallError> {
    let existing = portals::by_member(&state.db, &vouched.member_id)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "База данных недоступна при установке");
            UNAVAILABLE
        })?;
    if let Some(p) = &existing {
        may_replace(state, p, claim).await?;
        if p.domain != domain {
            // The OAuth server itself named the new address for this member_id.
            tracing::info!(from = %p.domain, to = %domain, "Портал сменил адрес");
        }
    }

    let now = Utc::now();
    let mut row: portal::ActiveModel = match existing.clone() {
        Some(p) => p.into(),
        None => portal::ActiveModel {
            member_id: Set(vouched.member_id.clone()),
            created_at: Set(now),
            registration: Set(None),
            ..Default::default()
        },
    };
    row.domain = Set(domain);
    row.client_endpoint = Set(vouched.auth.client_endpoint.to_string());
    row.server_endpoint = Set(vouched.auth.server_endpoint.as_ref().map(Url::to_string));
    row.access_token = Set(Some(vouched.auth.access_token.expose().clone()));
    row.refresh_token = Set(Some(vouched.auth.refresh_token.expose().clone()));
    row.expires_at = Set(Some(vouched.auth.expires_at));
    // Either the same token (kept) or, on a new or replaced installation, the one
    // this verified admin's request brought.
    row.application_token = Set(claim.application_token.clone());
    if vouched.scope.is_some() {
        row.scope = Set(vouched.scope.clone());
    }
    if installer.is_some() {
        row.installed_by = Set(installer);
    }
    row.status = Set(portal::INSTALLED);
    row.updated_at = Set(now);
    let saved = match existing {
        Some(_) => row.update(&state.db).await,
        None => row.insert(&state.db).await,
    }
    .map_err(|e| {
        tracing::warn!(error = %e, "Не удалось сохранить портал");
        UNAVAILABLE
    })?;
    // Robot calls check the new row (its token, its status) from the next one on.
    state.portal_cache.forget_all();
    let _ = crate::db::audit(
        &state.db,
        Some(saved.id),
        &format!("user:{}", installer.unwrap_or_default()),
        source,
        Some(&saved.domain),
    )
    .await;
    Ok(saved)
}

async fn store_report(state: &AppState, portal: &portal::Model, report: &registration::Report) {
    let mut row: portal::ActiveModel = portal.clone().into();
    row.registration = Set(serde_json::to_value(report).ok());
    row.updated_at = Set(Utc::now());
    if let Err(e) = row.update(&state.db).await {
        tracing::warn!(error = %e, "Не удалось сохранить результат регистрации");
    }
}

/// `ONAPPINSTALL` (protocol §3.3): may come late or never; verified exactly as the
/// install page is, it refreshes the stored tokens and registers only if the install
/// page never did.
pub async fn on_app_install(state: &AppState, auth: &Auth) -> Response {
    if !state.config.oauth_enabled() {
        // Not the portal's trouble and not a passing one: a 4xx the portal's admin
        // sees in the event log, not a 503 that reads as "try again".
        tracing::warn!("ONAPPINSTALL без настроенного режима локального приложения");
        return crate::error::ApiError::conflict(
            ErrorCode::OauthNotConfigured,
            "Режим локального приложения не настроен: задайте B24_CLIENT_ID и B24_CLIENT_SECRET.",
        )
        .into_response();
    }
    let claim = match claim_from_event(auth) {
        Ok(c) => c,
        Err(e) => return install_error_json(e),
    };
    match accept(state, claim, "install_event").await {
        Ok(Accepted::AlreadyInstalled(portal)) => {
            tracing::info!(portal = %portal.domain, "Получено событие ONAPPINSTALL; установка уже сохранена");
            confirmed_nobody(poem::web::Json(json!({"ok": true, "changed": false})).into_response())
        }
        Ok(Accepted::Stored(portal, installer)) => {
            if portal.registration.is_none() {
                let target = Target::Portal {
                    member_id: portal.member_id.clone(),
                };
                let report = registration::ensure(state, &target, installer).await;
                store_report(state, &portal, &report).await;
            }
            tracing::info!(portal = %portal.domain, "Получено событие ONAPPINSTALL");
            poem::web::Json(json!({"ok": true, "changed": true})).into_response()
        }
        Err(e) => install_error_json(e),
    }
}

/// `ONAPPUPDATE` (protocol §3.4): the update may bring a new application token, which
/// robots and events carry from then on. Every portal user can read the token from
/// their own frame POST and forge this event, so a new token is taken only when the
/// event's `auth[access_token]` belongs to an admin of our app, as the portal's
/// STORED endpoint confirms; then the registrations the update removed (§3.4) are
/// made again. The same token as stored changes nothing and asks nothing.
pub async fn on_app_update(state: &AppState, auth: &Auth) -> Response {
    match app_update(state, auth).await {
        Ok(true) => poem::web::Json(json!({"ok": true, "changed": true})).into_response(),
        // The token it carried is the stored one: nothing was asked or confirmed.
        Ok(false) => {
            let mut unchanged = confirmed_nobody(
                poem::web::Json(json!({"ok": true, "changed": false})).into_response(),
            );
            unchanged.extensions_mut().insert(DecidedLocally);
            unchanged
        }
        Err(e) => install_error_json(e),
    }
}

async fn app_update(state: &AppState, auth: &Auth) -> Result<bool, InstallError> {
    let (Some(member_id), Some(offered)) = (auth.member_id.clone(), auth.application_token.clone())
    else {
        return Err(bad_request(
            "В событии нет auth[member_id] или auth[application_token]",
        ));
    };
    let stored = portals::by_member(&state.db, &member_id)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "База данных недоступна при обновлении приложения");
            UNAVAILABLE
        })?
        .filter(|p| p.status == portal::INSTALLED)
        .ok_or(UPDATE_REFUSED)?;
    let same = stored
        .application_token
        .as_deref()
        .is_some_and(|t| constant_time_eq(t.as_bytes(), offered.as_bytes()));
    if same {
        return Ok(false);
    }
    let installer =
        confirm_on_stored(state, &stored, auth.access_token.clone().map(Secret::new)).await?;
    let mut row: portal::ActiveModel = stored.clone().into();
    row.application_token = Set(Some(offered));
    row.updated_at = Set(Utc::now());
    let saved = row.update(&state.db).await.map_err(|e| {
        tracing::warn!(error = %e, "Не удалось сохранить токен приложения после обновления");
        UNAVAILABLE
    })?;
    // The old application token is refused from the next robot call on.
    state.portal_cache.forget_all();
    let _ = crate::db::audit(
        &state.db,
        Some(saved.id),
        &format!("user:{}", installer.unwrap_or_default()),
        "app_update_token",
        Some(&saved.domain),
    )
    .await;
    tracing::info!(portal = %saved.domain, "Обновление приложения: новый токен приложения принят");
    let target = Target::Portal {
        member_id: saved.member_id.clone(),
    };
    let report = registration::ensure(state, &target, installer).await;
    store_report(state, &saved, &report).await;
    Ok(true)
}

fn install_error_json(e: InstallError) -> Response {
    if let Some(busy) = e.busy {
        return busy.json();
    }
    tracing::warn!(
        status = e.status.as_u16(),
        code = %e.code,
        "Событие установки отклонено"
    );
    use crate::error::ApiError;
    let err = match e.status {
        StatusCode::BAD_REQUEST => ApiError::bad_request(e.code, e.message),
        StatusCode::FORBIDDEN => ApiError::forbidden(e.code, e.message),
        _ => ApiError::unavailable(e.code, e.message),
    };
    e.mark(err.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clearly_named_other_client_id_is_another_app() {
        let ours = "local.6651f0a2c3b4d5.38291745";
        // Fixture app-info.json: a numeric ID and our client id as CODE.
        assert!(!names_other_app(&json!({"ID": 27, "CODE": ours}), ours));
        // CODE is not promised to be the client id (protocol §11): a marketplace-like
        // code or none at all proves nothing either way.
        assert!(!names_other_app(
            &json!({"ID": 27, "CODE": "vendor.app"}),
            ours
        ));
        assert!(!names_other_app(&json!({"ID": 27}), ours));
        assert!(names_other_app(
            &json!({"ID": 27, "CODE": "local.0000000000aaaa.11111111"}),
            ours
        ));
        assert!(names_other_app(
            &json!({"ID": "local.0000000000aaaa.11111111", "CODE": ours}),
            ours
        ));
    }
}

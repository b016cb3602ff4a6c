//! The application's page in the portal (`POST /b24/app`, the main handler): for
//! portal administrators only, verified like the deal tab. Its actions (`POST
//! /b24/app/action`: reinstall, retry a dead job, retry the waiting jobs now, save
//! settings) carry the admin
//! session the page was given.

use chrono::Utc;
use poem::http::StatusCode;
use poem::web::Data;
use poem::{Body, Response, handler};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use serde::Deserialize;

use super::frame_auth;
use super::frame_post::VerifiedFrame;
use super::inbound::own_form;
use super::portal_settings::{self, PortalSettings};
use super::session::{Scope, Session};
use super::{admin_view, page, registration};
use crate::bitrix24::Target;
use crate::bitrix24::form;
use crate::db::entities::portal;
use crate::state::AppState;

/// The main handler's iframe POST.
#[handler]
pub async fn app_page(
    VerifiedFrame { caller, .. }: VerifiedFrame,
    Data(state): Data<&AppState>,
) -> Response {
    let shown = for_admin(state, &caller).await;
    page::frame_for(shown, page::portal_origin(&caller.portal).as_deref())
}

/// The page for a confirmed caller, if an administrator.
async fn for_admin(state: &AppState, caller: &frame_auth::FrameCaller) -> Response {
    match frame_auth::is_admin(state, caller).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(portal = %caller.portal.domain, user = caller.user_id, "Страница приложения открыта не администратором");
            return page::error(
                StatusCode::FORBIDDEN,
                "Доступно только администратору портала. Результаты анкет смотрите на вкладке «Анкета пациента» в карточке сделки.",
            );
        }
        Err(e) => return e.error_page(),
    }
    let session = Session::new(caller.portal.id, caller.user_id, Scope::Admin, Utc::now());
    show(state, &caller.portal, &session, None).await
}

async fn show(
    state: &AppState,
    portal: &portal::Model,
    session: &Session,
    notice: Option<&str>,
) -> Response {
    let token = session.sign(state.session_key.expose());
    match admin_view::admin_page(state, portal, &token, notice).await {
        Ok(html) => page::respond(StatusCode::OK, html),
        Err(e) => {
            tracing::error!(error = %e, "Не удалось показать страницу приложения");
            page::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Не удалось загрузить страницу приложения. Попробуйте ещё раз.",
            )
        }
    }
}

fn expired() -> Response {
    page::error(
        StatusCode::FORBIDDEN,
        "Сеанс страницы приложения истёк или недействителен. Откройте приложение заново из Битрикс24.",
    )
}

/// What the admin page's buttons post (`admin_view`): the signed session and the
/// button with its fields.
#[derive(Debug, Default, Deserialize)]
struct ActionForm {
    #[serde(default, deserialize_with = "form::text")]
    s: Option<String>,
    /// `reinstall`, `retry`, `retry_now` or `settings`.
    #[serde(default, deserialize_with = "form::text")]
    action: Option<String>,
    /// `retry`: the dead job's id.
    #[serde(default, deserialize_with = "form::text")]
    job: Option<String>,
    /// `settings`: days, 1..=365.
    #[serde(default, deserialize_with = "form::text")]
    link_days: Option<String>,
    /// `settings`: a checkbox, present when ticked.
    #[serde(default, deserialize_with = "form::text")]
    reuse_active: Option<String>,
}

/// One of the page's buttons.
#[handler]
pub async fn action(body: Body, Data(state): Data<&AppState>) -> Response {
    let Ok(bytes) = body.into_bytes().await else {
        return page::error(StatusCode::BAD_REQUEST, "Не удалось прочитать запрос");
    };
    let form: ActionForm = own_form(&bytes);
    let origin = page::session_origin(state, form.s.as_deref()).await;
    let response = act(state, &form).await;
    page::frame_for(response, origin.as_deref())
}

async fn act(state: &AppState, form: &ActionForm) -> Response {
    let Some(session) = form
        .s
        .as_deref()
        .and_then(|s| Session::verify_admin(state.session_key.expose(), s, Utc::now()).ok())
    else {
        tracing::warn!("Действие на странице приложения без действующего сеанса администратора");
        return expired();
    };
    let portal = match portal::Entity::find_by_id(session.portal_id)
        .one(&state.db)
        .await
    {
        Ok(Some(p)) if p.status == portal::INSTALLED => p,
        _ => return expired(),
    };
    let actor = format!("user:{}", session.user_id);
    let notice = match form.action.as_deref() {
        Some("reinstall") => reinstall(state, &portal).await,
        Some("retry") => retry(state, &portal, form).await,
        Some("retry_now") => retry_now(state, &portal).await,
        Some("settings") => save_settings(state, &portal, form).await,
        _ => return page::error(StatusCode::BAD_REQUEST, "Неизвестное действие"),
    };
    let _ = crate::db::audit(
        &state.db,
        Some(portal.id),
        &actor,
        &format!("admin_{}", form.action.as_deref().unwrap_or_default()),
        None,
    )
    .await;
    // Re-read: the reinstall stored a new report.
    let portal = portal::Entity::find_by_id(portal.id)
        .one(&state.db)
        .await
        .ok()
        .flatten()
        .unwrap_or(portal);
    show(state, &portal, &session, Some(&notice)).await
}

/// «Переустановить»: the registrations again, with the portal's stored tokens.
async fn reinstall(state: &AppState, portal: &portal::Model) -> String {
    let target = Target::Portal {
        member_id: portal.member_id.clone(),
    };
    let report = registration::ensure(state, &target, portal.installed_by).await;
    let mut row: portal::ActiveModel = portal.clone().into();
    row.registration = Set(serde_json::to_value(&report).ok());
    row.updated_at = Set(Utc::now());
    if let Err(e) = row.update(&state.db).await {
        tracing::warn!(error = %e, "Не удалось сохранить результат регистрации");
    }
    tracing::info!(portal = %portal.domain, complete = report.all_critical_ok(), "Регистрации проверены заново по запросу администратора");
    if report.all_critical_ok() {
        "Регистрации проверены: всё на месте.".to_owned()
    } else {
        "Регистрации проверены, но не всё получилось — см. «Состояние установки».".to_owned()
    }
}

async fn retry(state: &AppState, portal: &portal::Model, form: &ActionForm) -> String {
    let Some(id) = form.job.as_deref().and_then(|j| j.parse::<i64>().ok()) else {
        return "Не указано задание".to_owned();
    };
    match crate::outbox::jobs::revive(&state.db, id, Some(portal.id), Utc::now()).await {
        Ok(true) => {
            state.nudge_outbox();
            format!("Задание № {id} поставлено в очередь повторно.")
        }
        Ok(false) => format!("Задание № {id} не найдено среди неудавшихся."),
        Err(e) => {
            tracing::error!(error = %e, "Не удалось вернуть задание в очередь");
            "Не удалось вернуть задание в очередь: база данных недоступна.".to_owned()
        }
    }
}

/// «Повторить сейчас»: the portal's waiting jobs (after failures or a pause for the
/// portal's limits) are due at once.
async fn retry_now(state: &AppState, portal: &portal::Model) -> String {
    match crate::outbox::jobs::retry_now(&state.db, Some(portal.id), Utc::now()).await {
        Ok(0) => "Ожидающих заданий нет: всё уже отправляется.".to_owned(),
        Ok(n) => {
            state.nudge_outbox();
            format!("Заданий отправляется сейчас: {n}.")
        }
        Err(e) => {
            tracing::error!(error = %e, "Не удалось запустить задания сейчас");
            "Не удалось запустить задания: база данных недоступна.".to_owned()
        }
    }
}

async fn save_settings(state: &AppState, portal: &portal::Model, form: &ActionForm) -> String {
    let Some(link_days) = form
        .link_days
        .as_deref()
        .and_then(|d| d.parse::<u32>().ok())
        .filter(|d| (1..=365).contains(d))
    else {
        return "Срок действия ссылки — число дней от 1 до 365. Настройки не изменены.".to_owned();
    };
    let settings = PortalSettings {
        link_days,
        reuse_active: form.reuse_active.is_some(),
    };
    match portal_settings::save(&state.db, portal.id, settings).await {
        Ok(()) => {
            // Robot calls read the settings with their portal (`db::portal_cache`).
            state.portal_cache.forget_all();
            "Настройки сохранены.".to_owned()
        }
        Err(e) => {
            tracing::error!(error = %e, "Не удалось сохранить настройки");
            "Не удалось сохранить настройки: база данных недоступна.".to_owned()
        }
    }
}

//! `POST /b24/events`: events bound by the application (protocol §7).

use chrono::Utc;
use poem::web::{Data, Json};
use poem::{Body, IntoResponse, Request, Response, handler};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use super::inbound::text;
use super::{install, portals};
use crate::db::entities::{invitation, outbox_job, portal};
use crate::error::ApiError;
use crate::invitations::{Channel, EntityRef, EntityType};
use crate::state::AppState;

#[handler]
pub async fn events(req: &Request, body: Body, Data(state): Data<&AppState>) -> Response {
    let Some(form) = super::inbound::read(req, body).await else {
        return ApiError::bad_request("bad_body", "Не удалось прочитать тело запроса")
            .into_response();
    };
    let event = text(&form, &["event"])
        .unwrap_or_default()
        .to_ascii_uppercase();
    let result = match event.as_str() {
        "ONAPPINSTALL" => return install::on_app_install(state, &form).await,
        "ONAPPUNINSTALL" => uninstall(state, &form).await,
        "ONCRMDEALADD" | "ONCRMLEADADD" => crm_added(state, &form, &event).await,
        "" => Err(ApiError::bad_request(
            "event_missing",
            "В запросе нет поля event",
        )),
        other => {
            tracing::debug!(event = %other, "Событие не обрабатывается");
            Ok(json!({"ok": true, "ignored": other}))
        }
    };
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// protocol §7.3: no tokens arrive, only `application_token`, the one proof the call
/// came from Bitrix24. The portal's tokens are dropped; with `data[CLEAN]=1` its
/// patients' invitations and answers (personal data) are deleted as well.
async fn uninstall(state: &AppState, form: &Value) -> Result<Value, ApiError> {
    let p = portals::verify_app_token(
        &state.db,
        text(form, &["auth", "member_id"]).as_deref(),
        text(form, &["auth", "application_token"]).as_deref(),
    )
    .await?;
    let clean =
        text(form, &["data", "CLEAN"]).is_some_and(|c| c == "1" || c.eq_ignore_ascii_case("Y"));
    let (_turn, txn) = state.begin_write().await?;
    let mut row: portal::ActiveModel = p.clone().into();
    row.status = Set(portal::UNINSTALLED.to_owned());
    row.access_token = Set(None);
    row.refresh_token = Set(None);
    row.expires_at = Set(None);
    row.registration = Set(None);
    row.updated_at = Set(Utc::now());
    row.update(&txn).await?;
    // Jobs for a portal that is gone can never run.
    outbox_job::Entity::delete_many()
        .filter(outbox_job::Column::PortalId.eq(p.id))
        .filter(outbox_job::Column::DoneAt.is_null())
        .exec(&txn)
        .await?;
    let mut deleted = 0;
    if clean {
        // Responses go with their invitations (ON DELETE CASCADE).
        let ids: Vec<String> = invitation::Entity::find()
            .filter(invitation::Column::PortalId.eq(p.id))
            .all(&txn)
            .await?
            .into_iter()
            .map(|i| i.id)
            .collect();
        crate::db::entities::response::Entity::delete_many()
            .filter(crate::db::entities::response::Column::InvitationId.is_in(ids.clone()))
            .exec(&txn)
            .await?;
        deleted = invitation::Entity::delete_many()
            .filter(invitation::Column::PortalId.eq(p.id))
            .exec(&txn)
            .await?
            .rows_affected;
        outbox_job::Entity::delete_many()
            .filter(outbox_job::Column::PortalId.eq(p.id))
            .exec(&txn)
            .await?;
    }
    crate::db::audit(
        &txn,
        Some(p.id),
        "bitrix24",
        if clean {
            "uninstall_clean"
        } else {
            "uninstall"
        },
        Some(&p.domain),
    )
    .await?;
    txn.commit().await?;
    tracing::info!(portal = %p.domain, clean, deleted, "Приложение удалено с портала");
    Ok(json!({"ok": true}))
}

/// `ONCRMDEALADD`/`ONCRMLEADADD` bound by the application: a link for the new deal.
async fn crm_added(state: &AppState, form: &Value, event: &str) -> Result<Value, ApiError> {
    let p = portals::verify_app_token(
        &state.db,
        text(form, &["auth", "member_id"]).as_deref(),
        text(form, &["auth", "application_token"]).as_deref(),
    )
    .await?;
    let kind = if event == "ONCRMLEADADD" {
        EntityType::Lead
    } else {
        EntityType::Deal
    };
    let id: i64 = text(form, &["data", "FIELDS", "ID"])
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::bad_request("id_missing", "В событии нет data[FIELDS][ID]"))?;
    tracing::info!(portal = %p.domain, event, "Получен вебхук от Битрикс24");
    let inv = crate::invitations::issue::create_for_new_entity(
        state,
        Some(p.id),
        Channel::App,
        EntityRef { kind, id },
        &format!("event:{}:{}:{}", p.id, kind.as_str(), id),
    )
    .await?;
    Ok(json!({"ok": true, "survey_id": inv.id}))
}

//! `POST /b24/robot/await-survey`: the robot «Дождаться анкеты» (CONTRACT
//! «Automation», bitrix24-automation.md §A4). Verifies the call, finds the survey it
//! waits for (its `survey_id`, else the document's latest link) and stores the wait
//! as an outbox job in one transaction; answers at once. The outbox answers the step
//! through `bizproc.event.send` when the survey has an outcome (`outbox::survey_wait`).

use poem::handler;
use poem::web::{Data, Json};
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};

use super::portals;
use super::robot::step_of;
use crate::bitrix24::callback::{Callback, RobotCall};
use crate::crm::EntityRef;
use crate::db::entities::invitation;
use crate::error::{ApiError, ErrorCode};
use crate::outbox::survey_wait;
use crate::state::AppState;

#[handler]
pub async fn await_survey(
    Callback(call): Callback<RobotCall>,
    Data(state): Data<&AppState>,
) -> Result<Json<Value>, ApiError> {
    let portal = portals::verify_app_token(
        &state.db,
        call.auth.member_id.as_deref(),
        call.auth.application_token.as_deref(),
    )
    .await?;
    tracing::info!(portal = %portal.domain, "Получен вебхук от Битрикс24: робот «Дождаться анкеты»");
    let (event_token, entity) = step_of(&call)?;
    let survey_id = call.property("survey_id").filter(|s| !s.trim().is_empty());

    let (_turn, txn) = state.begin_write().await?;
    let inv = waited_for(&txn, portal.id, entity, survey_id.as_deref()).await?;
    if survey_wait::open_waits(&txn, portal.id, entity).await? >= survey_wait::MAX_OPEN_WAITS {
        tracing::warn!(portal = %portal.domain, "Слишком много роботов ждут анкету по одной записи; вызов отклонён");
        return Err(ApiError::conflict(
            ErrorCode::TooManyWaits,
            "По этой записи уже ждут анкету слишком много роботов «Дождаться анкеты».",
        ));
    }
    survey_wait::store(&txn, portal.id, entity, inv.as_ref(), &event_token).await?;
    txn.commit().await?;
    state.nudge_outbox();
    tracing::info!(
        survey_id = inv.as_ref().map(|i| i.id.as_str()).unwrap_or("-"),
        entity = %format_args!("{}_{}", entity.kind, entity.id),
        "Робот ждёт анкету"
    );
    Ok(Json(json!({"ok": true})))
}

/// The invitation the step waits for: the named one, which must belong to this
/// portal and this document (a robot never reads another record's survey), or the
/// document's latest; `None` when the document has none (`status=missing`).
async fn waited_for(
    txn: &DatabaseTransaction,
    portal_id: i64,
    entity: EntityRef,
    survey_id: Option<&str>,
) -> Result<Option<invitation::Model>, ApiError> {
    let of_document = invitation::Entity::find()
        .filter(invitation::Column::PortalId.eq(portal_id))
        .filter(invitation::Column::EntityType.eq(entity.kind))
        .filter(invitation::Column::EntityId.eq(entity.id));
    match survey_id {
        Some(id) => {
            let found = of_document
                .filter(invitation::Column::Id.eq(id.trim()))
                .one(txn)
                .await?;
            found.map(Some).ok_or_else(|| {
                ApiError::not_found(
                    ErrorCode::SurveyNotFound,
                    "Опрос с таким ID не найден в этом документе",
                )
            })
        }
        None => Ok(of_document
            .order_by_desc(invitation::Column::CreatedAt)
            .order_by_desc(invitation::Column::Id)
            .one(txn)
            .await?),
    }
}

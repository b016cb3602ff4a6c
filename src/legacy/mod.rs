//! The clinic guides' two simpler setups, kept working: the webhook robot posting to
//! `/api/v1/bitrix/webhook` and outgoing-webhook events to `/api/bitrix/webhook`.
//! Both reach the portal through the inbound webhook `BITRIX24_WEBHOOK_URL`.

pub mod input;
pub mod outgoing;
pub mod webhook_robot;

use chrono::Utc;
use serde_json::{Value, json};

use crate::bitrix24::Target;
use crate::db::entities::invitation;
use crate::error::ApiError;
use crate::invitations::{self, Channel, EntityRef, EntityType, NewInvitation, patient};
use crate::outbox::{self, Job};
use crate::secret::mask;
use crate::state::AppState;

/// A new deal or lead from an event: one invitation per document (a repeated delivery
/// of the event finds the first one), its link written to the link field, the name
/// looked up in the portal.
pub async fn create_for_new_entity(
    state: &AppState,
    portal_id: Option<i64>,
    channel: Channel,
    entity: EntityRef,
    dedupe_key: &str,
) -> Result<invitation::Model, ApiError> {
    issue(
        state,
        portal_id,
        channel,
        entity,
        None,
        false,
        Some(dedupe_key.to_owned()),
    )
    .await
    .map(|(inv, _)| inv)
}

/// Creates (or reuses) an invitation and queues the name lookup and the link field
/// update in the same transaction. Returns the invitation and whether it existed.
pub async fn issue(
    state: &AppState,
    portal_id: Option<i64>,
    channel: Channel,
    entity: EntityRef,
    given_name: Option<String>,
    reuse_active: bool,
    dedupe_key: Option<String>,
) -> Result<(invitation::Model, bool), ApiError> {
    let (code, version) = {
        let catalog = state.catalog();
        let code = catalog.default_code().to_owned();
        let q = catalog
            .latest(&code)
            .ok_or_else(|| ApiError::internal(format!("questionnaire {code} missing")))?;
        (q.code.clone(), q.version)
    };
    let now = Utc::now();
    let (_writer, txn) = state.begin_write().await?;
    let outcome = invitations::create_or_reuse(
        &txn,
        NewInvitation {
            portal_id,
            channel,
            entity,
            patient_name: given_name
                .clone()
                .unwrap_or_else(|| patient::PLACEHOLDER.to_owned()),
            questionnaire_code: code,
            questionnaire_version: version,
            lifetime_days: state.config.link_days,
            reuse_active,
            dedupe_key,
        },
        now,
    )
    .await?;
    let inv = outcome.invitation.clone();
    let delivers = portal_id.is_some() || state.config.webhook_url.is_some();
    if !outcome.existing && delivers {
        if given_name.is_none() {
            outbox::enqueue(
                &txn,
                portal_id,
                &Job::ResolvePatient {
                    invitation: inv.id.clone(),
                },
                &format!("invitation:{}:name", inv.id),
            )
            .await?;
        }
        outbox::enqueue(
            &txn,
            portal_id,
            &Job::WriteLinkField {
                invitation: inv.id.clone(),
            },
            &format!("invitation:{}:field", inv.id),
        )
        .await?;
    }
    txn.commit().await?;
    if !delivers {
        tracing::warn!(
            "BITRIX24_WEBHOOK_URL не задан: ссылка не будет записана в сделку, а результат опроса не попадёт в Битрикс24"
        );
    }
    state.nudge_outbox();
    log_link(state, &inv, outcome.existing);
    Ok((inv, outcome.existing))
}

pub fn log_link(state: &AppState, inv: &invitation::Model, existing: bool) {
    let token = state.links.sign(&inv.id, inv.expires_at);
    tracing::info!(
        survey_id = %inv.id,
        entity = %format!("{}_{}", inv.entity_type, inv.entity_id),
        link = %format!("{}/s/{}", state.config.public_url.as_str().trim_end_matches('/'), mask(&token)),
        existing,
        "Сгенерирована ссылка для опроса"
    );
}

pub fn link_of(state: &AppState, inv: &invitation::Model) -> String {
    state
        .config
        .public(&format!("/s/{}", state.links.sign(&inv.id, inv.expires_at)))
}

/// `BITRIX24_CATEGORY_ID` filter: the request's category if it gave a real one,
/// otherwise the portal's answer (never a guess).
pub async fn check_pipeline(
    state: &AppState,
    entity: EntityRef,
    claimed: Option<&str>,
) -> Result<(), ApiError> {
    let Some(wanted) = state.config.category_id else {
        return Ok(());
    };
    // Leads have no pipelines.
    if entity.kind == EntityType::Lead {
        return Ok(());
    }
    let claimed = claimed.and_then(|c| c.trim().parse::<u64>().ok());
    let actual = match claimed {
        Some(c) => c,
        None => {
            let Some(url) = state.config.webhook_url.clone() else {
                return Err(ApiError::bad_request(
                    "category_unknown",
                    "Не удалось проверить воронку: передайте category_id или задайте BITRIX24_WEBHOOK_URL",
                ));
            };
            let deal = state
                .b24
                .call(
                    &Target::Webhook(url),
                    "crm.deal.get",
                    json!({"id": entity.id}),
                )
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "Не удалось прочитать сделку для проверки воронки");
                    ApiError::unavailable(
                        "portal_unavailable",
                        format!(
                            "Не удалось прочитать сделку в Битрикс24: {}",
                            e.admin_message()
                        ),
                    )
                })?;
            deal.get("CATEGORY_ID")
                .and_then(|v| match v {
                    Value::String(s) => s.parse().ok(),
                    Value::Number(n) => n.as_u64(),
                    _ => None,
                })
                .unwrap_or(0)
        }
    };
    if actual != wanted {
        tracing::info!(
            category = actual,
            expected = wanted,
            "Сделка из другой воронки пропущена"
        );
        return Err(ApiError::forbidden(
            "category_not_processed",
            "Эта воронка не обрабатывается",
        ));
    }
    Ok(())
}

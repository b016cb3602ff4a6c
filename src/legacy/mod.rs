//! The clinic guides' two simpler setups, kept working: the webhook robot posting to
//! `/api/v1/bitrix/webhook` and outgoing-webhook events to `/api/bitrix/webhook`.
//! Both reach the portal through the inbound webhook `BITRIX24_WEBHOOK_URL`.

pub mod input;
pub mod outgoing;
pub mod webhook_robot;

use serde_json::{Value, json};

use crate::bitrix24::Target;
use crate::error::{ApiError, ErrorCode};
use crate::invitations::{EntityRef, EntityType};
use crate::state::AppState;

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
    // The variable names a deal pipeline. Leads have none; a smart process's
    // pipelines are its own, numbered apart from the deals' — reading a deal with the
    // item's id would judge another record.
    if entity.kind != EntityType::Deal {
        return Ok(());
    }
    let claimed = claimed.and_then(|c| c.trim().parse::<u64>().ok());
    let actual = match claimed {
        Some(c) => c,
        None => {
            let Some(url) = state.config.webhook_url.clone() else {
                return Err(ApiError::bad_request(
                    ErrorCode::CategoryUnknown,
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
                        ErrorCode::PortalUnavailable,
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
            ErrorCode::CategoryNotProcessed,
            "Эта воронка не обрабатывается",
        ));
    }
    Ok(())
}

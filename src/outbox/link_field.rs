//! The link field (`UF_CRM_…`, a URL) on deals and leads, where the outbox writes the
//! survey link: found by name, created when missing. Install's registration creates it;
//! the webhook setups, which have no install step, get it before their first link.

use serde_json::{Value, json};

use crate::bitrix24::{Target, field};
use crate::state::AppState;

/// Whether a `crm.*.userfield.list` answer holds the field `name`.
pub fn has_field(fields: &[Value], name: &str) -> bool {
    fields
        .iter()
        .any(|f| field(f, "FIELD_NAME").and_then(Value::as_str) == Some(name))
}

/// Creates the link field (`url`, «Ссылка на опрос») on `deal` or `lead`; the portal
/// adds the `UF_CRM_` prefix itself (protocol §12.3).
pub async fn add_link_field(
    state: &AppState,
    target: &Target,
    entity: &str,
) -> Result<&'static str, String> {
    let link_field = &state.config.link_field;
    let code = link_field.strip_prefix("UF_CRM_").unwrap_or(link_field);
    match state
        .b24
        .call(
            target,
            &format!("crm.{entity}.userfield.add"),
            json!({"fields": {
                "FIELD_NAME": code,
                "USER_TYPE_ID": "url",
                "XML_ID": code,
                "LABEL": "Ссылка на опрос",
                "EDIT_FORM_LABEL": {"ru": "Ссылка на опрос", "en": "Survey link"},
                "LIST_COLUMN_LABEL": {"ru": "Ссылка на опрос", "en": "Survey link"},
                "LIST_FILTER_LABEL": {"ru": "Ссылка на опрос", "en": "Survey link"},
                "MULTIPLE": "N",
                "MANDATORY": "N",
            }}),
        )
        .await
    {
        Ok(_) => Ok("создано"),
        Err(e) if e.is_already_registered() => Ok("уже было"),
        Err(e) => Err(e.admin_message()),
    }
}

/// Makes sure the link field exists before a link is written through an inbound
/// webhook: the guides' setups have no install step, and the portal silently drops
/// a value for a field that does not exist (protocol §12.2).
pub async fn ensure(state: &AppState, target: &Target, entity: &str) -> Result<(), String> {
    let listed = state
        .b24
        .call(
            target,
            &format!("crm.{entity}.userfield.list"),
            json!({"filter": {"FIELD_NAME": state.config.link_field}}),
        )
        .await
        .map_err(|e| e.admin_message())?;
    let fields = match listed {
        Value::Array(items) => items,
        Value::Object(map) => map.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    if has_field(&fields, &state.config.link_field) {
        return Ok(());
    }
    add_link_field(state, target, entity).await.map(|_| ())
}

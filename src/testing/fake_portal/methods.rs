//! REST methods of the fake portal. Each runs under the state lock, synchronously,
//! so `batch` can run them in sequence.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Map, Value, json};
use url::Url;

use super::TimelineComment;
use super::state::{ApiError, AuthKind, State, Success, iso_now};

type Outcome = Result<Success, ApiError>;

/// Page size of list methods (§9).
const PAGE: usize = 50;

/// A top-level parameter, name matched case-insensitively (§4.4: Bitrix24 accepts
/// `EVENT_TOKEN` and `event_token`; §12.1: `id` and `ID`).
pub(super) fn param<'a>(params: &'a Value, name: &str) -> Option<&'a Value> {
    params
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_owned()),
        _ => None,
    }
}

fn param_str(params: &Value, name: &str) -> Option<String> {
    param(params, name)
        .and_then(scalar)
        .filter(|s| !s.is_empty())
}

fn param_id(params: &Value) -> Result<u64, ApiError> {
    param_str(params, "id")
        .and_then(|s| s.parse().ok())
        .filter(|id| *id > 0)
        // §12.1: empty code, "ID is not defined or invalid".
        .ok_or_else(|| ApiError::new(400, "", "ID is not defined or invalid"))
}

fn not_found() -> ApiError {
    ApiError::new(400, "", "Not found")
}

fn crm_access_denied() -> ApiError {
    // §11, §12.1: `{"error":"","error_description":"Access denied"}`.
    ApiError::new(400, "", "Access denied")
}

fn app_context_required(method: &str) -> ApiError {
    if method.starts_with("placement.") {
        // §6.1: placement.bind through a webhook → 403 WRONG_AUTH_TYPE.
        ApiError::new(403, "WRONG_AUTH_TYPE", "Application context required")
    } else if method == "app.info" {
        // §11: "Access denied! Application context required".
        ApiError::new(
            403,
            "ACCESS_DENIED",
            "Access denied! Application context required",
        )
    } else {
        // §4.2, fixture robot-add-webhook-context-error.json.
        ApiError::new(403, "ACCESS_DENIED", "Application context required")
    }
}

/// Methods that need an application token (§5.1: not available through a webhook).
fn needs_app_context(method: &str) -> bool {
    method.starts_with("bizproc.robot.")
        || method.starts_with("bizproc.activity.")
        || method.starts_with("placement.")
        || method.starts_with("event.")
        || method == "app.info"
}

fn require_admin(state: &State, auth: &AuthKind) -> Result<(), ApiError> {
    let admin = auth
        .user_id()
        .and_then(|id| state.users.get(&id))
        .is_some_and(|u| u.admin);
    if admin {
        Ok(())
    } else {
        // §4.2: non-admin token → ACCESS_DENIED "Access denied!".
        Err(ApiError::new(403, "ACCESS_DENIED", "Access denied!"))
    }
}

/// Runs one method. `in_batch` marks a command inside `batch`.
pub(crate) fn dispatch(
    state: &mut State,
    auth: &AuthKind,
    method: &str,
    params: &Value,
    in_batch: bool,
) -> Outcome {
    if matches!(auth, AuthKind::Webhook { .. }) && needs_app_context(method) {
        return Err(app_context_required(method));
    }
    match method {
        "app.info" => app_info(state),
        "profile" => profile(state, auth),
        "user.current" => user_current(state, auth),
        "user.admin" => Ok(Success::of(json!(
            auth.user_id()
                .and_then(|id| state.users.get(&id))
                .is_some_and(|u| u.admin)
        ))),
        "bizproc.robot.add" => robot_add(state, auth, params),
        "bizproc.robot.update" => robot_update(state, auth, params),
        "bizproc.robot.delete" => robot_delete(state, auth, params),
        "bizproc.robot.list" => Ok(Success::of(json!(
            state
                .robots
                .iter()
                .filter_map(|r| r.get("CODE").cloned())
                .collect::<Vec<_>>()
        ))),
        "bizproc.event.send" => event_send(state, params),
        "placement.bind" => placement_bind(state, auth, params),
        "placement.unbind" => placement_unbind(state, auth, params),
        "placement.get" => Ok(Success::of(Value::Array(
            state
                .placements
                .iter()
                .cloned()
                .map(Value::Object)
                .collect(),
        ))),
        "event.bind" => event_bind(state, auth, params),
        "event.unbind" => event_unbind(state, params),
        "event.get" => Ok(Success::of(Value::Array(
            state.events.iter().cloned().map(Value::Object).collect(),
        ))),
        "crm.deal.get" => deal_get(state, auth, params),
        "crm.deal.update" => deal_update(state, auth, params),
        "crm.deal.list" => deal_list(state, auth, params),
        "crm.lead.get" => record_get(state, "lead", params),
        "crm.lead.update" => record_update(state, auth, "lead", params),
        "crm.contact.get" => record_get(state, "contact", params),
        "crm.deal.userfield.add" => userfield_add(state, auth, "deal", params),
        "crm.lead.userfield.add" => userfield_add(state, auth, "lead", params),
        "crm.deal.userfield.list" => userfield_list(state, "deal", params),
        "crm.lead.userfield.list" => userfield_list(state, "lead", params),
        "crm.timeline.comment.add" => comment_add(state, auth, params, in_batch),
        "crm.timeline.comment.list" => comment_list(state, params),
        m if super::automation::handles(m) => super::automation::dispatch(state, auth, m, params),
        // §13: no nested batch.
        "batch" if in_batch => Err(ApiError::new(
            405,
            "ERROR_BATCH_METHOD_NOT_ALLOWED",
            "Method not allowed by batch",
        )),
        // protocol §10: ERROR_METHOD_NOT_FOUND 404.
        _ => Err(ApiError::new(
            404,
            "ERROR_METHOD_NOT_FOUND",
            "Method not found!",
        )),
    }
}

fn app_info(state: &State) -> Outcome {
    // Fixture app-info.json; INSTALLED flips with installFinish (§3.1 step 4).
    Ok(Success::of(json!({
        "ID": 27, "CODE": state.app_code.as_ref().unwrap_or(&state.cfg.client_id), "VERSION": state.version, "STATUS": "L",
        "INSTALLED": state.installed, "PAYMENT_EXPIRED": "N", "DAYS": null,
        "LANGUAGE_ID": "ru", "LICENSE": "ru_pro100", "LICENSE_TYPE": "pro100",
        "LICENSE_FAMILY": "pro"
    })))
}

fn profile(state: &State, auth: &AuthKind) -> Outcome {
    // Fixture profile.json; ADMIN is a JSON bool, ID a string.
    let Some((id, user)) = auth
        .user_id()
        .and_then(|id| state.users.get(&id).map(|u| (id, u)))
    else {
        return Ok(Success::of(json!({})));
    };
    Ok(Success::of(json!({
        "ID": id.to_string(), "ADMIN": user.admin, "NAME": user.name,
        "LAST_NAME": user.last_name, "PERSONAL_GENDER": "", "TIME_ZONE": "Europe/Moscow"
    })))
}

fn user_current(state: &State, auth: &AuthKind) -> Outcome {
    let Some((id, user)) = auth
        .user_id()
        .and_then(|id| state.users.get(&id).map(|u| (id, u)))
    else {
        return Err(ApiError::new(
            401,
            "NO_AUTH_FOUND",
            "Wrong authorization data",
        ));
    };
    Ok(Success::of(json!({
        "ID": id.to_string(), "ACTIVE": true, "NAME": user.name, "LAST_NAME": user.last_name,
        "EMAIL": format!("user{id}@clinic.example"), "UF_DEPARTMENT": [1]
    })))
}

fn handler_url(raw: Option<String>) -> Result<Url, ApiError> {
    let url = raw
        .as_deref()
        .and_then(|s| Url::parse(s).ok())
        .ok_or_else(|| ApiError::new(400, "ERROR_WRONG_HANDLER_URL", "Wrong handler URL"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(ApiError::new(
            400,
            "ERROR_UNSUPPORTED_PROTOCOL",
            "Unsupported event handler protocol",
        ));
    }
    Ok(url)
}

fn robot_add(state: &mut State, auth: &AuthKind, params: &Value) -> Outcome {
    require_admin(state, auth)?;
    // §4.1: CODE is [a-zA-Z0-9._-].
    let code = param_str(params, "CODE")
        .filter(|c| {
            c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
        })
        .ok_or_else(|| {
            ApiError::new(
                400,
                "ERROR_ACTIVITY_VALIDATION_FAILURE",
                "Empty activity code!",
            )
        })?;
    let handler = handler_url(param_str(params, "HANDLER"))?;
    // §4.1: HANDLER must be on the domain of the application's handler URL.
    if let Some(app_host) = &state.app_host
        && handler.host_str() != Some(app_host.as_str())
    {
        return Err(ApiError::new(
            400,
            "ERROR_WRONG_HANDLER_URL",
            "Wrong handler URL: domain mismatch",
        ));
    }
    if param(params, "NAME").is_none_or(Value::is_null) {
        return Err(ApiError::new(
            400,
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
            "Empty activity name!",
        ));
    }
    if state
        .robots
        .iter()
        .any(|r| r.get("CODE").and_then(Value::as_str) == Some(code.as_str()))
    {
        // §4.2, fixture robot-add-duplicate-error.json.
        return Err(ApiError::new(
            400,
            "ERROR_ACTIVITY_ALREADY_INSTALLED",
            "Activity or Robot already installed!",
        ));
    }
    let mut robot = upper_keys(params);
    robot.insert("CODE".into(), Value::String(code));
    state.robots.push(robot);
    Ok(Success::of(json!(true)))
}

fn upper_keys(params: &Value) -> Map<String, Value> {
    params
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn robot_index(state: &State, params: &Value) -> Result<usize, ApiError> {
    let code = param_str(params, "CODE").unwrap_or_default();
    state
        .robots
        .iter()
        .position(|r| r.get("CODE").and_then(Value::as_str) == Some(code.as_str()))
        .ok_or_else(|| {
            ApiError::new(
                400,
                "ERROR_ACTIVITY_NOT_FOUND",
                "Activity or Robot not found!",
            )
        })
}

fn robot_update(state: &mut State, auth: &AuthKind, params: &Value) -> Outcome {
    require_admin(state, auth)?;
    let index = robot_index(state, params)?;
    // §4.5: bizproc.robot.update takes CODE and FIELDS[...].
    let fields = upper_keys(param(params, "FIELDS").unwrap_or(&Value::Null));
    // b24restdocs api-reference/bizproc/bizproc-robot/bizproc-robot-update.md,
    // «Possible Error Codes»: nothing to update, a HANDLER off the application's
    // domain, a property key not `[a-zA-Z][a-zA-Z0-9_]*`, a property without a name.
    let invalid =
        |description: String| ApiError::new(400, "ERROR_ACTIVITY_VALIDATION_FAILURE", &description);
    if fields.is_empty() {
        return Err(invalid("No fields to update".into()));
    }
    if let Some(handler) = fields.get("HANDLER") {
        let handler = handler_url(handler.as_str().map(str::to_owned))?;
        if let Some(app_host) = &state.app_host
            && handler.host_str() != Some(app_host.as_str())
        {
            return Err(ApiError::new(
                400,
                "ERROR_WRONG_HANDLER_URL",
                "Wrong handler URL",
            ));
        }
    }
    for group in ["PROPERTIES", "RETURN_PROPERTIES"] {
        let Some(properties) = fields.get(group) else {
            continue;
        };
        let Some(properties) = properties.as_object() else {
            return Err(invalid("Wrong properties array!".into()));
        };
        for (key, property) in properties {
            let well_formed = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !well_formed {
                return Err(invalid(format!("Wrong property key {key}!")));
            }
            if property.get("Name").is_none_or(Value::is_null) {
                return Err(invalid(format!("Empty property NAME {key}!")));
            }
        }
    }
    for (k, v) in fields {
        if k != "CODE" {
            state.robots[index].insert(k, v);
        }
    }
    Ok(Success::of(json!(true)))
}

fn robot_delete(state: &mut State, auth: &AuthKind, params: &Value) -> Outcome {
    require_admin(state, auth)?;
    let index = robot_index(state, params)?;
    state.robots.remove(index);
    Ok(Success::of(json!(true)))
}

fn event_send(state: &mut State, params: &Value) -> Outcome {
    // §4.4: one call per event_token; an invalid or used token → 403 ACCESS_DENIED.
    let denied = || ApiError::new(403, "ACCESS_DENIED", "Access denied!");
    let token = param_str(params, "EVENT_TOKEN").ok_or_else(denied)?;
    if let Some((_, code)) = state
        .made_up_runs
        .iter()
        .find(|(prefix, _)| token.starts_with(prefix.as_str()))
    {
        let made_up = super::state::EventToken {
            robot_code: code.clone(),
            used: false,
        };
        state.event_tokens.entry(token.clone()).or_insert(made_up);
    }
    let entry = state.event_tokens.get_mut(&token).ok_or_else(denied)?;
    if entry.used {
        return Err(denied());
    }
    entry.used = true;
    let code = entry.robot_code.clone();
    // §4.4: keys upper-cased, matched case-insensitively to RETURN_PROPERTIES,
    // unknown keys dropped.
    let known: Vec<String> = state
        .robots
        .iter()
        .find(|r| r.get("CODE").and_then(Value::as_str) == Some(code.as_str()))
        .and_then(|r| r.get("RETURN_PROPERTIES"))
        .and_then(Value::as_object)
        .map(|m| m.keys().map(|k| k.to_ascii_uppercase()).collect())
        .unwrap_or_default();
    let mut values = BTreeMap::new();
    if let Some(map) = param(params, "RETURN_VALUES").and_then(Value::as_object) {
        for (k, v) in map {
            let key = k.to_ascii_uppercase();
            if known.contains(&key) {
                values.insert(key, scalar(v).unwrap_or_else(|| v.to_string()));
            }
        }
    }
    let log = param_str(params, "LOG_MESSAGE").unwrap_or_default();
    state.event_sends.push((token, values, log));
    Ok(Success::of(json!(true)))
}

const PLACEMENTS: &[&str] = &[
    "CRM_DEAL_DETAIL_TAB",
    "CRM_LEAD_DETAIL_TAB",
    "CRM_CONTACT_DETAIL_TAB",
    "CRM_DEAL_LIST_MENU",
    "LEFT_MENU",
];

fn placement_bind(state: &mut State, auth: &AuthKind, params: &Value) -> Outcome {
    require_admin(state, auth)?;
    let (Some(placement), Some(handler)) =
        (param_str(params, "PLACEMENT"), param_str(params, "HANDLER"))
    else {
        // §6.1: the docs list HTTP 200 for ERROR_ARGUMENT: an error body with 200.
        return Err(ApiError::new(200, "ERROR_ARGUMENT", "Argument is required"));
    };
    let placement = placement.to_ascii_uppercase();
    let smart_tab = super::automation::smart_process_tab(state, &placement);
    if !PLACEMENTS.contains(&placement.as_str()) && !smart_tab {
        return Err(ApiError::new(
            400,
            "ERROR_PLACEMENT_NOT_FOUND",
            "Placement not found",
        ));
    }
    handler_url(Some(handler.clone()))?;
    let duplicate = state.placements.iter().any(|p| {
        p.get("placement").and_then(Value::as_str) == Some(placement.as_str())
            && p.get("handler").and_then(Value::as_str) == Some(handler.as_str())
    });
    if duplicate {
        // §6.1 (assumed): duplicate bind → 400 ERROR_CORE.
        return Err(ApiError::new(
            400,
            "ERROR_CORE",
            "Unable to set placement handler: Handler already binded",
        ));
    }
    let mut entry = Map::new();
    entry.insert("placement".into(), json!(placement));
    entry.insert("handler".into(), json!(handler));
    entry.insert(
        "title".into(),
        json!(param_str(params, "TITLE").unwrap_or_default()),
    );
    entry.insert(
        "description".into(),
        json!(param_str(params, "DESCRIPTION").unwrap_or_default()),
    );
    // §6.1: OPTIONS are ignored for detail tabs; placement.get returns [].
    entry.insert("options".into(), json!([]));
    entry.insert(
        "langAll".into(),
        param(params, "LANG_ALL").cloned().unwrap_or(json!([])),
    );
    state.placements.push(entry);
    Ok(Success::of(json!(true)))
}

fn placement_unbind(state: &mut State, auth: &AuthKind, params: &Value) -> Outcome {
    require_admin(state, auth)?;
    let placement = param_str(params, "PLACEMENT")
        .map(|p| p.to_ascii_uppercase())
        .ok_or_else(|| ApiError::new(200, "ERROR_ARGUMENT", "Argument is required"))?;
    let handler = param_str(params, "HANDLER");
    let before = state.placements.len();
    state.placements.retain(|p| {
        let same_placement = p.get("placement").and_then(Value::as_str) == Some(&placement);
        let same_handler = handler
            .as_deref()
            .is_none_or(|h| p.get("handler").and_then(Value::as_str) == Some(h));
        !(same_placement && same_handler)
    });
    Ok(Success::of(
        json!({"count": before - state.placements.len()}),
    ))
}

fn event_bind(state: &mut State, auth: &AuthKind, params: &Value) -> Outcome {
    let event = param_str(params, "event")
        .map(|e| e.to_ascii_uppercase())
        .filter(|e| e.starts_with("ON"))
        .ok_or_else(|| ApiError::new(400, "ERROR_EVENT_NOT_FOUND", "Event not found"))?;
    let handler = handler_url(param_str(params, "handler"))?.to_string();
    let offline = param_str(params, "event_type").as_deref() == Some("offline");
    if offline {
        // §7.2: offline bindings are for admins only.
        require_admin(state, auth)?;
    }
    let duplicate = state.events.iter().any(|e| {
        e.get("event").and_then(Value::as_str) == Some(event.as_str())
            && e.get("handler").and_then(Value::as_str) == Some(handler.as_str())
    });
    if duplicate {
        // §7.2, fixture event-bind-duplicate-error.json.
        return Err(ApiError::new(
            400,
            "ERROR_CORE",
            "Unable to set event handler: Handler already binded",
        ));
    }
    let id = state.next_handler_id;
    state.next_handler_id += 1;
    let mut entry = Map::new();
    entry.insert("event".into(), json!(event));
    entry.insert("handler".into(), json!(handler));
    entry.insert(
        "auth_type".into(),
        json!(param_str(params, "auth_type").unwrap_or_else(|| "0".into())),
    );
    entry.insert("offline".into(), json!(u8::from(offline)));
    entry.insert("id".into(), json!(id.to_string()));
    state.events.push(entry);
    Ok(Success::of(json!(true)))
}

fn event_unbind(state: &mut State, params: &Value) -> Outcome {
    let event = param_str(params, "event")
        .map(|e| e.to_ascii_uppercase())
        .ok_or_else(|| ApiError::new(400, "ERROR_EVENT_NOT_FOUND", "Event not found"))?;
    let handler = param_str(params, "handler");
    let before = state.events.len();
    state.events.retain(|e| {
        let same_event = e.get("event").and_then(Value::as_str) == Some(&event);
        let same_handler = handler
            .as_deref()
            .is_none_or(|h| e.get("handler").and_then(Value::as_str) == Some(h));
        !(same_event && same_handler)
    });
    Ok(Success::of(json!({"count": before - state.events.len()})))
}

fn store<'a>(state: &'a mut State, entity: &str) -> &'a mut BTreeMap<u64, Map<String, Value>> {
    match entity {
        "deal" => &mut state.deals,
        "lead" => &mut state.leads,
        _ => &mut state.contacts,
    }
}

/// A record as `*.get` shows it: every user field of the entity present, `""` when
/// unset (fixture crm-deal-get.json has `"UF_CRM_OPROS_LINK": ""`).
fn with_userfields(state: &State, entity: &str, record: &Map<String, Value>) -> Value {
    let mut out = record.clone();
    for field in state.userfields.get(entity).into_iter().flatten() {
        if let Some(name) = field.get("FIELD_NAME").and_then(Value::as_str) {
            out.entry(name.to_owned()).or_insert(json!(""));
        }
    }
    Value::Object(out)
}

fn can_read_deal(state: &State, auth: &AuthKind, id: u64) -> bool {
    auth.user_id()
        .is_some_and(|user| !state.denied_deals.contains(&(user, id)))
}

fn deal_get(state: &mut State, auth: &AuthKind, params: &Value) -> Outcome {
    let id = param_id(params)?;
    let record = state.deals.get(&id).ok_or_else(not_found)?;
    // §11: the call runs with the token owner's CRM rights.
    if !can_read_deal(state, auth, id) {
        return Err(crm_access_denied());
    }
    Ok(Success::of(with_userfields(state, "deal", record)))
}

fn deal_update(state: &mut State, auth: &AuthKind, params: &Value) -> Outcome {
    let id = param_id(params)?;
    if !state.deals.contains_key(&id) {
        return Err(not_found());
    }
    if !can_read_deal(state, auth, id) {
        return Err(crm_access_denied());
    }
    record_update(state, auth, "deal", params)
}

fn record_get(state: &mut State, entity: &str, params: &Value) -> Outcome {
    let id = param_id(params)?;
    let record = store(state, entity)
        .get(&id)
        .cloned()
        .ok_or_else(not_found)?;
    Ok(Success::of(with_userfields(state, entity, &record)))
}

fn record_update(state: &mut State, auth: &AuthKind, entity: &str, params: &Value) -> Outcome {
    let id = param_id(params)?;
    let Some(fields) = param(params, "fields").and_then(Value::as_object).cloned() else {
        // §12.2.
        return Err(ApiError::new(400, "", "Parameter 'fields' must be array"));
    };
    let defined: Vec<String> = state
        .userfields
        .get(entity)
        .into_iter()
        .flatten()
        .filter_map(|f| {
            f.get("FIELD_NAME")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    let record = store(state, entity).get_mut(&id).ok_or_else(not_found)?;
    for (key, value) in fields {
        let key = key.to_ascii_uppercase();
        // §12.2: only passed fields change; unknown fields are ignored silently.
        let known = (record.contains_key(&key) || defined.contains(&key)) && key != "ID";
        if known {
            let value = scalar(&value).map(Value::String).unwrap_or(value);
            record.insert(key, value);
        }
    }
    record.insert("DATE_MODIFY".into(), json!(iso_now()));
    if let Some(user) = auth.user_id() {
        record.insert("MODIFY_BY_ID".into(), json!(user.to_string()));
    }
    Ok(Success::of(json!(true)))
}

fn matches_filter(record: &Value, filter: Option<&Map<String, Value>>) -> bool {
    filter.is_none_or(|f| {
        f.iter().all(|(k, want)| {
            let have = record.get(k.to_ascii_uppercase()).and_then(scalar);
            match want {
                Value::Array(options) => options.iter().any(|o| scalar(o) == have),
                other => scalar(other) == have,
            }
        })
    })
}

fn paged(items: Vec<Value>, params: &Value) -> Outcome {
    let start: usize = param_str(params, "start")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(start).take(PAGE).collect();
    let next = (start + PAGE < total).then_some(start + PAGE);
    Ok(Success {
        result: Value::Array(page),
        total: Some(total),
        next,
    })
}

fn deal_list(state: &mut State, auth: &AuthKind, params: &Value) -> Outcome {
    let filter = param(params, "filter").and_then(Value::as_object);
    let items: Vec<Value> = state
        .deals
        .iter()
        .filter(|(id, _)| can_read_deal(state, auth, **id))
        .map(|(_, r)| with_userfields(state, "deal", r))
        .filter(|r| matches_filter(r, filter))
        .collect();
    paged(items, params)
}

const USER_TYPES: &[&str] = &[
    "string",
    "url",
    "integer",
    "double",
    "boolean",
    "date",
    "datetime",
    "enumeration",
    "file",
    "employee",
    "crm",
    "money",
    "address",
];

fn userfield_add(state: &mut State, auth: &AuthKind, entity: &str, params: &Value) -> Outcome {
    require_admin(state, auth)?;
    let fields = param(params, "fields")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| scalar(v))
            .filter(|s| !s.is_empty())
    };
    let raw = field("FIELD_NAME")
        .ok_or_else(|| ApiError::new(400, "", "The 'FIELD_NAME' field is not found."))?;
    // §12.3: the portal always makes it UF_CRM_<code>, upper-cased.
    let upper = raw.to_ascii_uppercase();
    let code = upper
        .strip_prefix("UF_CRM_")
        .or_else(|| upper.strip_prefix("UF_"))
        .unwrap_or(&upper);
    let name = format!("UF_CRM_{code}");
    let valid = !code.is_empty()
        && name.len() <= 50
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(ApiError::new(400, "ERROR_CORE", "Invalid FIELD_NAME"));
    }
    let user_type = field("USER_TYPE_ID").unwrap_or_else(|| "string".into());
    if !USER_TYPES.contains(&user_type.as_str()) {
        return Err(ApiError::new(400, "ERROR_CORE", "Unknown USER_TYPE_ID"));
    }
    let list = state.userfields.entry(entity.to_owned()).or_default();
    if list
        .iter()
        .any(|f| f.get("FIELD_NAME").and_then(Value::as_str) == Some(name.as_str()))
    {
        // §12.3 (assumed): duplicate FIELD_NAME → 400 ERROR_CORE "…already exists…".
        return Err(ApiError::new(
            400,
            "ERROR_CORE",
            &format!("Field {name} already exists"),
        ));
    }
    let id = state.next_field_id;
    state.next_field_id += 1;
    let mut record: Map<String, Value> = fields
        .iter()
        .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()))
        .collect();
    record.insert("ID".into(), json!(id.to_string()));
    record.insert(
        "ENTITY_ID".into(),
        json!(format!("CRM_{}", entity.to_ascii_uppercase())),
    );
    record.insert("FIELD_NAME".into(), json!(name));
    record.insert("USER_TYPE_ID".into(), json!(user_type));
    for (key, default) in [("SORT", "100"), ("MULTIPLE", "N"), ("MANDATORY", "N")] {
        record.entry(key).or_insert(json!(default));
    }
    if let Some(list) = state.userfields.get_mut(entity) {
        list.push(record);
    }
    Ok(Success::of(json!(id)))
}

/// `crm.timeline.comment.list` (docs: api-reference/crm/timeline/comments/
/// crm-timeline-comment-list.md): `filter[ENTITY_ID]` and `filter[ENTITY_TYPE]` are
/// required; records carry string ids, like every CRM list.
fn comment_list(state: &mut State, params: &Value) -> Outcome {
    let filter = param(params, "filter").and_then(Value::as_object);
    let get = |k: &str| filter.and_then(|f| f.get(k)).and_then(scalar);
    let (Some(entity_id), Some(entity_type)) = (
        get("ENTITY_ID").and_then(|s| s.parse::<u64>().ok()),
        get("ENTITY_TYPE"),
    ) else {
        return Err(ApiError::new(
            400,
            "100",
            "Required filter fields: ENTITY_ID, ENTITY_TYPE",
        ));
    };
    let items: Vec<Value> = state
        .timeline
        .iter()
        .filter(|c| c.entity_id == entity_id && c.entity_type == entity_type)
        .map(|c| {
            json!({
                "ID": c.id.to_string(),
                "ENTITY_ID": c.entity_id.to_string(),
                "ENTITY_TYPE": c.entity_type,
                "COMMENT": c.comment,
                "AUTHOR_ID": c.author_id.map(|a| a.to_string()),
            })
        })
        .collect();
    paged(items, params)
}

fn userfield_list(state: &mut State, entity: &str, params: &Value) -> Outcome {
    let filter = param(params, "filter").and_then(Value::as_object);
    let items: Vec<Value> = state
        .userfields
        .get(entity)
        .into_iter()
        .flatten()
        .map(|f| Value::Object(f.clone()))
        .filter(|f| matches_filter(f, filter))
        .collect();
    paged(items, params)
}

fn comment_add(state: &mut State, auth: &AuthKind, params: &Value, in_batch: bool) -> Outcome {
    // §12.4: only lowercase `fields` (crm 23.100.0 rejects `Fields`, `FIELDS`).
    let Some(fields) = params.get("fields").and_then(Value::as_object) else {
        return Err(ApiError::new(400, "100", "Required fields: fields"));
    };
    if fields.contains_key("FILES") && in_batch {
        // §12.4, §13: file upload is not allowed inside batch.
        return Err(ApiError::new(
            405,
            "ERROR_BATCH_METHOD_NOT_ALLOWED",
            "Method not allowed by batch",
        ));
    }
    let get = |k: &str| fields.get(k).and_then(scalar).filter(|s| !s.is_empty());
    let (Some(entity_id), Some(entity_type)) = (
        get("ENTITY_ID").and_then(|s| s.parse::<u64>().ok()),
        get("ENTITY_TYPE"),
    ) else {
        return Err(ApiError::new(
            400,
            "100",
            "Required fields: ENTITY_ID, ENTITY_TYPE",
        ));
    };
    let comment = get("COMMENT")
        .ok_or_else(|| ApiError::new(400, "INVALID_ARG_VALUE", "Comment is empty"))?;
    let exists = match entity_type.as_str() {
        "deal" => state.deals.contains_key(&entity_id),
        "lead" => state.leads.contains_key(&entity_id),
        "contact" => state.contacts.contains_key(&entity_id),
        // §A7, crm-timeline-comment-add.md: a smart-process item is `dynamic_<id>`.
        other => other
            .strip_prefix("dynamic_")
            .and_then(|t| t.parse::<u32>().ok())
            .is_some_and(|t| state.automation.items.contains_key(&(t, entity_id))),
    };
    if !exists {
        return Err(ApiError::new(400, "OWNER_NOT_FOUND", "Owner not found"));
    }
    if entity_type == "deal" && !can_read_deal(state, auth, entity_id) {
        return Err(ApiError::new(403, "ACCESS_DENIED", "Access denied"));
    }
    let mut files = Vec::new();
    let pairs: Vec<&Value> = match fields.get("FILES") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(Value::Object(map)) => map.values().collect(),
        _ => Vec::new(),
    };
    for pair in pairs {
        let (name, data) = match pair {
            Value::Array(v) if v.len() == 2 => (scalar(&v[0]), scalar(&v[1])),
            _ => (None, None),
        };
        let (Some(name), Some(data)) = (name, data) else {
            return Err(ApiError::new(400, "INVALID_ARG_VALUE", "Wrong FILES"));
        };
        // §12.4: base64 without a data: prefix.
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .map_err(|_| ApiError::new(400, "INVALID_ARG_VALUE", "Wrong file content"))?;
        files.push((name, bytes));
    }
    let id = state.next_comment_id;
    state.next_comment_id += 1;
    state.timeline.push(TimelineComment {
        id,
        entity_type,
        entity_id,
        comment,
        files,
        author_id: auth.user_id(),
    });
    Ok(Success::of(json!(id)))
}

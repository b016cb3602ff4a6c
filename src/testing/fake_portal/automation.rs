//! Automation methods of the fake portal: app triggers, the workflow log of a robot
//! that waits, configurable timeline activities and their kanban badges, staff
//! notifications, to-dos, smart-process types and items.
//!
//! Sources are `../shared/bitrix24-automation.md` (§A1 triggers, §A2 activities and
//! badges, §A4 waiting robots, §A5 notifications, §A7 leads and smart processes) and
//! the pages of the official REST docs it names (`bitrix24/b24restdocs`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::methods::param;
use super::state::{ApiError, AuthKind, State, Success, iso_now};

type Outcome = Result<Success, ApiError>;

/// CRM owner types of `crm.enum.ownertype` that carry automation (§A1, §A7).
pub const OWNER_LEAD: u32 = 1;
pub const OWNER_DEAL: u32 = 2;

/// What this portal's automation holds.
#[derive(Default)]
pub(crate) struct Automation {
    /// App triggers: `CODE` → `NAME` (§A1).
    pub triggers: BTreeMap<String, String>,
    /// Triggers a manager placed on a stage in the automation settings:
    /// (owner type, trigger code) → the stage it moves to.
    pub stage_rules: BTreeMap<(u32, String), String>,
    /// Every `crm.automation.trigger.execute` accepted: (code, owner type, owner id).
    pub trigger_runs: Vec<(String, u32, u64)>,
    pub activities: BTreeMap<u64, Activity>,
    pub next_activity: u64,
    pub badges: BTreeMap<String, Value>,
    pub notifications: Vec<Notification>,
    pub next_notification: u64,
    pub todos: Vec<Value>,
    pub next_todo: u64,
    /// `bizproc.activity.log` entries: (event token, message).
    pub workflow_log: Vec<(String, String)>,
    /// Smart-process types (`crm.type.list`): entity type id → (title, automation on).
    pub smart_types: BTreeMap<u32, (String, bool)>,
    /// Smart-process items: (entity type id, id) → fields in camelCase.
    pub items: BTreeMap<(u32, u64), Map<String, Value>>,
    pub next_item: u64,
    /// Items a user may not read: (user, entity type id, id).
    pub denied_items: BTreeSet<(u32, u32, u64)>,
    /// Scopes the application was not granted (`FakePortal::revoke_scope`).
    pub revoked_scopes: BTreeSet<String>,
}

/// A configurable activity (§A2).
#[derive(Debug, Clone)]
pub struct Activity {
    pub id: u64,
    pub owner_type_id: u32,
    pub owner_id: u64,
    pub fields: Map<String, Value>,
    pub layout: Value,
    pub completed: bool,
}

/// A system notification in a user's list (§A5).
#[derive(Debug, Clone)]
pub struct Notification {
    pub id: u64,
    pub user_id: u32,
    pub message: String,
    pub tag: Option<String>,
}

/// The scope a method needs (§A5: `im.*` is scope `im`; the rest here are `crm` or
/// `bizproc`, which every install of opros asks for).
fn scope_of(method: &str) -> &'static str {
    if method.starts_with("im.") {
        "im"
    } else if method.starts_with("bizproc.") {
        "bizproc"
    } else {
        "crm"
    }
}

/// The methods this module answers.
pub(crate) fn handles(method: &str) -> bool {
    matches!(
        method,
        "crm.automation.trigger.add"
            | "crm.automation.trigger.list"
            | "crm.automation.trigger.delete"
            | "crm.automation.trigger.execute"
            | "bizproc.activity.log"
            | "crm.activity.configurable.add"
            | "crm.activity.configurable.update"
            | "crm.activity.configurable.get"
            | "crm.activity.list"
            | "crm.activity.badge.add"
            | "crm.activity.badge.list"
            | "crm.activity.todo.add"
            | "im.notify.system.add"
            | "crm.type.list"
            | "crm.item.get"
    )
}

pub(crate) fn dispatch(
    state: &mut State,
    auth: &AuthKind,
    method: &str,
    params: &Value,
) -> Outcome {
    if state.automation.revoked_scopes.contains(scope_of(method)) {
        // protocol §10 (system errors): a method outside the granted scopes.
        return Err(ApiError::new(
            403,
            "insufficient_scope",
            "The request requires higher privileges than provided by the access token.",
        ));
    }
    match method {
        "crm.automation.trigger.add" => trigger_add(state, auth, params),
        "crm.automation.trigger.list" => {
            app_admin(state, auth)?;
            Ok(Success::of(Value::Array(
                state
                    .automation
                    .triggers
                    .iter()
                    .map(|(code, name)| json!({"NAME": name, "CODE": code}))
                    .collect(),
            )))
        }
        "crm.automation.trigger.delete" => trigger_delete(state, auth, params),
        "crm.automation.trigger.execute" => trigger_execute(state, auth, params),
        "bizproc.activity.log" => activity_log(state, params),
        "crm.activity.configurable.add" => configurable_add(state, auth, params),
        "crm.activity.configurable.update" => configurable_update(state, auth, params),
        "crm.activity.configurable.get" => configurable_get(state, params),
        "crm.activity.list" => activity_list(state, params),
        "crm.activity.badge.add" => badge_add(state, auth, params),
        "crm.activity.badge.list" => Ok(Success::of(json!({
            "badges": state.automation.badges.values().cloned().collect::<Vec<_>>()
        }))),
        "crm.activity.todo.add" => todo_add(state, auth, params),
        "im.notify.system.add" => notify(state, params),
        "crm.type.list" => type_list(state, auth, params),
        "crm.item.get" => item_get(state, auth, params),
        _ => Err(ApiError::new(
            404,
            "ERROR_METHOD_NOT_FOUND",
            "Method not found!",
        )),
    }
}

fn text(params: &Value, name: &str) -> Option<String> {
    match param(params, name)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(params: &Value, name: &str) -> Option<u64> {
    text(params, name)?.trim().parse().ok()
}

/// §A1: trigger methods need application context and a CRM administrator; both
/// refusals are `403 ACCESS_DENIED` (crm-automation-trigger-execute.md, error table).
fn app_admin(state: &State, auth: &AuthKind) -> Result<(), ApiError> {
    match auth {
        AuthKind::Webhook { .. } => Err(ApiError::new(
            403,
            "ACCESS_DENIED",
            "Access denied! Application context required",
        )),
        _ if is_admin(state, auth) => Ok(()),
        _ => Err(ApiError::new(
            403,
            "ACCESS_DENIED",
            "Access denied! Admin permissions required",
        )),
    }
}

fn is_admin(state: &State, auth: &AuthKind) -> bool {
    auth.user_id()
        .and_then(|id| state.users.get(&id))
        .is_some_and(|u| u.admin)
}

/// §A1: `[a-z0-9.\-_]`, lower-case only. Errors carry an empty code
/// (crm-automation-trigger-execute.md).
fn trigger_code(params: &Value) -> Result<String, ApiError> {
    let code = text(params, "CODE").ok_or_else(|| ApiError::new(400, "", "Empty trigger code!"))?;
    let valid = code
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    if valid {
        Ok(code)
    } else {
        Err(ApiError::new(400, "", "Wrong trigger code!"))
    }
}

fn trigger_add(state: &mut State, auth: &AuthKind, params: &Value) -> Outcome {
    app_admin(state, auth)?;
    let code = trigger_code(params)?;
    let name = text(params, "NAME").ok_or_else(|| ApiError::new(400, "", "Empty trigger name!"))?;
    // crm-automation-trigger-add.md: an existing CODE only gets the new NAME.
    state.automation.triggers.insert(code, name);
    Ok(Success::of(json!(true)))
}

fn trigger_delete(state: &mut State, auth: &AuthKind, params: &Value) -> Outcome {
    app_admin(state, auth)?;
    let code = trigger_code(params)?;
    match state.automation.triggers.remove(&code) {
        Some(_) => Ok(Success::of(json!(true))),
        None => Err(ApiError::new(400, "", "Trigger not found")),
    }
}

fn owner_exists(state: &State, owner_type: u32, owner_id: u64) -> bool {
    match owner_type {
        OWNER_LEAD => state.leads.contains_key(&owner_id),
        OWNER_DEAL => state.deals.contains_key(&owner_id),
        other => state.automation.items.contains_key(&(other, owner_id)),
    }
}

fn known_owner_type(state: &State, owner_type: u32) -> bool {
    owner_type == OWNER_LEAD
        || owner_type == OWNER_DEAL
        || state.automation.smart_types.contains_key(&owner_type)
}

fn trigger_execute(state: &mut State, auth: &AuthKind, params: &Value) -> Outcome {
    app_admin(state, auth)?;
    let code = trigger_code(params)?;
    if !state.automation.triggers.contains_key(&code) {
        return Err(ApiError::new(
            400,
            "",
            &format!("Trigger with code {code} is not registered."),
        ));
    }
    let owner_type = number(params, "OWNER_TYPE_ID")
        .and_then(|n| u32::try_from(n).ok())
        .filter(|t| known_owner_type(state, *t))
        .ok_or_else(|| ApiError::new(400, "", "Incorrect parameter OWNER_TYPE_ID."))?;
    let owner_id = number(params, "OWNER_ID")
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::new(400, "", "Incorrect parameter OWNER_ID."))?;
    state
        .automation
        .trigger_runs
        .push((code.clone(), owner_type, owner_id));
    // crm-automation-trigger-execute.md: `true` even when nothing moves (no rule on a
    // stage, no such object); an SPA moves only with automation enabled (§A1).
    let automated = owner_type < 3
        || state
            .automation
            .smart_types
            .get(&owner_type)
            .is_some_and(|(_, on)| *on);
    let stage = state
        .automation
        .stage_rules
        .get(&(owner_type, code))
        .cloned();
    if let (Some(stage), true, true) = (stage, automated, owner_exists(state, owner_type, owner_id))
    {
        move_to_stage(state, owner_type, owner_id, &stage);
    }
    Ok(Success::of(json!(true)))
}

fn move_to_stage(state: &mut State, owner_type: u32, owner_id: u64, stage: &str) {
    let now = iso_now();
    match owner_type {
        OWNER_DEAL => {
            if let Some(deal) = state.deals.get_mut(&owner_id) {
                deal.insert("STAGE_ID".into(), json!(stage));
                deal.insert("DATE_MODIFY".into(), json!(now));
            }
        }
        OWNER_LEAD => {
            if let Some(lead) = state.leads.get_mut(&owner_id) {
                lead.insert("STATUS_ID".into(), json!(stage));
                lead.insert("DATE_MODIFY".into(), json!(now));
            }
        }
        other => {
            if let Some(item) = state.automation.items.get_mut(&(other, owner_id)) {
                item.insert("stageId".into(), json!(stage));
                item.insert("updatedTime".into(), json!(now));
            }
        }
    }
}

/// §A4: writes to the workflow log and leaves the step open; an unknown, used or
/// closed event token is `ACCESS_DENIED` (bizproc-activity-log.md, error table).
fn activity_log(state: &mut State, params: &Value) -> Outcome {
    let message = text(params, "LOG_MESSAGE")
        .ok_or_else(|| ApiError::new(400, "ERROR_EMPTY_LOG_MESSAGE", "Empty log message!"))?;
    let token = text(params, "EVENT_TOKEN").unwrap_or_default();
    let open = state.event_tokens.get(&token).is_some_and(|t| !t.used);
    if !open {
        return Err(ApiError::new(403, "ACCESS_DENIED", "Access denied!"));
    }
    state.automation.workflow_log.push((token, message));
    Ok(Success::of(json!(true)))
}

const TAG_TYPES: &[&str] = &["warning", "success", "failure", "primary", "secondary"];
const BUTTON_TYPES: &[&str] = &["primary", "secondary"];
const ACTION_TYPES: &[&str] = &["redirect", "openRestApp", "restEvent"];
const FIELDS: &[&str] = &[
    "typeId",
    "completed",
    "deadline",
    "pingOffsets",
    "isIncomingChannel",
    "responsibleId",
    "badgeCode",
    "originatorId",
    "originId",
];

fn field_error(code: &str, what: &str) -> ApiError {
    ApiError::new(400, code, what)
}

/// §A2 and configurable/structure/*.md: keys `[A-Za-z0-9_-]`, at most two header
/// tags and two footer buttons, one to twenty body blocks, known enum values.
fn check_layout(layout: &Value) -> Result<(), ApiError> {
    let Some(layout) = layout.as_object().filter(|l| !l.is_empty()) else {
        return Err(field_error(
            "ERROR_EMPTY_LAYOUT",
            "The layout field must be filled",
        ));
    };
    for key in layout.keys() {
        if !matches!(key.as_str(), "icon" | "header" | "body" | "footer") {
            return Err(field_error(
                "FIELD_IS_REDUNDANT",
                &format!("Field `{key}` is redundant"),
            ));
        }
    }
    let header = layout.get("header").and_then(Value::as_object);
    if header
        .and_then(|h| h.get("title"))
        .and_then(Value::as_str)
        .is_none()
    {
        return Err(field_error(
            "REQUIRED_FIELD_IS_EMPTY",
            "Field `header.title` is required",
        ));
    }
    let tags = header
        .and_then(|h| h.get("tags"))
        .and_then(Value::as_object);
    check_items(tags, 2, "header.tags", TAG_TYPES)?;
    let blocks = layout
        .get("body")
        .and_then(|b| b.get("blocks"))
        .and_then(Value::as_object);
    let count = blocks.map_or(0, Map::len);
    if !(1..=20).contains(&count) {
        return Err(field_error(
            "TOO_MANY_ITEMS",
            "body.blocks must hold 1 to 20 blocks",
        ));
    }
    check_keys(blocks)?;
    let buttons = layout
        .get("footer")
        .and_then(|f| f.get("buttons"))
        .and_then(Value::as_object);
    check_items(buttons, 2, "footer.buttons", BUTTON_TYPES)?;
    check_actions(&Value::Object(layout.clone()))
}

fn check_keys(map: Option<&Map<String, Value>>) -> Result<(), ApiError> {
    let bad = map.into_iter().flatten().map(|(k, _)| k).find(|k| {
        k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    });
    match bad {
        Some(key) => Err(field_error(
            "WRONG_FIELD_VALUE",
            &format!("Wrong key `{key}`"),
        )),
        None => Ok(()),
    }
}

fn check_items(
    items: Option<&Map<String, Value>>,
    max: usize,
    what: &str,
    types: &[&str],
) -> Result<(), ApiError> {
    if items.map_or(0, Map::len) > max {
        return Err(field_error(
            "TOO_MANY_ITEMS",
            &format!("Too many items in {what}"),
        ));
    }
    check_keys(items)?;
    for item in items.into_iter().flatten().map(|(_, v)| v) {
        let kind = item.get("type").and_then(Value::as_str);
        if kind.is_some_and(|k| !types.contains(&k)) {
            // header.md: e.g. `lavender` is not a tag type.
            return Err(field_error("ENUM_FIELD", &format!("Wrong type in {what}")));
        }
    }
    Ok(())
}

/// action.md: every `action` is one of three kinds; `restEvent` needs an `id`.
fn check_actions(value: &Value) -> Result<(), ApiError> {
    match value {
        Value::Object(map) => {
            if let Some(action) = map.get("action").and_then(Value::as_object) {
                let kind = action.get("type").and_then(Value::as_str).unwrap_or("");
                if !ACTION_TYPES.contains(&kind) {
                    return Err(field_error("ENUM_FIELD", "Wrong action type"));
                }
                if kind == "restEvent" && action.get("id").and_then(Value::as_str).is_none() {
                    return Err(field_error(
                        "REQUIRED_FIELD_IS_EMPTY",
                        "Field `action.id` is required",
                    ));
                }
            }
            map.values().try_for_each(check_actions)
        }
        Value::Array(list) => list.iter().try_for_each(check_actions),
        _ => Ok(()),
    }
}

fn check_fields(fields: &Map<String, Value>) -> Result<(), ApiError> {
    match fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        Some(key) => Err(field_error(
            "FIELD_IS_REDUNDANT",
            &format!("Field `{key}` is redundant"),
        )),
        None => Ok(()),
    }
}

fn flag(value: Option<&Value>) -> bool {
    // crm-activity-configurable-add.md: `Y/N`, `1/0`, `true/false`.
    match value {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.as_str(), "Y" | "1" | "true"),
        Some(Value::Number(n)) => n.as_u64() == Some(1),
        _ => false,
    }
}

fn configurable_add(state: &mut State, auth: &AuthKind, params: &Value) -> Outcome {
    if matches!(auth, AuthKind::Webhook { .. }) {
        // §A2: application context only.
        return Err(ApiError::new(
            400,
            "ERROR_WRONG_CONTEXT",
            "The method can only be called in the context of an application",
        ));
    }
    let (Some(owner_type), Some(owner_id)) = (
        number(params, "ownerTypeId").and_then(|n| u32::try_from(n).ok()),
        number(params, "ownerId"),
    ) else {
        return Err(ApiError::new(400, "100", "Required fields are not filled"));
    };
    if !owner_exists(state, owner_type, owner_id) {
        return Err(ApiError::new(400, "NOT_FOUND", "Not found."));
    }
    let fields = param(params, "fields")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    check_fields(&fields)?;
    let layout = param(params, "layout").cloned().unwrap_or(Value::Null);
    check_layout(&layout)?;
    let automation = &mut state.automation;
    automation.next_activity += 1;
    let id = 7000 + automation.next_activity;
    automation.activities.insert(
        id,
        Activity {
            id,
            owner_type_id: owner_type,
            owner_id,
            completed: flag(fields.get("completed")),
            fields,
            layout,
        },
    );
    Ok(Success::of(json!({"activity": {"id": id}})))
}

fn configurable_update(state: &mut State, auth: &AuthKind, params: &Value) -> Outcome {
    if matches!(auth, AuthKind::Webhook { .. }) {
        return Err(ApiError::new(
            400,
            "ERROR_WRONG_CONTEXT",
            "The method can only be called in the context of an application",
        ));
    }
    let id = number(params, "id")
        .ok_or_else(|| ApiError::new(400, "100", "Required fields are not filled"))?;
    let fields = param(params, "fields")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    check_fields(&fields)?;
    let layout = param(params, "layout").cloned();
    if let Some(layout) = &layout {
        check_layout(layout)?;
    }
    let activity = state
        .automation
        .activities
        .get_mut(&id)
        .ok_or_else(|| ApiError::new(400, "NOT_FOUND", "Not found."))?;
    if fields.contains_key("completed") {
        activity.completed = flag(fields.get("completed"));
    }
    activity.fields.extend(fields);
    if let Some(layout) = layout {
        activity.layout = layout;
    }
    Ok(Success::of(json!({"activity": {"id": id}})))
}

/// `crm.activity.list` over the configurable activities (crm-activity-list.md: a
/// `filter` on the activity's fields, upper-case, among them `OWNER_TYPE_ID`,
/// `OWNER_ID` and `ORIGIN_ID`, where the `originId` given to
/// `crm.activity.configurable.add` is kept). Values come back as strings.
fn activity_list(state: &State, params: &Value) -> Outcome {
    let filter = param(params, "filter").cloned().unwrap_or(Value::Null);
    let wanted = |name: &str| text(&filter, name);
    let rows: Vec<Value> = state
        .automation
        .activities
        .values()
        .filter(|a| {
            let origin = a.fields.get("originId").and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
            wanted("OWNER_TYPE_ID").is_none_or(|t| t == a.owner_type_id.to_string())
                && wanted("OWNER_ID").is_none_or(|id| id == a.owner_id.to_string())
                && wanted("ORIGIN_ID").is_none_or(|o| Some(o) == origin)
        })
        .map(|a| {
            json!({
                "ID": a.id.to_string(),
                "OWNER_TYPE_ID": a.owner_type_id.to_string(),
                "OWNER_ID": a.owner_id.to_string(),
                "ORIGIN_ID": a.fields.get("originId").cloned().unwrap_or(Value::Null),
                "COMPLETED": if a.completed { "Y" } else { "N" },
            })
        })
        .collect();
    Ok(Success::of(Value::Array(rows)))
}

fn configurable_get(state: &State, params: &Value) -> Outcome {
    let id = number(params, "id")
        .ok_or_else(|| ApiError::new(400, "100", "Required fields are not filled"))?;
    let activity = state
        .automation
        .activities
        .get(&id)
        .ok_or_else(|| ApiError::new(400, "NOT_FOUND", "Not found."))?;
    let mut fields = activity.fields.clone();
    fields.insert(
        "completed".into(),
        json!(if activity.completed { "Y" } else { "N" }),
    );
    Ok(Success::of(json!({"activity": {
        "id": activity.id, "ownerTypeId": activity.owner_type_id, "ownerId": activity.owner_id,
        "fields": fields, "layout": activity.layout,
    }})))
}

/// crm-activity-badge-add.md: a CRM administrator; four required fields; the answer
/// echoes the badge.
fn badge_add(state: &mut State, auth: &AuthKind, params: &Value) -> Outcome {
    if !is_admin(state, auth) {
        return Err(ApiError::new(403, "ACCESS_DENIED", "Access denied."));
    }
    let [Some(code), Some(title), Some(value), Some(kind)] =
        ["code", "title", "value", "type"].map(|name| text(params, name))
    else {
        return Err(ApiError::new(
            400,
            "REQUIRED_ARG_MISSING",
            "Required fields are not filled",
        ));
    };
    if !TAG_TYPES.contains(&kind.as_str()) {
        return Err(field_error("ENUM_FIELD", "Wrong badge type"));
    }
    let badge = json!({"code": code, "title": title, "value": value, "type": kind});
    state.automation.badges.insert(code, badge.clone());
    Ok(Success::of(json!({"badge": badge})))
}

/// §A2: a universal to-do; works through a webhook too.
fn todo_add(state: &mut State, auth: &AuthKind, params: &Value) -> Outcome {
    let (Some(owner_type), Some(owner_id), Some(deadline)) = (
        number(params, "ownerTypeId").and_then(|n| u32::try_from(n).ok()),
        number(params, "ownerId"),
        text(params, "deadline"),
    ) else {
        return Err(ApiError::new(400, "100", "Required fields are not filled"));
    };
    if !owner_exists(state, owner_type, owner_id) {
        return Err(ApiError::new(400, "NOT_FOUND", "Not found."));
    }
    let automation = &mut state.automation;
    automation.next_todo += 1;
    let id = 8000 + automation.next_todo;
    automation.todos.push(json!({
        "id": id, "ownerTypeId": owner_type, "ownerId": owner_id, "deadline": deadline,
        "title": text(params, "title"), "description": text(params, "description"),
        "responsibleId": number(params, "responsibleId"),
        "authorId": auth.user_id(),
    }));
    Ok(Success::of(json!({"id": id})))
}

/// §A5 and im-notify-system-add.md: a new notification with the same `TAG` removes
/// the earlier ones; the answer is the notification's id.
fn notify(state: &mut State, params: &Value) -> Outcome {
    let user_id = number(params, "USER_ID")
        .and_then(|n| u32::try_from(n).ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::new(400, "USER_ID_EMPTY", "User ID can't be empty"))?;
    let message = text(params, "MESSAGE")
        .map(|m| m.trim().to_owned())
        .ok_or_else(|| ApiError::new(400, "MESSAGE_EMPTY", "Message can't be empty"))?;
    let tag = text(params, "TAG");
    let automation = &mut state.automation;
    if let Some(tag) = &tag {
        automation
            .notifications
            .retain(|n| n.tag.as_deref() != Some(tag.as_str()));
    }
    automation.next_notification += 1;
    let id = 12000 + automation.next_notification;
    automation.notifications.push(Notification {
        id,
        user_id,
        message,
        tag,
    });
    Ok(Success::of(json!(id)))
}

/// `crm.type.list` (rest_help/crm/dynamic/methodscrmtype: «Права на выполнение:
/// администратор»; crm.type.get shows a type's fields): `{types: [...]}` with
/// `entityTypeId`, `title` and the "Y"/"N" flags, 50 a page from `start`.
fn type_list(state: &State, auth: &AuthKind, params: &Value) -> Outcome {
    if !is_admin(state, auth) {
        return Err(ApiError::new(403, "ACCESS_DENIED", "Access denied"));
    }
    let types: Vec<Value> = state
        .automation
        .smart_types
        .iter()
        .map(|(id, (title, on))| {
            json!({
                "id": id, "entityTypeId": id, "title": title,
                "isAutomationEnabled": if *on { "Y" } else { "N" },
                "isStagesEnabled": "Y", "isClientEnabled": "Y",
            })
        })
        .collect();
    const PAGE: usize = 50;
    let start = number(params, "start")
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    let total = types.len();
    let page: Vec<Value> = types.into_iter().skip(start).take(PAGE).collect();
    Ok(Success {
        result: json!({ "types": page }),
        total: Some(total),
        next: (start + PAGE < total).then_some(start + PAGE),
    })
}

/// §A7: `crm.item.get(entityTypeId, id)` → `{item: {…}}`, fields in camelCase. The
/// call runs with the token owner's rights (methodscrmitem: «учитываются права
/// доступа пользователя»); a refusal is `403 ACCESS_DENIED` like a deal's.
fn item_get(state: &State, auth: &AuthKind, params: &Value) -> Outcome {
    let (Some(type_id), Some(id)) = (
        number(params, "entityTypeId").and_then(|n| u32::try_from(n).ok()),
        number(params, "id"),
    ) else {
        return Err(ApiError::new(400, "", "entityTypeId and id are required"));
    };
    let item = match type_id {
        OWNER_DEAL => state.deals.get(&id).map(camel_case),
        OWNER_LEAD => state.leads.get(&id).map(camel_case),
        other => state.automation.items.get(&(other, id)).cloned(),
    };
    let denied = auth
        .user_id()
        .is_some_and(|user| state.automation.denied_items.contains(&(user, type_id, id)));
    if item.is_some() && denied {
        return Err(ApiError::new(403, "ACCESS_DENIED", "Access denied"));
    }
    match item {
        Some(item) => Ok(Success::of(json!({"item": item}))),
        None => Err(ApiError::new(400, "NOT_FOUND", "Element not found")),
    }
}

/// crm.item.* answers in camelCase (`ASSIGNED_BY_ID` → `assignedById`, §A7).
fn camel_case(record: &Map<String, Value>) -> Map<String, Value> {
    record
        .iter()
        .map(|(key, value)| {
            let mut out = String::new();
            let mut upper = false;
            for c in key.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    out.push(c.to_ascii_uppercase());
                    upper = false;
                } else {
                    out.push(c.to_ascii_lowercase());
                }
            }
            (out, value.clone())
        })
        .collect()
}

/// The CRM document a robot runs on (§A4 `DOCUMENT_TYPE`, §A7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    Deal(u64),
    Lead(u64),
    /// A smart-process item: its type's `entityTypeId` (≥ 128) and its id.
    Item {
        entity_type_id: u32,
        id: u64,
    },
}

/// The class of the smart-process document (bizproc-robot-add.md).
const DYNAMIC_CLASS: &str = r"Bitrix\Crm\Integration\BizProc\Document\Dynamic";

impl Document {
    /// `document_id[0..2]` of a robot call: `DEAL_5`, `LEAD_5`, `DYNAMIC_128_5`.
    pub fn document_id(&self) -> [String; 3] {
        let [module, class, _] = self.document_type();
        let id = match self {
            Document::Deal(id) => format!("DEAL_{id}"),
            Document::Lead(id) => format!("LEAD_{id}"),
            Document::Item { entity_type_id, id } => format!("DYNAMIC_{entity_type_id}_{id}"),
        };
        [module, class, id]
    }

    /// `document_type[0..2]`: `DEAL`, `LEAD`, `DYNAMIC_128`.
    pub fn document_type(&self) -> [String; 3] {
        let (class, kind) = match self {
            Document::Deal(_) => ("CCrmDocumentDeal", "DEAL".to_owned()),
            Document::Lead(_) => ("CCrmDocumentLead", "LEAD".to_owned()),
            Document::Item { entity_type_id, .. } => {
                (DYNAMIC_CLASS, format!("DYNAMIC_{entity_type_id}"))
            }
        };
        ["crm".to_owned(), class.to_owned(), kind]
    }
}

/// bizproc-robot-add.md (§A4): a robot without `FILTER` is offered everywhere; with
/// `FILTER.INCLUDE`, only for a document type that one rule (a full or partial
/// document type, e.g. `['crm','CCrmDocumentDeal']`) is a prefix of; `EXCLUDE` rules
/// take it away again.
pub(crate) fn robot_offered_for(robot: &Map<String, Value>, document: &Document) -> bool {
    let doc_type = document.document_type();
    let matches = |rule: &Value| {
        rule.as_array().is_some_and(|parts| {
            !parts.is_empty()
                && parts.len() <= doc_type.len()
                && parts
                    .iter()
                    .zip(doc_type.iter())
                    .all(|(p, d)| p.as_str().is_some_and(|p| p.eq_ignore_ascii_case(d)))
        })
    };
    let Some(filter) = robot.get("FILTER").and_then(Value::as_object) else {
        return true;
    };
    let rules = |name: &str| {
        filter
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_array().cloned())
    };
    let included = rules("INCLUDE").is_none_or(|r| r.iter().any(matches));
    let excluded = rules("EXCLUDE").is_some_and(|r| r.iter().any(matches));
    included && !excluded
}

/// §A7: `CRM_DYNAMIC_<id>_DETAIL_TAB` exists for every smart-process type.
pub(crate) fn smart_process_tab(state: &State, placement: &str) -> bool {
    placement
        .strip_prefix("CRM_DYNAMIC_")
        .and_then(|rest| rest.strip_suffix("_DETAIL_TAB"))
        .and_then(|id| id.parse::<u32>().ok())
        .is_some_and(|id| state.automation.smart_types.contains_key(&id))
}

impl super::FakePortal {
    /// A manager drags the app trigger `code` onto `stage` in the automation settings
    /// of an owner type (§A1): from then on executing it moves the object there.
    pub fn place_trigger(&self, owner_type_id: u32, code: &str, stage: &str) {
        self.state()
            .automation
            .stage_rules
            .insert((owner_type_id, code.to_owned()), stage.to_owned());
    }

    /// Registered app triggers: (code, name).
    pub fn triggers(&self) -> Vec<(String, String)> {
        let state = self.state();
        state
            .automation
            .triggers
            .iter()
            .map(|(c, n)| (c.clone(), n.clone()))
            .collect()
    }

    /// Accepted `crm.automation.trigger.execute` calls: (code, owner type, owner id).
    pub fn trigger_runs(&self) -> Vec<(String, u32, u64)> {
        self.state().automation.trigger_runs.clone()
    }

    pub fn activities(&self) -> Vec<Activity> {
        self.state()
            .automation
            .activities
            .values()
            .cloned()
            .collect()
    }

    pub fn badges(&self) -> Vec<Value> {
        self.state().automation.badges.values().cloned().collect()
    }

    /// Notifications still in users' lists (a repeated `TAG` replaced earlier ones).
    pub fn notifications(&self) -> Vec<Notification> {
        self.state().automation.notifications.clone()
    }

    pub fn todos(&self) -> Vec<Value> {
        self.state().automation.todos.clone()
    }

    /// `bizproc.activity.log` entries: (event token, message).
    pub fn workflow_log(&self) -> Vec<(String, String)> {
        self.state().automation.workflow_log.clone()
    }

    /// A waiting robot's step closes on its own (`TimeoutDuration` ran out, §A4):
    /// its event token is spent, so `bizproc.event.send` gets `ACCESS_DENIED`.
    pub fn close_robot_step(&self, event_token: &str) {
        if let Some(token) = self.state().event_tokens.get_mut(event_token) {
            token.used = true;
        }
    }

    /// Takes tokens starting with `prefix` as issued by runs of robot `code`, each
    /// good for one `bizproc.event.send`: the robot bench's load generator makes up
    /// a run per request rather than having the portal start 100 000 workflows.
    pub fn accept_event_tokens(&self, prefix: &str, code: &str) {
        self.state()
            .made_up_runs
            .push((prefix.to_owned(), code.to_owned()));
    }

    /// A smart-process type (`crm.type.add`, §A7); automation is off by default there.
    pub fn add_smart_type(&self, entity_type_id: u32, title: &str, automation: bool) {
        self.state()
            .automation
            .smart_types
            .insert(entity_type_id, (title.to_owned(), automation));
    }

    /// A smart-process item with camelCase fields (§A7), optionally with a contact.
    pub fn add_item(&self, entity_type_id: u32, title: &str, contact_id: Option<u64>) -> u64 {
        let id = {
            let mut state = self.state();
            state.automation.next_item += 1;
            500 + state.automation.next_item
        };
        self.add_item_with_id(entity_type_id, id, title, contact_id);
        id
    }

    /// An item with a chosen id: each smart process keeps its items in a table of
    /// its own, so items of different types — and a deal — may share an id
    /// (rest_help/crm/dynamic/methodscrmitem: «идентификаторы элементов разных
    /// смарт-процессов могут совпадать»; hence `entityTypeId` in every call).
    pub fn add_item_with_id(
        &self,
        entity_type_id: u32,
        id: u64,
        title: &str,
        contact_id: Option<u64>,
    ) {
        let mut state = self.state();
        let now = iso_now();
        let item = json!({
            "id": id, "entityTypeId": entity_type_id, "title": title,
            "stageId": format!("DT{entity_type_id}_1:NEW"), "assignedById": 1,
            "contactId": contact_id, "createdTime": now, "updatedTime": now,
        });
        if let Value::Object(map) = item {
            state.automation.items.insert((entity_type_id, id), map);
        }
    }

    /// The user's CRM role does not let them read this item (§11).
    pub fn deny_item_for_user(&self, user_id: u32, entity_type_id: u32, id: u64) {
        self.state()
            .automation
            .denied_items
            .insert((user_id, entity_type_id, id));
    }

    /// `crm.type.delete` (§A7): the type and its items are gone.
    pub fn delete_smart_type(&self, entity_type_id: u32) {
        let mut state = self.state();
        state.automation.smart_types.remove(&entity_type_id);
        state
            .automation
            .items
            .retain(|(t, _), _| *t != entity_type_id);
    }

    pub fn item(&self, entity_type_id: u32, id: u64) -> Option<Value> {
        self.state()
            .automation
            .items
            .get(&(entity_type_id, id))
            .cloned()
            .map(Value::Object)
    }

    /// The app was installed without `scope` (an admin unticked it): its methods
    /// answer `insufficient_scope` and tokens no longer list it.
    pub fn revoke_scope(&self, scope: &str) {
        self.state()
            .automation
            .revoked_scopes
            .insert(scope.to_owned());
    }
}

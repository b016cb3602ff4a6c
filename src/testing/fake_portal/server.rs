//! HTTP side of the fake portal: the REST router (§9) and the OAuth server (§2).

use std::sync::Arc;

use poem::http::StatusCode;
use poem::{Body, Request, Response};
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

use super::state::{ApiError, AuthKind, State, Success, delay_of, unix_now};
use super::{Fault, Shared, UninstalledAnswer, batch, methods};
use crate::bitrix24::form;
use crate::secret::constant_time_eq;

fn json_response(status: u16, body: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .content_type("application/json; charset=utf-8")
        .body(body.to_string())
}

fn error_response(err: &ApiError) -> Response {
    json_response(err.status, &err.body())
}

/// A body that breaks off mid-way: the announced length is never reached, so the
/// server closes the connection and the client sees it dropped.
fn dropped() -> Response {
    let stream = futures::stream::iter([Ok::<_, std::io::Error>(b"{\"result\":".to_vec())]);
    Response::builder()
        .status(StatusCode::OK)
        .content_type("application/json; charset=utf-8")
        .header("content-length", "4096")
        .body(Body::from_bytes_stream(stream))
}

/// Parameters of a request: query string, then a form or JSON body (§9: `auth` may
/// be in any of them). Also returns batch `cmd` names in arrival order.
fn parse_params(query: &str, content_type: &str, body: &[u8]) -> (Value, Vec<(String, String)>) {
    let mut pairs = form::decode_pairs(query.as_bytes());
    let mut json_body: Option<Value> = None;
    if content_type.starts_with("application/json") {
        json_body = serde_json::from_slice(body).ok();
    } else if !body.is_empty() {
        // Form bodies with percent-encoded bracket keys (§"Conventions").
        pairs.extend(form::decode_pairs(body));
    }
    let tree = crate::testing::form_tree::pairs_to_tree(&pairs);
    let mut commands: Vec<(String, String)> = match tree.get("cmd") {
        Some(crate::testing::form_tree::FormNode::Branch(items)) => items
            .iter()
            .filter_map(|(k, v)| match v {
                crate::testing::form_tree::FormNode::Leaf(s) => Some((k.clone(), s.clone())),
                crate::testing::form_tree::FormNode::Branch(_) => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut params = tree.to_json();
    if let Some(Value::Object(json_map)) = json_body {
        let order = json_cmd_order(body);
        if let Some(cmd) = json_map.get("cmd") {
            commands = order
                .iter()
                .filter_map(|name| {
                    let value = match cmd {
                        Value::Object(m) => m.get(name),
                        Value::Array(a) => name.parse::<usize>().ok().and_then(|i| a.get(i)),
                        _ => None,
                    };
                    value
                        .and_then(Value::as_str)
                        .map(|s| (name.clone(), s.to_owned()))
                })
                .collect();
        }
        let target = params.as_object_mut();
        if let Some(target) = target {
            for (k, v) in json_map {
                target.insert(k, v);
            }
        }
    }
    if !params.is_object() {
        params = Value::Object(Map::new());
    }
    (params, commands)
}

/// The keys of `cmd` in a JSON body, in document order (serde_json's map sorts).
fn json_cmd_order(body: &[u8]) -> Vec<String> {
    struct Top(Vec<String>);
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("cmd map or list")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = m.next_entry::<String, IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while s.next_element::<IgnoredAny>()?.is_some() {
                        keys.push(keys.len().to_string());
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_any(V)
        }
    }
    impl<'de> serde::Deserialize<'de> for Top {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Top;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Top, A::Error> {
                    let mut keys = Vec::new();
                    while let Some(k) = m.next_key::<String>()? {
                        if k == "cmd" {
                            keys = m.next_value::<Keys>()?.0;
                        } else {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                    Ok(Top(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_slice::<Top>(body)
        .map(|t| t.0)
        .unwrap_or_default()
}

fn fault_response(fault: &Fault) -> Option<Response> {
    let err = |s, c: &str, d: &str| Some(error_response(&ApiError::new(s, c, d)));
    match fault {
        // Fixtures rest-error-query-limit.json, rest-error-expired-token.json, …
        Fault::QueryLimit => err(503, "QUERY_LIMIT_EXCEEDED", "Too many requests"),
        Fault::ExpiredToken => err(
            401,
            "expired_token",
            "The access token provided has expired.",
        ),
        Fault::InvalidToken => err(
            401,
            "invalid_token",
            "The access token provided is invalid.",
        ),
        Fault::OperationTimeLimit => err(
            429,
            "OPERATION_TIME_LIMIT",
            "Method is blocked due to operation time limit.",
        ),
        Fault::Error {
            status,
            code,
            description,
        } => err(*status, code, description),
        // A proxy's answer: not JSON.
        Fault::Status(status) => Some(
            Response::builder()
                .status(StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY))
                .content_type("text/html")
                .body(format!("<html><body>{status}</body></html>")),
        ),
        Fault::DropConnection => Some(dropped()),
        Fault::Delay(_) | Fault::ProcessThenStatus(_) | Fault::ProcessThenHang(_) => None,
    }
}

pub(crate) async fn handle(shared: Arc<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let body = req.into_body().into_vec().await.unwrap_or_default();
    if path.trim_end_matches('/') == "/oauth/token" {
        return oauth(&shared, &query, &content_type, &body).await;
    }
    let Some(rest) = path.strip_prefix("/rest/") else {
        return json_response(
            404,
            &json!({"error": "NOT_FOUND", "error_description": "Not found"}),
        );
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    // §9: /rest/<method>[.json] and /rest/<user>/<code>/<method>[.json].
    let (raw_method, hook) = match segments.as_slice() {
        [m] => (*m, None),
        [user, code, m] => (*m, Some((*user, *code))),
        _ => {
            return error_response(&ApiError::new(
                404,
                "ERROR_METHOD_NOT_FOUND",
                "Method not found!",
            ));
        }
    };
    let method = raw_method.trim_end_matches(".json").to_ascii_lowercase();
    let (mut params, commands) = parse_params(&query, &content_type, &body);
    let token = params
        .as_object_mut()
        .and_then(|m| m.remove("auth"))
        .and_then(|v| v.as_str().map(str::to_owned));

    let fault = {
        let mut state = shared.lock();
        state.http_requests += 1;
        state.take_fault(&method)
    };
    if let Some(d) = fault.as_ref().and_then(delay_of) {
        tokio::time::sleep(d).await;
    }
    let (status, body) = {
        let mut state = shared.lock();
        if let Some(response) = fault.as_ref().and_then(fault_response) {
            let status = response.status().as_u16();
            state.record(
                &method,
                params,
                AuthKind::None,
                status,
                Some("fault".into()),
            );
            return response;
        }
        let (status, body) = rest_call(&mut state, &method, params.clone(), token, hook, &commands);
        let code = body.get("error").and_then(Value::as_str).map(str::to_owned);
        let auth = state.last_auth.clone();
        state.record(&method, params, auth, status, code);
        (status, body)
    };
    // The call ran; what the caller hears is another matter (§9, §10: a 5xx or no
    // answer at all says nothing about whether it ran).
    match fault {
        Some(Fault::ProcessThenStatus(lost)) => {
            fault_response(&Fault::Status(lost)).unwrap_or_else(|| json_response(status, &body))
        }
        Some(Fault::ProcessThenHang(d)) => {
            tokio::time::sleep(d).await;
            json_response(status, &body)
        }
        _ => json_response(status, &body),
    }
}

/// Bucket, auth, operating budget, method; returns the status and the body.
fn rest_call(
    state: &mut State,
    method: &str,
    params: Value,
    token: Option<String>,
    hook: Option<(&str, &str)>,
    commands: &[(String, String)],
) -> (u16, Value) {
    state.last_auth = AuthKind::None;
    // §10.1: leaky bucket per portal; a batch counts as one request.
    if !state.take_slot() {
        let err = ApiError::new(503, "QUERY_LIMIT_EXCEEDED", "Too many requests");
        return (err.status, err.body());
    }
    let auth = match resolve_auth(state, token.as_deref(), hook) {
        Ok(a) => a,
        Err(err) => return (err.status, err.body()),
    };
    state.last_auth = auth.clone();
    // §10.2: a method over its budget is refused until baskets expire.
    if state.operating_exceeded(&auth, method) {
        let err = ApiError::new(
            429,
            "OPERATION_TIME_LIMIT",
            "Method is blocked due to operation time limit.",
        );
        return (err.status, err.body());
    }
    let outcome = if method == "batch" {
        let halt = params
            .get("halt")
            .and_then(|v| match v {
                Value::String(s) => Some(s == "1" || s == "true"),
                Value::Bool(b) => Some(*b),
                Value::Number(n) => Some(n.as_u64() == Some(1)),
                _ => None,
            })
            .unwrap_or(false);
        batch::run(state, &auth, commands, halt)
    } else {
        methods::dispatch(state, &auth, method, &params, false)
    };
    match outcome {
        Ok(Success {
            result,
            total,
            next,
        }) => {
            let time = state.charge(&auth, method);
            let mut body = json!({"result": result});
            if let Some(map) = body.as_object_mut() {
                if let Some(total) = total {
                    map.insert("total".into(), json!(total));
                }
                if let Some(next) = next {
                    map.insert("next".into(), json!(next));
                }
                map.insert("time".into(), time);
            }
            (200, body)
        }
        Err(err) => (err.status, err.body()),
    }
}

fn resolve_auth(
    state: &mut State,
    token: Option<&str>,
    hook: Option<(&str, &str)>,
) -> Result<AuthKind, ApiError> {
    let no_auth = || ApiError::new(401, "NO_AUTH_FOUND", "Wrong authorization data");
    if let Some((user, code)) = hook {
        // §5.1: inbound webhook, no auth parameter; user id + code must match.
        let user_ok = user.parse::<u32>().ok() == Some(state.cfg.webhook_user_id);
        if user_ok && constant_time_eq(code.as_bytes(), state.cfg.webhook_code.as_bytes()) {
            return Ok(AuthKind::Webhook {
                user_id: state.cfg.webhook_user_id,
            });
        }
        return Err(no_auth());
    }
    let token = token.filter(|t| !t.is_empty()).ok_or_else(no_auth)?;
    let Some(entry) = state.tokens.get(token) else {
        if state.uninstalled {
            match state.uninstalled_answer {
                UninstalledAnswer::NoAuthFound => return Err(no_auth()),
                UninstalledAnswer::PortalDeleted => {
                    return Err(ApiError::new(500, "PORTAL_DELETED", "Portal was deleted"));
                }
                UninstalledAnswer::InvalidToken | UninstalledAnswer::InvalidClient => {}
            }
        }
        // §10: unknown/revoked → 401 invalid_token.
        return Err(ApiError::new(
            401,
            "invalid_token",
            "The access token provided is invalid.",
        ));
    };
    if entry.expires_at <= std::time::Instant::now() {
        // §10: 401 expired_token.
        return Err(ApiError::new(
            401,
            "expired_token",
            "The access token provided has expired.",
        ));
    }
    Ok(AuthKind::App {
        user_id: entry.user_id,
    })
}

/// `/oauth/token/` (§2.2–§2.5): GET query or POST form.
async fn oauth(shared: &Shared, query: &str, content_type: &str, body: &[u8]) -> Response {
    shared.lock().oauth_requests += 1;
    let (params, _) = parse_params(query, content_type, body);
    let get = |k: &str| {
        params
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let fault = shared.lock().take_fault("oauth.token");
    if let Some(d) = fault.as_ref().and_then(delay_of) {
        tokio::time::sleep(d).await;
    }
    if let Some(response) = fault.as_ref().and_then(fault_response) {
        return response;
    }
    // One OAuth server for every portal (see `fake_portal::PORTALS`): the token's own
    // portal does the refresh; this server only answers as the OAuth host.
    let refresh = get("refresh_token");
    let owner_arc;
    let owner: &Shared = if shared.lock().refresh_tokens.contains_key(&refresh) {
        shared
    } else if let Some(other) = super::owner_of_refresh(&refresh) {
        owner_arc = other;
        &owner_arc
    } else {
        shared
    };
    let mut state = owner.lock();
    let oauth_err = |status, code: &str, description: &str| {
        json_response(
            status,
            &json!({"error": code, "error_description": description}),
        )
    };
    if get("grant_type") != "refresh_token" {
        return oauth_err(400, "invalid_request", "Unsupported grant_type");
    }
    // §2.5: wrong id/secret → 401 invalid_client (PHP SDK ApiLevelErrorHandler).
    let client_ok = get("client_id") == state.cfg.client_id
        && constant_time_eq(
            get("client_secret").as_bytes(),
            state.cfg.client_secret.as_bytes(),
        );
    if !client_ok {
        return oauth_err(401, "invalid_client", "Invalid client");
    }
    let uninstalled = state.uninstalled;
    if uninstalled && state.uninstalled_answer == UninstalledAnswer::InvalidClient {
        return oauth_err(401, "invalid_client", "Invalid client");
    }
    let user_id = match state.refresh_tokens.get_mut(&refresh) {
        // §2.4 (assumed): a refresh token is consumed by its first use; after an
        // uninstall every refresh fails (§7.3).
        Some(entry) if !entry.used && !uninstalled => {
            entry.used = true;
            entry.user_id
        }
        // Fixture oauth-error-invalid-grant.json, 400.
        _ => return oauth_err(400, "invalid_grant", "Invalid grant"),
    };
    let (access, new_refresh) = state.issue_tokens(user_id);
    state.refresh_count += 1;
    let ttl = state.cfg.token_ttl.as_secs();
    // §2.3: `domain` is the OAuth server's (this server's own host), server_endpoint
    // its REST base, client_endpoint the portal's (another host after a move).
    json_response(
        200,
        &json!({
            "access_token": access,
            "expires": unix_now() + ttl,
            "expires_in": ttl,
            "scope": state.scope(),
            "domain": shared.domain,
            "server_endpoint": shared.server_endpoint(),
            "status": "L",
            "client_endpoint": owner.portal_endpoint(&state),
            "member_id": state.cfg.member_id,
            "user_id": user_id,
            "refresh_token": new_refresh,
        }),
    )
}

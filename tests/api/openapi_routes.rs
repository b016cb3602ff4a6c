//! `/docs` describes every route of the route tree (src/app.rs), the Bitrix24 callbacks
//! and the guides' webhooks as the forms they are, and the patient API's bodies as
//! typed objects.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestApp, spawn_app};

const APP_RS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/app.rs"));

/// `(path, method)` of every `.at(…)` and `.nest(…)` in `routes()`, paths in OpenAPI's
/// `{param}` form. The nest at `/` is the OpenAPI service itself: its operations are
/// the document's by construction, and it serves the operator's page at `/` (GET).
fn route_tree() -> Vec<(String, String)> {
    let body = &APP_RS[APP_RS
        .find("pub fn routes(")
        .expect("routes() in src/app.rs")..];
    let mut routes = vec![("/".to_owned(), "get".to_owned())];
    for call in [".at(", ".nest("] {
        for (start, _) in body.match_indices(call) {
            let args = &body[start + call.len()..];
            // The call's arguments, up to its closing parenthesis.
            let mut depth = 1;
            let end = args
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .expect("balanced call");
            let args = &args[..end];
            let path = args.split('"').nth(1).expect("a path literal");
            if path == "/" {
                continue;
            }
            let path = path
                .split('/')
                .map(|s| match s.strip_prefix(':') {
                    Some(name) => format!("{{{name}}}"),
                    None => s.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("/");
            let methods: Vec<&str> = ["get", "post", "put", "delete", "patch"]
                .into_iter()
                .filter(|m| {
                    args.match_indices(&format!("{m}(")).any(|(i, _)| {
                        // `get(` or `.get(`, not `forget(`.
                        i == 0
                            || !args[..i]
                                .chars()
                                .next_back()
                                .is_some_and(|c| c.is_alphanumeric() || c == '_')
                    })
                })
                .collect();
            assert!(!methods.is_empty(), "no method found for {path}: {args}");
            for m in methods {
                routes.push((path.clone(), m.to_owned()));
            }
        }
    }
    routes
}

async fn spec() -> Value {
    let app = spawn_app(&[]).await;
    let (status, spec) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    spec
}

#[tokio::test]
async fn every_route_of_the_tree_is_in_the_document() {
    let routes = route_tree();
    // The Bitrix24 callbacks, the webhooks, the pages: a parser that finds nothing
    // must not pass.
    assert!(routes.len() >= 18, "{routes:?}");
    for expected in [
        ("/b24/robot/send-survey", "post"),
        ("/b24/tab/report/{invitation}", "post"),
        ("/api/v1/bitrix/webhook", "get"),
        ("/docs", "get"),
    ] {
        assert!(
            routes
                .iter()
                .any(|(p, m)| (p.as_str(), m.as_str()) == expected),
            "{expected:?} not found in src/app.rs: {routes:?}"
        );
    }
    let spec = spec().await;
    let missing: Vec<_> = routes
        .iter()
        .filter(|(path, method)| spec["paths"][path.as_str()][method.as_str()].is_null())
        .collect();
    assert!(
        missing.is_empty(),
        "routes missing from /openapi.json: {missing:?}"
    );
}

/// The schema a `$ref` points at.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap_or_default();
            &spec["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// The fields of a route's form body (of every alternative, for an `anyOf`).
fn form_fields(spec: &Value, path: &str, method: &str) -> Vec<String> {
    let content = &spec["paths"][path][method]["requestBody"]["content"];
    let body = &content["application/x-www-form-urlencoded"]["schema"];
    assert!(!body.is_null(), "{method} {path} documents no form body");
    let alternatives = match body["anyOf"].as_array() {
        Some(any) => any.iter().collect(),
        None => vec![body],
    };
    alternatives
        .into_iter()
        .flat_map(|schema| {
            resolve(spec, schema)["properties"]
                .as_object()
                .map(|p| p.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn bitrix24_callbacks_and_webhooks_are_documented_as_their_forms() {
    let spec = spec().await;
    let robot = form_fields(&spec, "/b24/robot/send-survey", "post");
    for key in [
        "event_token",
        "document_id[2]",
        "auth[member_id]",
        "auth[application_token]",
    ] {
        assert!(
            robot.iter().any(|k| k == key),
            "robot form lacks {key}: {robot:?}"
        );
    }
    let events = form_fields(&spec, "/b24/events", "post");
    for key in [
        "event",
        "data[FIELDS][ID]",
        "data[CLEAN]",
        "auth[application_token]",
    ] {
        assert!(
            events.iter().any(|k| k == key),
            "event form lacks {key}: {events:?}"
        );
    }
    let install = form_fields(&spec, "/b24/install", "post");
    assert!(
        install.iter().any(|k| k == "auth[refresh_token]"),
        "the install route documents ONAPPINSTALL too: {install:?}"
    );
    for path in ["/b24/install", "/b24/app", "/b24/placement/deal-tab"] {
        let frame = form_fields(&spec, path, "post");
        for key in ["AUTH_ID", "member_id", "PLACEMENT_OPTIONS"] {
            assert!(
                frame.iter().any(|k| k == key),
                "{path} lacks {key}: {frame:?}"
            );
        }
    }
    for path in [
        "/b24/tab/report/{invitation}",
        "/b24/tab/new-link",
        "/b24/app/action",
    ] {
        let fields = form_fields(&spec, path, "post");
        assert!(fields.iter().any(|k| k == "s"), "{path}: {fields:?}");
    }
    let robot = form_fields(&spec, "/api/v1/bitrix/webhook", "post");
    for key in [
        "document_id[2]",
        "token",
        "auth_token",
        "lead_id",
        "category_id",
    ] {
        assert!(
            robot.iter().any(|k| k == key),
            "webhook robot lacks {key}: {robot:?}"
        );
    }
    let outgoing = form_fields(&spec, "/api/bitrix/webhook", "post");
    for key in ["event", "data[FIELDS][ID]", "auth[application_token]"] {
        assert!(
            outgoing.iter().any(|k| k == key),
            "outgoing webhook lacks {key}"
        );
    }
}

#[tokio::test]
async fn the_patient_api_bodies_are_typed() {
    let spec = spec().await;
    for (path, method) in [
        ("/api/v1/surveys/{token}/draft", "put"),
        ("/api/v1/surveys/{token}/submit", "post"),
    ] {
        let content = spec["paths"][path][method]["requestBody"]["content"]
            .as_object()
            .expect("a request body");
        let schema = content
            .iter()
            .find(|(ct, _)| ct.starts_with("application/json"))
            .map(|(_, c)| resolve(&spec, &c["schema"]))
            .expect("a JSON body");
        assert_eq!(
            schema["required"],
            serde_json::json!(["answers"]),
            "{schema}"
        );
        let answer = resolve(
            &spec,
            &schema["properties"]["answers"]["additionalProperties"],
        );
        let kinds: Vec<&str> = answer["oneOf"]
            .as_array()
            .map(|k| k.iter().filter_map(|s| s["type"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(kinds, ["string", "number", "array", "boolean"], "{answer}");
    }
    for name in ["SurveyView", "DraftSaved"] {
        let draft = &spec["components"]["schemas"][name]["properties"]["draft"];
        assert_eq!(
            draft["additionalProperties"]["$ref"], "#/components/schemas/AnswerValue",
            "{name}.draft: {draft}"
        );
    }
}

#[tokio::test]
async fn an_undocumented_method_gets_405_naming_the_documented_ones() {
    let app = spawn_app(&[]).await;
    let (_, spec) = app.get_json("/openapi.json").await;
    let paths = spec["paths"].as_object().expect("paths");
    assert!(paths.len() >= 18, "{}", paths.len());
    for (path, operations) in paths {
        let mut documented: Vec<String> = operations
            .as_object()
            .expect("operations")
            .keys()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        documented.sort();
        // A parameter's value does not matter for routing.
        let concrete = path
            .replace("{token}", "x")
            .replace("{name}", "x")
            .replace("{invitation}", "1");
        let r = app
            .http
            .request(reqwest::Method::DELETE, app.url(&concrete))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 405, "DELETE {path}");
        let mut allow: Vec<String> = r
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        allow.sort();
        assert_eq!(allow, documented, "Allow of {path}");
    }
}

const TOKEN: &str = "wireShapeToken2026";

/// A link made by the guide's webhook robot; returns its token.
async fn new_link(app: &TestApp) -> String {
    let (status, body) = app
        .get_json(&format!("/api/v1/bitrix/webhook?token={TOKEN}&lead_id=31"))
        .await;
    assert_eq!(status, 200, "{body}");
    let url = body["survey_url"].as_str().expect("survey_url");
    url.rsplit('/').next().expect("token").to_owned()
}

/// The typed bodies read and answer exactly what CONTRACT.md fixes, leniencies and
/// refusal codes included.
#[tokio::test]
async fn typed_answer_bodies_keep_the_wire_shape() {
    let app = spawn_app(&[("BITRIX24_INCOMING_TOKEN", TOKEN)]).await;
    let token = new_link(&app).await;
    let draft = format!("/api/v1/surveys/{token}/draft");

    // Values come back as they were sent: an integer stays an integer, a list a list.
    let (status, saved) = app
        .send_json(
            Method::PUT,
            &draft,
            &json!({"answers": {"height": 170, "allergies": "yes", "chronic": ["asthma"]}}),
        )
        .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["ok"], true);
    assert_eq!(saved["draft"]["height"], json!(170), "{saved}");
    assert_eq!(saved["draft"]["height"].to_string(), "170");
    assert_eq!(saved["draft"]["allergies"], "yes");
    let (_, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(survey["draft"]["height"].to_string(), "170", "{survey}");

    // A bare map of answers is taken too, and `answers: null` saves nothing new.
    let (status, saved) = app
        .send_json(Method::PUT, &draft, &json!({"allergies": "no"}))
        .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["draft"]["allergies"], "no", "{saved}");
    let (status, saved) = app
        .send_json(Method::PUT, &draft, &json!({"answers": null}))
        .await;
    assert_eq!(status, 200, "{saved}");

    // Refusals keep their codes.
    for (body, code) in [
        (json!([1, 2]), "body_not_object"),
        (json!("x"), "body_not_object"),
        (json!({"answers": 5}), "answers_not_object"),
        (json!({"answers": [1]}), "answers_not_object"),
    ] {
        let (status, err) = app.send_json(Method::PUT, &draft, &body).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (400, Some(code)),
            "{body}: {err}"
        );
        assert!(err["message"].is_string(), "{err}");
    }
    // An answer of a shape no question takes is the questionnaire's to refuse, per
    // question, not the parser's.
    let (status, err) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &json!({"answers": {"height": {"cm": 170}}}),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    assert!(err["errors"]["height"].is_string(), "{err}");
    // JSON nested past the parser's limit is a 400 with a code, and the service lives.
    let deep = format!(
        "{{\"answers\": {{\"height\": {}1{}}}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let r = app
        .http
        .put(app.url(&draft))
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.expect("JSON error");
    assert!(err["code"].is_string(), "{err}");
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
}

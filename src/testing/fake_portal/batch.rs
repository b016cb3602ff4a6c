//! `batch` of the fake portal (protocol §13).

use serde_json::{Value, json};

use super::RecordedCall;
use super::methods::dispatch;
use super::state::{ApiError, AuthKind, State, Success, php_array, time_block};
use crate::bitrix24::form;

/// §13: at most 50 commands.
const MAX_COMMANDS: usize = 50;

/// Runs the commands in order. `commands` are (name, "method?query") pairs in the
/// order they arrived.
pub(crate) fn run(
    state: &mut State,
    auth: &AuthKind,
    commands: &[(String, String)],
    halt: bool,
) -> Result<Success, ApiError> {
    if commands.len() > MAX_COMMANDS {
        return Err(ApiError::new(
            400,
            "ERROR_BATCH_LENGTH_EXCEEDED",
            "Max batch length exceeded",
        ));
    }
    let mut results: Vec<(String, Value)> = Vec::new();
    let mut errors: Vec<(String, Value)> = Vec::new();
    let mut totals: Vec<(String, Value)> = Vec::new();
    let mut nexts: Vec<(String, Value)> = Vec::new();
    let mut times: Vec<(String, Value)> = Vec::new();
    for (name, command) in commands {
        let (method, query) = command.split_once('?').unwrap_or((command.as_str(), ""));
        let method = method.trim_end_matches(".json").to_ascii_lowercase();
        // §13: `$result[<name>][<field>]` refers to earlier results.
        let pairs: Vec<(String, String)> = form::decode_pairs(query.as_bytes())
            .into_iter()
            .map(|(k, v)| (k, substitute(&v, &results)))
            .collect();
        let params = crate::testing::form_tree::pairs_to_tree(&pairs).to_json();
        let outcome = dispatch(state, auth, &method, &params, true);
        state.calls.push(RecordedCall::new(
            &method,
            params,
            auth.clone(),
            outcome.as_ref().map_or_else(|e| e.status, |_| 200),
            outcome.as_ref().err().map(|e| e.code.clone()),
            true,
        ));
        match outcome {
            Ok(success) => {
                results.push((name.clone(), success.result));
                if let Some(total) = success.total {
                    totals.push((name.clone(), json!(total)));
                }
                if let Some(next) = success.next {
                    nexts.push((name.clone(), json!(next)));
                }
                times.push((name.clone(), time_block(None)));
            }
            Err(err) => {
                errors.push((name.clone(), err.body()));
                if halt {
                    break;
                }
            }
        }
    }
    Ok(Success::of(json!({
        "result": php_array(results),
        "result_error": php_array(errors),
        "result_total": php_array(totals),
        "result_next": php_array(nexts),
        "result_time": php_array(times),
    })))
}

/// Replaces every `$result[name][a][b]…` in a value with the referenced scalar.
/// Unresolvable references stay as written.
fn substitute(value: &str, results: &[(String, Value)]) -> String {
    const MARK: &str = "$result[";
    let mut out = String::new();
    let mut rest = value;
    while let Some(pos) = rest.find(MARK) {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..]; // "result[name]..."
        let mut segments = Vec::new();
        let mut cursor = &after["result".len()..];
        while let Some(inner) = cursor.strip_prefix('[') {
            let Some(close) = inner.find(']') else { break };
            segments.push(&inner[..close]);
            cursor = &inner[close + 1..];
        }
        let resolved = segments.split_first().and_then(|(name, path)| {
            let mut node = results.iter().find(|(n, _)| n == name).map(|(_, v)| v)?;
            for seg in path {
                node = match node {
                    Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
                    Value::Object(map) => map.get(*seg)?,
                    _ => return None,
                };
            }
            match node {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(if *b { "1".into() } else { String::new() }),
                Value::Null => Some(String::new()),
                _ => None,
            }
        });
        let consumed = rest.len() - cursor.len();
        match resolved {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[pos..consumed]),
        }
        rest = cursor;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_references() {
        let results = vec![
            ("deal".to_owned(), json!({"CONTACT_ID": "1093"})),
            ("list".to_owned(), json!([{"ID": "7"}])),
        ];
        assert_eq!(substitute("$result[deal][CONTACT_ID]", &results), "1093");
        assert_eq!(substitute("x-$result[list][0][ID]-y", &results), "x-7-y");
        assert_eq!(
            substitute("$result[nope][ID]", &results),
            "$result[nope][ID]"
        );
        assert_eq!(substitute("plain", &results), "plain");
    }
}

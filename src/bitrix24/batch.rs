//! `batch` encoding and result parsing (protocol §13, docs
//! `settings/how-to-call-rest-api/batch.md`).

use serde_json::Value;

use super::error::B24Error;
use super::form::{self, FormPairs};
use super::types::{BatchCommand, BatchOutcome};

/// Commands per `batch` request; more fail with `ERROR_BATCH_LENGTH_EXCEEDED`.
pub const MAX_COMMANDS: usize = 50;

/// True when a command uploads files: the batch page lists file transfer among the
/// `ERROR_BATCH_METHOD_NOT_ALLOWED` cases (§12.4), so such calls go alone.
pub(crate) fn carries_files(command: &BatchCommand) -> bool {
    command.params.pointer("/fields/FILES").is_some()
}

/// Form pairs of one batch request: `halt=0|1` and `cmd[<name>]=<method>?<query>`.
/// The query is form-encoded here and the whole value once more by the body
/// encoding (docs' data-encoding page, "Double Encoding for Batch Requests");
/// `$result[...]` references travel as ordinary values and are resolved by the portal.
pub(crate) fn request_pairs(commands: &[&BatchCommand], halt: bool) -> FormPairs {
    let mut pairs = Vec::with_capacity(commands.len() + 1);
    pairs.push(("halt".to_owned(), if halt { "1" } else { "0" }.to_owned()));
    for command in commands {
        let query = form::encode(&form::flatten(&command.params));
        let value = if query.is_empty() {
            command.method.clone()
        } else {
            format!("{}?{}", command.method, query)
        };
        pairs.push((format!("cmd[{}]", command.name), value));
    }
    pairs
}

/// Takes a command's entry out of one of the result maps. PHP serialises an empty
/// map as `[]` and a map with keys `0..n` as a list (§13), so lists are indexed by
/// name. Taken rather than cloned: a command's result may be a whole CRM item, and
/// copying every one of a batch's doubled its cost of reading the answer (issue 19).
fn take_entry(map: Option<&mut Value>, name: &str) -> Option<Value> {
    match map? {
        Value::Object(m) => m.remove(name),
        Value::Array(items) => name
            .parse::<usize>()
            .ok()
            .and_then(|i| items.get_mut(i))
            .map(Value::take),
        _ => None,
    }
}

/// Splits the outer `result` of a batch into per-command outcomes, in command order.
pub(crate) fn outcomes(commands: &[&BatchCommand], mut result: Value) -> Vec<BatchOutcome> {
    let mut results = result.get_mut("result").map(Value::take);
    let mut errors = result.get_mut("result_error").map(Value::take);
    commands
        .iter()
        .map(|command| {
            let outcome = if let Some(err) = take_entry(errors.as_mut(), &command.name) {
                let code = err.get("error").and_then(Value::as_str).unwrap_or_default();
                let description = err
                    .get("error_description")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                Err(B24Error::from_body(0, code, description, &command.method))
            } else if let Some(value) = take_entry(results.as_mut(), &command.name) {
                Ok(value)
            } else {
                Err(B24Error::NotExecuted)
            };
            BatchOutcome {
                name: command.name.clone(),
                result: outcome,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_are_double_encoded_and_ordered() {
        let a = BatchCommand::new("deal", "crm.deal.get", json!({"id": 4217}));
        let b = BatchCommand::new(
            "contact",
            "crm.contact.get",
            json!({"id": "$result[deal][CONTACT_ID]"}),
        );
        let c = BatchCommand::new("t", "crm.deal.update", json!({"fields": {"TITLE": "A&B"}}));
        let pairs = request_pairs(&[&a, &b, &c], false);
        assert_eq!(pairs[0], ("halt".into(), "0".into()));
        assert_eq!(
            pairs[1],
            ("cmd[deal]".into(), "crm.deal.get?id=4217".into())
        );
        assert_eq!(
            pairs[2].1,
            "crm.contact.get?id=%24result%5Bdeal%5D%5BCONTACT_ID%5D"
        );
        let body = form::encode(&pairs);
        assert!(body.contains("A%2526B"), "{body}");
        let inner = &form::decode_pairs(body.as_bytes())[3].1;
        let (_, query) = inner.split_once('?').expect("query");
        let decoded: serde_json::Value = form::decode(query.as_bytes()).expect("decodes");
        assert_eq!(decoded["fields"]["TITLE"], "A&B");
    }

    #[test]
    fn parses_results_errors_and_php_lists() {
        let a = BatchCommand::new("deal", "crm.deal.get", json!({}));
        let b = BatchCommand::new("fields", "crm.deal.userfield.list", json!({}));
        let c = BatchCommand::new("late", "profile", json!({}));
        let result = json!({
            "result": {"deal": {"ID": "4217"}},
            "result_error": {"fields": {"error": "insufficient_scope", "error_description": ""}},
            "result_total": [], "result_next": [], "result_time": []
        });
        let out = outcomes(&[&a, &b, &c], result);
        assert_eq!(out[0].result.as_ref().ok(), Some(&json!({"ID": "4217"})));
        assert!(matches!(out[1].result, Err(B24Error::InsufficientScope)));
        assert!(matches!(out[2].result, Err(B24Error::NotExecuted)));

        let n0 = BatchCommand::new("0", "profile", json!({}));
        let n1 = BatchCommand::new("1", "profile", json!({}));
        let listed = json!({"result": [{"ID": "1"}, {"ID": "2"}], "result_error": []});
        let out = outcomes(&[&n0, &n1], listed);
        assert_eq!(out[0].result.as_ref().ok(), Some(&json!({"ID": "1"})));
        assert_eq!(out[1].result.as_ref().ok(), Some(&json!({"ID": "2"})));
    }
}

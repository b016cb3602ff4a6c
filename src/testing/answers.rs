//! The patient's side of a questionnaire over HTTP, as the page's script does it: shared
//! by the integration tests and the benches that drive a running service.

use serde_json::Value;

/// Submits a survey through the patient API at `base` (the service's address): reads
/// the questionnaire, then posts what `answers` makes of it. Returns the submit's
/// status and body; a transport failure is an `Err` with its description.
pub async fn submit_through_api(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    answers: impl Fn(&Value) -> Value,
) -> Result<(reqwest::StatusCode, String), String> {
    let survey: Value = http
        .get(format!("{base}/api/v1/surveys/{token}"))
        .send()
        .await
        .map_err(|e| format!("questionnaire: {e}"))?
        .json()
        .await
        .map_err(|e| format!("questionnaire JSON: {e}"))?;
    let r = http
        .post(format!("{base}/api/v1/surveys/{token}/submit"))
        .json(&serde_json::json!({"answers": answers(&survey)}))
        .send()
        .await
        .map_err(|e| format!("submit: {e}"))?;
    let status = r.status();
    Ok((status, r.text().await.unwrap_or_default()))
}

/// A full, valid set of answers for the built-in questionnaire, built from its JSON
/// the way a client would.
pub fn full_answers(survey: &Value) -> Value {
    let mut answers = serde_json::Map::new();
    let questions = survey["questions"].as_array().cloned().unwrap_or_default();
    for q in &questions {
        let id = q["id"].as_str().unwrap_or_default().to_owned();
        let first_option = q["options"][0]["value"].clone();
        let value = match q["type"].as_str().unwrap_or_default() {
            "yes_no" => Value::from("yes"),
            "text" | "textarea" => Value::from("Головная боль, пенициллин — крапивница"),
            "single" => {
                // Make the conditional questions about pregnancy apply.
                let female = q["options"]
                    .as_array()
                    .and_then(|o| o.iter().find(|o| o["value"] == "female"))
                    .map(|o| o["value"].clone());
                female.unwrap_or(first_option)
            }
            "multi" => {
                let non_exclusive = q["options"]
                    .as_array()
                    .and_then(|o| o.last())
                    .map(|o| o["value"].clone())
                    .unwrap_or(first_option);
                Value::from(vec![non_exclusive])
            }
            "number" => {
                let min = q["min"].as_f64().unwrap_or(0.0);
                let max = q["max"].as_f64().unwrap_or(min + 100.0);
                Value::from(((min + max) / 2.0).round())
            }
            "date" => Value::from("1984-03-22"),
            "scale" => Value::from(3),
            "consent" => Value::from(true),
            _ => continue,
        };
        answers.insert(id, value);
    }
    Value::Object(answers)
}

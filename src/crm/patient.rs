//! The patient's name: «Фамилия Имя Отчество» from the CRM, never "Unknown".

use serde_json::Value;

/// A name a robot or webhook passed in, if it is a real one: not empty, not the
/// seed guide's "Unknown", not an unrendered template (`{{CONTACT_NAME}}`,
/// `{=Document:…}`) left by a misconfigured robot. A name can come from anyone who
/// knows a webhook URL; names have no square brackets, so they are made full-width
/// (`［` `］`) here and no BB code tag can ride on a name into Bitrix24 (see
/// `completion::neutralise`).
pub fn usable_name(raw: Option<&str>) -> Option<String> {
    let name = raw?
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('[', "［")
        .replace(']', "］");
    let lower = name.to_lowercase();
    let bad = name.is_empty()
        || name.contains("{{")
        || name.contains("{=")
        || name.contains('}')
        || matches!(
            lower.as_str(),
            "unknown" | "null" | "undefined" | "none" | "-"
        );
    (!bad).then(|| name.chars().take(200).collect())
}

/// `LAST_NAME NAME SECOND_NAME`, skipping empty parts (protocol §12.1).
pub fn full_name(record: &Value) -> Option<String> {
    let part = |k: &str| {
        record
            .get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let joined = [part("LAST_NAME"), part("NAME"), part("SECOND_NAME")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    usable_name(Some(&joined))
}

/// The best name from what the portal returned: the contact (deal) or the lead's own
/// name fields, else the deal or lead title, else a neutral placeholder.
pub fn best_name(person: Option<&Value>, entity: Option<&Value>) -> String {
    person
        .and_then(full_name)
        .or_else(|| entity.and_then(full_name))
        .or_else(|| {
            entity
                .and_then(|e| e.get("TITLE"))
                .and_then(Value::as_str)
                .and_then(|t| usable_name(Some(t)))
        })
        .unwrap_or_else(|| PLACEHOLDER.to_owned())
}

/// Shown until the portal tells us the name (it is looked up right after the link is made).
pub const PLACEHOLDER: &str = "Пациент";

/// Contact id of a deal, if it has one (`"0"`/`null` mean none).
pub fn contact_id(deal: &Value) -> Option<i64> {
    let id = match deal.get("CONTACT_ID")? {
        Value::String(s) => s.parse().ok()?,
        Value::Number(n) => n.as_i64()?,
        _ => return None,
    };
    (id > 0).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_and_unknown_are_not_names() {
        assert_eq!(
            usable_name(Some("{{CONTACT_NAME}} {{CONTACT_LAST_NAME}}")),
            None
        );
        assert_eq!(usable_name(Some("{=Document:CONTACT_ID.NAME}")), None);
        assert_eq!(usable_name(Some("Unknown")), None);
        assert_eq!(usable_name(Some("  ")), None);
        assert_eq!(
            usable_name(Some(" Смирнова   Анна ")).as_deref(),
            Some("Смирнова Анна")
        );
    }

    #[test]
    fn names_from_records() {
        let contact = json!({"NAME": "Анна", "SECOND_NAME": "Петровна", "LAST_NAME": "Смирнова"});
        let deal = json!({"TITLE": "Приём терапевта 14.01", "CONTACT_ID": "1093"});
        assert_eq!(
            best_name(Some(&contact), Some(&deal)),
            "Смирнова Анна Петровна"
        );
        assert_eq!(best_name(None, Some(&deal)), "Приём терапевта 14.01");
        assert_eq!(best_name(None, None), PLACEHOLDER);
        assert_eq!(contact_id(&deal), Some(1093));
        assert_eq!(contact_id(&json!({"CONTACT_ID": "0"})), None);
        assert_eq!(contact_id(&json!({"CONTACT_ID": null})), None);
    }
}

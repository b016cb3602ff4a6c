//! PHP-style form encoding, both ways.
//!
//! Bitrix24 speaks `application/x-www-form-urlencoded` with PHP bracket keys
//! (`fields[UF_CRM_X]=…`, `document_id[0]=crm`, `data[FIELDS][ID]=4217`), brackets
//! percent-encoded on the wire and UTF-8 values (Cyrillic) percent-encoded byte-wise
//! (protocol §"Conventions", `settings/how-to-call-rest-api/data-encoding.md`).
//! `serde_urlencoded` (poem's `Form`) cannot nest such keys, so every decoder of
//! Bitrix24 payloads goes through this module.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// One `key=value` pair of a form body, decoded.
pub type FormPairs = Vec<(String, String)>;

/// A form body that did not fit the expected shape.
#[derive(Debug, thiserror::Error)]
#[error("malformed form body: {0}")]
pub struct FormError(String);

/// Flattens JSON params into bracket-key pairs the way PHP's `http_build_query` does
/// (the docs' data-encoding page names it as the reference encoder): nested objects
/// become `a[b][c]`, lists `a[0]`, `a[1]`, `true`/`false` become `1`/`0`, and `null`
/// and empty containers are left out.
pub fn flatten(params: &Value) -> FormPairs {
    let mut out = Vec::new();
    match params {
        Value::Object(map) => {
            for (key, value) in map {
                flatten_into(key, value, &mut out);
            }
        }
        Value::Array(items) => {
            for (index, value) in items.iter().enumerate() {
                flatten_into(&index.to_string(), value, &mut out);
            }
        }
        _ => {}
    }
    out
}

fn flatten_into(prefix: &str, value: &Value, out: &mut FormPairs) {
    match value {
        Value::Null => {}
        Value::Bool(b) => out.push((prefix.to_owned(), if *b { "1" } else { "0" }.to_owned())),
        Value::Number(n) => out.push((prefix.to_owned(), n.to_string())),
        Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                flatten_into(&format!("{prefix}[{index}]"), item, out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                flatten_into(&format!("{prefix}[{key}]"), item, out);
            }
        }
    }
}

/// Encodes pairs as a form body: brackets, `$`, `&`, `|` and every non-ASCII byte are
/// percent-encoded, a space becomes `+`.
pub fn encode(pairs: &[(String, String)]) -> String {
    let mut serializer = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        serializer.append_pair(key, value);
    }
    serializer.finish()
}

/// Decodes a form body (or query string) into pairs, in wire order. `+` is a space,
/// `%XX` in either case is a byte; invalid UTF-8 is replaced rather than rejected.
pub fn decode_pairs(body: &[u8]) -> FormPairs {
    url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Splits a PHP key into its path: `a[b][c]` → `["a", "b", "c"]`, `a[]` → `["a", ""]`.
/// A key with unbalanced brackets is kept whole, as PHP does.
pub fn key_path(key: &str) -> Vec<String> {
    let Some(open) = key.find('[') else {
        return vec![key.to_owned()];
    };
    let mut path = vec![key[..open].to_owned()];
    let mut rest = &key[open..];
    while let Some(stripped) = rest.strip_prefix('[') {
        let Some(close) = stripped.find(']') else {
            return vec![key.to_owned()];
        };
        path.push(stripped[..close].to_owned());
        rest = &stripped[close + 1..];
    }
    if !rest.is_empty() {
        return vec![key.to_owned()];
    }
    path
}

/// An ordered tree built from bracket keys: PHP arrays keep insertion order, which
/// matters for `batch` (commands run in the order given).
#[derive(Debug, Clone, PartialEq)]
pub enum FormNode {
    Leaf(String),
    Branch(Vec<(String, FormNode)>),
}

impl FormNode {
    /// Child of a branch by key; `None` for leaves and missing keys.
    pub fn get(&self, key: &str) -> Option<&FormNode> {
        match self {
            FormNode::Branch(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            FormNode::Leaf(_) => None,
        }
    }

    /// Converts to JSON; a branch whose keys are exactly `0..n` becomes a list, like a
    /// PHP list serialised by `json_encode`.
    pub fn to_json(&self) -> Value {
        match self {
            FormNode::Leaf(s) => Value::String(s.clone()),
            FormNode::Branch(items) => {
                let is_list = !items.is_empty()
                    && items
                        .iter()
                        .enumerate()
                        .all(|(i, (k, _))| k.parse::<usize>().ok() == Some(i));
                if is_list {
                    Value::Array(items.iter().map(|(_, v)| v.to_json()).collect())
                } else {
                    let mut map = Map::new();
                    for (k, v) in items {
                        map.insert(k.clone(), v.to_json());
                    }
                    Value::Object(map)
                }
            }
        }
    }

    fn insert(&mut self, path: &[String], value: String) {
        let FormNode::Branch(items) = self else {
            // PHP overwrites a scalar with an array when a deeper key follows.
            *self = FormNode::Branch(Vec::new());
            return self.insert(path, value);
        };
        let Some((head, tail)) = path.split_first() else {
            return;
        };
        let key = if head.is_empty() {
            // `a[]=` appends with the next integer index.
            let next = items
                .iter()
                .filter_map(|(k, _)| k.parse::<usize>().ok())
                .max()
                .map_or(0, |m| m + 1);
            next.to_string()
        } else {
            head.clone()
        };
        let position = items.iter().position(|(k, _)| *k == key);
        if tail.is_empty() {
            match position {
                Some(i) => items[i].1 = FormNode::Leaf(value),
                None => items.push((key, FormNode::Leaf(value))),
            }
        } else {
            let index = match position {
                Some(i) => i,
                None => {
                    items.push((key, FormNode::Branch(Vec::new())));
                    items.len() - 1
                }
            };
            items[index].1.insert(tail, value);
        }
    }
}

/// Builds the ordered tree of a decoded form.
pub fn pairs_to_tree(pairs: &[(String, String)]) -> FormNode {
    let mut root = FormNode::Branch(Vec::new());
    for (key, value) in pairs {
        root.insert(&key_path(key), value.clone());
    }
    root
}

/// Decodes a form body into JSON (nested objects, lists for `0..n` keys, strings).
pub fn decode_json(body: &[u8]) -> Value {
    pairs_to_tree(&decode_pairs(body)).to_json()
}

/// Decodes a Bitrix24 form body into a typed value through `serde_qs` with form
/// encoding on, so percent-encoded brackets (`auth%5Bmember_id%5D`) nest.
/// Every scalar arrives as a string.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FormError> {
    serde_qs::Config::new()
        .max_depth(6)
        .use_form_encoding(true)
        .deserialize_bytes(body)
        .map_err(|e| FormError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flattens_like_http_build_query() {
        let pairs = flatten(&json!({
            "fields": {"UF_CRM_X": "Ссылка", "FILES": [["report.pdf", "QUJD"]], "OPENED": true},
            "id": 4217, "skip": null, "flag": false
        }));
        assert!(pairs.contains(&("fields[UF_CRM_X]".into(), "Ссылка".into())));
        assert!(pairs.contains(&("fields[FILES][0][0]".into(), "report.pdf".into())));
        assert!(pairs.contains(&("fields[FILES][0][1]".into(), "QUJD".into())));
        assert!(pairs.contains(&("fields[OPENED]".into(), "1".into())));
        assert!(pairs.contains(&("flag".into(), "0".into())));
        assert!(pairs.contains(&("id".into(), "4217".into())));
        assert!(!pairs.iter().any(|(k, _)| k == "skip"));
    }

    #[test]
    fn cyrillic_and_brackets_round_trip() {
        let pairs = vec![
            (
                "fields[TITLE]".to_owned(),
                "Приём & «опрос» + 100%".to_owned(),
            ),
            ("cmd[a]".to_owned(), "crm.deal.get?id=1&x=%26".to_owned()),
        ];
        let body = encode(&pairs);
        assert!(body.contains("fields%5BTITLE%5D="), "{body}");
        assert!(!body.contains('['));
        assert_eq!(decode_pairs(body.as_bytes()), pairs);
        let json = decode_json(body.as_bytes());
        assert_eq!(json["fields"]["TITLE"], "Приём & «опрос» + 100%");
    }

    #[test]
    fn key_paths_and_lists() {
        assert_eq!(key_path("a[b][c]"), vec!["a", "b", "c"]);
        assert_eq!(key_path("plain"), vec!["plain"]);
        assert_eq!(key_path("a[b"), vec!["a[b"]);
        let json = decode_json(b"d%5B%5D=crm&d%5B%5D=CCrmDocumentDeal&o%5B1%5D=x");
        assert_eq!(json["d"], json!(["crm", "CCrmDocumentDeal"]));
        assert_eq!(json["o"], json!({"1": "x"}));
    }

    #[test]
    fn typed_decode_nests_percent_encoded_brackets() {
        #[derive(serde::Deserialize)]
        struct Auth {
            member_id: String,
        }
        #[derive(serde::Deserialize)]
        struct Event {
            event: String,
            auth: Auth,
        }
        let e: Event = decode(b"event=ONAPPINSTALL&auth%5Bmember_id%5D=4f2a").expect("decodes");
        assert_eq!(e.event, "ONAPPINSTALL");
        assert_eq!(e.auth.member_id, "4f2a");
    }
}

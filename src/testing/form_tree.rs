//! An ordered tree of a form body, as PHP builds it from bracket keys, for reading
//! back what the service itself encodes (the fake portal decoding our calls). PHP
//! arrays keep insertion order, which matters for `batch` (commands run in the order
//! given). Inbound requests never come here: they go through `bitrix24::form::decode`.

use serde_json::Value;

use crate::bitrix24::form::decode_pairs;

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
                    let mut map = serde_json::Map::new();
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_paths_and_lists() {
        assert_eq!(key_path("a[b][c]"), vec!["a", "b", "c"]);
        assert_eq!(key_path("plain"), vec!["plain"]);
        assert_eq!(key_path("a[b"), vec!["a[b"]);
        let json = decode_json(b"d%5B%5D=crm&d%5B%5D=CCrmDocumentDeal&o%5B1%5D=x");
        assert_eq!(json["d"], json!(["crm", "CCrmDocumentDeal"]));
        assert_eq!(json["o"], json!({"1": "x"}));
    }
}

//! The direction of imports ARCHITECTURE.md promises, checked on the source: a module
//! may use the modules of a lower layer, never one of its own layer or above it.
//! Each offending `crate::…` reference is reported with its file and line.

use std::path::{Path, PathBuf};

/// Highest first; ARCHITECTURE.md, «Direction of imports».
const LAYERS: &[&[&str]] = &[
    &["local_app", "legacy", "web"],
    &["invitations", "views"],
    &["outbox"],
    &["completion"],
    &["questionnaires"],
    &["survey", "report", "crm", "assets"],
    &["db"],
    &["bitrix24"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level modules a `crate::` path names, including every branch of a grouped
/// import (`crate::{db::x, outbox::{self, Job}}`).
fn targets(after: &str) -> Vec<String> {
    let after = after.trim_start();
    if let Some(rest) = after.strip_prefix('{') {
        let mut depth = 1;
        let mut part = String::new();
        let mut parts = Vec::new();
        for c in rest.chars() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                ',' if depth == 1 => {
                    parts.push(std::mem::take(&mut part));
                    continue;
                }
                _ => {}
            }
            part.push(c);
        }
        parts.push(part);
        return parts
            .iter()
            .map(|p| first_ident(p.trim()))
            .filter(|p| !p.is_empty())
            .collect();
    }
    vec![first_ident(after)]
}

fn first_ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::` reference of `module`'s files that goes to its own layer or up.
fn violations(src: &Path, module: &str) -> Vec<String> {
    let Some(own) = layer_of(module) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    rust_files(&src.join(module), &mut files);
    let single = src.join(format!("{module}.rs"));
    if single.is_file() {
        files.push(single);
    }
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (at, _) in text.match_indices("crate::") {
            for target in targets(&text[at + "crate::".len()..]) {
                let Some(layer) = layer_of(&target) else {
                    continue;
                };
                let upward = layer < own || (layer == own && target != module);
                if upward {
                    let line = text[..at].lines().count().max(1);
                    let source = text.lines().nth(line - 1).unwrap_or("").trim();
                    found.push(format!(
                        "{}:{line}: {module} → {target}: {source}",
                        file.strip_prefix(src).unwrap_or(&file).display()
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn no_module_imports_its_own_layer_or_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found: Vec<String> = LAYERS
        .iter()
        .flat_map(|l| l.iter())
        .flat_map(|m| violations(&src, m))
        .collect();
    assert!(
        found.is_empty(),
        "imports against the direction:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_grouped_and_nested_imports() {
    assert_eq!(
        targets("{db::entities::{a, b}, outbox::{self, Job}, survey}; x"),
        ["db", "outbox", "survey"]
    );
    assert_eq!(
        targets("invitations::links::survey_url(x)"),
        ["invitations"]
    );
    // A module of the table that imports upward is found: the check can fail.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("db")).expect("mkdir");
    std::fs::write(
        dir.path().join("db/x.rs"),
        "use crate::{bitrix24::Target, outbox::Job};\n",
    )
    .expect("write");
    let found = violations(dir.path(), "db");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("db/x.rs:1: db → outbox"), "{found:?}");
}

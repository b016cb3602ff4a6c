//! The template layer: every HTML page the service serves is an askama template in
//! `templates/`, rendered from a plain view model defined here. Templates escape every
//! value by default and are checked at compile time, so no code outside this layer
//! writes markup or escapes text; a view model is built by its handler's module from
//! data already loaded, and a template never reaches the database.
//!
//! One base layout (`base.html`, with a `head` block) carries three page families:
//! the patient's and operator's pages (`patient_base.html`), the pages shown in a
//! Bitrix24 frame (`frame_base.html`) and the demo's card (`demo_base.html`).

pub mod frame;
pub mod home;
pub mod patient;

#[cfg(feature = "demo")]
pub mod demo;

use askama::Template;

/// What a page shows if a template fails to render (only a failing `Display` can
/// make it fail; none of ours does).
const FALLBACK: &str = "<!doctype html>\n<html lang=\"ru\"><head><meta charset=\"utf-8\">\
<title>Ошибка</title></head><body><p>Не удалось показать страницу. Обновите её.</p></body></html>";

/// The page's HTML.
pub fn render<T: Template>(page: &T) -> String {
    page.render().unwrap_or_else(|e| {
        tracing::error!(error = %e, "Не удалось отрисовать страницу");
        FALLBACK.to_owned()
    })
}

/// One registration step of an install: shown on the install page and the admin page
/// by the one `install_steps.html` partial.
#[derive(Debug, Clone)]
pub struct StepRow {
    pub ok: bool,
    pub what: String,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every template, as (file name, source).
    fn templates() -> Vec<(String, String)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
            .expect("templates/")
            .map(|entry| {
                let path = entry.expect("entry").path();
                let name = path.display().to_string();
                (name, std::fs::read_to_string(&path).expect("template"))
            })
            .collect();
        out.sort();
        out
    }

    /// The engine's escaping is the only escaping: a template that switched it off
    /// for a value, or wrote a script body (where HTML escaping does not protect, and
    /// which the pages' CSP refuses anyway), would bring back what this layer removed.
    #[test]
    fn templates_never_switch_escaping_off_nor_write_inline_code() {
        let all = templates();
        assert!(all.len() >= 10, "{all:?}");
        for (name, source) in &all {
            let squeezed: String = source.split_whitespace().collect();
            for forbidden in ["|safe", "|escape(\"none\")", "|e(\"none\")", "style="] {
                assert!(!squeezed.contains(forbidden), "{forbidden} in {name}");
            }
            for (i, _) in source.match_indices("<script") {
                let tag = &source[i..i + source[i..].find('>').expect("tag end")];
                assert!(tag.contains(" src="), "inline script in {name}: {tag}");
                assert!(
                    source[i..].starts_with(&format!("{tag}></script>")),
                    "{name}: {tag}"
                );
            }
            let lower = source.to_lowercase();
            for word in lower.split(|c: char| c.is_whitespace() || c == '<') {
                assert!(
                    !(word.starts_with("on") && word.contains('=')),
                    "inline handler in {name}: {word}"
                );
            }
        }
    }
}

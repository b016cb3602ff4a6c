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

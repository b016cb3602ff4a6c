//! The operator's page at `/`. Built by `web::home` from the configuration and one
//! database check.

use askama::Template;

use super::patient::Chrome;

#[derive(Template)]
#[template(path = "home.html")]
pub struct HomePage {
    pub chrome: Chrome,
    pub states: Vec<StateRow>,
    /// `PUBLIC_URL` points at this computer: Bitrix24 cannot reach it.
    pub loopback: bool,
    pub public_url: String,
    pub app_url: String,
    pub install_url: String,
    pub robot_url: String,
    pub outgoing_url: String,
}

/// One line of the state list: what, and a word that says whether it is in order.
pub struct StateRow {
    pub what: String,
    pub ok: bool,
    pub word: &'static str,
}

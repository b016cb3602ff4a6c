//! The demo's pages: a deal card and an applications page that frame the service's
//! real pages, as the portal would.

use askama::Template;

use crate::assets;

/// The hidden form that plays the portal's iframe POST, and the frame it targets.
pub struct DemoFrame {
    /// The handler with its query.
    pub action: String,
    pub fields: Vec<(&'static str, String)>,
}

#[derive(Template)]
#[template(path = "demo_deal.html")]
pub struct DealCard {
    pub title: String,
    pub css: String,
    pub js: String,
    pub patient: String,
    pub deal_id: u64,
    pub frame: DemoFrame,
}

#[derive(Template)]
#[template(path = "demo_app.html")]
pub struct AppCard {
    pub title: String,
    pub css: String,
    pub js: String,
    pub frame: DemoFrame,
}

impl DealCard {
    pub fn new(title: String, patient: String, deal_id: u64, frame: DemoFrame) -> DealCard {
        DealCard {
            title,
            css: assets::CARD_CSS.url(),
            js: assets::CARD_JS.url(),
            patient,
            deal_id,
            frame,
        }
    }
}

impl AppCard {
    pub fn new(frame: DemoFrame) -> AppCard {
        AppCard {
            title: "Приложения — Анкета пациента".to_owned(),
            css: assets::CARD_CSS.url(),
            js: assets::CARD_JS.url(),
            frame,
        }
    }
}

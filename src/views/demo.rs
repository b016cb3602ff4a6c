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
    /// The pipeline's stages: (name, `is-done` / `is-current` / "").
    pub stages: Vec<(&'static str, &'static str)>,
    /// What the clinic's automation put on the card (the red-flag activity, the
    /// responsible's notification).
    pub automation: DemoAutomation,
}

/// The red-flag activity and the notification, as the portal shows them.
#[derive(Default)]
pub struct DemoAutomation {
    /// The activity's header and tag, e.g. «Анкета: 2 отметки для врача».
    pub activity: Option<DemoActivity>,
    /// The responsible's notification, BB code as sent.
    pub notification: Option<String>,
}

pub struct DemoActivity {
    pub header: String,
    pub tag: String,
    pub titles: Vec<String>,
    /// «Просмотрено» pressed: the activity is closed and the kanban badge gone.
    pub completed: bool,
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
    pub fn new(
        title: String,
        patient: String,
        deal_id: u64,
        frame: DemoFrame,
        stages: Vec<(&'static str, &'static str)>,
        automation: DemoAutomation,
    ) -> DealCard {
        DealCard {
            title,
            css: assets::CARD_CSS.url(),
            js: assets::CARD_JS.url(),
            patient,
            deal_id,
            frame,
            stages,
            automation,
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

//! Pages shown inside Bitrix24 frames: errors, the install result, the deal tab and
//! the application (admin) page. They look like the portal and load the BX24 library,
//! which the portal serves. `local_app` loads the data and builds these view models.

use askama::Template;

use super::StepRow;
use crate::assets;

/// The head and `body` attributes of a frame page.
pub struct Frame {
    pub title: String,
    pub css: String,
    pub js: String,
    /// The tab's and admin page's own files, after the frame's.
    pub extra_css: Vec<String>,
    pub extra_js: Vec<String>,
    pub body_class: Option<&'static str>,
    /// Asks the frame script for `BX24.installFinish()`.
    pub install_finish: bool,
}

impl Frame {
    pub fn new(title: impl Into<String>) -> Frame {
        Frame {
            title: title.into(),
            css: assets::FRAME_CSS.url(),
            js: assets::FRAME_JS.url(),
            extra_css: Vec::new(),
            extra_js: Vec::new(),
            body_class: None,
            install_finish: false,
        }
    }
}

/// A fixed message: what went wrong, nothing else.
#[derive(Template)]
#[template(path = "frame_error.html")]
pub struct FrameError {
    pub frame: Frame,
    pub message: String,
}

/// What was registered, or what failed and why, and the handler URLs to check.
#[derive(Template)]
#[template(path = "install_result.html")]
pub struct InstallResult {
    /// Its title is the page's heading.
    pub frame: Frame,
    pub domain: String,
    pub steps: Vec<StepRow>,
    pub note: &'static str,
    pub urls: Vec<(&'static str, String)>,
}

/// The deal tab.
#[derive(Template)]
#[template(path = "tab.html")]
pub struct TabPage {
    pub frame: Frame,
    /// The signed session its forms carry.
    pub session: String,
    /// «Сделка», «Лид» or «Элемент смарт-процесса».
    pub what: &'static str,
    /// The document has the link field (deals and leads; a smart-process item has none).
    pub link_field: bool,
    pub entity_id: i64,
    pub patient: Option<String>,
    /// A link just created, shown for copying.
    pub new_link: Option<String>,
    /// The latest completed questionnaire; `None`: nothing completed yet.
    pub result: Option<TabResult>,
    pub invitations: Vec<InvitationRow>,
}

pub struct TabResult {
    pub title: String,
    pub when: String,
    /// Where the PDF forms post.
    pub pdf_action: String,
    /// (question, answer) worth the doctor's attention, shown first.
    pub flagged: Vec<(String, String)>,
    /// Scores: (title, «12 — умеренная», whether its band is a red flag).
    pub scores: Vec<(String, String, bool)>,
    pub sections: Vec<AnswerSection>,
}

pub struct AnswerSection {
    pub title: String,
    pub answers: Vec<AnswerRow>,
}

pub struct AnswerRow {
    pub question: String,
    pub answer: String,
    pub flagged: bool,
}

pub struct InvitationRow {
    pub created: String,
    /// The status code, for the badge's class.
    pub status: &'static str,
    pub label: &'static str,
    pub opened: String,
    pub completed: String,
    pub expires: String,
}

/// The application page.
#[derive(Template)]
#[template(path = "admin.html")]
pub struct AdminPage {
    pub frame: Frame,
    pub session: String,
    pub domain: String,
    pub notice: Option<String>,
    pub summary: &'static str,
    pub updated: String,
    pub steps: Vec<StepRow>,
    pub link_days: u32,
    pub reuse_active: bool,
    pub urls: Vec<(&'static str, String)>,
    /// `None`: nothing open in the portal's queue.
    pub queue: Option<QueueView>,
    /// Automation steps the portal refused lately (a missing right, a context).
    pub automation: Vec<StepRow>,
    /// The questionnaire editor's «Создать из шаблона» select: (code, title) of the
    /// built-ins and SURVEYS_DIR files. The portal's own questionnaires are listed by
    /// the editor's script from the editor's API.
    pub templates: Vec<(String, String)>,
}

pub struct QueueView {
    pub queued: u64,
    pub retrying: u64,
    pub dead: u64,
    pub next: Option<String>,
    pub last_error: Option<String>,
    /// Something waits: offer «Повторить сейчас».
    pub retry_now: bool,
    pub jobs: Vec<JobRow>,
}

pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub state: &'static str,
    pub attempts: i32,
    pub at: String,
    pub error: Option<String>,
    /// Dead: offer «Повторить».
    pub dead: bool,
}

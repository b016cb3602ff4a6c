//! The application page's view model: install status with «Переустановить», the
//! handler URLs, the questionnaires, the outbox and the portal's settings. [`page`]
//! reads the database, [`view`] shapes what was read; the template
//! (`views::frame::AdminPage`) only renders.

use chrono::{DateTime, Utc};
use sea_orm::DbErr;

use super::portal_settings::{self, PortalSettings};
use super::registration::Report;
use crate::assets;
use crate::completion::moscow;
use crate::db::entities::{outbox_job, portal};
use crate::outbox::jobs::QueueSummary;
use crate::state::AppState;
use crate::survey::Catalog;
use crate::views::frame::{AdminPage, Frame, JobRow, QueueView};
use crate::views::{self, StepRow};

/// How many open jobs the page lists.
const JOBS_SHOWN: u64 = 50;

/// What the page shows, as read from the database.
pub struct AdminData {
    pub settings: PortalSettings,
    pub jobs: Vec<outbox_job::Model>,
    pub queue: QueueSummary,
    /// Automation steps the portal refused lately: (what, why).
    pub refused: Vec<(String, String)>,
}

pub async fn admin_page(
    state: &AppState,
    portal: &portal::Model,
    session: &str,
    notice: Option<&str>,
) -> Result<String, DbErr> {
    let data = AdminData {
        settings: portal_settings::load(&state.db, portal.id, state.config.link_days).await?,
        jobs: crate::outbox::jobs::open_jobs(&state.db, Some(portal.id), JOBS_SHOWN).await?,
        queue: crate::outbox::jobs::summary(&state.db, Some(portal.id)).await?,
        refused: crate::outbox::automation::refused_lately(&state.db, portal.id).await?,
    };
    let urls = [
        ("Установка", "/b24/install"),
        ("Приложение", "/b24/app"),
        ("Робот «Отправить опрос»", "/b24/robot/send-survey"),
        ("Робот «Дождаться анкеты»", "/b24/robot/await-survey"),
        ("Вкладка сделки", "/b24/placement/deal-tab"),
        ("События", "/b24/events"),
    ]
    .into_iter()
    .map(|(what, path)| (what, state.config.public(path)))
    .collect();
    let page = view(portal, &data, &state.catalog(), urls, session, notice);
    Ok(views::render(&page))
}

/// The page's view model from what [`page`] read.
pub fn view(
    portal: &portal::Model,
    data: &AdminData,
    catalog: &Catalog,
    urls: Vec<(&'static str, String)>,
    session: &str,
    notice: Option<&str>,
) -> AdminPage {
    let (summary, steps) = install_status(portal);
    let mut frame = Frame::new("Анкета пациента — настройки");
    frame.extra_css.push(assets::TAB_CSS.url());
    frame.extra_css.push(assets::EDITOR_CSS.url());
    frame.extra_js.push(assets::EDITOR_JS.url());
    AdminPage {
        frame,
        session: session.to_owned(),
        domain: portal.domain.clone(),
        notice: notice.map(str::to_owned),
        summary,
        updated: moscow(portal.updated_at),
        steps,
        link_days: data.settings.link_days,
        reuse_active: data.settings.reuse_active,
        urls,
        queue: (!data.jobs.is_empty()).then(|| queue_view(&data.queue, &data.jobs)),
        automation: data
            .refused
            .iter()
            .map(|(what, detail)| StepRow {
                ok: false,
                what: what.clone(),
                detail: detail.clone(),
            })
            .collect(),
        templates: templates(catalog),
    }
}

/// The stored registration report: a one-line summary and its steps.
fn install_status(portal: &portal::Model) -> (&'static str, Vec<StepRow>) {
    let report = match Report::stored(portal) {
        Ok(report) => report.unwrap_or_default(),
        Err(e) => {
            tracing::error!(portal = %portal.domain, error = %e, "Сохранённый отчёт о регистрации не читается");
            return (
                "Отчёт о последней проверке не читается: нажмите «Переустановить».",
                Vec::new(),
            );
        }
    };
    let summary = if report.steps.is_empty() {
        "Проверка регистраций ещё не выполнялась."
    } else if report.all_critical_ok() {
        "Приложение установлено и работает."
    } else {
        "Установка не завершена: исправьте отмеченное и нажмите «Переустановить»."
    };
    let rows = report
        .steps
        .into_iter()
        .map(|step| StepRow {
            ok: step.ok,
            what: step.what,
            detail: step.detail,
        })
        .collect();
    (summary, rows)
}

fn job_state(job: &outbox_job::Model) -> &'static str {
    if job.dead_at.is_some() {
        "не удалось"
    } else if job.last_error.is_some() {
        "повторяется"
    } else if job.kind == crate::outbox::survey_wait::KIND {
        "робот ждёт анкету"
    } else {
        "ожидает"
    }
}

fn at_millis(millis: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(millis).map(moscow)
}

/// The portal's queue: counts, the next try, the last portal error, the open jobs.
fn queue_view(queue: &QueueSummary, jobs: &[outbox_job::Model]) -> QueueView {
    QueueView {
        queued: queue.queued,
        retrying: queue.retrying,
        dead: queue.dead,
        next: queue.next_at.and_then(at_millis),
        last_error: queue.last_error.clone(),
        retry_now: queue.queued + queue.retrying > 0,
        jobs: jobs
            .iter()
            .map(|job| JobRow {
                id: job.id,
                kind: job.kind.clone(),
                state: job_state(job),
                attempts: job.attempts,
                at: at_millis(job.run_at).unwrap_or_default(),
                error: job.last_error.clone(),
                dead: job.dead_at.is_some(),
            })
            .collect(),
    }
}

/// The templates a questionnaire can be created from (the editor's script reads
/// the same list from the API), the default one first.
fn templates(catalog: &Catalog) -> Vec<(String, String)> {
    let default = catalog.default_code();
    let mut list: Vec<(String, String)> = crate::questionnaires::templates(catalog)
        .into_iter()
        .map(|t| (t.code, t.title))
        .collect();
    list.sort_by_key(|(code, _)| code != default);
    list
}

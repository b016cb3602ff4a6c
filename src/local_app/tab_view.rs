//! The deal tab's view model: the document's invitations with their status, the
//! answers of the latest completed one (flagged first, hidden questions left out), its
//! PDF and the «Отправить новую ссылка» form. [`load`] reads the database, [`view`]
//! shapes what was read; the template (`views::frame::TabPage`) only renders.

use chrono::{DateTime, Utc};
use sea_orm::DbErr;

use crate::assets;
use crate::completion::{moscow, score_answer};
use crate::db::entities::invitation;
use crate::invitations::lifecycle::{self, FlowError};
use crate::invitations::{COMPLETED, EntityRef, EntityType, of_entity, status_label, status_of};
use crate::state::AppState;
use crate::survey::{Answers, Questionnaire, flagged, scores, sections_for_display};
use crate::views;
use crate::views::frame::{AnswerRow, AnswerSection, Frame, InvitationRow, TabPage, TabResult};

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("answers: {0:?}")]
    Flow(FlowError),
}

impl From<FlowError> for ViewError {
    fn from(e: FlowError) -> Self {
        ViewError::Flow(e)
    }
}

/// What the tab shows, as read from the database.
pub struct TabData {
    pub entity: EntityRef,
    /// Newest first.
    pub rows: Vec<invitation::Model>,
    /// The latest completed invitation with its questionnaire and answers.
    pub completed: Option<(invitation::Model, std::sync::Arc<Questionnaire>, Answers)>,
}

/// Reads the document's invitations and the answers of the latest completed one.
pub async fn load(
    state: &AppState,
    portal_id: i64,
    entity: EntityRef,
) -> Result<TabData, ViewError> {
    let rows = of_entity(&state.db, Some(portal_id), entity).await?;
    let completed = match rows.iter().find(|r| r.status == COMPLETED) {
        Some(inv) => {
            let q = lifecycle::questionnaire_of(state, inv).await?;
            let answers = lifecycle::answers_to_show(state, inv).await?;
            Some((inv.clone(), q, answers))
        }
        None => None,
    };
    Ok(TabData {
        entity,
        rows,
        completed,
    })
}

/// The whole tab page. `session` is the signed token its forms carry; `new_link` is
/// a link just created, shown for copying.
pub async fn tab_page(
    state: &AppState,
    portal_id: i64,
    entity: EntityRef,
    session: &str,
    new_link: Option<&str>,
) -> Result<String, ViewError> {
    let data = load(state, portal_id, entity).await?;
    Ok(views::render(&view(&data, session, new_link, Utc::now())))
}

/// The tab's view model from what [`load`] read.
pub fn view(data: &TabData, session: &str, new_link: Option<&str>, now: DateTime<Utc>) -> TabPage {
    let patient = data
        .rows
        .iter()
        .map(|r| r.patient_name.as_str())
        .find(|n| *n != crate::invitations::patient::PLACEHOLDER)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let mut frame = Frame::new("Анкета пациента");
    frame.extra_css.push(assets::TAB_CSS.url());
    frame.extra_js.push(assets::TAB_JS.url());
    frame.body_class = Some("tab");
    TabPage {
        frame,
        session: session.to_owned(),
        what: match data.entity.kind {
            EntityType::Deal => "Сделка",
            EntityType::Lead => "Лид",
        },
        entity_id: data.entity.id,
        patient,
        new_link: new_link.map(str::to_owned),
        result: data
            .completed
            .as_ref()
            .map(|(inv, q, answers)| result(inv, q, answers)),
        invitations: data
            .rows
            .iter()
            .map(|row| invitation_row(row, now))
            .collect(),
    }
}

fn result(inv: &invitation::Model, q: &Questionnaire, answers: &Answers) -> TabResult {
    let flags = flagged(q, answers);
    let flagged_titles: Vec<&str> = flags.iter().map(|f| f.question.as_str()).collect();
    TabResult {
        title: q.title.clone(),
        when: inv.completed_at.map(moscow).unwrap_or_default(),
        pdf_action: format!("/b24/tab/report/{}", inv.id),
        flagged: flags
            .iter()
            .map(|f| (f.label.clone(), f.answer.clone()))
            .collect(),
        scores: scores(q, answers)
            .iter()
            .map(|s| (s.title.clone(), score_answer(s), s.flag))
            .collect(),
        sections: sections_for_display(q, answers)
            .into_iter()
            .map(|(title, items)| AnswerSection {
                title,
                answers: items
                    .into_iter()
                    .map(|(question, answer)| AnswerRow {
                        flagged: flagged_titles.contains(&question.as_str()),
                        question,
                        answer,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn when(at: Option<DateTime<Utc>>) -> String {
    at.map(moscow).unwrap_or_else(|| "—".to_owned())
}

fn invitation_row(row: &invitation::Model, now: DateTime<Utc>) -> InvitationRow {
    let status = status_of(row, now);
    InvitationRow {
        created: moscow(row.created_at),
        status,
        label: status_label(status),
        opened: when(row.opened_at),
        completed: when(row.completed_at),
        expires: moscow(row.expires_at),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use scraper::{Html, Selector};
    use serde_json::json;

    use super::*;
    use crate::invitations::patient::PLACEHOLDER;
    use crate::invitations::{Channel, SENT, Status};
    use crate::survey::Catalog;

    fn row(id: &str, name: &str, status: Status, created: DateTime<Utc>) -> invitation::Model {
        invitation::Model {
            id: id.to_owned(),
            portal_id: Some(1),
            channel: Channel::App,
            entity_type: EntityType::Deal,
            entity_id: 42,
            patient_name: name.to_owned(),
            questionnaire_code: "pre_visit".to_owned(),
            questionnaire_version: 1,
            questionnaire_version_id: None,
            status,
            dedupe_key: None,
            created_at: created,
            opened_at: (status == COMPLETED).then_some(created),
            completed_at: (status == COMPLETED).then_some(created),
            expires_at: created + Duration::days(30),
        }
    }

    fn texts(html: &str, css: &str) -> Vec<String> {
        let doc = Html::parse_document(html);
        let selector = Selector::parse(css).expect("selector");
        doc.select(&selector)
            .map(|e| e.text().collect::<String>())
            .collect()
    }

    #[test]
    fn the_view_shows_what_was_loaded_and_nothing_else() {
        let now = Utc::now();
        let q = Catalog::load(None).0.latest("pre_visit").expect("built-in");
        let answers: Answers = serde_json::from_value(json!({
            "allergies": "yes",
            "allergy_details": "пенициллин",
            "complaints": "кашель"
        }))
        .expect("answers");
        let done = row("b", "Иванова Анна", COMPLETED, now - Duration::days(2));
        let data = TabData {
            entity: EntityRef {
                kind: EntityType::Deal,
                id: 42,
            },
            rows: vec![row("a", PLACEHOLDER, SENT, now), done.clone()],
            completed: Some((done, q, answers)),
        };
        let page = view(&data, "1.2.session", Some("https://x/s/t"), now);
        assert_eq!(page.patient.as_deref(), Some("Иванова Анна"));
        assert_eq!(page.what, "Сделка");
        let labels: Vec<&str> = page.invitations.iter().map(|r| r.label).collect();
        assert_eq!(labels, ["отправлена", "заполнена"]);

        let html = views::render(&page);
        assert_eq!(
            texts(&html, ".tab-head .muted"),
            ["Сделка № 42 · Иванова Анна"]
        );
        assert!(
            texts(&html, ".flagged dd")
                .iter()
                .any(|a| a == "пенициллин")
        );
        assert_eq!(texts(&html, ".card.empty").len(), 0);
        // Every form carries the session; the PDF's URL carries only the id.
        let doc = Html::parse_document(&html);
        let forms = Selector::parse("form").expect("selector");
        let session = Selector::parse("input[name=s]").expect("selector");
        let mut count = 0;
        for form in doc.select(&forms) {
            let field = form.select(&session).next().expect("session field");
            assert_eq!(field.value().attr("value"), Some("1.2.session"));
            count += 1;
        }
        assert_eq!(count, 3, "new link, open PDF, download PDF");
        let pdf = Selector::parse("form[action='/b24/tab/report/b']").expect("selector");
        assert_eq!(doc.select(&pdf).count(), 2);

        // A lead with nothing completed.
        let data = TabData {
            entity: EntityRef {
                kind: EntityType::Lead,
                id: 7,
            },
            rows: Vec::new(),
            completed: None,
        };
        let html = views::render(&view(&data, "s", None, now));
        assert_eq!(texts(&html, ".tab-head .muted"), ["Лид № 7"]);
        assert_eq!(
            texts(&html, ".card.empty h2"),
            ["Пациент ещё не заполнил анкету"]
        );
        assert!(texts(&html, "table").is_empty());
        assert!(texts(&html, "#new-link").is_empty());
    }
}

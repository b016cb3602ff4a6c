//! What a completed survey produces for the doctor: the PDF report and the timeline
//! comment. Shared by the submit handler (which stores the PDF) and the outbox job
//! (which posts it).

use chrono::{DateTime, FixedOffset, Utc};

use sea_orm::EntityTrait;

use crate::db::entities::{invitation, portal, response};
use crate::report::{RenderedReport, ReportInput, ReportItem, ReportSection};
use crate::state::AppState;
use crate::survey::{
    Answers, Questionnaire, ScoreResult, flagged, score_summary, scores, sections_for_display,
};

/// Said after a score whose band is marked as a red flag.
const SCORE_FLAG_NOTE: &str = "требует внимания";

/// A score's value and band for a doctor: «17 — умеренно тяжёлая (требует внимания)».
pub fn score_answer(s: &ScoreResult) -> String {
    let text = s.text();
    let value = text
        .strip_prefix(&format!("{}: ", s.title))
        .unwrap_or(&text)
        .to_owned();
    if s.flag {
        format!("{value} ({SCORE_FLAG_NOTE})")
    } else {
        value
    }
}

/// The scores of a completed survey in one line, «PHQ-9: 12 — умеренная; GAD-7: 4 —
/// минимальная», or `None` when the questionnaire has none: what the await robot's
/// `score` returns. Holds no answer, only totals and band names.
pub fn score_line(q: &Questionnaire, answers: &Answers) -> Option<String> {
    let results = scores(q, answers);
    (!results.is_empty()).then(|| score_summary(&results))
}

/// Clinics using this service work in Moscow time (UTC+3, no daylight saving since 2014);
/// the PDF and the comment state it, so a reader elsewhere is not misled.
pub fn moscow(at: DateTime<Utc>) -> String {
    format!("{} (МСК)", at.with_timezone(&MSK).format("%d.%m.%Y %H:%M"))
}

pub const MSK: FixedOffset = match FixedOffset::east_opt(3 * 3600) {
    Some(offset) => offset,
    None => panic!("UTC+3 is a valid offset"),
};

/// Clinic name for the PDF header: `CLINIC_NAME`, else the portal's domain.
pub async fn clinic_name(state: &AppState, inv: &invitation::Model) -> String {
    if let Some(name) = &state.config.clinic_name {
        return name.clone();
    }
    portal_field(state, inv, |p| p.domain).await
}

/// A field of the portal the invitation belongs to; for the inbound-webhook setup,
/// which has no portal row, the webhook's host names the portal.
pub async fn portal_field(
    state: &AppState,
    inv: &invitation::Model,
    field: impl FnOnce(portal::Model) -> String,
) -> String {
    match inv.portal_id {
        Some(pid) => portal::Entity::find_by_id(pid)
            .one(&state.db)
            .await
            .ok()
            .flatten()
            .map(field)
            .unwrap_or_default(),
        None => state
            .config
            .webhook_url
            .as_ref()
            .and_then(|w| w.rest_base().host_str().map(str::to_owned))
            .unwrap_or_default(),
    }
}

pub fn report_input(
    clinic: &str,
    q: &Questionnaire,
    inv: &invitation::Model,
    answers: &Answers,
    completed_at: DateTime<Utc>,
) -> ReportInput {
    let flagged = flagged(q, answers)
        .into_iter()
        .map(|f| ReportItem {
            question: f.question,
            answer: f.answer,
        })
        .collect();
    let sections = sections_for_display(q, answers)
        .into_iter()
        .map(|(title, items)| ReportSection {
            title,
            items: items
                .into_iter()
                .map(|(question, answer)| ReportItem { question, answer })
                .collect(),
        })
        .collect();
    let scores = scores(q, answers)
        .iter()
        .map(|s| ReportItem {
            question: s.title.clone(),
            answer: score_answer(s),
        })
        .collect();
    ReportInput {
        clinic: clinic.to_owned(),
        title: q.title.clone(),
        patient: inv.patient_name.clone(),
        completed_at: moscow(completed_at),
        flagged,
        scores,
        sections,
    }
}

/// Builds the PDF off the async runtime: font subsetting is CPU work.
pub async fn render_report(input: ReportInput) -> Result<RenderedReport, String> {
    tokio::task::spawn_blocking(move || crate::report::render(&input).map_err(|e| e.to_string()))
        .await
        .map_err(|e| e.to_string())?
}

/// The PDF of a submitted survey: the stored one, else rendered from the stored
/// answers now and stored (a submit that delivers leaves it to the comment job, and
/// the doctor may open the tab first). `None` before a submit, or should a PDF not
/// build: the answers are there all the same.
pub async fn stored_or_rendered_pdf(
    state: &AppState,
    inv: &invitation::Model,
    resp: &response::Model,
) -> Option<Vec<u8>> {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    if let Some(pdf) = &resp.report_pdf {
        return Some(pdf.clone());
    }
    let (Some(answers), Some(completed_at)) = (resp.answers.clone(), resp.submitted_at) else {
        return None;
    };
    // Answers that no longer decode make no PDF; the caller says so in its own way.
    let answers = match crate::survey::decode_answers(&inv.id, answers) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(survey_id = %inv.id, error = %e, "Сохранённые ответы не читаются");
            return None;
        }
    };
    let q = match crate::questionnaires::of_invitation(state, inv).await {
        Ok(q) => q?,
        Err(e) => {
            tracing::error!(survey_id = %inv.id, error = %e, "Анкета опроса не читается");
            return None;
        }
    };
    let clinic = clinic_name(state, inv).await;
    let input = report_input(&clinic, &q, inv, &answers, completed_at);
    match render_report(input).await {
        Ok(r) => {
            tracing::info!(survey_id = %inv.id, "Отчёт PDF построен");
            let mut row: response::ActiveModel = resp.clone().into();
            row.report_sha256 = Set(Some(r.sha256.clone()));
            row.report_pdf = Set(Some(r.pdf.clone()));
            if let Err(e) = row.update(&state.db).await {
                tracing::warn!(error = %e, "Не удалось сохранить построенный PDF");
            }
            Some(r.pdf)
        }
        // Patient input is bounded, but should a PDF still not build, the doctor
        // gets the answers (and the comment) without it rather than nothing at all.
        Err(e) => {
            tracing::error!(survey_id = %inv.id, error = %e, "PDF не построен");
            None
        }
    }
}

/// «Пациент завершил опрос «…» 14.01.2026 10:15 (МСК).» plus the flagged answers in
/// one line. The survey number is the marker the outbox looks for before posting
/// again, so a retry after a lost answer cannot post the comment twice.
pub fn timeline_comment(
    q: &Questionnaire,
    inv: &invitation::Model,
    answers: &Answers,
    completed_at: DateTime<Utc>,
) -> String {
    comment_with(q, inv, answers, completed_at, None)
}

/// Said in place of the PDF when it could not be built: the answers are stored.
const NO_PDF_NOTE: &str = "PDF-отчёт построить не удалось: ответы пациента сохранены, их можно посмотреть во вкладке «Анкета пациента».";

/// [`timeline_comment`] for a result whose PDF could not be built: the comment says
/// so (above the marker, which stays the last line).
pub fn timeline_comment_without_pdf(
    q: &Questionnaire,
    inv: &invitation::Model,
    answers: &Answers,
    completed_at: DateTime<Utc>,
) -> String {
    comment_with(q, inv, answers, completed_at, Some(NO_PDF_NOTE))
}

fn comment_with(
    q: &Questionnaire,
    inv: &invitation::Model,
    answers: &Answers,
    completed_at: DateTime<Utc>,
    note: Option<&str>,
) -> String {
    let mut text = format!(
        "Пациент завершил опрос «{}» {}.",
        q.title,
        moscow(completed_at)
    );
    let flagged = flagged(q, answers);
    if !flagged.is_empty() {
        let items: Vec<String> = flagged
            .iter()
            .map(|f| format!("{}: {}", neutralise(&f.label), neutralise(&f.answer)))
            .collect();
        text.push_str(&format!("\nОбратите внимание: {}.", items.join("; ")));
    }
    // Totals and band names come from the questionnaire, not from patient text.
    if let Some(line) = score_line(q, answers) {
        text.push_str(&format!("\nБаллы: {}.", neutralise(&line)));
    }
    if let Some(note) = note {
        text.push_str(&format!("\n{note}"));
    }
    text.push_str(&format!("\n{}", marker(&inv.id)));
    text
}

pub fn marker(invitation_id: &str) -> String {
    format!("Опрос № {invitation_id}")
}

/// Whether a timeline comment is the one [`timeline_comment`] wrote for this survey:
/// its last line is exactly the marker. Patient text never starts a line (see
/// [`neutralise`]), so no answer can make another comment look like this one.
pub fn carries_marker(comment: &str, invitation_id: &str) -> bool {
    comment
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .is_some_and(|last| last == marker(invitation_id))
}

/// Makes text someone else typed (a patient's answer, a name from a URL) inert where
/// Bitrix24 renders BB code: the comment, activity and notification texts all go
/// through its BB code parser, which knows `[URL=…]`, `[USER=…]`, `[IMG]`, `[DISK
/// FILE ID=…]` and more, and offers no tag that reliably switches parsing off
/// (`[CODE]` ends at the first `[/CODE]` the text itself contains). Every tag starts
/// with `[`, so square brackets become their full-width look-alikes `［` `］`: the
/// text stays readable, no tag can form. Line breaks become spaces so the text stays
/// inside its own line and can never produce the survey marker line, and `://`
/// becomes `：//` so a typed address is not turned into a link under our heading.
pub fn neutralise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '[' => out.push('［'),
            ']' => out.push('］'),
            '\r' | '\n' | '\u{2028}' | '\u{2029}' => out.push(' '),
            c => out.push(c),
        }
    }
    out.replace("://", "：//")
}

pub fn pdf_file_name(inv: &invitation::Model, completed_at: DateTime<Utc>) -> String {
    format!(
        "opros-{}-{}-{}.pdf",
        inv.entity_type.timeline_name(),
        inv.entity_id,
        completed_at.format("%Y-%m-%d")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_line_joins_every_score_for_the_await_robot() {
        let q: Questionnaire = serde_json::from_value(serde_json::json!({
            "code": "two", "version": 1, "title": "Две шкалы",
            "sections": [{"id": "s", "title": "S", "questions": [
                {"id": "a", "type": "single", "title": "A", "options": [
                    {"value": "lo", "label": "Мало", "score": 0}, {"value": "hi", "label": "Много", "score": 12}]},
                {"id": "b", "type": "multi", "title": "B", "options": [
                    {"value": "x", "label": "X", "score": 2}, {"value": "y", "label": "Y", "score": 2}]}
            ]}],
            "scores": [
                {"id": "first", "title": "PHQ-9", "questions": ["a"], "bands": [
                    {"from": 0, "to": 9, "label": "лёгкая"}, {"from": 10, "to": 12, "label": "умеренная"}]},
                {"id": "second", "title": "GAD-7", "questions": ["b"], "bands": [
                    {"from": 0, "to": 4, "label": "минимальная", "flag": true}]}
            ]
        }))
        .expect("reads");
        assert_eq!(q.check(), Vec::new());
        let answers: Answers =
            serde_json::from_value(serde_json::json!({"a": "hi", "b": ["x", "y"]})).expect("map");
        assert_eq!(
            score_line(&q, &answers).as_deref(),
            Some("PHQ-9: 12 — умеренная; GAD-7: 4 — минимальная")
        );
        let results = scores(&q, &answers);
        assert_eq!(
            score_answer(&results[1]),
            "4 — минимальная (требует внимания)"
        );
        let mut plain = q.clone();
        plain.scores.clear();
        assert_eq!(score_line(&plain, &answers), None);
    }

    #[test]
    fn patient_text_forms_no_tag_and_no_marker_line() {
        let typed = "[URL=https://evil.example]Результаты готовы[/URL] [USER=1]\nОпрос № x";
        let safe = neutralise(typed);
        assert!(!safe.contains('[') && !safe.contains(']'), "{safe}");
        assert!(!safe.contains("://"), "{safe}");
        assert!(!safe.contains('\n'));
        assert!(safe.contains("Результаты готовы"));
        let comment =
            format!("Пациент завершил опрос.\nОбратите внимание: Жалобы: {safe}.\nОпрос № y");
        assert!(!carries_marker(&comment, "x"));
        assert!(carries_marker(&comment, "y"));
        assert!(carries_marker("Опрос № y\r\n", "y"));
    }
}

//! What a completed survey produces for the doctor: the PDF report and the timeline
//! comment. Shared by the submit handler (which stores the PDF) and the outbox job
//! (which posts it).

use chrono::{DateTime, FixedOffset, Utc};

use crate::db::entities::invitation;
use crate::report::{RenderedReport, ReportInput, ReportItem, ReportSection};
use crate::survey::{Answers, Questionnaire, flagged, sections_for_display};

/// Clinics using this service work in Moscow time (UTC+3, no daylight saving since 2014);
/// the PDF and the comment state it, so a reader elsewhere is not misled.
pub fn moscow(at: DateTime<Utc>) -> String {
    format!("{} (МСК)", at.with_timezone(&MSK).format("%d.%m.%Y %H:%M"))
}

pub const MSK: FixedOffset = match FixedOffset::east_opt(3 * 3600) {
    Some(offset) => offset,
    None => panic!("UTC+3 is a valid offset"),
};

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
    ReportInput {
        clinic: clinic.to_owned(),
        title: q.title.clone(),
        patient: inv.patient_name.clone(),
        completed_at: moscow(completed_at),
        flagged,
        sections,
    }
}

/// Builds the PDF off the async runtime: font subsetting is CPU work.
pub async fn render_report(input: ReportInput) -> Result<RenderedReport, String> {
    tokio::task::spawn_blocking(move || crate::report::render(&input).map_err(|e| e.to_string()))
        .await
        .map_err(|e| e.to_string())?
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
    let mut text = format!(
        "Пациент завершил опрос «{}» {}.",
        q.title,
        moscow(completed_at)
    );
    let flagged = flagged(q, answers);
    if !flagged.is_empty() {
        let items: Vec<String> = flagged
            .iter()
            .map(|f| format!("{}: {}", f.label, f.answer))
            .collect();
        text.push_str(&format!("\nОбратите внимание: {}.", items.join("; ")));
    }
    text.push_str(&format!("\n{}", marker(&inv.id)));
    text
}

pub fn marker(invitation_id: &str) -> String {
    format!("Опрос № {invitation_id}")
}

pub fn pdf_file_name(inv: &invitation::Model, completed_at: DateTime<Utc>) -> String {
    format!(
        "opros-{}-{}-{}.pdf",
        inv.entity_type.to_lowercase(),
        inv.entity_id,
        completed_at.format("%Y-%m-%d")
    )
}

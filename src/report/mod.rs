//! PDF report of a completed questionnaire, attached to the Bitrix24 deal timeline.
//!
//! The report is self-contained: fonts (DejaVu Sans, see `assets/fonts/LICENSE-DejaVu.txt`)
//! are embedded in the binary and subset into each PDF, and text is laid out and wrapped
//! here because printpdf's low-level operations do not wrap.

mod fonts;
mod layout;
#[cfg(any(test, feature = "testing"))]
pub mod sample;
mod wrap;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Everything printed in a report; the caller has already chosen and formatted it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportInput {
    /// Clinic or portal name for the header; omitted from the page when empty.
    pub clinic: String,
    /// Questionnaire title, e.g. «Анкета пациента перед приёмом».
    pub title: String,
    /// Patient's full name.
    pub patient: String,
    /// Completion time, already formatted for people, e.g. «14.01.2026 10:15 (МСК)».
    pub completed_at: String,
    /// Answers the doctor must see first; the highlighted box is omitted when empty.
    pub flagged: Vec<ReportItem>,
    /// Scores (`question`: «PHQ-9», `answer`: «12 — умеренная»), in a box after the
    /// flags; empty for questionnaires without scores.
    pub scores: Vec<ReportItem>,
    /// Sections in display order; questions not shown to the patient are already left out.
    pub sections: Vec<ReportSection>,
}

/// A titled group of answered questions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportSection {
    /// Section heading.
    pub title: String,
    /// Questions with their answers, in display order.
    pub items: Vec<ReportItem>,
}

/// One question and the patient's answer (an empty answer is printed as «—»).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportItem {
    /// Question text.
    pub question: String,
    /// Answer as text; line breaks are kept.
    pub answer: String,
}

/// A rendered report and the checksum printed in its footer.
#[derive(Debug, Clone)]
pub struct RenderedReport {
    /// The PDF file.
    pub pdf: Vec<u8>,
    /// [`content_sha256`] of the input, lowercase hex.
    pub sha256: String,
    /// Number of pages in the PDF.
    pub pages: usize,
}

/// Why a report could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The fonts compiled into the binary could not be parsed.
    #[error("не удалось загрузить встроенный шрифт отчёта")]
    FontUnavailable,
    /// The input would produce more pages than a report may have.
    #[error("отчёт слишком большой: {pages} стр. при допустимых {max}")]
    TooManyPages {
        /// Pages the layout reached before giving up.
        pages: usize,
        /// The limit.
        max: usize,
    },
}

/// A report longer than this is refused rather than rendered, so that an absurd input cannot
/// tie up the service; a real questionnaire takes two or three pages.
pub const MAX_PAGES: usize = 100;

/// SHA-256 (lowercase hex) of the report's content: a canonical serialisation of the
/// [`ReportInput`], not of the PDF bytes (which cannot contain their own hash).
///
/// It is printed in every page footer and stored by the caller, so a doctor can tell the PDF is
/// the one the patient's answers produced. The serialisation is a version tag followed by every
/// string as a big-endian `u64` byte length and its UTF-8 bytes, and every list as a `u64` count
/// followed by its elements, in declaration order: unambiguous, and independent of any serde
/// format's choices. Equal inputs give equal hashes; any change to any field changes it.
pub fn content_sha256(input: &ReportInput) -> String {
    fn put_str(hasher: &mut Sha256, s: &str) {
        hasher.update((s.len() as u64).to_be_bytes());
        hasher.update(s.as_bytes());
    }
    fn put_len(hasher: &mut Sha256, n: usize) {
        hasher.update((n as u64).to_be_bytes());
    }
    fn put_items(hasher: &mut Sha256, items: &[ReportItem]) {
        put_len(hasher, items.len());
        for item in items {
            put_str(hasher, &item.question);
            put_str(hasher, &item.answer);
        }
    }

    let mut hasher = Sha256::new();
    hasher.update(b"opros.report.v1\0");
    put_str(&mut hasher, &input.clinic);
    put_str(&mut hasher, &input.title);
    put_str(&mut hasher, &input.patient);
    put_str(&mut hasher, &input.completed_at);
    put_items(&mut hasher, &input.flagged);
    // Reports without scores keep the hash they always had.
    if !input.scores.is_empty() {
        hasher.update(b"scores\0");
        put_items(&mut hasher, &input.scores);
    }
    put_len(&mut hasher, input.sections.len());
    for section in &input.sections {
        put_str(&mut hasher, &section.title);
        put_items(&mut hasher, &section.items);
    }
    hex::encode(hasher.finalize())
}

/// Renders the report as an A4 PDF with the fonts subset into it.
///
/// Fails only if the embedded fonts are unusable or the report would exceed [`MAX_PAGES`].
pub fn render(input: &ReportInput) -> Result<RenderedReport, ReportError> {
    let fonts = fonts::Fonts::get().ok_or(ReportError::FontUnavailable)?;
    let sha256 = content_sha256(input);
    let (pdf, pages) = layout::render_pdf(fonts, input, &sha256)?;
    Ok(RenderedReport { pdf, sha256, pages })
}

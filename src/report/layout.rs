//! Page layout: places the header, the flagged-answers panel and the sections top to bottom,
//! breaking pages as needed, then adds the footer once the page count is known.

use printpdf::{
    Color, FontId, Line as PdfLine, LinePoint, Mm, Op, PaintMode, PdfDocument, PdfFontHandle,
    PdfPage, PdfSaveOptions, Point, Pt, Rect, Rgb, TextItem,
};

use super::fonts::{Fonts, Style};
use super::wrap::{Line, Span, answer_text, wrap_spans};
use super::{MAX_PAGES, ReportError, ReportInput, ReportItem, ReportSection};

const MM: f32 = 72.0 / 25.4;
const PAGE_W_MM: f32 = 210.0;
const PAGE_H_MM: f32 = 297.0;
const PAGE_W: f32 = PAGE_W_MM * MM;
const PAGE_H: f32 = PAGE_H_MM * MM;
const MARGIN_X: f32 = 18.0 * MM;
const MARGIN_TOP: f32 = 18.0 * MM;
const CONTENT_W: f32 = PAGE_W - 2.0 * MARGIN_X;
/// Lowest point of body text, measured from the page top; the footer lives below it.
const CONTENT_BOTTOM: f32 = PAGE_H - 20.0 * MM;
const FOOTER_RULE_FROM_BOTTOM: f32 = 16.0 * MM;
const FOOTER_BASELINE_FROM_BOTTOM: f32 = 11.5 * MM;

/// Baseline offset below a line's top, as a share of the font size: DejaVu's ascent is 0.93 em
/// and the rest of the leading is split around the glyphs.
const BASELINE_RATIO: f32 = 0.98;

const PANEL_PADDING: f32 = 8.0;
const BULLET: &str = "•";
const BULLET_INDENT: f32 = 11.0;
const ANSWER_INDENT: f32 = 10.0;

type Rgb3 = (f32, f32, f32);
const BLACK: Rgb3 = (0.0, 0.0, 0.0);
const QUESTION: Rgb3 = (0.22, 0.22, 0.25);
const MUTED: Rgb3 = (0.4, 0.4, 0.43);
const TITLE: Rgb3 = (0.1, 0.2, 0.36);
const SECTION: Rgb3 = (0.12, 0.32, 0.52);
const SECTION_RULE: Rgb3 = (0.7, 0.8, 0.9);
const RULE: Rgb3 = (0.65, 0.65, 0.68);
const PANEL_FILL: Rgb3 = (1.0, 0.96, 0.88);
const PANEL_BORDER: Rgb3 = (0.86, 0.55, 0.16);
const PANEL_HEADING: Rgb3 = (0.66, 0.12, 0.05);

/// Size, line height and colour of one kind of text.
#[derive(Clone, Copy)]
struct TextStyle {
    size: f32,
    leading: f32,
    color: Rgb3,
}

const CLINIC: TextStyle = TextStyle {
    size: 9.5,
    leading: 13.0,
    color: MUTED,
};
const HEADING: TextStyle = TextStyle {
    size: 16.0,
    leading: 20.0,
    color: TITLE,
};
const META: TextStyle = TextStyle {
    size: 11.0,
    leading: 15.0,
    color: BLACK,
};
const PANEL_TITLE: TextStyle = TextStyle {
    size: 12.0,
    leading: 16.0,
    color: PANEL_HEADING,
};
const FLAGGED: TextStyle = TextStyle {
    size: 10.5,
    leading: 14.0,
    color: BLACK,
};
const SECTION_TITLE: TextStyle = TextStyle {
    size: 12.5,
    leading: 16.0,
    color: SECTION,
};
const QUESTION_TEXT: TextStyle = TextStyle {
    size: 10.0,
    leading: 13.0,
    color: QUESTION,
};
const ANSWER_TEXT: TextStyle = TextStyle {
    size: 10.0,
    leading: 13.0,
    color: BLACK,
};
const FOOTER_HASH_SIZE: f32 = 7.0;
const FOOTER_PAGE_SIZE: f32 = 8.0;

/// Lays out `input` and serialises the PDF with subset fonts; returns it with its page count.
pub(crate) fn render_pdf(
    fonts: &Fonts,
    input: &ReportInput,
    sha256: &str,
) -> Result<(Vec<u8>, usize), ReportError> {
    let mut doc = PdfDocument::new(&fonts.printable(&input.title));
    let mut writer = PageWriter {
        fonts,
        regular: doc.add_font(fonts.face(Style::Regular)),
        bold: doc.add_font(fonts.face(Style::Bold)),
        pages: Vec::new(),
        ops: Vec::new(),
        y: MARGIN_TOP,
        panel: None,
    };
    writer.header(input)?;
    if !input.flagged.is_empty() {
        writer.flagged(&input.flagged)?;
    }
    if !input.scores.is_empty() {
        writer.section(&ReportSection {
            title: "Баллы по шкалам".into(),
            items: input.scores.clone(),
        })?;
    }
    for section in &input.sections {
        writer.section(section)?;
    }
    let pages = writer.finish(sha256);
    let count = pages.len();
    let mut warnings = Vec::new();
    let pdf = doc
        .with_pages(pages)
        .save(&PdfSaveOptions::default(), &mut warnings);
    Ok((pdf, count))
}

/// The highlighted panel currently open: where its background goes in the page's operations
/// (drawn first, so it sits under the text) and where its current fragment starts.
struct Panel {
    first_op: usize,
    top: f32,
}

struct PageWriter<'a> {
    fonts: &'a Fonts,
    regular: FontId,
    bold: FontId,
    pages: Vec<Vec<Op>>,
    ops: Vec<Op>,
    /// Top of the next line, in points from the top of the page.
    y: f32,
    panel: Option<Panel>,
}

impl PageWriter<'_> {
    fn header(&mut self, input: &ReportInput) -> Result<(), ReportError> {
        let clinic = self.fonts.printable(input.clinic.trim());
        if !clinic.is_empty() {
            self.paragraph(
                MARGIN_X,
                &[Span::new(Style::Regular, clinic)],
                CLINIC,
                CONTENT_W,
            )?;
            self.gap(3.0);
        }
        let title = self.fonts.printable(input.title.trim());
        if !title.is_empty() {
            self.paragraph(
                MARGIN_X,
                &[Span::new(Style::Bold, title)],
                HEADING,
                CONTENT_W,
            )?;
            self.gap(5.0);
        }
        for (label, value) in [
            ("Пациент: ", &input.patient),
            ("Дата заполнения: ", &input.completed_at),
        ] {
            let spans = [
                Span::new(Style::Bold, label),
                Span::new(Style::Regular, self.fonts.printable(answer_text(value))),
            ];
            self.paragraph(MARGIN_X, &spans, META, CONTENT_W)?;
        }
        self.gap(6.0);
        self.rule(MARGIN_X, MARGIN_X + CONTENT_W, 0.8, RULE);
        self.gap(12.0);
        Ok(())
    }

    fn flagged(&mut self, items: &[ReportItem]) -> Result<(), ReportError> {
        let text_x = MARGIN_X + PANEL_PADDING + BULLET_INDENT;
        let text_w = CONTENT_W - 2.0 * PANEL_PADDING - BULLET_INDENT;
        let wrapped: Vec<Vec<Line>> = items
            .iter()
            .map(|item| {
                let spans = [
                    Span::new(Style::Bold, self.fonts.printable(item.question.trim())),
                    Span::new(
                        Style::Regular,
                        format!(" — {}", self.fonts.printable(answer_text(&item.answer))),
                    ),
                ];
                wrap_spans(self.fonts, &spans, FLAGGED.size, text_w)
            })
            .collect();
        let first_lines = wrapped.first().map_or(0, |lines| lines.len().min(2));
        self.ensure(
            2.0 * PANEL_PADDING + PANEL_TITLE.leading + first_lines as f32 * FLAGGED.leading,
        )?;

        self.begin_panel();
        self.gap(PANEL_PADDING);
        let heading = [Span::new(Style::Bold, "Обратите внимание")];
        self.draw_line(MARGIN_X + PANEL_PADDING, &heading, PANEL_TITLE);
        self.gap(3.0);
        for (i, lines) in wrapped.iter().enumerate() {
            if i > 0 {
                self.gap(4.0);
            }
            self.ensure(FLAGGED.leading * lines.len().min(2) as f32)?;
            let baseline = PAGE_H - (self.y + FLAGGED.size * BASELINE_RATIO);
            let bullet = [Span::new(Style::Bold, BULLET)];
            let bullet_x = MARGIN_X + PANEL_PADDING + 2.0;
            self.text_at(bullet_x, baseline, &bullet, FLAGGED.size, PANEL_HEADING);
            self.lines(text_x, lines, FLAGGED)?;
        }
        self.gap(PANEL_PADDING - 2.0);
        self.end_panel();
        self.gap(16.0);
        Ok(())
    }

    fn section(&mut self, section: &ReportSection) -> Result<(), ReportError> {
        let title = wrap_spans(
            self.fonts,
            &[Span::new(
                Style::Bold,
                self.fonts.printable(section.title.trim()),
            )],
            SECTION_TITLE.size,
            CONTENT_W,
        );
        let items: Vec<(Vec<Line>, Vec<Line>)> = section
            .items
            .iter()
            .map(|item| self.wrap_item(item))
            .collect();
        let title_height = title.len() as f32 * SECTION_TITLE.leading + 8.0;
        let first_item = items.first().map_or(0.0, |(question, answer)| {
            item_start_height(question, answer)
        });
        self.ensure(title_height + first_item)?;
        self.lines(MARGIN_X, &title, SECTION_TITLE)?;
        self.gap(1.5);
        self.rule(MARGIN_X, MARGIN_X + CONTENT_W, 0.5, SECTION_RULE);
        self.gap(6.5);
        for (i, (question, answer)) in items.iter().enumerate() {
            if i > 0 {
                self.gap(6.0);
            }
            // A question is never left at a page bottom without the start of its answer.
            self.ensure(item_start_height(question, answer))?;
            self.lines(MARGIN_X, question, QUESTION_TEXT)?;
            self.gap(1.0);
            self.lines(MARGIN_X + ANSWER_INDENT, answer, ANSWER_TEXT)?;
        }
        self.gap(14.0);
        Ok(())
    }

    fn wrap_item(&self, item: &ReportItem) -> (Vec<Line>, Vec<Line>) {
        let question = [Span::new(
            Style::Bold,
            self.fonts.printable(item.question.trim()),
        )];
        let answer = [Span::new(
            Style::Regular,
            self.fonts.printable(answer_text(&item.answer)),
        )];
        (
            wrap_spans(self.fonts, &question, QUESTION_TEXT.size, CONTENT_W),
            wrap_spans(
                self.fonts,
                &answer,
                ANSWER_TEXT.size,
                CONTENT_W - ANSWER_INDENT,
            ),
        )
    }

    /// Wraps and draws `spans`, breaking pages between lines as needed.
    fn paragraph(
        &mut self,
        x: f32,
        spans: &[Span],
        style: TextStyle,
        width: f32,
    ) -> Result<(), ReportError> {
        let lines = wrap_spans(self.fonts, spans, style.size, width);
        self.lines(x, &lines, style)
    }

    fn lines(&mut self, x: f32, lines: &[Line], style: TextStyle) -> Result<(), ReportError> {
        for line in lines {
            self.ensure(style.leading)?;
            self.draw_line(x, line, style);
        }
        Ok(())
    }

    /// Draws one line at the current position and moves below it; the caller made room.
    fn draw_line(&mut self, x: f32, line: &[Span], style: TextStyle) {
        let baseline = PAGE_H - (self.y + style.size * BASELINE_RATIO);
        self.text_at(x, baseline, line, style.size, style.color);
        self.y += style.leading;
    }

    /// One text object per line: after each run the viewer's pen has advanced by the run's
    /// embedded widths, so runs in different faces join up exactly as measured.
    fn text_at(&mut self, x: f32, baseline: f32, line: &[Span], size: f32, color: Rgb3) {
        if line.is_empty() {
            return;
        }
        self.ops.push(Op::StartTextSection);
        self.ops.push(Op::SetFillColor { col: rgb(color) });
        self.ops.push(Op::SetTextCursor {
            pos: Point {
                x: Pt(x),
                y: Pt(baseline),
            },
        });
        for span in line {
            let font = match span.style {
                Style::Regular => self.regular.clone(),
                Style::Bold => self.bold.clone(),
            };
            self.ops.push(Op::SetFont {
                font: PdfFontHandle::External(font),
                size: Pt(size),
            });
            self.ops.push(Op::ShowText {
                items: vec![TextItem::Text(span.text.clone())],
            });
        }
        self.ops.push(Op::EndTextSection);
    }

    fn gap(&mut self, height: f32) {
        self.y += height;
    }

    /// Starts a new page unless `height` more points fit on this one (or this page is still
    /// empty, where breaking would not help).
    fn ensure(&mut self, height: f32) -> Result<(), ReportError> {
        let page_is_empty = self.y <= MARGIN_TOP + PANEL_PADDING + 0.5;
        if self.y + height > CONTENT_BOTTOM && !page_is_empty {
            self.new_page()?;
        }
        Ok(())
    }

    fn new_page(&mut self) -> Result<(), ReportError> {
        let continues_panel = self.panel.is_some();
        if continues_panel {
            self.gap(2.0);
            self.end_panel();
        }
        let page = std::mem::take(&mut self.ops);
        self.pages.push(page);
        if self.pages.len() >= MAX_PAGES {
            return Err(ReportError::TooManyPages {
                pages: self.pages.len() + 1,
                max: MAX_PAGES,
            });
        }
        self.y = MARGIN_TOP;
        if continues_panel {
            self.begin_panel();
            self.gap(PANEL_PADDING);
        }
        Ok(())
    }

    fn begin_panel(&mut self) {
        self.panel = Some(Panel {
            first_op: self.ops.len(),
            top: self.y,
        });
    }

    /// Puts the panel's background under everything drawn since it began.
    fn end_panel(&mut self) {
        let Some(panel) = self.panel.take() else {
            return;
        };
        let background = [
            Op::SaveGraphicsState,
            Op::SetFillColor {
                col: rgb(PANEL_FILL),
            },
            Op::SetOutlineColor {
                col: rgb(PANEL_BORDER),
            },
            Op::SetOutlineThickness { pt: Pt(0.9) },
            Op::DrawRectangle {
                rectangle: Rect {
                    x: Pt(MARGIN_X),
                    y: Pt(PAGE_H - self.y),
                    width: Pt(CONTENT_W),
                    height: Pt(self.y - panel.top),
                    mode: Some(PaintMode::FillStroke),
                    winding_order: None,
                },
            },
            Op::RestoreGraphicsState,
        ];
        self.ops.splice(panel.first_op..panel.first_op, background);
    }

    fn rule(&mut self, x0: f32, x1: f32, thickness: f32, color: Rgb3) {
        let y = PAGE_H - self.y;
        push_rule(&mut self.ops, (x0, x1), y, thickness, color);
    }

    /// Closes the last page and adds «стр. N из M» and the checksum to every page.
    fn finish(mut self, sha256: &str) -> Vec<PdfPage> {
        if !self.ops.is_empty() || self.pages.is_empty() {
            let page = std::mem::take(&mut self.ops);
            self.pages.push(page);
        }
        let total = self.pages.len();
        let hash_line = [Span::new(
            Style::Regular,
            format!("Контрольная сумма SHA-256: {sha256}"),
        )];
        let pages = std::mem::take(&mut self.pages);
        pages
            .into_iter()
            .enumerate()
            .map(|(i, mut ops)| {
                std::mem::swap(&mut self.ops, &mut ops);
                push_rule(
                    &mut self.ops,
                    (MARGIN_X, MARGIN_X + CONTENT_W),
                    FOOTER_RULE_FROM_BOTTOM,
                    0.5,
                    RULE,
                );
                self.text_at(
                    MARGIN_X,
                    FOOTER_BASELINE_FROM_BOTTOM,
                    &hash_line,
                    FOOTER_HASH_SIZE,
                    MUTED,
                );
                let number = format!("стр. {} из {}", i + 1, total);
                let number_w = self
                    .fonts
                    .text_width(Style::Regular, &number, FOOTER_PAGE_SIZE);
                self.text_at(
                    MARGIN_X + CONTENT_W - number_w,
                    FOOTER_BASELINE_FROM_BOTTOM,
                    &[Span::new(Style::Regular, number)],
                    FOOTER_PAGE_SIZE,
                    MUTED,
                );
                let ops = std::mem::take(&mut self.ops);
                PdfPage::new(Mm(PAGE_W_MM), Mm(PAGE_H_MM), ops)
            })
            .collect()
    }
}

/// Height a question needs together with the first lines of its answer.
fn item_start_height(question: &[Line], answer: &[Line]) -> f32 {
    question.len() as f32 * QUESTION_TEXT.leading
        + 1.0
        + answer.len().min(2) as f32 * ANSWER_TEXT.leading
}

fn push_rule(ops: &mut Vec<Op>, (x0, x1): (f32, f32), y: f32, thickness: f32, color: Rgb3) {
    let point = |x: f32| LinePoint {
        p: Point { x: Pt(x), y: Pt(y) },
        bezier: false,
    };
    ops.extend([
        Op::SaveGraphicsState,
        Op::SetOutlineColor { col: rgb(color) },
        Op::SetOutlineThickness { pt: Pt(thickness) },
        Op::DrawLine {
            line: PdfLine {
                points: vec![point(x0), point(x1)],
                is_closed: false,
            },
        },
        Op::RestoreGraphicsState,
    ]);
}

fn rgb((r, g, b): Rgb3) -> Color {
    Color::Rgb(Rgb {
        r,
        g,
        b,
        icc_profile: None,
    })
}

//! Line breaking by measured glyph advances: at spaces, and inside a word only when the word
//! alone is wider than the line.

use super::fonts::{Fonts, Style};

/// Printed for an empty answer, so a blank is visibly "no answer" rather than a layout gap.
pub(crate) const EMPTY_ANSWER: &str = "—";

/// Lets rounding in summed advances not push a line that fits exactly onto the next one.
const WIDTH_TOLERANCE: f32 = 0.01;

/// A run of text in one face.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Span {
    pub(crate) style: Style,
    pub(crate) text: String,
}

impl Span {
    pub(crate) fn new(style: Style, text: impl Into<String>) -> Self {
        Span {
            style,
            text: text.into(),
        }
    }
}

/// One output line: runs to be shown one after another.
pub(crate) type Line = Vec<Span>;

/// The answer as printed: trimmed, or [`EMPTY_ANSWER`] when there is nothing to print.
pub(crate) fn answer_text(answer: &str) -> &str {
    let trimmed = answer.trim();
    if trimmed.is_empty() {
        EMPTY_ANSWER
    } else {
        trimmed
    }
}

/// Breaks styled text into lines no wider than `max_width` points at `size`.
///
/// `\n` forces a line break (an empty line between paragraphs is kept); runs of spaces collapse.
/// Always returns at least one line.
pub(crate) fn wrap_spans(fonts: &Fonts, spans: &[Span], size: f32, max_width: f32) -> Vec<Line> {
    let mut builder = LineBuilder {
        fonts,
        size,
        max_width: max_width + WIDTH_TOLERANCE,
        lines: Vec::new(),
        current: Vec::new(),
        width: 0.0,
    };
    for span in spans {
        for (i, paragraph) in span.text.split('\n').enumerate() {
            if i > 0 {
                builder.flush();
            }
            for word in paragraph.split(' ').filter(|w| !w.is_empty()) {
                builder.push_word(span.style, word);
            }
        }
    }
    builder.finish()
}

struct LineBuilder<'a> {
    fonts: &'a Fonts,
    size: f32,
    max_width: f32,
    lines: Vec<Line>,
    current: Line,
    width: f32,
}

impl LineBuilder<'_> {
    fn push_word(&mut self, style: Style, word: &str) {
        let word_width = self.fonts.text_width(style, word, self.size);
        if !self.current.is_empty() {
            let space = self.fonts.char_width(style, ' ', self.size);
            if self.width + space + word_width <= self.max_width {
                self.append(style, " ");
                self.append(style, word);
                self.width += space + word_width;
                return;
            }
            self.flush();
        }
        if word_width <= self.max_width {
            self.append(style, word);
            self.width = word_width;
            return;
        }
        // Only a word longer than a whole line (a URL, a long drug name without spaces) is cut,
        // and then as late as possible; at least one character goes on each line.
        let mut piece = [0u8; 4];
        for c in word.chars() {
            let char_width = self.fonts.char_width(style, c, self.size);
            if !self.current.is_empty() && self.width + char_width > self.max_width {
                self.flush();
            }
            self.append(style, c.encode_utf8(&mut piece));
            self.width += char_width;
        }
    }

    fn append(&mut self, style: Style, text: &str) {
        match self.current.last_mut() {
            Some(last) if last.style == style => last.text.push_str(text),
            _ => self.current.push(Span::new(style, text)),
        }
    }

    fn flush(&mut self) {
        self.lines.push(std::mem::take(&mut self.current));
        self.width = 0.0;
    }

    fn finish(mut self) -> Vec<Line> {
        if !self.current.is_empty() || self.lines.is_empty() {
            self.flush();
        }
        self.lines
    }
}

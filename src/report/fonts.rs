//! The report's two faces, parsed once per process, and text measurement with them.

use std::sync::OnceLock;

use printpdf::ParsedFont;

const REGULAR_TTF: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const BOLD_TTF: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf");

/// Printed in place of a character neither face can draw, so the PDF never shows an empty
/// box whose extracted text would be garbage.
const REPLACEMENT: char = '?';

/// Which face a piece of text is set in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Regular,
    Bold,
}

/// DejaVu Sans and DejaVu Sans Bold.
pub(crate) struct Fonts {
    regular: ParsedFont,
    bold: ParsedFont,
}

impl Fonts {
    /// The process-wide parsed fonts; `None` only if the compiled-in files are corrupt.
    pub(crate) fn get() -> Option<&'static Fonts> {
        static FONTS: OnceLock<Option<Fonts>> = OnceLock::new();
        FONTS
            .get_or_init(|| {
                let mut warnings = Vec::new();
                Some(Fonts {
                    regular: ParsedFont::from_bytes(REGULAR_TTF, 0, &mut warnings)?,
                    bold: ParsedFont::from_bytes(BOLD_TTF, 0, &mut warnings)?,
                })
            })
            .as_ref()
    }

    pub(crate) fn face(&self, style: Style) -> &ParsedFont {
        match style {
            Style::Regular => &self.regular,
            Style::Bold => &self.bold,
        }
    }

    /// Advance width of `c` in points at `size`, as a PDF viewer will advance the pen: printpdf
    /// writes the same hmtx advances into the font's `/W` array and applies no kerning.
    pub(crate) fn char_width(&self, style: Style, c: char, size: f32) -> f32 {
        let face = self.face(style);
        let units_per_em = f32::from(face.font_metrics.units_per_em.max(1));
        let glyph = face.lookup_glyph_index(u32::from(c)).unwrap_or(0);
        f32::from(face.get_horizontal_advance(glyph)) / units_per_em * size
    }

    pub(crate) fn text_width(&self, style: Style, text: &str, size: f32) -> f32 {
        text.chars().map(|c| self.char_width(style, c, size)).sum()
    }

    /// `text` made printable: tabs become spaces, other control characters except `\n` are
    /// dropped, and characters missing from either face are replaced.
    pub(crate) fn printable(&self, text: &str) -> String {
        text.chars()
            .filter_map(|c| match c {
                '\n' => Some('\n'),
                '\t' => Some(' '),
                c if c.is_control() => None,
                c if self.has_glyph(c) => Some(c),
                _ => Some(REPLACEMENT),
            })
            .collect()
    }

    fn has_glyph(&self, c: char) -> bool {
        [&self.regular, &self.bold].iter().all(|face| {
            face.lookup_glyph_index(u32::from(c))
                .is_some_and(|g| g != 0)
        })
    }
}

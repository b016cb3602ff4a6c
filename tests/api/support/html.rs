//! Pages read as a browser reads them: parsed, then queried with CSS selectors, so a
//! test asserts on elements and text, not on how the markup happens to be spelled.

use scraper::{ElementRef, Html, Selector};

pub struct Doc {
    html: Html,
    /// The source, for failure messages.
    pub source: String,
}

fn selector(css: &str) -> Selector {
    Selector::parse(css).unwrap_or_else(|e| panic!("bad selector {css}: {e:?}"))
}

impl Doc {
    pub fn parse(source: &str) -> Doc {
        Doc {
            html: Html::parse_document(source),
            source: source.to_owned(),
        }
    }

    fn all(&self, css: &str) -> Vec<ElementRef<'_>> {
        self.html.select(&selector(css)).collect()
    }

    /// How many elements match.
    pub fn count(&self, css: &str) -> usize {
        self.all(css).len()
    }

    /// The text of each matching element, in document order.
    pub fn texts(&self, css: &str) -> Vec<String> {
        self.all(css)
            .into_iter()
            .map(|e| e.text().collect::<String>())
            .collect()
    }

    /// The text of the first matching element; panics if none matches.
    pub fn select_text(&self, css: &str) -> String {
        self.texts(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {css} in:\n{}", self.source))
    }

    /// All the text a reader sees (the `body`, tags removed).
    pub fn text(&self) -> String {
        self.texts("body").concat()
    }

    /// The attribute of the first matching element (`None`: no such element, or no
    /// such attribute).
    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.all(css)
            .first()
            .and_then(|e| e.value().attr(name))
            .map(str::to_owned)
    }

    /// The attribute of every matching element that has it.
    pub fn attrs(&self, css: &str, name: &str) -> Vec<String> {
        self.all(css)
            .into_iter()
            .filter_map(|e| e.value().attr(name).map(str::to_owned))
            .collect()
    }

    /// No element a page's own markup did not put there: no inline script, no image,
    /// no `on…` handler, no `style` attribute. What an injection would create.
    pub fn assert_no_injected_markup(&self) {
        assert_eq!(
            self.count("script:not([src])"),
            0,
            "inline script:\n{}",
            self.source
        );
        assert_eq!(self.count("img"), 0, "an image element:\n{}", self.source);
        for element in self.all("*") {
            for (name, _) in element.value().attrs() {
                assert!(
                    !name.starts_with("on") && name != "style",
                    "attribute {name} on <{}>:\n{}",
                    element.value().name(),
                    self.source
                );
            }
        }
    }
}

/// All the text a reader sees on a page (or the body as is, when it is not HTML).
pub fn text_of(source: &str) -> String {
    Doc::parse(source).text()
}

//! Values that must never reach a log line in full.

use std::fmt;

/// A secret: `Debug` and `Display` print a mask, so a secret cannot leak into a log
/// through `{:?}` or a derived `Debug` on a struct that holds it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Every call site is a place where the secret leaves the vault; keep them few.
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Secret<String> {
    /// Constant-time comparison, so the time an answer takes tells nothing about how
    /// much of a guessed token was right.
    pub fn matches(&self, candidate: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate.as_bytes())
    }

    /// A hint safe for logs: the length and the first two characters at most.
    pub fn hint(&self) -> String {
        mask(&self.0)
    }
}

/// Constant-time byte comparison (length is not hidden: tokens have public lengths).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Masks a secret for a log line: `ab…(32)`; short values show nothing of themselves.
pub fn mask(value: &str) -> String {
    let len = value.chars().count();
    if len < 12 {
        return format!("***({len})");
    }
    let head: String = value.chars().take(2).collect();
    format!("{head}…({len})")
}

/// Masks the secret part of an inbound webhook URL `https://portal/rest/<user>/<code>/`
/// and the password of a database URL, for logs and `check-config`.
pub fn mask_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return "***".to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    let segments: Vec<String> = url
        .path_segments()
        .map(|s| s.map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(rest) = segments.iter().position(|s| s == "rest")
        && segments.len() > rest + 2
    {
        let mut masked = segments.clone();
        masked[rest + 2] = mask(&segments[rest + 2]);
        url.set_path(&masked.join("/"));
    }
    if url.query().is_some() {
        url.set_query(Some("***"));
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_mask_the_value() {
        let s = Secret::new("super-secret-token".to_owned());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert!(s.matches("super-secret-token"));
        assert!(!s.matches("super-secret-tokeN"));
        assert!(!s.matches(""));
    }

    #[test]
    fn webhook_code_and_db_password_are_masked() {
        let m = mask_url("https://clinic.bitrix24.ru/rest/1/a1b2c3d4e5f6g7h8/");
        assert!(!m.contains("a1b2c3d4e5f6g7h8"), "{m}");
        assert!(m.contains("clinic.bitrix24.ru/rest/1/"), "{m}");
        let m = mask_url("postgres://opros:hunter2hunter2@db:5432/opros");
        assert!(!m.contains("hunter2"), "{m}");
    }
}

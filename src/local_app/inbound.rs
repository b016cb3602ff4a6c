//! The forms our own frame pages post back (the deal tab's and the admin page's
//! buttons): decoded into their structs through the one bounded decoder. Bitrix24's
//! own callbacks are typed in `bitrix24::callback`.

use serde::de::DeserializeOwned;

use crate::bitrix24::callback::log_refusal;
use crate::bitrix24::form;

/// A form body as `T`. A body the decoder refuses reads as empty: the handlers then
/// find no session in it and refuse the request.
pub fn own_form<T: DeserializeOwned + Default>(body: &[u8]) -> T {
    form::decode::<T>(body).unwrap_or_else(|e| {
        log_refusal(&e);
        T::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    struct Buttons {
        #[serde(default, deserialize_with = "form::text")]
        s: Option<String>,
        #[serde(default, deserialize_with = "form::text")]
        job: Option<String>,
    }

    #[test]
    fn own_forms_are_typed_and_a_refused_body_is_empty() {
        let f: Buttons = own_form(b"s=abc&job=12&extra%5Ba%5D=1");
        assert_eq!(f.s.as_deref(), Some("abc"));
        assert_eq!(f.job.as_deref(), Some("12"));
        let deep = format!("s=abc&{}=1", "a".to_owned() + &"[a]".repeat(20));
        let f: Buttons = own_form(deep.as_bytes());
        assert_eq!(f.s, None);
        // Not UTF-8: refused, so no session.
        let f: Buttons = own_form(b"s=\xff\xfe");
        assert_eq!(f.s, None);
    }
}

//! The inbound webhook URL `https://portal/rest/<user>/<code>/` (protocol §5.1).

use std::fmt;
use std::str::FromStr;

use url::Url;

use crate::secret::{Secret, mask_url};

/// A parsed inbound webhook. The code is a password: `Debug` and `Display` mask it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// `https://portal/rest/` — no secret in it.
    rest_base: Url,
    user_id: u32,
    code: Secret<String>,
}

/// Why a webhook URL was rejected (messages for the person who configured it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookUrlError {
    #[error("адрес вебхука не является URL")]
    NotUrl,
    #[error("адрес вебхука должен начинаться с http:// или https://")]
    Scheme,
    #[error("адрес вебхука должен иметь вид https://портал/rest/<id пользователя>/<код>/")]
    Shape,
}

impl WebhookUrl {
    /// The user who created the webhook.
    pub fn user_id(&self) -> u32 {
        self.user_id
    }

    /// `host[:port]` of the portal, the key of its rate-limit bucket.
    pub fn host_key(&self) -> String {
        host_key(&self.rest_base)
    }

    /// The portal's REST base `https://portal/rest/` (no secret).
    pub fn rest_base(&self) -> &Url {
        &self.rest_base
    }

    /// The URL of a method call. It contains the code: use it for the request only,
    /// never log it.
    pub fn endpoint(&self, method: &str) -> Result<Url, url::ParseError> {
        self.rest_base.join(&format!(
            "{}/{}/{method}.json",
            self.user_id,
            self.code.expose()
        ))
    }

    /// The full URL; it contains the code.
    pub fn expose(&self) -> String {
        format!("{}{}/{}/", self.rest_base, self.user_id, self.code.expose())
    }
}

/// `host[:port]` of a URL.
pub(crate) fn host_key(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => String::new(),
    }
}

impl FromStr for WebhookUrl {
    type Err = WebhookUrlError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let url = Url::parse(raw.trim()).map_err(|_| WebhookUrlError::NotUrl)?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(WebhookUrlError::Scheme);
        }
        if url.host_str().is_none() || url.query().is_some() {
            return Err(WebhookUrlError::Shape);
        }
        let segments: Vec<&str> = url
            .path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).collect())
            .unwrap_or_default();
        // The path ends with `rest/<user>/<code>`; a portal may sit under a prefix.
        let [prefix @ .., rest, user, code] = segments.as_slice() else {
            return Err(WebhookUrlError::Shape);
        };
        if *rest != "rest" || code.is_empty() {
            return Err(WebhookUrlError::Shape);
        }
        let user_id = user.parse::<u32>().map_err(|_| WebhookUrlError::Shape)?;
        let mut rest_base = url.clone();
        let mut base_path = String::from("/");
        for p in prefix {
            base_path.push_str(p);
            base_path.push('/');
        }
        base_path.push_str("rest/");
        rest_base.set_path(&base_path);
        rest_base.set_fragment(None);
        Ok(Self {
            rest_base,
            user_id,
            code: Secret::new((*code).to_owned()),
        })
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask_url(&self.expose()))
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_masks() {
        let w: WebhookUrl = "https://clinic.bitrix24.ru/rest/1/a1b2c3d4e5f6g7h8/"
            .parse()
            .expect("valid");
        assert_eq!(w.user_id(), 1);
        assert_eq!(w.host_key(), "clinic.bitrix24.ru");
        assert!(!format!("{w}").contains("a1b2c3d4e5f6g7h8"));
        assert!(!format!("{w:?}").contains("a1b2c3d4e5f6g7h8"));
        assert_eq!(
            w.endpoint("crm.deal.get").expect("url").as_str(),
            "https://clinic.bitrix24.ru/rest/1/a1b2c3d4e5f6g7h8/crm.deal.get.json"
        );
        let no_slash: WebhookUrl = "http://127.0.0.1:8080/rest/7/code".parse().expect("valid");
        assert_eq!(no_slash.rest_base().as_str(), "http://127.0.0.1:8080/rest/");
        assert_eq!(no_slash.host_key(), "127.0.0.1:8080");
    }

    #[test]
    fn rejects_bad_shapes() {
        assert_eq!("nope".parse::<WebhookUrl>(), Err(WebhookUrlError::NotUrl));
        assert_eq!(
            "ftp://x.ru/rest/1/c/".parse::<WebhookUrl>(),
            Err(WebhookUrlError::Scheme)
        );
        assert_eq!(
            "https://x.ru/rest/abc/c/".parse::<WebhookUrl>(),
            Err(WebhookUrlError::Shape)
        );
        assert_eq!(
            "https://x.ru/api/1/c/".parse::<WebhookUrl>(),
            Err(WebhookUrlError::Shape)
        );
    }
}

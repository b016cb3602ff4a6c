//! OAuth refresh (protocol §2.2–§2.5). A plain form POST: Bitrix24's token response
//! has no `token_type` and carries `member_id`/`client_endpoint`, so a generic OAuth2
//! client does not fit.

use chrono::{TimeZone, Utc};
use serde::Deserialize;
use url::Url;

use super::error::B24Error;
use super::types::{ClientConfig, PortalAuth};
use crate::secret::Secret;

/// The documented default OAuth server (`settings/oauth/index.md`).
const DEFAULT_TOKEN_URL: &str = "https://oauth.bitrix.info/oauth/token/";

/// Where to refresh: the configured URL, else `<server_endpoint minus rest/>oauth/token/`
/// (§1: never hard-code the server; the JS SDK derives it the same way in
/// `packages/jssdk/src/oauth/auth.ts`), else the documented default.
pub fn token_url(config: &ClientConfig, auth: &PortalAuth) -> Result<Url, B24Error> {
    if let Some(url) = &config.oauth_url {
        return Ok(url.clone());
    }
    if let Some(server) = &auth.server_endpoint {
        let mut url = server.clone();
        let path = url.path().to_owned();
        let base = path
            .strip_suffix("rest/")
            .or_else(|| path.strip_suffix("rest"));
        if let Some(base) = base {
            url.set_path(&format!("{base}oauth/token/"));
            url.set_query(None);
            return Ok(url);
        }
    }
    Url::parse(DEFAULT_TOKEN_URL).map_err(|e| B24Error::InvalidRequest(e.to_string()))
}

/// The token response (§2.3, fixture `oauth-refresh-response.json`).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    refresh_token: String,
    expires: Option<i64>,
    expires_in: Option<i64>,
    server_endpoint: Option<String>,
    client_endpoint: Option<String>,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
}

/// Exchanges the refresh token for a new pair. The old refresh token is consumed
/// by this call (§2.4), so the caller must persist the result before anything else.
pub(crate) async fn refresh(
    http: &reqwest::Client,
    config: &ClientConfig,
    current: &PortalAuth,
) -> Result<PortalAuth, B24Error> {
    let (Some(client_id), Some(client_secret)) = (&config.client_id, &config.client_secret) else {
        return Err(B24Error::OAuthNotConfigured);
    };
    let url = token_url(config, current)?;
    // POST body, not the documented GET query: keeps the secret out of access logs
    // (JS SDK issue #149, protocol §2.2).
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", client_id.as_str()),
        ("client_secret", client_secret.expose().as_str()),
        ("refresh_token", current.refresh_token.expose().as_str()),
    ];
    let response = http
        .post(url)
        .form(&form)
        .send()
        .await
        .map_err(B24Error::from_reqwest)?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(B24Error::from_reqwest)?;
    if let Ok(err) = serde_json::from_slice::<OAuthErrorBody>(&body) {
        // §2.5: invalid_grant = refresh token expired, used or revoked.
        return Err(match err.error.as_str() {
            "invalid_grant" => B24Error::RefreshRejected,
            "invalid_client" => B24Error::InvalidClient,
            code if status >= 500 => B24Error::Server {
                status,
                code: code.to_owned(),
            },
            code => B24Error::Api {
                status,
                code: code.to_owned(),
                description: "OAuth refresh failed".to_owned(),
            },
        });
    }
    if status >= 500 {
        return Err(B24Error::Server {
            status,
            code: String::new(),
        });
    }
    let parsed: TokenResponse =
        serde_json::from_slice(&body).map_err(|e| B24Error::InvalidResponse {
            status,
            message: format!("token response: {e}"),
        })?;
    let now = Utc::now();
    let expires_at = match (parsed.expires, parsed.expires_in) {
        (_, Some(secs)) => now + chrono::Duration::seconds(secs),
        (Some(unix), None) => Utc.timestamp_opt(unix, 0).single().unwrap_or(now),
        (None, None) => now + chrono::Duration::seconds(3600),
    };
    let client_endpoint = parsed
        .client_endpoint
        .as_deref()
        .and_then(|s| Url::parse(s).ok())
        .unwrap_or_else(|| current.client_endpoint.clone());
    let server_endpoint = parsed
        .server_endpoint
        .as_deref()
        .and_then(|s| Url::parse(s).ok())
        .or_else(|| current.server_endpoint.clone());
    Ok(PortalAuth {
        client_endpoint,
        server_endpoint,
        access_token: Secret::new(parsed.access_token),
        refresh_token: Secret::new(parsed.refresh_token),
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(server: Option<&str>) -> PortalAuth {
        PortalAuth {
            client_endpoint: Url::parse("https://clinic.bitrix24.ru/rest/").expect("url"),
            server_endpoint: server.map(|s| Url::parse(s).expect("url")),
            access_token: Secret::new("a".into()),
            refresh_token: Secret::new("r".into()),
            expires_at: Utc::now(),
        }
    }

    #[test]
    fn token_url_is_derived_from_server_endpoint() {
        let config = ClientConfig::default();
        assert_eq!(
            token_url(&config, &auth(Some("https://oauth.bitrix24.tech/rest/")))
                .expect("url")
                .as_str(),
            "https://oauth.bitrix24.tech/oauth/token/"
        );
        assert_eq!(
            token_url(&config, &auth(None)).expect("url").as_str(),
            "https://oauth.bitrix.info/oauth/token/"
        );
        let explicit = ClientConfig {
            oauth_url: Some(Url::parse("http://127.0.0.1:9/oauth/token/").expect("url")),
            ..ClientConfig::default()
        };
        assert_eq!(
            token_url(&explicit, &auth(Some("https://oauth.bitrix24.tech/rest/")))
                .expect("url")
                .as_str(),
            "http://127.0.0.1:9/oauth/token/"
        );
    }
}

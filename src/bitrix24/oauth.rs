//! OAuth refresh (protocol §2.2–§2.5) through the `oauth2` crate. Bitrix24's token
//! answer is not quite RFC 6749: it has no `token_type` and adds where the portal
//! lives (`client_endpoint`, `server_endpoint`), so it gets a response type of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AccessToken, AsyncHttpClient, AuthType, Client, ClientId, ClientSecret, EndpointNotSet,
    EndpointSet, HttpRequest, HttpResponse, RefreshToken, RequestTokenError, Scope,
    StandardRevocableToken, TokenUrl,
};
use serde::{Deserialize, Serialize};
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
#[derive(Debug, Deserialize, Serialize)]
struct B24TokenResponse {
    access_token: AccessToken,
    refresh_token: RefreshToken,
    /// Never sent; the tokens are bearer tokens of the `auth` parameter.
    #[serde(skip, default = "bearer")]
    token_type: BasicTokenType,
    expires: Option<i64>,
    expires_in: Option<u64>,
    server_endpoint: Option<String>,
    client_endpoint: Option<String>,
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

impl oauth2::TokenResponse for B24TokenResponse {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }
    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.map(Duration::from_secs)
    }
    fn refresh_token(&self) -> Option<&RefreshToken> {
        Some(&self.refresh_token)
    }
    /// Bitrix24 lists scopes with commas (`crm,bizproc`), not RFC 6749's spaces;
    /// the refresh keeps whatever the portal granted, so they are not read.
    fn scopes(&self) -> Option<&Vec<Scope>> {
        None
    }
}

type OAuthClient = Client<
    BasicErrorResponse,
    B24TokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The crate's requests go through the service's HTTP client (its timeout, no
/// redirects), and the status is noted, which the crate's errors do not carry.
struct Transport<'a> {
    http: &'a reqwest::Client,
    status: AtomicU16,
}

impl<'c> AsyncHttpClient<'c> for Transport<'_> {
    type Error = B24Error;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, B24Error>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(send(self.http, &self.status, request))
    }
}

async fn send(
    http: &reqwest::Client,
    status: &AtomicU16,
    request: HttpRequest,
) -> Result<HttpResponse, B24Error> {
    let (parts, body) = request.into_parts();
    let response = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(B24Error::from_reqwest)?;
    status.store(response.status().as_u16(), Ordering::Relaxed);
    let mut answer = oauth2::http::Response::builder().status(response.status());
    if let Some(headers) = answer.headers_mut() {
        *headers = response.headers().clone();
    }
    let body = super::body::read_capped(response, super::body::MAX_BODY).await?;
    if let Some(headers) = answer.headers_mut() {
        label_json(headers, &body);
    }
    answer
        .body(body.to_vec())
        .map_err(|e| B24Error::InvalidResponse {
            status: status.load(Ordering::Relaxed),
            message: e.to_string(),
        })
}

/// The crate refuses JSON labelled otherwise (a proxy's `text/html`, say). A pair in
/// such an answer is already issued and the old one used up, so it must be read.
fn label_json(headers: &mut oauth2::http::HeaderMap, body: &[u8]) {
    if body.trim_ascii_start().starts_with(b"{") {
        headers.insert(
            oauth2::http::header::CONTENT_TYPE,
            oauth2::http::HeaderValue::from_static("application/json"),
        );
    }
}

/// §2.5: `invalid_grant` = the refresh token expired, was used or was revoked.
fn oauth_error(status: u16, code: &str) -> B24Error {
    match code {
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
    }
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
}

fn refresh_error(status: u16, err: RequestTokenError<B24Error, BasicErrorResponse>) -> B24Error {
    match err {
        RequestTokenError::Request(err) => err,
        RequestTokenError::ServerResponse(body) => match body.error() {
            BasicErrorResponseType::Extension(code) => oauth_error(status, code),
            known => oauth_error(status, known.as_ref()),
        },
        // An error body with 200 does not parse as tokens.
        RequestTokenError::Parse(_, body)
            if let Ok(err) = serde_json::from_slice::<OAuthErrorBody>(&body) =>
        {
            oauth_error(status, &err.error)
        }
        _ if status >= 500 => B24Error::Server {
            status,
            code: String::new(),
        },
        RequestTokenError::Parse(err, _) => B24Error::InvalidResponse {
            status,
            message: format!("token response: {err}"),
        },
        RequestTokenError::Other(message) => B24Error::InvalidResponse { status, message },
    }
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
    let client: OAuthClient = Client::new(ClientId::new(client_id.clone()))
        .set_client_secret(ClientSecret::new(client_secret.expose().clone()))
        // The id and secret go in the POST body, as Bitrix24 reads them (§2.2); the
        // body rather than the documented GET query keeps the secret out of access
        // logs (JS SDK issue #149).
        .set_auth_type(AuthType::RequestBody)
        .set_token_uri(TokenUrl::from_url(token_url(config, current)?));
    let transport = Transport {
        http,
        status: AtomicU16::new(0),
    };
    let refresh_token = RefreshToken::new(current.refresh_token.expose().clone());
    let parsed = client
        .exchange_refresh_token(&refresh_token)
        .request_async(&transport)
        .await
        .map_err(|err| refresh_error(transport.status.load(Ordering::Relaxed), err))?;
    let now = Utc::now();
    let expires_at = match (parsed.expires, parsed.expires_in) {
        (_, Some(secs)) => now + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(3600)),
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
        access_token: Secret::new(parsed.access_token.into_secret()),
        refresh_token: Secret::new(parsed.refresh_token.into_secret()),
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
    fn json_bodies_are_labelled_json() {
        use oauth2::http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        label_json(&mut headers, b"<html>502</html>");
        assert_eq!(headers[CONTENT_TYPE], "text/html");
        label_json(&mut headers, b" {\"access_token\":\"a\"}");
        assert_eq!(headers[CONTENT_TYPE], "application/json");
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

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

use super::error::{B24Error, remote_text};
use super::types::{ClientConfig, PortalAuth};
use crate::secret::Secret;

/// The documented default OAuth server (`settings/oauth/index.md`).
const DEFAULT_TOKEN_URL: &str = "https://oauth.bitrix.info/oauth/token/";

/// Bitrix24's own OAuth servers (protocol §1; automation §A8: the PHP SDK knows these
/// two and nothing else). `client_secret` goes "only in requests to the
/// authorization server", so a `server_endpoint` naming any other host is ignored.
const BITRIX_OAUTH_HOSTS: [&str; 2] = ["oauth.bitrix.info", "oauth.bitrix24.tech"];

/// Whether a `server_endpoint` names one of Bitrix24's OAuth servers over https on
/// the default port.
pub fn is_bitrix_oauth_server(url: &Url) -> bool {
    url.scheme() == "https"
        && url.port().is_none()
        && url
            .host_str()
            .is_some_and(|h| BITRIX_OAUTH_HOSTS.contains(&h))
}

/// Where to refresh (CONTRACT "Trust rules"): `B24_OAUTH_URL` when set, always.
/// Otherwise the `server_endpoint` named by the portal or a request only when it is
/// one of Bitrix24's OAuth servers (the Russian cloud is served by
/// `oauth.bitrix24.tech`, §1), else the documented default. The URL is rebuilt from
/// the host alone, so nothing else of a request's value travels along.
pub fn token_url(config: &ClientConfig, server_endpoint: Option<&Url>) -> Result<Url, B24Error> {
    if let Some(url) = &config.oauth_url {
        return Ok(url.clone());
    }
    let url = match server_endpoint
        .filter(|u| is_bitrix_oauth_server(u))
        .and_then(Url::host_str)
    {
        Some(host) => format!("https://{host}/oauth/token/"),
        None => DEFAULT_TOKEN_URL.to_owned(),
    };
    Url::parse(&url).map_err(|e| B24Error::InvalidRequest(e.to_string()))
}

/// A portal's REST base as a token answer names it (`client_endpoint`, §2.3): an
/// http(s) URL with a host and nothing else that could redirect a call (no user
/// info, query or fragment), ending in `/` so that methods join onto it.
pub fn rest_endpoint(raw: &str) -> Option<Url> {
    let mut url = Url::parse(raw.trim()).ok()?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none();
    if !plain {
        return None;
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Some(url)
}

/// What the OAuth server vouches for when it accepts a refresh token: whose portal
/// the token belongs to and where that portal lives (§2.3). A portal's identity is
/// taken from here, never from what an install POST or an event claims.
#[derive(Debug)]
pub struct Vouched {
    pub member_id: String,
    /// `client_endpoint` of the answer; its host is the portal's domain.
    pub auth: PortalAuth,
    pub scope: Option<String>,
    pub user_id: Option<i64>,
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
    member_id: Option<String>,
    /// An integer in the docs' example; read whatever its type.
    user_id: Option<serde_json::Value>,
    scope: Option<String>,
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
            code: remote_text(code),
        },
        code => B24Error::Api {
            status,
            code: remote_text(code),
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

/// One refresh at `url`. The refresh token is consumed by this call (§2.4), so the
/// caller must persist the result before anything else.
async fn exchange(
    http: &reqwest::Client,
    config: &ClientConfig,
    url: Url,
    refresh_token: &Secret<String>,
) -> Result<B24TokenResponse, B24Error> {
    let (Some(client_id), Some(client_secret)) = (&config.client_id, &config.client_secret) else {
        return Err(B24Error::OAuthNotConfigured);
    };
    let client: OAuthClient = Client::new(ClientId::new(client_id.clone()))
        .set_client_secret(ClientSecret::new(client_secret.expose().clone()))
        // The id and secret go in the POST body, as Bitrix24 reads them (§2.2); the
        // body rather than the documented GET query keeps the secret out of access
        // logs (JS SDK issue #149).
        .set_auth_type(AuthType::RequestBody)
        .set_token_uri(TokenUrl::from_url(url));
    let transport = Transport {
        http,
        status: AtomicU16::new(0),
    };
    let refresh_token = RefreshToken::new(refresh_token.expose().clone());
    client
        .exchange_refresh_token(&refresh_token)
        .request_async(&transport)
        .await
        .map_err(|err| refresh_error(transport.status.load(Ordering::Relaxed), err))
}

fn expiry(parsed: &B24TokenResponse) -> chrono::DateTime<Utc> {
    let now = Utc::now();
    match (parsed.expires, parsed.expires_in) {
        (_, Some(secs)) => now + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(3600)),
        (Some(unix), None) => Utc.timestamp_opt(unix, 0).single().unwrap_or(now),
        (None, None) => now + chrono::Duration::seconds(3600),
    }
}

/// The answer's `server_endpoint`, kept only when it is one of Bitrix24's OAuth
/// servers: it may choose the token URL later (when `B24_OAUTH_URL` is unset).
fn answered_server(parsed: &B24TokenResponse) -> Option<Url> {
    parsed
        .server_endpoint
        .as_deref()
        .and_then(|s| Url::parse(s).ok())
        .filter(is_bitrix_oauth_server)
}

fn foreign_answer(message: &str) -> B24Error {
    B24Error::InvalidResponse {
        status: 200,
        message: message.to_owned(),
    }
}

/// Exchanges a stored portal's refresh token for a new pair at the trusted token URL.
/// The answer comes from the trusted server, so a new `client_endpoint` in it is a
/// move it confirms; an answer about another portal is refused and nothing of it
/// is returned for saving.
pub(crate) async fn refresh(
    http: &reqwest::Client,
    config: &ClientConfig,
    member_id: &str,
    current: &PortalAuth,
) -> Result<PortalAuth, B24Error> {
    let url = token_url(config, current.server_endpoint.as_ref())?;
    let parsed = exchange(http, config, url, &current.refresh_token).await?;
    if parsed
        .member_id
        .as_deref()
        .is_some_and(|m| !m.eq_ignore_ascii_case(member_id))
    {
        return Err(foreign_answer("token answer names another portal"));
    }
    let expires_at = expiry(&parsed);
    let client_endpoint = parsed
        .client_endpoint
        .as_deref()
        .and_then(rest_endpoint)
        .unwrap_or_else(|| current.client_endpoint.clone());
    let server_endpoint = answered_server(&parsed).or_else(|| current.server_endpoint.clone());
    Ok(PortalAuth {
        client_endpoint,
        server_endpoint,
        access_token: Secret::new(parsed.access_token.into_secret()),
        refresh_token: Secret::new(parsed.refresh_token.into_secret()),
        expires_at,
    })
}

/// Asks the trusted OAuth server who an offered refresh token belongs to (install,
/// `ONAPPINSTALL`): its answer must name the portal (`member_id`) and where it lives
/// (`client_endpoint`). The offered token is used up; the returned pair replaces it.
/// `server_endpoint` is what the request named: it is used only as [`token_url`]
/// allows.
pub(crate) async fn vouch(
    http: &reqwest::Client,
    config: &ClientConfig,
    server_endpoint: Option<&Url>,
    refresh_token: &Secret<String>,
) -> Result<Vouched, B24Error> {
    let url = token_url(config, server_endpoint)?;
    let parsed = exchange(http, config, url, refresh_token).await?;
    let member_id = parsed
        .member_id
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| foreign_answer("token answer names no member_id"))?;
    let client_endpoint = parsed
        .client_endpoint
        .as_deref()
        .and_then(rest_endpoint)
        .ok_or_else(|| foreign_answer("token answer names no usable client_endpoint"))?;
    let user_id = parsed.user_id.as_ref().and_then(|v| match v {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    });
    Ok(Vouched {
        member_id,
        scope: parsed.scope.clone(),
        user_id,
        auth: PortalAuth {
            client_endpoint,
            server_endpoint: answered_server(&parsed),
            expires_at: expiry(&parsed),
            access_token: Secret::new(parsed.access_token.into_secret()),
            refresh_token: Secret::new(parsed.refresh_token.into_secret()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn token_url_trusts_only_bitrix_oauth_servers() {
        let config = ClientConfig::default();
        let derived = |server: &str| {
            token_url(&config, Some(&url(server)))
                .expect("url")
                .to_string()
        };
        assert_eq!(
            derived("https://oauth.bitrix24.tech/rest/"),
            "https://oauth.bitrix24.tech/oauth/token/"
        );
        assert_eq!(
            derived("https://oauth.bitrix.info/rest/"),
            "https://oauth.bitrix.info/oauth/token/"
        );
        assert_eq!(
            token_url(&config, None).expect("url").as_str(),
            DEFAULT_TOKEN_URL
        );
        // Any other host, plain http, another port or a look-alike: the default.
        for evil in [
            "https://evil.example/rest/",
            "http://oauth.bitrix.info/rest/",
            "https://oauth.bitrix.info:8443/rest/",
            "https://oauth.bitrix.info.evil.example/rest/",
            "https://user@evil.example/rest/",
            "http://127.0.0.1:9/rest/",
        ] {
            assert_eq!(derived(evil), DEFAULT_TOKEN_URL, "{evil}");
        }
        let explicit = ClientConfig {
            oauth_url: Some(url("http://127.0.0.1:9/oauth/token/")),
            ..ClientConfig::default()
        };
        assert_eq!(
            token_url(&explicit, Some(&url("https://oauth.bitrix24.tech/rest/")))
                .expect("url")
                .as_str(),
            "http://127.0.0.1:9/oauth/token/"
        );
    }

    #[test]
    fn rest_endpoints_are_plain_http_bases() {
        assert_eq!(
            rest_endpoint("https://clinic.bitrix24.ru/rest")
                .expect("endpoint")
                .as_str(),
            "https://clinic.bitrix24.ru/rest/"
        );
        assert!(rest_endpoint("http://127.0.0.1:8080/rest/").is_some());
        for bad in [
            "ftp://clinic.bitrix24.ru/rest/",
            "https://user:pw@clinic.bitrix24.ru/rest/",
            "https://clinic.bitrix24.ru/rest/?x=1",
            "https://clinic.bitrix24.ru/rest/#x",
            "not a url",
        ] {
            assert!(rest_endpoint(bad).is_none(), "{bad}");
        }
    }
}

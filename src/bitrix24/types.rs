//! Values exchanged with the client: who to call, with which tokens, what came back.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::error::{B24Error, StoreError};
use super::rate_limit::RateLimit;
use super::webhook_url::{WebhookUrl, host_key};
use crate::secret::Secret;

/// OAuth tokens of an installed portal (protocol §2).
#[derive(Debug, Clone, PartialEq)]
pub struct PortalAuth {
    /// `https://clinic.bitrix24.ru/rest/` — where REST calls go.
    pub client_endpoint: Url,
    /// `https://oauth.bitrix24.tech/rest/` — the OAuth server's REST base; the token
    /// URL is derived from it (§1).
    pub server_endpoint: Option<Url>,
    pub access_token: Secret<String>,
    pub refresh_token: Secret<String>,
    pub expires_at: DateTime<Utc>,
}

/// Persistent storage of portal tokens, implemented by the database layer.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Tokens of an installed portal by member_id; None = unknown or uninstalled.
    async fn load(&self, member_id: &str) -> Result<Option<PortalAuth>, StoreError>;
    /// Persists a refreshed pair. Called before the new access token is used by anyone.
    async fn save(&self, member_id: &str, auth: &PortalAuth) -> Result<(), StoreError>;
    /// Exclusive access to the portal's tokens for a refresh, against other
    /// processes sharing this store; the lock ends when the returned value is saved,
    /// released or dropped. The client already refreshes one at a time within a
    /// process, so a store only one process uses needs no lock: the default reads
    /// and writes through `load` and `save`.
    async fn lock_refresh<'a>(
        &'a self,
        member_id: &'a str,
    ) -> Result<Box<dyn RefreshLock + 'a>, StoreError> {
        Ok(unshared_refresh(self, member_id))
    }
}

/// The refresh "lock" of a store no other process uses: plain `load` and `save`.
pub fn unshared_refresh<'a, S: TokenStore + ?Sized>(
    store: &'a S,
    member_id: &'a str,
) -> Box<dyn RefreshLock + 'a> {
    Box::new(Unlocked { store, member_id })
}

/// A portal's tokens held for a refresh; see [`TokenStore::lock_refresh`]. Reads and
/// writes go through the lock's own connection, so a refresh needs no second one.
#[async_trait]
pub trait RefreshLock: Send {
    /// The stored pair, as it is now that no one else may refresh it.
    async fn load(&mut self) -> Result<Option<PortalAuth>, StoreError>;
    /// Stores the new pair and ends the lock.
    async fn save(self: Box<Self>, auth: &PortalAuth) -> Result<(), StoreError>;
    /// Ends the lock without a change.
    async fn release(self: Box<Self>) -> Result<(), StoreError>;
}

struct Unlocked<'a, S: ?Sized> {
    store: &'a S,
    member_id: &'a str,
}

#[async_trait]
impl<S: TokenStore + ?Sized> RefreshLock for Unlocked<'_, S> {
    async fn load(&mut self) -> Result<Option<PortalAuth>, StoreError> {
        self.store.load(self.member_id).await
    }

    async fn save(self: Box<Self>, auth: &PortalAuth) -> Result<(), StoreError> {
        self.store.save(self.member_id, auth).await
    }

    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Whom a call is made as.
#[derive(Debug, Clone)]
pub enum Target {
    /// An installed OAuth portal: tokens from the store, refreshed on expiry.
    Portal { member_id: String },
    /// An inbound webhook `https://portal/rest/<user>/<code>/` (no auth parameter).
    Webhook(WebhookUrl),
    /// One-off calls with a user's token (deal tab, install check): never refreshed,
    /// never stored.
    UserToken {
        endpoint: Url,
        access_token: Secret<String>,
    },
}

impl Target {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Portal { .. } => "portal",
            Target::Webhook(_) => "webhook",
            Target::UserToken { .. } => "user_token",
        }
    }

    /// The operating budget is kept per application or per webhook (§10.2).
    pub(crate) fn budget_key(&self, host: &str) -> String {
        match self {
            Target::Webhook(w) => format!("hook:{host}/{}", w.user_id()),
            _ => format!("app:{host}"),
        }
    }

    pub(crate) fn endpoint_host(endpoint: &Url) -> String {
        host_key(endpoint)
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub client_id: Option<String>,
    pub client_secret: Option<Secret<String>>,
    /// Explicit token URL (`B24_OAUTH_URL`), used always when set. Otherwise the
    /// portal's `server_endpoint` only when it is `oauth.bitrix.info` or
    /// `oauth.bitrix24.tech` over https, else `https://oauth.bitrix.info/oauth/token/`
    /// (see `oauth::token_url`).
    pub oauth_url: Option<Url>,
    /// The portal's request budget, mirrored on our side.
    pub rate: RateLimit,
    /// Per HTTP request; the cloud stops a request at 60 s (§9).
    pub request_timeout: Duration,
    /// Retries of network errors, timeouts, 5xx and `QUERY_LIMIT_EXCEEDED`.
    pub max_retries: u32,
    /// A method's run-time budget per 10 minutes (§10.2: 480 s in the cloud).
    pub operating_limit: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            client_id: None,
            client_secret: None,
            oauth_url: None,
            rate: RateLimit::default(),
            request_timeout: Duration::from_secs(60),
            max_retries: 3,
            operating_limit: Duration::from_secs(480),
        }
    }
}

/// The `time` block of a response (§9); keys vary, so all are optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct TimeInfo {
    pub start: Option<f64>,
    pub finish: Option<f64>,
    pub duration: Option<f64>,
    pub processing: Option<f64>,
    pub date_start: Option<String>,
    pub date_finish: Option<String>,
    /// Seconds of execution accumulated for this method in the last 10 minutes.
    pub operating: Option<f64>,
    /// Unix time when the oldest basket of the operating budget drops out.
    pub operating_reset_at: Option<i64>,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub struct B24Response {
    pub result: Value,
    /// List methods: the total number of records.
    pub total: Option<u64>,
    /// List methods: the `start` of the next page, when there is one.
    pub next: Option<u64>,
    pub time: Option<TimeInfo>,
}

/// One command of a `batch`.
#[derive(Debug, Clone)]
pub struct BatchCommand {
    /// Unique within the batch; referenced as `$result[<name>][FIELD]`.
    pub name: String,
    pub method: String,
    pub params: Value,
}

impl BatchCommand {
    pub fn new(name: impl Into<String>, method: impl Into<String>, params: Value) -> Self {
        Self {
            name: name.into(),
            method: method.into(),
            params,
        }
    }
}

/// The outcome of one batch command, in the order the commands were given.
#[derive(Debug, Clone)]
pub struct BatchOutcome {
    pub name: String,
    pub result: Result<Value, B24Error>,
}

/// A field of a Bitrix24 record regardless of key case (lists come lower-case from
/// some methods, upper-case from others).
pub fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// A Bitrix24 yes/no flag: `true`, `"Y"`, `"true"`, `"1"` or `1` (`ADMIN`, `user.admin`).
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.as_str(), "true" | "Y" | "1"),
        Value::Number(n) => n.as_i64() == Some(1),
        _ => false,
    }
}

/// The `profile` method's answer: who the token belongs to (protocol §11, fixture
/// `profile.json`). An inactive user gets an empty answer, which reads as nobody.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Profile {
    #[serde(rename = "ID", default, deserialize_with = "super::form::text")]
    pub id: Option<String>,
    /// Equals `user.admin` (§11); absent on some portals.
    #[serde(rename = "ADMIN", default)]
    pub admin: Option<Value>,
    #[serde(rename = "NAME", default, deserialize_with = "super::form::text")]
    pub name: Option<String>,
    #[serde(rename = "LAST_NAME", default, deserialize_with = "super::form::text")]
    pub last_name: Option<String>,
}

impl Profile {
    /// Reads an answer; anything but an object of these fields is nobody's profile.
    pub fn from_answer(answer: &Value) -> Self {
        serde_json::from_value(answer.clone()).unwrap_or_default()
    }

    /// The user's id, if a positive number.
    pub fn user_id(&self) -> Option<i64> {
        self.id
            .as_deref()
            .and_then(|id| id.parse::<i64>().ok())
            .filter(|id| *id > 0)
    }

    /// «Игорь Воронцов».
    pub fn full_name(&self) -> String {
        [self.name.as_deref(), self.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

//! An in-process Bitrix24 portal over real HTTP on loopback, written from
//! `bitrix24-protocol.md` (§14 is its checklist). It serves the portal's REST API
//! (`/rest/<method>`, `/rest/<user>/<code>/<method>`) and its OAuth server
//! (`/oauth/token/`) on one port, keeps CRM data and registrations, records every
//! call, takes injected faults, and sends what Bitrix24 sends to the service.

mod automation;
mod batch;
mod methods;
mod outbound;
mod server;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};
use url::Url;

use crate::bitrix24::PortalAuth;
use crate::secret::Secret;
pub use automation::{Activity, Document, Notification, OWNER_DEAL, OWNER_LEAD};
pub use state::AuthKind;
use state::{State, iso_now};

/// Settings of a fake portal.
#[derive(Debug, Clone)]
pub struct FakePortalConfig {
    pub client_id: String,
    pub client_secret: String,
    pub member_id: String,
    /// Leaky bucket (per second, burst), §10.1. Generous by default.
    pub rate: (f64, u32),
    /// Access token lifetime, §2.1.
    pub token_ttl: Duration,
    /// Operating budget per method and 10 minutes, §10.2.
    pub operating_limit_secs: f64,
    pub webhook_user_id: u32,
    pub webhook_code: String,
}

impl Default for FakePortalConfig {
    fn default() -> Self {
        Self {
            client_id: "local.6651f0a2c3b4d5.38291745".into(),
            client_secret: "fake-client-secret-0123456789".into(),
            member_id: "4f2a9c1e7b3d5a6f8e0c2b4d6a8f1e3c".into(),
            rate: (1000.0, 1000),
            token_ttl: Duration::from_secs(3600),
            operating_limit_secs: 480.0,
            webhook_user_id: 1,
            webhook_code: "a1b2c3d4e5f6g7h8".into(),
        }
    }
}

/// A fault injected into the next calls of a method (`fail_next`).
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// 503 `QUERY_LIMIT_EXCEEDED`.
    QueryLimit,
    /// 401 `expired_token`.
    ExpiredToken,
    /// 401 `invalid_token`.
    InvalidToken,
    /// 429 `OPERATION_TIME_LIMIT`.
    OperationTimeLimit,
    /// This status with a non-JSON body, as a proxy answers.
    Status(u16),
    /// Any error body.
    Error {
        status: u16,
        code: String,
        description: String,
    },
    /// Waits, then answers normally.
    Delay(Duration),
    /// Sends the status line, then breaks the connection.
    DropConnection,
    /// Carries the call out, then answers this status with a non-JSON body, as a
    /// proxy does when the portal behind it was slow or its answer got lost.
    /// Protocol §9/§10: a 5xx says nothing about whether the call ran.
    ProcessThenStatus(u16),
    /// Carries the call out, then holds the answer back this long (past the
    /// client's timeout): the caller cannot tell it from a call that never ran.
    ProcessThenHang(Duration),
}

/// What the portal answers our stale tokens after the app was deleted (§7.3 says
/// 401 / `invalid_grant`; §10 lists `NO_AUTH_FOUND` for a wrong token and
/// `PORTAL_DELETED` for a portal that is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UninstalledAnswer {
    /// REST calls `401 invalid_token`, refresh `invalid_grant` (§7.3).
    #[default]
    InvalidToken,
    /// REST calls `401 NO_AUTH_FOUND`, refresh `invalid_grant`.
    NoAuthFound,
    /// REST calls `500 PORTAL_DELETED`, refresh `invalid_grant`.
    PortalDeleted,
    /// REST calls `401 invalid_token`, refresh `401 invalid_client` (an OAuth server
    /// that no longer knows the app; never proof, since a mistyped secret says the
    /// same).
    InvalidClient,
}

impl Fault {
    /// An error body with this status, code and description.
    pub fn error(status: u16, code: &str, description: &str) -> Self {
        Fault::Error {
            status,
            code: code.to_owned(),
            description: description.to_owned(),
        }
    }
}

/// One REST call as the portal saw it.
#[derive(Debug, Clone)]
pub struct RecordedCall {
    /// Lower-case method name without `.json`.
    pub method: String,
    /// Decoded parameters without `auth`.
    pub params: Value,
    pub auth: AuthKind,
    pub status: u16,
    /// The `error` code of a failed call (`"fault"` for an injected fault).
    pub error: Option<String>,
    /// A command run inside `batch`.
    pub via_batch: bool,
    pub at: Instant,
}

impl RecordedCall {
    pub(crate) fn new(
        method: &str,
        params: Value,
        auth: AuthKind,
        status: u16,
        error: Option<String>,
        via_batch: bool,
    ) -> Self {
        Self {
            method: method.to_owned(),
            params,
            auth,
            status,
            error,
            via_batch,
            at: Instant::now(),
        }
    }
}

/// A comment added with `crm.timeline.comment.add`, files decoded.
#[derive(Debug, Clone)]
pub struct TimelineComment {
    pub id: u64,
    pub entity_type: String,
    pub entity_id: u64,
    pub comment: String,
    pub files: Vec<(String, Vec<u8>)>,
    pub author_id: Option<u32>,
}

/// Every fake portal of this process. Bitrix24 runs one OAuth server for all portals
/// of a region (protocol §1: `oauth.bitrix.info`, `oauth.bitrix24.tech`), so the
/// service configures one `B24_OAUTH_URL` for every clinic it serves; here, a refresh
/// token issued by any fake portal is refreshed by whichever fake's `/oauth/token/`
/// is asked, and the answer names the portal the token belongs to.
static PORTALS: Mutex<Vec<std::sync::Weak<Shared>>> = Mutex::new(Vec::new());

fn register(shared: &Arc<Shared>) {
    let mut all = PORTALS.lock().unwrap_or_else(PoisonError::into_inner);
    all.retain(|p| p.strong_count() > 0);
    all.push(Arc::downgrade(shared));
}

/// The fake portal (of this process) that issued `refresh_token`, if any.
pub(crate) fn owner_of_refresh(refresh_token: &str) -> Option<Arc<Shared>> {
    let all = PORTALS.lock().unwrap_or_else(PoisonError::into_inner);
    all.iter()
        .filter_map(std::sync::Weak::upgrade)
        .find(|p| p.lock().refresh_tokens.contains_key(refresh_token))
}

pub(crate) struct Shared {
    state: Mutex<State>,
    base_url: Url,
    domain: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The portal's `host[:port]`: the server's own unless the portal moved
    /// ([`FakePortal::move_to`]).
    fn portal_domain(&self, state: &State) -> String {
        state
            .portal_host
            .clone()
            .unwrap_or_else(|| self.domain.clone())
    }

    /// `http://<portal domain>/rest/`, the portal's `client_endpoint` (§2.3).
    fn portal_endpoint(&self, state: &State) -> String {
        format!("http://{}/rest/", self.portal_domain(state))
    }

    /// `http://127.0.0.1:<port>/rest/`: the OAuth server's `server_endpoint` (§1),
    /// which stays where the server is when the portal moves.
    fn server_endpoint(&self) -> String {
        format!("{}rest/", self.base_url)
    }
}

/// A running fake portal; the server stops when this is dropped.
pub struct FakePortal {
    shared: Arc<Shared>,
    http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakePortal {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Test-support failures (the fake portal itself never panics on requests).
#[derive(Debug, thiserror::Error)]
pub enum FakePortalError {
    #[error("cannot start the fake portal: {0}")]
    Start(std::io::Error),
    #[error("nothing to deliver: {0}")]
    NotBound(String),
    #[error("delivery failed: {0}")]
    Http(#[from] reqwest::Error),
}

impl FakePortal {
    /// Starts a portal on `127.0.0.1:0`.
    pub async fn start(cfg: FakePortalConfig) -> Result<FakePortal, FakePortalError> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(FakePortalError::Start)?;
        let addr = listener.local_addr().map_err(FakePortalError::Start)?;
        let acceptor =
            poem::listener::TcpAcceptor::from_tokio(listener).map_err(FakePortalError::Start)?;
        let domain = format!("127.0.0.1:{}", addr.port());
        let base_url = Url::parse(&format!("http://{domain}/"))
            .map_err(|e| FakePortalError::Start(std::io::Error::other(e)))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(cfg)),
            base_url,
            domain,
        });
        register(&shared);
        let for_server = shared.clone();
        let endpoint = poem::endpoint::make(move |req| {
            let shared = for_server.clone();
            async move { server::handle(shared, req).await }
        });
        let server = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor)
                .run(endpoint)
                .await;
        });
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(FakePortal {
            shared,
            http,
            server,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// `http://127.0.0.1:<port>/`.
    pub fn base_url(&self) -> Url {
        self.shared.base_url.clone()
    }

    /// `127.0.0.1:<port>` — what Bitrix24 sends as `DOMAIN` (§3.2).
    pub fn domain(&self) -> String {
        let state = self.state();
        self.shared.portal_domain(&state)
    }

    /// `http://127.0.0.1:<port>/oauth/token/`: this portal's OAuth server, what the
    /// service is given as `B24_OAUTH_URL`.
    pub fn token_url(&self) -> String {
        format!("{}oauth/token/", self.shared.base_url)
    }

    /// `http://127.0.0.1:<port>/rest/`: what Bitrix24 sends as `SERVER_ENDPOINT`.
    pub fn server_endpoint(&self) -> String {
        self.shared.server_endpoint()
    }

    /// The portal gets a new address (a renamed portal keeps its `member_id`): from
    /// now on its pages send `DOMAIN=<host>` and the OAuth server answers
    /// `client_endpoint=http://<host>/rest/`. `host` must reach this same server
    /// (`localhost:<port>`).
    pub fn move_to(&self, host: &str) {
        self.state().portal_host = Some(host.to_owned());
    }

    /// `app.info` names this `CODE` instead of the configured client id.
    pub fn set_app_code(&self, code: &str) {
        self.state().app_code = Some(code.to_owned());
    }

    /// The app was deleted and its `ONAPPUNINSTALL` never reached the service, then
    /// an admin installed it again (§3.4, §7.3): every old token is dead, the
    /// registrations are gone and the new installation has a new application token.
    pub fn reinstall_after_lost_uninstall(&self) {
        let mut state = self.state();
        state.tokens.clear();
        for entry in state.refresh_tokens.values_mut() {
            entry.used = true;
        }
        state.events.clear();
        state.placements.clear();
        state.robots.clear();
        state.installed = false;
        state.application_token = state::random_hex(16);
    }

    pub fn member_id(&self) -> String {
        self.state().cfg.member_id.clone()
    }

    pub fn client_id(&self) -> String {
        self.state().cfg.client_id.clone()
    }

    pub fn client_secret(&self) -> String {
        self.state().cfg.client_secret.clone()
    }

    /// `http://127.0.0.1:<port>/rest/`: REST base and `server_endpoint` alike, so the
    /// token URL derived from it (§1) is this portal's `/oauth/token/`.
    pub fn client_endpoint(&self) -> Url {
        let endpoint = {
            let state = self.state();
            self.shared.portal_endpoint(&state)
        };
        Url::parse(&endpoint).unwrap_or_else(|_| self.base_url())
    }

    /// `http://127.0.0.1:<port>/rest/<user>/<code>/` (§5.1).
    pub fn webhook_url(&self) -> String {
        let endpoint = self.client_endpoint();
        let state = self.state();
        format!(
            "{}{}/{}/",
            endpoint, state.cfg.webhook_user_id, state.cfg.webhook_code
        )
    }

    // ---- CRM data -------------------------------------------------------------

    /// Adds a contact (§12.1 shape) and returns its id.
    pub fn add_contact(&self, name: &str, second_name: &str, last_name: &str, phone: &str) -> u64 {
        let mut state = self.state();
        let id = state.next_contact;
        state.next_contact += 1;
        let now = iso_now();
        let record = json!({
            "ID": id.to_string(), "POST": null, "COMMENTS": null, "HONORIFIC": null,
            "NAME": name, "SECOND_NAME": second_name, "LAST_NAME": last_name,
            "PHOTO": null, "LEAD_ID": null, "TYPE_ID": "CLIENT", "SOURCE_ID": "CALL",
            "COMPANY_ID": null, "BIRTHDATE": "", "EXPORT": "Y",
            "HAS_PHONE": if phone.is_empty() { "N" } else { "Y" }, "HAS_EMAIL": "N",
            "DATE_CREATE": now, "DATE_MODIFY": now, "ASSIGNED_BY_ID": "1",
            "CREATED_BY_ID": "1", "MODIFY_BY_ID": "1", "OPENED": "Y",
            "PHONE": if phone.is_empty() { json!([]) } else {
                json!([{"ID": (id * 2).to_string(), "VALUE_TYPE": "MOBILE", "VALUE": phone, "TYPE_ID": "PHONE"}])
            },
        });
        if let Value::Object(map) = record {
            state.contacts.insert(id, map);
        }
        id
    }

    /// Adds a deal (fields as strings like fixture crm-deal-get.json).
    pub fn add_deal(&self, title: &str, category_id: u32, contact_id: Option<u64>) -> u64 {
        let mut state = self.state();
        let id = state.next_deal;
        state.next_deal += 1;
        let now = iso_now();
        let stage = if category_id == 0 {
            "NEW".to_owned()
        } else {
            format!("C{category_id}:NEW")
        };
        let record = json!({
            "ID": id.to_string(), "TITLE": title, "TYPE_ID": "SERVICE", "STAGE_ID": stage,
            "PROBABILITY": null, "CURRENCY_ID": "RUB", "OPPORTUNITY": "0.00",
            "IS_MANUAL_OPPORTUNITY": "N", "TAX_VALUE": "0.00", "LEAD_ID": null,
            "COMPANY_ID": "0", "CONTACT_ID": contact_id.map(|c| c.to_string()),
            "QUOTE_ID": null, "BEGINDATE": now, "CLOSEDATE": now, "ASSIGNED_BY_ID": "1",
            "CREATED_BY_ID": "1", "MODIFY_BY_ID": "1", "DATE_CREATE": now, "DATE_MODIFY": now,
            "OPENED": "Y", "CLOSED": "N", "COMMENTS": null, "ADDITIONAL_INFO": null,
            "CATEGORY_ID": category_id.to_string(), "STAGE_SEMANTIC_ID": "P", "IS_NEW": "Y",
            "SOURCE_ID": "CALL", "SOURCE_DESCRIPTION": null,
        });
        if let Value::Object(map) = record {
            state.deals.insert(id, map);
        }
        id
    }

    /// Moves a deal's `DATE_CREATE` back by `age` (fixture crm-deal-get.json: ISO 8601
    /// with the portal's offset), so tests can send events about old deals.
    pub fn backdate_deal(&self, id: u64, age: std::time::Duration) {
        let when = chrono::Utc::now()
            - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::zero());
        let stamp = when.to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
        if let Some(deal) = self.state().deals.get_mut(&id) {
            deal.insert("DATE_CREATE".into(), Value::String(stamp));
        }
    }

    /// Adds a lead; name fields live on the lead itself (§12.1).
    pub fn add_lead(&self, title: &str, name: &str, last_name: &str) -> u64 {
        let mut state = self.state();
        let id = state.next_lead;
        state.next_lead += 1;
        let now = iso_now();
        let record = json!({
            "ID": id.to_string(), "TITLE": title, "NAME": name, "SECOND_NAME": null,
            "LAST_NAME": last_name, "STATUS_ID": "NEW", "SOURCE_ID": "CALL",
            "ASSIGNED_BY_ID": "1", "CREATED_BY_ID": "1", "MODIFY_BY_ID": "1",
            "DATE_CREATE": now, "DATE_MODIFY": now, "OPENED": "Y", "HAS_PHONE": "N",
        });
        if let Value::Object(map) = record {
            state.leads.insert(id, map);
        }
        id
    }

    /// A deal as `crm.deal.get` would show it.
    pub fn deal(&self, id: u64) -> Option<Value> {
        let state = self.state();
        state.deals.get(&id).map(|r| {
            let mut out = r.clone();
            for f in state.userfields.get("deal").into_iter().flatten() {
                if let Some(name) = f.get("FIELD_NAME").and_then(Value::as_str) {
                    out.entry(name.to_owned()).or_insert(json!(""));
                }
            }
            Value::Object(out)
        })
    }

    pub fn lead(&self, id: u64) -> Option<Value> {
        self.state().leads.get(&id).cloned().map(Value::Object)
    }

    pub fn contact(&self, id: u64) -> Option<Value> {
        self.state().contacts.get(&id).cloned().map(Value::Object)
    }

    /// Adds or replaces a portal user (user 1 is an admin from the start).
    pub fn add_user(&self, id: u32, name: &str, last_name: &str, admin: bool) {
        self.state().users.insert(
            id,
            state::User {
                name: name.to_owned(),
                last_name: last_name.to_owned(),
                admin,
            },
        );
    }

    /// The user may not read (or change) this deal (§11).
    pub fn deny_deal_for_user(&self, user_id: u32, deal_id: u64) {
        self.state().denied_deals.insert((user_id, deal_id));
    }

    // ---- tokens ---------------------------------------------------------------

    /// A fresh access/refresh pair of this app for a user.
    pub fn issue_user_token(&self, user_id: u32) -> (String, String) {
        self.state().issue_tokens(user_id)
    }

    /// Fresh tokens for a user as a client's `PortalAuth` (what the install step
    /// would store).
    pub fn issue_portal_auth(&self, user_id: u32) -> PortalAuth {
        let (access, refresh) = self.issue_user_token(user_id);
        let ttl = self.state().cfg.token_ttl;
        PortalAuth {
            client_endpoint: self.client_endpoint(),
            server_endpoint: Url::parse(&self.server_endpoint()).ok(),
            access_token: Secret::new(access),
            refresh_token: Secret::new(refresh),
            expires_at: Utc::now()
                + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1)),
        }
    }

    /// Every access token issued so far expires now (§14 "token clock").
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for token in self.state().tokens.values_mut() {
            token.expires_at = now;
        }
    }

    /// Successful refreshes served by `/oauth/token/`.
    pub fn refresh_count(&self) -> u64 {
        self.state().refresh_count
    }

    /// The app's `application_token` (§3.2, §7.1).
    pub fn application_token(&self) -> String {
        self.state().application_token.clone()
    }

    /// Whether `BX24.installFinish()` ran (§3.1).
    pub fn is_installed(&self) -> bool {
        self.state().installed
    }

    // ---- assertions -----------------------------------------------------------

    pub fn calls(&self) -> Vec<RecordedCall> {
        self.state().calls.clone()
    }

    pub fn calls_of(&self, method: &str) -> Vec<RecordedCall> {
        let method = method.to_ascii_lowercase();
        self.state()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// Requests to `/oauth/token/` on this fake's OAuth server, refused ones included.
    pub fn oauth_request_count(&self) -> usize {
        self.state().oauth_requests
    }

    /// HTTP requests to `/rest/…` (a batch is one).
    pub fn http_request_count(&self) -> usize {
        self.state().http_requests
    }

    /// Registered robots, keys upper-cased as sent to `bizproc.robot.add`.
    pub fn robots(&self) -> Vec<Value> {
        self.state()
            .robots
            .iter()
            .cloned()
            .map(Value::Object)
            .collect()
    }

    /// Another version of the application bound `placement` to `handler`
    /// (`placement.bind`, protocol §6.1), e.g. a contact's card tab.
    pub fn bind_placement(&self, placement: &str, handler: &str) {
        let entry = json!({
            "placement": placement, "handler": handler, "title": "Анкета пациента",
            "description": "", "options": [], "langAll": [],
        });
        if let Value::Object(map) = entry {
            self.state().placements.push(map);
        }
    }

    pub fn placements(&self) -> Vec<Value> {
        self.state()
            .placements
            .iter()
            .cloned()
            .map(Value::Object)
            .collect()
    }

    pub fn event_bindings(&self) -> Vec<Value> {
        self.state()
            .events
            .iter()
            .cloned()
            .map(Value::Object)
            .collect()
    }

    /// User fields of `"deal"` or `"lead"`.
    pub fn userfields(&self, entity: &str) -> Vec<Value> {
        self.state()
            .userfields
            .get(entity)
            .into_iter()
            .flatten()
            .cloned()
            .map(Value::Object)
            .collect()
    }

    pub fn timeline_comments(&self) -> Vec<TimelineComment> {
        self.state().timeline.clone()
    }

    /// Accepted `bizproc.event.send` calls: event token, RETURN_VALUES (upper-cased,
    /// filtered to the robot's RETURN_PROPERTIES), log message.
    pub fn event_sends(&self) -> Vec<(String, BTreeMap<String, String>, String)> {
        self.state().event_sends.clone()
    }

    /// How many `bizproc.event.send` calls were accepted, without copying them.
    pub fn event_send_count(&self) -> usize {
        self.state().event_sends.len()
    }

    // ---- faults ---------------------------------------------------------------

    /// The next `times` HTTP calls of `method` get `fault` (use `"oauth.token"` for
    /// the token endpoint).
    pub fn fail_next(&self, method: &str, fault: Fault, times: usize) {
        let mut state = self.state();
        let queue = state.faults.entry(method.to_ascii_lowercase()).or_default();
        for _ in 0..times {
            queue.push_back(fault.clone());
        }
    }

    /// The portal is healthy again: drops the faults still queued for `method`.
    pub fn clear_faults(&self, method: &str) {
        self.state().faults.remove(&method.to_ascii_lowercase());
    }

    /// Changes the leaky bucket; the bucket starts empty.
    pub fn set_rate(&self, per_sec: f64, burst: u32) {
        let mut state = self.state();
        state.rate = (per_sec, burst);
        state.bucket_level = 0.0;
        state.bucket_at = Instant::now();
    }

    /// Seconds each call of `method` adds to its operating budget (§10.2).
    pub fn set_operating_cost(&self, method: &str, secs: f64) {
        self.state()
            .operating_cost
            .insert(method.to_ascii_lowercase(), secs);
    }

    /// How the portal refuses our tokens once the app is deleted.
    pub fn answer_after_uninstall(&self, answer: UninstalledAnswer) {
        self.state().uninstalled_answer = answer;
    }

    /// `ONAPPINSTALL` is not delivered by `finish_install` (PHP SDK issue #576).
    pub fn drop_onappinstall(&self, drop: bool) {
        self.state().drop_onappinstall = drop;
    }

    /// Frames and events hand out the same access/refresh pair per user while its
    /// access token is valid, even after the pair was exchanged. The docs do not
    /// promise a new pair per frame: tokens live an hour (§2.1), the install POST and
    /// `ONAPPINSTALL` both carry the install's tokens (§3.2, §3.3), so a portal may
    /// well hand the same pair to every frame within that hour.
    pub fn reuse_frame_tokens(&self, reuse: bool) {
        self.state().frame_pairs = reuse.then(HashMap::new);
    }

    /// What an app update does (§3.4): event and placement bindings and robots are
    /// removed; the version goes up.
    pub fn app_update(&self) {
        let mut state = self.state();
        state.events.clear();
        state.placements.clear();
        state.robots.clear();
        state.version += 1;
    }

    fn auth_block(
        state: &mut State,
        shared: &Shared,
        user: Option<(u32, bool)>,
    ) -> Vec<(String, String)> {
        let portal = shared.portal_endpoint(state);
        let domain = shared.portal_domain(state);
        let server = shared.server_endpoint();
        let mut pairs = Vec::new();
        let mut push = |k: &str, v: String| pairs.push((format!("auth[{k}]"), v));
        if let Some((user_id, with_refresh)) = user {
            let (access, refresh) = state.frame_tokens(user_id);
            let ttl = state.cfg.token_ttl.as_secs();
            push("access_token", access);
            push("expires", (state::unix_now() + ttl).to_string());
            push("expires_in", ttl.to_string());
            push("scope", state.scope());
            push("domain", domain.clone());
            push("server_endpoint", server.clone());
            push("status", "L".to_owned());
            push("client_endpoint", portal.clone());
            push("member_id", state.cfg.member_id.clone());
            push("user_id", user_id.to_string());
            if with_refresh {
                push("refresh_token", refresh);
            }
        } else {
            push("domain", domain);
            push("server_endpoint", server);
            push("client_endpoint", portal);
            push("member_id", state.cfg.member_id.clone());
        }
        push("application_token", state.application_token.clone());
        pairs
    }
}

//! The fake portal's memory: tokens, users, CRM records, registrations, counters.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{SecondsFormat, Utc};
use rand::Rng;
use serde_json::{Map, Value, json};

use super::{FakePortalConfig, Fault, RecordedCall, TimelineComment};

/// Who a REST call runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthKind {
    /// An OAuth token of the app, issued to this user.
    App { user_id: u32 },
    /// An inbound webhook of this user (§5.1).
    Webhook { user_id: u32 },
    /// No valid authorisation (the call was refused).
    None,
}

impl AuthKind {
    pub(crate) fn user_id(&self) -> Option<u32> {
        match self {
            AuthKind::App { user_id } | AuthKind::Webhook { user_id } => Some(*user_id),
            AuthKind::None => None,
        }
    }

    /// §10.2: the operating budget is kept per application or per webhook.
    fn budget_owner(&self) -> &'static str {
        match self {
            AuthKind::Webhook { .. } => "hook",
            _ => "app",
        }
    }
}

pub(crate) struct AccessToken {
    pub user_id: u32,
    pub expires_at: Instant,
}

pub(crate) struct RefreshToken {
    pub user_id: u32,
    pub used: bool,
}

#[derive(Clone)]
pub(crate) struct User {
    pub name: String,
    pub last_name: String,
    pub admin: bool,
}

/// An error answer: HTTP status, `error` code (may be empty), description.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: u16,
    pub code: String,
    pub description: String,
}

impl ApiError {
    pub fn new(status: u16, code: &str, description: &str) -> Self {
        Self {
            status,
            code: code.to_owned(),
            description: description.to_owned(),
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": self.code, "error_description": self.description})
    }
}

/// A successful method result; list methods add `total` and `next` (§9).
pub(crate) struct Success {
    pub result: Value,
    pub total: Option<usize>,
    pub next: Option<usize>,
}

impl Success {
    pub fn of(result: Value) -> Self {
        Self {
            result,
            total: None,
            next: None,
        }
    }
}

pub(crate) struct EventToken {
    pub robot_code: String,
    pub used: bool,
}

pub(crate) struct State {
    pub cfg: FakePortalConfig,
    pub tokens: HashMap<String, AccessToken>,
    pub refresh_tokens: HashMap<String, RefreshToken>,
    pub users: BTreeMap<u32, User>,
    pub deals: BTreeMap<u64, Map<String, Value>>,
    pub leads: BTreeMap<u64, Map<String, Value>>,
    pub contacts: BTreeMap<u64, Map<String, Value>>,
    pub next_deal: u64,
    pub next_lead: u64,
    pub next_contact: u64,
    pub denied_deals: HashSet<(u32, u64)>,
    pub robots: Vec<Map<String, Value>>,
    pub placements: Vec<Map<String, Value>>,
    pub events: Vec<Map<String, Value>>,
    pub userfields: BTreeMap<String, Vec<Map<String, Value>>>,
    pub next_field_id: u64,
    pub next_handler_id: u64,
    pub timeline: Vec<TimelineComment>,
    pub next_comment_id: u64,
    pub event_tokens: HashMap<String, EventToken>,
    /// Token prefixes of runs made up by a load generator, with their robot's code
    /// (`FakePortal::accept_event_tokens`).
    pub made_up_runs: Vec<(String, String)>,
    pub event_sends: Vec<(String, BTreeMap<String, String>, String)>,
    pub installed: bool,
    pub uninstalled: bool,
    pub uninstalled_answer: super::UninstalledAnswer,
    pub version: u32,
    pub application_token: String,
    pub calls: Vec<RecordedCall>,
    pub http_requests: usize,
    /// Requests to this server's `/oauth/token/`, answered or refused.
    pub oauth_requests: usize,
    pub faults: HashMap<String, VecDeque<Fault>>,
    pub bucket_level: f64,
    pub bucket_at: Instant,
    pub rate: (f64, u32),
    /// (budget owner, method) → one-minute baskets (minute index, seconds used).
    pub operating: HashMap<(String, String), Vec<(u64, f64)>>,
    pub operating_cost: HashMap<String, f64>,
    pub refresh_count: u64,
    /// Host of the install page: robot handlers must live on the same domain (§4.1).
    pub app_host: Option<String>,
    pub drop_onappinstall: bool,
    /// `FakePortal::reuse_frame_tokens`: user → the pair frames and events carry
    /// while its access token lives.
    pub frame_pairs: Option<HashMap<u32, (String, String)>>,
    /// The portal's address after a move (`FakePortal::move_to`).
    pub portal_host: Option<String>,
    /// `app.info` `CODE` other than the client id (`FakePortal::set_app_code`).
    pub app_code: Option<String>,
    /// The app's main handler, for `open_app`.
    pub app_url: Option<String>,
    /// Who the request being served runs as (for the call record).
    pub last_auth: AuthKind,
    /// Triggers, activities, notifications, smart processes (`automation`).
    pub automation: super::automation::Automation,
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.r#gen::<u8>()))
        .collect()
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub(crate) fn iso_now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, false)
}

impl State {
    pub fn new(cfg: FakePortalConfig) -> Self {
        let rate = cfg.rate;
        let mut users = BTreeMap::new();
        users.insert(
            1,
            User {
                name: "Ольга".into(),
                last_name: "Петрова".into(),
                admin: true,
            },
        );
        Self {
            cfg,
            tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            users,
            deals: BTreeMap::new(),
            leads: BTreeMap::new(),
            contacts: BTreeMap::new(),
            next_deal: 4217,
            next_lead: 301,
            next_contact: 1093,
            denied_deals: HashSet::new(),
            robots: Vec::new(),
            placements: Vec::new(),
            events: Vec::new(),
            userfields: BTreeMap::new(),
            next_field_id: 245,
            next_handler_id: 311,
            timeline: Vec::new(),
            next_comment_id: 9001,
            event_tokens: HashMap::new(),
            made_up_runs: Vec::new(),
            event_sends: Vec::new(),
            installed: false,
            uninstalled: false,
            uninstalled_answer: super::UninstalledAnswer::default(),
            version: 1,
            application_token: random_hex(16),
            calls: Vec::new(),
            http_requests: 0,
            oauth_requests: 0,
            faults: HashMap::new(),
            bucket_level: 0.0,
            bucket_at: Instant::now(),
            rate,
            operating: HashMap::new(),
            operating_cost: HashMap::new(),
            refresh_count: 0,
            app_host: None,
            drop_onappinstall: false,
            frame_pairs: None,
            portal_host: None,
            app_code: None,
            app_url: None,
            last_auth: AuthKind::None,
            automation: super::automation::Automation::default(),
        }
    }

    /// The granted scopes, comma-separated (§2.2), without those revoked by
    /// `FakePortal::revoke_scope`.
    pub fn scope(&self) -> String {
        SCOPE
            .split(',')
            .filter(|s| !self.automation.revoked_scopes.contains(*s))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A new access/refresh pair for a user (§2.1: opaque ~70 hex chars).
    pub fn issue_tokens(&mut self, user_id: u32) -> (String, String) {
        let access = random_hex(36);
        let refresh = random_hex(36);
        self.tokens.insert(
            access.clone(),
            AccessToken {
                user_id,
                expires_at: Instant::now() + self.cfg.token_ttl,
            },
        );
        self.refresh_tokens.insert(
            refresh.clone(),
            RefreshToken {
                user_id,
                used: false,
            },
        );
        (access, refresh)
    }

    /// The pair a frame POST or an event hands out for a user: a new one, or with
    /// `frame_pairs` on, the same one while its access token is valid — used or not.
    pub fn frame_tokens(&mut self, user_id: u32) -> (String, String) {
        let now = Instant::now();
        let current = self
            .frame_pairs
            .as_ref()
            .and_then(|pairs| pairs.get(&user_id))
            .filter(|(access, _)| self.tokens.get(access).is_some_and(|t| t.expires_at > now))
            .cloned();
        if let Some(pair) = current {
            return pair;
        }
        let pair = self.issue_tokens(user_id);
        if let Some(pairs) = self.frame_pairs.as_mut() {
            pairs.insert(user_id, pair.clone());
        }
        pair
    }

    /// §10.1: every request adds one, the bucket drains `per_sec` per second; a
    /// request that would overfill it is refused and not counted.
    pub fn take_slot(&mut self) -> bool {
        let now = Instant::now();
        let drained = now.duration_since(self.bucket_at).as_secs_f64() * self.rate.0;
        self.bucket_level = (self.bucket_level - drained).max(0.0);
        self.bucket_at = now;
        if self.bucket_level + 1.0 > f64::from(self.rate.1) {
            return false;
        }
        self.bucket_level += 1.0;
        true
    }

    /// Records a REST call for assertions.
    pub fn record(
        &mut self,
        method: &str,
        params: Value,
        auth: AuthKind,
        status: u16,
        error: Option<String>,
    ) {
        self.calls.push(RecordedCall::new(
            method, params, auth, status, error, false,
        ));
    }

    pub fn take_fault(&mut self, key: &str) -> Option<Fault> {
        let queue = self.faults.get_mut(key)?;
        let fault = queue.pop_front();
        if queue.is_empty() {
            self.faults.remove(key);
        }
        fault
    }

    fn baskets(&mut self, auth: &AuthKind, method: &str) -> &mut Vec<(u64, f64)> {
        let minute = unix_now() / 60;
        let baskets = self
            .operating
            .entry((auth.budget_owner().to_owned(), method.to_owned()))
            .or_default();
        // §10.2: ten one-minute baskets; older ones drop out.
        baskets.retain(|(m, _)| m + 10 > minute);
        baskets
    }

    /// §10.2: checked before the call; the call that crosses the limit completes,
    /// the next one is refused.
    pub fn operating_exceeded(&mut self, auth: &AuthKind, method: &str) -> bool {
        let limit = self.cfg.operating_limit_secs;
        let used: f64 = self.baskets(auth, method).iter().map(|(_, s)| s).sum();
        used >= limit
    }

    /// Charges a completed call and returns the `time` block of its answer (§9).
    pub fn charge(&mut self, auth: &AuthKind, method: &str) -> Value {
        let cost = self.operating_cost.get(method).copied().unwrap_or(0.0);
        let minute = unix_now() / 60;
        let baskets = self.baskets(auth, method);
        match baskets.iter_mut().find(|(m, _)| *m == minute) {
            Some((_, s)) => *s += cost,
            None => baskets.push((minute, cost)),
        }
        let operating: f64 = baskets.iter().map(|(_, s)| s).sum();
        let oldest = baskets.iter().map(|(m, _)| *m).min().unwrap_or(minute);
        time_block(Some((operating, oldest * 60 + 600)))
    }
}

/// The `time` object of an answer (§9, fixture `rest-success-with-time.json`).
pub(crate) fn time_block(operating: Option<(f64, u64)>) -> Value {
    let now = unix_now_f64();
    let date = iso_now();
    let mut block = json!({
        "start": now, "finish": now + 0.001, "duration": 0.001, "processing": 0.0005,
        "date_start": date, "date_finish": date,
    });
    if let (Some((operating, reset_at)), Some(map)) = (operating, block.as_object_mut()) {
        map.insert("operating_reset_at".into(), json!(reset_at));
        map.insert("operating".into(), json!(operating));
    }
    block
}

/// PHP's `json_encode` of an array: `[]` when empty, a list for keys `0..n`, else an
/// object in insertion order (§13 "PHP-array quirk").
pub(crate) fn php_array(entries: Vec<(String, Value)>) -> Value {
    if entries.is_empty() {
        return Value::Array(Vec::new());
    }
    let is_list = entries
        .iter()
        .enumerate()
        .all(|(i, (k, _))| k.parse::<usize>().ok() == Some(i));
    if is_list {
        Value::Array(entries.into_iter().map(|(_, v)| v).collect())
    } else {
        Value::Object(entries.into_iter().collect())
    }
}

/// The scopes opros asks for (CONTRACT.md, Automation).
pub(crate) const SCOPE: &str = "crm,bizproc,placement,user_brief,im";

/// Delay of [`Fault::Delay`] as used by the server.
pub(crate) fn delay_of(fault: &Fault) -> Option<Duration> {
    match fault {
        Fault::Delay(d) => Some(*d),
        _ => None,
    }
}

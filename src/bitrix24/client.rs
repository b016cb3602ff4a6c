//! The Bitrix24 REST client: form-encoded POSTs, token refresh with single flight,
//! a client-side leaky bucket, per-method operating pauses and bounded retries.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rand::Rng;
use serde_json::Value;
use tokio::time::Instant;
use url::Url;

use super::batch::{self, MAX_COMMANDS};
use super::body;
use super::error::{B24Error, StoreError};
use super::form::{self, FormPairs};
use super::oauth;
use super::rate_limit::{Limiter, SharedBucket};
use super::types::{
    B24Response, BatchCommand, BatchOutcome, ClientConfig, PortalAuth, Target, TimeInfo, TokenStore,
};
use crate::secret::Secret;

/// Refresh this long before `expires_at` instead of waiting for `expired_token`.
const REFRESH_AHEAD: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// Pause of a method after `OPERATION_TIME_LIMIT` when no `operating_reset_at` is
/// known (§10.2: the error body carries no timing).
const DEFAULT_OPERATING_PAUSE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// After `operating_reset_at`, for the portal's clock and ours to disagree a little
/// (the JS SDK's `operating-limiter.ts` waits the same extra second).
const RESET_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(1);
/// First retry delay of network errors and 5xx; doubled per attempt, with jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Attempts to store a refreshed pair after the first one failed.
const SAVE_ATTEMPTS: u32 = 5;
/// Guard against a portal that keeps answering `next`.
const MAX_PAGES: usize = 10_000;
/// The longest an identity check waits for a slot of its share of the budget (two
/// slots on the cloud's usual 2/50): an install makes three checks in a row. A
/// check that would wait longer is turned away (`VerifyBudgetSpent`).
const VERIFY_MAX_WAIT: Duration = Duration::from_secs(5);

/// Whether a failed request may be sent again by the client itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Reads and idempotent writes: any retryable error is retried here.
    Always,
    /// A call that must not run twice: sent again only after an answer that says
    /// it did not run (a refused token, `QUERY_LIMIT_EXCEEDED`, a refused
    /// connection), never after one that may hide a call carried out
    /// ([`B24Error::may_have_run`]). The caller decides what to do then.
    UnlessMaybeRun,
}

/// A Bitrix24 REST client; cheap to clone.
#[derive(Clone)]
pub struct B24Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    store: Arc<dyn TokenStore>,
    http: reqwest::Client,
    limiter: Limiter,
    /// One async lock per member_id: refresh tokens are single-use (§2.4), so two
    /// concurrent refreshes would lose the portal.
    refresh_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    refreshes: AtomicU64,
    /// (budget key, method) → paused until.
    pauses: Mutex<HashMap<(String, String), DateTime<Utc>>>,
    /// (budget key, method) → last `operating_reset_at` seen.
    reset_at: Mutex<HashMap<(String, String), i64>>,
}

/// Where and how one attempt is sent.
struct Resolved {
    url: Url,
    /// `auth=` for OAuth and user tokens; `None` for webhooks.
    token: Option<Secret<String>>,
    /// Bucket key: `host[:port]` of the portal.
    host: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Method names are `[A-Za-z0-9._]`; anything else would change the request path.
fn check_method(method: &str) -> Result<(), B24Error> {
    let ok = !method.is_empty()
        && method
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(B24Error::InvalidRequest(format!(
            "bad method name {method:?}"
        )))
    }
}

fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(2u32.saturating_pow(attempt));
    let capped = exp.min(BACKOFF_CAP);
    // Jitter in [50 %, 100 %] spreads retries of many workers apart.
    capped.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

fn as_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

impl B24Client {
    /// Builds a client whose rate buckets live in this process.
    pub fn new(config: ClientConfig, store: Arc<dyn TokenStore>) -> Result<Self, reqwest::Error> {
        Self::with_bucket(config, store, None)
    }

    /// Builds a client that takes its request slots from `shared` when given, so
    /// several processes together stay inside each portal's limit.
    pub fn with_bucket(
        config: ClientConfig,
        store: Arc<dyn TokenStore>,
        shared: Option<Arc<dyn SharedBucket>>,
    ) -> Result<Self, reqwest::Error> {
        // The builder fails only when the TLS backend cannot start. No fallback to
        // `reqwest::Client::new()`: it follows redirects (a portal's 302 would carry
        // a token elsewhere) and never times out; start-up fails instead.
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let limiter = Limiter::new(config.rate, shared);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                store,
                http,
                limiter,
                refresh_locks: Mutex::new(HashMap::new()),
                refreshes: AtomicU64::new(0),
                pauses: Mutex::new(HashMap::new()),
                reset_at: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Successful token refreshes since start (tests, metrics).
    pub fn refresh_count(&self) -> u64 {
        self.inner.refreshes.load(Ordering::Relaxed)
    }

    /// Calls a method and returns its `result`.
    pub async fn call(
        &self,
        target: &Target,
        method: &str,
        params: Value,
    ) -> Result<Value, B24Error> {
        Ok(self.call_full(target, method, params).await?.result)
    }

    /// Calls a method and returns the whole answer (`result`, `total`, `next`, `time`).
    pub async fn call_full(
        &self,
        target: &Target,
        method: &str,
        params: Value,
    ) -> Result<B24Response, B24Error> {
        check_method(method)?;
        self.execute(target, method, &form::flatten(&params), Resend::Always)
            .await
    }

    /// Calls a method whose effect the portal cannot recognise as a repeat (a
    /// timeline comment). Unlike [`call`](Self::call), a failure that may hide a
    /// call carried out (a 5xx, a timeout, a lost connection) is returned at once
    /// instead of being sent again: the caller checks what the portal has before
    /// it tries again.
    pub async fn call_once(
        &self,
        target: &Target,
        method: &str,
        params: Value,
    ) -> Result<Value, B24Error> {
        check_method(method)?;
        let pairs = form::flatten(&params);
        let response = self
            .execute(target, method, &pairs, Resend::UnlessMaybeRun)
            .await?;
        Ok(response.result)
    }

    /// Calls a method to learn who is calling (install, deal tab, admin page: the
    /// caller's own token, protocol §11). Anyone can ask for such a check, so it
    /// draws on a small share of the portal's budget of its own
    /// ([`RateLimit::verification_share`](super::RateLimit::verification_share))
    /// and never on what robot and outbox work use. When that share is spent it
    /// fails at once with [`B24Error::VerifyBudgetSpent`], sending nothing; a slot
    /// is taken only for a request that is sent. One attempt, no refresh, no retry:
    /// the person can open the page again.
    pub async fn call_to_verify(
        &self,
        target: &Target,
        method: &str,
        params: Value,
    ) -> Result<Value, B24Error> {
        check_method(method)?;
        let pairs = form::flatten(&params);
        let (resolved, _) = self.resolve(target, method).await?;
        let budget = (target.budget_key(&resolved.host), method.to_owned());
        self.check_pause(&budget)?;
        self.inner
            .limiter
            .try_acquire_verify(&resolved.host, VERIFY_MAX_WAIT)
            .await
            .map_err(|retry_after| B24Error::VerifyBudgetSpent { retry_after })?;
        let started = Instant::now();
        let (status, outcome) = self.send(&resolved, method, &pairs).await;
        let ms = started.elapsed().as_millis() as u64;
        let kind = target.kind();
        match outcome {
            Ok(response) => {
                tracing::debug!(method, target = kind, portal = %resolved.host, status, ms, "Bitrix24 identity check");
                if let Some(time) = &response.time {
                    self.note_operating(budget, time);
                }
                Ok(response.result)
            }
            Err(err) => {
                let code = err.code().unwrap_or_default().to_owned();
                tracing::warn!(method, target = kind, portal = %resolved.host, status, ms, code = %code, "Битрикс24 не подтвердил проверку входа");
                if let B24Error::Api { code, .. } = &err
                    && code == "OPERATION_TIME_LIMIT"
                {
                    return Err(self.pause(budget));
                }
                Err(err)
            }
        }
    }

    /// Runs any number of commands through `batch`, 50 per request (§13); outcomes
    /// come back in the order given. `$result[name][FIELD]` references work within
    /// one chunk of 50. Commands that carry files are refused without being sent
    /// (§12.4); with `halt`, commands after a failure are [`B24Error::NotExecuted`].
    /// The outer error is returned when a whole request fails.
    pub async fn batch(
        &self,
        target: &Target,
        commands: Vec<BatchCommand>,
        halt: bool,
    ) -> Result<Vec<BatchOutcome>, B24Error> {
        self.batch_with(target, commands, halt, Resend::Always)
            .await
    }

    /// [`batch`](Self::batch) for commands that must not run twice (a robot's
    /// single-use `bizproc.event.send`): a request is not sent again after a failure
    /// that may hide a batch carried out, as with [`call_once`](Self::call_once).
    pub async fn batch_once(
        &self,
        target: &Target,
        commands: Vec<BatchCommand>,
        halt: bool,
    ) -> Result<Vec<BatchOutcome>, B24Error> {
        self.batch_with(target, commands, halt, Resend::UnlessMaybeRun)
            .await
    }

    async fn batch_with(
        &self,
        target: &Target,
        commands: Vec<BatchCommand>,
        halt: bool,
        resend: Resend,
    ) -> Result<Vec<BatchOutcome>, B24Error> {
        let mut names = HashSet::new();
        for command in &commands {
            check_method(&command.method)?;
            if command.method == "batch" {
                return Err(B24Error::InvalidRequest("nested batch".into()));
            }
            if !names.insert(command.name.as_str()) {
                return Err(B24Error::InvalidRequest(format!(
                    "duplicate batch command name {:?}",
                    command.name
                )));
            }
        }
        let mut out = Vec::with_capacity(commands.len());
        let mut halted = false;
        for chunk in commands.chunks(MAX_COMMANDS) {
            let sendable: Vec<&BatchCommand> =
                chunk.iter().filter(|c| !batch::carries_files(c)).collect();
            let mut sent = if halted || sendable.is_empty() {
                Vec::new()
            } else {
                let response = self
                    .execute(
                        target,
                        "batch",
                        &batch::request_pairs(&sendable, halt),
                        resend,
                    )
                    .await?;
                batch::outcomes(&sendable, response.result)
            }
            .into_iter();
            for command in chunk {
                let result = if batch::carries_files(command) {
                    Err(B24Error::FilesInBatch)
                } else if halted {
                    Err(B24Error::NotExecuted)
                } else {
                    sent.next().map_or(Err(B24Error::NotExecuted), |o| o.result)
                };
                out.push(BatchOutcome {
                    name: command.name.clone(),
                    result,
                });
            }
            if halt && out.iter().any(|o| o.result.is_err()) {
                halted = true;
            }
        }
        Ok(out)
    }

    /// Reads every page of a list method (`start`/`next`, page size 50, §9).
    pub async fn list_all(
        &self,
        target: &Target,
        method: &str,
        params: Value,
    ) -> Result<Vec<Value>, B24Error> {
        let mut params = match params {
            Value::Object(map) => map,
            Value::Null => serde_json::Map::new(),
            _ => {
                return Err(B24Error::InvalidRequest(
                    "list params must be an object".into(),
                ));
            }
        };
        let mut all = Vec::new();
        let mut start = 0u64;
        for _ in 0..MAX_PAGES {
            params.insert("start".into(), Value::from(start));
            let page = self
                .call_full(target, method, Value::Object(params.clone()))
                .await?;
            match page.result {
                Value::Array(items) => all.extend(items),
                // crm.item.list and friends wrap the page: {"items": [...]}
                Value::Object(mut map) => match map.remove("items") {
                    Some(Value::Array(items)) => all.extend(items),
                    _ => {
                        return Err(B24Error::InvalidResponse {
                            status: 200,
                            message: format!("{method}: result is not a list"),
                        });
                    }
                },
                _ => {
                    return Err(B24Error::InvalidResponse {
                        status: 200,
                        message: format!("{method}: result is not a list"),
                    });
                }
            }
            match page.next {
                Some(next) if next > start => start = next,
                _ => return Ok(all),
            }
        }
        Ok(all)
    }

    async fn execute(
        &self,
        target: &Target,
        method: &str,
        pairs: &FormPairs,
        resend: Resend,
    ) -> Result<B24Response, B24Error> {
        let inner = &self.inner;
        let mut refreshed = false;
        let mut retries = 0u32;
        loop {
            // A refresh ahead of expiry may meet a troubled OAuth server.
            let (resolved, portal_token) = match self.resolve(target, method).await {
                Ok(resolved) => resolved,
                Err(err) if err.is_retryable() && retries < inner.config.max_retries => {
                    tokio::time::sleep(backoff(retries)).await;
                    retries += 1;
                    continue;
                }
                Err(err) => return Err(err),
            };
            let budget = (target.budget_key(&resolved.host), method.to_owned());
            self.check_pause(&budget)?;
            inner.limiter.acquire(&resolved.host).await;

            let started = Instant::now();
            let (status, outcome) = self.send(&resolved, method, pairs).await;
            let ms = started.elapsed().as_millis() as u64;
            let kind = target.kind();
            match outcome {
                Ok(response) => {
                    tracing::debug!(method, target = kind, portal = %resolved.host, status, ms, "Bitrix24 call");
                    if let Some(time) = &response.time {
                        self.note_operating(budget, time);
                    }
                    return Ok(response);
                }
                Err(err) => {
                    let code = err.code().unwrap_or_default().to_owned();
                    tracing::warn!(method, target = kind, portal = %resolved.host, status, ms, code = %code, attempt = retries, "Bitrix24 call failed");
                    match (err, target, portal_token) {
                        (
                            B24Error::ExpiredToken | B24Error::InvalidToken,
                            Target::Portal { member_id },
                            Some(failed),
                        ) if !refreshed => {
                            // §2.4: refresh once, retry once. An OAuth server that
                            // is down for a moment gets the usual retries.
                            match self.refresh_portal(member_id, &failed).await {
                                Ok(_) => refreshed = true,
                                Err(err)
                                    if err.is_retryable() && retries < inner.config.max_retries =>
                                {
                                    tokio::time::sleep(backoff(retries)).await;
                                    retries += 1;
                                }
                                Err(err) => return Err(err),
                            }
                        }
                        (B24Error::QueryLimitExceeded, _, _)
                            if retries < inner.config.max_retries =>
                        {
                            retries += 1;
                            // Our bucket was optimistic: the next acquire waits for room.
                            inner.limiter.mark_full(&resolved.host).await;
                        }
                        (B24Error::Api { code, .. }, _, _) if code == "OPERATION_TIME_LIMIT" => {
                            return Err(self.pause(budget));
                        }
                        (err, _, _)
                            if err.is_retryable()
                                && retries < inner.config.max_retries
                                && (resend == Resend::Always || !err.may_have_run()) =>
                        {
                            tokio::time::sleep(backoff(retries)).await;
                            retries += 1;
                        }
                        (err, _, _) => return Err(err),
                    }
                }
            }
        }
    }

    /// Remembers when the method's budget frees up (§10.2), and pauses the method
    /// as soon as the budget is spent: the portal would refuse its next call.
    fn note_operating(&self, budget: (String, String), time: &TimeInfo) {
        if let Some(reset) = time.operating_reset_at {
            lock(&self.inner.reset_at).insert(budget.clone(), reset);
        }
        // 1 % (4.8 s of 480 s) of slack for what the portal counts that we do not see.
        let spent = self.inner.config.operating_limit.as_secs_f64() * 0.99;
        if time.operating.is_some_and(|used| used >= spent) {
            let paused = self.pause(budget);
            tracing::warn!(error = %paused, "Bitrix24 method paused before its run-time budget ran out");
        }
    }

    /// Records an operating pause (§10.2) and returns the error describing it.
    fn pause(&self, budget: (String, String)) -> B24Error {
        let now = Utc::now();
        let known = lock(&self.inner.reset_at)
            .get(&budget)
            .and_then(|&unix| Utc.timestamp_opt(unix, 0).single())
            .filter(|at| *at > now)
            .map(|at| at + RESET_MARGIN);
        let until = known.unwrap_or(now + DEFAULT_OPERATING_PAUSE);
        let method = budget.1.clone();
        lock(&self.inner.pauses).insert(budget, until);
        B24Error::OperationTimeLimit { method, until }
    }

    fn check_pause(&self, budget: &(String, String)) -> Result<(), B24Error> {
        let mut pauses = lock(&self.inner.pauses);
        match pauses.get(budget) {
            Some(until) if *until > Utc::now() => Err(B24Error::OperationTimeLimit {
                method: budget.1.clone(),
                until: *until,
            }),
            Some(_) => {
                pauses.remove(budget);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Endpoint and token for one attempt. For a portal, refreshes ahead of expiry.
    /// The second value is the portal token used, to recognise a refresh by others.
    async fn resolve(
        &self,
        target: &Target,
        method: &str,
    ) -> Result<(Resolved, Option<Secret<String>>), B24Error> {
        let bad_url = |e: url::ParseError| B24Error::InvalidRequest(e.to_string());
        match target {
            Target::Webhook(hook) => Ok((
                Resolved {
                    url: hook.endpoint(method).map_err(bad_url)?,
                    token: None,
                    host: hook.host_key(),
                },
                None,
            )),
            Target::UserToken {
                endpoint,
                access_token,
            } => Ok((
                Resolved {
                    url: endpoint.join(&format!("{method}.json")).map_err(bad_url)?,
                    token: Some(access_token.clone()),
                    host: Target::endpoint_host(endpoint),
                },
                None,
            )),
            Target::Portal { member_id } => {
                let mut auth = self.load(member_id).await?;
                if auth.expires_at - Utc::now() < REFRESH_AHEAD {
                    auth = self.refresh_portal(member_id, &auth.access_token).await?;
                }
                Ok((
                    Resolved {
                        url: auth
                            .client_endpoint
                            .join(&format!("{method}.json"))
                            .map_err(bad_url)?,
                        token: Some(auth.access_token.clone()),
                        host: Target::endpoint_host(&auth.client_endpoint),
                    },
                    Some(auth.access_token),
                ))
            }
        }
    }

    /// Refreshes a portal's tokens now, whatever their expiry. A refresh token
    /// lasts 180 days and only a refresh replaces it (§2.1), so a portal nobody
    /// called for months would otherwise be lost.
    pub async fn renew(&self, member_id: &str) -> Result<(), B24Error> {
        let current = self.load(member_id).await?;
        self.refresh_portal(member_id, &current.access_token)
            .await
            .map(|_| ())
    }

    /// Exchanges a refresh token offered by an install or `ONAPPINSTALL` at the
    /// trusted OAuth server, which answers whose portal it is and where it lives
    /// (see [`oauth::vouch`]). Nothing is stored here.
    pub async fn vouch(
        &self,
        server_endpoint: Option<&Url>,
        refresh_token: &Secret<String>,
    ) -> Result<oauth::Vouched, B24Error> {
        oauth::vouch(
            &self.inner.http,
            &self.inner.config,
            server_endpoint,
            refresh_token,
        )
        .await
    }

    async fn load(&self, member_id: &str) -> Result<PortalAuth, B24Error> {
        self.inner
            .store
            .load(member_id)
            .await?
            .ok_or_else(|| B24Error::NotInstalled {
                member_id: member_id.to_owned(),
            })
    }

    /// Refreshes the portal's tokens unless someone else already did: under the
    /// portal's lock (this process's, then the store's for other processes), the
    /// stored pair is re-read and refreshed only if its access token is still the
    /// one that `failed`. The new pair is saved before use.
    async fn refresh_portal(
        &self,
        member_id: &str,
        failed: &Secret<String>,
    ) -> Result<PortalAuth, B24Error> {
        // On a task of its own: a caller that is dropped (shutdown, a request's
        // timeout) must not cut a refresh off between the OAuth answer and the save,
        // which would lose the portal.
        let (client, member_id, failed) = (self.clone(), member_id.to_owned(), failed.clone());
        tokio::spawn(async move { client.refresh_exclusive(&member_id, &failed).await })
            .await
            .unwrap_or_else(|e| Err(StoreError::new(format!("refresh task failed: {e}")).into()))
    }

    async fn refresh_exclusive(
        &self,
        member_id: &str,
        failed: &Secret<String>,
    ) -> Result<PortalAuth, B24Error> {
        let portal_lock = lock(&self.inner.refresh_locks)
            .entry(member_id.to_owned())
            .or_default()
            .clone();
        let _guard = portal_lock.lock().await;
        let mut held = self.inner.store.lock_refresh(member_id).await?;
        let current = match held.load().await {
            Ok(Some(current)) => current,
            Ok(None) => {
                let _ = held.release().await;
                return Err(B24Error::NotInstalled {
                    member_id: member_id.to_owned(),
                });
            }
            Err(err) => {
                let _ = held.release().await;
                return Err(err.into());
            }
        };
        if !current.access_token.matches(failed.expose()) {
            // Refreshed meanwhile, by this process or another.
            if let Err(err) = held.release().await {
                tracing::warn!(error = %err, "Bitrix24 refresh lock release failed");
            }
            return Ok(current);
        }
        let host = Target::endpoint_host(&current.client_endpoint);
        let fresh = match oauth::refresh(&self.inner.http, &self.inner.config, member_id, &current)
            .await
        {
            Ok(fresh) => fresh,
            Err(err) => {
                let _ = held.release().await;
                tracing::warn!(portal = %host, code = err.code().unwrap_or_default(), error = %err, "Bitrix24 token refresh failed");
                return Err(err);
            }
        };
        if let Err(err) = held.save(&fresh).await {
            tracing::warn!(portal = %host, error = %err, "refreshed Bitrix24 tokens not saved; trying again");
            self.save_refreshed(member_id, &fresh, &host).await?;
        }
        self.inner.refreshes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(portal = %host, "Bitrix24 tokens refreshed");
        Ok(fresh)
    }

    /// The old refresh token is used up: the new pair in hand is the portal's only
    /// way in, so storing it is retried before giving up on the portal. The store's
    /// lock is gone by now: another instance refreshing meanwhile would meet
    /// `invalid_grant` that once, while the portal lives on with the pair saved here.
    async fn save_refreshed(
        &self,
        member_id: &str,
        fresh: &PortalAuth,
        host: &str,
    ) -> Result<(), B24Error> {
        let mut last = None;
        for attempt in 0..SAVE_ATTEMPTS {
            tokio::time::sleep(backoff(attempt)).await;
            match self.inner.store.save(member_id, fresh).await {
                Ok(()) => return Ok(()),
                Err(err) => last = Some(err),
            }
        }
        let err = last.unwrap_or_else(|| StoreError::new("not attempted"));
        tracing::error!(portal = %host, error = %err, "refreshed Bitrix24 tokens could not be saved; the portal needs a reinstall");
        Err(B24Error::TokensNotSaved(err))
    }

    /// One HTTP request. Returns the HTTP status (0 when there was none) and the
    /// parsed outcome. An `error` key means failure whatever the status (§9).
    async fn send(
        &self,
        resolved: &Resolved,
        method: &str,
        pairs: &FormPairs,
    ) -> (u16, Result<B24Response, B24Error>) {
        let mut body = form::encode(pairs);
        if let Some(token) = &resolved.token {
            let auth = form::encode(&[("auth".to_owned(), token.expose().clone())]);
            if !body.is_empty() {
                body.push('&');
            }
            body.push_str(&auth);
        }
        let sent = self
            .inner
            .http
            .post(resolved.url.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return (0, Err(B24Error::from_reqwest(e))),
        };
        let status = response.status().as_u16();
        let bytes = match body::read_capped(response, body::MAX_BODY).await {
            Ok(b) => b,
            Err(e) => return (status, Err(e)),
        };
        (status, parse_body(status, method, &bytes))
    }
}

/// Interprets a REST answer (§9, §10).
fn parse_body(status: u16, method: &str, bytes: &[u8]) -> Result<B24Response, B24Error> {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(_) if status >= 500 => {
            return Err(B24Error::Server {
                status,
                code: String::new(),
            });
        }
        Err(e) => {
            return Err(B24Error::InvalidResponse {
                status,
                message: format!("not JSON: {e}"),
            });
        }
    };
    let Value::Object(mut map) = value else {
        return Err(B24Error::InvalidResponse {
            status,
            message: "not a JSON object".into(),
        });
    };
    if let Some(code) = map.get("error") {
        let code = match code {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        let description = map
            .get("error_description")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Err(B24Error::from_body(status, &code, description, method));
    }
    if status >= 500 {
        return Err(B24Error::Server {
            status,
            code: String::new(),
        });
    }
    let Some(result) = map.remove("result") else {
        return Err(B24Error::InvalidResponse {
            status,
            message: "no result".into(),
        });
    };
    let time = map
        .remove("time")
        .and_then(|t| serde_json::from_value::<TimeInfo>(t).ok());
    Ok(B24Response {
        result,
        total: as_u64(map.get("total")),
        next: as_u64(map.get("next")),
        time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_classified() {
        let ok = parse_body(
            200,
            "crm.deal.list",
            br#"{"result":[1],"total":"51","next":50,"time":{"operating":0.5,"operating_reset_at":1767864801}}"#,
        )
        .expect("success");
        assert_eq!(ok.total, Some(51));
        assert_eq!(ok.next, Some(50));
        assert_eq!(
            ok.time.and_then(|t| t.operating_reset_at),
            Some(1_767_864_801)
        );
        let err = parse_body(
            200,
            "placement.bind",
            br#"{"error":"ERROR_ARGUMENT","error_description":"x"}"#,
        )
        .expect_err("error with 200");
        assert_eq!(err.code(), Some("ERROR_ARGUMENT"));
        assert!(matches!(
            parse_body(502, "x", b"<html>bad gateway</html>"),
            Err(B24Error::Server { status: 502, .. })
        ));
        assert!(check_method("crm.deal.get").is_ok());
        assert!(check_method("../x").is_err());
        assert!(check_method("a?b").is_err());
    }
}

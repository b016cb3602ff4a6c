//! Installed portals: token storage for the client, lookups and caller verification.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbBackend, EntityTrait, QueryFilter, QuerySelect, TransactionTrait,
    sea_query::LockType,
};
use url::Url;

use crate::bitrix24::{PortalAuth, RefreshLock, StoreError, TokenStore, unshared_refresh};
use crate::db::entities::portal;
use crate::db::portal_cache::PortalCache;
use crate::error::{ApiError, ErrorCode};
use crate::secret::{Secret, constant_time_eq};

/// The client's token store over the `portal` table.
pub struct DbTokenStore {
    db: DatabaseConnection,
    /// `B24_ALLOWED_DOMAINS`; empty = any.
    allowed_domains: Vec<String>,
    /// Forgotten after a save: a refresh may move the portal.
    portal_cache: Option<Arc<PortalCache>>,
}

impl DbTokenStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            allowed_domains: Vec::new(),
            portal_cache: None,
        }
    }

    /// The robot's portal cache, forgotten after every save.
    pub fn with_portal_cache(mut self, cache: Arc<PortalCache>) -> Self {
        self.portal_cache = Some(cache);
        self
    }

    fn saved(&self) {
        if let Some(cache) = &self.portal_cache {
            cache.forget_all();
        }
    }

    /// A move named in a refresh answer is followed only to these hosts.
    pub fn with_allowed_domains(mut self, allowed: Vec<String>) -> Self {
        self.allowed_domains = allowed;
        self
    }
}

fn store_error(e: sea_orm::DbErr) -> StoreError {
    StoreError::new(e)
}

/// The tokens of a portal row; `None` unless it is installed with tokens.
fn auth_of(p: portal::Model) -> Result<Option<PortalAuth>, StoreError> {
    if p.status != portal::INSTALLED {
        return Ok(None);
    }
    let (Some(access), Some(refresh)) = (p.access_token, p.refresh_token) else {
        return Ok(None);
    };
    let client_endpoint = Url::parse(&p.client_endpoint).map_err(StoreError::new)?;
    Ok(Some(PortalAuth {
        client_endpoint,
        server_endpoint: p
            .server_endpoint
            .as_deref()
            .and_then(|s| Url::parse(s).ok()),
        access_token: Secret::new(access),
        refresh_token: Secret::new(refresh),
        expires_at: p.expires_at.unwrap_or_else(Utc::now),
    }))
}

/// Whether a stored REST endpoint is on the portal's own `host[:port]`.
fn endpoint_on(endpoint: &str, domain: &str) -> bool {
    Url::parse(endpoint)
        .is_ok_and(|u| crate::bitrix24::Target::endpoint_host(&u).eq_ignore_ascii_case(domain))
}

async fn save_on<C: ConnectionTrait>(
    db: &C,
    p: portal::Model,
    auth: &PortalAuth,
    allowed_domains: &[String],
) -> Result<(), StoreError> {
    let domain = crate::bitrix24::Target::endpoint_host(&auth.client_endpoint).to_ascii_lowercase();
    // The operator's list binds moves too: a portal that moves to a host not on it
    // keeps its old address (and the tokens, which the OAuth server issued anyway).
    let move_allowed =
        domain == p.domain || allowed_domains.is_empty() || allowed_domains.contains(&domain);
    if !move_allowed {
        tracing::warn!(portal = %p.domain, to = %domain, "Портал сменил адрес на не разрешённый в B24_ALLOWED_DOMAINS; прежний адрес оставлен");
    }
    let (stored_domain, stored_endpoint) = (p.domain.clone(), p.client_endpoint.clone());
    let mut row: portal::ActiveModel = p.into();
    row.access_token = Set(Some(auth.access_token.expose().clone()));
    row.refresh_token = Set(Some(auth.refresh_token.expose().clone()));
    row.expires_at = Set(Some(auth.expires_at));
    // A refreshed pair comes from the trusted OAuth server (`bitrix24::token_url`): a
    // new client_endpoint in it is a move that server confirms, and the domain that
    // frame checks compare follows it.
    if move_allowed {
        row.domain = Set(domain);
        row.client_endpoint = Set(auth.client_endpoint.to_string());
    } else if !endpoint_on(&stored_endpoint, &stored_domain) {
        // A row from before identities were vouched for may name an endpoint that no
        // OAuth server ever did: the kept address is the stored domain's own.
        row.client_endpoint = Set(format!(
            "{}://{stored_domain}/rest/",
            auth.client_endpoint.scheme()
        ));
    }
    if let Some(server) = &auth.server_endpoint {
        row.server_endpoint = Set(Some(server.to_string()));
    }
    row.updated_at = Set(Utc::now());
    row.update(db).await.map(|_| ()).map_err(store_error)
}

#[async_trait]
impl TokenStore for DbTokenStore {
    async fn load(&self, member_id: &str) -> Result<Option<PortalAuth>, StoreError> {
        match by_member(&self.db, member_id).await.map_err(store_error)? {
            Some(p) => auth_of(p),
            None => Ok(None),
        }
    }

    async fn save(&self, member_id: &str, auth: &PortalAuth) -> Result<(), StoreError> {
        let Some(p) = by_member(&self.db, member_id).await.map_err(store_error)? else {
            return Err(StoreError::new(format!("portal {member_id} not found")));
        };
        save_on(&self.db, p, auth, &self.allowed_domains).await?;
        self.saved();
        Ok(())
    }

    /// Several instances share a PostgreSQL database (a SQLite file has one): the
    /// portal's row is locked (`SELECT … FOR NO KEY UPDATE`) in a transaction that
    /// reads and saves the tokens. A lock held by a crashed instance goes with its
    /// connection; `lock_timeout` bounds the wait behind one that hangs.
    async fn lock_refresh<'a>(
        &'a self,
        member_id: &'a str,
    ) -> Result<Box<dyn RefreshLock + 'a>, StoreError> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return Ok(unshared_refresh(self, member_id));
        }
        let txn = self.db.begin().await.map_err(store_error)?;
        txn.execute_unprepared("SET LOCAL lock_timeout = '90s'")
            .await
            .map_err(store_error)?;
        // FOR NO KEY UPDATE, not FOR UPDATE: robot calls keep inserting invitations
        // (whose foreign key share-locks this row) while a refresh is in flight.
        let row = portal::Entity::find()
            .filter(portal::Column::MemberId.eq(member_id))
            .lock(LockType::NoKeyUpdate)
            .one(&txn)
            .await
            .map_err(store_error)?;
        Ok(Box::new(LockedRow {
            txn,
            row,
            allowed_domains: &self.allowed_domains,
            store: self,
        }))
    }
}

/// PostgreSQL: the portal's row, read under its lock; the commit ends the lock.
struct LockedRow<'a> {
    txn: DatabaseTransaction,
    row: Option<portal::Model>,
    allowed_domains: &'a [String],
    store: &'a DbTokenStore,
}

#[async_trait]
impl RefreshLock for LockedRow<'_> {
    async fn load(&mut self) -> Result<Option<PortalAuth>, StoreError> {
        match self.row.clone() {
            Some(p) => auth_of(p),
            None => Ok(None),
        }
    }

    async fn save(self: Box<Self>, auth: &PortalAuth) -> Result<(), StoreError> {
        let Some(p) = self.row else {
            return Err(StoreError::new("portal row vanished during refresh"));
        };
        save_on(&self.txn, p, auth, self.allowed_domains).await?;
        self.txn.commit().await.map_err(store_error)?;
        self.store.saved();
        Ok(())
    }

    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        self.txn.commit().await.map_err(store_error)
    }
}

pub async fn by_member<C: ConnectionTrait>(
    db: &C,
    member_id: &str,
) -> Result<Option<portal::Model>, sea_orm::DbErr> {
    portal::Entity::find()
        .filter(portal::Column::MemberId.eq(member_id))
        .one(db)
        .await
}

fn auth_missing() -> ApiError {
    tracing::warn!("Вызов от Битрикс24 без auth[member_id] или auth[application_token]");
    ApiError::unauthorized(
        ErrorCode::AuthMissing,
        "Нет данных авторизации приложения (auth[member_id], auth[application_token])",
    )
}

/// A server-to-server call from Bitrix24 (robot, event) proves itself with the
/// application token we stored at install (protocol §4.3, §7.3). Unknown portal,
/// uninstalled portal and a wrong token all answer without saying which.
pub async fn verify_app_token(
    db: &DatabaseConnection,
    member_id: Option<&str>,
    application_token: Option<&str>,
) -> Result<portal::Model, ApiError> {
    let (Some(member_id), Some(token)) = (member_id, application_token) else {
        return Err(auth_missing());
    };
    let portal = by_member(db, member_id).await?;
    judge_app_token(portal, token, |p| {
        (p.status, p.application_token.as_deref(), &p.domain)
    })
}

/// [`verify_app_token`] for the robot: the same check, on the row and settings read
/// in one prepared statement (`db::prepared::portal_caller`) and kept for a moment
/// (`db::portal_cache`): an uninstall or a new application token on this instance
/// counts from the next call, on another within `portal_cache::TTL`.
pub async fn verify_robot_call(
    state: &crate::state::AppState,
    member_id: Option<&str>,
    application_token: Option<&str>,
) -> Result<Arc<crate::db::prepared::PortalCaller>, ApiError> {
    let (Some(member_id), Some(token)) = (member_id, application_token) else {
        return Err(auth_missing());
    };
    let caller = state.portal_cache.portal(&state.db, member_id).await?;
    judge_app_token(caller, token, |p| {
        (p.status, p.application_token.as_deref(), &p.domain)
    })
}

/// The application-token verdict on a portal found (`None`: unknown), whose
/// `(status, application_token, domain)` `fields` gives: the token must equal the
/// stored one (compared in constant time) on an installed portal. Unknown portal and
/// wrong token answer alike.
fn judge_app_token<T>(
    found: Option<T>,
    token: &str,
    fields: impl Fn(&T) -> (portal::Status, Option<&str>, &str),
) -> Result<T, ApiError> {
    let Some(found) = found else {
        return Err(bad_app_token());
    };
    let (status, stored, domain) = fields(&found);
    if status == portal::INSTALLED
        && stored.is_some_and(|s| constant_time_eq(s.as_bytes(), token.as_bytes()))
    {
        return Ok(found);
    }
    if status != portal::INSTALLED {
        tracing::warn!(portal = %domain, "Вызов для портала, с которого приложение удалено");
        return Err(ApiError::forbidden(
            ErrorCode::PortalUninstalled,
            "Приложение удалено с этого портала; установите его заново",
        ));
    }
    Err(bad_app_token())
}

fn bad_app_token() -> ApiError {
    tracing::warn!("Вызов от Битрикс24 с неверным application_token или неизвестным порталом");
    ApiError::unauthorized(ErrorCode::BadApplicationToken, "Неверный токен приложения")
}

/// Why a portal's endpoint could not be brought up to date.
#[derive(Debug)]
pub enum Revouch {
    /// The trusted OAuth server refused or could not be asked.
    Refused(crate::bitrix24::B24Error),
    Db(sea_orm::DbErr),
    /// Uninstalled meanwhile.
    Gone,
}

/// The portal with a REST endpoint the trusted OAuth server has named. A live access
/// token was vouched for already; an expired one is renewed first (the refresh answer
/// names the endpoint, `save_on`) and the row read again. Rows stored before
/// identities were vouched for are all marked expired by a migration, so a token
/// (a doctor's `AUTH_ID`, an admin's event token) never reaches an endpoint that
/// server has not named since. Concurrent renewals coalesce into one refresh.
pub async fn with_vouched_endpoint(
    state: &crate::state::AppState,
    portal: portal::Model,
) -> Result<portal::Model, Revouch> {
    if portal.expires_at.is_some_and(|at| at > Utc::now()) {
        return Ok(portal);
    }
    state
        .b24
        .renew(&portal.member_id)
        .await
        .map_err(Revouch::Refused)?;
    by_member(&state.db, &portal.member_id)
        .await
        .map_err(Revouch::Db)?
        .filter(|p| p.status == portal::INSTALLED)
        .ok_or(Revouch::Gone)
}

//! Installed portals: token storage for the client, lookups and caller verification.

use async_trait::async_trait;
use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbBackend, EntityTrait, QueryFilter, Statement, TransactionTrait,
};
use url::Url;

use crate::bitrix24::{HeldLock, PortalAuth, RefreshLock, StoreError, TokenStore};
use crate::db::entities::portal;
use crate::error::ApiError;
use crate::secret::{Secret, constant_time_eq};

/// The client's token store over the `portal` table.
pub struct DbTokenStore {
    db: DatabaseConnection,
}

/// First key of the refresh locks, so they cannot collide with other advisory locks
/// on the same database ("oprs").
const REFRESH_LOCK_CLASS: i32 = 0x6f70_7273;

/// Takes the portal's refresh lock for the rest of the transaction. An advisory
/// lock rather than `SELECT … FOR UPDATE` on the portal row: the refreshed pair is
/// saved through the pool, and a row lock would make that save wait on ourselves.
/// A lock held by a crashed instance goes with its connection; `lock_timeout`
/// bounds the wait behind one that hangs.
const TAKE_REFRESH_LOCK: [&str; 2] = [
    "SET LOCAL lock_timeout = '90s'",
    "SELECT pg_advisory_xact_lock($1, hashtext($2))",
];

/// The transaction that holds a refresh lock; committing it releases the lock.
struct RefreshTxn(DatabaseTransaction);

#[async_trait]
impl HeldLock for RefreshTxn {
    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        self.0.commit().await.map_err(StoreError::new)
    }
}

impl DbTokenStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

#[async_trait]
impl TokenStore for DbTokenStore {
    async fn load(&self, member_id: &str) -> Result<Option<PortalAuth>, StoreError> {
        let Some(p) = by_member(&self.db, member_id)
            .await
            .map_err(|e| StoreError::new(e.to_string()))?
        else {
            return Ok(None);
        };
        if p.status != portal::INSTALLED {
            return Ok(None);
        }
        let (Some(access), Some(refresh)) = (p.access_token, p.refresh_token) else {
            return Ok(None);
        };
        let client_endpoint =
            Url::parse(&p.client_endpoint).map_err(|e| StoreError::new(e.to_string()))?;
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

    async fn save(&self, member_id: &str, auth: &PortalAuth) -> Result<(), StoreError> {
        let Some(p) = by_member(&self.db, member_id)
            .await
            .map_err(|e| StoreError::new(e.to_string()))?
        else {
            return Err(StoreError::new(format!("portal {member_id} not found")));
        };
        let mut row: portal::ActiveModel = p.into();
        row.access_token = Set(Some(auth.access_token.expose().clone()));
        row.refresh_token = Set(Some(auth.refresh_token.expose().clone()));
        row.expires_at = Set(Some(auth.expires_at));
        row.client_endpoint = Set(auth.client_endpoint.to_string());
        if let Some(server) = &auth.server_endpoint {
            row.server_endpoint = Set(Some(server.to_string()));
        }
        row.updated_at = Set(Utc::now());
        row.update(&self.db)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::new(e.to_string()))
    }

    /// Several instances share a PostgreSQL database; a SQLite file has one.
    async fn lock_refresh(&self, member_id: &str) -> Result<RefreshLock, StoreError> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return Ok(RefreshLock::none());
        }
        let txn = self.db.begin().await.map_err(StoreError::new)?;
        let [timeout, lock] = TAKE_REFRESH_LOCK;
        txn.execute_unprepared(timeout)
            .await
            .map_err(StoreError::new)?;
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            lock,
            [REFRESH_LOCK_CLASS.into(), member_id.into()],
        ))
        .await
        .map_err(StoreError::new)?;
        Ok(RefreshLock::held(RefreshTxn(txn)))
    }
}

pub async fn by_member(
    db: &DatabaseConnection,
    member_id: &str,
) -> Result<Option<portal::Model>, sea_orm::DbErr> {
    portal::Entity::find()
        .filter(portal::Column::MemberId.eq(member_id))
        .one(db)
        .await
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
        tracing::warn!("Вызов от Битрикс24 без auth[member_id] или auth[application_token]");
        return Err(ApiError::unauthorized(
            "auth_missing",
            "Нет данных авторизации приложения (auth[member_id], auth[application_token])",
        ));
    };
    let portal = by_member(db, member_id).await?;
    let ok = portal.as_ref().is_some_and(|p| {
        p.status == portal::INSTALLED
            && p.application_token
                .as_deref()
                .is_some_and(|stored| constant_time_eq(stored.as_bytes(), token.as_bytes()))
    });
    match portal {
        Some(p) if ok => Ok(p),
        Some(p) if p.status != portal::INSTALLED => {
            tracing::warn!(portal = %p.domain, "Вызов для портала, с которого приложение удалено");
            Err(ApiError::forbidden(
                "portal_uninstalled",
                "Приложение удалено с этого портала; установите его заново",
            ))
        }
        _ => {
            tracing::warn!(
                "Вызов от Битрикс24 с неверным application_token или неизвестным порталом"
            );
            Err(ApiError::unauthorized(
                "bad_application_token",
                "Неверный токен приложения",
            ))
        }
    }
}

//! Portal request buckets in PostgreSQL, shared by every instance of the service.
//! Each reservation is one atomic upsert that both counts the request and says how
//! long to wait, on the database's clock so that instances need not agree on time.

use std::time::Duration;

use async_trait::async_trait;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use crate::bitrix24::{RateLimit, SharedBucket, StoreError};

/// The same generic cell rate algorithm as the client's in-process buckets: the
/// row holds the time at which the bucket is empty again (`tat_us`). A request
/// moves it one interval on and may go `tolerance` ahead of it.
const RESERVE: &str = "\
WITH clock AS (SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint AS now_us)
INSERT INTO rate_bucket (bucket, tat_us)
SELECT $1, now_us + $2 FROM clock
ON CONFLICT (bucket) DO UPDATE SET tat_us = GREATEST(rate_bucket.tat_us + $2, EXCLUDED.tat_us)
RETURNING GREATEST(0, tat_us - $2 - $3 - (SELECT now_us FROM clock)) AS wait_us";

/// Full means empty no sooner than one whole bucket from now.
const FILL: &str = "\
WITH clock AS (SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint AS now_us)
INSERT INTO rate_bucket (bucket, tat_us)
SELECT $1, now_us + $2 FROM clock
ON CONFLICT (bucket) DO UPDATE SET tat_us = GREATEST(rate_bucket.tat_us, EXCLUDED.tat_us)";

/// A reservation that counts only if it may go within `$4` microseconds; no row
/// comes back when it may not, and the bucket is left as it was. `EXCLUDED.tat_us`
/// is now plus one interval.
const TRY_RESERVE: &str = "\
WITH clock AS (SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint AS now_us)
INSERT INTO rate_bucket (bucket, tat_us)
SELECT $1, now_us + $2 FROM clock
ON CONFLICT (bucket) DO UPDATE SET tat_us = GREATEST(rate_bucket.tat_us + $2, EXCLUDED.tat_us)
WHERE GREATEST(rate_bucket.tat_us + $2, EXCLUDED.tat_us) - EXCLUDED.tat_us - $3 <= $4
RETURNING GREATEST(0, tat_us - $2 - $3 - (SELECT now_us FROM clock)) AS wait_us";

/// Buckets in the `rate_bucket` table; for PostgreSQL only (a SQLite file is never
/// shared by several instances).
pub struct DbRateBucket {
    db: DatabaseConnection,
}

impl DbRateBucket {
    /// `None` unless the database is PostgreSQL.
    pub fn for_shared_db(db: &DatabaseConnection) -> Option<Self> {
        (db.get_database_backend() == DbBackend::Postgres).then(|| Self { db: db.clone() })
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn store_error(e: sea_orm::DbErr) -> StoreError {
    StoreError::new(e)
}

#[async_trait]
impl SharedBucket for DbRateBucket {
    async fn reserve(&self, key: &str, rate: RateLimit) -> Result<Duration, StoreError> {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                RESERVE,
                [
                    key.into(),
                    micros(rate.interval()).into(),
                    micros(rate.tolerance()).into(),
                ],
            ))
            .await
            .map_err(store_error)?
            .ok_or_else(|| StoreError::new("rate bucket upsert returned no row"))?;
        let wait_us: i64 = row.try_get("", "wait_us").map_err(store_error)?;
        Ok(Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)))
    }

    async fn try_reserve(
        &self,
        key: &str,
        rate: RateLimit,
        max_wait: Duration,
    ) -> Result<Result<Duration, Duration>, StoreError> {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                TRY_RESERVE,
                [
                    key.into(),
                    micros(rate.interval()).into(),
                    micros(rate.tolerance()).into(),
                    micros(max_wait).into(),
                ],
            ))
            .await
            .map_err(store_error)?;
        let Some(row) = row else {
            // Refused; a slot frees up at least every interval.
            return Ok(Err(rate.interval()));
        };
        let wait_us: i64 = row.try_get("", "wait_us").map_err(store_error)?;
        Ok(Ok(Duration::from_micros(
            u64::try_from(wait_us).unwrap_or(0),
        )))
    }

    async fn mark_full(&self, key: &str, rate: RateLimit) -> Result<(), StoreError> {
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                FILL,
                [
                    key.into(),
                    micros(rate.tolerance() + rate.interval()).into(),
                ],
            ))
            .await
            .map(|_| ())
            .map_err(store_error)
    }
}

//! Everything a request handler or a job needs, built once at start-up.

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::Notify;

use crate::bitrix24::{B24Client, ClientConfig};
use crate::config::Config;
use crate::db::group_commit::{self, GroupCommit};
use crate::invitations::links::{LinkSigner, generate_secret};
use crate::local_app::portals::DbTokenStore;
use crate::secret::Secret;
use crate::survey::Catalog;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    catalog: RwLock<Catalog>,
    /// Portals' own catalogs and parsed versions, for the robot's hot path
    /// (`questionnaires::resolve`).
    pub questionnaires: crate::questionnaires::Cache,
    pub links: LinkSigner,
    pub b24: B24Client,
    /// Wakes the outbox worker when a job is queued.
    pub outbox_notify: Arc<Notify>,
    /// Secret for the doctor's tab sessions (derived from the link secret, never sent).
    pub session_key: Secret<Vec<u8>>,
    /// Refusals of repeated failed identity checks and the confirmed tab tokens.
    pub verify_guard: crate::local_app::verify_guard::VerifyGuard,
    /// SQLite has one writer at a time, and a writer that finds the lock taken sleeps
    /// in SQLite's busy handler with growing pauses; within this process writers
    /// queue here instead, in order and without sleeping. `None` on PostgreSQL.
    sqlite_turn: Option<Arc<tokio::sync::Mutex<()>>>,
    /// SQLite's writer connection (`db::connect_writer`), used with the turn only.
    writer: Option<DatabaseConnection>,
    /// The group commit's turn: `sqlite_turn` on SQLite; on PostgreSQL a turn of its
    /// own, taken by group commits only, so that callers arriving while one commits
    /// queue for the next one instead of each paying a transaction of their own.
    group_turn: Arc<tokio::sync::Mutex<()>>,
    /// Writes queued for the next group commit (`group_write`).
    group: GroupCommit,
    /// Callers of `write_turn` waiting for `sqlite_turn`: the group commit lets
    /// go of the turn for them (`group_commit`).
    turn_waiting: AtomicUsize,
    /// Portals nudged since the outbox worker last looked (`nudge_outbox_for`).
    nudged: std::sync::Mutex<Nudged>,
    /// The portal rows robot calls check (`db::portal_cache`): forget them after
    /// changing a portal's row or settings.
    pub portal_cache: Arc<crate::db::portal_cache::PortalCache>,
    /// Entity types whose link field is known to exist behind the inbound webhook.
    link_fields: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The SQLite file `db::checkpoint` fsyncs, with the writer only. Last, so that it
    /// is closed after the connections: closing any descriptor of a file drops every
    /// POSIX lock this process holds on it, SQLite's included, and another process
    /// could then take the database for unused while it is written.
    database_file: Option<Arc<std::fs::File>>,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The nudges since the worker last looked: jobs of these portals, or of any.
#[derive(Debug, Default)]
pub struct Nudged {
    pub any: bool,
    pub portals: std::collections::HashSet<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("база данных недоступна: {0}")]
    Database(#[from] DbErr),
    #[error("HTTP-клиент не создан: {0}")]
    HttpClient(#[from] reqwest::Error),
    /// A questionnaire file with problems stops the start: a clinic would otherwise
    /// send links to a questionnaire that silently is not there.
    #[error("анкеты содержат ошибки, исправьте их и запустите сервис снова:\n{}", crate::survey::join_load_problems(.0))]
    Surveys(Vec<crate::survey::LoadProblem>),
}

impl AppState {
    /// Connects, migrates, loads questionnaires and the link secret.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let db = crate::db::connect(config.database_url.expose()).await?;
        tracing::info!("База данных подключена");
        crate::db::migrate(&db).await?;
        tracing::info!("Миграции применены");
        let writer = crate::db::connect_writer(config.database_url.expose()).await?;
        Self::with_dbs(config, db, writer).await
    }

    pub async fn with_db(config: Config, db: DatabaseConnection) -> Result<Self, StartError> {
        Self::with_dbs(config, db, None).await
    }

    async fn with_dbs(
        config: Config,
        db: DatabaseConnection,
        writer: Option<DatabaseConnection>,
    ) -> Result<Self, StartError> {
        let secret = match &config.link_secret {
            Some(s) => s.clone(),
            None => Secret::new(
                crate::db::setting_or_insert(&db, "link_secret", &generate_secret()).await?,
            ),
        };
        let (catalog, problems) = crate::survey::Catalog::load(config.surveys_dir.as_deref());
        if !problems.is_empty() {
            return Err(StartError::Surveys(problems));
        }
        tracing::info!(count = catalog.list().len(), "Анкеты загружены");
        let portal_cache = Arc::new(crate::db::portal_cache::PortalCache::default());
        let shared_bucket = crate::db::rate_bucket::DbRateBucket::for_shared_db(&db)
            .map(|b| Arc::new(b) as Arc<dyn crate::bitrix24::SharedBucket>);
        let b24 = B24Client::with_bucket(
            ClientConfig {
                client_id: config.b24_client_id.clone(),
                client_secret: config.b24_client_secret.clone(),
                oauth_url: config.b24_oauth_url.clone(),
                rate: config.b24_rate_limit,
                request_timeout: Duration::from_secs(30),
                max_retries: 3,
                operating_limit: Duration::from_secs(480),
            },
            Arc::new(
                DbTokenStore::new(db.clone())
                    .with_allowed_domains(config.b24_allowed_domains.clone())
                    .with_portal_cache(Arc::clone(&portal_cache)),
            ),
            shared_bucket,
        )?;
        let session_key = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(b"opros-tab-session:");
            h.update(secret.expose().as_bytes());
            Secret::new(h.finalize().to_vec())
        };
        let database_file = match &writer {
            Some(_) => crate::db::checkpoint::database_file(&db)
                .await?
                .map(Arc::new),
            None => None,
        };
        let db_backend = db.get_database_backend();
        let sqlite_turn = (db_backend == sea_orm::DatabaseBackend::Sqlite)
            .then(|| Arc::new(tokio::sync::Mutex::new(())));
        let group_turn = sqlite_turn.clone().unwrap_or_default();
        Ok(AppState(Arc::new(Inner {
            links: LinkSigner::new(&secret),
            config: Arc::new(config),
            db,
            catalog: RwLock::new(catalog),
            questionnaires: Default::default(),
            b24,
            outbox_notify: Arc::new(Notify::new()),
            session_key,
            verify_guard: Default::default(),
            link_fields: Default::default(),
            database_file,
            nudged: Default::default(),
            portal_cache,
            writer: writer.filter(|_| sqlite_turn.is_some()),
            sqlite_turn,
            group_turn,
            group: GroupCommit::default(),
            turn_waiting: AtomicUsize::new(0),
        })))
    }

    pub fn catalog(&self) -> RwLockReadGuard<'_, Catalog> {
        // A poisoned lock means a panic while inserting a questionnaire; the catalog
        // itself is still consistent (insert is a single map operation).
        self.catalog.read().unwrap_or_else(|e| e.into_inner())
    }

    /// This process's turn to write to SQLite (see `sqlite_turn`); hold it for the
    /// whole write. Always `None` on PostgreSQL, which has row locks.
    pub async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let turn = self.sqlite_turn.as_ref()?;
        let _waiting = Waiting::count(&self.turn_waiting);
        Some(turn.lock().await)
    }

    /// Begins a transaction that will write, after taking this process's turn. On
    /// SQLite it also takes the write lock at BEGIN (`BEGIN IMMEDIATE`): a deferred
    /// transaction that reads first cannot upgrade once another writer (another
    /// process) committed (SQLITE_BUSY_SNAPSHOT). Keep the turn until the commit.
    pub async fn begin_write(
        &self,
    ) -> Result<
        (
            Option<tokio::sync::MutexGuard<'_, ()>>,
            sea_orm::DatabaseTransaction,
        ),
        DbErr,
    > {
        let turn = self.write_turn().await;
        let txn = self.begin_in_turn().await?;
        Ok((turn, txn))
    }

    async fn begin_in_turn(&self) -> Result<sea_orm::DatabaseTransaction, DbErr> {
        use sea_orm::{SqliteTransactionMode, TransactionOptions, TransactionTrait};
        let options = TransactionOptions {
            sqlite_transaction_mode: self
                .sqlite_turn
                .as_ref()
                .map(|_| SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        self.write_db().begin_with_options(options).await
    }

    /// What `db::checkpoint` runs on: the reading pool of a SQLite file (which has a
    /// writer of its own) and the file; `None` for PostgreSQL and in-memory SQLite.
    pub fn wal_checkpoints(&self) -> Option<crate::db::checkpoint::Side> {
        self.writer.as_ref().map(|_| crate::db::checkpoint::Side {
            db: self.db.clone(),
            file: self.database_file.clone(),
        })
    }

    /// The connection for writes made in this process's turn (`write_turn`): the
    /// writer on a SQLite file, else the pool. Never use it without the turn.
    pub fn write_db(&self) -> &DatabaseConnection {
        self.writer.as_ref().unwrap_or(&self.db)
    }

    /// Stores `work`'s writes together with those of concurrent callers, in one
    /// transaction (see `db::group_commit`), and returns its value once committed.
    /// `work` may use only the transaction it is given, and may run twice.
    pub async fn group_write<T, F>(&self, work: F) -> Result<T, DbErr>
    where
        T: Send + 'static,
        F: for<'t> Fn(
                &'t sea_orm::DatabaseTransaction,
            ) -> futures::future::BoxFuture<'t, Result<T, DbErr>>
            + Send
            + Sync
            + 'static,
    {
        self.group_commit(self.group.submit(work)).await
    }

    /// [`group_write`](Self::group_write) for a [`group_commit::Batched`] item: the
    /// items of its kind queued together are written by one `write_all`.
    pub async fn group_write_batched<B: group_commit::Batched>(
        &self,
        item: B,
    ) -> Result<B::Output, DbErr> {
        self.group_commit(self.group.submit_batched(item)).await
    }

    /// Waits for the commit holding `pending`'s writes, making it if nobody else does.
    async fn group_commit<T>(&self, mut pending: group_commit::Pending<T>) -> Result<T, DbErr> {
        let turn = tokio::select! {
            biased;
            // Someone else's commit already carried these writes.
            answer = &mut pending => return answer.unwrap_or_else(|_| group_commit::answer_lost()),
            turn = self.group_turn.clone().lock_owned() => turn,
        };
        let batch = self.group.take();
        if !batch.is_empty() {
            // On a task of its own, with the turn: a caller that goes away (a closed
            // connection) cannot cut the other callers' writes off halfway.
            let state = self.clone();
            tokio::spawn(async move {
                let _turn = turn;
                let mut batch = batch;
                // What queued meanwhile goes out next with the same turn, unless
                // another writer waits for it (the outbox's claim, a page's
                // write). Handing the turn to the next caller in line took a round
                // of tokio's scheduling every time: under load the writer sat idle
                // a third of the time between commits (issue 19).
                loop {
                    state.commit_queued(batch).await;
                    if state.turn_waiting.load(Ordering::Acquire) > 0 {
                        break;
                    }
                    batch = state.group.take();
                    if batch.is_empty() {
                        break;
                    }
                }
            });
        }
        group_commit::answer(pending).await
    }

    /// Commits `batch` with the group's turn held.
    async fn commit_queued(&self, batch: Vec<group_commit::Queued>) {
        // SQLite's writer commits what it can in one call per kind first.
        let batch = match &self.writer {
            Some(writer) => group_commit::commit_at_once(batch, writer).await,
            None => batch,
        };
        if batch.is_empty() {
            return;
        }
        match self.begin_in_turn().await {
            Ok(txn) => group_commit::commit(batch, txn, || self.begin_in_turn()).await,
            Err(e) => {
                tracing::error!(error = %e, "транзакция для групповой записи не началась");
            }
        }
    }

    pub fn link_field_checked(&self, entity: &str) -> bool {
        self.link_fields
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(entity)
    }

    pub fn mark_link_field_checked(&self, entity: &str) {
        self.link_fields
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(entity.to_owned());
    }

    /// The patient's link for an invitation, as `invitations::links` builds it: the
    /// outbox writes it into the deal and returns it to the robot without reaching
    /// up into `invitations`.
    pub fn survey_url(&self, inv: &crate::db::entities::invitation::Model) -> String {
        crate::invitations::links::survey_url(&self.config, &self.links, inv)
    }

    /// Tells the worker there is work (after a commit).
    pub fn nudge_outbox(&self) {
        self.nudged_portals().any = true;
        self.outbox_notify.notify_one();
    }

    /// [`nudge_outbox`](Self::nudge_outbox) for jobs of one portal only: a worker
    /// already running that portal's jobs need not look for them (it claims them
    /// when its run ends), and a burst of robot calls then costs it no claim query
    /// over the portal's backlog at every nudge.
    pub fn nudge_outbox_for(&self, portal_id: Option<i64>) {
        match portal_id {
            Some(id) => {
                self.nudged_portals().portals.insert(id);
            }
            None => self.nudged_portals().any = true,
        }
        self.outbox_notify.notify_one();
    }

    /// What was nudged since the worker last asked, emptied.
    pub fn take_nudges(&self) -> Nudged {
        std::mem::take(&mut *self.nudged_portals())
    }

    fn nudged_portals(&self) -> std::sync::MutexGuard<'_, Nudged> {
        self.nudged.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One caller counted in `turn_waiting` for as long as it waits, also when it
/// goes away before its turn.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

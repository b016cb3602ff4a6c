//! opros: patient questionnaires for Bitrix24 CRM. See ARCHITECTURE.md for the map.

pub mod app;
pub mod assets;
pub mod bitrix24;
pub mod body_limit;
pub mod completion;
pub mod config;
pub mod connections;
pub mod crm;
pub mod db;
pub mod error;
pub mod invitations;
pub mod legacy;
pub mod local_app;
pub mod outbox;
pub mod questionnaires;
pub mod report;
pub mod secret;
pub mod state;
pub mod survey;
pub mod telemetry;
pub mod views;
pub mod web;

#[cfg(feature = "demo")]
pub mod demo;

#[cfg(feature = "testing")]
pub mod testing;

use std::net::SocketAddr;

use poem::listener::Acceptor;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use connections::GuardedAcceptor;
pub use state::AppState;

/// The service, bound to its port (port 0 gives a free one, which tests use) but not
/// yet serving.
pub struct Application {
    pub state: AppState,
    addr: SocketAddr,
    acceptor: GuardedAcceptor<poem::listener::TcpAcceptor>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listen = config.listen;
        let state = AppState::build(config).await?;
        Self::with_state(state, listen).await
    }

    pub async fn with_state(state: AppState, listen: SocketAddr) -> anyhow::Result<Self> {
        // Before the first socket: idle clients must not run out the descriptors.
        let descriptors = connections::raise_descriptor_limit();
        let acceptor = connections::bind(listen)
            .map_err(|e| anyhow::anyhow!("не удалось занять адрес {listen}: {e}"))?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .unwrap_or(listen);
        let limits = state.config.connections;
        Ok(Self {
            state,
            addr,
            acceptor: GuardedAcceptor::new(acceptor, limits, descriptors),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serves and runs the outbox worker and the token upkeep until `cancel` fires;
    /// in-flight requests finish, the worker stops between jobs.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> std::io::Result<()> {
        // The port makes the instance's name unique on its host while it runs, and
        // the same after a restart: the worker takes its own old leases back.
        let instance = format!("{}:{}", outbox::worker::host_name(), self.addr.port());
        let worker = tokio::spawn(
            outbox::Outbox::for_instance(self.state.clone(), instance).run(cancel.clone()),
        );
        let upkeep = tokio::spawn(local_app::token_upkeep::run(
            self.state.clone(),
            cancel.clone(),
        ));
        let checkpoints = self
            .state
            .wal_checkpoints()
            .map(|side| tokio::spawn(db::checkpoint::run(side, cancel.clone())));
        let endpoint = app::routes(self.state.clone());
        let stop = cancel.clone();
        let result = poem::Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(
                endpoint,
                async move { stop.cancelled().await },
                Some(std::time::Duration::from_secs(20)),
            )
            .await;
        cancel.cancel();
        let _ = worker.await;
        let _ = upkeep.await;
        if let Some(checkpoints) = checkpoints {
            let _ = checkpoints.await;
        }
        result
    }
}

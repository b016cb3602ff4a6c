//! `opros serve` as a child process configured for a fake portal, for the crash tests
//! and the recovery bench: a real process, so SIGKILL means no shutdown code runs.
//! The binary's path is the caller's `env!("CARGO_BIN_EXE_opros")`, which Cargo sets
//! for integration tests and benches but not for the library.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::FakePortal;

/// How long a starting process may take to answer `/healthz` (a cold debug build on
/// shared cores migrates the database first).
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A running `opros serve`; killed (SIGKILL) when dropped.
pub struct ServiceProcess {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl ServiceProcess {
    /// Starts `bin serve` on `port` with a clean environment: the database, the
    /// address and the fake portal's OAuth application only. Its output goes to
    /// `dir/<name>.log`. Returns once `/healthz` answers.
    pub async fn start(
        bin: &Path,
        db_url: &str,
        port: u16,
        fake: &FakePortal,
        dir: &Path,
        name: &str,
    ) -> Result<Self, String> {
        Self::start_with(bin, db_url, port, fake, dir, name, &[]).await
    }

    /// As [`ServiceProcess::start`], with more variables (`B24_RATE_LIMIT` for a
    /// bench that lifts the portal's limit, `RUST_LOG`); they win over the defaults.
    pub async fn start_with(
        bin: &Path,
        db_url: &str,
        port: u16,
        fake: &FakePortal,
        dir: &Path,
        name: &str,
        vars: &[(&str, &str)],
    ) -> Result<Self, String> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).map_err(|e| format!("log file: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("log file: {e}"))?;
        let child = Command::new(bin)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db_url)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("PUBLIC_URL", format!("http://127.0.0.1:{port}"))
            .env("B24_CLIENT_ID", fake.client_id())
            .env("B24_CLIENT_SECRET", fake.client_secret())
            .env("B24_OAUTH_URL", fake.token_url())
            .env("RUST_LOG", "info")
            .envs(vars.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{} does not start: {e}", bin.display()))?;
        let service = ServiceProcess { child, port, log };
        service.ready().await?;
        Ok(service)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, for signals other than SIGKILL.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn ready(&self) -> Result<(), String> {
        let http = reqwest::Client::new();
        let url = self.url("/healthz");
        within(READY_WITHIN, "the service answers /healthz", || {
            let r = http.get(&url).send();
            async move { r.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await
        .map_err(|e| format!("{e}\n{}", self.log_tail()))
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status once the process has ended, without waiting.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// The last 40 lines of the process's output, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nobody listens on now; the child binds it a moment later.
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

/// Polls until `ok` holds; an `Err` naming `what` after `deadline`.
pub async fn within<F, Fut>(deadline: Duration, what: &str, mut ok: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    while !ok().await {
        if Instant::now() >= until {
            return Err(format!("timed out ({deadline:?}) waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

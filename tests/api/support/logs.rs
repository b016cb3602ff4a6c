//! Captures what the service logs, to assert on the guide's lines and that no secret
//! ever reaches a log. One global subscriber writes every line into a shared store,
//! tagged with the tokio runtime that emitted it; a test sees only its own lines.
//!
//! Each `#[tokio::test]` builds a runtime of its own, and everything a test's apps do
//! runs on it: the server's connections, the outbox worker, `spawn_blocking` (a
//! runtime's blocking threads carry its id too). A line logged by another test, even
//! the very same message, has another runtime's id and is not seen.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::runtime::{Handle, Id};
use tracing_subscriber::fmt::MakeWriter;

/// One event's text, with the runtime it came from (`None`: a thread outside any
/// runtime, such as a database driver's own).
struct Line {
    runtime: Option<Id>,
    text: String,
}

/// Every captured line.
#[derive(Clone, Default)]
struct Store(Arc<Mutex<Vec<Line>>>);

/// One event's text, stored whole when the formatter is done with it.
struct LineWriter {
    store: Store,
    runtime: Option<Id>,
    text: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.text).into_owned();
        self.store
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Line {
                runtime: self.runtime,
                text,
            });
    }
}

impl<'a> MakeWriter<'a> for Store {
    type Writer = LineWriter;
    // Called on the thread that emits the event, so the runtime is the emitter's.
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            store: self.clone(),
            runtime: Handle::try_current().ok().map(|h| h.id()),
            text: Vec::new(),
        }
    }
}

static STORE: OnceLock<Store> = OnceLock::new();

/// What one test's runtime logged.
pub struct Buffer {
    store: Store,
    runtime: Id,
}

/// Installs the capturing subscriber once for the whole test binary and returns the
/// calling test's view of it. Call it from the test's own runtime.
pub fn capture() -> Buffer {
    let store = STORE
        .get_or_init(|| {
            let store = Store::default();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(store.clone())
                .with_ansi(false)
                .with_env_filter("debug,sqlx=warn,sea_orm=warn,hyper=warn,h2=warn,reqwest=warn,poem=warn,rustls=warn,hyper_util=warn")
                .finish();
            let _ = tracing::subscriber::set_global_default(subscriber);
            store
        })
        .clone();
    Buffer {
        store,
        runtime: Handle::current().id(),
    }
}

impl Buffer {
    /// The lines this test's runtime logged so far, in order.
    pub fn text(&self) -> String {
        self.store
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|line| line.runtime == Some(self.runtime))
            .map(|line| line.text.as_str())
            .collect()
    }
}

/// Every line any test logged, for a test of the capture itself.
pub fn capture_all() -> String {
    let store = match STORE.get() {
        Some(store) => store,
        None => return String::new(),
    };
    store
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|line| line.text.as_str())
        .collect()
}

//! Test support, compiled only with the `testing` feature: the fake Bitrix24 portal,
//! an attacker's server, an in-memory token store, a log capture, and `opros serve` as
//! a child process with the crash scenarios run against it.

mod answers;
mod databases;
mod evil_server;
pub mod fake_portal;
pub mod form_tree;
mod log_capture;
mod memory_store;
pub mod recovery;
mod service_process;

pub use answers::{full_answers, submit_through_api};
pub use databases::new_postgres_database;
pub use evil_server::{EVIL_MEMBER_ID, EvilServer, SeenRequest};
pub use fake_portal::{
    AuthKind, FakePortal, FakePortalConfig, FakePortalError, Fault, RecordedCall, TimelineComment,
};
pub use log_capture::LogCapture;
pub use memory_store::MemoryTokenStore;
pub use service_process::{ServiceProcess, free_port, within};

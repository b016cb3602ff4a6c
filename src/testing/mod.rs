//! Test support, compiled only with the `testing` feature: the fake Bitrix24 portal,
//! an attacker's server, an in-memory token store and a log capture.

mod evil_server;
pub mod fake_portal;
mod log_capture;
mod memory_store;

pub use evil_server::{EVIL_MEMBER_ID, EvilServer, SeenRequest};
pub use fake_portal::{
    AuthKind, FakePortal, FakePortalConfig, FakePortalError, Fault, RecordedCall, TimelineComment,
};
pub use log_capture::LogCapture;
pub use memory_store::MemoryTokenStore;

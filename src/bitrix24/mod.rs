//! The only code that knows Bitrix24's wire format: REST calls (form-encoded, PHP
//! bracket keys), OAuth refresh, rate limits, `batch`, and decoding of the form POSTs
//! Bitrix24 sends. The reference is `/shared/bitrix24-protocol.md` ("protocol §n").

mod batch;
pub mod body;
pub mod callback;
mod client;
mod error;
pub mod form;
mod oauth;
mod rate_limit;
mod types;
mod webhook_url;

pub use batch::MAX_COMMANDS as BATCH_MAX_COMMANDS;
pub use client::B24Client;
pub use error::{B24Error, StoreError, remote_text};
pub use oauth::{Vouched, is_bitrix_oauth_server, rest_endpoint, token_url};
pub use rate_limit::{RateLimit, RateLimitParseError, SharedBucket};
pub use types::{
    B24Response, BatchCommand, BatchOutcome, ClientConfig, PortalAuth, Profile, RefreshLock,
    Target, TimeInfo, TokenStore, field, truthy, unshared_refresh,
};
pub use webhook_url::{WebhookUrl, WebhookUrlError};

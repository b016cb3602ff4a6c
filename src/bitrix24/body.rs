//! Reading what a portal or an OAuth server answers, never more than [`MAX_BODY`].
//! A REST answer is a page of at most 50 records and a token answer a few hundred
//! bytes (protocol §2.3, §9); PDFs are sent, not received. A server that answers
//! more, whatever its `Content-Length` says, is cut off with a typed error before
//! the excess is held in memory.

use bytes::{Bytes, BytesMut};

use super::error::B24Error;

/// Ample for a `batch` of 50 list pages; far below what would hurt the process.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// Reads the body of `response` up to `limit` bytes, chunk by chunk.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, B24Error> {
    let status = response.status().as_u16();
    let too_large = || B24Error::ResponseTooLarge { status, limit };
    // A declared length over the limit is refused without reading; a smaller or
    // missing one is not believed, the count below decides.
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(B24Error::from_reqwest)? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

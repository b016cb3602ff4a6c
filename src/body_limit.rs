//! Refuses bodies over a limit with 413, whether the length is declared or the body
//! is chunked. poem's `SizeLimit` also answers 411 to any request without a
//! `Content-Length`, GETs included, which a browser's plain GET must never see.

use poem::http::{StatusCode, header};
use poem::{Body, Endpoint, IntoResponse, Middleware, Request, Response};
use tokio::io::AsyncReadExt;

use crate::error::ApiError;

pub struct BodyLimit(pub usize);

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;
    fn transform(&self, ep: E) -> Self::Output {
        BodyLimitEndpoint {
            inner: ep,
            limit: self.0,
        }
    }
}

pub struct BodyLimitEndpoint<E> {
    inner: E,
    limit: usize,
}

fn too_large() -> Response {
    ApiError::too_large("Слишком большой запрос").into_response()
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        match declared {
            Some(len) if len > self.limit => return Ok(too_large()),
            Some(_) => {}
            None if req.headers().contains_key(header::TRANSFER_ENCODING) => {
                let mut buf = Vec::new();
                let read = req
                    .take_body()
                    .into_async_read()
                    .take(self.limit as u64 + 1)
                    .read_to_end(&mut buf)
                    .await;
                if read.is_err() {
                    return Ok(StatusCode::BAD_REQUEST.into_response());
                }
                if buf.len() > self.limit {
                    return Ok(too_large());
                }
                req.set_body(Body::from(buf));
            }
            None => {}
        }
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}

//! The opening every frame handler shares (install page, deal tab, admin page): the
//! query string, the body decoded once through the bounded decoder into its type, and
//! — for the tab and the admin page — the caller confirmed by the portal
//! (`frame_auth::verify`). A refusal is the error page, framed for the portal the
//! request claims, before the handler runs.

use poem::http::StatusCode;
use poem::web::Query;
use poem::{FromRequest, Request, RequestBody, Response};
use serde::de::DeserializeOwned;

use super::frame_auth::{self, FrameCaller};
use super::install::PortalQuery;
use super::{page, verify_guard};
use crate::bitrix24::callback::{FrameCall, decode_body, log_refusal};
use crate::state::AppState;

/// A frame POST decoded into `T`, with its query string.
pub struct FramePost<T> {
    pub query: PortalQuery,
    pub call: T,
    /// The origin the query string claims: who may frame a refusal.
    pub claimed_origin: Option<String>,
}

fn refuse(response: Response) -> poem::Error {
    poem::Error::from_response(response)
}

impl<'a, T: DeserializeOwned + Send> FromRequest<'a> for FramePost<T> {
    async fn from_request(req: &'a Request, body: &mut RequestBody) -> poem::Result<Self> {
        let Query(query) = Query::<PortalQuery>::from_request(req, body).await?;
        let claimed_origin = page::claimed_origin(&query);
        let unreadable = || {
            let refused = page::error(StatusCode::BAD_REQUEST, "Не удалось прочитать запрос");
            refuse(page::frame_for(refused, claimed_origin.as_deref()))
        };
        let bytes = body.take()?.into_bytes().await.map_err(|_| unreadable())?;
        let call = decode_body(req.content_type(), &bytes).map_err(|e| {
            log_refusal(&e);
            unreadable()
        })?;
        Ok(FramePost {
            query,
            call,
            claimed_origin,
        })
    }
}

/// A frame POST whose user the portal confirmed (protocol §11).
pub struct VerifiedFrame {
    pub caller: FrameCaller,
    pub call: FrameCall,
}

impl<'a> FromRequest<'a> for VerifiedFrame {
    async fn from_request(req: &'a Request, body: &mut RequestBody) -> poem::Result<Self> {
        let post = FramePost::<FrameCall>::from_request(req, body).await?;
        let Some(state) = req.data::<AppState>() else {
            return Err(poem::Error::from_status(StatusCode::INTERNAL_SERVER_ERROR));
        };
        let ip = verify_guard::client_ip(req);
        match frame_auth::verify(state, ip, &post.query, &post.call).await {
            Ok(caller) => Ok(VerifiedFrame {
                caller,
                call: post.call,
            }),
            Err(e) => Err(refuse(page::frame_for(
                e.error_page(),
                post.claimed_origin.as_deref(),
            ))),
        }
    }
}

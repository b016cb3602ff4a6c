//! A hostile server for attack tests: an attacker's "portal" and "OAuth server" in
//! one. It records every request it receives, so a test can assert that it never
//! saw the client secret or a refresh token, and answers each with what the attacker
//! chose: by default a body that passes for a token answer naming the attacker's own
//! `client_endpoint` and `member_id` (protocol §2.3 shape) and for a REST answer in
//! which the caller is an admin of our application (§11 `profile`, `app.info`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use poem::http::StatusCode;
use poem::{Request, Response};
use serde_json::{Value, json};

/// One request as the attacker's server saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: String,
}

impl SeenRequest {
    /// Whether `needle` appears anywhere in the request line or body (raw or
    /// percent-encoded as a form would carry it).
    pub fn contains(&self, needle: &str) -> bool {
        let encoded: String = url::form_urlencoded::byte_serialize(needle.as_bytes()).collect();
        [&self.path, &self.query, &self.body]
            .iter()
            .any(|part| part.contains(needle) || part.contains(&encoded))
    }
}

struct Shared {
    seen: Mutex<Vec<SeenRequest>>,
    answer: Mutex<(u16, Value)>,
}

impl Shared {
    fn seen(&self) -> MutexGuard<'_, Vec<SeenRequest>> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
    fn answer(&self) -> MutexGuard<'_, (u16, Value)> {
        self.answer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The attacker's server on `127.0.0.1:0`; stops when dropped.
pub struct EvilServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for EvilServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The `member_id` the attacker's answers name.
pub const EVIL_MEMBER_ID: &str = "eeee0000eeee0000eeee0000eeee0000";

impl EvilServer {
    pub async fn start() -> std::io::Result<EvilServer> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let acceptor = poem::listener::TcpAcceptor::from_tokio(listener)?;
        let base = format!("http://{addr}");
        let shared = Arc::new(Shared {
            seen: Mutex::new(Vec::new()),
            answer: Mutex::new((200, default_answer(&base))),
        });
        let for_server = shared.clone();
        let endpoint = poem::endpoint::make(move |req: Request| {
            let shared = for_server.clone();
            async move { handle(&shared, req).await }
        });
        let server = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor)
                .run(endpoint)
                .await;
        });
        Ok(EvilServer {
            shared,
            addr,
            server,
        })
    }

    /// `127.0.0.1:<port>`, what an attacker puts in `DOMAIN`.
    pub fn domain(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:<port>/rest/`: the attacker's REST base and `server_endpoint`.
    pub fn rest_endpoint(&self) -> String {
        format!("http://{}/rest/", self.addr)
    }

    /// `http://127.0.0.1:<port>/oauth/token/`.
    pub fn token_url(&self) -> String {
        format!("http://{}/oauth/token/", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.seen().clone()
    }

    /// Whether any request carried `needle`.
    pub fn saw(&self, needle: &str) -> bool {
        self.shared.seen().iter().any(|r| r.contains(needle))
    }

    /// Answers every later request with this status and JSON body.
    pub fn answer_with(&self, status: u16, body: Value) {
        *self.shared.answer() = (status, body);
    }
}

/// A token answer (protocol §2.3) and a REST answer at once, all naming the attacker.
fn default_answer(base: &str) -> Value {
    json!({
        "access_token": "evil-access-token-0000000000000000",
        "refresh_token": "evil-refresh-token-000000000000000",
        "expires_in": 3600,
        "scope": "crm,bizproc,placement,user_brief,im",
        "domain": "oauth.bitrix.info",
        "server_endpoint": format!("{base}/rest/"),
        "client_endpoint": format!("{base}/rest/"),
        "member_id": EVIL_MEMBER_ID,
        "user_id": 1,
        "status": "L",
        "result": {"ID": "1", "ADMIN": true, "NAME": "Злоумышленник", "INSTALLED": true},
    })
}

async fn handle(shared: &Shared, req: Request) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let body = req.into_body().into_vec().await.unwrap_or_default();
    shared.seen().push(SeenRequest {
        method,
        path,
        query,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let (status, answer) = shared.answer().clone();
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
        .content_type("application/json")
        .body(answer.to_string())
}

//! Errors of the Bitrix24 client. No variant carries a token, a secret or a full URL.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Failure of a [`TokenStore`](super::TokenStore) implementation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("token store: {0}")]
pub struct StoreError(String);

impl StoreError {
    /// Wraps a storage failure; the message must not contain tokens.
    pub fn new(message: impl std::fmt::Display) -> Self {
        Self(message.to_string())
    }
}

/// Longest remote text kept in an error.
const REMOTE_TEXT_MAX: usize = 200;

/// Not control characters to Rust, yet they break a line (U+2028, U+2029) or
/// reorder what a reader sees (bidi embeddings and isolates).
fn invisible_layout(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Text a remote server chose (an error code or description), made safe for a log
/// line: control characters (a newline would forge a second line), line separators
/// and bidi controls are escaped and the length is capped.
pub fn remote_text(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().take(REMOTE_TEXT_MAX) {
        if c.is_control() || invisible_layout(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if s.chars().nth(REMOTE_TEXT_MAX).is_some() {
        out.push('…');
    }
    out
}

/// Why a Bitrix24 call failed. Error codes follow protocol §10 and the docs'
/// `_includes/system-errors.md`; descriptions are never matched (§10 "Notes").
#[derive(Debug, Clone, thiserror::Error)]
pub enum B24Error {
    /// `expired_token` that a refresh did not cure, or a user's token (never refreshed).
    #[error("access token expired")]
    ExpiredToken,
    /// `invalid_token` after one refresh attempt.
    #[error("access token invalid")]
    InvalidToken,
    /// `NO_AUTH_FOUND`: wrong token or webhook code.
    #[error("NO_AUTH_FOUND: wrong authorization data")]
    NoAuth,
    /// `insufficient_scope`.
    #[error("insufficient_scope")]
    InsufficientScope,
    /// `ACCESS_DENIED`, `INVALID_CREDENTIALS`, `user_access_error`.
    #[error("{code}: {description}")]
    AccessDenied { code: String, description: String },
    /// `WRONG_AUTH_TYPE`: the method needs the application context (not a webhook).
    #[error("WRONG_AUTH_TYPE: {description}")]
    WrongAuthType { description: String },
    /// `ERROR_METHOD_NOT_FOUND`.
    #[error("method not found: {method}")]
    MethodNotFound { method: String },
    /// `QUERY_LIMIT_EXCEEDED` (503) still after the bounded retries.
    #[error("QUERY_LIMIT_EXCEEDED")]
    QueryLimitExceeded,
    /// `OPERATION_TIME_LIMIT` (429): the method is paused for this target until `until`.
    #[error("OPERATION_TIME_LIMIT: {method} paused until {until}")]
    OperationTimeLimit {
        method: String,
        until: DateTime<Utc>,
    },
    /// `OVERLOAD_LIMIT`: blocked by Bitrix24 support; do not retry.
    #[error("OVERLOAD_LIMIT")]
    Overload,
    /// Refresh answered `invalid_grant` (refresh token expired, used or revoked):
    /// the portal must reinstall the app.
    #[error("refresh rejected: invalid_grant")]
    RefreshRejected,
    /// Refresh answered `invalid_client`: wrong client id/secret or app removed.
    #[error("refresh rejected: invalid_client")]
    InvalidClient,
    /// Refresh is impossible: the client id/secret are not configured.
    #[error("OAuth client id/secret not configured")]
    OAuthNotConfigured,
    /// The store knows no installed portal with this member_id.
    #[error("portal not installed: {member_id}")]
    NotInstalled { member_id: String },
    /// Any other error body, including CRM errors with an empty code
    /// (`{"error":"","error_description":"Not found"}`, protocol §12.1).
    #[error("API error {status} '{code}': {description}")]
    Api {
        status: u16,
        code: String,
        description: String,
    },
    /// HTTP 5xx or a server-side error code (`INTERNAL_SERVER_ERROR`, …).
    #[error("server error {status} '{code}'")]
    Server { status: u16, code: String },
    /// Connection failure; the message was stripped of its URL. `refused`: nothing
    /// listens at the portal's address (it is restarting or down), so nothing was sent.
    #[error("network error: {message}")]
    Network { message: String, refused: bool },
    /// No answer within the request timeout.
    #[error("request timed out")]
    Timeout,
    /// A body that is not the JSON Bitrix24 sends.
    #[error("unexpected response (HTTP {status}): {message}")]
    InvalidResponse { status: u16, message: String },
    /// An answer longer than the client reads (`body::MAX_BODY`): cut off unread.
    #[error("response over {limit} bytes (HTTP {status})")]
    ResponseTooLarge { status: u16, limit: usize },
    /// The small budget of identity checks (install, deal tab, admin page) is spent
    /// for this portal; nothing was sent. Robot and outbox work has its own.
    #[error("verification budget spent; retry in {retry_after:?}")]
    VerifyBudgetSpent { retry_after: Duration },
    /// A batch command that never ran (an earlier one failed with `halt`).
    #[error("batch command not executed")]
    NotExecuted,
    /// A command carrying files was put into a batch (protocol §12.4: files go alone).
    #[error("files are not allowed inside batch")]
    FilesInBatch,
    /// The token store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A refresh succeeded but the new pair could not be stored: the stored
    /// refresh token is already used up (§2.4), so no retry can help.
    #[error("refreshed tokens not saved: {0}")]
    TokensNotSaved(StoreError),
    /// A method name or endpoint that cannot form a request URL.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl B24Error {
    /// Maps an error body to a variant (protocol §10). `status` is the HTTP status,
    /// `0` for per-command errors inside a batch.
    pub fn from_body(status: u16, code: &str, description: &str, method: &str) -> Self {
        // Both come from the remote side and end up in logs and messages.
        let description = remote_text(description);
        let code = remote_text(code);
        let code = code.as_str();
        match code {
            "expired_token" => B24Error::ExpiredToken,
            "invalid_token" => B24Error::InvalidToken,
            "NO_AUTH_FOUND" => B24Error::NoAuth,
            "insufficient_scope" => B24Error::InsufficientScope,
            "ACCESS_DENIED" | "INVALID_CREDENTIALS" | "user_access_error" => {
                B24Error::AccessDenied {
                    code: code.to_owned(),
                    description,
                }
            }
            "WRONG_AUTH_TYPE" => B24Error::WrongAuthType { description },
            "ERROR_METHOD_NOT_FOUND" => B24Error::MethodNotFound {
                method: method.to_owned(),
            },
            "QUERY_LIMIT_EXCEEDED" => B24Error::QueryLimitExceeded,
            "OVERLOAD_LIMIT" => B24Error::Overload,
            "INTERNAL_SERVER_ERROR" | "ERROR_UNEXPECTED_ANSWER" => B24Error::Server {
                status,
                code: code.to_owned(),
            },
            _ if status >= 500 && code != "PORTAL_DELETED" => B24Error::Server {
                status,
                code: code.to_owned(),
            },
            _ => B24Error::Api {
                status,
                code: code.to_owned(),
                description,
            },
        }
    }

    /// Strips the URL (it may hold a webhook code) from a transport error.
    pub(crate) fn from_reqwest(err: reqwest::Error) -> Self {
        if err.is_timeout() {
            return B24Error::Timeout;
        }
        let err = err.without_url();
        let mut message = err.to_string();
        let mut refused = false;
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            refused |= cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
            source = cause.source();
        }
        B24Error::Network { message, refused }
    }

    /// The Bitrix24 error code, when the portal sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            B24Error::ExpiredToken => Some("expired_token"),
            B24Error::InvalidToken => Some("invalid_token"),
            B24Error::NoAuth => Some("NO_AUTH_FOUND"),
            B24Error::InsufficientScope => Some("insufficient_scope"),
            B24Error::AccessDenied { code, .. } => Some(code),
            B24Error::WrongAuthType { .. } => Some("WRONG_AUTH_TYPE"),
            B24Error::MethodNotFound { .. } => Some("ERROR_METHOD_NOT_FOUND"),
            B24Error::QueryLimitExceeded => Some("QUERY_LIMIT_EXCEEDED"),
            B24Error::OperationTimeLimit { .. } => Some("OPERATION_TIME_LIMIT"),
            B24Error::Overload => Some("OVERLOAD_LIMIT"),
            B24Error::RefreshRejected => Some("invalid_grant"),
            B24Error::InvalidClient => Some("invalid_client"),
            B24Error::Api { code, .. } | B24Error::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True for "already registered" answers of the idempotent install step:
    /// `ERROR_ACTIVITY_ALREADY_INSTALLED` (§4.2) and `ERROR_CORE` "…already binded"
    /// / "…already exists" (§6.1, §7.2, §12.3). `ERROR_CORE` also covers real
    /// failures, so only here is the description consulted.
    pub fn is_already_registered(&self) -> bool {
        match self {
            B24Error::Api {
                code, description, ..
            } => {
                code == "ERROR_ACTIVITY_ALREADY_INSTALLED"
                    || (code == "ERROR_CORE" && description.contains("already"))
            }
            _ => false,
        }
    }

    /// The CRM's empty-code denial `{"error":"","error_description":"Access denied"}`
    /// (§11, §12.1) or a coded `ACCESS_DENIED`: the token's user may not do this.
    pub fn is_access_denied(&self) -> bool {
        match self {
            B24Error::AccessDenied { .. } => true,
            B24Error::Api {
                code, description, ..
            } => code.is_empty() && description == "Access denied",
            _ => false,
        }
    }

    /// The CRM's empty-code `Not found` (§12.1).
    pub fn is_not_found(&self) -> bool {
        matches!(self, B24Error::Api { code, description, .. }
            if code.is_empty() && description == "Not found")
            || matches!(self, B24Error::Api { code, .. } if code == "NOT_FOUND" || code == "OWNER_NOT_FOUND")
    }

    /// True when the token can no longer be used and the portal needs a reinstall.
    pub fn needs_reinstall(&self) -> bool {
        matches!(
            self,
            B24Error::RefreshRejected
                | B24Error::InvalidToken
                | B24Error::ExpiredToken
                | B24Error::NotInstalled { .. }
                | B24Error::TokensNotSaved(_)
        )
    }

    /// Whether a later attempt may succeed (the outbox schedules it).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            B24Error::QueryLimitExceeded
                | B24Error::OperationTimeLimit { .. }
                | B24Error::Server { .. }
                | B24Error::Network { .. }
                | B24Error::Timeout
                | B24Error::Store(_)
        ) || matches!(self, B24Error::InvalidResponse { status, .. } if *status >= 500)
    }

    /// Whether the request may have reached the portal and been carried out although
    /// it failed: a 5xx, a lost connection or no answer within the timeout say
    /// nothing about what the portal did (protocol §9, §10). Calls that must not run
    /// twice are not repeated after such an error (`B24Client::call_once`).
    pub fn may_have_run(&self) -> bool {
        match self {
            B24Error::Server { .. } | B24Error::Timeout => true,
            B24Error::InvalidResponse { status, .. } => *status >= 500,
            B24Error::Network { refused, .. } => !*refused,
            _ => false,
        }
    }

    /// The portal pushes back rather than fails: it is over its request limit
    /// (`QUERY_LIMIT_EXCEEDED`, §10.1), pauses a method (`OPERATION_TIME_LIMIT`, §10.2),
    /// answers 503/429 (its own or a proxy's "come back later"), or refuses the
    /// connection. Nothing was carried out, and the portal will take the call again
    /// soon: the outbox pauses that portal's queue and probes it on a short schedule
    /// instead of counting a failure.
    pub fn is_backpressure(&self) -> bool {
        match self {
            B24Error::QueryLimitExceeded | B24Error::OperationTimeLimit { .. } => true,
            B24Error::Server { status, .. }
            | B24Error::Api { status, .. }
            | B24Error::InvalidResponse { status, .. } => matches!(status, 429 | 503),
            B24Error::Network { refused, .. } => *refused,
            _ => false,
        }
    }

    /// The earliest useful retry, when the error says so: the end of an operating
    /// pause, one second after a rate-limit answer. `None`: use the caller's backoff.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            B24Error::OperationTimeLimit { until, .. } => {
                Some((*until - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            }
            B24Error::QueryLimitExceeded => Some(Duration::from_secs(1)),
            B24Error::VerifyBudgetSpent { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// A message for the clinic's Bitrix24 administrator, in Russian.
    pub fn admin_message(&self) -> String {
        match self {
            B24Error::ExpiredToken
            | B24Error::InvalidToken
            | B24Error::RefreshRejected
            | B24Error::TokensNotSaved(_) => {
                "Доступ приложения к Битрикс24 утрачен. Переустановите приложение «Опрос» на портале.".to_owned()
            }
            B24Error::NotInstalled { .. } => {
                "Приложение «Опрос» не установлено на этом портале или было удалено. Установите его заново.".to_owned()
            }
            B24Error::NoAuth => {
                "Битрикс24 не принял данные авторизации. Проверьте адрес входящего вебхука или переустановите приложение.".to_owned()
            }
            B24Error::InsufficientScope => {
                "Приложению не хватает прав доступа (scope). Добавьте разрешения CRM, бизнес-процессов и встраивания и переустановите приложение.".to_owned()
            }
            B24Error::AccessDenied { .. } => {
                "Битрикс24 отказал в доступе: у пользователя нет прав на это действие.".to_owned()
            }
            B24Error::WrongAuthType { .. } => {
                "Это действие доступно только установленному приложению, а не входящему вебхуку.".to_owned()
            }
            B24Error::MethodNotFound { method } => {
                format!("Метод Битрикс24 «{method}» не найден: проверьте тариф и права вебхука.")
            }
            B24Error::QueryLimitExceeded => {
                "Превышен лимит запросов к Битрикс24. Запрос будет повторён автоматически.".to_owned()
            }
            B24Error::OperationTimeLimit { method, until } => format!(
                "Метод «{method}» временно заблокирован Битрикс24 из-за лимита времени выполнения до {} UTC. Запросы будут повторены позже.",
                until.format("%H:%M:%S")
            ),
            B24Error::Overload => {
                "Битрикс24 заблокировал запросы приложения (OVERLOAD_LIMIT). Обратитесь в поддержку Битрикс24.".to_owned()
            }
            B24Error::InvalidClient => {
                "Неверный client_id или client_secret приложения. Проверьте настройки сервиса.".to_owned()
            }
            B24Error::OAuthNotConfigured => {
                "Не заданы client_id и client_secret приложения: обновить токены невозможно.".to_owned()
            }
            B24Error::Api {
                code, description, ..
            } => format!("Битрикс24 вернул ошибку {code}: {description}"),
            B24Error::Server { .. }
            | B24Error::InvalidResponse { .. }
            | B24Error::ResponseTooLarge { .. } => {
                "Битрикс24 временно недоступен. Запрос будет повторён автоматически.".to_owned()
            }
            B24Error::Network { .. } | B24Error::Timeout => {
                "Не удалось связаться с Битрикс24. Запрос будет повторён автоматически.".to_owned()
            }
            B24Error::NotExecuted => {
                "Команда пакетного запроса не выполнена из-за ошибки в предыдущей команде.".to_owned()
            }
            B24Error::FilesInBatch => {
                "Файлы нельзя передавать в пакетном запросе Битрикс24.".to_owned()
            }
            B24Error::Store(_) => "Ошибка хранилища токенов сервиса.".to_owned(),
            B24Error::VerifyBudgetSpent { .. } => {
                "Слишком много проверок входа за короткое время. Попробуйте через минуту.".to_owned()
            }
            B24Error::InvalidRequest(_) => "Некорректный запрос к Битрикс24.".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_text_escapes_line_separators_and_bidi_controls() {
        let raw = "a\u{2028}b\u{2029}c\u{202A}\u{202B}\u{202C}\u{202D}\u{202E}d\u{2066}\u{2067}\u{2068}\u{2069}e\nf";
        let safe = remote_text(raw);
        for c in [
            '\u{2028}', '\u{2029}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}',
            '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\n',
        ] {
            assert!(!safe.contains(c), "{c:?} left raw in {safe:?}");
        }
        assert!(
            safe.contains("\\u{2028}") && safe.contains("\\u{202e}"),
            "{safe}"
        );
        // Ordinary text, Cyrillic included, is kept as it is.
        assert_eq!(remote_text("Нет доступа"), "Нет доступа");
    }

    #[test]
    fn maps_codes_from_the_protocol_table() {
        assert!(matches!(
            B24Error::from_body(401, "expired_token", "", "x"),
            B24Error::ExpiredToken
        ));
        assert!(matches!(
            B24Error::from_body(503, "QUERY_LIMIT_EXCEEDED", "", "x"),
            B24Error::QueryLimitExceeded
        ));
        assert!(matches!(
            B24Error::from_body(503, "OVERLOAD_LIMIT", "", "x"),
            B24Error::Overload
        ));
        let crm = B24Error::from_body(400, "", "Access denied", "crm.deal.get");
        assert!(crm.is_access_denied() && !crm.is_retryable());
        assert!(B24Error::from_body(400, "", "Not found", "crm.deal.get").is_not_found());
        assert!(
            B24Error::from_body(
                400,
                "ERROR_CORE",
                "Unable to set event handler: Handler already binded",
                "event.bind"
            )
            .is_already_registered()
        );
        assert!(B24Error::from_body(502, "", "", "x").is_retryable());
    }

    #[test]
    fn backpressure_is_told_apart_from_failure() {
        for pushback in [
            B24Error::from_body(503, "QUERY_LIMIT_EXCEEDED", "", "x"),
            B24Error::from_body(503, "", "", "x"),
            B24Error::from_body(429, "TOO_MANY_REQUESTS", "", "x"),
            B24Error::InvalidResponse {
                status: 503,
                message: "Service Unavailable".into(),
            },
            B24Error::Network {
                message: "Connection refused".into(),
                refused: true,
            },
        ] {
            assert!(pushback.is_backpressure(), "{pushback:?}");
        }
        for failure in [
            B24Error::from_body(500, "INTERNAL_SERVER_ERROR", "", "x"),
            B24Error::from_body(502, "", "", "x"),
            B24Error::from_body(503, "OVERLOAD_LIMIT", "", "x"),
            B24Error::from_body(400, "", "Access denied", "x"),
            B24Error::Network {
                message: "connection reset".into(),
                refused: false,
            },
            B24Error::Timeout,
        ] {
            assert!(!failure.is_backpressure(), "{failure:?}");
        }
    }
}

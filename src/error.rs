//! The one error body of the service: a stable English `code` for machines and a
//! Russian `message` for people; 422 adds per-question `errors`.

use std::collections::BTreeMap;

use poem::IntoResponse;
use poem_openapi::{ApiResponse, Object, payload::Json};

#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `survey_expired`.
    pub code: String,
    /// What went wrong, in Russian.
    pub message: String,
    /// Per-question messages (validation errors only).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub errors: Option<BTreeMap<String, String>>,
}

#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "bad_request_handler")]
pub enum ApiError {
    /// The request could not be read.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing or wrong secret.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// Not allowed for this caller or this pipeline.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// Unknown link or object.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// Already done (e.g. answers already received).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The link has expired.
    #[oai(status = 410)]
    Gone(Json<ErrorBody>),
    /// The body is too large.
    #[oai(status = 413)]
    TooLarge(Json<ErrorBody>),
    /// The body is not JSON.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// The answers do not pass validation; `errors` says what is wrong per question.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// Something went wrong on our side; the message names the request id.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// The feature is not configured, or a dependency is down.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn body(code: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        code: code.to_owned(),
        message: message.into(),
        errors: None,
    })
}

impl ApiError {
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::BadRequest(body(code, message))
    }
    pub fn unauthorized(code: &str, message: impl Into<String>) -> Self {
        Self::Unauthorized(body(code, message))
    }
    pub fn forbidden(code: &str, message: impl Into<String>) -> Self {
        Self::Forbidden(body(code, message))
    }
    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::NotFound(body(code, message))
    }
    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::Conflict(body(code, message))
    }
    pub fn gone(code: &str, message: impl Into<String>) -> Self {
        Self::Gone(body(code, message))
    }
    pub fn unavailable(code: &str, message: impl Into<String>) -> Self {
        Self::Unavailable(body(code, message))
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::TooLarge(body("payload_too_large", message))
    }
    pub fn validation(errors: BTreeMap<String, String>) -> Self {
        Self::Unprocessable(Json(ErrorBody {
            code: "validation_failed".into(),
            message: "Проверьте ответы: некоторые поля заполнены неверно".into(),
            errors: Some(errors),
        }))
    }

    /// An unexpected failure: logged once here with its cause, answered without it.
    #[track_caller]
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let at = std::panic::Location::caller();
        tracing::error!(error = %cause, at = %at, "Внутренняя ошибка");
        Self::Internal(body(
            "internal_error",
            "Внутренняя ошибка сервиса, попробуйте позже",
        ))
    }

    pub fn body(&self) -> &ErrorBody {
        match self {
            Self::BadRequest(b)
            | Self::Unauthorized(b)
            | Self::Forbidden(b)
            | Self::NotFound(b)
            | Self::Conflict(b)
            | Self::Gone(b)
            | Self::TooLarge(b)
            | Self::UnsupportedMediaType(b)
            | Self::Unprocessable(b)
            | Self::Internal(b)
            | Self::Unavailable(b) => b,
        }
    }

    /// For plain poem handlers.
    pub fn into_poem(self) -> poem::Error {
        poem::Error::from_response(self.into_response())
    }
}

impl From<sea_orm::DbErr> for ApiError {
    #[track_caller]
    fn from(e: sea_orm::DbErr) -> Self {
        ApiError::internal(e)
    }
}

/// Any error poem itself produced (unknown route, wrong method, unsupported content
/// type, malformed body) in our body shape, so no client ever sees a bare text error.
pub fn from_poem_error(err: poem::Error) -> poem::Response {
    if err.is_from_response() {
        return err.into_response();
    }
    use poem::http::StatusCode as S;
    let status = err.status();
    let (code, message) = match status {
        S::NOT_FOUND => ("not_found", "Страница не найдена".to_owned()),
        S::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "Этот метод здесь не поддерживается".to_owned(),
        ),
        S::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "Неподдерживаемый тип содержимого: ожидается application/json".to_owned(),
        ),
        S::PAYLOAD_TOO_LARGE => ("payload_too_large", "Слишком большой запрос".to_owned()),
        s if s.is_client_error() => (
            "bad_request",
            format!(
                "Не удалось разобрать запрос: {}",
                truncate(&err.to_string(), 300)
            ),
        ),
        _ => {
            tracing::error!(error = %err, status = status.as_u16(), "Внутренняя ошибка");
            (
                "internal_error",
                "Внутренняя ошибка сервиса, попробуйте позже".to_owned(),
            )
        }
    };
    let body = ErrorBody {
        code: code.to_owned(),
        message,
        errors: None,
    };
    Json(body).with_status(status).into_response()
}

/// Extractor failures (malformed JSON, wrong content type, bad path) get our body.
fn bad_request_handler(err: poem::Error) -> ApiError {
    if err.status() == poem::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::too_large("Слишком большой запрос");
    }
    let detail = err.to_string();
    ApiError::bad_request(
        "bad_request",
        format!("Не удалось разобрать запрос: {}", truncate(&detail, 300)),
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

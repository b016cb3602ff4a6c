//! The one error body of the service: a stable English `code` for machines and a
//! Russian `message` for people; 422 adds per-question `errors`.

use std::collections::BTreeMap;

use poem::IntoResponse;
use poem_openapi::{ApiResponse, Object, payload::Json};

/// Declares [`ErrorCode`]: each variant with its wire string.
macro_rules! error_codes {
    ($($name:ident = $wire:literal,)*) => {
        /// The stable machine-readable codes of the error body. The wire strings are
        /// fixed: clients, tests and CONTRACT.md depend on them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($name,)*
        }

        impl ErrorCode {
            /// Every code, for the checks below.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// The code as it appears in the body's `code`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => $wire,)*
                }
            }
        }
    };
}

error_codes! {
    ActivityUnknown = "activity_unknown",
    AnswersNotObject = "answers_not_object",
    AppUpdateRefused = "app_update_refused",
    ApplicationTokenMismatch = "application_token_mismatch",
    AuthMissing = "auth_missing",
    BadApplicationToken = "bad_application_token",
    BadBody = "bad_body",
    BadJson = "bad_json",
    BadEncoding = "bad_encoding",
    BadInstallRequest = "bad_install_request",
    BadRequest = "bad_request",
    BadToken = "bad_token",
    BodyNotObject = "body_not_object",
    CodeTaken = "code_taken",
    CategoryNotProcessed = "category_not_processed",
    CategoryUnknown = "category_unknown",
    ChecksBudgetSpent = "checks_budget_spent",
    DatabaseUnavailable = "database_unavailable",
    DocumentMissing = "document_missing",
    DocumentUnsupported = "document_unsupported",
    EntityTypeUnsupported = "entity_type_unsupported",
    EventMissing = "event_missing",
    EventNotConfirmed = "event_not_confirmed",
    EventTokenMissing = "event_token_missing",
    ForeignApplication = "foreign_application",
    FormTooDeep = "form_too_deep",
    FormTooManyKeys = "form_too_many_keys",
    IdMissing = "id_missing",
    InstallNotVerified = "install_not_verified",
    InstallNotVouched = "install_not_vouched",
    InternalError = "internal_error",
    InvalidDefinition = "invalid_definition",
    LeadIdInvalid = "lead_id_invalid",
    LeadIdMissing = "lead_id_missing",
    LeadIdTemplate = "lead_id_template",
    MethodNotAllowed = "method_not_allowed",
    NotAdmin = "not_admin",
    NotConfigured = "not_configured",
    NotFound = "not_found",
    OauthNotConfigured = "oauth_not_configured",
    PayloadTooLarge = "payload_too_large",
    PortalMismatch = "portal_mismatch",
    PortalNotAllowed = "portal_not_allowed",
    PortalUnavailable = "portal_unavailable",
    PortalUninstalled = "portal_uninstalled",
    QuestionnaireNotFound = "questionnaire_not_found",
    QuestionnaireUnknown = "questionnaire_unknown",
    SessionExpired = "session_expired",
    SurveyCompleted = "survey_completed",
    SurveyExpired = "survey_expired",
    SurveyNotFound = "survey_not_found",
    Timeout = "timeout",
    TooManyAttempts = "too_many_attempts",
    TooManyWaits = "too_many_waits",
    Unavailable = "unavailable",
    UnparsableBody = "unparsable_body",
    UnsupportedMediaType = "unsupported_media_type",
    UserNotConfirmed = "user_not_confirmed",
    ValidationFailed = "validation_failed",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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

fn body(code: ErrorCode, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        code: code.as_str().to_owned(),
        message: message.into(),
        errors: None,
    })
}

impl ApiError {
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::BadRequest(body(code, message))
    }
    pub fn unauthorized(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Unauthorized(body(code, message))
    }
    pub fn forbidden(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Forbidden(body(code, message))
    }
    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::NotFound(body(code, message))
    }
    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Conflict(body(code, message))
    }
    pub fn gone(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Gone(body(code, message))
    }
    pub fn unavailable(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Unavailable(body(code, message))
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::TooLarge(body(ErrorCode::PayloadTooLarge, message))
    }
    pub fn validation(errors: BTreeMap<String, String>) -> Self {
        Self::Unprocessable(Json(ErrorBody {
            code: ErrorCode::ValidationFailed.as_str().to_owned(),
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
            ErrorCode::InternalError,
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
        S::NOT_FOUND => (ErrorCode::NotFound, "Страница не найдена".to_owned()),
        S::METHOD_NOT_ALLOWED => (
            ErrorCode::MethodNotAllowed,
            "Этот метод здесь не поддерживается".to_owned(),
        ),
        S::UNSUPPORTED_MEDIA_TYPE => (
            ErrorCode::UnsupportedMediaType,
            "Неподдерживаемый тип содержимого: ожидается application/json".to_owned(),
        ),
        S::PAYLOAD_TOO_LARGE => (
            ErrorCode::PayloadTooLarge,
            "Слишком большой запрос".to_owned(),
        ),
        s if s.is_client_error() => (
            ErrorCode::BadRequest,
            format!(
                "Не удалось разобрать запрос: {}",
                truncate(&err.to_string(), 300)
            ),
        ),
        _ => {
            tracing::error!(error = %err, status = status.as_u16(), "Внутренняя ошибка");
            (
                ErrorCode::InternalError,
                "Внутренняя ошибка сервиса, попробуйте позже".to_owned(),
            )
        }
    };
    let body = ErrorBody {
        code: code.as_str().to_owned(),
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
        ErrorCode::BadRequest,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case_wire_strings() {
        let mut seen = std::collections::BTreeSet::new();
        for code in ErrorCode::ALL {
            let wire = code.as_str();
            assert!(seen.insert(wire), "{wire} twice");
            assert!(
                !wire.is_empty() && wire.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{wire}"
            );
        }
        assert_eq!(ErrorCode::SurveyExpired.as_str(), "survey_expired");
        let e = ApiError::gone(ErrorCode::SurveyExpired, "истекла");
        assert_eq!(e.body().code, "survey_expired");
    }
}

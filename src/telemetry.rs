//! Logging: one subscriber, and a request middleware that records the method, a
//! redacted path, the status and the latency. poem's stock `Tracing` records the full
//! URI, and survey tokens, `AUTH_ID`s and webhook secrets travel in URLs.

use std::time::{Duration, Instant};

use poem::http::{HeaderValue, StatusCode};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use tracing::Instrument;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{Config, LogFormat};
use crate::error::{ApiError, ErrorCode};

/// Installs the global subscriber. Safe to call twice (the second call is a no-op),
/// which tests and the demo rely on.
pub fn init(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_filter)
        .unwrap_or_else(|_| EnvFilter::new(crate::config::DEFAULT_LOG_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.log_format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_current_span(true))
            .try_init(),
        LogFormat::Human => registry
            .with(fmt::layer().with_target(false).with_ansi(colour_wanted()))
            .try_init(),
    };
    if result.is_ok() {
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
    }
}

/// Colour only on a terminal: `docker compose logs`, Railway and files would otherwise
/// keep the escape codes as text. `NO_COLOR` (any non-empty value, no-color.org) wins.
fn colour_wanted() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stdout().is_terminal()
}

/// Path templates for routes whose segments carry secrets or personal links.
pub fn redact_path(path: &str) -> String {
    const TOKEN_PREFIXES: [&str; 3] = ["/s/", "/api/v1/surveys/", "/tab/"];
    for prefix in TOKEN_PREFIXES {
        if let Some(rest) = path.strip_prefix(prefix) {
            let tail = rest.split_once('/').map(|(_, t)| t);
            return match tail {
                Some(t) => format!("{prefix}{{token}}/{t}"),
                None => format!("{prefix}{{token}}"),
            };
        }
    }
    // Unknown paths: long segments look like secrets (a mistyped webhook code, a
    // token pasted into the path); keep the shape, drop the value.
    path.split('/')
        .map(|seg| if seg.len() > 20 { "{…}" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// Request id, access log, request timeout.
pub struct RequestLog {
    pub timeout: Duration,
}

impl<E: Endpoint> Middleware<E> for RequestLog {
    type Output = RequestLogEndpoint<E>;
    fn transform(&self, ep: E) -> Self::Output {
        RequestLogEndpoint {
            inner: ep,
            timeout: self.timeout,
        }
    }
}

pub struct RequestLogEndpoint<E> {
    inner: E,
    timeout: Duration,
}

fn request_id(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            use rand::Rng;
            format!("{:016x}", rand::thread_rng().r#gen::<u64>())
        })
}

impl<E: Endpoint> Endpoint for RequestLogEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let id = request_id(&req);
        let span = tracing::info_span!(
            "http",
            id = %id,
            method = %req.method(),
            path = %redact_path(req.uri().path()),
        );
        async move {
            let started = Instant::now();
            let result = tokio::time::timeout(self.timeout, self.inner.call(req)).await;
            let mut response = match result {
                Ok(Ok(r)) => r.into_response(),
                Ok(Err(e)) => crate::error::from_poem_error(e),
                Err(_) => ApiError::unavailable(
                    ErrorCode::Timeout,
                    "Сервис не успел ответить, попробуйте ещё раз",
                )
                .into_response(),
            };
            let status = response.status();
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if status.is_server_error() {
                tracing::warn!(status = status.as_u16(), ms = format!("{ms:.1}"), "ответ");
            } else if status == StatusCode::NOT_FOUND {
                tracing::debug!(status = status.as_u16(), ms = format!("{ms:.1}"), "ответ");
            } else {
                tracing::info!(status = status.as_u16(), ms = format!("{ms:.1}"), "ответ");
            }
            if let Ok(v) = HeaderValue::from_str(&id) {
                response.headers_mut().insert("x-request-id", v);
            }
            Ok(response)
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_paths_are_templated() {
        assert_eq!(redact_path("/s/eyJhbGciOi.abc.def"), "/s/{token}");
        assert_eq!(
            redact_path("/api/v1/surveys/eyJ.x.y/draft"),
            "/api/v1/surveys/{token}/draft"
        );
        assert_eq!(redact_path("/b24/install"), "/b24/install");
        assert_eq!(
            redact_path("/rest/1/a1b2c3d4e5f6g7h8i9j0k1/x"),
            "/rest/1/{…}/x"
        );
    }
}

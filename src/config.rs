//! The service's configuration: read once from the environment (and `.env`), parsed
//! into types and validated before anything starts. Nothing else reads variables.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use url::Url;

use crate::bitrix24::{RateLimit, WebhookUrl};
use crate::secret::{Secret, mask_url};

/// One bad variable: stops start-up with exit code 2 and this line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.problem)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Timeouts and cap of client connections; no variables, tests set them in code.
    pub connections: crate::connections::ConnectionLimits,
    pub database_url: Secret<String>,
    /// Base URL of the service as the outside world sees it, without a trailing slash.
    pub public_url: Url,
    pub link_secret: Option<Secret<String>>,
    pub link_days: u32,
    pub clinic_name: Option<String>,
    pub b24_client_id: Option<String>,
    pub b24_client_secret: Option<Secret<String>>,
    pub b24_oauth_url: Option<Url>,
    /// Portal domains (`host[:port]`, lower case) that may install; empty = any portal
    /// the OAuth server vouches for.
    pub b24_allowed_domains: Vec<String>,
    pub b24_rate_limit: RateLimit,
    pub webhook_url: Option<WebhookUrl>,
    pub incoming_token: Option<Secret<String>>,
    pub category_id: Option<u64>,
    pub outgoing_token: Option<Secret<String>>,
    pub link_field: String,
    pub surveys_dir: Option<PathBuf>,
    pub log_filter: String,
    pub log_format: LogFormat,
    /// Warnings found while reading (aliases that disagree, unknown variables): logged
    /// once the subscriber is up, since they are found before it exists.
    pub warnings: Vec<String>,
}

pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/opros.db?mode=rwc";
pub const DEFAULT_LOG_FILTER: &str =
    "info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn,hyper=warn,reqwest=warn,poem=warn";

/// Every variable the service reads; unknown `B24_*`/`BITRIX24_*` ones earn a warning,
/// because a typo there silently turns a feature off.
const KNOWN: &[&str] = &[
    "PORT",
    "HOST",
    "DATABASE_URL",
    "PUBLIC_URL",
    "FRONTEND_URL",
    "WEBHOOK_URL",
    "SURVEY_LINK_SECRET",
    "SURVEY_LINK_DAYS",
    "CLINIC_NAME",
    "B24_CLIENT_ID",
    "B24_CLIENT_SECRET",
    "B24_OAUTH_URL",
    "B24_ALLOWED_DOMAINS",
    "B24_RATE_LIMIT",
    "BITRIX24_WEBHOOK_URL",
    "BITRIX24_INCOMING_TOKEN",
    "BITRIX24_CATEGORY_ID",
    "BITRIX24_OUTGOING_WEBHOOK_TOKEN",
    "BITRIX24_LINK_FIELD",
    "SURVEYS_DIR",
    "RUST_LOG",
    "LOG_FORMAT",
];

/// Loads `.env` from the working directory into the environment (variables already
/// set win). A missing file is the normal case; one that cannot be read or parsed
/// stops start-up with the line it failed on, rather than running on half of it.
pub fn load_dotenv() -> Result<(), ConfigError> {
    match dotenvy::dotenv() {
        Ok(_) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        Err(e) => Err(ConfigError {
            variable: ".env",
            problem: match e {
                // The line may hold a secret: only its variable's name is shown.
                dotenvy::Error::LineParse(line, _) => format!(
                    "не удалось разобрать строку {}; исправьте её или удалите файл",
                    line_name(&line)
                ),
                other => format!("файл не прочитан: {other}"),
            },
        }),
    }
}

/// «с переменной NAME» when the broken line starts with a variable's name, else
/// nothing of the line.
fn line_name(line: &str) -> String {
    let name: String = line
        .trim_start()
        .trim_start_matches("export ")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect();
    if name.is_empty() {
        "без имени переменной".to_owned()
    } else {
        format!("с переменной {name}")
    }
}

impl Config {
    /// Reads `.env` (if present) and the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        load_dotenv()?;
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        Self::from_map(&vars)
    }

    /// Builds the configuration from a map of variables; tests use this directly.
    pub fn from_map(vars: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            vars.get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut warnings = Vec::new();

        let host: IpAddr = match get("HOST") {
            None => IpAddr::from([127, 0, 0, 1]),
            Some(h) if h == "localhost" => IpAddr::from([127, 0, 0, 1]),
            Some(h) => h.parse().map_err(|_| ConfigError {
                variable: "HOST",
                problem: format!("ожидается IP-адрес (например 0.0.0.0), получено \"{h}\""),
            })?,
        };
        let port: u16 = match get("PORT") {
            None => 8080,
            Some(p) => p.parse().map_err(|_| ConfigError {
                variable: "PORT",
                problem: format!("ожидается номер порта от 0 до 65535, получено \"{p}\""),
            })?,
        };

        let database_url = get("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        if !(database_url.starts_with("sqlite:") || database_url.starts_with("postgres")) {
            return Err(ConfigError {
                variable: "DATABASE_URL",
                problem: format!(
                    "ожидается sqlite://… или postgres://…, получено \"{}\"",
                    mask_url(&database_url)
                ),
            });
        }

        let public_url = resolve_public_url(&get, &mut warnings, port)?;

        let link_days = match get("SURVEY_LINK_DAYS") {
            None => 7,
            Some(d) => match d.parse::<u32>() {
                Ok(n) if (1..=365).contains(&n) => n,
                _ => {
                    return Err(ConfigError {
                        variable: "SURVEY_LINK_DAYS",
                        problem: format!("ожидается число дней от 1 до 365, получено \"{d}\""),
                    });
                }
            },
        };

        let b24_client_id = get("B24_CLIENT_ID");
        let b24_client_secret = get("B24_CLIENT_SECRET").map(Secret::new);
        if b24_client_id.is_some() != b24_client_secret.is_some() {
            let missing = if b24_client_id.is_some() {
                "B24_CLIENT_SECRET"
            } else {
                "B24_CLIENT_ID"
            };
            return Err(ConfigError {
                variable: missing,
                problem:
                    "для режима локального приложения нужны и B24_CLIENT_ID, и B24_CLIENT_SECRET"
                        .into(),
            });
        }
        let b24_oauth_url = get("B24_OAUTH_URL")
            .map(|u| parse_http_url("B24_OAUTH_URL", &u))
            .transpose()?;
        let b24_allowed_domains = get("B24_ALLOWED_DOMAINS")
            .map(|list| parse_domains(&list))
            .transpose()?
            .unwrap_or_default();
        let b24_rate_limit = match get("B24_RATE_LIMIT") {
            None => RateLimit {
                per_sec: 2.0,
                burst: 50,
            },
            Some(r) => r
                .parse()
                .map_err(|e: crate::bitrix24::RateLimitParseError| ConfigError {
                    variable: "B24_RATE_LIMIT",
                    problem: format!("{e} (получено \"{r}\")"),
                })?,
        };
        let webhook_url = get("BITRIX24_WEBHOOK_URL")
            .map(|u| {
                u.parse::<WebhookUrl>().map_err(|e| ConfigError {
                    variable: "BITRIX24_WEBHOOK_URL",
                    problem: format!(
                        "{e}; ожидается адрес вида https://портал.bitrix24.ru/rest/1/код/"
                    ),
                })
            })
            .transpose()?;
        let category_id = get("BITRIX24_CATEGORY_ID")
            .map(|c| {
                c.parse::<u64>().map_err(|_| ConfigError {
                    variable: "BITRIX24_CATEGORY_ID",
                    problem: format!("ожидается число, получено \"{c}\""),
                })
            })
            .transpose()?;
        let link_field = get("BITRIX24_LINK_FIELD").unwrap_or_else(|| "UF_CRM_OPROS_LINK".into());
        if !link_field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(ConfigError {
                variable: "BITRIX24_LINK_FIELD",
                problem: format!(
                    "ожидается код поля из латинских букв, цифр и _, например UF_CRM_OPROS_LINK, получено \"{link_field}\""
                ),
            });
        }
        let link_field = link_field.to_ascii_uppercase();

        let log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("human") | Some("text") | Some("pretty") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError {
                    variable: "LOG_FORMAT",
                    problem: format!("ожидается json или human, получено \"{other}\""),
                });
            }
        };

        for name in vars.keys() {
            if (name.starts_with("B24_") || name.starts_with("BITRIX24_"))
                && !KNOWN.contains(&name.as_str())
            {
                warnings.push(format!(
                    "Неизвестная переменная {name} не используется: проверьте написание"
                ));
            }
        }

        Ok(Config {
            listen: SocketAddr::new(host, port),
            connections: Default::default(),
            database_url: Secret::new(database_url),
            public_url,
            link_secret: get("SURVEY_LINK_SECRET").map(Secret::new),
            link_days,
            clinic_name: get("CLINIC_NAME"),
            b24_client_id,
            b24_client_secret,
            b24_oauth_url,
            b24_allowed_domains,
            b24_rate_limit,
            webhook_url,
            incoming_token: get("BITRIX24_INCOMING_TOKEN").map(Secret::new),
            category_id,
            outgoing_token: get("BITRIX24_OUTGOING_WEBHOOK_TOKEN").map(Secret::new),
            link_field,
            surveys_dir: get("SURVEYS_DIR").map(PathBuf::from),
            log_filter: get("RUST_LOG").unwrap_or_else(|| DEFAULT_LOG_FILTER.to_owned()),
            log_format,
            warnings,
        })
    }

    /// `PUBLIC_URL` + a path (which starts with `/`).
    pub fn public(&self, path: &str) -> String {
        format!("{}{}", self.public_url.as_str().trim_end_matches('/'), path)
    }

    pub fn oauth_enabled(&self) -> bool {
        self.b24_client_id.is_some()
    }

    /// The effective configuration with secrets masked, for `opros check-config`.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let set = |s: &Option<Secret<String>>| match s {
            Some(v) => format!("задан ({})", v.hint()),
            None => "не задан".to_owned(),
        };
        vec![
            ("HOST:PORT", self.listen.to_string()),
            ("DATABASE_URL", mask_url(self.database_url.expose())),
            ("PUBLIC_URL", self.public_url.to_string()),
            (
                "SURVEY_LINK_SECRET",
                match &self.link_secret {
                    Some(s) => format!("задан ({})", s.hint()),
                    None => "не задан: создаётся один раз и хранится в базе".to_owned(),
                },
            ),
            ("SURVEY_LINK_DAYS", self.link_days.to_string()),
            (
                "B24_CLIENT_ID",
                self.b24_client_id
                    .clone()
                    .unwrap_or_else(|| "не задан: режим локального приложения выключен".into()),
            ),
            ("B24_CLIENT_SECRET", set(&self.b24_client_secret)),
            (
                "B24_OAUTH_URL",
                self.b24_oauth_url
                    .as_ref()
                    .map(Url::to_string)
                    .unwrap_or_else(|| {
                        "не задан: https://oauth.bitrix.info/oauth/token/ \
                         (или oauth.bitrix24.tech, если портал назвал его)"
                            .into()
                    }),
            ),
            (
                "B24_ALLOWED_DOMAINS",
                if self.b24_allowed_domains.is_empty() {
                    "не задан: любой портал, подтверждённый сервером авторизации".into()
                } else {
                    self.b24_allowed_domains.join(",")
                },
            ),
            (
                "B24_RATE_LIMIT",
                format!(
                    "{}/{}",
                    self.b24_rate_limit.per_sec, self.b24_rate_limit.burst
                ),
            ),
            (
                "BITRIX24_WEBHOOK_URL",
                self.webhook_url
                    .as_ref()
                    .map(|w| w.to_string())
                    .unwrap_or_else(|| "не задан".into()),
            ),
            ("BITRIX24_INCOMING_TOKEN", set(&self.incoming_token)),
            (
                "BITRIX24_CATEGORY_ID",
                self.category_id
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "все воронки".into()),
            ),
            ("BITRIX24_OUTGOING_WEBHOOK_TOKEN", set(&self.outgoing_token)),
            ("BITRIX24_LINK_FIELD", self.link_field.clone()),
            (
                "SURVEYS_DIR",
                self.surveys_dir
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|| "не задан: только встроенная анкета".into()),
            ),
            ("RUST_LOG", self.log_filter.clone()),
            (
                "LOG_FORMAT",
                match self.log_format {
                    LogFormat::Human => "human".into(),
                    LogFormat::Json => "json".into(),
                },
            ),
        ]
    }
}

/// `PUBLIC_URL` with its two seed-guide aliases; when they disagree the first one in
/// this order wins and a warning names both.
fn resolve_public_url(
    get: &impl Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
    port: u16,
) -> Result<Url, ConfigError> {
    const NAMES: [&str; 3] = ["PUBLIC_URL", "FRONTEND_URL", "WEBHOOK_URL"];
    let mut chosen: Option<(&'static str, Url)> = None;
    for name in NAMES {
        let Some(raw) = get(name) else { continue };
        let url = parse_http_url(name, raw.trim_end_matches('/'))?;
        match &chosen {
            None => chosen = Some((name, url)),
            Some((first, kept))
                if kept.as_str().trim_end_matches('/') != url.as_str().trim_end_matches('/') =>
            {
                warnings.push(format!(
                    "{first} и {name} различаются ({kept} и {url}); используется {first}"
                ));
            }
            Some(_) => {}
        }
    }
    match chosen {
        Some((_, url)) => Ok(url),
        None => {
            let port = if port == 0 { 8080 } else { port };
            parse_http_url("PUBLIC_URL", &format!("http://127.0.0.1:{port}"))
        }
    }
}

/// `B24_ALLOWED_DOMAINS`: `clinic.bitrix24.ru,clinic2.bitrix24.ru`; a pasted
/// `https://clinic.bitrix24.ru/` is read as its domain.
fn parse_domains(list: &str) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let domain = match Url::parse(raw) {
            Ok(url) if raw.contains("://") => match (url.host_str(), url.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_owned(),
                _ => String::new(),
            },
            _ => raw.trim_end_matches('/').to_ascii_lowercase(),
        };
        let valid = !domain.is_empty()
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
        if !valid {
            return Err(ConfigError {
                variable: "B24_ALLOWED_DOMAINS",
                problem: format!(
                    "ожидаются адреса порталов через запятую, например clinic.bitrix24.ru, \
                     получено \"{raw}\""
                ),
            });
        }
        out.push(domain);
    }
    Ok(out)
}

fn parse_http_url(variable: &'static str, raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw).map_err(|e| ConfigError {
        variable,
        problem: format!("ожидается адрес вида https://opros.clinic.ru, получено \"{raw}\" ({e})"),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError {
            variable,
            problem: format!("ожидается адрес http:// или https://, получено \"{raw}\""),
        });
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_start_a_local_service() {
        let c = Config::from_map(&vars(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(c.public("/s/x"), "http://127.0.0.1:8080/s/x");
        assert_eq!(c.link_field, "UF_CRM_OPROS_LINK");
        assert_eq!(c.b24_rate_limit.burst, 50);
        assert!(!c.oauth_enabled());
    }

    #[test]
    fn bad_category_names_the_variable() {
        let e = Config::from_map(&vars(&[("BITRIX24_CATEGORY_ID", "abc")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "BITRIX24_CATEGORY_ID: ожидается число, получено \"abc\""
        );
    }

    #[test]
    fn bad_rate_and_url_are_rejected() {
        let e = Config::from_map(&vars(&[("B24_RATE_LIMIT", "2/")])).unwrap_err();
        assert_eq!(e.variable, "B24_RATE_LIMIT");
        let e = Config::from_map(&vars(&[("PUBLIC_URL", "not a url")])).unwrap_err();
        assert_eq!(e.variable, "PUBLIC_URL");
        let e = Config::from_map(&vars(&[("BITRIX24_WEBHOOK_URL", "ftp://x")])).unwrap_err();
        assert_eq!(e.variable, "BITRIX24_WEBHOOK_URL");
    }

    #[test]
    fn aliases_resolve_and_disagreement_warns() {
        let c = Config::from_map(&vars(&[("FRONTEND_URL", "https://opros.clinic.ru/")])).unwrap();
        assert_eq!(c.public("/s/t"), "https://opros.clinic.ru/s/t");
        let c = Config::from_map(&vars(&[
            ("PUBLIC_URL", "https://a.example"),
            ("WEBHOOK_URL", "https://b.example"),
        ]))
        .unwrap();
        assert_eq!(c.public(""), "https://a.example");
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("PUBLIC_URL") && w.contains("WEBHOOK_URL"))
        );
        let c = Config::from_map(&vars(&[
            ("PUBLIC_URL", "https://a.example"),
            ("FRONTEND_URL", "https://a.example/"),
        ]))
        .unwrap();
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn allowed_domains_are_a_comma_list() {
        let c = Config::from_map(&vars(&[(
            "B24_ALLOWED_DOMAINS",
            " Clinic.Bitrix24.ru , https://second.bitrix24.ru/,127.0.0.1:8080",
        )]))
        .unwrap();
        assert_eq!(
            c.b24_allowed_domains,
            ["clinic.bitrix24.ru", "second.bitrix24.ru", "127.0.0.1:8080"]
        );
        assert!(c.warnings.is_empty());
        assert!(
            Config::from_map(&vars(&[]))
                .unwrap()
                .b24_allowed_domains
                .is_empty()
        );
        let e = Config::from_map(&vars(&[("B24_ALLOWED_DOMAINS", "clinic.bitrix24.ru,a b")]))
            .unwrap_err();
        assert_eq!(e.variable, "B24_ALLOWED_DOMAINS");
        assert!(e.problem.contains("a b"), "{e}");
    }

    #[test]
    fn unknown_bitrix_variable_warns() {
        let c = Config::from_map(&vars(&[("BITRIX24_WEBHOK_URL", "x")])).unwrap();
        assert!(c.warnings.iter().any(|w| w.contains("BITRIX24_WEBHOK_URL")));
    }

    #[test]
    fn describe_masks_secrets() {
        let c = Config::from_map(&vars(&[
            (
                "BITRIX24_WEBHOOK_URL",
                "https://p.bitrix24.ru/rest/1/a1b2c3d4e5f6g7h8/",
            ),
            ("BITRIX24_INCOMING_TOKEN", "mySecretToken2026SuperSecure"),
            ("B24_CLIENT_ID", "local.1.2"),
            ("B24_CLIENT_SECRET", "VeryVerySecretValue123"),
        ]))
        .unwrap();
        let text = format!("{:?}", c.describe());
        assert!(!text.contains("a1b2c3d4e5f6g7h8"), "{text}");
        assert!(!text.contains("mySecretToken2026SuperSecure"), "{text}");
        assert!(!text.contains("VeryVerySecretValue123"), "{text}");
        let debug = format!("{c:?}");
        assert!(!debug.contains("mySecretToken2026SuperSecure"));
        assert!(!debug.contains("a1b2c3d4e5f6g7h8"));
    }
}

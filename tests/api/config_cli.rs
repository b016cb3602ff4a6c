//! The binary as a newcomer meets it: `--help`, one-line config errors, `check-config`.

use std::process::Command;

fn opros() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opros"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[test]
fn help_lists_subcommands() {
    let out = opros().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "migrate", "openapi", "check-config"] {
        assert!(text.contains(cmd), "{cmd} missing in --help:\n{text}");
    }
}

#[test]
fn bad_value_stops_with_one_line_and_exit_code_2() {
    let out = opros()
        .env("BITRIX24_CATEGORY_ID", "abc")
        .arg("check-config")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "BITRIX24_CATEGORY_ID: ожидается число, получено \"abc\""
    );
}

#[test]
fn check_config_masks_secrets() {
    let out = opros()
        .env(
            "BITRIX24_WEBHOOK_URL",
            "https://p.bitrix24.ru/rest/1/a1b2c3d4e5f6g7h8/",
        )
        .env("BITRIX24_INCOMING_TOKEN", "mySecretToken2026SuperSecure")
        .arg("check-config")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("BITRIX24_WEBHOOK_URL"));
    assert!(!text.contains("a1b2c3d4e5f6g7h8"), "{text}");
    assert!(!text.contains("mySecretToken2026SuperSecure"), "{text}");
}

#[test]
fn committed_openapi_matches_the_code() {
    let out = opros()
        .arg("openapi")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(out.status.success());
    let served: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .expect("openapi/openapi.json is committed"),
    )
    .unwrap();
    assert!(
        served == committed,
        "openapi/openapi.json is out of date; regenerate it with:\n  cargo run -- openapi > openapi/openapi.json"
    );
}

#[test]
fn check_config_names_the_token_url_and_allowed_portals() {
    let out = opros()
        .env("B24_CLIENT_ID", "local.1.2")
        .env("B24_CLIENT_SECRET", "VeryVerySecretValue123")
        .env(
            "B24_ALLOWED_DOMAINS",
            "clinic.bitrix24.ru, second.bitrix24.ru",
        )
        .arg("check-config")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("https://oauth.bitrix.info/oauth/token/"),
        "{text}"
    );
    assert!(
        text.contains("clinic.bitrix24.ru,second.bitrix24.ru"),
        "{text}"
    );
    assert!(!text.contains("VeryVerySecretValue123"), "{text}");

    let out = opros()
        .env("B24_ALLOWED_DOMAINS", "clinic.bitrix24.ru,не домен")
        .arg("check-config")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.trim().starts_with("B24_ALLOWED_DOMAINS: "), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn broken_env_file_stops_start_with_its_line_but_no_value() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "SURVEY_LINK_DAYS=12\nB24_CLIENT_SECRET='s3cr3t-value\n",
    )
    .unwrap();
    let out = opros()
        .arg("check-config")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(".env: "), "{err}");
    assert!(err.contains("B24_CLIENT_SECRET"), "{err}");
    assert!(!err.contains("s3cr3t"), "the value leaked: {err}");
}

#[test]
fn missing_env_file_is_fine_and_a_good_one_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let out = opros()
        .arg("check-config")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.path().join(".env"), "SURVEY_LINK_DAYS=12\n").unwrap();
    let out = opros()
        .arg("check-config")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("SURVEY_LINK_DAYS") && l.ends_with(" 12"))
    );
}

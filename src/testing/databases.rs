//! Fresh databases for benches that drive real processes.

use sea_orm::ConnectionTrait;

/// A new, empty database on the PostgreSQL server `admin_url` names (a role that may
/// create databases); returns its URL. The service migrates it when it starts.
pub async fn new_postgres_database(admin_url: &str, prefix: &str) -> Result<String, String> {
    let name = format!("{prefix}_{:016x}", rand::random::<u64>());
    let admin = sea_orm::Database::connect(admin_url.to_owned())
        .await
        .map_err(|e| format!("connect to the PostgreSQL server: {e}"))?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .map_err(|e| format!("create database {name}: {e}"))?;
    let mut url = url::Url::parse(admin_url).map_err(|e| format!("the server's URL: {e}"))?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

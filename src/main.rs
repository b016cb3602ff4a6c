use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use opros::{Application, Config};

/// opros — анкеты пациентов для Битрикс24.
#[derive(Parser)]
#[command(
    name = "opros",
    version,
    about = "Анкеты пациентов для Битрикс24: робот, страница пациента, PDF, вкладка сделки"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Запустить сервис (по умолчанию).
    Serve,
    /// Применить миграции базы данных и выйти.
    Migrate,
    /// Напечатать документ OpenAPI.
    Openapi,
    /// Проверить переменные окружения и показать итоговую конфигурацию (секреты скрыты).
    CheckConfig,
    /// Демо: сервис и учебный портал Битрикс24 на этом компьютере, с готовой сделкой и ссылкой на анкету.
    #[cfg(feature = "demo")]
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("не удалось запустить tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(config).await,
            Command::Migrate => migrate(config).await,
            Command::Openapi => {
                let spec = opros::app::api_service().spec();
                println!("{spec}");
                Ok(())
            }
            #[cfg(feature = "demo")]
            Command::Demo => opros::demo::run().await.map_err(anyhow::Error::from),
            Command::CheckConfig => {
                for (name, value) in config.describe() {
                    println!("{name:<32} {value}");
                }
                for w in &config.warnings {
                    println!("ВНИМАНИЕ: {w}");
                }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    opros::telemetry::init(&config);
    let db = opros::db::connect(config.database_url.expose()).await?;
    opros::db::migrate(&db).await?;
    tracing::info!("Миграции применены");
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    opros::telemetry::init(&config);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "Запуск opros");
    let app = Application::build(config).await?;
    let public = app.state.config.public_url.clone();
    tracing::info!(
        address = %app.addr(),
        "Сервис слушает http://{}; документация API: {}docs",
        app.addr(),
        public
    );
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("Получен сигнал остановки, завершаем текущие запросы");
        stop.cancel();
    });
    app.run_until_stopped(cancel).await?;
    tracing::info!("Сервис остановлен");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

//! `warren`: starts the broker. Owns configuration (flags > environment > TOML file >
//! defaults), logging and signal handling; everything else is `warren-server`'s.

mod settings;

use anyhow::Context;
use clap::Parser;
use tracing::info;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = settings::Args::parse();
    let settings = settings::Settings::resolve(args)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&settings.log_level)
                .context("invalid --log-level")?,
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    std::fs::create_dir_all(&settings.config.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            settings.config.data_dir.display()
        )
    })?;
    let handle = warren_server::start(settings.config.clone())
        .await
        .context("cannot start the AMQP listener")?;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %settings.config.data_dir.display(),
        "Warren started"
    );
    wait_for_signal().await;
    info!("shutting down: closing every connection");
    handle.shutdown().await;
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

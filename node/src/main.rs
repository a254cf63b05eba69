//! `roomshard-node`: start a chat node, serve until SIGTERM or Ctrl-C, then drain.

use std::process::ExitCode;

use clap::Parser;
use node::auth::Authenticator;
use node::{NodeConfig, NodeState};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let config = NodeConfig::parse();
    init_logging(&config.log_format);
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("roomshard-node: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: NodeConfig) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let bound = listener.local_addr()?;
    let settings = config.settings(bound)?;
    let auth = match config.auth_key()? {
        Some(key) => Authenticator::with_hs256_key(&key),
        None => Authenticator::open(),
    };
    tracing::info!(node = %settings.name, %bound, tokens = auth.requires_token(), "node starting");
    let node = NodeState::new(settings, auth);
    // Scripts and tests read this line to learn the port when listening on port 0.
    println!("roomshard-node listening on http://{bound} (chat page: http://{bound}/)");
    node::run(listener, node, shutdown_signal(), config.shutdown_grace).await?;
    tracing::info!("node stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

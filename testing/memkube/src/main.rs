//! `memkube`: serve an in-memory Kubernetes API until SIGTERM or Ctrl-C.
//!
//! `memkube --listen 127.0.0.1:0 --kubeconfig /tmp/kubeconfig` prints
//! `memkube listening on http://127.0.0.1:PORT` once it accepts connections.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(name = "memkube", about = "in-memory Kubernetes API server for tests")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig for this server here (for kubectl --kubeconfig).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> memkube::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "memkube=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let server = memkube::ApiServer::start(args.listen).await?;
    if let Some(path) = &args.kubeconfig {
        server.write_kubeconfig(path)?;
    }
    println!("memkube listening on {}", server.url());
    std::io::stdout().flush()?;
    wait_for_signal().await?;
    server.shutdown().await
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

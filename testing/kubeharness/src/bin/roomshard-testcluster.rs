//! Runs a test cluster by hand: the real control plane and the process kubelet, with the
//! workspace's binaries as images, until Ctrl-C (SIGINT) or SIGTERM. Prints the kubeconfig to
//! use.
//!
//!   target/debug/roomshard-testcluster --nodes 3
//!   KUBECONFIG=<printed path> kubectl get nodes
//!
//! A test suite in another language starts it with `--until-stdin-closes` and a pipe as its
//! standard input: should the suite die without signalling it, the pipe closes and the cluster
//! stops anyway, so no control plane outlives the tests that started it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use kubeharness::{TestCluster, TestClusterOptions};

#[derive(Debug, Parser)]
#[command(about = "a real Kubernetes control plane with a process kubelet, for trying roomshard")]
struct Args {
    /// Nodes to register.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Directory with the roomshard binaries run as images (default: next to this program).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Also stop when standard input reaches its end (the process that started this one and
    /// holds the other end of the pipe has exited).
    #[arg(long)]
    until_stdin_closes: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let images_dir = match args.images {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .ok_or("no directory for images")?,
    };
    let images: BTreeMap<String, PathBuf> = ["roomshard-node", "roomshard-operator"]
        .into_iter()
        .map(|n| (n.to_owned(), images_dir.join(n)))
        .filter(|(_, p)| p.exists())
        .collect();
    let cluster = TestCluster::start(TestClusterOptions {
        nodes: args.nodes,
        images,
        ..TestClusterOptions::default()
    })
    .await?;
    println!("kubeconfig: {}", cluster.kubeconfig().display());
    println!("api server: {}", cluster.plane.server);
    println!("Ctrl-C stops the cluster and removes everything it made.");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stdin_closed = async {
        if args.until_stdin_closes {
            stdin_closed().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted?,
        _ = terminate.recv() => {}
        () = stdin_closed => {}
    }
    cluster.stop().await;
    // Exit now rather than return: tokio reads stdin on a blocking thread, and returning from
    // main waits for that thread, which waits for stdin to close: a suite that sent SIGINT and
    // keeps the pipe open until the process is gone would wait for nothing.
    std::process::exit(0)
}

/// Returns once standard input ends (or fails): whatever is written to it is ignored.
async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}

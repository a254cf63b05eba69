//! Runs a test cluster by hand: the real control plane and the process kubelet, with the
//! workspace's binaries as images, until Ctrl-C. Prints the kubeconfig to use.
//!
//!   target/debug/roomshard-testcluster --nodes 3
//!   KUBECONFIG=<printed path> kubectl get nodes

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
    tokio::signal::ctrl_c().await?;
    cluster.stop().await;
    Ok(())
}

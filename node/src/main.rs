//! `roomshard-node`: start a chat node, serve until SIGTERM or Ctrl-C, then drain.

use std::process::ExitCode;

use clap::Parser;
use node::auth::Authenticator;
use std::sync::Arc;

use node::configmap_source::ConfigMapTableSource;
use node::peer::{PeerSettings, Peers};
use node::table_source::{HttpTableSource, TableSource};
use node::{NodeConfig, NodeState};

fn main() -> ExitCode {
    let config = NodeConfig::parse();
    init_logging(&config.log_format);
    // One worker thread per core by default; fewer when several nodes share a machine, where
    // waking threads across cores costs more than the work they do.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("roomshard-node: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("roomshard-node: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: NodeConfig) -> Result<(), node::Error> {
    let listener = node::listen::bind(config.listen).map_err(|source| node::Error::Listen {
        what: "clients",
        addr: config.listen,
        source,
    })?;
    let bound = listener.local_addr()?;
    let peer_listener = match config.peer_listen {
        Some(addr) => Some(
            node::listen::bind(addr).map_err(|source| node::Error::Listen {
                what: "peers",
                addr,
                source,
            })?,
        ),
        None => None,
    };
    let peer_bound = match &peer_listener {
        Some(l) => l.local_addr()?,
        None => bound,
    };
    let settings = config.settings(peer_bound)?;
    let auth = match config.auth_key()? {
        Some(key) => Authenticator::with_hs256_key(&key),
        None => Authenticator::open(),
    };
    let source: Option<Arc<dyn TableSource>> = match (&config.table_url, &config.table_configmap) {
        (Some(url), _) => Some(Arc::new(HttpTableSource::new(url.clone()))),
        (None, Some(configmap)) => {
            let client = kube::Client::try_default()
                .await
                .map_err(node::Error::Kube)?;
            Some(Arc::new(ConfigMapTableSource::new(
                client,
                &config.namespace,
                configmap,
            )))
        }
        (None, None) => None,
    };
    let node = match &source {
        Some(_) => {
            let peers = Peers::new(PeerSettings {
                me: settings.name.clone(),
                secret: config.cluster_secret()?.into(),
                max_unacked: config.peer_outbox,
            });
            NodeState::clustered(settings, auth, peers)
        }
        None => NodeState::new(settings, auth),
    };
    if let Some(marker) = &config.restart_marker
        && node::restart_marker::note_start(marker)
    {
        node.restarted_in_place();
    }
    tracing::info!(node = %node.settings.name, %bound, clustered = source.is_some(), tokens = node.auth.requires_token(), "node starting");
    // Scripts and tests read these lines to learn the ports when listening on port 0.
    println!("roomshard-node listening on http://{bound} (chat page: http://{bound}/)");
    if peer_listener.is_some() {
        println!("roomshard-node peer link on {peer_bound}");
    }
    node::run(
        listener,
        peer_listener,
        node,
        source,
        shutdown_signal(),
        config.shutdown_grace,
    )
    .await?;
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

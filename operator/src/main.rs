//! `roomshard-operator`: run the Kubernetes controller (`run`, alias `controller`, which the
//! Helm chart and the image use), print the CRD (`crd`), the API calls it needs (`rbac`) or the
//! children it writes for a manifest (`render`), run a local cluster (`local`), or talk to a
//! running one's admin port (`scale`, `restart`, `status`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use operator::autoscale::{Policy, Targets};
use operator::local::{LocalCluster, LocalOptions};
use operator::{ClusterView, Error};
use tokio_util::sync::CancellationToken;

mod admin_client;

/// How long the CLI waits for the admin port to answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `local` waits for every node to be ready before printing what it has.
const STARTUP_WAIT: Duration = Duration::from_secs(30);

/// The roomshard operator.
#[derive(Debug, Parser)]
#[command(name = "roomshard-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a cluster of roomshard-node processes on loopback, without Kubernetes.
    Local(LocalArgs),
    /// Ask a local cluster for a new number of nodes.
    Scale {
        /// The cluster's admin URL.
        #[arg(long, env = "ROOMSHARD_ADMIN", default_value = "http://127.0.0.1:7700")]
        admin: String,
        /// The desired number of nodes.
        #[arg(long)]
        replicas: u32,
    },
    /// Roll every node of a local cluster: a new process per node, one at a time, each one
    /// drained before it stops (what a StatefulSet rolling update does). Waits until done.
    Restart {
        /// The cluster's admin URL.
        #[arg(long, env = "ROOMSHARD_ADMIN", default_value = "http://127.0.0.1:7700")]
        admin: String,
        /// Give up waiting after this long (the restart itself goes on).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Print a summary of a local cluster.
    Status {
        /// The cluster's admin URL.
        #[arg(long, env = "ROOMSHARD_ADMIN", default_value = "http://127.0.0.1:7700")]
        admin: String,
        /// Print the raw /cluster JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Print the ChatCluster CustomResourceDefinition (YAML).
    Crd,
    /// Print every Kubernetes API call the operator and the node make (JSON), for RBAC.
    Rbac,
    /// Print the objects the controller writes for each ChatCluster in a manifest (YAML), built
    /// offline by the controller's own builders: to review them or scan them with a policy
    /// checker. Other kinds in the file are skipped.
    Render {
        /// The manifest (`-` for standard input), e.g. examples/minimal.yaml.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace of a ChatCluster that names none (as `kubectl apply -n`).
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Run the Kubernetes controller (with leader election).
    #[command(visible_alias = "controller")]
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, env = "ROOMSHARD_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,
    /// Reconcile only the ChatClusters of this namespace (default: all namespaces).
    #[arg(long, env = "ROOMSHARD_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Namespace of the leader-election Lease (the operator's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "roomshard-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (its pod name, from the downward API).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a new cluster waits for all its pods before assigning shards to those ready.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    initial_grace: Duration,
    /// At most this many hand-offs per node in one table.
    #[arg(long, default_value_t = 64)]
    max_moves_per_node: usize,
    /// Load-aware placement: move shards when the busiest node carries more than this
    /// percentage of max(mean node load, hottest shard); 0 plans by shard count only.
    #[arg(long, default_value_t = 125)]
    load_trigger_percent: u32,
    /// How often a settled cluster is reconciled again (a safety net; changes arrive as watch
    /// events).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    requeue_after: Duration,
}

#[derive(Debug, Args)]
struct LocalArgs {
    /// Nodes to start with.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Shards rooms are spread over.
    #[arg(long, default_value_t = 256)]
    shards: u32,
    /// Admin and table HTTP port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 7700)]
    port: u16,
    /// The roomshard-node binary (default: next to this executable, then on PATH).
    #[arg(long, env = "ROOMSHARD_NODE_BIN")]
    node_bin: Option<PathBuf>,
    /// Hand-off timeout passed to the nodes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    handoff_timeout: Duration,
    /// How long a stopping node waits for its shards to be handed off (passed to the nodes).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    exit_drain_timeout: Duration,
    /// Shutdown grace passed to the nodes; the driver SIGKILLs a stopping node 5 s after its
    /// exit drain timeout and this grace.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// How long a scale-down may take before it is reported stuck (default: 3 x hand-off timeout).
    #[arg(long, value_parser = humantime::parse_duration)]
    drain_timeout: Option<Duration>,
    /// At most this many hand-offs per node in one table.
    #[arg(long, default_value_t = 64)]
    max_moves_per_node: usize,
    /// Load-aware placement: move shards when the busiest node carries more than this
    /// percentage of max(mean node load, hottest shard); 0 plans by shard count only.
    #[arg(long, default_value_t = 125)]
    load_trigger_percent: u32,
    /// Copies of every shard's rooms: 2 gives each shard a follower on another node (a killed
    /// node loses no acknowledged message), 1 keeps owners only.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    replication: u8,
    /// Write each node's log to DIR/NAME.log instead of this terminal.
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Autoscale between MIN and MAX nodes (e.g. `1:5`) from the load the nodes report; needs
    /// --target-connections or --target-deliveries.
    #[arg(long, value_name = "MIN:MAX", value_parser = operator::local::parse_bounds)]
    autoscale: Option<(u32, u32)>,
    /// Autoscaling target: open client connections per node.
    #[arg(long, requires = "autoscale")]
    target_connections: Option<u64>,
    /// Autoscaling target: messages delivered to clients per second per node.
    #[arg(long, requires = "autoscale")]
    target_deliveries: Option<u64>,
    /// Autoscaling: grow only to the lowest recommendation within this window.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    scale_up_window: Duration,
    /// Autoscaling: shrink only to the highest recommendation within this window.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    scale_down_window: Duration,
    /// Autoscaling: add or remove at most this many nodes in one step.
    #[arg(long, default_value_t = 4)]
    max_step: u32,
    /// Extra arguments for every node, after `--`.
    #[arg(last = true)]
    node_args: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Local(args) => local(args).await,
        Command::Scale { admin, replicas } => admin_client::scale(&admin, replicas).await,
        Command::Restart { admin, timeout } => admin_client::restart(&admin, timeout).await,
        Command::Status { admin, json } => admin_client::status(&admin, json).await,
        Command::Crd => crd(),
        Command::Rbac => rbac(),
        Command::Render { file, namespace } => render(&file, &namespace),
        Command::Run(args) => run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roomshard-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn local(args: LocalArgs) -> Result<(), Error> {
    let options = LocalOptions {
        nodes: args.nodes,
        shards: args.shards,
        port: args.port,
        node_bin: args.node_bin,
        handoff_timeout: args.handoff_timeout,
        exit_drain_timeout: args.exit_drain_timeout,
        shutdown_grace: args.shutdown_grace,
        drain_timeout: args.drain_timeout,
        max_moves_per_node: args.max_moves_per_node,
        replication: args.replication,
        balance: load_policy(args.load_trigger_percent),
        node_args: args.node_args,
        log_dir: args.log_dir,
        autoscale: args.autoscale.map(|(min, max)| Policy {
            scale_up_window: args.scale_up_window,
            scale_down_window: args.scale_down_window,
            max_step: args.max_step,
            ..Policy::new(
                min,
                max,
                Targets {
                    connections_per_pod: args.target_connections,
                    deliveries_per_sec_per_pod: args.target_deliveries,
                },
            )
        }),
        ..LocalOptions::default()
    };
    let cluster = LocalCluster::start(options).await?;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let view = tokio::select! {
        () = &mut stop => return cluster.shutdown().await,
        waited = cluster.wait_for(STARTUP_WAIT, ClusterView::is_settled) => match waited {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!("{e}");
                cluster.view()
            }
        },
    };
    print_banner(&view);
    stop.await;
    cluster.shutdown().await
}

fn print_banner(view: &ClusterView) {
    let admin = &view.admin_url;
    println!(
        "roomshard local cluster: {} nodes, {} shards, table epoch {}",
        view.nodes.len(),
        view.shards,
        view.epoch
    );
    for node in &view.nodes {
        match (&node.ws_url, &node.client_url) {
            (Some(ws), Some(page)) => println!("  {:<8} {ws}   chat page: {page}/", node.name),
            _ => println!("  {:<8} (not up yet)", node.name),
        }
    }
    println!("admin:  {admin}  (GET /cluster, GET /table, POST /scale, POST /restart)");
    println!("map:    {admin}/map  (live shard map; JSON at /map.json)");
    println!("scale:  roomshard-operator scale --admin {admin} --replicas 4");
    println!("status: roomshard-operator status --admin {admin}");
    println!("roll:   roomshard-operator restart --admin {admin}");
    println!("Ctrl-C stops every node.");
}

/// The default load policy with `--load-trigger-percent`; the goal stays below the trigger.
fn load_policy(trigger_percent: u32) -> shard::LoadPolicy {
    let default = shard::LoadPolicy::default();
    shard::LoadPolicy {
        trigger_percent,
        goal_percent: default.goal_percent.min(trigger_percent),
        ..default
    }
}

fn crd() -> Result<(), Error> {
    let yaml = operator::k8s::crd::crd_yaml().map_err(|e| Error::Config(e.to_string()))?;
    print!("{yaml}");
    Ok(())
}

fn rbac() -> Result<(), Error> {
    let json = serde_json::to_string_pretty(&operator::k8s::rbac::to_json())
        .map_err(|e| Error::Config(e.to_string()))?;
    println!("{json}");
    Ok(())
}

fn render(file: &std::path::Path, namespace: &str) -> Result<(), Error> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|source| Error::Io {
        context: format!("cannot read {}", file.display()),
        source,
    })?;
    print!("{}", operator::k8s::render::render_yaml(&text, namespace)?);
    Ok(())
}

async fn run(args: RunArgs) -> Result<(), Error> {
    use operator::k8s::{controller, lease, metrics::Metrics, observe, reconcile};
    let client = kube::Client::try_default().await?;
    let identity = match args.identity {
        Some(id) => id,
        None => format!("roomshard-operator-{}", std::process::id()),
    };
    let metrics = Arc::new(Metrics::default());
    let options = reconcile::Options {
        initial_grace: args.initial_grace,
        max_moves_per_node: args.max_moves_per_node,
        balance: load_policy(args.load_trigger_percent),
        idle_requeue: args.requeue_after,
        ..reconcile::Options::default()
    };
    let reporter = kube::runtime::events::Reporter {
        controller: "roomshard-operator".into(),
        instance: Some(identity.clone()),
    };
    let ctx = Arc::new(reconcile::Context::new(
        client.clone(),
        reporter,
        Arc::new(observe::HttpStatusReader::default()),
        metrics.clone(),
        options,
    ));
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|source| Error::Io {
            context: format!("cannot listen on {}", args.metrics_listen),
            source,
        })?;
    // Scripts and tests read this line to learn the port when listening on port 0.
    let bound = listener.local_addr().map_err(|source| Error::Io {
        context: "local address".into(),
        source,
    })?;
    println!("roomshard-operator metrics on http://{bound}");
    let serving = tokio::spawn(controller::serve_metrics(
        listener,
        metrics,
        ctx.map.clone(),
        shutdown.clone(),
    ));
    let elector = lease::Elector::new(
        client,
        lease::LeaseConfig::new(&args.lease_namespace, &args.lease_name, &identity),
    );
    // Every Api of the controller (ChatClusters, StatefulSets, ConfigMaps, Pods) is scoped to
    // this namespace when set, so a Role there is enough (the chart's `watchNamespace`).
    let namespace = args.watch_namespace.filter(|ns| !ns.is_empty());
    match &namespace {
        Some(ns) => tracing::info!(namespace = %ns, "watching one namespace"),
        None => tracing::info!("watching every namespace"),
    }
    tracing::info!(lease = %args.lease_name, namespace = %args.lease_namespace,
        %identity, "leader election");
    let leading = tokio::spawn(lease::lead(elector, shutdown.clone(), move |stop| {
        controller::run(ctx.clone(), namespace.clone(), stop)
    }));
    shutdown_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    if let Err(e) = leading.await {
        tracing::error!(error = %e, "leader election task failed");
    }
    match serving.await {
        Ok(served) => served,
        Err(e) => Err(Error::Config(format!("metrics server task: {e}"))),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
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
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

//! The local driver's process management, against fake nodes.
//!
//! This test binary has no libtest harness: it is both the test runner and, when started with
//! node flags (`--peer-listen`), a fake `roomshard-node`. The fake prints the two address lines,
//! serves `/readyz` and `/status`, follows the table by long-polling it, completes every move it
//! is the source of at once (unless named by `--fake-stuck`), and on SIGTERM writes what it
//! still owned to `{--fake-dir}/{name}.term` before exiting. So the driver under test starts,
//! probes, drains, stops and replaces real processes; only the chat is missing.
//!
//! Run one test with `cargo test -p operator --test local_driver -- NAME`.

use std::collections::BTreeSet;
use std::error::Error as StdError;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use operator::local::{LocalCluster, LocalOptions};
use operator::{ClusterView, http};
use shard::AssignmentTable;
use tokio::io::{AsyncBufReadExt, BufReader};

type TestResult = Result<(), Box<dyn StdError>>;
type TestFuture = Pin<Box<dyn Future<Output = TestResult>>>;
/// A named test.
type Test = (&'static str, fn() -> TestFuture);

/// How long any cluster-level condition may take.
const WAIT: Duration = Duration::from_secs(20);

const SHARDS: u32 = 32;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--peer-listen") {
        return fake::main(&args);
    }
    let tests: &[Test] = &[
        (
            "a_local_cluster_starts_every_node_and_assigns_every_shard",
            || Box::pin(a_local_cluster_starts_every_node_and_assigns_every_shard()),
        ),
        (
            "scaling_up_gives_the_new_node_shards_once_it_is_ready_and_wakes_long_polls",
            || {
                Box::pin(
                    scaling_up_gives_the_new_node_shards_once_it_is_ready_and_wakes_long_polls(),
                )
            },
        ),
        (
            "scaling_down_stops_the_highest_ordinal_only_after_it_handed_everything_off",
            || {
                Box::pin(
                    scaling_down_stops_the_highest_ordinal_only_after_it_handed_everything_off(),
                )
            },
        ),
        (
            "a_drain_that_cannot_finish_is_reported_stuck_and_nothing_is_killed",
            || Box::pin(a_drain_that_cannot_finish_is_reported_stuck_and_nothing_is_killed()),
        ),
        (
            "a_node_killed_with_sigkill_leaves_the_table_and_is_replaced_under_its_name",
            || {
                Box::pin(
                    a_node_killed_with_sigkill_leaves_the_table_and_is_replaced_under_its_name(),
                )
            },
        ),
        (
            "shutdown_stops_every_node_and_removes_the_temporary_directory",
            || Box::pin(shutdown_stops_every_node_and_removes_the_temporary_directory()),
        ),
        (
            "the_cli_runs_a_cluster_scales_it_reports_it_and_cleans_up_on_sigterm",
            || Box::pin(the_cli_runs_a_cluster_scales_it_reports_it_and_cleans_up_on_sigterm()),
        ),
    ];
    run_tests(tests, &args)
}

/// A minimal runner: runs the tests whose name contains the first non-flag argument, one at a
/// time, each on its own runtime, and reports like libtest.
fn run_tests(tests: &[Test], args: &[String]) -> ExitCode {
    let filter = args.iter().find(|a| !a.starts_with('-'));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let selected: Vec<_> = tests
        .iter()
        .filter(|(name, _)| filter.is_none_or(|f| name.contains(f.as_str())))
        .collect();
    println!("\nrunning {} tests", selected.len());
    let mut failed = Vec::new();
    for (name, test) in &selected {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(test())
        });
        let verdict = match outcome {
            Ok(Ok(())) => "ok".to_string(),
            Ok(Err(e)) => {
                failed.push(*name);
                format!("FAILED: {e}")
            }
            Err(_) => {
                failed.push(*name);
                "FAILED (panicked)".to_string()
            }
        };
        println!(
            "test {name} ... {verdict} ({:.1}s)",
            started.elapsed().as_secs_f64()
        );
    }
    let result = if failed.is_empty() { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {result}. {} passed; {} failed\n",
        selected.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ---- helpers ----

fn fail(message: impl Into<String>) -> Box<dyn StdError> {
    message.into().into()
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> TestResult {
    if condition {
        Ok(())
    } else {
        Err(fail(message()))
    }
}

/// Options for a cluster of fake nodes on free ports, with short timeouts.
fn options(nodes: u32, node_args: &[&str]) -> Result<LocalOptions, Box<dyn StdError>> {
    Ok(LocalOptions {
        nodes,
        shards: SHARDS,
        port: 0,
        node_bin: Some(std::env::current_exe()?),
        handoff_timeout: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(2),
        interval: Duration::from_millis(100),
        node_args: node_args.iter().map(ToString::to_string).collect(),
        ..LocalOptions::default()
    })
}

fn settled_with(n: u32) -> impl FnMut(&ClusterView) -> bool {
    move |v| v.desired_replicas == n && v.is_settled()
}

/// True while a process with this pid exists (`kill -0`).
async fn alive(pid: u32) -> bool {
    tokio::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

fn pids(view: &ClusterView) -> Vec<u32> {
    view.nodes.iter().filter_map(|n| n.pid).collect()
}

/// A fresh empty directory for the fakes' marker files.
fn marker_dir(test: &str) -> Result<PathBuf, Box<dyn StdError>> {
    let dir = std::env::temp_dir().join(format!("roomshard-fake-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn authority(url: &str) -> Result<String, Box<dyn StdError>> {
    Ok(http::split_url(url)?.0)
}

// ---- tests ----

async fn a_local_cluster_starts_every_node_and_assigns_every_shard() -> TestResult {
    let cluster = LocalCluster::start(options(3, &[])?).await?;
    let view = cluster.wait_for(WAIT, settled_with(3)).await?;
    let names: Vec<&str> = view.nodes.iter().map(|n| n.name.as_str()).collect();
    ensure(names == ["node-0", "node-1", "node-2"], || {
        format!("nodes {names:?}")
    })?;
    for node in &view.nodes {
        ensure(node.shards == 10 || node.shards == 11, || {
            format!("{} owns {} shards", node.name, node.shards)
        })?;
        ensure(
            node.ws_url
                .as_deref()
                .is_some_and(|u| u.starts_with("ws://127.0.0.1:")),
            || format!("{} has ws url {:?}", node.name, node.ws_url),
        )?;
        ensure(node.status.is_some(), || {
            format!("{} has no status", node.name)
        })?;
    }

    // The table over HTTP is the published one, and /cluster says the same as the library.
    let admin = authority(cluster.admin_url())?;
    let served = http::get(&admin, "/table", Duration::from_secs(5)).await?;
    let table = AssignmentTable::from_json(&served.body)?;
    ensure(table == *cluster.table(), || "GET /table differs".into())?;
    let served = http::get(&admin, "/cluster", Duration::from_secs(5)).await?;
    let over_http: ClusterView = serde_json::from_str(&served.body)?;
    ensure(
        over_http.epoch == table.epoch && over_http.nodes.len() == 3,
        || format!("GET /cluster: {}", over_http.summary()),
    )?;

    // Every node applied the table it routes by.
    for node in &view.nodes {
        let epoch = node.status.as_ref().and_then(|s| s["epoch"].as_u64());
        ensure(epoch == Some(table.epoch), || {
            format!("{} at epoch {epoch:?}, table at {}", node.name, table.epoch)
        })?;
    }
    cluster.shutdown().await?;
    Ok(())
}

async fn scaling_up_gives_the_new_node_shards_once_it_is_ready_and_wakes_long_polls() -> TestResult
{
    let cluster = LocalCluster::start(options(2, &[])?).await?;
    let view = cluster.wait_for(WAIT, settled_with(2)).await?;
    let admin = authority(cluster.admin_url())?;
    let epoch = view.epoch;

    // A long-poll at the current epoch waits...
    let poll = tokio::spawn({
        let admin = admin.clone();
        async move { http::get(&admin, &format!("/table?after={epoch}"), WAIT).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure(!poll.is_finished(), || {
        "the long-poll answered without a new table".into()
    })?;

    // ...until scaling up publishes a table, which happens only once node-2 is ready.
    let scaled = http::post_json(&admin, "/scale", r#"{"replicas":3}"#, WAIT).await?;
    ensure(scaled.status == 202, || format!("POST /scale: {scaled:?}"))?;
    let answer = poll.await??;
    let table = AssignmentTable::from_json(&answer.body)?;
    let node2 = shard::NodeName::new("node-2")?;
    ensure(table.epoch > epoch, || {
        "the long-poll answered an old table".into()
    })?;
    ensure(table.nodes.contains_key(&node2), || {
        "the first new table does not list node-2".into()
    })?;
    ensure(
        !table.moves.is_empty() && table.moves.iter().all(|m| m.to == node2),
        || format!("moves {:?}", table.moves),
    )?;

    let view = cluster.wait_for(WAIT, settled_with(3)).await?;
    ensure(view.node("node-2").is_some_and(|n| n.shards >= 10), || {
        view.summary()
    })?;

    // Out-of-range requests are refused.
    let refused = http::post_json(&admin, "/scale", r#"{"replicas":0}"#, WAIT).await?;
    ensure(refused.status == 400, || {
        format!("POST /scale 0: {refused:?}")
    })?;
    cluster.shutdown().await?;
    Ok(())
}

async fn scaling_down_stops_the_highest_ordinal_only_after_it_handed_everything_off() -> TestResult
{
    let dir = marker_dir("scale-down")?;
    let dir_arg = dir.to_string_lossy().to_string();
    let cluster = LocalCluster::start(options(3, &["--fake-dir", &dir_arg])?).await?;
    let before = cluster.wait_for(WAIT, settled_with(3)).await?;
    let node2_pid = before.node("node-2").and_then(|n| n.pid);

    cluster.scale(2)?;
    let mut phases = BTreeSet::new();
    let after = cluster
        .wait_for(WAIT, |v| {
            phases.insert(v.drain.phase.clone());
            v.desired_replicas == 2 && v.is_settled()
        })
        .await?;
    ensure(after.node("node-2").is_none(), || after.summary())?;
    ensure(
        after.shards_per_node.values().sum::<u32>() == SHARDS,
        || after.summary(),
    )?;
    ensure(phases.iter().any(|p| p != "Steady"), || {
        format!("phases seen: {phases:?}")
    })?;

    // node-2 got SIGTERM (it wrote its marker) while owning nothing and moving nothing.
    let marker = std::fs::read_to_string(dir.join("node-2.term"))?;
    ensure(marker.trim() == "owned=0 moves=0", || {
        format!("node-2 was stopped with {marker:?}")
    })?;
    if let Some(pid) = node2_pid {
        ensure(!alive(pid).await, || {
            format!("node-2 (pid {pid}) still runs")
        })?;
    }
    // The others never stopped.
    for name in ["node-0", "node-1"] {
        ensure(!dir.join(format!("{name}.term")).exists(), || {
            format!("{name} was stopped")
        })?;
        ensure(
            before.node(name).and_then(|n| n.pid) == after.node(name).and_then(|n| n.pid),
            || format!("{name} was restarted"),
        )?;
    }
    cluster.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn a_drain_that_cannot_finish_is_reported_stuck_and_nothing_is_killed() -> TestResult {
    let mut opts = options(3, &["--fake-stuck", "node-2"])?;
    opts.drain_timeout = Some(Duration::from_secs(1));
    let cluster = LocalCluster::start(opts).await?;
    let before = cluster.wait_for(WAIT, settled_with(3)).await?;

    cluster.scale(2)?;
    let stuck = cluster.wait_for(WAIT, |v| v.drain.stuck.is_some()).await?;
    let message = stuck.drain.stuck.clone().unwrap_or_default();
    ensure(
        message.contains("draining node-2") && message.contains("node-2 ->"),
        || format!("stuck message {message:?}"),
    )?;
    ensure(stuck.drain.phase == "WaitForMoves", || stuck.summary())?;
    ensure(stuck.replicas == 3, || stuck.summary())?;
    let node2 = stuck.node("node-2").ok_or_else(|| fail("node-2 is gone"))?;
    ensure(
        node2.running && !node2.stopping && node2.pid == before.node("node-2").and_then(|n| n.pid),
        || stuck.summary(),
    )?;
    if let Some(pid) = node2.pid {
        ensure(alive(pid).await, || "node-2 was killed".into())?;
    }
    cluster.shutdown().await?;
    Ok(())
}

async fn a_node_killed_with_sigkill_leaves_the_table_and_is_replaced_under_its_name() -> TestResult
{
    let cluster = LocalCluster::start(options(3, &[])?).await?;
    let before = cluster.wait_for(WAIT, settled_with(3)).await?;
    let node1 = shard::NodeName::new("node-1")?;

    // Record every table published from now on.
    let mut tables = cluster.subscribe_table();
    tables.mark_unchanged();
    let recorder = tokio::spawn(async move {
        let mut seen = Vec::new();
        while tables.changed().await.is_ok() {
            seen.push(AssignmentTable::clone(&tables.borrow_and_update()));
        }
        seen
    });

    let killed = cluster.kill9("node-1").await?;
    let after = cluster
        .wait_for(WAIT, |v| {
            v.is_settled()
                && v.node("node-1")
                    .is_some_and(|n| n.restarts == 1 && n.pid.is_some_and(|p| p != killed))
        })
        .await?;
    ensure(!alive(killed).await, || "the killed pid still runs".into())?;
    cluster.shutdown().await?;
    let seen = recorder.await?;

    // First a table without node-1, all its shards reassigned fresh (no moves from it)...
    let without = seen
        .iter()
        .position(|t| !t.nodes.contains_key(&node1))
        .ok_or_else(|| fail("no table without node-1 was published"))?;
    let gap = &seen[without];
    ensure(gap.owners().iter().all(Option::is_some), || {
        "a shard was left without owner".into()
    })?;
    ensure(gap.moves.iter().all(|m| m.from != node1), || {
        format!("moves from the dead node: {:?}", gap.moves)
    })?;
    // ...then the replacement joined through an ordinary rebalance.
    ensure(
        seen[without..]
            .iter()
            .any(|t| t.moves.iter().any(|m| m.to == node1)),
        || "node-1 never received shards by hand-off".into(),
    )?;
    ensure(after.node("node-1").is_some_and(|n| n.shards >= 10), || {
        after.summary()
    })?;
    ensure(
        before.node("node-0").and_then(|n| n.pid) == after.node("node-0").and_then(|n| n.pid),
        || "node-0 was restarted".into(),
    )?;
    Ok(())
}

async fn shutdown_stops_every_node_and_removes_the_temporary_directory() -> TestResult {
    let dir = marker_dir("shutdown")?;
    let dir_arg = dir.to_string_lossy().to_string();
    let cluster = LocalCluster::start(options(2, &["--fake-dir", &dir_arg])?).await?;
    let view = cluster.wait_for(WAIT, settled_with(2)).await?;
    let workdir = cluster.workdir().to_path_buf();
    ensure(workdir.join("cluster-secret").is_file(), || {
        "no cluster secret".into()
    })?;
    let pids = pids(&view);
    ensure(pids.len() == 2, || view.summary())?;

    cluster.shutdown().await?;
    for pid in pids {
        ensure(!alive(pid).await, || format!("pid {pid} still runs"))?;
    }
    ensure(!workdir.exists(), || {
        format!("{} still exists", workdir.display())
    })?;
    // They were asked politely (SIGTERM), not killed.
    for name in ["node-0", "node-1"] {
        ensure(dir.join(format!("{name}.term")).exists(), || {
            format!("{name} did not get SIGTERM")
        })?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn the_cli_runs_a_cluster_scales_it_reports_it_and_cleans_up_on_sigterm() -> TestResult {
    let bin = env!("CARGO_BIN_EXE_roomshard-operator");
    let me = std::env::current_exe()?;
    let mut driver = tokio::process::Command::new(bin)
        .args(["local", "--nodes", "2", "--port", "0", "--shards", "16"])
        .args(["--shutdown-grace", "2s", "--node-bin"])
        .arg(&me)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = driver.stdout.take().ok_or_else(|| fail("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = Vec::new();
    let admin = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            banner.push(line.clone());
            if let Some(rest) = line.strip_prefix("admin:") {
                return Ok::<_, std::io::Error>(rest.split_whitespace().next().map(String::from));
            }
        }
        Ok(None)
    })
    .await??
    .ok_or_else(|| fail("no admin line in the banner"))?;
    let text = banner.join("\n");
    ensure(
        text.contains("node-0") && text.contains("/ws") && text.contains("chat page: http://"),
        || format!("banner:\n{text}"),
    )?;

    let cli = |args: Vec<String>| {
        let bin = bin.to_string();
        async move {
            let out = tokio::process::Command::new(bin)
                .args(args)
                .output()
                .await?;
            Ok::<_, std::io::Error>((
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).to_string(),
            ))
        }
    };
    let (ok, status) = cli(vec!["status".into(), "--admin".into(), admin.clone()]).await?;
    ensure(
        ok && status.contains("node-1") && status.contains("phase: Steady"),
        || format!("status:\n{status}"),
    )?;
    let (ok, _) = cli(vec![
        "scale".into(),
        "--admin".into(),
        admin.clone(),
        "--replicas".into(),
        "3".into(),
    ])
    .await?;
    ensure(ok, || "scale failed".into())?;

    // Follow /cluster until the third node has shards.
    let authority = authority(&admin)?;
    let deadline = Instant::now() + WAIT;
    let view = loop {
        let body = http::get(&authority, "/cluster", Duration::from_secs(2))
            .await?
            .body;
        let view: ClusterView = serde_json::from_str(&body)?;
        if view.desired_replicas == 3 && view.is_settled() {
            break view;
        }
        if Instant::now() > deadline {
            return Err(fail(format!("not scaled up:\n{}", view.summary())));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let pid = driver.id().ok_or_else(|| fail("the driver exited early"))?;
    tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    let exit = tokio::time::timeout(WAIT, driver.wait()).await??;
    ensure(exit.success(), || format!("the driver exited with {exit}"))?;
    for pid in pids(&view) {
        ensure(!alive(pid).await, || {
            format!("node pid {pid} survived the driver")
        })?;
    }
    Ok(())
}

/// The fake `roomshard-node`.
mod fake {
    use std::path::PathBuf;
    use std::process::ExitCode;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::get;
    use operator::http;
    use serde_json::json;
    use shard::{AssignmentTable, Move, NodeName};
    use tokio::net::TcpListener;

    #[derive(Debug, Default)]
    struct Args {
        name: String,
        listen: String,
        peer_listen: String,
        table_url: String,
        dir: Option<PathBuf>,
        stuck: Vec<String>,
    }

    #[derive(Debug)]
    struct Fake {
        name: NodeName,
        /// Never completes a move while the table drains this node.
        stuck: bool,
        state: Mutex<Applied>,
    }

    #[derive(Debug, Default)]
    struct Applied {
        table: Option<AssignmentTable>,
        done: Vec<Move>,
        terminating: bool,
    }

    impl Fake {
        fn lock(&self) -> std::sync::MutexGuard<'_, Applied> {
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// Hand-offs this node still has in progress under its table.
        fn in_flight(&self, applied: &Applied) -> u32 {
            let Some(table) = &applied.table else {
                return 0;
            };
            let open = table
                .moves
                .iter()
                .filter(|m| m.from == self.name || m.to == self.name)
                .filter(|m| !applied.done.contains(m))
                .count();
            u32::try_from(open).unwrap_or(u32::MAX)
        }
    }

    pub fn main(args: &[String]) -> ExitCode {
        let mut parsed = Args::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().cloned().unwrap_or_default();
            match flag.as_str() {
                "--name" => parsed.name = value,
                "--listen" => parsed.listen = value,
                "--peer-listen" => parsed.peer_listen = value,
                "--table-url" => parsed.table_url = value,
                "--fake-dir" => parsed.dir = Some(PathBuf::from(value)),
                "--fake-stuck" => parsed.stuck.push(value),
                _ => {}
            }
        }
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("fake node: {e}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(run(parsed)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fake node: {e}");
                ExitCode::FAILURE
            }
        }
    }

    async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
        let name = NodeName::new(args.name.clone())?;
        let fake = Arc::new(Fake {
            stuck: args.stuck.contains(&args.name),
            name,
            state: Mutex::new(Applied::default()),
        });
        let client = TcpListener::bind(&args.listen).await?;
        let peer = TcpListener::bind(&args.peer_listen).await?;
        let client_addr = client.local_addr()?;
        let peer_addr = peer.local_addr()?;
        let app = Router::new()
            .route("/readyz", get(readyz))
            .route("/status", get(status))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(fake.clone());
        tokio::spawn(axum::serve(client, app.clone()).into_future());
        tokio::spawn(axum::serve(peer, app).into_future());
        println!(
            "roomshard-node listening on http://{client_addr} (chat page: http://{client_addr}/)"
        );
        println!("roomshard-node peer link on {peer_addr}");
        tokio::spawn(follow(fake.clone(), args.table_url.clone()));

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        term.recv().await;
        let marker = {
            let mut applied = fake.lock();
            applied.terminating = true;
            let owned = applied
                .table
                .as_ref()
                .map_or(0, |t| t.shards_of(&fake.name).len());
            format!("owned={owned} moves={}", fake.in_flight(&applied))
        };
        if let Some(dir) = &args.dir {
            std::fs::write(dir.join(format!("{}.term", args.name)), marker)?;
        }
        // Like the real node: not ready any more, then gone.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }

    /// Long-polls the table and applies each newer one.
    async fn follow(fake: Arc<Fake>, table_url: String) {
        let Ok((authority, path)) = http::split_url(&table_url) else {
            eprintln!("fake node: bad table url {table_url}");
            return;
        };
        loop {
            let epoch = fake.lock().table.as_ref().map(|t| t.epoch);
            let query = epoch.map_or_else(|| path.clone(), |e| format!("{path}?after={e}"));
            let table = match http::get(&authority, &query, Duration::from_secs(30)).await {
                Ok(r) if r.is_success() => AssignmentTable::from_json(&r.body).ok(),
                _ => None,
            };
            let Some(table) = table else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut applied = fake.lock();
            if applied
                .table
                .as_ref()
                .is_some_and(|t| t.epoch >= table.epoch)
            {
                continue;
            }
            // A move is "done" as soon as the source sees it, unless this node is stuck (which
            // only shows once it is drained).
            applied.done = if fake.stuck && table.draining.contains(&fake.name) {
                Vec::new()
            } else {
                table
                    .moves
                    .iter()
                    .filter(|m| m.from == fake.name)
                    .cloned()
                    .collect()
            };
            applied.table = Some(table);
        }
    }

    async fn readyz(State(fake): State<Arc<Fake>>) -> StatusCode {
        if fake.lock().terminating {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    }

    async fn status(State(fake): State<Arc<Fake>>) -> axum::Json<serde_json::Value> {
        let applied = fake.lock();
        let (epoch, owned) = applied
            .table
            .as_ref()
            .map_or((0, 0), |t| (t.epoch, t.shards_of(&fake.name).len()));
        axum::Json(json!({
            "node": fake.name.as_str(),
            "epoch": epoch,
            "shardsOwned": owned,
            "movesInFlight": fake.in_flight(&applied),
            "movesDone": applied.done,
            "rooms": 0,
            "connections": 0,
            "peersConnected": 0,
            "ready": !applied.terminating,
        }))
    }
}

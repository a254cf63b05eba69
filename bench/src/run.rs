//! The phases of a run, and the JSON line it ends with.
//!
//! Load: connect every user (bounded by `--connect-timeout`), then start the pacer (a thread
//! that hands one send order per room tick to the room's users in turn, so each room offers
//! exactly `--rate` messages per second, evenly spaced, with the rooms' ticks staggered across
//! the period instead of all firing at once: [`crate::pacer`]). The first `--warmup` of sending
//! is not measured; then `--duration` is. After the pacer stops, the drain waits (at most
//! `--drain`) until every measured send is answered and every accepted message has reached
//! every member. Then every connection is closed and the users' reports are added up.
//!
//! Idle: open `--idle` bare connections, read the nodes' memory before and after.
//!
//! Every wait has a deadline, so a run always ends by itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::args::{IdlePlan, LoadPlan, NodeAddr, OnReconnect, Plan};
use crate::client::{self, Latency, Ready, RoomShared, SendOrder, Shared, UserReport, UserSpec};
use crate::histogram::Histogram;
use crate::{pacer, procfs, scrape};

/// Send orders a user may have waiting (while it reconnects, say) before the pacer counts
/// further ones as not sent: a bounded backlog, and a visible one.
const ORDER_QUEUE: usize = 64;
/// Time between the pacer's start and its first tick, so every room starts on schedule.
const PACER_LEAD: Duration = Duration::from_millis(200);
/// Longest wait for the user tasks to close their connections and report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the drain checks whether everything arrived.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Progress lines during the send phase.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Let the nodes finish their per-connection allocations before reading their memory.
const IDLE_SETTLE: Duration = Duration::from_secs(2);

/// Run `plan`; the JSON line to print on success.
///
/// # Errors
/// A message when no connection could be made at all.
pub async fn run(plan: Plan) -> Result<String, String> {
    match plan {
        Plan::Load(plan) => run_load(plan).await,
        Plan::Idle(plan) => run_idle(plan).await,
    }
}

/// End-to-end latency percentiles, in milliseconds.
#[derive(Debug, Serialize)]
struct LatencyMs {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    /// Deliveries measured.
    samples: u64,
}

impl LatencyMs {
    fn of(histogram: &Histogram) -> LatencyMs {
        let ms = |us: u64| us as f64 / 1000.0;
        LatencyMs {
            p50: ms(histogram.quantile(0.50)),
            p90: ms(histogram.quantile(0.90)),
            p99: ms(histogram.quantile(0.99)),
            p999: ms(histogram.quantile(0.999)),
            max: ms(histogram.max()),
            samples: histogram.len(),
        }
    }
}

/// How `lost` was counted.
#[derive(Debug, Serialize)]
struct LostDetail {
    /// Messages a connected receiver skipped in `seq` (including what a resume could not replay).
    seq_gaps: u64,
    /// Measured sends answered by neither their `msg` nor an `error`.
    unanswered: u64,
    /// Messages a receiver still in its room at the end never got (behind the room's last seq).
    tail: u64,
}

/// The load run's JSON line: the first fields are the stable ones scripts read.
#[derive(Debug, Serialize)]
struct LoadReport {
    connections: u64,
    rooms: usize,
    duration_s: f64,
    offered_per_s: f64,
    sent: u64,
    accepted: u64,
    delivered: u64,
    delivered_per_s: f64,
    expected_deliveries: u64,
    latency_ms: LatencyMs,
    /// The same deliveries from the moment the sender wrote each message to its socket, not
    /// from when it was due: without the bench's own lateness (the pacer's wake-up and the
    /// hop from the pacer to the sending user).
    latency_from_write_ms: LatencyMs,
    /// How late the bench wrote those messages (write less due time), over the same deliveries.
    send_lag_ms: LatencyMs,
    errors: BTreeMap<String, u64>,
    lost: u64,
    duplicates: u64,
    reconnects: u64,
    longest_pause_ms: f64,
    /// Users whose longest pause passed their room's own interval by more than 100 ms, by the
    /// tenth of a second (from the start of the measurement) the pause began: where and how
    /// widely a run's pauses happen.
    long_pauses_by_start_s: BTreeMap<String, u64>,
    /// How many of those users reconnected during the run (their node left, say): the rest
    /// paused with their connection up, on the hand-off of their room alone.
    long_pauses_reconnected: u64,
    /// The longest pause of a user that never reconnected: what a hand-off alone costs.
    longest_pause_without_reconnect_ms: f64,
    /// From a connection's end to the next connection's `joined`, over every reconnect that
    /// left the room first (the connection dropped, the user closed first, or the old
    /// connection ended before the new one was in): how long users were out of their room.
    rejoin_ms: Option<RankedMs>,
    /// Over the moves made without leaving the room (told to reconnect, the user joined on the
    /// next node before closing the old connection: `--on-reconnect overlap`), the time from
    /// the node's `reconnect` to the switch to the new connection.
    handover_ms: Option<RankedMs>,
    server_cpu_s: Option<f64>,
    server_cpu_s_per_million: Option<f64>,
    server_rss_kib: Option<u64>,
    // Details, after the headline figures.
    users_per_room: usize,
    warmup_s: f64,
    connect_failures: u64,
    lost_detail: LostDetail,
    out_of_order: u64,
    /// Resumes that found their room restarted (state lost), see `UserReport::room_resets`.
    room_resets: u64,
    /// Pacer ticks dropped because the user's order queue was full (the bench fell behind or
    /// the user was away too long): offered load that never reached a node.
    not_sent: u64,
    bad_frames: u64,
    down_at_end: u64,
    drain_s: f64,
    connect_s: f64,
    wall_s: f64,
    bench_rss_kib: Option<u64>,
    /// The machine's 1-minute load average before and after: other work on the same cores
    /// (a build, say) shows up as latency, and this says whether there was any.
    load_1m: [Option<f64>; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    server_metrics: Option<BTreeMap<String, f64>>,
    /// With `--audit-history`: every room's history read afterwards.
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<crate::audit::HistoryAudit>,
}

/// The idle run's JSON line.
#[derive(Debug, Serialize)]
struct IdleReport {
    idle_connections: u64,
    rss_before_kib: Option<u64>,
    rss_after_kib: Option<u64>,
    bytes_per_connection: Option<f64>,
    requested: usize,
    mode: &'static str,
    connect_s: f64,
    reconnects: u64,
    bench_rss_kib: Option<u64>,
}

fn new_shared(
    nodes: Vec<NodeAddr>,
    text_bytes: usize,
    concurrency: usize,
    room_names: Vec<String>,
    record_acknowledged: bool,
    on_reconnect: OnReconnect,
) -> Arc<Shared> {
    Arc::new(Shared {
        clock: Instant::now(),
        nodes,
        text_bytes,
        stop: CancellationToken::new(),
        handshakes: Semaphore::new(concurrency),
        measure_from_us: AtomicU64::new(u64::MAX),
        send_until_us: AtomicU64::new(u64::MAX),
        delivered: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        in_flight: AtomicI64::new(0),
        up: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        rooms: room_names.into_iter().map(RoomShared::new).collect(),
        latency: Mutex::new(Latency::default()),
        record_acknowledged,
        on_reconnect,
    })
}

/// A started user: its task, its order queue (until handed to the pacer) and its readiness.
struct Started {
    task: JoinHandle<UserReport>,
    orders: mpsc::Sender<SendOrder>,
    ready: oneshot::Receiver<Ready>,
    room: Option<usize>,
}

fn start_user(shared: &Arc<Shared>, spec: UserSpec) -> Started {
    let (orders, order_rx) = mpsc::channel(ORDER_QUEUE);
    let (ready_tx, ready) = oneshot::channel();
    let room = spec.room;
    let task = tokio::spawn(client::run_user(spec, shared.clone(), order_rx, ready_tx));
    Started {
        task,
        orders,
        ready,
        room,
    }
}

/// Wait for every user's readiness (each gives up by its own deadline), printing progress.
/// Returns, per user, whether it came up, and the distinct failure reasons.
async fn wait_until_up(
    shared: &Arc<Shared>,
    started: &mut [Started],
    deadline: Instant,
) -> (Vec<bool>, BTreeMap<String, u64>) {
    let total = started.len();
    let mut up = vec![false; total];
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut waiting: FuturesUnordered<_> = started
        .iter_mut()
        .enumerate()
        .map(|(index, s)| async move { (index, (&mut s.ready).await) })
        .collect();
    let every = Duration::from_secs(2);
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // A little past the users' own deadline: they report failure themselves by then.
    let hard_stop = tokio::time::Instant::from_std(deadline) + Duration::from_secs(2);
    loop {
        tokio::select! {
            next = waiting.next() => match next {
                Some((index, Ok(Ready::Up))) => up[index] = true,
                Some((_, Ok(Ready::Failed(reason)))) => *failures.entry(reason).or_default() += 1,
                Some((_, Err(_))) => *failures.entry("user task ended".into()).or_default() += 1,
                None => break,
            },
            _ = progress.tick() => eprintln!(
                "roomshard-bench: {} of {total} connections up",
                shared.up.load(Ordering::Relaxed)
            ),
            () = tokio::time::sleep_until(hard_stop) => {
                let missing = total - up.iter().filter(|&&u| u).count()
                    - failures.values().sum::<u64>() as usize;
                *failures.entry("no answer before the connect timeout".into()).or_default() +=
                    missing as u64;
                break;
            }
        }
    }
    (up, failures)
}

fn describe_failures(failures: &BTreeMap<String, u64>) -> String {
    failures
        .iter()
        .take(5)
        .map(|(reason, n)| format!("{n} x {reason}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Stop every user and collect the reports of those that close in time.
async fn stop_users(shared: &Shared, tasks: Vec<JoinHandle<UserReport>>) -> Vec<UserReport> {
    shared.stop.cancel();
    let deadline = tokio::time::Instant::now() + REPORT_TIMEOUT;
    let mut reports = Vec::with_capacity(tasks.len());
    for task in tasks {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(report)) => reports.push(report),
            Ok(Err(e)) => eprintln!("roomshard-bench: a user task failed: {e}"),
            Err(_) => abort.abort(),
        }
    }
    reports
}

async fn run_load(plan: LoadPlan) -> Result<String, String> {
    let wall = Instant::now();
    let load_before = procfs::load_1m();
    let ticks_per_sec = procfs::ticks_per_sec();
    let room_names: Vec<String> = (0..plan.rooms)
        .map(|r| format!("{}-{r}", plan.prefix))
        .collect();
    let shared = new_shared(
        plan.nodes.clone(),
        plan.text_bytes,
        plan.connect_concurrency,
        room_names,
        plan.audit_history,
        plan.on_reconnect,
    );
    let total = plan.rooms * plan.users;
    eprintln!(
        "roomshard-bench: connecting {total} users ({} rooms x {}) to {} node(s)",
        plan.rooms,
        plan.users,
        plan.nodes.len()
    );
    let up_deadline = Instant::now() + plan.connect_timeout;
    let mut started: Vec<Started> = Vec::with_capacity(total);
    for room in 0..plan.rooms {
        for k in 0..plan.users {
            let index = room * plan.users + k;
            let spec = UserSpec {
                name: format!("{}-{room}-{k}", plan.prefix),
                room: Some(room),
                first_node: index,
                up_deadline,
            };
            started.push(start_user(&shared, spec));
        }
    }
    let (up, failures) = wait_until_up(&shared, &mut started, up_deadline).await;
    let connected = up.iter().filter(|&&u| u).count();
    let connect_s = wall.elapsed().as_secs_f64();
    let connect_failures = (total - connected) as u64;
    if connected == 0 {
        let tasks = started.into_iter().map(|s| s.task).collect();
        stop_users(&shared, tasks).await;
        return Err(format!(
            "could not connect any user: {}",
            describe_failures(&failures)
        ));
    }
    if connect_failures > 0 {
        eprintln!(
            "roomshard-bench: {connect_failures} of {total} users did not come up ({}); running with {connected}",
            describe_failures(&failures)
        );
    }
    eprintln!("roomshard-bench: {connected} connections up in {connect_s:.1} s");

    // Hand each room's live users to the pacer; the others' queues are dropped.
    let mut per_room: Vec<Vec<mpsc::Sender<SendOrder>>> = vec![Vec::new(); plan.rooms];
    let mut tasks = Vec::with_capacity(total);
    for (s, is_up) in started.into_iter().zip(up) {
        if let (true, Some(room)) = (is_up, s.room) {
            per_room[room].push(s.orders);
        }
        tasks.push(s.task);
    }

    let period = Duration::from_secs_f64(1.0 / plan.rate);
    let start = Instant::now() + PACER_LEAD;
    let measure_from = start + plan.warmup;
    let send_until = measure_from + plan.duration;
    shared
        .measure_from_us
        .store(shared.us_at(measure_from), Ordering::Relaxed);
    shared
        .send_until_us
        .store(shared.us_at(send_until), Ordering::Relaxed);
    // Rooms with no live user keep their place in the stagger and send nothing.
    let pacer = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            pacer::pace(&shared, per_room, period, start, send_until)
        })
    };
    eprintln!(
        "roomshard-bench: sending {:.0} msg/s ({} rooms x {} msg/s), warmup {:?}, measuring {:?}",
        plan.rate * plan.rooms as f64,
        plan.rooms,
        plan.rate,
        plan.warmup,
        plan.duration
    );

    tokio::time::sleep_until(tokio::time::Instant::from_std(measure_from)).await;
    let cpu_before = procfs::total_cpu_ticks(&plan.pids);
    let metrics_before = scrape_or_warn(&plan.metrics).await;
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let mut last_delivered = 0;
    let send_end = tokio::time::sleep_until(tokio::time::Instant::from_std(send_until));
    tokio::pin!(send_end);
    loop {
        tokio::select! {
            () = &mut send_end => break,
            _ = progress.tick() => {
                let delivered = shared.delivered.load(Ordering::Relaxed);
                eprintln!(
                    "roomshard-bench: {:.0} s: {:.0} deliveries/s, {} in flight, {} reconnects",
                    measure_from.elapsed().as_secs_f64(),
                    (delivered - last_delivered) as f64 / PROGRESS_EVERY.as_secs_f64(),
                    shared.in_flight.load(Ordering::Relaxed),
                    shared.reconnects.load(Ordering::Relaxed),
                );
                last_delivered = delivered;
            }
        }
    }
    let not_sent = pacer.await.unwrap_or(0);

    eprintln!(
        "roomshard-bench: send phase over, draining (at most {:?})",
        plan.drain
    );
    let drain_start = Instant::now();
    let drain_deadline = drain_start + plan.drain;
    while Instant::now() < drain_deadline {
        let in_flight = shared.in_flight.load(Ordering::Relaxed);
        let delivered = shared.delivered.load(Ordering::Relaxed);
        let expected = shared.expected.load(Ordering::Relaxed);
        if in_flight <= 0 && delivered >= expected {
            break;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let drain_s = drain_start.elapsed().as_secs_f64();
    let cpu_after = procfs::total_cpu_ticks(&plan.pids);
    let server_rss_kib = if plan.pids.is_empty() {
        None
    } else {
        procfs::total_rss_kib(&plan.pids)
    };
    let metrics_after = scrape_or_warn(&plan.metrics).await;
    let bench_rss_kib = procfs::rss_kib(std::process::id());

    eprintln!("roomshard-bench: closing connections");
    let reports = stop_users(&shared, tasks).await;

    // Add up what the users saw.
    let mut errors = BTreeMap::new();
    let mut error_examples = BTreeMap::new();
    let (mut sent, mut accepted, mut delivered, mut gaps, mut unanswered, mut tail) =
        (0, 0, 0, 0, 0, 0);
    let (mut duplicates, mut out_of_order, mut reconnects, mut bad_frames, mut down_at_end) =
        (0, 0, 0, 0, 0);
    let mut room_resets = 0;
    let mut longest_pause_us = 0;
    let mut long_pauses_by_start_s = BTreeMap::new();
    let (mut long_pauses_reconnected, mut longest_pause_without_reconnect_us) = (0, 0);
    let mut rejoins_us: Vec<u64> = Vec::new();
    let mut handovers_us: Vec<u64> = Vec::new();
    let measured_from = shared.measure_from_us.load(Ordering::Relaxed);
    let long_pause = long_pause_us(plan.rate);
    log_longest_pauses(&shared, &reports);
    for report in &reports {
        if report.longest_pause_us > long_pause {
            let tenths = report.longest_pause_from_us.saturating_sub(measured_from) / 100_000;
            // Zero-padded so the JSON object's keys sort in time order.
            let key = format!("{:05.1}", tenths as f64 / 10.0);
            *long_pauses_by_start_s.entry(key).or_insert(0) += 1;
            long_pauses_reconnected += u64::from(report.reconnects > 0);
        }
        rejoins_us.extend(&report.rejoins_us);
        handovers_us.extend(&report.handovers_us);
        if report.reconnects == 0 {
            longest_pause_without_reconnect_us =
                longest_pause_without_reconnect_us.max(report.longest_pause_us);
        }
        sent += report.sent;
        accepted += report.accepted;
        delivered += report.delivered;
        gaps += report.gaps;
        unanswered += report.unanswered;
        duplicates += report.duplicates;
        out_of_order += report.out_of_order;
        reconnects += report.reconnects;
        room_resets += report.room_resets;
        bad_frames += report.bad_frames;
        longest_pause_us = longest_pause_us.max(report.longest_pause_us);
        for (code, n) in &report.errors {
            *errors.entry(code.clone()).or_insert(0) += n;
        }
        for (code, message) in &report.error_examples {
            error_examples
                .entry(code.clone())
                .or_insert_with(|| message.clone());
        }
        let (Some(room), Some(last)) = (report.room, report.last_seq) else {
            continue;
        };
        if report.up_at_end {
            let room_max = shared.rooms[room].max_seq.load(Ordering::Relaxed);
            tail += room_max.saturating_sub(last);
        } else {
            down_at_end += 1;
        }
    }
    for (code, message) in &error_examples {
        eprintln!("roomshard-bench: error `{code}` from the nodes, e.g. \"{message}\"");
    }
    let latency = shared
        .latency
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let ms = |us: u64| us as f64 / 1000.0;
    let duration_s = plan.duration.as_secs_f64();
    let server_cpu_s = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if !plan.pids.is_empty() => {
            Some(after.saturating_sub(before) as f64 / ticks_per_sec as f64)
        }
        _ => None,
    };
    let history = if plan.audit_history {
        let acknowledged: Vec<Vec<(u64, String)>> = shared
            .rooms
            .iter()
            .map(RoomShared::take_acknowledged)
            .collect();
        Some(crate::audit::audit(&plan.nodes, &plan.prefix, &acknowledged).await)
    } else {
        None
    };
    let report = LoadReport {
        history,
        connections: connected as u64,
        rooms: plan.rooms,
        duration_s,
        offered_per_s: plan.rate * plan.rooms as f64,
        sent,
        accepted,
        delivered,
        delivered_per_s: round1(delivered as f64 / duration_s),
        expected_deliveries: shared.expected.load(Ordering::Relaxed),
        latency_ms: LatencyMs::of(&latency.from_due),
        latency_from_write_ms: LatencyMs::of(&latency.from_write),
        send_lag_ms: LatencyMs::of(&latency.send_lag),
        errors,
        lost: gaps + unanswered + tail,
        duplicates,
        reconnects,
        longest_pause_ms: ms(longest_pause_us),
        long_pauses_by_start_s,
        long_pauses_reconnected,
        longest_pause_without_reconnect_ms: ms(longest_pause_without_reconnect_us),
        rejoin_ms: RankedMs::of(rejoins_us),
        handover_ms: RankedMs::of(handovers_us),
        server_cpu_s: server_cpu_s.map(round3),
        server_cpu_s_per_million: server_cpu_s
            .filter(|_| delivered > 0)
            .map(|cpu| round3(cpu / delivered as f64 * 1e6)),
        server_rss_kib,
        users_per_room: plan.users,
        warmup_s: plan.warmup.as_secs_f64(),
        connect_failures,
        lost_detail: LostDetail {
            seq_gaps: gaps,
            unanswered,
            tail,
        },
        out_of_order,
        room_resets,
        not_sent,
        bad_frames,
        down_at_end,
        drain_s: round3(drain_s),
        connect_s: round3(connect_s),
        wall_s: round3(wall.elapsed().as_secs_f64()),
        bench_rss_kib,
        load_1m: [load_before, procfs::load_1m()],
        server_metrics: match (metrics_before, metrics_after) {
            (Some(before), Some(after)) => Some(scrape::delta(&before, &after)),
            _ => None,
        },
    };
    eprintln!(
        "roomshard-bench: done in {:.1} s: {delivered} deliveries, p99 {:.1} ms, {} lost",
        wall.elapsed().as_secs_f64(),
        report.latency_ms.p99,
        report.lost
    );
    serde_json::to_string(&report).map_err(|e| format!("cannot write the report: {e}"))
}

async fn scrape_or_warn(targets: &[crate::args::HttpTarget]) -> Option<BTreeMap<String, f64>> {
    if targets.is_empty() {
        return None;
    }
    match scrape::scrape_all(targets).await {
        Ok(samples) => Some(samples),
        Err(e) => {
            eprintln!("roomshard-bench: cannot read metrics: {e}");
            None
        }
    }
}

async fn run_idle(plan: IdlePlan) -> Result<String, String> {
    let wall = Instant::now();
    if plan.pids.is_empty() {
        eprintln!("roomshard-bench: no --pids: the nodes' memory cannot be measured");
    }
    let rss_before = procfs::total_rss_kib(&plan.pids).filter(|_| !plan.pids.is_empty());
    let shared = new_shared(
        plan.nodes.clone(),
        0,
        plan.connect_concurrency,
        Vec::new(),
        false,
        OnReconnect::Overlap,
    );
    eprintln!(
        "roomshard-bench: opening {} idle connections to {} node(s)",
        plan.connections,
        plan.nodes.len()
    );
    let up_deadline = Instant::now() + plan.connect_timeout;
    let mut started: Vec<Started> = (0..plan.connections)
        .map(|index| {
            let spec = UserSpec {
                name: format!("{}-idle-{index}", plan.prefix),
                room: None,
                first_node: index,
                up_deadline,
            };
            start_user(&shared, spec)
        })
        .collect();
    let (up, failures) = wait_until_up(&shared, &mut started, up_deadline).await;
    let connected = up.iter().filter(|&&u| u).count() as u64;
    let connect_s = wall.elapsed().as_secs_f64();
    let tasks: Vec<_> = started.into_iter().map(|s| s.task).collect();
    if connected == 0 {
        stop_users(&shared, tasks).await;
        return Err(format!(
            "could not open any connection: {}",
            describe_failures(&failures)
        ));
    }
    if !failures.is_empty() {
        eprintln!(
            "roomshard-bench: {} connections did not come up ({})",
            plan.connections as u64 - connected,
            describe_failures(&failures)
        );
    }
    eprintln!("roomshard-bench: {connected} connections up in {connect_s:.1} s; settling");
    tokio::time::sleep(IDLE_SETTLE).await;
    let rss_after = procfs::total_rss_kib(&plan.pids).filter(|_| !plan.pids.is_empty());
    let bench_rss_kib = procfs::rss_kib(std::process::id());
    let reconnects = shared.reconnects.load(Ordering::Relaxed);
    eprintln!("roomshard-bench: closing connections");
    stop_users(&shared, tasks).await;
    let report = IdleReport {
        idle_connections: connected,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        bytes_per_connection: match (rss_before, rss_after) {
            (Some(before), Some(after)) => Some(round1(
                (after as f64 - before as f64) * 1024.0 / connected as f64,
            )),
            _ => None,
        },
        requested: plan.connections,
        mode: "bare connections: no rooms, one ping answered each",
        connect_s: round3(connect_s),
        reconnects,
        bench_rss_kib,
    };
    serde_json::to_string(&report).map_err(|e| format!("cannot write the report: {e}"))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Durations over a run's users, by rank: how long reconnecting users were out of their room,
/// how long moves took.
#[derive(Debug, Serialize)]
struct RankedMs {
    count: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl RankedMs {
    fn of(mut us: Vec<u64>) -> Option<Self> {
        us.sort_unstable();
        let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        (!us.is_empty()).then(|| Self {
            count: us.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

/// The ten longest pauses on stderr, with the wall-clock time each began and its room, to
/// find them in the nodes' logs.
fn log_longest_pauses(shared: &Shared, reports: &[UserReport]) {
    let mut longest: Vec<&UserReport> = reports.iter().collect();
    longest.sort_by_key(|r| std::cmp::Reverse(r.longest_pause_us));
    let now_us = shared.now_us();
    let wall_now = std::time::SystemTime::now();
    for report in longest.iter().take(10) {
        let ago = Duration::from_micros(now_us.saturating_sub(report.longest_pause_from_us));
        let began = wall_now
            .checked_sub(ago)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default();
        let room = report.room.map_or("-", |r| shared.rooms[r].name.as_str());
        eprintln!(
            "roomshard-bench: pause of {:.0} ms from {:.3} (unix s), room {room}, {} reconnects",
            report.longest_pause_us as f64 / 1000.0,
            began.as_secs_f64(),
            report.reconnects,
        );
    }
}

/// A pause a user should count as long, in µs: its room's own interval between messages (with
/// `rate` messages per second per room) plus the 100 ms the scale-down target allows.
fn long_pause_us(rate: f64) -> u64 {
    (1e6 / rate.max(1e-3)) as u64 + 100_000
}

#[cfg(test)]
mod tests {
    use super::{RankedMs, long_pause_us};

    #[test]
    fn a_long_pause_is_a_rooms_interval_and_100_ms_more() {
        assert_eq!(long_pause_us(2.0), 600_000);
        assert_eq!(long_pause_us(10.0), 200_000);
        // A rate of 0 (idle) must not divide by zero.
        assert!(long_pause_us(0.0) > 1_000_000_000);
    }

    #[test]
    fn rejoin_times_are_summarised_by_rank_and_absent_without_reconnects() {
        assert!(RankedMs::of(Vec::new()).is_none());
        // 1..=100 ms, in reverse order: the median is the 51st (rounded rank 49.5 -> 50), p99 the 99th.
        let us: Vec<u64> = (1..=100).rev().map(|ms| ms * 1000).collect();
        let r = RankedMs::of(us).expect("reconnects were made");
        assert_eq!(r.count, 100);
        assert_eq!((r.p50, r.p99, r.max), (51.0, 99.0, 100.0));
        let one = RankedMs::of(vec![2500]).expect("one reconnect");
        assert_eq!((one.p50, one.p99, one.max), (2.5, 2.5, 2.5));
    }
}

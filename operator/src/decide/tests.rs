use super::*;

const SHARDS: u32 = 12;

fn options() -> DecideOptions {
    DecideOptions {
        plan: PlanOptions::default(),
        balance: LoadPolicy::default(),
        drain_timeout: Duration::from_secs(30),
        pod_prefix: "node".into(),
        initial_grace: Duration::from_secs(10),
    }
}

fn name(i: u32) -> NodeName {
    pod_name("node", i).expect("valid pod name")
}

fn info(i: u32) -> NodeInfo {
    NodeInfo {
        peer_addr: format!("127.0.0.1:{}", 7000 + i),
        client_addr: Some(format!("127.0.0.1:{}", 8000 + i)),
        zone: None,
        member_since: 0,
    }
}

/// A running, ready pod that has applied `epoch` and has nothing in flight.
fn ready(i: u32, epoch: u64) -> PodView {
    PodView {
        name: name(i),
        running: true,
        ready: true,
        info: Some(info(i)),
        report: Some(Report {
            epoch,
            ..Report::default()
        }),
        terminating: false,
    }
}

/// A process that runs but is not ready yet and has not reported.
fn starting(i: u32) -> PodView {
    PodView {
        name: name(i),
        running: true,
        ready: false,
        info: Some(info(i)),
        report: None,
        terminating: false,
    }
}

fn table_of(nodes: &[u32], draining: &[u32]) -> AssignmentTable {
    let membership = Membership {
        ready: nodes.iter().map(|&i| (name(i), info(i))).collect(),
        draining: draining.iter().map(|&i| name(i)).collect(),
    };
    shard::plan(
        &AssignmentTable::empty(SHARDS),
        &membership,
        &PlanOptions::default(),
    )
}

#[test]
fn pods_removed_by_a_drain_stay_in_the_table_while_they_run_and_gone_ones_leave() {
    let published = table_of(&[0, 1, 2, 3], &[2, 3]);
    assert!(
        published.shards_of(&name(2)).is_empty(),
        "drained pods own nothing"
    );
    let mut next = published.clone();
    for i in [2, 3] {
        next.nodes.remove(&name(i));
        next.draining.remove(&name(i));
    }
    next.epoch += 1;
    // Both still run: nothing to publish.
    let held = keep_lingering(&published, &next, &[name(2), name(3)]);
    assert_eq!(held, published);
    // node-3 is gone, node-2 still runs: only node-3 leaves, with a new epoch.
    let partial = keep_lingering(&published, &next, &[name(2)]);
    assert_eq!(partial.epoch, published.epoch + 1);
    assert!(partial.nodes.contains_key(&name(2)) && partial.draining.contains(&name(2)));
    assert!(!partial.nodes.contains_key(&name(3)));
    assert!(partial.validate().is_ok());
    // Nothing lingers: the next table as decided.
    assert_eq!(keep_lingering(&published, &next, &[]), next);
}

fn dead(i: u32) -> PodView {
    PodView {
        name: name(i),
        running: false,
        ready: false,
        info: None,
        report: None,
        terminating: false,
    }
}

/// One pass by an operator that has been running for a while.
fn run(desired: u32, pods: &[PodView], table: &AssignmentTable) -> Decision {
    run_after(desired, pods, table, Duration::ZERO)
}

fn run_after(
    desired: u32,
    pods: &[PodView],
    table: &AssignmentTable,
    drain_elapsed: Duration,
) -> Decision {
    run_aged(desired, pods, table, drain_elapsed, Duration::from_secs(60))
}

fn run_aged(
    desired: u32,
    pods: &[PodView],
    table: &AssignmentTable,
    drain_elapsed: Duration,
    age: Duration,
) -> Decision {
    let inputs = Inputs {
        desired_replicas: desired,
        pods,
        table,
        drain_elapsed,
        age,
    };
    decide(inputs, &options()).expect("valid pod names")
}

/// The table `n` ready pods converge to from an empty one.
fn settled(n: u32) -> AssignmentTable {
    let pods: Vec<PodView> = (0..n).map(|i| ready(i, 0)).collect();
    let decision = run(n, &pods, &AssignmentTable::empty(SHARDS));
    assert!(decision.table.moves.is_empty());
    decision.table
}

/// Every pod reports that it applied `table`, with nothing in flight.
fn all_at(pods: &mut [PodView], table: &AssignmentTable) {
    for p in pods.iter_mut() {
        if let Some(r) = p.report.as_mut() {
            *r = Report {
                epoch: table.epoch,
                ..Report::default()
            };
        }
    }
}

fn set(ids: &[u32]) -> BTreeSet<NodeName> {
    ids.iter().map(|&i| name(i)).collect()
}

#[test]
fn a_balanced_cluster_is_steady_and_publishes_nothing() {
    let table = settled(3);
    let pods: Vec<PodView> = (0..3).map(|i| ready(i, table.epoch)).collect();
    let decision = run(3, &pods, &table);
    assert_eq!(decision.step, DrainStep::Steady);
    assert!(!decision.publish);
    assert_eq!(decision.table, table);
    assert_eq!(decision.replicas, 3);
    assert!(decision.start.is_empty());
    assert!(decision.stop.is_empty());
    assert_eq!(decision.stuck, None);
}

#[test]
fn the_first_pass_starts_every_pod_and_assigns_nothing_yet() {
    let table = AssignmentTable::empty(SHARDS);
    let decision = run(3, &[], &table);
    assert_eq!(decision.replicas, 3);
    assert_eq!(decision.start, vec![name(0), name(1), name(2)]);
    assert!(!decision.publish);
    assert_eq!(decision.step, DrainStep::Steady);
}

#[test]
fn a_new_cluster_assigns_nothing_until_every_pod_is_ready() {
    let empty = AssignmentTable::empty(SHARDS);
    let young = Duration::from_secs(1);
    let pods = [ready(0, 0), starting(1), ready(2, 0)];
    let waiting = run_aged(3, &pods, &empty, Duration::ZERO, young);
    assert!(!waiting.publish);
    assert_eq!(waiting.table, empty);

    let pods = [ready(0, 0), ready(1, 0), ready(2, 0)];
    let all = run_aged(3, &pods, &empty, Duration::ZERO, young);
    assert!(all.publish);
    assert_eq!(all.table.counts().len(), 3);
    assert!(all.table.moves.is_empty());
}

#[test]
fn a_new_cluster_stops_waiting_for_a_slow_pod_after_the_initial_grace() {
    let empty = AssignmentTable::empty(SHARDS);
    let pods = [ready(0, 0), starting(1)];
    let late = run_aged(2, &pods, &empty, Duration::ZERO, Duration::from_secs(11));
    assert!(late.publish);
    assert_eq!(late.table.counts().get(&name(0)), Some(&SHARDS));
}

#[test]
fn ready_pods_share_the_shards_without_moves_when_nobody_owned_them() {
    let decision = run(
        2,
        &[ready(0, 0), ready(1, 0)],
        &AssignmentTable::empty(SHARDS),
    );
    assert!(decision.publish);
    assert_eq!(decision.table.epoch, 1);
    assert_eq!(decision.table.counts().get(&name(0)), Some(&6));
    assert_eq!(decision.table.counts().get(&name(1)), Some(&6));
    assert!(decision.table.moves.is_empty());
}

#[test]
fn scale_up_starts_new_pods_and_gives_them_shards_only_once_ready() {
    let table = settled(2);
    let mut pods: Vec<PodView> = (0..2).map(|i| ready(i, table.epoch)).collect();

    let decision = run(3, &pods, &table);
    assert_eq!(decision.replicas, 3);
    assert_eq!(decision.start, vec![name(2)]);
    assert!(!decision.publish);

    // Started but not ready: still nothing for it.
    pods.push(starting(2));
    let decision = run(3, &pods, &table);
    assert!(
        decision.start.is_empty(),
        "a running pod is not started again"
    );
    assert!(!decision.publish);
    assert!(!decision.table.nodes.contains_key(&name(2)));

    // Ready: an ordinary rebalance moves shards to it, all of them from live nodes.
    pods[2] = ready(2, table.epoch);
    let decision = run(3, &pods, &table);
    assert!(decision.publish);
    assert_eq!(decision.table.counts().get(&name(2)), Some(&4));
    assert_eq!(decision.table.moves.len(), 4);
    assert!(decision.table.moves.iter().all(|m| m.to == name(2)));
    assert_eq!(decision.step, DrainStep::Steady);
}

#[test]
fn moves_reported_done_at_the_published_epoch_are_cleared() {
    let two = settled(2);
    let mut pods: Vec<PodView> = (0..3).map(|i| ready(i, two.epoch)).collect();
    let table = run(3, &pods, &two).table;
    let moves = table.moves.clone();
    assert!(!moves.is_empty());
    all_at(&mut pods, &table);

    // Each source reports its moves done.
    for p in pods.iter_mut() {
        if let Some(r) = p.report.as_mut() {
            r.moves_done = moves.iter().filter(|m| m.from == p.name).cloned().collect();
        }
    }
    let decision = run(3, &pods, &table);
    assert!(decision.publish);
    assert_eq!(decision.table.epoch, table.epoch + 1);
    assert!(decision.table.moves.is_empty());
    assert_eq!(decision.table.counts(), table.counts());
}

#[test]
fn only_the_source_of_a_move_can_report_it_done() {
    let two = settled(2);
    let mut pods: Vec<PodView> = (0..3).map(|i| ready(i, two.epoch)).collect();
    let table = run(3, &pods, &two).table;
    all_at(&mut pods, &table);
    // The target (node-2) claims every move done; the sources say nothing.
    if let Some(r) = pods[2].report.as_mut() {
        r.moves_done = table.moves.clone();
    }
    let decision = run(3, &pods, &table);
    assert!(!decision.publish);
    assert_eq!(decision.table.moves, table.moves);
}

#[test]
fn moves_done_in_a_report_of_an_older_epoch_are_not_trusted() {
    let two = settled(2);
    let pods: Vec<PodView> = (0..3).map(|i| ready(i, two.epoch)).collect();
    let table = run(3, &pods, &two).table;
    let mut stale = pods.clone();
    for p in stale.iter_mut() {
        if let Some(r) = p.report.as_mut() {
            // Still at the old epoch, yet claiming the new moves.
            r.moves_done = table.moves.clone();
        }
    }
    let decision = run(3, &stale, &table);
    assert!(!decision.publish);
    assert_eq!(decision.table.moves, table.moves);
}

#[test]
fn scale_down_marks_the_highest_ordinals_draining_and_plans_them_empty() {
    let table = settled(4);
    let pods: Vec<PodView> = (0..4).map(|i| ready(i, table.epoch)).collect();
    let decision = run(2, &pods, &table);
    assert!(decision.publish);
    assert_eq!(decision.table.draining, set(&[2, 3]));
    assert!(decision.table.shards_of(&name(2)).is_empty());
    assert!(decision.table.shards_of(&name(3)).is_empty());
    assert!(
        decision
            .table
            .moves
            .iter()
            .all(|m| set(&[2, 3]).contains(&m.from))
    );
    // Nobody has applied the new table yet, so nothing stops.
    assert!(matches!(decision.step, DrainStep::WaitForEpoch { .. }));
    assert_eq!(decision.replicas, 4);
    assert!(decision.stop.is_empty());
    assert!(decision.start.is_empty());
}

#[test]
fn scale_down_waits_for_every_live_node_to_apply_the_epoch() {
    let table = settled(3);
    let pods: Vec<PodView> = (0..3).map(|i| ready(i, table.epoch)).collect();
    let draining = run(2, &pods, &table).table;

    let mut lagging = pods.clone();
    all_at(&mut lagging, &draining);
    lagging[0].report = Some(Report {
        epoch: table.epoch,
        ..Report::default()
    });
    let decision = run(2, &lagging, &draining);
    assert!(!decision.publish);
    assert_eq!(
        decision.step,
        DrainStep::WaitForEpoch {
            epoch: draining.epoch,
            lagging: vec![name(0)],
        }
    );
    assert_eq!(decision.replicas, 3);
    assert!(decision.stop.is_empty());
}

#[test]
fn scale_down_waits_for_the_moves_off_the_draining_nodes() {
    let table = settled(3);
    let mut pods: Vec<PodView> = (0..3).map(|i| ready(i, table.epoch)).collect();
    let draining = run(2, &pods, &table).table;
    all_at(&mut pods, &draining);
    let decision = run(2, &pods, &draining);
    assert_eq!(
        decision.step,
        DrainStep::WaitForMoves {
            pending: draining.moves.clone()
        }
    );
    assert!(decision.stop.is_empty());
    assert_eq!(decision.replicas, 3);
}

#[test]
fn scale_down_waits_while_a_node_reports_hand_offs_in_progress() {
    let table = settled(3);
    let mut pods: Vec<PodView> = (0..3).map(|i| ready(i, table.epoch)).collect();
    let draining = run(2, &pods, &table).table;
    all_at(&mut pods, &draining);
    // node-2 reports its moves done, but node-0 is still receiving.
    if let Some(r) = pods[2].report.as_mut() {
        r.moves_done = draining.moves.clone();
    }
    let cleared = run(2, &pods, &draining).table;
    assert!(cleared.moves.is_empty());
    all_at(&mut pods, &cleared);
    if let Some(r) = pods[0].report.as_mut() {
        r.moves_in_flight = 2;
    }
    let decision = run(2, &pods, &cleared);
    assert_eq!(decision.step, DrainStep::WaitForMoves { pending: vec![] });
    assert!(decision.stop.is_empty());
}

#[test]
fn scale_down_removes_the_drained_nodes_once_epoch_and_moves_are_done() {
    let table = settled(3);
    let mut pods: Vec<PodView> = (0..3).map(|i| ready(i, table.epoch)).collect();
    let draining = run(2, &pods, &table).table;
    all_at(&mut pods, &draining);
    if let Some(r) = pods[2].report.as_mut() {
        r.moves_done = draining.moves.clone();
    }
    let cleared = run(2, &pods, &draining).table;
    all_at(&mut pods, &cleared);

    let decision = run(2, &pods, &cleared);
    assert!(!decision.publish);
    assert_eq!(decision.step, DrainStep::Remove(set(&[2])));
    assert_eq!(decision.stop, set(&[2]));
    assert_eq!(decision.replicas, 2);
    assert!(decision.start.is_empty());

    // After the removal the pods are 0..2 and the next plan drops node-2 from the table.
    let mut remaining = pods[..2].to_vec();
    let decision = run(2, &remaining, &cleared);
    assert!(decision.publish);
    assert!(!decision.table.nodes.contains_key(&name(2)));
    assert!(decision.table.draining.is_empty());
    assert!(decision.table.moves.is_empty(), "node-2 owned nothing");
    all_at(&mut remaining, &decision.table);
    assert_eq!(run(2, &remaining, &decision.table).step, DrainStep::Steady);
}

#[test]
fn a_drain_past_its_deadline_is_reported_stuck_with_the_node_and_its_moves() {
    let table = settled(3);
    let mut pods: Vec<PodView> = (0..3).map(|i| ready(i, table.epoch)).collect();
    let draining = run(2, &pods, &table).table;
    all_at(&mut pods, &draining);
    if let Some(r) = pods[0].report.as_mut() {
        r.moves_in_flight = 1;
    }

    let in_time = run_after(2, &pods, &draining, Duration::from_secs(29));
    assert_eq!(in_time.stuck, None);

    let late = run_after(2, &pods, &draining, Duration::from_secs(31));
    let stuck = late.stuck.expect("the drain is late");
    assert_eq!(stuck.draining, vec![name(2)]);
    assert_eq!(stuck.pending, draining.moves);
    assert_eq!(stuck.busy, vec![(name(0), 1)]);
    let text = stuck.to_string();
    let first = &draining.moves[0];
    assert!(text.starts_with("scale-down stuck for 31s: draining node-2"));
    assert!(text.contains(&format!("shard {} node-2 -> {}", first.shard, first.to)));
    assert!(text.contains("hand-offs in progress on node-0 (1)"));
    // Stuck is a report, not an action: nothing is stopped.
    assert!(late.stop.is_empty());
    assert_eq!(late.replicas, 3);
}

#[test]
fn a_drain_stuck_on_a_lagging_node_names_that_node() {
    let table = settled(3);
    let pods: Vec<PodView> = (0..3).map(|i| ready(i, table.epoch)).collect();
    let draining = run(2, &pods, &table).table;
    let late = run_after(2, &pods, &draining, Duration::from_secs(60));
    let stuck = late.stuck.expect("the drain is late");
    assert_eq!(stuck.lagging, vec![name(0), name(1), name(2)]);
    assert!(stuck.to_string().contains(&format!(
        "not yet at epoch {}: node-0, node-1, node-2",
        draining.epoch
    )));
}

#[test]
fn a_dead_node_leaves_membership_and_its_shards_are_reassigned_without_moves() {
    let table = settled(3);
    let lost = table.shards_of(&name(1));
    let pods = vec![ready(0, table.epoch), dead(1), ready(2, table.epoch)];
    let decision = run(3, &pods, &table);
    assert!(decision.publish);
    assert!(!decision.table.nodes.contains_key(&name(1)));
    assert!(decision.table.moves.is_empty());
    for shard in lost {
        assert!(decision.table.owner(shard).is_some());
    }
    // It is out of the new table, so its replacement starts now, under the same name.
    assert_eq!(decision.start, vec![name(1)]);
    assert_eq!(decision.replicas, 3);
    assert_eq!(decision.step, DrainStep::Steady);
}

#[test]
fn a_dead_pod_above_the_desired_count_is_removed_not_restarted() {
    let table = settled(3);
    let pods = vec![ready(0, table.epoch), ready(1, table.epoch), dead(2)];
    let planned = run(2, &pods, &table);
    assert!(planned.start.is_empty());
    let mut pods = pods;
    all_at(&mut pods, &planned.table);
    let decision = run(2, &pods, &planned.table);
    assert_eq!(decision.step, DrainStep::Remove(set(&[2])));
    assert_eq!(decision.replicas, 2);
}

#[test]
fn scaling_back_up_during_a_drain_un_drains_the_node() {
    let table = settled(3);
    let mut pods: Vec<PodView> = (0..3).map(|i| ready(i, table.epoch)).collect();
    let draining = run(2, &pods, &table).table;
    all_at(&mut pods, &draining);
    let decision = run(3, &pods, &draining);
    assert_eq!(decision.step, DrainStep::Steady);
    assert!(decision.table.draining.is_empty());
    assert_eq!(decision.replicas, 3);
    assert_eq!(decision.stuck, None);
}

#[test]
fn deciding_again_on_its_own_output_publishes_nothing() {
    let table = settled(3);
    let pods: Vec<PodView> = (0..3).map(|i| ready(i, table.epoch)).collect();
    let first = run(2, &pods, &table);
    let again = run(2, &pods, &first.table);
    assert!(!again.publish);
    assert_eq!(again.table, first.table);
}

/// A node process restarted in place while the table names it an owner is not ready until the
/// table gives its old shards away (`node/src/state/inherited.rs`). When every pod restarts
/// so (a whole cluster power-cycled), none is ready: the operator must still publish a table
/// that gives those shards away (to nobody), or the nodes would wait for it forever.
#[test]
fn with_every_pod_unready_the_next_table_gives_every_shard_away() {
    let table = settled(3);
    let pods: Vec<PodView> = (0..3).map(starting).collect();
    let decision = run(3, &pods, &table);
    assert!(decision.publish);
    assert!(decision.table.epoch > table.epoch);
    for i in 0..3 {
        assert!(decision.table.shards_of(&name(i)).is_empty());
    }
    // Once they are ready again, they share the shards afresh.
    let pods: Vec<PodView> = (0..3).map(|i| ready(i, decision.table.epoch)).collect();
    let next = run(3, &pods, &decision.table);
    assert!(next.publish);
    assert_eq!(
        (0..3)
            .map(|i| next.table.shards_of(&name(i)).len())
            .sum::<usize>(),
        SHARDS as usize
    );
}

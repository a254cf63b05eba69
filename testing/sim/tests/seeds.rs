//! The cluster simulation's short form, run by the test command: a seed replays the same
//! run, and a fixed band of seeds keeps every promise. The long form is
//! `cargo run -p sim --bin roomshard-sim -- --seeds 2000` (see `docs/simulation.md`).

use sim::{Options, run, run_many};

/// The band CI runs. Each seed composes crashes, restarts, SIGTERMs, pauses, partitions, slow
/// nodes, scaling and load-aware moves at random; the first 200 draw every kind many times.
/// It covers the seeds that found bugs (2: a restarted process reused connection ids; 53: an
/// owner resumed after its failover released a message it had accepted before the pause,
/// under a seq the new owner had given to another; see `docs/simulation.md`).
const BAND: std::ops::Range<u64> = 1..201;

#[test]
fn a_seed_replays_the_same_run() {
    let options = Options::default();
    let first = run(7, &options);
    let second = run(7, &options);
    assert!(
        first.verdict.acknowledged > 100,
        "the run acknowledged too little to say anything: {}",
        first.verdict.acknowledged
    );
    assert_eq!(
        first.events, second.events,
        "the same faults in the same order"
    );
    assert_eq!(
        first.digest, second.digest,
        "the clients saw the same frames"
    );
    assert_eq!(first.verdict.acknowledged, second.verdict.acknowledged);
    let other = run(8, &options);
    assert_ne!(first.digest, other.digest, "another seed is another run");
}

#[test]
fn every_seed_of_the_band_keeps_the_promises() {
    let summary = run_many(BAND, &Options::default(), &|_| {});
    assert_eq!(summary.runs, BAND.end - BAND.start);
    assert!(
        summary.acknowledged > 50_000,
        "the band acknowledged too little to say anything: {}",
        summary.acknowledged
    );
    assert!(
        summary.failed.is_empty(),
        "seeds broke a promise (replay one with `roomshard-sim --seed N`): {:#?}",
        summary.failed
    );
}

/// Seeds past the band that found bugs, run on their own so the band can stay short (see
/// `docs/simulation.md`): 620, 909 and 593 gave a seq of a room to two messages (an owner, or
/// a hand-off's source, back from an absence served or released its old rooms under a table
/// that gave the shard back to it); 333 and 418 delivered a send that had been answered
/// `room_unavailable` (a command bounced by a link to a departed node had reached it); 2412
/// gave seqs twice too (a paused owner's changes, queued for its follower and refused by the
/// owner once deposed, reached the follower's copy after a table named the owner again, and
/// that copy won a merge later); 303
/// let a member that joined an empty room miss two messages unannounced; 550 and 858 left a
/// send unanswered (its answer was among the events a link lost). The simulated client
/// changed since some of them were found (it joins again after a refused join, as the
/// JavaScript client does), so not every one replays its bug exactly: the node's unit tests
/// hold those (`an_owner_back_to_a_move_to_it_drops_its_old_rooms_for_the_snapshot`, the
/// edge's order tests).
const FOUND: [u64; 9] = [303, 333, 418, 550, 593, 620, 858, 909, 2412];

#[test]
fn the_seeds_that_found_bugs_keep_the_promises() {
    for seed in FOUND {
        let report = run(seed, &Options::default());
        assert!(
            report.verdict.acknowledged > 100,
            "seed {seed} acknowledged too little to say anything"
        );
        assert!(
            report.verdict.violations.is_empty(),
            "seed {seed} broke a promise: {:#?}",
            report.verdict.violations
        );
    }
}

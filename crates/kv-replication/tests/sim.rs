//! The simulator over many seeds: invariants 1, 2 and 5 must hold with
//! majority quorums through drops, duplicates, delays, partitions and
//! crashes; each planted bug must be caught.
//!
//! The main faulty-run test is split into `SHARDS` tests (simulator/seeds.rs) that the test
//! harness runs in parallel, 2,000 seeds in all by default.
//! `KV_SIM_SEEDS=N` runs seeds 1..=N instead (shared out the same way),
//! `KV_SIM_SEED=S` replays one seed. A failing test prints, for every
//! failing seed, the command that replays exactly that test and seed;
//! `benches/sim_soak.sh` runs 20,000 seeds.

mod simulator;

use kv_testkit::linearizability::{self, Op, OpKind};
use simulator::seeds::{env, replay, seeds, seeds_after, seeds_in, seeds_up_to, shard_seeds};
use simulator::{run, Report, SimConfig};

/// Seeds of the main run known to fail from a bug not fixed yet, listed
/// (not skipped) so that they stay visible: each is run, its violations
/// printed, not failed on; a listed seed that passes fails the test, so
/// that the list cannot go stale. Empty: seed 1747 (a coordinator still
/// using the ring from before a rebalance ended) passes since the course
/// of the runs changed.
const KNOWN_STALE_RING: &[u64] = &[];

/// Checks a run's client history with the per-key linearizability
/// checker; the violation, described, if it is not linearizable.
fn linearizable(r: &Report) -> Result<(), String> {
    let ops: Vec<Op> = r
        .history
        .iter()
        .map(|e| Op {
            key: e.key.clone(),
            call: e.start,
            ret: e.end,
            kind: if e.write {
                OpKind::Write(e.value.clone())
            } else {
                OpKind::Read(e.value.clone())
            },
        })
        .collect();
    linearizability::check(&ops).map_err(|v| format!("not linearizable: {v}"))
}

/// Runs `cfg` over `seeds`; fails listing every seed that violates an
/// invariant (apart from the `known` ones, printed), each with its
/// violations and its replay command, and listing every `known` seed that
/// passes (the list must then lose it). Returns the reports of the runs.
fn check_all(test: &str, cfg: &SimConfig, seeds: &[u64], known: &[u64]) -> Vec<Report> {
    let mut failures = Vec::new();
    let mut now_pass = Vec::new();
    let mut reports = Vec::new();
    for &seed in seeds {
        let mut r = run(seed, cfg);
        if let Err(v) = linearizable(&r) {
            r.violations.push(v);
        }
        if !r.violations.is_empty() && known.contains(&seed) {
            println!(
                "known failure, seed {seed} ({}): {:?}",
                replay(test, seed),
                r.violations.first()
            );
        } else if !r.violations.is_empty() {
            let shown: Vec<&String> = r.violations.iter().take(6).collect();
            failures.push(format!(
                "seed {seed}: {} violations, the first {shown:#?}\n  replay: {}",
                r.violations.len(),
                replay(test, seed)
            ));
        }
        if r.violations.is_empty() && known.contains(&seed) {
            now_pass.push(format!("seed {seed} ({})", replay(test, seed)));
        }
        reports.push(r);
    }
    assert!(
        now_pass.is_empty(),
        "seeds listed as known failures now pass; take them off the list:\n{}",
        now_pass.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} of {} seeds violate invariants:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
    reports
}

/// One shard of the main faulty run.
fn main_run(k: u64) {
    let test = format!("majority_quorums_hold_the_invariants_under_faults_{k}");
    let seeds = shard_seeds(k);
    let reports = check_all(&test, &SimConfig::default(), &seeds, KNOWN_STALE_RING);
    if seeds.is_empty() {
        return;
    }
    let acked: usize = reports.iter().map(|r| r.acked_writes).sum();
    let reads: usize = reports.iter().map(|r| r.reads).sum();
    let unavailable: usize = reports.iter().map(|r| r.unavailable).sum();
    let conflicts: usize = reports.iter().map(|r| r.conflicts).sum();
    println!(
        "{} seeds: {acked} acknowledged writes, {reads} reads, {unavailable} unavailable, {conflicts} conflicts",
        seeds.len()
    );
    // The workload really ran: most operations succeed despite the faults.
    assert!(acked > 0 && reads > 0, "{acked} {reads}");
    assert!(unavailable < acked + reads, "{unavailable}");
}

#[test]
fn majority_quorums_hold_the_invariants_under_faults_0() {
    main_run(0);
}

#[test]
fn majority_quorums_hold_the_invariants_under_faults_1() {
    main_run(1);
}

#[test]
fn majority_quorums_hold_the_invariants_under_faults_2() {
    main_run(2);
}

#[test]
fn majority_quorums_hold_the_invariants_under_faults_3() {
    main_run(3);
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let cfg = SimConfig::default();
    for seed in [3, 99, 12345] {
        let a = run(seed, &cfg);
        let b = run(seed, &cfg);
        assert_eq!(a.trace, b.trace, "seed {seed}");
        assert_eq!(a.acked_writes, b.acked_writes);
    }
    assert_ne!(run(1, &cfg).trace, run(2, &cfg).trace);
}

/// The first seed whose run reports a violation containing `what`, with
/// that violation; fails the test (saying `expect`) if no seed does.
fn caught(cfg: &SimConfig, what: &str, expect: &str) -> (u64, String) {
    caught_in(cfg, &seeds(), what, expect)
}

/// [`caught`] over the given seeds.
fn caught_in(cfg: &SimConfig, seeds: &[u64], what: &str, expect: &str) -> (u64, String) {
    let found = seeds.iter().copied().find_map(|seed| {
        let mut r = run(seed, cfg);
        if let Err(v) = linearizable(&r) {
            r.violations.push(v);
        }
        let v = r.violations.into_iter().find(|v| v.contains(what))?;
        Some((seed, v))
    });
    found.unwrap_or_else(|| panic!("{expect}"))
}

/// The planted bug: with W = R = 1 and N = 3 a read need not overlap the
/// last write, and the simulator must notice.
#[test]
fn weak_quorums_are_caught_serving_stale_reads() {
    let cfg = SimConfig {
        write_quorum: Some(1),
        read_quorum: Some(1),
        ..SimConfig::default()
    };
    let (seed, what) = caught(
        &cfg,
        "stale read",
        "W=1, R=1 must produce a stale read within the seeds run",
    );
    println!("planted bug caught at seed {seed}: {what}");
}

/// Without read repair, a read that found an incomplete write on one
/// replica can be followed by a read that misses it: the simulator must
/// catch reads going backwards.
#[test]
fn reads_go_backwards_without_read_repair() {
    let cfg = SimConfig {
        read_repair: false,
        ..SimConfig::default()
    };
    let (seed, what) = caught(
        &cfg,
        "went backwards",
        "without read repair some seed must show a read going backwards",
    );
    println!("missing read repair caught at seed {seed}: {what}");
}

/// Without anti-entropy, replicas that missed writes (crashes, partitions,
/// drops) stay stale after healing: the convergence check must notice.
#[test]
fn replicas_diverge_without_anti_entropy() {
    let cfg = SimConfig {
        anti_entropy: false,
        ..SimConfig::default()
    };
    let (seed, what) = caught(
        &cfg,
        "disagree after healing",
        "without anti-entropy some seed must leave replicas diverged",
    );
    println!("missing anti-entropy caught at seed {seed}: {what}");
}

/// Purging tombstones at once (instead of after a grace period longer than
/// any repair can take) lets a stale replica bring a deleted value back:
/// the simulator must catch the resurrection.
#[test]
fn deletes_come_back_if_tombstones_are_purged_at_once() {
    let cfg = SimConfig {
        purge_tombstones_after: Some(0),
        ..SimConfig::default()
    };
    let (seed, what) = caught(
        &cfg,
        "came back to life",
        "purging tombstones at once must let some delete come back",
    );
    println!("immediate tombstone purge caught at seed {seed}: {what}");
}

/// Prints one run's figures: `cargo test --release -p kv-replication --test sim stats -- --nocapture`.
#[test]
fn stats() {
    let r = run(5, &SimConfig::default());
    println!(
        "seed 5: {} acknowledged writes, {} quorum reads, {} unavailable, trace {:x}",
        r.acked_writes, r.reads, r.unavailable, r.trace
    );
    assert!(r.acked_writes > 50 && r.reads > 50, "{r:?}");
    // Crashes make nodes down long enough for hinted handoff to happen.
    let delivered: usize = (1..=20)
        .map(|seed| run(seed, &SimConfig::default()).hints_delivered)
        .sum();
    println!("hints delivered over seeds 1..=20: {delivered}");
    assert!(delivered > 0);
}

/// Two nodes join and two leave in the middle of a faulty run, with
/// enough keys that streams take many pages (so sources finish at
/// different times) and anti-entropy slow enough (1 s) that it does not
/// hide, before the reads right after a rebalance, a range copied short.
/// Seeds of the rebalancing run (each about four times the main run's).
const JOIN_SEEDS: u64 = 300;

fn rebalancing() -> SimConfig {
    SimConfig {
        joiners: 2,
        leavers: 2,
        keys: 64,
        anti_entropy_interval: 1000,
        ..SimConfig::default()
    }
}

/// Nodes joining and leaving in the middle of a faulty run: ranges stream
/// to their new owners, and no acknowledged write is lost or hidden.
#[test]
fn joins_and_leaves_during_a_faulty_run_keep_the_invariants() {
    let cfg = rebalancing();
    let test = "joins_and_leaves_during_a_faulty_run_keep_the_invariants";
    let seeds = seeds_up_to(JOIN_SEEDS);
    let reports = check_all(test, &cfg, &seeds, &[]);
    let rebalances: usize = reports.iter().map(|r| r.rebalances).sum();
    let left: usize = reports.iter().map(|r| r.left).sum();
    println!("{rebalances} rebalances finished, {left} nodes left");
    // Joins and leaves really happened (over more than a replayed seed).
    assert!(
        seeds.len() < 20 || (rebalances > 0 && left > 0),
        "{rebalances} rebalances, {left} left"
    );
}

/// The first of `seeds` whose run with `cfg` loses an acknowledged write
/// or reads an older one, with what it found; panics with `expect` if
/// none does.
fn lost_or_hidden(cfg: &SimConfig, seeds: &[u64], expect: &str) -> (u64, String) {
    let found = seeds.iter().find_map(|&seed| {
        let r = run(seed, cfg);
        let v = r
            .violations
            .into_iter()
            .find(|v| v.contains("stale read") || v.contains("lost"))?;
        Some((seed, v))
    });
    found.unwrap_or_else(|| panic!("{expect}"))
}

/// The planted bug for rebalancing: a node that gains ranges and counts
/// as holding them without copying them first must be caught losing or
/// hiding acknowledged writes.
#[test]
fn joiners_that_skip_copying_their_ranges_are_caught() {
    let cfg = SimConfig {
        stream_ranges: false,
        ..rebalancing()
    };
    let (seed, what) = lost_or_hidden(
        &cfg,
        &seeds(),
        "skipping the copy must lose or hide some write",
    );
    println!("rebalancing without copying caught at seed {seed}: {what}");
}

/// The planted bug of rebalancing's accounting (bug 1): a range counted
/// copied once `need` of its sources finished what *they* were asked for,
/// even if that was other ranges, so the rebalance ends while a source
/// asked for it still streams. A write held only by that source and one
/// other replica then misses the new owner, and a quorum read right after
/// the rebalance must be caught returning an older value.
#[test]
fn ranges_counted_done_by_the_wrong_sources_are_caught() {
    let mut cfg = rebalancing();
    cfg.planted.any_source_done = true;
    // Neither anti-entropy nor read repair fixes, before the reads right
    // after the rebalance, the replica that missed the write (with the
    // correct accounting this config shows no stale read after a
    // rebalance in 150 seeds).
    cfg.anti_entropy = false;
    cfg.read_repair = false;
    let (seed, what) = caught(
        &cfg,
        "right after a rebalance ended",
        "counting sources that were not asked for a range must show a stale read after some rebalance",
    );
    println!("range accounting bug caught at seed {seed}: {what}");
}

/// The planted bug of issue 9: a range copied from those of its old
/// owners that are up, however few, rather than from a read quorum of
/// them. A rebalance then ends while owners that hold acknowledged writes
/// are cut off or down; once they are back they forget the ranges they
/// gave away, and a read must be caught missing a write.
#[test]
fn ranges_copied_from_live_owners_only_are_caught() {
    let mut cfg = rebalancing();
    cfg.planted.live_sources_only = true;
    cfg.anti_entropy = false;
    cfg.read_repair = false;
    cfg.floor_saves = false;
    cfg.appliers = Some(false);
    cfg.dup_writes = true;
    // The seeds were searched with the floor saved in the state at once,
    // no appliers' model, and writes duplicated like other messages. The
    // first seed that showed it was 211 while the coordinator applied its
    // own copy inline; since its own copy is a message served through
    // `arrive` (the runs draw differently), no seed up to 1803 shows it
    // and 1804 does (a search of 13 minutes): the search starts at 1801
    // to take seconds (KV_SIM_SEED replays one).
    let seeds = seeds_in(1801, 2300);
    let expect = "copying from live owners only must lose or hide some write";
    let (seed, what) = lost_or_hidden(&cfg, &seeds, expect);
    println!("copying from live owners only caught at seed {seed}: {what}");
}

/// Planted bug 3 (the bug before its fix): a replica's "not applied, I
/// hold a newer version" counted as an ack, so a coordinator whose clock
/// is behind answers OK for a write the replicas dropped. The check that
/// every OK was the newest write when acknowledged must catch it.
#[test]
fn acknowledging_a_write_that_lost_is_caught() {
    let mut cfg = SimConfig::default();
    cfg.planted.no_restamp = true;
    let (seed, what) = caught(
        &cfg,
        "an OK for a write that lost",
        "without re-stamping, a clock behind the others must get a losing write acknowledged",
    );
    println!("acknowledged losing write caught at seed {seed}: {what}");
}

/// A clock that takes no note of the versions it sees cannot re-stamp a
/// losing write above them: the node behind the others can no longer
/// write keys the others wrote last, which the final writes catch.
#[test]
fn a_clock_that_observes_nothing_is_caught() {
    let mut cfg = SimConfig::default();
    cfg.planted.no_hlc_observe = true;
    let (seed, what) = caught(
        &cfg,
        "unwritable",
        "without HLC observe, some key must become unwritable through the node behind",
    );
    println!("HLC without observe caught at seed {seed}: {what}");
}

/// A node whose clock is far in the future (so far that its timestamps
/// reach `u64::MAX`): with the maximum clock offset its versions are
/// refused everywhere and it stops coordinating, so the invariants hold
/// and every key stays writable.
#[test]
fn a_node_with_a_far_future_clock_keeps_the_invariants() {
    let cfg = SimConfig {
        far_future_clock: true,
        ..SimConfig::default()
    };
    let test = "a_node_with_a_far_future_clock_keeps_the_invariants";
    check_all(test, &cfg, &seeds_up_to(100), &[]);
}

/// The same node without a maximum clock offset: everyone observes its
/// timestamps, clocks reach `u64::MAX` and keys become unwritable, which
/// the final writes catch.
#[test]
fn no_maximum_clock_offset_is_caught() {
    let mut cfg = SimConfig {
        far_future_clock: true,
        ..SimConfig::default()
    };
    cfg.planted.no_clock_bound = true;
    let (seed, what) = caught(
        &cfg,
        "unwritable",
        "without a maximum clock offset a far-future clock must make some key unwritable",
    );
    println!("missing maximum clock offset caught at seed {seed}: {what}");
}

/// Re-stamping a write as soon as one replica holds something newer, when
/// other replicas may already have stored (and a read returned) its first
/// version, makes one write take effect twice, around a newer one: the
/// linearizability checker must notice.
#[test]
fn re_stamping_a_write_that_was_stored_is_caught() {
    let mut cfg = SimConfig::default();
    cfg.planted.eager_restamp = true;
    let (seed, what) = caught(
        &cfg,
        "not linearizable",
        "re-stamping writes that some replica stored must break linearizability within the seeds run",
    );
    println!("eager re-stamp caught at seed {seed}: {what}");
}

/// A read whose blocking repair finds a version newer than the one it is
/// about to return must ask again: returning the older one lets a write
/// stamped by a clock behind the others be seen after a newer write that
/// finished before it began, and then vanish.
#[test]
fn a_read_that_returns_what_its_repair_found_outdated_is_caught() {
    // Few keys, so that writes and reads meet often.
    let mut cfg = SimConfig {
        keys: 2,
        ..SimConfig::default()
    };
    cfg.planted.repair_ignores_newer = true;
    let (seed, what) = caught_in(
        &cfg,
        &seeds_up_to(2000),
        "not linearizable",
        "a read returning a value its repair found outdated must break linearizability within the seeds run",
    );
    println!("outdated read caught at seed {seed}: {what}");
}

/// The planted bug: no ring-epoch fencing. Seed 14653 of the main run
/// (found by the 20,000-seed soak) failed before the fencing: a node cut
/// off by a partition missed a rebalance and, healed, coordinated a read
/// on its old ring, reaching a replica that knew the new ring (and no
/// longer held the key) and one that missed a write acknowledged under
/// it: a stale read right after the rebalance ended.
#[test]
fn a_coordinator_on_an_old_ring_is_caught_without_fencing() {
    let mut cfg = SimConfig::default();
    cfg.planted.no_ring_fence = true;
    // The seed was found with the floor saved in the state at once, no
    // appliers' model, and writes duplicated like other messages.
    cfg.floor_saves = false;
    cfg.appliers = Some(false);
    cfg.dup_writes = true;
    let r = run(env("KV_SIM_SEED").unwrap_or(14653), &cfg);
    let stale = r.violations.iter().find(|v| v.contains("stale read"));
    assert!(
        stale.is_some(),
        "without fencing seed 14653 must read stale: {:?}",
        r.violations
    );
}

/// The entry point that serves replica requests where they arrive
/// ([`kv_replication::arrive`]: a server's event loops, and the
/// simulator's delivery) planted to acknowledge writes it does not store,
/// while the node itself stores what reaches it: acknowledged writes are
/// lost, which only a simulator that runs that entry point can see.
#[test]
fn an_entry_point_that_acknowledges_unstored_writes_is_caught() {
    let mut cfg = SimConfig::default();
    cfg.planted.front_acks_unstored = true;
    let expect = "writes acknowledged where they arrive but not stored must be caught";
    let (seed, what) = lost_or_hidden(&cfg, &seeds(), expect);
    println!("entry point acknowledging unstored writes caught at seed {seed}: {what}");
}

/// Seeds of the clock-step run known to fail from a bug not fixed yet.
/// Empty: 30 of 200 seeds failed (replicas disagreeing after healing)
/// while a node stepped hours ahead stamped, and stored its own copy of,
/// versions hours ahead that its peers refused; and a node stepped back
/// refused its peers' versions and waited hours for its timers. Stamps
/// are now held within the cluster's time (the median of the clocks),
/// timestamps are checked against it, the coordinator's own copy is
/// checked as its peers check theirs, and timers restart when the clock
/// goes back; [`clock_steps_without_the_cluster_time_are_caught`] plants
/// the old behaviour back.
const KNOWN_CLOCK_STEP: &[u64] = &[];

/// Clocks stepped by two hours, forward or back, for a few seconds.
fn clock_steps() -> SimConfig {
    SimConfig {
        clock_step_ppm: 3_000,
        clock_step: 2 * 3600 * 1000,
        ..SimConfig::default()
    }
}

/// Clocks stepped by two hours, forward or back, for a few seconds (as
/// NTP steps a clock): the maximum clock offset must keep a node stepped
/// ahead from stamping writes hours ahead, and a node stepped back must
/// never re-use or regress its HLC; the invariants must hold (see
/// [`KNOWN_CLOCK_STEP`]).
#[test]
fn clocks_stepped_by_hours_keep_the_invariants() {
    let cfg = clock_steps();
    let test = "clocks_stepped_by_hours_keep_the_invariants";
    let seeds = seeds_up_to(200);
    let reports = check_all(test, &cfg, &seeds, KNOWN_CLOCK_STEP);
    let steps: usize = reports.iter().map(|r| r.clock_steps).sum();
    let acked: usize = reports.iter().map(|r| r.acked_writes).sum();
    println!(
        "{} seeds: {steps} clock steps, {acked} acknowledged writes",
        seeds.len()
    );
    assert!(seeds.len() < 20 || steps > seeds.len() / 4, "{steps}");
}

/// The planted bug: versions stamped from the wall clock however far it
/// was stepped, the coordinator's own copy stored unchecked, timestamps
/// checked against the node's own clock and timers waiting for a clock
/// stepped back (the node before the fix). A node stepped hours ahead
/// keeps a copy its peers refuse, and the convergence check must catch
/// the replicas disagreeing.
#[test]
fn clock_steps_without_the_cluster_time_are_caught() {
    let mut cfg = clock_steps();
    cfg.planted.wall_clock_stamps = true;
    let (seed, what) = caught_in(
        &cfg,
        &seeds_up_to(200),
        "disagree after healing",
        "stamping from a clock stepped hours ahead must leave some key's replicas disagreeing",
    );
    println!("clock step without the cluster's time caught at seed {seed}: {what}");
}

/// Seeds of the long-outage runs.
const OUTAGE_SEEDS: u64 = 200;

/// Seeds of the long-outage run known to fail from a bug not fixed yet
/// (see [`KNOWN_STALE_RING`]). Empty: seeds 39, 47, 59, 103, 180 and 190
/// failed, a delete come back to life or a stale read right after a
/// rebalance ended, from copies a node kept of ranges it gave away and
/// that came back to it; a node now forgets them (`ownership.rs`).
const KNOWN_GIVEN_AWAY: &[u64] = &[];

/// Tombstones purged after a grace of 4 s, and some crashes lasting
/// longer than that: a delete made while a node is away is purged
/// everywhere before it comes back on its old data.
fn long_outages() -> SimConfig {
    SimConfig {
        purge_tombstones_after: Some(4000),
        long_outages: true,
        ops: 2000,
        // Enough keys that a key deleted while a node is away is often
        // left alone until that node is back (so a resurrection shows).
        keys: 100,
        ..SimConfig::default()
    }
}

/// Issue 9, item 2: a node back from an outage longer than the tombstone
/// grace gives its old data up and rejoins as a new generation, so no
/// delete ever comes back (the reads' resurrection check and the final
/// reads' lost-write check would say so).
#[test]
fn nodes_back_from_outages_longer_than_the_grace_never_bring_deletes_back() {
    let test = "nodes_back_from_outages_longer_than_the_grace_never_bring_deletes_back";
    let seeds = seeds_up_to(OUTAGE_SEEDS);
    let reports = check_all(test, &long_outages(), &seeds, KNOWN_GIVEN_AWAY);
    let outages: usize = reports.iter().map(|r| r.long_outages).sum();
    let fresh: usize = reports.iter().map(|r| r.fresh_rejoins).sum();
    let acked: usize = reports.iter().map(|r| r.acked_writes).sum();
    println!(
        "{} seeds: {outages} outages longer than the grace, {fresh} fresh rejoins, {acked} acknowledged writes",
        seeds.len()
    );
    assert!(
        seeds.len() < 20 || (outages > 0 && fresh > 0),
        "{outages} {fresh}"
    );
}

/// The planted bug: no grace check on restart. A node back from a long
/// outage serves its old data, and some delete made while it was away
/// must be caught coming back.
#[test]
fn no_grace_check_on_restart_is_caught() {
    let mut cfg = long_outages();
    cfg.planted.no_grace_check = true;
    let found = seeds().into_iter().find_map(|seed| {
        let r = run(seed, &cfg);
        let v = r
            .violations
            .into_iter()
            .find(|v| v.contains("came back to life") || v.contains("lost"))?;
        Some((seed, v))
    });
    let (seed, what) =
        found.expect("without the grace check some delete must come back after a long outage");
    println!("no grace check on restart caught at seed {seed}: {what}");
}

/// The planted bug `forget_gained`: a node that gains ranges in a
/// rebalance forgets its old copies of them before the stream fills them
/// again, although it is already in the write ring, so that writes it
/// acknowledged under the new ring go with them. A read must be caught
/// missing one.
#[test]
fn forgetting_old_copies_of_gained_ranges_is_caught() {
    let mut cfg = rebalancing();
    cfg.planted.forget_gained = true;
    cfg.anti_entropy = false;
    cfg.read_repair = false;
    // The first seed that shows it is 50 (a stale read right after a
    // rebalance ended): the search starts at 41 to take seconds.
    let seeds = seeds_after(40);
    let expect = "forgetting the old copies of gained ranges must lose or hide some write";
    let (seed, what) = lost_or_hidden(&cfg, &seeds, expect);
    println!("forgetting gained ranges caught at seed {seed}: {what}");
}

/// The planted bug `no_cleanup_keep`: a cleanup run off the node's
/// driving thread (the server's `kv-cleanup`, modelled by the simulator's
/// appliers) forgets every range it was handed, even one that a ring
/// change gave back to the node before it ran, so that writes made there
/// since go with it. A read must be caught missing one. The first seed
/// that shows it is 15 (12 of seeds 1..=100 do; none does without the
/// planted bug, over 1,098 rebalances).
#[test]
fn a_cleanup_that_forgets_ranges_given_back_is_caught() {
    let mut cfg = rebalancing();
    cfg.appliers = Some(true);
    cfg.planted.no_cleanup_keep = true;
    cfg.anti_entropy = false;
    cfg.read_repair = false;
    let seeds = seeds();
    let expect = "a cleanup forgetting ranges given back must lose or hide some write";
    let (seed, what) = lost_or_hidden(&cfg, &seeds, expect);
    println!("a cleanup forgetting ranges given back caught at seed {seed}: {what}");
}

/// The planted fence bug in the appliers' model (`unfenced_pages`): a
/// stream page is applied under the ring the node has when the applier
/// runs, not the one it was received under, so a page of a range the
/// node gave away meanwhile lands after its cleanup and stays there as
/// ghost data (to come back if the range returns to the node after a
/// delete's tombstone was purged). The check that a node done with its
/// cleanups holds nothing outside its ranges must catch it. The first
/// seed that shows it is 45 (1 of seeds 1..=60; none of them without the
/// planted bug, over 368 nodes checked).
#[test]
fn stream_pages_applied_without_their_fence_are_caught() {
    let mut cfg = rebalancing();
    cfg.appliers = Some(true);
    cfg.unfenced_pages = true;
    let found = seeds_after(40).into_iter().find_map(|seed| {
        let r = run(seed, &cfg);
        let ghost = r
            .violations
            .into_iter()
            .find(|v| v.contains("after its cleanup, outside its ranges"))?;
        Some((seed, ghost))
    });
    let (seed, what) = found.expect("pages applied without their fence must leave ghost data");
    println!("unfenced stream pages caught at seed {seed}: {what}");
}

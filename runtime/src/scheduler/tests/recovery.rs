//! Failure and recovery: cascades, lost workers, recomputation, liveness.

use super::*;
use crate::protocol::RunTask;

#[test]
fn a_failure_fails_dependents_and_no_further() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let tasks = vec![root("a").on_rank(1), node("b", &["a"]), root("c").on_rank(2), node("d", &["c"])];
    let (ids, d) = s.submit(tasks, &["b", "d"]);
    let (a, c) = (s.id("a"), s.id("c"));
    assert_eq!(runs(&d, 1), vec![a, ids[0]]);
    assert_eq!(runs(&d, 2), vec![c, ids[1]]);
    let (wb, _) = s.wait(&[ids[0]]);
    let (wd, _) = s.wait(&[ids[1]]);
    let d = s.step(Event::Failed { id: a, error: "boom".into(), numerical: None });
    match wait_reply(&d, wb) {
        Some(Err(Error::TaskFailed { key, kernel, rank, cause, numerical: None })) => {
            assert_eq!((key, kernel.as_str(), *rank, cause.as_str()), (&k("a"), "sum", 1, "boom"));
        }
        other => panic!("b's waiter gets a's failure: {other:?}"),
    }
    assert!(reply(&d, wd).is_none(), "d does not depend on a");
    assert!(cancelled(&d, 2).is_empty());
    s.done(c, 8);
    let d = s.done(ids[1], 8);
    assert_eq!(wait_reply(&d, wd).unwrap().as_ref().unwrap(), &vec![vec![2]]);
    // A later graph on the failed output gets the same failure.
    let (r, _) = s.try_submit(vec![node("e", &["b"])], &["e"]);
    assert!(matches!(r, Err(Error::TaskFailed { key, .. }) if key == k("a")));
}

#[test]
fn a_dependent_sent_ahead_of_a_failed_input_is_cancelled() {
    let mut s = cluster(&[(1, 1)]);
    let (ids, d) = s.submit(vec![root("a"), node("b", &["a"]), node("c", &["b"])], &["c"]);
    let (a, b) = (s.id("a"), s.id("b"));
    assert_eq!(runs(&d, 1), vec![a, b, ids[0]]);
    let d = s.step(Event::Failed { id: a, error: "boom".into(), numerical: None });
    assert_eq!(sorted(cancelled(&d, 1)), sorted(vec![b, ids[0]]));
    assert_eq!(s.core.workers[0].in_flight, 0);
    assert!(matches!(&s.core.tasks[&ids[0]].state, State::Erred(f) if f.key == k("a")));
}

#[test]
fn input_lost_places_the_task_again_then_fails_it() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (a, _) = s.submit(vec![root("a")], &["a"]);
    s.done(a[0], 8);
    let (b, d) = s.submit(vec![node("b", &["a"]).on_rank(2)], &["b"]);
    assert_eq!(runs(&d, 2), b);
    let (to, _) = s.wait(&b);
    for attempt in 1..=5 {
        let d = s.step(Event::InputLost { id: b[0], input: a[0], from: 1 });
        assert_eq!(runs(&d, 2), b, "retry {attempt}");
        assert!(reply(&d, to).is_none());
    }
    let d = s.step(Event::InputLost { id: b[0], input: a[0], from: 1 });
    assert!(all_runs(&d).is_empty());
    match wait_reply(&d, to) {
        Some(Err(Error::TaskFailed { key, rank: 2, cause, .. })) => {
            assert_eq!(key, &k("b"));
            assert!(cause.contains("could not be fetched from rank 1"), "{cause}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn input_lost_takes_back_the_chain_sent_ahead_behind_the_task() {
    // b could not fetch a; c and e were sent ahead to wait on rank 2 for b
    // and c. Placed again, b may run elsewhere: the worker must drop its
    // c and e (they would wait there for ever) before they are sent anew.
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (a, _) = s.submit(vec![root("a").on_rank(1)], &["a"]);
    s.done(a[0], 8);
    let (e, d) = s.submit(vec![node("b", &["a"]).on_rank(2), node("c", &["b"]), node("e", &["c"])], &["e"]);
    let (b, c) = (s.id("b"), s.id("c"));
    assert_eq!(runs(&d, 2), vec![b, c, e[0]]);
    let (to, _) = s.wait(&e);
    let d = s.step(Event::InputLost { id: b, input: a[0], from: 1 });
    assert_eq!(sorted(cancelled(&d, 2)), sorted(vec![c, e[0]]));
    assert_eq!(runs(&d, 2), vec![b, c, e[0]], "pinned b goes back to rank 2, its chain with it");
    let at = |want: fn(&Decision) -> bool| d.iter().position(want).expect("decided");
    assert!(
        at(|x| matches!(x, Decision::Cancel { rank: 2, .. })) < at(|x| matches!(x, Decision::Run { rank: 2, .. })),
        "the worker drops the old c and e before it gets the new ones: {d:?}"
    );
    assert_eq!((s.core.workers[1].in_flight, s.core.workers[1].blocked), (3, 2));
    s.done(b, 8);
    s.done(c, 8);
    let d = s.done(e[0], 8);
    assert_eq!(wait_reply(&d, to).unwrap().as_ref().unwrap(), &vec![vec![2]]);
    assert_eq!((s.core.workers[1].in_flight, s.core.workers[1].blocked), (0, 0));
}

#[test]
fn a_lost_workers_running_tasks_are_placed_again() {
    let mut s = Setup::new(&[(1, 1), (2, 2)]).elastic().build();
    let (ids, d) = s.submit(vec![root("r0"), root("r1")], &["r0", "r1"]);
    assert_eq!(runs(&d, 1), vec![ids[0]]);
    assert_eq!(runs(&d, 2), vec![ids[1]]);
    let d = s.step(Event::PeerLost { rank: 1, reason: "reset".into() });
    assert_eq!(runs(&d, 2), vec![ids[0]]);
    assert!(runs(&d, 1).is_empty());
}

#[test]
fn a_lost_root_block_is_recomputed() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (ids, _) = s.submit(vec![root("a")], &["a"]);
    s.done(ids[0], 8);
    let (to, d) = s.wait(&ids);
    assert!(wait_reply(&d, to).is_some());
    let d = s.step(Event::PeerLost { rank: 1, reason: "reset".into() });
    assert_eq!(runs(&d, 2), ids);
    assert_eq!(s.core.mem_bytes, 0);
}

#[test]
fn a_lost_block_is_recomputed_from_inputs_still_held() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (a, _) = s.submit(vec![root("a")], &["a"]);
    s.done(a[0], 8);
    s.step(Event::Replica { rank: 2, id: a[0] });
    let (b, d) = s.submit(vec![node("b", &["a"])], &["b"]);
    assert_eq!(runs(&d, 1), b);
    s.done(b[0], 8);
    let d = s.step(Event::PeerLost { rank: 1, reason: "reset".into() });
    let Some(Decision::Run { rank: 2, tasks }) = d.iter().find(|x| matches!(x, Decision::Run { .. })) else {
        panic!("b is computed again on rank 2: {d:?}")
    };
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].id, b[0]);
    assert_eq!(tasks[0].inputs[0].holders[..], [2]);
    let (to, _) = s.wait(&b);
    let d = s.done(b[0], 8);
    assert_eq!(wait_reply(&d, to).unwrap().as_ref().unwrap(), &vec![vec![2]]);
}

#[test]
fn a_lost_block_whose_inputs_were_released_is_recomputed_from_its_lineage() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (b, d) = s.submit(vec![root("a"), node("b", &["a"])], &["b"]);
    let a = s.id("a");
    assert_eq!(runs(&d, 1), vec![a, b[0]]);
    s.done(a, 8);
    let d = s.done(b[0], 8);
    assert_eq!(released(&d, 1), vec![a]);
    let d = s.step(Event::PeerLost { rank: 1, reason: "reset".into() });
    // a, and b sent ahead behind it, on the worker that is left.
    assert_eq!(runs(&d, 2), vec![a, b[0]]);
    s.done(a, 8);
    let (to, _) = s.wait(&b);
    let d = s.done(b[0], 8);
    assert_eq!(wait_reply(&d, to).unwrap().as_ref().unwrap(), &vec![vec![2]]);
    assert_eq!(released(&d, 2), vec![a], "a is released again once b is back");
    let state = s.core.cluster_state();
    assert_eq!((state.workers_lost, state.recomputed), (1, 2));
}

#[test]
fn lost_blocks_recompute_a_shared_lineage_once_back_to_the_roots() {
    // r -> m -> {x, y}; x and y live on rank 1, r and m were released.
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let tasks = vec![root("r"), node("m", &["r"]), node("x", &["m"]), node("y", &["m"])];
    let (out, d) = s.submit(tasks, &["x", "y"]);
    let ran = s.run_all(d, 8);
    assert!(ran.iter().all(|&(rank, _)| rank == 1), "{ran:?}");
    assert!(matches!(s.core.tasks[&s.id("m")].state, State::Released));
    let d = s.step(Event::PeerLost { rank: 1, reason: "killed".into() });
    let again = s.run_all(d, 8);
    let names: Vec<&str> = again
        .iter()
        .map(|&(rank, id)| {
            assert_eq!(rank, 2);
            ["r", "m", "x", "y"].into_iter().find(|n| s.id(n) == id).unwrap()
        })
        .collect();
    assert_eq!(names, ["r", "m", "x", "y"], "each once, inputs first");
    let (to, d) = s.wait(&out);
    assert_eq!(wait_reply(&d, to).unwrap().as_ref().unwrap(), &vec![vec![2], vec![2]]);
    assert_eq!(s.core.cluster_state().recomputed, 4);
    s.release(&out);
    assert!(s.core.tasks.is_empty(), "the lineage goes with the outputs");
}

#[test]
fn a_lineage_through_a_task_pinned_to_a_lost_worker_fails_naming_it() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (b, d) = s.submit(vec![root("a").on_rank(1), node("b", &["a"])], &["b"]);
    s.run_all(d, 8);
    let d = s.step(Event::PeerLost { rank: 1, reason: "reset".into() });
    assert!(all_runs(&d).is_empty());
    let (to, d) = s.wait(&b);
    match wait_reply(&d, to) {
        Some(Err(Error::TaskFailed { key, rank: 1, cause, .. })) => {
            assert_eq!(key, &k("b"));
            assert!(cause.contains("cannot be recomputed") && cause.contains("pinned to worker rank 1"), "{cause}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_task_running_on_as_many_lost_workers_as_allowed_fails_naming_it() {
    let allowed = SchedulerConfig::ALLOWED_FAILURES;
    let ranks: Vec<(u32, u32)> = (1..=allowed + 1).map(|r| (r, 1)).collect();
    let mut s = elastic(&ranks);
    let (ids, mut d) = s.submit(vec![root("bad")], &["bad"]);
    let (to, _) = s.wait(&ids);
    for lost in 1..=allowed {
        let (rank, id) = all_runs(&d)[0];
        assert_eq!(id, ids[0]);
        d = s.step(Event::PeerLost { rank, reason: "killed".into() });
        if lost < allowed {
            assert_eq!(all_runs(&d).len(), 1, "run again after {lost} lost");
            assert!(wait_reply(&d, to).is_none());
        }
    }
    assert!(all_runs(&d).is_empty());
    match wait_reply(&d, to) {
        Some(Err(Error::TaskFailed { key, cause, .. })) => {
            assert_eq!(key, &k("bad"));
            assert!(cause.contains(&format!("running on {allowed} workers that were lost")), "{cause}");
            assert!(cause.contains("--allowed-failures"), "{cause}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.core.cluster_state().workers_lost, allowed as u64);
}

#[test]
fn a_task_pinned_to_a_lost_worker_fails() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (ids, d) = s.submit(vec![root("x").on_rank(1), root("p").on_rank(1)], &["x", "p"]);
    assert_eq!(runs(&d, 1), vec![ids[0]]);
    let (wx, _) = s.wait(&[ids[0]]);
    let (wp, _) = s.wait(&[ids[1]]);
    let d = s.step(Event::PeerLost { rank: 1, reason: "reset".into() });
    assert!(all_runs(&d).is_empty(), "{d:?}");
    for to in [wx, wp] {
        match wait_reply(&d, to) {
            Some(Err(Error::TaskFailed { rank: 1, cause, .. })) => assert!(cause.contains("pinned to worker rank 1")),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(s.core.queued, 0);
}

#[test]
fn a_remote_client_that_leaves_has_its_results_released() {
    let mut s = elastic(&[(1, 1)]);
    let (ids, _) = s.try_submit_from(Some(7), vec![root("a"), root("b")], &["a", "b"]);
    let ids = ids.unwrap();
    s.done(ids[0], 8);
    let d = s.step(Event::PeerLost { rank: 7, reason: "closed".into() });
    assert_eq!(released(&d, 1), vec![ids[0]]);
    assert!(!s.has("a"));
    assert!(matches!(s.core.tasks[&ids[1]].state, State::Cancelled(0)), "b runs on, unwanted");
}

#[test]
fn a_remote_client_cannot_release_what_it_does_not_hold() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (mine, _) = s.submit(vec![root("a")], &["a"]);
    let (theirs, _) = s.try_submit_from(Some(8), vec![root("b")], &["b"]);
    let theirs = theirs.unwrap();
    s.done(mine[0], 8);
    s.done(theirs[0], 8);
    for client in [7, 8] {
        let (_, d) = s.request_from(Some(client), WireRequest::Release { ids: mine.clone() });
        assert!(!any_release(&d), "client {client}: {d:?}");
    }
    assert!(matches!(s.core.tasks[&mine[0]].state, State::Memory));
    let (_, d) = s.request_from(Some(8), WireRequest::Release { ids: theirs.clone() });
    assert_eq!(released(&d, 2), theirs);
    // Released once: a second release of the same id is ignored.
    let (_, d) = s.request_from(Some(8), WireRequest::Release { ids: theirs.clone() });
    assert!(!any_release(&d));
}

#[test]
fn an_elastic_silent_worker_is_removed() {
    let mut s = Setup::new(&[(1, 1), (2, 1)]).elastic().timeout(10).build();
    let (ids, d) = s.submit(vec![root("r")], &["r"]);
    assert_eq!(runs(&d, 1), ids);
    s.at(15);
    s.step(Event::Heartbeat { rank: 2 });
    let d = s.step(Event::Tick);
    assert_eq!(runs(&d, 2), ids);
    assert!(!d.iter().any(|x| matches!(x, Decision::Abort { .. })));
    assert_eq!(s.core.worker_infos().iter().map(|w| w.rank).collect::<Vec<_>>(), vec![2]);
}

#[test]
fn a_silent_worker_aborts_a_non_elastic_job() {
    let mut s = Setup::new(&[(1, 1), (2, 1)]).timeout(10).build();
    s.at(15);
    s.step(Event::Heartbeat { rank: 2 });
    let d = s.step(Event::Tick);
    let aborts: Vec<_> = d
        .iter()
        .filter_map(|x| match x {
            Decision::Abort { rank, reason } => Some((*rank, reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(aborts.len(), 1, "{d:?}");
    assert_eq!(aborts[0].0, 1);
    assert!(aborts[0].1.contains("no message"), "{}", aborts[0].1);
}

#[test]
fn a_heartbeat_keeps_a_worker_alive() {
    let mut s = Setup::new(&[(1, 1)]).timeout(10).build();
    s.at(8);
    s.step(Event::Heartbeat { rank: 1 });
    s.at(15);
    assert!(s.step(Event::Tick).is_empty(), "seen 7 s ago");
    s.at(19);
    let d = s.step(Event::Tick);
    assert!(matches!(d.as_slice(), [Decision::Abort { rank: 1, .. }]), "silent 11 s: {d:?}");
}

#[test]
fn a_done_counts_as_a_sign_of_life() {
    let mut s = Setup::new(&[(1, 1)]).timeout(10).build();
    let (ids, _) = s.submit(vec![root("r")], &["r"]);
    s.at(9);
    s.done(ids[0], 8);
    s.at(15);
    assert!(s.step(Event::Tick).is_empty());
}

#[test]
fn a_copy_fetched_before_its_block_was_lost_is_kept_while_it_is_recomputed() {
    // `b` on one rank fetched `a` from the other, which dies before the
    // scheduler hears of the copy: the copy must not be released under `b`.
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (a, d) = s.submit(vec![root("a")], &["a"]);
    let (held, _) = all_runs(&d)[0];
    let other = 3 - held;
    s.done(a[0], 8);
    let (b, d) = s.submit(vec![node("b", &["a"]).on_rank(other)], &["b"]);
    assert_eq!(runs(&d, other), b);
    s.step(Event::PeerLost { rank: held, reason: "killed".into() });
    assert!(!matches!(s.core.tasks[&a[0]].state, State::Memory | State::Erred(_)), "a is being recomputed");
    let d = s.step(Event::Replica { rank: other, id: a[0] });
    assert!(released(&d, other).is_empty(), "the copy b uses is kept: {d:?}");
    // Nothing needs `a` any more: its copy goes with it.
    s.release(&b);
    s.done(b[0], 8); // cancelled meanwhile: it lets go of `a`, which then runs
    let mut d = s.release(&a);
    if s.core.tasks.contains_key(&a[0]) {
        d.extend(s.done(a[0], 8)); // cancelled while running
    }
    assert_eq!(released(&d, other), a);
    assert!(s.core.tasks.is_empty());
}

#[test]
fn a_task_taken_back_after_a_lost_worker_waits_for_its_lost_input_too() {
    // d was sent ahead to rank p to wait for t there, with its other
    // input l held on rank w. Rank w is lost (l is computed again), then t
    // cannot fetch x from it and is placed again, taking d back. d must
    // wait for l as well as t: sent when t is done but l is not, it would
    // reach its worker with no holder for l.
    let mut s = elastic(&[(1, 2), (2, 2), (3, 2)]);
    let warm = names("w", 8);
    let (_, d) = s.submit(warm.iter().map(|w| root(w)).collect(), &strs(&warm));
    s.run_all(d, 1000);
    // x and l are made where seed is (locality), t on another rank.
    let (seed, d) = s.submit(vec![root("seed")], &["seed"]);
    let w = all_runs(&d)[0].0;
    let p = if w == 1 { 2 } else { 1 };
    s.done(seed[0], 8);
    let tasks = vec![node("x", &["seed"]), node("l", &["seed"]), node("t", &["x"]).on_rank(p), node("d", &["t", "l"])];
    let (out, d) = s.submit(tasks, &["d"]);
    let (x, l, t, dd) = (s.id("x"), s.id("l"), s.id("t"), out[0]);
    assert_eq!(sorted(runs(&d, w)), sorted(vec![x, l]));
    assert_eq!(runs(&s.done(x, 8), p), vec![t]);
    assert_eq!(runs(&s.done(l, 8), p), vec![dd], "d goes ahead to where t is made");
    let lost = s.step(Event::PeerLost { rank: w, reason: "reset".into() });
    let d = s.step(Event::InputLost { id: t, input: x, from: w });
    assert_eq!(cancelled(&d, p), vec![dd]);
    assert_eq!(s.core.tasks[&dd].waiting, 2, "d waits for t and for l");
    // Everything sent is done, l last. Each task sent names a holder (or
    // the worker computing it) for every input.
    let mut sent: Vec<RunTask> = Vec::new();
    let took = |d: Vec<Decision>, sent: &mut Vec<RunTask>| {
        for x in d {
            if let Decision::Run { tasks, .. } = x {
                for run in tasks {
                    assert!(run.inputs.iter().all(|i| !i.holders.is_empty()), "an input without holders: {run:?}");
                    sent.push(run);
                }
            }
        }
    };
    took(lost, &mut sent);
    took(d, &mut sent);
    // Tasks run when their inputs are stored, l only when nothing else can.
    let mut ran = 0;
    loop {
        let stored = |s: &Sim, r: &RunTask| {
            r.inputs.iter().all(|i| matches!(s.core.tasks.get(&i.id).map(|x| &x.state), Some(State::Memory)))
        };
        let ready = |s: &Sim, r: &RunTask| stored(s, r) && matches!(s.core.tasks[&r.id].state, State::Running(_));
        let next = sent[ran..]
            .iter()
            .position(|r| r.id != l && ready(&s, r))
            .or_else(|| sent[ran..].iter().position(|r| ready(&s, r)));
        let Some(j) = next else { break };
        let run = sent.remove(ran + j);
        let d = s.done(run.id, 8);
        sent.insert(ran, run);
        ran += 1;
        took(d, &mut sent);
    }
    assert_eq!(sent.iter().filter(|r| r.id == dd).count(), 1, "d ran once more");
    let (to, d) = s.wait(&out);
    assert!(wait_reply(&d, to).unwrap().is_ok());
    assert!(s.core.workers.iter().all(|w| w.blocked == 0 && w.in_flight == 0));
}

#[test]
fn a_lost_block_released_by_another_lost_blocks_failure_is_skipped() {
    // x and l, pinned to rank 3, are lost with it; x cannot be recomputed,
    // which fails t and d and so releases l, the other lost block.
    let mut s = elastic(&[(1, 1), (2, 1), (3, 1)]);
    let tasks = vec![root("x").on_rank(3), root("l").on_rank(3), node("t", &["x"]).on_rank(1), node("d", &["t", "l"])];
    let (out, _) = s.submit(tasks, &["d"]);
    let (x, l, t) = (s.id("x"), s.id("l"), s.id("t"));
    s.done(x, 8);
    s.done(l, 8);
    assert!(matches!(s.core.tasks[&t].state, State::Running(0)));
    let (to, _) = s.wait(&out);
    let d = s.step(Event::PeerLost { rank: 3, reason: "reset".into() });
    match wait_reply(&d, to) {
        Some(Err(Error::TaskFailed { cause, .. })) => {
            assert!(cause.contains("pinned to worker rank 3"), "{cause}");
        }
        other => panic!("d fails, naming the pin: {other:?}"),
    }
    assert!(!s.has("l"), "nothing holds l any more");
    assert_eq!(cancelled(&d, 1), vec![t]);
}

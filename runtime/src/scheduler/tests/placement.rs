//! Placement: locality, root-task queuing and dealing, ahead assignment, stealing, GPU workers, and one batch per worker per flush.

use super::*;
use crate::protocol::RunTask;

#[test]
fn placement_prefers_the_worker_holding_most_input_bytes() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (_, d) = s.submit(vec![root("a"), root("b"), node("c", &["a", "b"])], &["c"]);
    let (a, b) = (s.id("a"), s.id("b"));
    assert_eq!(runs(&d, 1), vec![a]);
    assert_eq!(runs(&d, 2), vec![b]);
    assert!(runs(&s.done(a, 100), 1).is_empty());
    // Rank 2 holds 1000 bytes of c's input, rank 1 only 100.
    let d = s.done(b, 1000);
    assert_eq!(runs(&d, 2), vec![s.id("c")]);
    assert!(runs(&d, 1).is_empty());
}

#[test]
fn placement_prefers_most_bytes_whichever_worker_reports_first() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (_, d) = s.submit(vec![root("a"), root("b"), node("c", &["a", "b"])], &["c"]);
    let (a, b) = (s.id("a"), s.id("b"));
    assert_eq!((runs(&d, 1), runs(&d, 2)), (vec![a], vec![b]));
    s.done(b, 10);
    let d = s.done(a, 5000);
    assert_eq!(runs(&d, 1), vec![s.id("c")]);
    assert!(runs(&d, 2).is_empty());
}

#[test]
fn placement_tie_goes_to_the_least_loaded_worker() {
    let mut s = cluster(&[(1, 2), (2, 2)]);
    // x keeps rank 1 busy; a and b are equal halves of c's input.
    let tasks = vec![
        root("a").on_rank(1),
        root("b").on_rank(2),
        node("c", &["a", "b"]),
        Task::new(k("x"), "sleep").param(&1u64).on_rank(1),
    ];
    let (_, d) = s.submit(tasks, &["c", "x"]);
    assert_eq!(sorted(runs(&d, 1)), sorted(vec![s.id("a"), s.id("x")]));
    assert_eq!(runs(&d, 2), vec![s.id("b")]);
    s.done(s.id("a"), 100);
    let d = s.done(s.id("b"), 100);
    assert_eq!(runs(&d, 2), vec![s.id("c")], "rank 1 still runs x");
    assert!(runs(&d, 1).is_empty());
}

#[test]
fn pinned_task_runs_on_its_rank() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (a, d) = s.submit(vec![root("a")], &["a"]);
    assert_eq!(runs(&d, 1), a);
    s.done(a[0], 1000);
    // b reads a block held on rank 1, c is a root: rank 1 is idle, yet both go to rank 2.
    let (ids, d) = s.submit(vec![node("b", &["a"]).on_rank(2), root("c").on_rank(2)], &["b", "c"]);
    assert_eq!(runs(&d, 2), vec![ids[0]]);
    assert!(runs(&d, 1).is_empty());
    let d = s.done(ids[0], 8);
    assert_eq!(runs(&d, 2), vec![ids[1]]);
    assert!(runs(&d, 1).is_empty());
}

#[test]
fn a_pinned_dependent_is_not_sent_ahead_elsewhere() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (ids, d) = s.submit(vec![root("a").on_rank(1), node("b", &["a"]).on_rank(2)], &["b"]);
    assert_eq!(runs(&d, 1), vec![s.id("a")]);
    assert!(runs(&d, 2).is_empty());
    let d = s.done(s.id("a"), 8);
    assert_eq!(runs(&d, 2), ids);
}

#[test]
fn pinned_to_an_unknown_rank_is_refused() {
    let mut s = cluster(&[(1, 1)]);
    let (r, d) = s.try_submit(vec![root("a"), node("b", &["a"]).on_rank(9)], &["b"]);
    match r {
        Err(Error::NoSuchWorker { key, rank: 9 }) => assert_eq!(key, k("b")),
        other => panic!("expected NoSuchWorker, got {other:?}"),
    }
    assert!(d.is_empty(), "nothing is run: {d:?}");
    assert!(s.core.tasks.is_empty());
}

#[test]
fn roots_stay_unbound_and_go_out_up_to_each_limit() {
    let mut s = Setup::new(&[(1, 2), (2, 2)]).extra(1).build();
    probe(&mut s, 8);
    // 7 roots: fewer than two per thread, so not dealt out.
    let roots = names("r", 7);
    let outputs = strs(&roots);
    let tasks = roots.iter().map(|n| root(n)).collect();
    s.core.handle(
        s.now,
        Event::Request {
            client: None,
            req: WireRequest::Submit { tasks, outputs: outputs.iter().map(|n| k(n)).collect() },
            reply: ReplyTo(1),
        },
    );
    for n in &roots {
        assert!(matches!(s.core.tasks[&s.id(n)].state, State::Queued(None)), "{n} is bound to no worker");
    }
    assert_eq!(s.core.unbound.len(), 7);
    assert!(s.core.workers.iter().all(|w| w.queue.is_empty()));
    let d = s.flush();
    // threads 2 + queue_extra 1 each, no more.
    assert_eq!(runs(&d, 1).len(), 3);
    assert_eq!(runs(&d, 2).len(), 3);
    assert_eq!(s.core.unbound.len(), 1);
    let first = runs(&d, 1)[0];
    let d = s.done(first, 8);
    assert_eq!(runs(&d, 1).len(), 1, "one slot freed on rank 1");
    assert!(runs(&d, 2).is_empty());
    assert_eq!(s.core.unbound.len(), 0);
}

/// Roots named `roots` and a sum `t` of them all.
fn with_sum(roots: &[String]) -> Vec<Task> {
    let mut tasks: Vec<Task> = roots.iter().map(|n| root(n)).collect();
    tasks.push(node("t", &strs(roots)));
    tasks
}

#[test]
fn independent_roots_are_not_dealt_out() {
    let mut s = Setup::new(&[(1, 2), (2, 2)]).extra(1).build();
    probe(&mut s, 8);
    let roots = names("r", 40);
    s.submit(roots.iter().map(|n| root(n)).collect(), &strs(&roots));
    assert_eq!(s.core.unbound.len(), 34, "40 roots, 6 sent, the rest unbound");
}

#[test]
fn many_roots_are_dealt_out_in_runs_of_the_priority_order() {
    let mut s = Setup::new(&[(1, 2), (2, 2)]).extra(1).build();
    probe(&mut s, 8);
    // 40 roots feeding one sum, 4 threads: rank 1 gets the first 20 (by
    // priority), rank 2 the rest.
    let roots = names("r", 40);
    let (_, d) = s.submit(with_sum(&roots), &["t"]);
    assert!(s.core.unbound.is_empty());
    let mut by_prio: Vec<(u64, TaskId)> = roots.iter().map(|n| (s.core.tasks[&s.id(n)].prio, s.id(n))).collect();
    by_prio.sort();
    let first_half: Vec<TaskId> = by_prio[..20].iter().map(|&(_, id)| id).collect();
    for (i, &(_, id)) in by_prio.iter().enumerate() {
        let rank = if i < 20 { 1 } else { 2 };
        match s.core.tasks[&id].state {
            State::Queued(Some(w)) | State::Running(w) => assert_eq!(s.core.workers[w].rank, rank, "root {i}"),
            ref other => panic!("root {i} is {other:?}"),
        }
    }
    let sent1 = runs(&d, 1);
    assert_eq!(sent1, first_half[..3].to_vec(), "rank 1 starts at the front of its run");
    assert_eq!(runs(&d, 2).len(), 3);
}

#[test]
fn an_idle_worker_steals_dealt_roots() {
    let mut s = Setup::new(&[(1, 1), (2, 1)]).build();
    probe(&mut s, 8);
    let roots = names("r", 8);
    let (_, d) = s.submit(with_sum(&roots), &["t"]);
    let mine = runs(&d, 2);
    assert_eq!(mine.len(), 1);
    // Rank 2 finishes its run of four; then it takes rank 1's last queued root.
    let mut d = s.done(mine[0], 8);
    for _ in 0..3 {
        let next = runs(&d, 2);
        assert_eq!(next.len(), 1, "{d:?}");
        d = s.done(next[0], 8);
    }
    let stolen = runs(&d, 2);
    assert_eq!(stolen.len(), 1, "rank 2 steals once its own run is done: {d:?}");
    let w1 = s.core.worker_of_rank[&1];
    assert!(s.core.workers[w1].queue.len() <= 2, "rank 1 kept the front of its run");
}

#[test]
fn big_roots_wait_for_a_free_thread() {
    let mut s = Setup::new(&[(1, 2)]).extra(2).build();
    probe(&mut s, 1 << 20);
    let roots = names("r", 6);
    let (_, d) = s.submit(roots.iter().map(|n| root(n)).collect(), &strs(&roots));
    let sent = runs(&d, 1);
    assert_eq!(sent.len(), 2, "one per thread, not the queue limit of 4");
    let d = s.done(sent[0], 1 << 20);
    assert_eq!(runs(&d, 1).len(), 1, "one thread freed, one more root");
    let d = s.step(Event::Heartbeat { rank: 1 });
    assert!(runs(&d, 1).is_empty());
}

#[test]
fn roots_of_unknown_size_wait_for_a_free_thread() {
    let mut s = Setup::new(&[(1, 2)]).extra(2).build();
    let roots = names("r", 6);
    let (_, d) = s.submit(roots.iter().map(|n| root(n)).collect(), &strs(&roots));
    assert_eq!(runs(&d, 1).len(), 2);
}

#[test]
fn small_roots_are_queued_ahead_up_to_the_limit() {
    let mut s = Setup::new(&[(1, 2)]).extra(2).build();
    probe(&mut s, (1 << 20) - 1);
    let roots = names("r", 6);
    let (_, d) = s.submit(roots.iter().map(|n| root(n)).collect(), &strs(&roots));
    let sent = runs(&d, 1);
    assert_eq!(sent.len(), 4, "threads 2 + queue_extra 2");
    let d = s.done(sent[0], 8);
    assert_eq!(runs(&d, 1).len(), 1);
}

#[test]
fn a_chain_is_sent_ahead_whole_in_one_run() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (_, d) = s.submit(vec![root("a"), node("b", &["a"]), node("c", &["b"])], &["c"]);
    assert_eq!(run_decisions(&d, 1), 1);
    assert_eq!(runs(&d, 1), vec![s.id("a"), s.id("b"), s.id("c")]);
    assert!(runs(&d, 2).is_empty());
    // Its links finishing send nothing again.
    let d = s.done(s.id("a"), 8);
    assert!(all_runs(&d).is_empty());
    let d = s.done(s.id("b"), 8);
    assert!(all_runs(&d).is_empty());
}

#[test]
fn ahead_assignment_tells_where_inputs_are_made() {
    let mut s = cluster(&[(1, 1)]);
    let (_, d) = s.submit(vec![root("a"), node("b", &["a"])], &["b"]);
    let Some(Decision::Run { tasks, .. }) = d.iter().find(|x| matches!(x, Decision::Run { .. })) else {
        panic!("nothing sent: {d:?}")
    };
    assert_eq!(tasks[1].id, s.id("b"));
    assert_eq!(tasks[1].inputs.len(), 1);
    assert_eq!(tasks[1].inputs[0].id, s.id("a"));
    assert_eq!(tasks[1].inputs[0].holders[..], [1], "a is being computed on rank 1");
}

#[test]
fn not_sent_ahead_when_an_input_is_made_on_another_worker() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (_, d) = s.submit(vec![root("a").on_rank(1), root("b").on_rank(2), node("c", &["a", "b"])], &["c"]);
    let c = s.id("c");
    assert_eq!(runs(&d, 1), vec![s.id("a")]);
    assert_eq!(runs(&d, 2), vec![s.id("b")]);
    assert!(matches!(s.core.tasks[&c].state, State::Waiting));
    assert!(all_runs(&s.done(s.id("a"), 100)).is_empty());
    let d = s.done(s.id("b"), 10);
    assert_eq!(all_runs(&d).len(), 1, "sent once both inputs exist");
    assert_eq!(all_runs(&d)[0].1, c);
}

/// a (`na` bytes) computed on rank 1, b (`nb`) on rank 2, then c reads both;
/// b finishes last. Returns the ranks c is sent to.
fn place_after_last_input_on_the_smaller_holder(na: u64, nb: u64) -> Vec<u32> {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    s.submit(vec![root("a").on_rank(1), root("b").on_rank(2), node("c", &["a", "b"])], &["c"]);
    s.done(s.id("a"), na);
    let d = s.done(s.id("b"), nb);
    all_runs(&d).into_iter().map(|(r, _)| r).collect()
}

#[test]
fn locality_wins_when_moving_the_input_costs_more_than_running() {
    // 1 GB at the assumed 1 GB/s is longer than the kernel's mean 1 ms: no steal.
    assert_eq!(place_after_last_input_on_the_smaller_holder(1 << 30, 10), vec![1]);
}

#[test]
fn locality_is_not_undone_by_stealing_from_an_idle_worker() {
    // Same as placement_prefers_most_bytes_whichever_worker_reports_first,
    // with the Done events in the other order: rank 1 (100 bytes, idle) is
    // chosen, then rank 2 (10 bytes) steals c in the same flush.
    assert_eq!(place_after_last_input_on_the_smaller_holder(100, 10), vec![1]);
}

/// Rank 1 (one thread) holds `a` of `nbytes`; `n` tasks reading it follow:
/// the ranks their first sends went to.
fn steal_from_a_backlog(nbytes: u64, n: usize) -> Vec<u32> {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    s.submit(vec![root("a").on_rank(1)], &["a"]);
    s.done(s.id("a"), nbytes);
    let bs = names("b", n);
    let (_, d) = s.submit(bs.iter().map(|b| node(b, &["a"])).collect(), &strs(&bs));
    all_runs(&d).into_iter().map(|(r, _)| r).collect()
}

#[test]
fn a_short_backlog_stays_where_its_big_input_is() {
    // 4 MB at the assumed 1 GB/s: 4 ms to move, against 1 ms to run and
    // 2 ms of queue: cheaper to wait.
    assert_eq!(steal_from_a_backlog(4 << 20, 3), vec![1]);
}

#[test]
fn a_long_backlog_is_stolen_despite_a_big_input() {
    // 20 tasks queued on one thread: the last waits 19 ms, far more than
    // the 4 ms transfer.
    assert_eq!(steal_from_a_backlog(4 << 20, 20), vec![1, 2]);
}

#[test]
fn an_idle_worker_steals_queued_tasks() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (bs, d) = backlog(&mut s, 4, None);
    // All four are bound to rank 1 (it holds a); rank 2 takes the last one.
    assert_eq!(runs(&d, 1), vec![bs[0]]);
    assert_eq!(runs(&d, 2), vec![bs[3]], "stolen from the low-priority end");
    let all = s.run_all(d, 8);
    let mut ids: Vec<TaskId> = all.iter().map(|&(_, id)| id).collect();
    ids.sort();
    assert_eq!(ids, sorted(bs.clone()), "each task sent exactly once");
    assert!(all.iter().any(|&(r, id)| r == 2 && id == bs[2]), "rank 2 steals again when idle: {all:?}");
}

#[test]
fn a_running_task_is_never_moved() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (bs, d) = backlog(&mut s, 1, None);
    assert_eq!(runs(&d, 1), bs);
    assert!(runs(&d, 2).is_empty());
    for rank in [1, 2] {
        let d = s.step(Event::Heartbeat { rank });
        assert!(all_runs(&d).is_empty(), "{d:?}");
    }
    let d = s.step(Event::Tick);
    assert!(all_runs(&d).is_empty());
    assert!(matches!(s.core.tasks[&bs[0]].state, State::Running(0)));
}

#[test]
fn pinned_tasks_are_never_stolen() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (bs, d) = backlog(&mut s, 4, Some(1));
    assert_eq!(runs(&d, 1), vec![bs[0]]);
    assert!(runs(&d, 2).is_empty());
    let all = s.run_all(d, 8);
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|&(r, _)| r == 1), "{all:?}");
}

#[test]
fn gpu_tasks_go_to_a_gpu_worker() {
    let mut setup = Setup::new(&[]);
    setup.reg = gpu_registry();
    setup.workers = vec![(1, 1, ""), (2, 1, "GPU 0")];
    let mut s = setup.build();
    let (_, d) = s.submit(vec![Task::new(k("c"), "cpu")], &["c"]);
    assert_eq!(runs(&d, 1), vec![s.id("c")], "a CPU root goes to the first worker with room");
    s.done(s.id("c"), 1 << 20);
    // g reads a megabyte held on the CPU worker, yet goes to the GPU.
    let (_, d) = s.submit(vec![Task::new(k("g"), "gpu").inputs([k("c")]), Task::new(k("h"), "gpu")], &["g", "h"]);
    assert_eq!(runs(&d, 2), vec![s.id("g")]);
    assert!(runs(&d, 1).is_empty(), "nor is the GPU root h given to the idle CPU worker");
    assert!(matches!(s.core.tasks[&s.id("h")].state, State::Queued(Some(1))));
}

#[test]
fn a_cpu_worker_never_steals_gpu_tasks() {
    let mut setup = Setup::new(&[]);
    setup.reg = gpu_registry();
    setup.workers = vec![(1, 1, ""), (2, 1, "GPU 0")];
    let mut s = setup.build();
    let gs = names("g", 4);
    let (_, d) = s.submit(gs.iter().map(|g| Task::new(k(g), "gpu")).collect(), &strs(&gs));
    assert_eq!(runs(&d, 2).len(), 1);
    assert!(runs(&d, 1).is_empty());
    let all = s.run_all(d, 8);
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|&(r, _)| r == 2), "{all:?}");
}

#[test]
fn cpu_tasks_are_not_confined_to_gpu_workers() {
    let mut setup = Setup::new(&[]);
    setup.reg = gpu_registry();
    setup.workers = vec![(1, 1, "GPU 0"), (2, 1, "")];
    let mut s = setup.build();
    let cs = names("c", 2);
    let (_, d) = s.submit(cs.iter().map(|c| Task::new(k(c), "cpu")).collect(), &strs(&cs));
    assert_eq!(runs(&d, 1).len(), 1);
    assert_eq!(runs(&d, 2).len(), 1);
}

#[test]
fn short_tasks_are_queued_past_the_limit_up_to_a_millisecond() {
    let mut s = Setup::new(&[(1, 1)]).build();
    // The kernel's tasks take 100 us: 9 more fit under 1 ms past the limit.
    let (_, d) = s.submit(vec![root("probe")], &["probe"]);
    s.step(Event::Done { id: all_runs(&d)[0].1, nbytes: 8, micros: 100 });
    let rs = names("r", 40);
    let (_, d) = s.submit(rs.iter().map(|n| root(n)).collect(), &strs(&rs));
    assert_eq!(runs(&d, 1).len(), 1 + 9, "limit 1, plus 9 tasks of 100 us");
}

#[test]
fn long_tasks_stop_at_the_limit() {
    let mut s = Setup::new(&[(1, 1)]).build();
    let (_, d) = s.submit(vec![root("probe")], &["probe"]);
    s.step(Event::Done { id: all_runs(&d)[0].1, nbytes: 8, micros: 5000 });
    let rs = names("r", 40);
    let (_, d) = s.submit(rs.iter().map(|n| root(n)).collect(), &strs(&rs));
    assert_eq!(runs(&d, 1).len(), 1);
}

#[test]
fn one_run_decision_per_worker_per_flush() {
    let mut s = Setup::new(&[(1, 4), (2, 4)]).build();
    probe(&mut s, 8);
    let rs = names("r", 20);
    let (_, d) = s.submit(rs.iter().map(|n| root(n)).collect(), &strs(&rs));
    assert_eq!(run_decisions(&d, 1), 1);
    assert_eq!(run_decisions(&d, 2), 1);
    assert_eq!(runs(&d, 1).len(), 4);
    // Three tasks finish before the next flush: one Run carries their successors.
    let first = runs(&d, 1);
    for &id in &first[..3] {
        s.core.handle(s.now, Event::Done { id, nbytes: 8, micros: 1000 });
    }
    let d = s.flush();
    assert_eq!(run_decisions(&d, 1), 1);
    assert_eq!(runs(&d, 1).len(), 3);
    assert_eq!(run_decisions(&d, 2), 0);
}

#[test]
fn releases_are_batched_per_worker() {
    let mut s = cluster(&[(1, 4)]);
    probe(&mut s, 8);
    let rs = names("r", 3);
    let (ids, d) = s.submit(rs.iter().map(|n| root(n)).collect(), &strs(&rs));
    assert_eq!(runs(&d, 1).len(), 3);
    for &id in &ids {
        s.core.handle(s.now, Event::Done { id, nbytes: 8, micros: 10 });
    }
    s.flush();
    let d = s.release(&ids);
    let n = d.iter().filter(|x| matches!(x, Decision::Release { rank: 1, .. })).count();
    assert_eq!(n, 1);
    assert_eq!(sorted(released(&d, 1)), sorted(ids));
}

/// Two ranks of one thread; eight "sum" tasks finished first (so the
/// kernel's mean output size is known), `a` (`na` bytes) done on rank 1
/// while `b` still runs on rank 2; `c` reads both. Returns the core and the
/// decisions of `a`'s Done.
fn a_done_while_b_runs(mean: u64, na: u64) -> (Sim, Vec<Decision>) {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let warm = names("w", 8);
    let (_, d) = s.submit(warm.iter().map(|w| root(w)).collect(), &strs(&warm));
    s.run_all(d, mean);
    s.submit(vec![root("a").on_rank(1), root("b").on_rank(2), node("c", &["a", "b"])], &["c"]);
    let d = s.done(s.id("a"), na);
    (s, d)
}

#[test]
fn sent_ahead_to_the_worker_computing_its_last_input() {
    let (mut s, d) = a_done_while_b_runs(1000, 1000);
    let c = s.id("c");
    // Equal halves: c goes where b is being made, and rank 2 fetches a
    // from rank 1 while b runs.
    let sent: Vec<&RunTask> = d
        .iter()
        .filter_map(|x| match x {
            Decision::Run { rank: 2, tasks } => Some(tasks.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(sent.iter().map(|t| t.id).collect::<Vec<_>>(), vec![c]);
    let holders: Vec<(TaskId, &[u32])> = sent[0].inputs.iter().map(|i| (i.id, &i.holders[..])).collect();
    assert_eq!(holders, vec![(s.id("a"), &[1][..]), (s.id("b"), &[2][..])]);
    assert_eq!(s.core.workers[1].blocked, 1, "c waits for b on rank 2 without a thread");
    // b's Done sends nothing more: c runs on rank 2.
    assert!(all_runs(&s.done(s.id("b"), 1000)).is_empty());
    assert_eq!(s.core.workers[1].blocked, 0);
    assert!(matches!(s.core.tasks[&c].state, State::Running(1)));
}

#[test]
fn not_sent_ahead_when_more_input_is_held_elsewhere() {
    // a is ten times what b's kernel makes on average: c waits for b and
    // is placed by the bytes then.
    let (mut s, d) = a_done_while_b_runs(1000, 10_000);
    assert!(all_runs(&d).is_empty());
    let d = s.done(s.id("b"), 1000);
    assert_eq!(runs(&d, 1), vec![s.id("c")]);
}

#[test]
fn not_sent_ahead_while_the_kernels_sizes_are_unknown() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    s.submit(vec![root("a").on_rank(1), root("b").on_rank(2), node("c", &["a", "b"])], &["c"]);
    assert!(all_runs(&s.done(s.id("a"), 1000)).is_empty(), "one finished task is no estimate");
}

#[test]
fn not_sent_ahead_when_inputs_are_made_on_two_workers() {
    let mut s = cluster(&[(1, 1), (2, 1), (3, 1)]);
    let warm = names("w", 8);
    let (_, d) = s.submit(warm.iter().map(|w| root(w)).collect(), &strs(&warm));
    s.run_all(d, 1000);
    let tasks = vec![root("a").on_rank(1), root("b").on_rank(2), root("e").on_rank(3), node("c", &["a", "b", "e"])];
    s.submit(tasks, &["c"]);
    // b and e still run on two workers: no single place for c yet.
    assert!(all_runs(&s.done(s.id("a"), 1000)).is_empty());
    // e done too: b is the last, on rank 2.
    assert_eq!(runs(&s.done(s.id("e"), 1000), 2), vec![s.id("c")]);
}

#[test]
fn a_block_on_many_workers_is_offered_from_a_few() {
    let mut s = cluster(&[(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)]);
    s.submit(vec![root("a").on_rank(1)], &["a"]);
    let a = s.id("a");
    s.done(a, 1000);
    for rank in 2..=5 {
        s.step(Event::Replica { rank, id: a });
    }
    let (_, d) = s.submit(vec![node("b", &["a"]).on_rank(6)], &["b"]);
    let sent: Vec<&RunTask> = d
        .iter()
        .filter_map(|x| match x {
            Decision::Run { rank: 6, tasks } => Some(tasks.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    let holders = &sent[0].inputs[0].holders;
    assert_eq!(holders.len(), 4, "{holders:?}");
    assert!(holders.iter().all(|r| (1..=5).contains(r)), "{holders:?}");
}

fn memory(rank: u32, paused: bool) -> Event {
    Event::Memory { rank, memory: 1 << 30, spilled: 1 << 30, paused }
}

#[test]
fn a_paused_worker_gets_no_new_task_until_it_resumes() {
    let mut s = cluster(&[(1, 1)]);
    let d = s.step(memory(1, true));
    assert!(d.is_empty(), "{d:?}");
    let rs = names("r", 3);
    let (ids, d) = s.submit(rs.iter().map(|n| root(n)).collect(), &strs(&rs));
    assert!(runs(&d, 1).is_empty(), "paused: nothing sent: {d:?}");
    assert_eq!(s.core.cluster_state().paused, vec![1]);
    assert_eq!(s.core.cluster_state().spilled_bytes, 1 << 30);
    let d = s.step(memory(1, false));
    assert_eq!(runs(&d, 1), vec![ids[0]], "resumed: filled again");
    assert!(s.core.cluster_state().paused.is_empty());
}

#[test]
fn the_queue_of_a_paused_worker_is_stolen() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (bs, d) = backlog(&mut s, 4, None);
    // Bound to rank 1 (it holds a); rank 2 stole the last one.
    assert_eq!(runs(&d, 1), vec![bs[0]]);
    s.step(memory(1, true));
    // Rank 2 finishes and takes the rest of rank 1's queue one by one,
    // however short the backlog; rank 1 gets nothing while paused.
    let mut d = s.done(bs[3], 8);
    let mut taken = Vec::new();
    while let [id] = runs(&d, 2)[..] {
        assert!(runs(&d, 1).is_empty(), "{d:?}");
        taken.push(id);
        d = s.done(id, 8);
    }
    taken.sort();
    assert_eq!(taken, sorted(bs[1..3].to_vec()), "the queued tasks moved; the running one stayed");
}

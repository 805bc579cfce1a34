//! The core's decisions on small hand-built states: one event in, the
//! decisions out (what a worker or a client would be told).

use std::sync::Arc;
use std::time::Duration;

use super::state::State;
use super::{Core, Decision, Event, Hello, ReplyTo, SchedulerConfig, Time};
use crate::block::Block;
use crate::error::{Error, Result};
use crate::graph::{Key, Task, TaskId};
use crate::kernel::Registry;
use crate::observe::events::WorkerEvents;
use crate::protocol::{WireReply, WireRequest};

// ---------------------------------------------------------------- helpers

/// A core with its workers joined, and the clock and reply tokens it is driven with.
struct Sim {
    core: Core,
    reg: Arc<Registry>,
    now: Time,
    next_reply: u64,
}

/// Options for a [`Sim`]: workers as (rank, threads, gpu).
struct Setup {
    reg: Registry,
    workers: Vec<(u32, u32, &'static str)>,
    queue_extra: u32,
    elastic: bool,
    timeout: Option<Duration>,
}

impl Setup {
    fn new(workers: &[(u32, u32)]) -> Setup {
        Setup {
            reg: Registry::builtin(),
            workers: workers.iter().map(|&(r, t)| (r, t, "")).collect(),
            queue_extra: 0,
            elastic: false,
            timeout: None,
        }
    }

    fn extra(mut self, queue_extra: u32) -> Setup {
        self.queue_extra = queue_extra;
        self
    }

    fn elastic(mut self) -> Setup {
        self.elastic = true;
        self
    }

    fn timeout(mut self, secs: u64) -> Setup {
        self.timeout = Some(Duration::from_secs(secs));
        self
    }

    fn build(self) -> Sim {
        let reg = Arc::new(self.reg);
        let config = SchedulerConfig {
            worker_ranks: self.workers.iter().map(|w| w.0).collect(),
            queue_extra: self.queue_extra,
            heartbeat_timeout: self.timeout,
            elastic: self.elastic,
        };
        let mut sim = Sim { core: Core::new(reg.clone(), config), reg, now: Time::ZERO, next_reply: 100 };
        for &(rank, threads, gpu) in &self.workers {
            let hello = sim.hello(rank, threads, gpu);
            sim.core.join(Time::ZERO, hello).expect("same registry");
        }
        sim.core.started();
        let first = sim.flush();
        assert!(first.is_empty(), "an idle cluster decides nothing: {first:?}");
        sim
    }
}

/// A built-in-kernel cluster of (rank, threads) workers, one task per thread, MPI-like.
fn cluster(workers: &[(u32, u32)]) -> Sim {
    Setup::new(workers).build()
}

/// A registry with a CPU kernel "cpu" and a GPU-capable kernel "gpu".
fn gpu_registry() -> Registry {
    let mut r = Registry::empty();
    r.register_raw("cpu", |_, _, _| Ok(Block::empty()));
    r.register_raw("gpu", |_, _, _| Ok(Block::empty()));
    r.mark_gpu("gpu");
    r
}

impl Sim {
    fn hello(&self, rank: u32, threads: u32, gpu: &str) -> Hello {
        Hello {
            rank,
            threads,
            registry: self.reg.digest(),
            kernels: self.reg.len() as u32,
            gpu: gpu.to_owned(),
            ..Default::default()
        }
    }

    fn at(&mut self, secs: u64) {
        self.now = Duration::from_secs(secs);
    }

    fn flush(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        self.core.flush(&mut out);
        out
    }

    /// Handles one event and returns what was decided.
    fn step(&mut self, event: Event) -> Vec<Decision> {
        self.core.handle(self.now, event);
        self.flush()
    }

    fn request_from(&mut self, client: Option<u32>, req: WireRequest) -> (ReplyTo, Vec<Decision>) {
        let reply = ReplyTo(self.next_reply);
        self.next_reply += 1;
        (reply, self.step(Event::Request { client, req, reply }))
    }

    fn request(&mut self, req: WireRequest) -> (ReplyTo, Vec<Decision>) {
        self.request_from(None, req)
    }

    fn try_submit_from(
        &mut self,
        client: Option<u32>,
        tasks: Vec<Task>,
        outputs: &[&str],
    ) -> (Result<Vec<TaskId>>, Vec<Decision>) {
        let outputs = outputs.iter().map(|n| k(n)).collect();
        let (to, mut d) = self.request_from(client, WireRequest::Submit { tasks, outputs });
        let i = d
            .iter()
            .position(|x| matches!(x, Decision::Reply { to: t, .. } if *t == to))
            .expect("a submission is answered at once");
        let Decision::Reply { answer: WireReply::Submit(result), .. } = d.remove(i) else {
            panic!("a submission is answered with a Submit reply")
        };
        (result, d)
    }

    fn try_submit(&mut self, tasks: Vec<Task>, outputs: &[&str]) -> (Result<Vec<TaskId>>, Vec<Decision>) {
        self.try_submit_from(None, tasks, outputs)
    }

    /// Submits a valid graph: the output ids and the other decisions.
    fn submit(&mut self, tasks: Vec<Task>, outputs: &[&str]) -> (Vec<TaskId>, Vec<Decision>) {
        let (r, d) = self.try_submit(tasks, outputs);
        (r.expect("the graph is valid"), d)
    }

    fn done(&mut self, id: TaskId, nbytes: u64) -> Vec<Decision> {
        self.step(Event::Done { id, nbytes, micros: 1000 })
    }

    fn release(&mut self, ids: &[TaskId]) -> Vec<Decision> {
        self.request(WireRequest::Release { ids: ids.to_vec() }).1
    }

    fn wait(&mut self, ids: &[TaskId]) -> (ReplyTo, Vec<Decision>) {
        self.request(WireRequest::Wait { ids: ids.to_vec() })
    }

    /// The id of the task computing `name` (outputs and intermediates alike).
    fn id(&self, name: &str) -> TaskId {
        let key = k(name);
        *self.core.tasks.iter().find(|(_, r)| r.key == key).unwrap_or_else(|| panic!("no task {name}")).0
    }

    fn has(&self, name: &str) -> bool {
        let key = k(name);
        self.core.tasks.values().any(|r| r.key == key)
    }

    /// Reports every task in `d`'s Run decisions done (`nbytes` each), in
    /// order, and those sent meanwhile, until none is left: the ranks and
    /// ids in the order they were sent.
    fn run_all(&mut self, d: Vec<Decision>, nbytes: u64) -> Vec<(u32, TaskId)> {
        let mut sent = all_runs(&d);
        let mut i = 0;
        while i < sent.len() {
            let (_, id) = sent[i];
            i += 1;
            let more = self.done(id, nbytes);
            sent.extend(all_runs(&more));
        }
        sent
    }
}

fn k(name: &str) -> Key {
    Key::new(name, [0])
}

/// A root task of kernel "sum".
fn root(name: &str) -> Task {
    Task::new(k(name), "sum").param(&0.0f64)
}

/// A "sum" of the named inputs.
fn node(name: &str, inputs: &[&str]) -> Task {
    root(name).inputs(inputs.iter().map(|n| k(n)))
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Every task sent in `d`, with its rank, in order.
fn all_runs(d: &[Decision]) -> Vec<(u32, TaskId)> {
    d.iter()
        .filter_map(|x| match x {
            Decision::Run { rank, tasks } => Some(tasks.iter().map(move |t| (*rank, t.id))),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The tasks sent to `rank` in `d`.
fn runs(d: &[Decision], rank: u32) -> Vec<TaskId> {
    all_runs(d).into_iter().filter(|&(r, _)| r == rank).map(|(_, id)| id).collect()
}

/// The Run decisions for `rank` in `d`.
fn run_decisions(d: &[Decision], rank: u32) -> usize {
    d.iter().filter(|x| matches!(x, Decision::Run { rank: r, .. } if *r == rank)).count()
}

fn released(d: &[Decision], rank: u32) -> Vec<TaskId> {
    d.iter()
        .filter_map(|x| match x {
            Decision::Release { rank: r, ids } if *r == rank => Some(ids.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn any_release(d: &[Decision]) -> bool {
    d.iter().any(|x| matches!(x, Decision::Release { .. }))
}

fn cancelled(d: &[Decision], rank: u32) -> Vec<TaskId> {
    d.iter()
        .filter_map(|x| match x {
            Decision::Cancel { rank: r, ids } if *r == rank => Some(ids.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The (rank, failed) of each Stop in `d`.
fn stops(d: &[Decision]) -> Vec<(u32, bool)> {
    d.iter()
        .filter_map(|x| match x {
            Decision::Stop { rank, failed, .. } => Some((*rank, *failed)),
            _ => None,
        })
        .collect()
}

fn reply(d: &[Decision], to: ReplyTo) -> Option<&WireReply> {
    d.iter().find_map(|x| match x {
        Decision::Reply { to: t, answer } if *t == to => Some(answer),
        _ => None,
    })
}

fn wait_reply(d: &[Decision], to: ReplyTo) -> Option<&Result<Vec<Vec<u32>>>> {
    match reply(d, to)? {
        WireReply::Wait(r) => Some(r),
        other => panic!("expected a Wait reply, got {other:?}"),
    }
}

fn sorted(mut v: Vec<TaskId>) -> Vec<TaskId> {
    v.sort();
    v
}

// ---------------------------------------------------------------- placement

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

/// Runs a root of kernel "sum" making `nbytes`, so the kernel's mean output is known.
fn probe(s: &mut Sim, nbytes: u64) {
    let (_, d) = s.submit(vec![root("probe")], &["probe"]);
    let sent = all_runs(&d);
    assert_eq!(sent.len(), 1);
    s.done(sent[0].1, nbytes);
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
    assert_eq!(tasks[1].inputs[0].holders, vec![1], "a is being computed on rank 1");
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

/// Rank 1 holds `a` (8 bytes); `n` tasks reading it are then submitted.
fn backlog(s: &mut Sim, n: usize, pin: Option<u32>) -> (Vec<TaskId>, Vec<Decision>) {
    let (_, d) = s.submit(vec![root("a")], &["a"]);
    assert_eq!(runs(&d, 1), vec![s.id("a")]);
    s.done(s.id("a"), 8);
    let bs = names("b", n);
    let tasks = bs
        .iter()
        .map(|b| {
            let t = node(b, &["a"]);
            match pin {
                Some(r) => t.on_rank(r),
                None => t,
            }
        })
        .collect();
    s.submit(tasks, &strs(&bs))
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

// ---------------------------------------------------------------- batching

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

// ---------------------------------------------------------------- reference counts

#[test]
fn an_intermediate_is_released_after_its_last_dependent() {
    let mut s = cluster(&[(1, 1)]);
    let (_, d) = s.submit(vec![root("a"), node("b", &["a"]), node("c", &["a"])], &["b", "c"]);
    let (a, b, c) = (s.id("a"), s.id("b"), s.id("c"));
    assert_eq!(sorted(runs(&d, 1)), sorted(vec![a, b, c]));
    assert!(!any_release(&s.done(a, 8)));
    assert!(!any_release(&s.done(b, 8)), "c still needs a");
    let d = s.done(c, 8);
    assert_eq!(released(&d, 1), vec![a]);
    assert!(!s.has("a"));
}

#[test]
fn releasing_an_output_releases_its_block() {
    let mut s = cluster(&[(1, 1)]);
    let (ids, _) = s.submit(vec![root("a")], &["a"]);
    s.done(ids[0], 8);
    let d = s.release(&ids);
    assert_eq!(released(&d, 1), ids);
    assert!(s.core.tasks.is_empty());
    assert_eq!(s.core.mem_bytes, 0);
}

#[test]
fn a_replicated_block_is_released_everywhere() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (ids, _) = s.submit(vec![root("a")], &["a"]);
    s.done(ids[0], 8);
    s.step(Event::Replica { rank: 2, id: ids[0] });
    let d = s.release(&ids);
    assert_eq!(released(&d, 1), ids);
    assert_eq!(released(&d, 2), ids);
}

#[test]
fn releasing_an_output_still_needed_releases_nothing_yet() {
    let mut s = cluster(&[(1, 1)]);
    let (ids, d) = s.submit(vec![root("a"), node("b", &["a"])], &["a", "b"]);
    let (a, b) = (ids[0], ids[1]);
    assert_eq!(runs(&d, 1), vec![a, b]);
    s.done(a, 8);
    let d = s.release(&[a]);
    assert!(!any_release(&d), "b still needs a: {d:?}");
    let d = s.done(b, 8);
    assert_eq!(released(&d, 1), vec![a]);
}

#[test]
fn an_unneeded_queued_task_is_dropped() {
    let mut s = cluster(&[(1, 1)]);
    let (ids, d) = s.submit(vec![root("r0"), root("r1")], &["r0", "r1"]);
    assert_eq!(runs(&d, 1), vec![ids[0]]);
    let d = s.release(&[ids[1]]);
    assert!(d.is_empty(), "a queued task is dropped silently: {d:?}");
    assert!(!s.has("r1"));
    assert!(s.core.unbound.is_empty());
    assert_eq!(s.core.queued, 0);
    let d = s.done(ids[0], 8);
    assert!(all_runs(&d).is_empty(), "r1 is never run");
}

#[test]
fn an_unneeded_running_task_is_released_when_done() {
    let mut s = cluster(&[(1, 1)]);
    let (ids, d) = s.submit(vec![root("a")], &["a"]);
    assert_eq!(runs(&d, 1), ids);
    let d = s.release(&ids);
    assert!(d.is_empty(), "it runs on: {d:?}");
    assert!(matches!(s.core.tasks[&ids[0]].state, State::Cancelled(0)));
    let d = s.done(ids[0], 8);
    assert_eq!(released(&d, 1), ids);
    assert!(s.core.tasks.is_empty());
    assert_eq!(s.core.mem_bytes, 0);
}

#[test]
fn a_released_task_whose_dependents_are_gone_frees_its_input() {
    let mut s = cluster(&[(1, 1)]);
    let (ids, _) = s.submit(vec![root("a"), node("b", &["a"])], &["b"]);
    let a = s.id("a");
    s.done(a, 8);
    // b is running (sent ahead); nobody wants it any more.
    s.release(&ids);
    let d = s.done(ids[0], 8);
    assert_eq!(sorted(released(&d, 1)), sorted(vec![a, ids[0]]));
    assert!(s.core.tasks.is_empty());
}

// ---------------------------------------------------------------- submission

/// A cluster holding `held` (computed on rank 1) before an invalid submission.
fn with_one_output() -> Sim {
    let mut s = cluster(&[(1, 1)]);
    let (ids, _) = s.submit(vec![root("held")], &["held"]);
    s.done(ids[0], 8);
    s
}

fn assert_refused(s: &mut Sim, tasks: Vec<Task>, outputs: &[&str]) -> Error {
    let before = s.core.tasks.len();
    let keys = s.core.keys.len();
    let (r, d) = s.try_submit(tasks, outputs);
    assert!(d.is_empty(), "nothing but the reply: {d:?}");
    assert_eq!(s.core.tasks.len(), before, "nothing added");
    assert_eq!(s.core.keys.len(), keys);
    r.expect_err("the graph is refused")
}

#[test]
fn duplicate_key_is_refused() {
    let mut s = with_one_output();
    let e = assert_refused(&mut s, vec![root("x"), node("x", &["held"]), node("y", &["x"])], &["y"]);
    assert!(matches!(e, Error::DuplicateKey { key } if key == k("x")));
}

#[test]
fn unknown_kernel_is_refused() {
    let mut s = with_one_output();
    let e = assert_refused(&mut s, vec![root("x"), Task::new(k("y"), "nope").inputs([k("x")])], &["y"]);
    match e {
        Error::UnknownKernel { key, kernel, known } => {
            assert_eq!((key, kernel.as_str()), (k("y"), "nope"));
            assert!(known.contains("sum"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_input_is_refused() {
    let mut s = with_one_output();
    let e = assert_refused(&mut s, vec![root("x"), node("y", &["x", "ghost"])], &["y"]);
    assert!(matches!(e, Error::MissingInput { key, input } if key == k("y") && input == k("ghost")));
}

#[test]
fn a_cycle_is_refused_naming_its_path() {
    let mut s = with_one_output();
    let e = assert_refused(&mut s, vec![node("a", &["c"]), node("b", &["a"]), node("c", &["b", "held"])], &["c"]);
    match e {
        Error::Cycle { path, .. } => assert_eq!(path, "c[0] -> b[0] -> a[0] -> c[0]"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_output_is_refused() {
    let mut s = with_one_output();
    let e = assert_refused(&mut s, vec![root("x")], &["x", "nowhere"]);
    assert!(matches!(e, Error::UnknownOutput { key } if key == k("nowhere")));
}

#[test]
fn tasks_not_needed_for_the_outputs_are_culled() {
    let mut s = cluster(&[(1, 4)]);
    let tasks = vec![root("a"), root("unused"), node("b", &["a"]), node("dead", &["unused"])];
    let (_, d) = s.submit(tasks, &["b"]);
    assert_eq!(s.core.tasks.len(), 2);
    assert!(!s.has("unused") && !s.has("dead"));
    let all = s.run_all(d, 8);
    assert_eq!(all.len(), 2);
}

#[test]
fn a_reduction_tree_runs_depth_first() {
    let mut s = cluster(&[(1, 1)]);
    let tasks = vec![
        root("l0"),
        root("l1"),
        root("l2"),
        root("l3"),
        node("p0", &["l0", "l1"]),
        node("p1", &["l2", "l3"]),
        node("top", &["p0", "p1"]),
    ];
    let (_, d) = s.submit(tasks, &["top"]);
    let expected: Vec<TaskId> = ["l0", "l1", "p0", "l2", "l3", "p1", "top"].iter().map(|n| s.id(n)).collect();
    let order: Vec<TaskId> = s.run_all(d, 8).into_iter().map(|(_, id)| id).collect();
    assert_eq!(order, expected);
}

#[test]
fn earlier_submissions_go_first() {
    let mut s = cluster(&[(1, 1)]);
    let (ids1, d) = s.submit(vec![root("a0"), root("a1")], &["a0", "a1"]);
    assert_eq!(runs(&d, 1), vec![ids1[0]]);
    let (ids2, d) = s.submit(vec![root("b0")], &["b0"]);
    assert!(all_runs(&d).is_empty());
    let d = s.done(ids1[0], 8);
    assert_eq!(runs(&d, 1), vec![ids1[1]]);
    let d = s.done(ids1[1], 8);
    assert_eq!(runs(&d, 1), ids2);
}

#[test]
fn a_later_graph_uses_an_earlier_output_by_key() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (a, _) = s.submit(vec![root("a").on_rank(2)], &["a"]);
    s.done(a[0], 64);
    let (b, d) = s.submit(vec![node("b", &["a"])], &["b"]);
    assert_eq!(s.core.tasks.len(), 2, "a is not recomputed");
    let Some(Decision::Run { rank: 2, tasks }) = d.iter().find(|x| matches!(x, Decision::Run { .. })) else {
        panic!("b goes where a is: {d:?}")
    };
    assert_eq!(tasks[0].id, b[0]);
    assert_eq!(tasks[0].inputs[0].id, a[0]);
    assert_eq!(tasks[0].inputs[0].holders, vec![2]);
    assert_eq!(tasks[0].inputs[0].nbytes, 64);
}

#[test]
fn a_later_graph_naming_an_existing_key_reuses_it() {
    let mut s = cluster(&[(1, 1)]);
    let (a, _) = s.submit(vec![root("a")], &["a"]);
    s.done(a[0], 8);
    let (again, d) = s.submit(vec![root("a")], &["a"]);
    assert_eq!(again, a);
    assert!(all_runs(&d).is_empty());
}

#[test]
fn wait_answers_at_once_for_computed_tasks() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (ids, _) = s.submit(vec![root("a"), root("b")], &["a", "b"]);
    s.done(ids[0], 8);
    s.done(ids[1], 8);
    s.step(Event::Replica { rank: 1, id: ids[1] });
    let (to, d) = s.wait(&ids);
    assert_eq!(wait_reply(&d, to).unwrap().as_ref().unwrap(), &vec![vec![1], vec![2, 1]]);
}

#[test]
fn wait_answers_once_pending_tasks_are_computed() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (ids, _) = s.submit(vec![root("a"), root("b")], &["a", "b"]);
    s.done(ids[0], 8);
    let (to, d) = s.wait(&ids);
    assert!(reply(&d, to).is_none(), "b is pending");
    let d = s.done(ids[1], 8);
    assert_eq!(wait_reply(&d, to).unwrap().as_ref().unwrap(), &vec![vec![1], vec![2]]);
}

#[test]
fn wait_on_a_released_task_is_an_error() {
    let mut s = cluster(&[(1, 1)]);
    let (ids, _) = s.submit(vec![root("a")], &["a"]);
    s.done(ids[0], 8);
    s.release(&ids);
    let (to, d) = s.wait(&ids);
    assert!(matches!(wait_reply(&d, to), Some(Err(Error::Lost { .. }))));
}

#[test]
fn wait_on_a_task_released_while_running_is_answered() {
    let mut s = cluster(&[(1, 1)]);
    let (ids, _) = s.submit(vec![root("a")], &["a"]);
    let (to, _) = s.wait(&ids);
    let mut d = s.release(&ids);
    d.extend(s.done(ids[0], 8));
    assert!(matches!(wait_reply(&d, to), Some(Err(Error::Lost { .. }))), "{d:?}");
}

// ---------------------------------------------------------------- failure

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
    let d = s.step(Event::Failed { id: a, error: "boom".into() });
    match wait_reply(&d, wb) {
        Some(Err(Error::TaskFailed { key, kernel, rank, cause })) => {
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
    let d = s.step(Event::Failed { id: a, error: "boom".into() });
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

// ---------------------------------------------------------------- membership

fn elastic(workers: &[(u32, u32)]) -> Sim {
    Setup::new(workers).elastic().build()
}

#[test]
fn a_worker_joining_later_gets_tasks() {
    let mut s = elastic(&[(1, 1)]);
    let rs = names("r", 3);
    let (_, d) = s.submit(rs.iter().map(|n| root(n)).collect(), &strs(&rs));
    assert_eq!(runs(&d, 1).len(), 1);
    let hello = s.hello(2, 1, "");
    let d = s.step(Event::Hello(hello));
    assert_eq!(runs(&d, 2).len(), 1);
    assert_eq!(s.core.worker_infos().iter().map(|w| w.rank).collect::<Vec<_>>(), vec![1, 2]);
}

#[test]
fn a_registry_mismatch_is_refused() {
    let mut s = elastic(&[(1, 1)]);
    let mut hello = s.hello(3, 4, "");
    hello.registry ^= 1;
    let d = s.step(Event::Hello(hello));
    assert_eq!(stops(&d), vec![(3, true)]);
    assert_eq!(s.core.workers.len(), 1);
    assert!(s.core.worker_infos().iter().all(|w| w.rank != 3));
    let (_, d) = s.submit(vec![root("a"), root("b")], &["a", "b"]);
    assert!(runs(&d, 3).is_empty());
}

#[test]
fn a_hello_after_start_up_is_ignored_when_not_elastic() {
    let mut s = cluster(&[(1, 1)]);
    let hello = s.hello(2, 1, "");
    let d = s.step(Event::Hello(hello));
    assert!(d.is_empty());
    assert_eq!(s.core.workers.len(), 1);
}

#[test]
fn a_draining_worker_gets_no_new_task_and_its_queue_moves() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (a, _) = s.submit(vec![root("a")], &["a"]);
    s.done(a[0], 8);
    // s keeps rank 2 busy, so it cannot steal what queues on rank 1.
    let (sl, d) = s.submit(vec![Task::new(k("s"), "sleep").param(&1u64).on_rank(2)], &["s"]);
    assert_eq!(runs(&d, 2), sl);
    let (bs, d) = backlog_on_a(&mut s, 3);
    assert_eq!(runs(&d, 1), vec![bs[0]]);
    assert_eq!(s.core.workers[0].queue.len(), 2);
    let d = s.step(Event::Drain { rank: 1 });
    assert!(all_runs(&d).is_empty(), "{d:?}");
    assert!(stops(&d).is_empty(), "b0 still runs there");
    assert!(s.core.workers[0].queue.is_empty());
    assert!(matches!(s.core.tasks[&bs[1]].state, State::Queued(None)));
    assert!(s.core.worker_infos().iter().all(|w| w.rank != 1));
    let d = s.done(sl[0], 8);
    assert_eq!(runs(&d, 2), vec![bs[1]]);
    let d = s.done(bs[0], 8);
    assert!(runs(&d, 1).is_empty(), "b2 is not given to the draining worker");
}

/// Submits `n` tasks reading the existing output `a`.
fn backlog_on_a(s: &mut Sim, n: usize) -> (Vec<TaskId>, Vec<Decision>) {
    let bs = names("b", n);
    s.submit(bs.iter().map(|b| node(b, &["a"])).collect(), &strs(&bs))
}

#[test]
fn a_draining_worker_hands_its_blocks_off_then_stops() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (ids, _) = s.submit(vec![root("a"), root("b")], &["a", "b"]);
    s.done(ids[0], 8);
    s.done(ids[1], 8);
    // Rank 1 holds a alone; b is on rank 2.
    let d = s.step(Event::Drain { rank: 1 });
    let acquires: Vec<_> = d
        .iter()
        .filter_map(|x| match x {
            Decision::Acquire { rank, blocks } => Some((*rank, blocks)),
            _ => None,
        })
        .collect();
    assert_eq!(acquires.len(), 1, "{d:?}");
    assert_eq!(acquires[0].0, 2);
    assert_eq!(acquires[0].1.len(), 1);
    assert_eq!((acquires[0].1[0].id, &acquires[0].1[0].holders, acquires[0].1[0].nbytes), (ids[0], &vec![1], 8));
    assert!(stops(&d).is_empty(), "not before the copy exists");
    let d = s.step(Event::Replica { rank: 2, id: ids[0] });
    assert_eq!(stops(&d), vec![(1, false)]);
    s.step(Event::Bye { rank: 1 });
    let (to, d) = s.wait(&ids);
    assert_eq!(wait_reply(&d, to).unwrap().as_ref().unwrap(), &vec![vec![2], vec![2]]);
}

#[test]
fn a_draining_worker_waits_for_its_running_tasks() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (ids, d) = s.submit(vec![root("a")], &["a"]);
    assert_eq!(runs(&d, 1), ids);
    let d = s.step(Event::Drain { rank: 1 });
    assert!(stops(&d).is_empty());
    let d = s.done(ids[0], 8);
    assert!(d.iter().any(|x| matches!(x, Decision::Acquire { rank: 2, .. })), "{d:?}");
    let d = s.step(Event::Replica { rank: 2, id: ids[0] });
    assert_eq!(stops(&d), vec![(1, false)]);
}

#[test]
fn a_draining_worker_whose_last_task_was_released_stops() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (ids, d) = s.submit(vec![root("a")], &["a"]);
    assert_eq!(runs(&d, 1), ids);
    s.step(Event::Drain { rank: 1 });
    s.release(&ids);
    let d = s.done(ids[0], 8);
    assert_eq!(released(&d, 1), ids);
    assert_eq!(stops(&d), vec![(1, false)], "it runs nothing and holds nothing: {d:?}");
}

#[test]
fn retire_is_answered_once_the_worker_left() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (to, d) = s.request(WireRequest::Retire { ranks: vec![2] });
    assert_eq!(stops(&d), vec![(2, false)], "it holds nothing: stopped at once");
    assert!(reply(&d, to).is_none());
    let d = s.step(Event::Bye { rank: 2 });
    assert!(matches!(reply(&d, to), Some(WireReply::Retire(Ok(r))) if r == &vec![2]), "{d:?}");
    assert_eq!(s.core.live_ranks().into_iter().collect::<Vec<_>>(), vec![1]);
}

#[test]
fn retiring_an_unknown_rank_is_an_error() {
    let mut s = elastic(&[(1, 1)]);
    let (to, d) = s.request(WireRequest::Retire { ranks: vec![1, 9] });
    assert!(matches!(reply(&d, to), Some(WireReply::Retire(Err(Error::UnknownWorker { rank: 9 })))), "{d:?}");
    assert!(stops(&d).is_empty(), "rank 1 is not retired either");
    assert!(!s.core.workers[0].draining);
}

#[test]
fn the_workers_answer_lists_open_workers() {
    let mut s = elastic(&[(2, 3), (1, 1)]);
    let (to, d) = s.request(WireRequest::Workers);
    let Some(WireReply::Workers(infos)) = reply(&d, to) else { panic!("{d:?}") };
    assert_eq!(infos.iter().map(|w| (w.rank, w.threads)).collect::<Vec<_>>(), vec![(1, 1), (2, 3)]);
}

// ---------------------------------------------------------------- recovery

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
    assert_eq!(tasks[0].inputs[0].holders, vec![2]);
    let (to, _) = s.wait(&b);
    let d = s.done(b[0], 8);
    assert_eq!(wait_reply(&d, to).unwrap().as_ref().unwrap(), &vec![vec![2]]);
}

#[test]
fn a_lost_block_whose_inputs_were_released_fails() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (b, d) = s.submit(vec![root("a"), node("b", &["a"])], &["b"]);
    let a = s.id("a");
    assert_eq!(runs(&d, 1), vec![a, b[0]]);
    s.done(a, 8);
    let d = s.done(b[0], 8);
    assert_eq!(released(&d, 1), vec![a]);
    let d = s.step(Event::PeerLost { rank: 1, reason: "reset".into() });
    assert!(all_runs(&d).is_empty());
    let (to, d) = s.wait(&b);
    match wait_reply(&d, to) {
        Some(Err(Error::TaskFailed { key, rank: 1, cause, .. })) => {
            assert_eq!(key, &k("b"));
            assert!(cause.contains("worker rank 1") && cause.contains("inputs were released"), "{cause}");
        }
        other => panic!("{other:?}"),
    }
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

// ---------------------------------------------------------------- liveness

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

// ---------------------------------------------------------------- state and events

#[test]
fn the_state_counts_tasks_blocks_and_bytes() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (ids, _) = s.submit(vec![root("a"), root("b"), root("c")], &["a", "b", "c"]);
    let (to, d) = s.request(WireRequest::State);
    let Some(WireReply::State(st)) = reply(&d, to) else { panic!("{d:?}") };
    assert_eq!((st.tasks, st.in_memory, st.bytes, st.queued), (3, 0, 0, 1), "c waits for a thread");
    assert_eq!(st.in_flight, vec![(1, 1), (2, 1)]);
    s.done(ids[0], 100);
    s.done(ids[1], 300);
    let (to, d) = s.request(WireRequest::State);
    let Some(WireReply::State(st)) = reply(&d, to) else { panic!("{d:?}") };
    assert_eq!((st.tasks, st.in_memory, st.bytes, st.peak_bytes, st.completed), (3, 2, 400, 400, 2));
    s.release(&ids[..1]);
    let (to, d) = s.request(WireRequest::State);
    let Some(WireReply::State(st)) = reply(&d, to) else { panic!("{d:?}") };
    assert_eq!((st.tasks, st.in_memory, st.bytes, st.peak_bytes), (2, 1, 300, 400));
    let in_flight: u32 = st.in_flight.iter().map(|&(_, n)| n).sum();
    assert_eq!(in_flight, 1, "c runs now");
}

fn events_of(rank: u32) -> Box<WorkerEvents> {
    Box::new(WorkerEvents { rank, ..Default::default() })
}

/// Asks for events: the reply token and the collection's request number.
fn collect(s: &mut Sim) -> (ReplyTo, u64, Vec<Decision>) {
    let (to, d) = s.request(WireRequest::Events { clear: true });
    let mut asked: Vec<(u32, u64, bool)> = d
        .iter()
        .filter_map(|x| match x {
            Decision::CollectEvents { rank, req, clear } => Some((*rank, *req, *clear)),
            _ => None,
        })
        .collect();
    asked.sort();
    let req = asked[0].1;
    assert_eq!(asked, vec![(1, req, true), (2, req, true)]);
    (to, req, d)
}

#[test]
fn events_are_answered_once_every_worker_answered() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (to, req, d) = collect(&mut s);
    assert!(reply(&d, to).is_none());
    let d = s.step(Event::Events { rank: 2, req, events: events_of(2) });
    assert!(reply(&d, to).is_none(), "rank 1 has not answered");
    let d = s.step(Event::Events { rank: 1, req, events: events_of(1) });
    let Some(WireReply::Events(log)) = reply(&d, to) else { panic!("{d:?}") };
    assert_eq!(log.workers.iter().map(|w| w.rank).collect::<Vec<_>>(), vec![1, 2]);
    assert!(log.kernels.iter().any(|k| k == "sum"));
}

#[test]
fn events_are_answered_when_a_worker_leaves_without_answering() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (to, req, _) = collect(&mut s);
    s.step(Event::Events { rank: 1, req, events: events_of(1) });
    let d = s.step(Event::PeerLost { rank: 2, reason: "reset".into() });
    let Some(WireReply::Events(log)) = reply(&d, to) else { panic!("{d:?}") };
    assert_eq!(log.workers.iter().map(|w| w.rank).collect::<Vec<_>>(), vec![1]);
}

#[test]
fn events_with_no_worker_are_answered_at_once() {
    let mut s = Setup::new(&[]).elastic().build();
    let (to, d) = s.request(WireRequest::Events { clear: false });
    assert!(matches!(reply(&d, to), Some(WireReply::Events(log)) if log.workers.is_empty()));
}

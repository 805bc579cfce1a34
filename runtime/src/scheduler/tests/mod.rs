//! The core's decisions on small hand-built states: one event in, the
//! decisions out (what a worker or a client would be told). One file per
//! concern of the core; the helpers that build states and read decisions
//! are here.

mod membership;
mod placement;
mod recovery;
mod refcounts;
mod status;
mod submit;

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
            allowed_failures: SchedulerConfig::ALLOWED_FAILURES,
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

fn elastic(workers: &[(u32, u32)]) -> Sim {
    Setup::new(workers).elastic().build()
}

/// Runs a root of kernel "sum" making `nbytes`, so the kernel's mean output is known.
fn probe(s: &mut Sim, nbytes: u64) {
    let (_, d) = s.submit(vec![root("probe")], &["probe"]);
    let sent = all_runs(&d);
    assert_eq!(sent.len(), 1);
    s.done(sent[0].1, nbytes);
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

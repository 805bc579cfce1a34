//! A deterministic simulator: the real [`Core`] driving simulated workers on
//! virtual time (what `tessera bench simulate` runs).
//!
//! Each simulated worker has `threads` compute threads. As a real worker
//! does, it starts fetching a task's inputs held by peers the moment the
//! task arrives (`latency + bytes / bandwidth` each, one fetch per block),
//! awaits the inputs it computes itself, and runs the task once all are in
//! its store, for its duration (`task_us` times a factor in `[0.5, 1.5)`
//! drawn from the seed). Messages between the scheduler and a worker take
//! `latency`. Everything the core
//! decides is carried out as a real cluster would: `Run`, `Release` and
//! `Cancel` batches arrive at workers, `Done` and `Replica` at the core.
//!
//! The report gives the core's own CPU cost per task (real clock, around
//! its calls only), the simulated makespan against its lower bound (the
//! largest of the total work over all threads, the critical path and the
//! level bounds), and
//! the heap the core's records hold per task. Same seed, same schedule.
//!
//! With [`SimConfig::kills`], workers die during the run (an elastic
//! cluster losing nodes): a dead worker's tasks and blocks are gone, the
//! core hears of it a latency later, and a peer that fetches from it gets
//! nothing and reports the input lost, as real workers do. The run must
//! still compute every output; the recovery tests drive every shape so.
//!
//! ```
//! use tessera_runtime::scheduler::sim::{simulate, Shape, SimConfig};
//! let cfg = SimConfig { workers: 4, threads: 2, tasks: 200, shape: Shape::Tree, ..SimConfig::default() };
//! let r = simulate(&cfg).unwrap();
//! assert_eq!(r.tasks, 199);
//! assert!(r.makespan_s >= r.lower_bound_s);
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashSet;
use serde::Serialize;

mod shapes;

use self::shapes::{build, lower_bounds, registry, SimGraph};
use super::{Core, Decision, Event, Hello, ReplyTo, SchedulerConfig};
use crate::error::Error;
use crate::graph::TaskId;
use crate::protocol::RunTask;
use crate::protocol::{WireReply, WireRequest};

/// Graph shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// Independent tasks, all of them outputs.
    Wide,
    /// Each task depends on the one before.
    Chain,
    /// A binary reduction tree.
    Tree,
    /// Direct TSQR: a QR per row block, a binary tree over the R factors,
    /// then each row block's Q times its part of the tree's Q.
    Tsqr,
    /// A blocked matrix product: block products summed by a binary tree
    /// over the contraction axis (4 blocks deep).
    Matmul,
}

impl std::str::FromStr for Shape {
    type Err = SimError;
    fn from_str(s: &str) -> Result<Shape, SimError> {
        match s {
            "wide" => Ok(Shape::Wide),
            "chain" => Ok(Shape::Chain),
            "tree" => Ok(Shape::Tree),
            "tsqr" => Ok(Shape::Tsqr),
            "matmul" => Ok(Shape::Matmul),
            other => Err(SimError::Flag {
                flag: "--shape",
                reason: format!("`{other}` is not a shape: expected wide, chain, tree, tsqr or matmul"),
            }),
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).map_err(|_| fmt::Error)?;
        f.write_str(s.as_str().unwrap_or("?"))
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub workers: usize,
    pub threads: u32,
    /// About this many tasks (shapes round to whole blocks).
    pub tasks: usize,
    pub shape: Shape,
    /// Mean task duration in microseconds.
    pub task_us: f64,
    /// Bytes per second between two workers.
    pub bandwidth: f64,
    /// One-way message latency in microseconds.
    pub latency_us: f64,
    /// Bytes of each block (R factors of TSQR: a tenth).
    pub block_bytes: u64,
    /// Tasks queued on a worker beyond one per thread (as `--queue-extra`).
    pub queue_extra: u32,
    pub seed: u64,
    /// Runs of the same graph in one process; the core's cost is the
    /// lowest (the first run also faults in the memory its tables grow
    /// into, which later runs find mapped, as a long-lived scheduler does).
    pub runs: usize,
    /// Workers that die during the run (the cluster is then elastic): the
    /// worker finishing a task dies with it, about every `tasks / (kills +
    /// 1)` finished tasks.
    pub kills: usize,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            workers: 10,
            threads: 32,
            tasks: 100_000,
            shape: Shape::Wide,
            task_us: 1000.0,
            bandwidth: 10e9,
            latency_us: 10.0,
            block_bytes: 1 << 20,
            queue_extra: 4,
            seed: 0,
            runs: 1,
            kills: 0,
        }
    }
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A setting is out of range; `flag` names the command-line flag.
    #[error("{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    /// The core refused the graph.
    #[error("the scheduler refused the simulated graph: {0}")]
    Refused(#[source] Error),
    /// Nothing left to happen, yet the graph is not computed: a scheduling bug.
    #[error("the simulation stalled at {at_s:.6} s of virtual time before every output was computed ({records} tasks on record)")]
    Stalled { at_s: f64, records: usize },
}

impl SimConfig {
    /// Checks every setting, naming the flag of the first one out of range.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |flag, reason: &str| Err(SimError::Flag { flag, reason: reason.to_owned() });
        if self.workers == 0 {
            return bad("--workers", "must be at least 1");
        }
        if self.threads == 0 {
            return bad("--threads", "must be at least 1");
        }
        if self.tasks == 0 {
            return bad("--tasks", "must be at least 1");
        }
        if self.runs == 0 {
            return bad("--runs", "must be at least 1");
        }
        if self.kills >= self.workers {
            return bad("--kills", "must leave at least one worker alive (fewer kills than --workers)");
        }
        if self.workers > 1 << 20 {
            return bad("--workers", "at most 1048576");
        }
        if !(self.task_us.is_finite() && self.task_us >= 0.0) {
            return Err(SimError::Flag {
                flag: "--task-us",
                reason: format!("must be 0 or more, got {}", self.task_us),
            });
        }
        if !(self.latency_us.is_finite() && self.latency_us >= 0.0) {
            let reason = format!("must be 0 or more microseconds, got {}", self.latency_us);
            return Err(SimError::Flag { flag: "--latency", reason });
        }
        if !(self.bandwidth.is_finite() && self.bandwidth > 0.0) {
            let reason = format!("must be more than 0 bytes per second, got {}", self.bandwidth);
            return Err(SimError::Flag { flag: "--bandwidth", reason });
        }
        Ok(())
    }
}

/// What a simulation measured.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    pub shape: Shape,
    pub workers: usize,
    pub threads: u32,
    pub tasks: usize,
    pub seed: u64,
    /// The core's CPU time per task (real clock, its calls only), the
    /// lowest of `runs`.
    pub us_per_task: f64,
    /// The same in the first run.
    pub first_us_per_task: f64,
    pub runs: usize,
    /// Of which: validating, culling and ordering the graph.
    pub submit_us_per_task: f64,
    /// Virtual seconds until the last output was computed.
    pub makespan_s: f64,
    /// No schedule can be shorter: the largest of the total work over all
    /// threads, the critical path and the level bounds (see below).
    pub lower_bound_s: f64,
    /// `makespan_s / lower_bound_s`.
    pub makespan_ratio: f64,
    /// The larger of the total work over all threads and the critical path
    /// alone (weaker than `lower_bound_s` for trees wider than the cluster).
    pub work_path_bound_s: f64,
    /// `makespan_s / work_path_bound_s`.
    pub work_path_ratio: f64,
    /// Heap the core's records held per task, counted at the largest
    /// number of records.
    pub scheduler_bytes_per_task: f64,
    /// Inputs fetched from another worker, and their bytes.
    pub transfers: u64,
    pub moved_bytes: u64,
    /// Messages the core sent to workers.
    pub messages: u64,
    /// Events the core handled (completions, copies, requests); the
    /// core's CPU time per event is `us_per_task * tasks / events`.
    pub events: u64,
    pub us_per_event: f64,
    /// Wall-clock seconds the whole simulation took.
    pub wall_s: f64,
}

/// What happens next in the simulated cluster.
enum Happening {
    /// A message from the core reaches worker `w`.
    ToWorker(usize, Decision),
    /// Worker `w` finished task `id`.
    Finished { w: usize, id: TaskId, n: usize, micros: u64 },
    /// Block `id` fetched from peer `from` reached worker `w`'s store
    /// (unless `from` died meanwhile).
    Fetched { w: usize, id: TaskId, from: usize },
    /// A worker's message reaches the core.
    ToCore(Event),
}

struct SimWorker {
    free: u32,
    /// Tasks received and not started, in arrival order.
    pending: Vec<RunTask>,
    store: FxHashSet<TaskId>,
    /// Blocks being fetched from peers.
    incoming: FxHashSet<TaskId>,
    dead: bool,
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    g: &'a SimGraph,
    workers: Vec<SimWorker>,
    /// What happens next: (time, sequence, slot in `happenings`), so that
    /// the heap moves 24-byte entries and the simulator's own memory
    /// traffic stays small next to the core's.
    queue: BinaryHeap<Reverse<(u64, u64, u32)>>,
    happenings: Vec<Option<Happening>>,
    free_slots: Vec<u32>,
    seq: u64,
    latency_ns: u64,
    transfers: u64,
    moved_bytes: u64,
    messages: u64,
}

impl Sim<'_> {
    fn at(&mut self, at: u64, what: Happening) {
        self.seq += 1;
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.happenings[s as usize] = Some(what);
                s
            }
            None => {
                self.happenings.push(Some(what));
                self.happenings.len() as u32 - 1
            }
        };
        self.queue.push(Reverse((at, self.seq, slot)));
    }

    /// The next happening and its time.
    fn next(&mut self) -> Option<(u64, Happening)> {
        let Reverse((at, _, slot)) = self.queue.pop()?;
        self.free_slots.push(slot);
        Some((at, self.happenings[slot as usize].take().expect("a queued happening")))
    }

    /// Worker `w`'s rank (the core's name for it).
    fn rank(w: usize) -> u32 {
        w as u32 + 1
    }

    /// Starts fetching the inputs of worker `w`'s pending tasks that a
    /// peer holds and `w` neither holds nor is fetching (from `from` on in
    /// `pending`: the tasks that just arrived). A task whose input only
    /// dead peers held is given back: the core hears that the input was
    /// lost, as it would from a real worker whose fetch failed.
    fn fetch_inputs(&mut self, w: usize, now: u64, from: usize) {
        let mut t = from;
        while t < self.workers[w].pending.len() {
            let mut lost = None;
            for k in 0..self.workers[w].pending[t].inputs.len() {
                let worker = &self.workers[w];
                let input = &worker.pending[t].inputs[k];
                let (id, nbytes) = (input.id, input.nbytes);
                if worker.store.contains(&id) || worker.incoming.contains(&id) || input.holders.contains(&Sim::rank(w))
                {
                    continue; // here, on its way, or computed here
                }
                let peer = |r: &u32| self.workers.get((*r as usize).wrapping_sub(1));
                let Some(holder) =
                    input.holders.iter().find(|r| peer(r).is_some_and(|h| !h.dead && h.store.contains(&id)))
                else {
                    if let Some(&dead) = input.holders.iter().find(|r| peer(r).is_some_and(|h| h.dead)) {
                        lost = Some((id, dead));
                        break;
                    }
                    continue; // not yet anywhere
                };
                let holder = *holder as usize - 1;
                self.workers[w].incoming.insert(id);
                self.transfers += 1;
                self.moved_bytes += nbytes;
                let ns = self.latency_ns + (nbytes as f64 / self.cfg.bandwidth * 1e9) as u64;
                self.at(now + ns, Happening::Fetched { w, id, from: holder });
            }
            match lost {
                Some((input, from)) => {
                    let task = self.workers[w].pending.remove(t);
                    let event = Event::InputLost { id: task.id, input, from };
                    self.at(now + self.latency_ns, Happening::ToCore(event));
                }
                None => t += 1,
            }
        }
    }

    /// Worker `w` dies at `now`: its tasks and blocks are gone; the core
    /// hears of it a latency later (after what it sent before).
    fn kill(&mut self, w: usize, now: u64) {
        let worker = &mut self.workers[w];
        worker.dead = true;
        worker.pending.clear();
        worker.store.clear();
        worker.incoming.clear();
        let event = Event::PeerLost { rank: Sim::rank(w), reason: "killed by the simulation".into() };
        self.at(now + self.latency_ns, Happening::ToCore(event));
    }

    /// A fetch of `id` by worker `w` from a peer that died: every pending
    /// task of `w` that needs it is given back to the core.
    fn fetch_failed(&mut self, w: usize, id: TaskId, from: usize, now: u64) {
        self.workers[w].incoming.remove(&id);
        let pending = std::mem::take(&mut self.workers[w].pending);
        let (lost, kept): (Vec<RunTask>, Vec<RunTask>) =
            pending.into_iter().partition(|t| t.inputs.iter().any(|i| i.id == id));
        self.workers[w].pending = kept;
        for task in lost {
            let event = Event::InputLost { id: task.id, input: id, from: Sim::rank(from) };
            self.at(now + self.latency_ns, Happening::ToCore(event));
        }
    }

    /// Starts what worker `w` can start at `now`: tasks whose inputs are all
    /// in its store, in the order they arrived.
    fn start(&mut self, w: usize, now: u64) {
        while self.workers[w].free > 0 {
            let worker = &self.workers[w];
            let runnable = worker.pending.iter().position(|t| t.inputs.iter().all(|i| worker.store.contains(&i.id)));
            let Some(p) = runnable else { return };
            let task = self.workers[w].pending.remove(p);
            let n = task.key.index()[0] as usize;
            let run_ns = self.g.duration_ns[n];
            self.workers[w].free -= 1;
            let what = Happening::Finished { w, id: task.id, n, micros: run_ns / 1000 };
            self.at(now + run_ns, what);
        }
    }

    /// Sends the core's decisions on their way (they arrive after the latency).
    fn dispatch(
        &mut self,
        now: u64,
        decisions: &mut Vec<Decision>,
        done: &mut Option<u64>,
        waiting: ReplyTo,
    ) -> Result<(), SimError> {
        for d in decisions.drain(..) {
            match d {
                Decision::Reply { to, answer: WireReply::Wait(result) } if to == waiting => {
                    result.map_err(SimError::Refused)?;
                    *done = Some(now);
                }
                Decision::Reply { answer: WireReply::Submit(Err(e)), .. } => return Err(SimError::Refused(e)),
                Decision::Reply { .. } => {}
                Decision::Abort { rank, reason } => return Err(SimError::Refused(Error::WorkerLost { rank, reason })),
                d @ (Decision::Run { rank, .. }
                | Decision::Release { rank, .. }
                | Decision::Cancel { rank, .. }
                | Decision::Acquire { rank, .. }
                | Decision::Stop { rank, .. }
                | Decision::CollectEvents { rank, .. }) => {
                    self.messages += 1;
                    self.at(now + self.latency_ns, Happening::ToWorker(rank as usize - 1, d));
                }
            }
        }
        Ok(())
    }
}

/// Runs one simulation (`cfg.runs` times, on one graph).
pub fn simulate(cfg: &SimConfig) -> Result<SimReport, SimError> {
    cfg.validate()?;
    let wall = Instant::now();
    let g = build(cfg);
    let tasks = g.tasks.len();
    let bounds = lower_bounds(&g.inputs, &g.duration_ns, cfg.workers as u64 * cfg.threads as u64);
    let first = run(cfg, &g)?;
    let mut best = first.core_ns;
    let mut best_submit = first.submit_ns;
    for _ in 1..cfg.runs {
        let again = run(cfg, &g)?;
        if again.core_ns < best {
            (best, best_submit) = (again.core_ns, again.submit_ns);
        }
    }
    let makespan_ns = first.makespan_ns;
    let per_task = |ns: u128| ns as f64 / 1e3 / tasks as f64;
    Ok(SimReport {
        shape: cfg.shape,
        workers: cfg.workers,
        threads: cfg.threads,
        tasks,
        seed: cfg.seed,
        us_per_task: per_task(best),
        first_us_per_task: per_task(first.core_ns),
        runs: cfg.runs,
        submit_us_per_task: per_task(best_submit),
        makespan_s: makespan_ns as f64 / 1e9,
        lower_bound_s: bounds.level_ns as f64 / 1e9,
        makespan_ratio: makespan_ns as f64 / bounds.level_ns.max(1) as f64,
        work_path_bound_s: bounds.work_path_ns as f64 / 1e9,
        work_path_ratio: makespan_ns as f64 / bounds.work_path_ns.max(1) as f64,
        scheduler_bytes_per_task: first.scheduler_bytes as f64 / tasks as f64,
        transfers: first.transfers,
        moved_bytes: first.moved_bytes,
        messages: first.messages,
        events: first.events,
        us_per_event: best as f64 / 1e3 / first.events.max(1) as f64,
        wall_s: wall.elapsed().as_secs_f64(),
    })
}

/// What one run of the core over a graph measured.
struct Run {
    core_ns: u128,
    submit_ns: u128,
    makespan_ns: u64,
    scheduler_bytes: usize,
    transfers: u64,
    moved_bytes: u64,
    messages: u64,
    events: u64,
}

fn run(cfg: &SimConfig, g: &SimGraph) -> Result<Run, SimError> {
    let registry = Arc::new(registry());
    let config = SchedulerConfig {
        worker_ranks: (1..=cfg.workers as u32).collect(),
        queue_extra: cfg.queue_extra,
        heartbeat_timeout: None,
        elastic: cfg.kills > 0,
        allowed_failures: SchedulerConfig::ALLOWED_FAILURES,
    };
    let mut core = Core::new(Arc::clone(&registry), config);
    core.set_transport_name("simulated");
    for w in 0..cfg.workers {
        let hello = Hello {
            rank: Sim::rank(w),
            threads: cfg.threads,
            host: format!("node{}", w),
            registry: registry.digest(),
            kernels: registry.len() as u32,
            ..Hello::default()
        };
        core.join(Duration::ZERO, hello).map_err(SimError::Refused)?;
    }
    core.started();
    let mut sim = Sim {
        cfg,
        g,
        workers: (0..cfg.workers)
            .map(|_| SimWorker {
                free: cfg.threads,
                pending: Vec::new(),
                store: FxHashSet::default(),
                incoming: FxHashSet::default(),
                dead: false,
            })
            .collect(),
        queue: BinaryHeap::new(),
        happenings: Vec::new(),
        free_slots: Vec::new(),
        seq: 0,
        latency_ns: (cfg.latency_us * 1e3) as u64,
        transfers: 0,
        moved_bytes: 0,
        messages: 0,
    };

    // Submission, then a wait for every output.
    let mut decisions = Vec::new();
    let t = Instant::now();
    let req = WireRequest::Submit { tasks: g.tasks.clone(), outputs: g.outputs.clone() };
    core.handle(Duration::ZERO, Event::Request { client: None, req, reply: ReplyTo(0) });
    core.flush(&mut decisions);
    let submit_ns = t.elapsed().as_nanos();
    let answer = decisions.iter().position(|d| matches!(d, Decision::Reply { to: ReplyTo(0), .. }));
    let ids = match answer.map(|i| decisions.remove(i)) {
        Some(Decision::Reply { answer: WireReply::Submit(result), .. }) => result.map_err(SimError::Refused)?,
        _ => unreachable!("a submission is answered at once"),
    };
    let scheduler_bytes = core.heap_bytes();
    let t = Instant::now();
    core.handle(Duration::ZERO, Event::Request { client: None, req: WireRequest::Wait { ids }, reply: ReplyTo(1) });
    core.flush(&mut decisions);
    let mut core_ns = submit_ns + t.elapsed().as_nanos();
    let mut done = None;
    sim.dispatch(0, &mut decisions, &mut done, ReplyTo(1))?;

    let mut touched = false;
    let mut now = 0;
    let mut events = 2u64; // the submission and the wait
    let kill_every = (g.tasks.len() / (cfg.kills + 1)).max(1);
    let (mut finished, mut killed) = (0, 0);
    while done.is_none() {
        let Some((at, what)) = sim.next() else {
            return Err(SimError::Stalled { at_s: now as f64 / 1e9, records: core.task_count() });
        };
        now = at;
        match what {
            Happening::ToCore(event) => {
                events += 1;
                let t = Instant::now();
                core.handle(Duration::from_nanos(now), event);
                core_ns += t.elapsed().as_nanos();
                touched = true;
            }
            Happening::ToWorker(w, _) if sim.workers[w].dead => {}
            Happening::ToWorker(w, d) => match d {
                Decision::Run { tasks, .. } => {
                    let from = sim.workers[w].pending.len();
                    sim.workers[w].pending.extend(tasks);
                    sim.fetch_inputs(w, now, from);
                    sim.start(w, now);
                }
                Decision::Release { ids, .. } => {
                    for id in ids {
                        sim.workers[w].store.remove(&id);
                    }
                }
                Decision::Cancel { ids, .. } => sim.workers[w].pending.retain(|t| !ids.contains(&t.id)),
                _ => {}
            },
            Happening::Fetched { w, .. } if sim.workers[w].dead => {}
            Happening::Fetched { w, id, from } if sim.workers[from].dead => {
                sim.fetch_failed(w, id, from, now);
            }
            Happening::Fetched { w, id, .. } => {
                sim.workers[w].incoming.remove(&id);
                sim.workers[w].store.insert(id);
                sim.at(now + sim.latency_ns, Happening::ToCore(Event::Replica { rank: Sim::rank(w), id }));
                sim.start(w, now);
            }
            Happening::Finished { w, .. } if sim.workers[w].dead => {}
            Happening::Finished { w, id, n, micros } => {
                finished += 1;
                // Off the round numbers: a chain recomputed from its start
                // would otherwise lose the same task at every kill.
                if killed < cfg.kills && finished == kill_every * (killed + 1) + 17 * killed + 1 {
                    // Dies as it finishes: the block is lost with it.
                    killed += 1;
                    sim.kill(w, now);
                } else {
                    let arrive = now + sim.latency_ns;
                    sim.workers[w].store.insert(id);
                    sim.workers[w].free += 1;
                    sim.at(arrive, Happening::ToCore(Event::Done { id, nbytes: g.out_bytes[n], micros }));
                    // Ahead-assigned dependents may start now.
                    sim.start(w, now);
                }
            }
        }
        // The core flushes once per instant, as the event loop does per turn.
        let next = sim.queue.peek().map(|Reverse((at, ..))| *at);
        if touched && next != Some(now) {
            let t = Instant::now();
            core.flush(&mut decisions);
            core_ns += t.elapsed().as_nanos();
            touched = false;
            sim.dispatch(now, &mut decisions, &mut done, ReplyTo(1))?;
        }
    }
    Ok(Run {
        core_ns,
        submit_ns,
        makespan_ns: done.unwrap_or(0),
        scheduler_bytes,
        transfers: sim.transfers,
        moved_bytes: sim.moved_bytes,
        messages: sim.messages,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape computes all its outputs while workers die, whatever the
    /// seed (the core's debug checks run too: every task sent names where
    /// each of its inputs is).
    #[test]
    fn every_shape_survives_workers_dying_midway() {
        for shape in [Shape::Wide, Shape::Chain, Shape::Tree, Shape::Tsqr, Shape::Matmul] {
            for seed in 0..12 {
                for kills in 1..=3 {
                    let cfg =
                        SimConfig { workers: 6, threads: 2, tasks: 600, shape, seed, kills, ..SimConfig::default() };
                    let r = simulate(&cfg).unwrap_or_else(|e| panic!("{shape} seed {seed}, {kills} killed: {e}"));
                    assert!(r.makespan_s >= r.lower_bound_s, "{shape} seed {seed}");
                }
            }
        }
    }

    #[test]
    fn killing_every_worker_is_refused() {
        let cfg = SimConfig { workers: 2, kills: 2, ..SimConfig::default() };
        assert!(matches!(simulate(&cfg), Err(SimError::Flag { flag: "--kills", .. })));
    }
}

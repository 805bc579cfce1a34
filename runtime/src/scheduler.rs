//! The scheduler: task states, placement, priorities, reference counts.
//!
//! One thread on rank 0 owns all scheduling state and reacts to messages:
//! graphs and releases from the client, `Done`/`Failed`/`Replica` from the
//! workers. It never touches block bytes, only where blocks live and how big
//! they are.
//!
//! * **Validation.** A submitted graph is checked whole (duplicate keys,
//!   unknown kernels, missing inputs, cycles, unknown outputs) before any of
//!   it is added; tasks not needed for the outputs are culled.
//! * **Priorities.** Tasks are numbered in depth-first post-order from the
//!   outputs (what `dask.order` approximates): finishing one branch of a
//!   reduction before starting the next keeps few blocks alive at once.
//!   Earlier submissions go first.
//! * **Placement.** A ready task with inputs is bound to the worker holding
//!   the most of its input bytes (ties: the least loaded). A task without
//!   inputs stays unbound until some worker has room, so root tasks are not
//!   over-produced. Roots whose kernel makes big blocks (a mean of
//!   `BIG_ROOT_BYTES`, 1 MiB, or more, or not yet known) go only to a worker with
//!   a thread free of other work: the blocks they read or generate are
//!   consumed before more are made (dask's root-task queuing), which keeps
//!   an out-of-core pass near one input block per thread.
//! * **Queues.** Each worker gets up to `threads + queue_extra` tasks at a
//!   time, so it always has the next task at hand; the rest wait here in
//!   priority order. A worker with room and nothing of its own steals the
//!   lowest-priority task queued for the most loaded worker.
//! * **Memory.** Every task counts the dependents that still need it plus the
//!   client's handles; at zero its blocks are released on every worker that
//!   holds a copy, and a task nobody needs any more is cancelled.
//!
//! * **Elastic clusters** (TCP). Workers join (`Hello`) and leave at any
//!   time. A worker that leaves without notice (`PeerLost`): its running and
//!   queued tasks are placed again; a block only it held is recomputed from
//!   its inputs when they are still held (root tasks always are), else the
//!   task fails naming the worker. A worker that drains (`Drain`, or
//!   [`crate::Client::retire_workers`]) gets no new task, finishes what it
//!   runs, has the blocks only it holds copied to other workers
//!   (`Acquire`/`Replica`), and only then is told to stop: no task is lost
//!   or run twice.
//!
//! Messages per task: one `Run` entry out (batched per worker per loop turn)
//! and one `Done` in; a fetched input adds one `Replica`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::error::{Error, Result};
use crate::graph::{Key, Params, Task, TaskId};
use crate::kernel::Registry;
use crate::observe::events::{EventLog, WorkerEvents};
use crate::protocol::{
    ClientRequest, ClusterState, Endpoint, InputLoc, Msg, Reply, RunTask, WireReply, WireRequest, WorkerInfo,
};
use crate::transport::Transport;

/// Tasks a worker may hold beyond its queue limit when they were sent ahead
/// (their inputs are all being computed there; see `assign_ahead`).
const AHEAD: u32 = 32;

/// Bytes per second assumed for a transfer when weighing a steal.
const STEAL_BANDWIDTH: f64 = 1e9;

/// Root tasks whose kernel's mean output is at least this big are not queued
/// ahead on busy workers.
const BIG_ROOT_BYTES: f64 = (1 << 20) as f64;

fn running_mean(mean: &mut f64, x: f64) {
    *mean = if mean.is_nan() { x } else { 0.8 * *mean + 0.2 * x };
}

/// Scheduler settings.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Ranks that will run a worker; the scheduler waits for all of them.
    pub worker_ranks: Vec<u32>,
    /// Tasks queued on a worker beyond one per thread.
    pub queue_extra: u32,
    /// A worker silent for this long is declared lost (None: never).
    pub heartbeat_timeout: Option<Duration>,
    /// Workers join and leave while the scheduler runs (TCP): no roll call,
    /// and a lost worker is removed instead of ending the job.
    pub elastic: bool,
}

/// Why a failed task failed, shared by everything that depends on it.
#[derive(Debug)]
struct Failure {
    key: Key,
    kernel: String,
    rank: u32,
    cause: String,
}

impl Failure {
    fn to_error(&self) -> Error {
        Error::TaskFailed {
            key: self.key.clone(),
            kernel: self.kernel.clone(),
            rank: self.rank,
            cause: self.cause.clone(),
        }
    }
}

#[derive(Debug)]
enum State {
    /// Some inputs are not computed yet.
    Waiting,
    /// Ready, in a scheduler-side queue: bound to a worker or not.
    Queued(Option<usize>),
    /// Sent to a worker.
    Running(usize),
    /// Running, but nobody needs the result any more.
    Cancelled(usize),
    /// Computed; `who_has` holds the workers with a copy.
    Memory,
    Erred(Arc<Failure>),
}

struct TaskRec {
    key: Key,
    /// In `Scheduler::keys` (an output the client holds).
    keyed: bool,
    kernel: u32,
    params: Params,
    inputs: Vec<TaskId>,
    dependents: Vec<TaskId>,
    /// Inputs not yet in memory.
    waiting: u32,
    /// Dependents that still need this task, plus client handles.
    refs: u32,
    prio: u64,
    /// Worker index the task must run on.
    pin: Option<usize>,
    state: State,
    who_has: Vec<usize>,
    nbytes: u64,
    waiters: Vec<u64>,
    /// Times the task was placed again because an input could not be fetched.
    retries: u8,
}

/// Placements a task gets when its inputs cannot be fetched, before it fails.
const MAX_RETRIES: u8 = 5;

struct WorkerRec {
    rank: u32,
    threads: u32,
    host: String,
    name: String,
    /// The worker's GPU (empty: a CPU worker).
    gpu: String,
    limit: u32,
    in_flight: u32,
    queue: BTreeSet<(u64, TaskId)>,
    last_seen: Instant,
    gone: bool,
    /// Takes no new task; leaves once it runs none and holds no block alone.
    draining: bool,
    /// Blocks only this draining worker held, being copied elsewhere.
    handoff: FxHashSet<TaskId>,
    /// Told to stop; gone at its `Bye` (or when its connection drops).
    leaving: bool,
}

impl WorkerRec {
    fn new(rank: u32, threads: u32, host: String, name: String, queue_extra: u32) -> WorkerRec {
        let threads = threads.max(1);
        WorkerRec {
            rank,
            threads,
            host,
            name,
            gpu: String::new(),
            limit: threads + queue_extra,
            in_flight: 0,
            queue: BTreeSet::new(),
            last_seen: Instant::now(),
            gone: false,
            draining: false,
            handoff: FxHashSet::default(),
            leaving: false,
        }
    }

    /// Whether new tasks and handed-off blocks may go here.
    fn open(&self) -> bool {
        !self.gone && !self.draining
    }

    fn has_gpu(&self) -> bool {
        !self.gpu.is_empty()
    }
}

struct Waiter {
    ids: Vec<TaskId>,
    remaining: usize,
    reply: Reply<Result<Vec<Vec<u32>>>>,
}

/// A `retire_workers` call waiting for its workers to leave.
struct Retirement {
    ranks: Vec<u32>,
    reply: Reply<Result<Vec<u32>>>,
}

/// What made the scheduler loop end.
#[derive(Debug)]
pub enum Exit {
    /// The client asked for shutdown and every worker said goodbye.
    Clean,
    /// A worker was lost; the job cannot go on.
    WorkerLost { rank: u32, reason: String },
}

pub(crate) struct Scheduler {
    registry: Arc<Registry>,
    transport: Arc<dyn Transport>,
    config: SchedulerConfig,
    tasks: FxHashMap<TaskId, TaskRec>,
    keys: FxHashMap<Key, TaskId>,
    next_id: u64,
    submissions: u64,
    workers: Vec<WorkerRec>,
    worker_of_rank: FxHashMap<u32, usize>,
    unbound: BTreeSet<(u64, TaskId)>,
    queued: usize,
    outbox: Vec<Vec<RunTask>>,
    releases: Vec<Vec<TaskId>>,
    cancels: Vec<Vec<TaskId>>,
    waiters: FxHashMap<u64, Waiter>,
    next_waiter: u64,
    /// Bytes of computed blocks held now (one copy each), and the most ever.
    mem_bytes: u64,
    peak_bytes: u64,
    /// Running mean of each kernel's duration in microseconds (NaN: unknown).
    durations: Vec<f64>,
    /// Running mean of each kernel's output size in bytes (NaN: unknown).
    out_bytes: Vec<f64>,
    retirements: Vec<Retirement>,
    /// Results each remote client holds (by rank, with multiplicity):
    /// released if the client goes away without releasing them.
    held_by: FxHashMap<u32, FxHashMap<TaskId, u32>>,
    /// Tasks completed and bytes copied between workers, since start.
    completed: u64,
    moved_bytes: u64,
    /// Event collections waiting for workers' answers.
    collections: Vec<Collection>,
    next_collection: u64,
    /// The first error each worker rank logged (`Msg::Log`).
    remote_errors: Vec<(u32, String)>,
}

/// A driver's request for the workers' events, until all have answered.
struct Collection {
    req: u64,
    reply: Reply<EventLog>,
    waiting: FxHashSet<u32>,
    got: Vec<WorkerEvents>,
}

/// Start-up result: the workers that said hello, or why they could not.
pub(crate) type Ready = Result<Vec<WorkerInfo>>;

impl Scheduler {
    pub(crate) fn new(registry: Arc<Registry>, transport: Arc<dyn Transport>, config: SchedulerConfig) -> Scheduler {
        Scheduler {
            durations: vec![f64::NAN; registry.len()],
            out_bytes: vec![f64::NAN; registry.len()],
            registry,
            transport,
            config,
            tasks: FxHashMap::default(),
            keys: FxHashMap::default(),
            next_id: 0,
            submissions: 0,
            workers: Vec::new(),
            worker_of_rank: FxHashMap::default(),
            unbound: BTreeSet::new(),
            queued: 0,
            outbox: Vec::new(),
            releases: Vec::new(),
            cancels: Vec::new(),
            waiters: FxHashMap::default(),
            next_waiter: 0,
            mem_bytes: 0,
            peak_bytes: 0,
            retirements: Vec::new(),
            held_by: FxHashMap::default(),
            completed: 0,
            moved_bytes: 0,
            collections: Vec::new(),
            next_collection: 1,
            remote_errors: Vec::new(),
        }
    }

    /// Runs until the client asks for shutdown (and all workers stopped) or
    /// a worker is lost. `ready` gets the roll call once every worker said
    /// hello (or the first registry mismatch).
    pub(crate) fn run(mut self, inbox: Receiver<Msg>, ready: Sender<Ready>) -> Exit {
        if self.config.elastic {
            let _ = ready.send(Ok(Vec::new()));
            tracing::info!("scheduler ready; workers may join");
            return self.serve(&inbox);
        }
        if let Err(e) = self.roll_call(&inbox) {
            let exit = match &e {
                Error::WorkerLost { rank, reason } => Exit::WorkerLost { rank: *rank, reason: reason.clone() },
                _ => Exit::Clean,
            };
            let _ = ready.send(Err(e));
            self.broadcast_shutdown(true, "start-up failed".into());
            if matches!(exit, Exit::Clean) {
                self.wait_for_byes(&inbox, Duration::from_secs(10));
            }
            return exit;
        }
        let _ = ready.send(Ok(self.worker_infos()));
        tracing::info!(workers = self.workers.len(), "scheduler ready");
        self.serve(&inbox)
    }

    fn serve(&mut self, inbox: &Receiver<Msg>) -> Exit {
        let tick = Duration::from_millis(500);
        loop {
            let first = match inbox.recv_timeout(tick) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Exit::Clean,
            };
            if let Some(m) = first {
                if let Some(exit) = self.handle(m, inbox) {
                    return exit;
                }
                // Drain what is already there before flushing, so replies batch.
                for _ in 0..100_000 {
                    match inbox.try_recv() {
                        Ok(m) => {
                            if let Some(exit) = self.handle(m, inbox) {
                                return exit;
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            self.fill_all();
            self.flush();
            if let Some(exit) = self.check_liveness() {
                return exit;
            }
        }
    }

    fn roll_call(&mut self, inbox: &Receiver<Msg>) -> Result<()> {
        let expected: FxHashSet<u32> = self.config.worker_ranks.iter().copied().collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.workers.len() < expected.len() {
            let msg = inbox.recv_deadline(deadline).map_err(|_| Error::WorkerLost {
                rank: *expected.iter().find(|r| !self.worker_of_rank.contains_key(r)).unwrap_or(&0),
                reason: "did not start within 120 s".into(),
            })?;
            match msg {
                Msg::Hello { rank, threads, host, name, registry, kernels, gpu } => {
                    if registry != self.registry.digest() {
                        return Err(Error::RegistryMismatch {
                            rank,
                            detail: format!("{kernels} kernels there, {} here", self.registry.len()),
                        });
                    }
                    self.add_worker(WorkerRec {
                        gpu,
                        ..WorkerRec::new(rank, threads, host, name, self.config.queue_extra)
                    });
                }
                Msg::Client(ClientRequest::Shutdown { reply, .. }) => {
                    reply.send(());
                    return Err(Error::ShutDown);
                }
                other => tracing::debug!(msg = ?other, "ignored before start-up"),
            }
        }
        self.workers.sort_by_key(|w| w.rank);
        for (i, w) in self.workers.iter().enumerate() {
            self.worker_of_rank.insert(w.rank, i);
        }
        Ok(())
    }

    fn add_worker(&mut self, rec: WorkerRec) {
        self.worker_of_rank.insert(rec.rank, self.workers.len());
        self.workers.push(rec);
        self.outbox.push(Vec::new());
        self.releases.push(Vec::new());
        self.cancels.push(Vec::new());
    }

    /// The workers that take tasks now (draining ones are leaving).
    fn worker_infos(&self) -> Vec<WorkerInfo> {
        let mut infos: Vec<WorkerInfo> = self
            .workers
            .iter()
            .filter(|w| w.open())
            .map(|w| WorkerInfo {
                rank: w.rank,
                threads: w.threads,
                host: w.host.clone(),
                name: w.name.clone(),
                gpu: w.gpu.clone(),
            })
            .collect();
        infos.sort_by_key(|w| w.rank);
        infos
    }

    /// A worker said hello to an elastic cluster.
    fn on_hello(&mut self, rec: WorkerRec, registry: u64, kernels: u32) {
        let rank = rec.rank;
        if registry != self.registry.digest() {
            let err = Error::RegistryMismatch {
                rank,
                detail: format!("{kernels} kernels there, {} here", self.registry.len()),
            };
            tracing::error!(rank, host = %rec.host, "refused a worker: {err}");
            self.transport.send(Endpoint::worker(rank), Msg::Shutdown { failed: true, reason: err.to_string() });
            return;
        }
        if self.worker_of_rank.get(&rank).is_some_and(|&w| !self.workers[w].gone) {
            tracing::warn!(rank, "a second hello from a worker; ignored");
            return;
        }
        tracing::info!(rank, threads = rec.threads, host = %rec.host, name = %rec.name, "worker joined");
        self.add_worker(rec);
    }

    /// Handles one message; returns `Some` when the loop must end.
    fn handle(&mut self, msg: Msg, inbox: &Receiver<Msg>) -> Option<Exit> {
        match msg {
            Msg::Done { id, nbytes, micros } => self.on_done(id, nbytes, micros),
            Msg::Failed { id, error } => self.on_failed(id, error),
            Msg::Replica { id, rank } => {
                self.seen(rank);
                self.handle_replica(rank, id);
            }
            Msg::Heartbeat { rank } => self.seen(rank),
            Msg::Events { req, events } => {
                let rank = events.rank;
                self.on_events(req, Some(*events), rank)
            }
            Msg::Log { rank, line } => self.on_remote_error(rank, line),
            Msg::Client(req) => return self.on_client(req, inbox),
            Msg::Request { id, from, req } => {
                // What a remote client holds is tracked, to release it if
                // the client disappears.
                let req = match req {
                    WireRequest::Submit { tasks, outputs } => {
                        let result = self.submit(tasks, outputs);
                        if let Ok(ids) = &result {
                            let held = self.held_by.entry(from.rank).or_default();
                            for &t in ids {
                                *held.entry(t).or_insert(0) += 1;
                            }
                        }
                        self.transport.send(from, Msg::Reply { id, reply: WireReply::Submit(result) });
                        return None;
                    }
                    WireRequest::Release { ids } => {
                        if let Some(held) = self.held_by.get_mut(&from.rank) {
                            for t in &ids {
                                if let Some(n) = held.get_mut(t) {
                                    *n -= 1;
                                    if *n == 0 {
                                        held.remove(t);
                                    }
                                }
                            }
                        }
                        WireRequest::Release { ids }
                    }
                    other => other,
                };
                let transport = Arc::clone(&self.transport);
                let req = ClientRequest::from_wire(req, move |reply| transport.send(from, Msg::Reply { id, reply }));
                return self.on_client(req, inbox);
            }
            Msg::Hello { rank, threads, host, name, registry, kernels, gpu } if self.config.elastic => {
                let rec = WorkerRec { gpu, ..WorkerRec::new(rank, threads, host, name, self.config.queue_extra) };
                self.on_hello(rec, registry, kernels)
            }
            Msg::Drain { rank } => match self.worker_of_rank.get(&rank) {
                Some(&w) if !self.workers[w].gone => {
                    tracing::info!(rank, "worker asks to leave; draining it");
                    self.start_drain(w);
                }
                _ => tracing::debug!(rank, "drain asked for by an unknown worker"),
            },
            Msg::InputLost { id, input, rank } => self.on_input_lost(id, input, rank),
            Msg::Bye { rank } if self.config.elastic => {
                if let Some(&w) = self.worker_of_rank.get(&rank) {
                    if !self.workers[w].gone {
                        let reason = if self.workers[w].leaving { "retired" } else { "stopped" };
                        self.remove_worker(w, reason.into());
                    }
                }
            }
            Msg::PeerLost { rank, reason } => {
                if let Some(&w) = self.worker_of_rank.get(&rank) {
                    if !self.workers[w].gone {
                        if self.workers[w].leaving {
                            self.remove_worker(w, "retired".into());
                        } else {
                            tracing::warn!(rank, %reason, "worker lost");
                            self.remove_worker(w, reason);
                        }
                    }
                } else if let Some(held) = self.held_by.remove(&rank) {
                    let n: u32 = held.values().sum();
                    tracing::info!(rank, results = n, %reason, "a client left; releasing what it held");
                    for (t, k) in held {
                        for _ in 0..k {
                            self.dec_ref(t);
                        }
                    }
                } else {
                    tracing::debug!(rank, %reason, "a client or a worker that never said hello left");
                }
            }
            other => tracing::warn!(msg = ?other, "scheduler got an unexpected message"),
        }
        None
    }

    fn seen(&mut self, rank: u32) {
        if let Some(&w) = self.worker_of_rank.get(&rank) {
            self.workers[w].last_seen = Instant::now();
        }
    }

    fn handle_replica(&mut self, rank: u32, id: TaskId) {
        let Some(&w) = self.worker_of_rank.get(&rank) else { return };
        match self.tasks.get_mut(&id) {
            Some(rec) if matches!(rec.state, State::Memory) && !self.workers[w].gone => {
                if !rec.who_has.contains(&w) {
                    rec.who_has.push(w);
                    self.moved_bytes += rec.nbytes;
                }
                // A copy on a worker that is leaving too saves nothing.
                if self.workers[w].open() {
                    self.handed_off(id);
                }
            }
            // Released meanwhile: the copy is garbage.
            _ => self.releases[w].push(id),
        }
    }

    fn on_client(&mut self, req: ClientRequest, inbox: &Receiver<Msg>) -> Option<Exit> {
        match req {
            ClientRequest::Submit { tasks, outputs, reply } => {
                reply.send(self.submit(tasks, outputs));
            }
            ClientRequest::Wait { ids, reply } => self.wait(ids, reply),
            ClientRequest::Release { ids } => {
                for id in ids {
                    self.dec_ref(id);
                }
            }
            ClientRequest::Workers { reply } => {
                reply.send(self.worker_infos());
            }
            ClientRequest::Retire { ranks, reply } => self.retire(ranks, reply),
            ClientRequest::State { reply } => {
                let memory = self.tasks.values().filter(|r| matches!(r.state, State::Memory));
                let (in_memory, bytes) = memory.fold((0, 0), |(n, b), r| (n + 1, b + r.nbytes));
                reply.send(ClusterState {
                    tasks: self.tasks.len(),
                    in_memory,
                    bytes,
                    peak_bytes: self.peak_bytes,
                    waiting: self.tasks.values().filter(|r| matches!(r.state, State::Waiting)).count(),
                    queued: self.queued,
                    in_flight: self.workers.iter().filter(|w| !w.gone).map(|w| (w.rank, w.in_flight)).collect(),
                    completed: self.completed,
                    moved_bytes: self.moved_bytes,
                    errors: self.remote_errors.clone(),
                });
            }
            ClientRequest::Events { clear, reply } => self.collect_events(clear, reply),
            ClientRequest::Shutdown { failed, reason, reply } => {
                self.flush();
                self.broadcast_shutdown(failed, reason);
                self.wait_for_byes(inbox, Duration::from_secs(30));
                reply.send(());
                return Some(Exit::Clean);
            }
        }
        None
    }

    fn broadcast_shutdown(&self, failed: bool, reason: String) {
        for w in &self.workers {
            if !w.gone {
                self.transport.send(Endpoint::worker(w.rank), Msg::Shutdown { failed, reason: reason.clone() });
            }
        }
        // Workers that never said hello must stop too.
        for &rank in &self.config.worker_ranks {
            if !self.worker_of_rank.contains_key(&rank) {
                self.transport.send(Endpoint::worker(rank), Msg::Shutdown { failed, reason: reason.clone() });
            }
        }
    }

    fn wait_for_byes(&self, inbox: &Receiver<Msg>, limit: Duration) {
        let mut left: FxHashSet<u32> = self.config.worker_ranks.iter().copied().collect();
        for w in &self.workers {
            if w.gone {
                left.remove(&w.rank);
            } else {
                left.insert(w.rank);
            }
        }
        let deadline = Instant::now() + limit;
        while !left.is_empty() {
            match inbox.recv_deadline(deadline) {
                Ok(Msg::Bye { rank }) | Ok(Msg::PeerLost { rank, .. }) => {
                    left.remove(&rank);
                }
                Ok(Msg::Client(ClientRequest::Shutdown { reply, .. })) => {
                    reply.send(());
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(ranks = ?left, "workers did not confirm shutdown");
                    return;
                }
            }
        }
    }

    // ---- submission -------------------------------------------------------

    fn submit(&mut self, tasks: Vec<Task>, outputs: Vec<Key>) -> Result<Vec<TaskId>> {
        // Index the new tasks; existing keys are reused, not recomputed.
        let mut local: FxHashMap<&Key, usize> = FxHashMap::default();
        local.reserve(tasks.len());
        for (i, t) in tasks.iter().enumerate() {
            if local.insert(&t.key, i).is_some() {
                return Err(Error::DuplicateKey { key: t.key.clone() });
            }
        }
        let mut kernels = Vec::with_capacity(tasks.len());
        let mut pins = Vec::with_capacity(tasks.len());
        let mut last_kernel: Option<(&str, u32)> = None;
        for t in &tasks {
            pins.push(match t.pin {
                None => None,
                Some(rank) => match self.worker_of_rank.get(&rank) {
                    Some(&w) if !self.workers[w].gone => Some(w),
                    _ => return Err(Error::NoSuchWorker { key: t.key.clone(), rank }),
                },
            });
            // Graphs name few kernels, usually in runs: skip the hash lookup.
            let k = match last_kernel {
                Some((name, id)) if name == &*t.kernel => id,
                _ => self.registry.id(&t.kernel).ok_or_else(|| Error::UnknownKernel {
                    key: t.key.clone(),
                    kernel: t.kernel.to_string(),
                    known: self.registry.names().collect::<Vec<_>>().join(", "),
                })?,
            };
            last_kernel = Some((&t.kernel, k));
            kernels.push(k);
        }
        // Resolve inputs: Ok(local index) or Err(existing id).
        enum Src {
            New(usize),
            Old(TaskId),
        }
        let existing = &self.keys;
        let resolve = |key: &Key, local: &FxHashMap<&Key, usize>| -> Option<Src> {
            match (!existing.is_empty()).then(|| existing.get(key)).flatten() {
                Some(id) => Some(Src::Old(*id)),
                None => local.get(key).map(|&i| Src::New(i)),
            }
        };
        let mut deps: Vec<Vec<Src>> = Vec::with_capacity(tasks.len());
        for t in &tasks {
            let mut d = Vec::with_capacity(t.inputs.len());
            for input in &t.inputs {
                match resolve(input, &local) {
                    Some(Src::Old(id)) => {
                        if let State::Erred(f) = &self.tasks[&id].state {
                            return Err(f.to_error());
                        }
                        d.push(Src::Old(id));
                    }
                    Some(s) => d.push(s),
                    None => return Err(Error::MissingInput { key: t.key.clone(), input: input.clone() }),
                }
            }
            deps.push(d);
        }
        let mut out_src = Vec::with_capacity(outputs.len());
        for key in &outputs {
            match resolve(key, &local) {
                Some(s) => out_src.push(s),
                None => return Err(Error::UnknownOutput { key: key.clone() }),
            }
        }

        // Depth-first post-order from the outputs: culls, orders, finds cycles.
        const WHITE: u8 = 0;
        const GREY: u8 = 1;
        const BLACK: u8 = 2;
        let mut color = vec![WHITE; tasks.len()];
        let mut order: Vec<usize> = Vec::with_capacity(tasks.len());
        let mut stack: Vec<(usize, usize)> = Vec::new();
        for src in &out_src {
            let Src::New(root) = *src else { continue };
            if color[root] != WHITE {
                continue;
            }
            color[root] = GREY;
            stack.push((root, 0));
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                // Skip existing inputs, and new ones already finished.
                let mut child = None;
                while *next < deps[node].len() {
                    let d = &deps[node][*next];
                    *next += 1;
                    if let Src::New(c) = *d {
                        match color[c] {
                            WHITE => {
                                child = Some(c);
                                break;
                            }
                            GREY => {
                                let start = stack.iter().position(|&(n, _)| n == c).unwrap_or(0);
                                let mut path: Vec<String> =
                                    stack[start..].iter().map(|&(n, _)| tasks[n].key.to_string()).collect();
                                path.push(tasks[c].key.to_string());
                                return Err(Error::Cycle { key: tasks[c].key.clone(), path: path.join(" -> ") });
                            }
                            _ => {}
                        }
                    }
                }
                match child {
                    Some(c) => {
                        color[c] = GREY;
                        stack.push((c, 0));
                    }
                    None => {
                        color[node] = BLACK;
                        order.push(node);
                        stack.pop();
                    }
                }
            }
        }
        if order.len() < tasks.len() {
            tracing::debug!(culled = tasks.len() - order.len(), "tasks not needed for the outputs");
        }

        // Everything is valid: commit.
        self.submissions += 1;
        let base = self.submissions << 40;
        let mut ids = vec![TaskId(u64::MAX); tasks.len()];
        for &i in &order {
            ids[i] = TaskId(self.next_id);
            self.next_id += 1;
        }
        let mut tasks: Vec<Option<Task>> = tasks.into_iter().map(Some).collect();
        let mut ready = Vec::new();
        self.tasks.reserve(order.len());
        for (n, &i) in order.iter().enumerate() {
            let t = tasks[i].take().expect("each task once");
            let id = ids[i];
            let mut inputs = Vec::with_capacity(deps[i].len());
            let mut waiting = 0;
            for d in &deps[i] {
                let input = match *d {
                    Src::New(j) => ids[j],
                    Src::Old(old) => old,
                };
                let rec = self.tasks.get_mut(&input).expect("inputs are known");
                rec.refs += 1;
                rec.dependents.push(id);
                if !matches!(rec.state, State::Memory) {
                    waiting += 1;
                }
                inputs.push(input);
            }
            self.tasks.insert(
                id,
                TaskRec {
                    keyed: false,
                    key: t.key,
                    kernel: kernels[i],
                    params: t.params,
                    inputs,
                    dependents: Vec::new(),
                    waiting,
                    refs: 0,
                    prio: base | n as u64,
                    pin: pins[i],
                    state: State::Waiting,
                    who_has: Vec::new(),
                    nbytes: 0,
                    waiters: Vec::new(),
                    retries: 0,
                },
            );
            if waiting == 0 {
                ready.push(id);
            }
        }
        let out_ids: Vec<TaskId> = out_src
            .iter()
            .map(|s| match *s {
                Src::New(i) => ids[i],
                Src::Old(id) => id,
            })
            .collect();
        // Outputs are what the cluster holds for the client: later graphs
        // name them by key. Intermediates are not looked up by key.
        for id in &out_ids {
            let rec = self.tasks.get_mut(id).expect("outputs are known");
            rec.refs += 1;
            if !rec.keyed {
                rec.keyed = true;
                self.keys.insert(rec.key.clone(), *id);
            }
        }
        for id in ready {
            self.make_ready(id);
        }
        tracing::debug!(tasks = order.len(), outputs = out_ids.len(), "graph submitted");
        Ok(out_ids)
    }

    fn wait(&mut self, ids: Vec<TaskId>, reply: Reply<Result<Vec<Vec<u32>>>>) {
        let mut remaining = 0;
        for id in &ids {
            match self.tasks.get(id) {
                None => {
                    reply.send(Err(Error::Lost {
                        key: Key::new(format!("task{}", id.0), []),
                        reason: "it was released".into(),
                    }));
                    return;
                }
                Some(rec) => match &rec.state {
                    State::Memory => {}
                    State::Erred(f) => {
                        reply.send(Err(f.to_error()));
                        return;
                    }
                    _ => remaining += 1,
                },
            }
        }
        if remaining == 0 {
            reply.send(Ok(self.locations(&ids)));
            return;
        }
        let w = self.next_waiter;
        self.next_waiter += 1;
        for id in &ids {
            let rec = self.tasks.get_mut(id).expect("checked above");
            if !matches!(rec.state, State::Memory) {
                rec.waiters.push(w);
            }
        }
        self.waiters.insert(w, Waiter { ids, remaining, reply });
    }

    fn locations(&self, ids: &[TaskId]) -> Vec<Vec<u32>> {
        ids.iter().map(|id| self.tasks[id].who_has.iter().map(|&w| self.workers[w].rank).collect()).collect()
    }

    // ---- placement --------------------------------------------------------

    fn make_ready(&mut self, id: TaskId) {
        let rec = &self.tasks[&id];
        let mut best: Option<(u64, usize)> = rec.pin.map(|w| (0, w));
        // A GPU-capable task goes to a GPU worker when there is one open:
        // the one holding most of its input, else the least loaded.
        let gpu_only =
            best.is_none() && self.registry.is_gpu(rec.kernel) && self.workers.iter().any(|w| w.open() && w.has_gpu());
        if best.is_none() && !rec.inputs.is_empty() {
            // Bytes of input each worker holds (few inputs, few holders: linear scans).
            let mut held: Vec<(usize, u64)> = Vec::new();
            for input in &rec.inputs {
                let r = &self.tasks[input];
                for &w in &r.who_has {
                    match held.iter_mut().find(|(x, _)| *x == w) {
                        Some((_, b)) => *b += r.nbytes.max(1),
                        None => held.push((w, r.nbytes.max(1))),
                    }
                }
            }
            for (w, bytes) in held {
                if !self.workers[w].open() || (gpu_only && !self.workers[w].has_gpu()) {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((b, bw)) => bytes > b || (bytes == b && self.load(w) < self.load(bw)),
                };
                if better {
                    best = Some((bytes, w));
                }
            }
        }
        if gpu_only && best.is_none() {
            best = (0..self.workers.len())
                .filter(|&w| self.workers[w].open() && self.workers[w].has_gpu())
                .min_by_key(|&w| self.load(w))
                .map(|w| (0, w));
        }
        let prio = rec.prio;
        let rec = self.tasks.get_mut(&id).expect("ready task exists");
        match best {
            Some((_, w)) => {
                rec.state = State::Queued(Some(w));
                self.workers[w].queue.insert((prio, id));
            }
            None => {
                rec.state = State::Queued(None);
                self.unbound.insert((prio, id));
            }
        }
        self.queued += 1;
    }

    fn load(&self, w: usize) -> usize {
        self.workers[w].in_flight as usize + self.workers[w].queue.len()
    }

    fn fill_all(&mut self) {
        if self.queued == 0 {
            return;
        }
        for w in 0..self.workers.len() {
            self.fill(w);
            if self.queued == 0 {
                break;
            }
        }
    }

    /// Sends worker `w` tasks until it has `limit` in flight.
    fn fill(&mut self, w: usize) {
        while self.queued > 0 && !self.workers[w].gone && self.workers[w].in_flight < self.workers[w].limit {
            let own = self.workers[w].queue.first().copied();
            if self.workers[w].draining {
                // Only what is pinned here (the rest was moved off).
                let Some(pick) = self.workers[w].queue.pop_first() else { break };
                self.queued -= 1;
                self.start(w, pick.1);
                continue;
            }
            let free = self.unbound.first().copied().filter(|&(_, id)| !self.withheld(w, id));
            let pick = match (own, free) {
                (Some(a), Some(b)) => {
                    if a <= b {
                        self.workers[w].queue.pop_first()
                    } else {
                        self.unbound.pop_first()
                    }
                }
                (Some(_), None) => self.workers[w].queue.pop_first(),
                (None, Some(_)) => self.unbound.pop_first(),
                (None, None) => self.steal_for(w),
            };
            let Some((_, id)) = pick else { break };
            self.assign(w, id);
        }
    }

    /// Whether root task `id` waits for worker `w` to have a thread free: it
    /// makes a big block (or one of unknown size) and `w` is busy.
    fn withheld(&self, w: usize, id: TaskId) -> bool {
        let rec = &self.tasks[&id];
        let worker = &self.workers[w];
        if !rec.inputs.is_empty() || worker.in_flight < worker.threads {
            return false;
        }
        let mean = self.out_bytes[rec.kernel as usize];
        mean.is_nan() || mean >= BIG_ROOT_BYTES
    }

    /// Takes a queued task of the most loaded other worker, from the
    /// low-priority end, if moving it costs less than running it: its input
    /// bytes the thief lacks, at [`STEAL_BANDWIDTH`], against the kernel's
    /// mean duration (unknown durations count as free to steal only for
    /// inputs under 64 KiB).
    fn steal_for(&mut self, thief: usize) -> Option<(u64, TaskId)> {
        let victim = (0..self.workers.len())
            .filter(|&v| v != thief && !self.workers[v].queue.is_empty())
            .max_by_key(|&v| self.workers[v].queue.len())?;
        let pick = self.workers[victim].queue.iter().rev().take(8).copied().find(|&(_, id)| {
            let rec = &self.tasks[&id];
            if rec.pin.is_some() {
                return false;
            }
            // GPU work stays on GPU workers.
            if self.workers[victim].has_gpu() && !self.workers[thief].has_gpu() && self.registry.is_gpu(rec.kernel) {
                return false;
            }
            let missing: u64 = rec
                .inputs
                .iter()
                .map(|i| &self.tasks[i])
                .filter(|r| !r.who_has.contains(&thief))
                .map(|r| r.nbytes)
                .sum();
            let transfer_us = missing as f64 / STEAL_BANDWIDTH * 1e6;
            let run_us = self.durations[rec.kernel as usize];
            if run_us.is_nan() {
                missing < 64 << 10
            } else {
                run_us >= 2.0 * transfer_us
            }
        })?;
        self.workers[victim].queue.remove(&pick);
        tracing::trace!(task = %pick.1, from = self.workers[victim].rank, to = self.workers[thief].rank, "stolen");
        Some(pick)
    }

    fn assign(&mut self, w: usize, id: TaskId) {
        self.queued -= 1;
        self.start(w, id);
        self.assign_ahead(w, id);
    }

    /// Sends `id` to worker `w`.
    fn start(&mut self, w: usize, id: TaskId) {
        self.workers[w].in_flight += 1;
        let rec = self.tasks.get_mut(&id).expect("started task exists");
        rec.state = State::Running(w);
        let rec = &self.tasks[&id];
        let inputs = rec
            .inputs
            .iter()
            .map(|i| {
                let r = &self.tasks[i];
                let holders = match r.state {
                    State::Running(x) => vec![self.workers[x].rank],
                    _ => r.who_has.iter().map(|&h| self.workers[h].rank).collect(),
                };
                InputLoc { id: *i, holders, nbytes: r.nbytes }
            })
            .collect();
        self.outbox[w].push(RunTask {
            id,
            key: rec.key.clone(),
            kernel: rec.kernel,
            params: Arc::clone(&rec.params),
            inputs,
        });
    }

    /// Sends `w` the dependents of `id` whose inputs are all on `w` or being
    /// computed there, ahead of time: the worker starts each the moment its
    /// last input is stored, without a round trip through the scheduler
    /// (chains and local reductions run back to back). Bounded by the
    /// worker's queue limit.
    fn assign_ahead(&mut self, w: usize, id: TaskId) {
        if self.workers[w].draining {
            return;
        }
        let mut stack = vec![id];
        while let Some(t) = stack.pop() {
            let mut i = 0;
            while let Some(&d) = self.tasks.get(&t).and_then(|r| r.dependents.get(i)) {
                i += 1;
                if self.workers[w].in_flight >= self.workers[w].limit + AHEAD {
                    return;
                }
                let rec = &self.tasks[&d];
                if !matches!(rec.state, State::Waiting) || rec.pin.is_some_and(|p| p != w) {
                    continue;
                }
                let local = rec.inputs.iter().all(|i| {
                    let r = &self.tasks[i];
                    match r.state {
                        State::Running(x) => x == w,
                        State::Memory => r.who_has.contains(&w),
                        _ => false,
                    }
                });
                if local {
                    self.start(w, d);
                    stack.push(d);
                }
            }
        }
    }

    fn flush(&mut self) {
        for w in 0..self.workers.len() {
            let rank = self.workers[w].rank;
            if !self.outbox[w].is_empty() {
                let batch = std::mem::take(&mut self.outbox[w]);
                self.transport.send(Endpoint::worker(rank), Msg::Run(batch));
            }
            if !self.releases[w].is_empty() {
                let batch = std::mem::take(&mut self.releases[w]);
                self.transport.send(Endpoint::worker(rank), Msg::Release(batch));
            }
            if !self.cancels[w].is_empty() {
                let batch = std::mem::take(&mut self.cancels[w]);
                self.transport.send(Endpoint::worker(rank), Msg::Cancel(batch));
            }
        }
    }

    // ---- completion -------------------------------------------------------

    fn on_done(&mut self, id: TaskId, nbytes: u64, micros: u64) {
        let Some(rec) = self.tasks.get_mut(&id) else {
            tracing::warn!(task = %id, "Done for an unknown task");
            return;
        };
        let w = match rec.state {
            State::Running(w) => w,
            State::Cancelled(w) => {
                self.workers[w].in_flight -= 1;
                self.releases[w].push(id);
                let rec = self.tasks.remove(&id).expect("present");
                for input in rec.inputs {
                    self.dec_ref(input);
                }
                return;
            }
            ref other => {
                tracing::warn!(task = %id, state = ?other, "Done for a task that was not running");
                return;
            }
        };
        self.workers[w].in_flight -= 1;
        self.workers[w].last_seen = Instant::now();
        self.completed += 1;
        running_mean(&mut self.durations[rec.kernel as usize], micros as f64);
        running_mean(&mut self.out_bytes[rec.kernel as usize], nbytes as f64);
        rec.state = State::Memory;
        rec.who_has.push(w);
        rec.nbytes = nbytes;
        self.mem_bytes += nbytes;
        self.peak_bytes = self.peak_bytes.max(self.mem_bytes);
        let waiters = std::mem::take(&mut rec.waiters);
        // Inputs and dependents stay on record: a block lost with its
        // worker is recomputed from them.
        let inputs = std::mem::take(&mut rec.inputs);
        let dependents = std::mem::take(&mut rec.dependents);
        let unwanted = rec.refs == 0;
        for waiter in waiters {
            self.waiter_progress(waiter);
        }
        for &dep in &dependents {
            let Some(d) = self.tasks.get_mut(&dep) else { continue };
            if matches!(d.state, State::Memory | State::Erred(_)) {
                continue;
            }
            d.waiting = d.waiting.saturating_sub(1);
            if d.waiting == 0 && matches!(d.state, State::Waiting) {
                self.make_ready(dep);
            }
        }
        for &input in &inputs {
            self.dec_ref(input);
        }
        if let Some(rec) = self.tasks.get_mut(&id) {
            rec.inputs = inputs;
            rec.dependents = dependents;
        }
        if unwanted {
            self.forget(id);
        }
        if self.workers[w].draining {
            self.check_drain(w);
        }
    }

    fn waiter_progress(&mut self, waiter: u64) {
        let Some(w) = self.waiters.get_mut(&waiter) else { return };
        w.remaining -= 1;
        if w.remaining == 0 {
            let w = self.waiters.remove(&waiter).expect("present");
            w.reply.send(Ok(self.locations(&w.ids)));
        }
    }

    /// A worker reports that task `id` did not complete: returns the worker
    /// it ran on, or `None` if the task was cancelled meanwhile (then it is
    /// dropped here) or is not running.
    fn unfinished(&mut self, id: TaskId) -> Option<usize> {
        let w = match self.tasks.get(&id)?.state {
            State::Running(w) => w,
            State::Cancelled(w) => {
                self.workers[w].in_flight -= 1;
                let rec = self.tasks.remove(&id).expect("present");
                for input in rec.inputs {
                    self.dec_ref(input);
                }
                return None;
            }
            _ => return None,
        };
        self.workers[w].in_flight -= 1;
        Some(w)
    }

    /// Why task `id` failed, on worker rank `rank`.
    fn failure(&self, id: TaskId, rank: u32, cause: String) -> Arc<Failure> {
        let rec = &self.tasks[&id];
        Arc::new(Failure {
            key: rec.key.clone(),
            kernel: self.registry.name(rec.kernel).map(|n| n.to_string()).unwrap_or_default(),
            rank,
            cause,
        })
    }

    fn on_failed(&mut self, id: TaskId, error: String) {
        let Some(w) = self.unfinished(id) else { return };
        let failure = self.failure(id, self.workers[w].rank, error);
        tracing::debug!(task = %failure.key, cause = %failure.cause, "task failed");
        self.fail(id, failure);
        if self.workers[w].draining {
            self.check_drain(w);
        }
    }

    /// Fails `id` and everything downstream of it with `failure`.
    fn fail(&mut self, id: TaskId, failure: Arc<Failure>) {
        // Everything downstream fails with the same cause.
        let mut erred = vec![id];
        let mut seen: FxHashSet<TaskId> = FxHashSet::default();
        seen.insert(id);
        let mut i = 0;
        while i < erred.len() {
            let t = erred[i];
            i += 1;
            // Dependents released after an earlier failure are gone.
            let Some(rec) = self.tasks.get_mut(&t) else { continue };
            match rec.state {
                // Assigned ahead, waiting on the worker for the failed input.
                State::Running(x) | State::Cancelled(x) if t != id => {
                    self.workers[x].in_flight -= 1;
                    self.cancels[x].push(t);
                }
                State::Queued(bound) => {
                    let entry = (rec.prio, t);
                    match bound {
                        Some(x) => self.workers[x].queue.remove(&entry),
                        None => self.unbound.remove(&entry),
                    };
                    self.queued -= 1;
                }
                _ => {}
            }
            rec.state = State::Erred(Arc::clone(&failure));
            for &d in &rec.dependents {
                if seen.insert(d) {
                    erred.push(d);
                }
            }
        }
        for &t in &erred {
            let Some(rec) = self.tasks.get_mut(&t) else { continue };
            let waiters = std::mem::take(&mut rec.waiters);
            for waiter in waiters {
                if let Some(wt) = self.waiters.remove(&waiter) {
                    wt.reply.send(Err(failure.to_error()));
                }
            }
        }
        // An erred task no longer needs its inputs.
        for &t in &erred {
            let inputs = match self.tasks.get_mut(&t) {
                Some(rec) => std::mem::take(&mut rec.inputs),
                None => continue,
            };
            for input in inputs {
                self.dec_ref(input);
            }
        }
        for &t in &erred {
            if self.tasks.get(&t).is_some_and(|r| r.refs == 0) {
                self.forget(t);
            }
        }
    }

    fn dec_ref(&mut self, id: TaskId) {
        let Some(rec) = self.tasks.get_mut(&id) else { return };
        debug_assert!(rec.refs > 0, "refcount underflow on {}", rec.key);
        rec.refs = rec.refs.saturating_sub(1);
        if rec.refs == 0 {
            self.forget(id);
        }
    }

    /// Nobody needs `id` any more: release its blocks or cancel it.
    fn forget(&mut self, id: TaskId) {
        let Some(rec) = self.tasks.get_mut(&id) else { return };
        match rec.state {
            State::Running(w) => {
                // Let it finish; its block is released when it reports.
                rec.state = State::Cancelled(w);
                if std::mem::take(&mut rec.keyed) {
                    self.keys.remove(&rec.key);
                }
                return;
            }
            State::Cancelled(_) => return,
            State::Queued(bound) => {
                let entry = (rec.prio, id);
                match bound {
                    Some(w) => self.workers[w].queue.remove(&entry),
                    None => self.unbound.remove(&entry),
                };
                self.queued -= 1;
            }
            State::Memory => {
                self.mem_bytes -= rec.nbytes;
                for &w in &rec.who_has {
                    self.releases[w].push(id);
                }
            }
            State::Waiting | State::Erred(_) => {}
        }
        let rec = self.tasks.remove(&id).expect("present");
        if rec.keyed {
            self.keys.remove(&rec.key);
        }
        if matches!(rec.state, State::Memory) {
            self.handed_off(id);
        }
        for w in rec.waiters {
            if let Some(wt) = self.waiters.remove(&w) {
                wt.reply.send(Err(Error::Lost { key: rec.key.clone(), reason: "it was released".into() }));
            }
        }
        if !matches!(rec.state, State::Memory) {
            for input in rec.inputs {
                self.dec_ref(input);
            }
        }
    }

    fn check_liveness(&mut self) -> Option<Exit> {
        let timeout = self.config.heartbeat_timeout?;
        // Rank 0's own worker shares this process: it cannot be lost alone.
        let silent = self.workers.iter().position(|w| w.rank != 0 && !w.gone && w.last_seen.elapsed() > timeout)?;
        let w = &self.workers[silent];
        let mut reason = format!("no message for {:.1} s", w.last_seen.elapsed().as_secs_f64());
        if let Some((_, line)) = self.remote_errors.iter().find(|(r, _)| *r == w.rank) {
            reason = format!("{reason}; its first error: {line}");
        }
        if self.config.elastic {
            tracing::warn!(rank = w.rank, %reason, "worker lost");
            self.remove_worker(silent, reason);
            return None;
        }
        Some(Exit::WorkerLost { rank: w.rank, reason })
    }

    // ---- elastic membership -----------------------------------------------

    /// `retire_workers`: drains each rank; the reply waits for all to leave.
    fn retire(&mut self, ranks: Vec<u32>, reply: Reply<Result<Vec<u32>>>) {
        for &rank in &ranks {
            if self.worker_of_rank.get(&rank).is_none_or(|&w| self.workers[w].gone) {
                reply.send(Err(Error::UnknownWorker { rank }));
                return;
            }
        }
        tracing::info!(?ranks, "retiring workers");
        self.retirements.push(Retirement { ranks: ranks.clone(), reply });
        // All are marked first, so none hands its blocks to another leaver.
        let ws: Vec<usize> = ranks.iter().map(|r| self.worker_of_rank[r]).collect();
        for &w in &ws {
            self.mark_draining(w);
        }
        for w in ws {
            self.check_drain(w);
        }
        self.settle_retirements();
    }

    fn settle_retirements(&mut self) {
        let workers = &self.workers;
        let worker_of_rank = &self.worker_of_rank;
        let (done, waiting): (Vec<Retirement>, Vec<Retirement>) = std::mem::take(&mut self.retirements)
            .into_iter()
            .partition(|r| r.ranks.iter().all(|rank| worker_of_rank.get(rank).is_none_or(|&w| workers[w].gone)));
        self.retirements = waiting;
        for r in done {
            r.reply.send(Ok(r.ranks));
        }
    }

    /// Worker `w` takes no new task and leaves once its blocks are safe.
    fn start_drain(&mut self, w: usize) {
        if self.workers[w].draining || self.workers[w].gone {
            return;
        }
        self.mark_draining(w);
        self.check_drain(w);
    }

    /// Worker `w` takes no new task; its queue goes back to the others.
    /// Other drains that were handing blocks to it start over.
    fn mark_draining(&mut self, w: usize) {
        if self.workers[w].draining || self.workers[w].gone {
            return;
        }
        self.workers[w].draining = true;
        let queue = std::mem::take(&mut self.workers[w].queue);
        for (prio, id) in queue {
            if self.tasks[&id].pin == Some(w) {
                self.workers[w].queue.insert((prio, id));
            } else {
                self.tasks.get_mut(&id).expect("queued tasks exist").state = State::Queued(None);
                self.unbound.insert((prio, id));
            }
        }
        for d in 0..self.workers.len() {
            if d != w && self.workers[d].draining && !self.workers[d].handoff.is_empty() {
                self.workers[d].handoff.clear();
                self.check_drain(d);
            }
        }
    }

    /// Once draining worker `w` runs nothing, copies the blocks only it
    /// holds to open workers; once none is left, tells it to stop.
    fn check_drain(&mut self, w: usize) {
        let rec = &self.workers[w];
        if !rec.draining || rec.leaving || rec.gone || rec.in_flight > 0 || !rec.queue.is_empty() {
            return;
        }
        if rec.handoff.is_empty() {
            // Blocks here that no open worker holds (other holders may be
            // draining too, and leave first).
            let workers = &self.workers;
            let alone: Vec<TaskId> = self
                .tasks
                .iter()
                .filter(|(_, r)| {
                    matches!(r.state, State::Memory)
                        && r.who_has.contains(&w)
                        && !r.who_has.iter().any(|&h| workers[h].open())
                })
                .map(|(&id, _)| id)
                .collect();
            if !alone.is_empty() && !self.hand_off(w, alone) {
                return; // copies under way
            }
        }
        if self.workers[w].handoff.is_empty() {
            self.finish_drain(w);
        }
    }

    /// Sends `ids` (held only by `w`) to open workers, spread by bytes.
    /// Returns false if copies are now under way, true if there is nowhere
    /// to put them (the worker then leaves with them).
    fn hand_off(&mut self, w: usize, ids: Vec<TaskId>) -> bool {
        let mut targets: Vec<(u64, usize)> =
            (0..self.workers.len()).filter(|&t| t != w && self.workers[t].open()).map(|t| (0u64, t)).collect();
        if targets.is_empty() {
            tracing::warn!(
                rank = self.workers[w].rank,
                blocks = ids.len(),
                "no other worker to hand blocks to; they will be recomputed when a worker joins, where their inputs are still held"
            );
            return true;
        }
        let from = self.workers[w].rank;
        let mut batches: FxHashMap<usize, Vec<InputLoc>> = FxHashMap::default();
        for id in ids {
            let nbytes = self.tasks[&id].nbytes;
            let slot = targets.iter_mut().min_by_key(|(b, _)| *b).expect("targets is not empty");
            slot.0 += nbytes.max(1);
            batches.entry(slot.1).or_default().push(InputLoc { id, holders: vec![from], nbytes });
            self.workers[w].handoff.insert(id);
        }
        for (t, locs) in batches {
            tracing::debug!(from, to = self.workers[t].rank, blocks = locs.len(), "handing blocks off");
            self.transport.send(Endpoint::worker(self.workers[t].rank), Msg::Acquire(locs));
        }
        false
    }

    /// Block `id` has a new copy (or is gone): a draining worker waiting to
    /// hand it off may be done.
    fn handed_off(&mut self, id: TaskId) {
        let waiting: Vec<usize> = (0..self.workers.len()).filter(|&w| self.workers[w].handoff.remove(&id)).collect();
        for w in waiting {
            if self.workers[w].handoff.is_empty() {
                self.check_drain(w);
            }
        }
    }

    fn finish_drain(&mut self, w: usize) {
        let rec = &mut self.workers[w];
        rec.leaving = true;
        tracing::info!(rank = rec.rank, "worker drained; telling it to stop");
        let rank = rec.rank;
        self.flush();
        self.transport.send(Endpoint::worker(rank), Msg::Shutdown { failed: false, reason: "retired".into() });
    }

    /// Worker `w` has left (`reason`): its copies are forgotten, blocks only
    /// it held are recomputed (or fail), its tasks are placed again.
    fn remove_worker(&mut self, w: usize, reason: String) {
        let rank = self.workers[w].rank;
        // Whatever it recorded is gone with it.
        let reqs: Vec<u64> = self.collections.iter().map(|c| c.req).collect();
        for req in reqs {
            self.on_events(req, None, rank);
        }
        let graceful = self.workers[w].leaving;
        {
            let rec = &mut self.workers[w];
            rec.gone = true;
            rec.draining = false;
            rec.in_flight = 0;
            rec.handoff.clear();
        }
        self.outbox[w].clear();
        self.releases[w].clear();
        self.cancels[w].clear();
        let mut lost: Vec<(u64, TaskId)> = Vec::new();
        let mut rerun: Vec<TaskId> = Vec::new();
        let mut dropped: Vec<TaskId> = Vec::new();
        let mut orphaned: Vec<TaskId> = Vec::new();
        for (&id, rec) in self.tasks.iter_mut() {
            match rec.state {
                State::Memory => {
                    if let Some(i) = rec.who_has.iter().position(|&x| x == w) {
                        rec.who_has.swap_remove(i);
                        if rec.who_has.is_empty() {
                            lost.push((rec.prio, id));
                        }
                    }
                }
                State::Running(x) if x == w => rerun.push(id),
                State::Cancelled(x) if x == w => dropped.push(id),
                State::Queued(Some(x)) if x == w => {
                    self.workers[w].queue.remove(&(rec.prio, id));
                    rec.state = State::Queued(None);
                    self.unbound.insert((rec.prio, id));
                }
                _ => {}
            }
            if rec.pin == Some(w) && !matches!(rec.state, State::Memory | State::Erred(_)) {
                orphaned.push(id);
            }
        }
        self.workers[w].queue.clear();
        if graceful && !lost.is_empty() {
            tracing::warn!(rank, blocks = lost.len(), "a retired worker left blocks no one else holds");
        } else if !graceful {
            tracing::warn!(rank, %reason, lost_blocks = lost.len(), rerun = rerun.len(), "worker left without draining");
        }
        for id in dropped {
            if let Some(rec) = self.tasks.remove(&id) {
                for input in rec.inputs {
                    self.dec_ref(input);
                }
            }
        }
        // Lost blocks first, inputs before dependents (priority order).
        lost.sort_unstable();
        for (_, id) in lost {
            self.recompute(id, rank, &reason);
        }
        for id in rerun {
            if let Some(rec) = self.tasks.get_mut(&id) {
                if matches!(rec.state, State::Running(_)) {
                    rec.state = State::Waiting;
                    self.replace(id);
                }
            }
        }
        for id in orphaned {
            if self.tasks.get(&id).is_some_and(|r| !matches!(r.state, State::Memory | State::Erred(_))) {
                let failure =
                    self.failure(id, rank, format!("it is pinned to worker rank {rank}, which left ({reason})"));
                let rec = &self.tasks[&id];
                if let State::Queued(b) = rec.state {
                    let entry = (rec.prio, id);
                    match b {
                        Some(x) => self.workers[x].queue.remove(&entry),
                        None => self.unbound.remove(&entry),
                    };
                    self.queued -= 1;
                    self.tasks.get_mut(&id).expect("present").state = State::Waiting;
                }
                self.fail(id, failure);
            }
        }
        // Draining workers may have been handing blocks to this one.
        for d in 0..self.workers.len() {
            if self.workers[d].draining && !self.workers[d].handoff.is_empty() {
                self.workers[d].handoff.clear();
                self.check_drain(d);
            }
        }
        self.settle_retirements();
        tracing::info!(rank, %reason, workers = self.worker_infos().len(), "worker left");
    }

    /// A block only a departed worker held: compute it again if its inputs
    /// are still held or being computed, else fail it naming the worker.
    fn recompute(&mut self, id: TaskId, rank: u32, reason: &str) {
        let rec = &self.tasks[&id];
        let pinned_away = rec.pin.is_some_and(|p| self.workers[p].gone);
        let recomputable = !pinned_away
            && rec.inputs.iter().all(|i| self.tasks.get(i).is_some_and(|r| !matches!(r.state, State::Erred(_))));
        let nbytes = rec.nbytes;
        self.mem_bytes = self.mem_bytes.saturating_sub(nbytes);
        // Dependents that counted on the block wait for it again.
        let dependents = rec.dependents.clone();
        for d in dependents {
            let Some(dr) = self.tasks.get_mut(&d) else { continue };
            match dr.state {
                State::Waiting => dr.waiting += 1,
                State::Queued(b) => {
                    let entry = (dr.prio, d);
                    dr.state = State::Waiting;
                    dr.waiting = 1;
                    match b {
                        Some(x) => self.workers[x].queue.remove(&entry),
                        None => self.unbound.remove(&entry),
                    };
                    self.queued -= 1;
                }
                _ => {}
            }
        }
        if !recomputable {
            let why = if pinned_away { "it is pinned to that worker" } else { "its inputs were released" };
            let cause =
                format!("its block was lost with worker rank {rank} ({reason}) and cannot be recomputed: {why}");
            let failure = self.failure(id, rank, cause);
            tracing::warn!(task = %failure.key, rank, "block lost and not recomputable");
            let rec = self.tasks.get_mut(&id).expect("present");
            rec.state = State::Waiting;
            rec.inputs.clear();
            self.fail(id, failure);
            return;
        }
        tracing::debug!(task = %self.tasks[&id].key, rank, "recomputing a lost block");
        let inputs = self.tasks[&id].inputs.clone();
        for &i in &inputs {
            let r = self.tasks.get_mut(&i).expect("checked above");
            r.refs += 1;
            if !r.dependents.contains(&id) {
                r.dependents.push(id);
            }
        }
        let rec = self.tasks.get_mut(&id).expect("present");
        rec.state = State::Waiting;
        self.replace(id);
    }

    /// Task `id` (state `Waiting`) runs again: counts the inputs it waits
    /// for and becomes ready if none.
    fn replace(&mut self, id: TaskId) {
        let inputs = std::mem::take(&mut self.tasks.get_mut(&id).expect("present").inputs);
        let waiting =
            inputs.iter().filter(|i| !self.tasks.get(i).is_some_and(|r| matches!(r.state, State::Memory))).count()
                as u32;
        let rec = self.tasks.get_mut(&id).expect("present");
        rec.inputs = inputs;
        rec.waiting = waiting;
        if waiting == 0 {
            self.make_ready(id);
        }
    }

    /// A worker could not fetch `input` of task `id` from `rank`.
    fn on_input_lost(&mut self, id: TaskId, input: TaskId, rank: u32) {
        let Some(w) = self.unfinished(id) else { return };
        let rec = self.tasks.get_mut(&id).expect("unfinished tasks exist");
        rec.retries += 1;
        if rec.retries > MAX_RETRIES {
            let cause = format!("input {input} could not be fetched from rank {rank} ({MAX_RETRIES} tries)");
            let failure = self.failure(id, self.workers[w].rank, cause);
            self.fail(id, failure);
        } else {
            tracing::debug!(task = %rec.key, %input, from = rank, "input unreachable; placing the task again");
            rec.state = State::Waiting;
            self.replace(id);
        }
        if self.workers[w].draining {
            self.check_drain(w);
        }
    }
}

/// Events and remote errors.
impl Scheduler {
    /// Asks every live worker for its events; answers once all did (or left).
    fn collect_events(&mut self, clear: bool, reply: Reply<EventLog>) {
        let req = self.next_collection;
        self.next_collection += 1;
        let waiting: FxHashSet<u32> = self.workers.iter().filter(|w| !w.gone).map(|w| w.rank).collect();
        for &rank in &waiting {
            self.transport.send(Endpoint::worker(rank), Msg::CollectEvents { req, clear });
        }
        self.collections.push(Collection { req, reply, waiting, got: Vec::new() });
        self.answer_if_complete(self.collections.len() - 1); // no worker: at once
    }

    /// Worker `rank` answered collection `req` (`None`: it left without answering).
    fn on_events(&mut self, req: u64, events: Option<WorkerEvents>, rank: u32) {
        let Some(i) = self.collections.iter().position(|c| c.req == req) else { return };
        let c = &mut self.collections[i];
        if c.waiting.remove(&rank) {
            c.got.extend(events);
            self.answer_if_complete(i);
        }
    }

    /// Answers collection `i` if no worker is left to answer it.
    fn answer_if_complete(&mut self, i: usize) {
        if self.collections[i].waiting.is_empty() {
            let mut c = self.collections.swap_remove(i);
            c.got.sort_by_key(|w| w.rank);
            let kernels = self.registry.names().map(str::to_owned).collect();
            let transport = self.transport.name().to_owned();
            c.reply.send(EventLog { kernels, workers: c.got, transport });
        }
    }

    /// A worker rank logged an error: show it here, on the driver's rank,
    /// once per rank.
    fn on_remote_error(&mut self, rank: u32, line: String) {
        if self.remote_errors.iter().any(|(r, _)| *r == rank) {
            return;
        }
        let host = self.worker_of_rank.get(&rank).map(|&w| self.workers[w].host.clone()).unwrap_or_default();
        tracing::error!(rank, %host, "error on worker rank {rank}: {line}");
        self.remote_errors.push((rank, line));
    }
}

//! The [`Core`]: every field of the scheduler's state, events dispatched to
//! the files that decide, and decisions batched per worker.

use std::collections::BTreeSet;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use super::state::{Collection, Retirement, TaskTable, Waiter, WorkerRec};
use super::{Decision, Event, Hello, SchedulerConfig, Time};
use crate::error::{Error, Result};
use crate::graph::{Key, TaskId};
use crate::kernel::Registry;
use crate::protocol::WorkerInfo;

/// The scheduler's state machine: [`Event`]s in, [`Decision`]s out, no I/O.
///
/// ```
/// use std::time::Duration;
/// use tessera_runtime::scheduler::{Core, Decision, Event, Hello, ReplyTo, SchedulerConfig};
/// use tessera_runtime::protocol::WireRequest;
/// use tessera_runtime::{Key, Registry, Task};
///
/// let registry = std::sync::Arc::new(Registry::builtin());
/// let config = SchedulerConfig { worker_ranks: vec![1], queue_extra: 1, heartbeat_timeout: None, elastic: false, allowed_failures: 3 };
/// let mut core = Core::new(registry.clone(), config);
/// let t = Duration::ZERO;
/// core.join(t, Hello { rank: 1, threads: 1, registry: registry.digest(), ..Hello::default() }).unwrap();
/// let task = Task::new(Key::new("a", []), "sum").param(&1.0f64);
/// let req = WireRequest::Submit { tasks: vec![task], outputs: vec![Key::new("a", [])] };
/// core.handle(t, Event::Request { client: None, req, reply: ReplyTo(7) });
/// let mut out = Vec::new();
/// core.flush(&mut out);
/// assert!(matches!(out[0], Decision::Reply { to: ReplyTo(7), .. }));
/// assert!(matches!(&out[1], Decision::Run { rank: 1, tasks } if tasks.len() == 1));
/// ```
pub struct Core {
    pub(super) registry: Arc<Registry>,
    pub(super) config: SchedulerConfig,
    /// What the transport calls itself (for event logs).
    pub(super) transport_name: String,
    /// The time of the event being handled.
    pub(super) now: Time,
    pub(super) tasks: TaskTable,
    /// Outputs the clients hold, by key (later graphs name them).
    pub(super) keys: FxHashMap<Key, TaskId>,
    pub(super) next_id: u64,
    pub(super) submissions: u64,
    pub(super) workers: Vec<WorkerRec>,
    pub(super) worker_of_rank: FxHashMap<u32, usize>,
    /// Ready tasks bound to no worker (roots), by priority.
    pub(super) unbound: BTreeSet<(u64, TaskId)>,
    /// Ready tasks in any scheduler-side queue.
    pub(super) queued: usize,
    /// Workers with a non-empty queue, by its length: whom to steal from.
    pub(super) by_queue: BTreeSet<(usize, usize)>,
    /// Workers to offer tasks to at the next flush (load or queue changed).
    pub(super) to_fill: Vec<usize>,
    /// New unbound tasks: every worker with room is offered some.
    pub(super) fill_everyone: bool,
    /// Workers that found nothing to run or steal: woken one at a time as
    /// tasks queue up elsewhere.
    pub(super) hungry: Vec<usize>,
    /// Workers that found nothing in this flush: hungry from the next.
    pub(super) hungry_later: Vec<usize>,
    /// Workers with batched messages.
    pub(super) to_flush: Vec<usize>,
    /// Draining workers that may be waiting for copies of their blocks.
    pub(super) handing_off: Vec<usize>,
    /// Decisions taken since the last flush, in order.
    pub(super) decisions: Vec<Decision>,
    pub(super) waiters: FxHashMap<u64, Waiter>,
    pub(super) next_waiter: u64,
    /// Bytes of computed blocks held now (one copy each), and the most ever.
    pub(super) mem_bytes: u64,
    pub(super) peak_bytes: u64,
    /// Running mean of each kernel's duration in microseconds (NaN: unknown).
    pub(super) durations: Vec<f64>,
    /// Running mean of each kernel's output size in bytes (NaN: unknown).
    pub(super) out_bytes: Vec<f64>,
    /// Tasks of each kernel finished (what the means above rest on).
    pub(super) finished: Vec<u32>,
    pub(super) retirements: Vec<Retirement>,
    /// Results each remote client holds (by rank, with multiplicity):
    /// released if the client goes away without releasing them.
    pub(super) held_by: FxHashMap<u32, FxHashMap<TaskId, u32>>,
    /// Tasks completed and bytes copied between workers, since start.
    pub(super) completed: u64,
    /// Task runs repeated because workers were lost, and workers lost
    /// without notice, since start.
    pub(super) recomputed: u64,
    pub(super) workers_lost: u64,
    pub(super) moved_bytes: u64,
    /// Event collections waiting for workers' answers.
    pub(super) collections: Vec<Collection>,
    pub(super) next_collection: u64,
    /// The first error each worker rank logged.
    pub(super) remote_errors: Vec<(u32, String)>,
}

impl Core {
    pub fn new(registry: Arc<Registry>, config: SchedulerConfig) -> Core {
        Core {
            durations: vec![f64::NAN; registry.len()],
            out_bytes: vec![f64::NAN; registry.len()],
            finished: vec![0; registry.len()],
            registry,
            config,
            transport_name: String::new(),
            now: Time::ZERO,
            tasks: TaskTable::default(),
            keys: FxHashMap::default(),
            next_id: 0,
            submissions: 0,
            workers: Vec::new(),
            worker_of_rank: FxHashMap::default(),
            unbound: BTreeSet::new(),
            queued: 0,
            by_queue: BTreeSet::new(),
            to_fill: Vec::new(),
            fill_everyone: false,
            hungry: Vec::new(),
            hungry_later: Vec::new(),
            to_flush: Vec::new(),
            handing_off: Vec::new(),
            decisions: Vec::new(),
            waiters: FxHashMap::default(),
            next_waiter: 0,
            mem_bytes: 0,
            peak_bytes: 0,
            retirements: Vec::new(),
            held_by: FxHashMap::default(),
            completed: 0,
            recomputed: 0,
            workers_lost: 0,
            moved_bytes: 0,
            collections: Vec::new(),
            next_collection: 1,
            remote_errors: Vec::new(),
        }
    }

    /// Names the transport in the event logs this core answers with.
    pub fn set_transport_name(&mut self, name: &str) {
        self.transport_name = name.to_owned();
    }

    /// Handles one event at time `now`. Decisions accumulate until [`Core::flush`].
    pub fn handle(&mut self, now: Time, event: Event) {
        self.now = now;
        match event {
            Event::Done { id, nbytes, micros } => self.on_done(id, nbytes, micros),
            Event::Failed { id, error, numerical } => self.on_failed(id, error, numerical),
            Event::Replica { rank, id } => {
                self.seen(rank);
                self.on_replica(rank, id);
            }
            Event::InputLost { id, input, from } => self.on_input_lost(id, input, from),
            Event::Heartbeat { rank } => self.seen(rank),
            Event::Memory { rank, memory, spilled, paused } => self.on_memory(rank, memory, spilled, paused),
            Event::Request { client, req, reply } => self.on_request(client, req, reply),
            Event::Hello(hello) if self.config.elastic => {
                let rank = hello.rank;
                if let Err(e) = self.join(now, hello) {
                    tracing::error!(rank, "refused a worker: {e}");
                    self.decisions.push(Decision::Stop { rank, failed: true, reason: e.to_string() });
                }
            }
            Event::Hello(hello) => tracing::warn!(rank = hello.rank, "a hello after start-up; ignored"),
            Event::Drain { rank } => match self.worker_of_rank.get(&rank) {
                Some(&w) if !self.workers[w].gone => {
                    tracing::info!(rank, "worker asks to leave; draining it");
                    self.start_drain(w);
                }
                _ => tracing::debug!(rank, "drain asked for by an unknown worker"),
            },
            Event::Bye { rank } => self.on_bye(rank),
            Event::PeerLost { rank, reason } => self.on_peer_lost(rank, reason),
            Event::Events { rank, req, events } => self.on_events(req, Some(*events), rank),
            Event::Log { rank, line } => self.on_remote_error(rank, line),
            Event::Tick => self.check_liveness(),
        }
    }

    /// Offers ready tasks to workers with room and moves every decision
    /// taken since the last flush to `out`, each worker's tasks, releases and
    /// cancels batched into one decision of each kind.
    pub fn flush(&mut self, out: &mut Vec<Decision>) {
        self.fill_all();
        for w in std::mem::take(&mut self.to_flush) {
            self.flush_worker(w);
        }
        out.append(&mut self.decisions);
    }

    /// Moves worker `w`'s batched messages to the decisions.
    pub(super) fn flush_worker(&mut self, w: usize) {
        let rec = &mut self.workers[w];
        rec.flush_mark = false;
        let rank = rec.rank;
        // Cancels first: a task taken back and sent again (placed anew)
        // must find the worker rid of the old one.
        if !rec.cancels.is_empty() {
            self.decisions.push(Decision::Cancel { rank, ids: std::mem::take(&mut rec.cancels) });
        }
        if !rec.outbox.is_empty() {
            self.decisions.push(Decision::Run { rank, tasks: std::mem::take(&mut rec.outbox) });
        }
        if !rec.releases.is_empty() {
            self.decisions.push(Decision::Release { rank, ids: std::mem::take(&mut rec.releases) });
        }
    }

    /// Adds a worker; refuses one whose kernels differ from the scheduler's.
    /// A second hello from a live worker is ignored.
    pub fn join(&mut self, now: Time, hello: Hello) -> Result<()> {
        self.now = now;
        let rank = hello.rank;
        if hello.registry != self.registry.digest() {
            return Err(Error::RegistryMismatch {
                rank,
                detail: format!("{} kernels there, {} here", hello.kernels, self.registry.len()),
            });
        }
        if self.worker_of_rank.get(&rank).is_some_and(|&w| !self.workers[w].gone) {
            tracing::warn!(rank, "a second hello from a worker; ignored");
            return Ok(());
        }
        tracing::info!(rank, threads = hello.threads, host = %hello.host, name = %hello.name, "worker joined");
        let w = self.workers.len();
        self.worker_of_rank.insert(rank, w);
        self.workers.push(WorkerRec::new(hello, self.config.queue_extra, now));
        self.mark_fill(w);
        Ok(())
    }

    /// The roll call is complete: workers are numbered in rank order.
    pub fn started(&mut self) {
        debug_assert!(self.tasks.is_empty(), "workers renumbered under tasks");
        self.workers.sort_by_key(|w| w.rank);
        self.worker_of_rank = self.workers.iter().enumerate().map(|(i, w)| (w.rank, i)).collect();
    }

    /// The first expected worker rank that has not joined.
    pub fn missing_worker(&self) -> Option<u32> {
        self.config.worker_ranks.iter().copied().find(|r| !self.worker_of_rank.contains_key(r))
    }

    /// Workers joined so far (gone ones included).
    pub fn joined(&self) -> usize {
        self.workers.len()
    }

    /// Tells every worker, and every expected one that never joined, to stop.
    pub fn shutdown(&mut self, failed: bool, reason: &str) {
        for w in 0..self.workers.len() {
            if !self.workers[w].gone {
                self.flush_worker(w);
                let rank = self.workers[w].rank;
                self.decisions.push(Decision::Stop { rank, failed, reason: reason.to_owned() });
            }
        }
        for i in 0..self.config.worker_ranks.len() {
            let rank = self.config.worker_ranks[i];
            if !self.worker_of_rank.contains_key(&rank) {
                self.decisions.push(Decision::Stop { rank, failed, reason: reason.to_owned() });
            }
        }
    }

    /// Worker ranks that have not left (or never joined): those whose goodbye a shutdown waits for.
    pub fn live_ranks(&self) -> FxHashSet<u32> {
        let mut left: FxHashSet<u32> = self.config.worker_ranks.iter().copied().collect();
        for w in &self.workers {
            if w.gone {
                left.remove(&w.rank);
            } else {
                left.insert(w.rank);
            }
        }
        left
    }

    /// The workers that take tasks now (draining ones are leaving), by rank.
    pub fn worker_infos(&self) -> Vec<WorkerInfo> {
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

    /// Tasks the core keeps a record of (a figure for the simulator).
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Worker `rank` reported its memory: a paused worker is offered no
    /// task (`fill`); one that resumes is filled again.
    fn on_memory(&mut self, rank: u32, memory: u64, spilled: u64, paused: bool) {
        self.seen(rank);
        let Some(&w) = self.worker_of_rank.get(&rank) else { return };
        let rec = &mut self.workers[w];
        let resumed = rec.paused && !paused;
        (rec.memory, rec.spilled, rec.paused) = (memory, spilled, paused);
        if resumed {
            self.mark_fill(w);
        } else if paused && !rec.queue.is_empty() {
            // Its queue is up for stealing.
            self.fill_everyone = true;
        }
    }

    pub(super) fn seen(&mut self, rank: u32) {
        if let Some(&w) = self.worker_of_rank.get(&rank) {
            self.workers[w].last_seen = self.now;
        }
    }
}

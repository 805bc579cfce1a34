//! Workers: compute threads sharing one inbox, one task table and one store.
//!
//! This folder owns what a worker rank holds and does: its threads and task
//! table (here) and its blocks ([`store`], which the transport also reads to
//! answer peers' fetches). The scheduler only ever sees a worker through the
//! messages it sends; a launch starts one with [`run_worker`].
//!
//! Each of a worker's `threads` threads waits on two channels at once: the
//! worker's inbox (tasks from the scheduler, fetched blocks, releases) and
//! the queue of tasks whose inputs are all present. Whichever thread is free
//! handles the next message or runs the next task, so with one thread there
//! is no hand-off at all. Parallelism has one level: `threads` tasks at
//! once, each kernel told to use one thread ([`crate::KernelCtx::threads`]).
//!
//! A task's missing inputs are fetched straight from a peer holding them
//! (`Fetch` to the peer, whose transport answers from its store; `Block`
//! back). An input the scheduler says this worker is computing itself (it
//! assigns a chain's next task ahead) is awaited, not fetched: the thread
//! finishing it starts the tasks waiting for it. A thread finishing a task
//! stores the block and reports `Done` (or `Failed`, for an error or a
//! panic) to the scheduler itself.
//!
//! A worker with a memory limit ([`memory`]) spills blocks to its
//! directory ([`spill`]) and pauses when memory runs short: a paused
//! worker's threads answer messages but start no task.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{select, Receiver, Sender};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::graph::TaskId;
use crate::kernel::{KernelCtx, Registry};
use crate::observe::events::{Recorder, TaskEvent, TaskKey, TransferEvent};
use crate::protocol::{Endpoint, Msg, Payload, RunTask};
use crate::transport::Transport;

pub mod memory;
pub mod spill;
pub mod store;

use memory::{Memory, MemoryConfig};
use store::BlockStore;

/// Worker settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub rank: u32,
    pub threads: usize,
    pub host: String,
    /// Reported to the scheduler (elastic workers: the batch job's id).
    pub name: String,
    /// Record events for reports and traces ([`crate::observe::events`]).
    pub events: bool,
    /// The CPUs each thread binds itself to (missing or empty: unbound);
    /// see [`crate::host::topology::plan`].
    pub cpus: Vec<Vec<usize>>,
    /// The GPU of a GPU worker (see [`crate::gpu`]).
    pub gpu: Option<Arc<crate::gpu::Gpu>>,
    /// The memory limit and thresholds (`None`: blocks stay in memory);
    /// the store spills only if it was made with a directory.
    pub memory: Option<MemoryConfig>,
}

impl WorkerConfig {
    /// A worker that records events and binds nothing.
    pub fn new(rank: u32, threads: usize, host: String) -> WorkerConfig {
        WorkerConfig {
            rank,
            threads,
            host,
            name: String::new(),
            events: true,
            cpus: Vec::new(),
            gpu: None,
            memory: None,
        }
    }
}

/// How a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerExit {
    /// Told to stop; `failed` when the driver failed.
    Shutdown { failed: bool, reason: String },
    /// Its inbox closed without a shutdown (the process is going down).
    Disconnected,
}

enum Job {
    Run(RunTask),
    Stop,
}

/// Tasks waiting for inputs.
#[derive(Default)]
struct Table {
    /// Task -> (task, inputs still missing).
    pending: FxHashMap<TaskId, (RunTask, usize)>,
    /// Input -> tasks waiting for it.
    waiting: FxHashMap<TaskId, Vec<TaskId>>,
    /// Inputs asked of a peer: when, and from which rank.
    fetching: FxHashMap<TaskId, (u64, u32)>,
}

impl Table {
    /// Takes waiting task `id` back (the scheduler placed it elsewhere or
    /// cancelled it): it no longer counts on any of its inputs, so that
    /// the same task sent here again waits for each input once.
    fn withdraw(&mut self, id: TaskId) -> Option<RunTask> {
        let (task, _) = self.pending.remove(&id)?;
        for input in &task.inputs {
            if let Some(w) = self.waiting.get_mut(&input.id) {
                w.retain(|t| *t != id);
                if w.is_empty() {
                    self.waiting.remove(&input.id);
                }
            }
        }
        Some(task)
    }
}

struct Worker {
    rank: u32,
    gpu: Option<Arc<crate::gpu::Gpu>>,
    registry: Arc<Registry>,
    transport: Arc<dyn Transport>,
    store: BlockStore,
    table: Mutex<Table>,
    jobs: Sender<Job>,
    exit: Mutex<Option<WorkerExit>>,
    host: String,
    recorder: Recorder,
    memory: Arc<Memory>,
}

/// Runs a worker until it is told to stop; returns after every thread ended
/// and `Bye` went to the scheduler.
pub fn run_worker(
    config: WorkerConfig,
    registry: Arc<Registry>,
    transport: Arc<dyn Transport>,
    store: BlockStore,
    inbox: Receiver<Msg>,
) -> WorkerExit {
    crate::panic::install_quiet_hook();
    let rank = config.rank;
    let threads = config.threads.max(1);
    let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded();
    let gpu_name = config.gpu.as_ref().map(|g| format!("GPU {} ({})", g.ordinal(), g.name())).unwrap_or_default();
    let worker = Arc::new(Worker {
        rank,
        gpu: config.gpu.clone(),
        registry,
        transport,
        store,
        table: Mutex::default(),
        jobs: jobs_tx,
        exit: Mutex::new(None),
        host: config.host.clone(),
        recorder: Recorder::new(config.events, threads, crate::observe::events::DEFAULT_CAPACITY),
        memory: Arc::new(Memory::new(config.memory.clone())),
    });
    worker.transport.send(
        Endpoint::SCHEDULER,
        Msg::Hello {
            rank,
            threads: threads as u32,
            host: config.host.clone(),
            name: config.name.clone(),
            registry: worker.registry.digest(),
            kernels: worker.registry.len() as u32,
            gpu: gpu_name.clone(),
        },
    );
    let cpus: Vec<String> = config.cpus.iter().map(|c| crate::host::topology::cpu_list(c)).collect();
    tracing::info!(rank, threads, host = %config.host, cpus = %cpus.join(" "), gpu = %gpu_name, "worker started");
    if let Some(m) = &config.memory {
        let dir = worker.store.spill_dir().map(|d| d.path().display().to_string()).unwrap_or_default();
        tracing::info!(rank, limit = %crate::host::sys::human_bytes(m.limit), source = %m.source, spill_dir = %dir, "memory managed");
    }
    let manager = {
        let t = Arc::clone(&worker.transport);
        let w = Arc::clone(&worker);
        memory::spawn_manager(
            &worker.memory,
            worker.store.clone(),
            rank,
            move |r| {
                let msg = Msg::Memory { rank, memory: r.usage.memory, spilled: r.usage.spilled, paused: r.paused };
                t.send(Endpoint::SCHEDULER, msg);
            },
            move |u, written, bytes, read_back| w.recorder.spilled(u.memory, u.spilled, written, bytes, read_back),
        )
    };
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (w, inbox, jobs) = (Arc::clone(&worker), inbox.clone(), jobs_rx.clone());
            let cpus = config.cpus.get(i).cloned().unwrap_or_default();
            std::thread::Builder::new()
                .name(format!("tessera-r{rank}-t{i}"))
                .spawn(move || {
                    w.bind(i, cpus);
                    w.thread_loop(i as u16, &inbox, &jobs, threads)
                })
                .expect("spawn a worker thread")
        })
        .collect();
    drop((inbox, jobs_rx));
    for h in handles {
        let _ = h.join();
    }
    worker.memory.stop();
    if let Some(m) = manager {
        let _ = m.join();
    }
    tracing::debug!(rank, blocks_held = worker.store.len(), "worker stopped");
    worker.transport.send(Endpoint::SCHEDULER, Msg::Bye { rank });
    let exit = worker.exit.lock().take();
    exit.unwrap_or(WorkerExit::Disconnected)
}

impl Worker {
    /// Binds the calling thread (thread `i`) to `cpus` and records where it runs.
    fn bind(&self, i: usize, cpus: Vec<usize>) {
        if let Err(e) = crate::host::topology::bind_current_thread(&cpus) {
            tracing::warn!(rank = self.rank, thread = i, cpus = %crate::host::topology::cpu_list(&cpus), "cannot bind: {e}");
        }
        self.recorder.thread_started(i, cpus, crate::host::topology::current_affinity());
    }

    fn thread_loop(&self, thread: u16, inbox: &Receiver<Msg>, jobs: &Receiver<Job>, threads: usize) {
        // While paused, only the inbox: no task starts.
        let never = crossbeam_channel::never();
        loop {
            let paused = self.memory.paused();
            let jobs = if paused { &never } else { jobs };
            select! {
                recv(jobs) -> job => match job {
                    Ok(Job::Run(task)) => self.run(task, thread),
                    Ok(Job::Stop) | Err(_) => return,
                },
                default(std::time::Duration::from_millis(if paused { 20 } else { 1000 })) => {},
                recv(inbox) -> msg => match msg {
                    Ok(Msg::Shutdown { failed, reason }) => {
                        // The first reason stands (a dropped connection after
                        // a clean shutdown is no failure).
                        self.exit.lock().get_or_insert(WorkerExit::Shutdown { failed, reason });
                        // One stop per thread, behind the tasks already queued.
                        for _ in 0..threads {
                            let _ = self.jobs.send(Job::Stop);
                        }
                    }
                    Ok(m) => self.handle(m),
                    Err(_) => {
                        for _ in 0..threads {
                            let _ = self.jobs.send(Job::Stop);
                        }
                    }
                },
            }
        }
    }

    fn handle(&self, msg: Msg) {
        match msg {
            Msg::Run(tasks) => {
                let mut table = self.table.lock();
                for task in tasks {
                    self.admit(&mut table, task);
                }
            }
            Msg::Block { id, payload } => {
                let Payload::Ready(block) = payload else {
                    tracing::error!(rank = self.rank, block = %id, "block arrived without its bytes");
                    return;
                };
                let bytes = block.nbytes() as u64;
                let mut table = self.table.lock();
                let store_bytes = self.store.insert(id, block);
                self.memory.stored(store_bytes);
                let fetched = table.fetching.remove(&id);
                self.input_arrived(&mut table, id);
                drop(table);
                if let Some((start_us, from)) = fetched {
                    let dur_us = crate::observe::events::now_us().saturating_sub(start_us);
                    self.recorder.transfer(TransferEvent { from, start_us, dur_us, bytes }, store_bytes);
                }
                self.transport.send(Endpoint::SCHEDULER, Msg::Replica { id, rank: self.rank });
            }
            Msg::Missing { id, rank: holder } => {
                // The scheduler places these tasks again (the holder may have
                // left; it knows where other copies are).
                let mut table = self.table.lock();
                table.fetching.remove(&id);
                for t in table.waiting.remove(&id).unwrap_or_default() {
                    if let Some(task) = table.withdraw(t) {
                        tracing::debug!(rank = self.rank, task = %task.id, input = %id, holder, "input unreachable");
                        self.transport
                            .send(Endpoint::SCHEDULER, Msg::InputLost { id: task.id, input: id, rank: holder });
                    }
                }
            }
            Msg::Acquire(blocks) => {
                // A draining peer hands these off: fetch a copy of each.
                let me = Endpoint::worker(self.rank);
                for b in blocks {
                    if self.store.contains(b.id) {
                        self.transport.send(Endpoint::SCHEDULER, Msg::Replica { id: b.id, rank: self.rank });
                    } else if let Some(&holder) = b.holders.first() {
                        self.fetching(&mut self.table.lock(), b.id, holder);
                        self.transport.send(Endpoint::worker(holder), Msg::Fetch { id: b.id, reply_to: me });
                    }
                }
            }
            Msg::Release(ids) => {
                let store_bytes = self.store.remove(ids);
                self.recorder.memory(store_bytes);
            }
            Msg::CollectEvents { req, clear } => {
                let events = Box::new(self.recorder.snapshot(self.rank, &self.host, clear));
                self.transport.send(Endpoint::SCHEDULER, Msg::Events { req, events });
            }
            Msg::Cancel(ids) => {
                let mut table = self.table.lock();
                for id in ids {
                    table.withdraw(id);
                }
            }
            other => tracing::warn!(rank = self.rank, msg = ?other, "worker got an unexpected message"),
        }
    }

    /// Queues `task` to run, or records what it waits for (fetching inputs
    /// held elsewhere, awaiting inputs this worker is computing).
    fn admit(&self, table: &mut Table, task: RunTask) {
        // Nowhere to fetch it from: the scheduler places the task again.
        if let Some(input) = task.inputs.iter().find(|i| i.holders.is_empty() && !self.store.contains(i.id)) {
            tracing::error!(rank = self.rank, task = %task.id, input = %input.id, "input without holders");
            self.transport.send(Endpoint::SCHEDULER, Msg::InputLost { id: task.id, input: input.id, rank: self.rank });
            return;
        }
        let mut missing = 0;
        for input in &task.inputs {
            if self.store.contains(input.id) {
                continue;
            }
            missing += 1;
            let waiters = table.waiting.entry(input.id).or_default();
            let first = waiters.is_empty();
            waiters.push(task.id);
            if first && !input.holders.contains(&self.rank) {
                // Never empty here: checked above.
                let spread = self.rank as usize % input.holders.len().max(1);
                let Some(&holder) = input.holders.get(spread) else { continue };
                tracing::trace!(rank = self.rank, input = %input.id, from = holder, "fetch");
                self.fetching(table, input.id, holder);
                let me = Endpoint::worker(self.rank);
                self.transport.send(Endpoint::worker(holder), Msg::Fetch { id: input.id, reply_to: me });
            }
        }
        if missing == 0 {
            let _ = self.jobs.send(Job::Run(task));
        } else {
            table.pending.insert(task.id, (task, missing));
        }
    }

    /// Notes when block `id` was asked of `holder`, for its transfer event.
    fn fetching(&self, table: &mut Table, id: TaskId, holder: u32) {
        if self.recorder.enabled() {
            table.fetching.insert(id, (crate::observe::events::now_us(), holder));
        }
    }

    /// Block `id` is now in the store: queue the tasks it completes.
    fn input_arrived(&self, table: &mut Table, id: TaskId) {
        for t in table.waiting.remove(&id).unwrap_or_default() {
            let Some(entry) = table.pending.get_mut(&t) else { continue };
            entry.1 -= 1;
            if entry.1 == 0 {
                let (task, _) = table.pending.remove(&t).expect("present");
                let _ = self.jobs.send(Job::Run(task));
            }
        }
    }

    fn run(&self, task: RunTask, thread: u16) {
        let inputs = match self.store.get_all(task.inputs.iter().map(|i| i.id)) {
            Ok(b) => b,
            Err(id) => {
                let error = format!("input {id} vanished from rank {}", self.rank);
                self.transport.send(Endpoint::SCHEDULER, Msg::Failed { id: task.id, error, numerical: None });
                return;
            }
        };
        let Some(kernel) = self.registry.get(task.kernel) else {
            let error = format!("kernel #{} is not registered on rank {}", task.kernel, self.rank);
            self.transport.send(Endpoint::SCHEDULER, Msg::Failed { id: task.id, error, numerical: None });
            return;
        };
        let ctx = KernelCtx { key: &task.key, rank: self.rank, threads: 1, gpu: self.gpu.as_ref() };
        // With "ran" below, a worker's debug log names the task it was in when it died.
        tracing::debug!(
            rank = self.rank,
            task = %task.key,
            kernel = self.registry.name(task.kernel).map_or("?", |n| &**n),
            "running"
        );
        let start = Instant::now();
        self.memory.running(true);
        let result = catch_unwind(AssertUnwindSafe(|| crate::panic::in_kernel(|| kernel(&ctx, &task.params, &inputs))));
        drop(inputs);
        self.memory.running(false);
        // A block memory cannot take fails its task (see `memory`).
        let result = match result {
            Ok(Ok(block)) => match self.memory.refuse(block.nbytes() as u64, || self.store.bytes()) {
                Some(why) => Ok(Err(crate::error::KernelError::msg(why))),
                None => Ok(Ok(block)),
            },
            other => other,
        };
        let micros = start.elapsed().as_micros() as u64;
        match &result {
            Ok(Ok(_)) => tracing::debug!(rank = self.rank, task = %task.key, micros, "ran"),
            _ => tracing::debug!(rank = self.rank, task = %task.key, micros, "failed"),
        }
        let mut store_bytes = None;
        let (msg, bytes) = match result {
            Ok(Ok(block)) => {
                let nbytes = block.nbytes() as u64;
                let mut table = self.table.lock();
                store_bytes = Some(self.store.insert(task.id, block));
                self.memory.stored(store_bytes.unwrap_or(0));
                self.input_arrived(&mut table, task.id);
                drop(table);
                (Msg::Done { id: task.id, nbytes, micros }, nbytes)
            }
            Ok(Err(e)) => (Msg::Failed { id: task.id, error: e.to_string(), numerical: e.numerical().cloned() }, 0),
            Err(panic) => {
                let error = format!("panicked: {}", crate::panic::message(&*panic));
                (Msg::Failed { id: task.id, error, numerical: None }, 0)
            }
        };
        if let Msg::Failed { error, .. } = &msg {
            crate::observe::log::task_failed(self.rank, &task.key, error);
        }
        if self.recorder.enabled() {
            let failed = matches!(msg, Msg::Failed { .. });
            let start_us = crate::observe::events::instant_us(start);
            let event = TaskEvent {
                key: TaskKey::default(),
                kernel: task.kernel,
                thread,
                start_us,
                dur_us: micros,
                bytes,
                failed,
            };
            // Where the thread runs changes rarely: look every 16th task.
            thread_local!(static TASKS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
            let n = TASKS.with(|c| c.replace(c.get().wrapping_add(1)));
            let cpu = if n & 15 == 0 { crate::host::topology::current_cpu() } else { None };
            self.recorder.task(&task.key, event, cpu, store_bytes.unwrap_or_else(|| self.store.bytes()));
        }
        self.transport.send(Endpoint::SCHEDULER, msg);
    }
}

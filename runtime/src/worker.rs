//! Workers: a message loop, a block store and a pool of compute threads.
//!
//! The loop thread receives tasks from the scheduler, fetches inputs it lacks
//! straight from the peers holding them (`Fetch` to the peer, `Block` back;
//! the scheduler only says where blocks are), serves peers' fetches from the
//! store, and hands tasks whose inputs are all local to the compute threads.
//! A compute thread runs the kernel, stores the block and reports `Done`
//! (or `Failed`, for an error or a panic) to the scheduler itself.
//!
//! Parallelism has one level: `threads` tasks run at once, each kernel told
//! to use one thread ([`crate::KernelCtx::threads`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::block::Block;
use crate::graph::TaskId;
use crate::kernel::{KernelCtx, Registry};
use crate::protocol::{Endpoint, Msg, Payload, RunTask};
use crate::transport::Transport;

/// Worker settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub rank: u32,
    pub threads: usize,
    pub host: String,
    /// Send a heartbeat this often (None: never; in-process clusters).
    pub heartbeat: Option<Duration>,
}

/// How a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerExit {
    /// Told to stop; `failed` when the driver failed.
    Shutdown { failed: bool, reason: String },
    /// Its inbox closed without a shutdown (the process is going down).
    Disconnected,
}

type Store = Arc<Mutex<FxHashMap<TaskId, Block>>>;

struct Pending {
    task: RunTask,
    missing: usize,
}

struct Job {
    task: RunTask,
    inputs: Vec<Block>,
}

/// Runs a worker until it is told to stop.
pub fn run_worker(
    config: WorkerConfig,
    registry: Arc<Registry>,
    transport: Arc<dyn Transport>,
    inbox: Receiver<Msg>,
) -> WorkerExit {
    crate::panic::install_quiet_hook();
    let rank = config.rank;
    let store: Store = Arc::default();
    let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<Job>();
    let pool: Vec<_> = (0..config.threads.max(1))
        .map(|i| {
            let jobs = jobs_rx.clone();
            let store = Arc::clone(&store);
            let registry = Arc::clone(&registry);
            let transport = Arc::clone(&transport);
            std::thread::Builder::new()
                .name(format!("tessera-r{rank}-t{i}"))
                .spawn(move || compute_loop(rank, jobs, store, registry, transport))
                .expect("spawn a compute thread")
        })
        .collect();
    drop(jobs_rx);

    transport.send(
        Endpoint::SCHEDULER,
        Msg::Hello {
            rank,
            threads: config.threads.max(1) as u32,
            host: config.host.clone(),
            registry: registry.digest(),
            kernels: registry.len() as u32,
        },
    );
    tracing::debug!(rank, threads = config.threads, "worker started");

    let me = Endpoint::worker(rank);
    let mut pending: FxHashMap<TaskId, Pending> = FxHashMap::default();
    let mut fetching: FxHashMap<TaskId, Vec<TaskId>> = FxHashMap::default();
    let beat = config.heartbeat.unwrap_or(Duration::from_secs(3600));
    let mut last_beat = Instant::now();

    let dispatch = |task: RunTask, store: &Store| -> Result<Job, (TaskId, String)> {
        let s = store.lock();
        let mut inputs = Vec::with_capacity(task.inputs.len());
        for i in &task.inputs {
            match s.get(&i.id) {
                Some(b) => inputs.push(b.clone()),
                None => return Err((task.id, format!("input {} vanished from rank {rank}", i.id))),
            }
        }
        drop(s);
        Ok(Job { task, inputs })
    };

    let exit = loop {
        if config.heartbeat.is_some() && last_beat.elapsed() >= beat {
            transport.send(Endpoint::SCHEDULER, Msg::Heartbeat { rank });
            last_beat = Instant::now();
        }
        let msg = match inbox.recv_timeout(beat) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break WorkerExit::Disconnected,
        };
        match msg {
            Msg::Run(tasks) => {
                for task in tasks {
                    let missing: Vec<(TaskId, u32)> = {
                        let s = store.lock();
                        task.inputs
                            .iter()
                            .filter(|i| !s.contains_key(&i.id))
                            .map(|i| (i.id, pick_holder(&i.holders, rank)))
                            .collect()
                    };
                    if missing.is_empty() {
                        match dispatch(task, &store) {
                            Ok(job) => jobs_tx.send(job).expect("compute threads outlive the loop"),
                            Err((id, error)) => transport.send(Endpoint::SCHEDULER, Msg::Failed { id, error }),
                        }
                        continue;
                    }
                    for &(input, holder) in &missing {
                        let waiting = fetching.entry(input).or_default();
                        if waiting.is_empty() {
                            tracing::trace!(rank, input = %input, from = holder, "fetch");
                            transport.send(Endpoint::worker(holder), Msg::Fetch { id: input, reply_to: me });
                        }
                        waiting.push(task.id);
                    }
                    pending.insert(task.id, Pending { missing: missing.len(), task });
                }
            }
            Msg::Fetch { id, reply_to } => {
                let block = store.lock().get(&id).cloned();
                match block {
                    Some(b) => transport.send(reply_to, Msg::Block { id, payload: Payload::Ready(b) }),
                    None => transport.send(reply_to, Msg::Missing { id, rank }),
                }
            }
            Msg::Block { id, payload } => {
                let Payload::Ready(block) = payload else {
                    tracing::error!(rank, block = %id, "block arrived without its bytes");
                    continue;
                };
                store.lock().insert(id, block);
                transport.send(Endpoint::SCHEDULER, Msg::Replica { id, rank });
                for t in fetching.remove(&id).unwrap_or_default() {
                    let Some(p) = pending.get_mut(&t) else { continue };
                    p.missing -= 1;
                    if p.missing == 0 {
                        let p = pending.remove(&t).expect("present");
                        match dispatch(p.task, &store) {
                            Ok(job) => jobs_tx.send(job).expect("compute threads outlive the loop"),
                            Err((id, error)) => transport.send(Endpoint::SCHEDULER, Msg::Failed { id, error }),
                        }
                    }
                }
            }
            Msg::Missing { id, rank: holder } => {
                for t in fetching.remove(&id).unwrap_or_default() {
                    if let Some(p) = pending.remove(&t) {
                        let error = format!("input {id} was not on rank {holder} when rank {rank} asked for it");
                        transport.send(Endpoint::SCHEDULER, Msg::Failed { id: p.task.id, error });
                    }
                }
            }
            Msg::Release(ids) => {
                let mut s = store.lock();
                for id in ids {
                    s.remove(&id);
                }
            }
            Msg::Cancel(ids) => {
                for id in ids {
                    pending.remove(&id);
                }
            }
            Msg::Shutdown { failed, reason } => break WorkerExit::Shutdown { failed, reason },
            other => tracing::warn!(rank, msg = ?other, "worker got an unexpected message"),
        }
    };

    drop(jobs_tx);
    for t in pool {
        let _ = t.join();
    }
    let held = store.lock().len();
    tracing::debug!(rank, blocks_held = held, "worker stopped");
    transport.send(Endpoint::SCHEDULER, Msg::Bye { rank });
    exit
}

/// Spreads fetches of one block over its holders.
fn pick_holder(holders: &[u32], me: u32) -> u32 {
    debug_assert!(!holders.is_empty(), "an input without holders was scheduled");
    holders[me as usize % holders.len().max(1)]
}

fn compute_loop(
    rank: u32,
    jobs: Receiver<Job>,
    store: Store,
    registry: Arc<Registry>,
    transport: Arc<dyn Transport>,
) {
    for Job { task, inputs } in jobs {
        let Some(kernel) = registry.get(task.kernel) else {
            let error = format!("kernel #{} is not registered on rank {rank}", task.kernel);
            transport.send(Endpoint::SCHEDULER, Msg::Failed { id: task.id, error });
            continue;
        };
        let ctx = KernelCtx { key: &task.key, rank, threads: 1 };
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| {
            crate::panic::in_kernel(|| kernel(&ctx, &task.params, &inputs))
        }));
        drop(inputs);
        let msg = match result {
            Ok(Ok(block)) => {
                let nbytes = block.nbytes() as u64;
                store.lock().insert(task.id, block);
                Msg::Done { id: task.id, nbytes, micros: start.elapsed().as_micros() as u64 }
            }
            Ok(Err(e)) => Msg::Failed { id: task.id, error: e.to_string() },
            Err(panic) => Msg::Failed { id: task.id, error: format!("panicked: {}", crate::panic::message(&*panic)) },
        };
        transport.send(Endpoint::SCHEDULER, msg);
    }
}

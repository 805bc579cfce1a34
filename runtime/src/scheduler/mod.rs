//! The scheduler: a state machine without I/O, and the thin loop that feeds it.
//!
//! [`Core`] holds every scheduling decision. It takes [`Event`]s (a graph
//! submitted, a task finished or failed, a block copied, a worker joined,
//! drained or left, a client released its results, a clock tick) with the
//! time passed in, and answers with [`Decision`]s as plain values (run these
//! tasks on that worker, release or cancel these blocks, copy blocks off a
//! leaving worker, stop a worker, reply to a client). It never touches a
//! transport, a thread or the clock, so its decisions are tested on small
//! hand-built states (`tests/`) and driven at the scale of thousands of
//! workers by a simulator on virtual time ([`sim`], `tessera bench simulate`).
//! The event loop (`event_loop.rs`, [`Scheduler`]) turns transport messages
//! into events and decisions into messages: the only part that does I/O.
//!
//! Where each decision lives:
//!
//! | file | concern |
//! |---|---|
//! | `machine.rs` | the [`Core`] itself: its fields, events dispatched, decisions batched |
//! | `state.rs` | task and worker records, reference counts, completion, queues |
//! | `submit.rs` | validation, culling, depth-first priorities; waits; client holdings |
//! | `placement.rs` | locality, root-task queuing, ahead assignment, stealing, batching |
//! | `membership.rs` | joining, draining, handing blocks off, retiring |
//! | `recovery.rs` | failures and their cascade, lost workers, recomputation, liveness |
//! | `status.rs` | the cluster's state, event collection, remote errors |
//!
//! The model in short:
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
//!   inputs stays unbound until some worker has room; roots whose kernel
//!   makes big blocks go only to a worker with a thread free (root-task
//!   queuing), so an out-of-core pass holds about one input block per thread.
//! * **Co-assignment.** Roots that feed other tasks, when there are at least
//!   two per thread of the cluster, are dealt out in runs of the priority
//!   order, one run per worker: each worker reduces its own part of the graph.
//! * **Queues.** Each worker gets up to `threads + queue_extra` tasks at a
//!   time (plus up to a millisecond of tasks known to be short), and the
//!   dependents sent ahead whose inputs are all computed there; the rest wait
//!   here in priority order. A worker with room and nothing of its own steals
//!   queued (never running) tasks of the most loaded busy worker.
//!   A worker paused for memory gets nothing new; what is queued for it
//!   here may be stolen, and it is filled again when it resumes.
//! * **Memory.** Every task counts the dependents that still need it plus the
//!   clients' handles; at zero its blocks are released on every worker that
//!   holds a copy, and a task nobody needs any more is cancelled.
//! * **Lineage.** A computed task whose block is released stays on record
//!   (`Released`: its kernel, parameters and inputs, no block) while a
//!   computed task names it as an input; the records go when the outputs
//!   built from them are released. Elastic clusters only: under MPI a lost
//!   rank ends the job, and a local cluster loses no worker.
//! * **Elastic clusters.** Workers join and leave at any time. A worker lost
//!   without notice has its tasks placed again and the blocks it alone held
//!   recomputed from their lineage, back to tasks without inputs when need
//!   be; a task running on `allowed_failures` lost workers fails. A draining
//!   worker gets no new task, hands the blocks only it holds to others, then
//!   is stopped.
//!
//! The work the core does per event does not grow with the cluster: workers
//! to fill and to flush are tracked as they change, and the most loaded
//! worker (the one to steal from) is kept in an ordered index.

mod event_loop;
mod machine;
mod membership;
mod placement;
mod recovery;
pub mod sim;
mod state;
mod status;
mod submit;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub(crate) use event_loop::{Ready, Scheduler};
pub use machine::Core;

use crate::graph::TaskId;
use crate::observe::events::WorkerEvents;
use crate::protocol::{InputLoc, RunTask};
use crate::protocol::{WireReply, WireRequest};

/// Time as the core sees it: since an arbitrary start, passed in with every
/// event (the event loop's monotonic clock, or a simulator's virtual time).
pub type Time = Duration;

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
    /// A task that was running on this many workers lost without notice
    /// fails (it may be what kills them); at least 1.
    pub allowed_failures: u32,
}

impl SchedulerConfig {
    /// What a task may cost before it fails: `--allowed-failures`' default.
    pub const ALLOWED_FAILURES: u32 = 3;
}

/// Who waits for an answer: a token the event loop hands in with a request
/// and gets back with its [`Decision::Reply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplyTo(pub u64);

/// A worker introducing itself.
#[derive(Clone, Debug, Default)]
pub struct Hello {
    pub rank: u32,
    pub threads: u32,
    pub host: String,
    pub name: String,
    /// The worker's GPU (empty: a CPU worker).
    pub gpu: String,
    /// Its kernel registry's digest and size (must match the scheduler's).
    pub registry: u64,
    pub kernels: u32,
}

/// What happens to the scheduler.
#[derive(Debug)]
pub enum Event {
    /// A worker joined (elastic clusters; MPI and local workers join through
    /// [`Core::join`] during the roll call).
    Hello(Hello),
    /// A client's request: `client` is the remote client's rank (what it
    /// holds is released if it goes away), `None` for one in this process.
    Request { client: Option<u32>, req: WireRequest, reply: ReplyTo },
    /// Task `id` finished in `micros` on the worker it was sent to: its block
    /// of `nbytes` is stored there.
    Done { id: TaskId, nbytes: u64, micros: u64 },
    /// Task `id`'s kernel failed (`numerical`: how, if it was a numerical failure).
    Failed { id: TaskId, error: String, numerical: Option<crate::error::NumericalError> },
    /// Worker `rank` now holds a copy of block `id`.
    Replica { rank: u32, id: TaskId },
    /// Task `id` could not fetch `input` from `from`.
    InputLost { id: TaskId, input: TaskId, from: u32 },
    /// Worker `rank` is alive.
    Heartbeat { rank: u32 },
    /// Worker `rank` holds `memory` bytes of blocks in memory and `spilled`
    /// on disk; `paused`: it starts no task until its memory is back under
    /// its pause threshold.
    Memory { rank: u32, memory: u64, spilled: u64, paused: bool },
    /// Worker `rank` asks to leave.
    Drain { rank: u32 },
    /// Worker `rank` stopped (it said goodbye).
    Bye { rank: u32 },
    /// The connection to `rank` (a worker or a remote client) broke.
    PeerLost { rank: u32, reason: String },
    /// Worker `rank` answered event collection `req`.
    Events { rank: u32, req: u64, events: Box<WorkerEvents> },
    /// The first error logged on worker rank `rank`.
    Log { rank: u32, line: String },
    /// Time passed: silent workers are declared lost.
    Tick,
}

/// What the scheduler decided; the event loop carries it out.
#[derive(Debug)]
pub enum Decision {
    /// Run these tasks on worker `rank`, highest priority first.
    Run { rank: u32, tasks: Vec<RunTask> },
    /// Worker `rank` may forget these blocks.
    Release { rank: u32, ids: Vec<TaskId> },
    /// Worker `rank` drops these tasks if it has not started them.
    Cancel { rank: u32, ids: Vec<TaskId> },
    /// Worker `rank` fetches copies of these blocks (a leaving peer's).
    Acquire { rank: u32, blocks: Vec<InputLoc> },
    /// Worker `rank` stops (`failed`: the job failed, or it was refused).
    Stop { rank: u32, failed: bool, reason: String },
    /// Worker `rank` sends what it recorded for collection `req`.
    CollectEvents { rank: u32, req: u64, clear: bool },
    /// The answer to a client's request.
    Reply { to: ReplyTo, answer: WireReply },
    /// A worker was lost where the job cannot go on without it (MPI).
    Abort { rank: u32, reason: String },
}

/// What made the scheduler loop end.
#[derive(Debug)]
pub enum Exit {
    /// The client asked for shutdown and every worker said goodbye.
    Clean,
    /// A worker was lost; the job cannot go on.
    WorkerLost { rank: u32, reason: String },
}

//! Task and worker records, the queues that hold ready tasks, reference
//! counts, and what a finished task changes.
//!
//! A task is `Waiting` for inputs, `Queued` (bound to a worker or not),
//! `Running` on a worker (or `Cancelled` there: nobody needs it any more),
//! in `Memory` on the workers in `who_has`, `Released` (computed, its block
//! let go, its recipe kept), or `Erred`. Its `refs` count the dependents
//! that still need it plus the clients' handles; at zero its blocks are
//! released, or it is cancelled. Its `kept_by` counts the records that name
//! it as an input: while any does, a computed task stays on record as
//! `Released`, so that a block lost with its worker can be recomputed back
//! through as many steps as it takes (the task's lineage; elastic clusters
//! only: under MPI a lost rank ends the job, a local cluster loses none). A
//! record goes when nothing needs it and nothing names it.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use rustc_hash::FxHashSet;
use smallvec::SmallVec;

use super::{Core, Decision, Hello, ReplyTo, Time};
use crate::error::Error;
use crate::graph::{Key, Params, TaskId};
use crate::observe::events::WorkerEvents;
use crate::protocol::RunTask;
use crate::protocol::WireReply;

/// Why a failed task failed, shared by everything that depends on it.
#[derive(Debug)]
pub(super) struct Failure {
    pub key: Key,
    pub kernel: String,
    pub rank: u32,
    pub cause: String,
    pub numerical: Option<crate::error::NumericalError>,
}

impl Failure {
    pub fn to_error(&self) -> Error {
        Error::TaskFailed {
            key: self.key.clone(),
            kernel: self.kernel.clone(),
            rank: self.rank,
            cause: self.cause.clone(),
            numerical: self.numerical.clone().map(Box::new),
        }
    }
}

#[derive(Debug)]
pub(super) enum State {
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
    /// Computed once, block released: kept only to compute it again if a
    /// block made from it is lost.
    Released,
    Erred(Arc<Failure>),
}

impl State {
    /// Whether the task holds a reference on each of its inputs: from
    /// submission until it is computed (or fails).
    pub fn holds_inputs(&self) -> bool {
        matches!(self, State::Waiting | State::Queued(_) | State::Running(_) | State::Cancelled(_))
    }

    /// Computed (its block held now, or released).
    pub fn computed(&self) -> bool {
        matches!(self, State::Memory | State::Released)
    }
}

/// The task table: every task the core knows, by id.
pub(super) type TaskTable = HashMap<TaskId, TaskRec, BuildHasherDefault<IdHasher>>;

/// Hashes a task id to itself in the bits that pick its bucket, so that
/// consecutive ids sit in consecutive buckets of the task table: ids are
/// handed out in priority order, and the tasks a worker runs one after
/// another (and their inputs and dependents) then share cache lines and
/// pages instead of each costing a miss. The top 7 bits, which the table
/// keeps as a tag to tell keys apart, are mixed from the whole id.
#[derive(Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, id: u64) {
        const TAG: u64 = 0x7f << 57;
        self.0 = (id & !TAG) | (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) & TAG);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Task ids hash as one u64; anything else folds in byte by byte.
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ b as u64);
        }
    }
}

/// A task's inputs or dependents: most tasks have one or two, kept in
/// the record itself (no allocation to make, free or miss in the cache).
pub(super) type Ids = SmallVec<[TaskId; 2]>;

pub(super) struct TaskRec {
    pub key: Key,
    /// In `Core::keys` (an output a client holds).
    pub keyed: bool,
    pub kernel: u32,
    pub params: Params,
    pub inputs: Ids,
    pub dependents: Ids,
    /// Inputs not yet in memory.
    pub waiting: u32,
    /// Dependents that still need this task, plus client handles.
    pub refs: u32,
    /// Records that name this task as an input (its lineage's users).
    pub kept_by: u32,
    pub prio: u64,
    /// Worker index the task must run on.
    pub pin: Option<usize>,
    pub state: State,
    pub who_has: SmallVec<[usize; 2]>,
    pub nbytes: u64,
    pub waiters: Vec<u64>,
    /// Times the task was placed again because an input could not be fetched.
    pub retries: u8,
    /// Workers lost without notice while running this task.
    pub lost_runs: u32,
}

pub(super) struct WorkerRec {
    pub rank: u32,
    pub threads: u32,
    pub host: String,
    pub name: String,
    /// The worker's GPU (empty: a CPU worker).
    pub gpu: String,
    /// Tasks it may have in flight (ahead assignment may exceed it).
    pub limit: u32,
    pub in_flight: u32,
    /// Of those, tasks sent ahead that still wait on the worker for an
    /// input being computed there: they hold no thread (advisory count).
    pub blocked: u32,
    /// Ready tasks bound here, not sent yet, by priority.
    pub queue: BTreeSet<(u64, TaskId)>,
    pub last_seen: Time,
    pub gone: bool,
    /// Takes no new task; leaves once it runs none and holds no block alone.
    pub draining: bool,
    /// Blocks only this draining worker held, being copied elsewhere.
    pub handoff: FxHashSet<TaskId>,
    /// Told to stop; gone at its `Bye` (or when its connection drops).
    pub leaving: bool,
    /// Paused for memory: takes no new task until it resumes.
    pub paused: bool,
    /// Bytes of blocks in its memory and spilled to its disk, as reported.
    pub memory: u64,
    pub spilled: u64,
    /// Batched for the next flush.
    pub outbox: Vec<RunTask>,
    pub releases: Vec<TaskId>,
    pub cancels: Vec<TaskId>,
    /// In `Core::to_fill`, `Core::to_flush`, `Core::hungry`.
    pub fill_mark: bool,
    pub flush_mark: bool,
    pub hungry: bool,
}

impl WorkerRec {
    pub fn new(hello: Hello, queue_extra: u32, now: Time) -> WorkerRec {
        let threads = hello.threads.max(1);
        WorkerRec {
            rank: hello.rank,
            threads,
            host: hello.host,
            name: hello.name,
            gpu: hello.gpu,
            limit: threads + queue_extra,
            in_flight: 0,
            blocked: 0,
            queue: BTreeSet::new(),
            last_seen: now,
            gone: false,
            draining: false,
            handoff: FxHashSet::default(),
            leaving: false,
            paused: false,
            memory: 0,
            spilled: 0,
            outbox: Vec::new(),
            releases: Vec::new(),
            cancels: Vec::new(),
            fill_mark: false,
            flush_mark: false,
            hungry: false,
        }
    }

    /// Whether new tasks and handed-off blocks may go here.
    pub fn open(&self) -> bool {
        !self.gone && !self.draining
    }

    pub fn has_gpu(&self) -> bool {
        !self.gpu.is_empty()
    }

    /// Tasks sent and queued here.
    pub fn load(&self) -> usize {
        self.in_flight as usize + self.queue.len()
    }

    /// Tasks sent here that can run now or soon (not blocked on an input).
    pub fn active(&self) -> u32 {
        self.in_flight.saturating_sub(self.blocked)
    }
}

/// A client waiting for tasks to be computed.
pub(super) struct Waiter {
    pub ids: Vec<TaskId>,
    pub remaining: usize,
    pub reply: ReplyTo,
}

/// A `retire_workers` call waiting for its workers to leave.
pub(super) struct Retirement {
    pub ranks: Vec<u32>,
    pub reply: ReplyTo,
}

/// A driver's request for the workers' events, until all have answered.
pub(super) struct Collection {
    pub req: u64,
    pub reply: ReplyTo,
    pub waiting: FxHashSet<u32>,
    pub got: Vec<WorkerEvents>,
}

fn running_mean(mean: &mut f64, x: f64) {
    *mean = if mean.is_nan() { x } else { 0.8 * *mean + 0.2 * x };
}

/// Queues, marks and replies: the bookkeeping every decision shares.
impl Core {
    /// Binds ready task `entry` to worker `w`'s queue.
    pub(super) fn queue_insert(&mut self, w: usize, entry: (u64, TaskId)) {
        let len = self.workers[w].queue.len();
        if len > 0 {
            self.by_queue.remove(&(len, w));
        }
        self.workers[w].queue.insert(entry);
        self.by_queue.insert((len + 1, w));
        self.mark_fill(w);
    }

    /// Takes `entry` off worker `w`'s queue; whether it was there.
    pub(super) fn queue_remove(&mut self, w: usize, entry: &(u64, TaskId)) -> bool {
        let len = self.workers[w].queue.len();
        if !self.workers[w].queue.remove(entry) {
            return false;
        }
        self.by_queue.remove(&(len, w));
        if len > 1 {
            self.by_queue.insert((len - 1, w));
        }
        true
    }

    /// Takes worker `w`'s first (highest-priority) queued task.
    pub(super) fn queue_pop(&mut self, w: usize) -> Option<(u64, TaskId)> {
        let first = *self.workers[w].queue.first()?;
        self.queue_remove(w, &first);
        Some(first)
    }

    /// Takes `entry` (state `Queued(bound)`) off whichever queue holds it.
    pub(super) fn unqueue(&mut self, bound: Option<usize>, entry: (u64, TaskId)) {
        match bound {
            Some(w) => self.queue_remove(w, &entry),
            None => self.unbound.remove(&entry),
        };
        self.queued -= 1;
    }

    /// Puts ready task `entry` in the unbound queue.
    pub(super) fn unbound_insert(&mut self, entry: (u64, TaskId)) {
        self.unbound.insert(entry);
        self.fill_everyone = true;
    }

    /// Worker `w` may take tasks at the next flush.
    pub(super) fn mark_fill(&mut self, w: usize) {
        if !self.workers[w].fill_mark {
            self.workers[w].fill_mark = true;
            self.to_fill.push(w);
        }
    }

    /// Worker `w` has batched messages.
    pub(super) fn mark_flush(&mut self, w: usize) {
        if !self.workers[w].flush_mark {
            self.workers[w].flush_mark = true;
            self.to_flush.push(w);
        }
    }

    pub(super) fn release_on(&mut self, w: usize, id: TaskId) {
        self.workers[w].releases.push(id);
        self.mark_flush(w);
    }

    /// Worker `w` drops task `id` unrun, without a word back (a task not
    /// sent yet is simply not sent).
    pub(super) fn cancel_on(&mut self, w: usize, id: TaskId) {
        let outbox = &mut self.workers[w].outbox;
        if let Some(i) = outbox.iter().position(|t| t.id == id) {
            outbox.remove(i);
            return;
        }
        self.workers[w].cancels.push(id);
        self.mark_flush(w);
    }

    /// One task fewer in flight on worker `w`.
    pub(super) fn unload(&mut self, w: usize) {
        self.workers[w].in_flight -= 1;
        self.mark_fill(w);
    }

    /// Task `id`, sent to worker `w`, leaves it unfinished (given up, taken
    /// back or cancelled): [`Core::unload`], and one task fewer blocked
    /// there if it was sent ahead and still waits for an input.
    pub(super) fn unload_task(&mut self, w: usize, id: TaskId) {
        if self.tasks[&id].waiting > 0 {
            let worker = &mut self.workers[w];
            worker.blocked = worker.blocked.saturating_sub(1);
        }
        self.unload(w);
    }

    pub(super) fn reply(&mut self, to: ReplyTo, answer: WireReply) {
        self.decisions.push(Decision::Reply { to, answer });
    }
}

/// Completion and reference counts.
impl Core {
    /// The worker running task `id` stored its block.
    pub(super) fn on_done(&mut self, id: TaskId, nbytes: u64, micros: u64) {
        let Some(rec) = self.tasks.get_mut(&id) else {
            tracing::warn!(task = %id, "Done for an unknown task");
            return;
        };
        let w = match rec.state {
            State::Running(w) => w,
            State::Cancelled(w) => {
                // Nobody wants the block it stored.
                self.release_on(w, id);
                self.drop_cancelled(id, w);
                return;
            }
            ref other => {
                tracing::warn!(task = %id, state = ?other, "Done for a task that was not running");
                return;
            }
        };
        self.completed += 1;
        running_mean(&mut self.durations[rec.kernel as usize], micros as f64);
        running_mean(&mut self.out_bytes[rec.kernel as usize], nbytes as f64);
        let finished = &mut self.finished[rec.kernel as usize];
        *finished = finished.saturating_add(1);
        rec.state = State::Memory;
        if !rec.who_has.contains(&w) {
            rec.who_has.push(w);
        }
        rec.nbytes = nbytes;
        let waiters = std::mem::take(&mut rec.waiters);
        // Inputs and dependents stay on record: a block lost with its
        // worker is recomputed from them.
        let inputs = std::mem::take(&mut rec.inputs);
        let dependents = std::mem::take(&mut rec.dependents);
        let unwanted = rec.refs == 0;
        self.mem_bytes += nbytes;
        self.peak_bytes = self.peak_bytes.max(self.mem_bytes);
        self.unload(w);
        self.workers[w].last_seen = self.now;
        for waiter in waiters {
            self.waiter_progress(waiter);
        }
        for &dep in &dependents {
            let Some(d) = self.tasks.get_mut(&dep) else { continue };
            if d.state.computed() || matches!(d.state, State::Erred(_)) {
                continue;
            }
            d.waiting = d.waiting.saturating_sub(1);
            if d.waiting == 0 {
                match d.state {
                    State::Waiting => self.make_ready(dep),
                    // Sent ahead: it runs now, on a thread of its worker.
                    State::Running(x) | State::Cancelled(x) => {
                        let worker = &mut self.workers[x];
                        worker.blocked = worker.blocked.saturating_sub(1);
                    }
                    _ => {}
                }
            } else if matches!(d.state, State::Waiting) {
                self.send_ahead_to_last(dep);
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

    /// Cancelled task `id` reported back from worker `w`: its slot frees,
    /// its inputs lose a dependent, a draining `w` may be done.
    pub(super) fn drop_cancelled(&mut self, id: TaskId, w: usize) {
        self.unload_task(w, id);
        // Copies fetched while it was being recomputed.
        for h in std::mem::take(&mut self.tasks.get_mut(&id).expect("cancelled tasks are on record").who_has) {
            if h != w {
                self.release_on(h, id);
            }
        }
        self.remove_record(id);
        if self.workers[w].draining {
            self.check_drain(w);
        }
    }

    /// One of the tasks waiter `waiter` waits for is computed.
    pub(super) fn waiter_progress(&mut self, waiter: u64) {
        let Some(w) = self.waiters.get_mut(&waiter) else { return };
        w.remaining -= 1;
        if w.remaining == 0 {
            let w = self.waiters.remove(&waiter).expect("present");
            let locations = self.locations(&w.ids);
            self.reply(w.reply, WireReply::Wait(Ok(locations)));
        }
    }

    /// The ranks holding each of `ids`.
    pub(super) fn locations(&self, ids: &[TaskId]) -> Vec<Vec<u32>> {
        ids.iter().map(|id| self.tasks[id].who_has.iter().map(|&w| self.workers[w].rank).collect()).collect()
    }

    pub(super) fn dec_ref(&mut self, id: TaskId) {
        let Some(rec) = self.tasks.get_mut(&id) else { return };
        debug_assert!(rec.refs > 0, "refcount underflow on {}", rec.key);
        rec.refs = rec.refs.saturating_sub(1);
        if rec.refs == 0 {
            self.forget(id);
        }
    }

    /// Tells `waiters` that task `key` was released before it was computed.
    fn lost_to_waiters(&mut self, key: &Key, waiters: Vec<u64>) {
        for w in waiters {
            if let Some(wt) = self.waiters.remove(&w) {
                let err = Error::Lost { key: key.clone(), reason: "it was released".into() };
                self.reply(wt.reply, WireReply::Wait(Err(err)));
            }
        }
    }

    /// Nobody needs `id` any more: release its blocks or cancel it; its
    /// record stays as `Released` while a computed task names it as an
    /// input, else it goes (and what only it named may follow).
    pub(super) fn forget(&mut self, id: TaskId) {
        if self.let_go(id) {
            self.remove_record(id);
        }
    }

    /// Releases `id`'s blocks, unqueues or cancels it; whether its record
    /// should go now.
    fn let_go(&mut self, id: TaskId) -> bool {
        let Some(rec) = self.tasks.get_mut(&id) else { return false };
        let held = matches!(rec.state, State::Memory);
        match rec.state {
            State::Running(w) => {
                // Let it finish; its block is released when it reports.
                rec.state = State::Cancelled(w);
                self.unkey(id);
                return false;
            }
            State::Cancelled(_) => return false,
            State::Queued(bound) => {
                let entry = (rec.prio, id);
                self.unqueue(bound, entry);
            }
            State::Memory => self.mem_bytes -= rec.nbytes,
            State::Waiting | State::Released | State::Erred(_) => {}
        }
        // Copies: a computed block's, or ones kept while it was recomputed.
        let holders = std::mem::take(&mut self.tasks.get_mut(&id).expect("present").who_has);
        for w in holders {
            self.release_on(w, id);
        }
        self.unkey(id);
        let rec = self.tasks.get_mut(&id).expect("present");
        // Only an elastic cluster survives a lost worker: elsewhere nothing
        // would ever be recomputed from the lineage.
        let keep = self.config.elastic && rec.state.computed() && rec.kept_by > 0;
        if held {
            rec.state = State::Released;
            // A draining worker need not hand this block off any more.
            self.handed_off(id);
        }
        !keep
    }

    /// Takes `id` out of the key index and fails its waiters: the client
    /// let it go before it was computed.
    fn unkey(&mut self, id: TaskId) {
        let rec = self.tasks.get_mut(&id).expect("present");
        if std::mem::take(&mut rec.keyed) {
            self.keys.remove(&rec.key);
        }
        let waiters = std::mem::take(&mut rec.waiters);
        if !waiters.is_empty() {
            let key = rec.key.clone();
            self.lost_to_waiters(&key, waiters);
        }
    }

    /// Removes the record of `id` (no block of it is held): its inputs
    /// lose a user, and the references it held if it was not computed;
    /// inputs that nothing needs or names any more are forgotten in turn
    /// (a worklist: lineages can be long).
    pub(super) fn remove_record(&mut self, id: TaskId) {
        let mut gone: SmallVec<[TaskId; 8]> = smallvec::smallvec![id];
        while let Some(id) = gone.pop() {
            let Some(rec) = self.tasks.remove(&id) else { continue };
            if rec.keyed {
                self.keys.remove(&rec.key);
            }
            let held = rec.state.holds_inputs();
            for input in rec.inputs {
                let Some(r) = self.tasks.get_mut(&input) else { continue };
                r.kept_by = r.kept_by.saturating_sub(1);
                if held {
                    debug_assert!(r.refs > 0, "refcount underflow on {}", r.key);
                    r.refs = r.refs.saturating_sub(1);
                    if r.refs == 0 && self.let_go(input) {
                        gone.push(input);
                    }
                } else if r.refs == 0 && r.kept_by == 0 && matches!(r.state, State::Released) {
                    gone.push(input);
                }
            }
        }
    }
}

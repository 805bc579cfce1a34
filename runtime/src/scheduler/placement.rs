//! Placement: which worker runs a ready task, and when it is sent.
//!
//! * **Locality.** A ready task with inputs is bound to the open worker
//!   holding the most of its input bytes (ties: the least loaded); a
//!   GPU-capable task to a GPU worker when one is open.
//! * **Root-task queuing.** A task without inputs stays unbound until a
//!   worker has room. Roots whose kernel makes big blocks (a mean of
//!   [`BIG_ROOT_BYTES`] or more, or not yet known) go only to a worker with a
//!   thread free: what they read or generate is consumed before more is made.
//! * **Ahead assignment.** Dependents whose inputs are all on a worker (or
//!   being computed there) are sent with the task that makes the last of
//!   them: the worker runs them back to back, no round trip in between.
//!   And a dependent whose inputs are all computed but those one worker is
//!   computing goes to that worker as soon as the others are done, when it
//!   holds as much of its input there as anywhere: the worker fetches the
//!   rest while the last input is computed (the levels of a reduction tree
//!   spanning workers then cost no round trip each).
//! * **Stealing.** A worker with room and nothing of its own takes queued
//!   (never running) tasks of the most loaded worker, from the low-priority
//!   end, when moving their inputs costs less than running them.

use std::sync::Arc;

use smallvec::SmallVec;

use super::state::{State, TaskRec};
use super::Core;
use crate::graph::TaskId;
use crate::protocol::{InputLoc, RunTask};

/// Tasks a worker may hold beyond its queue limit when they were sent ahead.
pub(super) const AHEAD: u32 = 32;

/// Bytes per second assumed for a transfer when weighing a steal.
const STEAL_BANDWIDTH: f64 = 1e9;

/// Roots are dealt out to workers when there are this many per thread or more.
const DEAL: usize = 2;

/// Tasks a worker may hold past its limit when they are short (see `short`).
const SHORT_AHEAD: u32 = 32;

/// Microseconds of short tasks a worker may hold past its limit.
const SHORT_WORK_US: f64 = 1000.0;

/// Roots held past the limit must make blocks smaller than this on average.
const SMALL_ROOT_BYTES: f64 = (16 << 10) as f64;

/// Tasks of a kernel that must have finished before its mean output size
/// counts as an estimate (for sending a task ahead to where its last input
/// is computed).
const KNOWN_AFTER: u32 = 8;

/// Holders of an input named in a task sent to a worker, at most.
const HOLDERS_SENT: usize = 4;

/// Hungry workers woken per backlogged worker per flush.
const WAKE: usize = 4;

/// Root tasks whose kernel's mean output is at least this big wait for a free thread.
pub(super) const BIG_ROOT_BYTES: f64 = (1 << 20) as f64;

impl Core {
    /// Task `id` has all its inputs: binds it to a worker's queue, or to none.
    pub(super) fn make_ready(&mut self, id: TaskId) {
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
                let worker = &self.workers[w];
                if !worker.open() || (gpu_only && !worker.has_gpu()) {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((b, bw)) => bytes > b || (bytes == b && worker.load() < self.workers[bw].load()),
                };
                if better {
                    best = Some((bytes, w));
                }
            }
        }
        if gpu_only && best.is_none() {
            best = (0..self.workers.len())
                .filter(|&w| self.workers[w].open() && self.workers[w].has_gpu())
                .min_by_key(|&w| self.workers[w].load())
                .map(|w| (0, w));
        }
        let entry = (rec.prio, id);
        let bound = best.map(|(_, w)| w);
        self.tasks.get_mut(&id).expect("ready task exists").state = State::Queued(bound);
        match bound {
            Some(w) => self.queue_insert(w, entry),
            None => self.unbound_insert(entry),
        }
        self.queued += 1;
    }

    /// Deals the roots among `ready` that feed other tasks out to the open
    /// CPU workers when they are many more than the cluster's threads: contiguous runs of the
    /// priority order, one run per worker (Dask's co-assignment of root
    /// groups). Each worker then works through its own part of the graph
    /// depth-first: sibling blocks are made where they are combined, and
    /// every part of the graph advances at once, so none is left to start
    /// last. Idle workers steal roots from the others' queues. The roots
    /// dealt are taken out of `ready`.
    pub(super) fn deal_roots(&mut self, ready: &mut Vec<TaskId>) {
        let open: Vec<usize> =
            (0..self.workers.len()).filter(|&w| self.workers[w].open() && !self.workers[w].has_gpu()).collect();
        let slots: usize = open.iter().map(|&w| self.workers[w].threads as usize).sum();
        // Roots that feed other tasks: dealing independent ones gains nothing.
        let registry = Arc::clone(&self.registry);
        let is_root = move |rec: &TaskRec| {
            rec.inputs.is_empty() && !rec.dependents.is_empty() && rec.pin.is_none() && !registry.is_gpu(rec.kernel)
        };
        let roots = ready.iter().filter(|id| is_root(&self.tasks[*id])).count();
        if open.len() < 2 || roots < DEAL * slots {
            return;
        }
        let mut rest = Vec::with_capacity(ready.len() - roots);
        let mut i = 0;
        for id in std::mem::take(ready) {
            let rec = self.tasks.get_mut(&id).expect("ready task exists");
            if !is_root(rec) {
                rest.push(id);
                continue;
            }
            let w = open[i * open.len() / roots];
            i += 1;
            rec.state = State::Queued(Some(w));
            let entry = (rec.prio, id);
            self.queue_insert(w, entry);
            self.queued += 1;
        }
        *ready = rest;
    }

    /// Offers tasks to the workers whose load or queue changed (to every
    /// worker when unbound tasks appeared), and to idle workers that may
    /// steal from those left with a backlog.
    pub(super) fn fill_all(&mut self) {
        if std::mem::take(&mut self.fill_everyone) {
            for w in 0..self.workers.len() {
                self.mark_fill(w);
            }
        }
        let mut i = 0;
        while i < self.to_fill.len() {
            let w = self.to_fill[i];
            i += 1;
            self.workers[w].fill_mark = false;
            self.fill(w);
        }
        self.to_fill.clear();
        self.hungry.append(&mut self.hungry_later);
    }

    /// Sends worker `w` tasks until it has `limit` in flight (plus up to a
    /// millisecond of short tasks): its own queue and the unbound ones by
    /// priority, else what it can steal. A
    /// worker left with nothing is hungry; one left with a backlog wakes
    /// hungry workers to steal from it.
    fn fill(&mut self, w: usize) {
        if self.workers[w].gone || self.workers[w].paused {
            return;
        }
        loop {
            let worker = &self.workers[w];
            let (active, limit) = (worker.active(), worker.limit);
            if active >= limit + SHORT_AHEAD {
                break;
            }
            // Past its limit a worker only takes a little more short work.
            let beyond = active >= limit;
            if worker.draining {
                // Only what is pinned here (the rest was moved off).
                if beyond {
                    break;
                }
                let Some((_, id)) = self.queue_pop(w) else { return };
                self.queued -= 1;
                self.start(w, id);
                continue;
            }
            let own = worker.queue.first().copied();
            if own.is_some_and(|(_, id)| self.withheld(w, id)) {
                // Its next task is a big root and its threads are busy: it waits.
                break;
            }
            let pick = if self.queued == 0 {
                None
            } else {
                let free = self.unbound.first().copied().filter(|&(_, id)| !self.withheld(w, id));
                let from_unbound = match (own, free) {
                    (Some(a), Some(b)) => b < a,
                    (None, Some(_)) => true,
                    _ => false,
                };
                match if from_unbound { free } else { own } {
                    Some((_, id)) if beyond && !self.short(id, active + 1 - limit) => break,
                    Some(_) if from_unbound => self.unbound.pop_first(),
                    Some(_) => self.queue_pop(w),
                    None if beyond => break,
                    None => self.steal_for(w),
                }
            };
            let Some((_, id)) = pick else {
                // Hungry again from the next flush on: within one flush a
                // worker looks for work to steal once, however many
                // backlogged workers would wake it.
                if !self.workers[w].hungry {
                    self.workers[w].hungry = true;
                    self.hungry_later.push(w);
                }
                return;
            };
            self.assign(w, id);
        }
        // Full, with tasks still queued here: idle workers may steal them.
        let mut wake = self.workers[w].queue.len().min(WAKE);
        while wake > 0 {
            let Some(h) = self.hungry.pop() else { break };
            let idle = &mut self.workers[h];
            idle.hungry = false;
            if h != w && idle.open() && idle.active() < idle.limit {
                self.mark_fill(h);
                wake -= 1;
            }
        }
    }

    /// Whether task `id` is short enough to be the `n`th task queued on a
    /// worker past its limit: `n` such tasks stay under [`SHORT_WORK_US`].
    /// Workers then run trivial tasks back to back without waiting for the
    /// scheduler's next turn, and at most that much work is out of reach of
    /// stealing.
    /// Roots qualify only when their blocks are small: queued roots make
    /// data before anything consumes it.
    fn short(&self, id: TaskId, n: u32) -> bool {
        let rec = &self.tasks[&id];
        let mean = self.durations[rec.kernel as usize];
        let small = !rec.inputs.is_empty() || self.out_bytes[rec.kernel as usize] < SMALL_ROOT_BYTES;
        small && !mean.is_nan() && (n as f64 * mean) < SHORT_WORK_US
    }

    /// Whether root task `id` waits for worker `w` to have a thread free: it
    /// makes a big block (or one of unknown size) and `w` is busy.
    fn withheld(&self, w: usize, id: TaskId) -> bool {
        let rec = &self.tasks[&id];
        let worker = &self.workers[w];
        if !rec.inputs.is_empty() || worker.active() < worker.threads {
            return false;
        }
        let mean = self.out_bytes[rec.kernel as usize];
        mean.is_nan() || mean >= BIG_ROOT_BYTES
    }

    /// Takes a queued task of the most loaded other worker, when all its
    /// threads are busy, from the low-priority end, if moving it costs less than
    /// running it or waiting for it: its input bytes the thief lacks, at
    /// [`STEAL_BANDWIDTH`], against the kernel's mean duration, or against
    /// the victim's queue in rounds of its threads times that duration
    /// (unknown durations count as free to steal only for inputs under 64 KiB).
    fn steal_for(&mut self, thief: usize) -> Option<(u64, TaskId)> {
        let mut victims = self.by_queue.iter().rev().map(|&(_, v)| v).filter(|&v| v != thief);
        let victim = victims.next()?;
        // A worker with a thread free takes its own queue (this flush, if
        // not yet), unless it is paused for memory.
        let paused = self.workers[victim].paused;
        if !paused && self.workers[victim].active() < self.workers[victim].threads {
            return None;
        }
        // Rounds of work ahead of the victim's last queued task (a paused
        // worker's queue waits until it resumes: moving always pays).
        let rounds = if paused {
            f64::INFINITY
        } else {
            self.workers[victim].queue.len() as f64 / self.workers[victim].threads as f64
        };
        let pick = self.workers[victim].queue.iter().rev().take(8).copied().find(|&(_, id)| {
            let rec = &self.tasks[&id];
            if rec.pin.is_some() || self.withheld(thief, id) {
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
                // Moving it pays when the transfer is short next to the task
                // itself, or next to the wait it would have in the victim's queue.
                run_us >= 2.0 * transfer_us || rounds * run_us >= 2.0 * transfer_us
            }
        })?;
        self.queue_remove(victim, &pick);
        tracing::trace!(task = %pick.1, from = self.workers[victim].rank, to = self.workers[thief].rank, "stolen");
        Some(pick)
    }

    /// Sends queued task `id` to worker `w`, with the dependents it enables there.
    fn assign(&mut self, w: usize, id: TaskId) {
        self.queued -= 1;
        self.start(w, id);
        self.assign_ahead(w, id);
    }

    /// Sends `id` to worker `w` (in the next flush's batch).
    pub(super) fn start(&mut self, w: usize, id: TaskId) {
        self.workers[w].in_flight += 1;
        let rec = self.tasks.get_mut(&id).expect("started task exists");
        rec.state = State::Running(w);
        if rec.waiting > 0 {
            self.workers[w].blocked += 1;
        }
        let rec = &self.tasks[&id];
        let inputs = rec
            .inputs
            .iter()
            .map(|i| {
                let r = &self.tasks[i];
                let holders = match r.state {
                    State::Running(x) => smallvec::smallvec![self.workers[x].rank],
                    // A block many workers copied (a broadcast factor) is
                    // offered from a few of them, a different few for each
                    // worker: the message stays small and the fetches spread.
                    _ if r.who_has.len() > HOLDERS_SENT => {
                        let start = w % r.who_has.len();
                        let window = r.who_has.iter().cycle().skip(start).take(HOLDERS_SENT);
                        window.map(|&h| self.workers[h].rank).collect()
                    }
                    _ => r.who_has.iter().map(|&h| self.workers[h].rank).collect(),
                };
                debug_assert!(!holders.is_empty(), "{} sent with input {} in state {:?}", rec.key, r.key, r.state);
                InputLoc { id: *i, holders, nbytes: r.nbytes }
            })
            .collect();
        let task = RunTask { id, key: rec.key.clone(), kernel: rec.kernel, params: Arc::clone(&rec.params), inputs };
        self.workers[w].outbox.push(task);
        self.mark_flush(w);
    }

    /// Sends `w` the dependents of `id` whose inputs are all on `w` or being
    /// computed there, ahead of time: the worker starts each the moment its
    /// last input is stored, without a round trip through the scheduler
    /// (chains and local reductions run back to back). Bounded by the
    /// worker's queue limit plus [`AHEAD`].
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
                // Dependents released meanwhile are gone.
                let Some(rec) = self.tasks.get(&d) else { continue };
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

    /// Sends waiting task `id` ahead to the worker computing all of its
    /// inputs not yet in memory, when there is one such worker, it is open
    /// and has room, and it will hold at least as many of the task's input
    /// bytes as any other worker (inputs being computed count at their
    /// kernel's mean output size, once [`KNOWN_AFTER`] of its tasks have
    /// finished; before that nothing is sent ahead). The worker fetches the
    /// inputs held elsewhere at once, while the last one is computed.
    pub(super) fn send_ahead_to_last(&mut self, id: TaskId) {
        let rec = &self.tasks[&id];
        let mut target = None;
        let mut there = 0.0;
        let mut elsewhere: SmallVec<[(usize, f64); 4]> = SmallVec::new();
        for input in &rec.inputs {
            let r = &self.tasks[input];
            match r.state {
                State::Running(x) if target.is_none_or(|t| t == x) => {
                    if self.finished[r.kernel as usize] < KNOWN_AFTER {
                        return;
                    }
                    target = Some(x);
                    there += self.out_bytes[r.kernel as usize];
                }
                State::Memory => {
                    for &h in &r.who_has {
                        match elsewhere.iter_mut().find(|(w, _)| *w == h) {
                            Some((_, b)) => *b += r.nbytes as f64,
                            None => elsewhere.push((h, r.nbytes as f64)),
                        }
                    }
                }
                _ => return,
            }
        }
        let Some(x) = target else { return };
        let worker = &self.workers[x];
        if !worker.open()
            || worker.in_flight >= worker.limit + AHEAD
            || rec.pin.is_some_and(|p| p != x)
            || (self.registry.is_gpu(rec.kernel) && !worker.has_gpu())
        {
            return;
        }
        let held_here = there + elsewhere.iter().find(|(w, _)| *w == x).map_or(0.0, |(_, b)| *b);
        if elsewhere.iter().any(|&(w, b)| w != x && b > held_here) {
            return;
        }
        self.start(x, id);
    }
}

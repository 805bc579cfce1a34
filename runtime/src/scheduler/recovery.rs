//! Failure and recovery: failed tasks and their cascade, workers that
//! leave, blocks computed again.
//!
//! A failed task fails everything downstream of it that is not computed
//! yet, with the same cause, and nothing else. A worker that leaves without
//! notice has its running and queued tasks placed again; a block only it
//! held that is still needed is recomputed from its lineage: inputs still
//! held are used, released ones are computed again first, back to tasks
//! without inputs (random blocks, file reads, data carried in the task).
//! Each is recomputed once however many lost blocks need it. A task that was
//! running on `allowed_failures` workers lost that way fails (it may be what
//! kills them). An input that cannot be fetched sends its task back for
//! placement, up to [`MAX_RETRIES`] times.

use std::sync::Arc;

use rustc_hash::FxHashSet;
use smallvec::SmallVec;

use super::state::{Failure, State, WorkerRec};
use super::{Core, Decision};
use crate::error::NumericalError;
use crate::graph::TaskId;
use crate::protocol::WireReply;

/// Placements a task gets when its inputs cannot be fetched, before it fails.
const MAX_RETRIES: u8 = 5;

impl Core {
    /// A worker reports that task `id` did not complete: returns the worker
    /// it ran on, or `None` if the task was cancelled meanwhile (then it is
    /// dropped here) or is not running.
    fn unfinished(&mut self, id: TaskId) -> Option<usize> {
        let w = match self.tasks.get(&id)?.state {
            State::Running(w) => w,
            State::Cancelled(w) => {
                self.drop_cancelled(id, w);
                return None;
            }
            _ => return None,
        };
        self.unload_task(w, id);
        Some(w)
    }

    /// Task `id`, sent to worker `w`, is placed again: the tasks sent ahead
    /// to `w` to wait there for its block (and for theirs, down a chain)
    /// would wait forever, so they are taken back to wait here (or dropped,
    /// if nobody needs them any more).
    fn recall_ahead(&mut self, w: usize, id: TaskId) {
        // (task, whether it was cancelled), ancestors first.
        let mut recalled: SmallVec<[(TaskId, bool); 8]> = SmallVec::new();
        let mut todo: SmallVec<[TaskId; 8]> = smallvec::smallvec![id];
        while let Some(t) = todo.pop() {
            let Some(rec) = self.tasks.get(&t) else { continue };
            for d in &rec.dependents {
                let Some(dr) = self.tasks.get(d) else { continue };
                let cancelled = match dr.state {
                    State::Running(x) if x == w && dr.waiting > 0 => false,
                    State::Cancelled(x) if x == w && dr.waiting > 0 => true,
                    _ => continue,
                };
                if !recalled.iter().any(|(r, _)| r == d) {
                    recalled.push((*d, cancelled));
                    todo.push(*d);
                }
            }
        }
        for (d, cancelled) in recalled {
            self.cancel_on(w, d);
            if cancelled {
                self.drop_cancelled(d, w);
            } else {
                self.unload_task(w, d);
                let waiting = self.unmet_inputs(d);
                let rec = self.tasks.get_mut(&d).expect("recalled tasks are on record");
                rec.state = State::Waiting;
                // Its count may be stale: an input it had fetched may have
                // been lost since (that does not count for a running task).
                rec.waiting = waiting;
            }
        }
    }

    /// Why task `id` failed, on worker rank `rank`.
    pub(super) fn failure(&self, id: TaskId, rank: u32, cause: String) -> Failure {
        let rec = &self.tasks[&id];
        Failure {
            key: rec.key.clone(),
            kernel: self.registry.name(rec.kernel).map(|n| n.to_string()).unwrap_or_default(),
            rank,
            cause,
            numerical: None,
        }
    }

    pub(super) fn on_failed(&mut self, id: TaskId, error: String, numerical: Option<NumericalError>) {
        let Some(w) = self.unfinished(id) else { return };
        let failure = Failure { numerical, ..self.failure(id, self.workers[w].rank, error) };
        tracing::debug!(task = %failure.key, cause = %failure.cause, "task failed");
        self.fail(id, failure);
        if self.workers[w].draining {
            self.check_drain(w);
        }
    }

    /// Fails `id` and everything downstream of it not computed yet with
    /// `failure`.
    pub(super) fn fail(&mut self, id: TaskId, failure: impl Into<Arc<Failure>>) {
        let failure: Arc<Failure> = failure.into();
        // (task, whether it held references on its inputs)
        let mut erred: Vec<(TaskId, bool)> = Vec::new();
        let mut todo = vec![id];
        let mut seen: FxHashSet<TaskId> = FxHashSet::default();
        seen.insert(id);
        while let Some(t) = todo.pop() {
            // Dependents released after an earlier failure are gone.
            let Some(rec) = self.tasks.get_mut(&t) else { continue };
            match rec.state {
                // Computed from an earlier copy of the failed block: valid.
                State::Memory | State::Released if t != id => continue,
                // Assigned ahead, waiting on the worker for the failed input
                // (unless that worker has left: nothing to take back there).
                State::Running(x) | State::Cancelled(x) if t != id && !self.workers[x].gone => {
                    self.unload_task(x, t);
                    self.cancel_on(x, t);
                }
                State::Queued(bound) => {
                    let entry = (rec.prio, t);
                    self.unqueue(bound, entry);
                }
                _ => {}
            }
            let rec = self.tasks.get_mut(&t).expect("present");
            erred.push((t, rec.state.holds_inputs()));
            rec.state = State::Erred(Arc::clone(&failure));
            for &d in &rec.dependents {
                if seen.insert(d) {
                    todo.push(d);
                }
            }
        }
        for &(t, _) in &erred {
            let Some(rec) = self.tasks.get_mut(&t) else { continue };
            let waiters = std::mem::take(&mut rec.waiters);
            for waiter in waiters {
                if let Some(wt) = self.waiters.remove(&waiter) {
                    self.reply(wt.reply, WireReply::Wait(Err(failure.to_error())));
                }
            }
        }
        // An erred task no longer needs its inputs, nor names them.
        for &(t, held) in &erred {
            let Some(rec) = self.tasks.get_mut(&t) else { continue };
            for input in std::mem::take(&mut rec.inputs) {
                let Some(r) = self.tasks.get_mut(&input) else { continue };
                r.kept_by = r.kept_by.saturating_sub(1);
                if held {
                    self.dec_ref(input);
                } else if r.refs == 0 && r.kept_by == 0 && matches!(r.state, State::Released) {
                    self.remove_record(input);
                }
            }
        }
        for &(t, _) in &erred {
            if self.tasks.get(&t).is_some_and(|r| r.refs == 0) {
                self.forget(t);
            }
        }
    }

    /// Declares silent workers lost: removed on elastic clusters, the end
    /// of the job otherwise ([`Decision::Abort`]).
    pub(super) fn check_liveness(&mut self) {
        let Some(timeout) = self.config.heartbeat_timeout else { return };
        let now = self.now;
        // Rank 0's own worker shares this process: it cannot be lost alone.
        let silent = |w: &WorkerRec| w.rank != 0 && !w.gone && now.saturating_sub(w.last_seen) > timeout;
        let Some(silent) = self.workers.iter().position(silent) else { return };
        let w = &self.workers[silent];
        let mut reason = format!("no message for {:.1} s", now.saturating_sub(w.last_seen).as_secs_f64());
        if let Some((_, line)) = self.remote_errors.iter().find(|(r, _)| *r == w.rank) {
            reason = format!("{reason}; its first error: {line}");
        }
        if self.config.elastic {
            tracing::warn!(rank = w.rank, %reason, "worker lost");
            self.remove_worker(silent, reason);
            return;
        }
        let rank = w.rank;
        self.decisions.push(Decision::Abort { rank, reason });
    }

    /// Worker `w` has left (`reason`): its copies are forgotten, blocks only
    /// it held are recomputed (or fail), its tasks are placed again.
    pub(super) fn remove_worker(&mut self, w: usize, reason: String) {
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
            rec.blocked = 0;
            rec.handoff.clear();
            rec.outbox.clear();
            rec.releases.clear();
            rec.cancels.clear();
        }
        let mut lost: Vec<(u64, TaskId)> = Vec::new();
        let mut rerun: Vec<TaskId> = Vec::new();
        let mut dropped: Vec<TaskId> = Vec::new();
        let mut orphaned: Vec<TaskId> = Vec::new();
        let mut unbind: Vec<(u64, TaskId)> = Vec::new();
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
                    rec.state = State::Queued(None);
                    unbind.push((rec.prio, id));
                }
                _ => {}
            }
            // A copy fetched before its block was lost, kept while it is recomputed.
            if !matches!(rec.state, State::Memory) {
                rec.who_has.retain(|x| *x != w);
            }
            if rec.pin == Some(w) && !rec.state.computed() && !matches!(rec.state, State::Erred(_)) {
                orphaned.push(id);
            }
        }
        for entry in unbind {
            self.queue_remove(w, &entry);
            self.unbound_insert(entry);
        }
        if graceful && !lost.is_empty() {
            tracing::warn!(rank, blocks = lost.len(), "a retired worker left blocks no one else holds");
        } else if !graceful {
            tracing::warn!(rank, %reason, lost_blocks = lost.len(), rerun = rerun.len(), "worker left without draining");
        }
        if !graceful {
            self.workers_lost += 1;
        }
        for id in dropped {
            self.remove_record(id);
        }
        // Lost blocks first, inputs before dependents (priority order).
        lost.sort_unstable();
        for (_, id) in lost {
            self.recompute(id, rank, &reason);
        }
        for id in rerun {
            let allowed = self.config.allowed_failures;
            let Some(rec) = self.tasks.get_mut(&id) else { continue };
            if !matches!(rec.state, State::Running(_)) {
                continue;
            }
            rec.state = State::Waiting;
            if !graceful {
                rec.lost_runs += 1;
                let runs = rec.lost_runs;
                if runs >= allowed {
                    let cause = format!(
                        "it was running on {runs} workers that were lost, the last rank {rank} ({reason}): \
                         it may be what kills them (--allowed-failures {allowed})"
                    );
                    let failure = self.failure(id, rank, cause);
                    tracing::error!(task = %failure.key, rank, runs, "task failed: its runs were lost with their workers");
                    self.fail(id, failure);
                    continue;
                }
                self.recomputed += 1;
            }
            self.replace(id);
        }
        for id in orphaned {
            if self.tasks.get(&id).is_some_and(|r| !r.state.computed() && !matches!(r.state, State::Erred(_))) {
                let failure =
                    self.failure(id, rank, format!("it is pinned to worker rank {rank}, which left ({reason})"));
                let rec = &self.tasks[&id];
                if let State::Queued(b) = rec.state {
                    let entry = (rec.prio, id);
                    self.unqueue(b, entry);
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

    /// Block `id`, needed and held only by a departed worker: computed
    /// again, with the released tasks of its lineage it needs (inputs
    /// before dependents); it fails naming the worker if some of that
    /// lineage cannot run (pinned to a worker that left, or failed).
    fn recompute(&mut self, id: TaskId, rank: u32, reason: &str) {
        // An earlier lost block's failure may have released this one.
        let Some(rec) = self.tasks.get(&id) else { return };
        if !matches!(rec.state, State::Memory) || !rec.who_has.is_empty() {
            return;
        }
        let nbytes = rec.nbytes;
        self.mem_bytes = self.mem_bytes.saturating_sub(nbytes);
        // Dependents that counted on the block wait for it again.
        let dependents = self.tasks[&id].dependents.clone();
        for d in dependents {
            let Some(dr) = self.tasks.get_mut(&d) else { continue };
            match dr.state {
                State::Waiting => dr.waiting += 1,
                State::Queued(b) => {
                    let entry = (dr.prio, d);
                    dr.state = State::Waiting;
                    dr.waiting = 1;
                    self.unqueue(b, entry);
                }
                _ => {}
            }
        }
        let (lineage, why) = self.lineage(id);
        if let Some(why) = why {
            let cause =
                format!("its block was lost with worker rank {rank} ({reason}) and cannot be recomputed: {why}");
            let failure = self.failure(id, rank, cause);
            tracing::warn!(task = %failure.key, rank, cause = %failure.cause, "block lost and not recomputable");
            self.fail(id, failure);
            return;
        }
        tracing::debug!(task = %self.tasks[&id].key, rank, revived = lineage.len() - 1, "recomputing a lost block");
        // Each task computed again holds its inputs again.
        for &t in &lineage {
            let inputs = self.tasks[&t].inputs.clone();
            for i in inputs {
                let r = self.tasks.get_mut(&i).expect("lineage inputs are on record");
                r.refs += 1;
                if !r.dependents.contains(&t) {
                    r.dependents.push(t);
                }
            }
            self.tasks.get_mut(&t).expect("present").state = State::Waiting;
        }
        self.recomputed += lineage.len() as u64;
        for t in lineage {
            self.replace(t);
        }
    }

    /// Lost block `id` and the released tasks it needs computed again, by
    /// priority (inputs first), or why that cannot be done.
    fn lineage(&self, id: TaskId) -> (Vec<TaskId>, Option<String>) {
        let mut found = vec![id];
        let mut seen: FxHashSet<TaskId> = FxHashSet::default();
        seen.insert(id);
        let mut i = 0;
        while i < found.len() {
            let rec = &self.tasks[&found[i]];
            i += 1;
            if rec.pin.is_some_and(|p| self.workers[p].gone) {
                let rank = rec.pin.map(|p| self.workers[p].rank).unwrap_or_default();
                return (found, Some(format!("{} is pinned to worker rank {rank}, which left", rec.key)));
            }
            for input in &rec.inputs {
                let Some(r) = self.tasks.get(input) else {
                    return (found, Some(format!("input {input} of {} is no longer on record", rec.key)));
                };
                match &r.state {
                    State::Released if seen.insert(*input) => found.push(*input),
                    State::Erred(f) => {
                        return (found, Some(format!("its input {} failed: {}", r.key, f.cause)));
                    }
                    _ => {}
                }
            }
        }
        found.sort_unstable_by_key(|t| self.tasks[t].prio);
        (found, None)
    }

    /// Task `id` (state `Waiting`) runs again: counts the inputs it waits
    /// for and becomes ready if none.
    fn replace(&mut self, id: TaskId) {
        let waiting = self.unmet_inputs(id);
        self.tasks.get_mut(&id).expect("present").waiting = waiting;
        if waiting == 0 {
            self.make_ready(id);
        }
    }

    /// How many inputs of task `id` are not in memory.
    fn unmet_inputs(&self, id: TaskId) -> u32 {
        let inputs = &self.tasks[&id].inputs;
        inputs.iter().filter(|i| !self.tasks.get(i).is_some_and(|r| matches!(r.state, State::Memory))).count() as u32
    }

    /// A worker could not fetch `input` of task `id` from `rank`.
    pub(super) fn on_input_lost(&mut self, id: TaskId, input: TaskId, rank: u32) {
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
            self.recall_ahead(w, id);
            // (Unless only a cancelled task recalled just now needed it.)
            if self.tasks.contains_key(&id) {
                self.replace(id);
            }
        }
        if self.workers[w].draining {
            self.check_drain(w);
        }
    }
}

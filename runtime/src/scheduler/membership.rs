//! Membership: workers that join, drain and leave.
//!
//! A draining worker (it asked to leave, or a client retires it) gets no new
//! task and its queue goes back to the others; once it runs nothing, the
//! blocks only it holds are copied to open workers (`Acquire`, each copy
//! reported as a `Replica`), and only then is it told to stop: no task is
//! lost or run twice. A retirement is answered once all its workers left.

use rustc_hash::FxHashMap;

use super::state::{Retirement, State};
use super::{Core, Decision, ReplyTo};
use crate::error::Error;
use crate::graph::TaskId;
use crate::protocol::InputLoc;
use crate::protocol::WireReply;

impl Core {
    /// Worker `rank` now holds a copy of block `id`.
    pub(super) fn on_replica(&mut self, rank: u32, id: TaskId) {
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
            // Lost with its worker after this copy was fetched, and being
            // computed again: the copy is valid and a task there may be
            // about to use it. Kept, and released with the block.
            Some(rec)
                if matches!(rec.state, State::Waiting | State::Queued(_) | State::Running(_))
                    && !self.workers[w].gone =>
            {
                if !rec.who_has.contains(&w) {
                    rec.who_has.push(w);
                }
            }
            // Released meanwhile: the copy is garbage.
            _ => self.release_on(w, id),
        }
    }

    /// Worker `rank` said goodbye.
    pub(super) fn on_bye(&mut self, rank: u32) {
        if !self.config.elastic {
            return;
        }
        if let Some(&w) = self.worker_of_rank.get(&rank) {
            if !self.workers[w].gone {
                let reason = if self.workers[w].leaving { "retired" } else { "stopped" };
                self.remove_worker(w, reason.into());
            }
        }
    }

    /// The connection to `rank` broke: a worker is lost (or retired, if it
    /// was leaving), a remote client's results are released.
    pub(super) fn on_peer_lost(&mut self, rank: u32, reason: String) {
        if let Some(&w) = self.worker_of_rank.get(&rank) {
            if !self.workers[w].gone {
                if self.workers[w].leaving {
                    self.remove_worker(w, "retired".into());
                } else {
                    tracing::warn!(rank, %reason, "worker lost");
                    self.remove_worker(w, reason);
                }
            }
        } else if !self.client_left(rank, &reason) {
            tracing::debug!(rank, %reason, "a client or a worker that never said hello left");
        }
    }

    /// `retire_workers`: drains each rank; the reply waits for all to leave.
    pub(super) fn retire(&mut self, ranks: Vec<u32>, reply: ReplyTo) {
        for &rank in &ranks {
            if self.worker_of_rank.get(&rank).is_none_or(|&w| self.workers[w].gone) {
                self.reply(reply, WireReply::Retire(Err(Error::UnknownWorker { rank })));
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

    pub(super) fn settle_retirements(&mut self) {
        let workers = &self.workers;
        let worker_of_rank = &self.worker_of_rank;
        let (done, waiting): (Vec<Retirement>, Vec<Retirement>) = std::mem::take(&mut self.retirements)
            .into_iter()
            .partition(|r| r.ranks.iter().all(|rank| worker_of_rank.get(rank).is_none_or(|&w| workers[w].gone)));
        self.retirements = waiting;
        for r in done {
            self.reply(r.reply, WireReply::Retire(Ok(r.ranks)));
        }
    }

    /// Worker `w` takes no new task and leaves once its blocks are safe.
    pub(super) fn start_drain(&mut self, w: usize) {
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
        let queue: Vec<(u64, TaskId)> = self.workers[w].queue.iter().copied().collect();
        for entry in queue {
            if self.tasks[&entry.1].pin != Some(w) {
                self.queue_remove(w, &entry);
                self.tasks.get_mut(&entry.1).expect("queued tasks exist").state = State::Queued(None);
                self.unbound_insert(entry);
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
    pub(super) fn check_drain(&mut self, w: usize) {
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
            batches.entry(slot.1).or_default().push(InputLoc { id, holders: smallvec::smallvec![from], nbytes });
            self.workers[w].handoff.insert(id);
        }
        if !self.handing_off.contains(&w) {
            self.handing_off.push(w);
        }
        for (t, blocks) in batches {
            let rank = self.workers[t].rank;
            tracing::debug!(from, to = rank, blocks = blocks.len(), "handing blocks off");
            self.decisions.push(Decision::Acquire { rank, blocks });
        }
        false
    }

    /// Block `id` has a new copy (or is gone): a draining worker waiting to
    /// hand it off may be done.
    pub(super) fn handed_off(&mut self, id: TaskId) {
        if self.handing_off.is_empty() {
            return;
        }
        let workers = &mut self.workers;
        self.handing_off.retain(|&w| !workers[w].handoff.is_empty());
        let waiting: Vec<usize> =
            self.handing_off.iter().copied().filter(|&w| self.workers[w].handoff.remove(&id)).collect();
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
        self.flush_worker(w);
        self.decisions.push(Decision::Stop { rank, failed: false, reason: "retired".into() });
    }
}

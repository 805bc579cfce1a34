//! What the scheduler tells about the cluster: its state, the workers'
//! recorded events gathered on request, and the first error each worker
//! rank logged.

use rustc_hash::FxHashSet;

use super::state::{Collection, State, TaskRec};
use super::{Core, Decision, ReplyTo};
use crate::graph::{Key, TaskId};
use crate::observe::events::{EventLog, WorkerEvents};
use crate::protocol::{ClusterState, WireReply};

impl Core {
    /// What the scheduler tracks now.
    pub(super) fn cluster_state(&self) -> ClusterState {
        let memory = self.tasks.values().filter(|r| matches!(r.state, State::Memory));
        let (in_memory, bytes) = memory.fold((0, 0), |(n, b), r| (n + 1, b + r.nbytes));
        ClusterState {
            tasks: self.tasks.len(),
            in_memory,
            bytes,
            peak_bytes: self.peak_bytes,
            waiting: self.tasks.values().filter(|r| matches!(r.state, State::Waiting)).count(),
            queued: self.queued,
            in_flight: self.workers.iter().filter(|w| !w.gone).map(|w| (w.rank, w.in_flight)).collect(),
            completed: self.completed,
            released: self.tasks.values().filter(|r| matches!(r.state, State::Released)).count(),
            workers_lost: self.workers_lost,
            recomputed: self.recomputed,
            moved_bytes: self.moved_bytes,
            spilled_bytes: self.workers.iter().filter(|w| !w.gone).map(|w| w.spilled).sum(),
            paused: self.workers.iter().filter(|w| !w.gone && w.paused).map(|w| w.rank).collect(),
            errors: self.remote_errors.clone(),
        }
    }

    /// Asks every live worker for its events; answers once all did (or left).
    pub(super) fn collect_events(&mut self, clear: bool, reply: ReplyTo) {
        let req = self.next_collection;
        self.next_collection += 1;
        let waiting: FxHashSet<u32> = self.workers.iter().filter(|w| !w.gone).map(|w| w.rank).collect();
        for &rank in &waiting {
            self.decisions.push(Decision::CollectEvents { rank, req, clear });
        }
        self.collections.push(Collection { req, reply, waiting, got: Vec::new() });
        self.answer_if_complete(self.collections.len() - 1); // no worker: at once
    }

    /// Worker `rank` answered collection `req` (`None`: it left without answering).
    pub(super) fn on_events(&mut self, req: u64, events: Option<WorkerEvents>, rank: u32) {
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
            let transport = self.transport_name.clone();
            self.reply(c.reply, WireReply::Events(EventLog { kernels, workers: c.got, transport }));
        }
    }

    /// A worker rank logged an error: show it here, on the driver's rank,
    /// once per rank.
    pub(super) fn on_remote_error(&mut self, rank: u32, line: String) {
        if self.remote_errors.iter().any(|(r, _)| *r == rank) {
            return;
        }
        let host = self.worker_of_rank.get(&rank).map(|&w| self.workers[w].host.clone()).unwrap_or_default();
        tracing::error!(rank, %host, "error on worker rank {rank}: {line}");
        self.remote_errors.push((rank, line));
    }

    /// Heap bytes the core's records hold: the task and key tables, each
    /// record's vectors, key indices and parameters, and the queue entries.
    /// Counted from capacities (what `bench simulate` reports per task).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        // A hash table slot: the entry plus one control byte.
        let table = |cap: usize, entry: usize| cap * (entry + 1);
        let mut bytes = table(self.tasks.capacity(), size_of::<(TaskId, TaskRec)>())
            + table(self.keys.capacity(), size_of::<(Key, TaskId)>());
        // Small vectors count only when they spilled to the heap.
        let spilled = |cap: usize, inline: bool, item: usize| if inline { 0 } else { cap * item };
        for r in self.tasks.values() {
            bytes += spilled(r.inputs.capacity(), !r.inputs.spilled(), size_of::<TaskId>())
                + spilled(r.dependents.capacity(), !r.dependents.spilled(), size_of::<TaskId>())
                + spilled(r.who_has.capacity(), !r.who_has.spilled(), size_of::<usize>())
                + r.waiters.capacity() * size_of::<u64>()
                + std::mem::size_of_val(r.key.index())
                + 2 * size_of::<usize>()
                + r.params.len();
        }
        // B-tree entries, with their nodes' slack.
        let queued = self.unbound.len() + self.workers.iter().map(|w| w.queue.len()).sum::<usize>();
        bytes + queued * 2 * size_of::<(u64, TaskId)>()
    }
}

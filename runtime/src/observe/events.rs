//! What ran where and when: events the workers record for reports and traces.
//!
//! Each worker keeps one [`Recorder`]: a bounded buffer of what its threads
//! did (a [`TaskEvent`] per task run, a [`TransferEvent`] per block fetched
//! from a peer, a [`MemorySample`] whenever its store changes size) plus
//! where each thread ran ([`ThreadInfo`]: the affinity read back after
//! binding, and the CPUs it was seen on). Recording a task is one short
//! lock and a push, well under a microsecond; nothing crosses the network
//! until a driver asks ([`crate::Client::events`]): the scheduler asks every
//! worker for its buffer and answers with an [`EventLog`].
//!
//! Times are microseconds since the Unix epoch: the wall clock read once per
//! process, advanced by the monotonic clock, so events of one rank never go
//! backwards and ranks on hosts with synchronised clocks line up.
//!
//! An [`EventLog`] becomes a self-contained HTML report
//! ([`crate::observe::report::write_html`]) or a Chrome trace-event file
//! ([`crate::observe::report::write_chrome_trace`]) that Perfetto opens.

use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::graph::Key;

/// Events a worker keeps before dropping the oldest (per kind).
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// Microseconds since the Unix epoch, monotonic within this process.
pub fn now_us() -> u64 {
    instant_us(Instant::now())
}

/// `t` in microseconds since the Unix epoch, on [`now_us`]'s clock (no
/// clock read: for a moment already taken).
pub fn instant_us(t: Instant) -> u64 {
    static ORIGIN: OnceLock<(Instant, u64)> = OnceLock::new();
    let (origin, wall) = ORIGIN.get_or_init(|| {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        (Instant::now(), wall)
    });
    wall + t.saturating_duration_since(*origin).as_micros() as u64
}

/// A task's key as events keep it: its name as an index into
/// [`WorkerEvents::names`] and up to [`TaskKey::INLINE`] index entries
/// inline, so recording a task allocates nothing and touches no shared
/// reference count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskKey {
    pub name: u32,
    index: [u32; TaskKey::INLINE],
    /// Entries of the key's index (those beyond `INLINE` are not kept).
    dims: u8,
}

impl TaskKey {
    pub const INLINE: usize = 4;

    pub(crate) fn new(name: u32, key: &Key) -> TaskKey {
        let mut index = [0; TaskKey::INLINE];
        for (slot, &i) in index.iter_mut().zip(key.index()) {
            *slot = i;
        }
        TaskKey { name, index, dims: key.index().len().min(255) as u8 }
    }

    /// The index entries kept.
    pub fn index(&self) -> &[u32] {
        &self.index[..(self.dims as usize).min(TaskKey::INLINE)]
    }

    /// As [`Key`] shows itself, `name[i, j]`, given the name; `, ...` marks entries not kept.
    pub fn display(&self, name: &str) -> String {
        if self.dims == 0 {
            return name.to_owned();
        }
        let index: Vec<String> = self.index().iter().map(u32::to_string).collect();
        let more = if self.dims as usize > TaskKey::INLINE { ", ..." } else { "" };
        format!("{name}[{}{more}]", index.join(", "))
    }
}

/// One task a worker thread ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub key: TaskKey,
    /// Index into the registry's kernels ([`EventLog::kernels`]).
    pub kernel: u32,
    /// The worker thread (0-based) that ran it.
    pub thread: u16,
    pub start_us: u64,
    pub dur_us: u64,
    /// Bytes of the block it made (0 when it failed).
    pub bytes: u64,
    pub failed: bool,
}

/// One block a worker fetched from a peer: from the request to its arrival.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferEvent {
    pub from: u32,
    pub start_us: u64,
    pub dur_us: u64,
    pub bytes: u64,
}

/// Bytes in a worker's block store at one moment: in memory, and spilled
/// to its disk.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemorySample {
    pub t_us: u64,
    pub bytes: u64,
    #[serde(default)]
    pub spilled: u64,
}

/// Blocks a worker's memory manager wrote to disk (`read_back` false) or
/// that tasks read back from it since the previous event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpillEvent {
    pub t_us: u64,
    pub blocks: u64,
    /// Bytes written (0 for reads back).
    pub bytes: u64,
    pub read_back: bool,
}

/// Where one worker thread ran.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ThreadInfo {
    /// The CPUs it was bound to, as asked (empty: not bound).
    pub bound: Vec<usize>,
    /// Its affinity as the kernel reported it after binding.
    pub affinity: Vec<usize>,
    /// The CPUs it was seen running tasks on.
    pub seen: Vec<usize>,
}

impl WorkerEvents {
    /// A recorded task's key as text.
    pub fn key(&self, task: &TaskEvent) -> String {
        task.key.display(self.names.get(task.key.name as usize).map_or("?", String::as_str))
    }
}

/// Everything one worker recorded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerEvents {
    pub rank: u32,
    pub host: String,
    /// Cores of the worker's host.
    pub host_cores: usize,
    pub threads: Vec<ThreadInfo>,
    /// Key names, indexed by [`TaskKey::name`].
    pub names: Vec<String>,
    pub tasks: Vec<TaskEvent>,
    pub transfers: Vec<TransferEvent>,
    pub memory: Vec<MemorySample>,
    /// Spills to disk and reads back ([`crate::worker::memory`]).
    #[serde(default)]
    pub spills: Vec<SpillEvent>,
    /// Events lost because a buffer was full (the oldest go first).
    pub dropped: u64,
}

/// The workers' events, gathered by the scheduler for a driver.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventLog {
    /// Kernel names by registry index.
    pub kernels: Vec<String>,
    /// One entry per worker that answered, by rank.
    pub workers: Vec<WorkerEvents>,
    /// The transport the cluster runs on.
    pub transport: String,
}

impl EventLog {
    /// Tasks recorded over all workers.
    pub fn task_count(&self) -> usize {
        self.workers.iter().map(|w| w.tasks.len()).sum()
    }

    /// Bytes and number of blocks moved between workers.
    pub fn moved(&self) -> (u64, usize) {
        let transfers = self.workers.iter().flat_map(|w| &w.transfers);
        transfers.fold((0, 0), |(b, n), t| (b + t.bytes, n + 1))
    }

    /// Events lost to full buffers over all workers.
    pub fn dropped(&self) -> u64 {
        self.workers.iter().map(|w| w.dropped).sum()
    }

    /// Earliest and latest moment any event covers (`None` when empty).
    pub fn span(&self) -> Option<(u64, u64)> {
        let mut span: Option<(u64, u64)> = None;
        let mut see = |a: u64, b: u64| {
            span = Some(span.map_or((a, b), |(lo, hi)| (lo.min(a), hi.max(b))));
        };
        for w in &self.workers {
            w.tasks.iter().for_each(|t| see(t.start_us, t.start_us + t.dur_us));
            w.transfers.iter().for_each(|t| see(t.start_us, t.start_us + t.dur_us));
            w.memory.iter().for_each(|m| see(m.t_us, m.t_us));
            w.spills.iter().for_each(|s| see(s.t_us, s.t_us));
        }
        span
    }

    /// Keeps only what started at or after `t_us` (a run's part of a
    /// long-lived elastic cluster's buffers).
    pub fn retain_since(&mut self, t_us: u64) {
        for w in &mut self.workers {
            w.tasks.retain(|t| t.start_us >= t_us);
            w.transfers.retain(|t| t.start_us >= t_us);
            w.memory.retain(|m| m.t_us >= t_us);
            w.spills.retain(|s| s.t_us >= t_us);
        }
    }

    /// The kernel's name for an index (`#i` when unknown).
    pub fn kernel_name(&self, i: u32) -> String {
        self.kernels.get(i as usize).cloned().unwrap_or_else(|| format!("#{i}"))
    }
}

/// A bounded buffer: pushing onto a full one drops the oldest entry.
#[derive(Debug)]
struct Ring<T> {
    items: std::collections::VecDeque<T>,
    capacity: usize,
}

impl<T: Clone> Ring<T> {
    fn new(capacity: usize) -> Ring<T> {
        Ring { items: Default::default(), capacity }
    }

    /// Returns whether an old entry was dropped.
    fn push(&mut self, item: T) -> bool {
        let full = self.items.len() >= self.capacity;
        if full {
            self.items.pop_front();
        }
        self.items.push_back(item);
        full
    }

    fn snapshot(&mut self, clear: bool) -> Vec<T> {
        if clear {
            self.items.drain(..).collect()
        } else {
            self.items.iter().cloned().collect()
        }
    }
}

#[derive(Debug)]
struct Buffers {
    tasks: Ring<TaskEvent>,
    transfers: Ring<TransferEvent>,
    memory: Ring<MemorySample>,
    spills: Ring<SpillEvent>,
    /// Bytes spilled now (every memory sample carries it).
    spilled: u64,
    threads: Vec<ThreadInfo>,
    /// Per thread, a bit per CPU it was seen on.
    seen: Vec<Vec<u64>>,
    dropped: u64,
    /// Key names by the address of their shared allocation (each kept
    /// alive here, so an address cannot come back as another name).
    name_ids: FxHashMap<usize, u32>,
    names: Vec<Arc<str>>,
}

/// Memory samples closer than this to the previous one are merged into it
/// (keeping the larger value, so peaks survive).
const MEMORY_RESOLUTION_US: u64 = 100;

impl Buffers {
    fn name_id(&mut self, key: &Key) -> u32 {
        let name = key.shared_name();
        let addr = Arc::as_ptr(name) as *const u8 as usize;
        *self.name_ids.entry(addr).or_insert_with(|| {
            self.names.push(Arc::clone(name));
            self.names.len() as u32 - 1
        })
    }

    fn memory(&mut self, t_us: u64, bytes: u64) {
        match self.memory.items.back_mut() {
            Some(last) if t_us.saturating_sub(last.t_us) < MEMORY_RESOLUTION_US => {
                last.bytes = last.bytes.max(bytes);
                last.spilled = self.spilled;
            }
            _ => self.dropped += self.memory.push(MemorySample { t_us, bytes, spilled: self.spilled }) as u64,
        }
    }
}

/// One worker's event buffers (see the module docs). Disabled recorders
/// ignore everything at the cost of one branch.
#[derive(Debug)]
pub struct Recorder {
    enabled: bool,
    buffers: Mutex<Buffers>,
}

impl Recorder {
    pub fn new(enabled: bool, threads: usize, capacity: usize) -> Recorder {
        let capacity = capacity.max(1);
        Recorder {
            enabled,
            buffers: Mutex::new(Buffers {
                tasks: Ring::new(capacity),
                transfers: Ring::new(capacity),
                memory: Ring::new(capacity),
                spills: Ring::new(capacity),
                spilled: 0,
                threads: vec![ThreadInfo::default(); threads],
                seen: vec![Vec::new(); threads],
                dropped: 0,
                name_ids: FxHashMap::default(),
                names: Vec::new(),
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Records where thread `thread` was bound and what the kernel says its affinity is.
    pub fn thread_started(&self, thread: usize, bound: Vec<usize>, affinity: Vec<usize>) {
        if let Some(t) = self.buffers.lock().threads.get_mut(thread) {
            t.bound = bound;
            t.affinity = affinity;
        }
    }

    /// Records a task (its `key` filled in from `key`) and, when known,
    /// the CPU it ran on and the store's size after it.
    pub fn task(&self, key: &Key, mut event: TaskEvent, cpu: Option<usize>, store_bytes: u64) {
        if !self.enabled {
            return;
        }
        let end = event.start_us + event.dur_us;
        let thread = event.thread as usize;
        let mut b = self.buffers.lock();
        event.key = TaskKey::new(b.name_id(key), key);
        if let (Some(cpu), Some(seen)) = (cpu, b.seen.get_mut(thread)) {
            if seen.len() <= cpu / 64 {
                seen.resize(cpu / 64 + 1, 0);
            }
            seen[cpu / 64] |= 1 << (cpu % 64);
        }
        b.dropped += b.tasks.push(event) as u64;
        b.memory(end, store_bytes);
    }

    /// Records a block fetched from a peer and the store's size after it arrived.
    pub fn transfer(&self, event: TransferEvent, store_bytes: u64) {
        if !self.enabled {
            return;
        }
        let end = event.start_us + event.dur_us;
        let mut b = self.buffers.lock();
        b.dropped += b.transfers.push(event) as u64;
        b.memory(end, store_bytes);
    }

    /// Records what the memory manager did: `written` blocks of
    /// `written_bytes` went to disk and `read_back` came back since its last
    /// call, leaving `memory` bytes in memory and `spilled` on disk.
    pub fn spilled(&self, memory: u64, spilled: u64, written: u64, written_bytes: u64, read_back: u64) {
        if !self.enabled {
            return;
        }
        let t_us = now_us();
        let mut b = self.buffers.lock();
        for (blocks, bytes, read_back) in [(written, written_bytes, false), (read_back, 0, true)] {
            if blocks > 0 {
                b.dropped += b.spills.push(SpillEvent { t_us, blocks, bytes, read_back }) as u64;
            }
        }
        b.spilled = spilled;
        b.memory(t_us, memory);
    }

    /// Records the store's size (after blocks were released).
    pub fn memory(&self, store_bytes: u64) {
        if !self.enabled {
            return;
        }
        let now = now_us();
        self.buffers.lock().memory(now, store_bytes);
    }

    /// What was recorded; `clear` empties the buffers (thread placement stays).
    pub fn snapshot(&self, rank: u32, host: &str, clear: bool) -> WorkerEvents {
        let mut b = self.buffers.lock();
        let mut threads = b.threads.clone();
        for (t, seen) in threads.iter_mut().zip(&b.seen) {
            let cpus = seen
                .iter()
                .enumerate()
                .flat_map(|(w, &bits)| (0..64).filter(move |i| bits >> i & 1 == 1).map(move |i| w * 64 + i));
            t.seen = cpus.collect();
        }
        let events = WorkerEvents {
            rank,
            host: host.to_owned(),
            host_cores: crate::host::sys::host_cores(),
            threads,
            names: b.names.iter().map(|n| n.to_string()).collect(),
            tasks: b.tasks.snapshot(clear),
            transfers: b.transfers.snapshot(clear),
            memory: b.memory.snapshot(clear),
            spills: b.spills.snapshot(clear),
            dropped: b.dropped,
        };
        if clear {
            b.dropped = 0;
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(i: u32, start: u64) -> TaskEvent {
        TaskEvent {
            key: TaskKey::new(0, &Key::new("t", [i])),
            kernel: 0,
            thread: 0,
            start_us: start,
            dur_us: 5,
            bytes: 8,
            failed: false,
        }
    }

    #[test]
    fn full_buffers_drop_the_oldest_and_count_it() {
        let r = Recorder::new(true, 1, 3);
        for i in 0..5 {
            let key = Key::new("t", [i]);
            r.task(&key, task(i, 100 + i as u64), Some(if i == 4 { 70 } else { 0 }), 8 * i as u64);
        }
        let e = r.snapshot(1, "h", false);
        assert_eq!(e.tasks.iter().map(|t| t.key.index()[0]).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(e.dropped, 2);
        // The memory samples, all within 100 us, merged into one holding their peak.
        assert_eq!(e.memory, vec![MemorySample { t_us: 105, bytes: 32, spilled: 0 }]);
        assert_eq!(e.threads[0].seen, vec![0, 70]);
        let cleared = r.snapshot(1, "h", true);
        assert_eq!(cleared.tasks.len(), 3);
        assert!(r.snapshot(1, "h", false).tasks.is_empty());
    }

    #[test]
    fn task_keys_show_as_keys_do() {
        let r = Recorder::new(true, 1, 10);
        let keys =
            [Key::new("x", []), Key::new("x", [1, 2]), Key::new("y", [1, 2, 3, 4]), Key::new("z", [1, 2, 3, 4, 5])];
        for (i, key) in keys.iter().enumerate() {
            r.task(key, task(0, 1000 * i as u64), None, 0);
        }
        let e = r.snapshot(1, "h", false);
        // One name per distinct allocation: "x" twice (two Keys, two allocations) is fine, but
        // the text is what matters.
        let shown: Vec<String> = e.tasks.iter().map(|t| e.key(t)).collect();
        assert_eq!(shown, ["x", "x[1, 2]", "y[1, 2, 3, 4]", "z[1, 2, 3, 4, ...]"]);
        assert_eq!(e.tasks[3].key.index(), &[1, 2, 3, 4]);
        // Keys sharing a name allocation share one entry.
        let name: std::sync::Arc<str> = "w".into();
        r.task(&Key::with_shared_name(&name, [0]), task(0, 9000), None, 0);
        r.task(&Key::with_shared_name(&name, [1]), task(0, 9100), None, 0);
        let e = r.snapshot(1, "h", false);
        assert_eq!(e.names.iter().filter(|n| *n == "w").count(), 1);
    }

    #[test]
    fn a_disabled_recorder_keeps_nothing() {
        let r = Recorder::new(false, 2, 10);
        r.task(&Key::new("t", []), task(0, 1), None, 0);
        r.transfer(TransferEvent { from: 2, start_us: 1, dur_us: 1, bytes: 1 }, 0);
        r.memory(5);
        let e = r.snapshot(1, "h", false);
        assert!(e.tasks.is_empty() && e.transfers.is_empty() && e.memory.is_empty());
    }

    #[test]
    fn the_clock_does_not_go_backwards_and_is_wall_time() {
        let a = now_us();
        let b = now_us();
        assert!(b >= a);
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        assert!(wall.abs_diff(b) < 5_000_000, "{wall} vs {b}");
    }

    #[test]
    fn logs_sum_tasks_transfers_and_span() {
        let r = Recorder::new(true, 1, 10);
        r.task(&Key::new("t", []), task(0, 100), None, 8);
        r.transfer(TransferEvent { from: 2, start_us: 90, dur_us: 4, bytes: 64 }, 72);
        let log =
            EventLog { kernels: vec!["k".into()], workers: vec![r.snapshot(1, "h", false)], transport: "local".into() };
        assert_eq!(log.task_count(), 1);
        assert_eq!(log.moved(), (64, 1));
        assert_eq!(log.span(), Some((90, 105)));
        assert_eq!(log.kernel_name(0), "k");
        assert_eq!(log.kernel_name(7), "#7");
        let mut later = log.clone();
        later.retain_since(95);
        assert_eq!((later.task_count(), later.moved().1), (1, 0));
    }
}

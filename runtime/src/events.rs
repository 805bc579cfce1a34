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
//! ([`crate::report::write_html`]) or a Chrome trace-event file
//! ([`crate::report::write_chrome_trace`]) that Perfetto opens.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::graph::Key;

/// Events a worker keeps before dropping the oldest (per kind).
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// Microseconds since the Unix epoch, monotonic within this process.
pub fn now_us() -> u64 {
    static ORIGIN: OnceLock<(Instant, u64)> = OnceLock::new();
    let (origin, wall) = ORIGIN.get_or_init(|| {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        (Instant::now(), wall)
    });
    wall + origin.elapsed().as_micros() as u64
}

/// One task a worker thread ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub key: Key,
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

/// Bytes in a worker's block store at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemorySample {
    pub t_us: u64,
    pub bytes: u64,
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

/// Everything one worker recorded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerEvents {
    pub rank: u32,
    pub host: String,
    /// Cores of the worker's host.
    pub host_cores: usize,
    pub threads: Vec<ThreadInfo>,
    pub tasks: Vec<TaskEvent>,
    pub transfers: Vec<TransferEvent>,
    pub memory: Vec<MemorySample>,
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
    threads: Vec<ThreadInfo>,
    seen: Vec<BTreeSet<usize>>,
    dropped: u64,
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
                threads: vec![ThreadInfo::default(); threads],
                seen: vec![BTreeSet::new(); threads],
                dropped: 0,
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

    /// Records a task and, when known, the CPU it ran on and the store's size after it.
    pub fn task(&self, event: TaskEvent, cpu: Option<usize>, store_bytes: u64) {
        if !self.enabled {
            return;
        }
        let end = event.start_us + event.dur_us;
        let thread = event.thread as usize;
        let mut b = self.buffers.lock();
        if let (Some(cpu), Some(seen)) = (cpu, b.seen.get_mut(thread)) {
            seen.insert(cpu);
        }
        let dropped = b.tasks.push(event) as u64 + b.memory.push(MemorySample { t_us: end, bytes: store_bytes }) as u64;
        b.dropped += dropped;
    }

    /// Records a block fetched from a peer and the store's size after it arrived.
    pub fn transfer(&self, event: TransferEvent, store_bytes: u64) {
        if !self.enabled {
            return;
        }
        let end = event.start_us + event.dur_us;
        let mut b = self.buffers.lock();
        let dropped =
            b.transfers.push(event) as u64 + b.memory.push(MemorySample { t_us: end, bytes: store_bytes }) as u64;
        b.dropped += dropped;
    }

    /// Records the store's size (after blocks were released).
    pub fn memory(&self, store_bytes: u64) {
        if !self.enabled {
            return;
        }
        let mut b = self.buffers.lock();
        b.dropped += b.memory.push(MemorySample { t_us: now_us(), bytes: store_bytes }) as u64;
    }

    /// What was recorded; `clear` empties the buffers (thread placement stays).
    pub fn snapshot(&self, rank: u32, host: &str, clear: bool) -> WorkerEvents {
        let mut b = self.buffers.lock();
        let mut threads = b.threads.clone();
        for (t, seen) in threads.iter_mut().zip(&b.seen) {
            t.seen = seen.iter().copied().collect();
        }
        let events = WorkerEvents {
            rank,
            host: host.to_owned(),
            host_cores: crate::sys::host_cores(),
            threads,
            tasks: b.tasks.snapshot(clear),
            transfers: b.transfers.snapshot(clear),
            memory: b.memory.snapshot(clear),
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
        TaskEvent { key: Key::new("t", [i]), kernel: 0, thread: 0, start_us: start, dur_us: 5, bytes: 8, failed: false }
    }

    #[test]
    fn full_buffers_drop_the_oldest_and_count_it() {
        let r = Recorder::new(true, 1, 3);
        for i in 0..5 {
            r.task(task(i, 100 + i as u64), Some(0), 8);
        }
        let e = r.snapshot(1, "h", false);
        assert_eq!(e.tasks.iter().map(|t| t.key.index()[0]).collect::<Vec<_>>(), vec![2, 3, 4]);
        // Two tasks and their two memory samples went.
        assert_eq!(e.dropped, 4);
        assert_eq!(e.threads[0].seen, vec![0]);
        let cleared = r.snapshot(1, "h", true);
        assert_eq!(cleared.tasks.len(), 3);
        assert!(r.snapshot(1, "h", false).tasks.is_empty());
    }

    #[test]
    fn a_disabled_recorder_keeps_nothing() {
        let r = Recorder::new(false, 2, 10);
        r.task(task(0, 1), None, 0);
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
        r.task(task(0, 100), None, 8);
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

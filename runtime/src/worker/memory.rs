//! Managed memory: a worker with a limit spills, pauses, and never runs out.
//!
//! As Dask's workers do, judged on both the store's own count of block
//! bytes in memory and the process's resident memory (its share of it,
//! when several workers share a process):
//!
//! | above | the worker |
//! |---|---|
//! | `target` x limit of blocks in memory (default 0.6) | writes least recently used blocks to disk until below |
//! | `spill` x limit resident (0.7) | spills until the resident memory is back near `target` |
//! | `pause` x limit (0.8), either count | starts no new task and tells the scheduler, until below |
//!
//! A manager thread per worker does the spilling, woken when a stored
//! block takes the store past its target and every 50 ms otherwise, so
//! compute threads never write to disk. A paused worker still answers its
//! messages (releases free memory, peers fetch from it), finishes the tasks
//! it is running, and starts none; if nothing it could do would free memory
//! (nothing runs, nothing more can be spilled), it goes on rather than
//! wait forever. It never kills itself. A block larger than the whole limit
//! fails its task with an error naming both sizes; so does a block finished
//! while memory is above `pause` after spilling failed (a full disk), with
//! the spill error naming the directory.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use super::store::{BlockStore, Usage};
use crate::host::sys::human_bytes;

/// How a worker manages its memory.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryConfig {
    /// Bytes this worker may use.
    pub limit: u64,
    /// Where the limit came from (`--memory-limit`, `cgroup ...`).
    pub source: String,
    /// Fractions of `limit`: spill blocks above `target`, spill on
    /// resident memory above `spill`, pause above `pause`.
    pub target: f64,
    pub spill: f64,
    pub pause: f64,
    /// Workers sharing this process's resident memory (a local cluster's).
    pub share: usize,
}

impl MemoryConfig {
    fn bytes(&self, fraction: f64) -> u64 {
        (self.limit as f64 * fraction) as u64
    }
}

/// What a worker's threads and its manager share.
pub(crate) struct Memory {
    config: Option<MemoryConfig>,
    paused: AtomicBool,
    /// Tasks running now (a paused worker waits only while some do).
    running: AtomicUsize,
    /// The first failed spill.
    error: Mutex<Option<String>>,
    wake: Sender<()>,
    woken: Receiver<()>,
    stop: AtomicBool,
}

/// What the manager tells the scheduler when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Report {
    pub usage: Usage,
    pub paused: bool,
}

impl Memory {
    pub fn new(config: Option<MemoryConfig>) -> Memory {
        let (wake, woken) = crossbeam_channel::bounded(1);
        Memory {
            config,
            paused: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            error: Mutex::new(None),
            wake,
            woken,
            stop: AtomicBool::new(false),
        }
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// A task starts (`true`) or ends.
    pub fn running(&self, starts: bool) {
        if starts {
            self.running.fetch_add(1, Ordering::Relaxed);
        } else {
            self.running.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The store now holds `bytes` in memory: wake the manager if that is
    /// past the target.
    /// Past the pause threshold the worker pauses at once, without waiting
    /// for the manager (which resumes it when that does not help).
    pub fn stored(&self, bytes: u64) {
        let Some(c) = &self.config else { return };
        if bytes > c.bytes(c.target) {
            if bytes > c.bytes(c.pause) {
                self.paused.store(true, Ordering::Relaxed);
            }
            let _ = self.wake.try_send(());
        }
    }

    /// Why a block of `nbytes` just made cannot be kept, if it cannot: it is
    /// larger than the limit, or memory is past `pause` (`in_memory()`
    /// bytes, asked only then) and spilling has failed.
    pub fn refuse(&self, nbytes: u64, in_memory: impl FnOnce() -> u64) -> Option<String> {
        let c = self.config.as_ref()?;
        if nbytes > c.limit {
            return Some(format!(
                "its block is {}, more than the worker's whole memory limit of {} ({}); \
                 raise --memory-limit or use smaller blocks",
                human_bytes(nbytes),
                human_bytes(c.limit),
                c.source
            ));
        }
        let error = self.error.lock().clone()?;
        (in_memory() > c.bytes(c.pause)).then(|| {
            format!(
                "memory is past {:.0}% of the worker's limit of {} and spilling failed: {error}",
                c.pause * 100.0,
                human_bytes(c.limit)
            )
        })
    }

    /// Ends the manager thread.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.try_send(());
    }

    /// The manager thread's loop: spill, pause and resume, reporting to
    /// `report` when the pause changes (at once) or the usage does (at
    /// most once a second), and to `spilled` what each round wrote to disk
    /// and tasks read back (blocks written, their bytes, blocks read).
    pub fn manage(&self, store: &BlockStore, report: impl Fn(Report), spilled: impl Fn(Usage, u64, u64, u64)) {
        let Some(c) = self.config.clone() else { return };
        let (target, spill, pause) = (c.bytes(c.target), c.bytes(c.spill), c.bytes(c.pause));
        let mut last = Report { usage: store.usage(), paused: false };
        let mut sent = Instant::now();
        let mut warned = false;
        let (mut last_spills, mut last_unspills) = (last.usage.spills, last.usage.unspills);
        while !self.stop.load(Ordering::Relaxed) {
            let _ = self.woken.recv_timeout(Duration::from_millis(50));
            let resident = crate::host::memory::resident_bytes().unwrap_or(0) / c.share.max(1) as u64;
            let memory = store.bytes();
            // On resident memory past `spill`, free what it exceeds `target` by.
            let goal = if resident > spill { memory.saturating_sub(resident - target).min(target) } else { target };
            let done = store.spill_to(goal);
            if done.blocks > 0 {
                tracing::debug!(blocks = done.blocks, bytes = done.bytes, resident, "spilled");
            }
            if let Some(e) = done.error.clone() {
                let mut first = self.error.lock();
                if first.is_none() {
                    tracing::error!("{e}");
                    *first = Some(e);
                }
            }
            let usage = store.usage();
            let read_back = usage.unspills - last_unspills;
            if done.blocks > 0 || read_back > 0 {
                spilled(usage, usage.spills - last_spills, done.bytes, read_back);
                (last_spills, last_unspills) = (usage.spills, usage.unspills);
            }
            let resident = crate::host::memory::resident_bytes().unwrap_or(0) / c.share.max(1) as u64;
            let above = usage.memory > pause || resident > pause;
            // Waiting helps only while tasks run (their inputs come free)
            // or spilling still makes headway.
            let helps = self.running.load(Ordering::Relaxed) > 0 || (!done.stuck && usage.memory > 0);
            let paused = above && helps;
            if above && !helps && !warned {
                warned = true;
                tracing::warn!(
                    resident = %human_bytes(resident),
                    blocks = %human_bytes(usage.memory),
                    limit = %human_bytes(c.limit),
                    "memory stays past the pause threshold with nothing left to spill; running on"
                );
            }
            self.paused.store(paused, Ordering::Relaxed);
            if paused != last.paused {
                tracing::debug!(
                    paused,
                    blocks = %human_bytes(usage.memory),
                    spilled = %human_bytes(usage.spilled),
                    resident = %human_bytes(resident),
                    limit = %human_bytes(c.limit),
                    "{}",
                    if paused { "memory past the pause threshold: pausing" } else { "memory back under the pause threshold: resuming" }
                );
            }
            let now = Report { usage, paused };
            if now.paused != last.paused || (now != last && sent.elapsed() >= Duration::from_secs(1)) {
                report(now);
                sent = Instant::now();
                last = now;
            }
        }
    }
}

/// Starts the manager thread of a worker with a limit; `None` without one.
pub(crate) fn spawn_manager(
    memory: &Arc<Memory>,
    store: BlockStore,
    rank: u32,
    report: impl Fn(Report) + Send + 'static,
    spilled: impl Fn(Usage, u64, u64, u64) + Send + 'static,
) -> Option<std::thread::JoinHandle<()>> {
    memory.config.as_ref()?;
    let m = Arc::clone(memory);
    let spawned = std::thread::Builder::new()
        .name(format!("tessera-r{rank}-memory"))
        .spawn(move || m.manage(&store, report, spilled));
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::error!(rank, "cannot start the memory manager; blocks will not be spilled: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{Block, Buffer};
    use crate::graph::TaskId;
    use crate::worker::spill::SpillDir;

    fn config(limit: u64) -> MemoryConfig {
        // Resident memory divided among "all the workers there are": the blocks alone count.
        MemoryConfig { limit, source: "test".into(), target: 0.6, spill: 0.7, pause: 0.8, share: usize::MAX }
    }

    #[test]
    fn the_manager_spills_down_to_the_target_when_woken() {
        let store = BlockStore::spilling(SpillDir::create(&std::env::temp_dir(), 9).unwrap());
        let memory = Arc::new(Memory::new(Some(config(100_000))));
        let (tx, rx) = crossbeam_channel::unbounded();
        let written = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&written);
        let h = spawn_manager(
            &memory,
            store.clone(),
            9,
            move |r| {
                let _ = tx.send(r);
            },
            move |_, blocks, _, _| {
                w.fetch_add(blocks as usize, Ordering::Relaxed);
            },
        )
        .unwrap();
        for i in 0..10 {
            let b = Block::new(vec![1000], Buffer::F64(vec![i as f64; 1000]));
            memory.stored(store.insert(TaskId(i), b));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.bytes() > 60_000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(store.bytes() <= 60_000, "{:?}", store.usage());
        assert_eq!(store.usage().spilled, 80_000 - store.bytes());
        let r = rx.recv_timeout(Duration::from_secs(5)).expect("a report");
        assert!(!r.paused);
        memory.stop();
        h.join().unwrap();
        assert_eq!(written.load(Ordering::Relaxed) as u64 * 8000, store.usage().spilled, "each spill was recorded");
        // Every block still reads back whole.
        for i in 0..10 {
            assert_eq!(store.get(TaskId(i)).unwrap().as_f64().unwrap()[999], i as f64);
        }
    }

    #[test]
    fn blocks_larger_than_the_limit_are_refused_with_both_sizes() {
        let memory = Memory::new(Some(config(1 << 20)));
        let e = memory.refuse(2 << 20, || 0).unwrap();
        assert!(e.contains("2.0 MiB") && e.contains("1.0 MiB"), "{e}");
        assert_eq!(memory.refuse(1000, || 0), None);
        // Past pause after a failed spill.
        *memory.error.lock() = Some("cannot spill block #1 (1 KiB) to /full: No space left on device".into());
        assert_eq!(memory.refuse(1000, || 100), None);
        let e = memory.refuse(1000, || 900_000).unwrap();
        assert!(e.contains("/full") && e.contains("No space left"), "{e}");
        assert_eq!(Memory::new(None).refuse(u64::MAX, || u64::MAX), None);
    }
}

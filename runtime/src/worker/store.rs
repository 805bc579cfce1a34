//! A worker's blocks, by task id: in memory, or spilled to disk.
//!
//! The store is shared: the worker's threads put results in it, and the
//! transport serves peers' fetches from it directly (in-process: the
//! requesting thread reads it; MPI: the progress thread does; TCP: the
//! connection's reader thread does), so a fetch
//! never waits for a worker thread busy in a kernel.
//!
//! A worker with a memory limit ([`super::memory`]) has a spill directory:
//! [`BlockStore::spill_to`] writes the least recently used blocks that
//! nothing else holds (no running task, no transfer) to disk and drops them
//! from memory. Blocks are immutable, so a block read back keeps its file
//! and spilling it again costs nothing but the memory it frees. A task's
//! inputs come back into memory ([`BlockStore::get`]); a peer's fetch of a
//! spilled block is read from disk for that transfer only
//! ([`BlockStore::get_for_peer`]), without growing the store. No disk I/O
//! happens under the store's lock.

use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use super::spill::SpillDir;
use crate::block::{Block, BlockHeader};
use crate::graph::TaskId;

/// Blocks held by one worker. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct BlockStore {
    blocks: Arc<Mutex<Blocks>>,
    spill: Option<Arc<SpillDir>>,
}

#[derive(Default)]
struct Blocks {
    map: FxHashMap<TaskId, Slot>,
    /// Bytes of the blocks in memory.
    mem: u64,
    /// Bytes of the blocks only on disk.
    spilled: u64,
    /// Use counter, for least-recently-used order.
    clock: u64,
    /// Blocks written to disk and read back since the start.
    spills: u64,
    unspills: u64,
}

struct Slot {
    /// The block, when in memory.
    mem: Option<Block>,
    /// Its dtype and shape, once it has a file on disk.
    disk: Option<BlockHeader>,
    nbytes: u64,
    used: u64,
}

/// How much of the store is where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes in memory.
    pub memory: u64,
    /// Bytes only on disk.
    pub spilled: u64,
    /// Blocks written to disk since the start, and read back.
    pub spills: u64,
    pub unspills: u64,
}

/// What one call to [`BlockStore::spill_to`] did.
#[derive(Debug, Default)]
pub struct Spilled {
    pub blocks: u64,
    pub bytes: u64,
    /// Memory is still above the goal, and nothing more can go to disk
    /// now (every block left is held by a task or a transfer).
    pub stuck: bool,
    /// The first write that failed (disk full, directory gone).
    pub error: Option<String>,
}

impl BlockStore {
    /// A store that keeps every block in memory.
    pub fn new() -> BlockStore {
        BlockStore::default()
    }

    /// A store that may spill to `dir`.
    pub fn spilling(dir: SpillDir) -> BlockStore {
        BlockStore { blocks: Arc::default(), spill: Some(Arc::new(dir)) }
    }

    /// The spill directory, if this store has one.
    pub fn spill_dir(&self) -> Option<&SpillDir> {
        self.spill.as_deref()
    }

    /// Block `id`, read back into memory if it was spilled (for a task that
    /// needs it). `None` if the store does not hold it, or its file cannot
    /// be read (logged with the file).
    pub fn get(&self, id: TaskId) -> Option<Block> {
        self.fetch(id, true).ok().flatten()
    }

    /// Block `id` for a peer's fetch: a spilled block is read from disk for
    /// this transfer only and stays spilled.
    pub fn get_for_peer(&self, id: TaskId) -> Option<Block> {
        self.fetch(id, false).ok().flatten()
    }

    fn fetch(&self, id: TaskId, keep: bool) -> Result<Option<Block>, String> {
        let header = {
            let mut b = self.blocks.lock();
            b.clock += 1;
            let clock = b.clock;
            let Some(slot) = b.map.get_mut(&id) else { return Ok(None) };
            slot.used = clock;
            match (&slot.mem, &slot.disk) {
                (Some(block), _) => return Ok(Some(block.clone())),
                (None, Some(h)) => h.clone(),
                (None, None) => unreachable!("a slot is in memory or on disk"),
            }
        };
        let dir = self.spill.as_ref().expect("only a spilling store has blocks on disk");
        let block = dir.read(id, &header).inspect_err(|e| tracing::error!(block = %id, "{e}"))?;
        if keep {
            let mut b = self.blocks.lock();
            let b = &mut *b;
            if let Some(slot) = b.map.get_mut(&id) {
                match &slot.mem {
                    Some(other) => return Ok(Some(other.clone())), // read back meanwhile
                    None => {
                        slot.mem = Some(block.clone());
                        b.mem += slot.nbytes;
                        b.spilled -= slot.nbytes;
                        b.unspills += 1;
                    }
                }
            }
        }
        Ok(Some(block))
    }

    pub fn contains(&self, id: TaskId) -> bool {
        self.blocks.lock().map.contains_key(&id)
    }

    /// Stores `block` as `id` (replacing any block of that id); returns the
    /// bytes in memory afterwards.
    pub fn insert(&self, id: TaskId, block: Block) -> u64 {
        let nbytes = block.nbytes() as u64;
        let mut b = self.blocks.lock();
        b.clock += 1;
        let slot = Slot { mem: Some(block), disk: None, nbytes, used: b.clock };
        if let Some(old) = b.map.insert(id, slot) {
            b.forget(&old);
            if old.disk.is_some() {
                self.remove_file(id);
            }
        }
        b.mem += nbytes;
        b.mem
    }

    /// Forgets the blocks of `ids`; returns the bytes in memory afterwards.
    pub fn remove(&self, ids: impl IntoIterator<Item = TaskId>) -> u64 {
        let mut files = Vec::new();
        let mem = {
            let mut b = self.blocks.lock();
            for id in ids {
                if let Some(old) = b.map.remove(&id) {
                    b.forget(&old);
                    if old.disk.is_some() {
                        files.push(id);
                    }
                }
            }
            b.mem
        };
        for id in files {
            self.remove_file(id);
        }
        mem
    }

    fn remove_file(&self, id: TaskId) {
        if let Some(dir) = &self.spill {
            dir.remove(id);
        }
    }

    /// The blocks for `ids` (read back from disk where spilled), or the
    /// first id that is missing.
    pub fn get_all(&self, ids: impl IntoIterator<Item = TaskId>) -> Result<Vec<Block>, TaskId> {
        ids.into_iter().map(|id| self.get(id).ok_or(id)).collect()
    }

    pub fn len(&self) -> usize {
        self.blocks.lock().map.len()
    }

    /// Bytes of the blocks in memory (each counted once, shared or not).
    pub fn bytes(&self) -> u64 {
        self.blocks.lock().mem
    }

    pub fn usage(&self) -> Usage {
        let b = self.blocks.lock();
        Usage { memory: b.mem, spilled: b.spilled, spills: b.spills, unspills: b.unspills }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes least recently used blocks to disk and drops them from memory
    /// until at most `goal` bytes are in memory. A block held elsewhere (a
    /// running task's input, a transfer under way) stays: dropping it would
    /// free nothing. Device-only blocks (a GPU's) are left to the device's
    /// own account. Without a spill directory this does nothing.
    pub fn spill_to(&self, goal: u64) -> Spilled {
        let mut done = Spilled::default();
        let Some(dir) = &self.spill else { return done };
        // Candidates, oldest first, enough to reach the goal.
        let victims: Vec<(TaskId, Block, bool)> = {
            let b = self.blocks.lock();
            if b.mem <= goal {
                return done;
            }
            let mut all: Vec<(u64, TaskId)> = b
                .map
                .iter()
                .filter(|(_, s)| s.mem.as_ref().is_some_and(|m| m.is_unique() && m.on_host()))
                .map(|(&id, s)| (s.used, id))
                .collect();
            all.sort_unstable();
            let mut excess = b.mem - goal;
            let mut v = Vec::new();
            for (_, id) in all {
                if excess == 0 {
                    break;
                }
                let s = &b.map[&id];
                excess = excess.saturating_sub(s.nbytes);
                v.push((id, s.mem.clone().expect("in memory"), s.disk.is_some()));
            }
            done.stuck = excess > 0;
            v
        };
        for (id, block, on_disk) in victims {
            if !on_disk {
                if let Err(e) = dir.write(id, &block) {
                    done.error = Some(e);
                    done.stuck = true;
                    break;
                }
            }
            let header = block.header();
            drop(block);
            let mut guard = self.blocks.lock();
            let b = &mut *guard;
            match b.map.get_mut(&id) {
                // Still here, and still held by nobody else: drop it.
                Some(slot) if slot.mem.as_ref().is_some_and(|m| m.is_unique()) => {
                    slot.mem = None;
                    slot.disk = Some(header);
                    b.mem -= slot.nbytes;
                    b.spilled += slot.nbytes;
                    b.spills += u64::from(!on_disk);
                    done.blocks += 1;
                    done.bytes += slot.nbytes;
                }
                // Taken by a task meanwhile: keep the file for next time.
                Some(slot) => slot.disk = Some(header),
                // Released meanwhile.
                None => {
                    drop(guard);
                    dir.remove(id);
                }
            }
        }
        done
    }
}

impl Blocks {
    /// Takes a removed slot's bytes off the counts.
    fn forget(&mut self, old: &Slot) {
        if old.mem.is_some() {
            self.mem -= old.nbytes;
        } else {
            self.spilled -= old.nbytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Buffer;

    fn block(n: usize, x: f64) -> Block {
        Block::new(vec![n], Buffer::F64(vec![x; n]))
    }

    fn spilling() -> BlockStore {
        BlockStore::spilling(SpillDir::create(&std::env::temp_dir(), 0).unwrap())
    }

    #[test]
    fn the_least_recently_used_blocks_go_to_disk_first() {
        let s = spilling();
        for i in 0..4 {
            s.insert(TaskId(i), block(1000, i as f64));
        }
        s.get(TaskId(0)); // now the most recently used
        let done = s.spill_to(16_000);
        assert_eq!((done.blocks, done.bytes, done.stuck), (2, 16_000, false));
        let u = s.usage();
        assert_eq!((u.memory, u.spilled, u.spills), (16_000, 16_000, 2));
        // 1 and 2 went; 0 and 3 stayed.
        let files: Vec<_> = std::fs::read_dir(s.spill_dir().unwrap().path()).unwrap().collect();
        assert_eq!(files.len(), 2);
        assert_eq!(s.get(TaskId(1)).unwrap().as_f64().unwrap()[999], 1.0);
        assert_eq!(s.usage().unspills, 1);
        assert_eq!(s.usage().memory, 24_000);
    }

    #[test]
    fn a_block_held_by_a_task_stays_in_memory() {
        let s = spilling();
        s.insert(TaskId(1), block(1000, 1.0));
        s.insert(TaskId(2), block(1000, 2.0));
        let held = s.get(TaskId(1)).unwrap();
        s.get(TaskId(2));
        let done = s.spill_to(0);
        assert_eq!(done.blocks, 1, "only the block nobody holds");
        assert!(done.stuck);
        assert_eq!(s.usage().memory, 8000);
        drop(held);
        assert_eq!(s.spill_to(0).blocks, 1);
        assert_eq!(s.usage(), Usage { memory: 0, spilled: 16_000, spills: 2, unspills: 0 });
    }

    #[test]
    fn a_peer_fetch_reads_from_disk_without_growing_memory() {
        let s = spilling();
        s.insert(TaskId(5), block(500, 5.0));
        s.spill_to(0);
        let b = s.get_for_peer(TaskId(5)).unwrap();
        assert_eq!(b.as_f64().unwrap()[0], 5.0);
        assert_eq!(s.usage().memory, 0);
        drop(b);
        // Read back for a task, then spilled again without writing.
        s.get(TaskId(5));
        assert_eq!(s.usage().memory, 4000);
        assert_eq!(s.spill_to(0).blocks, 1);
        assert_eq!(s.usage().spills, 1, "the file was kept");
    }

    #[test]
    fn released_blocks_lose_their_files_and_counts() {
        let s = spilling();
        s.insert(TaskId(1), block(100, 1.0));
        s.insert(TaskId(2), block(100, 2.0));
        s.spill_to(800);
        s.remove([TaskId(1), TaskId(2)]);
        assert_eq!(s.usage(), Usage { memory: 0, spilled: 0, spills: 1, unspills: 0 });
        assert_eq!(std::fs::read_dir(s.spill_dir().unwrap().path()).unwrap().count(), 0);
        assert!(s.is_empty());
    }

    #[test]
    fn without_a_directory_nothing_spills() {
        let s = BlockStore::new();
        s.insert(TaskId(1), block(100, 1.0));
        let done = s.spill_to(0);
        assert_eq!((done.blocks, s.bytes()), (0, 800));
    }
}

//! A worker's blocks, by task id.
//!
//! The store is shared: the worker's threads put results in it, and the
//! transport serves peers' fetches from it directly (in-process: the
//! requesting thread reads it; MPI: the progress thread does; TCP: the
//! connection's reader thread does), so a fetch
//! never waits for a worker thread busy in a kernel.

use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::block::Block;
use crate::graph::TaskId;

/// Blocks held by one worker. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct BlockStore {
    blocks: Arc<Mutex<Blocks>>,
}

#[derive(Default)]
struct Blocks {
    map: FxHashMap<TaskId, Block>,
    /// Sum of the held blocks' sizes.
    bytes: u64,
}

impl BlockStore {
    pub fn new() -> BlockStore {
        BlockStore::default()
    }

    pub fn get(&self, id: TaskId) -> Option<Block> {
        self.blocks.lock().map.get(&id).cloned()
    }

    pub fn contains(&self, id: TaskId) -> bool {
        self.blocks.lock().map.contains_key(&id)
    }

    /// Stores `block` as `id` (replacing any block of that id); returns the
    /// bytes held afterwards.
    pub fn insert(&self, id: TaskId, block: Block) -> u64 {
        let mut b = self.blocks.lock();
        b.bytes += block.nbytes() as u64;
        if let Some(old) = b.map.insert(id, block) {
            b.bytes -= old.nbytes() as u64;
        }
        b.bytes
    }

    /// Forgets the blocks of `ids`; returns the bytes held afterwards.
    pub fn remove(&self, ids: impl IntoIterator<Item = TaskId>) -> u64 {
        let mut b = self.blocks.lock();
        for id in ids {
            if let Some(old) = b.map.remove(&id) {
                b.bytes -= old.nbytes() as u64;
            }
        }
        b.bytes
    }

    /// The blocks for `ids`, or the first id that is missing.
    pub fn get_all(&self, ids: impl IntoIterator<Item = TaskId>) -> Result<Vec<Block>, TaskId> {
        let b = self.blocks.lock();
        ids.into_iter().map(|id| b.map.get(&id).cloned().ok_or(id)).collect()
    }

    pub fn len(&self) -> usize {
        self.blocks.lock().map.len()
    }

    /// Bytes of the blocks held (each counted once, shared or not).
    pub fn bytes(&self) -> u64 {
        self.blocks.lock().bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

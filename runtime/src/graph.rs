//! Task graphs: keys, tasks and the graph a driver submits.
//!
//! A [`Task`] names its output with a [`Key`] (a name plus a block index, as
//! dask's `("name", i, j)` tuples), says which registered kernel computes it,
//! carries the kernel's serialised parameters and lists the keys of its
//! inputs. A [`Graph`] is a bag of tasks; the scheduler validates it as a
//! whole (unknown kernels, missing inputs, cycles, duplicate keys) before any
//! of it runs.
//!
//! ```
//! use tessera_runtime::{Graph, Key, Task};
//! let mut g = Graph::new();
//! g.push(Task::new(Key::new("x", [0]), "const").param(&1.0f64));
//! g.push(Task::new(Key::new("x", [1]), "const").param(&2.0f64));
//! g.push(Task::new(Key::new("sum", []), "sum").inputs([Key::new("x", [0]), Key::new("x", [1])]));
//! assert_eq!(g.len(), 3);
//! ```

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// The name of a task's output: a name and a block index.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    name: Arc<str>,
    /// Up to two indices (a block of a matrix) are kept inline: cloning a
    /// key allocates nothing.
    index: SmallVec<[u32; 2]>,
}

impl Key {
    pub fn new(name: impl Into<Arc<str>>, index: impl IntoIterator<Item = u32>) -> Key {
        Key { name: name.into(), index: index.into_iter().collect() }
    }

    /// A key that shares `name`'s allocation (cheap for many blocks of one array).
    pub fn with_shared_name(name: &Arc<str>, index: impl IntoIterator<Item = u32>) -> Key {
        Key { name: Arc::clone(name), index: index.into_iter().collect() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name's shared allocation.
    pub fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn index(&self) -> &[u32] {
        &self.index
    }
}

impl fmt::Display for Key {
    /// `name[i, j]`, or just `name` for an empty index.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.index.is_empty() {
            f.write_str("[")?;
            for (n, i) in self.index.iter().enumerate() {
                if n > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{i}")?;
            }
            f.write_str("]")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The scheduler's name for a task once submitted: dense, never reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Serialised kernel parameters, shared without copying between the graph,
/// the scheduler and (in-process) the workers.
pub type Params = Arc<[u8]>;

/// One unit of work: compute `key` with `kernel` from `inputs` and `params`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Task {
    pub key: Key,
    pub kernel: Arc<str>,
    pub params: Params,
    pub inputs: Vec<Key>,
    /// Run only on the worker of this rank (benchmarks, tests, data that
    /// lives on one rank's disk). Pinned tasks are never stolen.
    pub pin: Option<u32>,
}

impl Task {
    /// A task with no parameters and no inputs.
    pub fn new(key: Key, kernel: impl Into<Arc<str>>) -> Task {
        Task { key, kernel: kernel.into(), params: Arc::from(Vec::new()), inputs: Vec::new(), pin: None }
    }

    /// Pins the task to the worker on `rank`.
    pub fn on_rank(mut self, rank: u32) -> Task {
        self.pin = Some(rank);
        self
    }

    /// Sets the parameters to `value` serialised with the runtime's codec
    /// (kernels registered with [`crate::Registry::register`] decode them).
    ///
    /// # Panics
    /// If `value` cannot be serialised (a serde type whose length is not
    /// known up front): a bug in the graph-building code, not bad data.
    pub fn param<T: Serialize + ?Sized>(mut self, value: &T) -> Task {
        self.params = Arc::from(encode_params(value));
        self
    }

    /// Sets already-serialised parameters.
    pub fn raw_params(mut self, params: impl Into<Params>) -> Task {
        self.params = params.into();
        self
    }

    /// Sets the input keys, in the order the kernel receives them.
    pub fn inputs(mut self, inputs: impl IntoIterator<Item = Key>) -> Task {
        self.inputs = inputs.into_iter().collect();
        self
    }
}

/// A set of tasks to submit together.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    tasks: Vec<Task>,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    pub fn with_capacity(n: usize) -> Graph {
        Graph { tasks: Vec::with_capacity(n) }
    }

    pub fn push(&mut self, task: Task) {
        self.tasks.push(task);
    }

    /// Adds every task of `other` (graphs of separate arrays merge this way).
    pub fn extend(&mut self, other: Graph) {
        self.tasks.extend(other.tasks);
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Adds a reduction tree over `inputs`: each node combines up to `arity`
    /// keys of the level below with the task `node(key)` makes (its inputs
    /// are set here), level by level, until one key is left, which is
    /// returned. Node keys are `name[level, i]`. A single input is returned
    /// as it is. This is how sums over blocks, the contraction of a matmul
    /// and TSQR's R factors are combined: depth `log_arity(n)`, and with the
    /// scheduler's depth-first order few partial results live at once.
    pub fn reduce(&mut self, name: &str, inputs: Vec<Key>, arity: usize, node: impl FnMut(Key) -> Task) -> Key {
        self.reduce_tree(name, inputs, arity, None, node)
    }

    /// [`Graph::reduce`] whose last node is named `root` (a block of an
    /// array, say) instead of `name[level, 0]`. A single input gets a
    /// one-input node named `root`, so `root` always exists afterwards.
    pub fn reduce_to(
        &mut self,
        root: Key,
        name: &str,
        inputs: Vec<Key>,
        arity: usize,
        node: impl FnMut(Key) -> Task,
    ) -> Key {
        self.reduce_tree(name, inputs, arity, Some(root), node)
    }

    fn reduce_tree(
        &mut self,
        name: &str,
        inputs: Vec<Key>,
        arity: usize,
        mut root: Option<Key>,
        mut node: impl FnMut(Key) -> Task,
    ) -> Key {
        assert!(!inputs.is_empty(), "a reduction needs at least one input");
        assert!(arity >= 2, "a reduction combines at least two keys at a time");
        let name: Arc<str> = Arc::from(name);
        let mut level = inputs;
        let mut depth = 0u32;
        while level.len() > 1 || (depth == 0 && root.is_some()) {
            depth += 1;
            let last = level.len() <= arity;
            level = level
                .chunks(arity)
                .enumerate()
                .map(|(i, group)| {
                    let key = match root.take() {
                        Some(r) if last => r,
                        other => {
                            root = other;
                            Key::with_shared_name(&name, [depth, i as u32])
                        }
                    };
                    self.push(node(key.clone()).inputs(group.iter().cloned()));
                    key
                })
                .collect();
        }
        level.pop().expect("one key is left")
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    /// The tasks, in the order they were added.
    pub fn into_tasks(self) -> Vec<Task> {
        self.tasks
    }
}

impl FromIterator<Task> for Graph {
    fn from_iter<I: IntoIterator<Item = Task>>(iter: I) -> Graph {
        Graph { tasks: iter.into_iter().collect() }
    }
}

/// Kernel parameters can be no larger than a protocol frame.
const MAX_PARAMS: u64 = 256 << 20;

/// Serialises kernel parameters (the encoding [`Task::param`] uses).
pub fn encode_params<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    crate::codec::encode(value, MAX_PARAMS).expect("kernel parameters serialise within the frame limit")
}

/// Decodes kernel parameters.
pub fn decode_params<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, crate::codec::CodecError> {
    crate::codec::decode(bytes, MAX_PARAMS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_combine_every_input_once() {
        for (n, arity) in [(1, 2), (2, 2), (7, 2), (16, 4), (17, 3)] {
            let mut g = Graph::new();
            let leaves: Vec<Key> = (0..n).map(|i| Key::new("leaf", [i])).collect();
            let root = g.reduce("r", leaves.clone(), arity, |k| Task::new(k, "sum"));
            if n == 1 {
                assert!(g.is_empty());
                assert_eq!(root, leaves[0]);
                continue;
            }
            let mut used: Vec<&Key> = g.tasks().iter().flat_map(|t| &t.inputs).collect();
            used.sort();
            let mut expect: Vec<&Key> = leaves.iter().collect();
            expect.extend(g.tasks().iter().map(|t| &t.key).filter(|k| **k != root));
            expect.sort();
            assert_eq!(used, expect, "{n} leaves, arity {arity}");
            assert!(g.tasks().iter().all(|t| t.inputs.len() <= arity));
        }
    }

    #[test]
    fn reductions_to_a_root_key_end_there() {
        for n in [1u32, 2, 5, 9] {
            let mut g = Graph::new();
            let leaves: Vec<Key> = (0..n).map(|i| Key::new("leaf", [i])).collect();
            let root = g.reduce_to(Key::new("c", [3, 4]), "c.sum", leaves, 3, |k| Task::new(k, "sum"));
            assert_eq!(root, Key::new("c", [3, 4]));
            let last = g.tasks().last().unwrap();
            assert_eq!(last.key, root, "{n} leaves");
            assert_eq!(g.tasks().iter().filter(|t| t.key == root).count(), 1);
            let consumed: usize = g.tasks().iter().map(|t| t.inputs.len()).sum();
            assert_eq!(consumed, n as usize + g.len() - 1, "every input and node but the root used once");
        }
    }

    #[test]
    fn keys_print_like_block_indices() {
        assert_eq!(Key::new("a", [1, 2]).to_string(), "a[1, 2]");
        assert_eq!(Key::new("total", []).to_string(), "total");
    }
}

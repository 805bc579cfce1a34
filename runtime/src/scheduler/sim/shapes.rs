//! The graphs the simulator runs, built with their task durations and
//! output sizes, and their makespan's lower bound.

use std::sync::Arc;

use super::{Shape, SimConfig};
use crate::error::KernelError;
use crate::graph::{Key, Task};
use crate::kernel::Registry;

/// A simulated graph: tasks in topological order, each task's number as
/// its key's first index, durations and output bytes per task number.
pub(super) struct SimGraph {
    pub tasks: Vec<Task>,
    pub outputs: Vec<Key>,
    pub inputs: Vec<Vec<usize>>,
    pub duration_ns: Vec<u64>,
    pub out_bytes: Vec<u64>,
}

/// The kernels simulated graphs name (never run).
const KERNELS: [&str; 7] = ["source", "node", "qr", "rmerge", "qapply", "gemm", "add"];

pub(super) fn registry() -> Registry {
    let mut r = Registry::empty();
    for name in KERNELS {
        r.register_raw(name, |_, _, _| Err(KernelError::msg("a simulated kernel")));
    }
    r
}

/// SplitMix64: the same stream for the same seed on every machine.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Builder<'a> {
    cfg: &'a SimConfig,
    g: SimGraph,
    name: Arc<str>,
}

impl Builder<'_> {
    /// Adds a task of `kernel` on `inputs` (task numbers); returns its number.
    fn add(&mut self, kernel: &str, inputs: &[usize], out_bytes: u64) -> usize {
        let n = self.g.tasks.len();
        let key = Key::with_shared_name(&self.name, [n as u32]);
        let keys = inputs.iter().map(|&i| self.g.tasks[i].key.clone());
        self.g.tasks.push(Task::new(key, kernel).inputs(keys));
        self.g.inputs.push(inputs.to_vec());
        let u = (mix(self.cfg.seed ^ mix(n as u64)) >> 11) as f64 / (1u64 << 53) as f64;
        self.g.duration_ns.push((self.cfg.task_us * 1e3 * (0.5 + u)) as u64);
        self.g.out_bytes.push(out_bytes);
        n
    }

    /// A binary tree over `items` with `kernel`; returns its root.
    fn tree(&mut self, kernel: &str, mut items: Vec<usize>, out_bytes: u64) -> usize {
        while items.len() > 1 {
            let mut next = Vec::with_capacity(items.len().div_ceil(2));
            for pair in items.chunks(2) {
                next.push(if pair.len() == 2 { self.add(kernel, pair, out_bytes) } else { pair[0] });
            }
            items = next;
        }
        items[0]
    }

    fn output(&mut self, n: usize) {
        self.g.outputs.push(self.g.tasks[n].key.clone());
    }
}

pub(super) fn build(cfg: &SimConfig) -> SimGraph {
    let g = SimGraph {
        tasks: Vec::with_capacity(cfg.tasks),
        outputs: Vec::new(),
        inputs: Vec::with_capacity(cfg.tasks),
        duration_ns: Vec::with_capacity(cfg.tasks),
        out_bytes: Vec::with_capacity(cfg.tasks),
    };
    let mut b = Builder { cfg, g, name: Arc::from("sim") };
    let m = cfg.tasks;
    let block = cfg.block_bytes;
    match cfg.shape {
        Shape::Wide => {
            for _ in 0..m {
                let t = b.add("source", &[], block);
                b.output(t);
            }
        }
        Shape::Chain => {
            let mut last = b.add("source", &[], block);
            for _ in 1..m {
                last = b.add("node", &[last], block);
            }
            b.output(last);
        }
        Shape::Tree => {
            let leaves: Vec<usize> = (0..m.div_ceil(2)).map(|_| b.add("source", &[], block)).collect();
            let root = b.tree("node", leaves, block);
            b.output(root);
        }
        Shape::Tsqr => {
            let n = m.div_ceil(3).max(1);
            let r_bytes = (block / 10).max(1);
            let leaves: Vec<usize> = (0..n).map(|_| b.add("qr", &[], block)).collect();
            let top = b.tree("rmerge", leaves.clone(), r_bytes);
            for leaf in leaves {
                let q = b.add("qapply", &[leaf, top], block);
                b.output(q);
            }
        }
        Shape::Matmul => {
            // p x p output blocks, q blocks deep: p^2 (2q - 1) + 2pq tasks.
            let q = 4usize;
            let p = ((m as f64 / (2 * q - 1) as f64).sqrt().floor() as usize).max(1);
            let a: Vec<usize> = (0..p * q).map(|_| b.add("source", &[], block)).collect();
            let bm: Vec<usize> = (0..p * q).map(|_| b.add("source", &[], block)).collect();
            for i in 0..p {
                for j in 0..p {
                    let products: Vec<usize> =
                        (0..q).map(|k| b.add("gemm", &[a[i * q + k], bm[k * p + j]], block)).collect();
                    let c = b.tree("add", products, block);
                    b.output(c);
                }
            }
        }
    }
    b.g
}

/// The larger of the total work over all threads and the critical path, in ns.
pub(super) fn lower_bound_ns(g: &SimGraph, slots: u64) -> u64 {
    let total: u64 = g.duration_ns.iter().sum();
    let mut finish = vec![0u64; g.tasks.len()];
    let mut path = 0;
    for t in 0..g.tasks.len() {
        let start = g.inputs[t].iter().map(|&i| finish[i]).max().unwrap_or(0);
        finish[t] = start + g.duration_ns[t];
        path = path.max(finish[t]);
    }
    path.max(total.div_ceil(slots))
}

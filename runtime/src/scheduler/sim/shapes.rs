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

/// Lower bounds on the makespan of any schedule of a graph on `slots`
/// threads (transfers cost nothing, a thread runs one task at a time), in ns.
pub(super) struct Bounds {
    /// The larger of the total work over all threads and the critical path.
    pub work_path_ns: u64,
    /// The largest of `work_path_ns` and the level bounds: for every `d`,
    /// the tasks followed by a path of at least `d` must all finish by
    /// `makespan - d`, so `makespan >= d + their work / slots`; and the
    /// tasks that cannot start before `d` must all run after it, so
    /// `makespan >= d + their work / slots`. For a reduction tree wider
    /// than the cluster, whose narrow top levels run one after another,
    /// this is the bound that counts.
    pub level_ns: u64,
}

/// `inputs[t]` are task `t`'s inputs (all numbered below `t`), `work[t]` its duration.
pub(super) fn lower_bounds(inputs: &[Vec<usize>], work: &[u64], slots: u64) -> Bounds {
    let n = work.len();
    // Earliest start (after every input) and the longest path after each task.
    let mut start = vec![0u64; n];
    for t in 0..n {
        start[t] = inputs[t].iter().map(|&i| start[i] + work[i]).max().unwrap_or(0);
    }
    let mut after = vec![0u64; n];
    for t in (0..n).rev() {
        for &i in &inputs[t] {
            after[i] = after[i].max(work[t] + after[t]);
        }
    }
    let path = (0..n).map(|t| start[t] + work[t]).max().unwrap_or(0);
    let total: u64 = work.iter().sum();
    let work_path_ns = path.max(total.div_ceil(slots));
    let level_ns = work_path_ns.max(level_bound(&after, work, slots)).max(level_bound(&start, work, slots));
    Bounds { work_path_ns, level_ns }
}

/// `max over d of d + (work of the tasks whose gap is at least d) / slots`.
fn level_bound(gap: &[u64], work: &[u64], slots: u64) -> u64 {
    let mut order: Vec<usize> = (0..gap.len()).collect();
    order.sort_unstable_by_key(|&t| std::cmp::Reverse(gap[t]));
    let (mut best, mut sum) = (0, 0u64);
    for (k, &t) in order.iter().enumerate() {
        sum += work[t];
        let last_of_gap = order.get(k + 1).is_none_or(|&u| gap[u] != gap[t]);
        if last_of_gap {
            best = best.max(gap[t] + sum.div_ceil(slots));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary tree of 8 unit leaves on 4 threads: work/threads and the
    /// critical path say 4, but the leaves take 2 steps and the 3 levels
    /// above them one each: no schedule beats 5.
    #[test]
    fn the_level_bound_counts_the_narrow_top_of_a_tree() {
        let mut inputs: Vec<Vec<usize>> = vec![Vec::new(); 8];
        let mut level: Vec<usize> = (0..8).collect();
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|p| {
                    inputs.push(p.to_vec());
                    inputs.len() - 1
                })
                .collect();
        }
        let b = lower_bounds(&inputs, &vec![1; inputs.len()], 4);
        assert_eq!((b.work_path_ns, b.level_ns), (4, 5));
    }

    /// 8 unit tasks that wait for a chain of 3: they start at 3 at the
    /// earliest and take 2 steps on 4 threads.
    #[test]
    fn the_level_bound_counts_work_that_waits() {
        let mut inputs = vec![vec![], vec![0], vec![1]];
        inputs.extend((0..8).map(|_| vec![2]));
        let b = lower_bounds(&inputs, &vec![1; inputs.len()], 4);
        assert_eq!((b.work_path_ns, b.level_ns), (4, 5));
    }
}

//! Blocked operations: transpose, matmul, reductions, rechunk, block slices.
//!
//! Each builds the tasks of its result from its operands' block keys; shape,
//! chunk and element-type mismatches are errors here, before anything runs.
//!
//! * `matmul`: block `C[i, j]` is the sum over `k` of `A[i, k] @ B[k, j]`,
//!   the partial products combined by a reduction tree of arity
//!   [`REDUCE_ARITY`] (one product and no sum when the contraction axis has
//!   one block). Partial products are computed where their inputs are.
//! * `sum`/`mean`/`norm`: a partial per block, then the same trees.
//! * `rechunk`: each new block is cut from the old blocks it overlaps; a
//!   block that does not change keeps its key and is not copied.

use std::ops::Range;

use tessera_runtime::{Graph, Key, Task};

use crate::array::{fresh_name, DArray, IntoChunks};
use crate::chunks::{grid_indices, Chunks};
use crate::error::{LinalgError, Result};
use crate::expr::Binary;
use crate::kernels::{AssembleParams, GemmParams, Piece, SumParams};

/// Old block, start in it, start in the new block, length (one axis).
type Overlap = (usize, usize, usize, usize);

/// Partial results combined per node of a reduction tree.
pub const REDUCE_ARITY: usize = 4;

impl DArray {
    /// The transpose (a 1-D array is its own). Lazy: a transpose read only
    /// by matrix products is never materialised (see [`crate::fuse`]).
    pub fn t(&self) -> DArray {
        if self.ndim() != 2 {
            return self.clone();
        }
        let (m, n) = (self.shape()[0], self.shape()[1]);
        DArray::build("transpose", vec![n, m], self.chunks().transposed(), self.dtype(), &[self], |idx, key| {
            Task::new(key, "linalg.transpose").param(&()).inputs([self.key(&[idx[1], idx[0]]).clone()])
        })
    }

    /// The matrix product `self @ other`. If the contraction axis is chunked
    /// differently on the two sides, `other` is rechunked to `self`'s chunks.
    pub fn matmul(&self, other: &DArray) -> Result<DArray> {
        let (m, k) = self.dims2("matmul")?;
        let (k2, n) = other.dims2("matmul")?;
        if k != k2 {
            return Err(LinalgError::ShapeMismatch {
                op: "matmul",
                left: self.shape().to_vec(),
                right: other.shape().to_vec(),
                hint: " (the left operand's columns must equal the right operand's rows)",
            });
        }
        if self.dtype() != other.dtype() {
            return Err(LinalgError::DTypeMismatch { op: "matmul", left: self.dtype(), right: other.dtype() });
        }
        let rechunked;
        let other = if self.chunks().axis(1) != other.chunks().axis(0) {
            let want = Chunks::from_axes(vec![self.chunks().axis(1).to_vec(), other.chunks().axis(1).to_vec()]);
            tracing::debug!(from = %other.chunks(), to = %want, "matmul rechunks its right operand");
            rechunked = other.rechunk(want)?;
            &rechunked
        } else {
            other
        };
        let name = fresh_name("matmul");
        let chunks = Chunks::from_axes(vec![self.chunks().axis(0).to_vec(), other.chunks().axis(1).to_vec()]);
        let nk = self.chunks().axis(1).len();
        let mut g = Graph::with_capacity(chunks.nblocks() * (2 * nk));
        let mut keys = Vec::with_capacity(chunks.nblocks());
        let gemm = |key: Key, i: usize, j: usize, l: usize| {
            Task::new(key, "linalg.gemm")
                .param(&GemmParams::default())
                .inputs([self.key(&[i, l]).clone(), other.key(&[l, j]).clone()])
        };
        for idx in grid_indices(&chunks.grid()) {
            let (i, j) = (idx[0], idx[1]);
            let key = Key::with_shared_name(&name, [i as u32, j as u32]);
            if nk == 1 {
                g.push(gemm(key.clone(), i, j, 0));
            } else {
                let partials: Vec<Key> = (0..nk)
                    .map(|l| {
                        let p = Key::new(format!("{name}.p"), [i as u32, j as u32, l as u32]);
                        g.push(gemm(p.clone(), i, j, l));
                        p
                    })
                    .collect();
                g.reduce_to(key.clone(), &format!("{name}.sum.{i}.{j}"), partials, REDUCE_ARITY, |k| {
                    Task::new(k, "linalg.add").param(&())
                });
            }
            keys.push(key);
        }
        Ok(DArray::from_tasks(vec![m, n], chunks, self.dtype(), keys, g.into_tasks(), &[self, other]))
    }

    /// Sum along `axis`, or of all elements (`None`, a 0-D array).
    pub fn sum(&self, axis: Option<usize>) -> Result<DArray> {
        self.reduce("sum", axis, false)
    }

    /// Mean along `axis`, or of all elements.
    pub fn mean(&self, axis: Option<usize>) -> Result<DArray> {
        let count = match axis {
            None => self.len(),
            Some(a) => self.shape()[a],
        };
        Ok(self.sum(axis)?.scalar(Binary::Div, count as f64))
    }

    /// Euclidean norm along `axis` (of each column for 0, each row for 1),
    /// or the Frobenius norm of the whole array (`None`).
    pub fn norm(&self, axis: Option<usize>) -> Result<DArray> {
        Ok(self.reduce("norm", axis, true)?.sqrt())
    }

    fn reduce(&self, op: &'static str, axis: Option<usize>, squared: bool) -> Result<DArray> {
        if self.ndim() > 2 || axis.is_some_and(|a| a >= self.ndim()) {
            return Err(LinalgError::Parameter {
                name: "axis",
                reason: format!("{op}: no axis {axis:?} in an array of shape {:?}", self.shape()),
            });
        }
        // Along the only axis of a 1-D array is the same as everything.
        let axis = axis.filter(|_| self.ndim() == 2);
        let name = fresh_name(op);
        let params = SumParams { axis, squared };
        let grid = self.chunks().grid();
        // Output blocks: one per block of the kept axis (or just one).
        let (shape, chunks, groups): (Vec<usize>, Chunks, Vec<Vec<Vec<usize>>>) = match axis {
            None => (vec![], Chunks::from_axes(vec![]), vec![grid_indices(&grid).collect()]),
            Some(a) => {
                let keep = 1 - a;
                let groups =
                    (0..grid[keep]).map(|b| grid_indices(&grid).filter(|idx| idx[keep] == b).collect()).collect();
                (vec![self.shape()[keep]], Chunks::from_axes(vec![self.chunks().axis(keep).to_vec()]), groups)
            }
        };
        let mut g = Graph::new();
        let mut keys = Vec::new();
        for (b, group) in groups.into_iter().enumerate() {
            let key =
                if axis.is_some() { Key::with_shared_name(&name, [b as u32]) } else { Key::new(name.clone(), []) };
            let partials: Vec<Key> = group
                .iter()
                .map(|idx| {
                    let p = Key::new(format!("{name}.p"), idx.iter().map(|&i| i as u32));
                    g.push(Task::new(p.clone(), "linalg.sum").param(&params).inputs([self.key(idx).clone()]));
                    p
                })
                .collect();
            g.reduce_to(key.clone(), &format!("{name}.sum.{b}"), partials, REDUCE_ARITY, |k| {
                Task::new(k, "linalg.add").param(&())
            });
            keys.push(key);
        }
        Ok(DArray::from_tasks(shape, chunks, self.dtype(), keys, g.into_tasks(), &[self]))
    }

    /// The same array cut into other blocks.
    pub fn rechunk(&self, chunks: impl IntoChunks) -> Result<DArray> {
        let chunks = chunks.into_chunks(self.shape())?;
        if &chunks == self.chunks() {
            return Ok(self.clone());
        }
        let ndim = self.ndim();
        let old_off: Vec<Vec<usize>> = (0..ndim).map(|a| self.chunks().offsets(a)).collect();
        let new_off: Vec<Vec<usize>> = (0..ndim).map(|a| chunks.offsets(a)).collect();
        // Per axis and new block: the old blocks overlapping it, with the
        // overlap's start in the old block, start in the new, and length.
        let overlaps: Vec<Vec<Vec<Overlap>>> = (0..ndim)
            .map(|a| {
                (0..chunks.axis(a).len())
                    .map(|nb| {
                        let (s, e) = (new_off[a][nb], new_off[a][nb + 1]);
                        (0..self.chunks().axis(a).len())
                            .filter_map(|ob| {
                                let (os, oe) = (old_off[a][ob], old_off[a][ob + 1]);
                                let (lo, hi) = (s.max(os), e.min(oe));
                                (lo < hi).then(|| (ob, lo - os, lo - s, hi - lo))
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let name = fresh_name("rechunk");
        let mut keys = Vec::with_capacity(chunks.nblocks());
        let mut tasks = Vec::new();
        for idx in grid_indices(&chunks.grid()) {
            let per_axis: Vec<&Vec<Overlap>> = idx.iter().enumerate().map(|(a, &b)| &overlaps[a][b]).collect();
            let shape = chunks.block_shape(&idx);
            // One old block covering this new block exactly: reuse it.
            if per_axis.iter().zip(&shape).all(|(o, &len)| o.len() == 1 && o[0].1 == 0 && o[0].3 == len)
                && per_axis.iter().enumerate().all(|(a, o)| self.chunks().axis(a)[o[0].0] == shape[a])
            {
                let old: Vec<usize> = per_axis.iter().map(|o| o[0].0).collect();
                keys.push(self.key(&old).clone());
                continue;
            }
            let mut inputs = Vec::new();
            let mut pieces = Vec::new();
            let counts: Vec<usize> = per_axis.iter().map(|o| o.len()).collect();
            for combo in grid_indices(&counts) {
                let parts: Vec<&Overlap> = combo.iter().enumerate().map(|(a, &c)| &per_axis[a][c]).collect();
                let old: Vec<usize> = parts.iter().map(|p| p.0).collect();
                inputs.push(self.key(&old).clone());
                pieces.push(Piece {
                    input: (inputs.len() - 1) as u32,
                    src: parts.iter().map(|p| p.1).collect(),
                    dst: parts.iter().map(|p| p.2).collect(),
                    len: parts.iter().map(|p| p.3).collect(),
                });
            }
            let key = Key::with_shared_name(&name, idx.iter().map(|&i| i as u32));
            tasks.push(
                Task::new(key.clone(), "linalg.assemble").param(&AssembleParams { shape, pieces }).inputs(inputs),
            );
            keys.push(key);
        }
        Ok(DArray::from_tasks(self.shape().to_vec(), chunks, self.dtype(), keys, tasks, &[self]))
    }

    /// The sub-array made of blocks `ranges[a]` along each axis: no copies,
    /// no tasks, the same blocks.
    pub fn blocks(&self, ranges: &[Range<usize>]) -> Result<DArray> {
        let grid = self.chunks().grid();
        if ranges.len() != self.ndim() || ranges.iter().zip(&grid).any(|(r, &n)| r.start >= r.end || r.end > n) {
            return Err(LinalgError::Parameter {
                name: "blocks",
                reason: format!("block ranges {ranges:?} do not fit a grid of {grid:?} blocks"),
            });
        }
        let chunks = self.chunks().select(ranges);
        let shape: Vec<usize> = (0..self.ndim()).map(|a| chunks.axis(a).iter().sum()).collect();
        let sub: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
        let keys = grid_indices(&sub)
            .map(|idx| {
                let at: Vec<usize> = idx.iter().zip(ranges).map(|(&i, r)| r.start + i).collect();
                self.key(&at).clone()
            })
            .collect();
        Ok(self.view(shape, chunks, keys))
    }
}

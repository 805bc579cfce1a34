//! TSQR: QR of tall-and-skinny arrays, as Benson, Gleich and Demmel's
//! direct TSQR ("Direct QR factorizations for tall-and-skinny matrices in
//! MapReduce architectures", 2013).
//!
//! For `A` (m x n) cut into row blocks `A_i`:
//!
//! 1. **Leaves.** Each worker factors its blocks: `A_i = Q_i R_i`
//!    (Householder, kept in compact form on the worker; only the small
//!    `R_i`, `k_i x n` with `k_i = min(m_i, n)`, leaves it).
//! 2. **Tree.** Groups of up to [`ARITY`] R factors are stacked and factored
//!    again, level by level, until one `R` is left: `R`'s of A.
//! 3. **Root.** `R` gets non-negative diagonal (QR), or is decomposed
//!    `R = U_r S Vᵀ` (SVD, [`crate::svd`]).
//! 4. **Down.** Each node hands its children their slice of its Q times its
//!    own factor (small `n x c` products), and each leaf finally applies its
//!    reflectors: `Q_i F_i`, formed explicitly and left on the worker.
//!
//! Communication: one `k_i x n` block per leaf up, one `k_i x c` block per
//! leaf down; the big blocks never move. Everything is Householder-based, so
//! the result is as accurate as a QR of the whole matrix; nothing squares
//! the condition number.
//!
//! ```
//! use tessera_linalg::{tsqr, DArray};
//! use tessera_runtime::LocalCluster;
//! let cluster = LocalCluster::builder().workers(2).registry(tessera_linalg::registry()).start()?;
//! let a = DArray::random_normal(&[1000, 8], &[250, 8], 7)?;
//! let qr = tsqr(&a)?;
//! let r = qr.r.to_array2::<f64>(cluster.client())?;
//! assert!(r[[0, 0]] > 0.0 && r[[1, 0]] == 0.0);
//! # Ok::<(), tessera_linalg::LinalgError>(())
//! ```

use serde::{Deserialize, Serialize};
use tessera_runtime::{Block, KernelError, Key, NumericalError, Registry, Task};

use crate::array::{check_float, fresh_name, DArray};
use crate::chunks::Chunks;
use crate::dense::{self, block, block2, rows};
use crate::dispatch;
use crate::element::Element;
use crate::error::{LinalgError, Result};
use crate::kernels::{unsupported, AssembleParams, Piece};

/// R factors stacked per tree node.
pub const ARITY: usize = 8;

/// `A = Q R`: `Q` distributed like `A`'s rows, `R` in one block.
#[derive(Clone, Debug)]
pub struct Qr {
    pub q: DArray,
    pub r: DArray,
}

/// QR of a tall-and-skinny array (chunked along rows only) by direct TSQR;
/// `R` has a non-negative diagonal, so the factors are unique.
pub fn tsqr(a: &DArray) -> Result<Qr> {
    let (m, n) = a.dims2("tsqr")?;
    check_float("tsqr", a.dtype())?;
    rows_only(a, "tsqr")?;
    let up = Up::build(a, false, "the input of tsqr")?;
    let root = up.root_task(RootMode::Qr, n);
    let kn = up.root_k;
    let f_root = up.extract(&root, "f", [0, 0], [kn, kn], vec![kn, kn]);
    let r = up.extract(&root, "r", [kn, 0], [kn, n], vec![kn, n]);
    let (q_keys, q_tasks) = down(&up, f_root.key.clone(), kn, false);
    let mut tasks = up.tasks;
    tasks.extend([root, f_root, r.clone()]);
    tasks.extend(q_tasks);
    let q_chunks = Chunks::from_axes(vec![a.chunks().axis(0).to_vec(), vec![kn]]);
    let q = DArray::from_tasks(vec![m, kn], q_chunks, a.dtype(), q_keys, tasks, &[a]);
    let r = DArray::from_tasks(
        vec![kn, n],
        Chunks::from_axes(vec![vec![kn], vec![n]]),
        a.dtype(),
        vec![r.key],
        vec![],
        &[&q],
    );
    Ok(Qr { q, r })
}

/// QR of any array the blocked algorithms handle: tall-and-skinny arrays
/// (one column chunk) by [`tsqr`]; short-and-fat arrays (one row chunk
/// whose first column chunk is at least as wide as the array is tall) by
/// dask's `sfqr`: `Q R_1 = A_1`, then `R_j = Qᵀ A_j` for the other chunks.
pub fn qr(a: &DArray) -> Result<Qr> {
    let (m, _) = a.dims2("qr")?;
    let chunks = a.chunks();
    if chunks.axis(1).len() == 1 {
        return tsqr(a);
    }
    if chunks.axis(0).len() == 1 && chunks.axis(1)[0] >= m {
        return sfqr(a);
    }
    Err(LinalgError::Layout {
        op: "qr",
        reason: format!(
            "blocked QR needs an array chunked along one axis: rows only (tall-and-skinny) or columns only with a \
             first column chunk at least {m} wide (short-and-fat); got chunks {chunks}. Rechunk first, e.g. \
             `a.rechunk(&[R, 0])` for row blocks of R rows"
        ),
    })
}

fn sfqr(a: &DArray) -> Result<Qr> {
    let (m, n) = a.dims2("qr")?;
    check_float("qr", a.dtype())?;
    let name = fresh_name("sfqr");
    let widths = a.chunks().axis(1).to_vec();
    // head = [Q | R_1] (m x (m + w0)), from one QR of the first chunk.
    let head =
        Task::new(Key::new(format!("{name}.head"), []), "linalg.sf_head").param(&()).inputs([a.keys()[0].clone()]);
    let q = Task::new(Key::new(format!("{name}.q"), [0, 0]), "linalg.assemble")
        .param(&AssembleParams { shape: vec![m, m], pieces: vec![piece([0, 0], [m, m])] })
        .inputs([head.key.clone()]);
    let mut tasks = vec![head.clone(), q.clone()];
    let mut keys = Vec::with_capacity(widths.len());
    for (j, &w) in widths.iter().enumerate() {
        let key = Key::new(format!("{name}.r"), [0, j as u32]);
        tasks.push(if j == 0 {
            Task::new(key.clone(), "linalg.assemble")
                .param(&AssembleParams { shape: vec![m, w], pieces: vec![piece([0, m], [m, w])] })
                .inputs([head.key.clone()])
        } else {
            Task::new(key.clone(), "linalg.gemm")
                .param(&crate::kernels::GemmParams { ta: true, tb: false })
                .inputs([q.key.clone(), a.keys()[j].clone()])
        });
        keys.push(key);
    }
    let qa =
        DArray::from_tasks(vec![m, m], Chunks::from_axes(vec![vec![m], vec![m]]), a.dtype(), vec![q.key], tasks, &[a]);
    let ra = DArray::from_tasks(vec![m, n], Chunks::from_axes(vec![vec![m], widths]), a.dtype(), keys, vec![], &[&qa]);
    Ok(Qr { q: qa, r: ra })
}

fn piece(src: [usize; 2], len: [usize; 2]) -> Piece {
    Piece { input: 0, src: src.to_vec(), dst: vec![0, 0], len: len.to_vec() }
}

/// Errors unless `a` is chunked along rows only.
pub(crate) fn rows_only(a: &DArray, op: &'static str) -> Result<()> {
    if a.chunks().axis(1).len() == 1 {
        return Ok(());
    }
    let rows = a.chunks().axis(0)[0];
    Err(LinalgError::Layout {
        op,
        reason: format!(
            "needs an array chunked along rows only (one column chunk), got chunks {}; rechunk to whole rows \
             first: `a.rechunk(&[{rows}, 0])` (or `--chunk-rows {rows}` on the command line)",
            a.chunks()
        ),
    })
}

/// What the root does with the last R.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RootMode {
    /// Sign-fix R (non-negative diagonal); packed `[D; D R]`.
    Qr,
    /// `R = U S Vᵀ` truncated to `k`; packed `[U; s; Vᵀ]`.
    Svd { k: usize },
}

/// A leaf or node of the upward pass.
pub(crate) struct Node {
    /// The packed factor block.
    pub packed: Key,
    /// Rows of its R.
    pub k: usize,
    /// Leaves: rows of the block. Nodes: the children's row offsets in the
    /// stacked R's and their k's.
    pub m: usize,
    pub children: Vec<(usize, usize)>,
}

/// The upward pass: leaves, tree levels, the final R.
pub(crate) struct Up {
    pub name: String,
    pub tasks: Vec<Task>,
    pub leaves: Vec<Node>,
    pub levels: Vec<Vec<Node>>,
    /// Key and rows of the last R.
    pub root_r: Key,
    pub root_k: usize,
    pub n: usize,
}

impl Up {
    /// Leaves over the row blocks of `a` (or, `transposed`, over the column
    /// blocks of `a` read as the row blocks of `aᵀ`), then the R tree.
    pub fn build(a: &DArray, transposed: bool, what: &str) -> Result<Up> {
        let name = fresh_name("tsqr").to_string();
        let (axis, n) = if transposed { (1, a.shape()[0]) } else { (0, a.shape()[1]) };
        let starts = a.chunks().offsets(axis);
        let mut tasks = Vec::new();
        let mut leaves = Vec::new();
        let mut rs = Vec::new();
        for (i, &m) in a.chunks().axis(axis).iter().enumerate() {
            let packed = Key::new(format!("{name}.leaf"), [i as u32]);
            let p = LeafParams { rows: m, cols: n, start: starts[i], transposed, what: what.to_owned() };
            tasks.push(Task::new(packed.clone(), "linalg.qr_leaf").param(&p).inputs([a.keys()[i].clone()]));
            let r = Key::new(format!("{name}.r"), [0, i as u32]);
            tasks.push(Task::new(r.clone(), "linalg.qr_leaf_r").param(&(m, n)).inputs([packed.clone()]));
            let k = m.min(n);
            rs.push((r, k));
            leaves.push(Node { packed, k, m, children: Vec::new() });
        }
        let mut levels: Vec<Vec<Node>> = Vec::new();
        let mut level = 1u32;
        while rs.len() > 1 {
            let mut next = Vec::new();
            let mut nodes = Vec::new();
            for (g, group) in rs.chunks(ARITY).enumerate() {
                let ks: Vec<usize> = group.iter().map(|(_, k)| *k).collect();
                let sumk: usize = ks.iter().sum();
                let kn = sumk.min(n);
                let packed = Key::new(format!("{name}.node"), [level, g as u32]);
                tasks.push(
                    Task::new(packed.clone(), "linalg.qr_node")
                        .param(&NodeParams { ks: ks.clone(), n })
                        .inputs(group.iter().map(|(r, _)| r.clone())),
                );
                let r = Key::new(format!("{name}.r"), [level, g as u32]);
                tasks.push(extract_task(r.clone(), &packed, [sumk, 0], [kn, n], vec![kn, n]));
                let mut off = 0;
                let children = ks
                    .iter()
                    .enumerate()
                    .map(|(j, &k)| {
                        let c = (g * ARITY + j, off);
                        off += k;
                        c
                    })
                    .collect();
                next.push((r, kn));
                nodes.push(Node { packed, k: kn, m: sumk, children });
            }
            levels.push(nodes);
            rs = next;
            level += 1;
        }
        let (root_r, root_k) = rs.pop().expect("at least one block");
        Ok(Up { name, tasks, leaves, levels, root_r, root_k, n })
    }

    /// The root task over the last R.
    pub fn root_task(&self, mode: RootMode, n: usize) -> Task {
        Task::new(Key::new(format!("{}.root", self.name), []), "linalg.qr_root")
            .param(&RootParams { mode, n })
            .inputs([self.root_r.clone()])
    }

    /// A task cutting `len` at `src` out of the packed root.
    pub fn extract(&self, root: &Task, part: &str, src: [usize; 2], len: [usize; 2], shape: Vec<usize>) -> Task {
        extract_task(Key::new(format!("{}.{part}", self.name), []), &root.key, src, len, shape)
    }
}

fn extract_task(key: Key, from: &Key, src: [usize; 2], len: [usize; 2], shape: Vec<usize>) -> Task {
    Task::new(key, "linalg.assemble")
        .param(&AssembleParams { shape, pieces: vec![piece(src, len)] })
        .inputs([from.clone()])
}

/// The downward pass from `f_root` (`root_k x c`): per leaf, the block
/// `Q_i F_i` (`m_i x c`, or its transpose), keyed `name.q[i, 0]` (`[0, i]`).
pub(crate) fn down(up: &Up, f_root: Key, c: usize, transpose_out: bool) -> (Vec<Key>, Vec<Task>) {
    let (leaves, levels, name, n) = (&up.leaves, &up.levels, &up.name, up.n);
    let mut tasks = Vec::new();
    // F of each node of the current level, from the top down.
    let mut f: Vec<Key> = vec![f_root];
    for (l, nodes) in levels.iter().enumerate().rev() {
        let below = if l == 0 { leaves.len() } else { levels[l - 1].len() };
        let mut next = vec![None; below];
        for (g, node) in nodes.iter().enumerate() {
            for &(child, row) in &node.children {
                let k = if l == 0 { leaves[child].k } else { levels[l - 1][child].k };
                let key = Key::new(format!("{name}.f"), [l as u32, child as u32]);
                tasks.push(
                    Task::new(key.clone(), "linalg.qr_down")
                        .param(&DownParams { row, rows: k, kn: node.k, n })
                        .inputs([node.packed.clone(), f[g].clone()]),
                );
                next[child] = Some(key);
            }
        }
        f = next.into_iter().map(|k| k.expect("every child has a parent")).collect();
    }
    let mut keys = Vec::with_capacity(leaves.len());
    for (i, leaf) in leaves.iter().enumerate() {
        let idx = if transpose_out { [0, i as u32] } else { [i as u32, 0] };
        let key = Key::new(format!("{name}.q"), idx);
        tasks.push(
            Task::new(key.clone(), "linalg.qr_apply")
                .param(&ApplyParams { rows: leaf.m, cols: n, c, transpose_out })
                .inputs([leaf.packed.clone(), f[i].clone()]),
        );
        keys.push(key);
    }
    (keys, tasks)
}

// ---- kernels -------------------------------------------------------------------

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LeafParams {
    pub rows: usize,
    pub cols: usize,
    /// Offset of the block's first row (for messages).
    pub start: usize,
    /// The input block is `cols x rows`, read as its transpose.
    pub transposed: bool,
    pub what: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct NodeParams {
    ks: Vec<usize>,
    n: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct DownParams {
    row: usize,
    rows: usize,
    kn: usize,
    n: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ApplyParams {
    pub rows: usize,
    pub cols: usize,
    pub c: usize,
    pub transpose_out: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RootParams {
    mode: RootMode,
    n: usize,
}

pub(crate) fn register_kernels(r: &mut Registry) {
    r.register("linalg.qr_leaf", |ctx, p: LeafParams, inputs: &[Block]| {
        let x = first(inputs)?;
        #[cfg(feature = "cuda")]
        if let Some(gpu) = ctx.gpu {
            if p.rows >= p.cols && matches!(x.dtype(), tessera_runtime::DType::F64 | tessera_runtime::DType::F32) {
                check_leaf_shape(&p, x)?;
                return crate::gpu::qr_leaf(gpu, &p, x);
            }
        }
        let _ = ctx;
        dispatch!(x.dtype(), T => leaf::<T>(&p, x), _ => Err(unsupported("qr_leaf", x.dtype())))
    });
    r.register("linalg.qr_leaf_r", |_, (m, n): (usize, usize), inputs: &[Block]| {
        let x = first(inputs)?;
        if is_explicit(x) {
            #[cfg(feature = "cuda")]
            if let Some(r) = crate::gpu::explicit_r(x, m, n)? {
                return Ok(r);
            }
            return dispatch!(x.dtype(), T => explicit_r::<T>(m, n, x), _ => Err(unsupported("qr_leaf_r", x.dtype())));
        }
        dispatch!(x.dtype(), T => leaf_r::<T>(m, n, x), _ => Err(unsupported("qr_leaf_r", x.dtype())))
    });
    r.register("linalg.qr_apply", |ctx, p: ApplyParams, inputs: &[Block]| {
        let [packed, f] = inputs else { return Err(KernelError::msg("qr_apply takes two blocks")) };
        if is_explicit(packed) {
            #[cfg(feature = "cuda")]
            if let Some(gpu) = ctx.gpu {
                return crate::gpu::qr_apply(gpu, &p, packed, f);
            }
            let _ = ctx;
            return dispatch!(packed.dtype(), T => explicit_apply::<T>(&p, packed, f), _ => Err(unsupported("qr_apply", packed.dtype())));
        }
        dispatch!(packed.dtype(), T => apply::<T>(&p, packed, f), _ => Err(unsupported("qr_apply", packed.dtype())))
    });
    r.register("linalg.qr_node", |_, p: NodeParams, inputs: &[Block]| {
        let x = first(inputs)?;
        dispatch!(x.dtype(), T => node::<T>(&p, inputs), _ => Err(unsupported("qr_node", x.dtype())))
    });
    r.register("linalg.qr_down", |_, p: DownParams, inputs: &[Block]| {
        let [packed, f] = inputs else { return Err(KernelError::msg("qr_down takes two blocks")) };
        dispatch!(packed.dtype(), T => down_kernel::<T>(&p, packed, f), _ => Err(unsupported("qr_down", packed.dtype())))
    });
    r.register("linalg.qr_root", |_, p: RootParams, inputs: &[Block]| {
        let x = first(inputs)?;
        dispatch!(x.dtype(), T => root::<T>(&p, x), _ => Err(unsupported("qr_root", x.dtype())))
    });
    r.register("linalg.sf_head", |_, (): (), inputs: &[Block]| {
        let x = first(inputs)?;
        dispatch!(x.dtype(), T => sf_head::<T>(x), _ => Err(unsupported("sf_head", x.dtype())))
    });
}

fn first(inputs: &[Block]) -> Result<&Block, KernelError> {
    inputs.first().ok_or_else(|| KernelError::msg("no input block"))
}

/// Rows per in-cache sub-block of a leaf (a 4096 x 64 f64 panel is 2 MiB).
const SUB_ROWS: usize = 4096;

/// Where the parts of a packed leaf lie. A leaf block is factored as a small
/// TSQR of its own: sub-blocks of [`SUB_ROWS`] rows, each copied (tiled
/// transpose) into column-major storage and factored in place while it sits
/// in cache, then their stacked R's factored once more. Measured on a
/// 250,000 x 64 block: 0.83 s for factor and apply against 1.05 s for one
/// Householder QR of the whole block (whose panels stream from memory).
///
/// Layout (1-D block): for every sub-block its compact factor (column-major
/// `r_s x n`) and coefficients (`bs_s x k_s`); then, with more than one
/// sub-block, the stack's factor (`K x n`, K the sum of the k_s) and
/// coefficients.
struct LeafLayout {
    m: usize,
    n: usize,
    /// Per sub-block: first row, rows, k, block size, offset of its factor.
    subs: Vec<(usize, usize, usize, usize, usize)>,
    /// Rows of the stack, its k, block size and offset (with > 1 sub-block).
    stack: Option<(usize, usize, usize, usize)>,
    len: usize,
}

impl LeafLayout {
    fn new<T: Element>(m: usize, n: usize) -> LeafLayout {
        let mut subs = Vec::with_capacity(m.div_ceil(SUB_ROWS));
        let mut off = 0;
        let mut row = 0;
        while row < m {
            let r = SUB_ROWS.min(m - row);
            let (k, bs) = (r.min(n), dense::qr_block_size::<T>(r, n));
            subs.push((row, r, k, bs, off));
            off += r * n + bs * k;
            row += r;
        }
        let stack = (subs.len() > 1).then(|| {
            let rows: usize = subs.iter().map(|s| s.2).sum();
            let (k, bs) = (rows.min(n), dense::qr_block_size::<T>(rows, n));
            let at = off;
            off += rows * n + bs * k;
            (rows, k, bs, at)
        });
        LeafLayout { m, n, subs, stack, len: off }
    }

    /// Rows of the leaf's R.
    fn k(&self) -> usize {
        self.stack.map_or(self.subs.first().map_or(0, |s| s.2), |s| s.1)
    }

    /// Compact factor and coefficients of sub-block `i` in `data`.
    fn sub<'a, T: Element>(&self, data: &'a [T], i: usize) -> (faer::MatRef<'a, T>, faer::MatRef<'a, T>) {
        let (_, r, k, bs, at) = self.subs[i];
        let f = faer::MatRef::from_column_major_slice(&data[at..at + r * self.n], r, self.n);
        let c = faer::MatRef::from_column_major_slice(&data[at + r * self.n..at + r * self.n + bs * k], bs, k);
        (f, c)
    }

    fn stack<'a, T: Element>(&self, data: &'a [T]) -> Option<(faer::MatRef<'a, T>, faer::MatRef<'a, T>)> {
        let (rows, k, bs, at) = self.stack?;
        let f = faer::MatRef::from_column_major_slice(&data[at..at + rows * self.n], rows, self.n);
        let c = faer::MatRef::from_column_major_slice(&data[at + rows * self.n..at + rows * self.n + bs * k], bs, k);
        Some((f, c))
    }

    /// The packed block's elements, checked against this layout.
    fn data<'a, T: Element>(&self, x: &'a Block) -> Result<&'a [T], KernelError> {
        let data = T::slice(x).ok_or_else(|| unsupported("qr", x.dtype()))?;
        if data.len() != self.len {
            return Err(KernelError::msg(format!(
                "packed QR factor has {} elements, expected {} for {} x {}",
                data.len(),
                self.len,
                self.m,
                self.n
            )));
        }
        Ok(data)
    }
}

/// Checks a leaf's input block against its parameters.
pub(crate) fn check_leaf_shape(p: &LeafParams, x: &Block) -> Result<(), KernelError> {
    let (m, n) = (p.rows, p.cols);
    match *x.shape() {
        [r, c] if (r, c) == if p.transposed { (n, m) } else { (m, n) } => Ok(()),
        [r, c] => Err(KernelError::msg(format!("qr_leaf: block is {r} x {c}, expected {m} x {n}"))),
        ref s => Err(KernelError::msg(format!("qr_leaf: the block has shape {s:?}, expected a matrix"))),
    }
}

/// The error for a leaf whose R is not finite: finds the first NaN or Inf
/// of the input to say where it is.
pub(crate) fn non_finite_error<T: Element>(p: &LeafParams, x: &Block) -> KernelError {
    let (data, c) = (T::slice(x).unwrap_or(&[]), x.shape().get(1).copied().unwrap_or(1));
    let (i, j) = dense::first_non_finite(data, c).unwrap_or((0, 0));
    let at = if p.transposed { [i, p.start + j] } else { [p.start + i, j] };
    let value = data.get(i * c + j).map_or(f64::NAN, |v| v.to_f64());
    KernelError::Numerical(NumericalError::NonFinite {
        what: p.what.clone(),
        value,
        at: at.to_vec(),
        needs: Some("the SVD and QR need finite values".into()),
    })
}

/// Whether a packed leaf is in explicit form: `Q` and `R` themselves, as a
/// GPU leaf makes them (cuSOLVER `geqrf` + `orgqr`), rather than faer's
/// compact reflectors ([`LeafLayout`], a 1-D block). An explicit leaf is a
/// 2-D block of shape `[m + n, n]` holding the column-major `m x n` thin Q
/// followed by the column-major `n x n` R (so `m >= n`).
pub(crate) fn is_explicit(packed: &Block) -> bool {
    packed.shape().len() == 2
}

/// An explicit leaf made on the CPU (what GPU leaves make; the CPU path
/// uses the compact form, so this serves tests of the explicit form).
#[cfg(test)]
fn explicit_leaf<T: Element>(a: &[T], m: usize, n: usize) -> Block {
    assert!(m >= n);
    let h = dense::Householder::new(rows(a, m, n));
    let (q, r) = (h.thin_q(), h.r());
    let mut out = vec![T::default(); (m + n) * n];
    faer::MatMut::from_column_major_slice_mut(&mut out[..m * n], m, n).copy_from(q.as_ref());
    faer::MatMut::from_column_major_slice_mut(&mut out[m * n..], n, n).copy_from(rows(&r, n, n));
    block(vec![m + n, n], out)
}

/// The elements of an explicit leaf, checked against `m x n`.
fn explicit_data<T: Element>(x: &Block, m: usize, n: usize) -> Result<&[T], KernelError> {
    let data = T::slice(x).ok_or_else(|| unsupported("qr", x.dtype()))?;
    if x.shape() != [m + n, n] {
        return Err(KernelError::msg(format!(
            "explicit QR factor has shape {:?}, expected [{}, {n}] for {m} x {n}",
            x.shape(),
            m + n
        )));
    }
    Ok(data)
}

/// R (row-major `n x n`) of an explicit leaf.
fn explicit_r<T: Element>(m: usize, n: usize, x: &Block) -> Result<Block, KernelError> {
    let data = explicit_data::<T>(x, m, n)?;
    let r = faer::MatRef::from_column_major_slice(&data[m * n..], n, n);
    Ok(block(vec![n, n], dense::to_rows(r)))
}

/// `Q_leaf @ F` (or its transpose) for an explicit leaf.
fn explicit_apply<T: Element>(p: &ApplyParams, packed: &Block, f: &Block) -> Result<Block, KernelError> {
    let (m, n, c) = (p.rows, p.cols, p.c);
    let data = explicit_data::<T>(packed, m, n)?;
    let (fd, fr, fc) = block2::<T>(f, "the factor from the tree")?;
    if (fr, fc) != (n, c) {
        return Err(KernelError::msg(format!("qr_apply: factor is {fr} x {fc}, expected {n} x {c}")));
    }
    let q = faer::MatRef::from_column_major_slice(&data[..m * n], m, n);
    Ok(if p.transpose_out {
        block(vec![c, m], dense::gemm(rows(fd, fr, fc).transpose(), q.transpose()))
    } else {
        block(vec![m, c], dense::gemm(q, rows(fd, fr, fc)))
    })
}

/// Factors a leaf block (see [`LeafLayout`]).
fn leaf<T: Element>(p: &LeafParams, x: &Block) -> Result<Block, KernelError> {
    check_leaf_shape(p, x)?;
    let (data, ..) = block2::<T>(x, "the block")?;
    let (m, n) = (p.rows, p.cols);
    let layout = LeafLayout::new::<T>(m, n);
    let mut packed = dense::zeroed_small_pages::<T>(layout.len);
    let mut stacked = layout.stack.map(|(rows, ..)| vec![T::default(); rows * n]);
    let mut stack_row = 0;
    for &(row0, rows, k, bs, at) in &layout.subs {
        let (factor, rest) = packed[at..].split_at_mut(rows * n);
        if p.transposed {
            // The column-major rows x n of Aᵀ's rows: A's columns row0.., as they are.
            for j in 0..n {
                factor[j * rows..(j + 1) * rows].copy_from_slice(&data[j * m + row0..j * m + row0 + rows]);
            }
        } else {
            dense::transpose(&data[row0 * n..(row0 + rows) * n], rows, n, factor);
        }
        dense::qr_in_place(
            faer::MatMut::from_column_major_slice_mut(&mut *factor, rows, n),
            faer::MatMut::from_column_major_slice_mut(&mut rest[..bs * k], bs, k),
        );
        if let Some(st) = stacked.as_mut() {
            // R_s into the stack (row-major there, copied column-major below).
            let f = faer::MatRef::from_column_major_slice(&*factor, rows, n);
            for i in 0..k {
                for j in i..n {
                    st[(stack_row + i) * n + j] = f[(i, j)];
                }
            }
            stack_row += k;
        }
    }
    if let (Some(st), Some((rows, k, bs, at))) = (stacked, layout.stack) {
        let (factor, rest) = packed[at..].split_at_mut(rows * n);
        dense::transpose(&st, rows, n, factor);
        dense::qr_in_place(
            faer::MatMut::from_column_major_slice_mut(&mut *factor, rows, n),
            faer::MatMut::from_column_major_slice_mut(&mut rest[..bs * k], bs, k),
        );
    }
    // NaN or Inf anywhere in the block reaches R's diagonal: check there,
    // then find it in the input to say where.
    let r_factor = layout.stack(&packed).map_or_else(|| layout.sub(&packed, 0).0, |s| s.0);
    let k = layout.k();
    if (0..k).any(|i| !r_factor[(i, i)].to_f64().is_finite()) || !(0..n).all(|j| r_factor[(0, j)].to_f64().is_finite())
    {
        return Err(non_finite_error::<T>(p, x));
    }
    Ok(block(vec![packed.len()], packed))
}

fn leaf_r<T: Element>(m: usize, n: usize, x: &Block) -> Result<Block, KernelError> {
    let layout = LeafLayout::new::<T>(m, n);
    let data = layout.data::<T>(x)?;
    let factor = layout.stack(data).map_or_else(|| layout.sub(data, 0).0, |s| s.0);
    Ok(block(vec![layout.k(), n], dense::r_of(factor)))
}

/// `Q_leaf @ F`: through the stack's reflectors, then each sub-block's.
fn apply<T: Element>(p: &ApplyParams, packed: &Block, f: &Block) -> Result<Block, KernelError> {
    let layout = LeafLayout::new::<T>(p.rows, p.cols);
    let data = layout.data::<T>(packed)?;
    let (fd, fr, fc) = block2::<T>(f, "the factor from the tree")?;
    if fr != layout.k() || fc != p.c {
        return Err(KernelError::msg(format!("qr_apply: factor is {fr} x {fc}, expected {} x {}", layout.k(), p.c)));
    }
    let (m, c) = (p.rows, p.c);
    let g = match layout.stack(data) {
        Some((factor, coeff)) => dense::q_apply(factor, coeff, rows(fd, fr, fc)),
        None => rows(fd, fr, fc).to_owned(),
    };
    let mut out = dense::zeroed_small_pages::<T>(m * c);
    let mut tmp = vec![T::default(); SUB_ROWS.min(m) * c];
    let mut g_row = 0;
    for (i, &(row0, r, k, ..)) in layout.subs.iter().enumerate() {
        let (factor, coeff) = layout.sub(data, i);
        // Column-major r x c, then into the output's rows (or columns).
        let x = &mut tmp[..r * c];
        dense::q_apply_into(
            factor,
            coeff,
            g.as_ref().subrows(g_row, k),
            faer::MatMut::from_column_major_slice_mut(&mut *x, r, c),
        );
        g_row += k;
        if p.transpose_out {
            for j in 0..c {
                out[j * m + row0..j * m + row0 + r].copy_from_slice(&x[j * r..(j + 1) * r]);
            }
        } else {
            dense::transpose(x, c, r, &mut out[row0 * c..(row0 + r) * c]);
        }
    }
    Ok(if p.transpose_out { block(vec![c, m], out) } else { block(vec![m, c], out) })
}

/// Packed node, row-major `(sumk + kn) x n`: the thin Q of the stacked R's
/// (`sumk x kn`, zero-padded to width n), then its R (`kn x n`).
fn node<T: Element>(p: &NodeParams, inputs: &[Block]) -> Result<Block, KernelError> {
    let n = p.n;
    let sumk: usize = p.ks.iter().sum();
    let mut stacked = vec![T::default(); sumk * n];
    let mut at = 0;
    for (i, (b, &k)) in inputs.iter().zip(&p.ks).enumerate() {
        let (d, r, c) = block2::<T>(b, &format!("R factor {i}"))?;
        if (r, c) != (k, n) {
            return Err(KernelError::msg(format!("qr_node: R factor {i} is {r} x {c}, expected {k} x {n}")));
        }
        stacked[at * n..(at + k) * n].copy_from_slice(d);
        at += k;
    }
    let h = dense::Householder::new(rows(&stacked, sumk, n));
    let kn = h.k();
    let mut out = vec![T::default(); (sumk + kn) * n];
    dense::rows_mut(&mut out[..sumk * n], sumk, n).subcols_mut(0, kn).copy_from(h.thin_q().as_ref());
    out[sumk * n..].copy_from_slice(&h.r());
    Ok(block(vec![sumk + kn, n], out))
}

fn down_kernel<T: Element>(p: &DownParams, packed: &Block, f: &Block) -> Result<Block, KernelError> {
    let (d, r, c) = block2::<T>(packed, "the packed node")?;
    let (fd, fr, fc) = block2::<T>(f, "the factor from above")?;
    if c != p.n || p.row + p.rows > r || fr != p.kn {
        return Err(KernelError::msg(format!("qr_down: node {r} x {c}, factor {fr} x {fc} do not fit")));
    }
    let q = rows(d, r, c).subrows(p.row, p.rows).subcols(0, p.kn);
    Ok(block(vec![p.rows, fc], dense::gemm(q, rows(fd, fr, fc))))
}

/// The root: see [`RootMode`] for the packed layouts (row-major, width n).
fn root<T: Element>(p: &RootParams, x: &Block) -> Result<Block, KernelError> {
    let (d, kn, n) = block2::<T>(x, "the last R")?;
    if n != p.n {
        return Err(KernelError::msg(format!("qr_root: R is {kn} x {n}, expected width {}", p.n)));
    }
    if let Some((i, j)) = dense::first_non_finite(d, n) {
        return Err(KernelError::msg(format!("the R factor holds {} at [{i}, {j}]", d[i * n + j].to_f64())));
    }
    match p.mode {
        RootMode::Qr => {
            let mut out = vec![T::default(); 2 * kn * n];
            for i in 0..kn {
                let neg = d[i * n + i] < T::zero_impl();
                out[i * n + i] = if neg { -T::one_impl() } else { T::one_impl() };
                for j in 0..n {
                    let v = d[i * n + j];
                    out[(kn + i) * n + j] = if neg { -v } else { v };
                }
            }
            Ok(block(vec![2 * kn, n], out))
        }
        RootMode::Svd { k } => {
            let (mut u, s, mut v) = dense::thin_svd(rows(d, kn, n))?;
            dense::svd_flip(u.as_mut(), v.as_mut());
            let k = k.min(s.len());
            let mut out = vec![T::default(); (kn + 1 + k) * n];
            dense::rows_mut(&mut out[..kn * n], kn, n).subcols_mut(0, k).copy_from(u.as_ref().subcols(0, k));
            out[kn * n..kn * n + k].copy_from_slice(&s[..k]);
            dense::rows_mut(&mut out[(kn + 1) * n..], k, n).copy_from(v.as_ref().subcols(0, k).transpose());
            Ok(block(vec![kn + 1 + k, n], out))
        }
    }
}

/// `[Q | R_1]` for the first chunk of a short-and-fat array (`m x w`, w >= m).
fn sf_head<T: Element>(x: &Block) -> Result<Block, KernelError> {
    let (d, m, w) = block2::<T>(x, "the first chunk")?;
    if let Some((i, j)) = dense::first_non_finite(d, w) {
        return Err(KernelError::msg(format!("the input of qr contains {} at [{i}, {j}]", d[i * w + j].to_f64())));
    }
    let h = dense::Householder::new(rows(d, m, w));
    let k = h.k();
    let mut q = h.thin_q();
    let mut r = h.r();
    // Non-negative diagonal, as TSQR's.
    for i in 0..k {
        if r[i * w + i] < T::zero_impl() {
            r[i * w..(i + 1) * w].iter_mut().for_each(|v| *v = -*v);
            for row in 0..m {
                q[(row, i)] = -q[(row, i)];
            }
        }
    }
    let mut out = vec![T::default(); m * (m + w)];
    dense::rows_mut(&mut out, m, m + w).subcols_mut(0, k).copy_from(q.as_ref());
    dense::rows_mut(&mut out, m, m + w).subcols_mut(m, w).copy_from(rows(&r, k, w));
    Ok(block(vec![m, m + w], out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NaN in a leaf is a numerical failure, at its place in the whole array.
    #[test]
    fn a_non_finite_leaf_is_a_numerical_failure() {
        let mut a = test_matrix(4, 2);
        a[5] = f64::NAN; // row 2, column 1 of the block
        let x = Block::new(vec![4, 2], tessera_runtime::Buffer::F64(a));
        let p = LeafParams { rows: 4, cols: 2, start: 10, transposed: false, what: "the input of qr".into() };
        let e = non_finite_error::<f64>(&p, &x);
        match e.numerical() {
            Some(NumericalError::NonFinite { at, value, .. }) => {
                assert_eq!((at.as_slice(), value.is_nan()), (&[12, 1][..], true))
            }
            other => panic!("not a non-finite failure: {other:?} ({e})"),
        }
        assert_eq!(e.to_string(), "the input of qr contains NaN at [12, 1]; the SVD and QR need finite values");
    }

    fn test_matrix(m: usize, n: usize) -> Vec<f64> {
        (0..m * n)
            .map(|i| ((i * 7919 % 1013) as f64 / 1013.0 - 0.5) + if i % (n + 1) == 0 { 2.0 } else { 0.0 })
            .collect()
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    /// The explicit form GPU leaves make, read by the CPU kernels: Q R = A,
    /// Q orthonormal, and the same R (up to row signs) as the compact form.
    #[test]
    fn explicit_leaves_factor_like_compact_ones() {
        let (m, n) = (300, 12);
        let a = test_matrix(m, n);
        let input = block(vec![m, n], a.clone());
        let explicit = explicit_leaf(&a, m, n);
        assert!(is_explicit(&explicit));
        let p = LeafParams { rows: m, cols: n, start: 0, transposed: false, what: "A".into() };
        let compact = leaf::<f64>(&p, &input).unwrap();
        assert!(!is_explicit(&compact));

        let r_e = explicit_r::<f64>(m, n, &explicit).unwrap();
        let r_c = leaf_r::<f64>(m, n, &compact).unwrap();
        let (r_e, r_c) = (r_e.as_f64().unwrap(), r_c.as_f64().unwrap());
        let abs = |v: &[f64]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
        let tol = 100.0 * f64::EPSILON * (m as f64).sqrt() * 3.0;
        assert!(max_abs_diff(&abs(r_e), &abs(r_c)) < tol, "R agrees up to row signs");

        let eye: Vec<f64> = (0..n * n).map(|i| if i % (n + 1) == 0 { 1.0 } else { 0.0 }).collect();
        let f = block(vec![n, n], eye);
        let ap = ApplyParams { rows: m, cols: n, c: n, transpose_out: false };
        let q = explicit_apply::<f64>(&ap, &explicit, &f).unwrap();
        assert_eq!(q.shape(), &[m, n]);
        let q = q.as_f64().unwrap();
        let qr = dense::gemm(rows(q, m, n), rows(r_e, n, n));
        assert!(max_abs_diff(&qr, &a) < tol, "|A - QR| = {}", max_abs_diff(&qr, &a));
        let qtq = dense::gemm(rows(q, m, n).transpose(), rows(q, m, n));
        let eye: Vec<f64> = (0..n * n).map(|i| if i % (n + 1) == 0 { 1.0 } else { 0.0 }).collect();
        assert!(max_abs_diff(&qtq, &eye) < tol, "|QtQ - I| = {}", max_abs_diff(&qtq, &eye));

        let at = ApplyParams { transpose_out: true, ..ap };
        let qt = explicit_apply::<f64>(&at, &explicit, &f).unwrap();
        assert_eq!(qt.shape(), &[n, m]);
        let back = dense::to_rows(rows(qt.as_f64().unwrap(), n, m).transpose());
        assert!(max_abs_diff(&back, q) < tol, "the transposed output is Q transposed");
    }

    #[test]
    fn explicit_leaves_of_the_wrong_shape_are_refused() {
        let explicit = explicit_leaf(&test_matrix(20, 4), 20, 4);
        let e = explicit_r::<f64>(21, 4, &explicit).unwrap_err().to_string();
        assert!(e.contains("[24, 4]") && e.contains("[25, 4]"), "{e}");
        let f = block(vec![3, 2], vec![0.0; 6]);
        let p = ApplyParams { rows: 20, cols: 4, c: 2, transpose_out: false };
        let e = explicit_apply::<f64>(&p, &explicit, &f).unwrap_err().to_string();
        assert!(e.contains("3 x 2") && e.contains("4 x 2"), "{e}");
    }
}

//! Singular value decompositions: exact through TSQR, and randomized.
//!
//! * [`svd`] / [`svd_truncated`]: `A = U S Vᵀ` of a tall-and-skinny array
//!   (chunked along rows only) from its TSQR: `R = U_r S Vᵀ` on one worker,
//!   `U = Q U_r` formed on the workers holding `Q`. A short-and-fat array
//!   (chunked along columns only) goes through its transpose. Cost: one
//!   TSQR; accuracy: that of a Householder QR (singular values down to
//!   `eps * s_max`, however ill-conditioned the array).
//! * [`randomized_svd`]: the top `k` singular triplets of an array large in
//!   both dimensions (Halko, Martinsson and Tropp, 2011, algorithms 4.4 and
//!   5.1): a Gaussian test matrix of `k + p` columns, `q` power iterations
//!   each re-orthonormalised by TSQR (never the Gramian `AᵀA`, which squares
//!   the condition number), then the exact SVD of the small projection.
//!
//! Signs are fixed as dask's `svd_flip`, on the factor held in one block:
//! the entry of largest magnitude in each right singular vector is positive
//! for tall arrays, in each left singular vector for short-and-fat ones, and
//! for the randomized SVD in each column of U's coordinates in the sketch's
//! basis. Every kernel is deterministic and every reduction tree fixed, so
//! the same input gives the same factors, bit for bit, on any number of
//! workers.
//!
//! ```
//! use tessera_linalg::{svd, DArray};
//! use tessera_runtime::LocalCluster;
//! let cluster = LocalCluster::builder().workers(2).registry(tessera_linalg::registry()).start()?;
//! let a = DArray::random_normal(&[400, 6], &[100, 6], 1)?;
//! let f = svd(&a)?;
//! let s = f.s.to_ndarray::<f64>(cluster.client())?;
//! assert!(s[0] >= s[5] && s[5] > 0.0);
//! # Ok::<(), tessera_linalg::LinalgError>(())
//! ```

use tessera_runtime::{Key, Task};

use crate::array::{check_float, DArray};
use crate::chunks::Chunks;
use crate::error::{LinalgError, Result};
use crate::kernels::Distribution;
use crate::tsqr::{self, RootMode, Up};

/// `A ≈ U diag(S) Vᵀ`: `u` (m x k), `s` (k), `vt` (k x n).
#[derive(Clone, Debug)]
pub struct Svd {
    pub u: DArray,
    pub s: DArray,
    pub vt: DArray,
}

/// Exact thin SVD (`k = min(m, n)`).
pub fn svd(a: &DArray) -> Result<Svd> {
    let (m, n) = a.dims2("svd")?;
    svd_truncated(a, m.min(n))
}

/// Exact SVD truncated to the `k` largest singular values.
pub fn svd_truncated(a: &DArray, k: usize) -> Result<Svd> {
    let (m, n) = a.dims2("svd")?;
    check_float("svd", a.dtype())?;
    check_k(k, m, n)?;
    let chunks = a.chunks();
    let tall = chunks.axis(1).len() == 1 && (chunks.axis(0).len() > 1 || m >= n);
    if tall {
        return Ok(tall_svd(a, k, false));
    }
    if chunks.axis(0).len() == 1 {
        return Ok(tall_svd(a, k, true));
    }
    let rows = chunks.axis(0)[0];
    Err(LinalgError::Layout {
        op: "svd",
        reason: format!(
            "the exact SVD needs an array chunked along one axis only; got chunks {chunks}. Rechunk to whole rows \
             (`a.rechunk(&[{rows}, 0])`, or `--chunk-rows {rows}`), or use the randomized SVD for the top k \
             singular values of an array large in both dimensions"
        ),
    })
}

pub(crate) fn check_k(k: usize, m: usize, n: usize) -> Result<()> {
    if k == 0 || k > m.min(n) {
        return Err(LinalgError::Parameter {
            name: "k",
            reason: format!("k = {k} must be between 1 and min(m, n) = {} for a {m} x {n} array", m.min(n)),
        });
    }
    Ok(())
}

/// SVD through TSQR of `a` (or of `aᵀ`, `transposed`, for short-fat `a`).
fn tall_svd(a: &DArray, k: usize, transposed: bool) -> Svd {
    let up = Up::build(a, transposed, "the input of svd").expect("checked layout");
    let (kn, n) = (up.root_k, up.n);
    let k = k.min(kn);
    let root = up.root_task(RootMode::Svd { k }, n);
    let f_root = up.extract(&root, "u", [0, 0], [kn, k], vec![kn, k]);
    let s = up.extract(&root, "s", [kn, 0], [1, k], vec![k]);
    let vt = up.extract(&root, "vt", [kn + 1, 0], [k, n], vec![k, n]);
    let (q_keys, q_tasks) = tsqr::down(&up, f_root.key.clone(), k, transposed);
    let name = up.name.clone();
    let dtype = a.dtype();
    let big_axis = if transposed { 1 } else { 0 };
    let big_chunks = a.chunks().axis(big_axis).to_vec();
    let big = a.shape()[big_axis];
    let mut tasks = up.tasks;
    tasks.extend([root, f_root, s.clone()]);
    tasks.extend(q_tasks);
    let one = |r: usize, c: usize| Chunks::from_axes(vec![vec![r], vec![c]]);
    let s_arr = DArray::from_tasks(vec![k], Chunks::from_axes(vec![vec![k]]), dtype, vec![s.key.clone()], tasks, &[a]);
    if !transposed {
        // A = (Q U_r) S Vᵀ.
        let u = s_arr.view(vec![big, k], Chunks::from_axes(vec![big_chunks, vec![k]]), q_keys);
        let vt = DArray::from_tasks(vec![k, n], one(k, n), dtype, vec![vt.key.clone()], vec![vt], &[&s_arr]);
        Svd { u, s: s_arr, vt }
    } else {
        // Aᵀ = (Q U_r) S Vᵀ, so A = V S (Q U_r)ᵀ: U is the root's V, and
        // Vᵀ's blocks are the leaves' products, written transposed.
        let vt_key = vt.key.clone();
        let u_key = Key::new(format!("{name}.ut"), []);
        let u_task = Task::new(u_key.clone(), "linalg.transpose").param(&()).inputs([vt_key]);
        let u = DArray::from_tasks(vec![n, k], one(n, k), dtype, vec![u_key], vec![vt, u_task], &[&s_arr]);
        let v = s_arr.view(vec![k, big], Chunks::from_axes(vec![vec![k], big_chunks]), q_keys);
        Svd { u, s: s_arr, vt: v }
    }
}

/// Parameters of [`randomized_svd`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomizedSvd {
    /// Singular triplets wanted.
    pub k: usize,
    /// Extra columns of the test matrix (default 10); the subspace has at
    /// least [`RandomizedSvd::MIN_SUBSPACE`] columns.
    pub oversample: usize,
    /// Power iterations (default 2), each re-orthonormalised by TSQR.
    pub power_iters: usize,
    /// Seed of the Gaussian test matrix.
    pub seed: u64,
}

impl RandomizedSvd {
    /// Smallest subspace the sketch uses, whatever `k + oversample`.
    pub const MIN_SUBSPACE: usize = 20;

    pub fn new(k: usize) -> RandomizedSvd {
        RandomizedSvd { k, oversample: 10, power_iters: 2, seed: 0 }
    }

    /// Columns of the sketch for an `m x n` array.
    pub fn subspace(&self, m: usize, n: usize) -> usize {
        (self.k + self.oversample).max(Self::MIN_SUBSPACE).min(m.min(n))
    }
}

/// The top `p.k` singular triplets of `a` by randomized range finding.
pub fn randomized_svd(a: &DArray, p: &RandomizedSvd) -> Result<Svd> {
    let (m, n) = a.dims2("randomized_svd")?;
    check_float("randomized_svd", a.dtype())?;
    check_k(p.k, m, n)?;
    let l = p.subspace(m, n);
    let omega = DArray::random(
        &[n, l],
        Chunks::from_axes(vec![a.chunks().axis(1).to_vec(), vec![l]]),
        Distribution::Normal { mean: 0.0, std: 1.0 },
        p.seed,
        a.dtype(),
    )?;
    // Rows of A's blocks for the sketches: one column chunk each.
    let mut y = a.matmul(&omega)?;
    let at = a.t();
    for _ in 0..p.power_iters {
        let q = tsqr::tsqr(&y)?.q;
        let z = at.matmul(&q)?;
        let qz = tsqr::tsqr(&z)?.q;
        y = a.matmul(&qz)?;
    }
    let q = tsqr::tsqr(&y)?.q;
    // B = Qᵀ A (l x n), short and fat: its SVD goes through Bᵀ's TSQR.
    let b = q.t().matmul(a)?;
    let small = svd_truncated(&b, p.k)?;
    let u = q.matmul(&small.u)?;
    Ok(Svd { u, s: small.s, vt: small.vt })
}

//! Local dense kernels on one block, with faer.
//!
//! Blocks are row-major; faer views them without copying
//! ([`rows`]), as transposed column-major matrices. Factorisations that want
//! column-major storage (QR, SVD) copy the block once into a faer `Mat`.
//! Every kernel runs on the calling thread ([`Par::Seq`]): a worker runs as
//! many kernels at once as it has threads, and nesting a parallel BLAS
//! inside would oversubscribe the cores (the 2015 Dask paper measured GEMM
//! at half speed that way).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::householder;
use faer::linalg::qr::no_pivoting::factor as qr;
use faer::{Accum, Conj, Mat, MatMut, MatRef, Par};
use tessera_runtime::{Block, KernelError, NumericalError};

use crate::element::Element;

/// The elements and 2-D shape of a block of `T`, or an error naming `what`.
pub fn block2<'a, T: Element>(b: &'a Block, what: &str) -> Result<(&'a [T], usize, usize), KernelError> {
    let data =
        T::slice(b).ok_or_else(|| KernelError::msg(format!("{what} is {}, expected {}", b.dtype(), T::DTYPE)))?;
    match *b.shape() {
        [r, c] => Ok((data, r, c)),
        ref s => Err(KernelError::msg(format!("{what} has shape {s:?}, expected a matrix"))),
    }
}

/// A row-major `r x c` slice as a faer matrix view.
pub fn rows<T: Element>(data: &[T], r: usize, c: usize) -> MatRef<'_, T> {
    MatRef::from_row_major_slice(data, r, c)
}

/// A row-major `r x c` slice as a mutable faer matrix view.
pub fn rows_mut<T: Element>(data: &mut [T], r: usize, c: usize) -> MatMut<'_, T> {
    MatMut::from_row_major_slice_mut(data, r, c)
}

/// A view copied into a fresh row-major vector.
pub fn to_rows<T: Element>(m: MatRef<'_, T>) -> Vec<T> {
    let (r, c) = m.shape();
    let mut out = vec![T::default(); r * c];
    rows_mut(&mut out, r, c).copy_from(m);
    out
}

/// An `ndarray` view as a faer view of the same memory (any strides).
pub fn faer_view<'a, T: Element>(a: ndarray::ArrayView2<'a, T>) -> MatRef<'a, T> {
    let (r, c) = a.dim();
    let s = a.strides();
    // SAFETY: the pointer, dimensions and element strides describe exactly
    // the elements `a` borrows for 'a; faer reads them through the same
    // strides and never writes through a MatRef.
    unsafe { MatRef::from_raw_parts(a.as_ptr(), r, c, s[0], s[1]) }
}

/// A faer view as an `ndarray` view of the same memory.
///
/// # Panics
/// If a stride is negative (ndarray views here take non-negative strides).
pub fn ndarray_view<'a, T: Element>(m: MatRef<'a, T>) -> ndarray::ArrayView2<'a, T> {
    use ndarray::ShapeBuilder;
    let (r, c) = m.shape();
    let (rs, cs) = (m.row_stride(), m.col_stride());
    assert!(rs >= 0 && cs >= 0, "negative strides");
    // SAFETY: as in `faer_view`, the other way round.
    unsafe { ndarray::ArrayView2::from_shape_ptr((r, c).strides((rs as usize, cs as usize)), m.as_ptr()) }
}

/// Writes the transpose of the row-major `rows x cols` matrix `src` into
/// `dst` (row-major `cols x rows`; equivalently, `src` in column-major
/// order). Works in 32 x 32 tiles, so both sides stream through cache: more
/// than twice as fast as an element-wise strided copy on tall blocks.
pub fn transpose<T: Copy>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    const TILE: usize = 32;
    debug_assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    for i0 in (0..rows).step_by(TILE) {
        let i1 = (i0 + TILE).min(rows);
        for j0 in (0..cols).step_by(TILE) {
            for j in j0..(j0 + TILE).min(cols) {
                let d = &mut dst[j * rows + i0..j * rows + i1];
                for (k, x) in d.iter_mut().enumerate() {
                    *x = src[(i0 + k) * cols + j];
                }
            }
        }
    }
}

/// A zeroed vector of `len` elements for a large output written in pieces.
///
/// On Linux with transparent huge pages set to `always`, a fresh large
/// buffer written block by block (a TSQR leaf's factor, its Q) faults its
/// memory in 2 MiB pages; measured here, that made the TSQR SVD of a
/// 4,000,000 x 64 array 1.6x slower (10.5 s against 6.5 s). The buffer is
/// advised to use small pages instead; products keep huge pages (their
/// inputs and outputs are read many times, where TLB reach pays).
pub fn zeroed_small_pages<T: Element>(len: usize) -> Vec<T> {
    let v = vec![T::default(); len];
    #[cfg(target_os = "linux")]
    {
        let bytes = len * std::mem::size_of::<T>();
        let page = 4096usize;
        let start = (v.as_ptr() as usize).next_multiple_of(page);
        let end = (v.as_ptr() as usize + bytes) / page * page;
        if end > start {
            // SAFETY: the range lies inside `v`'s allocation, which is not
            // yet touched; MADV_NOHUGEPAGE only changes how its pages fault in.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_NOHUGEPAGE) };
        }
    }
    v
}

/// A row-major block as a block of the same element type.
pub fn block<T: Element>(shape: Vec<usize>, data: Vec<T>) -> Block {
    Block::new(shape, T::buffer(data))
}

/// `op(a) @ op(b)` into a new row-major `Vec`, `op` transposing when asked.
pub fn gemm<T: Element>(a: MatRef<'_, T>, b: MatRef<'_, T>) -> Vec<T> {
    let (m, n) = (a.nrows(), b.ncols());
    let mut out = vec![T::default(); m * n];
    faer::linalg::matmul::matmul(rows_mut(&mut out, m, n), Accum::Replace, a, b, T::one_impl(), Par::Seq);
    out
}

/// Block size of faer's blocked Householder QR for an `m x n` matrix.
pub fn qr_block_size<T: Element>(m: usize, n: usize) -> usize {
    qr::recommended_block_size::<T>(m, n).max(1)
}

/// Householder QR in place, in faer's compact form: afterwards `factor`
/// holds R on and above the diagonal and the Householder vectors below it,
/// and `coeff` (`qr_block_size x min(m, n)`) their block coefficients.
pub fn qr_in_place<T: Element>(factor: MatMut<'_, T>, coeff: MatMut<'_, T>) {
    let (m, n) = factor.shape();
    if m.min(n) > 0 {
        let bs = coeff.nrows();
        let mut mem = MemBuffer::new(qr::qr_in_place_scratch::<T>(m, n, bs, Par::Seq, Default::default()));
        qr::qr_in_place(factor, coeff, Par::Seq, MemStack::new(&mut mem), Default::default());
    }
}

/// The `k x n` upper-triangular R of a compact QR factor, row-major.
pub fn r_of<T: Element>(factor: MatRef<'_, T>) -> Vec<T> {
    let (m, n) = factor.shape();
    let k = m.min(n);
    let mut r = vec![T::default(); k * n];
    for i in 0..k {
        for j in i..n {
            r[i * n + j] = factor[(i, j)];
        }
    }
    r
}

/// `Q_thin @ f` for a `k x c` matrix `f` (k = min(m, n)), Q given by a
/// compact QR factor: applies the reflectors to `[f; 0]`, as many flops as
/// forming Q, without the extra product.
pub fn q_apply<T: Element>(factor: MatRef<'_, T>, coeff: MatRef<'_, T>, f: MatRef<'_, T>) -> Mat<T> {
    let mut out = Mat::<T>::zeros(factor.nrows(), f.ncols());
    q_apply_into(factor, coeff, f, out.as_mut());
    out
}

/// [`q_apply`] into `out` (`m x c`, any layout; overwritten).
pub fn q_apply_into<T: Element>(factor: MatRef<'_, T>, coeff: MatRef<'_, T>, f: MatRef<'_, T>, mut out: MatMut<'_, T>) {
    let (m, n) = factor.shape();
    let k = m.min(n);
    let c = f.ncols();
    debug_assert_eq!((f.nrows(), out.nrows(), out.ncols()), (k, m, c));
    out.as_mut().subrows_mut(0, k).copy_from(f);
    out.as_mut().subrows_mut(k, m - k).fill(T::zero_impl());
    if k > 0 {
        let bs = coeff.nrows();
        let mut mem =
            MemBuffer::new(householder::apply_block_householder_sequence_on_the_left_in_place_scratch::<T>(m, bs, c));
        householder::apply_block_householder_sequence_on_the_left_in_place_with_conj(
            factor.subcols(0, k),
            coeff,
            Conj::No,
            out,
            Par::Seq,
            MemStack::new(&mut mem),
        );
    }
}

/// A Householder QR held in faer matrices (small matrices: tree nodes).
pub struct Householder<T: Element> {
    pub factor: Mat<T>,
    pub coeff: Mat<T>,
}

impl<T: Element> Householder<T> {
    /// Factors a column-major copy of `a`.
    pub fn new(a: MatRef<'_, T>) -> Householder<T> {
        let mut factor = a.to_owned();
        let (m, n) = factor.shape();
        let mut coeff = Mat::<T>::zeros(qr_block_size::<T>(m, n), m.min(n));
        qr_in_place(factor.as_mut(), coeff.as_mut());
        Householder { factor, coeff }
    }

    /// Rows of `R` (min(m, n)).
    pub fn k(&self) -> usize {
        self.factor.nrows().min(self.factor.ncols())
    }

    /// The `k x n` factor R, row-major.
    pub fn r(&self) -> Vec<T> {
        r_of(self.factor.as_ref())
    }

    /// The thin Q (`m x k`).
    pub fn thin_q(&self) -> Mat<T> {
        let k = self.k();
        q_apply(self.factor.as_ref(), self.coeff.as_ref(), Mat::<T>::identity(k, k).as_ref())
    }
}

/// `(U, s, V)` of a thin SVD.
pub type ThinSvd<T> = (Mat<T>, Vec<T>, Mat<T>);

/// Thin SVD of a small matrix: `(U, s, V)` with `a = U diag(s) Vᵀ`, `s`
/// non-increasing.
pub fn thin_svd<T: Element>(a: MatRef<'_, T>) -> Result<ThinSvd<T>, KernelError> {
    let svd =
        a.thin_svd().map_err(|e| NumericalError::NoConvergence { what: "the SVD".into(), detail: format!("{e:?}") })?;
    let s: Vec<T> = (0..svd.S().dim()).map(|i| svd.S()[i]).collect();
    Ok((svd.U().to_owned(), s, svd.V().to_owned()))
}

/// Flips signs so that the entry of largest magnitude in each column of
/// `v` is positive, flipping the matching column of `u` too (dask's and
/// scikit-learn's `svd_flip`): singular vectors are then deterministic.
pub fn svd_flip<T: Element>(mut u: MatMut<'_, T>, mut v: MatMut<'_, T>) {
    for j in 0..v.ncols() {
        let mut best = T::zero_impl();
        let mut sign_negative = false;
        for i in 0..v.nrows() {
            let x = v[(i, j)];
            let ax = if x < T::zero_impl() { -x } else { x };
            if ax > best {
                best = ax;
                sign_negative = x < T::zero_impl();
            }
        }
        if sign_negative {
            for i in 0..v.nrows() {
                v[(i, j)] = -v[(i, j)];
            }
            for i in 0..u.nrows() {
                u[(i, j)] = -u[(i, j)];
            }
        }
    }
}

/// The first non-finite element of a row-major `r x c` matrix, as (row, col).
pub fn first_non_finite<T: Element>(data: &[T], c: usize) -> Option<(usize, usize)> {
    data.iter().position(|x| !x.to_f64().is_finite()).map(|p| (p / c.max(1), p % c.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SVD that fails (faer gives up on a matrix of NaNs) reports a
    /// numerical failure, not a plain message.
    #[test]
    fn an_svd_that_fails_is_a_numerical_failure() {
        let a = faer::Mat::<f64>::from_fn(3, 2, |_, _| f64::NAN);
        let e = thin_svd(a.as_ref()).expect_err("no SVD of NaNs");
        assert!(matches!(e.numerical(), Some(NumericalError::NoConvergence { .. })), "{e}");
        assert!(e.to_string().starts_with("the SVD did not converge ("), "{e}");
    }

    fn test_matrix(m: usize, n: usize) -> Vec<f64> {
        (0..m * n)
            .map(|i| ((i * 7919) % 1009) as f64 / 1009.0 - 0.5 + if i % (n + 1) == 0 { 1.0 } else { 0.0 })
            .collect()
    }

    #[test]
    fn householder_qr_reconstructs_and_q_is_orthonormal() {
        for (m, n) in [(50, 7), (7, 7), (4, 9)] {
            let a = test_matrix(m, n);
            let h = Householder::new(rows(&a, m, n));
            let k = h.k();
            let q = h.thin_q();
            let r = h.r();
            let qr = gemm(q.as_ref(), rows(&r, k, n));
            let err = qr.iter().zip(&a).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(err < 100.0 * f64::EPSILON * (m as f64).sqrt(), "{m}x{n}: |A - QR| = {err}");
            let qtq = gemm(q.as_ref().transpose(), q.as_ref());
            for i in 0..k {
                for j in 0..k {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((qtq[i * k + j] - want).abs() < 100.0 * f64::EPSILON, "{m}x{n}: QtQ[{i},{j}]");
                }
            }
            for i in 0..k {
                for j in 0..i.min(n) {
                    assert_eq!(r[i * n + j], 0.0, "R is upper triangular");
                }
            }
        }
    }

    #[test]
    fn tiled_transposes_match_the_definition() {
        for (r, c) in [(1, 1), (3, 70), (65, 33), (100, 1)] {
            let src: Vec<u32> = (0..(r * c) as u32).collect();
            let mut dst = vec![0; r * c];
            transpose(&src, r, c, &mut dst);
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(dst[j * r + i], src[i * c + j], "{r}x{c} at ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn ndarray_and_faer_views_share_memory() {
        let a = ndarray::Array2::from_shape_fn((3, 4), |(i, j)| (i * 10 + j) as f64);
        let f = faer_view(a.view());
        assert_eq!(f[(2, 3)], 23.0);
        assert_eq!(f.as_ptr(), a.as_ptr());
        let t = faer_view(a.t());
        assert_eq!(t[(3, 2)], 23.0);
        let back = ndarray_view(f.transpose());
        assert_eq!(back[[3, 1]], 13.0);
        assert_eq!(back.as_ptr(), a.as_ptr());
    }

    #[test]
    fn svd_flip_makes_the_largest_entry_of_each_v_column_positive() {
        let mut u = Mat::<f64>::from_fn(3, 2, |i, j| (i + j) as f64);
        let mut v = Mat::<f64>::from_fn(2, 2, |i, j| if (i, j) == (1, 0) { -5.0 } else { 1.0 });
        svd_flip(u.as_mut(), v.as_mut());
        assert_eq!(v[(1, 0)], 5.0);
        assert_eq!(v[(0, 0)], -1.0);
        assert_eq!(u[(2, 0)], -2.0, "U's column flips with V's");
        assert_eq!(v[(0, 1)], 1.0);
    }
}

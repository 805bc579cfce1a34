//! Distributed-array test bodies, shared by the in-process runs
//! (`tests/scenarios.rs`) and the `mpirun` runs (`tests/mpi.rs`). Each takes
//! the driver's client and panics on a wrong result. Tolerances scale with
//! machine epsilon and the size of the problem.

use tessera::linalg::dense::{faer_view, thin_svd};
use tessera::linalg::ndarray::{s, Array1, Array2, ArrayView2, Axis};
use tessera::linalg::{
    compute, qr, randomized_svd, svd, svd_truncated, tsqr, Chunks, DArray, LinalgError, RandomizedSvd,
};
use tessera::{Client, DType};

pub const EPS: f64 = f64::EPSILON;

pub fn fro(a: &Array2<f64>) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn max_abs(a: &Array2<f64>) -> f64 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// ‖QᵀQ − I‖_max for the columns of `q`.
pub fn orthogonality(q: ArrayView2<'_, f64>) -> f64 {
    let qtq = q.t().dot(&q);
    let n = qtq.nrows();
    max_abs(&(qtq - Array2::<f64>::eye(n)))
}

/// Local singular values of `a`, from faer on the driver.
pub fn local_singular_values(a: &Array2<f64>) -> Vec<f64> {
    thin_svd(faer_view(a.view())).expect("local SVD").1
}

/// Gaussian-ish numbers from a local generator (SplitMix64 + Box-Muller),
/// independent of the code under test.
pub fn local_normal(rows: usize, cols: usize, seed: u64) -> Array2<f64> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1234_5678;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    Array2::from_shape_fn((rows, cols), |_| {
        let (u1, u2) = (1.0 - next(), next());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    })
}

/// A random m x n matrix with singular values `s` (min(m, n) of them).
pub fn with_singular_values(m: usize, n: usize, s: &[f64], seed: u64) -> Array2<f64> {
    let orth = |rows: usize, cols: usize, seed: u64| -> Array2<f64> {
        let g = local_normal(rows, cols, seed);
        let q = tessera::linalg::dense::Householder::new(faer_view(g.view())).thin_q();
        Array2::from_shape_fn((rows, cols), |(i, j)| q[(i, j)])
    };
    let u = orth(m, s.len(), seed);
    let v = orth(n, s.len(), seed + 1);
    let us = &u * &Array1::from(s.to_vec()).insert_axis(Axis(0));
    us.dot(&v.t())
}

/// QR of tall arrays with regular, irregular and too-short row blocks, and of
/// a short-and-fat one: residual, orthogonality, triangular R with a
/// non-negative diagonal.
pub fn qr_factors(client: &Client) {
    let cases: Vec<(usize, usize, Chunks)> = vec![
        (1000, 12, Chunks::regular(&[1000, 12], &[100, 0]).unwrap()),
        (1000, 12, Chunks::explicit(&[1000, 12], vec![vec![300, 7, 500, 193], vec![12]]).unwrap()),
        (96, 8, Chunks::regular(&[96, 8], &[5, 0]).unwrap()), // blocks shorter than n
        (40, 40, Chunks::regular(&[40, 40], &[40, 40]).unwrap()),
        (777, 3, Chunks::regular(&[777, 3], &[20, 0]).unwrap()), // 39 leaves: three tree levels
        // Leaves factored in in-cache sub-blocks of 4096 rows, the last one
        // shorter than n in the second case.
        (8200, 8, Chunks::regular(&[8200, 8], &[8200, 0]).unwrap()),
        (8198, 8, Chunks::regular(&[8198, 8], &[4099, 0]).unwrap()),
    ];
    for (m, n, chunks) in cases {
        let a = DArray::random_normal(&[m, n], chunks.clone(), 11).unwrap();
        let f = tsqr(&a).unwrap();
        let (_, got) = compute(client, &[], &[&a, &f.q, &f.r]).unwrap();
        let mut got = got.into_iter().map(|g| g.into_ndarray::<f64>().unwrap().into_dimensionality().unwrap());
        let (a, q, r): (Array2<f64>, Array2<f64>, Array2<f64>) =
            (got.next().unwrap(), got.next().unwrap(), got.next().unwrap());
        assert_eq!(q.dim(), (m, m.min(n)));
        let tol = 20.0 * EPS * (n as f64).sqrt();
        let res = fro(&(&a - &q.dot(&r))) / fro(&a);
        assert!(res < tol, "{m}x{n} {chunks}: |A - QR|/|A| = {res:e} (tol {tol:e})");
        let orth = orthogonality(q.view());
        assert!(orth < 20.0 * EPS * (m as f64).sqrt(), "{m}x{n} {chunks}: |QtQ - I| = {orth:e}");
        for i in 0..r.nrows() {
            assert!(r[[i, i]] >= 0.0, "R[{i},{i}] = {}", r[[i, i]]);
            for j in 0..i.min(n) {
                assert_eq!(r[[i, j]], 0.0, "R[{i},{j}] below the diagonal");
            }
        }
    }
    // Short and fat: one row block, the first column block at least m wide.
    let a = DArray::random_normal(&[10, 70], &[10, 25], 5).unwrap();
    let f = qr(&a).unwrap();
    let (_, got) = compute(client, &[], &[&a, &f.q, &f.r]).unwrap();
    let mut got = got.into_iter().map(|g| g.into_ndarray::<f64>().unwrap().into_dimensionality().unwrap());
    let (a, q, r): (Array2<f64>, Array2<f64>, Array2<f64>) =
        (got.next().unwrap(), got.next().unwrap(), got.next().unwrap());
    let res = fro(&(&a - &q.dot(&r))) / fro(&a);
    assert!(res < 20.0 * EPS * 10f64.sqrt(), "short-fat |A - QR|/|A| = {res:e}");
    assert!(orthogonality(q.view()) < 20.0 * EPS * 10f64.sqrt());
}

/// Exact SVD of tall and short-fat arrays against a local faer SVD, with an
/// ill-conditioned case whose singular values span 1 to 1e-12.
pub fn svd_factors(client: &Client) {
    let n = 24;
    let graded: Vec<f64> = (0..n).map(|i| 10f64.powf(-12.0 * i as f64 / (n - 1) as f64)).collect();
    let ill = with_singular_values(3000, n, &graded, 3);
    let cases: Vec<(Array2<f64>, Vec<usize>)> = vec![
        (ill.clone(), vec![700, 0]),
        (with_singular_values(500, 16, &(1..=16).map(|i| i as f64).rev().collect::<Vec<_>>(), 9), vec![64, 0]),
        (ill.t().to_owned(), vec![0, 400]),         // short and fat
        (local_normal(6, 9000, 12), vec![0, 4500]), // short and fat, leaves of sub-blocks
    ];
    for (i, (data, chunks)) in cases.into_iter().enumerate() {
        let (m, n) = data.dim();
        let a = DArray::from_ndarray(data.view(), chunks.as_slice()).unwrap();
        let f = svd(&a).unwrap();
        let (_, got) = compute(client, &[], &[&f.u, &f.s, &f.vt]).unwrap();
        let mut got = got.into_iter().map(|g| g.into_ndarray::<f64>().unwrap());
        let u: Array2<f64> = got.next().unwrap().into_dimensionality().unwrap();
        let s: Array1<f64> = got.next().unwrap().into_dimensionality().unwrap();
        let vt: Array2<f64> = got.next().unwrap().into_dimensionality().unwrap();
        let k = m.min(n);
        assert_eq!((u.dim(), s.len(), vt.dim()), ((m, k), k, (k, n)), "case {i}");
        let reference = local_singular_values(&data);
        for (j, (x, y)) in s.iter().zip(&reference).enumerate() {
            assert!((x - y).abs() <= 1e-12 * reference[0], "case {i}: s[{j}] = {x:e}, local {y:e}");
        }
        let us = &u * &s.clone().insert_axis(Axis(0));
        let res = fro(&(&data - &us.dot(&vt))) / fro(&data);
        let tol = 50.0 * EPS * (k as f64).sqrt();
        assert!(res < tol, "case {i}: |A - USVt|/|A| = {res:e} (tol {tol:e})");
        let big = m.max(n) as f64;
        assert!(orthogonality(u.view()) < 50.0 * EPS * big.sqrt(), "case {i}: U not orthonormal");
        assert!(orthogonality(vt.t()) < 50.0 * EPS * big.sqrt(), "case {i}: V not orthonormal");
        // Sign convention: the small factor's largest entries are positive.
        let small = if m >= n { vt.t().to_owned() } else { u.clone() };
        for col in small.columns() {
            let top = col.iter().fold(0.0f64, |b, &x| if x.abs() > b.abs() { x } else { b });
            assert!(top > 0.0, "case {i}: sign convention");
        }
    }
    // Truncated: the top 3 of the same values.
    let a = DArray::from_ndarray(ill.view(), &[700, 0]).unwrap();
    let s = svd_truncated(&a, 3).unwrap().s.to_ndarray::<f64>(client).unwrap();
    assert_eq!(s.len(), 3);
    assert!((s[0] - 1.0).abs() < 1e-12 && (s[2] - graded[2]).abs() < 1e-12);
}

/// Randomized SVD of a low-rank-plus-noise matrix: the top k singular values
/// within Halko, Martinsson and Tropp's bound for the chosen oversampling
/// and power iterations; orthonormal factors; the same result for the same
/// seed.
pub fn randomized(client: &Client) {
    let (m, n, k) = (2000, 300, 5);
    let top = [100.0, 50.0, 25.0, 10.0, 5.0];
    let low = with_singular_values(m, n, &top, 21);
    let noise = local_normal(m, n, 77);
    let data = &low + &(noise * 1e-3);
    let exact = local_singular_values(&data);
    for (q, chunks) in [(0usize, [400usize, 0usize]), (1, [500, 150]), (2, [250, 0])] {
        let a = DArray::from_ndarray(data.view(), &chunks).unwrap();
        let p = RandomizedSvd { k, oversample: 10, power_iters: q, seed: 4 };
        let f = randomized_svd(&a, &p).unwrap();
        let (_, got) = compute(client, &[], &[&f.u, &f.s, &f.vt]).unwrap();
        let mut got = got.into_iter().map(|g| g.into_ndarray::<f64>().unwrap());
        let u: Array2<f64> = got.next().unwrap().into_dimensionality().unwrap();
        let s: Array1<f64> = got.next().unwrap().into_dimensionality().unwrap();
        let vt: Array2<f64> = got.next().unwrap().into_dimensionality().unwrap();
        assert_eq!((u.dim(), s.len(), vt.dim()), ((m, k), k, (k, n)));
        // HMT (2011), eq. (10.14) with the power scheme's exponent (sec. 10.4):
        // |A - QQᵀA| <= (1 + 11 sqrt(k + p) sqrt(min(m, n)))^(1/(2q+1)) s_{k+1}
        // with probability >= 1 - 6 p^-p; each approximate singular value is
        // within that of the exact one, and never above it.
        let l = p.subspace(m, n) as f64;
        let bound = (1.0 + 11.0 * l.sqrt() * (n as f64).sqrt()).powf(1.0 / (2 * q + 1) as f64) * exact[k];
        for j in 0..k {
            let gap = exact[j] - s[j];
            assert!(
                gap >= -1e-12 * exact[0] && gap <= bound,
                "q={q}: s[{j}] = {}, exact {}, bound {bound:e}",
                s[j],
                exact[j]
            );
        }
        assert!(orthogonality(u.view()) < 100.0 * EPS * (m as f64).sqrt(), "q={q}: U not orthonormal");
        assert!(orthogonality(vt.t()) < 100.0 * EPS * (n as f64).sqrt(), "q={q}: V not orthonormal");
        // A v_j = s_j u_j up to the same bound.
        let av = data.dot(&vt.t());
        let us = &u * &s.clone().insert_axis(Axis(0));
        assert!(max_abs(&(av - us)) <= bound + 1e-10, "q={q}: A V != U S");
        // Same seed, same factors, whatever the chunks and workers.
        let again = randomized_svd(&a.rechunk(&[300, 0]).unwrap(), &p).unwrap().s.to_ndarray::<f64>(client).unwrap();
        for j in 0..k {
            assert!((again[j] - s[j]).abs() <= 1e-10 * s[0], "q={q}: reproducibility");
        }
    }
}

/// Matrix products against ndarray's, with irregular chunks, mismatched
/// contraction chunks (rechunked), transposed operands and f32.
pub fn products(client: &Client) {
    let a = DArray::random_normal(&[300, 200], &[70, 60], 1).unwrap();
    let b = DArray::random_normal(&[200, 150], &[45, 40], 2).unwrap();
    let (la, lb) = (a.to_array2::<f64>(client).unwrap(), b.to_array2::<f64>(client).unwrap());
    let check = |got: &Array2<f64>, want: &Array2<f64>, absa: &Array2<f64>, absb: &Array2<f64>, what: &str| {
        let bound = absa.dot(absb) * (2.0 * absa.ncols() as f64 * EPS);
        for ((g, w), b) in got.iter().zip(want).zip(&bound) {
            assert!((g - w).abs() <= *b, "{what}: {g} vs {w} (bound {b:e})");
        }
    };
    let c = a.matmul(&b).unwrap().to_array2::<f64>(client).unwrap();
    check(&c, &la.dot(&lb), &la.mapv(f64::abs), &lb.mapv(f64::abs), "A @ B");
    let at_a = a.t().matmul(&a).unwrap().to_array2::<f64>(client).unwrap();
    check(&at_a, &la.t().dot(&la), &la.t().mapv(f64::abs), &la.mapv(f64::abs), "At @ A");
    let b_bt = b.matmul(&b.t()).unwrap().to_array2::<f64>(client).unwrap();
    check(&b_bt, &lb.dot(&lb.t()), &lb.mapv(f64::abs), &lb.t().mapv(f64::abs), "B @ Bt");
    // f32 in, f32 out, f32 rounding.
    let a32 = DArray::random(
        &[64, 48],
        &[16, 48],
        tessera::linalg::Distribution::Uniform { low: -1.0, high: 1.0 },
        3,
        DType::F32,
    )
    .unwrap();
    let c32 = a32.matmul(&a32.t()).unwrap();
    assert_eq!(c32.dtype(), DType::F32);
    let got = c32.to_array2::<f32>(client).unwrap();
    let l32 = a32.to_array2::<f32>(client).unwrap();
    let want = l32.dot(&l32.t());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 48.0 * 2.0 * f32::EPSILON * 48.0, "f32: {g} vs {w}");
    }
    // Errors before anything runs.
    let e = a.matmul(&a).unwrap_err();
    assert!(matches!(e, LinalgError::ShapeMismatch { .. }) && e.to_string().contains("[300, 200]"), "{e}");
}

/// Elementwise chains, reductions, rechunking and block slices against the
/// same operations on the driver.
pub fn elementwise_and_reductions(client: &Client) {
    let data = Array2::from_shape_fn((37, 23), |(i, j)| (i as f64 - 10.0) * 0.5 + j as f64 * 0.25);
    let a = DArray::from_ndarray(data.view(), &[10, 7]).unwrap();
    let ones = DArray::ones(&[37, 23], &[10, 7]).unwrap();
    let expr = (&(&a.add(&ones).unwrap() * 2.0).abs().sqrt() - 1.0).mul(&a).unwrap();
    let want = data.mapv(|x| ((x + 1.0) * 2.0).abs().sqrt() - 1.0) * &data;
    let got = expr.to_array2::<f64>(client).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 4.0 * EPS * w.abs().max(1.0), "elementwise: {g} vs {w}");
    }
    let sum0 = a.sum(Some(0)).unwrap().to_ndarray::<f64>(client).unwrap();
    let sum1 = a.sum(Some(1)).unwrap().to_ndarray::<f64>(client).unwrap();
    let total = a.sum(None).unwrap().to_ndarray::<f64>(client).unwrap();
    let mean = a.mean(None).unwrap().to_ndarray::<f64>(client).unwrap();
    let norm = a.norm(None).unwrap().to_ndarray::<f64>(client).unwrap();
    let colnorm = a.norm(Some(0)).unwrap().to_ndarray::<f64>(client).unwrap();
    let tol = 64.0 * EPS * data.iter().map(|x| x.abs()).sum::<f64>();
    for (g, w) in sum0.iter().zip(data.sum_axis(Axis(0)).iter()) {
        assert!((g - w).abs() <= tol, "sum(0)");
    }
    for (g, w) in sum1.iter().zip(data.sum_axis(Axis(1)).iter()) {
        assert!((g - w).abs() <= tol, "sum(1)");
    }
    assert!((total.sum() - data.sum()).abs() <= tol && total.ndim() == 0);
    assert!((mean.sum() - data.mean().unwrap()).abs() <= tol / data.len() as f64);
    assert!((norm.sum() - fro(&data)).abs() <= 64.0 * EPS * fro(&data));
    let cn = data.mapv(|x| x * x).sum_axis(Axis(0)).mapv(f64::sqrt);
    assert!(colnorm.iter().zip(cn.iter()).all(|(g, w)| (g - w).abs() <= 64.0 * EPS * w));
    // Rechunk (irregular) and whole-block slices keep every element.
    let r = a.rechunk(Chunks::explicit(&[37, 23], vec![vec![5, 30, 2], vec![23]]).unwrap()).unwrap();
    assert_eq!(r.to_array2::<f64>(client).unwrap(), data);
    let sub = a.blocks(&[1..3, 2..4]).unwrap();
    assert_eq!(sub.shape(), &[20, 9]);
    assert_eq!(sub.to_array2::<f64>(client).unwrap(), data.slice(s![10..30, 14..23]));
    assert_eq!(DArray::eye(9, &[4, 4]).unwrap().to_array2::<f64>(client).unwrap(), Array2::<f64>::eye(9));
    // Chunk mismatch is an error naming both chunkings.
    let e = a.add(&a.rechunk(&[37, 23]).unwrap()).unwrap_err().to_string();
    assert!(e.contains("rechunk") && e.contains("(10, 10, 10, 7)"), "{e}");
}

/// Seeded arrays are the same for any chunking and any worker count; a
/// persisted array feeds later graphs without recomputation.
pub fn random_and_persist(client: &Client) {
    let x = DArray::random_normal(&[500, 40], &[100, 40], 99).unwrap().to_array2::<f64>(client).unwrap();
    let y = DArray::random_normal(&[500, 40], &[77, 13], 99).unwrap().to_array2::<f64>(client).unwrap();
    assert_eq!(x, y, "random arrays depend on the seed only");
    let mean = x.mean().unwrap();
    let var = x.mapv(|v| (v - mean) * (v - mean)).mean().unwrap();
    assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "normal: mean {mean}, var {var}");
    let u = DArray::random_uniform(&[100, 100], &[30, 30], 1).unwrap().to_array2::<f64>(client).unwrap();
    assert!(u.iter().all(|&v| (0.0..1.0).contains(&v)));
    let a = DArray::random_uniform(&[200, 50], &[50, 50], 5).unwrap();
    let kept = a.persist(client).unwrap();
    let before = client.state().unwrap().in_memory;
    assert!(before >= 4, "the 4 blocks stay on the workers");
    let twice = (&kept * 2.0).to_array2::<f64>(client).unwrap();
    assert_eq!(twice, kept.to_array2::<f64>(client).unwrap() * 2.0);
    drop(kept);
    let after = client.state().unwrap().in_memory;
    assert!(after + 4 <= before, "dropping the array releases its blocks ({before} -> {after})");
}

/// Bad input is refused with a message naming what is wrong, before or
/// while running, and never hangs.
pub fn bad_input(client: &Client) {
    let both = DArray::random_normal(&[100, 40], &[50, 20], 1).unwrap();
    let e = tsqr(&both).unwrap_err().to_string();
    assert!(e.contains("rechunk") && e.contains("[50, 0]"), "{e}");
    let e = svd(&both).unwrap_err().to_string();
    assert!(e.contains("rechunk") && e.contains("randomized"), "{e}");
    let tall = DArray::random_normal(&[100, 40], &[50, 40], 1).unwrap();
    for k in [0, 41] {
        let e = svd_truncated(&tall, k).unwrap_err().to_string();
        assert!(e.contains("k =") && e.contains("min(m, n) = 40"), "{e}");
        assert!(randomized_svd(&tall, &RandomizedSvd::new(k)).is_err());
    }
    // NaN and Inf are reported with their position, not looped on.
    for bad in [f64::NAN, f64::INFINITY] {
        let mut data = Array2::from_shape_fn((60, 5), |(i, j)| (i + j) as f64);
        data[[47, 3]] = bad;
        let a = DArray::from_ndarray(data.view(), &[20, 0]).unwrap();
        let e = svd(&a).unwrap().s.to_ndarray::<f64>(client).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&format!("{bad}")) && text.contains("[47, 3]"), "{text}");
        // The failure itself, for a program that handles numerical ones apart.
        match e {
            tessera::linalg::LinalgError::Runtime(tessera::Error::TaskFailed { numerical: Some(n), .. }) => match *n {
                tessera::NumericalError::NonFinite { value, at, .. } => {
                    assert_eq!((value.is_nan(), at), (bad.is_nan(), vec![47, 3]))
                }
                other => panic!("a NaN or Inf: {other:?}"),
            },
            other => panic!("a numerical failure: {other:?}"),
        }
    }
}

/// Every array body in turn.
pub fn all(client: &Client) {
    qr_factors(client);
    svd_factors(client);
    randomized(client);
    products(client);
    elementwise_and_reductions(client);
    random_and_persist(client);
    bad_input(client);
}

/// A fresh directory for one test's files, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("tessera-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// `name` in the directory, as a string for command lines.
    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }

    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// HDF5 round trips with irregular chunks, reads whose chunks differ from
/// the file's, and every bad input: each a clear error, no file left
/// claiming to be complete.
#[cfg(feature = "hdf5")]
pub fn hdf5_files(client: &Client) {
    use tessera::linalg::hdf5::{from_hdf5, h5lib, Hdf5Dataset, Hdf5Writer};
    let dir = TempDir::new("h5");
    let path = dir.0.join("a.h5");
    let data = Array2::from_shape_fn((101, 13), |(i, j)| i as f64 * 100.0 + j as f64);
    let irregular = Chunks::explicit(&[101, 13], vec![vec![13, 50, 38], vec![6, 7]]).unwrap();
    let a = DArray::from_ndarray(data.view(), irregular).unwrap();
    let v32 =
        DArray::random(&[40], &[15], tessera::linalg::Distribution::Uniform { low: 0.0, high: 1.0 }, 1, DType::F32)
            .unwrap();
    let mut w = Hdf5Writer::create(&path).unwrap();
    let got = w.store(client, &[("/A", &a), ("/group/v", &v32)], &[&v32]).unwrap();
    assert!(!path.exists(), "nothing at the destination before commit");
    w.commit().unwrap();
    assert_eq!(dir.files(), vec!["a.h5"], "only the finished file is left");
    let ds = Hdf5Dataset::open(&path, "/A").unwrap();
    assert_eq!((ds.shape.clone(), ds.dtype), (vec![101, 13], DType::F64));
    let file_chunks = ds.file_chunks.clone().expect("written chunked");
    // Default chunks are whole file chunks; other chunks read across them.
    let default = ds.default_chunks();
    assert!(default.axis(0)[..default.axis(0).len() - 1].iter().all(|r| r % file_chunks[0] == 0), "{default}");
    for chunks in [
        None,
        Some(Chunks::regular(&[101, 13], &[20, 0]).unwrap()),
        Some(Chunks::regular(&[101, 13], &[7, 5]).unwrap()),
    ] {
        let back = ds.read(chunks).unwrap().to_array2::<f64>(client).unwrap();
        assert_eq!(back, data);
    }
    let v = from_hdf5(&format!("{}:/group/v", path.display()), Some(&[7])).unwrap();
    assert_eq!(v.dtype(), DType::F32);
    assert_eq!(v.to_ndarray::<f32>(client).unwrap(), got.into_iter().next().unwrap().into_ndarray::<f32>().unwrap());

    // Bad input names the file, the dataset and what is wrong with it.
    let f = h5lib::File::create(dir.0.join("odd.h5")).unwrap();
    f.new_dataset::<i32>().shape([4, 4]).create("ints").unwrap();
    f.new_dataset::<f64>().shape([2, 2, 2]).create("cube").unwrap();
    // Empty datasets, contiguous (1-D: its default blocks were sized by a
    // division by its length) and chunked.
    f.new_dataset::<f64>().no_chunk().shape([0]).create("empty").unwrap();
    f.new_dataset::<f64>().no_chunk().shape([0, 3]).create("empty_rows").unwrap();
    f.new_dataset::<f64>().no_chunk().shape([3, 0]).create("empty_cols").unwrap();
    f.new_dataset::<f64>().shape([0]).create("empty_chunked").unwrap();
    drop(f);
    let odd = dir.0.join("odd.h5");
    for (dataset, shape) in
        [("/empty", &[0][..]), ("/empty_rows", &[0, 3]), ("/empty_cols", &[3, 0]), ("/empty_chunked", &[0])]
    {
        let a = from_hdf5(&format!("{}:{dataset}", odd.display()), None).unwrap();
        assert_eq!(a.shape(), shape, "{dataset}");
        assert_eq!(a.to_ndarray::<f64>(client).unwrap().shape(), shape, "{dataset}");
    }
    let cases = [
        (dir.0.join("missing.h5"), "/A", "no such file"),
        (path.clone(), "/B", "no such dataset"),
        (odd.clone(), "/ints", "only floating-point"),
        (odd.clone(), "/cube", "1-D or 2-D"),
    ];
    for (file, dataset, why) in cases {
        let e = Hdf5Dataset::open(&file, dataset).unwrap_err().to_string();
        assert!(e.contains(why) && e.contains(&file.display().to_string()), "{e}");
    }
    let e = from_hdf5("a.h5", None).unwrap_err().to_string();
    assert!(e.contains("FILE:/DATASET"), "{e}");
    for bad in [dir.0.join("no/such/dir/out.h5"), std::path::PathBuf::from("/proc/out.h5")] {
        let e = Hdf5Writer::create(&bad).err().expect("unwritable").to_string();
        assert!(e.contains(&bad.display().to_string()), "{e}");
    }
    // A computation that fails leaves nothing behind.
    let mut nan = Array2::from_shape_fn((30, 4), |(i, j)| (i * j) as f64);
    nan[[12, 1]] = f64::NAN;
    let bad = svd(&DArray::from_ndarray(nan.view(), &[10, 0]).unwrap()).unwrap();
    let out = dir.0.join("svd.h5");
    let mut w = Hdf5Writer::create(&out).unwrap();
    let e = w.store(client, &[("/U", &bad.u), ("/S", &bad.s)], &[]).unwrap_err().to_string();
    assert!(e.contains("NaN") && e.contains("[12, 1]"), "{e}");
    drop(w);
    assert_eq!(dir.files(), vec!["a.h5", "odd.h5"], "no partial output");
}

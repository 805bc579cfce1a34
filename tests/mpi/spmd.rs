//! `tessera::spmd` under `mpirun -n 1..4`: every rank hands in its own part
//! and checks its own part of the result (one rank of the scenario).

use anyhow::{ensure, Context};
use mpi::collective::SystemOperation;
use mpi::topology::{Color, SimpleCommunicator};
use mpi::traits::*;
use tessera::linalg::ndarray::{s, Array2, ArrayView2};
use tessera::linalg::{LinalgError, RandomizedSvd};
use tessera::spmd::{numroc, BlockCyclic, Spmd};
use tessera::{Config, WorkerSettings};

const EPS: f64 = f64::EPSILON;

/// Entry `(i, j)` of the global matrices: full rank, entries of order one.
fn entry(i: usize, j: usize) -> f64 {
    ((i * 7 + j * 13) % 23) as f64 / 23.0 + ((i + 1) as f64 * (j + 1) as f64 * 1e-3).sin()
}

/// A rank-`rank_of` matrix: `x(i) . y(j)` over `rank_of` terms.
fn low_rank(i: usize, j: usize, rank_of: usize) -> f64 {
    (0..rank_of).map(|t| ((i + 3 * t) as f64 * 0.01).cos() * ((j * (t + 1)) as f64 * 0.1).sin() / (t + 1) as f64).sum()
}

/// Rows rank `r` of `size` holds: uneven, rank 0 holding some, the last
/// rank of three or more none.
fn rows_of(r: usize, size: usize, base: usize) -> usize {
    if size >= 3 && r == size - 1 {
        0
    } else {
        base + 29 * r
    }
}

fn slab(comm: &SimpleCommunicator, base: usize, n: usize, f: impl Fn(usize, usize) -> f64) -> (Array2<f64>, usize) {
    let (rank, size) = (comm.rank() as usize, comm.size() as usize);
    let first: usize = (0..rank).map(|r| rows_of(r, size, base)).sum();
    let m: usize = (0..size).map(|r| rows_of(r, size, base)).sum();
    (Array2::from_shape_fn((rows_of(rank, size, base), n), |(i, j)| f(first + i, j)), m)
}

/// Sum over the ranks of `a` (the application's own MPI).
fn all_sum(comm: &SimpleCommunicator, a: &Array2<f64>) -> Array2<f64> {
    let mut out = Array2::zeros(a.dim());
    let local = a.as_standard_layout();
    comm.all_reduce_into(local.as_slice().unwrap(), out.as_slice_mut().unwrap(), SystemOperation::sum());
    out
}

fn max_abs(a: ArrayView2<f64>) -> f64 {
    a.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// |A - B| / |A| over every rank's rows.
fn rel_residual(comm: &SimpleCommunicator, a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    let local = Array2::from_shape_vec((1, 2), vec![(a - b).mapv(|x| x * x).sum(), a.mapv(|x| x * x).sum()]).unwrap();
    let g = all_sum(comm, &local);
    (g[[0, 0]] / g[[0, 1]]).sqrt()
}

/// max |QᵀQ - I| over every rank's rows of `q`.
fn orthogonality(comm: &SimpleCommunicator, q: &Array2<f64>) -> f64 {
    let qtq = all_sum(comm, &q.t().dot(q));
    max_abs((&qtq - &Array2::<f64>::eye(q.ncols())).view())
}

fn config() -> Config {
    Config::builder().worker(WorkerSettings { events: true, ..Default::default() }).build()
}

/// SVD, QR and randomized SVD of rows held on `comm`'s ranks.
/// `chunk_rows`: cut each rank's part into blocks of that many rows.
fn rows_cases(comm: &SimpleCommunicator, label: &str, chunk_rows: Option<usize>) -> anyhow::Result<()> {
    let rank = comm.rank() as usize;
    let spmd = Spmd::with_config(comm, config());
    let spmd = match chunk_rows {
        Some(r) => spmd.chunk_rows(r),
        None => spmd,
    };
    let n = 12;
    let (a, m) = slab(comm, 300, n, entry);
    let part_bytes = (300 * n * 8) as u64;

    let f = spmd.svd(&a).context("svd")?;
    ensure!(f.u.dim() == (a.nrows(), n) && f.s.len() == n && f.vt.dim() == (n, n), "{label}: svd shapes");
    let res = rel_residual(comm, &a, &(&f.u * &f.s).dot(&f.vt));
    ensure!(res < 50.0 * EPS * (n as f64).sqrt(), "{label}: svd |A - U S Vt|/|A| = {res:e}");
    let orth = orthogonality(comm, &f.u);
    ensure!(orth < 50.0 * EPS * (m as f64).sqrt(), "{label}: svd |UtU - I| = {orth:e}");
    ensure!(max_abs((f.vt.dot(&f.vt.t()) - Array2::<f64>::eye(n)).view()) < 50.0 * EPS * (n as f64).sqrt());
    // Only R factors (n x n) moved, up the tree and back: with one block
    // per rank that is nothing near a part's bytes, through rank 0 or anywhere.
    let moved = f.moved.context("events were recorded")?;
    let size = comm.size() as usize;
    let leaves: usize = (0..size).map(|r| rows_of(r, size, 300).div_ceil(chunk_rows.unwrap_or(usize::MAX))).sum();
    let r_bytes = (2 * leaves * n * n * 8) as u64;
    ensure!(moved.bytes <= r_bytes, "{label}: svd moved {moved:?}; {leaves} R factors are {r_bytes} bytes");
    ensure!(
        chunk_rows.is_some() || (moved.rank0_bytes < part_bytes / 4 && moved.bytes < part_bytes),
        "{label}: svd moved {moved:?}; a part is {part_bytes} bytes"
    );

    let qr = spmd.qr(a.view()).context("qr")?;
    let res = rel_residual(comm, &a, &qr.q.dot(&qr.r));
    ensure!(res < 20.0 * EPS * (n as f64).sqrt(), "{label}: qr |A - QR|/|A| = {res:e}");
    let orth = orthogonality(comm, &qr.q);
    ensure!(orth < 20.0 * EPS * (m as f64).sqrt(), "{label}: qr |QtQ - I| = {orth:e}");
    ensure!((0..n).all(|i| qr.r[[i, i]] >= 0.0) && (0..n).all(|i| (0..i).all(|j| qr.r[[i, j]] == 0.0)));

    // A rank-6 matrix, 40 columns wide: the randomized SVD finds it exactly.
    let (b, m) = slab(comm, 300, 40, |i, j| low_rank(i, j, 6));
    let exact = spmd.svd(b.view())?;
    let r = spmd.randomized_svd(b.clone(), &RandomizedSvd { k: 4, ..RandomizedSvd::new(4) }).context("rsvd")?;
    ensure!(r.u.dim() == (b.nrows(), 4) && r.vt.dim() == (4, 40));
    for i in 0..4 {
        ensure!(
            (r.s[i] - exact.s[i]).abs() <= 100.0 * EPS * exact.s[0],
            "{label}: rsvd s[{i}] {} vs {}",
            r.s[i],
            exact.s[i]
        );
    }
    let orth = orthogonality(comm, &r.u);
    ensure!(orth < 100.0 * EPS * (m as f64).sqrt(), "{label}: rsvd |UtU - I| = {orth:e}");
    // U S Vt is the best rank-4 approximation: its residual is that of the exact one.
    let res_r = rel_residual(comm, &b, &(&r.u * &r.s).dot(&r.vt));
    let res_e = rel_residual(
        comm,
        &b,
        &(&exact.u.slice(s![.., ..4]) * &exact.s.slice(s![..4])).dot(&exact.vt.slice(s![..4, ..])),
    );
    ensure!((res_r - res_e).abs() < 1e-9, "{label}: rsvd residual {res_r:e} vs {res_e:e}");

    // f32 parts come back f32.
    let a32 = a.mapv(|x| x as f32);
    let f32s = spmd.svd(a32).context("svd f32")?;
    ensure!((f32s.s[0] as f64 - f.s[0]).abs() < 1e-4 * f.s[0]);
    if rank == 0 {
        println!("{label}: svd, qr, randomized svd and f32 ok on {m} rows; svd moved {moved:?}");
    }
    Ok(())
}

/// C = A B, both 2-D block-cyclic over a grid of the ranks.
fn matmul_case(comm: &SimpleCommunicator) -> anyhow::Result<()> {
    let (rank, size) = (comm.rank() as usize, comm.size() as usize);
    // Three ranks: a 1 x 2 grid, rank 2 off it with nothing.
    let grid = match size {
        1 => (1, 1),
        2 | 3 => (1, 2),
        _ => (2, 2),
    };
    let (m, k, n) = (37, 23, 29);
    let (ab, bb) = ((5, 4), (4, 6));
    // This rank's local array of a block-cyclic matrix `f`.
    let local = |shape: (usize, usize), block: (usize, usize), f: &dyn Fn(usize, usize) -> f64| -> Array2<f64> {
        if rank >= grid.0 * grid.1 {
            return Array2::zeros((0, 0));
        }
        let (p, q) = (rank / grid.1, rank % grid.1);
        let lr = numroc(shape.0, block.0, p, 0, grid.0);
        let lc = numroc(shape.1, block.1, q, 0, grid.1);
        Array2::from_shape_fn((lr, lc), |(i, j)| {
            let gi = ((i / block.0) * grid.0 + p) * block.0 + i % block.0;
            let gj = ((j / block.1) * grid.1 + q) * block.1 + j % block.1;
            f(gi, gj)
        })
    };
    let fa = |i: usize, j: usize| entry(i, j);
    let fb = |i: usize, j: usize| entry(j + 5, i + 3);
    let a = local((m, k), ab, &fa);
    // B in column-major order: copied into row-major on the way in.
    let b = local((k, n), bb, &fb).reversed_axes().as_standard_layout().reversed_axes().to_owned();
    let c = Spmd::with_config(comm, config())
        .matmul(BlockCyclic::new(a, (m, k), ab, grid), BlockCyclic::new(b.view(), (k, n), bb, grid))
        .context("matmul")?
        .c;
    let want = local((m, n), (ab.0, bb.1), &|i, j| (0..k).map(|t| fa(i, t) * fb(t, j)).sum());
    ensure!(c.dim() == want.dim(), "rank {rank}: local C is {:?}, expected {:?}", c.dim(), want.dim());
    let err = max_abs((&c - &want).view());
    ensure!(err <= 2.0 * k as f64 * EPS * 4.0 * k as f64, "rank {rank}: |C - AB| = {err:e}");
    if rank == 0 {
        println!("matmul {m}x{k} @ {k}x{n} block-cyclic on a {}x{} grid ok", grid.0, grid.1);
    }
    Ok(())
}

/// A part of the wrong width or type fails on every rank, naming the rank.
fn error_cases(comm: &SimpleCommunicator) -> anyhow::Result<()> {
    let (rank, size) = (comm.rank() as usize, comm.size() as usize);
    let spmd = Spmd::new(comm);
    let odd = size - 1;
    let n = if rank == odd && size > 1 { 7 } else { 8 };
    let part = Array2::<f64>::ones((50 + rank, n));
    if size > 1 {
        match spmd.svd(part.view()) {
            Err(LinalgError::Part { rank: r, reason }) if r == odd => {
                ensure!(reason.contains("7 columns") && reason.contains("8"), "columns: {reason}");
            }
            other => anyhow::bail!("rank {rank}: a 7-column part on rank {odd} gave {other:?}"),
        }
        let result = if rank == odd {
            spmd.qr(part.mapv(|x| x as f32).slice(s![.., ..7]).to_owned().view()).map(|_| ())
        } else {
            spmd.qr(Array2::<f64>::ones((50, 7)).view()).map(|_| ())
        };
        match result {
            Err(LinalgError::Part { rank: r, reason }) if r == odd => {
                ensure!(reason.contains("f32"), "dtype: {reason}")
            }
            other => anyhow::bail!("rank {rank}: an f32 part on rank {odd} gave {other:?}"),
        }
    }
    // Empty everywhere: an error, not a hang.
    match spmd.svd(Array2::<f64>::zeros((0, 8))) {
        Err(LinalgError::Parameter { reason, .. }) => ensure!(reason.contains("empty"), "{reason}"),
        other => anyhow::bail!("an empty matrix gave {other:?}"),
    }
    comm.barrier();
    if rank == 0 {
        println!("errors name rank {odd} on every rank");
    }
    Ok(())
}

pub fn scenario() -> anyhow::Result<()> {
    let universe = mpi::initialize().context("MPI already initialised")?;
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    error_cases(&world)?;
    rows_cases(&world, "world", None)?;
    // Again, each part cut into blocks of 97 rows (several TSQR leaves per rank).
    rows_cases(&world, "world, 97-row blocks", Some(97))?;
    matmul_case(&world)?;
    // A communicator without world rank 0.
    let color = if rank == 0 { Color::undefined() } else { Color::with_value(1) };
    if let Some(rest) = world.split_by_color(color) {
        if size >= 3 {
            rows_cases(&rest, "ranks 1..", None)?;
        }
    }
    // MPI is the application's again.
    let mut total = 0;
    world.all_reduce_into(&1i32, &mut total, SystemOperation::sum());
    ensure!(total == size, "allreduce after Tessera gave {total}");
    println!("spmd ok on rank {rank}");
    Ok(())
}

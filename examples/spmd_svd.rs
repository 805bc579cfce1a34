//! A simulation's state, distributed by rows, decomposed where it lies.
//! Needs `--features mpi`.
//!
//! ```text
//! cargo build --release --features mpi --example spmd_svd
//! mpirun -n 4 target/release/examples/spmd_svd [ROWS_PER_RANK [COLUMNS [CHUNK_ROWS]]]
//! ```
//!
//! Each rank makes its own slab of a global matrix (rank r holds
//! `ROWS_PER_RANK + 37 r` rows, the last rank of four or more none), calls
//! the SVD on it, and checks what it got back: its own rows of `U` against
//! its own rows of the matrix, and, with one all-reduce of its own, that the
//! columns of `U` are orthonormal over all ranks. No rank ever sees another
//! rank's rows.

use mpi::collective::SystemOperation;
use mpi::traits::*;
use tessera::linalg::ndarray::Array2;
use tessera::spmd::Spmd;

/// Entry `(i, j)` of the global matrix: smooth modes plus a little noise.
fn entry(i: usize, j: usize) -> f64 {
    let (x, y) = (i as f64 * 1e-3, j as f64 + 1.0);
    (x * y).sin() / y + 1e-3 * (((i * 7919 + j * 104_729) % 1009) as f64 / 1009.0 - 0.5)
}

/// This process's peak resident memory (Linux; 0 elsewhere).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.unwrap_or(0.0) / 1024.0
}

fn main() -> anyhow::Result<()> {
    let universe = mpi::initialize().ok_or_else(|| anyhow::anyhow!("MPI already initialised"))?;
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let per_rank = args.next().transpose()?.unwrap_or(20_000);
    let n = args.next().transpose()?.unwrap_or(32);
    let chunk_rows = args.next().transpose()?;

    // The simulation's own layout: rank r owns rows first..first + rows.
    let rows_of = |r: usize| if size >= 4 && r == size - 1 { 0 } else { per_rank + 37 * r };
    let first: usize = (0..rank).map(rows_of).sum();
    let rows = rows_of(rank);
    let slab = Array2::from_shape_fn((rows, n), |(i, j)| entry(first + i, j));

    // Handed over owned: the slab moves into this rank's worker, no copy.
    let t = std::time::Instant::now();
    let spmd = Spmd::new(&world);
    let spmd = match chunk_rows {
        Some(r) => spmd.chunk_rows(r),
        None => spmd,
    };
    let f = spmd.svd(slab)?;
    let secs = t.elapsed().as_secs_f64();

    // My rows, made again one at a time: A_r = U_r diag(S) Vt, to rounding.
    let us = &f.u * &f.s;
    let (mut res2, mut norm2) = (0.0f64, 0.0f64);
    for (i, row) in us.rows().into_iter().enumerate() {
        let recon = row.dot(&f.vt);
        for (j, r) in recon.iter().enumerate() {
            let a = entry(first + i, j);
            res2 += (a - r) * (a - r);
            norm2 += a * a;
        }
    }
    // Over all ranks (the application's own MPI): the residual, |A|, Ut U.
    let local = [res2, norm2, secs, peak_rss_mib()];
    let mut global = [0.0f64; 4];
    world.all_reduce_into(&local[..2], &mut global[..2], SystemOperation::sum());
    world.all_reduce_into(&local[2..], &mut global[2..], SystemOperation::max());
    let utu_local = f.u.t().dot(&f.u);
    let mut utu = Array2::<f64>::zeros((n, n));
    world.all_reduce_into(utu_local.as_slice().unwrap(), utu.as_slice_mut().unwrap(), SystemOperation::sum());
    let m: usize = (0..size).map(rows_of).sum();
    let residual = (global[0] / global[1]).sqrt();
    let orth = (&utu - &Array2::<f64>::eye(n)).iter().fold(0.0f64, |a, x| a.max(x.abs()));
    let eps = f64::EPSILON;
    anyhow::ensure!(residual < 50.0 * eps * (n as f64).sqrt(), "rank {rank}: |A - U S Vt| / |A| = {residual:e}");
    anyhow::ensure!(orth < 50.0 * eps * (m as f64).sqrt(), "rank {rank}: |Ut U - I| = {orth:e}");
    anyhow::ensure!(f.s.windows(2).into_iter().all(|w| w[0] >= w[1]), "rank {rank}: S not sorted");
    if rank == 0 {
        println!(
            "SVD of {m} x {n} held on {size} ranks: {:.2} s, |A - U S Vt|/|A| = {residual:.1e}, |UtU - I| = {orth:.1e}, \
             peak memory per rank {:.0} MiB (largest)",
            global[2], global[3]
        );
        println!("s[0] = {:.6}, s[{}] = {:.3e}", f.s[0], n - 1, f.s[n - 1]);
    }
    world.barrier();
    println!("rank {rank}: {rows} rows of U checked");
    Ok(())
}

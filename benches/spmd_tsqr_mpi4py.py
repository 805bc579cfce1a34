"""Exact SVD of a matrix held by rows on the MPI ranks, by TSQR in mpi4py +
NumPy: the reference for examples/spmd_svd.rs (the same matrix, the same
layout: rank r holds PER_RANK + 37 r rows).

    mpirun -n 3 python benches/spmd_tsqr_mpi4py.py PER_RANK COLS
    python benches/spmd_tsqr_mpi4py.py --write FILE.h5 RANKS PER_RANK COLS

The first form times the SVD on each rank's slab (made before the clock
starts) and prints the seconds, the residual and the largest peak memory of
a rank. The second writes the whole matrix to FILE.h5:/X (for `tessera svd
FILE.h5:/X`).
"""

import resource
import sys
import time

import numpy as np


def entry(i, j):
    """Entries (i, j) of the global matrix, as examples/spmd_svd.rs makes them."""
    x = i.astype(np.float64) * 1e-3
    y = j.astype(np.float64) + 1.0
    noise = ((i * 7919 + j * 104729) % 1009).astype(np.float64) / 1009.0 - 0.5
    return np.sin(x * y) / y + 1e-3 * noise


def rows_of(r, size, per_rank):
    return 0 if size >= 4 and r == size - 1 else per_rank + 37 * r


def slab(first, rows, n):
    i = np.arange(first, first + rows, dtype=np.int64)[:, None]
    j = np.arange(n, dtype=np.int64)[None, :]
    return entry(i, j)


def write(path, ranks, per_rank, n):
    import h5py

    m = sum(rows_of(r, ranks, per_rank) for r in range(ranks))
    with h5py.File(path, "w") as f:
        d = f.create_dataset("X", (m, n), dtype="f8")
        step = 200_000
        for start in range(0, m, step):
            d[start : min(m, start + step)] = slab(start, min(step, m - start), n)
    print(f"wrote {path}:/X, {m} x {n}")


def main():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    per_rank, n = int(sys.argv[1]), int(sys.argv[2])
    first = sum(rows_of(r, size, per_rank) for r in range(rank))
    a = slab(first, rows_of(rank, size, per_rank), n)
    comm.Barrier()
    t = time.perf_counter()
    # Direct TSQR: local QR, the stacked R factors' QR and SVD on rank 0,
    # each rank's piece of the second Q times the SVD's U sent back.
    q1, r1 = np.linalg.qr(a)
    rs = comm.gather(r1, root=0)
    if rank == 0:
        q2, r = np.linalg.qr(np.vstack(rs))
        ur, s, vt = np.linalg.svd(r)
        offsets = np.cumsum([0] + [x.shape[0] for x in rs])
        pieces = [q2[offsets[p] : offsets[p + 1]] @ ur for p in range(size)]
    else:
        pieces, s, vt = None, None, None
    w = comm.scatter(pieces, root=0)
    s, vt = comm.bcast((s, vt), root=0)
    u = q1 @ w
    comm.Barrier()
    secs = time.perf_counter() - t
    res = np.array([np.sum((a - (u * s) @ vt) ** 2), np.sum(a**2)])
    total = np.zeros(2)
    comm.Allreduce(res, total, op=MPI.SUM)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    peak = comm.allreduce(peak, op=MPI.MAX)
    secs = comm.allreduce(secs, op=MPI.MAX)
    m = sum(rows_of(r, size, per_rank) for r in range(size))
    if rank == 0:
        print(
            f"mpi4py+NumPy TSQR SVD of {m} x {n} on {size} ranks: {secs:.2f} s, "
            f"|A - U S Vt|/|A| = {np.sqrt(total[0] / total[1]):.1e}, peak memory per rank {peak:.0f} MiB (largest)"
        )


if __name__ == "__main__":
    if sys.argv[1] == "--write":
        write(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()

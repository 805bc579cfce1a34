"""Dask reference run for the linear-algebra benchmarks (benches/linalg_vs_dask.sh).

Runs the same cases as `tessera matmul` / `tessera svd` on dask.array, with
the threaded scheduler (default) or dask.distributed, and prints one JSON
object per case on stdout:

  {"case": ..., "scheduler": ..., "seconds": ..., "gflops": ..., "peak_rss_bytes": ...}

Inputs are persisted first and the operation alone is timed, as the tessera
runs do with --persist-input; the out-of-core case reads from and writes to
HDF5 and is timed whole. Flop counts are the formulas docs/benchmarks.md
gives: 2mkn for a product, 4mn^2 for a TSQR SVD, 2mnl(2q+2) for a randomized
SVD with l = max(k + 10, 20) columns and q power iterations.
"""

import argparse
import json
import resource
import sys
import time

import dask
import dask.array as da


def peak_rss(children=False):
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss * 1024


def settle(*xs):
    """Persists and waits: with dask.distributed, persist returns at once."""
    ys = dask.persist(*xs)
    if dask.config.get("scheduler", None) != "threads":
        from distributed import wait

        wait(ys)
    return ys if len(ys) > 1 else ys[0]


def run(case, scheduler, args):
    if case == "matmul":
        m, k, n, c = args.matmul
        a, b = settle(da.random.random((m, k), chunks=c), da.random.random((k, n), chunks=c))
        t = time.perf_counter()
        settle(a @ b)
        secs = time.perf_counter() - t
        flops = 2.0 * m * k * n
    elif case == "tsqr":
        m, n, r = args.tsqr
        x = settle(da.random.random((m, n), chunks=(r, n)))
        t = time.perf_counter()
        settle(*da.linalg.svd(x))
        secs = time.perf_counter() - t
        flops = 4.0 * m * n * n
    elif case == "rsvd":
        m, n, k, q, r = args.rsvd
        x = settle(da.random.random((m, n), chunks=(r, n)))
        t = time.perf_counter()
        settle(*da.linalg.svd_compressed(x, k=k, n_power_iter=q, seed=1))
        secs = time.perf_counter() - t
        l = max(k + 10, 20)
        flops = 2.0 * m * n * l * (2 * q + 2)
    elif case == "ooc":
        import h5py

        path_a, path_c, r = args.ooc
        fa = h5py.File(path_a, "r")
        a = da.from_array(fa["/A"], chunks=(r, fa["/A"].shape[1]))
        b = da.from_array(fa["/B"], chunks=fa["/B"].shape)
        t = time.perf_counter()
        da.to_hdf5(path_c, "/C", a @ b)
        secs = time.perf_counter() - t
        m, k = fa["/A"].shape
        n = fa["/B"].shape[1]
        flops = 2.0 * m * k * n
    else:
        raise SystemExit(f"unknown case {case}")
    return secs, flops


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="matmul,tsqr,rsvd", help="comma-separated: matmul, tsqr, rsvd, ooc")
    p.add_argument("--scheduler", default="threaded", choices=["threaded", "distributed"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--matmul", type=int, nargs=4, default=[16384, 4096, 4096, 2048], metavar=("M", "K", "N", "CHUNK"))
    p.add_argument("--tsqr", type=int, nargs=3, default=[4_000_000, 64, 250_000], metavar=("M", "N", "ROWS"))
    p.add_argument("--rsvd", type=int, nargs=5, default=[200_000, 5_000, 10, 2, 10_000], metavar=("M", "N", "K", "Q", "ROWS"))
    p.add_argument("--ooc", nargs=3, default=None, metavar=("A_H5", "C_H5", "ROWS"))
    p.add_argument("--make-ooc-input", nargs=4, default=None, metavar=("A_H5", "M", "K", "N"),
                   help="write /A (M x K) and /B (K x N), uniform random, chunked 1000 rows, and exit")
    args = p.parse_args()
    if args.make_ooc_input:
        import h5py
        import numpy as np

        path, m, k, n = args.make_ooc_input[0], *map(int, args.make_ooc_input[1:])
        rng = np.random.default_rng(0)
        with h5py.File(path, "w") as f:
            a = f.create_dataset("A", shape=(m, k), dtype="f8", chunks=(min(1000, m), k))
            for r in range(0, m, 10_000):
                a[r : r + 10_000] = rng.random((min(10_000, m - r), k))
            f.create_dataset("B", data=rng.random((k, n)), chunks=(min(1000, k), n))
        return 0
    if args.ooc:
        args.ooc = (args.ooc[0], args.ooc[1], int(args.ooc[2]))
    client = None
    if args.scheduler == "distributed":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit=0)
        client = Client(cluster)
    else:
        dask.config.set(scheduler="threads", num_workers=args.workers)
    for case in args.cases.split(","):
        secs, flops = run(case, args.scheduler, args)
        rss = peak_rss()
        if client is not None:
            rss_workers = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            rss = max([rss] + list(rss_workers.values()))
        print(
            json.dumps(
                {
                    "case": case,
                    "tool": "dask",
                    "scheduler": args.scheduler,
                    "workers": args.workers,
                    "seconds": secs,
                    "gflops": flops / secs / 1e9,
                    "peak_rss_bytes": rss,
                    "dask": dask.__version__,
                }
            ),
            flush=True,
        )
    if client is not None:
        client.close()


if __name__ == "__main__":
    sys.exit(main())

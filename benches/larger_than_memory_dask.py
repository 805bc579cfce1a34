"""Dask reference for docs/benchmarks.md, "Arrays larger than memory".

Runs one case on a dask.distributed LocalCluster of WORKERS worker processes
(one thread each) with memory_limit=LIMIT_BYTES per worker (Dask's own
spill-to-disk, pause and terminate thresholds at their defaults), reading X
from HDF5 and writing U, as `tessera svd X.h5:/X -o out.h5` does. h5py
objects cannot travel to worker processes, so each block is read by a task
that opens the file itself, and U's blocks are written by the workers as
.npy files into OUT (a folder): the same bytes read and written.
Prints one JSON object: the case, seconds, and what went wrong if it failed.

  python larger_than_memory_dask.py tsqr X.h5 /X OUT.h5 ROWS WORKERS LIMIT_BYTES
  python larger_than_memory_dask.py rsvd X.h5 /X OUT.h5 ROWS WORKERS LIMIT_BYTES K Q
"""

import json
import sys
import tempfile
import time


def main():
    case, path, dataset, out, rows, workers, limit = sys.argv[1:8]
    rows, workers, limit = int(rows), int(workers), int(limit)
    import dask
    import dask.array as da
    import h5py
    from distributed import Client, LocalCluster

    local = tempfile.mkdtemp(prefix="dask-spill-")
    dask.config.set({"temporary-directory": local})
    result = {"case": case, "tool": "dask", "dask": dask.__version__, "workers": workers, "memory_limit": limit}
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=limit,
                           local_directory=local, dashboard_address=None)
    client = Client(cluster)
    t = time.perf_counter()
    try:
        import os

        import numpy as np
        from dask import delayed

        with h5py.File(path, "r") as f:
            m, n = f[dataset].shape

        def read(r0, r1):
            with h5py.File(path, "r") as f:
                return f[dataset][r0:r1]

        parts = [da.from_delayed(delayed(read)(r, min(r + rows, m)), (min(r + rows, m) - r, n), dtype="f8")
                 for r in range(0, m, rows)]
        x = da.concatenate(parts, axis=0).rechunk((rows, n))
        if case == "tsqr":
            u, s, v = da.linalg.svd(x)
        else:
            k, q = int(sys.argv[8]), int(sys.argv[9])
            u, s, v = da.linalg.svd_compressed(x, k=k, n_power_iter=q, seed=1)
        os.makedirs(out, exist_ok=True)

        def write(block, block_info=None):
            i = block_info[0]["chunk-location"][0]
            np.save(os.path.join(out, f"u_{i}.npy"), block)
            return np.zeros((1, 1))

        written = u.map_blocks(write, chunks=(1, 1), dtype="f8")
        _, s_, v_ = dask.compute(written, s, v)
        result["seconds"] = time.perf_counter() - t
        result["s0"] = float(s_[0])
    except Exception as e:  # what failed is the figure
        result["seconds"] = time.perf_counter() - t
        result["error"] = f"{type(e).__name__}: {e}"[:300]
    finally:
        try:
            client.close()
            cluster.close()
        except Exception:
            pass
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

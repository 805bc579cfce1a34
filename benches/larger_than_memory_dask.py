"""Dask reference for docs/benchmarks.md, "Arrays larger than memory".

Runs one case on a dask.distributed LocalCluster of WORKERS worker processes
(one thread each) with memory_limit=LIMIT_BYTES per worker (Dask's own
spill-to-disk, pause and terminate thresholds at their defaults), reading X
from HDF5 and writing U to HDF5, as `tessera svd X.h5:/X -o out.h5` does.
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
        f = h5py.File(path, "r")
        x = da.from_array(f[dataset], chunks=(rows, f[dataset].shape[1]))
        if case == "tsqr":
            u, s, v = da.linalg.svd(x)
        else:
            k, q = int(sys.argv[8]), int(sys.argv[9])
            u, s, v = da.linalg.svd_compressed(x, k=k, n_power_iter=q, seed=1)
        da.to_hdf5(out, {"/U": u, "/S": s, "/VT": v})
        result["seconds"] = time.perf_counter() - t
        result["s0"] = float(s[0].compute())
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

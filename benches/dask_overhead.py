#!/usr/bin/env python3
"""Dask reference run: per-task scheduling overhead for trivial tasks.

What it measures
----------------
Wall-clock time Dask needs to execute a graph of N trivial tasks (each task
does one float addition or returns a constant), so the time is essentially all
scheduler overhead. Three graph shapes, each with N tasks in total:

  wide   N independent tasks, each returning 1.0 (no inputs).
  chain  task i returns (task i-1) + 1.0, task 0 returns 1.0; the final value
         must equal N.
  tree   binary reduction: L = (N+1)//2 leaves returning 1.0, internal nodes
         summing two children, 2L-1 tasks in all; the root must equal L.

Two schedulers:

  threaded     dask.threaded.get(graph, keys, num_workers=2), the local
               thread-pool scheduler, in this process.
  distributed  dask.distributed LocalCluster(n_workers=2, threads_per_worker=1,
               processes=True, dashboard_address=None) and
               client.get(graph, keys). The timed call includes sending the
               graph to the scheduler, running it on the two worker processes
               and bringing the results back.

How it is measured
------------------
Graphs are raw dask graph dicts (keys are tuples such as ('chain-3', i), tasks
are (callable, *args) tuples), not dask.delayed, and are built before the
clock starts: only the execution call (threaded get / client.get) is timed.
For `wide` all N results are fetched (client.get(graph, list_of_all_keys), as
a Dask user gathering every output would); for `chain` and `tree` only the
final key is requested. Each (scheduler, shape) pair gets one small untimed
warm-up run, then R timed runs; the median and the minimum are reported, and
us_per_task / tasks_per_second are derived from the median. The distributed
scheduler runs use --distributed-tasks tasks (default 20000) rather than
--tasks, because 100000 tasks per run take minutes there; the per-task figures
are still comparable. Before every distributed run the script waits until the
scheduler has forgotten the previous run's tasks. Each run uses fresh key names.

The recursion limit is raised to about two frames per task, in case the dask
version in use walks a long chain recursively (2026.8 does not need it).

Run time: on a 2-core machine the defaults take on the order of 15 minutes,
most of it in the distributed chain (every link is a scheduler round trip).

Usage
-----
  benches/dask_overhead.sh [--tasks N] [--repeat R] [--distributed-tasks M]
                           [--shapes wide,chain,tree]
                           [--schedulers threaded,distributed]

(the .sh wrapper creates the venv with dask installed; this file can also be
run directly by any Python that has dask and distributed). The human-readable
table goes to stderr; the LAST line of stdout is a single JSON object:

  {"tool": "dask", "dask_version": ..., "python": ..., "results": [
     {"scheduler": "threaded"|"distributed", "shape": ..., "tasks": ...,
      "seconds_median": ..., "seconds_min": ..., "us_per_task": ...,
      "tasks_per_second": ..., ...}, ...]}
"""

import argparse
import gc
import itertools
import json
import logging
import os
import platform
import statistics
import sys
import time

import dask
import dask.threaded

SHAPES = ("wide", "chain", "tree")
SCHEDULERS = ("threaded", "distributed")
WARMUP_TASKS = 1000

# A fresh key prefix per run, so a distributed run never meets the previous
# run's keys while the scheduler is still releasing them.
_run_ids = itertools.count()


# --- the trivial task bodies ------------------------------------------------
# Module-level functions so the distributed workers can unpickle them.

def one():
    return 1.0


def add_one(x):
    return x + 1.0


def add(a, b):
    return a + b


# --- graph builders ---------------------------------------------------------
# Each returns (graph, keys_to_request, check) where check(result) asserts the
# answer. None of this is timed.

def build_wide(n, name):
    graph = {(name, i): (one,) for i in range(n)}
    keys = list(graph)

    def check(result):
        assert len(result) == n and all(v == 1.0 for v in result), "wide: bad results"

    return graph, keys, n, check


def build_chain(n, name):
    graph = {(name, 0): (one,)}
    for i in range(1, n):
        graph[(name, i)] = (add_one, (name, i - 1))
    final = (name, n - 1)

    def check(result):
        assert result == float(n), f"chain: final value {result!r} != {n}"

    return graph, final, n, check


def build_tree(n, name):
    leaves = (n + 1) // 2
    graph = {}
    level = []
    for i in range(leaves):
        key = (name, i)
        graph[key] = (one,)
        level.append(key)
    next_id = leaves
    # Pair up the nodes of each level; an odd node out is carried up to the
    # next level unchanged, so the tree always has exactly 2L-1 tasks.
    while len(level) > 1:
        parents = []
        for j in range(0, len(level) - 1, 2):
            key = (name, next_id)
            next_id += 1
            graph[key] = (add, level[j], level[j + 1])
            parents.append(key)
        if len(level) % 2:
            parents.append(level[-1])
        level = parents
    root = level[0]
    assert len(graph) == 2 * leaves - 1

    def check(result):
        assert result == float(leaves), f"tree: root {result!r} != {leaves}"

    return graph, root, len(graph), check


BUILDERS = {"wide": build_wide, "chain": build_chain, "tree": build_tree}


# --- schedulers ---------------------------------------------------------------

class ThreadedRunner:
    name = "threaded"

    def run(self, graph, keys):
        return dask.threaded.get(graph, keys, num_workers=2)

    def close(self):
        pass


class DistributedRunner:
    name = "distributed"

    def __init__(self):
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self.client = Client(self.cluster)
        self.client.wait_for_workers(2)

    def wait_idle(self, timeout=120.0):
        """Block until the scheduler holds no tasks from earlier runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
            if n == 0:
                return
            time.sleep(0.05)

    def run(self, graph, keys):
        return self.client.get(graph, keys)

    def close(self):
        self.client.close()
        self.cluster.close()


# --- measurement ----------------------------------------------------------------

def one_run(runner, shape, n):
    """Build a fresh graph, then time only the execution call."""
    graph, keys, tasks, check = BUILDERS[shape](n, f"{shape}-{next(_run_ids)}")
    if isinstance(runner, DistributedRunner):
        runner.wait_idle()
    gc.collect()
    t0 = time.perf_counter()
    result = runner.run(graph, keys)
    elapsed = time.perf_counter() - t0
    check(result)
    del graph, result
    return tasks, elapsed


def measure(runner, shape, n, repeat):
    one_run(runner, shape, min(n, WARMUP_TASKS))  # untimed warm-up
    times = []
    tasks = None
    for _ in range(repeat):
        tasks, elapsed = one_run(runner, shape, n)
        times.append(elapsed)
        print(f"  {runner.name:<11} {shape:<5} run {len(times)}/{repeat}: "
              f"{elapsed:8.3f} s", file=sys.stderr, flush=True)
    med = statistics.median(times)
    return {
        "scheduler": runner.name,
        "shape": shape,
        "tasks": tasks,
        "seconds_median": round(med, 6),
        "seconds_min": round(min(times), 6),
        "us_per_task": round(med / tasks * 1e6, 3),
        "tasks_per_second": round(tasks / med, 1),
        "repeat": repeat,
        "seconds_all": [round(t, 6) for t in times],
        "fetched": "all N results" if shape == "wide" else "final key only",
    }


def parse_list(value, allowed, what):
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {bad or value!r}; choose from {','.join(allowed)}")
    return items


def main():
    ap = argparse.ArgumentParser(
        description="Measure Dask's per-task scheduling overhead on trivial tasks.")
    ap.add_argument("--tasks", type=int, default=100_000,
                    help="tasks per graph for the threaded scheduler (default 100000)")
    ap.add_argument("--distributed-tasks", type=int, default=20_000,
                    help="tasks per graph for the distributed scheduler (default 20000)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed runs per scheduler and shape (default 3)")
    ap.add_argument("--shapes", default=",".join(SHAPES),
                    type=lambda v: parse_list(v, SHAPES, "shape"),
                    help="comma-separated subset of wide,chain,tree")
    ap.add_argument("--schedulers", default=",".join(SCHEDULERS),
                    type=lambda v: parse_list(v, SCHEDULERS, "scheduler"),
                    help="comma-separated subset of threaded,distributed")
    args = ap.parse_args()
    if args.tasks < 1 or args.distributed_tasks < 1 or args.repeat < 1:
        ap.error("--tasks, --distributed-tasks and --repeat must be >= 1")

    # A long chain is as deep as it is long. The dask release this was written
    # against (2026.8) handles a 100000-task chain without recursing, but graph
    # utilities in some dask versions walk dependencies recursively; give them
    # head-room (about two frames per task) rather than fail with RecursionError.
    sys.setrecursionlimit(max(sys.getrecursionlimit(),
                              2 * max(args.tasks, args.distributed_tasks) + 10_000))

    import distributed  # noqa: F401  (version report; fails early if missing)

    notes = [
        "only the execution call is timed; graphs are raw dicts built beforehand",
        "wide fetches all N results (get(graph, list_of_keys)); chain/tree fetch the final key",
        "threaded: dask.threaded.get(num_workers=2)",
        "distributed: LocalCluster(n_workers=2, threads_per_worker=1, processes=True), "
        "client.get(graph, keys); time includes graph submission and result transfer",
        f"median and min over {args.repeat} runs after one untimed warm-up "
        f"of <= {WARMUP_TASKS} tasks; us_per_task and tasks_per_second use the median",
    ]
    if "distributed" in args.schedulers and args.distributed_tasks != args.tasks:
        notes.append(f"distributed runs use {args.distributed_tasks} tasks per graph "
                     f"(--distributed-tasks), threaded runs {args.tasks}; compare per-task figures")

    print(f"dask {dask.__version__}, distributed {distributed.__version__}, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs", file=sys.stderr)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    results = []
    for sched in args.schedulers:
        n = args.tasks if sched == "threaded" else args.distributed_tasks
        runner = ThreadedRunner() if sched == "threaded" else DistributedRunner()
        try:
            for shape in args.shapes:
                results.append(measure(runner, shape, n, args.repeat))
        finally:
            runner.close()

    # Human-readable table (stderr, so stdout ends with the JSON line).
    header = (f"{'scheduler':<12}{'shape':<7}{'tasks':>8}{'median s':>11}"
              f"{'min s':>10}{'us/task':>10}{'tasks/s':>11}")
    print("\n" + header, file=sys.stderr)
    print("-" * len(header), file=sys.stderr)
    for r in results:
        print(f"{r['scheduler']:<12}{r['shape']:<7}{r['tasks']:>8}"
              f"{r['seconds_median']:>11.3f}{r['seconds_min']:>10.3f}"
              f"{r['us_per_task']:>10.2f}{r['tasks_per_second']:>11.0f}", file=sys.stderr)
    sys.stderr.flush()

    print(json.dumps({
        "tool": "dask",
        "dask_version": dask.__version__,
        "distributed_version": distributed.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "notes": notes,
        "results": results,
    }), flush=True)


if __name__ == "__main__":
    main()

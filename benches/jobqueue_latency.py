#!/usr/bin/env python3
"""Submit-to-first-task latency of a Tessera MPI job on Slurm.

    benches/jobqueue_latency.py [--runs 7] [--nodes 2] [--tasks-per-node 2] [--tessera PATH]

Each run submits, through `tessera jobqueue submit`, a job whose ranks start
under `srun --mpi=pmix` and compute a one-task graph (`tessera bench overhead
--tasks 1`): rank 0 prints its result line as soon as that task is done. The
figure is the time from calling `submit` to that line appearing in the job's
output file (polled every 2 ms), i.e. queueing, allocation, srun, MPI start-up,
Tessera's roles and the first task. It is split at the moment the batch
script starts (a prologue line prints the time): before it, Slurm's scheduling
and batch launch; after it, `srun`, MPI start-up, Tessera and the task. Also
printed: how long `submit` itself took (writing the script, sbatch) and
submit-to-job-end (`tessera jobqueue wait`). Each run starts when every node
is idle again. Median of the runs; needs an otherwise idle Slurm
(scripts/local-slurm.sh) and a `tessera` built with `--features mpi` (release).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def wait_idle():
    """Until no job is queued and every node is idle (a finished job's nodes complete for a moment)."""
    for _ in range(600):
        queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip()
        states = set(subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True).stdout.split())
        if not queue and states == {"idle"}:
            return
        time.sleep(0.1)
    sys.exit("Slurm did not become idle")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--tasks-per-node", type=int, default=2)
    p.add_argument("--tessera", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "tessera"))
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    a = p.parse_args()
    tessera = os.path.abspath(a.tessera)
    logs = tempfile.mkdtemp(prefix="tessera-latency-")
    submit_s, first_s, end_s, script_s = [], [], [], []
    for run in range(a.runs):
        wait_idle()
        cmd = [
            tessera, "jobqueue", "--json", "submit", "--system", "slurm",
            "--nodes", str(a.nodes), "--tasks-per-node", str(a.tasks_per_node),
            "--mpi", "pmix", "--walltime", "00:05:00", "--log-dir", logs,
            # the local test cluster's nodes share one host: no shared-memory transport between them
            "--env", "OMPI_MCA_btl=self,tcp",
            "--prologue", "echo tessera-script-start $(date +%s.%N)",
            "--", "tessera", "bench", "overhead", "--tasks", "1", "--repeat", "1",
        ]
        wall0 = time.time()
        t0 = time.monotonic()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        t_submit = time.monotonic() - t0
        job = json.loads(out.stdout)
        path = job["output"]
        while True:
            try:
                with open(path) as f:
                    text = f.read()
                if "overhead" in text:
                    break
            except FileNotFoundError:
                pass
            if time.monotonic() - t0 > 120:
                sys.exit(f"job {job['job_id']}: no result line in {path} after 120 s")
            time.sleep(0.002)
        t_first = time.monotonic() - t0
        w = subprocess.run([tessera, "jobqueue", "wait", "--system", "slurm", "--poll", "0.05", job["job_id"]],
                           capture_output=True, text=True)
        t_end = time.monotonic() - t0
        if w.returncode != 0:
            sys.exit(f"job {job['job_id']} failed: {w.stdout}{w.stderr}")
        start = [l for l in text.splitlines() if l.startswith("tessera-script-start ")]
        script_s.append(float(start[0].split()[1]) - wall0)
        submit_s.append(t_submit)
        first_s.append(t_first)
        end_s.append(t_end)
        print(f"run {run + 1}: job {job['job_id']}: submit {t_submit:.3f} s, script started {script_s[-1]:.3f} s, "
              f"first task {t_first:.3f} s, job ended {t_end:.3f} s")
    m = statistics.median
    print(f"submit-to-first-task latency, MPI job of {a.nodes} nodes x {a.tasks_per_node} ranks under srun --mpi=pmix: "
          f"median {m(first_s):.3f} s (min {min(first_s):.3f}, max {max(first_s):.3f}, {a.runs} runs); "
          f"of which submit to batch script start {m(script_s):.3f} s; submit itself {m(submit_s):.3f} s; "
          f"submit to job end {m(end_s):.3f} s")
    if a.json:
        print(json.dumps({"runs": a.runs, "nodes": a.nodes, "tasks_per_node": a.tasks_per_node,
                          "first_task_s": m(first_s), "first_task_min_s": min(first_s),
                          "first_task_max_s": max(first_s), "script_start_s": m(script_s), "submit_s": m(submit_s),
                          "job_end_s": m(end_s)}))


if __name__ == "__main__":
    main()

//! `tessera bench ...`: the benchmarks' commands, which print one line of
//! figures each (and JSON with `--json`).

use std::time::Duration;

#[cfg(feature = "mpi")]
use anyhow::bail;
use anyhow::Context;
#[cfg(feature = "mpi")]
use serde_json::json;
use tessera::bench;
use tessera::observe::Observe;
use tessera::runtime::gpu::GpuSelect;
use tessera::runtime::scheduler::sim;
use tessera::{Config, Progress};
#[cfg(feature = "mpi")]
use tessera::{Launch, SchedulerWorks, TransportKind};

use crate::cli::ClusterArgs;
use crate::cmd::elastic::connect;

/// `bench simulate`: one simulation, one line of figures (and JSON).
pub(crate) fn simulate_bench(cfg: &sim::SimConfig, json: bool) -> anyhow::Result<()> {
    let r = sim::simulate(cfg)?;
    say!(
        json,
        "simulate {}: {} tasks on {} workers x {} threads: core {:.2} us/task (submit {:.2}; first of {} runs {:.2}), makespan {:.4} s = {:.3} x lower bound {:.4} s ({:.3} x work/threads or critical path), {:.0} B/task in the core, {} transfers ({}), {:.1} s wall",
        r.shape,
        r.tasks,
        r.workers,
        r.threads,
        r.us_per_task,
        r.submit_us_per_task,
        r.runs,
        r.first_us_per_task,
        r.makespan_s,
        r.makespan_ratio,
        r.lower_bound_s,
        r.work_path_ratio,
        r.scheduler_bytes_per_task,
        r.transfers,
        tessera::runtime::host::sys::human_bytes(r.moved_bytes),
        r.wall_s
    );
    if json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

/// `tessera bench overhead`: the scheduler's cost per task, on the cluster
/// `config` names, without the progress bar (the figure is the scheduler's alone).
pub(crate) fn overhead(
    mut config: Config,
    observe: &Observe,
    shape: bench::Shape,
    tasks: usize,
    repeat: usize,
    json: bool,
) -> anyhow::Result<()> {
    config.progress = Progress::Off;
    let r = observe.run(config, |client| {
        super::arrays::wait_for_a_worker(client)?;
        bench::overhead(client, shape, tasks, repeat).map_err(anyhow::Error::from)
    })?;
    say!(
        json,
        "overhead {:?}: {} tasks in {:.4} s (median of {}; min {:.4} s): {:.2} us/task, {:.0} tasks/s; {} workers x {} threads total, {} transport",
        r.shape, r.tasks, r.seconds, r.repeat, r.seconds_min, r.us_per_task, r.tasks_per_second, r.workers, r.threads, r.transport
    );
    if json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

/// `tessera bench gemm`: faer on the cores, or with `--gpus` cuBLAS directly
/// against a Tessera GPU worker (see [`bench::gpu_gemm`]).
pub(crate) fn gemm_bench(
    config: Config,
    [m, k, n]: [Option<usize>; 3],
    dtype: bench::GemmDtype,
    cores: Option<usize>,
    repeat: Option<usize>,
    seed: u64,
    json: bool,
) -> anyhow::Result<()> {
    let on_gpu = config.worker.gpus != GpuSelect::None;
    let n = n.unwrap_or(if on_gpu { 8192 } else { 4096 });
    let (m, k) = (m.unwrap_or(n), k.unwrap_or(n));
    let repeat = repeat.unwrap_or(if on_gpu { 5 } else { 3 });
    for &dt in dtype.dtypes() {
        if !on_gpu {
            let r = bench::gemm(m, k, n, dt, cores.unwrap_or_else(tessera::runtime::host::sys::usable_cores), repeat);
            say!(
                json,
                "gemm {} x {} @ {} x {} {} (faer, {} threads): {:.4} s, {:.1} GFLOP/s (median of {})",
                r.m,
                r.k,
                r.k,
                r.n,
                r.dtype,
                r.threads,
                r.seconds,
                r.gflops,
                r.repeat
            );
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
            continue;
        }
        let r = bench::gpu_gemm(config.clone(), [m, k, n], dt, repeat, seed)?;
        let task = r.task_seconds.map(|s| format!(", the task itself {s:.4} s")).unwrap_or_default();
        say!(
            json,
            "gemm {} x {} @ {} x {} {} on {}: cuBLAS directly {:.4} s, {:.2} TFLOP/s; through a Tessera GPU worker {:.4} s, {:.2} TFLOP/s (task reported done after {:.4} s{task}); tessera/direct {:.3} (median of {}; products agree to {:.1e})",
            r.m, r.k, r.k, r.n, r.dtype, r.gpu, r.direct_seconds, r.direct_tflops, r.tessera_seconds, r.tessera_tflops,
            r.tessera_reported_seconds, r.ratio, r.repeat, r.max_rel_diff
        );
        if json {
            println!("{}", serde_json::to_string(&r)?);
        }
    }
    Ok(())
}

pub(crate) fn elastic_bench(
    args: &ClusterArgs,
    workers: usize,
    mib: usize,
    repeat: usize,
    json: bool,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the tessera executable to start workers")?;
    let r = bench::elastic(&exe, workers, mib, repeat, Duration::from_secs_f64(args.heartbeat_timeout))?;
    say!(
        json,
        "elastic, {} workers on this host: all joined {:.3} s after they were started (first {:.3} s); {} drained {} MiB of blocks to the last in {:.3} s, processes gone after {:.3} s (median of {}); all {} blocks intact on the last worker; a {mib} MiB block between workers {:.2} GiB/s (plain loopback TCP {:.2} GiB/s)",
        r.workers, r.join_all_seconds, r.join_first_seconds, r.workers - 1, r.handed_off_mib, r.drain_seconds, r.exit_seconds, r.repeat, r.tasks, r.transfer_gib_per_s, r.plain_tcp_gib_per_s
    );
    if json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn scale_bench(
    args: &ClusterArgs,
    workers: usize,
    tasks: u32,
    ms: u64,
    repeat: usize,
    log_dir: &std::path::Path,
    json: bool,
    jobqueue: &[String],
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the tessera executable")?;
    let client = connect(args)?;
    let mut cluster = Vec::new();
    if let Some(s) = &args.scheduler {
        cluster.extend(["--scheduler".to_string(), s.clone()]);
    }
    if let Some(f) = &args.scheduler_file {
        cluster.extend(["--scheduler-file".to_string(), f.to_string_lossy().into_owned()]);
    }
    if let Some(f) = &args.secret_file {
        cluster.extend(["--secret-file".to_string(), f.to_string_lossy().into_owned()]);
    }
    let log_dir = std::env::current_dir()?.join(log_dir);
    let workers = u32::try_from(workers).context("--workers: too many")?;
    let r = bench::scale(&client, &exe, &cluster, jobqueue, &log_dir, workers, tasks, ms, repeat)?;
    let f = |x: [f64; 3]| format!("{:.3} s ({:.3}-{:.3})", x[0], x[1], x[2]);
    say!(
        json,
        "scale 0 -> {n}: all {n} workers joined {}; {n} -> 1 in the middle of the graph: workers left {}, jobs ended {}; 1 -> 0: job ended {} (median, min-max of {}); every one of the {} tasks of each run ran exactly once",
        f(r.up_seconds), f(r.down_left_seconds), f(r.down_gone_seconds), f(r.zero_gone_seconds), r.repeat, r.tasks, n = r.workers
    );
    if json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

#[cfg(feature = "mpi")]
pub(crate) fn transfer(config: Config, bytes: usize, repeat: usize, json: bool) -> anyhow::Result<()> {
    use mpi::traits::*;
    if config.resolve_launch()? != Launch::Mpi {
        bail!("bench transfer moves blocks between MPI ranks; run it under mpirun with at least 3 ranks");
    }
    let (universe, _) =
        mpi::initialize_with_threading(mpi::Threading::Serialized).context("MPI was already initialised")?;
    let world = universe.world();
    if world.size() < 3 {
        bail!("bench transfer needs at least 3 ranks (rank 0 schedules, ranks 1 and 2 exchange); got {}", world.size());
    }
    let bytes = bytes.max(8) / 8 * 8;
    // The reference: a plain blocking send/recv of the same bytes, rank 1 ->
    // rank 2, into a buffer reused every time (the fastest case) and into a
    // freshly allocated one (what a new block costs: its pages fault in).
    let mut plain = Vec::new();
    let mut plain_fresh = Vec::new();
    let mut buf = vec![1.0f64; bytes / 8];
    for i in 0..2 * repeat.max(1) {
        let fresh = i % 2 == 1;
        world.barrier();
        let t = std::time::Instant::now();
        match world.rank() {
            1 => world.process_at_rank(2).send(&buf[..]),
            2 if fresh => {
                let mut new = vec![0.0f64; bytes / 8];
                world.process_at_rank(1).receive_into(&mut new[..]);
            }
            2 => {
                world.process_at_rank(1).receive_into(&mut buf[..]);
            }
            _ => {}
        }
        let dt = t.elapsed().as_secs_f64();
        let mut recv_time = dt;
        // Rank 2's receive time is the figure; share it with rank 0.
        if world.rank() == 2 {
            world.process_at_rank(0).send(&dt);
        } else if world.rank() == 0 {
            world.process_at_rank(2).receive_into(&mut recv_time);
            if fresh {
                plain_fresh.push(recv_time)
            } else {
                plain.push(recv_time)
            }
        }
    }
    drop(buf);
    let rank = world.rank();
    let transport = if config.worker.transport == TransportKind::Ucx { "mpi+ucx" } else { "mpi" };
    let mut config = config;
    config.scheduler_works = SchedulerWorks::No;
    let result = tessera::mpi::run_on(&world, config, |client| bench::transfer(client, 1, 2, bytes, repeat))
        .map_err(anyhow::Error::from);
    drop(universe);
    let times = match result {
        Ok(Some(t)) => t,
        Ok(None) => std::process::exit(0),
        Err(e) if rank != 0 => {
            // Rank 0 reports the failure; see tessera_runtime::Config::run.
            tracing::debug!(error = %e, "worker rank ends");
            std::process::exit(0)
        }
        Err(e) => return Err(e),
    };
    let (mut plain, mut plain_fresh, mut times) = (plain, plain_fresh, times);
    let p = bench::median(&mut plain);
    let pf = bench::median(&mut plain_fresh);
    let t = bench::median(&mut times);
    let gib = |s: f64| bytes as f64 / s / (1u64 << 30) as f64;
    say!(
        json,
        "transfer {bytes} B rank 1 -> rank 2 over {transport}: tessera {:.6} s ({:.2} GiB/s); plain MPI send/recv {:.6} s ({:.2} GiB/s) into a reused buffer, {:.6} s into a fresh one; ratio {:.3} (reused), {:.3} (fresh) (median of {})",
        t, gib(t), p, gib(p), pf, p / t, pf / t, times.len()
    );
    if json {
        println!(
            "{}",
            json!({"bytes": bytes, "seconds": t, "gib_per_s": gib(t), "plain_seconds": p, "plain_gib_per_s": gib(p),
                   "plain_fresh_seconds": pf, "ratio": p / t, "ratio_fresh": pf / t, "repeat": times.len(), "transport": transport})
        );
    }
    Ok(())
}

#[cfg(not(feature = "mpi"))]
pub(crate) fn transfer(_: Config, _: usize, _: usize, _: bool) -> anyhow::Result<()> {
    Err(tessera::Error::FeatureDisabled { feature: "mpi", what: "bench transfer".into() }.into())
}

#[cfg(feature = "ucx")]
pub(crate) fn ucx_bench(sizes: &[usize], repeat: usize, json: bool) -> anyhow::Result<()> {
    for &bytes in sizes {
        let r = bench::ucx(bytes, repeat)?;
        let what = if r.unit == "us" { "latency (half round trip)" } else { "bandwidth" };
        say!(
            json,
            "ucx {} B, UCX_TLS={}: {what}: bare UCP {:.2} {}, tessera plane {:.2} {}: ratio {:.3} (median of {repeat})",
            r.bytes,
            r.tls,
            r.probe,
            r.unit,
            r.plane,
            r.unit,
            r.ratio
        );
        if json {
            println!("{}", serde_json::to_string(&r)?);
        }
    }
    Ok(())
}

#[cfg(not(feature = "ucx"))]
pub(crate) fn ucx_bench(_: &[usize], _: usize, _: bool) -> anyhow::Result<()> {
    Err(tessera::Error::FeatureDisabled { feature: "ucx", what: "bench ucx".into() }.into())
}

#[cfg(feature = "mpi")]
pub(crate) fn mpi_hello(json: bool) -> anyhow::Result<()> {
    use mpi::traits::*;
    let start = std::time::Instant::now();
    let universe = mpi::initialize().context("MPI was already initialised")?;
    let world = universe.world();
    world.barrier();
    if world.rank() == 0 {
        if json {
            println!("{}", json!({"ranks": world.size(), "init_barrier_seconds": start.elapsed().as_secs_f64()}));
        } else {
            println!("hello from {} MPI ranks", world.size());
        }
    }
    Ok(())
}

#[cfg(not(feature = "mpi"))]
pub(crate) fn mpi_hello(_: bool) -> anyhow::Result<()> {
    Err(tessera::Error::FeatureDisabled { feature: "mpi", what: "bench mpi-hello".into() }.into())
}

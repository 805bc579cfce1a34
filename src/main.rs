//! The `tessera` command.
//!
//! Every subcommand runs the same way on a laptop (an in-process local
//! cluster) and under `mpirun`/`srun` (rank 0 is scheduler and driver, the
//! other ranks are workers), detected from the environment.

use std::process::ExitCode;

#[allow(unused_imports)]
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tessera::bench::{self, Shape};
use tessera::{Config, Launch, SchedulerWorks};

/// The scheduler allocates and frees a few small objects per task; mimalloc
/// does that in a fraction of glibc malloc's time (measured: docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "tessera", version, about = "A Rust runtime for HPC clusters", propagate_version = true)]
struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); overrides RUST_LOG.
    #[arg(long, global = true, value_name = "LEVEL")]
    log: Option<String>,

    #[command(flatten)]
    cluster: ClusterArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct ClusterArgs {
    /// Where to run: MPI when launched by mpirun/srun, else local (auto); or force one.
    #[arg(long, global = true, default_value = "auto", value_parser = parse_launch)]
    launch: Launch,

    /// Local cluster: number of workers [default: usable cores].
    #[arg(long, global = true, env = "TESSERA_WORKERS")]
    workers: Option<usize>,

    /// Compute threads per worker [default: 1 locally, the rank's share of cores under MPI].
    #[arg(long, global = true, env = "TESSERA_THREADS")]
    threads: Option<usize>,

    /// MPI: whether rank 0 (scheduler and driver) also runs a worker.
    #[arg(long, global = true, default_value = "auto", value_parser = parse_works)]
    scheduler_works: SchedulerWorks,

    /// MPI: seconds a worker rank may stay silent before the job is aborted.
    #[arg(long, global = true, default_value_t = 30.0, env = "TESSERA_HEARTBEAT_TIMEOUT", value_parser = parse_secs)]
    heartbeat_timeout: f64,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 2.0 => Ok(x),
        _ => Err(format!("`{s}` is not a number of seconds >= 2 (workers report every second)")),
    }
}

fn parse_launch(s: &str) -> Result<Launch, String> {
    s.parse().map_err(|e: tessera::Error| e.to_string())
}

fn parse_works(s: &str) -> Result<SchedulerWorks, String> {
    s.parse().map_err(|e: tessera::Error| e.to_string())
}

impl ClusterArgs {
    fn config(&self) -> Config {
        Config {
            launch: self.launch,
            workers: self.workers,
            threads: self.threads,
            scheduler_works: self.scheduler_works,
            heartbeat_timeout: std::time::Duration::from_secs_f64(self.heartbeat_timeout),
            ..Config::default()
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Version, compiled features, MPI library and world, cores and memory.
    Info {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Runs a few small computations on the cluster and prints what they took.
    Demo,
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Per-task scheduling overhead on trivial tasks.
    Overhead {
        /// Number of tasks in the graph.
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        /// Graph shape.
        #[arg(long, value_enum, default_value = "wide")]
        shape: Shape,
        /// Repetitions; the median is reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Print one JSON object as the last line.
        #[arg(long)]
        json: bool,
    },
    /// Block transfer between the workers on ranks 1 and 2 (MPI, at least 3 ranks),
    /// against a plain MPI send/recv of the same size in the same run.
    Transfer {
        /// Block size in MiB.
        #[arg(long, default_value_t = 64)]
        mib: usize,
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        #[arg(long)]
        json: bool,
    },
    /// MPI start-up reference: initialise, barrier, finalise (needs `mpi`).
    MpiHello,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref());
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).unwrap_or_else(|e| {
            eprintln!("tessera: warning: bad --log `{l}` ({e}); using warn");
            EnvFilter::new("warn")
        }),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.cluster.config();
    match cli.command {
        Command::Info { json } => info(&config, json),
        Command::Demo => demo(config),
        Command::Bench(BenchCommand::Overhead { tasks, shape, repeat, json }) => {
            let r = config.run(|client| bench::overhead(client, shape, tasks, repeat).map_err(anyhow::Error::from))?;
            println!(
                "overhead {:?}: {} tasks in {:.4} s (median of {}; min {:.4} s): {:.2} us/task, {:.0} tasks/s; {} workers x {} threads total, {} transport",
                r.shape, r.tasks, r.seconds, r.repeat, r.seconds_min, r.us_per_task, r.tasks_per_second, r.workers, r.threads, r.transport
            );
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Transfer { mib, repeat, json }) => transfer(config, mib, repeat, json),
        Command::Bench(BenchCommand::MpiHello) => mpi_hello(),
    }
}

fn info(config: &Config, json: bool) -> anyhow::Result<()> {
    let features: Vec<&str> = [("mpi", tessera::HAS_MPI)].iter().filter(|f| f.1).map(|f| f.0).collect();
    let (mem_total, mem_avail) = tessera::runtime::sys::memory().unwrap_or((0, 0));
    let launch = config.resolve_launch()?;
    let mpi = mpi_info(launch)?;
    if mpi.as_ref().is_some_and(|m| m["rank"] != 0) {
        return Ok(()); // rank 0 speaks for the job
    }
    let registry = tessera::Registry::builtin();
    let obj = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "features": features,
        "launch": format!("{launch:?}").to_lowercase(),
        "mpi": mpi,
        "launched_by": tessera::runtime::sys::describe_mpi_launch(),
        "host": tessera::runtime::sys::hostname(),
        "cores": tessera::runtime::sys::host_cores(),
        "usable_cores": tessera::runtime::sys::usable_cores(),
        "memory_bytes": mem_total,
        "memory_available_bytes": mem_avail,
        "kernels": registry.names().collect::<Vec<_>>(),
    });
    println!("tessera {}", env!("CARGO_PKG_VERSION"));
    println!(
        "  features:  {}",
        if features.is_empty() { "(none: local cluster only)".into() } else { features.join(", ") }
    );
    if !tessera::HAS_MPI {
        println!("  mpi:       not compiled in (rebuild with --features mpi)");
    }
    match &obj["mpi"] {
        serde_json::Value::Null if tessera::HAS_MPI => println!(
            "  mpi:       {} (not launched by mpirun/srun)",
            obj["mpi_library"].as_str().unwrap_or("available")
        ),
        serde_json::Value::Null => {}
        m => println!("  mpi:       {}; world size {}", m["library"].as_str().unwrap_or("?"), m["world_size"]),
    }
    println!("  launch:    {}", obj["launch"].as_str().unwrap_or("?"));
    println!("  host:      {}", obj["host"].as_str().unwrap_or("?"));
    println!("  cores:     {} ({} usable by this process)", obj["cores"], obj["usable_cores"]);
    println!(
        "  memory:    {:.1} GiB ({:.1} GiB available)",
        mem_total as f64 / (1u64 << 30) as f64,
        mem_avail as f64 / (1u64 << 30) as f64
    );
    println!("  kernels:   {}", registry.names().collect::<Vec<_>>().join(", "));
    if json {
        println!("{obj}");
    }
    Ok(())
}

#[cfg(feature = "mpi")]
fn mpi_info(launch: Launch) -> anyhow::Result<Option<serde_json::Value>> {
    if launch != Launch::Mpi {
        return Ok(None);
    }
    let i = tessera::mpi::info().context("MPI was already initialised")?;
    Ok(Some(json!({
        "library": i.library,
        "standard": format!("{}.{}", i.standard.0, i.standard.1),
        "world_size": i.world_size,
        "rank": i.rank,
    })))
}

#[cfg(not(feature = "mpi"))]
fn mpi_info(_: Launch) -> anyhow::Result<Option<serde_json::Value>> {
    Ok(None)
}

fn demo(config: Config) -> anyhow::Result<()> {
    config.run(|client| -> anyhow::Result<()> {
        println!(
            "tessera demo: {} workers ({} threads) over the {} transport",
            client.workers().len(),
            client.total_threads(),
            client.transport()
        );
        for shape in [Shape::Wide, Shape::Chain, Shape::Tree] {
            let r = bench::overhead(client, shape, 20_000, 1)?;
            println!(
                "  {:<5} graph of {:>6} tasks: {:.3} s, {:.2} us/task (results checked)",
                format!("{:?}", r.shape).to_lowercase(),
                r.tasks,
                r.seconds,
                r.us_per_task
            );
        }
        Ok(())
    })
}

#[cfg(feature = "mpi")]
fn transfer(config: Config, mib: usize, repeat: usize, json: bool) -> anyhow::Result<()> {
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
    let bytes = mib << 20;
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
    let config = Config { scheduler_works: SchedulerWorks::No, ..config };
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
    println!(
        "transfer {mib} MiB rank 1 -> rank 2: tessera {:.4} s ({:.2} GiB/s); plain MPI send/recv {:.4} s ({:.2} GiB/s) into a reused buffer, {:.4} s into a fresh one; ratio {:.3} (reused), {:.3} (fresh) (median of {})",
        t, gib(t), p, gib(p), pf, p / t, pf / t, times.len()
    );
    if json {
        println!(
            "{}",
            json!({"bytes": bytes, "seconds": t, "gib_per_s": gib(t), "plain_seconds": p, "plain_gib_per_s": gib(p),
                   "plain_fresh_seconds": pf, "ratio": p / t, "ratio_fresh": pf / t, "repeat": times.len(), "transport": "mpi"})
        );
    }
    Ok(())
}

#[cfg(not(feature = "mpi"))]
fn transfer(_: Config, _: usize, _: usize, _: bool) -> anyhow::Result<()> {
    Err(tessera::Error::FeatureDisabled { feature: "mpi", what: "bench transfer".into() }.into())
}

#[cfg(feature = "mpi")]
fn mpi_hello() -> anyhow::Result<()> {
    use mpi::traits::*;
    let universe = mpi::initialize().context("MPI was already initialised")?;
    let world = universe.world();
    world.barrier();
    if world.rank() == 0 {
        println!("hello from {} MPI ranks", world.size());
    }
    Ok(())
}

#[cfg(not(feature = "mpi"))]
fn mpi_hello() -> anyhow::Result<()> {
    Err(tessera::Error::FeatureDisabled { feature: "mpi", what: "bench mpi-hello".into() }.into())
}

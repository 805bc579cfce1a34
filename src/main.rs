//! The `tessera` command.
//!
//! Every subcommand runs the same way on a laptop (an in-process local
//! cluster) and under `mpirun`/`srun` (rank 0 is scheduler and driver, the
//! other ranks are workers), detected from the environment. With
//! `--scheduler ADDR` (or `--scheduler-file F`) the computing commands run
//! as clients of a running elastic cluster (`tessera scheduler`, `tessera
//! worker`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// A line for a person: on stdout, or on stderr when stdout carries JSON
/// (`--json`: stdout is JSON and nothing else, so `tessera ... --json | jq` works).
macro_rules! say {
    ($json:expr, $($arg:tt)*) => {
        if $json {
            eprintln!($($arg)*)
        } else {
            println!($($arg)*)
        }
    };
}

mod arrays_cmd;

#[allow(unused_imports)]
use anyhow::{bail, Context};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::json;
use tessera::bench::{self, Shape};
use tessera::elastic::SchedulerFile;
use tessera::observe::Observe;
use tessera::runtime::gpu::{GpuMath, GpuSelect};
use tessera::runtime::host::topology::Bind;
use tessera::runtime::launch::elastic;
use tessera::runtime::scheduler::sim;
use tessera::runtime::transport::secret::{self, Secret};
use tessera::{Config, Launch, Progress, SchedulerWorks, TransportKind, WorkerSettings};

mod jobqueue_cmd;
mod logging;
mod values;

/// The scheduler allocates and frees a few small objects per task; mimalloc
/// does that in a fraction of glibc malloc's time (measured: docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Help headings of the options every command takes, apart from its own.
const CLUSTER: &str = "Cluster options";
const ELASTIC: &str = "Elastic cluster";
const DIAGNOSTICS: &str = "Diagnostics";

#[derive(Parser, Debug)]
#[command(name = "tessera", version, about = "A Rust runtime for HPC clusters", propagate_version = true)]
struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); overrides RUST_LOG.
    #[arg(help_heading = DIAGNOSTICS, long, global = true, value_name = "LEVEL")]
    log: Option<String>,

    /// Also write each process's log to a file of its own in DIR
    /// (`rank-R.log` under mpirun/srun, else `HOST-PID.log`), at INFO or finer.
    /// Before or after the subcommand, except that `jobqueue` and `bench scale`
    /// have a `--log-dir` of their own (for job scripts and output): there it
    /// goes before the subcommand (`tessera --log-dir DIR jobqueue ...`).
    #[arg(help_heading = DIAGNOSTICS, long, value_name = "DIR")]
    log_dir: Option<PathBuf>,

    #[command(flatten)]
    cluster: ClusterArgs,

    #[command(flatten)]
    observe: ObserveArgs,

    #[command(subcommand)]
    command: Command,
}

/// What the computing commands (svd, qr, matmul, demo, bench overhead) show and write about a run.
#[derive(Args, Debug, Clone)]
struct ObserveArgs {
    /// Write a performance report: one self-contained HTML file (task stream,
    /// transfers, memory per worker, time per kernel, where each thread ran).
    #[arg(help_heading = DIAGNOSTICS, long, global = true, value_name = "FILE.html")]
    report: Option<PathBuf>,

    /// Write a Chrome trace-event file (opens in Perfetto or chrome://tracing).
    #[arg(help_heading = DIAGNOSTICS, long, global = true, value_name = "FILE.json")]
    trace: Option<PathBuf>,

    /// No progress bar or progress lines (shown for computations longer than a second:
    /// a bar on a terminal, a log line every 5 s otherwise).
    #[arg(help_heading = DIAGNOSTICS, long, short, global = true)]
    quiet: bool,
}

#[derive(Args, Debug, Clone)]
struct ClusterArgs {
    /// Where to run: MPI when launched by mpirun/srun, else local (auto); or force one.
    #[arg(help_heading = CLUSTER, long, global = true, default_value = "auto", value_parser = values::parser::<values::LaunchArg, Launch>())]
    launch: Launch,

    /// Local cluster: number of workers [default: usable cores].
    #[arg(help_heading = CLUSTER, long, global = true, env = "TESSERA_WORKERS", value_parser = at_least_one)]
    workers: Option<usize>,

    /// Compute threads per worker [default: 1 locally, the rank's share of cores under MPI].
    #[arg(help_heading = CLUSTER, long, global = true, env = "TESSERA_THREADS", value_parser = at_least_one)]
    threads: Option<usize>,

    /// MPI: whether rank 0 (scheduler and driver) also runs a worker.
    #[arg(help_heading = CLUSTER, long, global = true, default_value = "auto", value_parser = values::parser::<values::SchedulerWorksArg, SchedulerWorks>())]
    scheduler_works: SchedulerWorks,

    /// MPI: seconds a worker rank may stay silent before the job is aborted.
    /// TCP: seconds a peer may stay silent before it is declared lost.
    #[arg(help_heading = CLUSTER, long, global = true, default_value_t = 30.0, env = "TESSERA_HEARTBEAT_TIMEOUT", value_parser = parse_secs,
          allow_negative_numbers = true)]
    heartbeat_timeout: f64,

    /// Elastic cluster: the scheduler's address (HOST:PORT); wins over any scheduler file.
    ///
    /// Every command finds the elastic cluster by one rule: --scheduler ADDR
    /// (or TESSERA_SCHEDULER), else --scheduler-file F (or
    /// TESSERA_SCHEDULER_FILE), else the default scheduler file
    /// (~/.config/tessera/scheduler.json) when it exists. svd, qr, matmul, demo
    /// and bench overhead skip the default file under mpirun/srun and with
    /// --launch local or mpi, and without a cluster run on the local cluster
    /// or MPI (their summary and --json name the transport: local, mpi or tcp);
    /// worker, workers, retire, bench scale and jobqueue scale/adapt need one.
    /// A default file whose scheduler ran on this host and is gone is ignored.
    #[arg(help_heading = ELASTIC, long, global = true, env = "TESSERA_SCHEDULER", value_name = "ADDR")]
    scheduler: Option<String>,

    /// Elastic cluster: the file `tessera scheduler` writes its address to
    /// (and where its secret is) [default: ~/.config/tessera/scheduler.json,
    /// used when it exists; see --scheduler for the rule].
    #[arg(help_heading = ELASTIC, long, global = true, env = "TESSERA_SCHEDULER_FILE", value_name = "FILE")]
    scheduler_file: Option<PathBuf>,

    /// Elastic cluster: the shared secret (created mode 0600 by `tessera scheduler`;
    /// refused if group or others can read it) [default: ~/.config/tessera/secret].
    #[arg(help_heading = ELASTIC, long, global = true, env = "TESSERA_SECRET_FILE", value_name = "FILE")]
    secret_file: Option<PathBuf>,

    /// Bind worker threads to cores: distinct cores per thread (core), the NUMA node
    /// of that core (numa), or not at all (none). auto: core when several MPI ranks
    /// share a host, else none. Needs the `hwloc` feature.
    #[arg(help_heading = CLUSTER, long, global = true, default_value = "auto", env = "TESSERA_BIND", value_parser = values::parser::<values::BindArg, Bind>())]
    bind: Bind,

    /// Workers record no events (what --report and --trace draw from); the baseline
    /// for measuring what recording costs.
    #[arg(help_heading = CLUSTER, long, global = true)]
    no_events: bool,

    /// How blocks move between workers: auto (the launch's own: in-process, MPI or
    /// TCP) or ucx (UCP: shared memory, TCP, InfiniBand, as UCX_TLS allows; control
    /// messages stay on MPI or TCP). Needs the `ucx` feature.
    #[arg(help_heading = CLUSTER, long, global = true, default_value = "auto", env = "TESSERA_TRANSPORT", value_parser = values::parser::<values::TransportArg, TransportKind>())]
    transport: TransportKind,

    /// GPU workers, one per GPU, beside the CPU workers: `all` (every GPU this
    /// process sees; none is no error), `none`, or device numbers like `0,1` (as
    /// numbered after CUDA_VISIBLE_DEVICES). Under MPI the working ranks of each host
    /// share its GPUs out, one each; `tessera worker` drives one. GEMM, random blocks
    /// and TSQR leaves then run on the GPUs. Needs the `cuda` feature.
    #[arg(help_heading = CLUSTER, long, global = true, default_value = "none", env = "TESSERA_GPUS")]
    gpus: GpuSelect,

    /// How GPU workers multiply f32 matrices: `exact` (IEEE f32, as on the CPU) or
    /// `tf32` (tensor cores with 10-bit-mantissa inputs: several times faster,
    /// relative error about 1e-3 instead of 1e-7). f64 is always exact.
    #[arg(help_heading = CLUSTER, long, global = true, default_value = "exact", env = "TESSERA_GPU_MATH")]
    gpu_math: GpuMath,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 2.0 => Ok(x),
        _ => Err(format!("`{s}` is not a number of seconds >= 2 (workers report every second)")),
    }
}

/// A count where 0 means nothing (workers, threads, tasks, repetitions).
pub(crate) fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

fn parse_size(s: &str) -> Result<usize, String> {
    match tessera::runtime::host::sys::parse_bytes(s) {
        Ok(0) => Err("must be more than zero bytes".to_owned()),
        Ok(n) => usize::try_from(n).map_err(|_| format!("`{s}` is too large")),
        Err(e) => Err(format!("`{s}`: {e}")),
    }
}

/// `bench simulate`: one simulation, one line of figures (and JSON).
fn simulate_bench(cfg: &sim::SimConfig, json: bool) -> anyhow::Result<()> {
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

impl ClusterArgs {
    /// What every worker is started with: the same for a cluster this
    /// process starts ([`ClusterArgs::config`]) and for `tessera worker`.
    fn worker_settings(&self) -> WorkerSettings {
        WorkerSettings {
            threads: self.threads,
            bind: self.bind,
            events: !self.no_events,
            transport: self.transport,
            gpus: self.gpus.clone(),
            gpu_math: self.gpu_math,
        }
    }

    /// The configuration of a computing command (svd, qr, matmul, demo, bench
    /// overhead, info): a client of the elastic cluster [`ClusterArgs::elastic`]
    /// finds, else a local or MPI cluster.
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = Config {
            launch: self.launch,
            workers: self.workers,
            scheduler_works: self.scheduler_works,
            heartbeat_timeout: std::time::Duration::from_secs_f64(self.heartbeat_timeout),
            secret_file: self.secret_file.clone(),
            worker: self.worker_settings(),
            ..Config::default()
        };
        if let Some(found) = self.elastic(Need::IfAny)? {
            if let Found::DefaultFile(path) = &found.from {
                eprintln!(
                    "tessera: running on the elastic cluster at {} (from the scheduler file {}; --launch local runs locally)",
                    found.address,
                    path.display()
                );
            }
            config.scheduler = Some(found.address);
            config.secret_file = Some(found.secret_file);
        }
        Ok(config)
    }

    /// The elastic cluster the flags, the environment or the default scheduler
    /// file name: one rule for every command (stated in `--scheduler`'s help).
    /// `need` says whether the command needs one (an error when none is found)
    /// or runs without (then the default file counts only outside mpirun/srun
    /// and without an explicit --launch).
    fn elastic(&self, need: Need) -> anyhow::Result<Option<Elastic>> {
        let secret = |from_file: PathBuf| self.secret_file.clone().unwrap_or(from_file);
        if let Some(addr) = &self.scheduler {
            return Ok(Some(Elastic {
                address: addr.clone(),
                secret_file: secret(secret::default_path()),
                from: Found::Address,
            }));
        }
        if let Some(path) = &self.scheduler_file {
            let file = SchedulerFile::read(path).context("--scheduler-file (or TESSERA_SCHEDULER_FILE)")?;
            return Ok(Some(Elastic {
                address: file.address,
                secret_file: secret(file.secret_file),
                from: Found::File(path.clone()),
            }));
        }
        let path = SchedulerFile::default_path();
        let skip = need == Need::IfAny
            && (self.launch != Launch::Auto || tessera::runtime::host::launcher::mpi_launch_size().is_some());
        if skip || !path.exists() {
            if need == Need::Required {
                bail!(
                    "no elastic cluster: give --scheduler ADDR or --scheduler-file FILE, or start `tessera scheduler` \
                     (which writes the default scheduler file {})",
                    path.display()
                );
            }
            return Ok(None);
        }
        let file = SchedulerFile::read(&path).with_context(|| {
            format!(
                "the default scheduler file exists; remove {} or give --launch local to run locally",
                path.display()
            )
        })?;
        if file.is_gone() {
            eprintln!(
                "tessera: ignoring the scheduler file {}: its scheduler (pid {} on this host) has exited",
                path.display(),
                file.pid
            );
            if need == Need::Required {
                bail!("no elastic cluster: the scheduler of {} has exited; start `tessera scheduler`", path.display());
            }
            return Ok(None);
        }
        Ok(Some(Elastic {
            address: file.address,
            secret_file: secret(file.secret_file),
            from: Found::DefaultFile(path),
        }))
    }

    /// The scheduler to join and the secret to use, for the commands that need
    /// an elastic cluster (see [`ClusterArgs::elastic`]).
    fn scheduler_address(&self) -> anyhow::Result<(String, PathBuf)> {
        let found = self.elastic(Need::Required)?.expect("required");
        Ok((found.address, found.secret_file))
    }

    /// The scheduler file: `--scheduler-file`, else the default one.
    fn scheduler_file_path(&self) -> PathBuf {
        self.scheduler_file.clone().unwrap_or_else(SchedulerFile::default_path)
    }

    fn tcp_options(&self, secret: Secret) -> tessera::runtime::transport::tcp::TcpOptions {
        let mut tcp = tessera::runtime::transport::tcp::TcpOptions::new(secret);
        tcp.dead_after = Duration::from_secs_f64(self.heartbeat_timeout);
        tcp
    }
}

/// Whether a command needs an elastic cluster or runs without one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Required,
    IfAny,
}

/// Where [`ClusterArgs::elastic`] found the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Found {
    /// --scheduler ADDR or TESSERA_SCHEDULER.
    Address,
    /// --scheduler-file F or TESSERA_SCHEDULER_FILE.
    File(PathBuf),
    /// The default scheduler file, which exists.
    DefaultFile(PathBuf),
}

/// An elastic cluster to join.
#[derive(Clone, Debug)]
struct Elastic {
    address: String,
    secret_file: PathBuf,
    from: Found,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Version, compiled features, MPI library and world, cores and memory.
    Info {
        /// Print one JSON object (and nothing else on stdout).
        #[arg(long)]
        json: bool,
    },
    /// Runs a small randomized SVD and a matmul on the cluster, checks them and prints what they took.
    Demo {
        /// Print one JSON object on stdout (the text goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Singular value decomposition: exact (TSQR) or randomized; writes /U, /S, /VT.
    Svd(arrays_cmd::SvdArgs),
    /// QR decomposition of a tall-and-skinny (or short-and-fat) matrix; writes /Q, /R.
    #[command(mut_arg("seed", |a| a.help("Seed of the random input.")))]
    Qr(arrays_cmd::QrArgs),
    /// Blocked matrix product C = A @ B; writes C.
    Matmul(arrays_cmd::MatmulArgs),
    /// Runs the scheduler of an elastic cluster: listens for workers
    /// (`tessera worker`) and clients (`tessera demo --scheduler ADDR`) until
    /// SIGTERM or Ctrl-C, then stops its workers.
    Scheduler {
        /// Where to listen: HOST:PORT, :PORT, or 0.0.0.0:PORT (every interface)
        /// [default: this host's routable address, a free port].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Take the address workers use from this network interface (e.g. ib0, eth0).
        #[arg(long, value_name = "NAME")]
        interface: Option<String>,
        /// Status as JSON lines on stdout: one object when listening, one when stopped.
        #[arg(long)]
        json: bool,
    },
    /// Joins an elastic cluster as a worker and runs its tasks until the
    /// scheduler stops it; drains first (hands its blocks to other workers)
    /// at the end of --lifetime or on SIGTERM, then exits 0.
    Worker {
        /// Seconds after which to drain and leave (a batch job's walltime minus a margin).
        #[arg(long, value_name = "SECS", value_parser = parse_duration, allow_negative_numbers = true)]
        lifetime: Option<f64>,
        /// Move the lifetime by a random amount up to this many seconds either
        /// way, so the workers of one batch do not all leave at once.
        #[arg(long, value_name = "SECS", default_value_t = 0.0, value_parser = parse_duration, allow_negative_numbers = true)]
        lifetime_stagger: f64,
        /// Seconds a drain may take before the worker leaves anyway.
        #[arg(long, value_name = "SECS", default_value_t = 120.0, value_parser = parse_duration, allow_negative_numbers = true)]
        drain_timeout: f64,
        /// Listen for peer workers on this interface [default: the one that reaches the scheduler].
        #[arg(long, value_name = "NAME")]
        interface: Option<String>,
        /// What the worker calls itself in `tessera workers` [default: the batch job's id
        /// from SLURM_JOB_ID, PBS_JOBID or JOB_ID].
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Print one JSON object on stdout when the worker ends (its rank, whether it drained, why it stopped).
        #[arg(long)]
        json: bool,
    },
    /// Lists the workers of a running elastic cluster (--scheduler or --scheduler-file).
    Workers {
        /// Print one JSON object (and nothing else on stdout).
        #[arg(long)]
        json: bool,
    },
    /// Retires workers of a running elastic cluster gracefully: they finish their
    /// tasks, hand their blocks to the others and exit 0. Returns once they have left.
    Retire {
        /// Worker ranks, or worker names (batch job ids) as `tessera workers` shows them.
        #[arg(required = true, value_name = "RANK|NAME")]
        which: Vec<String>,
        /// Print one JSON object on stdout (the text goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Batch jobs: scripts, submit, status, wait, cancel, list (Slurm, PBS, Torque, SGE).
    Jobqueue(Box<jobqueue_cmd::JobqueueArgs>),
    /// Shell completions on stdout, e.g.
    /// `tessera completions bash > ~/.local/share/bash-completion/completions/tessera`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Writes the man pages, tessera.1 and one per subcommand (tessera-svd.1,
    /// tessera-jobqueue-submit.1, ...), into DIR, e.g. ~/.local/share/man/man1.
    Man {
        /// Directory to write the pages to (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Per-task scheduling overhead on trivial tasks.
    Overhead {
        /// Number of tasks in the graph.
        #[arg(long, default_value_t = 100_000, value_parser = at_least_one)]
        tasks: usize,
        /// Graph shape.
        #[arg(long, value_enum, default_value = "wide")]
        shape: Shape,
        /// Repetitions; the median is reported.
        #[arg(long, default_value_t = 3, value_parser = at_least_one)]
        repeat: usize,
        /// Print one JSON object on stdout (the text goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Block transfer between the workers on ranks 1 and 2 (MPI, at least 3 ranks),
    /// against a plain MPI send/recv of the same size in the same run.
    Transfer {
        /// Block size in MiB.
        #[arg(long, default_value_t = 64, value_parser = at_least_one)]
        mib: usize,
        /// Block size in bytes, or with a unit: KiB, MiB, GiB or KB, MB, GB (instead of --mib).
        #[arg(long, conflicts_with = "mib", value_parser = parse_size)]
        size: Option<usize>,
        /// Repetitions; the median is reported.
        #[arg(long, default_value_t = 5, value_parser = at_least_one)]
        repeat: usize,
        /// Print one JSON object on stdout (the text goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Blocks between two UCP workers of this process: a bare UCP probe against
    /// Tessera's UCX plane, in one run (needs `ucx`; set UCX_TLS to choose transports).
    Ucx {
        /// Block sizes: bytes, or with a unit, KiB, MiB, GiB or KB, MB, GB (8 B: ping-pong
        /// latency; larger: streaming bandwidth).
        #[arg(long, value_delimiter = ',', default_value = "8,1MiB,64MiB", value_parser = parse_size)]
        sizes: Vec<usize>,
        /// Repetitions; the median is reported.
        #[arg(long, default_value_t = 5, value_parser = at_least_one)]
        repeat: usize,
        /// Print one JSON object per size on stdout, a line each (the text goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// MPI start-up reference: initialise, barrier, finalise (needs `mpi`).
    MpiHello {
        /// Print one JSON object on stdout (ranks and seconds) instead of the text.
        #[arg(long)]
        json: bool,
    },
    /// One matrix product at full speed. Without --gpus: faer on this process's
    /// cores, the ceiling for blocked products. With --gpus (needs `cuda`): on the
    /// first GPU selected, cuBLAS called directly against the same product through
    /// a Tessera GPU worker (a local cluster of one CPU and one GPU worker), in one run.
    Gemm {
        /// Rows of A and C [default: --n].
        #[arg(long, value_parser = at_least_one)]
        m: Option<usize>,
        /// Columns of A, rows of B [default: --n].
        #[arg(long, value_parser = at_least_one)]
        k: Option<usize>,
        /// Columns of B and C; alone, the size of square matrices [default: 4096, with --gpus 8192].
        #[arg(long, value_parser = at_least_one)]
        n: Option<usize>,
        /// Element type: f64, f32, or both (one measurement each).
        #[arg(long, value_enum, default_value = "f64")]
        dtype: bench::GemmDtype,
        /// Threads of the CPU product [default: usable cores].
        #[arg(long, value_parser = at_least_one)]
        cores: Option<usize>,
        /// Timed products after one warm-up; the median is reported [default: 3, with --gpus 5].
        #[arg(long, value_parser = at_least_one)]
        repeat: Option<usize>,
        /// With --gpus: seed of the random (standard normal) operands.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print one JSON object per element type on stdout, a line each (the text goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Elastic workers through the job queue (a running scheduler without
    /// workers: --scheduler or --scheduler-file): 0 -> N workers while a graph
    /// waits (time until all joined), N -> 1 in the middle of it (time until
    /// the others left and their jobs ended), 1 -> 0; every task counted once.
    Scale {
        /// Workers to scale up to.
        #[arg(long, default_value_t = 4, value_parser = at_least_one)]
        workers: usize,
        /// Sleep tasks in each run's graph (plus as many small ones and a sum).
        #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..))]
        tasks: u32,
        /// Milliseconds each sleep task takes.
        #[arg(long, default_value_t = 20)]
        ms: u64,
        /// Repetitions; the median is reported.
        #[arg(long, default_value_t = 3, value_parser = at_least_one)]
        repeat: usize,
        /// Where the worker jobs' scripts and output go (a directory per run).
        #[arg(long, value_name = "DIR", default_value = "tessera-bench-scale")]
        log_dir: PathBuf,
        /// Print one JSON object on stdout (the text goes to stderr).
        #[arg(long)]
        json: bool,
        /// Flags for `tessera jobqueue scale` (the worker jobs), after `--`:
        /// e.g. -- --system slurm --cores-per-task 1 --walltime 00:10:00.
        #[arg(last = true, value_name = "JOBQUEUE FLAGS")]
        jobqueue: Vec<String>,
    },
    /// The scheduler's core driving simulated workers on virtual time: its CPU
    /// cost per task, the makespan against its lower bound, its memory per task.
    Simulate {
        /// Simulated workers.
        #[arg(long, default_value_t = 100, allow_hyphen_values = true, value_parser = at_least_one)]
        workers: usize,
        /// Compute threads per simulated worker.
        #[arg(long, default_value_t = 32, allow_hyphen_values = true, value_parser = at_least_one)]
        threads: usize,
        /// Tasks in the graph (shapes round to whole blocks).
        #[arg(long, default_value_t = 100_000, allow_hyphen_values = true, value_parser = at_least_one)]
        tasks: usize,
        /// Graph shape.
        #[arg(long, default_value = "wide", value_parser = values::parser::<values::SimShapeArg, sim::Shape>())]
        shape: sim::Shape,
        /// Mean task duration in microseconds (each task: 0.5 to 1.5 times it, from the seed).
        #[arg(long, default_value_t = 1000.0, allow_hyphen_values = true)]
        task_us: f64,
        /// Bytes per second between two workers (10GB, 1GiB, ...).
        #[arg(long, default_value = "10GB", value_parser = parse_size)]
        bandwidth: usize,
        /// One-way message latency in microseconds.
        #[arg(long, default_value_t = 10.0, allow_hyphen_values = true)]
        latency: f64,
        /// Bytes of each block (1MiB, 64KiB, ...).
        #[arg(long, default_value = "1MiB", value_parser = parse_size)]
        block_bytes: usize,
        /// Tasks queued on a worker beyond one per thread.
        #[arg(long, default_value_t = 4)]
        queue_extra: u32,
        /// Seed of the task durations: same seed, same schedule.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Runs of the same graph in one process; the core's cost reported
        /// is the lowest (the first also faults in fresh memory).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Print one JSON object on stdout (the text goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Elastic scale-up and drain on this host: N `tessera worker` processes
    /// join a scheduler on 127.0.0.1 (time until all have joined), then all
    /// but one drain, handing their blocks to the last (time until they left).
    Elastic {
        /// Workers to start.
        #[arg(long, default_value_t = 4, value_parser = at_least_one)]
        workers: usize,
        /// MiB of blocks each worker holds when the drain starts.
        #[arg(long, default_value_t = 16, value_parser = at_least_one)]
        mib: usize,
        /// Repetitions; the median is reported.
        #[arg(long, default_value_t = 3, value_parser = at_least_one)]
        repeat: usize,
        /// Print one JSON object on stdout (the text goes to stderr).
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("`{s}` is not a number of seconds >= 0")),
    }
}

/// The id of `--log-dir` given after the subcommand.
const LOG_DIR_AFTER: &str = "log_dir_after";

/// The command line: [`Cli`], with `--log-dir` accepted after every
/// subcommand that has none of its own. Not clap's `global`: a global
/// argument takes its value from any argument of the same id below it, and
/// the `--log-dir` of `jobqueue` and `bench scale` means their job logs.
fn command() -> clap::Command {
    let cmd = Cli::command();
    let arg = cmd.get_arguments().find(|a| a.get_id() == "log_dir").expect("Cli has --log-dir").clone();
    fn add(cmd: clap::Command, arg: &clap::Arg) -> clap::Command {
        let names: Vec<String> = cmd.get_subcommands().map(|c| c.get_name().to_owned()).collect();
        names.into_iter().fold(cmd, |cmd, name| {
            cmd.mut_subcommand(name, |sub| {
                let own = sub.get_name() == "jobqueue" || sub.get_arguments().any(|a| a.get_long() == Some("log-dir"));
                if own {
                    sub
                } else {
                    add(sub.arg(arg.clone()), arg)
                }
            })
        })
    }
    add(cmd, &arg.id(LOG_DIR_AFTER))
}

/// Parses the command line (exit 2 with clap's message on a usage error).
fn parse() -> Cli {
    let matches = command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The last --log-dir given wins, as for any flag.
    let mut m = &matches;
    while let Some((_, sub)) = m.subcommand() {
        if let Ok(Some(dir)) = sub.try_get_one::<PathBuf>(LOG_DIR_AFTER) {
            cli.log_dir = Some(dir.clone());
        }
        m = sub;
    }
    let (name, input) = match &cli.command {
        Command::Svd(a) => ("svd", &a.input),
        Command::Qr(a) => ("qr", &a.input),
        _ => return cli,
    };
    if input.input.is_none() && input.random.is_none() {
        let mut cmd = command();
        cmd.build(); // names the subcommand in its usage line
        let sub = cmd.find_subcommand_mut(name).expect("a subcommand");
        sub.error(clap::error::ErrorKind::MissingRequiredArgument, "give FILE.h5:/DATASET or --random MxN").exit();
    }
    cli
}

fn main() -> ExitCode {
    // A reader that goes away (`tessera info | head -3`) ends the command
    // quietly, as it ends any Unix tool: SIGPIPE back to its default action.
    // Simpler and more robust than checking every `println!` for EPIPE; the
    // runtime's sockets do not raise it (see `default_sigpipe`), and MPI and
    // UCX are C libraries, at home in a process with the default action.
    tessera::runtime::host::sys::default_sigpipe();
    let cli = parse();
    // The long-running roles log their lifecycle (joins, drains) by default.
    let quiet = if matches!(cli.command, Command::Scheduler { .. } | Command::Worker { .. }) { "info" } else { "warn" };
    if let Err(e) = logging::init(cli.log.as_deref(), quiet, cli.log_dir.as_deref()) {
        eprintln!("tessera: error: {e:#}");
        return ExitCode::FAILURE;
    }
    if let Command::Jobqueue(args) = cli.command {
        return jobqueue_cmd::main(*args, &cli.cluster);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let args = cli.cluster.clone();
    match cli.command {
        Command::Scheduler { listen, interface, json } => {
            return scheduler(&args, listen.as_deref().unwrap_or_default(), interface, json)
        }
        Command::Worker { lifetime, lifetime_stagger, drain_timeout, interface, name, json } => {
            return worker(&args, lifetime, lifetime_stagger, drain_timeout, interface, name, json)
        }
        Command::Workers { json } => return list_workers(&args, json),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut command(), "tessera", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man { dir } => return man_pages(&dir),
        Command::Retire { which, json } => return retire(&args, &which, json),
        Command::Bench(BenchCommand::Elastic { workers, mib, repeat, json }) => {
            return elastic_bench(&args, workers, mib, repeat, json)
        }
        Command::Bench(BenchCommand::Scale { workers, tasks, ms, repeat, log_dir, json, jobqueue }) => {
            return scale_bench(&args, workers, tasks, ms, repeat, &log_dir, json, &jobqueue)
        }
        Command::Bench(BenchCommand::Simulate {
            workers,
            threads,
            tasks,
            shape,
            task_us,
            bandwidth,
            latency,
            block_bytes,
            queue_extra,
            seed,
            runs,
            json,
        }) => {
            let cfg = sim::SimConfig {
                workers,
                threads: u32::try_from(threads).context("--threads: at most 4294967295")?,
                tasks,
                shape,
                task_us,
                bandwidth: bandwidth as f64,
                latency_us: latency,
                block_bytes: block_bytes as u64,
                queue_extra,
                seed,
                runs,
            };
            return simulate_bench(&cfg, json);
        }
        _ => {}
    }
    let mut config = if matches!(cli.command, Command::Info { .. }) {
        // Info joins no cluster; it says which one the others would use.
        Config { launch: args.launch, ..Config::default() }
    } else {
        args.config()?
    };
    config.progress = if cli.observe.quiet { Progress::Off } else { Progress::Auto };
    let observe = Observe {
        report: cli.observe.report.clone(),
        trace: cli.observe.trace.clone(),
        command: ["tessera".to_owned()]
            .into_iter()
            .chain(std::env::args().skip(1).map(|a| tessera::jobqueue::shell_quote(&a)))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let computes = matches!(
        cli.command,
        Command::Demo { .. }
            | Command::Svd(_)
            | Command::Qr(_)
            | Command::Matmul(_)
            | Command::Bench(BenchCommand::Overhead { .. })
    );
    if observe.wanted() && !computes {
        bail!("--report and --trace go with a computing command: svd, qr, matmul, demo or bench overhead");
    }
    match cli.command {
        Command::Info { json } => info(&config, json, elastic_json(&args)),
        Command::Demo { json } => arrays_cmd::demo(config, &observe, json),
        Command::Svd(args) => arrays_cmd::svd(config, &observe, args),
        Command::Qr(args) => arrays_cmd::qr(config, &observe, args),
        Command::Matmul(args) => arrays_cmd::matmul(config, &observe, args),
        Command::Bench(BenchCommand::Overhead { tasks, shape, repeat, json }) => {
            config.progress = Progress::Off; // the figure is the scheduler's alone
            let r = observe.run(config, |client| {
                arrays_cmd::wait_for_a_worker(client)?;
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
        Command::Bench(BenchCommand::Transfer { mib, size, repeat, json }) => {
            transfer(config, size.unwrap_or(mib << 20), repeat, json)
        }
        Command::Bench(BenchCommand::MpiHello { json }) => mpi_hello(json),
        Command::Bench(BenchCommand::Ucx { sizes, repeat, json }) => ucx_bench(&sizes, repeat, json),
        Command::Bench(BenchCommand::Gemm { m, k, n, dtype, cores, repeat, seed, json }) => {
            gemm_bench(config, [m, k, n], dtype, cores, repeat, seed, json)
        }
        Command::Scheduler { .. }
        | Command::Worker { .. }
        | Command::Workers { .. }
        | Command::Retire { .. }
        | Command::Bench(BenchCommand::Elastic { .. })
        | Command::Bench(BenchCommand::Scale { .. })
        | Command::Bench(BenchCommand::Simulate { .. })
        | Command::Completions { .. }
        | Command::Man { .. } => unreachable!("handled above"),
        Command::Jobqueue(_) => unreachable!("handled in main"),
    }
}

/// `tessera man DIR`: the man pages of every command, from the same
/// definitions as `--help`.
fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the man page directory {}", dir.display()))?;
    clap_mangen::generate_to(command(), dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    let pages = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name().to_string_lossy().starts_with("tessera") && e.path().extension().is_some_and(|x| x == "1")
        })
        .count();
    eprintln!(
        "tessera: {pages} man pages in {} (`man tessera` finds them when DIR is a man1 directory on MANPATH)",
        dir.display()
    );
    Ok(())
}

/// `tessera scheduler`: listen, write the scheduler file, serve until a signal.
fn scheduler(args: &ClusterArgs, listen: &str, interface: Option<String>, json: bool) -> anyhow::Result<()> {
    let secret_path = args.secret_file.clone().unwrap_or_else(secret::default_path);
    let secret = Secret::load_or_create(&secret_path)?;
    let file_path = args.scheduler_file.clone().unwrap_or_else(SchedulerFile::default_path);
    let stop = tessera::runtime::host::sys::termination_flag();
    let opts = elastic::SchedulerOptions {
        listen: listen.to_owned(),
        interface,
        ..elastic::SchedulerOptions::new(args.tcp_options(secret))
    };
    let server = elastic::Scheduler::start(opts)?;
    let addr = server.address().to_owned();
    SchedulerFile::new(&addr, &secret_path).write(&file_path)?;
    if json {
        println!(
            "{}",
            json!({"event": "listening", "address": addr, "secret_file": secret_path, "scheduler_file": file_path,
                   "pid": std::process::id()})
        );
    } else {
        println!("tessera scheduler listening on {addr}");
        println!("  secret file:    {} (mode 0600; workers and clients need to read it)", secret_path.display());
        println!("  scheduler file: {}", file_path.display());
        println!("  workers join:   tessera worker --scheduler {addr} --secret-file {}", secret_path.display());
        println!("  clients run:    tessera demo --scheduler {addr} --secret-file {}", secret_path.display());
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("stopping: telling the workers to stop");
    server.shutdown();
    SchedulerFile::remove_if_mine(&file_path);
    if json {
        println!("{}", json!({"event": "stopped", "address": addr}));
    } else {
        println!("tessera scheduler stopped");
    }
    Ok(())
}

/// `tessera worker`: join, work, drain on lifetime or SIGTERM, exit.
fn worker(
    args: &ClusterArgs,
    lifetime: Option<f64>,
    stagger: f64,
    drain_timeout: f64,
    interface: Option<String>,
    name: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let (addr, secret_path) = args.scheduler_address()?;
    let secret = Secret::load(&secret_path)?;
    let mut opts = elastic::WorkerOptions::new(&addr, args.tcp_options(secret));
    opts.worker = args.worker_settings();
    opts.lifetime = lifetime.map(Duration::from_secs_f64);
    opts.lifetime_stagger = Duration::from_secs_f64(stagger);
    opts.drain_timeout = Duration::from_secs_f64(drain_timeout);
    opts.interface = interface;
    opts.drain_on_signal = true;
    if let Some(n) = name {
        opts.name = n;
    }
    let report = elastic::run_worker(opts)?;
    if json {
        let (stopped, failed, reason) = match &report.exit {
            tessera::runtime::WorkerExit::Shutdown { failed, reason } => ("shutdown", *failed, Some(reason.as_str())),
            tessera::runtime::WorkerExit::Disconnected => ("disconnected", true, None),
        };
        println!(
            "{}",
            json!({"event": "stopped", "rank": report.rank, "scheduler": addr, "drained": report.drained,
                   "drain_cause": report.drain_cause, "stopped": stopped, "failed": failed, "reason": reason})
        );
    }
    match report.exit {
        tessera::runtime::WorkerExit::Shutdown { failed: false, ref reason } => {
            tracing::info!(rank = report.rank, drained = report.drained, cause = ?report.drain_cause, %reason, "done");
            Ok(())
        }
        tessera::runtime::WorkerExit::Shutdown { failed: true, reason } => {
            bail!("the scheduler at {addr} stopped this worker (rank {}): {reason}", report.rank)
        }
        tessera::runtime::WorkerExit::Disconnected => bail!("worker rank {} lost its inbox", report.rank),
    }
}

/// A client of the elastic cluster the flags name.
fn connect(args: &ClusterArgs) -> anyhow::Result<elastic::RemoteClient> {
    let (addr, secret_path) = args.scheduler_address()?;
    Ok(elastic::connect(&addr, args.tcp_options(Secret::load(&secret_path)?))?)
}

fn worker_json(w: &tessera::WorkerInfo) -> serde_json::Value {
    json!({"rank": w.rank, "name": w.name, "host": w.host, "threads": w.threads, "gpu": w.gpu})
}

/// `tessera workers`: the workers that take tasks now.
fn list_workers(args: &ClusterArgs, json: bool) -> anyhow::Result<()> {
    let client = connect(args)?;
    let workers = client.try_workers()?;
    if json {
        println!("{}", json!({"workers": workers.iter().map(worker_json).collect::<Vec<_>>()}));
        return Ok(());
    }
    println!("{} workers", workers.len());
    for w in &workers {
        let gpu = if w.gpu.is_empty() { String::new() } else { format!(", {}", w.gpu) };
        println!("  rank {:>4}  {:<16} {} threads on {}{gpu}", w.rank, w.name, w.threads, w.host);
    }
    Ok(())
}

/// `tessera retire`: drains the workers named by rank or name.
fn retire(args: &ClusterArgs, which: &[String], json: bool) -> anyhow::Result<()> {
    let client = connect(args)?;
    let workers = client.try_workers()?;
    let mut ranks = Vec::new();
    for w in which {
        let found: Vec<u32> =
            workers.iter().filter(|x| x.name == *w || x.rank.to_string() == *w).map(|x| x.rank).collect();
        if found.is_empty() {
            let known: Vec<String> = workers.iter().map(|x| format!("{} ({})", x.rank, x.name)).collect();
            bail!("no worker with rank or name `{w}`; the workers are: {}", known.join(", "));
        }
        ranks.extend(found);
    }
    ranks.sort_unstable();
    ranks.dedup();
    let start = std::time::Instant::now();
    let left = client.retire_workers(&ranks)?;
    say!(json, "retired {} workers in {:.3} s: ranks {left:?}", left.len(), start.elapsed().as_secs_f64());
    if json {
        println!("{}", json!({"retired": left, "seconds": start.elapsed().as_secs_f64()}));
    }
    Ok(())
}

/// `tessera bench gemm`: faer on the cores, or with `--gpus` cuBLAS directly
/// against a Tessera GPU worker (see [`bench::gpu_gemm`]).
fn gemm_bench(
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

fn elastic_bench(args: &ClusterArgs, workers: usize, mib: usize, repeat: usize, json: bool) -> anyhow::Result<()> {
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
fn scale_bench(
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

/// The elastic cluster the computing commands would use, for `info`.
fn elastic_json(args: &ClusterArgs) -> serde_json::Value {
    match args.elastic(Need::IfAny) {
        Ok(None) => serde_json::Value::Null,
        Ok(Some(Elastic { address, secret_file, from })) => {
            let from = match from {
                Found::Address => json!({"flag": "--scheduler"}),
                Found::File(f) => json!({"scheduler_file": f}),
                Found::DefaultFile(f) => json!({"default_scheduler_file": f}),
            };
            json!({"address": address, "secret_file": secret_file, "from": from})
        }
        Err(e) => json!({"error": format!("{e:#}")}),
    }
}

fn info(config: &Config, json: bool, elastic: serde_json::Value) -> anyhow::Result<()> {
    let features = tessera::observe::features();
    let (mem_total, mem_avail) = tessera::runtime::host::sys::memory().unwrap_or((0, 0));
    let launch = config.resolve_launch()?;
    let mpi = mpi_info(launch)?;
    if mpi.as_ref().is_some_and(|m| m["rank"] != 0) {
        return Ok(()); // rank 0 speaks for the job
    }
    let registry = tessera::Registry::builtin();
    let mut transports = vec!["local", "tcp"];
    if tessera::HAS_MPI {
        transports.push("mpi");
    }
    if tessera::HAS_UCX {
        transports.push("ucx (blocks; --transport ucx)");
    }
    let ucx = ucx_info();
    let gpu = tessera::runtime::gpu::probe();
    let gpus_json = match &gpu {
        tessera::runtime::gpu::Probe::Found { driver, devices, libraries } => json!({
            "driver": format!("{}.{}", driver.0, driver.1),
            "devices": devices.iter().map(|d| json!({"ordinal": d.ordinal, "name": d.name, "memory_bytes": d.total_bytes,
                "free_bytes": d.free_bytes, "compute_capability": format!("{}.{}", d.capability.0, d.capability.1)})).collect::<Vec<_>>(),
            "libraries": libraries.iter().map(|(l, ok)| json!({"name": l, "loads": ok})).collect::<Vec<_>>(),
        }),
        other => json!({"unavailable": other.describe().join("; ")}),
    };
    let interfaces: Vec<serde_json::Value> = tessera::runtime::host::sys::interfaces()
        .into_iter()
        .map(|(name, ip, lo)| json!({"name": name, "ipv4": ip.to_string(), "loopback": lo}))
        .collect();
    let routable = tessera::runtime::host::sys::routable_address(None).map(|a| a.to_string()).unwrap_or_default();
    let (topologies, hosts) = match &mpi {
        Some(m) => (m["topologies"].clone(), m["hosts"].clone()),
        None => match tessera::runtime::host::topology::detect() {
            Ok(t) => (json!([t]), json!([t.host])),
            Err(e) => (json!([]), json!({"unavailable": e.to_string()})),
        },
    };
    let obj = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "topology": topologies,
        "rank_hosts": hosts,
        "binding": if tessera::runtime::HAS_HWLOC { "available (--bind auto|core|numa|none)" } else { "unavailable in this build (rebuild with --features hwloc)" },
        "features": features,
        "transports": transports,
        "ucx": ucx,
        "gpus": gpus_json,
        "tcp": {"routable_address": routable, "interfaces": interfaces,
                "secret_file": secret::default_path(), "scheduler_file": SchedulerFile::default_path()},
        "launch": format!("{launch:?}").to_lowercase(),
        "elastic": elastic,
        "mpi": mpi,
        "launched_by": tessera::runtime::host::launcher::describe_mpi_launch(),
        "host": tessera::runtime::host::sys::hostname(),
        "cores": tessera::runtime::host::sys::host_cores(),
        "usable_cores": tessera::runtime::host::sys::usable_cores(),
        "memory_bytes": mem_total,
        "memory_available_bytes": mem_avail,
        "kernels": registry.names().collect::<Vec<_>>(),
    });
    if json {
        println!("{obj}");
        return Ok(());
    }
    println!("tessera {}", env!("CARGO_PKG_VERSION"));
    println!(
        "  features:  {}",
        if features.is_empty() { "(none: local and TCP clusters)".into() } else { features.join(", ") }
    );
    if !tessera::HAS_MPI {
        println!("  mpi:       not compiled in (rebuild with --features mpi)");
    }
    if !tessera::linalg::HAS_HDF5 {
        println!("  hdf5:      not compiled in (rebuild with --features hdf5)");
    }
    match &obj["mpi"] {
        serde_json::Value::Null if tessera::HAS_MPI => println!(
            "  mpi:       {} (not launched by mpirun/srun)",
            obj["mpi_library"].as_str().unwrap_or("available")
        ),
        serde_json::Value::Null => {}
        m => println!(
            "  mpi:       {}; world size {}; CUDA-aware: {} (blocks between GPU workers go through host memory)",
            m["library"].as_str().unwrap_or("?"),
            m["world_size"],
            match m["cuda_aware"].as_bool() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "the library does not say",
            }
        ),
    }
    println!("  transports: {} (tcp: elastic workers, `tessera scheduler` / `tessera worker`)", transports.join(", "));
    match &ucx {
        serde_json::Value::Null => println!("  ucx:       not compiled in (rebuild with --features ucx)"),
        u if u["error"].is_string() => println!("  ucx:       {}", u["error"].as_str().unwrap_or("")),
        u => println!(
            "  ucx:       {} (UCX_TLS={}): {}",
            u["version"].as_str().unwrap_or("?"),
            u["tls"].as_str().unwrap_or("?"),
            u["resources"]
                .as_array()
                .map(|r| r.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        ),
    }
    let mut gpu_lines = gpu.describe().into_iter();
    println!("  gpus:      {}", gpu_lines.next().unwrap_or_default());
    for line in gpu_lines {
        println!("             {line}");
    }
    println!(
        "  tcp:       workers would reach this host at {routable}; interfaces: {}",
        tessera::runtime::host::sys::interfaces()
            .iter()
            .map(|(n, ip, _)| format!("{n} {ip}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  launch:    {}", obj["launch"].as_str().unwrap_or("?"));
    match &obj["elastic"] {
        serde_json::Value::Null => println!("  elastic:   none (computing commands run on the launch's cluster)"),
        e if e["error"].is_string() => println!("  elastic:   {}", e["error"].as_str().unwrap_or("")),
        e => println!("  elastic:   the scheduler at {} ({})", e["address"].as_str().unwrap_or("?"), e["from"]),
    }
    println!("  host:      {}", obj["host"].as_str().unwrap_or("?"));
    println!("  cores:     {} ({} usable by this process)", obj["cores"], obj["usable_cores"]);
    println!(
        "  memory:    {:.1} GiB ({:.1} GiB available)",
        mem_total as f64 / (1u64 << 30) as f64,
        mem_avail as f64 / (1u64 << 30) as f64
    );
    match obj["topology"].as_array() {
        Some(hosts) if !hosts.is_empty() => {
            for t in hosts {
                let t: tessera::runtime::host::topology::HostTopology = serde_json::from_value(t.clone())?;
                println!("  topology:  {}", t.describe().replace('\n', "\n             "));
            }
        }
        _ => println!(
            "  topology:  not read: {}",
            tessera::runtime::host::topology::detect().err().map(|e| e.to_string()).unwrap_or_default()
        ),
    }
    println!("  binding:   {}", obj["binding"].as_str().unwrap_or("?"));
    println!("  kernels:   {}", registry.names().collect::<Vec<_>>().join(", "));
    Ok(())
}

/// UCX's version and the transports it would use here (null without `ucx`).
fn ucx_info() -> serde_json::Value {
    #[cfg(feature = "ucx")]
    {
        let tls = std::env::var("UCX_TLS").unwrap_or_else(|_| "default (all)".into());
        match tessera::runtime::transport::ucx::ucp::resources() {
            Ok(r) => json!({"version": tessera::runtime::transport::ucx::ucp::version(), "tls": tls, "resources": r}),
            Err(e) => {
                json!({"version": tessera::runtime::transport::ucx::ucp::version(), "tls": tls, "error": e.to_string()})
            }
        }
    }
    #[cfg(not(feature = "ucx"))]
    serde_json::Value::Null
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
        "hosts": i.hosts,
        "topologies": i.topologies,
        "cuda_aware": i.cuda_aware,
    })))
}

#[cfg(not(feature = "mpi"))]
fn mpi_info(_: Launch) -> anyhow::Result<Option<serde_json::Value>> {
    Ok(None)
}

#[cfg(feature = "mpi")]
fn transfer(config: Config, bytes: usize, repeat: usize, json: bool) -> anyhow::Result<()> {
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
fn transfer(_: Config, _: usize, _: usize, _: bool) -> anyhow::Result<()> {
    Err(tessera::Error::FeatureDisabled { feature: "mpi", what: "bench transfer".into() }.into())
}

#[cfg(feature = "ucx")]
fn ucx_bench(sizes: &[usize], repeat: usize, json: bool) -> anyhow::Result<()> {
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
fn ucx_bench(_: &[usize], _: usize, _: bool) -> anyhow::Result<()> {
    Err(tessera::Error::FeatureDisabled { feature: "ucx", what: "bench ucx".into() }.into())
}

#[cfg(feature = "mpi")]
fn mpi_hello(json: bool) -> anyhow::Result<()> {
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
fn mpi_hello(_: bool) -> anyhow::Result<()> {
    Err(tessera::Error::FeatureDisabled { feature: "mpi", what: "bench mpi-hello".into() }.into())
}

#[cfg(test)]
mod tests {
    use super::command;

    /// Every argument of every subcommand, as `path: --flag`, that `missing` picks.
    fn walk(cmd: &clap::Command, path: &str, missing: &dyn Fn(&clap::Arg) -> bool, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            if missing(a) {
                out.push(format!(
                    "{path}: {}",
                    a.get_long().map(|l| format!("--{l}")).unwrap_or(a.get_id().to_string())
                ));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing, out);
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn every_argument_has_help_text() {
        let mut cmd = command();
        cmd.build();
        let mut out = Vec::new();
        let no_help = |a: &clap::Arg| a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) && !a.is_hide_set();
        walk(&cmd, "tessera", &no_help, &mut out);
        assert!(out.is_empty(), "arguments without help:\n{}", out.join("\n"));
    }

    #[test]
    fn the_options_every_command_takes_are_under_their_own_headings() {
        let mut cmd = command();
        cmd.build();
        let mut out = Vec::new();
        let no_heading = |a: &clap::Arg| a.is_global_set() && a.get_help_heading().is_none();
        walk(&cmd, "tessera", &no_heading, &mut out);
        assert!(out.is_empty(), "global options without a help heading:\n{}", out.join("\n"));
        // And a subcommand's help shows them apart from its own flags.
        let status = cmd.find_subcommand_mut("jobqueue").unwrap().find_subcommand_mut("status").unwrap();
        let help = status.render_help().to_string();
        let (own, rest) = help.split_once("Cluster options:").expect("a Cluster options heading");
        assert!(!own.contains("--gpus") && rest.contains("--gpus"), "{help}");
        assert!(help.contains("Diagnostics:") && help.contains("Elastic cluster:"), "{help}");
    }
}

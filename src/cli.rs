//! The command line's definitions: the global options, the subcommands and
//! their flags, and the parsing that clap's derive does not do alone
//! (`--log-dir` after any subcommand, the input of `svd` and `qr`).

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tessera::bench::{GemmDtype, Shape};
use tessera::runtime::gpu::{GpuMath, GpuSelect};
use tessera::runtime::host::topology::Bind;
use tessera::runtime::scheduler::sim;
use tessera::{Launch, MemoryLimit, SchedulerWorks, TransportKind};

use crate::cmd::{arrays, jobqueue};
use crate::values;

/// Help headings of the options every command takes, apart from its own.
pub(crate) const CLUSTER: &str = "Cluster options";
pub(crate) const ELASTIC: &str = "Elastic cluster";
pub(crate) const DIAGNOSTICS: &str = "Diagnostics";
pub(crate) const MEMORY: &str = "Memory";

#[derive(Parser, Debug)]
#[command(name = "tessera", version, about = "A Rust runtime for HPC clusters", propagate_version = true)]
pub(crate) struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); overrides RUST_LOG.
    #[arg(help_heading = DIAGNOSTICS, long, global = true, value_name = "LEVEL")]
    pub(crate) log: Option<String>,

    /// Also write each process's log to a file of its own in DIR
    /// (`rank-R.log` under mpirun/srun, else `HOST-PID.log`), at INFO or finer.
    /// Before or after the subcommand, except that `jobqueue` and `bench scale`
    /// have a `--log-dir` of their own (for job scripts and output): there it
    /// goes before the subcommand (`tessera --log-dir DIR jobqueue ...`).
    #[arg(help_heading = DIAGNOSTICS, long, value_name = "DIR")]
    pub(crate) log_dir: Option<PathBuf>,

    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,

    #[command(flatten)]
    pub(crate) observe: ObserveArgs,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// What the computing commands (svd, qr, matmul, demo, bench overhead) show and write about a run.
#[derive(Args, Debug, Clone)]
pub(crate) struct ObserveArgs {
    /// Write a performance report: one self-contained HTML file (task stream,
    /// transfers, memory per worker, time per kernel, where each thread ran).
    #[arg(help_heading = DIAGNOSTICS, long, global = true, value_name = "FILE.html")]
    pub(crate) report: Option<PathBuf>,

    /// Write a Chrome trace-event file (opens in Perfetto or chrome://tracing).
    #[arg(help_heading = DIAGNOSTICS, long, global = true, value_name = "FILE.json")]
    pub(crate) trace: Option<PathBuf>,

    /// No progress bar or progress lines (shown for computations longer than a second:
    /// a bar on a terminal, a log line every 5 s otherwise).
    #[arg(help_heading = DIAGNOSTICS, long, short, global = true)]
    pub(crate) quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct ClusterArgs {
    /// Where to run: MPI when launched by mpirun/srun, else local (auto); or force one.
    #[arg(help_heading = CLUSTER, long, global = true, default_value = "auto", value_parser = values::parser::<values::LaunchArg, Launch>())]
    pub(crate) launch: Launch,

    /// Local cluster: number of workers [default: usable cores].
    #[arg(help_heading = CLUSTER, long, global = true, env = "TESSERA_WORKERS", value_parser = at_least_one)]
    pub(crate) workers: Option<usize>,

    /// Compute threads per worker [default: 1 locally, the rank's share of cores under MPI].
    #[arg(help_heading = CLUSTER, long, global = true, env = "TESSERA_THREADS", value_parser = at_least_one)]
    pub(crate) threads: Option<usize>,

    /// MPI: whether rank 0 (scheduler and driver) also runs a worker.
    #[arg(help_heading = CLUSTER, long, global = true, default_value = "auto", value_parser = values::parser::<values::SchedulerWorksArg, SchedulerWorks>())]
    pub(crate) scheduler_works: SchedulerWorks,

    /// MPI: seconds a worker rank may stay silent before the job is aborted.
    /// TCP: seconds a peer may stay silent before it is declared lost.
    #[arg(help_heading = CLUSTER, long, global = true, default_value_t = 30.0, env = "TESSERA_HEARTBEAT_TIMEOUT", value_parser = heartbeat_secs,
          allow_negative_numbers = true)]
    pub(crate) heartbeat_timeout: f64,

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
    pub(crate) scheduler: Option<String>,

    /// Elastic cluster: the file `tessera scheduler` writes its address to
    /// (and where its secret is) [default: ~/.config/tessera/scheduler.json,
    /// used when it exists; see --scheduler for the rule].
    #[arg(help_heading = ELASTIC, long, global = true, env = "TESSERA_SCHEDULER_FILE", value_name = "FILE")]
    pub(crate) scheduler_file: Option<PathBuf>,

    /// Elastic cluster: the shared secret (created mode 0600 by `tessera scheduler`;
    /// refused if group or others can read it) [default: ~/.config/tessera/secret].
    #[arg(help_heading = ELASTIC, long, global = true, env = "TESSERA_SECRET_FILE", value_name = "FILE")]
    pub(crate) secret_file: Option<PathBuf>,

    /// Bind worker threads to cores: distinct cores per thread (core), the NUMA node
    /// of that core (numa), or not at all (none). auto: core when several MPI ranks
    /// share a host, else none. Needs the `hwloc` feature.
    #[arg(help_heading = CLUSTER, long, global = true, default_value = "auto", env = "TESSERA_BIND", value_parser = values::parser::<values::BindArg, Bind>())]
    pub(crate) bind: Bind,

    /// Workers record no events (what --report and --trace draw from); the baseline
    /// for measuring what recording costs.
    #[arg(help_heading = CLUSTER, long, global = true)]
    pub(crate) no_events: bool,

    /// How blocks move between workers: auto (the launch's own: in-process, MPI or
    /// TCP) or ucx (UCP: shared memory, TCP, InfiniBand, as UCX_TLS allows; control
    /// messages stay on MPI or TCP). Needs the `ucx` feature.
    #[arg(help_heading = CLUSTER, long, global = true, default_value = "auto", env = "TESSERA_TRANSPORT", value_parser = values::parser::<values::TransportArg, TransportKind>())]
    pub(crate) transport: TransportKind,

    /// GPU workers, one per GPU, beside the CPU workers: `all` (every GPU this
    /// process sees; none is no error), `none`, or device numbers like `0,1` (as
    /// numbered after CUDA_VISIBLE_DEVICES). Under MPI the working ranks of each host
    /// share its GPUs out, one each; `tessera worker` drives one. GEMM, random blocks
    /// and TSQR leaves then run on the GPUs. Needs the `cuda` feature.
    #[arg(help_heading = CLUSTER, long, global = true, default_value = "none", env = "TESSERA_GPUS")]
    pub(crate) gpus: GpuSelect,

    /// How GPU workers multiply f32 matrices: `exact` (IEEE f32, as on the CPU) or
    /// `tf32` (tensor cores with 10-bit-mantissa inputs: several times faster,
    /// relative error about 1e-3 instead of 1e-7). f64 is always exact.
    #[arg(help_heading = CLUSTER, long, global = true, default_value = "exact", env = "TESSERA_GPU_MATH", value_parser = values::parser::<values::GpuMathArg, GpuMath>())]
    pub(crate) gpu_math: GpuMath,

    /// Memory each worker process may use: bytes with a unit (`8GiB`), a fraction of
    /// what auto finds (`0.5`), `none`, or `auto`: the smallest of the cgroup limit,
    /// Slurm's grant, RLIMIT_AS (SGE h_vmem, PBS vmem) and physical memory, shared
    /// among the ranks of a host. Past --memory-target workers spill blocks to
    /// --local-directory; past --memory-pause they start no task. `tessera info`
    /// shows what auto finds.
    #[arg(help_heading = MEMORY, long, global = true, default_value = "auto", env = "TESSERA_MEMORY_LIMIT", value_name = "LIMIT",
          value_parser = parse_memory_limit, allow_negative_numbers = true)]
    pub(crate) memory_limit: MemoryLimit,

    /// Fraction of the memory limit past which workers write their least recently
    /// used blocks to disk.
    #[arg(help_heading = MEMORY, long, global = true, default_value_t = 0.6, env = "TESSERA_MEMORY_TARGET", value_name = "FRACTION",
          value_parser = fraction, allow_negative_numbers = true)]
    pub(crate) memory_target: f64,

    /// Fraction of the memory limit past which workers start no new task until
    /// spilling and finishing tasks bring them back under it.
    #[arg(help_heading = MEMORY, long, global = true, default_value_t = 0.8, env = "TESSERA_MEMORY_PAUSE", value_name = "FRACTION",
          value_parser = fraction, allow_negative_numbers = true)]
    pub(crate) memory_pause: f64,

    /// Where workers spill blocks: each makes its own folder here, removed when it
    /// ends [default: $TMPDIR, else /tmp]. Use node-local disk.
    #[arg(help_heading = MEMORY, long, global = true, env = "TESSERA_LOCAL_DIRECTORY", value_name = "DIR")]
    pub(crate) local_directory: Option<PathBuf>,
}

/// `--memory-limit`: see [`MemoryLimit`]'s parser.
pub(crate) fn parse_memory_limit(s: &str) -> Result<MemoryLimit, String> {
    s.parse()
}

/// A fraction in (0, 1].
pub(crate) fn fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!("`{s}` is not a fraction in (0, 1]")),
    }
}

/// The heartbeat timeout: seconds, at least 2 (workers report every second).
pub(crate) fn heartbeat_secs(s: &str) -> Result<f64, String> {
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

pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    match tessera::runtime::host::sys::parse_bytes(s) {
        Ok(0) => Err("must be more than zero bytes".to_owned()),
        Ok(n) => usize::try_from(n).map_err(|_| format!("`{s}` is too large")),
        Err(e) => Err(format!("`{s}`: {e}")),
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
    Svd(arrays::SvdArgs),
    /// QR decomposition of a tall-and-skinny (or short-and-fat) matrix; writes /Q, /R.
    #[command(mut_arg("seed", |a| a.help("Seed of the random input.")))]
    Qr(arrays::QrArgs),
    /// Blocked matrix product C = A @ B; writes C.
    Matmul(arrays::MatmulArgs),
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
        /// A task that was running on this many workers lost without notice
        /// fails the computation, naming it (it may be what kills them); lost
        /// blocks are recomputed from their lineage either way.
        #[arg(long, value_name = "N", default_value_t = 3, env = "TESSERA_ALLOWED_FAILURES",
              value_parser = clap::value_parser!(u32).range(1..))]
        allowed_failures: u32,
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
    Jobqueue(Box<jobqueue::JobqueueArgs>),
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
pub(crate) enum BenchCommand {
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
        dtype: GemmDtype,
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
        #[arg(long, default_value_t = 1000.0, allow_hyphen_values = true, value_parser = non_negative)]
        task_us: f64,
        /// Bytes per second between two workers (10GB, 1GiB, ...).
        #[arg(long, default_value = "10GB", value_parser = parse_size)]
        bandwidth: usize,
        /// One-way message latency in microseconds.
        #[arg(long, default_value_t = 10.0, allow_hyphen_values = true, value_parser = non_negative)]
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
        #[arg(long, default_value_t = 1, value_parser = at_least_one)]
        runs: usize,
        /// Workers that die during the run (an elastic cluster losing nodes):
        /// one each time another share of the tasks has finished; what they
        /// held is recomputed.
        #[arg(long, default_value_t = 0)]
        kills: usize,
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

/// Seconds, 0 or more: the parser of every seconds flag but the heartbeat's
/// and those of an interval between polls ([`parse_interval`]).
pub(crate) fn parse_duration(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("`{s}` is not a number of seconds >= 0")),
    }
}

/// Seconds between two looks at something (a job, a backlog): more than 0,
/// where 0 would mean asking the batch system or the scheduler without pause.
pub(crate) fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("`{s}` is not a number of seconds > 0")),
    }
}

/// A number, 0 or more, of a unit the flag names (microseconds in `bench simulate`).
pub(crate) fn non_negative(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("`{s}` is not a number >= 0")),
    }
}

/// The id of `--log-dir` given after the subcommand.
pub(crate) const LOG_DIR_AFTER: &str = "log_dir_after";

/// The command line: [`Cli`], with `--log-dir` accepted after every
/// subcommand that has none of its own. Not clap's `global`: a global
/// argument takes its value from any argument of the same id below it, and
/// the `--log-dir` of `jobqueue` and `bench scale` means their job logs.
pub(crate) fn command() -> clap::Command {
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
pub(crate) fn parse() -> Cli {
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
    if let Command::Bench(BenchCommand::Simulate { workers, kills, .. }) = &cli.command {
        if kills >= workers {
            let mut cmd = command();
            cmd.build();
            let sub = cmd.find_subcommand_mut("bench").and_then(|b| b.find_subcommand_mut("simulate"));
            let msg =
                format!("--kills {kills} leaves none of the {workers} workers alive (give fewer kills than --workers)");
            sub.expect("bench simulate").error(clap::error::ErrorKind::ValueValidation, msg).exit();
        }
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

//! How a cluster starts: its configuration, the pieces every launch shares,
//! and the launches themselves.
//!
//! This folder owns the way from "run this driver" to ranks that serve it:
//! [`Config`] and [`WorkerSettings`] (what a cluster and its workers are
//! started with), [`Config::run`] (`run.rs`, which picks a launch from the
//! configuration and the environment), the threads every launch spawns
//! (scheduler, workers) and the UCX plane it may add; then one file per
//! launch: the in-process [`LocalCluster`](crate::LocalCluster) (`local.rs`),
//! MPI ranks (`mpi.rs`, feature `mpi`) and the elastic TCP cluster
//! ([`elastic`]). The launches use this module; it never uses them, except
//! through `run.rs`.
//!
//! | situation | call | ranks |
//! |---|---|---|
//! | a program that is a Tessera job | [`crate::run`] / [`Config::run`] | MPI world under `mpirun`/`srun`, else a local cluster |
//! | an MPI application hands over a communicator | `tessera_runtime::launch::mpi::run_on` (feature `mpi`) | the communicator's ranks |
//! | a test or a laptop program | [`LocalCluster`](crate::LocalCluster) | threads of this process |
//! | a driver of a running elastic cluster | [`Config::run`] with `scheduler` set, or [`elastic::connect`] | the workers that joined that scheduler over TCP |
//!
//! On every transport rank 0 hosts the scheduler and the driver; the other
//! ranks are workers. Rank 0 runs a worker too when it would otherwise leave
//! cores idle (see [`SchedulerWorks`]).
//!
//! ```
//! use tessera_runtime::{Config, Launch, WorkerSettings};
//!
//! let worker = WorkerSettings { threads: Some(1), ..Default::default() };
//! let config = Config::builder().launch(Launch::Local).workers(2).worker(worker).build();
//! let n = config.run(|client| Ok::<_, tessera_runtime::Error>(client.workers().len()))?;
//! assert_eq!(n, 2);
//! # Ok::<(), tessera_runtime::Error>(())
//! ```

use std::fmt::Display;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::host::topology::Bind;
use crate::kernel::Registry;
use crate::observe::progress::Progress;
use crate::protocol::Msg;
use crate::scheduler::{Exit, Ready, Scheduler, SchedulerConfig};
use crate::transport::{DataPlane, Mailboxes, Transport};
use crate::worker::store::BlockStore;
use crate::worker::{run_worker, WorkerConfig, WorkerExit};

pub mod elastic;
pub(crate) mod local;
#[cfg(feature = "mpi")]
pub mod mpi;
mod run;

/// How block payloads travel between ranks (control messages always use the
/// launch's own transport).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TransportKind {
    /// The launch's own: channels in-process, MPI under `mpirun`, TCP in an
    /// elastic cluster.
    #[default]
    Auto,
    /// UCX (UCP tagged messages, feature `ucx`): shared memory, TCP,
    /// InfiniBand or whatever `UCX_TLS` allows.
    Ucx,
}

impl std::str::FromStr for TransportKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<TransportKind> {
        match s {
            "auto" => Ok(TransportKind::Auto),
            "ucx" => Ok(TransportKind::Ucx),
            other => Err(Error::Config(format!(
                "transport `{other}`: expected auto (the launch's own: local, mpi or tcp) or ucx"
            ))),
        }
    }
}

impl TransportKind {
    /// Refuses UCX in a build without the `ucx` feature.
    pub fn check(self) -> Result<TransportKind> {
        if self == TransportKind::Ucx && !cfg!(feature = "ucx") {
            return Err(Error::FeatureDisabled {
                feature: "ucx",
                what: "moving blocks over UCX (--transport ucx)".into(),
            });
        }
        Ok(self)
    }
}

/// A UCX worker made before its rank is known (an elastic worker sends its
/// address in its introduction), started as a plane once it is.
pub(crate) struct PlaneSeed {
    #[cfg(feature = "ucx")]
    worker: crate::transport::ucx::ucp::Worker,
    address: Vec<u8>,
}

impl PlaneSeed {
    /// Makes the UCX worker (an error without the `ucx` feature). UCX reads
    /// `UCX_TLS` and the rest of its configuration from the environment;
    /// `TESSERA_UCX_PEER_ERRORS=1` asks it to detect failed peers itself.
    pub(crate) fn new() -> Result<PlaneSeed> {
        #[cfg(not(feature = "ucx"))]
        {
            Err(TransportKind::Ucx.check().expect_err("refused without the feature"))
        }
        #[cfg(feature = "ucx")]
        {
            let options = crate::transport::ucx::ucp::Options {
                tls: None,
                peer_errors: std::env::var_os("TESSERA_UCX_PEER_ERRORS").is_some_and(|v| v == "1"),
            };
            let worker = crate::transport::ucx::ucp::Worker::new(&options)?;
            let address = worker.address()?;
            Ok(PlaneSeed { worker, address })
        }
    }

    pub(crate) fn address(&self) -> &[u8] {
        &self.address
    }

    /// Starts the plane of `rank`, delivering into `mailboxes`.
    pub(crate) fn start(self, rank: u32, mailboxes: Mailboxes) -> Result<Arc<dyn DataPlane>> {
        #[cfg(not(feature = "ucx"))]
        {
            let _ = (rank, mailboxes);
            unreachable!("a seed exists only with the feature")
        }
        #[cfg(feature = "ucx")]
        {
            Ok(crate::transport::ucx::UcxPlane::start_with(self.worker, self.address, rank, mailboxes)?)
        }
    }
}

/// Starts the UCX plane of `rank` (an error without the `ucx` feature).
pub(crate) fn start_plane(rank: u32, mailboxes: Mailboxes) -> Result<Arc<dyn DataPlane>> {
    PlaneSeed::new()?.start(rank, mailboxes)
}

/// How to start: from the environment, or forced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Launch {
    /// MPI when launched by `mpirun`/`srun` (and built with `mpi`), else local.
    #[default]
    Auto,
    /// Always an in-process cluster.
    Local,
    /// Always MPI; an error in a build without the `mpi` feature.
    Mpi,
}

impl std::str::FromStr for Launch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Launch> {
        match s {
            "auto" => Ok(Launch::Auto),
            "local" => Ok(Launch::Local),
            "mpi" => Ok(Launch::Mpi),
            other => Err(Error::Config(format!("launch `{other}`: expected auto, local or mpi"))),
        }
    }
}

/// Whether rank 0 (scheduler and driver) also runs a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SchedulerWorks {
    /// Yes when it is the only rank, or when it has more than one core to
    /// itself (then the worker gets all but one of them).
    #[default]
    Auto,
    Yes,
    No,
}

impl std::str::FromStr for SchedulerWorks {
    type Err = Error;
    fn from_str(s: &str) -> Result<SchedulerWorks> {
        match s {
            "auto" => Ok(SchedulerWorks::Auto),
            "yes" | "true" => Ok(SchedulerWorks::Yes),
            "no" | "false" => Ok(SchedulerWorks::No),
            other => Err(Error::Config(format!("scheduler-works `{other}`: expected auto, yes or no"))),
        }
    }
}

/// What a worker is started with, whatever launches it: the fields [`Config`]
/// (local and MPI clusters) and [`elastic::WorkerOptions`] (an elastic
/// worker) share, so a command line fills them once for either.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Compute threads per worker. Default: 1 per worker of a local cluster,
    /// the rank's share of its host's cores under MPI, the usable cores for
    /// an elastic worker.
    pub threads: Option<usize>,
    /// How worker threads are bound to cores ([`crate::host::topology::plan`]).
    /// `Auto` binds MPI ranks that share a host (with the `hwloc` feature)
    /// and leaves local clusters and elastic workers unbound.
    pub bind: Bind,
    /// Workers record what they run, for reports and traces (default on;
    /// see [`crate::observe::events`]).
    pub events: bool,
    /// How block payloads move between workers (default: the launch's own).
    /// An elastic worker started with `Ucx` sends its UCX address through
    /// the scheduler.
    pub transport: TransportKind,
    /// GPU workers: one per chosen GPU (default none; see [`crate::gpu`]).
    /// An elastic worker drives the first GPU of the selection (one worker
    /// process per GPU, each with its own selection).
    pub gpus: crate::gpu::GpuSelect,
    /// How GPU workers multiply f32 matrices (default exact IEEE f32).
    pub gpu_math: crate::gpu::GpuMath,
    /// The memory limit, its thresholds and where spilled blocks go.
    pub memory: MemorySettings,
}

/// How workers manage their memory (see [`crate::worker::memory`]): a limit
/// per worker process, the fractions of it where they spill and pause, and
/// the directory they spill to.
#[derive(Clone, Debug, PartialEq)]
pub struct MemorySettings {
    /// `--memory-limit` (default `auto`: see [`crate::host::memory`]).
    pub limit: crate::host::memory::MemoryLimit,
    /// Spill least recently used blocks above this fraction of the limit (0.6).
    pub target: f64,
    /// Spill on resident memory above this fraction (0.7).
    pub spill: f64,
    /// Start no task above this fraction (0.8).
    pub pause: f64,
    /// Where each worker makes its spill folder (default `$TMPDIR`, else `/tmp`).
    pub local_directory: Option<std::path::PathBuf>,
}

impl Default for MemorySettings {
    fn default() -> MemorySettings {
        MemorySettings {
            limit: crate::host::memory::MemoryLimit::Auto,
            target: 0.6,
            spill: 0.7,
            pause: 0.8,
            local_directory: None,
        }
    }
}

impl MemorySettings {
    /// Where the workers make their spill folders: `local_directory`, else
    /// `$TMPDIR`, else `/tmp`.
    pub fn directory(&self) -> std::path::PathBuf {
        self.local_directory
            .clone()
            .or_else(|| std::env::var_os("TMPDIR").filter(|d| !d.is_empty()).map(Into::into))
            .unwrap_or_else(|| "/tmp".into())
    }

    /// The store and memory settings of worker `rank`, one of
    /// `workers_in_process` in a process that is one of `ranks_on_host` ranks
    /// on its host. Makes the worker's spill folder (an unwritable directory
    /// is an error naming it).
    pub(crate) fn for_worker(
        &self,
        rank: u32,
        ranks_on_host: usize,
        workers_in_process: usize,
    ) -> Result<(BlockStore, Option<crate::worker::memory::MemoryConfig>)> {
        let (target, spill, pause) = (self.target, self.spill, self.pause);
        let ok = |f: f64| f.is_finite() && f > 0.0 && f <= 1.0;
        if !(ok(target) && ok(spill) && ok(pause) && target <= pause) {
            return Err(Error::Config(format!(
                "memory thresholds must be fractions in (0, 1] with the target at most the pause threshold \
                 (--memory-target {target}, --memory-pause {pause}, spill {spill})"
            )));
        }
        let Some(found) = crate::host::memory::resolve(self.limit, ranks_on_host) else {
            return Ok((BlockStore::new(), None));
        };
        let share = workers_in_process.max(1);
        let limit = found.bytes / share as u64;
        let source = if share > 1 { format!("{} / {share} workers", found.source) } else { found.source };
        let parent = self.directory();
        let dir = crate::worker::spill::SpillDir::create(&parent, rank)
            .map_err(|e| Error::Config(format!("--local-directory: {e}")))?;
        crate::block::pool::cap(limit as usize / 8);
        let config = crate::worker::memory::MemoryConfig { limit, source, target, spill, pause, share };
        Ok((BlockStore::spilling(dir), Some(config)))
    }
}

impl Default for WorkerSettings {
    fn default() -> WorkerSettings {
        WorkerSettings {
            threads: None,
            bind: Bind::Auto,
            events: true,
            transport: TransportKind::Auto,
            gpus: crate::gpu::GpuSelect::None,
            gpu_math: crate::gpu::GpuMath::Exact,
            memory: MemorySettings::default(),
        }
    }
}

/// Everything a cluster is started with: [`Config::default`] and its
/// fields, or [`Config::builder`] (new fields may come, so outside this crate
/// a `Config` is built by one of those, not by a struct expression).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    pub launch: Launch,
    /// Local clusters: number of workers (default: usable cores).
    pub workers: Option<usize>,
    pub scheduler_works: SchedulerWorks,
    /// Tasks queued on each worker beyond one per thread.
    pub queue_extra: u32,
    /// MPI: a worker silent this long is declared lost and the job aborted.
    /// TCP: a peer silent this long is declared lost.
    pub heartbeat_timeout: Duration,
    pub registry: Registry,
    /// Connect to the elastic scheduler at this address (`HOST:PORT`)
    /// instead of starting a cluster; `launch` is then ignored.
    pub scheduler: Option<String>,
    /// The cluster's secret when connecting to a scheduler (default:
    /// [`crate::transport::secret::default_path`]).
    pub secret_file: Option<std::path::PathBuf>,
    /// How the driver shows progress while it waits (default off).
    pub progress: Progress,
    /// What every worker of the cluster is started with.
    pub worker: WorkerSettings,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            launch: Launch::Auto,
            workers: None,
            scheduler_works: SchedulerWorks::Auto,
            queue_extra: 4,
            heartbeat_timeout: Duration::from_secs(30),
            registry: Registry::builtin(),
            scheduler: None,
            secret_file: None,
            progress: Progress::Off,
            worker: WorkerSettings::default(),
        }
    }
}

/// Builds a [`Config`]: each method sets one field, the rest keep
/// [`Config::default`]'s values.
///
/// ```
/// use tessera_runtime::{Config, Launch};
/// let config = Config::builder().launch(Launch::Local).workers(2).build();
/// assert_eq!((config.launch, config.workers), (Launch::Local, Some(2)));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// How the cluster starts (default: [`Launch::Auto`], from the environment).
    pub fn launch(mut self, launch: Launch) -> Self {
        self.config.launch = launch;
        self
    }

    /// Local clusters: number of workers (default: usable cores).
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = Some(n);
        self
    }

    /// Whether rank 0 also runs a worker.
    pub fn scheduler_works(mut self, works: SchedulerWorks) -> Self {
        self.config.scheduler_works = works;
        self
    }

    /// Tasks queued on each worker beyond one per thread (default 4).
    pub fn queue_extra(mut self, n: u32) -> Self {
        self.config.queue_extra = n;
        self
    }

    /// How long a silent worker or peer may stay silent (default 30 s).
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.config.heartbeat_timeout = timeout;
        self
    }

    /// Kernels the workers know (default: [`Registry::builtin`]).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.config.registry = registry;
        self
    }

    /// Connect to the elastic scheduler at `address` (`HOST:PORT`) instead of
    /// starting a cluster.
    pub fn scheduler(mut self, address: impl Into<String>) -> Self {
        self.config.scheduler = Some(address.into());
        self
    }

    /// The cluster's secret when connecting to a scheduler.
    pub fn secret_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.secret_file = Some(path.into());
        self
    }

    /// How the driver shows progress while it waits (default off).
    pub fn progress(mut self, progress: Progress) -> Self {
        self.config.progress = progress;
        self
    }

    /// What every worker of the cluster is started with.
    pub fn worker(mut self, worker: WorkerSettings) -> Self {
        self.config.worker = worker;
        self
    }

    pub fn build(self) -> Config {
        self.config
    }
}

impl Config {
    /// A [`ConfigBuilder`] starting from [`Config::default`].
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// Resolves [`Launch::Auto`] from the environment.
    pub fn resolve_launch(&self) -> Result<Launch> {
        match self.launch {
            Launch::Local => Ok(Launch::Local),
            Launch::Mpi if !cfg!(feature = "mpi") => {
                Err(Error::FeatureDisabled { feature: "mpi", what: "running on MPI (--launch mpi)".into() })
            }
            Launch::Mpi => Ok(Launch::Mpi),
            Launch::Auto => match crate::host::launcher::mpi_launch_size() {
                None => Ok(Launch::Local),
                Some(_) if cfg!(feature = "mpi") => Ok(Launch::Mpi),
                Some(1) => {
                    tracing::warn!(
                        "launched by an MPI launcher with one rank, but built without the `mpi` feature: running a local cluster"
                    );
                    Ok(Launch::Local)
                }
                Some(n) => Err(Error::FeatureDisabled {
                    feature: "mpi",
                    what: format!("running as {n} MPI ranks ({})", crate::host::launcher::describe_mpi_launch()),
                }),
            },
        }
    }
}

impl Config {
    /// TCP settings from this configuration: the secret from `secret_file`
    /// (or the default path), peers declared lost after `heartbeat_timeout`.
    pub fn tcp_options(&self) -> Result<crate::transport::tcp::TcpOptions> {
        let path = self.secret_file.clone().unwrap_or_else(crate::transport::secret::default_path);
        let mut tcp = crate::transport::tcp::TcpOptions::new(crate::transport::secret::Secret::load(&path)?);
        tcp.dead_after = self.heartbeat_timeout;
        Ok(tcp)
    }
}

/// Runs `driver`, then `stop` (told whether it failed), then returns or resumes the panic.
pub(crate) fn drive<R, E, F>(client: &Client, driver: F, stop: impl FnOnce(bool, String)) -> Result<R, E>
where
    F: FnOnce(&Client) -> Result<R, E>,
    E: Display,
{
    match catch_unwind(AssertUnwindSafe(|| driver(client))) {
        Ok(Ok(r)) => {
            stop(false, String::new());
            Ok(r)
        }
        Ok(Err(e)) => {
            stop(true, e.to_string());
            Err(e)
        }
        Err(panic) => {
            stop(true, format!("panicked: {}", crate::panic::message(&*panic)));
            resume_unwind(panic)
        }
    }
}

pub(crate) fn spawn_scheduler(
    registry: Arc<Registry>,
    transport: Arc<dyn Transport>,
    config: SchedulerConfig,
    inbox: Receiver<Msg>,
) -> (JoinHandle<Exit>, Receiver<Ready>) {
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let handle = std::thread::Builder::new()
        .name("tessera-scheduler".into())
        .spawn(move || Scheduler::new(registry, transport, config).run(inbox, ready_tx))
        .expect("spawn the scheduler thread");
    (handle, ready_rx)
}

pub(crate) fn spawn_worker(
    config: WorkerConfig,
    registry: Arc<Registry>,
    transport: Arc<dyn Transport>,
    store: BlockStore,
    inbox: Receiver<Msg>,
) -> JoinHandle<WorkerExit> {
    std::thread::Builder::new()
        .name(format!("tessera-worker-{}", config.rank))
        .spawn(move || run_worker(config, registry, transport, store, inbox))
        .expect("spawn a worker thread")
}

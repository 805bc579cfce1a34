//! Starting a cluster: configuration, the in-process [`LocalCluster`], and
//! [`Config::run`], which picks local or MPI from the environment.
//!
//! | situation | call | ranks |
//! |---|---|---|
//! | a program that is a Tessera job | [`crate::run`] / [`Config::run`] | MPI world under `mpirun`/`srun`, else a local cluster |
//! | an MPI application hands over a communicator | `tessera_runtime::mpi::run_on` (feature `mpi`) | the communicator's ranks |
//! | a test or a laptop program | [`LocalCluster`] | threads of this process |
//! | a driver of a running elastic cluster | [`Config::run`] with `scheduler` set, or [`crate::tcp::connect`] | the workers that joined that scheduler over TCP |
//!
//! On every transport rank 0 hosts the scheduler and the driver; the other
//! ranks are workers. Rank 0 runs a worker too when it would otherwise leave
//! cores idle (see [`SchedulerWorks`]).

use std::fmt::Display;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::kernel::Registry;
use crate::observe::progress::Progress;
use crate::protocol::{Endpoint, Msg};
use crate::scheduler::{Exit, Ready, Scheduler, SchedulerConfig};
use crate::worker::store::BlockStore;
use crate::host::topology::Bind;
use crate::transport::local::LocalTransport;
use crate::transport::{DataPlane, Mailboxes, Transport};
use crate::worker::{run_worker, WorkerConfig, WorkerExit};

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

/// Everything a cluster is started with.
#[derive(Clone, Debug)]
pub struct Config {
    pub launch: Launch,
    /// Local clusters: number of workers (default: usable cores).
    pub workers: Option<usize>,
    /// Compute threads per worker (local default 1; MPI default: the rank's
    /// share of its host's cores).
    pub threads: Option<usize>,
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
    /// Workers record what they run, for reports and traces (default on;
    /// see [`crate::observe::events`]).
    pub events: bool,
    /// How worker threads are bound to cores ([`crate::host::topology::plan`]).
    /// `Auto` binds MPI ranks that share a host (with the `hwloc` feature)
    /// and leaves local clusters unbound.
    pub bind: Bind,
    /// How the driver shows progress while it waits (default off).
    pub progress: Progress,
    /// How block payloads move between ranks (default: the launch's own).
    pub transport: TransportKind,
    /// GPU workers: one per chosen GPU (default none; see [`crate::gpu`]).
    pub gpus: crate::gpu::GpuSelect,
    /// How GPU workers multiply f32 matrices (default exact IEEE f32).
    pub gpu_math: crate::gpu::GpuMath,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            launch: Launch::Auto,
            workers: None,
            threads: None,
            scheduler_works: SchedulerWorks::Auto,
            queue_extra: 4,
            heartbeat_timeout: Duration::from_secs(30),
            registry: Registry::builtin(),
            scheduler: None,
            secret_file: None,
            events: true,
            bind: Bind::Auto,
            progress: Progress::Off,
            transport: TransportKind::Auto,
            gpus: crate::gpu::GpuSelect::None,
            gpu_math: crate::gpu::GpuMath::Exact,
        }
    }
}

impl Config {
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

    /// Runs `driver` on a cluster chosen by [`Config::launch`].
    ///
    /// Local: starts a [`LocalCluster`], runs `driver`, shuts down, returns.
    /// MPI: initialises MPI; rank 0 runs `driver` and returns its result
    /// after every rank has stopped; **the other ranks never return**: they
    /// serve as workers and exit the process when the driver is done (with
    /// status 0: rank 0 reports a failed driver and exits non-zero, which fails
    /// the job), like dask-mpi's workers.
    ///
    /// With `scheduler` set: connects to that elastic scheduler as a client,
    /// runs `driver`, disconnects (the scheduler and its workers go on).
    ///
    /// A driver that panics stops the cluster first; the panic then goes on.
    pub fn run<R, E, F>(self, driver: F) -> Result<R, E>
    where
        F: FnOnce(&Client) -> Result<R, E> + Send,
        R: Send,
        E: From<Error> + Display + Send,
    {
        if let Some(addr) = &self.scheduler {
            let client = crate::tcp::connect(addr, self.tcp_options()?)?;
            client.set_progress(self.progress);
            return drive(&client, driver, |_, _| {});
        }
        match self.resolve_launch()? {
            Launch::Mpi => {
                #[cfg(feature = "mpi")]
                return crate::mpi::run_world(self, driver);
                #[cfg(not(feature = "mpi"))]
                unreachable!("resolve_launch refuses MPI without the feature");
            }
            _ => {
                let progress = self.progress;
                let cluster = LocalCluster::start_with(self)?;
                cluster.client().set_progress(progress);
                drive(cluster.client(), driver, |failed, reason| cluster.client.shutdown(failed, reason))
            }
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

/// A cluster of worker threads in this process: no MPI, no sockets, blocks
/// shared by reference. The default when nothing else is launched.
///
/// Ranks: 0 is the scheduler and client, 1..=N the workers.
pub struct LocalCluster {
    client: Client,
    scheduler: Option<JoinHandle<Exit>>,
    workers: Vec<JoinHandle<WorkerExit>>,
}

/// Builds a [`LocalCluster`].
#[derive(Clone, Debug, Default)]
pub struct LocalClusterBuilder {
    config: Config,
}

impl LocalClusterBuilder {
    /// Number of workers (default: usable cores).
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = Some(n);
        self
    }

    /// Compute threads per worker (default 1).
    pub fn threads_per_worker(mut self, n: usize) -> Self {
        self.config.threads = Some(n);
        self
    }

    /// Kernels the workers know (default: [`Registry::builtin`]).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.config.registry = registry;
        self
    }

    /// Tasks queued per worker beyond one per thread.
    pub fn queue_extra(mut self, n: u32) -> Self {
        self.config.queue_extra = n;
        self
    }

    /// Whether workers record events (default: yes).
    pub fn events(mut self, on: bool) -> Self {
        self.config.events = on;
        self
    }

    /// How worker threads are bound to cores (default: not at all).
    pub fn bind(mut self, bind: Bind) -> Self {
        self.config.bind = bind;
        self
    }

    /// GPU workers beside the CPU workers: one per chosen GPU (default none).
    pub fn gpus(mut self, gpus: crate::gpu::GpuSelect) -> Self {
        self.config.gpus = gpus;
        self
    }

    /// How the GPU workers multiply f32 matrices (default exact IEEE f32).
    pub fn gpu_math(mut self, math: crate::gpu::GpuMath) -> Self {
        self.config.gpu_math = math;
        self
    }

    pub fn start(self) -> Result<LocalCluster> {
        LocalCluster::start_with(self.config)
    }
}

/// One UCX plane per rank of a local cluster when asked for (every block
/// between two workers then crosses UCP, as between processes).
fn local_planes(kind: TransportKind, ranks: u32, mailboxes: &Mailboxes) -> Result<Vec<Arc<dyn DataPlane>>> {
    if kind == TransportKind::Auto {
        return Ok(Vec::new());
    }
    let planes = (0..ranks).map(|r| start_plane(r, mailboxes.clone())).collect::<Result<Vec<_>>>()?;
    for a in &planes {
        for (r, b) in planes.iter().enumerate() {
            a.learn(r as u32, b.address().to_vec());
        }
    }
    Ok(planes)
}

impl LocalCluster {
    pub fn builder() -> LocalClusterBuilder {
        LocalClusterBuilder::default()
    }

    /// Starts a local cluster from a [`Config`] (its `launch` is ignored).
    ///
    /// With [`Config::gpus`], one GPU worker per GPU follows the CPU workers
    /// (ranks N+1.., one thread each); by default the CPU workers then leave
    /// a core to each GPU worker.
    pub fn start_with(config: Config) -> Result<LocalCluster> {
        let gpus = crate::gpu::open(&config.gpus, config.gpu_math)?;
        let cpu_workers =
            config.workers.unwrap_or_else(|| crate::host::sys::usable_cores().saturating_sub(gpus.len()).max(1));
        if cpu_workers + gpus.len() == 0 {
            return Err(Error::Config("a local cluster needs at least one worker".into()));
        }
        let n = cpu_workers + gpus.len();
        let threads = config.threads.unwrap_or(1).max(1);
        // The workers share this process: bind only when asked.
        let plans = match config.bind {
            Bind::Auto => vec![Vec::new(); n],
            bind => (0..n).map(|i| crate::host::topology::plan(bind, i, n, threads)).collect::<Result<_>>()?,
        };
        let mut gpu_of_worker = vec![None; cpu_workers];
        gpu_of_worker.extend(gpus.into_iter().map(Some));
        let registry = Arc::new(config.registry);
        let mut mailboxes = Mailboxes::new();
        let sched_inbox = mailboxes.open(Endpoint::SCHEDULER);
        let client_inbox = mailboxes.open(Endpoint::CLIENT);
        let worker_inboxes: Vec<_> = (1..=n as u32)
            .map(|r| {
                let store = BlockStore::new();
                mailboxes.attach_store(r, store.clone());
                (mailboxes.open(Endpoint::worker(r)), store)
            })
            .collect();
        let planes = local_planes(config.transport.check()?, n as u32 + 1, &mailboxes)?;
        let transport: Arc<dyn Transport> = Arc::new(LocalTransport::with_planes(mailboxes, n as u32 + 1, planes));

        let sched_config = SchedulerConfig {
            worker_ranks: (1..=n as u32).collect(),
            queue_extra: config.queue_extra,
            heartbeat_timeout: None,
            elastic: false,
        };
        let (scheduler, ready) =
            spawn_scheduler(Arc::clone(&registry), Arc::clone(&transport), sched_config, sched_inbox);
        let host = crate::host::sys::hostname();
        let workers = worker_inboxes
            .into_iter()
            .zip(1u32..)
            .zip(plans)
            .zip(gpu_of_worker)
            .map(|((((inbox, store), rank), cpus), gpu)| {
                let threads = if gpu.is_some() { 1 } else { threads };
                let wc =
                    WorkerConfig { events: config.events, cpus, gpu, ..WorkerConfig::new(rank, threads, host.clone()) };
                spawn_worker(wc, Arc::clone(&registry), Arc::clone(&transport), store, inbox)
            })
            .collect();
        let infos = ready.recv().map_err(|_| Error::ShutDown)??;
        tracing::info!(workers = n, threads_per_worker = threads, "local cluster started");
        Ok(LocalCluster { client: Client::new(transport, client_inbox, infos), scheduler: Some(scheduler), workers })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Stops workers and scheduler and waits for their threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(s) = self.scheduler.take() {
            self.client.shutdown(false, String::new());
            match s.join() {
                Ok(Exit::WorkerLost { rank, reason }) => tracing::error!(rank, %reason, "worker lost"),
                Ok(Exit::Clean) => {}
                Err(_) => {
                    // Nobody will tell the workers to stop: do it here, or
                    // joining them would wait forever.
                    tracing::error!("the scheduler thread panicked");
                    self.client.stop_workers(1..=self.workers.len() as u32, "the scheduler panicked");
                }
            }
            for w in self.workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

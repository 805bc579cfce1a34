//! Running on MPI ranks: launched by `mpirun`/`srun`, or on a communicator
//! an application already owns.
//!
//! [`run_on`] is collective over the communicator it is given. It works on a
//! private duplicate, so it never sees the application's messages, and
//! frees it before returning, so the application's MPI goes on undisturbed:
//!
//! ```no_run
//! use mpi::traits::*;
//! let universe = mpi::initialize().unwrap();
//! let world = universe.world();
//! // ... the application's own MPI work ...
//! let out = tessera_runtime::launch::mpi::run_on(&world, Default::default(), |client| {
//!     // only rank 0 runs this; the other ranks serve as workers meanwhile
//!     Ok::<_, tessera_runtime::Error>(client.workers().len())
//! })
//! .unwrap();
//! if world.rank() == 0 {
//!     assert!(out.is_some());
//! }
//! world.barrier(); // MPI is still usable
//! ```
//!
//! Threads per rank: the scheduler (rank 0), the driver (rank 0), a worker
//! loop and its compute threads, and the calling thread, which becomes the
//! progress thread and makes every MPI call (so `MPI_THREAD_FUNNELED` is
//! enough when Tessera is called from the main thread).

use std::fmt::Display;
use std::sync::Arc;

use mpi::collective::CommunicatorCollectives;
use mpi::environment::Threading;
use mpi::topology::{Communicator, SimpleCommunicator};

use super::{drive, spawn_scheduler, spawn_worker, start_plane, Config, SchedulerWorks, TransportKind};
use crate::client::Client;
use crate::error::Error;
use crate::protocol::{Endpoint, Role};
use crate::scheduler::{Exit, SchedulerConfig};
use crate::transport::mpi::{progress, MpiTransport};
use crate::transport::{Mailboxes, Transport};
use crate::worker::store::BlockStore;
use crate::worker::{WorkerConfig, WorkerExit};

/// Facts about the MPI library and this process's place in the world.
#[derive(Clone, Debug)]
pub struct MpiInfo {
    pub library: String,
    pub standard: (i32, i32),
    pub world_size: usize,
    pub rank: usize,
    pub processor: String,
    /// Each rank's host, by rank.
    pub hosts: Vec<String>,
    /// The hardware of each host (one entry per host; empty without the
    /// `hwloc` feature).
    pub topologies: Vec<crate::host::topology::HostTopology>,
    /// Whether the library takes GPU memory in its calls ([`cuda_aware`]).
    pub cuda_aware: Option<bool>,
}

/// Whether the MPI library can send from and receive into CUDA device
/// memory, as it says itself: Open MPI's `MPIX_Query_cuda_support()`,
/// MPICH's `MPIX_GPU_query_support(MPIX_GPU_SUPPORT_CUDA, ..)`, looked up
/// at run time since each library has only its own. `None` when it has
/// neither. Tessera does not use it yet: blocks between GPU workers go
/// through host memory.
pub fn cuda_aware() -> Option<bool> {
    type OpenMpi = unsafe extern "C" fn() -> std::ffi::c_int;
    type Mpich = unsafe extern "C" fn(std::ffi::c_int, *mut std::ffi::c_int) -> std::ffi::c_int;
    const MPIX_GPU_SUPPORT_CUDA: std::ffi::c_int = 0;
    // SAFETY: dlsym only looks the names up in the loaded libraries; each
    // symbol found is the library's function of the documented signature.
    unsafe {
        let f = libc::dlsym(libc::RTLD_DEFAULT, c"MPIX_Query_cuda_support".as_ptr());
        if !f.is_null() {
            return Some(std::mem::transmute::<*mut libc::c_void, OpenMpi>(f)() != 0);
        }
        let f = libc::dlsym(libc::RTLD_DEFAULT, c"MPIX_GPU_query_support".as_ptr());
        if !f.is_null() {
            let mut yes = 0;
            let ok = std::mem::transmute::<*mut libc::c_void, Mpich>(f)(MPIX_GPU_SUPPORT_CUDA, &mut yes) == 0;
            return ok.then_some(yes != 0);
        }
    }
    None
}

/// Version of the MPI library this build linked (callable without initialising MPI).
pub fn library_version() -> String {
    mpi::environment::library_version()
        .map(|s| {
            let s = s.trim_end_matches(['\0', '\n', ' ']);
            // Open MPI: "Open MPI v4.1.4, package: ..."; MPICH: "MPICH Version: 4.0 ..." (multi-line).
            s.lines().next().unwrap_or("").split(", package").next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// Initialises MPI, reads [`MpiInfo`] (every rank tells its host and
/// topology: collective), finalises.
pub fn info() -> Option<MpiInfo> {
    let universe = mpi::initialize()?;
    let world = universe.world();
    let mine = (crate::host::sys::hostname(), crate::host::topology::detect().ok());
    let all: Vec<(String, Option<crate::host::topology::HostTopology>)> = all_gather_json(&world, &mine);
    let mut topologies: Vec<crate::host::topology::HostTopology> = Vec::new();
    for t in all.iter().filter_map(|(_, t)| t.clone()) {
        if !topologies.iter().any(|x| x.host == t.host) {
            topologies.push(t);
        }
    }
    Some(MpiInfo {
        library: library_version(),
        standard: mpi::environment::version(),
        world_size: world.size() as usize,
        rank: world.rank() as usize,
        processor: mpi::environment::processor_name().unwrap_or_default(),
        hosts: all.into_iter().map(|(h, _)| h).collect(),
        topologies,
        cuda_aware: cuda_aware(),
    })
}

/// Every rank's `value`, by rank (collective over `comm`): for small
/// metadata that every rank must agree on or check (JSON on the wire).
pub fn all_gather_json<C, T>(comm: &C, value: &T) -> Vec<T>
where
    C: Communicator,
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    use mpi::datatype::PartitionMut;
    let bytes = serde_json::to_vec(value).expect("plain data serialises");
    let mut counts = vec![0i32; comm.size() as usize];
    comm.all_gather_into(&(bytes.len() as i32), &mut counts[..]);
    let displs: Vec<i32> = counts.iter().scan(0, |at, &c| Some(std::mem::replace(at, *at + c))).collect();
    let mut all = vec![0u8; counts.iter().map(|&c| c as usize).sum()];
    comm.all_gather_varcount_into(&bytes[..], &mut PartitionMut::new(&mut all[..], &counts[..], &displs[..]));
    displs
        .iter()
        .zip(&counts)
        .map(|(&d, &c)| serde_json::from_slice(&all[d as usize..(d + c) as usize]).expect("every rank sent JSON"))
        .collect()
}

/// What a rank brings to the UCX exchange.
#[derive(serde::Serialize, serde::Deserialize)]
enum UcxOffer {
    /// Started without `--transport ucx`.
    Off,
    /// Its UCP worker address.
    Address(Vec<u8>),
    /// UCX would not start there.
    Failed(String),
}

/// With `--transport ucx`: starts this rank's UCX plane and learns every
/// other rank's address (collective, so called on every rank whatever the
/// configuration: a rank started differently is named in the error).
fn mpi_plane(
    comm: &SimpleCommunicator,
    kind: TransportKind,
    mailboxes: &Mailboxes,
) -> Result<Option<Arc<dyn crate::transport::DataPlane>>, Error> {
    let rank = comm.rank() as u32;
    let kind = kind.check();
    let plane = match kind {
        Ok(TransportKind::Ucx) => Some(start_plane(rank, mailboxes.clone())),
        _ => None,
    };
    let offer = match (&kind, &plane) {
        (Err(e), _) => UcxOffer::Failed(e.to_string()),
        (Ok(_), None) => UcxOffer::Off,
        (Ok(_), Some(Ok(p))) => UcxOffer::Address(p.address().to_vec()),
        (Ok(_), Some(Err(e))) => UcxOffer::Failed(e.to_string()),
    };
    let offers: Vec<UcxOffer> = all_gather_json(comm, &offer);
    if let Some((r, reason)) = offers.iter().enumerate().find_map(|(r, o)| match o {
        UcxOffer::Failed(reason) => Some((r, reason)),
        _ => None,
    }) {
        return Err(Error::Config(format!("--transport ucx: rank {r}: {reason}")));
    }
    let using = offers.iter().filter(|o| matches!(o, UcxOffer::Address(_))).count();
    if using != 0 && using != offers.len() {
        let off = offers.iter().position(|o| matches!(o, UcxOffer::Off)).unwrap_or(0);
        let on = offers.iter().position(|o| matches!(o, UcxOffer::Address(_))).unwrap_or(0);
        return Err(Error::Config(format!(
            "rank {on} was started with --transport ucx and rank {off} without it; start every rank the same way"
        )));
    }
    let Some(plane) = plane else { return Ok(None) };
    let plane = plane?;
    for (r, offer) in offers.into_iter().enumerate() {
        if let UcxOffer::Address(address) = offer {
            plane.learn(r as u32, address);
        }
    }
    tracing::debug!(rank, ranks = comm.size(), "UCX addresses exchanged");
    Ok(Some(plane))
}

/// Cores this rank may use when `local_size` ranks share its host: what a
/// launcher bound it to, or else the host's cores shared out evenly.
pub fn core_share(local_size: usize) -> usize {
    let usable = crate::host::sys::usable_cores();
    let host = crate::host::sys::host_cores();
    // A launcher that bound us to a subset already gave us our share.
    if usable < host {
        usable
    } else {
        (host / local_size.max(1)).max(1)
    }
}

/// Decides threads and whether rank 0 works from the ranks sharing this host.
struct Placement {
    threads: usize,
    rank0_works: bool,
    /// This rank among the ranks of its host, and how many there are.
    local_rank: usize,
    local_size: usize,
    /// The GPU this rank drives (see [`crate::gpu::share_out`]), or why it
    /// could not look for one.
    gpu: Option<usize>,
    gpu_error: Option<Error>,
}

fn placement(world: &SimpleCommunicator, config: &Config) -> Result<Placement, Error> {
    let rank = world.rank();
    let size = world.size();
    let local = world.split_shared(rank);
    let local_size = local.size() as usize;
    let share = core_share(local_size);
    let rank0_works = match config.scheduler_works {
        SchedulerWorks::Yes => true,
        SchedulerWorks::No if size == 1 => {
            return Err(Error::Config(
                "--scheduler-works no with a single MPI rank leaves no worker; start at least 2 ranks".into(),
            ))
        }
        SchedulerWorks::No => false,
        SchedulerWorks::Auto => size == 1 || share > 1,
    };
    let mut threads = config.worker.threads.unwrap_or(share).max(1);
    if rank == 0 && rank0_works && config.worker.threads.is_none() && size > 1 && share > 1 {
        threads = share - 1; // leave the scheduler a core
    }
    // The host's GPUs go to its working ranks: each tells which devices it
    // sees (by UUID; `None`: not working), and every rank shares them out alike.
    let works = rank != 0 || rank0_works;
    let (seen, gpu_error) = match works.then(|| crate::gpu::resolve_devices(&config.worker.gpus)).transpose() {
        Ok(devices) => (devices.map(|d| d.into_iter().map(|d| (d.ordinal, d.uuid)).collect()), None),
        Err(e) => (Some(Vec::new()), Some(e)),
    };
    let host: Vec<Option<Vec<(usize, String)>>> = all_gather_json(&local, &seen);
    let local_rank = local.rank() as usize;
    let working: Vec<Vec<(usize, String)>> = host.iter().flatten().cloned().collect();
    let local_worker = host[..local_rank].iter().filter(|r| r.is_some()).count();
    let gpu = if works { crate::gpu::share_out(&working)[local_worker] } else { None };
    Ok(Placement { threads, rank0_works, local_rank, local_size, gpu, gpu_error })
}

/// Runs Tessera on the ranks of `comm` (collective). Rank 0 of `comm` runs
/// `driver` and gets `Ok(Some(result))`; the other ranks serve as workers
/// and get `Ok(None)`, or `Err` with [`Error::DriverFailed`] if the driver
/// failed. Every rank returns, and MPI stays initialised and usable.
pub fn run_on<C, R, E, F>(comm: &C, config: Config, driver: F) -> Result<Option<R>, E>
where
    C: Communicator,
    F: FnOnce(&Client) -> Result<R, E> + Send,
    R: Send,
    E: From<Error> + Display + Send,
{
    if mpi::environment::threading_support() == Threading::Single {
        tracing::warn!("MPI was initialised with MPI_THREAD_SINGLE; Tessera runs threads that do not call MPI, but FUNNELED or more is correct");
    }
    let comm = comm.duplicate();
    let rank = comm.rank() as u32;
    let size = comm.size() as u32;
    let mut place = match placement(&comm, &config) {
        Ok(p) => p,
        Err(e) => return Err(E::from(e)),
    };
    let works = rank != 0 || place.rank0_works;
    let cpus = match crate::host::topology::plan(config.worker.bind, place.local_rank, place.local_size, place.threads)
    {
        Ok(c) => c,
        Err(e) => return Err(E::from(e)),
    };
    // The first working ranks of each host take its GPUs, one each. Every
    // rank learns whether all opened theirs (collective), so that a rank
    // without its GPU fails the launch everywhere, naming itself.
    let gpu = match place.gpu_error.take() {
        Some(e) => Err(e),
        None => place.gpu.map(|o| crate::gpu::open_one(o, config.worker.gpu_math)).transpose(),
    };
    let failed: Vec<Option<String>> = all_gather_json(
        &comm,
        &gpu.as_ref().err().map(|e| match e {
            Error::Config(m) => m.clone(),
            e => e.to_string(),
        }),
    );
    if let Some((r, e)) = failed.iter().enumerate().find_map(|(r, e)| e.as_ref().map(|e| (r, e))) {
        return Err(E::from(Error::Config(format!("rank {r}: {e}"))));
    }
    let gpu = match gpu {
        Ok(g) => g,
        Err(e) => return Err(E::from(e)), // named above; not reached
    };
    let registry = Arc::new(config.registry.clone());

    let mut mailboxes = Mailboxes::new();
    let sched_inbox = (rank == 0).then(|| mailboxes.open(Endpoint::SCHEDULER));
    let client_inbox = (rank == 0).then(|| mailboxes.open(Endpoint::CLIENT));
    let ranks_on_host = crate::host::launcher::local_rank().map_or(1, |(_, n)| n);
    let (store, memory) = if works {
        match config.worker.memory.for_worker(rank, ranks_on_host, 1) {
            Ok(m) => m,
            Err(e) => return Err(E::from(e)),
        }
    } else {
        (BlockStore::new(), None)
    };
    if works {
        mailboxes.attach_store(rank, store.clone());
    }
    let worker_inbox = works.then(|| mailboxes.open(Endpoint { rank, role: Role::Worker }));
    let plane = match mpi_plane(&comm, config.worker.transport, &mailboxes) {
        Ok(p) => p,
        Err(e) => return Err(E::from(e)),
    };
    let (transport, outbox) = MpiTransport::new(rank, size, mailboxes, plane.clone());
    let dyn_transport: Arc<dyn Transport> = transport.clone();
    if rank != 0 {
        crate::observe::log::forward_errors_to(&dyn_transport, rank);
    }

    let worker = worker_inbox.map(|inbox| {
        let wc = WorkerConfig {
            events: config.worker.events,
            cpus,
            gpu,
            memory,
            ..WorkerConfig::new(rank, place.threads, crate::host::sys::hostname())
        };
        spawn_worker(wc, Arc::clone(&registry), Arc::clone(&dyn_transport), store, inbox)
    });

    let outcome = std::thread::scope(|s| {
        let mut scheduler = None;
        let mut driver_thread = None;
        if let (Some(sched_inbox), Some(client_inbox)) = (sched_inbox, client_inbox) {
            let worker_ranks: Vec<u32> = (0..size).filter(|&r| r != 0 || place.rank0_works).collect();
            let sc = SchedulerConfig {
                worker_ranks,
                queue_extra: config.queue_extra,
                heartbeat_timeout: Some(config.heartbeat_timeout),
                elastic: false,
                allowed_failures: SchedulerConfig::ALLOWED_FAILURES,
            };
            let (handle, ready) = spawn_scheduler(Arc::clone(&registry), Arc::clone(&dyn_transport), sc, sched_inbox);
            let abort = transport.abort_flag();
            let t = Arc::clone(&dyn_transport);
            let sched = s.spawn(move || {
                let exit = handle.join();
                match &exit {
                    Ok(Exit::WorkerLost { rank, reason }) => {
                        abort.raise(format!("worker rank {rank} was lost: {reason}"))
                    }
                    Err(_) => abort.raise("the scheduler panicked".into()),
                    Ok(Exit::Clean) => {}
                }
            });
            scheduler = Some(sched);
            driver_thread = Some(s.spawn(move || -> Result<R, E> {
                let infos = match ready.recv() {
                    Ok(Ok(infos)) => infos,
                    Ok(Err(e)) => return Err(E::from(e)),
                    Err(_) => return Err(E::from(Error::ShutDown)),
                };
                tracing::info!(ranks = size, workers = infos.len(), "MPI cluster ready");
                let client = Client::new(t, client_inbox, infos);
                client.set_progress(config.progress);
                drive(&client, driver, |failed, reason| client.shutdown(failed, reason))
            }));
        }
        let stats = progress(&comm, &transport, outbox, || {
            worker.as_ref().is_none_or(|w| w.is_finished())
                && scheduler.as_ref().is_none_or(|t| t.is_finished())
                && driver_thread.as_ref().is_none_or(|t| t.is_finished())
        });
        tracing::debug!(rank, ?stats, "progress loop ended");
        driver_thread.map(|t| t.join())
    });
    drop(plane); // the last reference stops the UCX progress thread

    let worker_exit = worker.map(|w| w.join().unwrap_or(WorkerExit::Disconnected));
    drop(comm);
    match outcome {
        Some(Ok(result)) => result.map(Some),
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        None => match worker_exit {
            Some(WorkerExit::Shutdown { failed: true, reason }) => Err(E::from(Error::DriverFailed { reason })),
            _ => Ok(None),
        },
    }
}

/// `Config::run` under MPI: initialise, run on the world, finalise. Worker
/// ranks exit the process here (status 0; rank 0 carries a failure).
pub(crate) fn run_world<R, E, F>(config: Config, driver: F) -> Result<R, E>
where
    F: FnOnce(&Client) -> Result<R, E> + Send,
    R: Send,
    E: From<Error> + Display + Send,
{
    let Some((universe, _threading)) = mpi::initialize_with_threading(Threading::Serialized) else {
        return Err(E::from(Error::Mpi {
            rank: 0,
            message: "MPI was already initialised; use tessera::mpi::run_on with your communicator".into(),
        }));
    };
    let world = universe.world();
    let rank = world.rank();
    crate::observe::log::set_rank(rank as u32);
    let result = run_on(&world, config, driver);
    if rank == 0 {
        drop(universe);
        return result.map(|r| r.expect("rank 0 runs the driver"));
    }
    // Worker ranks exit 0 even when the driver failed: rank 0 reports the
    // failure and exits non-zero itself, which fails the job. A worker that
    // exited non-zero first would make the launcher kill rank 0 before it
    // could print why.
    if let Err(e) = &result {
        tracing::debug!(rank, error = %e, "worker rank ends after a failed driver");
    }
    drop(universe);
    std::process::exit(0)
}

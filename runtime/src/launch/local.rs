//! The in-process cluster: worker threads of this process, no MPI, no
//! sockets, blocks shared by reference ([`LocalCluster`]). What
//! [`Config::run`] starts when nothing else launched the program, and what
//! tests and laptop programs start directly.

use std::sync::Arc;
use std::thread::JoinHandle;

use super::{spawn_scheduler, spawn_worker, start_plane, Config, TransportKind};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::gpu::{GpuMath, GpuSelect};
use crate::host::topology::Bind;
use crate::kernel::Registry;
use crate::protocol::Endpoint;
use crate::scheduler::{Exit, SchedulerConfig};
use crate::transport::local::LocalTransport;
use crate::transport::{DataPlane, Mailboxes, Transport};
use crate::worker::{WorkerConfig, WorkerExit};

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
        self.config.worker.threads = Some(n);
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
        self.config.worker.events = on;
        self
    }

    /// How worker threads are bound to cores (default: not at all).
    pub fn bind(mut self, bind: Bind) -> Self {
        self.config.worker.bind = bind;
        self
    }

    /// GPU workers beside the CPU workers: one per chosen GPU (default none).
    pub fn gpus(mut self, gpus: GpuSelect) -> Self {
        self.config.worker.gpus = gpus;
        self
    }

    /// How the GPU workers multiply f32 matrices (default exact IEEE f32).
    pub fn gpu_math(mut self, math: GpuMath) -> Self {
        self.config.worker.gpu_math = math;
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
    /// With [`WorkerSettings::gpus`](super::WorkerSettings::gpus), one GPU worker per GPU follows the CPU workers
    /// (ranks N+1.., one thread each); by default the CPU workers then leave
    /// a core to each GPU worker.
    pub fn start_with(config: Config) -> Result<LocalCluster> {
        let settings = &config.worker;
        let gpus = crate::gpu::open(&settings.gpus, settings.gpu_math)?;
        let cpu_workers =
            config.workers.unwrap_or_else(|| crate::host::sys::usable_cores().saturating_sub(gpus.len()).max(1));
        if cpu_workers + gpus.len() == 0 {
            return Err(Error::Config("a local cluster needs at least one worker".into()));
        }
        let n = cpu_workers + gpus.len();
        let threads = settings.threads.unwrap_or(1).max(1);
        // The workers share this process: bind only when asked.
        let plans = match settings.bind {
            Bind::Auto => vec![Vec::new(); n],
            bind => (0..n).map(|i| crate::host::topology::plan(bind, i, n, threads)).collect::<Result<_>>()?,
        };
        let mut gpu_of_worker = vec![None; cpu_workers];
        gpu_of_worker.extend(gpus.into_iter().map(Some));
        let registry = Arc::new(config.registry);
        let mut mailboxes = Mailboxes::new();
        let sched_inbox = mailboxes.open(Endpoint::SCHEDULER);
        let client_inbox = mailboxes.open(Endpoint::CLIENT);
        // One process on this host, its limit shared among its workers.
        let worker_inboxes: Vec<_> = (1..=n as u32)
            .map(|r| {
                let (store, memory) = settings.memory.for_worker(r, 1, n)?;
                mailboxes.attach_store(r, store.clone());
                Ok((mailboxes.open(Endpoint::worker(r)), store, memory))
            })
            .collect::<Result<_>>()?;
        let planes = local_planes(settings.transport.check()?, n as u32 + 1, &mailboxes)?;
        let transport: Arc<dyn Transport> = Arc::new(LocalTransport::with_planes(mailboxes, n as u32 + 1, planes));

        let sched_config = SchedulerConfig {
            worker_ranks: (1..=n as u32).collect(),
            queue_extra: config.queue_extra,
            heartbeat_timeout: None,
            elastic: false,
            allowed_failures: SchedulerConfig::ALLOWED_FAILURES,
        };
        let (scheduler, ready) =
            spawn_scheduler(Arc::clone(&registry), Arc::clone(&transport), sched_config, sched_inbox);
        let host = crate::host::sys::hostname();
        let workers = worker_inboxes
            .into_iter()
            .zip(1u32..)
            .zip(plans)
            .zip(gpu_of_worker)
            .map(|((((inbox, store, memory), rank), cpus), gpu)| {
                let threads = if gpu.is_some() { 1 } else { threads };
                let wc = WorkerConfig {
                    events: settings.events,
                    cpus,
                    gpu,
                    memory,
                    ..WorkerConfig::new(rank, threads, host.clone())
                };
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

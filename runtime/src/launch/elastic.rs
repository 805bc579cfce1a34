//! Elastic clusters over TCP: a long-lived scheduler, workers that join and
//! leave while it runs, and drivers that connect as clients (the shape of
//! dask.distributed: `dask scheduler`, `dask worker ADDR`, `Client(ADDR)`).
//!
//! | role | call | `tessera` command |
//! |---|---|---|
//! | scheduler (rank 0) | [`Scheduler::start`] | `tessera scheduler [--listen ADDR] [--interface NAME]` |
//! | worker (ranks 1, 2, ...) | [`run_worker`] | `tessera worker --scheduler ADDR [--lifetime S]` |
//! | driver | [`connect`], or [`crate::Config`] with `scheduler` set | `tessera demo --scheduler ADDR` |
//!
//! Every connection is authenticated with the cluster's [`Secret`] (see
//! [`crate::transport::tcp`] for the handshake). Workers draining at the end
//! of their lifetime (batch walltime minus a margin, staggered by a random
//! amount so a batch of workers does not leave at once) or on SIGTERM hand
//! their blocks to the others before exiting; [`crate::Client::retire_workers`]
//! does the same on the scheduler's initiative.
//!
//! ```
//! use std::time::Duration;
//! use tessera_runtime::launch::elastic::{self, SchedulerOptions, Secret, TcpOptions, WorkerOptions};
//! use tessera_runtime::{Graph, Key, Task};
//!
//! let opts = TcpOptions::new(Secret::generate()?);
//! let scheduler = elastic::Scheduler::start(SchedulerOptions { listen: "127.0.0.1:0".into(), ..SchedulerOptions::new(opts.clone()) })?;
//! let addr = scheduler.address().to_string();
//! let worker = std::thread::spawn({
//!     let opts = WorkerOptions::new(&addr, opts.clone());
//!     move || elastic::run_worker(opts)
//! });
//! let client = elastic::connect(&addr, opts)?;
//! client.wait_for_workers(1, Duration::from_secs(30))?;
//! let mut g = Graph::new();
//! g.push(Task::new(Key::new("x", []), "sum").param(&41.0f64));
//! g.push(Task::new(Key::new("y", []), "sum").param(&1.0f64).inputs([Key::new("x", [])]));
//! assert_eq!(client.compute(g, &[Key::new("y", [])])?[0].to_scalar(), Some(42.0));
//! drop(client);
//! scheduler.shutdown();
//! assert!(worker.join().unwrap()?.exit_ok());
//! # Ok::<(), tessera_runtime::Error>(())
//! ```

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{spawn_scheduler, spawn_worker, PlaneSeed, TransportKind, WorkerSettings};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::kernel::Registry;
use crate::protocol::{Endpoint, Msg, Role};
use crate::scheduler::{Exit, SchedulerConfig};
pub use crate::transport::secret::Secret;
/// The TCP options and secret a scheduler, a worker and a client start with.
pub use crate::transport::tcp::TcpOptions;
use crate::transport::tcp::{connect as dial, Intro, TcpTransport, Welcome};
use crate::transport::{Mailboxes, ReplyRouter, Transport};
use crate::worker::{WorkerConfig, WorkerExit};

/// How to start an elastic scheduler.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// Where to listen: `HOST:PORT`, `:PORT` or `""` (this host's routable
    /// address, see [`crate::host::sys::routable_address`]; port 0 lets the system
    /// choose). `0.0.0.0:PORT` listens everywhere and advertises the
    /// routable address.
    pub listen: String,
    /// Take the routable address from this interface (e.g. `ib0`).
    pub interface: Option<String>,
    /// Kernels the workers must have registered identically.
    pub registry: Registry,
    /// Tasks queued on each worker beyond one per thread.
    pub queue_extra: u32,
    /// A task that was running on this many workers lost without notice
    /// fails the computation (at least 1).
    pub allowed_failures: u32,
    pub tcp: TcpOptions,
}

impl SchedulerOptions {
    pub fn new(tcp: TcpOptions) -> SchedulerOptions {
        SchedulerOptions {
            listen: String::new(),
            interface: None,
            registry: Registry::builtin(),
            queue_extra: 4,
            allowed_failures: SchedulerConfig::ALLOWED_FAILURES,
            tcp,
        }
    }
}

/// Resolves a `--listen` value to the address to bind and the address to
/// advertise (what workers connect to).
pub fn resolve_listen(listen: &str, interface: Option<&str>) -> Result<(SocketAddr, SocketAddr)> {
    let bad = |reason: String| Error::Config(format!("--listen `{listen}`: {reason}"));
    let routable =
        || crate::host::sys::routable_address(interface).map_err(|e| Error::Config(format!("--interface: {e}")));
    let listen = listen.trim();
    let bind = if listen.is_empty() {
        SocketAddr::new(routable()?, 0)
    } else if let Some(port) = listen.strip_prefix(':') {
        let port = port.parse::<u16>().map_err(|_| bad("expected HOST:PORT or :PORT".into()))?;
        SocketAddr::new(routable()?, port)
    } else {
        listen
            .to_socket_addrs()
            .map_err(|e| bad(format!("expected HOST:PORT or :PORT ({e})")))?
            .next()
            .ok_or_else(|| bad("the name resolves to no address".into()))?
    };
    let advertise = if bind.ip().is_unspecified() { SocketAddr::new(routable()?, bind.port()) } else { bind };
    Ok((bind, advertise))
}

/// A running elastic scheduler: listens for workers and clients, and hosts
/// an in-process [`Client`] as well.
pub struct Scheduler {
    address: String,
    client: Client,
    transport: Arc<TcpTransport>,
    thread: Option<JoinHandle<Exit>>,
}

impl Scheduler {
    /// Binds, starts the scheduler thread and accepts connections.
    pub fn start(opts: SchedulerOptions) -> Result<Scheduler> {
        if opts.tcp.secret.is_none() {
            return Err(Error::Config("a scheduler needs a secret".into()));
        }
        let (bind, advertise) = resolve_listen(&opts.listen, opts.interface.as_deref())?;
        let listener = TcpListener::bind(bind).map_err(|e| Error::Config(format!("cannot listen on {bind}: {e}")))?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(bind.port());
        let address = SocketAddr::new(advertise.ip(), port).to_string();
        let mut mailboxes = Mailboxes::new();
        let sched_inbox = mailboxes.open(Endpoint::SCHEDULER);
        let client_inbox = mailboxes.open(Endpoint::CLIENT);
        let transport = TcpTransport::new(0, true, mailboxes, opts.tcp, Some(listener), None)?;
        let dyn_transport: Arc<dyn Transport> = transport.clone();
        let config = SchedulerConfig {
            worker_ranks: Vec::new(),
            queue_extra: opts.queue_extra,
            heartbeat_timeout: None, // the transport's keep-alives find silent workers
            elastic: true,
            allowed_failures: opts.allowed_failures.max(1),
        };
        let (thread, ready) = spawn_scheduler(Arc::new(opts.registry), Arc::clone(&dyn_transport), config, sched_inbox);
        ready.recv().map_err(|_| Error::ShutDown)??;
        tracing::info!(%address, %bind, "elastic scheduler listening");
        let client = Client::elastic(dyn_transport, client_inbox);
        Ok(Scheduler { address, client, transport, thread: Some(thread) })
    }

    /// The address workers and clients connect to (`IP:PORT`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A client in this process.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `Ok` while the scheduler runs; the error if its thread ended
    /// without being told to (a bug: the process should then exit, which
    /// closes every connection, so that workers and clients notice).
    pub fn check(&mut self) -> Result<()> {
        if !self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            return Ok(());
        }
        let t = self.thread.take().expect("checked above");
        let why = match t.join() {
            Ok(exit) => format!("its loop ended ({exit:?})"),
            Err(panic) => format!("it panicked: {}", crate::panic::message(&*panic)),
        };
        self.transport.close();
        Err(Error::SchedulerStopped { why })
    }

    /// Tells every worker to stop, waits for them (up to 30 s), closes.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.client.shutdown(false, String::new());
            let _ = t.join();
            self.transport.flush(Duration::from_secs(5));
            self.transport.close();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How to run an elastic worker.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The scheduler's address (`HOST:PORT`).
    pub scheduler: String,
    pub registry: Registry,
    /// Drain and leave after this long (the job's walltime minus a margin).
    pub lifetime: Option<Duration>,
    /// The lifetime moves by a random amount in `[-stagger, +stagger]`.
    pub lifetime_stagger: Duration,
    /// Leave anyway if the drain has not finished after this long.
    pub drain_timeout: Duration,
    /// Listen for peers on this interface (default: the one the scheduler
    /// was reached through).
    pub interface: Option<String>,
    /// Drain on SIGTERM or SIGINT (installs handlers; command-line workers).
    pub drain_on_signal: bool,
    /// What the worker calls itself ([`crate::WorkerInfo::name`]); default:
    /// the batch job's id from the environment, if any.
    pub name: String,
    /// Threads (default: the usable cores), binding (default: none; one
    /// worker per host is the usual elastic set-up), events, the block
    /// transport and the GPU, as for any worker.
    pub worker: WorkerSettings,
    pub tcp: TcpOptions,
}

impl WorkerOptions {
    pub fn new(scheduler: &str, tcp: TcpOptions) -> WorkerOptions {
        WorkerOptions {
            scheduler: scheduler.to_owned(),
            registry: Registry::builtin(),
            lifetime: None,
            lifetime_stagger: Duration::ZERO,
            drain_timeout: Duration::from_secs(120),
            interface: None,
            drain_on_signal: false,
            name: crate::host::launcher::batch_job_id(),
            worker: WorkerSettings::default(),
            tcp,
        }
    }
}

/// How an elastic worker ended.
#[derive(Debug)]
pub struct WorkerReport {
    pub rank: u32,
    pub exit: WorkerExit,
    /// It asked to leave (lifetime or signal) before it was told to stop.
    pub drained: bool,
    /// Why it asked: `lifetime` or `signal`.
    pub drain_cause: Option<&'static str>,
}

impl WorkerReport {
    /// Whether the worker stopped as told (retired, or the cluster shut down cleanly).
    pub fn exit_ok(&self) -> bool {
        matches!(self.exit, WorkerExit::Shutdown { failed: false, .. })
    }
}

/// The lifetime after stagger: `lifetime + u * stagger`, `u` uniform in [-1, 1].
fn staggered(lifetime: Duration, stagger: Duration) -> Duration {
    let r = crate::transport::secret::random_bytes::<8>().map(u64::from_le_bytes).unwrap_or(0);
    let u = (r >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
    Duration::from_secs_f64((lifetime.as_secs_f64() + u * stagger.as_secs_f64()).max(0.0))
}

/// Joins the scheduler at `opts.scheduler`, runs tasks until told to stop
/// (or until its lifetime ends or a signal comes, then drains first), and
/// returns how it ended. An error means it never joined (address, secret,
/// refused) or lost the scheduler.
pub fn run_worker(opts: WorkerOptions) -> Result<WorkerReport> {
    let settings = &opts.worker;
    let seed = match settings.transport.check()? {
        TransportKind::Ucx => Some(PlaneSeed::new()?),
        TransportKind::Auto => None,
    };
    // The GPU first: a worker that cannot open it never joins.
    let ordinals = crate::gpu::resolve(&settings.gpus)?;
    let local_rank = crate::host::launcher::local_rank().map(|(r, _)| r);
    let mine = crate::gpu::pick_own(&ordinals, local_rank);
    if ordinals.len() > 1 && local_rank.is_none() {
        tracing::warn!(gpus = %settings.gpus, "an elastic worker drives one GPU: using GPU {} (start one worker per GPU)", ordinals[0]);
    } else if !ordinals.is_empty() && mine.is_none() {
        tracing::warn!(gpus = %settings.gpus, "more workers than GPUs on this node: local rank {} runs on the CPU", local_rank.unwrap_or(0));
    }
    let gpu = mine.map(|o| crate::gpu::open_one(o, settings.gpu_math)).transpose()?;
    let ucx = seed.as_ref().map(|s| s.address().to_vec());
    let mut listener = None;
    let interface = opts.interface.clone();
    let (stream, welcome, keys) = dial(&opts.scheduler, &opts.tcp, |local| {
        // Listen where the scheduler reached us: that interface routes.
        let ip = match &interface {
            Some(name) => crate::host::sys::routable_address(Some(name))
                .map_err(|e| Error::Config(format!("--interface: {e}")))?,
            None => local.ip(),
        };
        let l = TcpListener::bind((ip, 0)).map_err(|e| Error::Config(format!("cannot listen on {ip}: {e}")))?;
        let listen = l.local_addr().map_err(|e| Error::Config(e.to_string()))?.to_string();
        listener = Some(l);
        Ok(Intro::Worker { listen, ucx })
    })?;
    let Welcome::Joined { rank, peers, ucx } = welcome else { unreachable!("refusals are errors") };
    let threads = settings.threads.unwrap_or_else(crate::host::sys::usable_cores).max(1);
    crate::observe::log::set_rank(rank);
    tracing::info!(rank, scheduler = %opts.scheduler, threads, "joined the cluster");
    let cpus = match settings.bind {
        crate::host::topology::Bind::Auto => Vec::new(),
        bind => crate::host::topology::plan(bind, 0, 1, threads)?,
    };

    let mut mailboxes = Mailboxes::new();
    let ranks_on_host = crate::host::launcher::local_rank().map_or(1, |(_, n)| n);
    let (store, memory) = settings.memory.for_worker(rank, ranks_on_host, 1)?;
    mailboxes.attach_store(rank, store.clone());
    let inbox = mailboxes.open(Endpoint::worker(rank));
    let plane = seed.map(|s| s.start(rank, mailboxes.clone())).transpose()?;
    let transport = TcpTransport::new(rank, false, mailboxes, opts.tcp.clone(), listener, plane)?;
    transport.learn(peers, ucx);
    transport.adopt(opts.scheduler.clone(), stream, keys);
    let dyn_transport: Arc<dyn Transport> = transport.clone();
    crate::observe::log::forward_errors_to(&dyn_transport, rank);
    let wc = WorkerConfig {
        name: opts.name.clone(),
        events: settings.events,
        cpus,
        gpu,
        memory,
        ..WorkerConfig::new(rank, threads, crate::host::sys::hostname())
    };
    let handle = spawn_worker(wc, Arc::new(opts.registry.clone()), Arc::clone(&dyn_transport), store, inbox);

    let signal = opts.drain_on_signal.then(crate::host::sys::termination_flag);
    let started = Instant::now();
    let lifetime = opts.lifetime.map(|l| staggered(l, opts.lifetime_stagger));
    if let Some(l) = lifetime {
        tracing::info!(rank, seconds = l.as_secs_f64(), "will drain after its lifetime");
    }
    let mut drain: Option<(Instant, &'static str)> = None;
    let mut gave_up = false;
    while !handle.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        if drain.is_none() {
            let cause = if signal.is_some_and(|f| f.load(Ordering::SeqCst)) {
                Some("signal")
            } else if lifetime.is_some_and(|l| started.elapsed() >= l) {
                Some("lifetime")
            } else {
                None
            };
            if let Some(cause) = cause {
                tracing::info!(rank, cause, "draining: asking the scheduler to retire this worker");
                dyn_transport.send(Endpoint::SCHEDULER, Msg::Drain { rank });
                drain = Some((Instant::now(), cause));
            }
        } else if let Some((since, _)) = drain {
            if !gave_up && since.elapsed() >= opts.drain_timeout {
                tracing::warn!(rank, "the drain did not finish in time; leaving anyway");
                let stop = Msg::Shutdown { failed: false, reason: "drain timed out".into() };
                dyn_transport.send(Endpoint { rank, role: Role::Worker }, stop);
                gave_up = true;
            }
        }
    }
    let exit = handle.join().unwrap_or(WorkerExit::Disconnected);
    transport.stopping();
    transport.flush(Duration::from_secs(5));
    transport.close();
    tracing::info!(rank, ?exit, "worker left the cluster");
    if let WorkerExit::Shutdown { failed: true, reason } = &exit {
        if reason.starts_with("lost the connection") {
            return Err(Error::SchedulerLost { reason: reason.clone() });
        }
    }
    Ok(WorkerReport { rank, exit, drained: drain.is_some(), drain_cause: drain.map(|d| d.1) })
}

/// A driver's connection to an elastic scheduler. Derefs to [`Client`].
pub struct RemoteClient {
    client: Client,
    rank: u32,
    transport: Arc<TcpTransport>,
}

impl RemoteClient {
    /// The rank the scheduler gave this client.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The address worker `rank` listens on for its peers (`IP:PORT`): where
    /// the other workers and this client fetch its blocks. `None` for a rank
    /// the scheduler has not announced (or has announced gone).
    pub fn worker_address(&self, rank: u32) -> Option<String> {
        self.transport.peer_address(rank)
    }
}

impl Deref for RemoteClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Connects to the elastic scheduler at `addr` as a client.
pub fn connect(addr: &str, tcp: TcpOptions) -> Result<RemoteClient> {
    let (stream, welcome, keys) = dial(addr, &tcp, |_| Ok(Intro::Client))?;
    let Welcome::Joined { rank, peers, ucx } = welcome else { unreachable!("refusals are errors") };
    let me = Endpoint { rank, role: Role::Client };
    let mut mailboxes = Mailboxes::new();
    let inbox = mailboxes.open(me);
    let router = ReplyRouter::default();
    mailboxes.attach_replies(router.clone());
    let transport = TcpTransport::new(rank, false, mailboxes, tcp, None, None)?;
    transport.learn(peers, ucx);
    transport.adopt(addr.to_owned(), stream, keys);
    tracing::info!(rank, scheduler = addr, "connected as a client");
    let client = Client::remote(Arc::clone(&transport) as Arc<dyn Transport>, inbox, me, router);
    Ok(RemoteClient { client, rank, transport })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpStream;
    use std::sync::OnceLock;

    use super::*;
    use crate::block::{Block, BlockHeader, Buffer, DType};
    use crate::graph::{Graph, Key, Task, TaskId};
    use crate::protocol::{encode_frame, inline_block_frame, Payload, WireRequest, MAX_FRAME};
    use crate::transport::secret::Secret;
    use crate::transport::tcp::{frames_until_closed, refusal, sealed, FrameKeys};

    fn registry() -> Registry {
        let mut r = Registry::empty();
        r.register_raw("fill", |_, _, _| Ok(Block::new(vec![5000], Buffer::F64(vec![0.5; 5000]))));
        r.register_raw("sum", |_, _, inputs| Ok(Block::scalar(inputs[0].as_f64().unwrap().iter().sum())));
        r
    }

    fn tcp() -> TcpOptions {
        let mut o = TcpOptions::new(Secret::from_bytes(&[9; 32]).unwrap());
        o.handshake_timeout = Duration::from_secs(5);
        o
    }

    /// Everything logged at WARN and above by this test process, so a test
    /// can check that a hostile peer was logged with its address.
    fn log() -> &'static parking_lot::Mutex<Vec<u8>> {
        static LOG: OnceLock<&'static parking_lot::Mutex<Vec<u8>>> = OnceLock::new();
        LOG.get_or_init(|| {
            let buffer: &'static parking_lot::Mutex<Vec<u8>> = Box::leak(Box::default());
            struct Sink(&'static parking_lot::Mutex<Vec<u8>>);
            impl Write for Sink {
                fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                    self.0.lock().extend_from_slice(b);
                    Ok(b.len())
                }
                fn flush(&mut self) -> std::io::Result<()> {
                    Ok(())
                }
            }
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::WARN)
                .with_ansi(false)
                .with_writer(move || Sink(buffer))
                .finish();
            let _ = tracing::subscriber::set_global_default(subscriber);
            buffer
        })
    }

    /// Waits (up to 5 s) for a log line that names `peer` and says `what`.
    fn logged(peer: &str, what: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = String::from_utf8_lossy(&log().lock()).lines().any(|l| l.contains(peer) && l.contains(what));
            if found || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A scheduler with two workers of one thread each.
    struct Cluster {
        server: Scheduler,
        addr: String,
        ranks: Vec<u32>,
        workers: Vec<std::thread::JoinHandle<Result<WorkerReport>>>,
    }

    impl Cluster {
        fn start() -> Cluster {
            log();
            let opts =
                SchedulerOptions { listen: "127.0.0.1:0".into(), registry: registry(), ..SchedulerOptions::new(tcp()) };
            let server = Scheduler::start(opts).unwrap();
            let addr = server.address().to_owned();
            let workers = (0..2)
                .map(|_| {
                    let mut o = WorkerOptions::new(&addr, tcp());
                    o.registry = registry();
                    o.worker.threads = Some(1);
                    std::thread::spawn(move || run_worker(o))
                })
                .collect();
            let ranks =
                server.client().wait_for_workers(2, Duration::from_secs(30)).unwrap().iter().map(|w| w.rank).collect();
            Cluster { server, addr, ranks, workers }
        }

        /// A computation whose block travels from the first worker to the second.
        fn serves(&self) {
            let mut g = Graph::new();
            g.push(Task::new(Key::new("fill", [0]), "fill").on_rank(self.ranks[0]));
            g.push(Task::new(Key::new("sum", [0]), "sum").inputs([Key::new("fill", [0])]).on_rank(self.ranks[1]));
            let out = self.server.client().compute(g, &[Key::new("sum", [0])]).unwrap();
            assert_eq!(out[0].as_f64(), Some(&[2500.0][..]));
        }

        /// Shuts down; both workers stopped as told, neither was lost.
        fn finish(self) {
            self.server.shutdown();
            for w in self.workers {
                let report = w.join().unwrap().unwrap();
                assert!(report.exit_ok(), "{report:?}");
            }
        }
    }

    /// An authenticated connection that the test writes raw frames on.
    struct Raw {
        stream: TcpStream,
        keys: FrameKeys,
        rank: u32,
        /// The address the other side sees this connection come from.
        local: String,
        /// Where the workers listen (from the welcome).
        peers: Vec<(u32, String)>,
    }

    impl Raw {
        fn join(addr: &str, intro: Intro) -> Raw {
            let (stream, welcome, keys) = dial(addr, &tcp(), |_| Ok(intro)).unwrap();
            let Welcome::Joined { rank, peers, .. } = welcome else { unreachable!() };
            let local = stream.local_addr().unwrap().to_string();
            Raw { stream, keys, rank, local, peers }
        }

        fn worker(addr: &str) -> Raw {
            Raw::join(addr, Intro::Worker { listen: "127.0.0.1:1".into(), ucx: None })
        }

        fn send(&mut self, msg: Msg) -> &mut Raw {
            self.frame(&encode_frame(&[(Role::Scheduler, msg)]).unwrap())
        }

        fn frame(&mut self, frame: &[u8]) -> &mut Raw {
            let bytes = sealed(&mut self.keys, frame);
            self.stream.write_all(&bytes).unwrap();
            self
        }

        /// What the other side sent until it closed the connection (`None`: still open after `limit`).
        fn until_closed(&mut self, limit: Duration) -> Option<Vec<Msg>> {
            frames_until_closed(&mut self.stream, Some(&mut self.keys), limit)
        }

        /// The reason the other side gave before it closed the connection,
        /// after checking that it logged this connection's address with it.
        fn refused(&mut self) -> String {
            let msgs = self.until_closed(Duration::from_secs(10)).expect("the connection is closed");
            let why = refusal(&msgs).unwrap_or_else(|| panic!("no refusal in {msgs:?}")).to_owned();
            assert!(logged(&self.local, "refused what a peer sent"), "{} not logged", self.local);
            why
        }
    }

    /// Each hostile block header (announced header-only and inline) closes
    /// its own connection; the scheduler keeps serving a computation whose
    /// block travels between two workers.
    #[test]
    fn a_scheduler_survives_hostile_block_headers() {
        let c = Cluster::start();
        for shape in [vec![1usize << 40], vec![1 << 61], vec![1 << 32, 1 << 32]] {
            let header = BlockHeader { dtype: DType::F64, shape };
            let msg = Msg::Block { id: TaskId(1), payload: Payload::Incoming(header.clone()) };
            let why = Raw::worker(&c.addr).send(msg).refused();
            assert!(why.contains("f64"), "{why}");
            let why = Raw::worker(&c.addr).frame(&inline_block_frame(header, &[0; 16])).refused();
            assert!(why.contains("f64"), "{why}");
        }
        c.serves();
        c.finish();
    }

    /// A member that names another worker's rank in `Hello`, `Bye`,
    /// `Drain`, `Replica` or `Log` is cut off; the worker it named keeps
    /// working (a believed `Bye` or `Drain` would have removed it).
    #[test]
    fn ranks_claimed_in_messages_must_be_the_connections() {
        let c = Cluster::start();
        let victim = c.ranks[0];
        let claims = [
            Msg::Hello {
                rank: victim,
                threads: 64,
                host: "x".into(),
                name: String::new(),
                registry: 0,
                kernels: 0,
                gpu: String::new(),
            },
            Msg::Bye { rank: victim },
            Msg::Drain { rank: victim },
            Msg::Replica { id: TaskId(0), rank: victim },
            Msg::Log { rank: victim, line: "forged".into() },
        ];
        for msg in claims {
            let mut raw = Raw::worker(&c.addr);
            let why = raw.send(msg).refused();
            assert!(
                why.contains(&format!("claims rank {victim}")) && why.contains(&format!("rank {}'s", raw.rank)),
                "{why}"
            );
        }
        c.serves();
        // Honest workers' rank-carrying answers still pass: both send their events.
        let log = c.server.client().events().unwrap();
        let mut answered: Vec<u32> = log.workers.iter().map(|w| w.rank).collect();
        let mut ranks = c.ranks.clone();
        answered.sort_unstable();
        ranks.sort_unstable();
        assert_eq!(answered, ranks);
        assert!(log.task_count() >= 2, "the computation's tasks were recorded");
        c.finish();
    }

    /// Orders only the scheduler gives are refused from a worker's or a
    /// client's connection to the scheduler, and from a direct connection
    /// to a worker; a direct connection may not claim to be the scheduler.
    #[test]
    fn orders_from_anyone_but_the_scheduler_are_refused() {
        let c = Cluster::start();
        let orders = || {
            [
                Msg::Peers { add: Vec::new(), remove: vec![1, 2], ucx: Vec::new() },
                Msg::Shutdown { failed: true, reason: "forged".into() },
                Msg::Run(Vec::new()),
                Msg::Release(vec![TaskId(0)]),
                Msg::Cancel(vec![TaskId(0)]),
                Msg::Acquire(Vec::new()),
                Msg::CollectEvents { req: 0, clear: true },
            ]
        };
        for msg in orders() {
            let why = Raw::worker(&c.addr).send(msg).refused();
            assert!(why.contains("only the scheduler sends"), "{why}");
        }
        let mut client = Raw::join(&c.addr, Intro::Client);
        assert!(client
            .send(Msg::Shutdown { failed: true, reason: "forged".into() })
            .refused()
            .contains("only the scheduler"));
        // Straight to a worker, as a member opening a direct connection.
        let client = Raw::join(&c.addr, Intro::Client);
        let (_, listen) = client.peers.iter().find(|(r, _)| *r == c.ranks[0]).unwrap().clone();
        for msg in orders() {
            let why = Raw::join(&listen, Intro::Peer { rank: client.rank }).send(msg).refused();
            assert!(why.contains("only the scheduler sends"), "{why}");
        }
        let err = dial(&listen, &tcp(), |_| Ok(Intro::Peer { rank: 0 })).unwrap_err().to_string();
        assert!(err.contains("not something this process accepts"), "{err}");
        c.serves();
        c.finish();
    }

    /// A client that releases results it never held frees nothing: another
    /// client's persisted result is still there.
    #[test]
    fn a_client_releases_only_what_it_holds() {
        let c = Cluster::start();
        let owner = connect(&c.addr, tcp()).unwrap();
        let mut g = Graph::new();
        g.push(Task::new(Key::new("fill", [0]), "fill"));
        let kept = owner.persist(g, &[Key::new("fill", [0])]).unwrap();
        kept.wait().unwrap();
        let mut thief = Raw::join(&c.addr, Intro::Client);
        let from = Endpoint { rank: thief.rank, role: Role::Client };
        thief.send(Msg::Request { id: 0, from, req: WireRequest::Release { ids: (0..1000).map(TaskId).collect() } });
        // Released or not, the scheduler has handled the release once a later
        // request of the same connection is answered.
        thief.send(Msg::Request { id: 1, from, req: WireRequest::State });
        let msgs = thief.until_closed(Duration::from_millis(1500));
        assert!(msgs.is_none(), "the connection stays open");
        assert!(logged(&format!("rank={}", thief.rank), "does not hold"));
        let blocks = kept.gather().unwrap();
        assert_eq!(blocks[0].as_f64().map(|v| v.len()), Some(5000));
        drop(kept);
        drop(owner);
        c.serves();
        c.finish();
    }

    /// A frame announced over the limit is answered with a refusal saying
    /// so, then the connection closes; a malformed frame likewise.
    #[test]
    fn oversized_and_malformed_frames_are_answered_then_closed() {
        let c = Cluster::start();
        let mut raw = Raw::worker(&c.addr);
        raw.stream.write_all(&((MAX_FRAME + 1) as u32).to_le_bytes()).unwrap();
        let why = raw.refused();
        assert!(why.contains(&format!("exceeds the limit of {MAX_FRAME}")), "{why}");
        let why = Raw::worker(&c.addr).frame(&[crate::protocol::PROTOCOL_VERSION, 0xff, 0xff, 0xff]).refused();
        assert!(why.contains("malformed"), "{why}");
        c.serves();
        c.finish();
    }

    /// A frame whose MAC does not verify (altered on the way, injected, or
    /// replayed) is refused and its connection closed.
    #[test]
    fn frames_without_their_mac_are_refused() {
        let c = Cluster::start();
        let mut raw = Raw::worker(&c.addr);
        let frame = encode_frame(&[(Role::Scheduler, Msg::Heartbeat { rank: raw.rank })]).unwrap();
        let mut bytes = sealed(&mut raw.keys, &frame);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        raw.stream.write_all(&bytes).unwrap();
        assert!(raw.refused().contains("MAC does not verify"));
        // A frame sent twice: the second is a replay.
        let mut raw = Raw::worker(&c.addr);
        let frame = encode_frame(&[(Role::Scheduler, Msg::Heartbeat { rank: raw.rank })]).unwrap();
        let bytes = sealed(&mut raw.keys, &frame);
        raw.stream.write_all(&bytes).unwrap();
        raw.stream.write_all(&bytes).unwrap();
        assert!(raw.refused().contains("MAC does not verify"));
        c.serves();
        c.finish();
    }

    /// A request too large for a frame is answered with an error on the
    /// client's side; its connection stays up and serves the next request.
    #[test]
    fn an_oversized_request_is_answered_with_an_error() {
        let c = Cluster::start();
        let client = connect(&c.addr, tcp()).unwrap();
        let mut g = Graph::new();
        for i in 0..2 {
            g.push(Task::new(Key::new("fill", [i]), "fill").raw_params(vec![7u8; (MAX_FRAME / 2) as usize]));
        }
        let err = client.compute(g, &[Key::new("fill", [0])]).unwrap_err();
        assert!(matches!(err, Error::Unsendable { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("a graph of 2 tasks cannot be sent") && text.contains(&format!("limit of {MAX_FRAME}")),
            "{text}"
        );
        let mut g = Graph::new();
        g.push(Task::new(Key::new("fill", [0]), "fill"));
        g.push(Task::new(Key::new("sum", [0]), "sum").inputs([Key::new("fill", [0])]));
        assert_eq!(client.compute(g, &[Key::new("sum", [0])]).unwrap()[0].to_scalar(), Some(2500.0));
        drop(client);
        c.serves();
        c.finish();
    }

    /// Connections that never finish their handshake take at most
    /// `MAX_HANDSHAKES` threads; more are closed at once and logged, the
    /// cluster computes meanwhile, and the slots free at the deadline.
    #[test]
    fn idle_connections_cannot_exhaust_the_scheduler() {
        use crate::transport::tcp::MAX_HANDSHAKES;
        let c = Cluster::start();
        let idle: Vec<TcpStream> = (0..MAX_HANDSHAKES).map(|_| TcpStream::connect(&c.addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut extra = TcpStream::connect(&c.addr).unwrap();
        let local = extra.local_addr().unwrap().to_string();
        assert!(frames_until_closed(&mut extra, None, Duration::from_secs(2)).is_some(), "closed at once");
        assert!(logged(&local, "too many connections in their handshake"));
        c.serves();
        // At the deadline (5 s) the idle ones are closed and logged, and members get in again.
        std::thread::sleep(Duration::from_secs(5));
        assert!(logged(&idle[0].local_addr().unwrap().to_string(), "no greeting"));
        let client = connect(&c.addr, tcp()).unwrap();
        assert_eq!(client.workers().len(), 2);
        drop(client);
        drop(idle);
        c.finish();
    }

    /// A reader thread that panics still runs its clean-up: the member is
    /// declared lost, and the scheduler goes on.
    #[test]
    fn a_panicking_reader_loses_its_member_and_nothing_else() {
        let c = Cluster::start();
        let mut raw = Raw::worker(&c.addr);
        let rank = raw.rank;
        raw.send(Msg::Log { rank, line: crate::transport::tcp::PANIC_IN_READER.into() });
        assert!(raw.until_closed(Duration::from_secs(10)).is_some(), "the connection is closed");
        assert!(logged(&raw.local, "reader panicked"));
        c.serves();
        c.finish();
    }
}

//! The driver's handle on a running cluster.
//!
//! A [`Client`] submits graphs to the scheduler, waits for results and
//! gathers blocks straight from the workers that hold them. In-process (the
//! driver and the scheduler share rank 0) a request is one channel message;
//! a remote client of an elastic cluster ([`crate::launch::elastic::connect`]) sends the
//! same request as a [`WireRequest`](crate::protocol::WireRequest) over its TCP connection and gets one
//! [`WireReply`](crate::protocol::WireReply) back: two messages per call, whatever the graph's size. Results kept on the
//! workers are [`Persisted`]: they stay there, usable as inputs of later
//! graphs by their keys, until the `Persisted` is dropped.
//!
//! ```
//! use tessera_runtime::{Graph, Key, LocalCluster, Task};
//! let cluster = LocalCluster::builder().workers(2).start().unwrap();
//! let client = cluster.client();
//! let mut g = Graph::new();
//! for i in 0..4 {
//!     g.push(Task::new(Key::new("one", [i]), "sum").param(&1.0f64));
//! }
//! g.push(Task::new(Key::new("total", []), "sum").param(&0.0f64)
//!     .inputs((0..4).map(|i| Key::new("one", [i]))));
//! let out = client.compute(g, &[Key::new("total", [])]).unwrap();
//! assert_eq!(out[0].to_scalar(), Some(4.0));
//! ```

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::block::Block;
use crate::error::{Error, Result};
use crate::graph::{Graph, Key, TaskId};
use crate::observe::events::EventLog;
use crate::observe::progress::{Baseline, Monitor, Progress};
use crate::protocol::{ClientRequest, ClusterState, Endpoint, Msg, Payload, Reply, WireReply, WireRequest, WorkerInfo};
use crate::transport::{ReplyRouter, Transport};

/// How a client reaches its scheduler.
enum Link {
    /// Same process: requests are channel messages.
    Local,
    /// Another process: requests are messages on the wire, answers come
    /// back through the transport's reply router.
    Remote { replies: ReplyRouter, next: AtomicU64 },
}

struct Inner {
    transport: Arc<dyn Transport>,
    inbox: Mutex<Receiver<Msg>>,
    me: Endpoint,
    /// Fixed clusters: the workers from start-up. Elastic ones: asked each time.
    workers: Option<Vec<WorkerInfo>>,
    link: Link,
    /// How waits show progress ([`Progress`] as a byte).
    progress: AtomicU8,
}

impl Inner {
    /// Sends `req` and waits for the answer.
    fn call(&self, req: WireRequest) -> Result<WireReply> {
        match &self.link {
            Link::Local => {
                let (tx, rx) = crossbeam_channel::bounded(1);
                let reply = Some(Reply::new(move |r| {
                    let _ = tx.send(r);
                }));
                self.transport.send(Endpoint::SCHEDULER, Msg::Client(ClientRequest::Wire { req, reply }));
                rx.recv().map_err(|_| Error::ShutDown)
            }
            Link::Remote { replies, next } => {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let rx = replies.expect(id);
                self.transport.send(Endpoint::SCHEDULER, Msg::Request { id, from: self.me, req });
                rx.recv().map_err(|_| replies.lost())
            }
        }
    }

    /// Sends a request that has no answer.
    fn notify(&self, req: WireRequest) {
        match &self.link {
            Link::Local => {
                self.transport.send(Endpoint::SCHEDULER, Msg::Client(ClientRequest::Wire { req, reply: None }));
            }
            Link::Remote { .. } => self.transport.send(Endpoint::SCHEDULER, Msg::Request { id: 0, from: self.me, req }),
        }
    }
}

fn unexpected(reply: WireReply) -> Error {
    Error::Connect { addr: "the scheduler".into(), reason: format!("it answered with {reply:?}"), source: None }
}

/// Submits work to the cluster. Cheap to clone; all clones talk to one scheduler.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// A client on rank 0 of a cluster whose workers are fixed at start-up.
    pub(crate) fn new(transport: Arc<dyn Transport>, inbox: Receiver<Msg>, workers: Vec<WorkerInfo>) -> Client {
        Client::build(transport, inbox, Endpoint::CLIENT, Some(workers), Link::Local)
    }

    /// A client in the scheduler's process of an elastic cluster.
    pub(crate) fn elastic(transport: Arc<dyn Transport>, inbox: Receiver<Msg>) -> Client {
        Client::build(transport, inbox, Endpoint::CLIENT, None, Link::Local)
    }

    /// A client in another process, reached over the wire as `me`.
    pub(crate) fn remote(
        transport: Arc<dyn Transport>,
        inbox: Receiver<Msg>,
        me: Endpoint,
        replies: ReplyRouter,
    ) -> Client {
        Client::build(transport, inbox, me, None, Link::Remote { replies, next: AtomicU64::new(1) })
    }

    fn build(
        transport: Arc<dyn Transport>,
        inbox: Receiver<Msg>,
        me: Endpoint,
        workers: Option<Vec<WorkerInfo>>,
        link: Link,
    ) -> Client {
        let progress = AtomicU8::new(Progress::Off.to_u8());
        Client { inner: Arc::new(Inner { transport, inbox: Mutex::new(inbox), me, workers, link, progress }) }
    }

    /// The workers of the cluster, by rank: fixed at start-up for local and
    /// MPI clusters, asked of the scheduler (one round trip) for elastic ones,
    /// whose workers come and go. Empty if the scheduler cannot be asked.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        match &self.inner.workers {
            Some(w) => w.clone(),
            None => self.try_workers().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot ask the scheduler for its workers");
                Vec::new()
            }),
        }
    }

    /// The workers the scheduler has now.
    pub fn try_workers(&self) -> Result<Vec<WorkerInfo>> {
        match &self.inner.workers {
            Some(w) => Ok(w.clone()),
            None => match self.inner.call(WireRequest::Workers)? {
                WireReply::Workers(w) => Ok(w),
                other => Err(unexpected(other)),
            },
        }
    }

    /// Whether workers may join and leave (a TCP cluster).
    pub fn is_elastic(&self) -> bool {
        self.inner.workers.is_none()
    }

    /// Waits until the cluster has at least `n` workers, or fails after `timeout`.
    pub fn wait_for_workers(&self, n: usize, timeout: Duration) -> Result<Vec<WorkerInfo>> {
        let deadline = Instant::now() + timeout;
        loop {
            let w = self.try_workers()?;
            if w.len() >= n {
                return Ok(w);
            }
            if Instant::now() >= deadline {
                return Err(Error::Config(format!(
                    "{} of the {n} workers asked for joined within {:.0} s",
                    w.len(),
                    timeout.as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Compute threads over all workers.
    pub fn total_threads(&self) -> usize {
        self.workers().iter().map(|w| w.threads as usize).sum()
    }

    /// What the scheduler tracks now: a diagnostic (and what tests use to
    /// check that everything is released).
    pub fn state(&self) -> Result<ClusterState> {
        match self.inner.call(WireRequest::State)? {
            WireReply::State(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// How waits for results show progress (default [`Progress::Off`]; see
    /// [`crate::observe::progress`]). Applies to every clone.
    pub fn set_progress(&self, mode: Progress) {
        self.inner.progress.store(mode.to_u8(), Ordering::Relaxed);
    }

    pub fn progress(&self) -> Progress {
        Progress::from_u8(self.inner.progress.load(Ordering::Relaxed))
    }

    /// Gathers the events every worker recorded since it started (or since
    /// the last [`Client::take_events`]): what ran where, when, and how
    /// blocks moved. Turn it into a report with [`crate::observe::report`].
    pub fn events(&self) -> Result<EventLog> {
        self.collect_events(false)
    }

    /// Like [`Client::events`], and empties the workers' buffers, so the
    /// next call sees only what runs after this one.
    pub fn take_events(&self) -> Result<EventLog> {
        self.collect_events(true)
    }

    fn collect_events(&self, clear: bool) -> Result<EventLog> {
        match self.inner.call(WireRequest::Events { clear })? {
            WireReply::Events(log) => Ok(log),
            other => Err(unexpected(other)),
        }
    }

    /// Name of the transport (`local`, `mpi`, `tcp`).
    pub fn transport(&self) -> &'static str {
        self.inner.transport.name()
    }

    /// Retires the workers of `ranks` gracefully (elastic clusters; what a
    /// job queue's scale-down calls before cancelling their jobs): the
    /// scheduler stops giving them tasks, lets the running ones finish, has
    /// every block only they hold copied to another worker, then tells them
    /// to exit. Returns the ranks once all have left.
    ///
    /// With no other worker left to take their blocks, they leave anyway and
    /// their blocks are recomputed from their inputs when a worker joins
    /// (or fail, naming the worker, when the inputs are gone).
    pub fn retire_workers(&self, ranks: &[u32]) -> Result<Vec<u32>> {
        match self.inner.call(WireRequest::Retire { ranks: ranks.to_vec() })? {
            WireReply::Retire(r) => r,
            other => Err(unexpected(other)),
        }
    }

    /// Submits `graph` and keeps `outputs` on the workers. Returns once the
    /// scheduler has validated the graph; the computation goes on meanwhile.
    ///
    /// Errors (nothing runs): duplicate keys, unknown kernels, inputs that are
    /// neither in the graph nor held by the cluster, cycles, unknown outputs.
    pub fn persist(&self, graph: Graph, outputs: &[Key]) -> Result<Persisted> {
        let keys = outputs.to_vec();
        let baseline = match self.progress() {
            Progress::Off => None,
            mode => {
                let total = graph.len() as u64;
                Some(Baseline { mode, total, state: self.state()?, started: Instant::now() })
            }
        };
        let ids = match self.inner.call(WireRequest::Submit { tasks: graph.into_tasks(), outputs: keys.clone() })? {
            WireReply::Submit(r) => r?,
            other => return Err(unexpected(other)),
        };
        Ok(Persisted { client: self.clone(), keys, ids, baseline })
    }

    /// Computes `outputs` of `graph` and brings their blocks to the driver.
    pub fn compute(&self, graph: Graph, outputs: &[Key]) -> Result<Vec<Block>> {
        self.persist(graph, outputs)?.gather()
    }

    /// Stops the cluster's workers and scheduler. Called by the cluster types
    /// when they finish; later calls on any clone fail with [`Error::ShutDown`].
    pub(crate) fn shutdown(&self, failed: bool, reason: String) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let reply = Reply::new(move |()| {
            let _ = tx.send(());
        });
        self.inner.transport.send(Endpoint::SCHEDULER, Msg::Client(ClientRequest::Shutdown { failed, reason, reply }));
        let _ = rx.recv();
    }

    /// Tells workers to stop without the scheduler (which is gone).
    pub(crate) fn stop_workers(&self, ranks: impl IntoIterator<Item = u32>, reason: &str) {
        for r in ranks {
            let msg = Msg::Shutdown { failed: true, reason: reason.to_owned() };
            self.inner.transport.send(Endpoint::worker(r), msg);
        }
    }

    fn wait_ids(&self, ids: &[TaskId], baseline: Option<&Baseline>) -> Result<Vec<Vec<u32>>> {
        let _monitor = baseline.map(|b| {
            let client = self.clone();
            Monitor::start(move || client.state(), b.clone())
        });
        match self.inner.call(WireRequest::Wait { ids: ids.to_vec() })? {
            WireReply::Wait(r) => r,
            other => Err(unexpected(other)),
        }
    }

    fn fetch(&self, keys: &[Key], ids: &[TaskId], holders: &[Vec<u32>]) -> Result<Vec<Block>> {
        let inbox = self.inner.inbox.lock();
        let mut want: FxHashMap<TaskId, usize> = FxHashMap::default();
        for (i, (id, h)) in ids.iter().zip(holders).enumerate() {
            let Some(&holder) = h.first() else {
                return Err(Error::Lost { key: keys[i].clone(), reason: "no worker holds it".into() });
            };
            if want.insert(*id, i).is_none() {
                let fetch = Msg::Fetch { id: *id, reply_to: self.inner.me };
                self.inner.transport.send(Endpoint::worker(holder), fetch);
            }
        }
        let mut out: Vec<Option<Block>> = vec![None; ids.len()];
        let mut left = want.len();
        while left > 0 {
            match inbox.recv().map_err(|_| Error::ShutDown)? {
                Msg::Block { id, payload: Payload::Ready(b) } => {
                    if let Some(&i) = want.get(&id) {
                        if out[i].is_none() {
                            out[i] = Some(b);
                            left -= 1;
                        }
                    }
                }
                Msg::Missing { id, rank } => {
                    if let Some(&i) = want.get(&id) {
                        if out[i].is_none() {
                            return Err(Error::Lost {
                                key: keys[i].clone(),
                                reason: format!("rank {rank} no longer holds it"),
                            });
                        }
                    }
                }
                other => tracing::warn!(msg = ?other, "client got an unexpected message"),
            }
        }
        // Repeated outputs share the fetched block.
        for (i, id) in ids.iter().enumerate() {
            if out[i].is_none() {
                out[i] = out[want[id]].clone();
            }
        }
        Ok(out.into_iter().map(|b| b.expect("every block fetched")).collect())
    }
}

/// Results kept on the workers. Dropping it releases them.
pub struct Persisted {
    client: Client,
    keys: Vec<Key>,
    ids: Vec<TaskId>,
    /// What progress is measured against (when the client shows it).
    baseline: Option<Baseline>,
}

impl Persisted {
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Splits the handle in two: `self` keeps the first `at` results, the
    /// returned handle the rest (each releases its own when dropped).
    ///
    /// # Panics
    /// If `at > self.len()`.
    pub fn split_off(&mut self, at: usize) -> Persisted {
        Persisted {
            client: self.client.clone(),
            keys: self.keys.split_off(at),
            ids: self.ids.split_off(at),
            baseline: self.baseline.clone(),
        }
    }

    /// Blocks until every result is computed (or one failed).
    pub fn wait(&self) -> Result<()> {
        self.client.wait_ids(&self.ids, self.baseline.as_ref()).map(drop)
    }

    /// Ranks holding each result, once computed.
    pub fn locations(&self) -> Result<Vec<Vec<u32>>> {
        self.client.wait_ids(&self.ids, self.baseline.as_ref())
    }

    /// Waits for the results and brings their blocks to the driver, each
    /// fetched from a worker holding it.
    ///
    /// On an elastic cluster a holder may leave between the answer and the
    /// fetch; the scheduler then knows other holders (or recomputes the
    /// block), so the gather asks again, a few times.
    pub fn gather(&self) -> Result<Vec<Block>> {
        let mut attempt = 0;
        loop {
            let holders = self.client.wait_ids(&self.ids, self.baseline.as_ref())?;
            match self.client.fetch(&self.keys, &self.ids, &holders) {
                Err(Error::Lost { .. }) if self.client.is_elastic() && attempt < 5 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(50 << attempt));
                }
                result => return result,
            }
        }
    }
}

impl Drop for Persisted {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            let ids = std::mem::take(&mut self.ids);
            self.client.inner.notify(WireRequest::Release { ids });
        }
    }
}

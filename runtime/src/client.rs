//! The driver's handle on a running cluster.
//!
//! A [`Client`] submits graphs to the scheduler (in-process channel: the
//! driver and the scheduler share rank 0), waits for results and gathers
//! blocks straight from the workers that hold them. Results kept on the
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

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::block::Block;
use crate::error::{Error, Result};
use crate::graph::{Graph, Key, Task, TaskId};
use crate::protocol::{Endpoint, Msg, Payload};
use crate::transport::Transport;

/// A worker as the scheduler knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    pub rank: u32,
    pub threads: u32,
    pub host: String,
}

/// What the scheduler tracks at one moment (see [`Client::state`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// Tasks the scheduler knows: waiting, queued, running or computed.
    pub tasks: usize,
    /// Computed blocks still held on workers.
    pub in_memory: usize,
    /// Bytes of those blocks (one copy each).
    pub bytes: u64,
    /// Most bytes held at once since the cluster started (one copy each).
    pub peak_bytes: u64,
    /// Ready tasks waiting in the scheduler's queues.
    pub queued: usize,
    /// Tasks sent to each worker and not yet reported, by worker rank.
    pub in_flight: Vec<(u32, u32)>,
}

/// Requests from the client to the scheduler (in-process only).
#[derive(Debug)]
pub enum ClientRequest {
    Submit {
        tasks: Vec<Task>,
        outputs: Vec<Key>,
        reply: Sender<Result<Vec<TaskId>>>,
    },
    /// Replies with the ranks holding each id once all are computed.
    Wait {
        ids: Vec<TaskId>,
        reply: Sender<Result<Vec<Vec<u32>>>>,
    },
    Release {
        ids: Vec<TaskId>,
    },
    Workers {
        reply: Sender<Vec<WorkerInfo>>,
    },
    State {
        reply: Sender<ClusterState>,
    },
    Shutdown {
        failed: bool,
        reason: String,
        reply: Sender<()>,
    },
}

struct Inner {
    transport: Arc<dyn Transport>,
    inbox: Mutex<Receiver<Msg>>,
    workers: Vec<WorkerInfo>,
}

impl Inner {
    fn request<T>(&self, make: impl FnOnce(Sender<T>) -> ClientRequest) -> Result<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.transport.send(Endpoint::SCHEDULER, Msg::Client(make(tx)));
        rx.recv().map_err(|_| Error::ShutDown)
    }
}

/// Submits work to the cluster. Cheap to clone; all clones talk to one scheduler.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    pub(crate) fn new(transport: Arc<dyn Transport>, inbox: Receiver<Msg>, workers: Vec<WorkerInfo>) -> Client {
        Client { inner: Arc::new(Inner { transport, inbox: Mutex::new(inbox), workers }) }
    }

    /// The workers of the cluster, by rank.
    pub fn workers(&self) -> &[WorkerInfo] {
        &self.inner.workers
    }

    /// Compute threads over all workers.
    pub fn total_threads(&self) -> usize {
        self.inner.workers.iter().map(|w| w.threads as usize).sum()
    }

    /// What the scheduler tracks now: a diagnostic (and what tests use to
    /// check that everything is released).
    pub fn state(&self) -> Result<ClusterState> {
        self.inner.request(|reply| ClientRequest::State { reply })
    }

    /// Name of the transport (`local`, `mpi`).
    pub fn transport(&self) -> &'static str {
        self.inner.transport.name()
    }

    /// Submits `graph` and keeps `outputs` on the workers. Returns once the
    /// scheduler has validated the graph; the computation goes on meanwhile.
    ///
    /// Errors (nothing runs): duplicate keys, unknown kernels, inputs that are
    /// neither in the graph nor held by the cluster, cycles, unknown outputs.
    pub fn persist(&self, graph: Graph, outputs: &[Key]) -> Result<Persisted> {
        let outputs = outputs.to_vec();
        let keys = outputs.clone();
        let ids = self.inner.request(|reply| ClientRequest::Submit { tasks: graph.into_tasks(), outputs, reply })??;
        Ok(Persisted { client: self.clone(), keys, ids })
    }

    /// Computes `outputs` of `graph` and brings their blocks to the driver.
    pub fn compute(&self, graph: Graph, outputs: &[Key]) -> Result<Vec<Block>> {
        self.persist(graph, outputs)?.gather()
    }

    /// Stops the cluster's workers and scheduler. Called by the cluster types
    /// when they finish; later calls on any clone fail with [`Error::ShutDown`].
    pub(crate) fn shutdown(&self, failed: bool, reason: String) {
        let _ = self.inner.request(|reply| ClientRequest::Shutdown { failed, reason, reply });
    }

    fn wait_ids(&self, ids: &[TaskId]) -> Result<Vec<Vec<u32>>> {
        self.inner.request(|reply| ClientRequest::Wait { ids: ids.to_vec(), reply })?
    }

    fn fetch(&self, keys: &[Key], ids: &[TaskId], holders: &[Vec<u32>]) -> Result<Vec<Block>> {
        let inbox = self.inner.inbox.lock();
        let mut want: FxHashMap<TaskId, usize> = FxHashMap::default();
        for (i, (id, h)) in ids.iter().zip(holders).enumerate() {
            let Some(&holder) = h.first() else {
                return Err(Error::Lost { key: keys[i].clone(), reason: "no worker holds it".into() });
            };
            if want.insert(*id, i).is_none() {
                self.inner.transport.send(Endpoint::worker(holder), Msg::Fetch { id: *id, reply_to: Endpoint::CLIENT });
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
                    let key = want.get(&id).map(|&i| keys[i].clone()).unwrap_or_else(|| Key::new("?", []));
                    return Err(Error::Lost { key, reason: format!("rank {rank} no longer holds it") });
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

    /// Blocks until every result is computed (or one failed).
    pub fn wait(&self) -> Result<()> {
        self.client.wait_ids(&self.ids).map(drop)
    }

    /// Ranks holding each result, once computed.
    pub fn locations(&self) -> Result<Vec<Vec<u32>>> {
        self.client.wait_ids(&self.ids)
    }

    /// Waits for the results and brings their blocks to the driver, each
    /// fetched from a worker holding it.
    pub fn gather(&self) -> Result<Vec<Block>> {
        let holders = self.client.wait_ids(&self.ids)?;
        self.client.fetch(&self.keys, &self.ids, &holders)
    }
}

impl Drop for Persisted {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            let ids = std::mem::take(&mut self.ids);
            self.client.inner.transport.send(Endpoint::SCHEDULER, Msg::Client(ClientRequest::Release { ids }));
        }
    }
}

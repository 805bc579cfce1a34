//! How messages reach endpoints: one trait, one backend per way of moving bytes.
//!
//! The scheduler, the workers and the client never talk to the network; they
//! call [`Transport::send`] with an [`Endpoint`] and read their own inbox
//! (a channel the transport delivers into). A backend decides how a message
//! for a remote rank travels:
//!
//! | backend | ranks | block payloads |
//! |---|---|---|
//! | [`local::LocalTransport`] | threads of one process | the `Arc` is handed over, no copy |
//! | `mpi::MpiTransport` (feature `mpi`) | MPI ranks of a communicator | raw bytes on a data tag, control on another; one progress thread does all MPI calls |
//!
//! `send` never blocks on the network and never fails loudly: a message to an
//! endpoint that has already stopped is dropped (and traced), which only
//! happens during shutdown.

use crossbeam_channel::{Receiver, Sender};
use rustc_hash::FxHashMap;

use crate::protocol::{Endpoint, Msg, Payload, Role};
use crate::store::BlockStore;

pub mod local;
#[cfg(feature = "mpi")]
pub mod mpi;

/// Moves messages between endpoints.
pub trait Transport: Send + Sync + 'static {
    /// Queues `msg` for `to`. Does not wait for delivery.
    fn send(&self, to: Endpoint, msg: Msg);

    /// Short name for reports: `local`, `mpi`.
    fn name(&self) -> &'static str;

    /// Number of ranks the transport connects.
    fn ranks(&self) -> u32;
}

/// Inboxes of the endpoints that live in this process, and the block stores
/// of its workers (fetches are answered from those directly).
#[derive(Clone, Default)]
pub struct Mailboxes {
    routes: FxHashMap<Endpoint, Sender<Msg>>,
    stores: FxHashMap<u32, BlockStore>,
}

/// What became of a message handed to [`Mailboxes::deliver`].
#[derive(Debug)]
pub enum Delivery {
    /// In the endpoint's inbox (or dropped: the endpoint has stopped).
    Delivered,
    /// A fetch answered from a store: send this reply on.
    Reply(Endpoint, Msg),
    /// No such endpoint here.
    Unknown(Msg),
}

impl Mailboxes {
    pub fn new() -> Mailboxes {
        Mailboxes::default()
    }

    /// Creates the inbox of `endpoint` and returns its receiving end.
    pub fn open(&mut self, endpoint: Endpoint) -> Receiver<Msg> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let old = self.routes.insert(endpoint, tx);
        assert!(old.is_none(), "endpoint {endpoint} opened twice");
        rx
    }

    /// Registers the store of the worker on `rank`, to answer fetches from.
    pub fn attach_store(&mut self, rank: u32, store: BlockStore) {
        self.stores.insert(rank, store);
    }

    /// Delivers to a local endpoint. A fetch from a local worker's store is
    /// answered here, without waking the worker.
    pub fn deliver(&self, to: Endpoint, msg: Msg) -> Delivery {
        if let (Msg::Fetch { id, reply_to }, Role::Worker) = (&msg, to.role) {
            if let Some(store) = self.stores.get(&to.rank) {
                let reply = match store.get(*id) {
                    Some(block) => Msg::Block { id: *id, payload: Payload::Ready(block) },
                    None => Msg::Missing { id: *id, rank: to.rank },
                };
                return Delivery::Reply(*reply_to, reply);
            }
        }
        match self.routes.get(&to) {
            Some(tx) => {
                if let Err(e) = tx.send(msg) {
                    tracing::trace!(%to, msg = ?e.0, "endpoint has stopped; message dropped");
                }
                Delivery::Delivered
            }
            None => Delivery::Unknown(msg),
        }
    }

    pub fn contains(&self, to: Endpoint) -> bool {
        self.routes.contains_key(&to)
    }
}

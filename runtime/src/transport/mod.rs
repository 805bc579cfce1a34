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
//! | [`tcp::TcpTransport`] | processes that joined an elastic cluster over TCP, each connection authenticated with a shared secret | raw bytes after the frame that announces them, worker to worker |
//!
//! Any of them can hand large block payloads to a [`DataPlane`] instead:
//! `ucx::UcxPlane` (feature `ucx`, `--transport ucx`) moves them over UCP
//! while control messages stay where they were.
//!
//! `send` never blocks on the network and never fails loudly: a message to an
//! endpoint that has already stopped is dropped (and traced), which only
//! happens during shutdown.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::error::Error;
use crate::protocol::{Endpoint, Msg, Payload, Role, WireReply};
use crate::worker::store::BlockStore;

pub mod local;
#[cfg(feature = "mpi")]
pub mod mpi;
pub(crate) mod policy;
pub mod secret;
pub mod tcp;
#[cfg(feature = "ucx")]
pub mod ucx;

/// Moves block payloads beside a control transport (see `ucx`).
///
/// The control transport sends a frame that announces the block
/// ([`Payload::ViaPlane`]) and calls [`DataPlane::send_block`]; the
/// receiving side, on decoding [`Payload::PlaneIncoming`], calls
/// [`DataPlane::expect_block`], and the plane delivers the finished
/// [`Msg::Block`] (or [`Msg::Missing`] if the sender is lost) to `to`.
pub trait DataPlane: Send + Sync + 'static {
    /// This plane's address, for the peers' [`DataPlane::learn`].
    fn address(&self) -> &[u8];

    /// The plane of `rank` is at `address`.
    fn learn(&self, rank: u32, address: Vec<u8>);

    /// Sends `block` (block `id`) to the plane of rank `to`.
    fn send_block(&self, to: u32, id: crate::graph::TaskId, block: crate::block::Block);

    /// Receives block `id` from rank `from` and delivers it to `to`.
    fn expect_block(&self, from: u32, to: Endpoint, id: crate::graph::TaskId, header: crate::block::BlockHeader);

    /// The control transport lost `rank`: what is awaited from it will not come.
    fn peer_lost(&self, rank: u32, reason: String);

    /// Sends queued or in flight.
    fn busy(&self) -> bool;

    /// Short name for reports: `ucx`.
    fn name(&self) -> &'static str;
}

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
    replies: Option<ReplyRouter>,
}

/// Where the answers to a remote client's requests go: one waiting
/// channel per request id.
#[derive(Clone, Default)]
pub struct ReplyRouter {
    state: Arc<Mutex<RouterState>>,
}

#[derive(Default)]
struct RouterState {
    pending: FxHashMap<u64, Sender<WireReply>>,
    closed: Option<String>,
}

impl ReplyRouter {
    /// The channel the answer to request `id` will arrive on (closed at
    /// once if the scheduler is already gone).
    pub fn expect(&self, id: u64) -> Receiver<WireReply> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut s = self.state.lock();
        if s.closed.is_none() {
            s.pending.insert(id, tx);
        }
        rx
    }

    fn route(&self, id: u64, reply: WireReply) {
        if let Some(tx) = self.state.lock().pending.remove(&id) {
            let _ = tx.send(reply);
        }
    }

    /// The scheduler is gone: every waiting request fails with `reason`.
    pub fn close(&self, reason: String) {
        let mut s = self.state.lock();
        s.closed.get_or_insert(reason);
        s.pending.clear();
    }

    /// The error for a request whose answer will never come.
    pub fn lost(&self) -> Error {
        match self.state.lock().closed.clone() {
            Some(reason) => Error::SchedulerLost { reason },
            None => {
                Error::Connect { addr: "the scheduler".into(), reason: "it stopped answering".into(), source: None }
            }
        }
    }
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

    /// Routes answers to a remote client's requests to `router`.
    pub fn attach_replies(&mut self, router: ReplyRouter) {
        self.replies = Some(router);
    }

    /// The reply router, if this process hosts a remote client.
    pub fn replies(&self) -> Option<&ReplyRouter> {
        self.replies.as_ref()
    }

    /// Delivers to a local endpoint. A fetch from a local worker's store is
    /// answered here, without waking the worker.
    pub fn deliver(&self, to: Endpoint, msg: Msg) -> Delivery {
        if let Msg::Reply { id, reply } = msg {
            match &self.replies {
                Some(router) => router.route(id, reply),
                None => tracing::warn!(%to, id, "a reply for a client this process does not host"),
            }
            return Delivery::Delivered;
        }
        if let (Msg::Fetch { id, reply_to }, Role::Worker) = (&msg, to.role) {
            if let Some(store) = self.stores.get(&to.rank) {
                let reply = match store.get_for_peer(*id) {
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

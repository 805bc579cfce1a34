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

use crate::protocol::{Endpoint, Msg};

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

/// Inboxes of the endpoints that live in this process.
#[derive(Clone, Default)]
pub struct Mailboxes {
    routes: FxHashMap<Endpoint, Sender<Msg>>,
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

    /// Delivers to a local endpoint. Returns the message back if there is no
    /// such endpoint here.
    pub fn deliver(&self, to: Endpoint, msg: Msg) -> Result<(), Msg> {
        match self.routes.get(&to) {
            Some(tx) => {
                if let Err(e) = tx.send(msg) {
                    tracing::trace!(%to, msg = ?e.0, "endpoint has stopped; message dropped");
                }
                Ok(())
            }
            None => Err(msg),
        }
    }

    pub fn contains(&self, to: Endpoint) -> bool {
        self.routes.contains_key(&to)
    }
}

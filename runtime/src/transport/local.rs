//! The in-process transport: every endpoint is a thread of this process.
//!
//! A message is one channel send; a block moves as an `Arc` clone, so a
//! "transfer" between local workers copies nothing. With data planes (one
//! per rank, `--transport ucx`), a block answering a fetch crosses from the
//! plane of the rank that holds it to the plane of the rank that asked,
//! as it would between processes: how UCX is tested in one process.

use std::sync::Arc;

use super::{DataPlane, Delivery, Mailboxes, Transport};
use crate::protocol::{Endpoint, Msg, Payload, INLINE_MAX};

/// Channels between threads of one process.
pub struct LocalTransport {
    mailboxes: Mailboxes,
    ranks: u32,
    /// By rank; empty when blocks are handed over as `Arc`s.
    planes: Vec<Arc<dyn DataPlane>>,
}

impl LocalTransport {
    /// A transport over `mailboxes`, which must hold every endpoint of the
    /// `ranks` ranks.
    pub fn new(mailboxes: Mailboxes, ranks: u32) -> LocalTransport {
        LocalTransport::with_planes(mailboxes, ranks, Vec::new())
    }

    /// As [`LocalTransport::new`], moving fetched blocks between the
    /// `planes` of the ranks (one per rank, or none).
    pub fn with_planes(mailboxes: Mailboxes, ranks: u32, planes: Vec<Arc<dyn DataPlane>>) -> LocalTransport {
        assert!(planes.is_empty() || planes.len() == ranks as usize, "one data plane per rank");
        LocalTransport { mailboxes, ranks, planes }
    }

    /// Sends the answer of rank `from`'s store to a fetch on.
    fn reply(&self, from: u32, to: Endpoint, reply: Msg) {
        match reply {
            Msg::Block { id, payload: Payload::Ready(block) }
                if !self.planes.is_empty() && from != to.rank && block.nbytes() > INLINE_MAX =>
            {
                self.planes[to.rank as usize].expect_block(from, to, id, block.header());
                self.planes[from as usize].send_block(to.rank, id, block);
            }
            reply => self.send(to, reply),
        }
    }
}

impl Transport for LocalTransport {
    fn send(&self, to: Endpoint, msg: Msg) {
        match self.mailboxes.deliver(to, msg) {
            Delivery::Delivered => {}
            Delivery::Reply(reply_to, reply) => self.reply(to.rank, reply_to, reply),
            Delivery::Unknown(msg) => {
                tracing::warn!(%to, ?msg, "no such endpoint in the local cluster; message dropped")
            }
        }
    }

    fn name(&self) -> &'static str {
        match self.planes.first() {
            Some(_) => "local+ucx",
            None => "local",
        }
    }

    fn ranks(&self) -> u32 {
        self.ranks
    }
}

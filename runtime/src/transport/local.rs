//! The in-process transport: every endpoint is a thread of this process.
//!
//! A message is one channel send; a block moves as an `Arc` clone, so a
//! "transfer" between local workers copies nothing.

use super::{Delivery, Mailboxes, Transport};
use crate::protocol::{Endpoint, Msg};

/// Channels between threads of one process.
pub struct LocalTransport {
    mailboxes: Mailboxes,
    ranks: u32,
}

impl LocalTransport {
    /// A transport over `mailboxes`, which must hold every endpoint of the
    /// `ranks` ranks.
    pub fn new(mailboxes: Mailboxes, ranks: u32) -> LocalTransport {
        LocalTransport { mailboxes, ranks }
    }
}

impl Transport for LocalTransport {
    fn send(&self, to: Endpoint, msg: Msg) {
        match self.mailboxes.deliver(to, msg) {
            Delivery::Delivered => {}
            Delivery::Reply(to, reply) => self.send(to, reply),
            Delivery::Unknown(msg) => {
                tracing::warn!(%to, ?msg, "no such endpoint in the local cluster; message dropped")
            }
        }
    }

    fn name(&self) -> &'static str {
        "local"
    }

    fn ranks(&self) -> u32 {
        self.ranks
    }
}

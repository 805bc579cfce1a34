//! Who may send what over an authenticated connection of an elastic
//! cluster: the decision, without I/O, that the TCP transport's readers
//! apply to every message before handling it.
//!
//! A connection's peer is known from the handshake, never from a message:
//! the scheduler gave a worker or a client its rank when it joined, and a
//! worker or client reached the scheduler itself. So a message is judged by
//! what the connection is ([`PeerKind`]) and the rank it was given:
//!
//! | messages | accepted from |
//! |---|---|
//! | `Run`, `Release`, `Cancel`, `Acquire`, `Shutdown`, `CollectEvents`, `Peers`, `Reply` | the scheduler only |
//! | `Hello`, `Replica`, `Heartbeat`, `Memory`, `Bye`, `Drain`, `Log`, `Events` | a worker, when the rank they carry is the connection's |
//! | `Done`, `Failed`, `InputLost` | a worker |
//! | `Request` | a client (its `from` is overwritten with the connection's rank) |
//! | `Fetch`, `Block`, `Missing`, `Refused` | any member |
//!
//! Anything else is refused: the transport logs it with the peer's address,
//! tells the peer why ([`Msg::Refused`]) and closes the connection, which
//! the scheduler then handles as a lost peer.
//!
//! ```text
//! check(PeerKind::Worker, 3, &Msg::Bye { rank: 3 })  -> Ok
//! check(PeerKind::Worker, 3, &Msg::Bye { rank: 1 })  -> Err("... claims rank 1 ...")
//! check(PeerKind::Member, 3, &Msg::Shutdown { .. })  -> Err("... only the scheduler sends")
//! ```

use crate::protocol::Msg;

/// What the process at the other end of a connection is, as the handshake
/// established it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerKind {
    /// The scheduler (rank 0), on the connection this process opened to it.
    Scheduler,
    /// A worker that joined this scheduler.
    Worker,
    /// A remote client that connected to this scheduler.
    Client,
    /// Another member (a worker or a client) that opened a direct
    /// connection to this worker for blocks.
    Member,
}

/// Whether a message from `peer` (the connection's rank), a `kind`, may be
/// handled; `Err` says why not.
pub(crate) fn check(kind: PeerKind, peer: u32, msg: &Msg) -> Result<(), String> {
    let claimed = match msg {
        Msg::Run(_)
        | Msg::Release(_)
        | Msg::Cancel(_)
        | Msg::Acquire(_)
        | Msg::Shutdown { .. }
        | Msg::CollectEvents { .. }
        | Msg::Peers { .. }
        | Msg::Reply { .. } => {
            return match kind {
                PeerKind::Scheduler => Ok(()),
                _ => Err(format!("{} is a message only the scheduler sends", name(msg))),
            };
        }
        Msg::Hello { rank, .. }
        | Msg::Replica { rank, .. }
        | Msg::Heartbeat { rank }
        | Msg::Memory { rank, .. }
        | Msg::Bye { rank }
        | Msg::Drain { rank }
        | Msg::Log { rank, .. } => Some(*rank),
        Msg::Events { events, .. } => Some(events.rank),
        Msg::Done { .. } | Msg::Failed { .. } | Msg::InputLost { .. } => None,
        Msg::Request { .. } => {
            return match kind {
                PeerKind::Client => Ok(()),
                _ => Err(format!("{} is a message only a client sends", name(msg))),
            };
        }
        Msg::Fetch { .. } | Msg::Block { .. } | Msg::Missing { .. } | Msg::Refused { .. } => return Ok(()),
        Msg::Client(_) | Msg::PeerLost { .. } => {
            return Err(format!("{} never travels between processes", name(msg)));
        }
    };
    if kind != PeerKind::Worker {
        return Err(format!("{} is a message only a worker sends to its scheduler", name(msg)));
    }
    match claimed {
        Some(rank) if rank != peer => {
            Err(format!("{} claims rank {rank}, but the connection is rank {peer}'s", name(msg)))
        }
        _ => Ok(()),
    }
}

/// The message's variant name, for logs (never its contents, which a
/// hostile peer chose).
fn name(msg: &Msg) -> &'static str {
    match msg {
        Msg::Hello { .. } => "Hello",
        Msg::Run(_) => "Run",
        Msg::Done { .. } => "Done",
        Msg::Failed { .. } => "Failed",
        Msg::Replica { .. } => "Replica",
        Msg::Release(_) => "Release",
        Msg::Cancel(_) => "Cancel",
        Msg::Fetch { .. } => "Fetch",
        Msg::Block { .. } => "Block",
        Msg::Missing { .. } => "Missing",
        Msg::Heartbeat { .. } => "Heartbeat",
        Msg::Memory { .. } => "Memory",
        Msg::Shutdown { .. } => "Shutdown",
        Msg::Bye { .. } => "Bye",
        Msg::Drain { .. } => "Drain",
        Msg::Acquire(_) => "Acquire",
        Msg::InputLost { .. } => "InputLost",
        Msg::Request { .. } => "Request",
        Msg::Reply { .. } => "Reply",
        Msg::CollectEvents { .. } => "CollectEvents",
        Msg::Events { .. } => "Events",
        Msg::Log { .. } => "Log",
        Msg::Peers { .. } => "Peers",
        Msg::Refused { .. } => "Refused",
        Msg::Client(_) => "Client",
        Msg::PeerLost { .. } => "PeerLost",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::TaskId;
    use crate::protocol::{Endpoint, Role, WireRequest};

    #[test]
    fn ranks_in_messages_must_be_the_connections() {
        use PeerKind::*;
        for msg in [
            Msg::Bye { rank: 3 },
            Msg::Drain { rank: 3 },
            Msg::Replica { id: TaskId(1), rank: 3 },
            Msg::Log { rank: 3, line: "x".into() },
            Msg::Heartbeat { rank: 3 },
            Msg::Memory { rank: 3, memory: 1, spilled: 2, paused: true },
        ] {
            assert_eq!(check(Worker, 3, &msg), Ok(()), "{msg:?}");
            let err = check(Worker, 4, &msg).unwrap_err();
            assert!(err.contains("claims rank 3") && err.contains("rank 4's"), "{err}");
            // Not from a client or another member, whatever rank it names.
            assert!(check(Client, 3, &msg).unwrap_err().contains("only a worker"));
            assert!(check(Member, 3, &msg).is_err());
        }
        assert_eq!(check(Worker, 2, &Msg::Done { id: TaskId(1), nbytes: 8, micros: 1 }), Ok(()));
        assert!(check(Client, 2, &Msg::Done { id: TaskId(1), nbytes: 8, micros: 1 }).is_err());
    }

    #[test]
    fn orders_come_from_the_scheduler_only() {
        use PeerKind::*;
        let orders = [
            Msg::Run(Vec::new()),
            Msg::Release(vec![TaskId(1)]),
            Msg::Cancel(vec![TaskId(1)]),
            Msg::Acquire(Vec::new()),
            Msg::Shutdown { failed: false, reason: String::new() },
            Msg::CollectEvents { req: 1, clear: true },
            Msg::Peers { add: Vec::new(), remove: vec![1], ucx: Vec::new() },
        ];
        for msg in &orders {
            assert_eq!(check(Scheduler, 0, msg), Ok(()), "{msg:?}");
            for kind in [Worker, Client, Member] {
                let err = check(kind, 0, msg).unwrap_err();
                assert!(err.contains("only the scheduler"), "{kind:?} {msg:?}: {err}");
            }
        }
    }

    #[test]
    fn requests_from_clients_and_blocks_from_anyone() {
        use PeerKind::*;
        let req = Msg::Request {
            id: 1,
            from: Endpoint { rank: 0, role: Role::Client },
            req: WireRequest::Release { ids: vec![] },
        };
        assert_eq!(check(Client, 5, &req), Ok(()));
        assert!(check(Worker, 5, &req).unwrap_err().contains("only a client"));
        let fetch = Msg::Fetch { id: TaskId(1), reply_to: Endpoint::worker(2) };
        for kind in [Scheduler, Worker, Client, Member] {
            assert_eq!(check(kind, 2, &fetch), Ok(()));
            assert_eq!(check(kind, 2, &Msg::Missing { id: TaskId(1), rank: 9 }), Ok(()));
        }
    }
}

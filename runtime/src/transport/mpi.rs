//! The MPI transport: ranks of a communicator, one progress thread per rank.
//!
//! Compute, worker, scheduler and driver threads never call MPI. They hand
//! messages for other ranks to an outbox channel; the rank's **progress
//! thread** (the thread that called into Tessera, so MPI may have been
//! initialised with `MPI_THREAD_FUNNELED` or more) does every MPI call:
//!
//! * **Sends.** Each turn it drains the outbox, packs all messages for one
//!   rank into one control frame (tag [`TAG_CONTROL`]) and posts it with
//!   `MPI_Issend`; every block in the frame follows as its own `MPI_Issend`
//!   of the block's bytes (tag [`TAG_DATA`], in pieces of at most 1 GiB as
//!   MPI counts are `int`) straight from the block's memory: no copy.
//!   Blocks of at most [`crate::protocol::INLINE_MAX`] bytes ride inside
//!   the frame instead (one message, not two). Buffers live beside their requests until the requests
//!   complete.
//! * **Receives.** It polls `MPI_Improbe` for control frames from any rank,
//!   receives each into a buffer of the probed size, decodes it and, for
//!   every block it announces, receives the bytes from that rank with the
//!   data tag straight into the new block's buffer (MPI's order between one
//!   pair of ranks on one tag keeps frames and payloads matched).
//! * **UCX** (`--transport ucx`). With a [`DataPlane`], large blocks go
//!   over it instead of the data tag: the frame carries their headers
//!   ([`Payload::ViaPlane`]), the plane carries the bytes, and a received
//!   [`Payload::PlaneIncoming`] is handed to the plane, which delivers the
//!   block when its bytes are in.
//! * **Termination** (NBX, Hoefler et al. 2010). When every local endpoint
//!   has stopped and all of this rank's synchronous sends have completed
//!   (each was matched by its receiver), the rank enters `MPI_Ibarrier` and
//!   keeps receiving until the barrier completes. Then no message is in
//!   flight anywhere and every rank can leave, so none hangs at exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use mpi::collective::CommunicatorCollectives;
use mpi::point_to_point::{Destination, Source};
use mpi::request::{Request, StaticScope};
use mpi::topology::{Communicator, SimpleCommunicator};
use parking_lot::Mutex;

use super::{DataPlane, Delivery, Mailboxes, Transport};
use crate::block::Block;
use crate::protocol::{decode_frame, encode_frame, offload_blocks, Endpoint, Msg, Payload, Role};

/// Tag of control frames.
pub const TAG_CONTROL: i32 = 7001;
/// Tag of block payloads.
pub const TAG_DATA: i32 = 7002;

/// How long an idle progress thread waits on its outbox before polling MPI
/// again: the latency an incoming message can wait, against CPU spent polling.
const NAP: Duration = Duration::from_micros(50);

/// Largest piece of a block payload in one MPI message: 1 GiB (MPI counts
/// are `int`), or `TESSERA_MPI_MAX_MESSAGE` bytes (at least 4096) for MPI
/// libraries or networks that want smaller messages.
fn piece_size() -> usize {
    static PIECE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PIECE.get_or_init(|| {
        std::env::var("TESSERA_MPI_MAX_MESSAGE")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .map_or(1 << 30, |n| n.clamp(4096, 1 << 30))
    })
}

/// How often a worker rank tells rank 0 it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Sends to other ranks go through the progress thread; sends to this rank's
/// own endpoints are delivered directly.
pub struct MpiTransport {
    rank: u32,
    size: u32,
    mailboxes: Mailboxes,
    outbox: Sender<(u32, Role, Msg)>,
    abort: Arc<AbortFlag>,
    plane: Option<Arc<dyn DataPlane>>,
}

/// A request to end the whole job, raised by any thread, carried out by the
/// progress thread with `MPI_Abort`.
#[derive(Default)]
pub struct AbortFlag {
    raised: AtomicBool,
    reason: Mutex<String>,
}

impl AbortFlag {
    pub fn raise(&self, reason: String) {
        let mut r = self.reason.lock();
        if !self.raised.swap(true, Ordering::SeqCst) {
            *r = reason;
        }
    }

    pub fn reason(&self) -> Option<String> {
        self.raised.load(Ordering::SeqCst).then(|| self.reason.lock().clone())
    }
}

impl MpiTransport {
    /// A transport for `rank` of `size`, delivering locally into
    /// `mailboxes`, moving large blocks over `plane` if given; the returned
    /// receiver is the progress thread's outbox.
    pub fn new(
        rank: u32,
        size: u32,
        mailboxes: Mailboxes,
        plane: Option<Arc<dyn DataPlane>>,
    ) -> (Arc<MpiTransport>, Receiver<(u32, Role, Msg)>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let t = MpiTransport { rank, size, mailboxes, outbox: tx, abort: Arc::default(), plane };
        (Arc::new(t), rx)
    }

    /// Asks the progress thread to abort the job with `reason`.
    pub fn abort(&self, reason: String) {
        self.abort.raise(reason);
    }

    pub(crate) fn abort_flag(&self) -> Arc<AbortFlag> {
        Arc::clone(&self.abort)
    }

    pub(crate) fn mailboxes(&self) -> &Mailboxes {
        &self.mailboxes
    }
}

impl Transport for MpiTransport {
    fn send(&self, to: Endpoint, msg: Msg) {
        if to.rank == self.rank {
            match self.mailboxes.deliver(to, msg) {
                Delivery::Delivered => {}
                Delivery::Reply(to, reply) => self.send(to, reply),
                Delivery::Unknown(msg) => tracing::warn!(%to, ?msg, "no such endpoint on this rank; message dropped"),
            }
        } else if self.outbox.send((to.rank, to.role, msg)).is_err() {
            tracing::trace!(%to, "progress thread has stopped; message dropped");
        }
    }

    fn name(&self) -> &'static str {
        match self.plane {
            Some(_) => "mpi+ucx",
            None => "mpi",
        }
    }

    fn ranks(&self) -> u32 {
        self.size
    }
}

/// What a send request keeps alive until it completes.
enum Keep {
    Frame(#[allow(dead_code)] Box<[u8]>),
    Block(#[allow(dead_code)] Block),
}

struct PendingSend {
    request: Request<'static, [u8], StaticScope>,
    _keep: Keep,
}

/// Extends a borrow of bytes owned by `keep` to `'static`.
///
/// # Safety
/// The bytes must live on the heap, owned by `keep`, and `keep` must not be
/// dropped or mutated before the request made from the returned slice has
/// completed. [`PendingSend`] pairs them and is only dropped after `test`
/// reports completion.
unsafe fn static_bytes(bytes: &[u8]) -> &'static [u8] {
    // SAFETY: the caller keeps the heap bytes alive and unchanged for as long as the slice is used.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) }
}

/// Counters a progress loop reports when it ends.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProgressStats {
    pub frames_sent: u64,
    pub frames_received: u64,
    pub payload_bytes_sent: u64,
    pub payload_bytes_received: u64,
}

/// The progress loop. Runs on the calling thread until `local_done()` is true
/// and the termination barrier has completed; returns early (with the
/// reason) only when an abort was requested, after calling `MPI_Abort` on
/// `comm`, which does not return.
pub fn progress(
    comm: &SimpleCommunicator,
    transport: &MpiTransport,
    outbox: Receiver<(u32, Role, Msg)>,
    local_done: impl Fn() -> bool,
) -> ProgressStats {
    let rank = transport.rank;
    let mut stats = ProgressStats::default();
    let mut sends: Vec<PendingSend> = Vec::new();
    let mut batches: Vec<Vec<(Role, Msg)>> = (0..transport.size).map(|_| Vec::new()).collect();
    let mut barrier: Option<Request<'static, ()>> = None;
    let mut idle: u32 = 0;
    let abort = transport.abort_flag();
    let mut last_beat = std::time::Instant::now();

    loop {
        let mut busy = false;

        if let Some(reason) = abort.reason() {
            tracing::error!(rank, %reason, "aborting the job");
            eprintln!("tessera: rank {rank}: aborting the job: {reason}");
            comm.abort(1);
        }

        // In the termination barrier this rank sends nothing more: every
        // thread that could need an answer has finished (on every rank, once
        // the barrier completes), and a send its receiver has stopped
        // probing for would never complete. What still comes (a heartbeat,
        // the answer to a peer's late fetch) is dropped.
        let terminating = barrier.is_some();

        // Liveness: the scheduler declares a rank lost after a long silence.
        if rank != 0 && !terminating && last_beat.elapsed() >= HEARTBEAT {
            transport.send(Endpoint::SCHEDULER, Msg::Heartbeat { rank });
            last_beat = std::time::Instant::now();
        }

        // Outgoing: one frame per destination rank per turn.
        // Nap on the outbox only when idle and no send is in flight: MPI
        // moves a large message only while the sender keeps calling it.
        let nap = idle > 64 && sends.is_empty();
        let mut first = if nap { outbox.recv_timeout(NAP).ok() } else { None };
        loop {
            let item = match first.take() {
                Some(item) => item,
                None => match outbox.try_recv() {
                    Ok(item) => item,
                    Err(_) => break,
                },
            };
            let (to, role, msg) = item;
            if terminating {
                tracing::debug!(rank, to, ?msg, "dropped: sent after the termination barrier began");
                continue;
            }
            batches[to as usize].push((role, msg));
            busy = true;
        }
        for (to, batch) in batches.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let mut msgs = std::mem::take(batch);
            if transport.plane.is_some() {
                offload_blocks(&mut msgs);
            }
            let frame = match encode_frame(&msgs) {
                Ok(f) => f.into_boxed_slice(),
                Err(e) => {
                    abort.raise(format!("cannot encode a message for rank {to}: {e}"));
                    continue;
                }
            };
            let dest = comm.process_at_rank(to as i32);
            // SAFETY: the frame's heap bytes are owned by the PendingSend
            // beside the request and freed only after it completes.
            let bytes = unsafe { static_bytes(&frame) };
            let request = dest.immediate_synchronous_send_with_tag(StaticScope, bytes, TAG_CONTROL);
            sends.push(PendingSend { request, _keep: Keep::Frame(frame) });
            stats.frames_sent += 1;
            for (_, msg) in msgs {
                if let (Msg::Block { id, payload: Payload::ViaPlane(block) }, Some(plane)) = (&msg, &transport.plane) {
                    stats.payload_bytes_sent += block.nbytes() as u64;
                    plane.send_block(to as u32, *id, block.clone());
                    continue;
                }
                if let Msg::Block { payload: payload @ Payload::Ready(_), .. } = msg {
                    if payload.is_inline() {
                        continue; // its bytes were in the frame
                    }
                    let Payload::Ready(block) = payload else { unreachable!() };
                    stats.payload_bytes_sent += block.nbytes() as u64;
                    // MPI counts are ints: blocks over 1 GiB go in pieces.
                    for piece in block.as_bytes().chunks(piece_size()) {
                        // SAFETY: the block's buffer is kept alive by the
                        // clone stored beside the request; blocks are immutable.
                        let bytes = unsafe { static_bytes(piece) };
                        let request = dest.immediate_synchronous_send_with_tag(StaticScope, bytes, TAG_DATA);
                        sends.push(PendingSend { request, _keep: Keep::Block(block.clone()) });
                    }
                }
            }
        }

        // Incoming control frames (and the payloads they announce).
        while let Some((message, status)) = comm.any_process().immediate_matched_probe_with_tag(TAG_CONTROL) {
            busy = true;
            let from = status.source_rank();
            let len = status.count(u8::equivalent_datatype()) as usize;
            let mut frame = vec![0u8; len];
            message.matched_receive_into(&mut frame[..]);
            stats.frames_received += 1;
            let msgs = match decode_frame(&frame) {
                Ok(m) => m,
                Err(e) => {
                    abort.raise(format!("malformed frame of {len} bytes from rank {from}: {e}"));
                    break;
                }
            };
            for (role, mut msg) in msgs {
                if let Msg::Block { id, payload: Payload::PlaneIncoming(header) } = msg {
                    let to = Endpoint { rank, role };
                    match &transport.plane {
                        Some(plane) => plane.expect_block(from as u32, to, id, header),
                        None => abort.raise(format!(
                            "rank {from} sent a block over UCX, but this rank has no UCX plane (start every rank with --transport ucx)"
                        )),
                    }
                    continue;
                }
                if let Msg::Block { payload: payload @ Payload::Incoming(_), .. } = &mut msg {
                    let header = payload.header();
                    let start = std::time::Instant::now();
                    let mut buffer = match Block::receive_buffer(&header) {
                        Ok(b) => b,
                        Err(e) => {
                            // Its bytes are already on their way on the data
                            // tag: the stream is out of step, so the job ends.
                            abort.raise(format!("rank {from} announced a block this rank refuses: {e}"));
                            break;
                        }
                    };
                    for piece in buffer.as_bytes_mut().chunks_mut(piece_size()) {
                        comm.process_at_rank(from).receive_into_with_tag(piece, TAG_DATA);
                    }
                    let micros = start.elapsed().as_micros() as u64;
                    tracing::trace!(rank, from, bytes = header.nbytes(), micros, "payload received");
                    stats.payload_bytes_received += header.nbytes() as u64;
                    *payload = Payload::Ready(Block::from_parts(header, buffer));
                }
                let to = Endpoint { rank, role };
                match transport.mailboxes().deliver(to, msg) {
                    Delivery::Delivered => {}
                    // A peer's fetch, answered from our store: goes out next turn.
                    Delivery::Reply(to, reply) => transport.send(to, reply),
                    Delivery::Unknown(msg) => {
                        tracing::warn!(%to, from, ?msg, "message for an endpoint this rank does not have")
                    }
                }
            }
        }

        // Completed sends release their buffers.
        if !sends.is_empty() {
            let before = sends.len();
            sends = sends
                .into_iter()
                .filter_map(|s| match s.request.test() {
                    Ok(_) => None,
                    Err(request) => Some(PendingSend { request, _keep: s._keep }),
                })
                .collect();
            busy |= sends.len() != before;
        }

        // Termination.
        match barrier.take() {
            None => {
                let plane_idle = transport.plane.as_ref().is_none_or(|p| !p.busy());
                // `local_done` first: once every thread has finished, nothing
                // but this loop adds to the outbox, so its emptiness holds.
                if local_done() && sends.is_empty() && outbox.is_empty() && plane_idle {
                    tracing::debug!(rank, "entering the termination barrier");
                    barrier = Some(comm.immediate_barrier());
                }
            }
            Some(b) => match b.test() {
                Ok(_) => break,
                Err(b) => barrier = Some(b),
            },
        }

        if busy {
            idle = 0;
        } else {
            idle = idle.saturating_add(1);
            if idle <= 64 {
                std::thread::yield_now();
            }
        }
    }
    debug_assert!(sends.is_empty());
    stats
}

use mpi::datatype::Equivalence;

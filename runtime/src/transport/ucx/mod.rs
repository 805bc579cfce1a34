//! Block payloads over UCX (feature `ucx`): a [`DataPlane`] beside a control
//! transport. This module is the plane; [`ucp`] is the small safe layer over
//! the UCP library that it drives, and holds every `unsafe` block of the
//! backend.
//!
//! Control messages keep travelling as before (MPI frames, TCP frames, or
//! channels in-process); a frame that carries a large block now carries only
//! its header ([`Payload::ViaPlane`] on the wire), and the bytes go over UCP
//! tagged messages straight from the sender's block into the receiver's new
//! buffer:
//!
//! * **Tags.** A block's tag is its sender's rank (top 20 bits) and its task
//!   id (low 44 bits). Both sides compute it from what the frame says, so no
//!   sequence needs to be agreed on, and frames may take any path. Two
//!   transfers of one block to one rank at once carry the same bytes, so
//!   whichever receive matches whichever send is right.
//! * **Order.** Only [`Msg::Block`] messages (answers to fetches, awaited by
//!   id) wait for their bytes; every other message of a frame is delivered
//!   at once. Nothing depends on a block answer arriving before a later
//!   message from the same sender.
//! * **Threads.** One progress thread per plane owns the UCP worker (single
//!   threaded mode). Other threads queue commands and poke an eventfd; the
//!   thread spins for [`SPIN`] after any activity, then arms the worker and
//!   sleeps in `poll` on the worker's event fd and the eventfd, so an idle
//!   plane costs no CPU.
//! * **Peers.** Endpoints are opened on first use from addresses learnt
//!   through the control transport ([`UcxPlane::learn`]). A peer whose
//!   endpoint fails, or that the control transport declares lost
//!   ([`DataPlane::peer_lost`]), has its awaited blocks answered
//!   [`Msg::Missing`], so the waiting worker or client fails or recovers as
//!   it would for any lost block, instead of hanging.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use rustc_hash::{FxHashMap, FxHashSet};

use super::{DataPlane, Delivery, Mailboxes};
use crate::block::{Block, BlockHeader};
use crate::error::Result;
use crate::graph::TaskId;
use crate::host::sys::EventFd;
use crate::protocol::{Endpoint, Msg, Payload};
use ucp::{Op, Worker};

pub use ucp::Options;

pub mod ucp;

/// How long the progress thread keeps polling after the last activity
/// before it sleeps on the event fds.
const SPIN: Duration = Duration::from_micros(200);

/// Longest sleep between checks when nothing wakes the thread.
const SLEEP_MS: i32 = 100;

/// How long a stopping plane waits for its sends to complete.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// Blocks received over UCX by every plane of this process so far.
pub fn blocks_received() -> u64 {
    RECEIVED.load(Ordering::Relaxed)
}

static RECEIVED: AtomicU64 = AtomicU64::new(0);

/// The UCP tag of block `id` sent by `sender`.
pub fn tag(sender: u32, id: TaskId) -> u64 {
    (u64::from(sender) << 44) | (id.0 & ((1 << 44) - 1))
}

enum Command {
    Learn { rank: u32, address: Vec<u8> },
    Send { to: u32, id: TaskId, block: Block },
    Expect { from: u32, to: Endpoint, id: TaskId, header: BlockHeader },
    Lost { rank: u32, reason: String },
    Stop,
}

/// A UCP worker on its own progress thread, moving block payloads.
pub struct UcxPlane {
    rank: u32,
    address: Vec<u8>,
    commands: Sender<Command>,
    wake: EventFd,
    /// Sends queued or in flight (the control transport waits for zero
    /// before it leaves).
    sending: Arc<AtomicU64>,
    /// The progress thread is about to sleep or asleep: commands must wake it.
    sleepy: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<Stats>>>,
}

/// What a plane moved, logged when it stops.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub blocks_sent: u64,
    pub bytes_sent: u64,
    pub blocks_received: u64,
    pub bytes_received: u64,
    pub failed: u64,
}

impl UcxPlane {
    /// Starts the plane of `rank`, delivering arrived blocks into `mailboxes`.
    pub fn start(rank: u32, options: &Options, mailboxes: Mailboxes) -> Result<Arc<UcxPlane>> {
        let worker = Worker::new(options)?;
        let address = worker.address()?;
        UcxPlane::start_with(worker, address, rank, mailboxes)
    }

    /// As [`UcxPlane::start`], with a worker already made (its `address`
    /// may have travelled before the rank was known).
    pub fn start_with(worker: Worker, address: Vec<u8>, rank: u32, mailboxes: Mailboxes) -> Result<Arc<UcxPlane>> {
        let wake = EventFd::new().map_err(|e| crate::error::Error::Ucx {
            what: "creating the wake-up eventfd".into(),
            status: e.to_string(),
        })?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let sending = Arc::new(AtomicU64::new(0));
        let sleepy = Arc::new(AtomicBool::new(false));
        let state = State {
            rank,
            worker,
            mailboxes,
            addresses: FxHashMap::default(),
            eps: FxHashMap::default(),
            lost: FxHashSet::default(),
            sends: Vec::new(),
            recvs: Vec::new(),
            sending: Arc::clone(&sending),
            sleepy: Arc::clone(&sleepy),
            stats: Stats::default(),
        };
        let wake_fd = wake.fd();
        let thread = std::thread::Builder::new()
            .name(format!("tessera-ucx-{rank}"))
            .spawn(move || state.run(rx, wake_fd))
            .map_err(|e| crate::error::Error::Ucx {
                what: "starting the progress thread".into(),
                status: e.to_string(),
            })?;
        tracing::debug!(rank, version = %ucp::version(), address_bytes = address.len(), "UCX plane started");
        Ok(Arc::new(UcxPlane { rank, address, commands: tx, wake, sending, sleepy, thread: Mutex::new(Some(thread)) }))
    }

    /// Stops the progress thread after its sends completed (at most
    /// [`STOP_LIMIT`]), closes the endpoints and the worker.
    pub fn stop(&self) {
        let Some(thread) = self.thread.lock().take() else { return };
        self.command(Command::Stop);
        match thread.join() {
            Ok(stats) => tracing::debug!(rank = self.rank, ?stats, "UCX plane stopped"),
            Err(_) => tracing::error!(rank = self.rank, "the UCX progress thread panicked"),
        }
    }

    /// Queues `c`; pokes the eventfd only when the thread may be asleep
    /// (a syscall saved per command while it spins).
    fn command(&self, c: Command) {
        if self.commands.send(c).is_ok() {
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.sleepy.load(Ordering::SeqCst) {
                self.wake.notify();
            }
        }
    }
}

impl Drop for UcxPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

impl DataPlane for UcxPlane {
    /// The UCP worker's address.
    fn address(&self) -> &[u8] {
        &self.address
    }

    fn learn(&self, rank: u32, address: Vec<u8>) {
        if rank != self.rank {
            self.command(Command::Learn { rank, address });
        }
    }

    fn send_block(&self, to: u32, id: TaskId, block: Block) {
        self.sending.fetch_add(1, Ordering::SeqCst);
        self.command(Command::Send { to, id, block });
    }

    fn expect_block(&self, from: u32, to: Endpoint, id: TaskId, header: BlockHeader) {
        self.command(Command::Expect { from, to, id, header });
    }

    fn peer_lost(&self, rank: u32, reason: String) {
        self.command(Command::Lost { rank, reason });
    }

    fn busy(&self) -> bool {
        self.sending.load(Ordering::SeqCst) > 0
    }

    fn name(&self) -> &'static str {
        "ucx"
    }
}

/// A send in flight (the `Op` keeps the block alive).
struct PendingSend {
    op: Op,
    to: u32,
}

/// A receive in flight (the `Op` owns the buffer UCX writes).
struct PendingRecv {
    op: Op,
    from: u32,
    to: Endpoint,
    id: TaskId,
}

/// The progress thread's state.
struct State {
    rank: u32,
    worker: Worker,
    mailboxes: Mailboxes,
    addresses: FxHashMap<u32, Vec<u8>>,
    eps: FxHashMap<u32, ucp::Endpoint>,
    lost: FxHashSet<u32>,
    sends: Vec<PendingSend>,
    recvs: Vec<PendingRecv>,
    sending: Arc<AtomicU64>,
    sleepy: Arc<AtomicBool>,
    stats: Stats,
}

impl State {
    fn run(mut self, commands: Receiver<Command>, wake: std::os::fd::RawFd) -> Stats {
        let mut last_busy = Instant::now();
        let mut stopping: Option<Instant> = None;
        loop {
            let mut busy = false;
            while let Ok(c) = commands.try_recv() {
                busy = true;
                match c {
                    Command::Learn { rank, address } => {
                        self.addresses.insert(rank, address);
                    }
                    Command::Send { to, id, block } => self.send(to, id, block),
                    Command::Expect { from, to, id, header } => self.expect(from, to, id, header),
                    Command::Lost { rank, reason } => self.lose(rank, &reason),
                    Command::Stop => stopping = Some(Instant::now()),
                }
            }
            while self.worker.progress() {
                busy = true;
            }
            busy |= self.poll();
            for (peer, reason) in self.worker.failed_peers() {
                busy = true;
                self.lose(peer, &format!("UCX reports the connection failed: {reason}"));
            }
            if let Some(since) = stopping {
                if self.sends.is_empty() || since.elapsed() > STOP_LIMIT {
                    break;
                }
            }
            if busy {
                last_busy = Instant::now();
                continue;
            }
            if last_busy.elapsed() < SPIN || stopping.is_some() {
                std::thread::yield_now();
                continue;
            }
            // Announce the sleep, then look at the queue once more: a command
            // queued before the announcement is seen here, one after it pokes.
            self.sleepy.store(true, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            if !commands.is_empty() {
                self.sleepy.store(false, Ordering::SeqCst);
                continue;
            }
            match self.worker.arm() {
                Ok(true) => crate::host::sys::sleep_on(&[self.worker.event_fd(), wake], SLEEP_MS),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(rank = self.rank, error = %e, "cannot arm the UCP worker; polling");
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            self.sleepy.store(false, Ordering::SeqCst);
            EventFd::drain_fd(wake);
            last_busy = Instant::now() - SPIN / 2;
        }
        if !self.sends.is_empty() {
            tracing::warn!(rank = self.rank, left = self.sends.len(), "UCX sends still in flight at stop");
        }
        for op in self.sends.iter().map(|s| &s.op).chain(self.recvs.iter().map(|r| &r.op)) {
            self.worker.cancel(op);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while !(self.sends.is_empty() && self.recvs.is_empty()) && Instant::now() < deadline {
            self.worker.progress();
            self.poll();
        }
        // Operations still in flight leak their memory when dropped (see `ucp::Op`).
        for (_, ep) in std::mem::take(&mut self.eps) {
            self.worker.close(ep, false, Duration::from_millis(200));
        }
        self.stats
    }

    /// Opens the endpoint to `rank` on first use; false when there is none.
    fn connect(&mut self, rank: u32) -> bool {
        if self.eps.contains_key(&rank) {
            return true;
        }
        let Some(address) = self.addresses.get(&rank) else { return false };
        match self.worker.connect(rank, address) {
            Ok(ep) => {
                self.eps.insert(rank, ep);
                true
            }
            Err(e) => {
                tracing::error!(rank = self.rank, peer = rank, error = %e, "cannot open a UCX endpoint");
                false
            }
        }
    }

    fn send(&mut self, to: u32, id: TaskId, block: Block) {
        let rank = self.rank;
        let started = if self.lost.contains(&to) {
            Err(format!("rank {to} was lost"))
        } else {
            match self.connect(to).then(|| &self.eps[&to]) {
                None => Err(format!("no UCX endpoint to rank {to}")),
                Some(ep) => self.worker.send(ep, tag(rank, id), block.clone()).map_err(|e| e.to_string()),
            }
        };
        match started {
            Ok(op) => {
                self.stats.blocks_sent += 1;
                self.stats.bytes_sent += block.nbytes() as u64;
                if op.is_done() {
                    self.sending.fetch_sub(1, Ordering::SeqCst);
                } else {
                    self.sends.push(PendingSend { op, to });
                }
            }
            Err(reason) => {
                // The receiver learns of it through its own endpoint or the control transport.
                tracing::warn!(rank, to, %id, %reason, "block not sent over UCX");
                self.stats.failed += 1;
                self.sending.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn expect(&mut self, from: u32, to: Endpoint, id: TaskId, header: BlockHeader) {
        if self.lost.contains(&from) {
            self.missing(from, to, id);
            return;
        }
        // An endpoint to the sender lets UCX report it failing while we wait.
        self.connect(from);
        match self.worker.recv(tag(from, id), header) {
            Ok(op) if op.is_done() => self.arrived(from, to, id, op),
            Ok(op) => self.recvs.push(PendingRecv { op, from, to, id }),
            Err(e) => {
                tracing::error!(rank = self.rank, from, %id, error = %e, "cannot receive a block over UCX");
                self.missing(from, to, id);
            }
        }
    }

    /// Completes finished operations; true when any did.
    fn poll(&mut self) -> bool {
        let sent = finished(&self.worker, &mut self.sends, |s| &mut s.op);
        let received = finished(&self.worker, &mut self.recvs, |r| &mut r.op);
        let any = !(sent.is_empty() && received.is_empty());
        for (s, result) in sent {
            self.sending.fetch_sub(1, Ordering::SeqCst);
            if let Err(e) = result {
                self.stats.failed += 1;
                tracing::warn!(rank = self.rank, to = s.to, error = %e, "a UCX block send failed");
            }
        }
        for (r, result) in received {
            match result {
                Ok(()) => self.arrived(r.from, r.to, r.id, r.op),
                Err(e) => {
                    tracing::error!(rank = self.rank, from = r.from, id = %r.id, error = %e, "a UCX block receive failed");
                    self.missing(r.from, r.to, r.id);
                }
            }
        }
        any
    }

    fn arrived(&mut self, from: u32, to: Endpoint, id: TaskId, op: Op) {
        let block = op.into_block().expect("a completed receive has its block");
        self.stats.blocks_received += 1;
        RECEIVED.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_received += block.nbytes() as u64;
        tracing::trace!(rank = self.rank, from, %id, bytes = block.nbytes(), "block received over UCX");
        self.deliver(to, Msg::Block { id, payload: Payload::Ready(block) });
    }

    fn missing(&mut self, from: u32, to: Endpoint, id: TaskId) {
        self.stats.failed += 1;
        self.deliver(to, Msg::Missing { id, rank: from });
    }

    fn deliver(&self, to: Endpoint, msg: Msg) {
        match self.mailboxes.deliver(to, msg) {
            Delivery::Delivered => {}
            other => {
                tracing::warn!(rank = self.rank, %to, ?other, "a block for an endpoint this process does not have")
            }
        }
    }

    /// `rank` is gone: blocks awaited from it are answered missing, sends
    /// to it cancelled, its endpoint closed.
    fn lose(&mut self, rank: u32, reason: &str) {
        if !self.lost.insert(rank) {
            return;
        }
        let awaited = self.recvs.iter().filter(|r| r.from == rank).count();
        let unsent = self.sends.iter().filter(|s| s.to == rank).count();
        if awaited + unsent > 0 {
            tracing::warn!(rank = self.rank, peer = rank, %reason, awaited, unsent, "UCX peer lost");
        } else {
            // Nothing owed either way (as when ranks stop at the end of a job).
            tracing::debug!(rank = self.rank, peer = rank, %reason, "UCX peer gone");
        }
        for r in self.recvs.iter().filter(|r| r.from == rank) {
            self.worker.cancel(&r.op);
        }
        for s in self.sends.iter().filter(|s| s.to == rank) {
            self.worker.cancel(&s.op);
        }
        if let Some(ep) = self.eps.remove(&rank) {
            self.worker.close(ep, true, Duration::from_millis(200));
        }
        // Cancelled receives complete with an error and are answered missing by `poll`.
    }
}

/// Takes the entries of `pending` whose operation has completed, each with
/// how it ended.
fn finished<T>(worker: &Worker, pending: &mut Vec<T>, op: impl Fn(&mut T) -> &mut Op) -> Vec<(T, Result<()>)> {
    let mut done = Vec::new();
    let mut i = 0;
    while i < pending.len() {
        match worker.test(op(&mut pending[i])) {
            None => i += 1,
            Some(result) => done.push((pending.swap_remove(i), result)),
        }
    }
    done
}

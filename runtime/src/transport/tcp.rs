//! The TCP transport: processes of an elastic cluster, every connection
//! authenticated with the cluster's shared secret.
//!
//! **Topology.** The scheduler process (rank 0) listens; workers and remote
//! clients connect to it and are given a rank (never reused). That
//! connection carries the control plane (tasks, reports, client requests).
//! Every worker listens too, on the interface it reached the scheduler
//! through, and the scheduler tells every member where each worker listens
//! ([`Msg::Peers`]); block fetches then go **worker to worker** (and worker
//! to client) over direct connections opened on first use, never through
//! rank 0.
//!
//! **Authentication** (before any message is read). With nonces `nc`, `na`
//! of 32 random bytes from the connecting and the accepting side:
//!
//! ```text
//! C -> A  "TESSERA" version has_secret nc
//! A -> C  "TESSERA" version status [na]
//! C -> A  HMAC(s, "tessera connect" nc na)
//! A -> C  verdict (0: admitted, 1: wrong secret) [HMAC(s, "tessera accept" nc na)]
//! C -> A  intro frame (worker: where I listen | client | peer: my rank) + MAC
//! A -> C  welcome frame (your rank, where the workers listen) or refusal + MAC
//! ```
//!
//! The secret never travels; MACs are HMAC-SHA256 compared in constant
//! time; the connecting side proves knowledge of it first (so the accepting
//! side can log a wrong secret as such), then the accepting side does, so a
//! worker cannot be fed tasks by an impostor either. From the intro on,
//! every frame in each direction carries an HMAC-SHA256 tag under a key of
//! that direction, `HMAC(s, "tessera frames " ("c->a" | "a->c") nc na)`,
//! over the frame's sequence number (counted on both sides, never sent),
//! its length and its bytes (`secret::FrameMac`): a host
//! on the path can neither inject, alter, replay nor reorder a control
//! frame, and a frame whose tag fails is refused before it is decoded. The
//! connection is authenticated, not encrypted: block data crosses the
//! network in clear, as it does over MPI, and the raw bytes of blocks that
//! follow a frame are not covered by its tag (their size and destination
//! are, in the frame's header). A connection that presents no secret, a wrong one,
//! or anything but the greeting is refused and logged with the peer's
//! address; nothing it sent is handled. Handshakes run on threads of their
//! own, at most 64 (`MAX_HANDSHAKES`) at once (more connections are closed at
//! once and logged), each with one deadline for the whole handshake
//! (`handshake_timeout`), so neither a silent peer nor one that trickles
//! its greeting a byte at a time holds a thread for longer.
//!
//! **Identity.** A peer's rank is the one the handshake established (the
//! scheduler hands out ranks; a worker accepts direct connections only from
//! ranks other than 0 and its own), never one a message names. Every
//! message is checked against what the connection is before it is handled
//! (`transport/policy.rs`): orders come from the scheduler only, a worker's
//! reports must carry its own rank, requests come from clients only.
//!
//! **Frames.** `u32` little-endian length, then a frame of
//! [`crate::protocol`] (version byte, then [`crate::codec`]), at most
//! [`crate::protocol::MAX_FRAME`] bytes, then its 32-byte MAC; length 0 (and
//! its MAC) is a keep-alive. Every
//! block a frame announces follows it as raw bytes, written straight from
//! the block's memory and read straight into the new block's buffer (blocks
//! up to [`crate::protocol::INLINE_MAX`] ride inside the frame).
//!
//! **Threads.** Per connection one reader (blocking reads, delivers into the
//! endpoints' inboxes, answers fetches from the local store) and one writer
//! (drains a channel, packs everything queued for that peer into one frame,
//! sends a keep-alive after a second of silence). `send` only queues.
//! A peer silent for `dead_after` (keep-alives included) is declared lost:
//! its connection is closed, fetches it owes are answered `Missing`, and the
//! scheduler is told ([`Msg::PeerLost`]). Both threads run their clean-up
//! whatever happens, panics included: a reader that panics declares its
//! peer lost like one whose stream broke. A thread that cannot be started
//! closes its connection the same way (logged), never a panic.
//!
//! **Refusals.** A peer that sends a frame over the limit, a malformed one,
//! a block header whose size is unusable, or a message it may not send is
//! logged with its address, told why ([`Msg::Refused`], which its side logs
//! and reports as the reason the connection ended) and its connection
//! closed. A message this side cannot fit in a frame is not sent: a batch
//! that would exceed the limit goes one message per frame, and a single
//! message too large is answered locally (a client's request gets
//! [`Error::Unsendable`], a task sent to a worker fails naming it) while
//! the connection stays up.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use super::policy::{self, PeerKind};
use super::{DataPlane, Delivery, Mailboxes, Transport};
use crate::block::Block;
use crate::codec::CodecError;
use crate::error::{Error, Result};
use crate::graph::TaskId;
use crate::protocol::{
    decode_frame, encode_frame, offload_blocks, Endpoint, Msg, Payload, Role, WireReply, WireRequest, MAX_FRAME,
    PROTOCOL_VERSION,
};
use crate::transport::secret::{random_bytes, FrameMac, Secret, TAG_LEN};

const MAGIC: &[u8; 7] = b"TESSERA";
const STATUS_OK: u8 = 0;
const STATUS_VERSION: u8 = 1;
const STATUS_NO_SECRET: u8 = 2;
const VERDICT_OK: u8 = 0;
const VERDICT_WRONG: u8 = 1;

/// Largest intro or welcome frame of a handshake.
const MAX_HANDSHAKE_FRAME: u32 = 1 << 20;

/// A block announced by a header is read in pieces of this many bytes at
/// most, each committed only once the one before it has arrived.
const READ_PIECE: usize = 4 << 20;

/// Messages packed into one frame at most.
const BATCH: usize = 1024;

/// Incoming connections in their handshake at once, at most; more are
/// closed at once (a handshake takes a round trip or two, so only a flood
/// of connections that never finish theirs reaches this).
pub(crate) const MAX_HANDSHAKES: usize = 64;

/// Why a connection's reader stopped.
enum Ended {
    /// The stream closed, failed or went silent.
    Stream(String),
    /// The peer sent something this side refuses: an over-long or malformed
    /// frame, or a block header whose size is unusable.
    Refused(String),
}

/// Timeouts and the secret of a TCP transport.
#[derive(Clone, Debug)]
pub struct TcpOptions {
    /// `None` only to test that the other side refuses such a peer.
    pub secret: Option<Secret>,
    /// Opening a connection.
    pub connect_timeout: Duration,
    /// The whole handshake, from the connection's start to the welcome.
    pub handshake_timeout: Duration,
    /// A writer with nothing to send sends a keep-alive this often.
    pub keepalive: Duration,
    /// A peer silent this long (keep-alives included) is declared lost.
    pub dead_after: Duration,
}

impl TcpOptions {
    pub fn new(secret: Secret) -> TcpOptions {
        TcpOptions {
            secret: Some(secret),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(1),
            dead_after: Duration::from_secs(30),
        }
    }
}

/// What a connecting process asks to be.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Intro {
    /// A new worker, listening for its peers at `listen` (and over UCX at
    /// `ucx`, a UCP worker address).
    Worker { listen: String, ucx: Option<Vec<u8>> },
    /// A new remote client.
    Client,
    /// A member of the cluster opening a direct connection.
    Peer { rank: u32 },
}

/// The accepting side's answer to an [`Intro`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Welcome {
    /// Admitted as `rank`; `peers` says where the workers listen, `ucx`
    /// the UCX addresses of those that have one.
    Joined {
        rank: u32,
        peers: Vec<(u32, String)>,
        ucx: Vec<(u32, Vec<u8>)>,
    },
    Refused {
        reason: String,
    },
}

/// The frame MACs of one connection (see the module docs): what this side
/// sends is signed with `send`, what it receives checked with `recv`.
pub(crate) struct FrameKeys {
    send: FrameMac,
    recv: FrameMac,
}

impl std::fmt::Debug for FrameKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameKeys")
    }
}

impl FrameKeys {
    /// The keys of the side that connected (`connecting`) or accepted a
    /// handshake with nonces `nc` (connecting side's) and `na`.
    fn derive(secret: &Secret, nc: &[u8], na: &[u8], connecting: bool) -> FrameKeys {
        let c2a = FrameMac::derive(secret, b"c->a", nc, na);
        let a2c = FrameMac::derive(secret, b"a->c", nc, na);
        match connecting {
            true => FrameKeys { send: c2a, recv: a2c },
            false => FrameKeys { send: a2c, recv: c2a },
        }
    }
}

fn write_small_frame<T: Serialize>(s: &mut impl Write, value: &T, mac: &mut FrameMac) -> io::Result<()> {
    let mut out = vec![0u8; 4];
    crate::codec::encode_into(value, &mut out, u64::from(MAX_HANDSHAKE_FRAME)).map_err(io::Error::other)?;
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    let tag = mac.sign(&[&out]);
    out.extend_from_slice(&tag);
    s.write_all(&out)
}

fn read_small_frame<T: serde::de::DeserializeOwned>(s: &mut impl Read, mac: &mut FrameMac) -> io::Result<T> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let n = u32::from_le_bytes(len);
    if n > MAX_HANDSHAKE_FRAME {
        return Err(io::Error::other(format!("a handshake frame of {n} bytes")));
    }
    let mut buf = vec![0u8; n as usize];
    s.read_exact(&mut buf)?;
    let mut tag = [0u8; TAG_LEN];
    s.read_exact(&mut tag)?;
    if !mac.check(&[&len, &buf], &tag) {
        return Err(io::Error::other("a handshake frame whose MAC does not verify"));
    }
    crate::codec::decode(&buf, u64::from(MAX_HANDSHAKE_FRAME)).map_err(io::Error::other)
}

fn describe(e: &io::Error, dead_after: Duration) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "the peer closed the connection".into(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("no message for {:.0} s", dead_after.as_secs_f64())
        }
        _ => e.to_string(),
    }
}

/// A stream whose reads and writes all end by one deadline: a peer that
/// trickles its handshake a byte at a time still runs out of time.
struct Timed<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Timed<'_> {
    fn left(&self) -> io::Result<Duration> {
        match self.deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(left),
            _ => Err(io::Error::from(io::ErrorKind::TimedOut)),
        }
    }
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        (&mut &*self.stream).read(buf)
    }
}

impl Write for Timed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        (&mut &*self.stream).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens an authenticated connection to `addr` and introduces this process
/// with what `intro` makes of the local end of the connection (a worker
/// listens on the interface it reached the scheduler through).
pub(crate) fn connect(
    addr: &str,
    opts: &TcpOptions,
    intro: impl FnOnce(SocketAddr) -> Result<Intro>,
) -> Result<(TcpStream, Welcome, FrameKeys)> {
    let fail = |reason: String| Error::Connect { addr: addr.to_owned(), reason, source: None };
    let fail_io = |reason: &str, e: io::Error| Error::Connect {
        addr: addr.to_owned(),
        reason: reason.to_owned(),
        source: Some(e.into()),
    };
    let targets: Vec<SocketAddr> =
        addr.to_socket_addrs().map_err(|e| fail_io("not an address (HOST:PORT)", e))?.collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
    let mut stream = None;
    for t in &targets {
        match TcpStream::connect_timeout(t, opts.connect_timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let stream = stream
        .ok_or_else(|| fail_io("no connection (is a scheduler listening there, and reachable from here?)", last))?;
    let io = |e: io::Error| fail(format!("handshake failed: {}", describe(&e, opts.handshake_timeout)));
    stream.set_nodelay(true).map_err(io)?;
    let local = stream.local_addr().map_err(io)?;
    let mut s = Timed { stream: &stream, deadline: Instant::now() + opts.handshake_timeout };
    let (welcome, keys) = connect_steps(&mut s, opts, local, intro, fail)?;
    Ok((stream, welcome, keys))
}

/// The connecting side's steps of the handshake over any stream (the TCP
/// one with its deadline, or a fuzzer's bytes playing the accepting side);
/// `fail` makes an error naming the address.
pub(crate) fn connect_steps(
    s: &mut (impl Read + Write),
    opts: &TcpOptions,
    local: SocketAddr,
    intro: impl FnOnce(SocketAddr) -> Result<Intro>,
    fail: impl Fn(String) -> Error,
) -> Result<(Welcome, FrameKeys)> {
    let io = |e: io::Error| fail(format!("handshake failed: {}", describe(&e, opts.handshake_timeout)));
    let nc = random_bytes::<TAG_LEN>()?;
    let mut hello = MAGIC.to_vec();
    hello.push(PROTOCOL_VERSION);
    hello.push(u8::from(opts.secret.is_some()));
    hello.extend_from_slice(&nc);
    s.write_all(&hello).map_err(io)?;

    let mut head = [0u8; 9];
    s.read_exact(&mut head).map_err(io)?;
    if &head[..7] != MAGIC {
        return Err(fail("the peer is not a Tessera scheduler or worker".into()));
    }
    match head[8] {
        STATUS_OK => {}
        STATUS_VERSION => {
            return Err(fail(format!(
                "it speaks protocol version {}, this build {PROTOCOL_VERSION} (use the same tessera build everywhere)",
                head[7]
            )))
        }
        STATUS_NO_SECRET => return Err(fail("refused: no secret presented (give --secret-file)".into())),
        other => return Err(fail(format!("unknown handshake status {other}"))),
    }
    let mut na = [0u8; TAG_LEN];
    s.read_exact(&mut na).map_err(io)?;
    let Some(secret) = opts.secret.as_ref() else {
        return Err(fail(
            "the peer admits connections without a secret: it is not a Tessera scheduler or worker".into(),
        ));
    };
    s.write_all(&secret.mac(&[b"tessera connect", &nc, &na])).map_err(io)?;
    let mut verdict = [0u8; 1];
    s.read_exact(&mut verdict).map_err(io)?;
    if verdict[0] != VERDICT_OK {
        return Err(fail("refused: wrong secret (is --secret-file the scheduler's?)".into()));
    }
    let mut mac_a = [0u8; TAG_LEN];
    s.read_exact(&mut mac_a).map_err(io)?;
    if !secret.verify(&[b"tessera accept", &nc, &na], &mac_a) {
        return Err(fail(
            "the peer does not hold our secret: it is not our scheduler or worker; nothing more was sent to it".into(),
        ));
    }
    let intro = intro(local)?;
    let mut keys = FrameKeys::derive(secret, &nc, &na, true);
    write_small_frame(s, &intro, &mut keys.send).map_err(io)?;
    let welcome: Welcome = read_small_frame(s, &mut keys.recv).map_err(io)?;
    if let Welcome::Refused { reason } = &welcome {
        return Err(fail(format!("refused: {reason}")));
    }
    Ok((welcome, keys))
}

/// The accepting side of the handshake, all of it by `deadline`; `None`
/// (logged) if refused.
fn accept_handshake(
    stream: &TcpStream,
    peer: SocketAddr,
    opts: &TcpOptions,
    deadline: Instant,
) -> Option<(Intro, FrameKeys)> {
    let refuse = |why: &str| tracing::warn!(peer = %peer, "refused a connection: {why}");
    if let Err(e) = stream.set_nodelay(true) {
        refuse(&e.to_string());
        return None;
    }
    accept_steps(&mut Timed { stream, deadline }, opts, refuse)
}

/// The accepting side's steps of the handshake over any stream (the TCP
/// one with its deadline, or a fuzzer's bytes); `refuse` hears why a
/// connection is refused.
pub(crate) fn accept_steps(
    s: &mut (impl Read + Write),
    opts: &TcpOptions,
    refuse: impl Fn(&str),
) -> Option<(Intro, FrameKeys)> {
    let mut hello = [0u8; 7 + 2 + TAG_LEN];
    if let Err(e) = s.read_exact(&mut hello) {
        refuse(&format!("no greeting ({})", describe(&e, opts.handshake_timeout)));
        return None;
    }
    if &hello[..7] != MAGIC {
        refuse("not a Tessera peer (unknown greeting); nothing it sent was read");
        return None;
    }
    let mut head = MAGIC.to_vec();
    head.push(PROTOCOL_VERSION);
    if hello[7] != PROTOCOL_VERSION {
        head.push(STATUS_VERSION);
        let _ = s.write_all(&head);
        refuse(&format!("protocol version {}, this build speaks {PROTOCOL_VERSION}", hello[7]));
        return None;
    }
    if hello[8] == 0 {
        head.push(STATUS_NO_SECRET);
        let _ = s.write_all(&head);
        refuse("no secret presented");
        return None;
    }
    let Some(secret) = opts.secret.as_ref() else {
        refuse("this process has no secret to check it against");
        return None;
    };
    let nc = &hello[9..];
    let Ok(na) = random_bytes::<TAG_LEN>() else {
        refuse("no random numbers for a nonce");
        return None;
    };
    head.push(STATUS_OK);
    head.extend_from_slice(&na);
    let mut mac_c = [0u8; TAG_LEN];
    if let Err(e) = s.write_all(&head).and_then(|_| s.read_exact(&mut mac_c)) {
        refuse(&format!("handshake broke off ({})", describe(&e, opts.handshake_timeout)));
        return None;
    }
    if !secret.verify(&[b"tessera connect", nc, &na], &mac_c) {
        let _ = s.write_all(&[VERDICT_WRONG]);
        refuse("wrong secret");
        return None;
    }
    let mut verdict = vec![VERDICT_OK];
    verdict.extend_from_slice(&secret.mac(&[b"tessera accept", nc, &na]));
    let mut keys = FrameKeys::derive(secret, nc, &na, false);
    match s.write_all(&verdict).and_then(|_| read_small_frame::<Intro>(s, &mut keys.recv)) {
        Ok(intro) => Some((intro, keys)),
        Err(e) => {
            refuse(&format!("no introduction after the handshake ({e})"));
            None
        }
    }
}

/// Runs the accepting side of a handshake on `data` (what a connecting
/// peer sends), for [`crate::fuzzing::handshake`].
pub(crate) fn fuzz_accept(data: &[u8], secret: &Secret) {
    let opts = TcpOptions::new(secret.clone());
    let _ = accept_steps(&mut crate::fuzzing::Scripted { input: data }, &opts, |_| {});
}

/// Runs the connecting side of a handshake on `data` (what an accepting
/// peer answers), for [`crate::fuzzing::handshake`].
pub(crate) fn fuzz_connect(data: &[u8], secret: &Secret) {
    let opts = TcpOptions::new(secret.clone());
    let local = SocketAddr::from(([127, 0, 0, 1], 1));
    let fail = |reason: String| Error::Connect { addr: "fuzz".into(), reason, source: None };
    let _ = connect_steps(&mut crate::fuzzing::Scripted { input: data }, &opts, local, |_| Ok(Intro::Client), fail);
}

/// Reads `data` as a handshake frame (an intro when `intro`, else a
/// welcome): as it stands when `raw`, else wrapped in its length and a
/// valid MAC, for [`crate::fuzzing::handshake`].
pub(crate) fn fuzz_small_frame(data: &[u8], secret: &Secret, intro: bool, raw: bool) {
    let mut keys = FrameKeys::derive(secret, &[1; TAG_LEN], &[2; TAG_LEN], false);
    let sealed;
    let input = if raw {
        data
    } else {
        let mut peer = FrameKeys::derive(secret, &[1; TAG_LEN], &[2; TAG_LEN], true);
        let len = (data.len() as u32).to_le_bytes();
        let tag = peer.send.sign(&[&len, data]);
        sealed = [&len[..], data, &tag].concat();
        &sealed
    };
    let s = &mut crate::fuzzing::Scripted { input };
    if intro {
        let _ = read_small_frame::<Intro>(s, &mut keys.recv);
    } else {
        let _ = read_small_frame::<Welcome>(s, &mut keys.recv);
    }
}

/// What a writer thread is handed.
enum Out {
    Msg(Role, Msg),
    /// Write everything queued before this, then answer.
    Flush(Sender<()>),
    /// Write everything queued before this, then close the connection.
    Close,
}

/// One connection to a peer, as senders see it.
struct Conn {
    id: u64,
    /// The rank the handshake established.
    peer: u32,
    /// What the peer is: what it may send depends on it ([`policy`]).
    kind: PeerKind,
    addr: String,
    tx: Sender<Out>,
    /// Set once the writer has stopped; senders then bounce their messages.
    closed: Mutex<bool>,
    /// Why the peer refused what this process sent ([`Msg::Refused`]).
    refused: Mutex<Option<String>>,
}

struct Shared {
    rank: u32,
    scheduler: bool,
    opts: TcpOptions,
    mailboxes: Mailboxes,
    /// The connection used to send to each rank.
    routes: Mutex<FxHashMap<u32, Arc<Conn>>>,
    /// Every open connection, by id (flushes reach all).
    all: Mutex<FxHashMap<u64, Arc<Conn>>>,
    /// Where workers listen.
    book: Mutex<FxHashMap<u32, String>>,
    /// UCX addresses of the workers that have one.
    ucx_book: Mutex<FxHashMap<u32, Vec<u8>>>,
    /// Blocks go over this plane to peers in `ucx_book` (`--transport ucx`).
    plane: Option<Arc<dyn DataPlane>>,
    /// Ranks that have left: messages to them bounce at once.
    gone: Mutex<FxHashSet<u32>>,
    /// Fetches sent to each peer and not answered yet: bounced as
    /// `Missing` if the peer goes away.
    owed: Mutex<FxHashMap<u32, FxHashMap<TaskId, Vec<Endpoint>>>>,
    next_conn: AtomicU64,
    next_rank: AtomicU32,
    listen: Option<SocketAddr>,
    /// The scheduler told this process to stop: losing it is expected now.
    stopping: AtomicBool,
    /// Held while a member is admitted: ranks, the address book, the
    /// broadcast and the new route change together, so every member learns
    /// of every other.
    joining: Mutex<()>,
    /// Incoming connections in their handshake now (at most [`MAX_HANDSHAKES`]).
    handshakes: AtomicUsize,
    closed: AtomicBool,
}

/// The TCP backend of [`Transport`] (see the module docs).
pub struct TcpTransport {
    shared: Arc<Shared>,
}

impl TcpTransport {
    /// A transport for `rank`, delivering into `mailboxes`. The scheduler's
    /// (`scheduler`: hands out ranks) and every worker's has a `listener`.
    pub(crate) fn new(
        rank: u32,
        scheduler: bool,
        mailboxes: Mailboxes,
        opts: TcpOptions,
        listener: Option<TcpListener>,
        plane: Option<Arc<dyn DataPlane>>,
    ) -> Result<Arc<TcpTransport>> {
        let shared = Arc::new(Shared {
            rank,
            scheduler,
            opts,
            mailboxes,
            routes: Mutex::default(),
            all: Mutex::default(),
            book: Mutex::default(),
            ucx_book: Mutex::default(),
            plane,
            gone: Mutex::default(),
            owed: Mutex::default(),
            next_conn: AtomicU64::new(1),
            next_rank: AtomicU32::new(1),
            listen: listener.as_ref().and_then(|l| l.local_addr().ok()),
            stopping: AtomicBool::new(false),
            joining: Mutex::new(()),
            handshakes: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        });
        if let Some(listener) = listener {
            let s = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("tessera-tcp-accept-{rank}"))
                .spawn(move || s.accept_loop(listener))
                .map_err(|e| Error::Config(format!("no thread to accept connections: {e}")))?;
        }
        Ok(Arc::new(TcpTransport { shared }))
    }

    /// Where this process listens, if it does.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.listen
    }

    /// The address rank `rank` listens on for its peers (`IP:PORT`), as the
    /// scheduler announced it; `None` for a rank this process has not heard of.
    pub fn peer_address(&self, rank: u32) -> Option<String> {
        self.shared.book.lock().get(&rank).cloned()
    }

    /// Starts reading and writing on an authenticated `stream` to the
    /// scheduler (rank 0), which this process connected to.
    pub(crate) fn adopt(&self, addr: String, stream: TcpStream, keys: FrameKeys) {
        self.shared.start(0, PeerKind::Scheduler, addr, Some((stream, keys)), true);
    }

    /// Records where workers listen, and their UCX addresses.
    pub(crate) fn learn(&self, peers: Vec<(u32, String)>, ucx: Vec<(u32, Vec<u8>)>) {
        self.shared.book.lock().extend(peers);
        self.shared.learn_ucx(ucx);
    }

    /// Waits (up to `limit`) until everything queued so far has been written.
    pub fn flush(&self, limit: Duration) {
        let conns: Vec<Arc<Conn>> = self.shared.all.lock().values().cloned().collect();
        let acks: Vec<Receiver<()>> = conns
            .iter()
            .filter_map(|c| {
                let (tx, rx) = crossbeam_channel::bounded(1);
                c.tx.send(Out::Flush(tx)).ok().map(|_| rx)
            })
            .collect();
        let deadline = std::time::Instant::now() + limit;
        for rx in acks {
            let _ = rx.recv_deadline(deadline);
        }
    }

    /// Expects the scheduler to go away now (this process is stopping).
    pub(crate) fn stopping(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
    }

    /// Stops accepting and closes every connection.
    pub fn close(&self) {
        let s = &self.shared;
        s.stopping.store(true, Ordering::SeqCst);
        if s.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(addr) = s.listen {
            // Wake the accept loop so it sees `closed`.
            let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
        }
        let conns: Vec<Arc<Conn>> = s.all.lock().drain().map(|(_, c)| c).collect();
        s.routes.lock().clear();
        for c in conns {
            // Writers send what is queued, then shut their sockets.
            let _ = c.tx.send(Out::Close);
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.close();
    }
}

impl Transport for TcpTransport {
    fn send(&self, to: Endpoint, msg: Msg) {
        self.shared.send(to, msg);
    }

    fn name(&self) -> &'static str {
        match self.shared.plane {
            Some(_) => "tcp+ucx",
            None => "tcp",
        }
    }

    fn ranks(&self) -> u32 {
        self.shared.next_rank.load(Ordering::Relaxed).max(self.shared.book.lock().len() as u32 + 1)
    }
}

impl Shared {
    fn learn_ucx(&self, ucx: Vec<(u32, Vec<u8>)>) {
        if let Some(plane) = &self.plane {
            for (rank, address) in &ucx {
                plane.learn(*rank, address.clone());
            }
        }
        self.ucx_book.lock().extend(ucx);
    }

    fn send(self: &Arc<Self>, to: Endpoint, msg: Msg) {
        if to.rank == self.rank {
            match self.mailboxes.deliver(to, msg) {
                Delivery::Delivered => {}
                Delivery::Reply(to, reply) => self.send(to, reply),
                Delivery::Unknown(msg) => {
                    tracing::warn!(%to, ?msg, "no such endpoint in this process; message dropped")
                }
            }
            return;
        }
        let Some(conn) = self.route(to.rank) else {
            return self.bounce(to, msg);
        };
        if let Msg::Fetch { id, reply_to } = &msg {
            self.owed.lock().entry(to.rank).or_default().entry(*id).or_default().push(*reply_to);
        }
        let closed = conn.closed.lock();
        if *closed {
            drop(closed);
            return self.bounce(to, msg);
        }
        if let Err(e) = conn.tx.send(Out::Msg(to.role, msg)) {
            drop(closed);
            if let Out::Msg(_, msg) = e.0 {
                self.bounce(to, msg);
            }
        }
    }

    /// The connection to send to `rank` on, dialling it if it has an address.
    fn route(self: &Arc<Self>, rank: u32) -> Option<Arc<Conn>> {
        if self.closed.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(c) = self.routes.lock().get(&rank) {
            return Some(Arc::clone(c));
        }
        if self.gone.lock().contains(&rank) {
            return None;
        }
        let addr = self.book.lock().get(&rank).cloned()?;
        // Check again under the lock: another thread may have dialled meanwhile.
        let mut routes = self.routes.lock();
        if let Some(c) = routes.get(&rank) {
            return Some(Arc::clone(c));
        }
        let conn = self.start(rank, PeerKind::Member, addr, None, false);
        routes.insert(rank, Arc::clone(&conn));
        Some(conn)
    }

    /// A message that cannot reach `to`: a fetch is answered `Missing` (so
    /// the task waiting for it is placed again), anything else is dropped.
    fn bounce(self: &Arc<Self>, to: Endpoint, msg: Msg) {
        match msg {
            Msg::Fetch { id, reply_to } => {
                self.settle(to.rank, id, reply_to);
                self.send(reply_to, Msg::Missing { id, rank: to.rank });
            }
            other => tracing::debug!(%to, msg = ?other, "peer unreachable; message dropped"),
        }
    }

    /// A fetch from `peer` was answered (or bounced).
    fn settle(&self, peer: u32, id: TaskId, reply_to: Endpoint) {
        let mut owed = self.owed.lock();
        if let Some(m) = owed.get_mut(&peer) {
            if let Some(v) = m.get_mut(&id) {
                if let Some(i) = v.iter().position(|e| *e == reply_to) {
                    v.swap_remove(i);
                }
                if v.is_empty() {
                    m.remove(&id);
                }
            }
        }
    }

    /// Answers `Missing` for every fetch `peer` still owes.
    fn bounce_owed(self: &Arc<Self>, peer: u32) {
        let owed = self.owed.lock().remove(&peer).unwrap_or_default();
        for (id, endpoints) in owed {
            for e in endpoints {
                self.send(e, Msg::Missing { id, rank: peer });
            }
        }
    }

    /// Registers a connection and starts its writer (which dials first when
    /// `stream` is `None`) and reader threads. A thread that cannot be
    /// started closes the connection, as if the peer had gone.
    fn start(
        self: &Arc<Self>,
        peer: u32,
        kind: PeerKind,
        addr: String,
        link: Option<(TcpStream, FrameKeys)>,
        route: bool,
    ) -> Arc<Conn> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn { id, peer, kind, addr, tx, closed: Mutex::new(false), refused: Mutex::new(None) });
        self.all.lock().insert(id, Arc::clone(&conn));
        if route {
            self.routes.lock().entry(peer).or_insert_with(|| Arc::clone(&conn));
        }
        let s = Arc::clone(self);
        let c = Arc::clone(&conn);
        let shut = link.as_ref().and_then(|(s, _)| s.try_clone().ok());
        let spawned = std::thread::Builder::new()
            .name(format!("tessera-tcp-w{}-{peer}", self.rank))
            .spawn(move || s.writer(c, link, rx));
        if let Err(e) = spawned {
            let reason = format!("no thread for the connection's writer: {e}");
            tracing::error!(rank = self.rank, peer, addr = %conn.addr, %reason, "closing a connection");
            if let Some(s) = shut {
                let _ = s.shutdown(Shutdown::Both);
            }
            self.unroute(&conn);
            self.peer_closed(peer, &conn.addr, reason);
        }
        conn
    }

    /// Takes `conn` out of the routes and the open connections; senders
    /// bounce what they send to it from now on.
    fn unroute(&self, conn: &Conn) {
        *conn.closed.lock() = true;
        self.all.lock().remove(&conn.id);
        let mut routes = self.routes.lock();
        if routes.get(&conn.peer).is_some_and(|c| c.id == conn.id) {
            routes.remove(&conn.peer);
        }
    }

    /// The writer thread: dials if needed, starts the reader, then writes
    /// what is queued until the connection closes. Its clean-up runs
    /// whatever happens, a panic included.
    fn writer(self: Arc<Self>, conn: Arc<Conn>, link: Option<(TcpStream, FrameKeys)>, rx: Receiver<Out>) {
        let (stream, FrameKeys { mut send, recv }) = match link {
            Some(link) => link,
            None => match connect(&conn.addr, &self.opts, |_| Ok(Intro::Peer { rank: self.rank })) {
                Ok((s, _, keys)) => (s, keys),
                Err(e) => {
                    let e = crate::error::report(&e);
                    tracing::warn!(rank = self.rank, peer = conn.peer, error = %e, "cannot reach a peer");
                    return self.retire_conn(&conn, &rx, e);
                }
            },
        };
        let setup = stream
            .set_read_timeout(Some(self.opts.dead_after))
            .and_then(|_| stream.set_write_timeout(Some(self.opts.dead_after)))
            .and_then(|_| stream.try_clone());
        let read_half = match setup {
            Ok(r) => r,
            Err(e) => {
                let _ = stream.shutdown(Shutdown::Both);
                self.retire_conn(&conn, &rx, e.to_string());
                return self.peer_closed(conn.peer, &conn.addr, e.to_string());
            }
        };
        let spawned = {
            let s = Arc::clone(&self);
            let c = Arc::clone(&conn);
            std::thread::Builder::new()
                .name(format!("tessera-tcp-r{}-{}", self.rank, conn.peer))
                .spawn(move || s.reader(c, read_half, recv))
        };
        if let Err(e) = spawned {
            let reason = format!("no thread for the connection's reader: {e}");
            tracing::error!(rank = self.rank, peer = conn.peer, addr = %conn.addr, %reason, "closing a connection");
            let _ = stream.shutdown(Shutdown::Both);
            self.retire_conn(&conn, &rx, reason.clone());
            return self.peer_closed(conn.peer, &conn.addr, reason);
        }
        let mut out = BufWriter::with_capacity(256 << 10, stream);
        let reason = match catch_unwind(AssertUnwindSafe(|| self.write_loop(&conn, &mut out, &mut send, &rx))) {
            Ok(reason) => reason,
            Err(panic) => {
                let reason = format!("the connection's writer panicked: {}", crate::panic::message(&*panic));
                tracing::error!(rank = self.rank, peer = conn.peer, addr = %conn.addr, %reason, "closing a connection");
                reason
            }
        };
        // The reader sees the shut socket and declares the peer lost.
        let _ = out.get_ref().shutdown(Shutdown::Both);
        self.retire_conn(&conn, &rx, reason);
    }

    /// Packs what is queued into frames until the connection closes or
    /// fails; returns why it stopped.
    fn write_loop(
        self: &Arc<Self>,
        conn: &Conn,
        out: &mut BufWriter<TcpStream>,
        mac: &mut FrameMac,
        rx: &Receiver<Out>,
    ) -> String {
        let mut batch: Vec<(Role, Msg)> = Vec::new();
        let mut flushes: Vec<Sender<()>> = Vec::new();
        loop {
            let first = match rx.recv_timeout(self.opts.keepalive) {
                Ok(item) => item,
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = write_keepalive(out, mac).and_then(|_| out.flush()) {
                        return describe(&e, self.opts.dead_after);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return "closed by this process".into(),
            };
            let mut closing = false;
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    Out::Msg(role, msg) => batch.push((role, msg)),
                    Out::Flush(ack) => flushes.push(ack),
                    Out::Close => closing = true,
                }
                if !closing && batch.len() < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            // Blocks go over UCX when both ends have it.
            let plane = self.plane.as_deref().filter(|_| self.ucx_book.lock().contains_key(&conn.peer));
            let written = write_batch(out, &mut batch, plane.map(|p| (p, conn.peer)), mac).and_then(|unsent| {
                out.flush()?;
                Ok(unsent)
            });
            match written {
                Ok(unsent) => {
                    for (role, msg, error) in unsent {
                        self.unsendable(Endpoint { rank: conn.peer, role }, msg, error);
                    }
                }
                Err(e) => return describe(&e, self.opts.dead_after),
            }
            batch.clear();
            for ack in flushes.drain(..) {
                let _ = ack.send(());
            }
            if closing {
                return "closed by this process".into();
            }
        }
    }

    /// A message that cannot be encoded within the frame limit: its local
    /// sender is answered with the error where it waits for an answer (a
    /// client's request, a task sent to a worker), and it is logged.
    fn unsendable(self: &Arc<Self>, to: Endpoint, msg: Msg, error: CodecError) {
        tracing::error!(rank = self.rank, %to, %error, "a message too large to send was not sent");
        match msg {
            Msg::Request { id, from, req } => {
                let what = match &req {
                    WireRequest::Submit { tasks, .. } => format!("a graph of {} tasks", tasks.len()),
                    WireRequest::Wait { ids } => format!("a wait for {} results", ids.len()),
                    WireRequest::Retire { ranks } => format!("retiring {} workers", ranks.len()),
                    _ => return,
                };
                let e = || Error::Unsendable { what: what.clone(), source: error.clone() };
                let reply = match req {
                    WireRequest::Submit { .. } => WireReply::Submit(Err(e())),
                    WireRequest::Wait { .. } => WireReply::Wait(Err(e())),
                    _ => WireReply::Retire(Err(e())),
                };
                let _ = self.mailboxes.deliver(from, Msg::Reply { id, reply });
            }
            Msg::Run(tasks) if self.scheduler => {
                for t in tasks {
                    let error = format!("the task's message to worker rank {} cannot be sent: {error}", to.rank);
                    self.send(Endpoint::SCHEDULER, Msg::Failed { id: t.id, error, numerical: None });
                }
            }
            _ => {}
        }
    }

    /// The writer of `conn` has stopped: unroute it and bounce what is queued.
    fn retire_conn(self: &Arc<Self>, conn: &Arc<Conn>, rx: &Receiver<Out>, reason: String) {
        self.unroute(conn);
        tracing::debug!(rank = self.rank, peer = conn.peer, %reason, "connection closed");
        while let Ok(item) = rx.try_recv() {
            if let Out::Msg(role, msg) = item {
                self.bounce(Endpoint { rank: conn.peer, role }, msg);
            }
        }
    }

    /// The reader thread: reads and delivers until the connection ends,
    /// then declares the peer lost. Its clean-up runs whatever happens, a
    /// panic included. A peer that sent something refused is told why
    /// ([`Msg::Refused`]) before its connection closes.
    fn reader(self: Arc<Self>, conn: Arc<Conn>, stream: TcpStream, mut mac: FrameMac) {
        let peer = conn.peer;
        let mut input = BufReader::with_capacity(256 << 10, stream);
        let mut frame = Vec::new();
        let read = catch_unwind(AssertUnwindSafe(|| loop {
            if let Err(e) = self.read_frame(&mut input, &mut frame, &mut mac, &conn) {
                return e;
            }
        }));
        let reason = match read {
            Ok(Ended::Stream(reason)) => {
                let _ = input.get_ref().shutdown(Shutdown::Both);
                // The peer may have said why it closed the connection.
                match conn.refused.lock().take() {
                    Some(why) => format!("the peer refused what this process sent ({why})"),
                    None => reason,
                }
            }
            Ok(Ended::Refused(reason)) => {
                tracing::warn!(rank = self.rank, peer, addr = %conn.addr, %reason, "refused what a peer sent; closing its connection");
                // The writer says why, then closes the connection.
                let _ = input.get_ref().shutdown(Shutdown::Read);
                let _ = conn.tx.send(Out::Msg(Role::Worker, Msg::Refused { reason: reason.clone() }));
                let _ = conn.tx.send(Out::Close);
                reason
            }
            Err(panic) => {
                let reason = format!("the connection's reader panicked: {}", crate::panic::message(&*panic));
                tracing::error!(rank = self.rank, peer, addr = %conn.addr, %reason, "closing a connection");
                let _ = input.get_ref().shutdown(Shutdown::Both);
                reason
            }
        };
        // The writer notices the shut socket on its next write or keep-alive.
        self.unroute(&conn);
        self.peer_closed(peer, &conn.addr, reason);
    }

    /// Reads one frame and the payloads it announces, and delivers them.
    fn read_frame(
        self: &Arc<Self>,
        input: &mut BufReader<TcpStream>,
        frame: &mut Vec<u8>,
        mac: &mut FrameMac,
        conn: &Conn,
    ) -> std::result::Result<(), Ended> {
        let peer = conn.peer;
        let dead = self.opts.dead_after;
        let mut len_bytes = [0u8; 4];
        let mut tag = [0u8; TAG_LEN];
        input.read_exact(&mut len_bytes).map_err(|e| Ended::Stream(describe(&e, dead)))?;
        let len = u32::from_le_bytes(len_bytes);
        let forged = || Ended::Refused("a frame whose MAC does not verify (altered or injected on the way?)".into());
        if len == 0 {
            // A keep-alive.
            input.read_exact(&mut tag).map_err(|e| Ended::Stream(describe(&e, dead)))?;
            return if mac.check(&[&len_bytes], &tag) { Ok(()) } else { Err(forged()) };
        }
        if u64::from(len) > MAX_FRAME {
            return Err(Ended::Refused(format!("a frame of {len} bytes exceeds the limit of {MAX_FRAME}")));
        }
        if let Some(more) = (len as usize).checked_sub(frame.len()) {
            frame
                .try_reserve_exact(more)
                .map_err(|_| Ended::Refused(format!("cannot allocate {len} bytes for a frame the peer announced")))?;
        }
        frame.resize(len as usize, 0);
        input.read_exact(frame).map_err(|e| Ended::Stream(describe(&e, dead)))?;
        input.read_exact(&mut tag).map_err(|e| Ended::Stream(describe(&e, dead)))?;
        if !mac.check(&[&len_bytes, frame], &tag) {
            return Err(forged());
        }
        let msgs = decode_frame(frame).map_err(|e| Ended::Refused(format!("a malformed frame of {len} bytes: {e}")))?;
        // Who may send what: judged on the whole frame before any of it is handled.
        for (_, msg) in &msgs {
            policy::check(conn.kind, peer, msg).map_err(Ended::Refused)?;
        }
        #[cfg(test)]
        if msgs.iter().any(|(_, m)| matches!(m, Msg::Log { line, .. } if line == PANIC_IN_READER)) {
            panic!("a reader panics, as a test asked");
        }
        for (role, mut msg) in msgs {
            if let Msg::Block { id, payload: Payload::PlaneIncoming(header) } = msg {
                let Some(plane) = &self.plane else {
                    return Err(Ended::Refused(
                        "the peer sent a block over UCX, but this process has no UCX plane".into(),
                    ));
                };
                let to = Endpoint { rank: self.rank, role };
                // Answered as far as this connection goes: the plane delivers
                // the block, or `Missing` if the peer is lost first.
                self.settle(peer, id, to);
                plane.expect_block(peer, to, id, header);
                continue;
            }
            if let Msg::Block { payload: payload @ Payload::Incoming(_), .. } = &mut msg {
                let header = payload.header();
                // Checked and reserved (not committed) before any byte is
                // read; memory is committed piece by piece as bytes arrive.
                let mut buffer = Block::receive_reserved(&header).map_err(|e| Ended::Refused(e.to_string()))?;
                if buffer.is_empty() {
                    let len = header.len();
                    let per_piece = (READ_PIECE / header.dtype.size()).max(1);
                    while buffer.len() < len {
                        let piece = buffer.grow_zeroed((len - buffer.len()).min(per_piece));
                        input.read_exact(piece).map_err(|e| Ended::Stream(describe(&e, dead)))?;
                    }
                } else {
                    input.read_exact(buffer.as_bytes_mut()).map_err(|e| Ended::Stream(describe(&e, dead)))?;
                }
                *payload = Payload::Ready(Block::from_parts(header, buffer));
            }
            self.receive(conn, role, msg);
        }
        Ok(())
    }

    /// Handles one message from `conn`'s peer for the local endpoint of `role`.
    fn receive(self: &Arc<Self>, conn: &Conn, role: Role, msg: Msg) {
        let peer = conn.peer;
        let to = Endpoint { rank: self.rank, role };
        let msg = match msg {
            Msg::Refused { reason } => {
                tracing::error!(rank = self.rank, peer, addr = %conn.addr, %reason, "the peer refused what this process sent");
                *conn.refused.lock() = Some(reason);
                return;
            }
            Msg::Peers { add, remove, ucx } => {
                self.book.lock().extend(add);
                self.learn_ucx(ucx);
                for r in remove {
                    self.book.lock().remove(&r);
                    self.ucx_book.lock().remove(&r);
                    if let Some(plane) = &self.plane {
                        plane.peer_lost(r, "it left the cluster".into());
                    }
                    self.gone.lock().insert(r);
                    self.routes.lock().remove(&r);
                    self.bounce_owed(r);
                }
                return;
            }
            // The sender's rank is the connection's, whatever it claims.
            Msg::Request { id, req, .. } => Msg::Request { id, from: Endpoint { rank: peer, role: Role::Client }, req },
            Msg::Block { id, payload } => {
                self.settle(peer, id, to);
                Msg::Block { id, payload }
            }
            Msg::Missing { id, rank } => {
                self.settle(peer, id, to);
                Msg::Missing { id, rank }
            }
            Msg::Shutdown { failed, reason } => {
                self.stopping.store(true, Ordering::SeqCst);
                Msg::Shutdown { failed, reason }
            }
            other => other,
        };
        match self.mailboxes.deliver(to, msg) {
            Delivery::Delivered => {}
            Delivery::Reply(to, reply) => self.send(to, reply),
            Delivery::Unknown(msg) => {
                tracing::warn!(%to, peer, ?msg, "message for an endpoint this process does not have")
            }
        }
    }

    /// The connection from `peer` ended (cleanly or not).
    fn peer_closed(self: &Arc<Self>, peer: u32, addr: &str, reason: String) {
        self.bounce_owed(peer);
        // Only the connection may have closed: a plane learns that a peer is
        // gone from the scheduler's `Peers { remove }`.
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        if self.scheduler {
            // Every connection here is a member's own: the member is gone.
            let known = self.book.lock().remove(&peer).is_some();
            self.ucx_book.lock().remove(&peer);
            self.gone.lock().insert(peer);
            if known {
                let conns: Vec<Arc<Conn>> = self.routes.lock().values().cloned().collect();
                for c in conns {
                    let peers = Msg::Peers { add: Vec::new(), remove: vec![peer], ucx: Vec::new() };
                    let _ = c.tx.send(Out::Msg(Role::Worker, peers));
                }
            }
            tracing::debug!(peer, %addr, %reason, "a member's connection ended");
            self.send(Endpoint::SCHEDULER, Msg::PeerLost { rank: peer, reason });
        } else if peer == 0 && !self.stopping.load(Ordering::SeqCst) {
            let reason = format!("lost the connection to the scheduler at {addr}: {reason}");
            tracing::error!(rank = self.rank, "{reason}");
            if let Some(r) = self.mailboxes.replies() {
                r.close(reason.clone());
            }
            let me = Endpoint::worker(self.rank);
            if self.mailboxes.contains(me) {
                let _ = self.mailboxes.deliver(me, Msg::Shutdown { failed: true, reason });
            }
        }
    }

    /// Accepts connections and hands each to a handshake thread of its own,
    /// at most [`MAX_HANDSHAKES`] at once.
    fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        for stream in listener.incoming() {
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            if self.handshakes.fetch_add(1, Ordering::SeqCst) >= MAX_HANDSHAKES {
                self.handshakes.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(%peer, limit = MAX_HANDSHAKES, "refused a connection: too many connections in their handshake");
                let _ = stream.shutdown(Shutdown::Both);
                continue;
            }
            let deadline = Instant::now() + self.opts.handshake_timeout;
            let s = Arc::clone(&self);
            let spawned = std::thread::Builder::new().name(format!("tessera-tcp-hs{}", self.rank)).spawn(move || {
                let admitted = catch_unwind(AssertUnwindSafe(|| Arc::clone(&s).admit(stream, deadline)));
                s.handshakes.fetch_sub(1, Ordering::SeqCst);
                if let Err(panic) = admitted {
                    let reason = crate::panic::message(&*panic);
                    tracing::error!(%peer, %reason, "admitting a connection panicked; it is closed");
                }
            });
            if let Err(e) = spawned {
                self.handshakes.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(error = %e, "no thread for a handshake; connection dropped");
            }
        }
    }

    /// Authenticates an incoming connection and admits its process.
    /// Where every worker listens, and the UCX addresses of those with one.
    #[allow(clippy::type_complexity)]
    fn address_book(&self) -> (Vec<(u32, String)>, Vec<(u32, Vec<u8>)>) {
        let peers = self.book.lock().iter().map(|(r, a)| (*r, a.clone())).collect();
        let ucx = self.ucx_book.lock().iter().map(|(r, a)| (*r, a.clone())).collect();
        (peers, ucx)
    }

    /// Authenticates an incoming connection (the whole handshake by
    /// `deadline`) and admits its process.
    fn admit(self: Arc<Self>, stream: TcpStream, deadline: Instant) {
        let Ok(addr) = stream.peer_addr() else { return };
        let Some((intro, mut keys)) = accept_handshake(&stream, addr, &self.opts, deadline) else {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        };
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut timed = Timed { stream: &stream, deadline };
        let _joining = self.joining.lock();
        let (peer, kind, welcome) = match intro {
            Intro::Worker { listen, ucx } if self.scheduler => {
                let rank = self.next_rank.fetch_add(1, Ordering::SeqCst);
                let (peers, ucx_peers) = self.address_book();
                // Everyone learns where the new worker listens before it can
                // say hello, so no task naming it reaches a peer first.
                let conns: Vec<Arc<Conn>> = self.routes.lock().values().cloned().collect();
                for c in conns {
                    let add = vec![(rank, listen.clone())];
                    let ucx = ucx.iter().map(|a| (rank, a.clone())).collect();
                    let _ = c.tx.send(Out::Msg(Role::Worker, Msg::Peers { add, remove: Vec::new(), ucx }));
                }
                self.book.lock().insert(rank, listen.clone());
                if let Some(a) = ucx.clone() {
                    self.ucx_book.lock().insert(rank, a);
                }
                tracing::info!(rank, peer = %addr, %listen, ucx = ucx.is_some(), "a worker joined");
                (rank, PeerKind::Worker, Welcome::Joined { rank, peers, ucx: ucx_peers })
            }
            Intro::Client if self.scheduler => {
                let rank = self.next_rank.fetch_add(1, Ordering::SeqCst);
                let (peers, ucx) = self.address_book();
                tracing::info!(rank, peer = %addr, "a client connected");
                (rank, PeerKind::Client, Welcome::Joined { rank, peers, ucx })
            }
            // The scheduler is rank 0, and reached only on the connection
            // this process opened to it.
            Intro::Peer { rank } if !self.scheduler && rank != 0 && rank != self.rank => {
                (rank, PeerKind::Member, Welcome::Joined { rank: self.rank, peers: Vec::new(), ucx: Vec::new() })
            }
            other => {
                let reason = format!("{other:?} is not something this process accepts");
                tracing::warn!(peer = %addr, %reason, "refused a connection");
                let _ = write_small_frame(&mut timed, &Welcome::Refused { reason }, &mut keys.send);
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        };
        if let Err(e) = write_small_frame(&mut timed, &welcome, &mut keys.send) {
            tracing::warn!(peer = %addr, error = %e, "handshake broke off");
            let _ = stream.shutdown(Shutdown::Both);
            if kind != PeerKind::Member {
                // Admitted already: the others heard of it, so it leaves as a lost member.
                drop(_joining);
                self.peer_closed(peer, &addr.to_string(), format!("handshake broke off: {e}"));
            }
            return;
        }
        let route = self.scheduler || !self.routes.lock().contains_key(&peer);
        self.start(peer, kind, addr.to_string(), Some((stream, keys)), route);
    }
}

/// Writes `batch` as one frame and the payloads it announces; with a plane
/// (and the peer's rank), large blocks go over the plane instead. A batch
/// whose frame would exceed [`MAX_FRAME`] goes one message per frame, and a
/// message too large alone is handed back with the error, unsent.
#[allow(clippy::type_complexity)]
fn write_batch(
    out: &mut BufWriter<TcpStream>,
    batch: &mut Vec<(Role, Msg)>,
    plane: Option<(&dyn DataPlane, u32)>,
    mac: &mut FrameMac,
) -> io::Result<Vec<(Role, Msg, CodecError)>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    if plane.is_some() {
        offload_blocks(batch);
    }
    let error = match encode_frame(batch) {
        Ok(frame) => {
            write_frame(out, &frame, batch, plane, mac)?;
            return Ok(Vec::new());
        }
        Err(e) => e,
    };
    if batch.len() == 1 {
        let (role, msg) = batch.pop().expect("one message");
        return Ok(vec![(role, msg, error)]);
    }
    let mut unsent = Vec::new();
    for (role, msg) in batch.drain(..) {
        let one = [(role, msg)];
        match encode_frame(&one) {
            Ok(frame) => write_frame(out, &frame, &one, plane, mac)?,
            Err(e) => {
                let [(role, msg)] = one;
                unsent.push((role, msg, e));
            }
        }
    }
    Ok(unsent)
}

/// Writes a keep-alive: an empty frame and its MAC.
fn write_keepalive(out: &mut impl Write, mac: &mut FrameMac) -> io::Result<()> {
    let len = 0u32.to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&mac.sign(&[&len]))
}

/// Writes an encoded `frame` of `msgs` and its MAC, then the payloads it announces.
fn write_frame(
    out: &mut BufWriter<TcpStream>,
    frame: &[u8],
    msgs: &[(Role, Msg)],
    plane: Option<(&dyn DataPlane, u32)>,
    mac: &mut FrameMac,
) -> io::Result<()> {
    let len = (frame.len() as u32).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(frame)?;
    out.write_all(&mac.sign(&[&len, frame]))?;
    for (_, msg) in msgs {
        if let (Msg::Block { id, payload: Payload::ViaPlane(block) }, Some((plane, peer))) = (msg, plane) {
            plane.send_block(peer, *id, block.clone());
            continue;
        }
        if let Msg::Block { payload: payload @ Payload::Ready(block), .. } = msg {
            if !payload.is_inline() {
                // Straight from the block's memory: a write this large
                // bypasses the BufWriter's buffer.
                out.write_all(block.as_bytes())?;
            }
        }
    }
    Ok(())
}

/// A `Log` line that makes the reader that receives it panic (tests only).
#[cfg(test)]
pub(crate) const PANIC_IN_READER: &str = "tessera test: the reader panics here";

/// `frame` as it goes on the wire after the handshake of `keys`: its
/// length, the frame, its MAC (what a test that plays a peer writes).
#[cfg(test)]
pub(crate) fn sealed(keys: &mut FrameKeys, frame: &[u8]) -> Vec<u8> {
    let len = (frame.len() as u32).to_le_bytes();
    let tag = keys.send.sign(&[&len, frame]);
    [&len[..], frame, &tag].concat()
}

/// Reads the frames a peer sends on `stream` (keep-alives skipped, MACs
/// checked with `keys`; none may come without keys) until it closes the
/// connection, at most `limit`; `None` if it stays open.
#[cfg(test)]
pub(crate) fn frames_until_closed(
    stream: &mut TcpStream,
    mut keys: Option<&mut FrameKeys>,
    limit: Duration,
) -> Option<Vec<Msg>> {
    let deadline = Instant::now() + limit;
    let mut msgs = Vec::new();
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        stream.set_read_timeout(Some(left)).ok()?;
        let mut len = [0u8; 4];
        match stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Some(msgs),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Some(msgs),
            Err(_) => return None,
        }
        let keys = keys.as_deref_mut().expect("a frame on a connection without a handshake");
        let mut frame = vec![0u8; u32::from_le_bytes(len) as usize];
        let mut tag = [0u8; TAG_LEN];
        stream.read_exact(&mut frame).ok()?;
        stream.read_exact(&mut tag).ok()?;
        assert!(keys.recv.check(&[&len, &frame], &tag), "every frame carries its MAC");
        if !frame.is_empty() {
            msgs.extend(decode_frame(&frame).expect("well-formed frames").into_iter().map(|(_, m)| m));
        }
    }
}

/// Why the peer said it refused what was sent, from [`frames_until_closed`].
#[cfg(test)]
pub(crate) fn refusal(msgs: &[Msg]) -> Option<&str> {
    msgs.iter().find_map(|m| match m {
        Msg::Refused { reason } => Some(reason.as_str()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Buffer;

    fn opts(key: u8) -> TcpOptions {
        let mut o = TcpOptions::new(Secret::from_bytes(&[key; 32]).unwrap());
        o.handshake_timeout = Duration::from_secs(2);
        o
    }

    /// A scheduler-side transport on 127.0.0.1 with a scheduler inbox.
    fn scheduler(key: u8) -> (Arc<TcpTransport>, Receiver<Msg>, String) {
        let mut mb = Mailboxes::new();
        let inbox = mb.open(Endpoint::SCHEDULER);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let t = TcpTransport::new(0, true, mb, opts(key), Some(listener), None).unwrap();
        let addr = t.local_addr().unwrap().to_string();
        (t, inbox, addr)
    }

    #[test]
    fn frames_and_blocks_cross_an_authenticated_connection() {
        let (sched, inbox, addr) = scheduler(7);
        let intro = |_| Ok(Intro::Worker { listen: "127.0.0.1:1".into(), ucx: None });
        let (stream, welcome, keys) = connect(&addr, &opts(7), intro).unwrap();
        let Welcome::Joined { rank, .. } = welcome else { panic!("{welcome:?}") };
        assert_eq!(rank, 1);
        let mut mb = Mailboxes::new();
        let _worker_inbox = mb.open(Endpoint::worker(rank));
        let worker = TcpTransport::new(rank, false, mb, opts(7), None, None).unwrap();
        worker.adopt(addr.clone(), stream, keys);
        let big = Block::new(vec![100_000], Buffer::F64((0..100_000).map(f64::from).collect()));
        worker.send(Endpoint::SCHEDULER, Msg::Heartbeat { rank });
        worker.send(Endpoint::SCHEDULER, Msg::Block { id: TaskId(3), payload: Payload::Ready(big.clone()) });
        match inbox.recv_timeout(Duration::from_secs(5)).unwrap() {
            Msg::Heartbeat { rank: 1 } => {}
            other => panic!("{other:?}"),
        }
        match inbox.recv_timeout(Duration::from_secs(5)).unwrap() {
            Msg::Block { id: TaskId(3), payload: Payload::Ready(b) } => assert_eq!(b.as_f64(), big.as_f64()),
            other => panic!("{other:?}"),
        }
        // The worker going away is reported to the scheduler.
        worker.close();
        drop(worker);
        match inbox.recv_timeout(Duration::from_secs(5)).unwrap() {
            Msg::PeerLost { rank: 1, .. } => {}
            other => panic!("{other:?}"),
        }
        sched.close();
    }

    /// Joins `addr` as a worker and writes `frame` on the authenticated
    /// connection, as a hostile member could.
    fn send_raw(addr: &str, frame: &[u8]) -> (TcpStream, FrameKeys) {
        let intro = |_| Ok(Intro::Worker { listen: "127.0.0.1:1".into(), ucx: None });
        let (mut stream, _, mut keys) = connect(addr, &opts(5), intro).unwrap();
        stream.write_all(&sealed(&mut keys, frame)).unwrap();
        (stream, keys)
    }

    #[test]
    fn hostile_block_headers_close_their_connection_and_nothing_else() {
        use crate::block::{BlockHeader, DType};
        let (sched, inbox, addr) = scheduler(5);
        let hostile = [vec![1usize << 40], vec![1 << 61], vec![1 << 32, 1 << 32]];
        let mut frames = Vec::new();
        for shape in &hostile {
            let header = BlockHeader { dtype: DType::F64, shape: shape.clone() };
            // Announced as a header with the bytes to follow, and inline with a few bytes.
            let msg = Msg::Block { id: TaskId(1), payload: Payload::Incoming(header.clone()) };
            frames.push(encode_frame(&[(Role::Scheduler, msg)]).unwrap());
            frames.push(crate::protocol::inline_block_frame(header, &[0; 16]));
        }
        for frame in &frames {
            let (mut stream, mut keys) = send_raw(&addr, frame);
            // The peer is told why, then the connection closes.
            let msgs = frames_until_closed(&mut stream, Some(&mut keys), Duration::from_secs(5))
                .expect("the connection is closed");
            let why = refusal(&msgs).expect("a refusal");
            assert!(why.contains("f64"), "{why}");
            match inbox.recv_timeout(Duration::from_secs(5)).unwrap() {
                Msg::PeerLost { reason, .. } => {
                    assert!(reason.contains("f64") && reason.contains('['), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
        // The scheduler still takes members, and their blocks (this one's
        // bytes follow the frame, read in pieces).
        let n = READ_PIECE / 8 * 2 + 3;
        let block = Block::new(vec![n], Buffer::F64((0..n).map(|i| i as f64).collect()));
        let msg = Msg::Block { id: TaskId(2), payload: Payload::Ready(block.clone()) };
        let (mut stream, _keys) = send_raw(&addr, &encode_frame(&[(Role::Scheduler, msg)]).unwrap());
        stream.write_all(block.as_bytes()).unwrap();
        let mut blocks = Vec::new();
        while blocks.is_empty() {
            match inbox.recv_timeout(Duration::from_secs(5)).unwrap() {
                Msg::Block { payload: Payload::Ready(b), .. } => blocks.push(b),
                Msg::PeerLost { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(blocks[0].as_f64(), block.as_f64());
        sched.close();
    }

    #[test]
    fn wrong_missing_and_foreign_greetings_are_refused() {
        let (sched, inbox, addr) = scheduler(1);
        let err = connect(&addr, &opts(2), |_| Ok(Intro::Client)).unwrap_err().to_string();
        assert!(err.contains("wrong secret") && err.contains(&addr), "{err}");
        let mut none = opts(1);
        none.secret = None;
        let err = connect(&addr, &none, |_| Ok(Intro::Client)).unwrap_err().to_string();
        assert!(err.contains("no secret presented"), "{err}");
        // A raw frame without a handshake is never decoded or delivered.
        let mut raw = TcpStream::connect(&addr).unwrap();
        let frame = encode_frame(&[(Role::Scheduler, Msg::Heartbeat { rank: 9 })]).unwrap();
        raw.write_all(&(frame.len() as u32).to_le_bytes()).unwrap();
        raw.write_all(&frame).unwrap();
        let mut buf = [0u8; 16];
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(raw.read(&mut buf), Ok(0) | Err(_)), "the connection is closed on it");
        assert!(inbox.recv_timeout(Duration::from_millis(300)).is_err(), "nothing reached the scheduler");
        // The right secret still gets in.
        assert!(connect(&addr, &opts(1), |_| Ok(Intro::Client)).is_ok());
        sched.close();
    }

    #[test]
    fn a_panicking_reader_still_declares_its_peer_lost() {
        let (sched, inbox, addr) = scheduler(4);
        let intro = |_| Ok(Intro::Worker { listen: "127.0.0.1:1".into(), ucx: None });
        let (stream, welcome, keys) = connect(&addr, &opts(4), intro).unwrap();
        let Welcome::Joined { rank, .. } = welcome else { panic!("{welcome:?}") };
        let mut mb = Mailboxes::new();
        let _inbox = mb.open(Endpoint::worker(rank));
        let worker = TcpTransport::new(rank, false, mb, opts(4), None, None).unwrap();
        worker.adopt(addr.clone(), stream, keys);
        worker.send(Endpoint::SCHEDULER, Msg::Log { rank, line: PANIC_IN_READER.into() });
        match inbox.recv_timeout(Duration::from_secs(5)).unwrap() {
            Msg::PeerLost { rank: r, reason } => {
                assert_eq!(r, rank);
                assert!(reason.contains("reader panicked"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // The scheduler side closed the connection: the worker hears of it.
        // And the scheduler still admits members.
        assert!(connect(&addr, &opts(4), |_| Ok(Intro::Client)).is_ok());
        worker.close();
        sched.close();
    }

    #[test]
    fn handshakes_are_capped_and_have_one_deadline() {
        let (sched, _inbox, addr) = scheduler(3);
        let started = Instant::now();
        // Connections that never greet fill every handshake slot ...
        let idle: Vec<TcpStream> = (0..MAX_HANDSHAKES).map(|_| TcpStream::connect(&addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        // ... so the next one is closed at once, long before the deadline.
        let mut extra = TcpStream::connect(&addr).unwrap();
        let before = Instant::now();
        let closed = frames_until_closed(&mut extra, None, Duration::from_secs(1));
        assert!(closed.is_some_and(|m| m.is_empty()), "an extra connection is closed without a word");
        assert!(before.elapsed() < Duration::from_secs(1));
        // A peer that trickles its greeting a byte at a time is cut off at
        // the deadline (2 s for the whole handshake), not a timeout per read.
        drop(idle);
        std::thread::sleep(Duration::from_millis(300));
        let mut slow = TcpStream::connect(&addr).unwrap();
        let t = Instant::now();
        let mut cut = None;
        for b in MAGIC.iter().chain(&[PROTOCOL_VERSION, 1]).chain(&[0u8; TAG_LEN]) {
            if slow.write_all(&[*b]).is_err() {
                cut = Some(t.elapsed());
                break;
            }
            let mut buf = [0u8; 1];
            slow.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
            if matches!(slow.read(&mut buf), Ok(0)) {
                cut = Some(t.elapsed());
                break;
            }
        }
        let cut = cut.expect("the trickling handshake was cut off");
        assert!(cut >= Duration::from_millis(1500) && cut < Duration::from_secs(4), "cut off after {cut:?}");
        // Once the slots are free again, members get in.
        assert!(connect(&addr, &opts(3), |_| Ok(Intro::Client)).is_ok());
        assert!(started.elapsed() < Duration::from_secs(20));
        sched.close();
    }
}

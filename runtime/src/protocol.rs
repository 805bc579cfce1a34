//! Messages between the scheduler, workers and the client, and their codec.
//!
//! Every message is addressed to an [`Endpoint`]: a rank and a role on that
//! rank. Control messages are small and serialised with the runtime's codec
//! ([`crate::codec`]: postcard, varint integers) behind a one-byte protocol
//! version; a decoder refuses frames longer than [`MAX_FRAME`], of another
//! version, or with bytes left over. Block payloads never go
//! through the codec: a [`Msg::Block`] carries a [`Payload`] whose header is
//! encoded with the control part and whose bytes a transport moves
//! separately (in-process: not at all, the `Arc` is handed over).
//!
//! Per computed task there are two messages: the scheduler's [`Msg::Run`]
//! (batched per worker) and the worker's [`Msg::Done`]. A missing input
//! costs a [`Msg::Fetch`] to the peer holding it and the [`Msg::Block`]
//! reply, worker to worker.
//!
//! Elastic clusters add membership ([`Msg::Drain`], [`Msg::Acquire`] for
//! hand-offs, [`Msg::Peers`] for addresses, [`Msg::InputLost`] when a holder
//! has gone) and remote clients ([`Msg::Request`], [`Msg::Reply`]).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

use crate::block::{Block, BlockHeader};
use crate::codec::{self, CodecError};
use crate::error::Result;
use crate::graph::{Key, Params, Task, TaskId};
use crate::observe::events::{EventLog, WorkerEvents};

/// Version of the wire format; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u8 = 7;

/// Largest control frame a rank accepts (block payloads are separate).
pub const MAX_FRAME: u64 = 256 << 20;

/// Which part of a rank a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Scheduler,
    Worker,
    Client,
}

/// Address of a message: a rank and a role on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub rank: u32,
    pub role: Role,
}

impl Endpoint {
    pub const SCHEDULER: Endpoint = Endpoint { rank: 0, role: Role::Scheduler };
    pub const CLIENT: Endpoint = Endpoint { rank: 0, role: Role::Client };

    pub fn worker(rank: u32) -> Endpoint {
        Endpoint { rank, role: Role::Worker }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}@{}", self.role, self.rank)
    }
}

/// A task as the scheduler hands it to a worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunTask {
    pub id: TaskId,
    pub key: Key,
    pub kernel: u32,
    pub params: Params,
    pub inputs: Vec<InputLoc>,
}

/// Where one input of a task can be fetched from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InputLoc {
    pub id: TaskId,
    /// Ranks holding it (usually one: inline, no allocation).
    pub holders: SmallVec<[u32; 2]>,
    pub nbytes: u64,
}

/// A block in a message: the block itself in-process, or (after decoding)
/// the header of bytes that follow on the data channel.
#[derive(Debug)]
pub enum Payload {
    Ready(Block),
    /// Decoded: the bytes follow the frame on the control transport's own
    /// data channel (an MPI data tag, the TCP stream).
    Incoming(BlockHeader),
    /// To send: the bytes go over the data plane (UCX), only the header in
    /// the frame ([`crate::transport::DataPlane`]).
    ViaPlane(Block),
    /// Decoded: the bytes arrive over the data plane.
    PlaneIncoming(BlockHeader),
}

impl Payload {
    pub fn header(&self) -> BlockHeader {
        match self {
            Payload::Ready(b) | Payload::ViaPlane(b) => b.header(),
            Payload::Incoming(h) | Payload::PlaneIncoming(h) => h.clone(),
        }
    }
}

impl Payload {
    /// Whether the bytes travel inside the control frame (small blocks:
    /// one message instead of two) rather than as a message of their own.
    pub fn is_inline(&self) -> bool {
        match self {
            Payload::Ready(b) => b.nbytes() <= INLINE_MAX,
            Payload::Incoming(_) | Payload::ViaPlane(_) | Payload::PlaneIncoming(_) => false,
        }
    }
}

/// Marks the blocks of `msgs` too large to ride inside a frame to go over
/// the data plane ([`Payload::ViaPlane`]) rather than after the frame.
pub fn offload_blocks(msgs: &mut [(Role, Msg)]) {
    for (_, msg) in msgs {
        if let Msg::Block { payload, .. } = msg {
            if let Payload::Ready(block) = &*payload {
                if block.nbytes() > INLINE_MAX {
                    let block = block.clone();
                    *payload = Payload::ViaPlane(block);
                }
            }
        }
    }
}

/// Blocks up to this size travel inside the control frame.
pub const INLINE_MAX: usize = 4096;

/// How a payload is encoded in a frame.
#[derive(Serialize, Deserialize)]
enum WirePayload<'a> {
    /// The bytes follow on the data channel.
    Header(BlockHeader),
    /// The bytes are right here.
    Inline(BlockHeader, #[serde(borrow)] &'a [u8]),
    /// The bytes arrive over the data plane.
    Plane(BlockHeader),
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Ready(b) if self.is_inline() => WirePayload::Inline(b.header(), b.as_bytes()).serialize(s),
            Payload::ViaPlane(_) | Payload::PlaneIncoming(_) => WirePayload::Plane(self.header()).serialize(s),
            _ => WirePayload::Header(self.header()).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        match WirePayload::deserialize(d)? {
            WirePayload::Header(h) => Ok(Payload::Incoming(h)),
            WirePayload::Plane(h) => Ok(Payload::PlaneIncoming(h)),
            WirePayload::Inline(h, bytes) => {
                // The header must describe exactly the bytes that came with
                // it before anything is allocated for it.
                h.check_announced(bytes.len() as u64).map_err(codec::refuse)?;
                let mut buffer = Block::receive_buffer(&h).map_err(codec::refuse)?;
                buffer.as_bytes_mut().copy_from_slice(bytes);
                Ok(Payload::Ready(Block::from_parts(h, buffer)))
            }
        }
    }
}

/// Everything that travels between endpoints.
#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    /// Worker -> scheduler, once at start.
    /// `gpu`: the worker's device (`GPU 0 (NVIDIA H100 80GB HBM3)`), empty for CPU workers.
    Hello { rank: u32, threads: u32, host: String, name: String, registry: u64, kernels: u32, gpu: String },
    /// Scheduler -> worker: tasks to run, highest priority first.
    Run(Vec<RunTask>),
    /// Worker -> scheduler: a task finished in `micros` and its block is stored.
    Done { id: TaskId, nbytes: u64, micros: u64 },
    /// Worker -> scheduler: a task's kernel failed (error or panic); `numerical`: how, if it was a numerical failure.
    Failed { id: TaskId, error: String, numerical: Option<crate::error::NumericalError> },
    /// Worker -> scheduler: the worker now holds a copy of a block it fetched.
    Replica { id: TaskId, rank: u32 },
    /// Scheduler -> worker: forget these blocks.
    Release(Vec<TaskId>),
    /// Scheduler -> worker: drop these tasks if not started.
    Cancel(Vec<TaskId>),
    /// Anyone -> worker: send block `id` to `reply_to`.
    Fetch { id: TaskId, reply_to: Endpoint },
    /// Worker -> anyone: the block asked for.
    Block { id: TaskId, payload: Payload },
    /// Worker -> anyone: the block asked for is not here.
    Missing { id: TaskId, rank: u32 },
    /// Worker -> scheduler: still alive (sent every second).
    Heartbeat { rank: u32 },
    /// Worker -> scheduler: its blocks' bytes in memory and spilled to disk,
    /// and whether it paused for memory (sent when the pause changes, and
    /// at most once a second when the bytes do; see `crate::worker::memory`).
    Memory { rank: u32, memory: u64, spilled: u64, paused: bool },
    /// Scheduler -> worker: stop. `failed` when the driver failed.
    Shutdown { failed: bool, reason: String },
    /// Worker -> scheduler: the worker has stopped and will send nothing more.
    Bye { rank: u32 },
    /// Worker -> scheduler: retire me (my lifetime is ending, or I was sent
    /// SIGTERM). The scheduler stops sending tasks, has the blocks only this
    /// worker holds copied elsewhere, then sends `Shutdown`.
    Drain { rank: u32 },
    /// Scheduler -> worker: fetch copies of these blocks (a draining peer
    /// hands them off); each arrival is reported with `Replica`.
    Acquire(Vec<InputLoc>),
    /// Worker -> scheduler: task `id` could not get `input` from `rank`
    /// (the peer has left or no longer holds it); the task is placed again.
    InputLost { id: TaskId, input: TaskId, rank: u32 },
    /// Remote client -> scheduler: a request; `from` is set by the
    /// receiving transport to the connection's authenticated rank.
    Request { id: u64, from: Endpoint, req: WireRequest },
    /// Scheduler -> remote client: the answer to request `id`.
    Reply { id: u64, reply: WireReply },
    /// Scheduler -> worker: send what you recorded ([`crate::observe::events`]),
    /// emptying the buffers when `clear`; answered with `Events`.
    CollectEvents { req: u64, clear: bool },
    /// Worker -> scheduler: the answer to `CollectEvents` `req`.
    Events { req: u64, events: Box<WorkerEvents> },
    /// Worker -> scheduler: the first error logged on a worker rank (the
    /// driver shows it with the rank; see [`crate::observe::log`]).
    Log { rank: u32, line: String },
    /// Scheduler -> every member of an elastic cluster: where ranks listen
    /// (workers that joined), their UCX addresses (workers started with
    /// `--transport ucx`) and which have left. Handled by the transport.
    Peers { add: Vec<(u32, String)>, remove: Vec<u32>, ucx: Vec<(u32, Vec<u8>)> },
    /// Any process -> the peer of a connection, handled by the transport:
    /// what the peer sent was refused (a frame over [`MAX_FRAME`], a
    /// malformed frame, a message it may not send) and the connection
    /// closes after this message. Logged on both ends.
    Refused { reason: String },
    /// Client -> scheduler, in-process only (never on the wire).
    #[serde(skip)]
    Client(ClientRequest),
    /// Transport -> scheduler, in-process only: the connection to `rank`
    /// broke without a `Bye` (process killed, host gone, network cut).
    #[serde(skip)]
    PeerLost { rank: u32, reason: String },
}

/// A worker as the scheduler knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub rank: u32,
    pub threads: u32,
    pub host: String,
    /// What the worker calls itself: for elastic workers its batch job's id
    /// by default (`SLURM_JOB_ID`, `PBS_JOBID`, `JOB_ID`), so a job queue
    /// can tell which job holds which rank; empty otherwise.
    pub name: String,
    /// The GPU a GPU worker runs its GPU kernels on (`GPU 0 (NVIDIA H200)`);
    /// empty for CPU workers.
    pub gpu: String,
}

/// What the scheduler tracks at one moment (see [`crate::Client::state`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Tasks the scheduler knows: waiting, queued, running or computed.
    pub tasks: usize,
    /// Computed blocks still held on workers.
    pub in_memory: usize,
    /// Bytes of those blocks (one copy each).
    pub bytes: u64,
    /// Most bytes held at once since the cluster started (one copy each).
    pub peak_bytes: u64,
    /// Tasks whose inputs are not all computed yet.
    pub waiting: usize,
    /// Ready tasks waiting in the scheduler's queues.
    pub queued: usize,
    /// Tasks sent to each worker and not yet reported, by worker rank.
    pub in_flight: Vec<(u32, u32)>,
    /// Tasks completed since the cluster started (what progress bars count).
    pub completed: u64,
    /// Of the tasks the scheduler knows, computed ones whose blocks were
    /// released, kept to recompute lost blocks from (their lineage).
    pub released: usize,
    /// Workers that left without notice since the cluster started.
    pub workers_lost: u64,
    /// Task runs repeated because of them (lost blocks and their released
    /// lineage computed again, tasks that were running there run again).
    pub recomputed: u64,
    /// Bytes copied between workers since the cluster started.
    pub moved_bytes: u64,
    /// Bytes of blocks the workers spilled to disk (as they last reported).
    pub spilled_bytes: u64,
    /// Workers paused because their memory is short, by rank.
    pub paused: Vec<u32>,
    /// The first error each worker rank reported ([`crate::observe::log`]), by rank.
    pub errors: Vec<(u32, String)>,
}

impl ClusterState {
    /// Tasks not computed yet: waiting for inputs, queued, or sent to a
    /// worker. What a job queue's `adapt` sizes the cluster by.
    pub fn backlog(&self) -> usize {
        self.waiting + self.queued + self.in_flight.iter().map(|&(_, n)| n as usize).sum::<usize>()
    }
}

/// Where the scheduler's answer to a request goes: a channel of an
/// in-process client, or a message back to a remote one.
pub struct Reply<T>(Box<dyn FnOnce(T) + Send>);

impl<T> Reply<T> {
    pub fn new(f: impl FnOnce(T) + Send + 'static) -> Reply<T> {
        Reply(Box::new(f))
    }

    pub fn send(self, value: T) {
        (self.0)(value)
    }
}

impl<T> fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reply")
    }
}

/// A request from a client in the scheduler's process.
#[derive(Debug)]
pub enum ClientRequest {
    /// The request a remote client would send, and where its answer goes
    /// (`None`: a release, which has no answer).
    Wire { req: WireRequest, reply: Option<Reply<WireReply>> },
    /// Stop the cluster.
    Shutdown { failed: bool, reason: String, reply: Reply<()> },
}

/// A client request as it travels (remote clients) or is built (all clients).
#[derive(Debug, Serialize, Deserialize)]
pub enum WireRequest {
    Submit {
        tasks: Vec<Task>,
        outputs: Vec<Key>,
    },
    Wait {
        ids: Vec<TaskId>,
    },
    /// No reply.
    Release {
        ids: Vec<TaskId>,
    },
    Workers,
    State,
    Retire {
        ranks: Vec<u32>,
    },
    Events {
        clear: bool,
    },
}

/// The scheduler's answer to a [`WireRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum WireReply {
    Submit(Result<Vec<TaskId>>),
    Wait(Result<Vec<Vec<u32>>>),
    Workers(Vec<WorkerInfo>),
    State(ClusterState),
    Retire(Result<Vec<u32>>),
    Events(EventLog),
}

/// Kernel parameters travel in `RunTask`s, encoded as [`crate::Task::param`] does.
pub use crate::graph::{decode_params, encode_params};

/// Encodes a batch of messages for one rank: version byte, then the codec.
pub fn encode_frame(msgs: &[(Role, Msg)]) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![PROTOCOL_VERSION];
    codec::encode_into(msgs, &mut out, u64::MAX)?;
    if out.len() as u64 > MAX_FRAME {
        return Err(CodecError::new(format!("a frame of {} bytes exceeds the limit of {MAX_FRAME}", out.len())));
    }
    Ok(out)
}

/// Decodes a frame made by [`encode_frame`], checking version and length.
pub fn decode_frame(bytes: &[u8]) -> Result<Vec<(Role, Msg)>, CodecError> {
    if bytes.len() as u64 > MAX_FRAME {
        return Err(CodecError::new(format!("a frame of {} bytes exceeds the limit of {MAX_FRAME}", bytes.len())));
    }
    match bytes.split_first() {
        Some((&PROTOCOL_VERSION, rest)) => codec::decode(rest, u64::MAX),
        Some((v, _)) => Err(CodecError::new(format!(
            "protocol version {v}, this build speaks {PROTOCOL_VERSION} (are all ranks the same binary?)"
        ))),
        None => Err(CodecError::new("empty frame")),
    }
}

/// A frame of one [`Msg::Block`] carrying `bytes` inline under `header`,
/// whatever they are: what a hostile peer could send (the encoder never
/// writes a header that disagrees with its bytes).
#[cfg(test)]
pub(crate) fn inline_block_frame(header: BlockHeader, bytes: &[u8]) -> Vec<u8> {
    let empty = BlockHeader { dtype: crate::DType::U8, shape: vec![] };
    let msg = Msg::Block { id: TaskId(1), payload: Payload::Incoming(empty.clone()) };
    let probe = encode_frame(&[(Role::Worker, msg)]).unwrap();
    // The message as encoded, with its payload cut off and the inline one put instead.
    let tail = codec::encode(&WirePayload::Header(empty), MAX_FRAME).unwrap();
    let mut frame = probe[..probe.len() - tail.len()].to_vec();
    frame.extend(codec::encode(&WirePayload::Inline(header, bytes), MAX_FRAME).unwrap());
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Buffer;
    use std::sync::Arc;

    #[test]
    fn frames_round_trip_and_blocks_travel_as_headers() {
        let block = Block::new(vec![2], Buffer::F64(vec![1.0, 2.0]));
        let big = Block::new(vec![1000], Buffer::F64(vec![0.5; 1000]));
        let msgs = vec![
            (
                Role::Worker,
                Msg::Run(vec![RunTask {
                    id: TaskId(7),
                    key: Key::new("x", [1, 2]),
                    kernel: 3,
                    params: Arc::from(encode_params(&2.5f64)),
                    inputs: vec![InputLoc { id: TaskId(5), holders: smallvec::smallvec![1, 2], nbytes: 16 }],
                }]),
            ),
            (Role::Client, Msg::Block { id: TaskId(7), payload: Payload::Ready(block) }),
            (Role::Worker, Msg::Block { id: TaskId(8), payload: Payload::Ready(big.clone()) }),
        ];
        let frame = encode_frame(&msgs).unwrap();
        let back = decode_frame(&frame).unwrap();
        match &back[0].1 {
            Msg::Run(tasks) => {
                assert_eq!(tasks[0].key, Key::new("x", [1, 2]));
                assert_eq!(decode_params::<f64>(&tasks[0].params).unwrap(), 2.5);
                assert_eq!(tasks[0].inputs[0].holders[..], [1, 2]);
            }
            other => panic!("decoded {other:?}"),
        }
        // Small blocks ride inside the frame; large ones announce their bytes.
        match &back[1].1 {
            Msg::Block { payload: Payload::Ready(b), .. } => assert_eq!(b.as_f64(), Some(&[1.0, 2.0][..])),
            other => panic!("decoded {other:?}"),
        }
        match &back[2].1 {
            Msg::Block { payload: Payload::Incoming(h), .. } => assert_eq!(h.nbytes(), 8000),
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn inline_blocks_whose_header_lies_are_refused_before_allocating() {
        use crate::DType;
        let bytes = [0u8; 16];
        let honest =
            decode_frame(&inline_block_frame(BlockHeader { dtype: DType::F64, shape: vec![2] }, &bytes)).unwrap();
        assert!(matches!(&honest[0].1, Msg::Block { payload: Payload::Ready(b), .. } if b.shape() == [2]));
        for (shape, says) in [
            (vec![1usize << 40], "over the limit"),
            (vec![1 << 61], "overflows"),
            (vec![1 << 32, 1 << 32], "overflows"),
            (vec![3], "needs 24 bytes, 16 were announced"),
        ] {
            let h = BlockHeader { dtype: DType::F64, shape: shape.clone() };
            let err = decode_frame(&inline_block_frame(h, &bytes)).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains("f64"), "{shape:?}: {err}");
        }
        // A zero-byte inline block is one only if its shape says so.
        let wraps = BlockHeader { dtype: DType::F64, shape: vec![1 << 32, 1 << 32] };
        assert!(decode_frame(&inline_block_frame(wraps, &[])).is_err());
    }

    #[test]
    fn foreign_versions_and_garbage_are_refused() {
        let mut frame = encode_frame(&[(Role::Scheduler, Msg::Heartbeat { rank: 1 })]).unwrap();
        frame[0] = 99;
        let err = decode_frame(&frame).unwrap_err().to_string();
        assert!(err.contains("protocol version 99"), "{err}");
        assert!(decode_frame(&[]).is_err());
        assert!(decode_frame(&[PROTOCOL_VERSION, 0xff, 0xff, 0xff]).is_err());
    }
}

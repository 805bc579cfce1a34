//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz): each takes
//! arbitrary bytes, runs one decoder that faces the network on them, and
//! panics only on a bug (a decoder that accepts what it then cannot encode,
//! a size check that lets an impossible block through). Hidden, not a
//! stable interface; `scripts/fuzz.sh SECONDS` runs them.
//!
//! | target | what a hostile peer controls |
//! |---|---|
//! | [`frame`](crate::fuzzing::frame) | a control frame after the handshake ([`crate::protocol::decode_frame`]), then who may send it (`transport/policy.rs`) |
//! | [`handshake`](crate::fuzzing::handshake) | everything either side of a handshake sends the other, and the intro and welcome frames |
//! | [`block_header`](crate::fuzzing::block_header) | a block header, its size check and the reservation it sizes |
//!
//! ```
//! tessera_runtime::fuzzing::frame(&[7, 1, 0, 10, 3]);
//! tessera_runtime::fuzzing::handshake(b"TESSERA");
//! tessera_runtime::fuzzing::block_header(&[9, 1, 200]);
//! ```

use std::io::{self, Read, Write};

use crate::block::{Block, BlockHeader, MAX_BLOCK};
use crate::codec;
use crate::protocol::{decode_frame, encode_frame, MAX_FRAME};
use crate::transport::policy::{self, PeerKind};
use crate::transport::secret::Secret;
use crate::transport::tcp;

/// Decodes `data` as a control frame; what decodes must encode again, and
/// encode the same once normalised (a large inline block becomes a header).
pub fn frame(data: &[u8]) {
    let Ok(msgs) = decode_frame(data) else { return };
    for (_, msg) in &msgs {
        for kind in [PeerKind::Scheduler, PeerKind::Worker, PeerKind::Client, PeerKind::Member] {
            let _ = policy::check(kind, 1, msg);
        }
    }
    let once = encode_frame(&msgs).expect("a decoded frame encodes again");
    assert!(once.len() as u64 <= MAX_FRAME);
    let again = encode_frame(&decode_frame(&once).expect("an encoded frame decodes")).expect("and encodes");
    assert_eq!(once, again, "encoding is stable after one round trip");
}

/// The first byte picks what `data` (the rest) plays: 0, everything a
/// connecting peer sends to an accepting one (greeting, MAC, intro); 1, an
/// intro frame and 2, a welcome frame, each arriving with a valid MAC so the
/// decoder behind the MAC is reached; 3, raw bytes where a handshake frame
/// (length, frame, MAC) is expected; 4, everything an accepting peer (a
/// "scheduler") answers to a connecting one.
pub fn handshake(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else { return };
    let secret = Secret::from_bytes(&[7; 32]).expect("a 32-byte secret");
    match mode % 5 {
        0 => tcp::fuzz_accept(data, &secret),
        1 => tcp::fuzz_small_frame(data, &secret, true, false),
        2 => tcp::fuzz_small_frame(data, &secret, false, false),
        3 => tcp::fuzz_small_frame(data, &secret, true, true),
        _ => tcp::fuzz_connect(data, &secret),
    }
}

/// Decodes `data` as a block header; its size is either refused or within
/// [`MAX_BLOCK`] and equal to the product of its shape and element size,
/// and a small one can be received into.
pub fn block_header(data: &[u8]) {
    let Ok(header) = codec::decode::<BlockHeader>(data, 1 << 16) else { return };
    let Ok(n) = header.checked_nbytes() else { return };
    assert!(n as u64 <= MAX_BLOCK);
    let product = header.shape.iter().try_fold(header.dtype.size(), |acc, &d| acc.checked_mul(d));
    assert_eq!(product, Some(n), "the size check agrees with the shape");
    assert!(header.check_announced(n as u64).is_ok());
    assert!(header.check_announced(n as u64 + 1).is_err());
    if n <= 1 << 20 {
        let buffer = Block::receive_buffer(&header).expect("a small block is received");
        assert_eq!(buffer.as_bytes().len(), n);
    }
}

/// A stream that reads a fuzzer's bytes and swallows what is written.
pub(crate) struct Scripted<'a> {
    pub(crate) input: &'a [u8],
}

impl Read for Scripted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Scripted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::block::{Buffer, DType};
    use crate::graph::{Key, Task, TaskId};
    use crate::observe::events::{EventLog, WorkerEvents};
    use crate::protocol::{
        ClusterState, Endpoint, InputLoc, Msg, Payload, Role, RunTask, WireReply, WireRequest, WorkerInfo,
    };

    /// xorshift64*: reproducible random fields.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// Small values, the extremes, and anything between.
        fn int(&mut self) -> u64 {
            match self.next() % 4 {
                0 => self.next() % 8,
                1 => u64::MAX - self.next() % 2,
                _ => self.next() >> (self.next() % 64),
            }
        }

        fn coin(&mut self) -> bool {
            self.next() & 1 == 0
        }

        fn u32(&mut self) -> u32 {
            self.int() as u32
        }

        fn len(&mut self, max: u64) -> usize {
            (self.next() % (max + 1)) as usize
        }

        fn text(&mut self) -> String {
            let n = self.len(12);
            (0..n).map(|_| ['a', 'Z', '0', ' ', 'é', '→', '\u{1F600}', '\0'][self.len(7)]).collect()
        }

        fn ids(&mut self) -> Vec<TaskId> {
            (0..self.len(5)).map(|_| TaskId(self.int())).collect()
        }

        fn key(&mut self) -> Key {
            let index: Vec<u32> = (0..self.len(3)).map(|_| self.u32()).collect();
            Key::new(self.text(), index)
        }

        fn endpoint(&mut self) -> Endpoint {
            let role = [Role::Scheduler, Role::Worker, Role::Client][self.len(2)];
            Endpoint { rank: self.u32(), role }
        }

        fn loc(&mut self) -> InputLoc {
            InputLoc {
                id: TaskId(self.int()),
                holders: (0..self.len(4)).map(|_| self.u32()).collect(),
                nbytes: self.int(),
            }
        }

        fn block(&mut self) -> Block {
            let n = self.len(16);
            match self.next() % 2 {
                0 => Block::new(vec![n], Buffer::F64((0..n).map(|i| i as f64 * 0.5 - 3.0).collect())),
                _ => Block::new(vec![n, 1], Buffer::F32((0..n).map(|i| -(i as f32)).collect())),
            }
        }
    }

    /// One message of every kind that travels, with random fields.
    fn every_message(r: &mut Rng) -> Vec<Msg> {
        let header = BlockHeader { dtype: [DType::F64, DType::F32, DType::U8][r.len(2)], shape: vec![r.len(99), 3] };
        let task = RunTask {
            id: TaskId(r.int()),
            key: r.key(),
            kernel: r.u32(),
            params: Arc::from(crate::graph::encode_params(&(r.text(), r.int()))),
            inputs: (0..r.len(3)).map(|_| r.loc()).collect(),
        };
        let graph = vec![Task::new(r.key(), r.text()).param(&r.int()).inputs([r.key()])];
        let requests = vec![
            WireRequest::Submit { tasks: graph, outputs: vec![r.key()] },
            WireRequest::Wait { ids: r.ids() },
            WireRequest::Release { ids: r.ids() },
            WireRequest::Workers,
            WireRequest::State,
            WireRequest::Retire { ranks: vec![r.u32()] },
            WireRequest::Events { clear: r.coin() },
        ];
        let info = WorkerInfo { rank: r.u32(), threads: r.u32(), host: r.text(), name: r.text(), gpu: r.text() };
        let replies = vec![
            WireReply::Submit(Ok(r.ids())),
            WireReply::Submit(Err(crate::Error::DuplicateKey { key: r.key() })),
            WireReply::Wait(Ok(vec![vec![r.u32()], vec![]])),
            WireReply::Wait(Err(crate::Error::WorkerLost { rank: r.u32(), reason: r.text() })),
            WireReply::Workers(vec![info]),
            WireReply::State(ClusterState {
                tasks: r.len(1000),
                errors: vec![(r.u32(), r.text())],
                ..Default::default()
            }),
            WireReply::Retire(Ok(vec![r.u32()])),
            WireReply::Events(EventLog::default()),
        ];
        let mut msgs = vec![
            Msg::Hello {
                rank: r.u32(),
                threads: r.u32(),
                host: r.text(),
                name: r.text(),
                registry: r.int(),
                kernels: r.u32(),
                gpu: r.text(),
            },
            Msg::Run(vec![task]),
            Msg::Done { id: TaskId(r.int()), nbytes: r.int(), micros: r.int() },
            Msg::Failed { id: TaskId(r.int()), error: r.text(), numerical: None },
            Msg::Replica { id: TaskId(r.int()), rank: r.u32() },
            Msg::Release(r.ids()),
            Msg::Cancel(r.ids()),
            Msg::Fetch { id: TaskId(r.int()), reply_to: r.endpoint() },
            Msg::Block { id: TaskId(r.int()), payload: Payload::Ready(r.block()) },
            Msg::Block { id: TaskId(r.int()), payload: Payload::Incoming(header.clone()) },
            Msg::Block { id: TaskId(r.int()), payload: Payload::PlaneIncoming(header) },
            Msg::Missing { id: TaskId(r.int()), rank: r.u32() },
            Msg::Heartbeat { rank: r.u32() },
            Msg::Memory { rank: r.u32(), memory: r.int(), spilled: r.int(), paused: r.coin() },
            Msg::Shutdown { failed: r.coin(), reason: r.text() },
            Msg::Bye { rank: r.u32() },
            Msg::Drain { rank: r.u32() },
            Msg::Acquire((0..r.len(3)).map(|_| r.loc()).collect()),
            Msg::InputLost { id: TaskId(r.int()), input: TaskId(r.int()), rank: r.u32() },
            Msg::CollectEvents { req: r.int(), clear: r.coin() },
            Msg::Events { req: r.int(), events: Box::new(WorkerEvents { rank: r.u32(), ..Default::default() }) },
            Msg::Log { rank: r.u32(), line: r.text() },
            Msg::Peers {
                add: vec![(r.u32(), r.text())],
                remove: vec![r.u32()],
                ucx: vec![(r.u32(), r.text().into_bytes())],
            },
            Msg::Refused { reason: r.text() },
        ];
        msgs.extend(requests.into_iter().map(|req| Msg::Request { id: r.int(), from: r.endpoint(), req }));
        msgs.extend(replies.into_iter().map(|reply| Msg::Reply { id: r.int(), reply }));
        msgs
    }

    /// Which kind of message `msg` is; exhaustive, so a new kind of message
    /// does not compile until [`every_message`] makes one.
    fn kind(msg: &Msg) -> usize {
        match msg {
            Msg::Hello { .. } => 0,
            Msg::Run(_) => 1,
            Msg::Done { .. } => 2,
            Msg::Failed { .. } => 3,
            Msg::Replica { .. } => 4,
            Msg::Release(_) => 5,
            Msg::Cancel(_) => 6,
            Msg::Fetch { .. } => 7,
            Msg::Block { .. } => 8,
            Msg::Missing { .. } => 9,
            Msg::Heartbeat { .. } => 10,
            Msg::Shutdown { .. } => 11,
            Msg::Bye { .. } => 12,
            Msg::Drain { .. } => 13,
            Msg::Acquire(_) => 14,
            Msg::InputLost { .. } => 15,
            Msg::Request { .. } => 16,
            Msg::Reply { .. } => 17,
            Msg::CollectEvents { .. } => 18,
            Msg::Events { .. } => 19,
            Msg::Log { .. } => 20,
            Msg::Peers { .. } => 21,
            Msg::Refused { .. } => 22,
            Msg::Memory { .. } => 23,
            // In-process only: never encoded.
            Msg::Client(_) | Msg::PeerLost { .. } => usize::MAX,
        }
    }

    /// Every kind of message, with 300 random draws of its fields, decodes
    /// to what was encoded (compared field by field through `Debug`, and
    /// block bytes exactly), alone and in one frame with all the others.
    #[test]
    fn every_message_round_trips() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for draw in 0..300 {
            let msgs = every_message(&mut r);
            let mut kinds: Vec<usize> = msgs.iter().map(kind).collect();
            kinds.sort_unstable();
            kinds.dedup();
            assert_eq!(kinds, (0..=23).collect::<Vec<_>>(), "every kind");
            let framed: Vec<(Role, Msg)> = msgs.into_iter().map(|m| (Role::Worker, m)).collect();
            let bytes = encode_frame(&framed).unwrap();
            let back = decode_frame(&bytes).unwrap();
            assert_eq!(back.len(), framed.len());
            for ((_, sent), (role, got)) in framed.iter().zip(&back) {
                assert_eq!(*role, Role::Worker);
                assert_eq!(format!("{sent:?}"), format!("{got:?}"), "draw {draw}");
                if let (Msg::Block { payload: Payload::Ready(a), .. }, Msg::Block { payload: Payload::Ready(b), .. }) =
                    (sent, got)
                {
                    assert_eq!(a.as_bytes(), b.as_bytes());
                }
                let alone = encode_frame(&[(Role::Client, clone_msg(sent))]).unwrap();
                assert_eq!(format!("{:?}", decode_frame(&alone).unwrap()[0].1), format!("{sent:?}"));
            }
        }
    }

    /// A copy of a message, through the codec (messages are not `Clone`).
    fn clone_msg(msg: &Msg) -> Msg {
        codec::decode(&codec::encode(msg, MAX_FRAME).unwrap(), MAX_FRAME).unwrap()
    }

    /// The seed corpus of the fuzz targets (`fuzz/corpus/TARGET/seed-*`):
    /// frames of every kind of message, handshakes and block headers. Each
    /// seed reaches its decoder's success path; `TESSERA_FUZZ_SEEDS=DIR`
    /// writes them to DIR.
    #[test]
    fn fuzz_seeds_reach_their_decoders() {
        let mut seeds: Vec<(&str, String, Vec<u8>)> = Vec::new();
        let mut r = Rng(7);
        for (i, msg) in every_message(&mut r).into_iter().enumerate() {
            let frame = encode_frame(&[(Role::Scheduler, msg)]).unwrap();
            assert!(decode_frame(&frame).is_ok());
            seeds.push(("frame", format!("seed-{i:02}"), frame));
        }
        for (i, shape) in [vec![], vec![4], vec![3, 5], vec![1 << 20, 1 << 20], vec![0, 7]].into_iter().enumerate() {
            let header = BlockHeader { dtype: DType::F64, shape };
            let bytes = codec::encode(&header, 1 << 16).unwrap();
            assert_eq!(codec::decode::<BlockHeader>(&bytes, 1 << 16).unwrap(), header);
            seeds.push(("block_header", format!("seed-{i:02}"), bytes));
        }
        let mut greeting = b"TESSERA".to_vec();
        greeting.extend([crate::protocol::PROTOCOL_VERSION, 1]);
        greeting.extend([0u8; 32 + 32]);
        seeds.push(("handshake", "seed-00".into(), [&[0u8][..], &greeting].concat()));
        let intros: [&dyn Fn() -> Vec<u8>; 3] = [
            &|| codec::encode(&tcp::Intro::Client, 1 << 20).unwrap(),
            &|| codec::encode(&tcp::Intro::Peer { rank: 3 }, 1 << 20).unwrap(),
            &|| {
                codec::encode(&tcp::Intro::Worker { listen: "10.0.0.1:4000".into(), ucx: Some(vec![1, 2]) }, 1 << 20)
                    .unwrap()
            },
        ];
        for (i, intro) in intros.iter().enumerate() {
            seeds.push(("handshake", format!("seed-1{i}"), [&[1u8][..], &intro()].concat()));
        }
        let welcome = tcp::Welcome::Joined { rank: 2, peers: vec![(1, "10.0.0.1:4000".into())], ucx: vec![] };
        seeds.push(("handshake", "seed-20".into(), [&[2u8][..], &codec::encode(&welcome, 1 << 20).unwrap()].concat()));
        let mut answer = b"TESSERA".to_vec();
        answer.extend([crate::protocol::PROTOCOL_VERSION, 0]);
        answer.extend([5u8; 32]);
        answer.push(0);
        answer.extend([0u8; 32]);
        seeds.push(("handshake", "seed-40".into(), [&[4u8][..], &answer].concat()));
        for (target, _, bytes) in &seeds {
            match *target {
                "frame" => frame(bytes),
                "handshake" => handshake(bytes),
                _ => block_header(bytes),
            }
        }
        if let Ok(dir) = std::env::var("TESSERA_FUZZ_SEEDS") {
            for (target, name, bytes) in &seeds {
                let d = std::path::Path::new(&dir).join(target);
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join(name), bytes).unwrap();
            }
        }
    }
}

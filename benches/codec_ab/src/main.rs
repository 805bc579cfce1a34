//! Encode + decode cost of the frames tasks cost (one Run of 8 tasks, 8
//! Done), shaped as the runtime's messages, with bincode 1.3 (varint, as the
//! runtime used it) and postcard; and what the frame MAC adds (sign on one
//! side, check on the other). Prints nanoseconds per frame, 3 rounds of
//! 200,000 frames each.
use bincode::Options;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::sync::Arc;
use std::time::Instant;

#[derive(Serialize, Deserialize, Clone, Copy)]
struct TaskId(u64);
#[derive(Serialize, Deserialize, Clone)]
struct Key {
    name: Arc<str>,
    index: SmallVec<[u32; 4]>,
}
#[derive(Serialize, Deserialize, Clone)]
struct InputLoc {
    id: TaskId,
    holders: SmallVec<[u32; 2]>,
    nbytes: u64,
}
#[derive(Serialize, Deserialize, Clone)]
struct RunTask {
    id: TaskId,
    key: Key,
    kernel: u32,
    params: Arc<[u8]>,
    inputs: Vec<InputLoc>,
}
#[derive(Serialize, Deserialize, Clone, Copy)]
enum Role {
    Scheduler,
    Worker,
    Client,
}
#[derive(Serialize, Deserialize, Clone)]
enum Msg {
    Hello(u32),
    Run(Vec<RunTask>),
    Done { id: TaskId, nbytes: u64, micros: u64 },
}

/// A frame of one `Run` of `n` tasks (two inputs each).
fn run_frame(n: u64) -> Vec<(Role, Msg)> {
    vec![(
        Role::Worker,
        Msg::Run(
            (0..n)
                .map(|i| RunTask {
                    id: TaskId(100_000 + i),
                    key: Key { name: "matmul-2f3a".into(), index: SmallVec::from_slice(&[i as u32, 3]) },
                    kernel: 7,
                    params: Arc::from(&[1u8, 0, 0, 0, 0, 0, 240, 63][..]),
                    inputs: vec![
                        InputLoc {
                            id: TaskId(50_000 + i),
                            holders: SmallVec::from_slice(&[2]),
                            nbytes: 8_000_000
                        };
                        2
                    ],
                })
                .collect(),
        ),
    )]
}

/// A frame of `n` `Done` reports.
fn done_frame(n: u64) -> Vec<(Role, Msg)> {
    (0..n).map(|i| (Role::Scheduler, Msg::Done { id: TaskId(100_000 + i), nbytes: 8_000_000, micros: 1234 })).collect()
}

fn main() {
    let (run1, done1, run8, done8) = (run_frame(1), done_frame(1), run_frame(8), done_frame(8));
    let bc = || bincode::DefaultOptions::new().with_limit(256 << 20);
    let n = 200_000;
    for round in 0..3 {
        for (name, frame) in [("run x1", &run1), ("done x1", &done1), ("run x8", &run8), ("done x8", &done8)] {
            let t = Instant::now();
            let mut len = 0;
            for _ in 0..n {
                let mut out = vec![6u8];
                bc().serialize_into(&mut out, frame).unwrap();
                let back: Vec<(Role, Msg)> = bc().deserialize(&out[1..]).unwrap();
                len = out.len();
                std::hint::black_box(back);
            }
            let b = t.elapsed().as_nanos() as f64 / n as f64;
            let t = Instant::now();
            let mut plen = 0;
            for _ in 0..n {
                let out = postcard::to_extend(frame, vec![7u8]).unwrap();
                let (back, rest): (Vec<(Role, Msg)>, &[u8]) = postcard::take_from_bytes(&out[1..]).unwrap();
                assert!(rest.is_empty());
                plen = out.len();
                std::hint::black_box(back);
            }
            let p = t.elapsed().as_nanos() as f64 / n as f64;
            // The frame MAC: sign on one side, check on the other (HMAC-SHA256, pre-keyed).
            use hmac::{Hmac, Mac};
            let keyed = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&[5u8; 32]).unwrap();
            let out = postcard::to_extend(frame, vec![7u8]).unwrap();
            let t = Instant::now();
            for seq in 0..n as u64 {
                let len = (out.len() as u32).to_le_bytes();
                let mut m = keyed.clone();
                m.update(&seq.to_le_bytes());
                m.update(&len);
                m.update(&out);
                let tag = m.finalize().into_bytes();
                let mut v = keyed.clone();
                v.update(&seq.to_le_bytes());
                v.update(&len);
                v.update(&out);
                assert!(v.verify_slice(&tag).is_ok());
            }
            let h = t.elapsed().as_nanos() as f64 / n as f64;
            println!("round {round} {name}: frame MAC sign + check {h:.0} ns");
            println!("round {round} {name}: bincode {b:.0} ns ({len} B), postcard {p:.0} ns ({plen} B), postcard/bincode {:.2}", p / b);
        }
    }
}

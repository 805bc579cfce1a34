//! Multi-rank test bodies shared by the in-process tests (`tests/scenarios.rs`)
//! and the real `mpirun` runs (`tests/mpi.rs`): each takes the driver's
//! client and panics on a wrong result.

#![allow(dead_code)]

pub mod arrays;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tessera::{Block, Buffer, Client, Error, Graph, KernelError, Key, Registry, Task};

/// Runs the `tessera` binary as a user would, with no MPI launcher or log
/// settings inherited from the test's environment.
pub fn tessera(args: &[&str]) -> Output {
    tessera_env(args, &[])
}

/// [`tessera`] with these environment variables set.
pub fn tessera_env(args: &[&str], vars: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("OMPI_COMM_WORLD_SIZE")
        .env_remove("PMI_SIZE")
        .env_remove("PMIX_RANK")
        .envs(vars.iter().copied())
        .output()
        .expect("run tessera")
}

/// The kernels every rank registers in these tests.
pub fn registry() -> Registry {
    let mut r = Registry::builtin();
    // ramp: (len, scale) -> [0, scale, 2*scale, ...]; its sum checks every element arrived.
    r.register("ramp", |_, (len, scale): (usize, f64), _: &[Block]| {
        Ok(Block::new(vec![len], Buffer::F64((0..len).map(|i| i as f64 * scale).collect())))
    });
    // Kills its own process (SIGKILL) if run on `rank`; used to lose a worker.
    r.register("die_on", |ctx, rank: u32, _: &[Block]| {
        if ctx.rank == rank {
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(200));
        Ok(Block::empty())
    });
    // Kills whichever process runs it (SIGKILL): a task that kills its workers.
    r.register("die_always", |_, (): (), _: &[Block]| -> Result<Block, KernelError> {
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        std::thread::sleep(Duration::from_secs(60));
        Err(KernelError::msg("still alive after SIGKILL"))
    });
    // Stops its own process (SIGSTOP) if run on `rank`: a rank that hangs.
    r.register("stop_on", |ctx, rank: u32, _: &[Block]| {
        if ctx.rank == rank {
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
        }
        Ok(Block::empty())
    });
    // record: (dir, ms) -> sleeps, then leaves a file named after the task
    // in `dir`: counting a key's files counts its runs, across processes.
    r.register("record", |ctx, (dir, ms): (String, u64), _: &[Block]| {
        std::thread::sleep(Duration::from_millis(ms));
        static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{}_{:?}.{}.{}.{n}", ctx.key.name(), ctx.key.index(), ctx.rank, std::process::id());
        std::fs::write(std::path::Path::new(&dir).join(name), b"")?;
        Ok(Block::scalar(1.0))
    });
    r.register("checked_len", |_, len: usize, inputs: &[Block]| {
        let n = inputs[0].as_f64().map_or(0, <[f64]>::len);
        if n != len {
            return Err(KernelError::msg(format!("expected {len} elements, got {n}")));
        }
        Ok(Block::scalar(n as f64))
    });
    r
}

fn k(name: &str, i: u32) -> Key {
    Key::new(name, [i])
}

fn ramp_sum(len: usize, scale: f64) -> f64 {
    scale * (len as f64) * (len as f64 - 1.0) / 2.0
}

/// Trees, chains and wide graphs give exact results.
pub fn reductions(client: &Client) {
    for leaves in [1u32, 7, 300] {
        let mut g = Graph::new();
        let level: Vec<Key> = (0..leaves).map(|i| k("leaf", i)).collect();
        for key in &level {
            g.push(Task::new(key.clone(), "sum").param(&1.0f64));
        }
        let root = g.reduce("tree", level, 2, |key| Task::new(key, "sum").param(&0.0f64));
        let out = client.compute(g, &[root]).expect("tree computes");
        assert_eq!(out[0].to_scalar(), Some(leaves as f64), "tree of {leaves} leaves");
    }
    let mut g = Graph::new();
    g.push(Task::new(k("c", 0), "sum").param(&1.0f64));
    for i in 1..200 {
        g.push(Task::new(k("c", i), "sum").param(&1.0f64).inputs([k("c", i - 1)]));
    }
    assert_eq!(client.compute(g, &[k("c", 199)]).unwrap()[0].to_scalar(), Some(200.0));
    let mut g = Graph::new();
    let keys: Vec<Key> = (0..1000).map(|i| k("w", i)).collect();
    for (i, key) in keys.iter().enumerate() {
        g.push(Task::new(key.clone(), "sum").param(&(i as f64)));
    }
    let out = client.compute(g, &keys).unwrap();
    for (i, b) in out.iter().enumerate() {
        assert_eq!(b.to_scalar(), Some(i as f64));
    }
}

/// Blocks made on each worker and read on every other arrive intact, and
/// large blocks reach the driver intact.
pub fn transfers(client: &Client) {
    let ranks: Vec<u32> = client.workers().iter().map(|w| w.rank).collect();
    let mut n = 0;
    for &from in &ranks {
        for &to in &ranks {
            for len in [1usize, 1000, 1 << 20] {
                let scale = 0.5 + n as f64;
                let src = Key::new("src", [from, to, len as u32]);
                let dst = Key::new("dst", [from, to, len as u32]);
                let mut g = Graph::new();
                g.push(Task::new(src.clone(), "ramp").param(&(len, scale)).on_rank(from));
                g.push(Task::new(dst.clone(), "sum").param(&0.0f64).inputs([src]).on_rank(to));
                let out = client.compute(g, &[dst]).unwrap();
                assert_eq!(out[0].to_scalar(), Some(ramp_sum(len, scale)), "{len} elements {from} -> {to}");
                n += 1;
            }
        }
    }
    let mut g = Graph::new();
    g.push(Task::new(k("big", 0), "ramp").param(&(3_000_000usize, 1.0f64)).on_rank(*ranks.last().unwrap()));
    let out = client.compute(g, &[k("big", 0)]).unwrap();
    let v = out[0].as_f64().unwrap();
    assert_eq!(v.len(), 3_000_000);
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as f64), "gathered block corrupted");
}

/// Kernel errors and panics name the task and its cause; the cluster goes on.
pub fn failures(client: &Client) {
    let ranks: Vec<u32> = client.workers().iter().map(|w| w.rank).collect();
    for (kernel, cause) in [("fail", "disk on fire"), ("panic", "index out of range")] {
        let mut g = Graph::new();
        g.push(Task::new(k("in", 0), "sum").param(&1.0f64));
        g.push(Task::new(k("boom", 3), kernel).param(&cause.to_string()).inputs([k("in", 0)]));
        g.push(Task::new(k("after", 0), "sum").param(&0.0f64).inputs([k("boom", 3)]));
        match client.compute(g, &[k("after", 0)]) {
            Err(Error::TaskFailed { key, kernel: kn, rank, cause: c, .. }) => {
                assert_eq!(key, k("boom", 3));
                assert_eq!(kn, kernel);
                assert!(c.contains(cause), "cause {c:?}");
                assert!(ranks.contains(&rank), "rank {rank} is not a worker");
            }
            other => panic!("expected TaskFailed, got {other:?}"),
        }
        reductions(client);
    }
}

/// Invalid graphs are refused before anything runs, naming the key.
pub fn bad_graphs(client: &Client) {
    let mut g = Graph::new();
    g.push(Task::new(k("x", 0), "no_such_kernel"));
    let msg = client.persist(g, &[k("x", 0)]).err().unwrap().to_string();
    assert!(msg.contains("x[0]") && msg.contains("no_such_kernel"), "{msg}");

    let mut g = Graph::new();
    g.push(Task::new(k("x", 0), "sum").inputs([k("ghost", 1)]));
    let msg = client.persist(g, &[k("x", 0)]).err().unwrap().to_string();
    assert!(msg.contains("ghost[1]"), "{msg}");

    let mut g = Graph::new();
    g.push(Task::new(k("a", 0), "sum").inputs([k("b", 0)]));
    g.push(Task::new(k("b", 0), "sum").inputs([k("a", 0)]));
    let err = client.persist(g, &[k("a", 0)]).err().unwrap();
    assert!(matches!(err, Error::Cycle { .. }), "{err}");

    let mut g = Graph::new();
    g.push(Task::new(k("p", 0), "sum").on_rank(999));
    let msg = client.persist(g, &[k("p", 0)]).err().unwrap().to_string();
    assert!(msg.contains("999"), "{msg}");
}

/// Persisted results feed later graphs; dropping them releases them.
pub fn reuse(client: &Client) {
    let keys: Vec<Key> = (0..8).map(|i| k("keep", i)).collect();
    let mut g = Graph::new();
    for (i, key) in keys.iter().enumerate() {
        g.push(Task::new(key.clone(), "ramp").param(&(100usize, i as f64)));
    }
    let held = client.persist(g, &keys).unwrap();
    held.wait().unwrap();
    let mut g = Graph::new();
    g.push(Task::new(k("total", 0), "sum").param(&0.0f64).inputs(keys.clone()));
    let total = client.compute(g, &[k("total", 0)]).unwrap();
    let expect: f64 = (0..8).map(|i| ramp_sum(100, i as f64)).sum();
    assert_eq!(total[0].to_scalar(), Some(expect));
    drop(held);
    let mut g = Graph::new();
    g.push(Task::new(k("again", 0), "sum").inputs([k("keep", 0)]));
    assert!(matches!(client.persist(g, &[k("again", 0)]).err().unwrap(), Error::MissingInput { .. }));
}

/// Independent sleeps run on every worker at once.
pub fn spread(client: &Client) {
    let threads = client.total_threads();
    let n = 4 * threads as u32;
    let mut g = Graph::new();
    let keys: Vec<Key> = (0..n).map(|i| k("nap", i)).collect();
    for key in &keys {
        g.push(Task::new(key.clone(), "sleep").param(&50u64));
    }
    let t = Instant::now();
    let locations = client.persist(g, &keys).unwrap().locations().unwrap();
    let elapsed = t.elapsed();
    let mut used: Vec<u32> = locations.iter().map(|l| l[0]).collect();
    used.sort();
    used.dedup();
    let all: Vec<u32> = client.workers().iter().map(|w| w.rank).collect();
    assert_eq!(used, all, "every worker must get work");
    // Serial would be n * 50 ms; allow generous slack for oversubscribed CI.
    assert!(elapsed < Duration::from_millis(50 * n as u64 * 3 / 4 + 500), "{n} naps took {elapsed:?}");
}

/// Every body in turn.
pub fn all(client: &Client) {
    reductions(client);
    transfers(client);
    failures(client);
    bad_graphs(client);
    reuse(client);
    spread(client);
}

/// How often each task of `name` ran, from the files `record` left in `dir`.
pub fn runs(dir: &std::path::Path, name: &str) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("record dir") {
        let file = e.unwrap().file_name().to_string_lossy().into_owned();
        let key = file.split('.').next().unwrap_or_default().to_owned();
        if key.starts_with(&format!("{name}_")) {
            *out.entry(key).or_insert(0) += 1;
        }
    }
    out
}

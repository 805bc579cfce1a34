//! Benchmarks behind `tessera bench`: programs that print figures, never
//! timed assertions.
//!
//! * [`overhead`]: per-task scheduling cost on trivial tasks, in three graph
//!   shapes (wide, chain, tree), the figure to compare with Dask.
//! * [`transfer`]: one block moved between two workers, timed end to end.

use std::time::Instant;

use serde::Serialize;
use tessera_runtime::{Client, Graph, Key, Task};

/// Graph shapes of the overhead benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// N independent tasks.
    Wide,
    /// Each task depends on the one before.
    Chain,
    /// A binary reduction tree of N tasks in all.
    Tree,
}

/// A graph of `n` trivial `sum` tasks of `shape`, the keys to ask for, and
/// the value the last key must hold.
pub fn graph(shape: Shape, n: usize) -> (Graph, Vec<Key>, f64) {
    let n = n.max(1);
    let mut g = Graph::with_capacity(n);
    match shape {
        Shape::Wide => {
            let name: std::sync::Arc<str> = "w".into();
            let keys: Vec<Key> = (0..n as u32).map(|i| Key::with_shared_name(&name, [i])).collect();
            for k in &keys {
                g.push(Task::new(k.clone(), "sum").param(&1.0f64));
            }
            (g, keys, 1.0)
        }
        Shape::Chain => {
            let name: std::sync::Arc<str> = "c".into();
            g.push(Task::new(Key::with_shared_name(&name, [0]), "sum").param(&1.0f64));
            for i in 1..n as u32 {
                g.push(
                    Task::new(Key::with_shared_name(&name, [i]), "sum")
                        .param(&1.0f64)
                        .inputs([Key::with_shared_name(&name, [i - 1])]),
                );
            }
            (g, vec![Key::with_shared_name(&name, [n as u32 - 1])], n as f64)
        }
        Shape::Tree => {
            let leaves = n.div_ceil(2);
            let keys: Vec<Key> = (0..leaves as u32).map(|i| Key::new("t", [0, i])).collect();
            for k in &keys {
                g.push(Task::new(k.clone(), "sum").param(&1.0f64));
            }
            let root = g.reduce("t", keys, 2, |k| Task::new(k, "sum").param(&0.0f64));
            (g, vec![root], leaves as f64)
        }
    }
}

/// One overhead measurement.
#[derive(Debug, Clone, Serialize)]
pub struct OverheadRun {
    pub shape: Shape,
    pub tasks: usize,
    /// Median over the repeats, submission to last result, graph build excluded.
    pub seconds: f64,
    pub seconds_min: f64,
    pub us_per_task: f64,
    pub tasks_per_second: f64,
    pub build_seconds: f64,
    /// Median time for the scheduler to validate, order and admit the graph.
    pub submit_seconds: f64,
    pub repeat: usize,
    pub workers: usize,
    pub threads: usize,
    pub transport: &'static str,
}

/// Runs `shape` with `n` tasks `repeat` times; checks every result.
pub fn overhead(client: &Client, shape: Shape, n: usize, repeat: usize) -> tessera_runtime::Result<OverheadRun> {
    let mut times = Vec::with_capacity(repeat);
    let mut build = Vec::with_capacity(repeat);
    let mut submit = Vec::with_capacity(repeat);
    let mut tasks = 0;
    for _ in 0..repeat.max(1) {
        let t0 = Instant::now();
        let (g, outputs, expect) = graph(shape, n);
        tasks = g.len();
        build.push(t0.elapsed().as_secs_f64());
        let t1 = Instant::now();
        let held = client.persist(g, &outputs)?;
        submit.push(t1.elapsed().as_secs_f64());
        held.wait()?;
        times.push(t1.elapsed().as_secs_f64());
        if shape != Shape::Wide {
            let got = held.gather()?[0].to_scalar();
            assert_eq!(got, Some(expect), "{shape:?} of {n} tasks computed a wrong result");
        }
    }
    let seconds = median(&mut times);
    Ok(OverheadRun {
        shape,
        tasks,
        seconds,
        seconds_min: times.iter().copied().fold(f64::INFINITY, f64::min),
        us_per_task: seconds * 1e6 / tasks as f64,
        tasks_per_second: tasks as f64 / seconds,
        build_seconds: median(&mut build),
        submit_seconds: median(&mut submit),
        repeat: times.len(),
        workers: client.workers().len(),
        threads: client.total_threads(),
        transport: client.transport(),
    })
}

/// Median of a non-empty sample (sorts it).
pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

/// Moves a block of `bytes` from the worker on rank `from` to the one on
/// rank `to`, `repeat` times; returns the median seconds per transfer.
///
/// Each repeat makes a fresh block on `from` (not timed), then times a task
/// pinned to `to` that reads it: one fetch request, one block message, the
/// task (`noop`) and its report.
pub fn transfer(client: &Client, from: u32, to: u32, bytes: usize, repeat: usize) -> tessera_runtime::Result<Vec<f64>> {
    let len = bytes / 8;
    let mut times = Vec::with_capacity(repeat);
    for r in 0..repeat.max(1) as u32 {
        let src = Key::new("transfer-src", [r]);
        let mut g = Graph::new();
        g.push(Task::new(src.clone(), "fill").param(&(len, 1.0f64)).on_rank(from));
        let held = client.persist(g, std::slice::from_ref(&src))?;
        held.wait()?;
        let dst = Key::new("transfer-dst", [r]);
        let mut g = Graph::new();
        g.push(Task::new(dst.clone(), "noop").inputs([src]).on_rank(to));
        let t = Instant::now();
        client.persist(g, &[dst])?.wait()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(times)
}

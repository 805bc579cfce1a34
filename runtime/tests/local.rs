//! The runtime on in-process clusters: results, errors, release, reuse.

use std::time::{Duration, Instant};

use tessera_runtime::{Block, Buffer, Error, Graph, KernelError, Key, LocalCluster, Registry, Task};

fn k(name: &str, i: u32) -> Key {
    Key::new(name, [i])
}

/// A binary reduction over `leaves` ones: the root must equal `leaves`.
fn tree(leaves: u32) -> (Graph, Key) {
    let mut g = Graph::new();
    let level: Vec<Key> = (0..leaves).map(|i| k("leaf", i)).collect();
    for key in &level {
        g.push(Task::new(key.clone(), "sum").param(&1.0f64));
    }
    let root = g.reduce("level", level, 2, |key| Task::new(key, "sum").param(&0.0f64));
    (g, root)
}

#[test]
fn reductions_give_exact_results_on_1_2_and_3_workers() {
    for workers in 1..=3 {
        let cluster = LocalCluster::builder().workers(workers).start().unwrap();
        for leaves in [1, 2, 7, 64, 1000] {
            let (g, root) = tree(leaves);
            let out = cluster.client().compute(g, &[root]).unwrap();
            assert_eq!(out[0].to_scalar(), Some(leaves as f64), "{workers} workers, {leaves} leaves");
        }
    }
}

#[test]
fn a_chain_runs_in_order() {
    let cluster = LocalCluster::builder().workers(2).start().unwrap();
    let mut g = Graph::new();
    g.push(Task::new(k("c", 0), "sum").param(&1.0f64));
    for i in 1..500 {
        g.push(Task::new(k("c", i), "sum").param(&1.0f64).inputs([k("c", i - 1)]));
    }
    let out = cluster.client().compute(g, &[k("c", 499)]).unwrap();
    assert_eq!(out[0].to_scalar(), Some(500.0));
}

#[test]
fn local_transfers_share_the_block_instead_of_copying() {
    let cluster = LocalCluster::builder().workers(2).start().unwrap();
    let mut g = Graph::new();
    g.push(Task::new(k("v", 0), "fill").param(&(1000usize, 2.0f64)));
    let held = cluster.client().persist(g, &[k("v", 0)]).unwrap();
    let a = held.gather().unwrap();
    let b = held.gather().unwrap();
    assert_eq!(a[0].as_f64().unwrap().len(), 1000);
    assert!(Block::ptr_eq(&a[0], &b[0]), "two gathers of one block must share it");
}

#[test]
fn persisted_results_feed_later_graphs_and_are_released_on_drop() {
    let cluster = LocalCluster::builder().workers(2).start().unwrap();
    let client = cluster.client();
    let mut g = Graph::new();
    for i in 0..10 {
        g.push(Task::new(k("p", i), "fill").param(&(4usize, i as f64)));
    }
    let keys: Vec<Key> = (0..10).map(|i| k("p", i)).collect();
    let held = client.persist(g, &keys).unwrap();
    held.wait().unwrap();
    let mut g2 = Graph::new();
    g2.push(Task::new(Key::new("s", []), "sum").param(&0.0f64).inputs(keys.clone()));
    let s = client.compute(g2, &[Key::new("s", [])]).unwrap();
    assert_eq!(s[0].to_scalar(), Some(4.0 * 45.0));
    drop(held);
    // Once released, the keys are no longer inputs anyone can name.
    let mut g3 = Graph::new();
    g3.push(Task::new(Key::new("s2", []), "sum").inputs([k("p", 3)]));
    let err = client.persist(g3, &[Key::new("s2", [])]).err().expect("released keys are gone");
    assert!(matches!(err, Error::MissingInput { .. }), "{err}");
}

#[test]
fn bad_graphs_are_rejected_naming_the_key_and_nothing_runs() {
    let mut registry = Registry::builtin();
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = ran.clone();
    registry.register_raw("count", move |_, _, _| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Block::empty())
    });
    let cluster = LocalCluster::builder().workers(2).registry(registry).start().unwrap();
    let client = cluster.client();

    let mut g = Graph::new();
    g.push(Task::new(k("ok", 0), "count"));
    g.push(Task::new(k("bad", 0), "no_such_kernel").inputs([k("ok", 0)]));
    let err = client.persist(g, &[k("bad", 0)]).err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("bad[0]") && msg.contains("no_such_kernel"), "{msg}");

    let mut g = Graph::new();
    g.push(Task::new(k("ok", 0), "count"));
    g.push(Task::new(k("x", 0), "count").inputs([k("ghost", 7)]));
    let msg = client.persist(g, &[k("x", 0)]).err().unwrap().to_string();
    assert!(msg.contains("x[0]") && msg.contains("ghost[7]"), "{msg}");

    let mut g = Graph::new();
    g.push(Task::new(k("ok", 0), "count"));
    g.push(Task::new(k("a", 0), "count").inputs([k("b", 0), k("ok", 0)]));
    g.push(Task::new(k("b", 0), "count").inputs([k("c", 0)]));
    g.push(Task::new(k("c", 0), "count").inputs([k("a", 0)]));
    let err = client.persist(g, &[k("a", 0)]).err().unwrap();
    assert!(matches!(err, Error::Cycle { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("a[0]") && msg.contains("b[0]") && msg.contains("c[0]"), "{msg}");

    let mut g = Graph::new();
    g.push(Task::new(k("d", 0), "count"));
    g.push(Task::new(k("d", 0), "count"));
    assert!(matches!(client.persist(g, &[k("d", 0)]).err().unwrap(), Error::DuplicateKey { .. }));

    let mut g = Graph::new();
    g.push(Task::new(k("d", 0), "count"));
    assert!(matches!(client.persist(g, &[k("e", 0)]).err().unwrap(), Error::UnknownOutput { .. }));

    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 0, "no task of a rejected graph may run");
}

#[test]
fn kernel_errors_and_panics_name_the_task_and_the_cluster_stays_usable() {
    let cluster = LocalCluster::builder().workers(2).start().unwrap();
    let client = cluster.client();
    for (kernel, cause) in [("fail", "disk on fire"), ("panic", "index out of range")] {
        let mut g = Graph::new();
        g.push(Task::new(k("in", 0), "sum").param(&1.0f64));
        g.push(Task::new(k("boom", 3), kernel).param(&cause.to_string()).inputs([k("in", 0)]));
        g.push(Task::new(k("after", 0), "sum").param(&0.0f64).inputs([k("boom", 3)]));
        let err = client.compute(g, &[k("after", 0)]).expect_err("the graph must fail");
        match &err {
            Error::TaskFailed { key, kernel: kn, cause: c, .. } => {
                assert_eq!(key, &k("boom", 3));
                assert_eq!(kn, kernel);
                assert!(c.contains(cause), "{c}");
            }
            other => panic!("unexpected error {other}"),
        }
        // The same cluster computes the next graph.
        let (g, root) = tree(16);
        assert_eq!(client.compute(g, &[root]).unwrap()[0].to_scalar(), Some(16.0));
    }
}

#[test]
fn user_kernels_receive_parameters_and_inputs_in_order() {
    let mut registry = Registry::builtin();
    registry.register("axpy", |_ctx, a: f64, inputs: &[Block]| {
        let (x, y) = (inputs[0].as_f64().unwrap(), inputs[1].as_f64().unwrap());
        if x.len() != y.len() {
            return Err(KernelError::msg(format!("lengths {} and {}", x.len(), y.len())));
        }
        Ok(Block::new(vec![x.len()], Buffer::F64(x.iter().zip(y).map(|(x, y)| a * x + y).collect())))
    });
    let cluster = LocalCluster::builder().workers(3).registry(registry).start().unwrap();
    let mut g = Graph::new();
    g.push(Task::new(k("x", 0), "fill").param(&(5usize, 2.0f64)));
    g.push(Task::new(k("y", 0), "fill").param(&(5usize, 1.0f64)));
    g.push(Task::new(k("z", 0), "axpy").param(&3.0f64).inputs([k("x", 0), k("y", 0)]));
    let z = cluster.client().compute(g, &[k("z", 0)]).unwrap();
    assert_eq!(z[0].as_f64().unwrap(), &[7.0; 5]);
}

#[test]
fn a_task_goes_to_the_worker_holding_its_inputs() {
    let cluster = LocalCluster::builder().workers(3).start().unwrap();
    let client = cluster.client();
    let mut g = Graph::new();
    g.push(Task::new(k("big", 0), "fill").param(&(1 << 16, 1.0f64)));
    let big = client.persist(g, &[k("big", 0)]).unwrap();
    let home = big.locations().unwrap()[0][0];
    let mut g = Graph::new();
    for i in 0..6 {
        g.push(Task::new(k("use", i), "sum").param(&0.0f64).inputs([k("big", 0)]));
    }
    let keys: Vec<Key> = (0..6).map(|i| k("use", i)).collect();
    let used = client.persist(g, &keys).unwrap();
    for r in used.locations().unwrap() {
        assert_eq!(r, vec![home], "tasks on a 512 KiB input must run where it is");
    }
}

/// A small deterministic generator (xorshift) so the DAGs are reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Random DAGs (0-3 inputs per task, some chains, some fan-in) computed on
/// 1-4 workers agree with a sequential evaluation, and once every handle is
/// dropped the scheduler holds nothing.
#[test]
fn random_graphs_match_a_sequential_evaluation_and_leave_nothing_behind() {
    for workers in 1..=4 {
        let cluster = LocalCluster::builder().workers(workers).start().unwrap();
        let client = cluster.client();
        for seed in 1..=6u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ workers as u64);
            let n = 300 + rng.below(300) as u32;
            let mut value = Vec::with_capacity(n as usize);
            let mut g = Graph::new();
            for i in 0..n {
                let fan = if i == 0 { 0 } else { rng.below(4) };
                let inputs: Vec<u32> = (0..fan).map(|_| rng.below(i as u64) as u32).collect();
                let v = f64::from(i) + inputs.iter().map(|&j| value[j as usize]).sum::<f64>();
                value.push(v);
                g.push(Task::new(k("n", i), "sum").param(&f64::from(i)).inputs(inputs.iter().map(|&j| k("n", j))));
            }
            let outputs: Vec<u32> = (0..20).map(|_| rng.below(n as u64) as u32).collect();
            let keys: Vec<Key> = outputs.iter().map(|&i| k("n", i)).collect();
            let out = client.compute(g, &keys).unwrap();
            for (b, &i) in out.iter().zip(&outputs) {
                assert_eq!(b.to_scalar(), Some(value[i as usize]), "n[{i}], seed {seed}, {workers} workers");
            }
            let state = client.state().unwrap();
            assert_eq!(state.tasks, 0, "everything released after compute: {state:?}");
            assert!(state.in_flight.iter().all(|&(_, n)| n == 0), "{state:?}");
        }
    }
}

/// A failure in the middle of a chain (whose later links were sent ahead to
/// the worker) cancels them there, frees the worker's slots, and the next
/// graphs still get the whole cluster.
#[test]
fn a_failed_link_cancels_the_rest_of_its_chain() {
    let cluster = LocalCluster::builder().workers(2).start().unwrap();
    let client = cluster.client();
    for round in 0..20u32 {
        let name = format!("chain{round}");
        let mut g = Graph::new();
        g.push(Task::new(Key::new(name.clone(), [0]), "sum").param(&1.0f64));
        for i in 1..30u32 {
            let t = if i == 10 {
                Task::new(Key::new(name.clone(), [i]), "fail").param(&"link broke".to_string())
            } else {
                Task::new(Key::new(name.clone(), [i]), "sum").param(&1.0f64)
            };
            g.push(t.inputs([Key::new(name.clone(), [i - 1])]));
        }
        let err = client.compute(g, &[Key::new(name.clone(), [29])]).expect_err("the chain fails");
        assert!(err.to_string().contains(&format!("{name}[10]")), "{err}");
    }
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let c = client.clone();
    std::thread::spawn(move || {
        let (g, root) = tree(256);
        let _ = done_tx.send(c.compute(g, &[root]).map(|b| b[0].to_scalar()));
    });
    let got = done_rx.recv_timeout(Duration::from_secs(20)).expect("the cluster still takes work");
    assert_eq!(got.unwrap(), Some(256.0));
    let state = client.state().unwrap();
    assert_eq!(state.tasks, 0, "{state:?}");
    assert!(state.in_flight.iter().all(|&(_, n)| n == 0), "slots leaked: {state:?}");
}

/// Intermediates are released as soon as their dependents finish, and the
/// depth-first order finishes one branch before starting the next: a
/// reduction over 512 blocks of 64 KiB never holds more than a few dozen.
#[test]
fn reductions_hold_few_blocks_at_once() {
    let cluster = LocalCluster::builder().workers(2).start().unwrap();
    let block = 8192usize; // f64s: 64 KiB
    let mut g = Graph::new();
    let level: Vec<Key> = (0..512).map(|i| k("big", i)).collect();
    for key in &level {
        g.push(Task::new(key.clone(), "fill").param(&(block, 1.0f64)));
    }
    let root = g.reduce("r", level, 2, |key| Task::new(key, "sum").param(&0.0f64));
    let out = cluster.client().compute(g, &[root]).unwrap();
    assert_eq!(out[0].to_scalar(), Some(512.0 * block as f64));
    let state = cluster.client().state().unwrap();
    let peak_blocks = state.peak_bytes / (block as u64 * 8);
    assert!(peak_blocks <= 48, "held up to {peak_blocks} of 512 leaf blocks at once");
    assert_eq!(state.tasks, 0);
}

/// Root tasks making big blocks are not queued ahead on busy workers: each
/// block is consumed before the next is made, as in an out-of-core pass
/// (queued ahead, each worker would hold up to `1 + queue_extra` of them).
#[test]
fn big_root_blocks_are_consumed_before_more_are_made() {
    let cluster = LocalCluster::builder().workers(2).start().unwrap();
    let block = 1usize << 18; // f64s: 2 MiB
    let mut g = Graph::new();
    let mut sums = Vec::new();
    for i in 0..64 {
        g.push(Task::new(k("read", i), "fill").param(&(block, 1.0f64)));
        g.push(Task::new(k("use", i), "sum").param(&0.0f64).inputs([k("read", i)]));
        sums.push(k("use", i));
    }
    let root = g.reduce("total", sums, 8, |key| Task::new(key, "sum").param(&0.0f64));
    let out = cluster.client().compute(g, &[root]).unwrap();
    assert_eq!(out[0].to_scalar(), Some(64.0 * block as f64));
    let state = cluster.client().state().unwrap();
    let peak_blocks = state.peak_bytes / (block as u64 * 8);
    assert!(peak_blocks <= 3, "held up to {peak_blocks} big root blocks at once on 2 one-thread workers");
}

/// Tasks bound to one worker (it holds their small input) are stolen by
/// idle workers once that worker's queue backs up.
#[test]
fn idle_workers_steal_queued_tasks() {
    let cluster = LocalCluster::builder().workers(4).start().unwrap();
    let client = cluster.client();
    let mut g = Graph::new();
    g.push(Task::new(k("seed", 0), "sum").param(&1.0f64).on_rank(1));
    let seed = client.persist(g, &[k("seed", 0)]).unwrap();
    seed.wait().unwrap();
    let mut g = Graph::new();
    let keys: Vec<Key> = (0..24).map(|i| k("nap", i)).collect();
    for key in &keys {
        g.push(Task::new(key.clone(), "sleep").param(&40u64).inputs([k("seed", 0)]));
    }
    let t = Instant::now();
    let locations = client.persist(g, &keys).unwrap().locations().unwrap();
    let elapsed = t.elapsed();
    let mut used: Vec<u32> = locations.iter().map(|l| l[0]).collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 3, "only ranks {used:?} ran the naps");
    // On rank 1 alone: 24 x 40 ms = 960 ms.
    assert!(elapsed < Duration::from_millis(700), "took {elapsed:?}");
}

#[test]
fn a_failure_whose_siblings_still_run_leaves_the_cluster_usable() {
    // `mid` fails with `bad` and is forgotten at once (nothing else needs
    // it) while its other input `slow` still runs for `side`; `slow` then
    // finishes with a dependent the scheduler no longer knows.
    let cluster = LocalCluster::builder().workers(3).start().unwrap();
    let client = cluster.client();
    for _ in 0..3 {
        let mut g = Graph::new();
        g.push(Task::new(k("bad", 0), "fail").param(&"first".to_string()));
        g.push(Task::new(k("slow", 0), "sleep").param(&150u64));
        g.push(Task::new(k("mid", 0), "noop").inputs([k("bad", 0), k("slow", 0)]));
        g.push(Task::new(k("top", 0), "noop").inputs([k("mid", 0)]));
        g.push(Task::new(k("side", 0), "noop").inputs([k("slow", 0)]));
        g.push(Task::new(k("late", 0), "sleep").param(&100u64));
        g.push(Task::new(k("bad", 1), "fail").param(&"second".to_string()).inputs([k("late", 0), k("slow", 0)]));
        g.push(Task::new(k("top", 1), "noop").inputs([k("bad", 1)]));
        let held = client.persist(g, &[k("top", 0), k("side", 0), k("top", 1)]).unwrap();
        let e = held.wait().unwrap_err();
        assert!(e.to_string().contains("first"), "{e}");
        drop(held);
        std::thread::sleep(Duration::from_millis(250));
    }
    let (g, root) = tree(50);
    assert_eq!(client.compute(g, &[root]).unwrap()[0].to_scalar(), Some(50.0));
    assert_eq!(client.state().unwrap().in_memory, 0);
}

/// The backlog a job queue sizes an elastic cluster by: tasks waiting for
/// inputs, queued in the scheduler, or sent to a worker; zero once done.
#[test]
fn the_backlog_counts_every_task_not_yet_computed() {
    let cluster = LocalCluster::builder().workers(1).start().unwrap();
    let client = cluster.client();
    let mut g = Graph::new();
    // 20 sleeping roots (1 thread: most wait in the queues), each with a dependent.
    for i in 0..20 {
        g.push(Task::new(k("nap", i), "sleep").param(&50u64));
        g.push(Task::new(k("after", i), "noop").inputs([k("nap", i)]));
    }
    let held = client.persist(g, &(0..20).map(|i| k("after", i)).collect::<Vec<_>>()).unwrap();
    let s = client.state().unwrap();
    assert_eq!(s.backlog(), 40 - s.in_memory, "{s:?}");
    assert!(s.waiting >= 15 && s.queued >= 10, "dependents wait, roots queue: {s:?}");
    held.wait().unwrap();
    let s = client.state().unwrap();
    assert_eq!((s.backlog(), s.waiting, s.queued), (0, 0, 0), "{s:?}");
}

#[test]
fn workers_record_every_task_transfer_and_store_size_for_the_driver() {
    let cluster = LocalCluster::builder().workers(2).start().unwrap();
    let client = cluster.client();
    // 64 leaves pinned alternately, then sums that need blocks of both workers.
    let mut g = Graph::new();
    for i in 0..64u32 {
        g.push(Task::new(k("leaf", i), "fill").param(&(1000usize, 1.0f64)).on_rank(1 + i % 2));
    }
    for i in 0..32u32 {
        g.push(Task::new(k("pair", i), "sum").param(&0.0f64).inputs([k("leaf", 2 * i), k("leaf", 2 * i + 1)]));
    }
    let total = g.reduce("total", (0..32).map(|i| k("pair", i)).collect(), 4, |key| Task::new(key, "sum").param(&0.0));
    let tasks = g.len();
    client.compute(g, &[total]).unwrap();

    let log = client.take_events().unwrap();
    assert_eq!(log.workers.iter().map(|w| w.rank).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(log.task_count(), tasks);
    assert_eq!(log.task_count() as u64, client.state().unwrap().completed);
    let fill = log.kernels.iter().position(|k| k == "fill").unwrap() as u32;
    for w in &log.workers {
        // Pinned leaves ran where they were pinned, each making 8000 bytes.
        let leaves: Vec<_> = w.tasks.iter().filter(|t| t.kernel == fill).collect();
        assert_eq!(leaves.len(), 32, "rank {}", w.rank);
        assert!(leaves.iter().all(|t| t.bytes == 8000 && t.key.index()[0] % 2 == w.rank - 1 && !t.failed));
        assert!(w.tasks.iter().all(|t| t.start_us > 0 && t.thread == 0));
        assert!(w.memory.iter().any(|m| m.bytes >= 8000), "rank {}: {:?}", w.rank, w.memory.len());
        assert_eq!(w.threads.len(), 1);
        assert!(!w.threads[0].affinity.is_empty(), "the affinity was read back");
    }
    // Each pair needs a leaf from the other worker: at least 32 blocks moved.
    let (bytes, n) = log.moved();
    assert!(n >= 32 && bytes >= 32 * 8000, "{n} transfers, {bytes} bytes");
    assert_eq!(bytes, client.state().unwrap().moved_bytes);
    // Taken: the next gather starts empty.
    assert_eq!(client.events().unwrap().task_count(), 0);
}

#[test]
fn workers_that_do_not_record_send_empty_logs() {
    let cluster = LocalCluster::builder().workers(2).events(false).start().unwrap();
    let (g, root) = tree(16);
    cluster.client().compute(g, &[root]).unwrap();
    let log = cluster.client().events().unwrap();
    assert_eq!(log.workers.len(), 2);
    assert_eq!(log.task_count(), 0);
}

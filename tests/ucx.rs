//! Blocks over UCX in one process (feature `ucx`): the shared multi-rank
//! bodies on local clusters whose workers each have their own UCP worker
//! (every fetched block crosses UCP), and the data plane on its own, over
//! shared memory and over TCP, including a peer that disappears.
//! The same bodies under `mpirun -n 3 ... --transport ucx` are in `tests/mpi.rs`.

mod common;

use std::time::{Duration, Instant};

use tessera::runtime::protocol::{Endpoint, Msg, Payload};
use tessera::runtime::transport::ucx::{Options, UcxPlane};
use tessera::runtime::transport::{DataPlane, Mailboxes};
use tessera::{Block, Buffer, Config, Launch, LocalCluster, TaskId, TransportKind, WorkerSettings};

fn ucx_cluster(workers: usize) -> LocalCluster {
    let config = Config::builder()
        .launch(Launch::Local)
        .workers(workers)
        .registry(common::registry())
        .worker(WorkerSettings { transport: TransportKind::Ucx, ..Default::default() })
        .build();
    LocalCluster::start_with(config).unwrap()
}

#[test]
fn shared_bodies_over_ucx() {
    for workers in [2, 3] {
        let cluster = ucx_cluster(workers);
        let client = cluster.client();
        assert_eq!(client.transport(), "local+ucx");
        common::all(client);
        let state = client.state().unwrap();
        assert!(state.moved_bytes > 3 << 20, "blocks moved between workers: {} bytes", state.moved_bytes);
    }
}

#[test]
fn arrays_over_ucx() {
    let cluster = ucx_cluster(3);
    common::arrays::all(cluster.client());
}

#[test]
fn elastic_workers_move_blocks_over_ucx() {
    use tessera::runtime::launch::elastic::{self, SchedulerOptions, WorkerOptions};
    use tessera::runtime::transport::secret::Secret;
    use tessera::runtime::transport::tcp::TcpOptions;
    let dir = std::env::temp_dir().join(format!("tessera-ucx-elastic-{}", std::process::id()));
    let secret = Secret::load_or_create(&dir.join("secret")).unwrap();
    let opts = TcpOptions::new(secret);
    let sched = SchedulerOptions {
        listen: "127.0.0.1:0".into(),
        registry: common::registry(),
        ..SchedulerOptions::new(opts.clone())
    };
    let server = elastic::Scheduler::start(sched).unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let mut w = WorkerOptions::new(server.address(), opts.clone());
            w.registry = common::registry();
            w.worker.threads = Some(1);
            w.worker.transport = TransportKind::Ucx;
            std::thread::spawn(move || elastic::run_worker(w))
        })
        .collect();
    let client = server.client();
    let start = Instant::now();
    while client.workers().len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "workers did not join");
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = tessera::runtime::transport::ucx::blocks_received();
    common::transfers(client);
    common::reuse(client);
    let over_ucx = tessera::runtime::transport::ucx::blocks_received() - before;
    // Each large block between the two workers, both ways: 2 x (1000 and 2^20 values).
    assert!(over_ucx >= 4, "only {over_ucx} blocks crossed UCX");
    server.shutdown();
    for w in workers {
        assert!(w.join().unwrap().unwrap().exit_ok());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn ramp(len: usize) -> Block {
    Block::new(vec![len], Buffer::F64((0..len).map(|i| i as f64).collect()))
}

/// Two planes (ranks 1 and 2) that know each other; rank 2's worker inbox.
fn pair(
    tls: Option<&str>,
    peer_errors: bool,
) -> (std::sync::Arc<UcxPlane>, std::sync::Arc<UcxPlane>, crossbeam_channel::Receiver<Msg>) {
    let options = Options { tls: tls.map(str::to_owned), peer_errors };
    let mut boxes = Mailboxes::new();
    let inbox = boxes.open(Endpoint::worker(2));
    let a = UcxPlane::start(1, &options, Mailboxes::new()).unwrap();
    let b = UcxPlane::start(2, &options, boxes).unwrap();
    a.learn(2, b.address().to_vec());
    b.learn(1, a.address().to_vec());
    (a, b, inbox)
}

fn next(inbox: &crossbeam_channel::Receiver<Msg>, within: Duration) -> Msg {
    inbox.recv_timeout(within).unwrap_or_else(|_| panic!("nothing arrived within {within:?}"))
}

#[test]
fn planes_move_blocks_over_shared_memory_and_tcp() {
    for tls in [None, Some("posix,self"), Some("tcp")] {
        let (a, b, inbox) = pair(tls, false);
        // Expected before and after the send starts: both orders must match.
        for (i, len) in [600usize, 1 << 17, 3 << 20].into_iter().enumerate() {
            let id = TaskId(i as u64 + 10);
            let block = ramp(len);
            if i % 2 == 0 {
                b.expect_block(1, Endpoint::worker(2), id, block.header());
                a.send_block(2, id, block);
            } else {
                a.send_block(2, id, block.clone());
                std::thread::sleep(Duration::from_millis(20));
                b.expect_block(1, Endpoint::worker(2), id, block.header());
            }
            match next(&inbox, Duration::from_secs(20)) {
                Msg::Block { id: got, payload: Payload::Ready(block) } => {
                    assert_eq!(got, id);
                    let v = block.as_f64().unwrap();
                    assert!(
                        v.len() == len && v.iter().enumerate().all(|(i, &x)| x == i as f64),
                        "{tls:?}: {len} damaged"
                    );
                }
                other => panic!("{tls:?}: expected block {id}, got {other:?}"),
            }
        }
        let start = Instant::now();
        while a.busy() {
            assert!(start.elapsed() < Duration::from_secs(10), "{tls:?}: sends never completed");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn a_peer_that_disappears_answers_missing() {
    // Over TCP, with peer errors on, UCX sees the connection close; whatever
    // the transport, the control transport's word (`peer_lost`) ends the wait too.
    let (a, b, inbox) = pair(Some("tcp"), true);
    // One exchange first, so both sides have endpoints.
    b.expect_block(1, Endpoint::worker(2), TaskId(1), ramp(1 << 12).header());
    a.send_block(2, TaskId(1), ramp(1 << 12));
    assert!(matches!(next(&inbox, Duration::from_secs(20)), Msg::Block { .. }));
    b.expect_block(1, Endpoint::worker(2), TaskId(2), ramp(1 << 16).header());
    a.stop();
    drop(a);
    match next(&inbox, Duration::from_secs(30)) {
        Msg::Missing { id, rank } => assert_eq!((id, rank), (TaskId(2), 1)),
        other => panic!("expected block 2 to be reported missing, got {other:?}"),
    }

    let (_a, b, inbox) = pair(None, false);
    b.expect_block(1, Endpoint::worker(2), TaskId(5), ramp(1 << 16).header());
    b.peer_lost(1, "its TCP connection closed".into());
    match next(&inbox, Duration::from_secs(10)) {
        Msg::Missing { id, rank } => assert_eq!((id, rank), (TaskId(5), 1)),
        other => panic!("expected block 5 to be reported missing, got {other:?}"),
    }
    // After the loss, what is expected from that rank is missing at once.
    b.expect_block(1, Endpoint::worker(2), TaskId(6), ramp(1 << 16).header());
    assert!(matches!(next(&inbox, Duration::from_secs(10)), Msg::Missing { id: TaskId(6), rank: 1 }));
}

//! Elastic clusters over real TCP sockets on 127.0.0.1.
//!
//! The scheduler runs in this process (`tessera::runtime::launch::elastic::Scheduler`,
//! with the test kernels of `common::registry`); workers are **separate
//! processes**: this test binary started again with `TESSERA_TEST_WORKER`
//! set, which makes [`worker_process_entry`] run `elastic::run_worker` and exit
//! (the `tessera worker` command itself, with the built-in kernels, is run
//! by `tests/cli.rs`). Some tests run workers as threads of this process
//! instead, still over sockets.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera::runtime::launch::elastic::{self, SchedulerOptions, WorkerOptions};
use tessera::runtime::transport::secret::Secret;
use tessera::runtime::transport::tcp::TcpOptions;
use tessera::{Client, Error, Graph, Key, Task};

const ENV_WORKER: &str = "TESSERA_TEST_WORKER";

/// Not a test: the body of a worker process (see the module docs).
#[test]
fn worker_process_entry() {
    let Ok(addr) = std::env::var(ENV_WORKER) else { return };
    let secret = Secret::load(Path::new(&std::env::var("TESSERA_SECRET_FILE").unwrap())).unwrap();
    if std::env::var("TESSERA_TEST_CLIENT").is_ok() {
        // A driver that persists results and then dies without releasing them.
        let client = elastic::connect(&addr, tcp_options(secret)).unwrap();
        let mut g = Graph::new();
        let keys: Vec<Key> = (0..4u32).map(|i| Key::new("orphan", [i])).collect();
        for k in &keys {
            g.push(Task::new(k.clone(), "ramp").param(&(1000usize, 1.0f64)));
        }
        let held = client.persist(g, &keys).unwrap();
        held.wait().unwrap();
        std::mem::forget(held);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let mut opts = WorkerOptions::new(&addr, tcp_options(secret));
    opts.registry = common::registry();
    opts.worker.threads = Some(1);
    opts.drain_on_signal = true;
    if let Ok(l) = std::env::var("TESSERA_TEST_LIFETIME") {
        opts.lifetime = Some(Duration::from_secs_f64(l.parse().unwrap()));
    }
    let code = match elastic::run_worker(opts) {
        Ok(r) if r.exit_ok() => 0,
        Ok(r) => {
            eprintln!("worker ended: {:?}", r.exit);
            1
        }
        Err(e) => {
            eprintln!("worker error: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn tcp_options(secret: Secret) -> TcpOptions {
    let mut o = TcpOptions::new(secret);
    o.dead_after = Duration::from_secs(10);
    o.handshake_timeout = Duration::from_secs(5);
    o
}

/// A scheduler in this process and worker processes joining it.
struct Cluster {
    dir: PathBuf,
    secret: PathBuf,
    server: Option<elastic::Scheduler>,
    children: Vec<Child>,
}

impl Cluster {
    fn new(name: &str) -> Cluster {
        Cluster::with_dead_after(name, Duration::from_secs(10))
    }

    /// A cluster whose scheduler declares a peer lost after `dead_after` of silence.
    fn with_dead_after(name: &str, dead_after: Duration) -> Cluster {
        Cluster::with(name, dead_after, 3)
    }

    fn with(name: &str, dead_after: Duration, allowed_failures: u32) -> Cluster {
        let dir = std::env::temp_dir().join(format!("tessera-tcp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("runs")).unwrap();
        let secret = dir.join("secret");
        let s = Secret::load_or_create(&secret).unwrap();
        let mut tcp = tcp_options(s);
        tcp.dead_after = dead_after;
        let opts = SchedulerOptions {
            listen: "127.0.0.1:0".into(),
            registry: common::registry(),
            allowed_failures,
            ..SchedulerOptions::new(tcp)
        };
        let server = elastic::Scheduler::start(opts).unwrap();
        Cluster { dir, secret, server: Some(server), children: Vec::new() }
    }

    fn addr(&self) -> String {
        self.server.as_ref().unwrap().address().to_owned()
    }

    fn client(&self) -> &Client {
        self.server.as_ref().unwrap().client()
    }

    fn runs_dir(&self) -> String {
        self.dir.join("runs").to_string_lossy().into_owned()
    }

    /// Starts a worker process (optionally with a lifetime or another secret).
    fn spawn(&mut self, lifetime: Option<f64>, secret: Option<&Path>) -> usize {
        self.spawn_with(lifetime, secret, &[])
    }

    fn spawn_with(&mut self, lifetime: Option<f64>, secret: Option<&Path>, env: &[(&str, &str)]) -> usize {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["worker_process_entry", "--exact", "--nocapture", "--test-threads", "1"])
            .env(ENV_WORKER, self.addr())
            .env("TESSERA_SECRET_FILE", secret.unwrap_or(&self.secret))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(l) = lifetime {
            cmd.env("TESSERA_TEST_LIFETIME", l.to_string());
        }
        cmd.envs(env.iter().copied());
        self.children.push(cmd.spawn().unwrap());
        self.children.len() - 1
    }

    fn wait_workers(&self, n: usize) -> Vec<u32> {
        let w = self.client().wait_for_workers(n, Duration::from_secs(60)).unwrap();
        w.iter().map(|w| w.rank).collect()
    }

    /// Waits for worker process `i` to exit; returns its status code and stderr.
    fn wait_exit(&mut self, i: usize, limit: Duration) -> (Option<i32>, String) {
        let c = &mut self.children[i];
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return (st.code(), err);
            }
            assert!(start.elapsed() < limit, "worker process {i} did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, i: usize, sig: i32) {
        // SAFETY: signalling a child process of ours.
        unsafe { libc::kill(self.children[i].id() as i32, sig) };
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` tasks `name[i]` of the `record` kernel sleeping `ms`.
fn recorded(name: &str, n: u32, dir: &str, ms: u64) -> (Graph, Vec<Key>) {
    let mut g = Graph::new();
    let keys: Vec<Key> = (0..n).map(|i| Key::new(name, [i])).collect();
    for k in &keys {
        g.push(Task::new(k.clone(), "record").param(&(dir.to_string(), ms)));
    }
    (g, keys)
}

fn assert_each_ran_once(dir: &Path, name: &str, n: usize) {
    let runs = common::runs(dir, name);
    assert_eq!(runs.len(), n, "tasks of {name} that ran: {runs:?}");
    let twice: Vec<_> = runs.iter().filter(|(_, &c)| c != 1).collect();
    assert!(twice.is_empty(), "tasks of {name} run more than once: {twice:?}");
}

#[test]
fn shared_bodies_pass_with_worker_processes() {
    for n in [1, 3] {
        let mut c = Cluster::new(&format!("bodies{n}"));
        for _ in 0..n {
            c.spawn(None, None);
        }
        c.wait_workers(n);
        assert_eq!(c.client().transport(), "tcp");
        common::all(c.client());
    }
}

#[test]
fn shared_bodies_pass_through_a_remote_client() {
    let mut c = Cluster::new("remote");
    c.spawn(None, None);
    c.spawn(None, None);
    c.wait_workers(2);
    let remote = elastic::connect(&c.addr(), tcp_options(Secret::load(&c.secret).unwrap())).unwrap();
    assert!(remote.rank() > 2, "clients get ranks of their own");
    common::all(&remote);
    // Config::run connects the same way, and leaves the cluster running.
    let config = tessera::Config::builder()
        .scheduler(c.addr())
        .secret_file(c.secret.clone())
        .registry(common::registry())
        .build();
    let n = config.run(|client| Ok::<_, Error>(client.workers().len())).unwrap();
    assert_eq!(n, 2);
    assert_eq!(c.client().workers().len(), 2, "a client leaving stops nothing");
}

#[test]
fn shared_bodies_pass_with_in_process_workers() {
    let c = Cluster::new("threads");
    let secret = Secret::load(&c.secret).unwrap();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let mut opts = WorkerOptions::new(&c.addr(), tcp_options(secret.clone()));
            opts.registry = common::registry();
            opts.worker.threads = Some(2);
            std::thread::spawn(move || elastic::run_worker(opts))
        })
        .collect();
    c.wait_workers(2);
    assert_eq!(c.client().total_threads(), 4);
    common::all(c.client());
    drop(c);
    for t in threads {
        let report = t.join().unwrap().unwrap();
        assert!(report.exit_ok(), "{report:?}");
    }
}

#[test]
fn workers_with_a_wrong_or_no_secret_are_refused_and_run_nothing() {
    let mut c = Cluster::new("secret");
    let (g, keys) = recorded("never", 4, &c.runs_dir(), 0);
    let held = c.client().persist(g, &keys).unwrap();
    // A worker holding another secret.
    let wrong = c.dir.join("wrong");
    Secret::load_or_create(&wrong).unwrap();
    let i = c.spawn(None, Some(&wrong));
    let (code, err) = c.wait_exit(i, Duration::from_secs(30));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("wrong secret") && err.contains(&c.addr()), "{err}");
    // A worker with no secret at all (the library allows it only to test this).
    let mut none = tcp_options(Secret::generate().unwrap());
    none.secret = None;
    let err = elastic::run_worker(WorkerOptions::new(&c.addr(), none)).unwrap_err().to_string();
    assert!(err.contains("no secret presented"), "{err}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(c.client().workers().is_empty());
    assert!(common::runs(&c.dir.join("runs"), "never").is_empty(), "nothing may run");
    // The right secret gets the work done.
    c.spawn(None, None);
    held.wait().unwrap();
    assert_each_ran_once(&c.dir.join("runs"), "never", 4);
}

#[test]
fn a_worker_killed_mid_computation_loses_no_result() {
    let mut c = Cluster::new("kill");
    for _ in 0..3 {
        c.spawn(None, None);
    }
    c.wait_workers(3);
    let dir = c.runs_dir();
    let (mut g, keys) = recorded("k", 30, &dir, 60);
    let total = g.reduce("ksum", keys.clone(), 4, |k| Task::new(k, "sum").param(&0.0f64));
    let held = c.client().persist(g, &[total]).unwrap();
    // Kill one worker once some tasks have run (and while others run).
    let start = Instant::now();
    while common::runs(&c.dir.join("runs"), "k").len() < 8 {
        assert!(start.elapsed() < Duration::from_secs(30), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    c.signal(0, libc::SIGKILL);
    let out = held.gather().unwrap();
    assert_eq!(out[0].to_scalar(), Some(30.0));
    let runs = common::runs(&c.dir.join("runs"), "k");
    assert_eq!(runs.len(), 30, "every task ran");
    assert_eq!(c.client().workers().len(), 2, "the killed worker is gone");
    let (code, _) = c.wait_exit(0, Duration::from_secs(10));
    assert_eq!(code, None, "killed by a signal");
}

#[test]
fn a_lost_block_whose_inputs_were_released_is_recomputed_from_its_lineage() {
    let mut c = Cluster::new("lost");
    c.spawn(None, None);
    c.wait_workers(1);
    // a -> b on the only worker; `a` is released once `b` exists.
    let mut g = Graph::new();
    g.push(Task::new(Key::new("a", []), "ramp").param(&(1000usize, 1.0f64)));
    g.push(Task::new(Key::new("b", []), "sum").param(&0.0f64).inputs([Key::new("a", [])]));
    let held = c.client().persist(g, &[Key::new("b", [])]).unwrap();
    held.wait().unwrap();
    let before = c.client().state().unwrap();
    assert_eq!((before.in_memory, before.released), (1, 1), "b held, a kept as lineage only");
    c.spawn(None, None);
    let second = c.wait_workers(2)[1];
    c.signal(0, libc::SIGKILL);
    let (code, _) = c.wait_exit(0, Duration::from_secs(10));
    assert_ne!(code, Some(0));
    // b is computed again, from a computed again, on the worker that is left.
    let out = held.gather().unwrap();
    assert_eq!(out[0].to_scalar(), Some(499_500.0));
    assert_eq!(held.locations().unwrap(), vec![vec![second]]);
    let after = c.client().state().unwrap();
    assert_eq!((after.workers_lost, after.recomputed), (1, 2));
    drop(held);
    let state = c.client().state().unwrap();
    assert_eq!((state.tasks, state.in_memory), (0, 0), "the lineage goes with its output");
}

#[test]
fn a_task_that_kills_its_workers_fails_after_allowed_failures() {
    let mut c = Cluster::with("killer", Duration::from_secs(10), 2);
    for _ in 0..3 {
        c.spawn(None, None);
    }
    c.wait_workers(3);
    let mut g = Graph::new();
    g.push(Task::new(Key::new("killer", []), "die_always").param(&()));
    match c.client().compute(g, &[Key::new("killer", [])]) {
        Err(Error::TaskFailed { key, cause, .. }) => {
            assert_eq!(key, Key::new("killer", []));
            assert!(cause.contains("running on 2 workers that were lost"), "{cause}");
            assert!(cause.contains("--allowed-failures 2"), "{cause}");
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    // Two workers died for it; the third still serves.
    assert_eq!(c.client().workers().len(), 1);
    let mut g = Graph::new();
    g.push(Task::new(Key::new("after", []), "ramp").param(&(10usize, 1.0f64)));
    let out = c.client().compute(g, &[Key::new("after", [])]).unwrap();
    assert_eq!(out[0].as_f64().unwrap().iter().sum::<f64>(), 45.0);
}

#[test]
fn workers_joining_during_a_computation_get_work() {
    let mut c = Cluster::new("join");
    c.spawn(None, None);
    let first = c.wait_workers(1);
    let (g, keys) = recorded("j", 40, &c.runs_dir(), 100);
    let held = c.client().persist(g, &keys).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.spawn(None, None);
    c.spawn(None, None);
    let locations = held.locations().unwrap();
    let mut used: Vec<u32> = locations.iter().map(|l| l[0]).collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 2 && used.iter().any(|r| !first.contains(r)), "newcomers got no work: {used:?}");
    assert_each_ran_once(&c.dir.join("runs"), "j", 40);
}

#[test]
fn retiring_workers_hands_off_their_blocks_and_runs_nothing_twice() {
    let mut c = Cluster::new("retire");
    for _ in 0..3 {
        c.spawn(None, None);
    }
    let ranks = c.wait_workers(3);
    let dir = c.runs_dir();
    // Persisted blocks spread over all three workers.
    let mut g = Graph::new();
    let keys: Vec<Key> = (0..12u32).map(|i| Key::new("blk", [i])).collect();
    for (i, k) in keys.iter().enumerate() {
        g.push(Task::new(k.clone(), "ramp").param(&(50_000usize, i as f64)).on_rank(ranks[i % 3]));
    }
    let held = c.client().persist(g, &keys).unwrap();
    held.wait().unwrap();
    // A computation in flight while two workers drain.
    let (g, rkeys) = recorded("busy", 24, &dir, 50);
    let busy = c.client().persist(g, &rkeys).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let left = c.client().retire_workers(&ranks[1..]).unwrap();
    assert_eq!(left, ranks[1..].to_vec());
    assert_eq!(c.client().workers().iter().map(|w| w.rank).collect::<Vec<_>>(), vec![ranks[0]]);
    busy.wait().unwrap();
    assert_each_ran_once(&c.dir.join("runs"), "busy", 24);
    let locations = held.locations().unwrap();
    assert!(locations.iter().all(|l| l == &[ranks[0]]), "blocks moved to the last worker: {locations:?}");
    let out = held.gather().unwrap();
    for (i, b) in out.iter().enumerate() {
        let v = b.as_f64().unwrap();
        assert!(v.len() == 50_000 && v[7] == 7.0 * i as f64, "block {i} damaged");
    }
    let mut exited = 0;
    for i in 0..3 {
        if c.children[i].try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(300));
        }
        if let Some(st) = c.children[i].try_wait().unwrap() {
            assert!(st.success(), "a retired worker exits 0");
            exited += 1;
        }
    }
    assert_eq!(exited, 2);
    assert!(matches!(c.client().retire_workers(&[999]), Err(Error::UnknownWorker { rank: 999 })));
}

#[test]
fn lifetime_and_sigterm_drain_the_worker_before_it_exits() {
    let mut c = Cluster::new("lifetime");
    c.spawn(None, None);
    let stay = c.wait_workers(1)[0];
    let short = c.spawn(Some(3.0), None);
    let term = c.spawn(None, None);
    let ranks = c.wait_workers(3);
    let movers: Vec<u32> = ranks.iter().copied().filter(|&r| r != stay).collect();
    let mut g = Graph::new();
    let keys: Vec<Key> = (0..8u32).map(|i| Key::new("life", [i])).collect();
    for (i, k) in keys.iter().enumerate() {
        g.push(Task::new(k.clone(), "ramp").param(&(1000usize, 1.0f64)).on_rank(movers[i % 2]));
    }
    let held = c.client().persist(g, &keys).unwrap();
    held.wait().unwrap();
    c.signal(term, libc::SIGTERM);
    let (code, err) = c.wait_exit(term, Duration::from_secs(30));
    assert_eq!(code, Some(0), "SIGTERM: {err}");
    let (code, err) = c.wait_exit(short, Duration::from_secs(30));
    assert_eq!(code, Some(0), "lifetime: {err}");
    assert_eq!(c.client().workers().iter().map(|w| w.rank).collect::<Vec<_>>(), vec![stay]);
    assert!(held.locations().unwrap().iter().all(|l| l == &[stay]));
    let out = held.gather().unwrap();
    assert!(out.iter().all(|b| b.as_f64().unwrap().iter().sum::<f64>() == 499_500.0));
}

#[test]
fn a_hung_worker_is_declared_lost_and_its_tasks_run_elsewhere() {
    let mut c = Cluster::with_dead_after("hung", Duration::from_secs(3));
    c.spawn(None, None);
    c.spawn(None, None);
    c.wait_workers(2);
    let (g, keys) = recorded("h", 16, &c.runs_dir(), 100);
    let held = c.client().persist(g, &keys).unwrap();
    let start = Instant::now();
    while common::runs(&c.dir.join("runs"), "h").len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    c.signal(0, libc::SIGSTOP);
    held.wait().unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(20), "the stopped worker held things up for {took:?}");
    while c.client().workers().len() > 1 {
        assert!(start.elapsed() < Duration::from_secs(20), "the stopped worker was never declared lost");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(common::runs(&c.dir.join("runs"), "h").len(), 16);
    c.signal(0, libc::SIGKILL);
}

#[test]
fn a_worker_with_other_kernels_is_refused_naming_its_rank() {
    let c = Cluster::new("registry");
    // The `tessera` command registers only the built-in kernels; this
    // scheduler has the test kernels too.
    let o = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["worker", "--scheduler", &c.addr(), "--threads", "1"])
        .env("TESSERA_SECRET_FILE", &c.secret)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("registered different kernels") && err.contains("rank 1"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(c.client().workers().is_empty());
}

#[test]
fn results_of_a_client_that_dies_are_released() {
    let mut c = Cluster::new("client");
    c.spawn(None, None);
    c.wait_workers(1);
    let client = c.spawn_with(None, None, &[("TESSERA_TEST_CLIENT", "1")]);
    let start = Instant::now();
    while c.client().state().unwrap().in_memory < 4 {
        assert!(start.elapsed() < Duration::from_secs(30), "the client's results never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.signal(client, libc::SIGKILL);
    while c.client().state().unwrap().in_memory > 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "a dead client's results are still held");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.client().state().unwrap().tasks, 0);
}

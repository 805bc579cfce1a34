//! Elastic clusters across hosts: the `tessera` command on network
//! namespaces (`scripts/test-hosts.sh`), one per host, joined by a switch.
//! The scheduler listens on host 0's address, workers on hosts 1 to 3 each
//! listen on their own, and the client runs on host 4: every task, block and
//! heartbeat crosses a real network stack between distinct addresses.
//!
//! Needs root and iproute2 (`ip`). Without them each test says why it skips
//! and passes; as root, hosts that cannot be set up fail the test. The tests
//! take their turns (one cluster at a time): on a machine of two cores, two
//! clusters with short heartbeat timeouts would starve each other.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-hosts.sh");
const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");
/// The heartbeat timeout of every process, seconds: how long a silent peer
/// (here: one whose link is cut) stays a member.
const HEARTBEAT: u64 = 3;
/// Host 0 runs the scheduler, hosts 1..=3 the workers, host 4 the client.
const HOSTS: usize = 5;
const WORKERS: [usize; 3] = [1, 2, 3];
const CLIENT: usize = 4;
const EPS: f64 = f64::EPSILON;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Why namespaces cannot be made here, if they cannot.
fn can_make_hosts() -> Result<(), &'static str> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("test hosts are network namespaces, which need root");
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("test hosts need the `ip` command (iproute2), which is not installed");
    }
    Ok(())
}

/// The test hosts of one test: namespaces that are removed, with whatever
/// still runs on them, when this is dropped (a failed test included).
struct Hosts {
    prefix: String,
    dir: PathBuf,
}

impl Hosts {
    /// `None` (after saying why) where namespaces cannot be made: not root, or no `ip`.
    fn up(name: &str) -> Option<Hosts> {
        if let Err(why) = can_make_hosts() {
            eprintln!("skipped: {why}");
            return None;
        }
        let prefix = format!("tsh{}-{name}", std::process::id());
        let dir = std::env::temp_dir().join(format!("tessera-hosts-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // From here on, dropping it tears down whatever `up` made.
        let hosts = Hosts { prefix, dir };
        let o = hosts.script().args(["up", &HOSTS.to_string()]).output().unwrap();
        assert!(o.status.success(), "setting up the test hosts failed: {}", String::from_utf8_lossy(&o.stderr));
        Some(hosts)
    }

    fn script(&self) -> Command {
        let mut c = Command::new(SCRIPT);
        c.env("TESSERA_HOSTS", &self.prefix);
        c
    }

    /// Host `i`'s address.
    fn addr(&self, i: usize) -> String {
        let o = self.script().args(["addr", &i.to_string()]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_owned()
    }

    /// `tessera ARGS` on host `i` (`None`: on this machine, outside the
    /// hosts), as a user would run it: no log settings or cluster inherited.
    fn tessera(&self, i: Option<usize>, args: &[&str]) -> Command {
        let mut c = match i {
            Some(i) => {
                let mut c = self.script();
                c.args(["exec", &i.to_string(), TESSERA]);
                c
            }
            None => Command::new(TESSERA),
        };
        c.args(args)
            .env("HOME", &self.dir)
            .env("TESSERA_SECRET_FILE", self.dir.join("secret"))
            .env("TESSERA_HEARTBEAT_TIMEOUT", HEARTBEAT.to_string())
            .env_remove("TESSERA_SCHEDULER")
            .env_remove("TESSERA_SCHEDULER_FILE")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("RUST_LOG")
            .env_remove("OMPI_COMM_WORLD_SIZE")
            .env_remove("PMI_SIZE")
            .env_remove("PMIX_RANK")
            .stdin(Stdio::null());
        c
    }

    /// Starts `tessera ARGS` on host `i`, its stdout and stderr going to
    /// files `NAME.out` and `NAME.log`.
    fn spawn(&self, i: Option<usize>, name: &str, args: &[&str]) -> Child {
        let out = File::create(self.dir.join(format!("{name}.out"))).unwrap();
        let err = File::create(self.dir.join(format!("{name}.log"))).unwrap();
        self.tessera(i, args).stdout(out).stderr(err).spawn().unwrap()
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// Takes host `i`'s link down; what runs there keeps running.
    fn cut(&self, i: usize) {
        let o = self.script().args(["cut", &i.to_string()]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        match self.script().arg("down").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("tearing down the test hosts failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("tearing down the test hosts failed: {e}"),
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A scheduler on host 0 and a worker on each of hosts 1 to 3, named after its host.
struct Cluster {
    hosts: Hosts,
    addr: String,
    /// The scheduler, then the workers of `WORKERS` in order.
    procs: Vec<Child>,
}

impl Cluster {
    /// `worker_log`: the `--log` filter of the workers.
    fn start(hosts: Hosts, worker_log: &str) -> Cluster {
        let listen = format!("{}:0", hosts.addr(0));
        let scheduler = hosts.spawn(Some(0), "scheduler", &["scheduler", "--listen", &listen, "--json"]);
        let mut c = Cluster { hosts, addr: String::new(), procs: vec![scheduler] };
        let start = Instant::now();
        let listening = loop {
            if let Some(line) = c.hosts.read("scheduler.out").lines().next() {
                break serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            }
            assert!(
                c.procs[0].try_wait().unwrap().is_none(),
                "the scheduler exited: {}",
                c.hosts.read("scheduler.log")
            );
            assert!(start.elapsed() < Duration::from_secs(30), "the scheduler did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        };
        c.addr = listening["address"].as_str().unwrap().to_owned();
        assert!(c.addr.starts_with(&format!("{}:", c.hosts.addr(0))), "listens on host 0's address: {listening}");
        for i in WORKERS {
            let name = format!("h{i}");
            let args = ["--log", worker_log, "worker", "--scheduler", &c.addr, "--threads", "1", "--name", &name];
            let w = c.hosts.spawn(Some(i), &format!("worker-{i}"), &args);
            c.procs.push(w);
        }
        c
    }

    /// `tessera workers --json` from the client's host: (name, address) of each.
    fn workers(&self) -> Vec<(String, String)> {
        let o = self.hosts.tessera(Some(CLIENT), &["--scheduler", &self.addr, "workers", "--json"]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut list: Vec<(String, String)> = j["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["name"].as_str().unwrap().to_owned(), w["address"].as_str().unwrap_or("").to_owned()))
            .collect();
        list.sort();
        list
    }

    /// Waits until `n` workers take tasks; returns them.
    fn wait_workers(&self, n: usize) -> Vec<(String, String)> {
        let start = Instant::now();
        loop {
            let w = self.workers();
            if w.len() == n {
                return w;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "expected {n} workers, have {w:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a computing command on the client's host; its `--json` object.
    fn compute(&self, name: &str, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--scheduler", &self.addr];
        all.extend_from_slice(args);
        let mut child = self.hosts.spawn(Some(CLIENT), name, &all);
        let limit = Duration::from_secs(4 * HEARTBEAT + 20);
        self.finish(name, &mut child, limit, 3)
    }

    /// Waits for the client `name` (`limit` at most) and parses its `--json`
    /// line, which says it ran on `workers` workers over TCP.
    fn finish(&self, name: &str, child: &mut Child, limit: Duration, workers: u64) -> serde_json::Value {
        let Some(code) = wait(child, limit) else {
            panic!(
                "`{name}` did not finish within {limit:?}\n--- its log:\n{}\n--- the scheduler's log:\n{}",
                self.hosts.read(&format!("{name}.log")),
                self.hosts.read("scheduler.log")
            );
        };
        let log = self.hosts.read(&format!("{name}.log"));
        assert_eq!(
            code,
            Some(0),
            "`{name}` failed: {log}\n--- the scheduler's log:\n{}",
            self.hosts.read("scheduler.log")
        );
        let out = self.hosts.read(&format!("{name}.out"));
        let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!((j["transport"].as_str(), j["workers"].as_u64()), (Some("tcp"), Some(workers)), "{j}");
        j
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// Waits for `child` up to `limit`: `Some(exit code)`, or `None` if it still runs.
fn wait(child: &mut Child, limit: Duration) -> Option<Option<i32>> {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st.code());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The same command on a local cluster of three workers on this machine.
fn local(hosts: &Hosts, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--launch", "local", "--workers", "3"];
    all.extend_from_slice(args);
    let o = hosts.tessera(None, &all).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["transport"], "local", "{j}");
    j
}

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Singular values of an m x n matrix computed by the same graph: equal to
/// within rounding of a different summation order, 16 eps sqrt(m n) s_max.
fn assert_same_singular_values(got: &serde_json::Value, want: &serde_json::Value, m: usize, n: usize) {
    let (got, want) = (f64s(&got["s"]), f64s(&want["s"]));
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    assert!(want[0] > 0.0, "{want:?}");
    let tol = 16.0 * EPS * ((m * n) as f64).sqrt() * want[0];
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= tol, "s[{i}] = {g} across hosts, {w} locally (tolerance {tol:e})");
    }
}

const SVD: [usize; 2] = [24_000, 800];

fn svd_args() -> Vec<String> {
    let [m, n] = SVD;
    ["svd", &format!("--random={m}x{n}"), "--chunk-rows=2000", "--method=randomized", "--k=10", "--seed=7", "--json"]
        .map(str::to_owned)
        .to_vec()
}

/// Matmul and a randomized SVD over the hosts give what a local cluster
/// gives, with the workers at addresses of their own hosts.
#[test]
fn computations_across_hosts_equal_the_local_ones() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(hosts) = Hosts::up("a") else { return };
    let cluster = Cluster::start(hosts, "info");
    let workers = cluster.wait_workers(3);
    for (w, i) in workers.iter().zip(WORKERS) {
        let at = format!("{}:", cluster.hosts.addr(i));
        assert!(w.0 == format!("h{i}") && w.1.starts_with(&at), "worker h{i} listens on its own host's address: {w:?}");
    }
    let log = cluster.hosts.read("scheduler.log");
    for i in WORKERS {
        assert!(log.contains(&format!("peer={}:", cluster.hosts.addr(i))), "a worker connected from host {i}: {log}");
    }

    let [m, k, n] = [600usize, 500, 400];
    let mm = ["matmul", &format!("--random={m}x{k}x{n}"), "--chunks=150x100", "--seed=3", "--json"];
    let got = cluster.compute("matmul", &mm);
    let want = local(&cluster.hosts, &mm);
    let (g, w) = (got["norm"].as_f64().unwrap(), want["norm"].as_f64().unwrap());
    // |C|_F of a product summed in another order: within eps (k + sqrt(m n)) |C|_F.
    let tol = 4.0 * EPS * (k as f64 + ((m * n) as f64).sqrt()) * w;
    assert!(w > 0.0 && (g - w).abs() <= tol, "|C|_F = {g} across hosts, {w} locally (tolerance {tol:e})");

    let args = svd_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let got = cluster.compute("svd", &args);
    let want = local(&cluster.hosts, &args);
    assert_same_singular_values(&got, &want, SVD[0], SVD[1]);
    assert_eq!(got["s"].as_array().unwrap().len(), 10);
    assert_eq!((got["workers_lost"].as_u64(), got["recomputed"].as_u64()), (Some(0), Some(0)), "{got}");

    // The clients came from their own host too.
    let log = cluster.hosts.read("scheduler.log");
    let from = format!("peer={}:", cluster.hosts.addr(CLIENT));
    assert!(log.lines().any(|l| l.contains("a client connected") && l.contains(&from)), "{log}");
}

/// One worker's link goes down mid-computation (the process keeps running):
/// the scheduler declares it lost after the heartbeat timeout, the
/// computation completes with the result of a local run, and the cut-off
/// worker gives up on the scheduler, naming its address.
#[test]
fn a_worker_cut_off_mid_computation_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(hosts) = Hosts::up("b") else { return };
    // Each task a worker runs is a DEBUG line of its log: how the test knows the computation is under way.
    let mut cluster = Cluster::start(hosts, "info,tessera_runtime::worker=debug");
    cluster.wait_workers(3);
    let args = svd_args();
    let mut all = vec!["--scheduler", &cluster.addr];
    all.extend(args.iter().map(String::as_str));
    let mut client = cluster.hosts.spawn(Some(CLIENT), "svd", &all);

    // Host 2's worker has run a share of its tasks (and holds blocks others need).
    const CUT: usize = 2;
    let ran = |log: &str| log.lines().filter(|l| l.contains("DEBUG") && l.contains("ran rank=")).count();
    let start = Instant::now();
    while ran(&cluster.hosts.read(&format!("worker-{CUT}.log"))) < 20 {
        assert!(
            client.try_wait().unwrap().is_none(),
            "the computation ended before the cut: {}",
            cluster.hosts.read("svd.log")
        );
        assert!(start.elapsed() < Duration::from_secs(30), "host {CUT}'s worker runs no task");
        std::thread::sleep(Duration::from_millis(5));
    }
    cluster.hosts.cut(CUT);
    let cut = Instant::now();
    assert!(client.try_wait().unwrap().is_none(), "the computation ended before the cut");

    // The worker itself: alive but alone, it gives up within a few heartbeat timeouts.
    let w = &mut cluster.procs[WORKERS.iter().position(|&i| i == CUT).unwrap() + 1];
    let left = Duration::from_secs(3 * HEARTBEAT + 5).saturating_sub(cut.elapsed());
    let code =
        wait(w, left).unwrap_or_else(|| panic!("the cut-off worker still runs {:?} after the cut", cut.elapsed()));
    let log = cluster.hosts.read(&format!("worker-{CUT}.log"));
    assert!(code.is_some_and(|c| c != 0), "the cut-off worker exits non-zero, got {code:?}: {log}");
    assert!(
        log.contains(&format!("scheduler at {}", cluster.addr)),
        "its message names the scheduler's address: {log}"
    );

    let got = cluster.finish("svd", &mut client, Duration::from_secs(2 * HEARTBEAT + 20), 2);
    let want = local(&cluster.hosts, &all[2..]);
    assert_same_singular_values(&got, &want, SVD[0], SVD[1]);
    // What the cut-off worker held was computed again.
    assert_eq!(got["workers_lost"].as_u64(), Some(1), "{got}");
    assert!(got["recomputed"].as_u64().is_some_and(|n| n > 0), "{got}");
    let survivors: Vec<String> = cluster.workers().into_iter().map(|w| w.0).collect();
    assert_eq!(survivors, ["h1", "h3"], "the cut-off worker is no longer a member");
}

#[test]
fn the_script_refuses_bad_input_naming_it() {
    let script = |args: &[&str], prefix: &str| {
        let o = Command::new(SCRIPT).args(args).env("TESSERA_HOSTS", prefix).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    // These need no root: the input is checked first.
    let (code, err) = script(&["addr", "x"], "tsh");
    assert_eq!(code, Some(2));
    assert!(err.contains("`x` is not a host number"), "{err}");
    let (code, err) = script(&["list"], "a b");
    assert_eq!(code, Some(2));
    assert!(err.contains("TESSERA_HOSTS=`a b`"), "{err}");
    let (code, err) = script(&["frobnicate"], "tsh");
    assert_eq!(code, Some(2));
    assert!(err.contains("usage:") && err.contains("up N"), "{err}");
    assert_eq!(script(&["addr", "3"], "tsh"), (Some(0), String::new()));
    if can_make_hosts().is_ok() {
        let (code, err) = script(&["up", "0"], "tsh-bad");
        assert_eq!(code, Some(2));
        assert!(err.contains("`0` is not a number of hosts"), "{err}");
        let (code, err) = script(&["exec", "3", "true"], &format!("tsh{}-none", std::process::id()));
        assert_eq!(code, Some(2));
        assert!(err.contains("no host 3") && err.contains("up N"), "{err}");
    }
}

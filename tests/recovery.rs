//! Workers lost mid-computation on an elastic cluster, as a user meets it:
//! `tessera scheduler`, four `tessera worker` processes, and `tessera svd`
//! and `tessera matmul` run against them. In each run one worker is
//! SIGKILLed at a chosen moment (the sketch of a randomized SVD, its power
//! iterations, the leaves and the reduction tree of a TSQR, the HDF5 writes
//! of its U, the middle of a matmul); every run must finish with the results
//! of a run without a kill, and its `--json` must say that one worker was
//! lost and that tasks ran again.
//!
//! The moment is found in the workers' debug logs, which name each task as
//! it starts (`running`) and ends (`ran`): the worker that starts a task of
//! the phase asked for is killed at once, holding blocks of the computation.
//! Which task it started, whether it died inside it (its log ends there) and
//! how far the computation had come are printed with each run (`--nocapture`
//! shows them); where the phase's tasks are long enough, dying inside the
//! task is asserted too.
//!
//! The runs share the machine's cores, so the tests take turns.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::arrays::TempDir;

const WORKERS: usize = 4;
/// Seconds of silence after which the scheduler declares a peer lost (a
/// SIGKILLed worker's connection closes at once; this bounds a hung one).
const HEARTBEAT: &str = "2";
/// The longest one command may take, recovery included.
const LIMIT: Duration = Duration::from_secs(60);

/// One cluster at a time: they share the machine's cores.
static TURN: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- what the workers' logs say ---------------------------------------------

/// One task starting or ending on a worker, from its debug log.
#[derive(Clone, Debug)]
struct TaskLine {
    /// Index of the worker process in [`Cluster::workers`].
    worker: usize,
    started: bool,
    key: String,
    /// The kernel (known from the `running` line; filled in for `ran`).
    kernel: String,
}

/// `... DEBUG running rank=3 task=tsqr-3.node[1, 0] kernel="linalg.qr_node"`
/// or `... DEBUG ran rank=3 task=tsqr-3.node[1, 0] micros=81234`.
fn parse(worker: usize, line: &str) -> Option<TaskLine> {
    let rest = line.split_once(" DEBUG ")?.1;
    let started = match rest.split_once(' ')?.0 {
        "running" => true,
        "ran" => false,
        _ => return None,
    };
    let after = rest.split_once(" task=")?.1;
    let end = [" kernel=", " micros="].iter().filter_map(|m| after.find(m)).min().unwrap_or(after.len());
    let kernel = after.split_once(" kernel=\"").and_then(|(_, k)| k.split_once('"')).map(|(k, _)| k.to_owned());
    Some(TaskLine { worker, started, key: after[..end].to_owned(), kernel: kernel.unwrap_or_default() })
}

/// Every task line of one command so far.
#[derive(Default)]
struct History {
    started: Vec<TaskLine>,
    ran: Vec<TaskLine>,
    kernel_of: HashMap<String, String>,
}

impl History {
    fn add(&mut self, mut t: TaskLine) {
        if t.started {
            self.kernel_of.insert(t.key.clone(), t.kernel.clone());
            self.started.push(t);
        } else {
            t.kernel = self.kernel_of.get(&t.key).cloned().unwrap_or_default();
            self.ran.push(t);
        }
    }

    /// Tasks of `kernel` that have ended.
    fn ran(&self, kernel: &str) -> usize {
        self.ran.iter().filter(|t| t.kernel == kernel).count()
    }

    /// Tasks of `kernel` that have ended on `worker`.
    fn ran_on(&self, worker: usize, kernel: &str) -> usize {
        self.ran.iter().filter(|t| t.worker == worker && t.kernel == kernel).count()
    }

    /// How many tasks of each kernel have ended, e.g. `linalg.gemm 12, linalg.random 8`.
    fn summary(&self) -> String {
        let mut n: std::collections::BTreeMap<&str, usize> = Default::default();
        for t in &self.ran {
            *n.entry(t.kernel.as_str()).or_default() += 1;
        }
        n.iter().map(|(k, c)| format!("{k} {c}")).collect::<Vec<_>>().join(", ")
    }
}

/// When to kill: the worker that starts a task for which `when` holds.
struct Phase {
    name: &'static str,
    when: fn(&History, &TaskLine) -> bool,
    /// The phase's tasks take long enough that the victim must be caught
    /// inside the one it started (short ones, like HDF5 writes, may end first).
    inside: bool,
}

/// What a kill hit.
#[derive(Debug)]
struct Kill {
    phase: &'static str,
    worker: usize,
    /// The task the victim had just started, and its kernel.
    key: String,
    kernel: String,
    /// Whether the victim died inside that task (its log ends with it started).
    inside: bool,
    /// Tasks that had ended, per kernel, when it was killed.
    progress: String,
    /// Tasks the victim had completed (the blocks it held, unless released).
    victim_ran: usize,
}

// ---- the cluster ------------------------------------------------------------

struct Worker {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    killed: bool,
}

/// A scheduler and its worker processes, killed (and the directory removed)
/// however the test ends.
struct Cluster {
    dir: TempDir,
    scheduler: Child,
    workers: Vec<Worker>,
    tx: Sender<TaskLine>,
    rx: Receiver<TaskLine>,
    /// Given to each `tessera worker` (e.g. its transport).
    worker_args: Vec<String>,
}

/// A command's child, killed if the test fails while it runs.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one command printed, and the kill made during it.
struct Run {
    json: serde_json::Value,
    stderr: String,
    kill: Option<Kill>,
}

impl Cluster {
    fn start(tag: &str) -> Cluster {
        Cluster::start_with(tag, &[])
    }

    fn start_with(tag: &str, worker_args: &[&str]) -> Cluster {
        let dir = TempDir::new(&format!("recovery-{tag}"));
        let mut cmd = bare(&dir);
        // Its decisions, kept for the report of a run that does not finish.
        let log = std::fs::File::create(dir.0.join("scheduler.log")).expect("create scheduler.log");
        cmd.args(["--log", "info,tessera_runtime::scheduler=debug", "scheduler", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(log);
        let mut scheduler = cmd.spawn().expect("start tessera scheduler");
        let mut out = BufReader::new(scheduler.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert!(first.contains("listening on 127.0.0.1:"), "{first}");
        // The rest of what it prints, read so that it never writes to a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let (tx, rx) = mpsc::channel();
        let worker_args = worker_args.iter().map(|a| a.to_string()).collect();
        let mut c = Cluster { dir, scheduler, workers: Vec::new(), tx, rx, worker_args };
        for _ in 0..WORKERS {
            c.add_worker();
        }
        c.wait_workers(WORKERS);
        c
    }

    fn tessera(&self) -> Command {
        bare(&self.dir)
    }

    fn add_worker(&mut self) {
        let i = self.workers.len();
        let mut child = self
            .tessera()
            .args(["--log", "warn,tessera_runtime::worker=debug", "worker", "--threads", "1"])
            .args(["--name", &format!("w{i}")])
            .args(&self.worker_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tessera worker");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (out, tx, lines) = (child.stderr.take().unwrap(), self.tx.clone(), log.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(t) = parse(i, &line) {
                    let _ = tx.send(t);
                }
                lines.lock().unwrap().push(line);
            }
        });
        self.workers.push(Worker { child, log, reader: Some(reader), killed: false });
    }

    /// Waits until the scheduler lists `n` workers.
    fn wait_workers(&self, n: usize) {
        let start = Instant::now();
        loop {
            // Bounded: a scheduler that stopped serving must fail the test, not hang it.
            let mut cmd = self.tessera();
            cmd.args(["workers", "--json"]).stdout(Stdio::piped()).stderr(Stdio::null());
            let mut child = Guard(cmd.spawn().unwrap());
            let mut out = child.0.stdout.take().unwrap();
            let out = std::thread::spawn(move || std::io::read_to_string(&mut out).unwrap_or_default());
            let asked = Instant::now();
            while child.0.try_wait().unwrap().is_none() {
                assert!(asked.elapsed() < Duration::from_secs(20), "`tessera workers` got no answer in 20 s");
                std::thread::sleep(Duration::from_millis(10));
            }
            let listed = serde_json::from_str::<serde_json::Value>(&out.join().unwrap())
                .ok()
                .and_then(|j| j["workers"].as_array().map(Vec::len));
            if listed == Some(n) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{listed:?} workers listed, waiting for {n}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Back to [`WORKERS`] live workers after a kill.
    fn replace_lost(&mut self) {
        let live = self.workers.iter().filter(|w| !w.killed).count();
        for _ in live..WORKERS {
            self.add_worker();
        }
        self.wait_workers(WORKERS);
    }

    /// The end of the scheduler's log and of each worker's, for a failure report.
    fn logs(&self) -> String {
        fn tail(lines: &[String], n: usize) -> String {
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        let sched = std::fs::read_to_string(self.dir.0.join("scheduler.log")).unwrap_or_default();
        let sched: Vec<String> = sched.lines().map(str::to_owned).collect();
        let mut out = format!("---- scheduler (last 200 lines)\n{}\n", tail(&sched, 200));
        for (i, w) in self.workers.iter().enumerate() {
            let log = w.log.lock().unwrap_or_else(|e| e.into_inner());
            out += &format!(
                "---- worker w{i}{} (last 40 lines)\n{}\n",
                if w.killed { ", killed" } else { "" },
                tail(&log, 40)
            );
        }
        out
    }

    fn kill_worker(&mut self, i: usize) {
        // SAFETY: signalling a child process of ours.
        unsafe { libc::kill(self.workers[i].child.id() as i32, libc::SIGKILL) };
        self.workers[i].killed = true;
    }

    /// Runs `tessera ARGS --json` on the cluster; with a phase, kills the
    /// first worker that starts a task of it.
    fn run(&mut self, args: &[&str], phase: Option<&Phase>) -> Run {
        while self.rx.try_recv().is_ok() {}
        let start = Instant::now();
        let mut cmd = self.tessera();
        cmd.arg("-q").args(args).arg("--json").stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = Guard(cmd.spawn().expect("run tessera"));
        let (mut out, mut err) = (child.0.stdout.take().unwrap(), child.0.stderr.take().unwrap());
        let out = std::thread::spawn(move || std::io::read_to_string(&mut out).unwrap_or_default());
        let err = std::thread::spawn(move || std::io::read_to_string(&mut err).unwrap_or_default());
        let mut history = History::default();
        let mut kill: Option<Kill> = None;
        let status = loop {
            if let Some(st) = child.0.try_wait().unwrap() {
                break Some(st);
            }
            if start.elapsed() > LIMIT {
                break None;
            }
            let t = match self.rx.recv_timeout(Duration::from_millis(20)) {
                Ok(t) => t,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => unreachable!("the cluster holds a sender"),
            };
            history.add(t.clone());
            let Some(p) = phase else { continue };
            if kill.is_none() && t.started && !self.workers[t.worker].killed && (p.when)(&history, &t) {
                self.kill_worker(t.worker);
                kill = Some(Kill {
                    phase: p.name,
                    worker: t.worker,
                    key: t.key.clone(),
                    kernel: t.kernel.clone(),
                    inside: false,
                    progress: history.summary(),
                    victim_ran: history.ran.iter().filter(|r| r.worker == t.worker).count(),
                });
            }
        };
        drop(child);
        let seconds = start.elapsed().as_secs_f64();
        let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
        if let Some(k) = &mut kill {
            // The victim's log is complete once its pipe closes.
            let w = &mut self.workers[k.worker];
            let _ = w.child.wait();
            if let Some(r) = w.reader.take() {
                r.join().unwrap();
            }
            let log = w.log.lock().unwrap();
            let last = log.iter().rev().find_map(|l| parse(k.worker, l));
            k.inside = last.as_ref().is_some_and(|l| l.started && l.key == k.key);
            let died = match &last {
                _ if k.inside => "inside it".to_owned(),
                Some(l) if l.started => format!("after it, inside {} ({})", l.key, l.kernel),
                _ => "after it, between tasks".to_owned(),
            };
            eprintln!(
                "{}: killed worker w{} as it started {} ({}), {died}; it had completed {} tasks; tasks ended by then: {}",
                k.phase, k.worker, k.key, k.kernel, k.victim_ran, k.progress
            );
        }
        let Some(status) = status else {
            panic!(
                "tessera {args:?} did not finish within {LIMIT:?} (kill: {kill:?}); tasks ended: {}\n{stderr}\n{}",
                history.summary(),
                self.logs()
            )
        };
        if let Some(p) = phase {
            let k = kill.as_ref().unwrap_or_else(|| {
                panic!("{}: the phase never came; tasks ended: {}\n{stderr}", p.name, history.summary())
            });
            assert!(!p.inside || k.inside, "{}: the victim was not inside the task it started: {k:?}", p.name);
        }
        eprintln!("tessera {}: {seconds:.2} s, {}", args.join(" "), if status.success() { "ok" } else { "failed" });
        assert!(status.success(), "tessera {args:?} failed ({status}); kill: {kill:?}\n{stderr}\n{}", self.logs());
        let last = stdout.lines().last().unwrap_or_default();
        let json = serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
        Run { json, stderr, kill }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
        let _ = self.scheduler.kill();
        let _ = self.scheduler.wait();
    }
}

/// The `tessera` command with nothing inherited that would change where it
/// runs, the cluster's files in `dir` and a short heartbeat timeout.
fn bare(dir: &TempDir) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.env_remove("RUST_LOG")
        .env_remove("OMPI_COMM_WORLD_SIZE")
        .env_remove("PMI_SIZE")
        .env_remove("PMIX_RANK")
        .env_remove("TESSERA_SCHEDULER")
        .env("HOME", &dir.0)
        .env_remove("XDG_CONFIG_HOME")
        .env("TESSERA_SECRET_FILE", dir.0.join("secret"))
        .args(["--heartbeat-timeout", HEARTBEAT, "--scheduler-file"])
        .arg(PathBuf::from(&dir.0).join("scheduler.json"))
        .stdin(Stdio::null());
    c
}

// ---- checks -----------------------------------------------------------------

/// A run without a kill lost nothing and recomputed nothing.
fn assert_nothing_lost(r: &Run) {
    assert_eq!(r.json["workers_lost"].as_u64(), Some(0), "workers_lost: {}", r.json);
    assert_eq!(r.json["recomputed"].as_u64(), Some(0), "recomputed: {}", r.json);
    assert!(!r.stderr.contains("recovered from"), "{}", r.stderr);
}

/// A run with one kill lost that worker, ran tasks again, and says so.
fn assert_recovered(r: &Run) {
    let k = r.kill.as_ref().expect("a kill");
    assert_eq!(r.json["workers_lost"].as_u64(), Some(1), "{}: workers_lost: {}", k.phase, r.json);
    let recomputed = r.json["recomputed"].as_u64();
    assert!(recomputed.is_some_and(|n| n > 0), "{}: recomputed: {}", k.phase, r.json);
    let line = format!("recovered from 1 lost worker: {} tasks recomputed", recomputed.unwrap_or(0));
    assert!(r.stderr.contains(&line), "{}: the summary lacks {line:?}: {}", k.phase, r.stderr);
    eprintln!("{}: {} tasks recomputed", k.phase, recomputed.unwrap_or(0));
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Singular values equal to `want`'s within `eps * sqrt(m)` of the largest.
fn assert_same_values(what: &str, got: &[f64], want: &[f64], m: usize) {
    assert_eq!(got.len(), want.len(), "{what}");
    let tol = 16.0 * f64::EPSILON * (m as f64).sqrt() * want[0];
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}: s[{i}] = {g}, without a kill {w} (tolerance {tol:e})");
    }
}

// ---- randomized SVD ---------------------------------------------------------

const RSVD: &[&str] =
    &["svd", "--random", "32000x800", "--chunk-rows", "2000", "--method", "randomized", "--k", "8", "--seed", "3"];
const RSVD_M: usize = 32_000;

/// The first products of A's blocks with the test matrix, on a worker that
/// holds some of A's blocks. (These thin products take about a millisecond:
/// the victim may finish one before it dies.)
const SKETCH: Phase = Phase {
    name: "randomized SVD, sketch Y = A Omega",
    when: |h, t| t.kernel == "linalg.gemm" && h.ran("linalg.qr_root") == 0 && h.ran_on(t.worker, "linalg.random") > 0,
    inside: false,
};

/// A product of the second power iteration (three TSQRs done).
const POWER: Phase = Phase {
    name: "randomized SVD, second power iteration",
    when: |h, t| t.kernel == "linalg.gemm" && h.ran("linalg.qr_root") >= 3,
    inside: false,
};

#[test]
fn randomized_svd_survives_a_worker_killed_in_the_sketch_and_in_a_power_iteration() {
    let _turn = turn();
    let mut c = Cluster::start("rsvd");
    let base = c.run(RSVD, None);
    assert_nothing_lost(&base);
    let want = floats(&base.json["s"]);
    assert_eq!(want.len(), 8);
    for phase in [&SKETCH, &POWER] {
        let r = c.run(RSVD, Some(phase));
        assert_same_values(phase.name, &floats(&r.json["s"]), &want, RSVD_M);
        assert_recovered(&r);
        c.replace_lost();
    }
}

/// The same over UCX: blocks move on the UCP plane, which must report the
/// dead peer's blocks missing as the TCP plane does.
#[cfg(feature = "ucx")]
#[test]
fn randomized_svd_over_ucx_survives_a_worker_killed_in_a_power_iteration() {
    let _turn = turn();
    let mut c = Cluster::start_with("rsvd-ucx", &["--transport", "ucx"]);
    let log = std::fs::read_to_string(c.dir.0.join("scheduler.log")).unwrap();
    let joined: Vec<&str> = log.lines().filter(|l| l.contains("a worker joined")).collect();
    assert_eq!(joined.len(), WORKERS, "{log}");
    assert!(joined.iter().all(|l| l.contains("ucx=true")), "every worker joins with its UCX address: {log}");
    let base = c.run(RSVD, None);
    assert_nothing_lost(&base);
    let r = c.run(RSVD, Some(&POWER));
    assert_same_values(POWER.name, &floats(&r.json["s"]), &floats(&base.json["s"]), RSVD_M);
    assert_recovered(&r);
}

// ---- matmul -----------------------------------------------------------------

const MATMUL: &[&str] = &["matmul", "--random", "2400x2400x2400", "--chunks", "800"];
const MATMUL_K: usize = 2400;
const MATMUL_GEMMS: usize = 27;

/// Half of the block products done.
const MIDWAY: Phase = Phase {
    name: "matmul, half of the block products done",
    when: |h, t| t.kernel == "linalg.gemm" && h.ran("linalg.gemm") >= MATMUL_GEMMS / 2,
    inside: true,
};

#[test]
fn matmul_survives_a_worker_killed_midway() {
    let _turn = turn();
    let mut c = Cluster::start("matmul");
    let (base_out, kill_out) = (output(&c, "c0.h5"), output(&c, "c1.h5"));
    let base = c.run(&matmul_args(base_out.as_deref()), None);
    assert_nothing_lost(&base);
    let r = c.run(&matmul_args(kill_out.as_deref()), Some(&MIDWAY));
    assert_same_product(&base, base_out.as_deref(), &r, kill_out.as_deref());
    assert_recovered(&r);
}

fn matmul_args(out: Option<&str>) -> Vec<&str> {
    let mut a = MATMUL.to_vec();
    if let Some(o) = out {
        a.extend(["-o", o]);
    }
    a
}

/// With HDF5, C is written and compared whole.
#[cfg(feature = "hdf5")]
fn output(c: &Cluster, name: &str) -> Option<String> {
    Some(format!("{}:/C", c.dir.path(name)))
}

/// Without HDF5, the command reports C's norm, which is compared.
#[cfg(not(feature = "hdf5"))]
fn output(_: &Cluster, _: &str) -> Option<String> {
    None
}

/// Block products of length k: `eps * sqrt(k)` of the largest element (or of the norm).
fn matmul_tolerance() -> f64 {
    16.0 * f64::EPSILON * (MATMUL_K as f64).sqrt()
}

#[cfg(feature = "hdf5")]
fn assert_same_product(_: &Run, base_out: Option<&str>, _: &Run, out: Option<&str>) {
    use tessera::linalg::hdf5::h5lib;
    let read = |spec: Option<&str>| {
        let path = spec.and_then(|s| s.strip_suffix(":/C")).expect("an output file");
        h5lib::File::open(path).unwrap().dataset("C").unwrap().read_2d::<f64>().unwrap()
    };
    let (want, got) = (read(base_out), read(out));
    assert_eq!(want.shape(), got.shape());
    let scale = want.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    let worst = want.iter().zip(&got).fold(0.0f64, |a, (w, g)| a.max((w - g).abs()));
    let tol = matmul_tolerance() * scale;
    assert!(worst <= tol, "{}: |C - C0|_max = {worst:e} > {tol:e}", MIDWAY.name);
}

#[cfg(not(feature = "hdf5"))]
fn assert_same_product(base: &Run, _: Option<&str>, r: &Run, _: Option<&str>) {
    let (want, got) = (base.json["norm"].as_f64().unwrap(), r.json["norm"].as_f64().unwrap());
    let tol = matmul_tolerance() * want;
    assert!((got - want).abs() <= tol, "{}: |C|_F = {got}, without a kill {want}", MIDWAY.name);
}

// ---- TSQR SVD written to HDF5 -----------------------------------------------

#[cfg(feature = "hdf5")]
mod tsqr {
    use super::*;
    use tessera::linalg::hdf5::h5lib;

    const M: usize = 32_768;
    const N: usize = 256;
    /// 64 row blocks: 8 nodes in the tree's first level, one above them.
    const ROWS: &str = "512";
    const BLOCKS: usize = M / 512;

    fn args(out: &str) -> Vec<String> {
        let shape = format!("{M}x{N}");
        ["svd", "--random", &shape, "--chunk-rows", ROWS, "--method", "tsqr", "--seed", "5", "-o", out]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// A leaf's QR, a quarter of the leaves done.
    const LEAVES: Phase = Phase {
        name: "TSQR, leaf QRs",
        when: |h, t| t.kernel == "linalg.qr_leaf" && h.ran("linalg.qr_leaf") >= BLOCKS / 4,
        inside: true,
    };

    /// A node of the reduction tree once every leaf is done (nodes start as
    /// soon as their 8 leaves are: this is the tree proper), before its root.
    const TREE: Phase = Phase {
        name: "TSQR, reduction tree",
        when: |h, t| t.kernel == "linalg.qr_node" && h.ran("linalg.qr_leaf") >= BLOCKS && h.ran("linalg.qr_root") == 0,
        inside: true,
    };

    /// An HDF5 write, with some of U's blocks written and others not.
    const WRITES: Phase = Phase {
        name: "TSQR, HDF5 writes",
        when: |h, t| {
            t.kernel == "linalg.h5_write"
                && h.ran("linalg.h5_write") >= BLOCKS / 8
                && h.ran("linalg.h5_write") < BLOCKS / 2
        },
        inside: false,
    };

    struct Factors {
        u: tessera::linalg::ndarray::Array2<f64>,
        s: Vec<f64>,
        vt: tessera::linalg::ndarray::Array2<f64>,
    }

    fn read(path: &str) -> Factors {
        let f = h5lib::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let u = f.dataset("U").unwrap().read_2d::<f64>().unwrap();
        let s = f.dataset("S").unwrap().read_1d::<f64>().unwrap().to_vec();
        let vt = f.dataset("VT").unwrap().read_2d::<f64>().unwrap();
        assert_eq!((u.shape(), s.len(), vt.shape()), (&[M, N][..], N, &[N, N][..]), "{path}");
        Factors { u, s, vt }
    }

    /// U and Vᵀ equal `want`'s up to the sign of each singular pair, and U's
    /// columns orthonormal, within `eps * sqrt(m n)`.
    fn assert_same_factors(what: &str, got: &Factors, want: &Factors) {
        assert_same_values(what, &got.s, &want.s, M);
        let tol = 16.0 * f64::EPSILON * ((M * N) as f64).sqrt();
        for j in 0..N {
            let (g, w) = (got.u.column(j), want.u.column(j));
            let sign = if g.dot(&w) < 0.0 { -1.0 } else { 1.0 };
            let du = g.iter().zip(w).fold(0.0f64, |a, (x, y)| a.max((sign * x - y).abs()));
            assert!(du <= tol, "{what}: U column {j} differs by {du:e} (tolerance {tol:e})");
            let (g, w) = (got.vt.row(j), want.vt.row(j));
            let dv = g.iter().zip(w).fold(0.0f64, |a, (x, y)| a.max((sign * x - y).abs()));
            assert!(dv <= tol, "{what}: Vt row {j} differs by {dv:e} (tolerance {tol:e})");
        }
        let utu = got.u.t().dot(&got.u);
        let off = utu.indexed_iter().fold(0.0f64, |a, ((i, j), x)| a.max((x - if i == j { 1.0 } else { 0.0 }).abs()));
        assert!(off <= tol, "{what}: |U^T U - I|_max = {off:e} (tolerance {tol:e})");
    }

    #[test]
    fn tsqr_svd_written_to_hdf5_survives_a_worker_killed_in_the_leaves_the_tree_and_the_writes() {
        let _turn = turn();
        let mut c = Cluster::start("tsqr");
        let out = c.dir.path("base.h5");
        let base = c.run(&args(&out).iter().map(String::as_str).collect::<Vec<_>>(), None);
        assert_nothing_lost(&base);
        let want = read(&out);
        assert_same_factors("without a kill", &want, &want);
        assert_same_values("S in the file and in --json", &want.s, &floats(&base.json["s"]), M);
        for (i, phase) in [&WRITES, &TREE, &LEAVES].into_iter().enumerate() {
            let out = c.dir.path(&format!("kill{i}.h5"));
            let r = c.run(&args(&out).iter().map(String::as_str).collect::<Vec<_>>(), Some(phase));
            assert_same_factors(phase.name, &read(&out), &want);
            assert_recovered(&r);
            c.replace_lost();
        }
        // Only the finished files: no temporary file left by a lost writer.
        let files: Vec<String> = c
            .dir
            .files()
            .into_iter()
            .filter(|f| !["secret", "scheduler.json", "scheduler.log"].contains(&f.as_str()))
            .collect();
        assert_eq!(files, ["base.h5", "kill0.h5", "kill1.h5", "kill2.h5"]);
    }
}

// ---- no-kill runs of the other commands report the keys too -------------------

#[test]
fn qr_on_an_elastic_cluster_reports_nothing_lost() {
    let _turn = turn();
    let mut c = Cluster::start("qr");
    let r = c.run(&["qr", "--random", "4000x16", "--chunk-rows", "1000"], None);
    assert_nothing_lost(&r);
    assert_eq!(r.json["r_diagonal"].as_array().map(Vec::len), Some(16), "{}", r.json);
}

//! `tessera jobqueue` against real batch systems on this machine: a local
//! Slurm (several nodes on one host, with accounting) and a local SGE, as
//! `scripts/local-slurm.sh` and `scripts/local-sge.sh` bring them up.
//!
//! Gated: the Slurm cases run when `TESSERA_TEST_SLURM=1`, the SGE cases
//! when `TESSERA_TEST_SGE=1` (`scripts/test.sh` starts both and sets these);
//! otherwise each prints why it is skipped. The MPI cases need the `mpi`
//! build (`cargo test --features mpi`), since the job runs this `tessera`.
//!
//! No libtest harness: every case submits real jobs and mostly waits, so all
//! run at once in threads, each printing its result, then a summary line.
//!
//! The elastic cases (`scale`, `adapt`) start a real `tessera scheduler` on
//! 127.0.0.1 and let `tessera jobqueue` submit real worker jobs to it; the
//! workers log every task they run (`RUST_LOG=...worker=debug` in the job),
//! which is how the cases count that every task ran exactly once.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

type Case = (&'static str, Option<&'static str>, fn() -> Result<(), String>);

fn main() {
    let slurm = gate("TESSERA_TEST_SLURM", "a local Slurm (scripts/local-slurm.sh start)");
    let sge = gate("TESSERA_TEST_SGE", "a local SGE (scripts/local-sge.sh start)");
    let mpi = tessera::HAS_MPI.then_some(()).ok_or("built without the `mpi` feature (cargo test --features mpi)");
    let cases: Vec<Case> = vec![
        ("slurm: submit, status, wait for a completed job", slurm, slurm_completed),
        ("slurm: a failing job's exit code is wait's", slurm, slurm_failed),
        ("slurm: cancel a running job; list; sacct agrees", slurm, slurm_cancel_and_list),
        ("slurm: unknown ids and a rejected job", slurm, slurm_errors),
        ("slurm: a job killed at its walltime is a timeout", slurm, slurm_timeout),
        ("slurm: MPI job of 4 ranks on 2 nodes via srun --mpi=pmix", slurm.or(mpi.err()), slurm_mpi),
        ("slurm: scale 4 -> 1 while a graph runs, pending jobs cancelled first, scale 0", slurm, slurm_scale),
        ("slurm: adapt follows the backlog between --min 1 and --max 3", slurm, slurm_adapt),
        ("sge: submit, wait, failure via qacct", sge, sge_completed_and_failed),
        ("sge: cancel, h_rt timeout, unknown id, rejected job", sge, sge_cancel_timeout_errors),
        ("sge: MPI job of 2 ranks via mpirun in -pe mpi", sge.or(mpi.err()), sge_mpi),
    ];
    // Like libtest: words on the command line pick the cases whose names hold one.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let mut handles = Vec::new();
    let mut skipped = 0;
    for (name, skip, f) in cases {
        if !filter.is_empty() && !filter.iter().any(|w| name.contains(w.as_str())) {
            continue;
        }
        if let Some(why) = skip {
            println!("test {name} ... SKIPPED: {why}");
            skipped += 1;
            continue;
        }
        handles.push((name, std::thread::spawn(move || (f(), Instant::now()))));
    }
    let start = Instant::now();
    let (mut passed, mut failed) = (0, 0);
    for (name, h) in handles {
        match h.join() {
            Ok((Ok(()), at)) => {
                passed += 1;
                println!("test {name} ... ok ({:.1} s)", at.duration_since(start).as_secs_f64());
            }
            Ok((Err(e), _)) => {
                failed += 1;
                println!("test {name} ... FAILED\n{e}\n");
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED (panicked)");
            }
        }
    }
    println!("\nbatch: {passed} passed, {failed} failed, {skipped} skipped");
    std::process::exit(i32::from(failed > 0));
}

/// `None` when the variable says the system is up; else why the cases skip.
fn gate(var: &str, what: &str) -> Option<&'static str> {
    if std::env::var(var).as_deref() == Ok("1") {
        None
    } else {
        Some(Box::leak(format!("{var} is not 1: needs {what}; scripts/test.sh does both").into_boxed_str()))
    }
}

fn logs(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-batch-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("XDG_CONFIG_HOME", logs("no-config"))
        .output()
        .expect("run tessera")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn check(cond: bool, what: &str, o: &Output) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(format!("{what}\n{}", text(o)))
    }
}

fn json(o: &Output) -> Result<serde_json::Value, String> {
    serde_json::from_slice(&o.stdout).map_err(|e| format!("not JSON ({e})\n{}", text(o)))
}

/// Submits with `--json`; returns (job id, output file).
fn submit(system: &str, name: &str, args: &[&str]) -> Result<(String, PathBuf), String> {
    let dir = logs(name);
    let mut a = vec!["jobqueue", "--json", "submit", "--system", system, "--log-dir", dir.to_str().unwrap()];
    a.extend(args);
    let o = tessera(&a);
    check(o.status.success(), &format!("submit {name}"), &o)?;
    let j = json(&o)?;
    let id = j["job_id"].as_str().ok_or("no job_id")?.to_string();
    let out = PathBuf::from(j["output"].as_str().ok_or("no output file")?);
    Ok((id, out))
}

/// `wait --json`: (exit code of tessera, status object).
fn wait(system: &str, id: &str) -> Result<(i32, serde_json::Value), String> {
    let o = tessera(&["jobqueue", "--json", "wait", "--system", system, "--poll", "0.5", "--timeout", "300", id]);
    let j = json(&o)?;
    Ok((o.status.code().unwrap_or(-1), j["status"].clone()))
}

fn status(system: &str, id: &str) -> Result<serde_json::Value, String> {
    let o = tessera(&["jobqueue", "--json", "status", "--system", system, id]);
    check(o.status.success(), "status", &o)?;
    Ok(json(&o)?[0].clone())
}

fn read(path: &PathBuf) -> Result<String, String> {
    // The output file can land a moment after the job is reported done.
    for _ in 0..50 {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return Ok(s);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("no output in {}", path.display()))
}

/// Polls `status` until `pred` holds (at most 120 s).
fn until(system: &str, id: &str, pred: impl Fn(&serde_json::Value) -> bool) -> Result<serde_json::Value, String> {
    let t = Instant::now();
    loop {
        let s = status(system, id)?;
        if pred(&s) {
            return Ok(s);
        }
        if t.elapsed() > Duration::from_secs(120) {
            return Err(format!("job {id} never reached the expected state: {s}"));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn expect(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

// ---- Slurm --------------------------------------------------------------------

fn slurm_completed() -> Result<(), String> {
    let (id, out) = submit("slurm", "s-ok", &["--launcher", "none", "--", "tessera", "info"])?;
    let s = status("slurm", &id)?;
    expect(["pending", "running", "completed"].contains(&s["state"].as_str().unwrap_or("")), || s.to_string())?;
    let (code, s) = wait("slurm", &id)?;
    expect(code == 0 && s["state"] == "completed" && s["exit_code"] == 0, || format!("{code} {s}"))?;
    let log = read(&out)?;
    expect(log.contains("tessera 0.1.0") && log.contains("cores:"), || log)
}

fn slurm_failed() -> Result<(), String> {
    let (id, _) = submit("slurm", "s-fail", &["--launcher", "none", "--", "bash", "-c", "exit 3"])?;
    let (code, s) = wait("slurm", &id)?;
    expect(code == 3 && s["state"] == "failed" && s["exit_code"] == 3, || format!("{code} {s}"))?;
    let o = tessera(&["jobqueue", "status", "--system", "slurm", &id]);
    check(String::from_utf8_lossy(&o.stdout).contains(&format!("{id}  failed (exit 3)")), "status text", &o)
}

fn slurm_cancel_and_list() -> Result<(), String> {
    let (id, _) =
        submit("slurm", "s-cancel", &["--launcher", "none", "--job-name", "tessera-sleeper", "--", "sleep", "300"])?;
    until("slurm", &id, |s| s["state"] == "running")?;
    let o = tessera(&["jobqueue", "--json", "list", "--system", "slurm"]);
    check(o.status.success(), "list", &o)?;
    let listed = json(&o)?;
    let mine = listed.as_array().into_iter().flatten().find(|j| j["job_id"] == id.as_str()).cloned();
    expect(mine.as_ref().is_some_and(|j| j["name"] == "tessera-sleeper" && j["state"] == "running"), || {
        format!("job {id} not listed as running: {listed}")
    })?;
    let o = tessera(&["jobqueue", "cancel", "--system", "slurm", &id]);
    check(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("cancelled (was running)"), "cancel", &o)?;
    let (code, s) = wait("slurm", &id)?;
    expect(code == 143 && s["state"] == "cancelled", || format!("{code} {s}"))?;
    // Cancelling again cancels nothing and says so.
    let o = tessera(&["jobqueue", "cancel", "--system", "slurm", &id]);
    check(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("had already ended (cancelled)"),
        "cancel again",
        &o,
    )?;
    // Accounting (what status falls back to once slurmctld forgets the job) agrees.
    let t = Instant::now();
    loop {
        let acct =
            Command::new("sacct").args(["-j", &id, "-X", "-n", "-P", "-o", "JobID,State,ExitCode"]).output().unwrap();
        let rows = tessera::jobqueue::parse::parse_sacct(&String::from_utf8_lossy(&acct.stdout));
        if let Some(s) = tessera::jobqueue::parse::status_from_sacct(&id, &rows) {
            if s.state == tessera::jobqueue::JobState::Cancelled {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(30) {
                return Err(format!("sacct says {s:?}"));
            }
        } else if t.elapsed() > Duration::from_secs(30) {
            return Err(format!("sacct has no record of job {id}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn slurm_timeout() -> Result<(), String> {
    // Slurm rounds the limit up to whole minutes: killed after about 60 s.
    let (id, _) =
        submit("slurm", "s-timeout", &["--launcher", "none", "--walltime", "00:00:30", "--", "sleep", "300"])?;
    let (code, s) = wait("slurm", &id)?;
    expect(code == 124 && s["state"] == "timeout", || format!("{code} {s}"))
}

fn slurm_errors() -> Result<(), String> {
    refuses("slurm", "nosuchpart", "invalid partition specified: nosuchpart")
}

/// An id the system does not know is an error for status, cancel (where
/// `scancel` itself would exit 0) and wait; a job the system rejects shows
/// the system's own message.
fn refuses(system: &str, bad_queue: &str, says: &str) -> Result<(), String> {
    for cmd in ["status", "cancel", "wait"] {
        let o = tessera(&["jobqueue", cmd, "--system", system, "987654"]);
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        check(o.status.code() == Some(1) && e.contains(&format!("{system} knows no job `987654`")), cmd, &o)?;
    }
    let dir = logs(&format!("{system}-rejected"));
    let dir = dir.to_str().unwrap();
    let o = tessera(&["jobqueue", "submit", "--system", system, "--queue", bad_queue, "--log-dir", dir, "--", "true"]);
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    check(
        o.status.code() == Some(1) && e.contains(&format!("{system} rejected the job")) && e.contains(says),
        "rejected",
        &o,
    )
}

fn slurm_mpi() -> Result<(), String> {
    // The test cluster's "nodes" share one host (and hostname): Open MPI's
    // shared-memory segments, named by host and local rank, would collide
    // between them, so ranks talk over TCP here. Real nodes need no such line.
    let (id, out) = submit(
        "slurm",
        "s-mpi",
        &[
            "--nodes",
            "2",
            "--tasks-per-node",
            "2",
            "--mpi",
            "pmix",
            "--walltime",
            "00:05:00",
            "--env",
            "OMPI_MCA_btl=self,tcp",
            "--",
            "tessera",
            "demo",
        ],
    )?;
    let (code, s) = wait("slurm", &id)?;
    let log = read(&out).unwrap_or_default();
    expect(code == 0 && s["state"] == "completed", || format!("{code} {s}\n{log}"))?;
    // Rank 0 schedules; ranks 1..3 on both nodes work, over MPI.
    expect(log.contains("over the mpi transport") && log.contains("result checked"), || log.clone())?;
    let script = std::fs::read_dir(logs("s-mpi"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.path().extension().is_some_and(|x| x == "sh"));
    let script = std::fs::read_to_string(script.ok_or("no script written")?.path()).unwrap_or_default();
    expect(script.contains("\nsrun --mpi=pmix ") && script.contains("#SBATCH --nodes=2\n"), || script)
}

// ---- SGE ----------------------------------------------------------------------

fn sge_completed_and_failed() -> Result<(), String> {
    let (ok, out) = submit("sge", "g-ok", &["--launcher", "none", "--", "tessera", "info"])?;
    let (fail, _) = submit("sge", "g-fail", &["--launcher", "none", "--", "bash", "-c", "echo failing; exit 3"])?;
    let (code, s) = wait("sge", &ok)?;
    expect(code == 0 && s["state"] == "completed" && s["source"] == "qacct", || format!("{code} {s}"))?;
    let log = read(&out)?;
    expect(log.contains("tessera 0.1.0"), || log)?;
    let (code, s) = wait("sge", &fail)?;
    expect(code == 3 && s["state"] == "failed" && s["exit_code"] == 3, || format!("{code} {s}"))
}

fn sge_cancel_timeout_errors() -> Result<(), String> {
    let (sleeper, _) = submit("sge", "g-cancel", &["--launcher", "none", "--", "sleep", "300"])?;
    let (late, _) =
        submit("sge", "g-timeout", &["--launcher", "none", "--walltime", "00:00:05", "--", "sleep", "300"])?;
    until("sge", &sleeper, |s| s["state"] == "running")?;
    let o = tessera(&["jobqueue", "cancel", "--system", "sge", &sleeper]);
    check(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("cancelled (was running)"), "cancel", &o)?;
    let (code, s) = wait("sge", &sleeper)?;
    expect(code == 143 && s["state"] == "cancelled", || format!("{code} {s}"))?;
    let (code, s) = wait("sge", &late)?;
    expect(code == 124 && s["state"] == "timeout", || format!("{code} {s}"))?;
    refuses("sge", "nosuch.q", "Unable to run job")
}

fn sge_mpi() -> Result<(), String> {
    // SGE jobs do not inherit the submitter's environment: pass what Open MPI needs as root.
    let (id, out) = submit(
        "sge",
        "g-mpi",
        &[
            "--tasks-per-node",
            "2",
            "--parallel-env",
            "mpi",
            "--walltime",
            "00:05:00",
            "--env",
            "OMPI_ALLOW_RUN_AS_ROOT=1",
            "--env",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
            "--",
            "tessera",
            "demo",
        ],
    )?;
    let (code, s) = wait("sge", &id)?;
    let log = read(&out).unwrap_or_default();
    expect(code == 0 && s["state"] == "completed", || format!("{code} {s}\n{log}"))?;
    expect(log.contains("over the mpi transport") && log.contains("result checked"), || log)
}

// ---- elastic workers: scale and adapt -----------------------------------------

/// Runs `tessera` with `args`, killed after `limit`.
fn tessera_for(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("XDG_CONFIG_HOME", logs("no-config"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tessera");
    let t = Instant::now();
    while child.try_wait().ok().flatten().is_none() && t.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().expect("tessera's output")
}

/// A `tessera scheduler` on 127.0.0.1 with its own secret and scheduler
/// file; stopped (SIGTERM, then killed) when dropped.
struct Scheduler {
    child: Child,
    dir: PathBuf,
    address: String,
}

impl Scheduler {
    fn start(dir: &std::path::Path) -> Result<Scheduler, String> {
        let file = dir.join("scheduler.json");
        let _ = std::fs::remove_file(&file);
        let child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["scheduler", "--listen", "127.0.0.1:0"])
            .env("TESSERA_SECRET_FILE", dir.join("secret"))
            .env("TESSERA_SCHEDULER_FILE", &file)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("scheduler.log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot start tessera scheduler: {e}"))?;
        let mut s = Scheduler { child, dir: dir.to_path_buf(), address: String::new() };
        let t = Instant::now();
        while s.address.is_empty() {
            if let Ok(j) = std::fs::read_to_string(&file).map(|t| serde_json::from_str::<serde_json::Value>(&t)) {
                s.address = j.ok().and_then(|j| j["address"].as_str().map(str::to_string)).unwrap_or_default();
            }
            if t.elapsed() > Duration::from_secs(30) {
                return Err("the scheduler wrote no scheduler file within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(s)
    }

    fn file(&self) -> String {
        self.dir.join("scheduler.json").to_string_lossy().into_owned()
    }

    fn client(&self) -> Result<tessera::runtime::launch::elastic::RemoteClient, String> {
        use tessera::runtime::launch::elastic;
        use tessera::runtime::transport::{secret::Secret, tcp::TcpOptions};
        let secret = Secret::load(&self.dir.join("secret")).map_err(|e| e.to_string())?;
        elastic::connect(&self.address, TcpOptions::new(secret)).map_err(|e| e.to_string())
    }

    /// `tessera jobqueue --json scale N` for this scheduler, worker jobs of 1
    /// core whose workers log every task they run.
    fn scale(&self, n: u32, extra: &[&str]) -> Result<serde_json::Value, String> {
        let log_dir = self.dir.to_string_lossy().into_owned();
        let n = n.to_string();
        let file = self.file();
        let mut args = vec!["--scheduler-file", &file, "jobqueue", "--json", "scale", &n];
        args.extend(["--system", "slurm", "--cores-per-task", "1", "--walltime", "00:10:00", "--log-dir", &log_dir]);
        args.extend(["--env", "RUST_LOG=info,tessera_runtime::worker=debug", "--retire-timeout", "60"]);
        args.extend(extra);
        let o = tessera_for(&args, Duration::from_secs(240));
        check(o.status.success(), &format!("scale {n}"), &o)?;
        json(&o)
    }

    /// Names of the workers the scheduler lists.
    fn workers(&self) -> Result<Vec<String>, String> {
        let o = tessera_for(&["--scheduler-file", &self.file(), "workers", "--json"], Duration::from_secs(60));
        check(o.status.success(), "tessera workers", &o)?;
        let line = String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or_default().to_string();
        let j: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
        let mut names: Vec<String> = j["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w["name"].as_str().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: signalling a child process of ours.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(40) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string).or_else(|| x["job_id"].as_str().map(str::to_string)))
        .collect();
    ids.sort();
    ids
}

/// Every task of `tessera::bench::naps("", n, _)` ran exactly once, over all worker jobs.
fn each_ran_once(s: &Scheduler, n: u32) -> Result<(), String> {
    let runs = tessera::bench::task_runs(&s.dir).map_err(|e| e.to_string())?;
    tessera::bench::naps_ran_once(&runs, "", n)
}

/// Gathers the sum (with a time limit) and checks it.
fn gather_naps(held: tessera::Persisted, total: f64) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(held.gather().map_err(|e| e.to_string()));
    });
    let blocks = rx.recv_timeout(Duration::from_secs(120)).map_err(|_| "the graph did not finish in 120 s")??;
    let tot = blocks[0].to_scalar();
    expect(tot == Some(total), || format!("tot = {tot:?}, expected {total}"))
}

fn slurm_scale() -> Result<(), String> {
    let dir = logs("s-scale");
    let s = Scheduler::start(&dir)?;
    // Up: 4 jobs, each a worker that joins, named after its job.
    let up = s.scale(4, &["--wait-ready", "180"])?;
    expect(up["submitted"] == 4 && up["joined"] == 4, || format!("scale 4: {up}"))?;
    let four = ids(&up["jobs"]);
    expect(s.workers()? == four, || format!("workers {:?}, jobs {four:?}", s.workers()))?;
    // A graph runs; after a quarter of it, down to 1 worker.
    let client = s.client()?;
    let n = 120;
    let (g, tot, total) = tessera::bench::naps("", n, 50);
    let held = client.persist(g, &[tot]).map_err(|e| e.to_string())?;
    let t = Instant::now();
    while client.state().map_err(|e| e.to_string())?.backlog() > 2 * n as usize * 3 / 4 {
        expect(t.elapsed() < Duration::from_secs(60), || "the graph made no progress".into())?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let down = s.scale(1, &[])?;
    let left = ids(&down["jobs"]);
    expect(ids(&down["retired"]).len() == 3 && left.len() == 1 && down["cancelled"] == serde_json::json!([]), || {
        format!("scale 1: {down}")
    })?;
    expect(s.workers()? == left, || format!("after scale 1: workers {:?}, job {left:?}", s.workers()))?;
    gather_naps(held, total)?;
    // Pending jobs go first: two jobs held back by --begin, then scale 1 again.
    let more = s.scale(3, &["--directive=--begin=now+600"])?;
    let added: Vec<String> = ids(&more["jobs"]).into_iter().filter(|j| !left.contains(j)).collect();
    expect(more["submitted"] == 2 && added.len() == 2, || format!("scale 3: {more}"))?;
    let back = s.scale(1, &[])?;
    expect(ids(&back["cancelled"]) == added && back["retired"] == serde_json::json!([]), || {
        format!("scale 1: {back}")
    })?;
    expect(s.workers()? == left, || format!("the running worker was kept: {:?}", s.workers()))?;
    // Zero: every job gone; the retired ones ended by themselves, the pending ones were cancelled.
    drop(client);
    let zero = s.scale(0, &[])?;
    expect(zero["jobs"] == serde_json::json!([]) && ids(&zero["retired"]) == left, || format!("scale 0: {zero}"))?;
    for id in four.iter() {
        let st = status("slurm", id)?;
        expect(st["state"] == "completed", || format!("retired job {id}: {st}"))?;
    }
    for id in &added {
        let st = status("slurm", id)?;
        expect(st["state"] == "cancelled", || format!("pending job {id}: {st}"))?;
    }
    expect(s.workers()?.is_empty(), || "workers remain".into())?;
    each_ran_once(&s, n)
}

fn slurm_adapt() -> Result<(), String> {
    let dir = logs("s-adapt");
    let s = Scheduler::start(&dir)?;
    let log_dir = dir.to_string_lossy().into_owned();
    let file = s.file();
    let args = [
        "--scheduler-file",
        &file,
        "jobqueue",
        "--json",
        "adapt",
        "--min",
        "1",
        "--max",
        "3",
        "--interval",
        "1",
        "--tasks-per-worker",
        "10",
        "--down-after",
        "4",
        "--cooldown",
        "8",
        "--duration",
        "150",
        "--system",
        "slurm",
        "--cores-per-task",
        "1",
        "--walltime",
        "00:10:00",
        "--log-dir",
        &log_dir,
        "--env",
        "RUST_LOG=info,tessera_runtime::worker=debug",
    ];
    let mut adapt = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(dir.join("adapt.jsonl")).map_err(|e| e.to_string())?)
        .stderr(std::fs::File::create(dir.join("adapt.err")).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = (|| {
        let client = s.client()?;
        // --min 1: one worker without any backlog.
        client.wait_for_workers(1, Duration::from_secs(120)).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_secs(2));
        expect(s.workers()?.len() == 1, || format!("min 1 but workers {:?}", s.workers()))?;
        // 60 naps of 150 ms (backlog 121 tasks): 3 workers (--max), then back to 1.
        let n = 60;
        let (g, tot, total) = tessera::bench::naps("", n, 150);
        let held = client.persist(g, &[tot]).map_err(|e| e.to_string())?;
        client.wait_for_workers(3, Duration::from_secs(120)).map_err(|e| e.to_string())?;
        gather_naps(held, total)?;
        let t = Instant::now();
        while s.workers()?.len() > 1 {
            expect(t.elapsed() < Duration::from_secs(60), || "adapt did not scale down to --min 1".into())?;
            std::thread::sleep(Duration::from_millis(500));
        }
        each_ran_once(&s, n)
    })();
    // SAFETY: signalling a child process of ours.
    unsafe { libc::kill(adapt.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    while adapt.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = adapt.kill();
    let code = adapt.wait().map(|st| st.code()).unwrap_or(None);
    let lines = std::fs::read_to_string(dir.join("adapt.jsonl")).unwrap_or_default();
    let err = std::fs::read_to_string(dir.join("adapt.err")).unwrap_or_default();
    let zero = s.scale(0, &[]);
    result.map_err(|e| format!("{e}\nadapt said:\n{lines}{err}"))?;
    zero?;
    expect(code == Some(0), || format!("adapt exited {code:?}: {err}"))?;
    // What it decided: up to 1, up to 3, down to 1; never above --max, no flapping.
    let steps: Vec<serde_json::Value> = lines.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let moves: Vec<(u64, u64)> = steps
        .iter()
        .filter(|s| {
            s["plan"]["submit"].as_u64().unwrap_or(0) > 0
                || !ids(&s["plan"]["retire"]).is_empty()
                || !ids(&s["plan"]["cancel"]).is_empty()
        })
        .map(|s| (s["capacity"].as_u64().unwrap_or(99), s["target"].as_u64().unwrap_or(99)))
        .collect();
    // Up to --min, up to --max at once, then only down (in one step, or two
    // when the tail of the graph still wanted 2 during the quiet window).
    let downs = moves.get(2..).unwrap_or_default();
    expect(
        moves.len() >= 3
            && moves[..2] == [(0, 1), (1, 3)]
            && downs.iter().all(|&(c, t)| t < c)
            && downs.windows(2).all(|w| w[1].0 == w[0].1)
            && downs.last().is_some_and(|&(_, t)| t == 1),
        || format!("adapt's moves (capacity, target): {moves:?}\n{lines}"),
    )?;
    expect(steps.last().is_some_and(|l| l["stopped"] == "signal"), || format!("last line: {lines}"))
}

//! Real `mpirun` runs (feature `mpi`; a test without the libtest harness).
//!
//! Run with no arguments, this binary is the **parent**: it starts every case
//! below as its own `mpirun -n N ...` child (MPI can be initialised once per
//! process), with a hard timeout, and checks the exit status and output.
//! Run as `--scenario NAME` (by mpirun), it is the **child**: one rank of
//! that scenario.

mod common;
#[path = "mpi/spmd.rs"]
mod spmd;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tessera::{Config, Graph, Key, Task, WorkerSettings};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--scenario") {
        let name = args.get(i + 1).expect("--scenario NAME");
        std::process::exit(child(name));
    }
    std::process::exit(parent());
}

// ---- child: one rank of a scenario -------------------------------------------

/// The test kernels; blocks over UCX when `TESSERA_TRANSPORT=ucx`.
fn config() -> Config {
    let transport = std::env::var("TESSERA_TRANSPORT").map_or(Default::default(), |t| t.parse().unwrap());
    Config::builder().registry(common::registry()).worker(WorkerSettings { transport, ..Default::default() }).build()
}

fn child(name: &str) -> i32 {
    let result: anyhow::Result<()> = match name {
        "bodies" => config().run(|client| {
            common::all(client);
            println!("bodies ok on {} workers over {}", client.workers().len(), client.transport());
            Ok(())
        }),
        "arrays" => config().run(|client| {
            common::arrays::all(client);
            #[cfg(feature = "hdf5")]
            common::arrays::hdf5_files(client);
            println!("arrays ok on {} workers over {}", client.workers().len(), client.transport());
            Ok(())
        }),
        "driver_error" => config().run(|_| -> anyhow::Result<()> { anyhow::bail!("driver gave up on purpose") }),
        "driver_panic" => config().run(|_| -> anyhow::Result<()> { panic!("driver bug on purpose") }),
        "kill_worker" => config().run(|client| {
            let victim = client.workers().iter().map(|w| w.rank).max().unwrap();
            let mut g = Graph::new();
            for i in 0..8 {
                g.push(Task::new(Key::new("slow", [i]), "sleep").param(&300u64));
            }
            g.push(Task::new(Key::new("die", []), "die_on").param(&victim).on_rank(victim));
            let keys: Vec<Key> = (0..8).map(|i| Key::new("slow", [i])).chain([Key::new("die", [])]).collect();
            client.compute(g, &keys)?;
            anyhow::bail!("the computation finished although rank {victim} was killed")
        }),
        "stop_worker" => {
            let mut config = config();
            config.heartbeat_timeout = std::time::Duration::from_secs(3);
            config.run(|client| {
                let victim = client.workers().iter().map(|w| w.rank).max().unwrap();
                let mut g = Graph::new();
                g.push(Task::new(Key::new("hang", []), "stop_on").param(&victim).on_rank(victim));
                client.compute(g, &[Key::new("hang", [])])?;
                anyhow::bail!("the computation finished although rank {victim} was stopped")
            })
        }
        "worker_error" => config().run(|client| {
            let victim = client.workers().iter().map(|w| w.rank).max().unwrap();
            let mut g = Graph::new();
            g.push(Task::new(Key::new("bad", []), "fail").param(&"broken on purpose".to_string()).on_rank(victim));
            match client.compute(g, &[Key::new("bad", [])]) {
                Err(tessera::Error::TaskFailed { rank, .. }) if rank == victim => {}
                other => anyhow::bail!("expected task bad to fail on rank {victim}, got {other:?}"),
            }
            // The worker rank's own error reached the scheduler, once.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let errors = client.state()?.errors;
                if let Some((rank, line)) = errors.iter().find(|(r, _)| *r == victim) {
                    anyhow::ensure!(line.contains("broken on purpose"), "forwarded: {line}");
                    anyhow::ensure!(errors.len() == 1, "{errors:?}");
                    println!("first error of rank {rank} forwarded: {line}");
                    return Ok(());
                }
                anyhow::ensure!(std::time::Instant::now() < deadline, "no error forwarded: {errors:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }),
        "spmd" => spmd::scenario(),
        "registry_mismatch" => {
            let mut config = config();
            let last = std::env::var("OMPI_COMM_WORLD_SIZE").or_else(|_| std::env::var("PMI_SIZE")).unwrap();
            let me = std::env::var("OMPI_COMM_WORLD_RANK").or_else(|_| std::env::var("PMI_RANK")).unwrap();
            if me.parse::<u32>().unwrap() + 1 == last.parse::<u32>().unwrap() {
                config.registry.register_raw("only_here", |_, _, _| Ok(tessera::Block::empty()));
            }
            config.run(|_| Ok(()))
        }
        other => {
            eprintln!("unknown scenario {other}");
            return 2;
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

// ---- parent: start each case under mpirun ------------------------------------

struct Case {
    name: String,
    ranks: u32,
    program: String,
    args: Vec<String>,
    ok: bool,
    contains: Vec<String>,
    limit: Duration,
    env: Vec<(String, String)>,
    /// Checks what the run left behind (files), after it succeeded.
    post: Option<Box<dyn Fn() -> Result<(), String>>>,
    /// `--json`: every line on stdout is a JSON value, and there is one.
    json: bool,
}

fn case(name: &str, ranks: u32, program: &str, args: &[&str], ok: bool, contains: &[&str]) -> Case {
    Case {
        name: name.into(),
        ranks,
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ok,
        contains: contains.iter().map(|s| s.to_string()).collect(),
        limit: Duration::from_secs(90),
        env: Vec::new(),
        post: None,
        json: args.contains(&"--json"),
    }
}

fn example(name: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples").join(name);
    dir.to_string_lossy().into_owned()
}

fn parent() -> i32 {
    let me = std::env::current_exe().unwrap().to_string_lossy().into_owned();
    let tessera = env!("CARGO_BIN_EXE_tessera");
    let s = |n: &str| vec!["--scenario".to_string(), n.to_string()];
    let mut cases = Vec::new();
    for n in 1..=4 {
        let a = s("bodies");
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        cases.push(case(&format!("bodies -n {n}"), n, &me, &a, true, &["bodies ok"]));
    }
    let scen = |name: &str, n: u32, ok: bool, contains: &[&str]| {
        let a = s(name);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        case(name, n, &me, &a, ok, contains)
    };
    cases.push(scen("driver_error", 3, false, &["driver gave up on purpose"]));
    cases.push(scen("driver_panic", 3, false, &["driver bug on purpose"]));
    cases.push(scen("kill_worker", 3, false, &["rank 2"]));
    cases.push(scen("stop_worker", 3, false, &["worker rank 2 was lost: no message for"]));
    cases.push(scen("registry_mismatch", 3, false, &["rank 2 registered different kernels"]));
    cases.push(scen("worker_error", 3, true, &["first error of rank 2 forwarded: task bad failed"]));
    observe_case(&mut cases, tessera);
    cases.push(case(
        "tessera --scheduler-works no -n 1",
        1,
        tessera,
        &["--scheduler-works", "no", "demo"],
        false,
        &["start at least 2 ranks"],
    ));
    cases.push(case("example run -n 1", 1, &example("run"), &[], true, &["on 1 workers"]));
    cases.push(case("example run -n 3", 3, &example("run"), &[], true, &["on 2 workers"]));
    cases.push(case(
        "example embed_mpi -n 3",
        3,
        &example("embed_mpi"),
        &[],
        true,
        &["world: sum 1..=100 = 5050", "half 0", "half 1", "rank 2: MPI still usable"],
    ));
    cases.push(case(
        "example embed_mpi -n 4",
        4,
        &example("embed_mpi"),
        &[],
        true,
        &["world: sum 1..=100 = 5050", "rank 3: MPI still usable"],
    ));
    // Rank-local data: every rank hands in its part (tests/mpi/spmd.rs).
    for n in 1..=4 {
        let mut c = scen("spmd", n, true, &["spmd ok on rank 0", "svd, qr, randomized svd and f32 ok", "matmul"]);
        c.name = format!("spmd -n {n}");
        c.limit = Duration::from_secs(180);
        cases.push(c);
        let rows = format!(
            "SVD of {} x 32 held on {n} ranks",
            (0..n).map(|r| if n >= 4 && r == n - 1 { 0 } else { 3000 + 37 * r }).sum::<u32>()
        );
        cases.push(case(
            &format!("example spmd_svd -n {n}"),
            n,
            &example("spmd_svd"),
            &["3000", "32"],
            true,
            &[&rows, "rows of U checked"],
        ));
    }
    cases.push(case("tessera info -n 2", 2, tessera, &["info", "--json"], true, &["\"world_size\":2"]));
    cases.push(case(
        "tessera bench mpi-hello -n 2",
        2,
        tessera,
        &["bench", "mpi-hello", "--json"],
        true,
        &["\"ranks\":2"],
    ));
    cases.push(case(
        "tessera bench overhead -n 3",
        3,
        tessera,
        &["bench", "overhead", "--tasks", "3000", "--shape", "tree", "--repeat", "1", "--json"],
        true,
        &["\"transport\":\"mpi\"", "\"us_per_task\""],
    ));
    cases.push(case("tessera demo -n 1", 1, tessera, &["demo"], true, &["mpi transport", "result checked"]));
    cases.push(case(
        "tessera bench transfer -n 3",
        3,
        tessera,
        &["bench", "transfer", "--mib", "8", "--repeat", "2", "--json"],
        true,
        &["\"ratio\"", "\"transport\":\"mpi\""],
    ));

    // Distributed arrays: the shared bodies on 1 and 2 worker ranks.
    for n in [1, 3] {
        let mut c = scen("arrays", n, true, &["arrays ok"]);
        c.name = format!("arrays -n {n}");
        c.limit = Duration::from_secs(240);
        cases.push(c);
    }
    arrays_commands(&mut cases, tessera);

    ucx_cases(&mut cases, &me, tessera);
    gpu_cases(&mut cases, tessera);

    // Blocks split into many MPI messages arrive whole.
    let mut pieces = scen("bodies", 3, true, &["bodies ok"]);
    pieces.name = "bodies -n 3, 64 KiB messages".into();
    pieces.env.push(("TESSERA_MPI_MAX_MESSAGE".into(), "65536".into()));
    cases.push(pieces);

    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let (mut passed, mut failed) = (0, 0);
    for c in &cases {
        if !filter.is_empty() && !filter.iter().any(|f| c.name.contains(f.as_str())) {
            continue;
        }
        match run_case(c).and_then(|secs| c.post.as_ref().map_or(Ok(()), |p| p()).map(|()| secs)) {
            Ok(secs) => {
                passed += 1;
                println!("mpi case {:<32} ok ({secs:.1} s)", c.name);
            }
            Err(why) => {
                failed += 1;
                println!("mpi case {:<32} FAILED: {why}", c.name);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    i32::from(failed > 0)
}

/// `--report`, `--trace`, `--log-dir` and `--bind core` under `mpirun -n 3`:
/// one trace event per task the scheduler completed, a log file per rank
/// with its rank and host, and each worker thread's affinity read back.
fn observe_case(cases: &mut Vec<Case>, tessera: &str) {
    let dir = std::env::temp_dir().join(format!("tessera-mpi-observe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (report, trace, logs) = (dir.join("r.html"), dir.join("t.json"), dir.join("logs"));
    let p = |x: &std::path::Path| x.to_str().unwrap().to_owned();
    let (r, t, l) = (p(&report), p(&trace), p(&logs));
    let args = [
        "--log-dir",
        &l,
        "--bind",
        "core",
        "bench",
        "overhead",
        "--tasks",
        "2000",
        "--repeat",
        "1",
        "--report",
        &r,
        "--trace",
        &t,
    ];
    let bind_ok = tessera::runtime::HAS_HWLOC;
    let mut c = case(
        "tessera observe -n 3",
        3,
        tessera,
        &args,
        bind_ok,
        if bind_ok { &["report of", "trace of"] } else { &["needs the `hwloc` feature"] },
    );
    if bind_ok {
        c.post = Some(Box::new(move || check_observed(&trace, &logs)));
    }
    cases.push(c);
}

fn check_observed(trace: &std::path::Path, logs: &std::path::Path) -> Result<(), String> {
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(trace).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let events = t["traceEvents"].as_array().ok_or("no traceEvents")?;
    let tasks = events.iter().filter(|e| e["ph"] == "X" && e["cat"] == "task").count() as u64;
    let completed = t["otherData"]["scheduler_completed"].as_u64().ok_or("no scheduler_completed")?;
    if tasks != completed || tasks < 2000 {
        return Err(format!("{tasks} task events, the scheduler completed {completed}"));
    }
    let mut cores = Vec::new();
    for th in events.iter().filter(|e| e["name"] == "thread_name" && e["args"]["affinity"].is_array()) {
        if th["args"]["affinity"] != th["args"]["bound"] || th["args"]["bound"].as_array().is_none_or(|b| b.len() != 1)
        {
            return Err(format!("thread not bound to one core as asked: {th}"));
        }
        cores.push((th["pid"].as_u64(), th["args"]["bound"][0].as_u64()));
    }
    let ranks: std::collections::BTreeSet<_> = cores.iter().map(|c| c.0).collect();
    let distinct: std::collections::BTreeSet<_> = cores.iter().map(|c| c.1).collect();
    if ranks.len() != 2 || distinct.len() != cores.len() {
        return Err(format!("worker threads (rank, core): {cores:?}"));
    }
    let host = tessera::runtime::host::sys::hostname();
    for rank in 0..3 {
        let text =
            std::fs::read_to_string(logs.join(format!("rank-{rank}.log"))).map_err(|e| format!("rank {rank}: {e}"))?;
        if !text.lines().any(|l| l.starts_with(&format!("r{rank}@{host} "))) {
            return Err(format!("rank-{rank}.log has no line of rank {rank}: {text}"));
        }
    }
    Ok(())
}

/// `tessera svd`, `qr` and `matmul` under mpirun: results written by the
/// workers of 3 ranks, checked afterwards; bad input fails fast and clearly.
fn arrays_commands(cases: &mut Vec<Case>, tessera: &str) {
    let dir = std::env::temp_dir().join(format!("tessera-mpi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let random = ["--random", "20000x24", "--chunk-rows", "1500", "--json"];
    let svd_out = out("svd.h5");
    let mut args: Vec<&str> = vec!["svd"];
    args.extend(random);
    if cfg!(feature = "hdf5") {
        args.extend(["-o", &svd_out]);
    }
    #[cfg_attr(not(feature = "hdf5"), allow(unused_mut))]
    let mut c = case("tessera svd -n 3", 3, tessera, &args, true, &["\"transport\":\"mpi\"", "\"method\":\"tsqr\""]);
    #[cfg(feature = "hdf5")]
    {
        let path = svd_out.clone();
        c.post = Some(Box::new(move || check_svd_file(&path, 20000, 24)));
    }
    cases.push(c);
    cases.push(case(
        "tessera svd randomized -n 3",
        3,
        tessera,
        &["svd", "--random", "3000x1200", "--k", "4", "--chunks", "1000x600", "--json"],
        true,
        &["\"method\":\"randomized\"", "\"k\":4"],
    ));
    cases.push(case(
        "tessera matmul -n 3",
        3,
        tessera,
        &["matmul", "--random", "600x400x300", "--chunks", "200x150", "--json"],
        true,
        &["\"transport\":\"mpi\"", "\"norm\":"],
    ));
    cases.push(case(
        "tessera svd tsqr on 2-D blocks -n 3",
        3,
        tessera,
        &["svd", "--random", "1000x40", "--chunks", "100x20", "--method", "tsqr"],
        false,
        &["rechunk", "--chunk-rows 100"],
    ));
    if cfg!(feature = "hdf5") {
        let missing = out("missing.h5");
        let spec = format!("{missing}:/X");
        cases.push(case(
            "tessera svd missing file -n 3",
            3,
            tessera,
            &["svd", &spec],
            false,
            &[&missing, "no such file"],
        ));
        let spec = format!("{svd_out}:/U");
        let qr_out = out("qr.h5");
        #[cfg_attr(not(feature = "hdf5"), allow(unused_mut))]
        let mut c = case("tessera qr of U -n 2", 2, tessera, &["qr", &spec, "-o", &qr_out], true, &["wrote"]);
        #[cfg(feature = "hdf5")]
        {
            let path = qr_out.clone();
            c.post = Some(Box::new(move || check_qr_of_orthonormal(&path)));
        }
        cases.push(c);
    }
}

/// Blocks over UCX, control on MPI (`TESSERA_TRANSPORT=ucx`): the shared
/// bodies with each UCX_TLS choice, the arrays bodies, the command; a killed
/// rank ends the job rather than hanging it.
fn ucx_cases(cases: &mut Vec<Case>, me: &str, tessera: &str) {
    let ucx = |mut c: Case, tls: &str| {
        c.env.push(("TESSERA_TRANSPORT".into(), "ucx".into()));
        if !tls.is_empty() {
            c.env.push(("UCX_TLS".into(), tls.into()));
        }
        c
    };
    if !cfg!(feature = "ucx") {
        let c = case("tessera --transport ucx, no feature", 1, tessera, &["demo"], false, &["needs the `ucx` feature"]);
        cases.push(ucx(c, ""));
        return;
    }
    for tls in ["", "posix,self", "tcp"] {
        let name = format!("bodies -n 3 over ucx {tls}");
        let c = case(&name, 3, me, &["--scenario", "bodies"], true, &["bodies ok on 2 workers over mpi+ucx"]);
        cases.push(ucx(c, tls));
    }
    let mut c =
        case("arrays -n 3 over ucx", 3, me, &["--scenario", "arrays"], true, &["arrays ok on 2 workers over mpi+ucx"]);
    c.limit = Duration::from_secs(240);
    cases.push(ucx(c, ""));
    let args =
        ["--transport", "ucx", "bench", "overhead", "--tasks", "2000", "--shape", "tree", "--repeat", "1", "--json"];
    let c = case("tessera --transport ucx -n 3", 3, tessera, &args, true, &["\"transport\":\"mpi+ucx\""]);
    cases.push(c);
    let c = case("kill_worker over ucx -n 3", 3, me, &["--scenario", "kill_worker"], false, &["rank 2"]);
    cases.push(ucx(c, ""));
}

/// GPU workers under MPI (`--gpus`): without the feature, the message naming
/// it; without a driver, `all` runs on CPU workers and a device list fails on
/// every rank, naming the first rank without its GPU (no hang); with GPUs,
/// the first working ranks of the host drive them.
fn gpu_cases(cases: &mut Vec<Case>, tessera: &str) {
    use tessera::runtime::gpu::{probe, Probe, NO_DRIVER};
    if !cfg!(feature = "cuda") {
        cases.push(case(
            "tessera --gpus all, no feature",
            1,
            tessera,
            &["--gpus", "all", "demo"],
            false,
            &["needs the `cuda` feature"],
        ));
        return;
    }
    match probe() {
        Probe::Found { devices, .. } if !devices.is_empty() => {
            let c = case(
                "tessera --gpus all -n 3",
                3,
                tessera,
                &["-q", "--gpus", "all", "demo"],
                true,
                &["GPU workers on GPU 0", "(result checked)"],
            );
            cases.push(c);
        }
        _ => {
            let c = case(
                "tessera --gpus all -n 3, no driver",
                3,
                tessera,
                &["-q", "--gpus", "all", "demo"],
                true,
                &[NO_DRIVER, "(result checked)"],
            );
            cases.push(c);
            let msg = format!("rank 1: --gpus 0: {NO_DRIVER}");
            cases.push(case(
                "tessera --gpus 0 -n 3, no driver",
                3,
                tessera,
                &["--gpus", "0", "demo"],
                false,
                &[msg.as_str()],
            ));
        }
    }
}

/// The SVD file holds orthonormal U (m x k), non-increasing S, orthonormal Vᵀ.
#[cfg(feature = "hdf5")]
fn check_svd_file(path: &str, m: usize, n: usize) -> Result<(), String> {
    use tessera::linalg::hdf5::Hdf5Dataset;
    let cluster = tessera::LocalCluster::builder().workers(1).start().map_err(|e| e.to_string())?;
    let read = |d: &str| -> Result<tessera::linalg::ndarray::ArrayD<f64>, String> {
        let ds = Hdf5Dataset::open(path, d).map_err(|e| e.to_string())?;
        ds.read(None).and_then(|a| a.to_ndarray::<f64>(cluster.client())).map_err(|e| e.to_string())
    };
    let u = read("/U")?.into_dimensionality::<tessera::linalg::ndarray::Ix2>().map_err(|e| e.to_string())?;
    let s = read("/S")?;
    let vt = read("/VT")?.into_dimensionality::<tessera::linalg::ndarray::Ix2>().map_err(|e| e.to_string())?;
    if u.dim() != (m, n) || s.len() != n || vt.dim() != (n, n) {
        return Err(format!("shapes {:?} {:?} {:?}", u.dim(), s.shape(), vt.dim()));
    }
    let tol = 100.0 * f64::EPSILON * (m as f64).sqrt();
    for (name, q) in [("U", u.view()), ("V", vt.t())] {
        let g = q.t().dot(&q) - tessera::linalg::ndarray::Array2::<f64>::eye(n);
        let worst = g.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        if worst > tol {
            return Err(format!("{name} is not orthonormal: {worst:e}"));
        }
    }
    if !s.iter().zip(s.iter().skip(1)).all(|(a, b)| a >= b) || s[n - 1] <= 0.0 {
        return Err(format!("S is not positive and non-increasing: {s}"));
    }
    Ok(())
}

/// QR of an orthonormal matrix: R is the identity up to rounding.
#[cfg(feature = "hdf5")]
fn check_qr_of_orthonormal(path: &str) -> Result<(), String> {
    use tessera::linalg::hdf5::Hdf5Dataset;
    let cluster = tessera::LocalCluster::builder().workers(1).start().map_err(|e| e.to_string())?;
    let ds = Hdf5Dataset::open(path, "/R").map_err(|e| e.to_string())?;
    let r = ds.read(None).and_then(|a| a.to_array2::<f64>(cluster.client())).map_err(|e| e.to_string())?;
    let n = r.nrows();
    let worst = (r - tessera::linalg::ndarray::Array2::<f64>::eye(n)).iter().fold(0.0f64, |a, x| a.max(x.abs()));
    if worst > 1e-12 {
        return Err(format!("R of an orthonormal U is not I: {worst:e}"));
    }
    Ok(())
}

fn mpirun_flags() -> Vec<String> {
    let v = Command::new("mpirun").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if v.unwrap_or_default().contains("Open MPI") {
        vec!["--oversubscribe".into(), "--bind-to".into(), "none".into()]
    } else {
        Vec::new()
    }
}

fn run_case(c: &Case) -> Result<f64, String> {
    let start = Instant::now();
    let mut child = Command::new("mpirun")
        .args(mpirun_flags())
        .arg("-n")
        .arg(c.ranks.to_string())
        .arg(&c.program)
        .args(&c.args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env_remove("RUST_LOG")
        .envs(c.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start mpirun: {e}"))?;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(st);
        }
        if start.elapsed() > c.limit {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = start.elapsed().as_secs_f64();
    let stdout = t_out.join().unwrap();
    let text = format!("{stdout}{}", t_err.join().unwrap());
    let Some(status) = status else {
        return Err(format!("hung: killed after {:?}\n{text}", c.limit));
    };
    if text.contains("compiled without it") && c.ok {
        return Err(format!(
            "{} was built without the `mpi` feature: build every target with it (`cargo test --features mpi`, as scripts/test.sh does)",
            c.program
        ));
    }
    if status.success() != c.ok {
        return Err(format!("exit {status}, expected {}\n{text}", if c.ok { "success" } else { "failure" }));
    }
    for want in &c.contains {
        if !text.contains(want.as_str()) {
            return Err(format!("output lacks {want:?}\n{text}"));
        }
    }
    if text.contains("RUST_BACKTRACE") && c.name != "driver_panic" {
        return Err(format!("a panic escaped\n{text}"));
    }
    if c.json && c.ok {
        let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() || lines.iter().any(|l| serde_json::from_str::<serde_json::Value>(l).is_err()) {
            return Err(format!("--json: stdout is not JSON lines alone\n{stdout}"));
        }
    }
    Ok(secs)
}

//! Seeing what ran: `--report` (checked in headless Chromium when it is
//! installed: no console errors, and the page draws as many tasks as ran),
//! `--trace` (one Chrome trace event per task), progress lines, `--log-dir`,
//! `--bind` (each thread's affinity read back), and the errors for bad input.
//! MPI runs of the same are in `tests/mpi.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{tessera, tessera_env};
use serde_json::Value;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-observe-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn trace(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("the trace is JSON")
}

fn task_events(trace: &Value) -> Vec<&Value> {
    trace["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X" && e["cat"] == "task").collect()
}

/// `scripts/check-report.sh`: (tasks drawn, tasks run), or `None` when
/// Chromium is not installed (the test script installs it).
fn browser_check(report: &Path) -> Option<(u64, u64)> {
    if Command::new("chromium").arg("--version").output().is_err() {
        eprintln!("skipping the browser check: chromium is not installed (scripts/install-deps.sh installs it)");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check-report.sh");
    let o = Command::new("bash").arg(script).arg(report).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "the report failed in the browser: {out}{}", stderr(&o));
    let field = |name: &str| -> u64 {
        let v = out.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}="))).unwrap();
        v.parse().unwrap()
    };
    assert_eq!(field("console_errors"), 0, "{out}");
    Some((field("tasks_drawn"), field("tasks_run")))
}

/// Tasks the run's scheduler completed: a count independent of the events.
fn completed(trace: &Value) -> u64 {
    trace["otherData"]["scheduler_completed"].as_u64().expect("the trace says what the scheduler completed")
}

/// Runs `tasks` trivial tasks on 2 workers with `--report` and `--trace`;
/// returns the trace and the report's path (in a fresh `dir`).
fn observed_bench(name: &str, tasks: &str) -> (PathBuf, Value, PathBuf) {
    let dir = scratch(name);
    let (report, tr) = (dir.join("r.html"), dir.join("t.json"));
    let args = ["--workers", "2", "bench", "overhead", "--tasks", tasks, "--repeat", "1", "--report"];
    let o = tessera(&[&args[..], &[s(&report), "--trace", s(&tr)]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let t = trace(&tr);
    (dir, t, report)
}

#[test]
fn report_and_trace_show_every_task_that_ran() {
    let (dir, t, report) = observed_bench("small", "3000");
    let tasks = task_events(&t);
    assert!(tasks.len() >= 3000, "{} task events", tasks.len());
    assert_eq!(tasks.len() as u64, completed(&t));
    // Every task event names its kernel, key, thread and a duration.
    assert!(tasks.iter().all(|e| e["name"].is_string() && e["args"]["key"].is_string() && e["dur"].is_u64()));
    let ranks: std::collections::BTreeSet<u64> = tasks.iter().map(|e| e["pid"].as_u64().unwrap()).collect();
    assert_eq!(ranks.into_iter().collect::<Vec<_>>(), vec![1, 2], "both workers ran tasks");
    let page = std::fs::read_to_string(&report).unwrap();
    assert!(page.contains("<title>") && !page.contains("TESSERA_DATA"), "the data went in");
    if let Some((drawn, run)) = browser_check(&report) {
        assert_eq!((drawn, run), (completed(&t), completed(&t)));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_report_of_100k_tasks_is_aggregated_and_still_counts_them_all() {
    let (dir, t, report) = observed_bench("large", "100000");
    assert_eq!(task_events(&t).len() as u64, completed(&t));
    assert!(completed(&t) >= 100_000);
    let size = std::fs::metadata(&report).unwrap().len();
    assert!(size < 2 << 20, "the report of 100,000 tasks is {size} bytes");
    if let Some((drawn, run)) = browser_check(&report) {
        assert_eq!((drawn, run), (completed(&t), completed(&t)));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn long_computations_log_progress_unless_quiet() {
    let args = ["--workers", "2", "svd", "--random", "400000x32", "--k", "4", "--chunk-rows", "20000"];
    // Progress shows from the start (not after a second: this SVD may take less).
    let o = tessera_env(&args, &[("TESSERA_PROGRESS_AFTER", "0")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    // Not a terminal: log lines, each with the rank and host.
    let line = err.lines().find(|l| l.contains("progress:")).unwrap_or_else(|| panic!("no progress line: {err}"));
    assert!(line.starts_with("r0@") && line.contains(" tasks ("), "{line}");
    let o = tessera_env(&[&["--quiet"][..], &args].concat(), &[("TESSERA_PROGRESS_AFTER", "0")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("progress"), "{}", stderr(&o));
}

#[test]
fn log_dir_gets_a_file_per_process_with_rank_and_host() {
    let dir = scratch("logs");
    let logs = dir.join("logs");
    let o = tessera(&["--log-dir", s(&logs), "--workers", "2", "bench", "overhead", "--tasks", "100", "--repeat", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let files: Vec<_> = std::fs::read_dir(&logs).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let host = tessera::runtime::host::sys::hostname();
    assert!(text.lines().any(|l| l.starts_with(&format!("r0@{host} ")) && l.contains("worker started")), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn binding_is_read_back_from_each_thread() {
    let dir = scratch("bind");
    let tr = dir.join("t.json");
    let o = tessera(&[
        "--workers",
        "2",
        "--bind",
        "core",
        "bench",
        "overhead",
        "--tasks",
        "200",
        "--repeat",
        "1",
        "--trace",
        s(&tr),
    ]);
    if !tessera::runtime::HAS_HWLOC {
        assert!(!o.status.success());
        assert!(stderr(&o).contains("needs the `hwloc` feature"), "{}", stderr(&o));
        return;
    }
    assert!(o.status.success(), "{}", stderr(&o));
    let t = trace(&tr);
    let threads: Vec<&Value> = t["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "thread_name" && e["args"]["affinity"].is_array())
        .collect();
    assert_eq!(threads.len(), 2, "one thread per worker");
    let mut cores = Vec::new();
    for th in threads {
        // What the kernel reports is what was asked for: one core each.
        assert_eq!(th["args"]["affinity"], th["args"]["bound"], "{th}");
        let cpus = th["args"]["affinity"].as_array().unwrap();
        assert_eq!(cpus.len(), 1, "{th}");
        cores.push(cpus[0].as_u64().unwrap());
        // The thread was only ever seen on its core.
        assert!(th["args"]["seen"].as_array().unwrap().iter().all(|c| c == &cpus[0]), "{th}");
    }
    assert_ne!(cores[0], cores[1], "distinct cores");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn info_describes_the_topology_or_says_binding_is_unavailable() {
    let o = tessera(&["info", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json = String::from_utf8_lossy(&o.stdout).into_owned();
    let j: Value = serde_json::from_str(json.lines().last().unwrap()).unwrap();
    // The text is what `info` prints without --json (with it, stdout is only JSON).
    let o = tessera(&["info"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if tessera::runtime::HAS_HWLOC {
        let t = &j["topology"][0];
        assert!(t["cores"].as_u64().unwrap() >= 1 && t["pus"].as_u64() >= t["cores"].as_u64(), "{t}");
        assert!(!t["numa_nodes"].as_array().unwrap().is_empty(), "{t}");
        assert!(out.contains("topology:  host"), "{out}");
    } else {
        assert!(out.contains("binding:   unavailable in this build"), "{out}");
    }
}

#[test]
fn bad_observe_flags_fail_before_anything_runs() {
    let dir = scratch("bad");
    let missing = dir.join("no/such/dir/r.html");
    for (args, want) in [
        (vec!["svd", "--random", "1000x10", "--report", s(&missing)], "--report"),
        (vec!["svd", "--random", "1000x10", "--trace", s(&dir)], "is a directory"),
        (vec!["--no-events", "demo", "--report", "x.html"], "--no-events"),
        (vec!["info", "--report", "x.html"], "go with a computing command"),
        (vec!["--bind", "sockets", "demo"], "--bind `sockets`: expected auto, none, core or numa"),
        (vec!["--log-dir", "/proc/no/such", "demo"], "--log-dir"),
    ] {
        let o = tessera(&args);
        assert_eq!(o.status.code(), Some(if want.contains("sockets") { 2 } else { 1 }), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!missing.exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing written");
    std::fs::remove_dir_all(&dir).unwrap();
}

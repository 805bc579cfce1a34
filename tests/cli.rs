//! The `tessera` command as a user runs it: output, JSON, exit codes, and
//! clear errors for bad input. Runs in every build; MPI runs are in `tests/mpi.rs`.

use std::process::{Command, Output};

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("OMPI_COMM_WORLD_SIZE")
        .env_remove("PMI_SIZE")
        .env_remove("PMIX_RANK")
        .output()
        .expect("run tessera")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn last_json(o: &Output) -> serde_json::Value {
    let out = stdout(o);
    let last = out.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {out}"))
}

#[test]
fn info_reports_features_cores_and_memory_as_json() {
    let o = tessera(&["info", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = last_json(&o);
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
    assert!(j["cores"].as_u64().unwrap() >= 1);
    assert!(j["memory_bytes"].as_u64().unwrap() > 0);
    assert_eq!(j["features"].as_array().unwrap().iter().any(|f| f == "mpi"), tessera::HAS_MPI);
    assert_eq!(j["launch"], "local");
}

#[test]
fn bench_overhead_prints_checked_figures_for_every_shape() {
    for shape in ["wide", "chain", "tree"] {
        let o = tessera(&[
            "--workers",
            "2",
            "bench",
            "overhead",
            "--tasks",
            "2000",
            "--shape",
            shape,
            "--repeat",
            "2",
            "--json",
        ]);
        assert!(o.status.success(), "{shape}: {}", stderr(&o));
        let j = last_json(&o);
        assert_eq!(j["shape"], shape);
        assert!(j["tasks"].as_u64().unwrap() >= 1999);
        assert!(j["seconds"].as_f64().unwrap() > 0.0);
        assert!(j["us_per_task"].as_f64().unwrap() > 0.0);
        assert_eq!(j["workers"], 2);
        assert_eq!(j["transport"], "local");
    }
}

#[test]
fn demo_runs_on_the_local_cluster() {
    let o = tessera(&["--workers", "2", "demo"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("local transport") && out.matches("results checked").count() == 3, "{out}");
}

#[test]
fn bad_flags_are_refused_with_a_message_naming_them() {
    let o = tessera(&["bench", "overhead", "--shape", "diagonal"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("diagonal"), "{}", stderr(&o));
    let o = tessera(&["--launch", "cloud", "info"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cloud"), "{}", stderr(&o));
    let o = tessera(&["--heartbeat-timeout", "0.5", "info"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("seconds >= 2"), "{}", stderr(&o));
    let o = tessera(&["--workers", "0", "bench", "overhead", "--tasks", "10"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("at least one worker"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn asking_for_mpi_without_the_feature_names_the_feature() {
    if tessera::HAS_MPI {
        return; // the MPI build is exercised under mpirun in tests/mpi.rs
    }
    let o = tessera(&["--launch", "mpi", "bench", "overhead", "--tasks", "10"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("`mpi` feature") && err.contains("--features mpi"), "{err}");

    // Started by mpirun (as its environment says) with several ranks: refuse
    // rather than run N independent local clusters.
    let o = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["bench", "overhead", "--tasks", "10"])
        .env("OMPI_COMM_WORLD_SIZE", "4")
        .env("OMPI_COMM_WORLD_RANK", "0")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("`mpi` feature") && err.contains("4 MPI ranks"), "{err}");
    let o = tessera(&["bench", "transfer"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("`mpi` feature"), "{}", stderr(&o));
}

#[test]
fn the_examples_run_locally() {
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("examples");
    for (name, want) in [("local_cluster", "sum of squares = 140000"), ("run", "sum of 1..=4096 = 8390656")] {
        let o = Command::new(dir.join(name))
            .env_remove("OMPI_COMM_WORLD_SIZE")
            .output()
            .expect("examples are built by cargo test");
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert!(stdout(&o).contains(want), "{name}: {}", stdout(&o));
    }
}

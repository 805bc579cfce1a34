//! The `tessera` command as a user runs it: output, JSON, exit codes, and
//! clear errors for bad input. Runs in every build; MPI runs are in `tests/mpi.rs`.

mod common;

use std::process::{Command, Output};

use common::tessera;

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
    assert!(j["transports"].as_array().unwrap().iter().any(|t| t == "tcp"), "{j}");
    assert!(!j["tcp"]["routable_address"].as_str().unwrap().is_empty());
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
fn bench_simulate_reports_every_shape_and_repeats_its_schedule() {
    for shape in ["wide", "chain", "tree", "tsqr", "matmul"] {
        let args =
            ["bench", "simulate", "--workers", "20", "--threads", "4", "--tasks", "3000", "--shape", shape, "--json"];
        let o = tessera(&args);
        assert!(o.status.success(), "{shape}: {}", stderr(&o));
        let j = last_json(&o);
        assert_eq!(j["shape"], shape);
        assert!(j["tasks"].as_u64().unwrap() >= 2900, "{j}");
        assert!(j["us_per_task"].as_f64().unwrap() > 0.0, "{j}");
        let ratio = j["makespan_ratio"].as_f64().unwrap();
        // The lower bound is a bound: no schedule beats it.
        assert!(ratio >= 1.0 - 1e-9, "{shape}: makespan below its lower bound: {j}");
        assert!(ratio < 10.0, "{shape}: {j}");
        assert!(j["scheduler_bytes_per_task"].as_f64().unwrap() > 0.0, "{j}");
        // The level bound is at least the simpler one.
        assert!(j["work_path_ratio"].as_f64().unwrap() >= ratio - 1e-9, "{j}");
        // Same seed, same schedule (the core's CPU time aside), and runs
        // of one graph in one process repeat it too.
        let mut twice = args.to_vec();
        twice.extend_from_slice(&["--runs", "2"]);
        let again = last_json(&tessera(&twice));
        assert_eq!(again["runs"], 2);
        assert!(again["us_per_task"].as_f64().unwrap() <= again["first_us_per_task"].as_f64().unwrap(), "{again}");
        for field in ["makespan_s", "transfers", "moved_bytes", "messages"] {
            assert_eq!(j[field], again[field], "{shape}: {field} differs between two runs of one seed");
        }
    }
}

#[test]
fn bench_simulate_refuses_bad_settings_naming_the_flag() {
    let cases: [(&[&str], &str); 8] = [
        (&["--workers", "0"], "--workers"),
        (&["--workers", "3", "--kills", "3"], "--kills"),
        (&["--runs", "0"], "--runs"),
        (&["--threads", "0"], "--threads"),
        (&["--tasks", "0"], "--tasks"),
        (&["--shape", "star"], "--shape"),
        (&["--task-us", "-5"], "--task-us"),
        (&["--latency", "-1"], "--latency"),
    ];
    for (flags, named) in cases {
        let mut args = vec!["bench", "simulate"];
        args.extend_from_slice(flags);
        if flags[0] != "--tasks" {
            args.extend_from_slice(&["--tasks", "100"]);
        }
        let o = tessera(&args);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: a usage error: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(named), "{flags:?}: the error does not name {named}: {err}");
        assert!(!err.contains("panicked"), "{flags:?}: {err}");
    }
}

#[test]
fn demo_runs_on_the_local_cluster() {
    let o = tessera(&["--workers", "2", "demo"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("local transport") && out.contains("randomized SVD") && out.contains("result checked"),
        "{out}"
    );
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
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--workers") && stderr(&o).contains("at least 1"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    let o = tessera(&["--gpus", "first", "info"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("`first`") && stderr(&o).contains("0,1"), "{}", stderr(&o));
    let o = tessera(&["--gpu-math", "bf16", "info"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("`bf16`") && stderr(&o).contains("tf32"), "{}", stderr(&o));
}

/// A bad value is a usage error (exit 2) whose message names the flag and,
/// for a fixed set of values, lists them; `0` is refused where it means nothing.
#[test]
fn bad_values_are_usage_errors_naming_the_flag() {
    let cases: [(&[&str], &str, &str); 23] = [
        (&["--launch", "cloud", "info"], "--launch", "expected auto, local or mpi"),
        (&["--scheduler-works", "maybe", "info"], "--scheduler-works", "expected auto, yes or no"),
        (&["--bind", "socket", "info"], "--bind", "expected auto, none, core or numa"),
        (&["--transport", "tcp", "info"], "--transport", "or ucx"),
        (&["--gpus", "two", "info"], "--gpus", "`two`"),
        (&["--gpu-math", "bf16", "info"], "--gpu-math", "`tf32`"),
        (&["--threads", "0", "info"], "--threads", "at least 1"),
        (&["--workers", "0", "info"], "--workers", "at least 1"),
        (&["--heartbeat-timeout", "-1", "info"], "--heartbeat-timeout", "`-1` is not a number of seconds"),
        (&["worker", "--lifetime", "-5"], "--lifetime", "`-5` is not a number of seconds"),
        (&["svd", "--random", "100x10", "--chunk-rows", "0"], "--chunk-rows", "at least 1"),
        (&["qr", "--random", "100x10", "--chunk-rows", "0"], "--chunk-rows", "at least 1"),
        (&["svd", "--random", "100x10", "--k", "0"], "--k", "at least 1"),
        (&["svd", "--random", "0x10"], "--random", "every dimension must be at least 1"),
        (&["matmul", "--random", "10x0x10"], "--random", "every dimension must be at least 1"),
        (&["bench", "overhead", "--repeat", "0"], "--repeat", "at least 1"),
        (&["bench", "gemm", "--n", "0"], "--n", "at least 1"),
        (&["bench", "simulate", "--shape", "star"], "--shape", "expected wide, chain, tree, tsqr or matmul"),
        (&["bench", "simulate", "--runs", "0"], "--runs", "at least 1"),
        (&["bench", "simulate", "--task-us", "-5"], "--task-us", "`-5` is not a number >= 0"),
        (&["bench", "simulate", "--latency", "-1"], "--latency", "`-1` is not a number >= 0"),
        (&["bench", "elastic", "--workers", "0"], "--workers", "at least 1"),
        (&["bench", "scale", "--tasks", "0"], "--tasks", "0 is not in 1.."),
    ];
    for (args, flag, says) in cases {
        let o = tessera(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag) && err.contains(says), "{args:?}: expected {flag} and {says:?} in: {err}");
        assert!(!err.contains("unexpected argument") && !err.contains("panicked"), "{args:?}: {err}");
    }
    // The values are listed in the help, each with what it means.
    let o = tessera(&["info", "--help"]);
    assert!(stdout(&o).contains("- local:") && stdout(&o).contains("- numa:"), "{}", stdout(&o));
    let o = tessera(&["info", "-h"]);
    assert!(stdout(&o).contains("[possible values: auto, local, mpi]"), "{}", stdout(&o));
    assert!(stdout(&o).contains("[possible values: exact, tf32]"), "{}", stdout(&o));
    // The environment is read by the same parser.
    let o = Command::new(env!("CARGO_BIN_EXE_tessera")).arg("info").env("TESSERA_BIND", "everywhere").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--bind") && stderr(&o).contains("everywhere"), "{}", stderr(&o));
}

/// A subcommand's help shows its own flags first, the options every command
/// takes under their own headings, and a description for each (the whole
/// tree is walked by the binary's unit tests).
#[test]
fn help_puts_global_options_under_headings() {
    let o = tessera(&["jobqueue", "status", "-h"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let help = stdout(&o);
    let (own, rest) = help.split_once("\nCluster options:").unwrap_or_else(|| panic!("no Cluster options: {help}"));
    assert!(!own.contains("--gpus") && !own.contains("--bind") && rest.contains("--gpus"), "{help}");
    for heading in ["Diagnostics:", "Elastic cluster:", "Jobqueue options:"] {
        assert!(help.contains(heading), "{heading}: {help}");
    }
    let qr = stdout(&tessera(&["qr", "-h"]));
    let seed = qr.lines().find(|l| l.contains("--seed")).unwrap_or_else(|| panic!("{qr}"));
    assert!(seed.contains("Seed of the random input") && !seed.contains("SVD"), "{seed}");
    let help = stdout(&tessera(&["scheduler", "-h"]));
    let listen = help.lines().find(|l| l.contains("--listen")).unwrap_or_else(|| panic!("{help}"));
    assert_eq!(listen.matches("[default:").count(), 1, "one default for --listen: {listen}");
    let script = stdout(&tessera(&["jobqueue", "script", "-h"]));
    for flag in ["--nodes <NODES>", "--cores-per-task <CORES_PER_TASK>", "--gpus-per-node <GPUS_PER_NODE>"] {
        // The description follows on the flag's line, or on the next (clap's
        // layout when some flag's description is long).
        let lines: Vec<&str> = script.lines().collect();
        let i = lines.iter().position(|l| l.contains(flag)).unwrap_or_else(|| panic!("{flag}: {script}"));
        let same = lines[i].split_once(flag).map(|(_, d)| d.trim()).unwrap_or_default();
        let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or_default();
        assert!(!same.is_empty() || !(next.is_empty() || next.starts_with('-')), "{flag} has no description: {script}");
    }
}

#[test]
fn flags_go_where_a_user_puts_them() {
    // --log-dir after the subcommand, as before it; the last one given wins.
    let dir = temp_dir("log-dir-after");
    let (before, after) = (dir.join("before"), dir.join("after"));
    let o = tessera(&["--log-dir", before.to_str().unwrap(), "info", "--log-dir", after.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let logs = |d: &Path| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    assert_eq!((logs(&before), logs(&after)), (0, 1), "one log file, in the last --log-dir");
    let o = tessera(&["--workers", "2", "bench", "overhead", "--tasks", "10", "--log-dir", before.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(logs(&before), 1);
    // jobqueue keeps its own --log-dir (the jobs' output); the process log stays out of it.
    let jobs = dir.join("jobs");
    let o = tessera(&[
        "jobqueue",
        "submit",
        "--dry-run",
        "--system",
        "slurm",
        "--log-dir",
        jobs.to_str().unwrap(),
        "--",
        "tessera",
        "demo",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<String> =
        std::fs::read_dir(&jobs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.is_empty() && names.iter().all(|n| !n.ends_with(".log")), "{names:?}");
    let _ = std::fs::remove_dir_all(&dir);

    // svd and qr without an input say what to give, as a usage error.
    for cmd in ["svd", "qr"] {
        let o = tessera(&[cmd]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("give FILE.h5:/DATASET or --random MxN"), "{}", stderr(&o));
        assert!(stderr(&o).contains(&format!("tessera {cmd}")), "the usage line: {}", stderr(&o));
    }
}

#[test]
fn transport_ucx_runs_or_names_the_feature() {
    let o = tessera(&["--transport", "infiniband", "demo"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("infiniband") && stderr(&o).contains("ucx"), "{}", stderr(&o));
    let o = tessera(&["--transport", "ucx", "--workers", "2", "demo"]);
    let info = tessera(&["info"]);
    if tessera::HAS_UCX {
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stdout(&o).contains("over the local+ucx transport") && stdout(&o).contains("result checked"),
            "{}",
            stdout(&o)
        );
        // The version and what UCX can use here.
        assert!(stdout(&info).contains("ucx:       1.") && stdout(&info).contains("memory"), "{}", stdout(&info));
    } else {
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("needs the `ucx` feature"), "{}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        assert!(stdout(&info).contains("ucx:       not compiled in"), "{}", stdout(&info));
        let o = tessera(&["bench", "ucx"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("`ucx` feature"), "{}", stderr(&o));
    }
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
fn a_reader_that_goes_away_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    for args in [
        &["info"][..],
        &["info", "--json"],
        &["bench", "simulate", "--workers", "4", "--tasks", "200", "--json"],
        &["jobqueue", "script", "--system", "slurm", "--", "tessera", "demo"],
    ] {
        // As `tessera ... | head -0`: the reader closes before the first line.
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("OMPI_COMM_WORLD_SIZE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
        assert_ne!(o.status.code(), Some(101), "{args:?}: {err}");
        // Ended by SIGPIPE, as Unix tools are (or done before it wrote).
        assert!(o.status.signal() == Some(libc::SIGPIPE) || o.status.success(), "{args:?}: {:?} {err}", o.status);
    }
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

/// Every JSON value on stdout, which holds JSON and nothing else (one
/// document, or one per line where a command streams).
fn json_values(o: &Output) -> Vec<serde_json::Value> {
    let out = stdout(o);
    serde_json::Deserializer::from_str(&out)
        .into_iter::<serde_json::Value>()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("stdout is not only JSON ({e}):\n{out}\nstderr: {}", stderr(o)))
}

/// The one JSON document that is the whole of stdout.
fn only_json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "stdout: {} stderr: {}", stdout(o), stderr(o));
    let mut values = json_values(o);
    assert_eq!(values.len(), 1, "one JSON document expected on stdout: {}", stdout(o));
    values.pop().unwrap()
}

/// `--json`: stdout parses as JSON and nothing else (`tessera ... --json | jq`),
/// for every command that runs without MPI, a scheduler or a batch system;
/// the one-line summaries go to stderr.
#[test]
fn json_output_is_only_json_on_stdout() {
    let j = only_json(&tessera(&["info", "--json"]));
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));

    let o = tessera(&["--workers", "2", "svd", "--random", "600x8", "--json"]);
    let j = only_json(&o);
    assert_eq!(j["command"], "svd");
    assert_eq!(j["s"].as_array().unwrap().len(), 8);
    assert!(stderr(&o).contains("svd: 600 x 8"), "the summary goes to stderr: {}", stderr(&o));

    let j = only_json(&tessera(&["--workers", "2", "qr", "--random", "600x8", "--json"]));
    assert_eq!(j["r_diagonal"].as_array().unwrap().len(), 8);
    let j = only_json(&tessera(&["--workers", "2", "matmul", "--random", "300x40x50", "--json"]));
    assert_eq!(j["shape"], serde_json::json!([300, 50]));
    assert!(j["norm"].as_f64().unwrap() > 0.0);

    let o = tessera(&["--workers", "2", "demo", "--json"]);
    let j = only_json(&o);
    assert_eq!(j["command"], "demo");
    assert_eq!(j["transport"], "local");
    assert_eq!(j["svd"]["checked"], true);
    assert_eq!(j["matmul"]["checked"], true);
    assert!(stderr(&o).contains("randomized SVD"), "the text goes to stderr: {}", stderr(&o));

    let j = only_json(&tessera(&["bench", "simulate", "--workers", "4", "--threads", "2", "--tasks", "500", "--json"]));
    assert!(j["makespan_s"].as_f64().unwrap() > 0.0, "{j}");
    let j = only_json(&tessera(&["--workers", "2", "bench", "overhead", "--tasks", "500", "--repeat", "1", "--json"]));
    assert_eq!(j["transport"], "local");
    // One JSON line per element type.
    let o = tessera(&["bench", "gemm", "--n", "64", "--dtype", "both", "--repeat", "1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> =
        stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(lines.len(), 2, "{}", stdout(&o));

    // jobqueue commands that need no batch system, with no user config in the way.
    let dir = temp_dir("jqjson");
    let jq = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .env_remove("RUST_LOG")
            .env("XDG_CONFIG_HOME", dir.join("no-config"))
            .output()
            .unwrap()
    };
    let j = only_json(&jq(&["jobqueue", "script", "--json", "--system", "slurm", "--", "tessera", "demo"]));
    assert!(j["script"].as_str().unwrap().contains("#SBATCH"), "{j}");
    let logs = dir.join("logs");
    let j = only_json(&jq(&[
        "jobqueue",
        "submit",
        "--dry-run",
        "--json",
        "--system",
        "pbs",
        "--log-dir",
        logs.to_str().unwrap(),
        "--",
        "tessera",
        "demo",
    ]));
    assert_eq!(j["submitted"], false);
    assert!(j["script"].as_str().unwrap().contains("#PBS"), "{j}");
    let j = only_json(&jq(&["jobqueue", "config", "show", "--json", "--system", "sge"]));
    assert!(j["settings"].is_object(), "{j}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Completions for each shell and man pages come from the same definitions as `--help`.
#[test]
fn completions_and_man_pages_are_generated_from_the_command_line() {
    for (shell, mark) in [("bash", "complete -F"), ("zsh", "#compdef tessera"), ("fish", "complete -c tessera")] {
        let o = tessera(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(script.contains(mark), "{shell}: no `{mark}`: {script}");
        for word in ["jobqueue", "svd", "scheduler-file"] {
            assert!(script.contains(word), "{shell}: `{word}` is not completed");
        }
    }
    let o = tessera(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("tcsh") && stderr(&o).contains("bash"), "{}", stderr(&o));

    let dir = temp_dir("man");
    let man1 = dir.join("share/man/man1");
    let o = tessera(&["man", man1.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (page, says) in [
        ("tessera.1", "A Rust runtime for HPC clusters"),
        ("tessera-svd.1", "Singular value decomposition"),
        ("tessera-jobqueue-submit.1", "submit"),
    ] {
        let text = std::fs::read_to_string(man1.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH") && text.contains(says), "{page}: {text}");
    }
    // A directory that cannot be made is named.
    let file = dir.join("a-file");
    std::fs::write(&file, "").unwrap();
    let o = tessera(&["man", file.join("man1").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("a-file/man1") && !stderr(&o).contains("panicked"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- elastic clusters: `tessera scheduler` and `tessera worker` -------------

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A temporary HOME-like directory, so no test touches ~/.config.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tessera_cmd(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.env_remove("RUST_LOG")
        .env_remove("OMPI_COMM_WORLD_SIZE")
        .env("HOME", dir)
        .env_remove("XDG_CONFIG_HOME")
        .env("TESSERA_SECRET_FILE", dir.join("secret"))
        .env("TESSERA_SCHEDULER_FILE", dir.join("scheduler.json"))
        .stdin(Stdio::null());
    c
}

/// `tessera scheduler` on 127.0.0.1; returns it, its address, and its stderr (read on a thread).
fn start_scheduler(dir: &Path) -> (Child, String, std::thread::JoinHandle<String>) {
    let mut child = tessera_cmd(dir)
        .args(["scheduler", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let addr = first.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(first.contains("listening on 127.0.0.1:"), "{first}");
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
    });
    let mut err = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    (child, addr, log)
}

/// Child processes that are killed if the test fails before they exit.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_child(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &Child) {
    // SAFETY: signalling a child process of ours.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

#[test]
fn demo_and_bench_run_on_workers_that_joined_a_scheduler() {
    let dir = temp_dir("elastic");
    let (sched, addr, log) = start_scheduler(&dir);
    let mut procs = Procs(vec![sched]);
    let mode = std::fs::metadata(dir.join("secret")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600, "the scheduler creates its secret owner-only");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("scheduler.json")).unwrap()).unwrap();
    assert_eq!(file["address"], addr.as_str());

    for i in 0..3 {
        let name = format!("job{i}");
        let mut w = tessera_cmd(&dir);
        w.args(["worker", "--threads", "1", "--name", &name]).stdout(Stdio::null()).stderr(Stdio::null());
        procs.0.push(w.spawn().unwrap());
    }
    let start = Instant::now();
    loop {
        let o = tessera_cmd(&dir).args(["workers", "--json"]).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let mut names: Vec<String> = last_json(&o)["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        if names.len() == 3 {
            assert_eq!(names, ["job0", "job1", "job2"]);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "workers did not join: {names:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = tessera_cmd(&dir).args(["--scheduler-file"]).arg(dir.join("scheduler.json")).arg("demo").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("over the tcp transport") && out.contains("randomized SVD") && out.contains("result checked"),
        "{out}"
    );
    assert!(out.contains("3 workers"), "{out}");

    let o = tessera_cmd(&dir)
        .args(["--scheduler", &addr, "bench", "overhead", "--tasks", "2000", "--repeat", "1", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let j = last_json(&o);
    assert_eq!(j["transport"], "tcp");
    assert_eq!(j["workers"], 3);

    // Retired by name (what a job queue's scale-down does), drained by
    // SIGTERM (what Slurm sends at the walltime), stopped with the scheduler.
    let o = tessera_cmd(&dir).args(["retire", "job1", "--json"]).output().unwrap();
    assert_eq!(only_json(&o)["retired"].as_array().unwrap().len(), 1);
    assert!(stderr(&o).contains("retired 1 workers"), "the text goes to stderr: {}", stderr(&o));
    assert_eq!(wait_child(&mut procs.0[2], Duration::from_secs(30)), Some(0));
    let o = tessera_cmd(&dir).args(["retire", "nosuchjob"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no worker with rank or name `nosuchjob`") && stderr(&o).contains("job0"),
        "{}",
        stderr(&o)
    );
    sigterm(&procs.0[1]);
    assert_eq!(wait_child(&mut procs.0[1], Duration::from_secs(30)), Some(0));
    sigterm(&procs.0[0]);
    assert_eq!(wait_child(&mut procs.0[0], Duration::from_secs(30)), Some(0));
    assert_eq!(wait_child(&mut procs.0[3], Duration::from_secs(30)), Some(0));
    assert!(!dir.join("scheduler.json").exists(), "the scheduler file is removed");
    let log = log.join().unwrap();
    assert!(log.contains("worker joined") && log.contains("worker asks to leave"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_missing_and_loose_secrets_are_refused_and_logged() {
    let dir = temp_dir("secrets");
    let (sched, addr, log) = start_scheduler(&dir);
    let mut procs = Procs(vec![sched]);
    // A worker holding another cluster's secret.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let o = tessera_cmd(&other).args(["worker", "--scheduler", &addr]).output().unwrap_or_else(|e| panic!("{e}"));
    // (its HOME has no secret yet: the worker does not create one)
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("secret file") && stderr(&o).contains("cannot read it"), "{}", stderr(&o));
    let wrong = other.join("secret");
    std::fs::write(&wrong, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = tessera_cmd(&other).args(["worker", "--scheduler", &addr]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("readable by group or others") && err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = tessera_cmd(&other).args(["worker", "--scheduler", &addr]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("wrong secret") && !stderr(&o).contains("panicked"), "{}", stderr(&o));

    // A peer that presents no secret, and one that is no Tessera peer at all.
    let mut raw = std::net::TcpStream::connect(&addr).unwrap();
    let mut hello = b"TESSERA".to_vec();
    hello.push(tessera::runtime::protocol::PROTOCOL_VERSION);
    hello.push(0);
    hello.extend_from_slice(&[0u8; 32]);
    raw.write_all(&hello).unwrap();
    let mut junk = std::net::TcpStream::connect(&addr).unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // Nothing of it became a worker.
    let o = tessera_cmd(&dir).args(["--scheduler", &addr, "info"]).output().unwrap();
    assert!(o.status.success());
    sigterm(&procs.0[0]);
    assert_eq!(wait_child(&mut procs.0[0], Duration::from_secs(30)), Some(0));
    let log = log.join().unwrap();
    assert!(log.contains("refused a connection: wrong secret"), "{log}");
    assert!(log.contains("refused a connection: no secret presented"), "{log}");
    assert!(log.contains("not a Tessera peer"), "{log}");
    assert!(log.contains("peer=127.0.0.1:"), "refusals name the peer's address: {log}");
    assert!(!log.contains("worker joined"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_elastic_flags_name_the_address_file_or_interface() {
    let dir = temp_dir("badflags");
    std::fs::write(dir.join("secret"), "00112233445566778899aabbccddeeff\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = tessera_cmd(&dir).args(["worker", "--scheduler", "127.0.0.1:1"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot connect to 127.0.0.1:1"), "{}", stderr(&o));
    let o = tessera_cmd(&dir).args(["worker", "--scheduler-file", "/nonexistent/sched.json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/sched.json"), "{}", stderr(&o));
    let o = tessera_cmd(&dir).args(["scheduler", "--interface", "nosuch0"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no interface `nosuch0`") && stderr(&o).contains("there are: "), "{}", stderr(&o));
    let o = tessera_cmd(&dir).args(["scheduler", "--listen", "not-an-address"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--listen `not-an-address`"), "{}", stderr(&o));
    let o = tessera_cmd(&dir).args(["worker", "--lifetime", "-3"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("-3"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_elastic_prints_join_and_drain_figures() {
    let dir = temp_dir("benchelastic");
    let o = tessera_cmd(&dir)
        .args(["bench", "elastic", "--workers", "2", "--mib", "1", "--repeat", "1", "--json"])
        .output()
        .unwrap();
    let j = only_json(&o);
    assert_eq!(j["workers"], 2);
    assert!(j["join_all_seconds"].as_f64().unwrap() > 0.0);
    assert!(j["drain_seconds"].as_f64().unwrap() > 0.0);
    assert!(j["exit_seconds"].as_f64().unwrap() >= j["drain_seconds"].as_f64().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

/// One rule finds the elastic cluster for every command: --scheduler, else
/// --scheduler-file (or TESSERA_SCHEDULER_FILE), else the default scheduler
/// file when it exists (not for a computing command given --launch local);
/// the computing commands say which transport they ran on.
#[test]
fn every_command_finds_the_elastic_cluster_by_one_rule() {
    let dir = temp_dir("rule");
    let file = dir.join("scheduler.json");
    let mut sched = tessera_cmd(&dir)
        .args(["scheduler", "--listen", "127.0.0.1:0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(sched.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let listening: serde_json::Value =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("scheduler --json: {e}: {first}"));
    assert_eq!(listening["event"], "listening");
    let addr = listening["address"].as_str().unwrap().to_owned();
    let mut procs = Procs(vec![sched]);
    for i in 0..2 {
        let mut w = tessera_cmd(&dir);
        w.args(["worker", "--threads", "1", "--json", "--name", &format!("w{i}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        procs.0.push(w.spawn().unwrap());
    }
    // No environment: only what each case gives.
    let bare = || {
        let mut c = tessera_cmd(&dir);
        c.env_remove("TESSERA_SCHEDULER_FILE");
        c
    };
    let start = Instant::now();
    loop {
        let o = bare().arg("--scheduler-file").arg(&file).args(["workers", "--json"]).output().unwrap();
        if only_json(&o)["workers"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the workers did not join");
        std::thread::sleep(Duration::from_millis(50));
    }
    let svd = |c: &mut Command| {
        let o = c.args(["svd", "--random", "400x6", "--json"]).output().unwrap();
        (only_json(&o), stderr(&o))
    };
    // An explicit scheduler file, and an explicit address.
    let (j, _) = svd(bare().arg("--scheduler-file").arg(&file));
    assert_eq!((j["transport"].as_str(), j["workers"].as_u64()), (Some("tcp"), Some(2)), "{j}");
    let (j, _) = svd(bare().args(["--scheduler", &addr]));
    assert_eq!(j["transport"], "tcp", "{j}");
    // Nothing given and no default file: the local cluster.
    let (j, _) = svd(bare().args(["--workers", "2"]));
    assert_eq!(j["transport"], "local", "{j}");
    let o = bare().args(["workers"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no elastic cluster") && stderr(&o).contains("--scheduler"), "{}", stderr(&o));
    // The default scheduler file, where `tessera scheduler` writes it by default.
    let default = dir.join(".config/tessera/scheduler.json");
    std::fs::create_dir_all(default.parent().unwrap()).unwrap();
    std::fs::copy(&file, &default).unwrap();
    let (j, err) = svd(&mut bare());
    assert_eq!(j["transport"], "tcp", "{j}");
    assert!(err.contains("elastic cluster at") && err.contains(".config/tessera/scheduler.json"), "{err}");
    let info = only_json(&bare().args(["info", "--json"]).output().unwrap());
    assert_eq!(info["elastic"]["address"], addr.as_str(), "{info}");
    let o = bare().args(["workers", "--json"]).output().unwrap();
    assert_eq!(only_json(&o)["workers"].as_array().unwrap().len(), 2);
    // ... which an explicit --launch local passes over.
    let (j, _) = svd(bare().args(["--launch", "local", "--workers", "2"]));
    assert_eq!(j["transport"], "local", "{j}");

    // The workers and the scheduler end with a JSON line each.
    sigterm(&procs.0[0]);
    assert_eq!(wait_child(&mut procs.0[0], Duration::from_secs(30)), Some(0));
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let stopped: serde_json::Value = serde_json::from_str(rest.trim()).unwrap_or_else(|e| panic!("{e}: {rest}"));
    assert_eq!(stopped["event"], "stopped");
    for w in &mut procs.0[1..] {
        assert_eq!(wait_child(w, Duration::from_secs(30)), Some(0));
        let mut text = String::new();
        w.stdout.take().unwrap().read_to_string(&mut text).unwrap();
        let j: serde_json::Value =
            serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("worker --json: {e}: {text}"));
        assert_eq!((j["stopped"].as_str(), j["failed"].as_bool()), (Some("shutdown"), Some(false)), "{j}");
    }
    // A default file left by a scheduler on this host that has exited is ignored, and said so.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let stale = serde_json::json!({"address": addr, "secret_file": dir.join("secret"), "pid": pid,
        "host": tessera::runtime::host::sys::hostname(), "started": 0});
    std::fs::write(&default, stale.to_string()).unwrap();
    let (j, err) = svd(bare().args(["--workers", "2"]));
    assert_eq!(j["transport"], "local", "{j}");
    assert!(err.contains("ignoring the scheduler file") && err.contains("has exited"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn workers_and_client_exit_naming_the_scheduler_when_it_dies_or_falls_silent() {
    for (signal, name) in [(libc::SIGKILL, "killed"), (libc::SIGSTOP, "stopped")] {
        let dir = temp_dir(&format!("sched-{name}"));
        let (sched, addr, _log) = start_scheduler(&dir);
        let mut procs = Procs(vec![sched]);
        let timeout = 2.0;
        let with_timeout = |c: &mut Command| {
            c.env("TESSERA_HEARTBEAT_TIMEOUT", timeout.to_string());
        };
        for _ in 0..2 {
            let mut w = tessera_cmd(&dir);
            with_timeout(&mut w);
            w.args(["worker", "--threads", "1"]).stdout(Stdio::null()).stderr(Stdio::piped());
            procs.0.push(w.spawn().unwrap());
        }
        let start = Instant::now();
        loop {
            let o = tessera_cmd(&dir).args(["workers", "--json"]).output().unwrap();
            if o.status.success() && last_json(&o)["workers"].as_array().is_some_and(|w| w.len() == 2) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the workers did not join");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut client = tessera_cmd(&dir);
        with_timeout(&mut client);
        client
            .args(["svd", "--random", "400000x400", "--k", "10", "--method", "randomized", "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        procs.0.push(client.spawn().unwrap());
        std::thread::sleep(Duration::from_millis(1500));
        assert!(procs.0[3].try_wait().unwrap().is_none(), "the computation outlasts the scheduler");
        // SAFETY: signalling a child process of ours.
        unsafe { libc::kill(procs.0[0].id() as i32, signal) };
        let lost = Instant::now();
        // Heartbeats every fraction of the timeout: noticed within it, plus slack for a loaded machine.
        let limit = Duration::from_secs_f64(3.0 * timeout + 5.0);
        for i in 1..4 {
            let code = wait_child(&mut procs.0[i], limit);
            let mut err = String::new();
            procs.0[i].stderr.take().unwrap().read_to_string(&mut err).unwrap();
            let who = if i == 3 { "client" } else { "worker" };
            assert!(matches!(code, Some(c) if c != 0), "{name} scheduler: {who} exited with {code:?}: {err}");
            let named = format!("lost the connection to the scheduler at {addr}");
            assert!(err.contains(&named), "{name} scheduler: the {who} names it: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
        assert!(lost.elapsed() < limit, "{name}: noticed in {:?}", lost.elapsed());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

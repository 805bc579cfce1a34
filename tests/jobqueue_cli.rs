//! `tessera jobqueue` without a batch system: scripts, config, dry runs, and
//! clear errors for bad input. Real Slurm and SGE runs are in `tests/batch.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tessera(args: &[&str]) -> Output {
    tessera_env(args, &[])
}

fn tessera_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.args(args).env_remove("RUST_LOG");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TESSERA_JOBQUEUE_")) {
        c.env_remove(k);
    }
    // No per-user config file gets in the way.
    c.env("XDG_CONFIG_HOME", scratch("no-config"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run tessera")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-jq-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A usage error (exit 2, clap's message naming `flag`), no panic, saying all of `says`.
fn usage_error(o: &Output, flag: &str, says: &[&str]) {
    let e = err(o);
    assert_eq!(o.status.code(), Some(2), "stdout: {} stderr: {e}", out(o));
    assert!(e.contains(&format!("for '{flag} <")), "the error names {flag}: {e}");
    assert!(!e.contains("panicked") && !e.contains("unexpected argument"), "{e}");
    for s in says {
        assert!(e.contains(s), "expected `{s}` in: {e}");
    }
}

/// Fails with exit 1, no panic, and says all of `says`.
fn refused(o: &Output, says: &[&str]) {
    let e = err(o);
    assert_eq!(o.status.code(), Some(1), "stdout: {} stderr: {e}", out(o));
    assert!(!e.contains("panicked"), "{e}");
    for s in says {
        assert!(e.contains(s), "expected `{s}` in: {e}");
    }
}

#[test]
fn the_issue_example_renders_an_srun_script_for_two_nodes() {
    let o = tessera(&[
        "jobqueue",
        "script",
        "--system",
        "slurm",
        "--nodes",
        "2",
        "--tasks-per-node",
        "4",
        "--walltime",
        "00:10:00",
        "--",
        "tessera",
        "svd",
        "data.h5:/X",
        "--k",
        "10",
        "-o",
        "out.h5",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let s = out(&o);
    for line in [
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --time=00:10:00",
        "#SBATCH --job-name=tessera-svd",
    ] {
        assert!(s.contains(&format!("{line}\n")), "{line}: {s}");
    }
    // `tessera` becomes this binary, so the job runs the same build.
    let me = env!("CARGO_BIN_EXE_tessera");
    assert!(s.contains(&format!("\nsrun {me} svd data.h5:/X --k 10 -o out.h5\n")), "{s}");
}

#[test]
fn script_json_and_every_system() {
    for (system, marker) in
        [("slurm", "#SBATCH"), ("pbs", "#PBS -l select="), ("torque", "#PBS -l nodes="), ("sge", "#$ -pe")]
    {
        let o = tessera(&["jobqueue", "script", "--json", "--system", system, "--", "tessera", "demo"]);
        assert!(o.status.success(), "{system}: {}", err(&o));
        let j: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
        assert_eq!(j["system"], system);
        assert!(j["script"].as_str().unwrap().contains(marker), "{system}: {j}");
        assert_eq!(j["job"]["job_name"], "tessera-demo");
    }
}

#[test]
fn unknown_system() {
    // A bad flag value is a usage error (exit 2; it was 1).
    let o = tessera(&["jobqueue", "script", "--system", "lsf", "--", "tessera", "demo"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    for says in ["unknown batch system", "`lsf`", "slurm, pbs, torque or sge", "--system"] {
        assert!(err(&o).contains(says), "expected `{says}` in: {}", err(&o));
    }
    assert!(!err(&o).contains("panicked"), "{}", err(&o));
    // The names the library accepts, in any case.
    let o = tessera(&["jobqueue", "script", "--json", "--system", "OpenPBS", "--", "tessera", "demo"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out(&o)).unwrap()["system"], "pbs");
    // A profile or the environment is not the command line: exit 1, named.
    let o = tessera_env(&["jobqueue", "status", "1"], &[("TESSERA_JOBQUEUE_SYSTEM", "loadleveler")]);
    refused(&o, &["TESSERA_JOBQUEUE_SYSTEM", "`loadleveler`"]);
}

#[test]
fn bad_flag_values_are_usage_errors_naming_the_flag() {
    let script = |extra: &[&str]| {
        let mut a = vec!["jobqueue", "script", "--system", "slurm"];
        a.extend(extra);
        a.extend(["--", "tessera", "demo"]);
        tessera(&a)
    };
    for (flags, flag, says) in [
        (&["--launcher", "aprun"][..], "--launcher", "auto, srun, mpirun, none"),
        (&["--nodes", "0"], "--nodes", "0 is not in 1.."),
        (&["--tasks-per-node", "0"], "--tasks-per-node", "0 is not in 1.."),
        (&["--cores-per-task", "0"], "--cores-per-task", "0 is not in 1.."),
    ] {
        let o = script(flags);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {}", err(&o));
        assert!(err(&o).contains(flag) && err(&o).contains(says), "{flags:?}: {}", err(&o));
    }
    for args in [
        &["jobqueue", "wait", "1", "--poll", "-1"][..],
        &["jobqueue", "wait", "1", "--poll", "0"],
        &["jobqueue", "scale", "2", "--wait-ready", "-3"],
    ] {
        let o = tessera(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", err(&o));
        assert!(err(&o).contains("is not a number of seconds"), "{args:?}: {}", err(&o));
        assert!(!err(&o).contains("unexpected argument"), "{args:?}: {}", err(&o));
    }
    // A valid launcher still reaches the script.
    let o = script(&["--launcher", "mpirun"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("mpirun"), "{}", out(&o));
}

#[test]
fn walltimes_as_slurm_takes_them_and_with_units() {
    for (walltime, slurm, pbs) in [
        ("1h", "01:00:00", "01:00:00"),
        ("90m", "01:30:00", "01:30:00"),
        ("1h30m", "01:30:00", "01:30:00"),
        ("2-12:00:00", "2-12:00:00", "60:00:00"),
        ("2-12", "2-12:00:00", "60:00:00"),
        ("1-06:30", "1-06:30:00", "30:30:00"),
        ("36:00:00", "1-12:00:00", "36:00:00"),
    ] {
        for (system, line) in [("slurm", format!("#SBATCH --time={slurm}\n")), ("pbs", format!("walltime={pbs}\n"))] {
            let o =
                tessera(&["jobqueue", "script", "--system", system, "--walltime", walltime, "--", "tessera", "demo"]);
            assert!(o.status.success(), "{walltime}: {}", err(&o));
            assert!(out(&o).contains(&line), "{walltime} on {system}: expected {line:?} in {}", out(&o));
        }
    }
    for bad in ["1x", "2-24", "1m1h", "0h"] {
        let o = tessera(&["jobqueue", "script", "--system", "slurm", "--walltime", bad, "--", "tessera", "demo"]);
        usage_error(&o, "--walltime", &[&format!("`{bad}`")]);
    }
    // From the environment (or a profile) it is no usage error: exit 1, the source named.
    let o = tessera_env(
        &["jobqueue", "script", "--system", "slurm", "--", "tessera", "demo"],
        &[("TESSERA_JOBQUEUE_WALLTIME", "1x")],
    );
    refused(&o, &["walltime (from environment TESSERA_JOBQUEUE_WALLTIME)", "`1x`"]);
}

#[test]
fn malformed_walltime_and_memory_units() {
    let script = |extra: &[&str]| {
        let mut a = vec!["jobqueue", "script", "--system", "slurm"];
        a.extend(extra);
        a.extend(["--", "tessera", "demo"]);
        tessera(&a)
    };
    // Malformed values are usage errors, as any flag's (exit 2), in the
    // words of the parser a profile's value goes through.
    usage_error(&script(&["--walltime", "90"]), "--walltime", &["HH:MM:SS", "`90`"]);
    usage_error(&script(&["--walltime", "00:61:00"]), "--walltime", &["below 60"]);
    usage_error(&script(&["--memory", "4G"]), "--memory", &["ambiguous", "4GiB", "4GB"]);
    usage_error(&script(&["--memory", "4"]), "--memory", &["unit is required"]);
    usage_error(&script(&["--memory", "4 gigabytes"]), "--memory", &["unknown unit"]);
    usage_error(&script(&["--array", "1-"]), "--array", &["START-END"]);
    usage_error(&script(&["--env", "X"]), "--env", &["NAME=VALUE"]);
}

#[test]
fn values_that_would_inject_a_directive_are_refused() {
    let script = |extra: &[&str]| {
        let mut a = vec!["jobqueue", "script", "--system", "slurm"];
        a.extend(extra);
        a.extend(["--", "tessera", "demo"]);
        tessera(&a)
    };
    refused(&script(&["--job-name", "x\n#SBATCH --uid=0"]), &["job_name (from flag --job-name)", "line break"]);
    refused(&script(&["--queue", "debug\" --uid=0"]), &["queue (from flag --queue)", "no spaces, quotes"]);
    refused(&script(&["--account", "a'b"]), &["account"]);
    refused(&script(&["--directive", "--comment=a\n#SBATCH --uid=0"]), &["directives", "line break"]);
    refused(&script(&["--env", "X=1\nexport Y=2"]), &["env.X", "line break"]);
    refused(&script(&["--log-dir", "/tmp/$(whoami)"]), &["log_dir", "no spaces, quotes or $"]);
    refused(&script(&["--prologue", "module load a\rb"]), &["prologue", "line break"]);
    // Shell characters in the command are quoted, not refused.
    let o = tessera(&["jobqueue", "script", "--system", "slurm", "--launcher", "none", "--", "echo", "$(id)", "a b"]);
    assert!(out(&o).contains("\necho '$(id)' 'a b'\n"), "{}", out(&o));
    let o = tessera(&["jobqueue", "script", "--system", "slurm", "--", "echo", "x\ny"]);
    refused(&o, &["command argument 2", "line break"]);
}

/// `--json` of the commands that ask the batch system: stdout is one JSON
/// document and nothing else, the exit code as without it. Slurm's commands
/// are stand-ins on PATH replaying captured output (jobqueue/tests/data);
/// tests/batch.rs runs the real ones.
#[test]
fn status_wait_and_list_print_only_json() {
    use std::os::unix::fs::PermissionsExt;
    let bin = scratch("fake-slurm");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobqueue/tests/data/slurm");
    // A capture's stdout: from its second line to the `--- stderr ---` marker.
    let replay = |file: &str| format!("sed -n '2,/^--- stderr ---$/p' '{}' | sed '$d'", data.join(file).display());
    // slurmctld knows jobs 9 (completed) and 10 (failed, exit 3); accounting
    // knows no other; the queue lists one job of Tessera's and one not.
    for (program, body) in [
        (
            "scontrol",
            format!(
                "case \"$4\" in\n9) {};;\n10) {};;\n*) echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1;;\nesac\n",
                replay("status-completed-scontrol.txt"),
                replay("status-failed-scontrol.txt")
            ),
        ),
        ("sacct", "exit 0\n".to_owned()),
        ("squeue", "printf '9|COMPLETED|None|tessera-demo\\n11|RUNNING|None|other\\n'\n".to_owned()),
    ] {
        let path = bin.join(program);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let run = |args: &[&str]| {
        let o = tessera_env(&[&["jobqueue", "--json"][..], args, &["--system", "slurm"]].concat(), &[("PATH", &path)]);
        let text = out(&o);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{args:?}: stdout is not one JSON document ({e}):\n{text}\nstderr: {}", err(&o))
        });
        (o.status.code(), value)
    };
    let (code, j) = run(&["status", "9", "10"]);
    assert_eq!(code, Some(0), "{j}");
    let states: Vec<(&str, &str)> =
        j.as_array().unwrap().iter().map(|s| (s["job_id"].as_str().unwrap(), s["state"].as_str().unwrap())).collect();
    assert_eq!(states, [("9", "completed"), ("10", "failed")], "{j}");
    assert_eq!(j[1]["exit_code"], 3, "{j}");
    // A job that fails the command: its error in the array, exit 1.
    let (code, j) = run(&["status", "9", "404"]);
    assert_eq!(code, Some(1), "{j}");
    assert!(j[1]["error"].as_str().is_some_and(|e| e.contains("404")), "{j}");
    assert_eq!(j[0]["state"], "completed", "the other ids are still answered: {j}");
    // wait exits with the job's exit code.
    let (code, j) = run(&["wait", "10"]);
    assert_eq!((code, j["status"]["state"].as_str(), j["wait_exit_code"].as_i64()), (Some(3), Some("failed"), Some(3)));
    let (code, j) = run(&["list"]);
    assert_eq!(code, Some(0), "{j}");
    assert_eq!(j.as_array().unwrap().len(), 1, "only jobs named tessera*: {j}");
    assert_eq!((j[0]["job_id"].as_str(), j[0]["name"].as_str()), (Some("9"), Some("tessera-demo")), "{j}");
}

#[test]
fn a_missing_submit_command_names_the_system_and_how_to_choose_another() {
    let empty = scratch("empty-path");
    let logs = scratch("missing-cmd-logs");
    let logs = logs.to_str().unwrap();
    let path = empty.to_str().unwrap();
    for (system, program) in [("slurm", "sbatch"), ("pbs", "qsub"), ("sge", "qsub")] {
        let o = tessera_env(
            &["jobqueue", "submit", "--system", system, "--log-dir", logs, "--", "tessera", "demo"],
            &[("PATH", path)],
        );
        refused(&o, &[&format!("`{program}` not found on PATH"), &format!("the {system} batch system"), "--system"]);
    }
    let o = tessera_env(&["jobqueue", "status", "--system", "slurm", "12"], &[("PATH", path)]);
    refused(&o, &["`scontrol` not found on PATH", "slurm"]);
    // Nothing to detect: say so, and how to name one.
    let o = tessera_env(&["jobqueue", "list"], &[("PATH", path)]);
    refused(&o, &["no batch system found", "--system"]);
}

#[test]
fn config_syntax_errors_name_file_line_and_column() {
    let dir = scratch("bad-config");
    let f = dir.join("jobqueue.toml");
    std::fs::write(&f, "[site]\nqueue = \"debug\"\nnodes = = 2\n").unwrap();
    let o = tessera(&["jobqueue", "--config", f.to_str().unwrap(), "config", "show"]);
    refused(&o, &[&format!("{}:3:9", f.display())]);
    std::fs::write(&f, "[site]\nmemroy = \"4GiB\"\n").unwrap();
    let o = tessera(&["jobqueue", "--config", f.to_str().unwrap(), "config", "show"]);
    refused(&o, &[&format!("{}:2", f.display()), "unknown key `memroy`"]);
    let o = tessera(&["jobqueue", "--config", dir.join("nope.toml").to_str().unwrap(), "config", "show"]);
    refused(&o, &["nope.toml"]);
}

#[test]
fn config_show_merges_file_environment_and_flags_and_says_where_each_came_from() {
    let dir = scratch("good-config");
    let f = dir.join("jobqueue.toml");
    std::fs::write(
        &f,
        "default = \"big\"\n\n[big]\nsystem = \"slurm\"\nqueue = \"long\"\nmemory = \"64GiB\"\nnodes = 4\n\n[small]\nsystem = \"sge\"\nnodes = 1\n",
    )
    .unwrap();
    let o = tessera_env(
        &["jobqueue", "--json", "config", "show", "--nodes", "8"],
        &[("TESSERA_JOBQUEUE_CONFIG", f.to_str().unwrap()), ("TESSERA_JOBQUEUE_QUEUE", "short")],
    );
    assert!(o.status.success(), "{}", err(&o));
    let j: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(j["profile"], "big");
    let s = &j["settings"];
    assert_eq!(s["system"]["source"], format!("{}:4", f.display()));
    assert_eq!(
        (s["queue"]["value"].as_str(), s["queue"]["source"].as_str()),
        (Some("\"short\""), Some("environment TESSERA_JOBQUEUE_QUEUE"))
    );
    assert_eq!((s["nodes"]["value"].as_str(), s["nodes"]["source"].as_str()), (Some("8"), Some("flag --nodes")));
    assert_eq!(s["tasks_per_node"]["source"], "default");
    // Another profile, in text.
    let o = tessera(&["jobqueue", "--config", f.to_str().unwrap(), "--profile", "small", "config", "show"]);
    assert!(o.status.success(), "{}", err(&o));
    let t = out(&o);
    assert!(t.contains("profile [small]") && t.contains("system = \"sge\""), "{t}");
    let o = tessera(&["jobqueue", "--config", f.to_str().unwrap(), "--profile", "huge", "config", "show"]);
    refused(&o, &["no profile [huge]", "big, small"]);
}

#[test]
fn dry_run_writes_the_script_under_the_log_dir_without_submitting() {
    let logs = scratch("dry-run");
    let o = tessera_env(
        &[
            "jobqueue",
            "--json",
            "submit",
            "--dry-run",
            "--system",
            "pbs",
            "--log-dir",
            logs.to_str().unwrap(),
            "--",
            "tessera",
            "demo",
        ],
        &[("PATH", "/nonexistent")],
    );
    assert!(o.status.success(), "{}", err(&o));
    let j: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(j["submitted"], false);
    let path = Path::new(j["script_path"].as_str().unwrap());
    assert!(path.starts_with(&logs), "{}", path.display());
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(text, j["script"].as_str().unwrap());
    assert!(text.contains("mpirun -np 1 -machinefile \"$PBS_NODEFILE\""), "{text}");
}

#[test]
fn user_templates_from_a_profile_resolve_next_to_the_config_file() {
    let dir = scratch("template");
    std::fs::write(dir.join("site.j2"), "#!/bin/sh\n# {{ system }} {{ job.total_tasks }} ranks\n{{ command }}\n")
        .unwrap();
    let f = dir.join("jobqueue.toml");
    std::fs::write(&f, "[site]\nsystem = \"slurm\"\ntemplate = \"site.j2\"\ntasks_per_node = 3\n").unwrap();
    let o = tessera(&["jobqueue", "--config", f.to_str().unwrap(), "script", "--", "tessera", "demo"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).starts_with("#!/bin/sh\n# slurm 3 ranks\nsrun "), "{}", out(&o));
    std::fs::write(dir.join("site.j2"), "{{ command }}\n{% if %}\n").unwrap();
    let o = tessera(&["jobqueue", "--config", f.to_str().unwrap(), "script", "--", "tessera", "demo"]);
    refused(&o, &["site.j2: line 2"]);
}

#[test]
fn commands_without_their_arguments_are_usage_errors() {
    assert_eq!(tessera(&["jobqueue", "status"]).status.code(), Some(2));
    assert_eq!(tessera(&["jobqueue", "cancel"]).status.code(), Some(2));
    let o = tessera(&["jobqueue", "script", "--system", "slurm"]);
    refused(&o, &["no command", "--"]);
    let o = tessera(&["jobqueue", "script", "--system", "slurm", "--scheduler", "h:1"]);
    assert_eq!(o.status.code(), Some(2), "--scheduler needs --secret-file: {}", err(&o));
    let o = tessera(&[
        "jobqueue",
        "script",
        "--system",
        "slurm",
        "--scheduler",
        "login1:7070",
        "--secret-file",
        "/x/secret",
        "--walltime",
        "01:00:00",
        "--nodes",
        "2",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let s = out(&o);
    assert!(s.contains("#SBATCH --job-name=tessera-worker") && s.contains(" worker --scheduler login1:7070 --secret-file /x/secret --threads 1 --lifetime 3300 --lifetime-stagger 75 --drain-timeout 150"), "{s}");
}

/// The worker command line a job script runs is one the real `tessera
/// worker` accepts: every flag it renders is in `tessera worker --help`, and
/// run with a scheduler nobody listens at, it fails on that address (exit
/// 1), never on its arguments (clap's exit 2).
#[test]
fn the_rendered_worker_command_line_is_what_tessera_worker_accepts() {
    use tessera::jobqueue::{worker_command, JobSpec, SchedulerRef, WorkerOptions};
    let dir = scratch("worker-argv");
    let secret = dir.join("secret");
    tessera::runtime::transport::secret::Secret::load_or_create(&secret).unwrap();
    let help = out(&tessera(&["worker", "--help"]));
    let spec = JobSpec { cores_per_task: 2, walltime: Some("01:00:00".parse().unwrap()), ..JobSpec::default() };
    for (scheduler, fails_on) in [
        (SchedulerRef::Address("127.0.0.1:1".into()), "cannot connect to 127.0.0.1:1"),
        (SchedulerRef::File(dir.join("no-scheduler.json")), "cannot read scheduler file"),
    ] {
        let opts = WorkerOptions {
            tessera: env!("CARGO_BIN_EXE_tessera").into(),
            scheduler,
            secret_file: Some(secret.clone()),
            drain_before: None,
            threads: None,
        };
        let argv = worker_command(&opts, &spec);
        assert_eq!(argv[1], "worker");
        // Workers of GPU jobs drive the node's GPUs, one each.
        let gpu_argv = worker_command(&opts, &JobSpec { gpus_per_node: 4, ..spec.clone() });
        assert!(
            gpu_argv.windows(2).any(|w| w == ["--gpus", "all"]) && !argv.contains(&"--gpus".to_string()),
            "{gpu_argv:?}"
        );
        for flag in gpu_argv.iter().filter(|a| a.starts_with("--")) {
            assert!(help.contains(&format!("{flag} <")), "`tessera worker --help` has no {flag}:\n{help}");
        }
        assert!(argv.contains(&"--lifetime".to_string()) && argv.contains(&"--threads".to_string()), "{argv:?}");
        let o = Command::new(&argv[0]).args(&argv[1..]).env_remove("RUST_LOG").output().unwrap();
        refused(&o, &[fails_on]);
    }
}

/// Bad input to scale and adapt: a clear error naming the flag or file, no
/// job submitted, nothing panics.
#[test]
fn scale_and_adapt_refuse_bad_input_before_submitting_anything() {
    let dir = scratch("scale-bad");
    let logs = dir.join("logs");
    let logs = logs.to_str().unwrap();
    let common = ["--system", "slurm", "--log-dir", logs];
    // Not a number of workers: clap's usage error.
    for n in ["-1", "many", "4.5"] {
        let o = tessera(&[&["jobqueue", "scale", n][..], &common].concat());
        assert_eq!(o.status.code(), Some(2), "scale {n}: {}", err(&o));
    }
    // No scheduler: the scheduler file it looked for is named.
    let missing = dir.join("none.json");
    let o =
        tessera(&[&["--scheduler-file", missing.to_str().unwrap(), "jobqueue", "scale", "2"][..], &common].concat());
    refused(&o, &["cannot read scheduler file", "none.json"]);
    // A scheduler file whose scheduler is gone: not reachable, named.
    let secret = dir.join("secret");
    tessera::runtime::transport::secret::Secret::load_or_create(&secret).unwrap();
    let stale = dir.join("stale.json");
    std::fs::write(
        &stale,
        format!(r#"{{"address":"127.0.0.1:1","secret_file":"{}","pid":1,"host":"h","started":0}}"#, secret.display()),
    )
    .unwrap();
    let o = tessera(&[&["--scheduler-file", stale.to_str().unwrap(), "jobqueue", "scale", "2"][..], &common].concat());
    refused(&o, &["no scheduler reachable at 127.0.0.1:1"]);
    let o = tessera(&["--scheduler-file", stale.to_str().unwrap(), "jobqueue", "adapt", "--min", "3", "--max", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    // Bounds and timings.
    for (args, says) in [
        (vec!["adapt", "--min", "3", "--max", "2"], "min: must not exceed --max 2"),
        (
            vec!["adapt", "--min", "0", "--max", "3", "--nodes", "2", "--tasks-per-node", "2"],
            "each job starts 4 workers",
        ),
        (vec!["scale", "2", "--array", "1-4"], "--array"),
        (vec!["scale", "2", "--walltime", "00:01:00", "--drain-before", "60"], "drain_before:"),
    ] {
        let o = tessera(&[&["--scheduler-file", stale.to_str().unwrap(), "jobqueue"][..], &args, &common].concat());
        refused(&o, &[says]);
    }
    // Values that mean nothing are usage errors.
    for (flags, flag, says) in [
        (&["--max", "0"][..], "--max", "0 is not in 1.."),
        (&["--max", "2", "--interval", "0"], "--interval", "`0` is not a number of seconds > 0"),
        (&["--max", "2", "--interval", "x"], "--interval", "not a number of seconds"),
        (&["--max", "2", "--tasks-per-worker", "0"], "--tasks-per-worker", "0 is not in 1.."),
        (&["--max", "2", "--walltime", "90"], "--walltime", "`90`"),
    ] {
        let o = tessera(&[&["jobqueue", "adapt", "--min", "0"][..], flags, &common].concat());
        usage_error(&o, flag, &[says]);
    }
    let o = tessera(&[&["jobqueue", "scale", "2", "--walltime", "90"][..], &common].concat());
    usage_error(&o, "--walltime", &["`90`"]);
    // No batch system: which one was expected and how to choose.
    let o = tessera_env(
        &["--scheduler-file", stale.to_str().unwrap(), "jobqueue", "scale", "2", "--log-dir", logs],
        &[("PATH", "/nonexistent")],
    );
    refused(&o, &["no batch system found", "--system"]);
    assert!(!Path::new(logs).join("tessera-pool-127.0.0.1_1.json").exists(), "nothing was recorded");
}

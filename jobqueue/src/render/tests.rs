//! Whole-file snapshots of the scripts (`src/render/snapshots/`), and the
//! rules they follow.

use super::*;

fn spec() -> JobSpec {
    JobSpec {
        job_name: "tessera-svd".into(),
        nodes: 2,
        tasks_per_node: 4,
        cores_per_task: 2,
        memory: Some("16GB".parse().unwrap()),
        walltime: Some("00:10:00".parse().unwrap()),
        queue: Some("batch".into()),
        account: Some("proj42".into()),
        log_dir: "/scratch/me/logs".into(),
        workdir: "/scratch/me/run".into(),
        env: [("OMP_NUM_THREADS".into(), "2".into()), ("GREETING".into(), "it's here".into())].into(),
        prologue: vec!["module load openmpi".into()],
        ..JobSpec::default()
    }
}

fn svd() -> Vec<String> {
    ["/opt/tessera/bin/tessera", "svd", "data.h5:/X", "--k", "10", "-o", "out.h5"].map(String::from).to_vec()
}

fn mpi(system: System) -> Payload {
    let launcher = match system {
        System::Slurm => Launcher::Srun { mpi: Some("pmix".into()) },
        _ => Launcher::Mpirun,
    };
    Payload::Mpi { argv: svd(), launcher }
}

fn workers() -> Payload {
    Payload::Workers(WorkerOptions {
        tessera: "/opt/tessera/bin/tessera".into(),
        scheduler: SchedulerRef::Address("login1:7070".into()),
        secret_file: Some("/home/me/.config/tessera/secret".into()),
        drain_before: None,
        threads: None,
    })
}

fn script(system: System, spec: &JobSpec, payload: &Payload) -> String {
    render(system, spec, payload, &Template::Builtin).unwrap()
}

#[test]
fn slurm_mpi_job() {
    insta::assert_snapshot!(script(System::Slurm, &spec(), &mpi(System::Slurm)));
}

#[test]
fn pbs_pro_mpi_job() {
    insta::assert_snapshot!(script(System::Pbs, &spec(), &mpi(System::Pbs)));
}

#[test]
fn torque_mpi_job() {
    insta::assert_snapshot!(script(System::Torque, &spec(), &mpi(System::Torque)));
}

#[test]
fn sge_mpi_job() {
    insta::assert_snapshot!(script(System::Sge, &spec(), &mpi(System::Sge)));
}

#[test]
fn worker_jobs_for_every_system() {
    let spec = JobSpec { nodes: 1, tasks_per_node: 2, epilogue: vec!["echo done".into()], ..spec() };
    for system in System::ALL {
        insta::assert_snapshot!(format!("workers_{system}"), script(system, &spec, &workers()));
    }
}

#[test]
fn arrays_extra_directives_skips_and_gpus() {
    let spec = JobSpec {
        nodes: 1,
        tasks_per_node: 1,
        cores_per_task: 1,
        gpus_per_node: 1,
        array: Some("1-9:2%3".parse().unwrap()),
        directives: vec!["--constraint=haswell".into()],
        skip: vec!["--account".into(), "-A ".into(), "-P ".into(), "mem".into()],
        env: Default::default(),
        prologue: vec![],
        ..spec()
    };
    let run = Payload::Mpi { argv: vec!["./my_program".into(), "$HOME".into()], launcher: Launcher::None };
    for system in System::ALL {
        insta::assert_snapshot!(format!("array_{system}"), script(system, &spec, &run));
    }
}

#[test]
fn memory_is_rendered_in_each_systems_unit_rounded_up() {
    // 16 GB = 15258.79 MiB: every system asks for 15259 MiB per node, never less.
    let s = spec();
    assert!(script(System::Slurm, &s, &mpi(System::Slurm)).contains("#SBATCH --mem=15259M\n"));
    assert!(script(System::Pbs, &s, &mpi(System::Pbs)).contains(":mem=15259mb\n"));
    // Torque: the whole job (2 nodes).
    assert!(script(System::Torque, &s, &mpi(System::Torque)).contains("#PBS -l mem=30518mb\n"));
    // SGE: per slot (8 slots a node).
    assert!(script(System::Sge, &s, &mpi(System::Sge)).contains("#$ -l mem_free=1908M\n"));
    let gib = JobSpec { memory: Some("16GiB".parse().unwrap()), ..s };
    assert!(script(System::Slurm, &gib, &mpi(System::Slurm)).contains("#SBATCH --mem=16384M\n"));
}

#[test]
fn user_templates_see_the_same_variables_and_errors_name_the_line() {
    let dir = std::env::temp_dir().join(format!("tessera-jq-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t = dir.join("site.sh.j2");
    std::fs::write(
        &t,
        "#!/bin/sh\n{% for d in directives %}{{ d }}\n{% endfor %}# site launcher\nsite-launch -n {{ job.total_tasks }} {{ argv | join(' ') }}\n",
    )
    .unwrap();
    let out = render(System::Slurm, &spec(), &mpi(System::Slurm), &Template::File(t.clone())).unwrap();
    assert!(out.contains("#SBATCH --nodes=2\n") && out.contains("\nsite-launch -n 8 /opt/tessera/bin/tessera svd"));
    std::fs::write(&t, "line one\n{{ job.nodez }}\n").unwrap();
    let e = render(System::Slurm, &spec(), &mpi(System::Slurm), &Template::File(t.clone())).unwrap_err().to_string();
    assert!(e.contains("site.sh.j2: line 2") && e.contains("undefined"), "{e}");
    std::fs::write(&t, "{% for x in directives %}\n").unwrap();
    let e = render(System::Slurm, &spec(), &mpi(System::Slurm), &Template::File(t.clone())).unwrap_err().to_string();
    assert!(e.contains("site.sh.j2: line"), "{e}");
    let missing = dir.join("nope.j2");
    let e = render(System::Slurm, &spec(), &mpi(System::Slurm), &Template::File(missing)).unwrap_err().to_string();
    assert!(e.contains("nope.j2"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn command_words_are_quoted_and_control_characters_refused() {
    assert_eq!(shell_quote("data.h5:/X"), "data.h5:/X");
    assert_eq!(shell_quote("a b"), "'a b'");
    assert_eq!(shell_quote("it's"), "'it'\\''s'");
    assert_eq!(shell_quote("$(rm -rf ~)"), "'$(rm -rf ~)'");
    assert_eq!(shell_quote(""), "''");
    let run = Payload::Mpi { argv: vec!["tessera".into(), "x\n#SBATCH --uid=0".into()], launcher: Launcher::None };
    let e = render(System::Slurm, &JobSpec::default(), &run, &Template::Builtin).unwrap_err().to_string();
    assert!(e.starts_with("command argument 2:") && e.contains("line break"), "{e}");
    let run = Payload::Mpi { argv: vec![], launcher: Launcher::None };
    assert!(render(System::Slurm, &JobSpec::default(), &run, &Template::Builtin).is_err());
}

#[test]
fn launchers_are_checked_against_the_system() {
    assert_eq!(Launcher::parse("auto", None, System::Sge).unwrap(), Launcher::Mpirun);
    assert_eq!(
        Launcher::parse("auto", Some("pmix"), System::Slurm).unwrap(),
        Launcher::Srun { mpi: Some("pmix".into()) }
    );
    assert!(Launcher::parse("srun", None, System::Pbs).unwrap_err().to_string().contains("srun needs Slurm"));
    assert!(Launcher::parse("mpirun", Some("pmix"), System::Slurm).is_err());
    assert!(Launcher::parse("aprun", None, System::Slurm).unwrap_err().to_string().starts_with("launcher:"));
    assert!(Launcher::parse("srun", Some("pmix --x"), System::Slurm).unwrap_err().to_string().starts_with("mpi:"));
}

#[test]
fn the_worker_command_line_drains_before_the_walltime() {
    let Payload::Workers(opts) = workers() else { unreachable!() };
    // 10 min: a margin of 60 s, a quarter of it as stagger, half as the drain's limit.
    let argv = worker_command(&opts, &spec());
    assert_eq!(
        argv.join(" "),
        "/opt/tessera/bin/tessera worker --scheduler login1:7070 --secret-file /home/me/.config/tessera/secret \
         --threads 2 --lifetime 540 --lifetime-stagger 15 --drain-timeout 30"
    );
    let tail = |spec: &JobSpec, opts: &WorkerOptions| worker_command(opts, spec)[8..].join(" ");
    // Long jobs: at most 5 min of margin; short ones: at least 30 s, at most half.
    let long = JobSpec { walltime: Some("10:00:00".parse().unwrap()), ..spec() };
    assert_eq!(tail(&long, &opts), "--lifetime 35700 --lifetime-stagger 75 --drain-timeout 150");
    let short = JobSpec { walltime: Some("00:01:00".parse().unwrap()), ..spec() };
    assert_eq!(tail(&short, &opts), "--lifetime 30 --lifetime-stagger 7 --drain-timeout 15");
    let tiny = JobSpec { walltime: Some("00:00:20".parse().unwrap()), ..spec() };
    assert_eq!(tail(&tiny, &opts), "--lifetime 10 --lifetime-stagger 2 --drain-timeout 5");
    // Every worker of the batch is gone before the walltime, whatever its stagger.
    for w in [20u64, 60, 600, 3600, 36000, 7 * 86400] {
        let m = drain_margin(w);
        assert!(w - m + m / 4 + m / 2 < w, "walltime {w}: margin {m}");
    }
    let chosen = WorkerOptions { drain_before: Some(120), ..opts.clone() };
    assert_eq!(tail(&spec(), &chosen), "--lifetime 480 --lifetime-stagger 30 --drain-timeout 60");
    let none = JobSpec { walltime: None, ..spec() };
    assert!(!worker_command(&opts, &none).iter().any(|a| a.starts_with("--lifetime")));
    // A scheduler file instead of an address, and the secret it names.
    let file = WorkerOptions {
        scheduler: SchedulerRef::File("/home/me/sched.json".into()),
        secret_file: None,
        ..opts.clone()
    };
    assert_eq!(worker_command(&file, &none)[1..].join(" "), "worker --scheduler-file /home/me/sched.json --threads 2");
    // A margin as long as the walltime is refused by name.
    let e = render(
        System::Slurm,
        &spec(),
        &Payload::Workers(WorkerOptions { drain_before: Some(600), ..opts }),
        &Template::Builtin,
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("drain_before:") && e.contains("walltime is 600 s"), "{e}");
}

#[test]
fn single_index_pbs_arrays_are_refused() {
    let s = JobSpec { array: Some("3-3".parse().unwrap()), ..JobSpec::default() };
    let run = Payload::Mpi { argv: vec!["true".into()], launcher: Launcher::None };
    let e = render(System::Pbs, &s, &run, &Template::Builtin).unwrap_err().to_string();
    assert!(e.starts_with("array:") && e.contains("two indices"), "{e}");
}

#[test]
fn absolute_paths() {
    assert_eq!(absolute(Path::new("."), Path::new("/a/b")), Path::new("/a/b"));
    assert_eq!(absolute(Path::new("logs"), Path::new("/a")), Path::new("/a/logs"));
    assert_eq!(absolute(Path::new("/x/./y"), Path::new("/a")), Path::new("/x/y"));
}

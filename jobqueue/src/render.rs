//! Job scripts: directives per batch system, the launch line, and the
//! template (minijinja) that lays them out. Everything here is pure.
//!
//! A script is rendered in three steps: the [`JobSpec`] becomes the system's
//! default directives (minus those matching a `skip` pattern, plus the extra
//! ones); the [`Payload`] becomes one command line (an MPI launch of a user
//! program, or elastic workers); a template puts directives, environment,
//! prologue, command and epilogue in a file. The built-in template is
//! [`BUILTIN_TEMPLATE`]; a site can supply its own ([`Template::File`]),
//! which sees the same variables.

use std::path::{Path, PathBuf};

use minijinja::{context, Environment, UndefinedBehavior};
use serde::Serialize;

use crate::spec::check_line;
use crate::{Error, JobSpec, Result, System};

/// How the ranks of an MPI job are started inside the allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Launcher {
    /// `srun` (Slurm), optionally `--mpi=PLUGIN` (`pmix`, `pmi2`).
    Srun { mpi: Option<String> },
    /// `mpirun -np N -machinefile FILE` with the node file the system provides
    /// (`$PBS_NODEFILE`; SGE's `$PE_HOSTFILE` converted to Open MPI's format;
    /// under Slurm, Open MPI finds the allocation itself).
    Mpirun,
    /// The command runs once, as written (it starts its own ranks, or needs none).
    None,
}

impl Launcher {
    /// `srun` on Slurm, `mpirun` elsewhere.
    pub fn default_for(system: System) -> Launcher {
        match system {
            System::Slurm => Launcher::Srun { mpi: None },
            _ => Launcher::Mpirun,
        }
    }

    /// Parses `auto`, `srun`, `mpirun` or `none`; `mpi` is the srun plugin.
    pub fn parse(name: &str, mpi: Option<&str>, system: System) -> Result<Launcher> {
        if let Some(m) = mpi {
            crate::spec::check_word("mpi", m, "")?;
        }
        let l = match name {
            "auto" => match Launcher::default_for(system) {
                Launcher::Srun { .. } => Launcher::Srun { mpi: mpi.map(str::to_string) },
                other => other,
            },
            "srun" => Launcher::Srun { mpi: mpi.map(str::to_string) },
            "mpirun" => Launcher::Mpirun,
            "none" => Launcher::None,
            _ => return Err(Error::invalid("launcher", name, "choose auto, srun, mpirun or none")),
        };
        if matches!(l, Launcher::Srun { .. }) && system != System::Slurm {
            return Err(Error::invalid("launcher", name, format!("srun needs Slurm, not {system}; use mpirun")));
        }
        if mpi.is_some() && !matches!(l, Launcher::Srun { .. }) {
            return Err(Error::invalid("mpi", mpi.unwrap_or_default(), "the MPI plugin is an srun option (Slurm)"));
        }
        Ok(l)
    }
}

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "shape")]
pub enum Payload {
    /// One MPI job holding all ranks: `argv` (a `tessera` command or any
    /// program) started on every rank by `launcher`. The Tessera scheduler
    /// then lives inside the allocation; nothing reaches back to a login node.
    Mpi { argv: Vec<String>, launcher: Launcher },
    /// Elastic workers joining a running `tessera scheduler`: one worker per
    /// task (`srun`/`mpirun` start them when the job has several tasks).
    Workers(WorkerOptions),
}

/// How a worker job finds the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerRef {
    /// `HOST:PORT`: `tessera worker --scheduler HOST:PORT`.
    Address(String),
    /// The file `tessera scheduler` writes (on a file system the nodes
    /// share): `tessera worker --scheduler-file FILE`. Workers then follow a
    /// scheduler that was restarted on another port.
    File(PathBuf),
}

/// The command line of an elastic worker job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerOptions {
    /// The `tessera` binary the job runs.
    pub tessera: PathBuf,
    /// Where the scheduler is.
    pub scheduler: SchedulerRef,
    /// File holding the shared secret (readable by the job's user only);
    /// `None`: the one the scheduler file names, or the worker's default.
    pub secret_file: Option<PathBuf>,
    /// Seconds before the walltime ends at which the worker stops taking
    /// tasks, hands its blocks off and exits; `None`: [`drain_margin`].
    pub drain_before: Option<u64>,
    /// Compute threads per worker; `None`: the task's cores.
    pub threads: Option<u32>,
}

/// The default drain margin for a walltime of `walltime` seconds: a tenth
/// of it, between 30 s and 5 min, and never more than half of it.
pub fn drain_margin(walltime: u64) -> u64 {
    (walltime / 10).clamp(30, 300).min(walltime / 2)
}

/// The `tessera worker` command line, as argv. The one place it is written:
/// adjust here when the worker's flags change.
///
/// With a walltime `W` and a drain margin `m` ([`WorkerOptions::drain_before`],
/// else [`drain_margin`]), the worker gets `--lifetime W-m`,
/// `--lifetime-stagger m/4` (so the workers of one batch do not all leave
/// at once) and `--drain-timeout m/2`: it starts draining between `W - 5m/4`
/// and `W - 3m/4` and has left by `W - m/4` at the latest, before the batch
/// system kills the job. Its name (`tessera workers`) is the batch job's
/// id, which the worker reads from the job's environment.
pub fn worker_command(opts: &WorkerOptions, spec: &JobSpec) -> Vec<String> {
    let mut argv = vec![opts.tessera.to_string_lossy().into_owned(), "worker".into()];
    match &opts.scheduler {
        SchedulerRef::Address(a) => argv.extend(["--scheduler".into(), a.clone()]),
        SchedulerRef::File(f) => argv.extend(["--scheduler-file".into(), f.to_string_lossy().into_owned()]),
    }
    if let Some(s) = &opts.secret_file {
        argv.extend(["--secret-file".into(), s.to_string_lossy().into_owned()]);
    }
    argv.extend(["--threads".into(), opts.threads.unwrap_or(spec.cores_per_task).to_string()]);
    if spec.gpus_per_node > 0 {
        // Each worker drives one of the node's GPUs (by its local rank).
        argv.extend(["--gpus".into(), "all".into()]);
    }
    if let Some(w) = spec.walltime {
        let w = w.seconds();
        let margin = opts.drain_before.unwrap_or_else(|| drain_margin(w)).min(w);
        let secs = |s: u64| s.to_string();
        argv.extend([
            "--lifetime".into(),
            secs(w - margin),
            "--lifetime-stagger".into(),
            secs(margin / 4),
            "--drain-timeout".into(),
            secs((margin / 2).max(1)),
        ]);
    }
    argv
}

/// Where the script's layout comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// [`BUILTIN_TEMPLATE`].
    Builtin,
    /// A minijinja template file of the user's.
    File(PathBuf),
}

/// The built-in layout, the same for every system (the directives differ).
///
/// Variables a template sees: `system`, `prefix` (`#SBATCH`, `#PBS`, `#$`),
/// `directives` (full lines, prefix included), `job` (the [`JobSpec`]'s
/// fields, plus `total_tasks`), `workdir` and `log_dir` (shell-quoted),
/// `exports` (`NAME='value'`), `prologue`, `setup` (lines the launcher needs,
/// such as SGE's host file conversion), `command` (the whole launch line),
/// `argv` (its words, unquoted), `epilogue`, `shape` (`mpi` or `workers`).
pub const BUILTIN_TEMPLATE: &str = r#"#!/bin/bash
{% for d in directives -%}
{{ d }}
{% endfor -%}
# Tessera {{ shape }} job for {{ system }}: {{ job.nodes }} node(s) x {{ job.tasks_per_node }} task(s) x {{ job.cores_per_task }} core(s)
cd {{ workdir }} || exit 1
{% for e in exports -%}
export {{ e }}
{% endfor -%}
{% for l in prologue -%}
{{ l }}
{% endfor -%}
{% for l in setup -%}
{{ l }}
{% endfor -%}
{% if epilogue -%}
{{ command }}
tessera_status=$?
{% for l in epilogue -%}
{{ l }}
{% endfor -%}
exit $tessera_status
{% else -%}
{{ command }}
{% endif -%}
"#;

/// Renders the job script: pure, no file or command is touched except a
/// [`Template::File`], which is read.
pub fn render(system: System, spec: &JobSpec, payload: &Payload, template: &Template) -> Result<String> {
    spec.validate()?;
    let directives: Vec<String> = directives(system, spec)?
        .into_iter()
        .filter(|d| !spec.skip.iter().any(|pat| d.contains(pat.as_str())))
        .chain(spec.directives.iter().map(|d| d.trim().to_string()))
        .map(|d| format!("{} {d}", system.prefix()))
        .collect();
    let (argv, launch, setup) = launch_line(system, spec, payload)?;
    let exports: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={}", shell_quote(v))).collect();
    let shape = match payload {
        Payload::Mpi { .. } => "mpi",
        Payload::Workers(_) => "workers",
    };
    let mut job = serde_json::to_value(spec).map_err(|e| Error::invalid("job", "", e.to_string()))?;
    job["total_tasks"] = spec.total_tasks().into();
    job["walltime_seconds"] = spec.walltime.map(|w| w.seconds()).into();
    job["memory_bytes"] = spec.memory.map(|m| m.bytes()).into();
    let ctx = context! {
        system => system.name(),
        prefix => system.prefix(),
        directives,
        job,
        workdir => shell_quote(&spec.workdir.to_string_lossy()),
        log_dir => shell_quote(&spec.log_dir.to_string_lossy()),
        exports,
        prologue => spec.prologue,
        setup,
        command => launch,
        argv,
        epilogue => spec.epilogue,
        shape,
    };
    let (name, source) = match template {
        Template::Builtin => ("built-in".to_string(), BUILTIN_TEMPLATE.to_string()),
        Template::File(p) => {
            (p.display().to_string(), std::fs::read_to_string(p).map_err(|e| Error::io(p.as_path(), e))?)
        }
    };
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    let template_error = |e: minijinja::Error| Error::Template {
        name: name.clone(),
        line: e.line().unwrap_or(0),
        message: match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        },
    };
    env.add_template_owned(name.clone(), source).map_err(template_error)?;
    let t = env.get_template(&name).map_err(template_error)?;
    t.render(ctx).map_err(template_error)
}

/// The system's default directives for `spec`, without the prefix.
fn directives(system: System, spec: &JobSpec) -> Result<Vec<String>> {
    let log = spec.log_dir.to_string_lossy();
    let log = log.trim_end_matches('/');
    let mut d = Vec::new();
    match system {
        System::Slurm => {
            d.push(format!("--job-name={}", spec.job_name));
            d.push(format!("--nodes={}", spec.nodes));
            d.push(format!("--ntasks-per-node={}", spec.tasks_per_node));
            d.push(format!("--cpus-per-task={}", spec.cores_per_task));
            if let Some(m) = spec.memory {
                d.push(format!("--mem={}M", m.mib_ceil()));
            }
            if spec.gpus_per_node > 0 {
                d.push(format!("--gpus-per-node={}", spec.gpus_per_node));
            }
            if let Some(w) = spec.walltime {
                d.push(format!("--time={}", w.slurm()));
            }
            if let Some(q) = &spec.queue {
                d.push(format!("--partition={q}"));
            }
            if let Some(a) = &spec.account {
                d.push(format!("--account={a}"));
            }
            match spec.array {
                Some(a) => {
                    d.push(format!("--array={a}"));
                    d.push(format!("--output={log}/%x-%A_%a.out"));
                }
                None => d.push(format!("--output={log}/%x-%j.out")),
            }
        }
        System::Pbs => {
            d.push(format!("-N {}", spec.job_name));
            let mut select =
                format!("select={}:ncpus={}:mpiprocs={}", spec.nodes, spec.cores_per_node(), spec.tasks_per_node);
            if spec.cores_per_task > 1 {
                select.push_str(&format!(":ompthreads={}", spec.cores_per_task));
            }
            if let Some(m) = spec.memory {
                select.push_str(&format!(":mem={}mb", m.mib_ceil()));
            }
            if spec.gpus_per_node > 0 {
                select.push_str(&format!(":ngpus={}", spec.gpus_per_node));
            }
            d.push(format!("-l {select}"));
            if spec.nodes > 1 {
                d.push("-l place=scatter".into());
            }
            if let Some(w) = spec.walltime {
                d.push(format!("-l walltime={}", w.hms()));
            }
            pbs_common(&mut d, spec, log);
            if let Some(a) = spec.array {
                if a.end == a.start {
                    return Err(Error::invalid("array", a.to_string(), "PBS arrays need at least two indices"));
                }
                d.push(format!("-J {}", a.range()));
                if let Some(m) = a.max_running {
                    d.push(format!("-W max_run_subjobs={m}"));
                }
            }
        }
        System::Torque => {
            d.push(format!("-N {}", spec.job_name));
            let mut nodes = format!("nodes={}:ppn={}", spec.nodes, spec.cores_per_node());
            if spec.gpus_per_node > 0 {
                nodes.push_str(&format!(":gpus={}", spec.gpus_per_node));
            }
            d.push(format!("-l {nodes}"));
            if let Some(m) = spec.memory {
                // Torque's `mem` is for the whole job.
                d.push(format!("-l mem={}mb", m.mib_ceil() * u64::from(spec.nodes)));
            }
            if let Some(w) = spec.walltime {
                d.push(format!("-l walltime={}", w.hms()));
            }
            pbs_common(&mut d, spec, log);
            if let Some(a) = spec.array {
                // Torque's -t has no step: list the indices.
                let mut t = if a.step == 1 {
                    a.range()
                } else {
                    (a.start..=a.end).step_by(a.step as usize).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
                };
                if let Some(m) = a.max_running {
                    t.push_str(&format!("%{m}"));
                }
                d.push(format!("-t {t}"));
            }
        }
        System::Sge => {
            d.push(format!("-N {}", spec.job_name));
            d.push("-S /bin/bash".into());
            let slots = spec.total_tasks() * u64::from(spec.cores_per_task);
            d.push(format!("-pe {} {slots}", spec.parallel_env));
            if let Some(w) = spec.walltime {
                d.push(format!("-l h_rt={}", w.hms()));
            }
            let slots_per_node = spec.cores_per_node();
            if let Some(m) = spec.memory {
                // SGE's memory requests are per slot; M is 2^20 bytes.
                d.push(format!("-l {}={}M", spec.sge_memory_resource, m.mib_ceil().div_ceil(slots_per_node)));
            }
            if spec.gpus_per_node > 0 {
                d.push(format!("-l {}={}", spec.sge_gpu_resource, spec.gpus_per_node));
            }
            if let Some(q) = &spec.queue {
                d.push(format!("-q {q}"));
            }
            if let Some(a) = &spec.account {
                d.push(format!("-P {a}"));
            }
            d.push("-j y".into());
            d.push(format!("-o {log}/"));
            if let Some(a) = spec.array {
                d.push(format!("-t {}", a.range()));
                if let Some(m) = a.max_running {
                    d.push(format!("-tc {m}"));
                }
            }
        }
    }
    Ok(d)
}

fn pbs_common(d: &mut Vec<String>, spec: &JobSpec, log: &str) {
    if let Some(q) = &spec.queue {
        d.push(format!("-q {q}"));
    }
    if let Some(a) = &spec.account {
        d.push(format!("-A {a}"));
    }
    d.push("-S /bin/bash".into());
    d.push("-j oe".into());
    d.push(format!("-o {log}/"));
}

/// The command's argv, the whole launch line (quoted), and setup lines.
fn launch_line(system: System, spec: &JobSpec, payload: &Payload) -> Result<(Vec<String>, String, Vec<String>)> {
    let (argv, launcher) = match payload {
        Payload::Mpi { argv, launcher } => (argv.clone(), launcher.clone()),
        Payload::Workers(opts) => {
            if let Some(s) = &opts.secret_file {
                crate::spec::check_path("secret_file", s)?;
            }
            match &opts.scheduler {
                SchedulerRef::Address(a) => crate::spec::check_word("scheduler", a, ":[]")?,
                SchedulerRef::File(f) => crate::spec::check_path("scheduler_file", f)?,
            }
            if let (Some(m), Some(w)) = (opts.drain_before, spec.walltime) {
                if m >= w.seconds() {
                    return Err(Error::invalid(
                        "drain_before",
                        m.to_string(),
                        format!("the workers would drain before they start: the walltime is {} s", w.seconds()),
                    ));
                }
            }
            let launcher = if spec.total_tasks() > 1 { Launcher::default_for(system) } else { Launcher::None };
            (worker_command(opts, spec), launcher)
        }
    };
    if argv.is_empty() {
        return Err(Error::invalid("command", "", "no command to run: give it after `--`"));
    }
    for (i, a) in argv.iter().enumerate() {
        check_line(&format!("command argument {}", i + 1), a)?;
    }
    let quoted = argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ");
    let np = spec.total_tasks();
    let mut setup = Vec::new();
    let line = match launcher {
        Launcher::None => quoted,
        Launcher::Srun { mpi } => {
            let mut l = "srun".to_string();
            if let Some(m) = mpi {
                l.push_str(&format!(" --mpi={m}"));
            }
            if spec.cores_per_task > 1 {
                // Since Slurm 22.05 srun no longer inherits the batch job's --cpus-per-task.
                l.push_str(&format!(" --cpus-per-task={}", spec.cores_per_task));
            }
            format!("{l} {quoted}")
        }
        Launcher::Mpirun => match system {
            System::Pbs | System::Torque => format!("mpirun -np {np} -machinefile \"$PBS_NODEFILE\" {quoted}"),
            System::Sge => {
                // $PE_HOSTFILE lines are `host slots queue processors`; Open MPI wants `host slots=N`.
                setup.push("tessera_hosts=\"${TMPDIR:-/tmp}/tessera-hosts.$JOB_ID\"".into());
                setup.push("awk '{print $1\" slots=\"$2}' \"$PE_HOSTFILE\" > \"$tessera_hosts\"".into());
                format!("mpirun -np {np} -machinefile \"$tessera_hosts\" {quoted}")
            }
            System::Slurm => format!("mpirun -np {np} {quoted}"),
        },
    };
    Ok((argv, line, setup))
}

/// Where a plain (non-array) job's output lands, given the output directive
/// this crate writes: `NAME-ID.out` (Slurm), `ID.OU` (PBS Pro), `NAME.oSEQ`
/// (Torque, SGE) in the log directory. `None` for arrays, or when a skip
/// pattern removed that directive.
pub fn output_file(system: System, spec: &JobSpec, job_id: &str) -> Option<PathBuf> {
    let out = directives(system, spec).ok()?.into_iter().find(|d| d.starts_with("--output") || d.starts_with("-o "))?;
    if spec.array.is_some() || spec.skip.iter().any(|p| out.contains(p.as_str())) {
        return None;
    }
    let seq = job_id.split('.').next().unwrap_or(job_id);
    Some(spec.log_dir.join(match system {
        System::Slurm => format!("{}-{job_id}.out", spec.job_name),
        System::Pbs => format!("{job_id}.OU"),
        System::Torque | System::Sge => format!("{}.o{seq}", spec.job_name),
    }))
}

/// Writes `script` into the spec's log directory (created if needed) as
/// `<job_name>-<milliseconds>-<pid>[-<tag>].sh`, the file a submit command
/// is given; returns its path.
pub fn write_script(spec: &JobSpec, script: &str, tag: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(&spec.log_dir).map_err(|e| Error::io(&spec.log_dir, e))?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let tag = if tag.is_empty() { String::new() } else { format!("-{tag}") };
    let path = spec.log_dir.join(format!("{}-{stamp}-{}{tag}.sh", spec.job_name, std::process::id()));
    std::fs::write(&path, script).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// Quotes `s` for a POSIX shell: as is when it holds only safe characters,
/// else in single quotes.
///
/// The one shell quoter of the project (job scripts and the command line a
/// report shows). Not `shlex::try_quote`: that also quotes `=`, `,`, `@`, `%`
/// and `+` and wraps a word holding `'` in double quotes, which would change
/// every generated script (and what users grep for in them) for no gain in
/// safety; this is the plain POSIX single-quote rule, tested below.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_./:=@%+,-".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Makes `p` absolute against `base` and expands a leading `~/`.
pub fn absolute(p: &Path, base: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    if let Some(rest) = s.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    let joined = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    joined.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect()
}

#[cfg(test)]
mod tests;

//! `tessera jobqueue ...`: job scripts, submit, status, wait, cancel, list and
//! config for Slurm, PBS, Torque and SGE, over the `tessera-jobqueue` crate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;
use tessera::elastic::ClientLink;
use tessera::jobqueue::config::{ConfigOptions, Settings, Source, Value};
use tessera::jobqueue::pool::{adapt, Event, Pool, SchedulerLink};
use tessera::jobqueue::scale::{plan, AdaptPolicy, Adapter};
use tessera::jobqueue::{
    self as jq, BatchSystem, JobArray, JobSpec, JobStatus, Memory, Payload, SchedulerRef, System, Walltime,
    WorkerOptions,
};

use crate::cli::{parse_duration, parse_interval, ClusterArgs};
use crate::values::{self, LauncherArg, SystemArg};

#[derive(Args, Debug)]
pub struct JobqueueArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: JqCommand,
}

/// Help heading of the options every `jobqueue` command takes.
const JOBQUEUE: &str = "Jobqueue options";

#[derive(Args, Debug, Clone)]
struct Common {
    /// Config file [default: ~/.config/tessera/jobqueue.toml, or TESSERA_JOBQUEUE_CONFIG].
    #[arg(long, global = true, help_heading = JOBQUEUE, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Profile (a table of the config file) [default: TESSERA_JOBQUEUE_PROFILE, or the file's `default`].
    #[arg(long, global = true, help_heading = JOBQUEUE)]
    profile: Option<String>,
    /// Batch system [default: the profile's, or detected from the commands on PATH].
    #[arg(long, global = true, help_heading = JOBQUEUE, ignore_case = true, value_parser = values::parser::<SystemArg, System>())]
    system: Option<System>,
    /// Print JSON (one object or array) instead of text.
    #[arg(long, global = true, help_heading = JOBQUEUE)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum JqCommand {
    /// Print the job script for a command (or for elastic workers with --scheduler).
    Script {
        #[command(flatten)]
        job: JobFlags,
    },
    /// Write the job script under the log directory, submit it, print the job id.
    Submit {
        #[command(flatten)]
        job: JobFlags,
        /// Write the script and show it, but do not submit.
        #[arg(long)]
        dry_run: bool,
    },
    /// Normalised state of jobs: pending, running, completed, failed (with exit code), cancelled, timeout, unknown.
    Status {
        /// Job ids, as the batch system prints them.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Wait until a job ends; exit with its exit code (124 for a timeout, 143 when cancelled).
    Wait {
        /// The job id, as the batch system prints it.
        #[arg(value_name = "ID")]
        id: String,
        /// Seconds between polls.
        #[arg(long, value_name = "SECONDS", default_value_t = 2.0, value_parser = parse_interval, allow_negative_numbers = true)]
        poll: f64,
        /// Give up after this many seconds (exit 1) [default: never].
        #[arg(long, value_name = "SECONDS", value_parser = parse_duration, allow_negative_numbers = true)]
        timeout: Option<f64>,
    },
    /// Cancel jobs (an id the system does not know is an error).
    Cancel {
        /// Job ids, as the batch system prints them.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// This user's Tessera jobs the batch system still lists (by job-name prefix).
    List {
        /// Job names starting with this count as Tessera's.
        #[arg(long, default_value = "tessera")]
        prefix: String,
    },
    /// Have N elastic workers: submit worker jobs for a running `tessera scheduler`
    /// (--scheduler or --scheduler-file), or remove jobs: pending ones first, then
    /// running ones, whose workers are retired gracefully.
    Scale {
        /// Workers to have (0 removes every job this pool started).
        #[arg(value_name = "N")]
        target: u32,
        #[command(flatten)]
        job: PoolFlags,
        /// Wait up to this many seconds until the N workers have joined (0: return once submitted).
        #[arg(long, value_name = "SECONDS", default_value_t = 0.0, value_parser = parse_duration, allow_negative_numbers = true)]
        wait_ready: f64,
    },
    /// Size the elastic cluster by the scheduler's backlog, between --min and --max
    /// workers, until SIGTERM, Ctrl-C or --duration.
    Adapt {
        /// Fewest workers.
        #[arg(long, value_name = "N")]
        min: u32,
        /// Most workers.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max: u32,
        /// Seconds between looks at the backlog.
        #[arg(long, value_name = "SECONDS", default_value_t = 5.0, value_parser = parse_interval, allow_negative_numbers = true)]
        interval: f64,
        /// Backlog tasks per worker: the target is ceil(backlog / this) workers [default: 2 per worker thread].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        tasks_per_worker: Option<u32>,
        /// Seconds a lower target must hold before jobs are removed.
        #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = parse_duration, allow_negative_numbers = true)]
        down_after: f64,
        /// Seconds after a scale-up during which nothing is removed.
        #[arg(long, value_name = "SECONDS", default_value_t = 60.0, value_parser = parse_duration, allow_negative_numbers = true)]
        cooldown: f64,
        /// Seconds a job may run without its workers joining before it is cancelled as broken.
        #[arg(long, value_name = "SECONDS", default_value_t = 300.0, value_parser = parse_duration, allow_negative_numbers = true)]
        wait_ready: f64,
        /// Stop after this many seconds [default: run until SIGTERM or Ctrl-C].
        #[arg(long, value_name = "SECONDS", value_parser = parse_duration, allow_negative_numbers = true)]
        duration: Option<f64>,
        #[command(flatten)]
        job: PoolFlags,
    },
    /// Profiles and settings.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// The merged settings (file profile, then TESSERA_JOBQUEUE_*, then flags) and where each came from.
    Show {
        #[command(flatten)]
        job: JobFlags,
    },
}

/// The job description flags; each overrides the profile and the environment.
#[derive(Args, Debug, Clone, Default)]
struct SpecFlags {
    /// Job name [default: tessera-<subcommand>].
    #[arg(long)]
    job_name: Option<String>,
    /// Nodes per job.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    nodes: Option<u32>,
    /// MPI ranks (or workers) per node.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    tasks_per_node: Option<u32>,
    /// Cores per rank (or worker): its compute threads.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    cores_per_task: Option<u32>,
    /// Memory per node with its unit: 4GiB (2^30 bytes) or 4GB (10^9 bytes).
    #[arg(long, value_parser = checked::<Memory>)]
    memory: Option<String>,
    /// GPUs per node [default: none].
    #[arg(long)]
    gpus_per_node: Option<u32>,
    /// Wall-clock limit: HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or 90m, 1h, 2d, 1h30m.
    #[arg(long, value_parser = checked::<Walltime>)]
    walltime: Option<String>,
    /// Partition (Slurm) or queue.
    #[arg(long)]
    queue: Option<String>,
    /// Account (Slurm, PBS) or project (SGE).
    #[arg(long)]
    account: Option<String>,
    /// Where the job's output and the submitted script go [default: ./tessera-jobs].
    #[arg(long)]
    log_dir: Option<String>,
    /// Directory the job runs in [default: the current one].
    #[arg(long)]
    workdir: Option<String>,
    /// NAME=VALUE exported in the job (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = name_value)]
    env: Vec<String>,
    /// Extra directive in the system's syntax, without the prefix (repeatable): --directive=--constraint=haswell.
    #[arg(long = "directive", allow_hyphen_values = true)]
    directives: Vec<String>,
    /// Leave out default directives containing this (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    skip: Vec<String>,
    /// Shell line before the command (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    prologue: Vec<String>,
    /// Shell line after the command (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    epilogue: Vec<String>,
    /// Job array: 1-10, 1-10:2, 1-10%4.
    #[arg(long, value_parser = checked::<JobArray>)]
    array: Option<String>,
    /// SGE parallel environment [default: mpi].
    #[arg(long)]
    parallel_env: Option<String>,
    /// minijinja template file replacing the built-in layout.
    #[arg(long)]
    template: Option<String>,
    /// How ranks start.
    #[arg(long)]
    launcher: Option<LauncherArg>,
    /// srun's MPI plugin: pmix, pmi2 (Slurm).
    #[arg(long)]
    mpi: Option<String>,
    /// The tessera binary the job runs [default: this one].
    #[arg(long)]
    tessera: Option<String>,
}

/// The flags of `script` and `submit`: the job description and what it runs.
#[derive(Args, Debug, Clone, Default)]
struct JobFlags {
    #[command(flatten)]
    spec: SpecFlags,
    /// Elastic workers: the scheduler's HOST:PORT (then no command is given).
    #[arg(long, value_name = "HOST:PORT", requires = "secret_file")]
    scheduler: Option<String>,
    /// Elastic workers: the shared-secret file.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Elastic workers: seconds before the walltime at which they drain [default: a tenth of it, 30-300 s, at most half].
    #[arg(long, value_name = "SECONDS")]
    drain_before: Option<u64>,
    /// The command every rank runs, after `--` (tessera ... or any program).
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// The flags of `scale` and `adapt`: the worker jobs' description. The
/// scheduler comes from the global `--scheduler`/`--scheduler-file` and
/// `--secret-file`, as for every client of an elastic cluster.
#[derive(Args, Debug, Clone, Default)]
struct PoolFlags {
    #[command(flatten)]
    spec: SpecFlags,
    /// Seconds before the walltime at which workers drain [default: a tenth of it, 30-300 s, at most half].
    #[arg(long, value_name = "SECONDS")]
    drain_before: Option<u64>,
    /// Seconds a job whose workers were asked to leave may take to end before it is cancelled.
    #[arg(long, value_name = "SECONDS", default_value_t = 120.0, value_parser = parse_duration, allow_negative_numbers = true)]
    retire_timeout: f64,
}

/// A flag's value checked by the job description's own parser, so that a
/// malformed one is a usage error like any other; kept as written, since
/// the settings merge it with the profile's and the environment's and parse
/// whichever wins (with the same parser).
fn checked<T: std::str::FromStr<Err = jq::Error>>(s: &str) -> Result<String, String> {
    s.parse::<T>().map(|_| s.to_owned()).map_err(|e| e.to_string())
}

/// `--env NAME=VALUE`.
fn name_value(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((name, _)) if !name.is_empty() => Ok(s.to_owned()),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

impl SpecFlags {
    fn layer(&self, system: Option<&str>) -> anyhow::Result<Settings> {
        let mut s = Settings::default();
        let flag = |n: &str| Source::Flag(format!("--{n}"));
        let mut str_ = |key: &str, flag_name: &str, v: &Option<String>| {
            if let Some(v) = v {
                s.set(key, Value::Str(v.clone()), flag(flag_name));
            }
        };
        str_("system", "system", &system.map(str::to_string));
        str_("job_name", "job-name", &self.job_name);
        str_("memory", "memory", &self.memory);
        str_("walltime", "walltime", &self.walltime);
        str_("queue", "queue", &self.queue);
        str_("account", "account", &self.account);
        str_("log_dir", "log-dir", &self.log_dir);
        str_("workdir", "workdir", &self.workdir);
        str_("array", "array", &self.array);
        str_("parallel_env", "parallel-env", &self.parallel_env);
        str_("template", "template", &self.template);
        str_("launcher", "launcher", &self.launcher.as_ref().map(values::name));
        str_("mpi", "mpi", &self.mpi);
        str_("tessera", "tessera", &self.tessera);
        for (key, name, v) in [
            ("nodes", "nodes", self.nodes),
            ("tasks_per_node", "tasks-per-node", self.tasks_per_node),
            ("cores_per_task", "cores-per-task", self.cores_per_task),
            ("gpus_per_node", "gpus-per-node", self.gpus_per_node),
        ] {
            if let Some(n) = v {
                s.set(key, Value::Count(n), flag(name));
            }
        }
        for (key, name, v) in [
            ("directives", "directive", &self.directives),
            ("skip", "skip", &self.skip),
            ("prologue", "prologue", &self.prologue),
            ("epilogue", "epilogue", &self.epilogue),
        ] {
            if !v.is_empty() {
                s.set(key, Value::List(v.clone()), flag(name));
            }
        }
        for e in &self.env {
            let Some((k, v)) = e.split_once('=') else { bail!("--env `{e}`: expected NAME=VALUE") };
            s.set(&format!("env.{k}"), Value::Str(v.to_string()), flag("env"));
        }
        Ok(s)
    }
}

/// Runs a `tessera jobqueue` command; errors are printed here. `cluster`
/// holds the global flags that find a scheduler (`scale`, `adapt`).
pub fn main(args: JobqueueArgs, cluster: &ClusterArgs) -> ExitCode {
    match run(args, cluster) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tessera jobqueue: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(common: &Common, job: &SpecFlags) -> anyhow::Result<Settings> {
    let opts = ConfigOptions { file: common.config.clone(), profile: common.profile.clone() };
    Ok(Settings::load(&opts, job.layer(common.system.map(System::name))?)?)
}

fn cwd() -> anyhow::Result<PathBuf> {
    std::env::current_dir().context("the current directory")
}

fn run(args: JobqueueArgs, cluster: &ClusterArgs) -> anyhow::Result<ExitCode> {
    let common = args.common;
    let json = common.json;
    match args.command {
        JqCommand::Script { job } => {
            let (system, spec, script) = prepare(&common, &job)?;
            if json {
                println!("{}", json!({"system": system, "job": spec, "script": script}));
            } else {
                print!("{script}");
            }
            Ok(ExitCode::SUCCESS)
        }
        JqCommand::Submit { job, dry_run } => submit(&common, &job, dry_run),
        JqCommand::Status { ids } => {
            let batch = connect(&common)?;
            each_id(&ids, json, |id| {
                let s = batch.status(id)?;
                Ok((status_line(&s), serde_json::to_value(&s)?))
            })
        }
        JqCommand::Wait { id, poll, timeout } => {
            let batch = connect(&common)?;
            let secs = |what: &str, s: f64| -> anyhow::Result<Duration> {
                Duration::try_from_secs_f64(s).map_err(|_| anyhow::anyhow!("--{what} {s}: not a number of seconds"))
            };
            let poll = secs("poll", poll)?;
            let timeout = timeout.map(|t| secs("timeout", t)).transpose()?;
            let s = batch.wait(&id, poll, timeout)?;
            if json {
                println!("{}", json!({"status": s, "wait_exit_code": s.wait_exit_code()}));
            } else {
                println!("{}", status_line(&s));
            }
            Ok(ExitCode::from(s.wait_exit_code().clamp(0, 255) as u8))
        }
        JqCommand::Cancel { ids } => {
            let batch = connect(&common)?;
            each_id(&ids, json, |id| {
                let c = batch.cancel(id)?;
                let line = if c.cancelled {
                    format!("{id}: cancelled (was {})", c.was)
                } else {
                    format!("{id}: had already ended ({}); nothing to cancel", c.was)
                };
                Ok((line, serde_json::to_value(&c)?))
            })
        }
        JqCommand::List { prefix } => {
            let batch = connect(&common)?;
            let jobs = batch.list(&prefix)?;
            if json {
                println!("{}", serde_json::to_string(&jobs)?);
            } else if jobs.is_empty() {
                println!("no jobs named {prefix}* of this user in {}", batch.system());
            } else {
                for j in &jobs {
                    println!("{}  {}", status_line(j), j.name.as_deref().unwrap_or(""));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JqCommand::Scale { target, job, wait_ready } => scale(&common, cluster, &job, target, wait_ready),
        JqCommand::Adapt { min, max, interval, tasks_per_worker, down_after, cooldown, wait_ready, duration, job } => {
            let threads = load(&common, &job.spec)?.job_spec(&cwd()?)?.cores_per_task;
            let policy = AdaptPolicy {
                min,
                max,
                tasks_per_worker: tasks_per_worker.unwrap_or(2 * threads.max(1)),
                down_after: Duration::from_secs_f64(down_after),
                cooldown: Duration::from_secs_f64(cooldown),
                wait_ready: Duration::from_secs_f64(wait_ready),
                ..AdaptPolicy::default()
            };
            adapt(
                &common,
                cluster,
                &job,
                policy,
                Duration::from_secs_f64(interval),
                duration.map(Duration::from_secs_f64),
            )
        }
        JqCommand::Config(ConfigCommand::Show { job }) => {
            let s = load(&common, &job.spec)?;
            let rows = s.show();
            if json {
                let settings: serde_json::Map<String, serde_json::Value> =
                    rows.iter().map(|(k, v, src)| (k.clone(), json!({"value": v, "source": src}))).collect();
                println!("{}", json!({"file": s.file, "profile": s.profile, "settings": settings}));
            } else {
                match (&s.file, &s.profile) {
                    (Some(f), Some(p)) => println!("# config file {}, profile [{p}]", f.display()),
                    (Some(f), None) => println!("# config file {} (no profile chosen)", f.display()),
                    _ => println!("# no config file"),
                }
                let width = rows.iter().map(|r| r.0.len() + r.1.len()).max().unwrap_or(0) + 3;
                for (k, v, src) in rows {
                    let kv = format!("{k} = {v}");
                    println!("{kv:<width$}  # {src}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `f` for every id: prints its line (or, with `--json`, one array of
/// its objects), reports errors per id and fails when any id failed.
fn each_id(
    ids: &[String],
    json: bool,
    f: impl Fn(&str) -> anyhow::Result<(String, serde_json::Value)>,
) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let mut out = Vec::new();
    for id in ids {
        match f(id) {
            Ok((line, value)) => {
                if !json {
                    println!("{line}");
                }
                out.push(value);
            }
            Err(e) => {
                failed = true;
                eprintln!("tessera jobqueue: error: {e:#}");
                out.push(json!({"job_id": id, "error": format!("{e:#}")}));
            }
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(out));
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn status_line(s: &JobStatus) -> String {
    let exit = s.exit_code.map(|c| format!(" (exit {c})")).unwrap_or_default();
    format!("{}  {}{exit}  [{}: {}]", s.job_id, s.state, s.source, s.detail)
}

fn connect(common: &Common) -> anyhow::Result<Box<dyn BatchSystem>> {
    let settings = load(common, &SpecFlags::default())?;
    Ok(jq::connect(settings.system()?))
}

/// Settings, system, job description and the rendered script.
fn prepare(common: &Common, job: &JobFlags) -> anyhow::Result<(System, JobSpec, String)> {
    let settings = load(common, &job.spec)?;
    let system = settings.system()?;
    let cwd = cwd()?;
    let mut spec = settings.job_spec(&cwd)?;
    let me = std::env::current_exe().context("locating the tessera binary")?;
    let tessera = settings.tessera(&me);
    let payload = match &job.scheduler {
        Some(addr) => {
            if !job.command.is_empty() {
                bail!("--scheduler makes a worker job, which runs `tessera worker`: give no command after `--`");
            }
            let secret = job.secret_file.as_deref().map(|p| jq::absolute(p, &cwd));
            Payload::Workers(WorkerOptions {
                tessera: tessera.clone(),
                scheduler: SchedulerRef::Address(addr.clone()),
                secret_file: secret,
                drain_before: job.drain_before,
                threads: None,
            })
        }
        None => {
            if job.command.is_empty() {
                bail!("no command: give the command every rank runs after `--` (e.g. -- tessera demo), or --scheduler ADDR for workers");
            }
            let mut argv = job.command.clone();
            if argv[0] == "tessera" {
                argv[0] = tessera.to_string_lossy().into_owned();
            }
            Payload::Mpi { argv, launcher: settings.launcher(system)? }
        }
    };
    if !settings.values.contains_key("job_name") {
        spec.job_name = default_job_name(job.scheduler.is_some(), &job.command);
    }
    let script = jq::render(system, &spec, &payload, &settings.template(&cwd))?;
    Ok((system, spec, script))
}

/// `tessera-<subcommand>` for a tessera command, `tessera-worker`, or `tessera-<program>`.
fn default_job_name(workers: bool, argv: &[String]) -> String {
    let word: String = if workers {
        "worker".into()
    } else {
        let prog = argv.first().and_then(|a| Path::new(a).file_name()).map(|f| f.to_string_lossy().into_owned());
        let prog = prog.unwrap_or_default();
        let word = if prog == "tessera" { argv.get(1).cloned().unwrap_or_default() } else { prog };
        word.chars().filter(|c| c.is_ascii_alphanumeric() || "_.-".contains(*c)).take(40).collect()
    };
    if word.is_empty() {
        "tessera".into()
    } else {
        format!("tessera-{word}")
    }
}

fn submit(common: &Common, job: &JobFlags, dry_run: bool) -> anyhow::Result<ExitCode> {
    let (system, spec, script) = prepare(common, job)?;
    let path = jq::write_script(&spec, &script, "")?;
    if dry_run {
        if common.json {
            println!("{}", json!({"system": system, "script_path": path, "script": script, "submitted": false}));
        } else {
            eprintln!("tessera jobqueue: dry run: wrote {} (not submitted)", path.display());
            print!("{script}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let submitted = jq::connect(system).submit(&path)?;
    if let Some(w) = &submitted.warning {
        eprintln!("tessera jobqueue: {} accepted the job but said: {w}", system.submit_program());
    }
    let output = jq::output_file(system, &spec, &submitted.job_id);
    if common.json {
        println!(
            "{}",
            json!({"system": system, "job_id": submitted.job_id, "script_path": path, "output": output,
                   "warning": submitted.warning, "submitted": true})
        );
    } else {
        println!("{}", submitted.job_id);
    }
    Ok(ExitCode::SUCCESS)
}

/// The pool of worker jobs of the scheduler the global flags name
/// (`--scheduler ADDR`, else `--scheduler-file`), connected and locked; new
/// jobs run `tessera worker` with the job description of `job`.
fn open_pool(common: &Common, cluster: &ClusterArgs, job: &PoolFlags) -> anyhow::Result<Pool> {
    let settings = load(common, &job.spec)?;
    let system = settings.system()?;
    let cwd = cwd()?;
    let mut spec = settings.job_spec(&cwd)?;
    if spec.array.is_some() {
        bail!("--array: scale and adapt submit one job per group of workers; job arrays are not supported here");
    }
    if !settings.values.contains_key("job_name") {
        spec.job_name = default_job_name(true, &[]);
    }
    let (address, secret_file) = cluster.scheduler_address()?;
    let secret_file = jq::absolute(&secret_file, &cwd);
    // Workers find the scheduler the way this command did: by its address,
    // or by the scheduler file (which follows a restarted scheduler).
    let scheduler = match &cluster.scheduler {
        Some(a) => SchedulerRef::Address(a.clone()),
        None => SchedulerRef::File(jq::absolute(&cluster.scheduler_file_path(), &cwd)),
    };
    let me = std::env::current_exe().context("locating the tessera binary")?;
    let payload = Payload::Workers(WorkerOptions {
        tessera: settings.tessera(&me),
        scheduler,
        secret_file: Some(secret_file.clone()),
        drain_before: job.drain_before,
        threads: None,
    });
    let script = jq::render(system, &spec, &payload, &settings.template(&cwd))?;
    let secret = tessera::runtime::transport::secret::Secret::load(&secret_file)?;
    let link = ClientLink::connect(&address, cluster.tcp_options(secret))?;
    let retire_timeout = Duration::from_secs_f64(job.retire_timeout);
    let link: Arc<dyn SchedulerLink> = Arc::new(link);
    Ok(Pool::open(system, jq::connect(system), link, spec, script, retire_timeout)?)
}

/// Says so when new jobs would look for the scheduler on a loopback address.
fn loopback_note(address: &str) {
    if address.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback()) {
        eprintln!(
            "tessera jobqueue: note: the scheduler listens on {address}, a loopback address: only jobs on this host \
             can reach it (start it with --listen HOST:PORT or --interface NAME for other nodes)"
        );
    }
}

/// One line of text for something a pool did or saw.
fn event_line(e: &Event) -> String {
    let s = |n: u32| if n == 1 { "" } else { "s" };
    match e {
        Event::Submitted { job_id, workers, output, .. } => {
            let out = output.as_ref().map(|o| format!(", output {}", o.display())).unwrap_or_default();
            format!("submitted job {job_id} ({workers} worker{}{out})", s(*workers))
        }
        Event::Joined { job_id, after_seconds } => {
            format!("job {job_id}: joined the scheduler {after_seconds:.1} s after it was submitted")
        }
        Event::Cancelled { job_id, was, why } => format!("cancelled job {job_id} (was {was}): {why}"),
        Event::Retiring { job_id } => {
            format!("retiring the workers of job {job_id} (they hand their blocks off, then exit)")
        }
        Event::Retired { job_id, seconds } => format!("job {job_id}: its workers left in {seconds:.2} s"),
        Event::RetireFailed { job_id, error } => format!("job {job_id}: retiring its workers failed: {error}"),
        Event::Ended { job_id, state, exit_code, joined, removed, output } => {
            let exit = exit_code.map(|c| format!(" (exit {c})")).unwrap_or_default();
            let why = match (joined, removed, output) {
                (false, false, Some(o)) => format!(" before any worker of it joined; see {}", o.display()),
                (false, false, None) => " before any worker of it joined".into(),
                _ => String::new(),
            };
            format!("job {job_id} ended: {state}{exit}{why}")
        }
    }
}

/// Prints (text) or keeps (JSON) what the pool did since the last call;
/// returns jobs that ended by themselves without a worker joining.
fn report(pool: &mut Pool, json: bool, keep: &mut Vec<Event>) -> Vec<(String, Option<PathBuf>)> {
    let mut failed = Vec::new();
    for e in pool.take_events() {
        if let Event::Ended { job_id, joined: false, removed: false, output, .. } = &e {
            failed.push((job_id.clone(), output.clone()));
        }
        if !json {
            println!("{}", event_line(&e));
        }
        keep.push(e);
    }
    failed
}

fn jobs_json(pool: &Pool) -> serde_json::Value {
    json!(pool
        .jobs()
        .iter()
        .map(|j| json!({"job_id": j.job_id, "state": j.state, "workers": j.workers, "joined": j.joined,
                        "leaving": j.leaving.map(|l| l.0), "output": j.output}))
        .collect::<Vec<_>>())
}

/// `scale N`: submit or remove jobs until N workers are here or coming;
/// wait for removed jobs to end, and with `--wait-ready` for N to join.
fn scale(common: &Common, cluster: &ClusterArgs, job: &PoolFlags, n: u32, wait_ready: f64) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let json = common.json;
    let mut pool = open_pool(common, cluster, job)?;
    let mut events = Vec::new();
    let poll = Duration::from_millis(100);
    let views = pool.observe()?;
    report(&mut pool, json, &mut events);
    let per_job = pool.per_job();
    let p = plan(n, per_job, &views);
    if p.submit > 0 && n % per_job != 0 && !json {
        println!("note: each job starts {per_job} workers: {} jobs give {} workers", p.submit, p.submit * per_job);
    }
    if p.submit > 0 {
        loopback_note(pool.scheduler());
    }
    pool.apply(&p, &format!("scale {n}"))?;
    report(&mut pool, json, &mut events);
    // Removed jobs end: their workers retire, then the jobs leave the queue
    // (a job that does not is cancelled after --retire-timeout).
    let limit = Duration::from_secs_f64(job.retire_timeout) + Duration::from_secs(60);
    let removing = Instant::now();
    let mut removed_seconds = None;
    if !pool.leaving().is_empty() {
        while !pool.leaving().is_empty() {
            if removing.elapsed() > limit {
                let ids: Vec<String> = pool.leaving().iter().map(|j| format!("{} ({})", j.job_id, j.state)).collect();
                bail!("jobs {} have not ended {:.0} s after they were removed", ids.join(", "), limit.as_secs_f64());
            }
            std::thread::sleep(poll);
            pool.observe()?;
            report(&mut pool, json, &mut events);
        }
        removed_seconds = Some(removing.elapsed().as_secs_f64());
    }
    let mut ready_seconds = None;
    if wait_ready > 0.0 {
        let deadline = start + Duration::from_secs_f64(wait_ready);
        loop {
            if pool.joined() >= n {
                ready_seconds = Some(start.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() > deadline {
                let jobs: Vec<String> = pool
                    .jobs()
                    .iter()
                    .filter(|j| j.joined == 0)
                    .map(|j| {
                        let out = j.output.as_ref().map(|o| format!(", output {}", o.display())).unwrap_or_default();
                        format!("{} ({}{out})", j.job_id, j.state)
                    })
                    .collect();
                bail!(
                    "{} of {n} workers joined within --wait-ready {wait_ready} s; waiting for: {}",
                    pool.joined(),
                    jobs.join(", ")
                );
            }
            std::thread::sleep(poll);
            pool.observe()?;
            let failed = report(&mut pool, json, &mut events);
            if !failed.is_empty() {
                let (jobs, outputs): (Vec<String>, Vec<Option<PathBuf>>) = failed.into_iter().unzip();
                return Err(jq::Error::NoWorkers { jobs, outputs: outputs.into_iter().flatten().collect() }.into());
            }
        }
    }
    if json {
        println!(
            "{}",
            json!({"scheduler": pool.scheduler(), "system": pool.system(), "target": n, "workers_per_job": per_job,
                   "joined": pool.joined(), "capacity": pool.capacity(), "submitted": p.submit, "cancelled": p.cancel,
                   "retired": p.retire, "ready_seconds": ready_seconds, "removed_seconds": removed_seconds,
                   "seconds": start.elapsed().as_secs_f64(), "pool_file": pool.path(), "jobs": jobs_json(&pool),
                   "events": events})
        );
    } else {
        let pending = pool.jobs().iter().filter(|j| j.state != jq::JobState::Running).count();
        println!(
            "{} workers here or coming for {} (target {n}): {} joined, {} job(s) not started yet; pool {}",
            pool.capacity(),
            pool.scheduler(),
            pool.joined(),
            pending,
            pool.path().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `adapt`: every interval, size the pool by the backlog (see
/// `tessera_jobqueue::scale::Adapter`), until stopped. Leaves the jobs running.
fn adapt(
    common: &Common,
    cluster: &ClusterArgs,
    job: &PoolFlags,
    policy: AdaptPolicy,
    interval: Duration,
    duration: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let json = common.json;
    let (min, max) = (policy.min, policy.max);
    // Bad bounds are refused before anything is connected or submitted.
    let per_job = load(common, &job.spec)?.job_spec(&cwd()?)?.total_tasks().clamp(1, u64::from(u32::MAX)) as u32;
    let mut adapter = Adapter::new(policy, per_job).with_context(|| format!("adapt --min {min} --max {max}"))?;
    let stop = tessera::runtime::host::sys::termination_flag();
    let mut pool = open_pool(common, cluster, job)?;
    let start = Instant::now();
    loopback_note(pool.scheduler());
    if !json {
        println!(
            "adapting {} between {min} and {max} workers ({} per job), every {:.1} s; pool {}",
            pool.scheduler(),
            pool.per_job(),
            interval.as_secs_f64(),
            pool.path().display()
        );
    }
    let why_stopped = loop {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break "signal";
        }
        if duration.is_some_and(|d| start.elapsed() >= d) {
            break "duration";
        }
        let now = Duration::from_secs_f64(tessera::jobqueue::pool::unix_now());
        let adapt::Round { step, events } = adapt::round(&mut pool, &mut adapter, now)?;
        if !step.plan.is_empty() || !events.is_empty() {
            let t = start.elapsed().as_secs_f64();
            if json {
                println!(
                    "{}",
                    json!({"seconds": t, "backlog": pool.backlog(), "desired": step.desired, "capacity": step.capacity,
                           "target": step.target, "joined": pool.joined(), "plan": step.plan, "broken": step.broken,
                           "reason": step.reason, "events": events})
                );
            } else {
                if !step.plan.is_empty() {
                    println!(
                        "[{t:7.1} s] backlog {} tasks, {} workers here or coming -> {}: {}",
                        pool.backlog(),
                        step.capacity,
                        step.target,
                        step.reason
                    );
                }
                for e in &events {
                    println!("[{t:7.1} s] {}", event_line(e));
                }
            }
        }
        let next = Instant::now() + interval;
        while Instant::now() < next && !stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50).min(interval));
        }
    };
    // Retirements under way finish (or their jobs are cancelled) before leaving.
    let mut events = Vec::new();
    let timeout = Duration::from_secs_f64(job.retire_timeout) + Duration::from_secs(60);
    adapt::drain(&mut pool, timeout, Duration::from_millis(250), |e| {
        if !json {
            println!("{}", event_line(&e));
        }
        events.push(e);
    })?;
    if json {
        for e in &events {
            println!("{}", json!({"seconds": start.elapsed().as_secs_f64(), "events": [e]}));
        }
        println!(
            "{}",
            json!({"stopped": why_stopped, "seconds": start.elapsed().as_secs_f64(), "joined": pool.joined(),
                   "capacity": pool.capacity(), "jobs": jobs_json(&pool), "pool_file": pool.path()})
        );
    } else {
        println!(
            "adapt stopped ({why_stopped}); {} worker job(s) left running (`tessera jobqueue scale 0` removes them)",
            pool.jobs().len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

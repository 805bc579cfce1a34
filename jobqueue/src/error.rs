//! The crate's one error type.

use std::path::PathBuf;

use crate::System;

/// What went wrong, with the job, system, file or field at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A job description value that is malformed or would break out of a directive.
    #[error("{field}: {reason} (got `{value}`)")]
    InvalidValue { field: String, value: String, reason: String },

    /// A batch system name that is not one of slurm, pbs, torque, sge.
    #[error("unknown batch system `{name}`: choose slurm, pbs, torque or sge")]
    UnknownSystem { name: String },

    /// No batch system given and none of their submit commands found on PATH.
    #[error(
        "no batch system found: none of sbatch (slurm), qsub with qstat -F json (pbs), qsub (torque) or qsub -terse \
         (sge) is on PATH; name one with --system, the profile's `system`, or TESSERA_JOBQUEUE_SYSTEM"
    )]
    NoSystemFound,

    /// A batch-system command is not installed (not on PATH).
    #[error(
        "`{program}` not found on PATH, but the {system} batch system needs it; is this a {system} cluster? \
         choose another with --system (slurm, pbs, torque, sge) or the profile's `system`"
    )]
    CommandNotFound { program: String, system: System },

    /// A batch-system command could not be started or waited for.
    #[error("running `{program}` for {system} failed")]
    Spawn {
        program: String,
        system: System,
        #[source]
        source: std::io::Error,
    },

    /// The batch system refused the job at submission.
    #[error("{system} rejected the job (`{command}` exited with {status}): {message}")]
    Rejected { system: System, command: String, status: i32, message: String },

    /// A job id the batch system does not know (and accounting has no record of).
    #[error("{system} knows no job `{job_id}`{detail}")]
    UnknownJob { system: System, job_id: String, detail: String },

    /// A batch-system command failed in a way that is not one of the above.
    #[error("`{command}` failed for {system} (exit {status}): {message}")]
    CommandFailed { system: System, command: String, status: i32, message: String },

    /// A batch-system command printed something this crate cannot read.
    #[error("cannot read the output of `{command}` ({system}): {reason}")]
    Parse { system: System, command: String, reason: String },

    /// A job template that does not compile or render.
    #[error("template {name}: line {line}: {message}")]
    Template { name: String, line: usize, message: String },

    /// A config file that is not valid TOML.
    #[error("{}:{line}:{column}: {message}", file.display())]
    ConfigSyntax { file: PathBuf, line: usize, column: usize, message: String },

    /// A config file value of the wrong type, an unknown key, or a missing profile.
    #[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    ConfigValue { file: PathBuf, line: Option<usize>, message: String },

    /// An environment variable with a value that cannot be used.
    #[error("environment variable {var}: {message}")]
    EnvValue { var: String, message: String },

    /// Reading or writing a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Worker jobs that ended, or ran too long, without any of their workers
    /// joining the scheduler (`scale`/`adapt` stop submitting more).
    #[error(
        "{} worker job(s) in a row brought no worker to the scheduler ({}); their output should say why \
         (a scheduler address the nodes cannot reach? a secret file they cannot read?){}",
        jobs.len(),
        jobs.join(", "),
        outputs.iter().map(|o| format!("\n  {}", o.display())).collect::<String>()
    )]
    NoWorkers { jobs: Vec<String>, outputs: Vec<PathBuf> },

    /// The scheduler of an elastic cluster could not be asked or did not answer.
    #[error("scheduler {address}: {message}")]
    Scheduler { address: String, message: String },

    /// Another `scale`/`adapt` manages this scheduler's worker jobs.
    #[error("{} is held by process {pid} on {host} (another `tessera jobqueue scale` or `adapt` for this scheduler); stop it first, or remove the file if that process is gone", path.display())]
    PoolBusy { path: PathBuf, pid: u32, host: String },

    /// `wait` gave up before the job ended.
    #[error("job {job_id} ({system}) had not ended after {seconds} s (last state: {state})")]
    WaitTimeout { system: System, job_id: String, seconds: u64, state: String },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(field: impl Into<String>, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidValue { field: field.into(), value: value.into(), reason: reason.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

//! Submit, status, cancel, wait and list through the batch system's own
//! commands: one trait, [`BatchSystem`], one implementation per system, and
//! [`connect`] to pick one. The parsers of each system's output are pure
//! functions in its module, tested on captured real output.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::{Error, Result, System};

/// A job's state, the same words for every system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Queued, held, or waiting for resources.
    Pending,
    /// Started (includes completing/exiting and suspended).
    Running,
    /// Ended with exit status 0.
    Completed,
    /// Ended with a non-zero exit status (in [`JobStatus::exit_code`]) or a node failure.
    Failed,
    /// Removed by `scancel`/`qdel` (before or while running), or preempted.
    Cancelled,
    /// Killed at its walltime.
    Timeout,
    /// The system cannot tell (the reason says why).
    Unknown,
}

impl JobState {
    /// The job will not change state any more.
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Completed | JobState::Failed | JobState::Cancelled | JobState::Timeout)
    }

    pub fn name(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Timeout => "timeout",
            JobState::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the batch system says of one job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStatus {
    pub job_id: String,
    pub system: System,
    pub state: JobState,
    /// The exit status of a finished job: the script's, or 128 + the signal that killed it.
    pub exit_code: Option<i32>,
    /// The system's own word for the state and why (`PENDING (Resources)`, `qw`, `Exit_status=-29`).
    pub detail: String,
    /// Job name, where the command reports it.
    pub name: Option<String>,
    /// Which command answered (`scontrol`, `sacct`, `qstat`, `qacct`).
    pub source: &'static str,
    /// Array elements, when the job is an array.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub elements: Vec<JobStatus>,
}

impl JobStatus {
    /// The exit code `tessera jobqueue wait` returns for this job: the job's
    /// own for completed and failed jobs, 124 for a timeout (as timeout(1)),
    /// 143 (128 + SIGTERM) for a cancelled job, 1 when unknown.
    pub fn wait_exit_code(&self) -> i32 {
        match self.state {
            JobState::Completed => 0,
            JobState::Failed => match self.exit_code {
                Some(c) if (1..=255).contains(&c) => c,
                _ => 1,
            },
            JobState::Timeout => 124,
            JobState::Cancelled => 143,
            _ => 1,
        }
    }

    /// One status for an array from its elements: running while any runs,
    /// pending while any waits, else the worst ending (failed, timeout,
    /// cancelled, completed).
    pub(crate) fn aggregate(job_id: &str, system: System, source: &'static str, elements: Vec<JobStatus>) -> Self {
        let rank = |s: JobState| match s {
            JobState::Running => 7,
            JobState::Pending => 6,
            JobState::Unknown => 5,
            JobState::Failed => 4,
            JobState::Timeout => 3,
            JobState::Cancelled => 2,
            JobState::Completed => 1,
        };
        let worst = elements.iter().max_by_key(|e| rank(e.state));
        let (state, exit_code) = worst.map(|w| (w.state, w.exit_code)).unwrap_or((JobState::Unknown, None));
        let counts = [JobState::Pending, JobState::Running, JobState::Completed, JobState::Failed, JobState::Cancelled]
            .into_iter()
            .chain([JobState::Timeout, JobState::Unknown])
            .filter_map(|s| {
                let n = elements.iter().filter(|e| e.state == s).count();
                (n > 0).then(|| format!("{n} {s}"))
            })
            .collect::<Vec<_>>()
            .join(", ");
        JobStatus {
            job_id: job_id.to_string(),
            system,
            state,
            exit_code,
            detail: format!("array: {counts}"),
            name: elements.iter().find_map(|e| e.name.clone()),
            source,
            elements,
        }
    }
}

/// What `cancel` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cancelled {
    pub job_id: String,
    /// The state before the cancel.
    pub was: JobState,
    /// False when the job had already ended: nothing was cancelled.
    pub cancelled: bool,
}

/// One batch system's commands.
pub trait BatchSystem {
    fn system(&self) -> System;

    /// Submits the script file; returns the job id.
    fn submit(&self, script: &Path) -> Result<Submitted>;

    /// The job's state. Jobs that left the queue are looked up in accounting;
    /// an id no source knows is [`Error::UnknownJob`].
    fn status(&self, job_id: &str) -> Result<JobStatus>;

    /// Asks the system to delete a job known to be queued or running; false
    /// when it answers that the job has ended meanwhile.
    fn delete(&self, job_id: &str) -> Result<bool>;

    /// Cancels the job. It is looked up first, so an unknown id is
    /// [`Error::UnknownJob`] (`scancel` would exit 0 for ids that never
    /// existed), and a job that already ended is left alone.
    fn cancel(&self, job_id: &str) -> Result<Cancelled> {
        let before = self.status(job_id)?;
        let cancelled = !before.state.is_finished() && before.state != JobState::Unknown && self.delete(job_id)?;
        Ok(Cancelled { job_id: job_id.into(), was: before.state, cancelled })
    }

    /// This user's jobs the system still lists whose name starts with `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<JobStatus>>;

    /// Polls [`BatchSystem::status`] every `poll` until the job has ended, or
    /// `timeout` passed ([`Error::WaitTimeout`]). A job that vanished without
    /// a record is polled for `grace` more (accounting can lag the queue by seconds).
    fn wait(&self, job_id: &str, poll: Duration, timeout: Option<Duration>) -> Result<JobStatus> {
        let start = Instant::now();
        let grace = Duration::from_secs(30);
        let mut unknown_since: Option<Instant> = None;
        loop {
            let s = self.status(job_id)?;
            if s.state.is_finished() {
                return Ok(s);
            }
            if s.state == JobState::Unknown {
                let since = *unknown_since.get_or_insert_with(Instant::now);
                if since.elapsed() > grace {
                    return Ok(s);
                }
            } else {
                unknown_since = None;
            }
            if let Some(t) = timeout {
                if start.elapsed() >= t {
                    return Err(Error::WaitTimeout {
                        system: self.system(),
                        job_id: job_id.to_string(),
                        seconds: t.as_secs(),
                        state: s.state.to_string(),
                    });
                }
            }
            std::thread::sleep(poll);
        }
    }
}

/// A submitted job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Submitted {
    pub job_id: String,
    /// What the submit command said on stderr although it accepted the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The adapter for `system`, running the real commands found on `PATH`.
pub fn connect(system: System) -> Box<dyn BatchSystem> {
    connect_with(system, Box::new(HostExec))
}

pub(crate) fn connect_with(system: System, exec: Box<dyn Exec>) -> Box<dyn BatchSystem> {
    let run = Runner { system, exec };
    match system {
        System::Slurm => Box::new(crate::slurm::Slurm { run }),
        System::Pbs | System::Torque => Box::new(crate::pbs::Pbs { run }),
        System::Sge => Box::new(crate::sge::Sge { run }),
    }
}

/// A finished command: exit status (-1 when killed by a signal), stdout, stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs commands. The real one is [`HostExec`]; tests replay captured output.
pub(crate) trait Exec {
    fn run(&self, program: &str, args: &[&str]) -> std::io::Result<Output>;
}

struct HostExec;

impl Exec for HostExec {
    fn run(&self, program: &str, args: &[&str]) -> std::io::Result<Output> {
        let o = std::process::Command::new(program).args(args).stdin(std::process::Stdio::null()).output()?;
        Ok(Output {
            status: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        })
    }
}

/// Runs one system's commands and turns "not installed" into a clear error.
pub(crate) struct Runner {
    pub system: System,
    pub exec: Box<dyn Exec>,
}

impl Runner {
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        tracing::debug!(system = %self.system, program, ?args, "running");
        self.exec.run(program, args).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::CommandNotFound { program: program.into(), system: self.system },
            _ => Error::Spawn { program: program.into(), system: self.system, source: e },
        })
    }

    /// Runs a submit command: its id (read by `parse` from stdout), or the
    /// system's own message when it refused the job.
    pub fn submit(&self, program: &str, args: &[&str], parse: fn(&str) -> Option<String>) -> Result<Submitted> {
        let o = self.run(program, args)?;
        if o.status != 0 {
            return Err(Error::Rejected {
                system: self.system,
                command: command_line(program, args),
                status: o.status,
                message: first_words(&o),
            });
        }
        let job_id = parse(&o.stdout).ok_or_else(|| Error::Parse {
            system: self.system,
            command: command_line(program, args),
            reason: format!("expected a job id, got `{}`", o.stdout.trim()),
        })?;
        Ok(Submitted { job_id, warning: Some(o.stderr.trim().to_string()).filter(|w| !w.is_empty()) })
    }

    /// An error for a command that failed unexpectedly.
    pub fn failed(&self, program: &str, args: &[&str], o: &Output) -> Error {
        Error::CommandFailed {
            system: self.system,
            command: command_line(program, args),
            status: o.status,
            message: first_words(o),
        }
    }
}

pub(crate) fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ")
}

/// What a failed command said (stderr, else stdout), trimmed.
pub(crate) fn first_words(o: &Output) -> String {
    let s = if o.stderr.trim().is_empty() { o.stdout.trim() } else { o.stderr.trim() };
    if s.is_empty() {
        "(no output)".into()
    } else {
        s.to_string()
    }
}

/// The user name to list jobs of: `$USER`, else `id -un`.
pub(crate) fn current_user() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| {
        std::process::Command::new("id")
            .arg("-un")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    })
}

/// Exit status for a signal: 128 + signal, as shells report it.
pub(crate) fn signal_exit(signal: i32) -> i32 {
    128 + signal
}

#[cfg(test)]
pub(crate) mod replay {
    //! Replays captured command output (`$ command` / stdout / `--- stderr ---`
    //! / stderr / `--- exit N`) for the adapter logic around the parsers.
    use super::*;
    use std::cell::RefCell;

    /// Reads a capture file from `tests/data/<system>/<name>`.
    pub fn capture(rel: &str) -> (String, Output) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(rel);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (cmd, rest) = text.split_once('\n').expect("command line");
        let cmd = cmd.strip_prefix("$ ").expect("capture starts with `$ `").to_string();
        let (stdout, rest) = rest.split_once("--- stderr ---\n").expect("stderr separator");
        let (stderr, exit) = rest.rsplit_once("--- exit ").expect("exit line");
        let status = exit.trim().parse().expect("exit status");
        (cmd, Output { status, stdout: stdout.to_string(), stderr: stderr.to_string() })
    }

    /// Answers each expected command (compared without the PBS install path
    /// and with job ids as captured) with the capture's output, in order.
    pub struct Replay {
        pub script: RefCell<Vec<(String, Output)>>,
    }

    impl Replay {
        pub fn new(files: &[&str]) -> Box<Self> {
            Box::new(Replay { script: RefCell::new(files.iter().rev().map(|f| capture(f)).collect()) })
        }
    }

    impl Exec for Replay {
        fn run(&self, program: &str, args: &[&str]) -> std::io::Result<Output> {
            let asked = command_line(program, args);
            let (cmd, out) = self.script.borrow_mut().pop().unwrap_or_else(|| panic!("unexpected command: {asked}"));
            let cmd = cmd.replace("/opt/pbs/bin/", "").replace('\'', "");
            assert_eq!(asked.replace('\'', ""), cmd, "the adapter ran another command than the capture's");
            Ok(out)
        }
    }

    /// Answers every command with the same output.
    pub struct Always(pub Output);

    impl Exec for Always {
        fn run(&self, _: &str, _: &[&str]) -> std::io::Result<Output> {
            Ok(self.0.clone())
        }
    }

    impl Drop for Replay {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                let left = self.script.borrow();
                assert!(left.is_empty(), "commands not run: {:?}", left.iter().map(|c| &c.0).collect::<Vec<_>>());
            }
        }
    }
}

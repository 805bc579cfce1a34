//! The worker jobs of one elastic cluster: submitted, followed, cancelled
//! and retired by `tessera jobqueue scale` and `adapt`, which carry out what
//! [`crate::scale`] decides.
//!
//! A [`Pool`] belongs to one scheduler address and one log directory. It
//! keeps the jobs **it** submitted in a state file there
//! (`<log_dir>/tessera-pool-<address>.json`), so it never cancels a job it
//! did not start, and a later `scale` sees the jobs of an earlier one. A lock
//! file beside it (pid and host) lets only one `scale`/`adapt` act on a pool
//! at a time; a lock left by a process that is gone is taken over.
//!
//! Each [`Pool::observe`] asks the batch system once for the user's jobs of
//! the pool's job name (`squeue`/`qstat`, then `status` for any job it no
//! longer lists) and the scheduler for its backlog and workers
//! ([`SchedulerLink`]); a worker belongs to the job whose id is its name
//! (`tessera worker` names itself after `SLURM_JOB_ID`, `PBS_JOBID` or
//! `JOB_ID`). Scaling down cancels pending jobs, and retires running workers
//! through the scheduler ([`SchedulerLink::retire`], on a thread of its own:
//! they finish their tasks and hand their blocks off), after which their
//! jobs end by themselves; a job still there `retire_timeout` later is
//! cancelled (its workers then drain on the batch system's SIGTERM).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::scale::{JobView, Phase, Plan};

pub mod adapt;
use crate::{BatchSystem, Error, JobSpec, JobState, Result, System};

/// A worker as the scheduler lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerView {
    /// Its name: the batch job id, for workers started by a job.
    pub name: String,
    /// Tasks sent to it and not yet done.
    pub busy: u32,
}

/// What the scheduler says at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// Tasks not computed yet (waiting, queued or running).
    pub backlog: u64,
    /// Workers taking tasks (draining ones are not listed).
    pub workers: Vec<WorkerView>,
}

/// How a pool talks to the scheduler; the `tessera` command implements it
/// over a client connection. Errors are messages (the address is added).
pub trait SchedulerLink: Send + Sync {
    /// `HOST:PORT` of the scheduler.
    fn address(&self) -> &str;
    /// The backlog and the workers.
    fn observe(&self) -> std::result::Result<ClusterView, String>;
    /// Retires every worker named one of `names`, gracefully; returns once
    /// they have left (workers already gone are no error).
    fn retire(&self, names: &[String]) -> std::result::Result<(), String>;
}

/// How a job is being removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Removal {
    /// Its workers are asked to leave; the job then ends by itself.
    Retire,
    /// `scancel`/`qdel`.
    Cancel,
}

/// A job of the pool, as the state file keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolJob {
    pub job_id: String,
    /// Submission order.
    pub seq: u64,
    /// Workers it starts.
    pub workers: u32,
    /// Seconds since the Unix epoch.
    pub submitted: f64,
    pub script: PathBuf,
    pub output: Option<PathBuf>,
    /// Whether a worker of it ever joined the scheduler.
    pub joined_ever: bool,
    /// When it was first seen running (Unix seconds).
    pub running_since: Option<f64>,
    /// Being removed: how, and since when (Unix seconds).
    pub leaving: Option<(Removal, f64)>,
    /// Last state the batch system gave (not kept across runs).
    #[serde(skip, default = "unknown")]
    pub state: JobState,
    /// Its workers the scheduler lists now, and their tasks in flight.
    #[serde(skip)]
    pub joined: u32,
    #[serde(skip)]
    pub busy: u32,
}

fn unknown() -> JobState {
    JobState::Unknown
}

impl PoolJob {
    /// Counts as workers that are here or coming.
    pub fn is_capacity(&self) -> bool {
        self.view().is_capacity()
    }

    /// What the policy sees of it.
    pub fn view(&self) -> JobView {
        let phase = match (self.leaving, self.state) {
            (Some(_), _) => Phase::Leaving,
            (None, JobState::Running) => Phase::Running,
            _ => Phase::Pending,
        };
        JobView {
            job_id: self.job_id.clone(),
            phase,
            workers: self.workers,
            joined: self.joined,
            joined_ever: self.joined_ever,
            busy: self.busy,
            running_since: self.running_since.map(secs),
            seq: self.seq,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct PoolState {
    scheduler: String,
    system: System,
    next_seq: u64,
    jobs: Vec<PoolJob>,
}

/// Something the pool did or saw, for the command to report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Submitted {
        job_id: String,
        workers: u32,
        script: PathBuf,
        output: Option<PathBuf>,
    },
    /// A worker of the job joined the scheduler (reported once).
    Joined {
        job_id: String,
        after_seconds: f64,
    },
    Cancelled {
        job_id: String,
        was: JobState,
        why: String,
    },
    /// Its workers were asked to leave.
    Retiring {
        job_id: String,
    },
    /// Its workers have left the scheduler.
    Retired {
        job_id: String,
        seconds: f64,
    },
    RetireFailed {
        job_id: String,
        error: String,
    },
    /// The job left the queue.
    Ended {
        job_id: String,
        state: JobState,
        exit_code: Option<i32>,
        /// Whether a worker of it ever joined.
        joined: bool,
        /// Whether this pool removed it (else it ended by itself: walltime,
        /// lifetime, failure, or someone else's `scancel`).
        removed: bool,
        output: Option<PathBuf>,
    },
}

/// The pool's state file for a scheduler address under `log_dir`.
pub fn pool_file(log_dir: &Path, scheduler: &str) -> PathBuf {
    let key: String = scheduler.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect();
    log_dir.join(format!("tessera-pool-{key}.json"))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or_default()
}

/// The worker jobs of one scheduler; see the module docs.
pub struct Pool {
    batch: Box<dyn BatchSystem>,
    link: Arc<dyn SchedulerLink>,
    spec: JobSpec,
    script: String,
    path: PathBuf,
    _lock: Lock,
    state: PoolState,
    retire_timeout: Duration,
    done_tx: Sender<(String, std::result::Result<(), String>, f64)>,
    done_rx: Receiver<(String, std::result::Result<(), String>, f64)>,
    events: Vec<Event>,
    backlog: u64,
    workers: Vec<WorkerView>,
}

impl Pool {
    /// Opens (or starts) the pool of `link`'s scheduler under `spec.log_dir`
    /// and takes its lock. New jobs are `script` (rendered from `spec`, of
    /// `spec.total_tasks()` workers each).
    pub fn open(
        system: System,
        batch: Box<dyn BatchSystem>,
        link: Arc<dyn SchedulerLink>,
        spec: JobSpec,
        script: String,
        retire_timeout: Duration,
    ) -> Result<Pool> {
        std::fs::create_dir_all(&spec.log_dir).map_err(|e| Error::io(&spec.log_dir, e))?;
        let path = pool_file(&spec.log_dir, link.address());
        let lock = Lock::take(&path.with_extension("lock"))?;
        let state = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str::<PoolState>(&text).map_err(|e| Error::ConfigValue {
                file: path.clone(),
                line: Some(e.line()),
                message: format!("not a pool state file ({e}); move it away to start a new pool"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                PoolState { scheduler: link.address().to_string(), system, next_seq: 1, jobs: Vec::new() }
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        if state.system != system && !state.jobs.is_empty() {
            return Err(Error::invalid(
                "system",
                system.name(),
                format!("the pool {} holds {} jobs; use --system {}", path.display(), state.system, state.system),
            ));
        }
        let (done_tx, done_rx) = channel();
        Ok(Pool {
            batch,
            link,
            spec,
            script,
            path,
            _lock: lock,
            state,
            retire_timeout,
            done_tx,
            done_rx,
            events: Vec::new(),
            backlog: 0,
            workers: Vec::new(),
        })
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn system(&self) -> System {
        self.batch.system()
    }

    pub fn scheduler(&self) -> &str {
        self.link.address()
    }

    /// Workers each new job starts.
    pub fn per_job(&self) -> u32 {
        self.spec.total_tasks().clamp(1, u64::from(u32::MAX)) as u32
    }

    pub fn jobs(&self) -> &[PoolJob] {
        &self.state.jobs
    }

    /// The backlog at the last [`Pool::observe`].
    pub fn backlog(&self) -> u64 {
        self.backlog
    }

    /// Every worker the scheduler listed at the last [`Pool::observe`],
    /// this pool's or not.
    pub fn workers(&self) -> &[WorkerView] {
        &self.workers
    }

    /// Workers of this pool's jobs that have joined (last observation).
    pub fn joined(&self) -> u32 {
        self.state.jobs.iter().filter(|j| j.leaving.is_none()).map(|j| j.joined).sum()
    }

    /// Workers here or coming.
    pub fn capacity(&self) -> u32 {
        self.state.jobs.iter().filter(|j| j.is_capacity()).map(|j| j.workers).sum()
    }

    /// Jobs being removed that have not ended yet.
    pub fn leaving(&self) -> Vec<&PoolJob> {
        self.state.jobs.iter().filter(|j| j.leaving.is_some()).collect()
    }

    /// What happened since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Asks the scheduler and the batch system, updates every job (joined,
    /// ended, retired), cancels jobs whose retirement failed or has taken
    /// longer than `retire_timeout`, and saves the state. Returns what the
    /// policy needs.
    pub fn observe(&mut self) -> Result<Vec<JobView>> {
        let view = self
            .link
            .observe()
            .map_err(|message| Error::Scheduler { address: self.link.address().to_string(), message })?;
        self.backlog = view.backlog;
        self.workers = view.workers;
        let result = self.update();
        self.save()?;
        result?;
        Ok(self.state.jobs.iter().map(PoolJob::view).collect())
    }

    fn update(&mut self) -> Result<()> {
        let now = unix_now();
        // Retirements that finished, or failed: a failed one is cancelled.
        while let Ok((id, result, seconds)) = self.done_rx.try_recv() {
            match result {
                Ok(()) => self.events.push(Event::Retired { job_id: id, seconds }),
                Err(error) => {
                    self.events.push(Event::RetireFailed { job_id: id.clone(), error: error.clone() });
                    self.cancel_one(&id, &format!("retiring its workers failed: {error}"))?;
                }
            }
        }
        // One listing for all, then a status for each job it no longer shows.
        let listed = match self.batch.list(&self.spec.job_name) {
            Ok(l) => l,
            Err(e @ (Error::CommandNotFound { .. } | Error::Spawn { .. })) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "listing jobs failed; asking for each");
                Vec::new()
            }
        };
        let mut ended = Vec::new();
        for j in &mut self.state.jobs {
            let status = match listed.iter().find(|s| s.job_id == j.job_id) {
                Some(s) => Some(s.clone()),
                None => match self.batch.status(&j.job_id) {
                    Ok(s) if s.state == JobState::Unknown => None,
                    Ok(s) => Some(s),
                    Err(Error::UnknownJob { .. }) => None,
                    Err(e) => return Err(e),
                },
            };
            let (state, exit_code) = status.map(|s| (s.state, s.exit_code)).unwrap_or((JobState::Unknown, None));
            if state.is_finished() || status_gone(state, &listed, &j.job_id) {
                ended.push((j.job_id.clone(), state, exit_code));
                continue;
            }
            j.state = state;
            if state == JobState::Running && j.running_since.is_none() {
                j.running_since = Some(now);
            }
            let mine: Vec<&WorkerView> = self.workers.iter().filter(|w| w.name == j.job_id).collect();
            j.joined = mine.len() as u32;
            j.busy = mine.iter().map(|w| w.busy).sum();
            if j.joined > 0 && !j.joined_ever {
                j.joined_ever = true;
                self.events.push(Event::Joined { job_id: j.job_id.clone(), after_seconds: now - j.submitted });
            }
        }
        for (id, state, exit_code) in ended {
            let Some(i) = self.state.jobs.iter().position(|j| j.job_id == id) else { continue };
            let j = self.state.jobs.remove(i);
            tracing::info!(job = %id, %state, "worker job ended");
            self.events.push(Event::Ended {
                job_id: id,
                state,
                exit_code,
                joined: j.joined_ever,
                removed: j.leaving.is_some(),
                output: j.output,
            });
        }
        // Retirements that take too long.
        let late: Vec<String> = self
            .state
            .jobs
            .iter()
            .filter(|j| matches!(j.leaving, Some((Removal::Retire, since)) if now - since >= self.retire_timeout.as_secs_f64()))
            .map(|j| j.job_id.clone())
            .collect();
        for id in late {
            let why = format!(
                "it had not ended {:.0} s after its workers were asked to leave",
                self.retire_timeout.as_secs_f64()
            );
            self.cancel_one(&id, &why)?;
        }
        Ok(())
    }

    /// Carries `plan` out: cancels, starts retirements (each on a thread),
    /// submits. Saves the state after each job submitted or removed.
    pub fn apply(&mut self, plan: &Plan, why: &str) -> Result<()> {
        for id in &plan.cancel {
            self.cancel_one(id, why)?;
            self.save()?;
        }
        for id in &plan.retire {
            let Some(j) = self.state.jobs.iter_mut().find(|j| &j.job_id == id) else { continue };
            if j.leaving.is_some() {
                continue;
            }
            j.leaving = Some((Removal::Retire, unix_now()));
            self.events.push(Event::Retiring { job_id: id.clone() });
            let (link, tx, id) = (Arc::clone(&self.link), self.done_tx.clone(), id.clone());
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = link.retire(std::slice::from_ref(&id));
                let _ = tx.send((id, r, t.elapsed().as_secs_f64()));
            });
            self.save()?;
        }
        for _ in 0..plan.submit {
            self.submit_one()?;
            self.save()?;
        }
        Ok(())
    }

    fn cancel_one(&mut self, id: &str, why: &str) -> Result<()> {
        let Some(i) = self.state.jobs.iter().position(|j| j.job_id == id) else { return Ok(()) };
        if matches!(self.state.jobs[i].leaving, Some((Removal::Cancel, _))) {
            return Ok(());
        }
        match self.batch.cancel(id) {
            Ok(c) => {
                self.state.jobs[i].leaving = Some((Removal::Cancel, unix_now()));
                self.events.push(Event::Cancelled { job_id: id.to_string(), was: c.was, why: why.to_string() });
                Ok(())
            }
            Err(Error::UnknownJob { .. }) => {
                let j = self.state.jobs.remove(i);
                self.events.push(Event::Ended {
                    job_id: j.job_id,
                    state: JobState::Unknown,
                    exit_code: None,
                    joined: j.joined_ever,
                    removed: true,
                    output: j.output,
                });
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn submit_one(&mut self) -> Result<()> {
        let seq = self.state.next_seq;
        let path = crate::write_script(&self.spec, &self.script, &format!("{seq}"))?;
        let s = self.batch.submit(&path)?;
        if let Some(w) = &s.warning {
            tracing::warn!(job = %s.job_id, warning = %w, "the batch system accepted the job with a warning");
        }
        let output = crate::output_file(self.batch.system(), &self.spec, &s.job_id);
        tracing::info!(job = %s.job_id, "submitted a worker job");
        self.state.next_seq += 1;
        self.state.jobs.push(PoolJob {
            job_id: s.job_id.clone(),
            seq,
            workers: self.per_job(),
            submitted: unix_now(),
            script: path.clone(),
            output: output.clone(),
            joined_ever: false,
            running_since: None,
            leaving: None,
            state: JobState::Pending,
            joined: 0,
            busy: 0,
        });
        self.events.push(Event::Submitted { job_id: s.job_id, workers: self.per_job(), script: path, output });
        Ok(())
    }

    fn save(&self) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.state).map_err(|e| Error::invalid("pool", "", e.to_string()))?;
        let tmp = self.path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text + "\n").map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| Error::io(&self.path, e))
    }
}

/// A job the listing does not show and whose status could not be had is gone.
fn status_gone(state: JobState, listed: &[crate::JobStatus], id: &str) -> bool {
    state == JobState::Unknown && !listed.iter().any(|s| s.job_id == id)
}

/// Held while a process manages a pool: the file holds `pid host`.
struct Lock {
    path: PathBuf,
}

impl Lock {
    fn take(path: &Path) -> Result<Lock> {
        let me = format!("{} {}\n", std::process::id(), hostname());
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(me.as_bytes()).map_err(|e| Error::io(path, e))?;
                    return Ok(Lock { path: path.to_path_buf() });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(path).unwrap_or_default();
                    let mut words = text.split_whitespace();
                    let pid: u32 = words.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                    let host = words.next().unwrap_or("").to_string();
                    // Only where /proc tells which processes live (Linux) is a lock judged stale.
                    let gone = host == hostname()
                        && Path::new("/proc/self").exists()
                        && !Path::new(&format!("/proc/{pid}")).exists();
                    if !gone {
                        return Err(Error::PoolBusy { path: path.to_path_buf(), pid, host });
                    }
                    tracing::warn!(lock = %path.display(), pid, "taking over the lock of a process that is gone");
                    let _ = std::fs::remove_file(path);
                }
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        Err(Error::PoolBusy { path: path.to_path_buf(), pid: 0, host: String::new() })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// This host's name, as the runtime's `host::sys::hostname` reads it (this
/// crate does not depend on the runtime).
fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests;

//! How many worker jobs an elastic cluster should have, and which to remove:
//! the pure policy behind `tessera jobqueue scale` and `adapt`. No command
//! is run and no clock is read here; the driver ([`crate::pool`]) observes
//! the batch system and the scheduler, asks, and carries the answer out.
//!
//! * [`plan`] reaches a number of workers from the jobs there are: it counts
//!   pending jobs as capacity that is coming (so it never submits again for
//!   workers that are only waiting in the queue) and removes **pending jobs
//!   first** (newest first: the oldest are nearest the front of the queue),
//!   then running jobs whose workers have not joined (they hold nothing),
//!   and only then joined workers, the least busy first, which are retired
//!   gracefully (their blocks handed off) rather than killed.
//! * [`Adapter`] sizes the cluster from the scheduler's backlog:
//!   `clamp(ceil(backlog / tasks_per_worker), min, max)` workers. It scales
//!   up at once, but down only when the lower target has held for
//!   `down_after` and no scale-up happened within `cooldown`, and then to the
//!   highest target seen meanwhile: a backlog that comes and goes does not
//!   make it submit and cancel jobs in a loop. Jobs that never bring a worker
//!   (running `wait_ready` without joining, or ending before they joined) are
//!   cancelled and counted; after `max_failures` of them in a row it gives up
//!   with a message instead of submitting broken jobs forever.
//!
//! ```
//! use std::time::Duration;
//! use tessera_jobqueue::scale::{Adapter, AdaptPolicy, JobView, Observation, Phase};
//!
//! let policy = AdaptPolicy { min: 1, max: 4, tasks_per_worker: 10, ..AdaptPolicy::default() };
//! let mut adapter = Adapter::new(policy, 1)?;
//! // 100 tasks queued, no job yet: 4 workers (the most allowed), one per job.
//! let step = adapter.step(&Observation { now: Duration::ZERO, backlog: 100, jobs: vec![] });
//! assert_eq!((step.target, step.plan.submit), (4, 4));
//! // The 4 jobs wait in the queue: they are capacity that is coming, nothing more is submitted.
//! let pending = |id: &str| JobView { job_id: id.into(), phase: Phase::Pending, ..JobView::default() };
//! let jobs = vec![pending("1"), pending("2"), pending("3"), pending("4")];
//! let step = adapter.step(&Observation { now: Duration::from_secs(5), backlog: 100, jobs });
//! assert!(step.plan.is_empty());
//! # Ok::<(), tessera_jobqueue::Error>(())
//! ```

use std::time::Duration;

use serde::Serialize;

use crate::{Error, Result};

/// Where a job of the pool is, as far as scaling goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Queued or held: its workers are coming.
    #[default]
    Pending,
    /// Started; its workers have joined, or are about to.
    Running,
    /// Being retired or cancelled, or its workers left by themselves (end of
    /// their lifetime): no longer capacity.
    Leaving,
}

/// One worker job as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobView {
    pub job_id: String,
    pub phase: Phase,
    /// Workers the job starts (its tasks).
    pub workers: u32,
    /// Its workers the scheduler lists now (taking tasks).
    pub joined: u32,
    /// Whether any of its workers ever joined.
    pub joined_ever: bool,
    /// Tasks sent to its workers and not yet done.
    pub busy: u32,
    /// Since when it runs (the driver's clock), if it does.
    pub running_since: Option<Duration>,
    /// Submission order: larger is newer.
    pub seq: u64,
}

impl Default for JobView {
    fn default() -> Self {
        JobView {
            job_id: String::new(),
            phase: Phase::Pending,
            workers: 1,
            joined: 0,
            joined_ever: false,
            busy: 0,
            running_since: None,
            seq: 0,
        }
    }
}

impl JobView {
    /// Counts as workers that are here or coming.
    pub fn is_capacity(&self) -> bool {
        match self.phase {
            Phase::Pending => true,
            // A job whose workers joined and all left is leaving by itself.
            Phase::Running => !(self.joined_ever && self.joined == 0),
            Phase::Leaving => false,
        }
    }
}

/// Workers that are here or coming.
pub fn capacity(jobs: &[JobView]) -> u32 {
    jobs.iter().filter(|j| j.is_capacity()).map(|j| j.workers).sum()
}

/// What to do to reach a target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// New jobs to submit.
    pub submit: u32,
    /// Jobs to cancel: pending ones, or running ones whose workers have not joined.
    pub cancel: Vec<String>,
    /// Jobs whose workers to retire gracefully; their jobs then end by themselves.
    pub retire: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.submit == 0 && self.cancel.is_empty() && self.retire.is_empty()
    }
}

/// The plan that takes `jobs` to `target` workers, with new jobs of
/// `per_job` workers each: submits `ceil(missing / per_job)` jobs when short;
/// when over, removes whole jobs while what remains still holds `target`:
/// pending jobs first (newest first), then running jobs none of whose
/// workers joined (cancelled: they hold nothing), then joined ones (retired),
/// least busy first, then newest first.
pub fn plan(target: u32, per_job: u32, jobs: &[JobView]) -> Plan {
    let per_job = per_job.max(1);
    let mut have = capacity(jobs);
    let mut out = Plan::default();
    if have < target {
        out.submit = (target - have).div_ceil(per_job);
        return out;
    }
    let mut candidates: Vec<&JobView> = jobs.iter().filter(|j| j.is_capacity()).collect();
    // Pending, then not joined, then joined; newest first within each, the
    // least busy first among the joined.
    let rank = |j: &JobView| match (j.phase, j.joined) {
        (Phase::Pending, _) => 0,
        (_, 0) => 1,
        _ => 2,
    };
    candidates.sort_by(|a, b| {
        rank(a)
            .cmp(&rank(b))
            .then(if rank(a) == 2 { a.busy.cmp(&b.busy) } else { std::cmp::Ordering::Equal })
            .then(b.seq.cmp(&a.seq))
    });
    for j in candidates {
        if have - j.workers < target {
            continue;
        }
        have -= j.workers;
        if rank(j) == 2 {
            out.retire.push(j.job_id.clone());
        } else {
            out.cancel.push(j.job_id.clone());
        }
    }
    out
}

/// Settings of [`Adapter`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdaptPolicy {
    /// Fewest workers, whatever the backlog.
    pub min: u32,
    /// Most workers, whatever the backlog.
    pub max: u32,
    /// Backlog tasks one worker should have: the target is
    /// `ceil(backlog / tasks_per_worker)` workers.
    pub tasks_per_worker: u32,
    /// A lower target must hold this long before jobs are removed.
    pub down_after: Duration,
    /// No scale-down within this long of a scale-up.
    pub cooldown: Duration,
    /// A job running this long without any worker joining is broken: cancelled.
    pub wait_ready: Duration,
    /// Give up after this many jobs in a row ended or were cancelled without
    /// a worker joining.
    pub max_failures: u32,
}

impl Default for AdaptPolicy {
    fn default() -> Self {
        AdaptPolicy {
            min: 0,
            max: 1,
            tasks_per_worker: 4,
            down_after: Duration::from_secs(30),
            cooldown: Duration::from_secs(60),
            wait_ready: Duration::from_secs(300),
            max_failures: 3,
        }
    }
}

/// What the driver saw at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The driver's clock (any origin, never going back).
    pub now: Duration,
    /// Tasks the scheduler has not computed yet.
    pub backlog: u64,
    /// The pool's jobs still listed by the batch system.
    pub jobs: Vec<JobView>,
}

/// One decision of [`Adapter::step`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// `clamp(ceil(backlog / tasks_per_worker), min, max)`.
    pub desired: u32,
    /// Workers here or coming before this step.
    pub capacity: u32,
    /// What the pool is taken to (`desired`, or the capacity while the
    /// hysteresis holds a scale-down back).
    pub target: u32,
    pub plan: Plan,
    /// Running jobs cancelled because no worker of theirs joined within
    /// `wait_ready` (also in `plan.cancel`).
    pub broken: Vec<String>,
    /// Why this target, in words.
    pub reason: String,
}

/// The adaptive policy: feed it an [`Observation`] every interval.
#[derive(Debug, Clone)]
pub struct Adapter {
    policy: AdaptPolicy,
    per_job: u32,
    last_up: Option<Duration>,
    /// Since when the desired size is below the capacity, and the highest
    /// desired size seen since.
    below: Option<(Duration, u32)>,
    failures: u32,
    failed_jobs: Vec<String>,
}

impl Adapter {
    /// Checks the policy: `min <= max`, `max >= 1`, `tasks_per_worker >= 1`,
    /// and that whole jobs of `per_job` workers fit between them.
    pub fn new(policy: AdaptPolicy, per_job: u32) -> Result<Adapter> {
        check_bounds(policy.min, policy.max, per_job)?;
        if policy.tasks_per_worker == 0 {
            return Err(Error::invalid("tasks_per_worker", "0", "must be at least 1"));
        }
        if policy.max_failures == 0 {
            return Err(Error::invalid("max_failures", "0", "must be at least 1"));
        }
        Ok(Adapter {
            policy,
            per_job: per_job.max(1),
            last_up: None,
            below: None,
            failures: 0,
            failed_jobs: Vec::new(),
        })
    }

    pub fn policy(&self) -> &AdaptPolicy {
        &self.policy
    }

    /// Decides what to do now.
    pub fn step(&mut self, obs: &Observation) -> Step {
        let p = &self.policy;
        let per_job = self.per_job;
        // Running jobs that never brought a worker within wait_ready.
        let broken: Vec<String> = obs
            .jobs
            .iter()
            .filter(|j| {
                j.phase == Phase::Running
                    && !j.joined_ever
                    && j.running_since.is_some_and(|t| obs.now.saturating_sub(t) >= p.wait_ready)
            })
            .map(|j| j.job_id.clone())
            .collect();
        let jobs: Vec<JobView> = obs
            .jobs
            .iter()
            .map(|j| {
                let mut j = j.clone();
                if broken.contains(&j.job_id) {
                    j.phase = Phase::Leaving;
                }
                j
            })
            .collect();
        let have = capacity(&jobs);
        let wanted = obs.backlog.div_ceil(u64::from(p.tasks_per_worker)).min(u64::from(u32::MAX)) as u32;
        // Whole jobs: the most that fit under max, at least enough for min.
        let max = p.max / per_job * per_job;
        let min = p.min.div_ceil(per_job) * per_job;
        let desired = wanted.clamp(min, max);
        let (target, reason) = if desired > have {
            self.below = None;
            self.last_up = Some(obs.now);
            (desired, format!("backlog {} tasks wants {desired} workers, {have} here or coming", obs.backlog))
        } else if desired == have {
            self.below = None;
            (have, "steady".to_string())
        } else if have > max {
            // More than allowed (max lowered, or jobs added by hand): no waiting.
            self.below = None;
            (max, format!("{have} workers are more than the maximum {max}"))
        } else {
            let (since, peak) = self.below.get_or_insert((obs.now, desired));
            *peak = (*peak).max(desired);
            let (since, peak) = (*since, *peak);
            let held = obs.now.saturating_sub(since);
            let cooled = self.last_up.is_none_or(|t| obs.now.saturating_sub(t) >= p.cooldown);
            if held >= p.down_after && cooled {
                self.below = None;
                (
                    peak,
                    format!(
                        "backlog {} tasks: {peak} workers have sufficed for {:.0} s",
                        obs.backlog,
                        held.as_secs_f64()
                    ),
                )
            } else if !cooled {
                (have, format!("wants {desired} workers, holding {have}: cooling down after a scale-up"))
            } else {
                (
                    have,
                    format!(
                        "wants {desired} workers, holding {have} until that lasts {:.0} s",
                        p.down_after.as_secs_f64()
                    ),
                )
            }
        };
        let mut plan = plan(target, per_job, &jobs);
        plan.cancel.splice(0..0, broken.iter().cloned());
        Step { desired, capacity: have, target, plan, broken, reason }
    }

    /// A job ended, or was found broken: `joined` tells whether any of its
    /// workers ever joined. Returns an error once `max_failures` jobs in a
    /// row brought no worker.
    pub fn job_ended(&mut self, job_id: &str, joined: bool) -> Result<()> {
        if joined {
            self.failures = 0;
            self.failed_jobs.clear();
            return Ok(());
        }
        self.failures += 1;
        self.failed_jobs.push(job_id.to_string());
        if self.failures >= self.policy.max_failures {
            return Err(Error::NoWorkers { jobs: self.failed_jobs.clone(), outputs: Vec::new() });
        }
        Ok(())
    }
}

/// Checks `min <= max` and that jobs of `per_job` workers fit.
pub fn check_bounds(min: u32, max: u32, per_job: u32) -> Result<()> {
    if max == 0 {
        return Err(Error::invalid("max", "0", "must be at least 1 (use `scale 0` to remove every worker)"));
    }
    if min > max {
        return Err(Error::invalid("min", min.to_string(), format!("must not exceed --max {max}")));
    }
    let per_job = per_job.max(1);
    if max < per_job || min.div_ceil(per_job) * per_job > max {
        return Err(Error::invalid(
            "max",
            max.to_string(),
            format!(
                "each job starts {per_job} workers (--nodes x --tasks-per-node): --min {min} and --max {max} leave no whole number of jobs"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

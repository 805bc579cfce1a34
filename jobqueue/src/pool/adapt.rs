//! The `adapt` loop's rounds without a terminal: each [`round`] observes the
//! pool, tells the [`Adapter`] which jobs ended (and whether a worker of
//! theirs ever joined), lets it decide, and applies the decision; [`drain`]
//! waits for the retirements under way when the loop stops. The clock is
//! passed in and nothing is printed: the command (`tessera jobqueue adapt`)
//! owns the interval, the signals and the output, and these functions are
//! tested against a scripted batch system and scheduler.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use tessera_jobqueue::pool::{adapt, unix_now, Pool};
//! # use tessera_jobqueue::scale::{AdaptPolicy, Adapter};
//! # fn go(pool: &mut Pool) -> tessera_jobqueue::Result<()> {
//! let mut adapter = Adapter::new(AdaptPolicy { min: 0, max: 8, ..AdaptPolicy::default() }, pool.per_job())?;
//! let r = adapt::round(pool, &mut adapter, Duration::from_secs_f64(unix_now()))?;
//! println!("{} workers -> {}: {}", r.step.capacity, r.step.target, r.step.reason);
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Event, Pool};
use crate::scale::{Adapter, Observation, Step};
use crate::{Error, Result};

/// What one [`round`] decided and what the pool did or saw meanwhile.
#[derive(Debug, Clone)]
pub struct Round {
    /// The adapter's decision (already applied to the pool).
    pub step: Step,
    /// The pool's events of the round, in order: those the observation
    /// found, then those of applying the step.
    pub events: Vec<Event>,
}

/// One round of the adapt loop at time `now` (the adapter's clock: any
/// origin, never going back): observe the batch system and the scheduler,
/// count the jobs that ended, decide, apply.
///
/// A job that ended by itself before any worker of it joined counts as a
/// failure; so does a running job the adapter gives up on (`step.broken`).
/// After `max_failures` in a row the round fails with [`Error::NoWorkers`],
/// naming those jobs and the output files the pool knows of them.
pub fn round(pool: &mut Pool, adapter: &mut Adapter, now: Duration) -> Result<Round> {
    let views = pool.observe()?;
    let mut events = pool.take_events();
    let failed: Vec<(String, Option<PathBuf>)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Ended { job_id, joined: false, removed: false, output, .. } => {
                Some((job_id.clone(), output.clone()))
            }
            _ => None,
        })
        .collect();
    let outputs = |ids: &[String], pool: &Pool| -> Vec<PathBuf> {
        let mut o: Vec<PathBuf> = failed.iter().filter_map(|f| f.1.clone()).collect();
        o.extend(pool.jobs().iter().filter(|j| ids.contains(&j.job_id)).filter_map(|j| j.output.clone()));
        o
    };
    for (id, _) in &failed {
        adapter.job_ended(id, false).map_err(|e| with_outputs(e, outputs(&[], pool)))?;
    }
    for e in &events {
        if let Event::Ended { job_id, joined: true, .. } = e {
            adapter.job_ended(job_id, true)?;
        }
    }
    let step = adapter.step(&Observation { now, backlog: pool.backlog(), jobs: views });
    for id in &step.broken {
        adapter.job_ended(id, false).map_err(|e| with_outputs(e, outputs(&step.broken, pool)))?;
    }
    pool.apply(&step.plan, &step.reason)?;
    events.extend(pool.take_events());
    Ok(Round { step, events })
}

/// Waits, observing every `poll`, until the jobs whose workers are leaving
/// have ended (or are cancelled by the pool after its retire timeout), for
/// at most `timeout`; hands each event to `on_event` as it comes.
pub fn drain(pool: &mut Pool, timeout: Duration, poll: Duration, mut on_event: impl FnMut(Event)) -> Result<()> {
    let limit = Instant::now() + timeout;
    while !pool.leaving().is_empty() && Instant::now() < limit {
        std::thread::sleep(poll);
        pool.observe()?;
        pool.take_events().into_iter().for_each(&mut on_event);
    }
    Ok(())
}

/// Adds the jobs' output files to a `NoWorkers` error.
fn with_outputs(e: Error, outputs: Vec<PathBuf>) -> Error {
    match e {
        Error::NoWorkers { jobs, .. } => Error::NoWorkers { jobs, outputs },
        other => other,
    }
}

//! Logging across ranks: which rank a process is, and the first error of
//! a worker rank, forwarded to the driver.
//!
//! A program's log lines should say which rank and host wrote them; the
//! rank is known from the launcher's environment before MPI starts, or
//! later (an elastic worker learns its rank when it joins). [`rank`] gives
//! the best current answer and [`set_rank`] corrects it.
//!
//! A worker rank's errors are written to its own stderr, which on a cluster
//! may end up in another file or nowhere. So the first error logged on a
//! worker rank is also sent to the scheduler ([`forward_error`]; the
//! `tessera` command's log subscriber calls it for ERROR events), which logs
//! it on the driver's rank with the rank and host it came from, and names it
//! if that rank is later lost.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::protocol::{Endpoint, Msg};
use crate::transport::Transport;

const UNKNOWN: u32 = u32::MAX;
static RANK: AtomicU32 = AtomicU32::new(UNKNOWN);
static SINK: Mutex<Option<(Weak<dyn Transport>, u32)>> = Mutex::new(None);
static FORWARDED: AtomicBool = AtomicBool::new(false);

/// This process's rank: set by [`set_rank`], else the launcher's
/// (`OMPI_COMM_WORLD_RANK`, `PMI_RANK`, `PMIX_RANK`, `SLURM_PROCID`), else 0.
pub fn rank() -> u32 {
    match RANK.load(Ordering::Relaxed) {
        UNKNOWN => crate::host::launcher::rank().unwrap_or(0),
        r => r,
    }
}

/// Records this process's rank (once MPI or a scheduler has said it).
pub fn set_rank(rank: u32) {
    RANK.store(rank, Ordering::Relaxed);
}

/// Makes [`forward_error`] send to the scheduler over `transport`, as
/// worker `rank` (worker ranks of MPI and TCP clusters; not rank 0, whose
/// errors the driver sees already).
pub(crate) fn forward_errors_to(transport: &Arc<dyn Transport>, rank: u32) {
    *SINK.lock() = Some((Arc::downgrade(transport), rank));
}

/// Task `key` failed on worker `rank` of this process. On a worker rank
/// (another process than the driver's, maybe writing another file) its own
/// log says so and the driver hears of it; in the driver's process the
/// driver's error says it already.
pub(crate) fn task_failed(rank: u32, key: &crate::Key, error: &str) {
    if SINK.lock().is_some() {
        tracing::error!(rank, task = %key, "task failed: {error}");
        forward_error(&format!("task {key} failed: {error}"));
    }
}

/// Sends `line` to the scheduler if this process is a worker rank and has
/// not forwarded an error yet. Returns whether it was sent.
pub fn forward_error(line: &str) -> bool {
    let sink = SINK.lock().clone();
    let Some((transport, rank)) = sink else { return false };
    let Some(transport) = transport.upgrade() else { return false };
    if FORWARDED.swap(true, Ordering::Relaxed) {
        return false;
    }
    transport.send(Endpoint::SCHEDULER, Msg::Log { rank, line: line.to_owned() });
    true
}

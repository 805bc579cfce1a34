//! Progress of a computation, shown on the driver while it waits.
//!
//! A driver waiting for results ([`crate::Persisted::wait`], `gather`,
//! [`crate::Client::compute`]) starts a monitor thread. Computations that
//! finish within a second (`TESSERA_PROGRESS_AFTER` seconds, when set)
//! show nothing. Longer ones show tasks done out of
//! the graph's tasks, bytes moved between workers, elapsed time and an
//! estimate of the time left, read from the scheduler's counters
//! ([`crate::ClusterState`]) a few times a second:
//!
//! * as a progress bar (indicatif, feature `progress-bar`) on a terminal,
//! * as a `tracing` line every [`LOG_EVERY`] when stderr is not a terminal
//!   (a batch job's log), target `tessera::progress` at level INFO.
//!
//! [`Progress::Off`] (the library's default; `--quiet` on the command line)
//! shows nothing and costs nothing.

use std::io::IsTerminal;
use std::str::FromStr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::host::sys::human_bytes;
use crate::protocol::ClusterState;

/// Computations shorter than this show no progress (unless
/// `TESSERA_PROGRESS_AFTER` says otherwise: see [`show_after`]).
pub const SHOW_AFTER: Duration = Duration::from_secs(1);

/// How long a computation runs before its progress shows:
/// `TESSERA_PROGRESS_AFTER` (seconds, 0 or more), else [`SHOW_AFTER`]. A
/// value that is not a number of seconds is ignored with a warning.
pub fn show_after() -> Duration {
    let Some(v) = std::env::var_os("TESSERA_PROGRESS_AFTER") else { return SHOW_AFTER };
    let v = v.to_string_lossy();
    match v.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        _ => {
            tracing::warn!(value = %v, "TESSERA_PROGRESS_AFTER: expected seconds (0 or more); using 1");
            SHOW_AFTER
        }
    }
}

/// How often a progress line is logged when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// How a driver shows progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Progress {
    /// Nothing.
    #[default]
    Off,
    /// A bar when stderr is a terminal, else log lines.
    Auto,
    /// Always a bar (log lines when built without the `progress-bar` feature).
    Bar,
    /// Always log lines.
    Log,
}

impl FromStr for Progress {
    type Err = Error;
    fn from_str(s: &str) -> Result<Progress> {
        match s {
            "off" | "none" => Ok(Progress::Off),
            "auto" => Ok(Progress::Auto),
            "bar" => Ok(Progress::Bar),
            "log" => Ok(Progress::Log),
            other => Err(Error::Config(format!("progress `{other}`: expected auto, bar, log or off"))),
        }
    }
}

impl Progress {
    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> Progress {
        match v {
            1 => Progress::Auto,
            2 => Progress::Bar,
            3 => Progress::Log,
            _ => Progress::Off,
        }
    }

    /// `Auto` decided for this process's stderr.
    fn resolve(self) -> Progress {
        match self {
            Progress::Auto if std::io::stderr().is_terminal() => Progress::Bar,
            Progress::Auto => Progress::Log,
            other => other,
        }
    }
}

/// What a monitor measures against: the graph's size and the scheduler's
/// counters when it was submitted.
#[derive(Clone, Debug)]
pub(crate) struct Baseline {
    pub mode: Progress,
    pub total: u64,
    pub state: ClusterState,
    pub started: Instant,
}

/// A running monitor; stops (and clears its bar) when dropped.
pub(crate) struct Monitor {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Starts watching: `state` asks the scheduler for its counters (one
    /// round trip, a few times a second while the bar or the log runs).
    pub(crate) fn start(state: impl Fn() -> Result<ClusterState> + Send + 'static, base: Baseline) -> Monitor {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = Arc::clone(&stop);
        let handle =
            std::thread::Builder::new().name("tessera-progress".into()).spawn(move || watch(&state, &base, &s)).ok();
        Monitor { stop, handle }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sleeps until `until` or a stop; returns whether stopped.
fn stopped_by(stop: &(Mutex<bool>, Condvar), until: Instant) -> bool {
    let mut s = stop.0.lock();
    while !*s {
        if stop.1.wait_until(&mut s, until).timed_out() {
            return *s;
        }
    }
    true
}

/// Tasks done, bytes moved and the estimated seconds left, from a fresh state.
fn measure(base: &Baseline, now: &ClusterState) -> (u64, u64, Option<f64>) {
    let done = now.completed.saturating_sub(base.state.completed).min(base.total);
    let moved = now.moved_bytes.saturating_sub(base.state.moved_bytes);
    let elapsed = base.started.elapsed().as_secs_f64();
    let eta = (done > 0).then(|| elapsed * (base.total - done) as f64 / done as f64);
    (done, moved, eta)
}

fn watch(state: &dyn Fn() -> Result<ClusterState>, base: &Baseline, stop: &(Mutex<bool>, Condvar)) {
    if stopped_by(stop, base.started + show_after()) {
        return;
    }
    match base.mode.resolve() {
        Progress::Bar => bar(state, base, stop),
        Progress::Log => log(state, base, stop),
        _ => {}
    }
}

#[cfg(not(feature = "progress-bar"))]
fn bar(state: &dyn Fn() -> Result<ClusterState>, base: &Baseline, stop: &(Mutex<bool>, Condvar)) {
    log(state, base, stop)
}

#[cfg(feature = "progress-bar")]
fn bar(state: &dyn Fn() -> Result<ClusterState>, base: &Baseline, stop: &(Mutex<bool>, Condvar)) {
    let style = indicatif::ProgressStyle::with_template(
        "{elapsed:>4} [{wide_bar:.cyan/blue}] {pos}/{len} tasks  {msg}  ETA {eta}",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    let pb = indicatif::ProgressBar::with_draw_target(Some(base.total), indicatif::ProgressDrawTarget::stderr())
        .with_style(style)
        .with_elapsed(base.started.elapsed());
    while let Ok(now) = state() {
        let (done, moved, _) = measure(base, &now);
        pb.set_position(done);
        pb.set_message(with_memory(format!("{} moved", human_bytes(moved)), &now));
        if stopped_by(stop, Instant::now() + Duration::from_millis(200)) {
            break;
        }
    }
    pb.finish_and_clear();
}

/// `line`, then the bytes spilled to disk and the workers paused for
/// memory, when there are any.
fn with_memory(mut line: String, now: &ClusterState) -> String {
    if now.spilled_bytes > 0 {
        line.push_str(&format!(", {} spilled", human_bytes(now.spilled_bytes)));
    }
    if !now.paused.is_empty() {
        line.push_str(&format!(", {} paused", now.paused.len()));
    }
    line
}

fn log(state: &dyn Fn() -> Result<ClusterState>, base: &Baseline, stop: &(Mutex<bool>, Condvar)) {
    loop {
        let Ok(now) = state() else { return };
        let (done, moved, eta) = measure(base, &now);
        tracing::info!(
            target: "tessera::progress",
            done,
            total = base.total,
            moved = %human_bytes(moved),
            elapsed_s = format!("{:.1}", base.started.elapsed().as_secs_f64()),
            eta_s = eta.map(|e| format!("{e:.0}")).unwrap_or_else(|| "?".into()),
            "progress: {done}/{} tasks ({:.0}%){}",
            base.total,
            100.0 * done as f64 / base.total.max(1) as f64,
            with_memory(String::new(), &now)
        );
        if stopped_by(stop, Instant::now() + LOG_EVERY) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spilled_bytes_and_paused_workers_show_when_there_are_any() {
        let quiet = ClusterState::default();
        assert_eq!(with_memory("1 MiB moved".into(), &quiet), "1 MiB moved");
        let busy = ClusterState { spilled_bytes: 3 << 30, paused: vec![2, 5], ..Default::default() };
        assert_eq!(with_memory("x".into(), &busy), "x, 3.0 GiB spilled, 2 paused");
    }

    #[test]
    fn modes_parse_and_round_trip() {
        for m in [Progress::Off, Progress::Auto, Progress::Bar, Progress::Log] {
            assert_eq!(Progress::from_u8(m.to_u8()), m);
        }
        assert_eq!("log".parse::<Progress>().unwrap(), Progress::Log);
        assert!("loud".parse::<Progress>().unwrap_err().to_string().contains("`loud`"));
    }

    #[test]
    fn progress_counts_from_the_baseline() {
        let state = ClusterState { completed: 10, moved_bytes: 100, ..Default::default() };
        let base = Baseline { mode: Progress::Log, total: 20, state, started: Instant::now() - Duration::from_secs(4) };
        let now = ClusterState { completed: 15, moved_bytes: 1124, ..Default::default() };
        let (done, moved, eta) = measure(&base, &now);
        assert_eq!((done, moved), (5, 1024));
        // 5 of 20 in 4 s: 12 s to go.
        assert!((eta.unwrap() - 12.0).abs() < 0.5, "{eta:?}");
    }
}

//! Watching a run from the command line: the performance report
//! (`--report FILE.html`) and the Chrome trace (`--trace FILE.json`) of a
//! computing command.
//!
//! [`Observe::run`] runs a driver like [`Config::run`] and, on the driver's
//! rank, once the driver is done (failed or not), gathers the workers'
//! events and writes the files asked for. Destinations are checked before
//! anything runs, so a bad path costs no computation.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tessera_runtime::observe::report::{self, RunInfo};

use crate::{Client, Config};

/// What to write about a run.
#[derive(Clone, Debug, Default)]
pub struct Observe {
    /// The self-contained HTML report.
    pub report: Option<PathBuf>,
    /// The Chrome trace-event file.
    pub trace: Option<PathBuf>,
    /// What the report calls the run (the command line).
    pub command: String,
}

/// The optional features this build has, as the report lists them.
pub fn features() -> Vec<String> {
    [
        ("mpi", crate::HAS_MPI),
        ("hdf5", crate::linalg::HAS_HDF5),
        ("hwloc", tessera_runtime::HAS_HWLOC),
        ("ucx", crate::HAS_UCX),
        ("cuda", crate::HAS_CUDA),
    ]
    .iter()
    .filter(|f| f.1)
    .map(|f| f.0.to_owned())
    .collect()
}

impl Observe {
    /// Whether anything is to be written.
    pub fn wanted(&self) -> bool {
        self.report.is_some() || self.trace.is_some()
    }

    /// Refuses destinations that cannot be written, before anything runs.
    pub fn check(&self, config: &Config) -> anyhow::Result<()> {
        if self.wanted() && !config.worker.events {
            bail!("--report and --trace need the workers' events, which --no-events turns off");
        }
        for (flag, path) in [("--report", &self.report), ("--trace", &self.trace)] {
            let Some(path) = path else { continue };
            check_destination(path).with_context(|| format!("{flag} {}", path.display()))?;
        }
        Ok(())
    }

    /// Runs `driver` on the cluster `config` describes, then writes the
    /// report and trace asked for (also after a failed driver: the report
    /// shows how far it got). A failure to write them fails the command.
    pub fn run<R, F>(&self, config: Config, driver: F) -> anyhow::Result<R>
    where
        F: FnOnce(&Client) -> anyhow::Result<R> + Send,
        R: Send,
    {
        self.check(&config)?;
        let mut info = RunInfo::start(self.command.clone());
        info.features = features();
        config.run(|client| {
            // What the scheduler completes meanwhile: a count to check the events against.
            let completed = || client.state().ok().map(|s| s.completed);
            let before = if self.wanted() { completed() } else { None };
            let result = driver(client);
            if self.wanted() {
                info.finish();
                info.scheduler_completed = completed().zip(before).map(|(after, before)| after - before);
                let written = self.write(client, &info);
                match (&result, written) {
                    (_, Ok(())) => {}
                    (Ok(_), Err(e)) => return Err(e),
                    (Err(_), Err(e)) => tracing::warn!("{e:#}"),
                }
            }
            result
        })
    }

    fn write(&self, client: &Client, info: &RunInfo) -> anyhow::Result<()> {
        let mut log = client.events().context("gathering the workers' events for --report/--trace")?;
        // Workers of an elastic cluster recorded other runs before this one.
        log.retain_since(info.started_us);
        if let Some(path) = &self.report {
            report::write_html(&log, info, path).context("--report")?;
            eprintln!("tessera: report of {} tasks written to {}", log.task_count(), path.display());
        }
        if let Some(path) = &self.trace {
            report::write_chrome_trace(&log, info, path).context("--trace")?;
            eprintln!("tessera: trace of {} tasks written to {}", log.task_count(), path.display());
        }
        Ok(())
    }
}

/// A file name in a directory that exists and is not an existing directory.
fn check_destination(path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!("is a directory");
    }
    if path.file_name().is_none() {
        bail!("names no file");
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("directory {} does not exist", dir.display());
    }
    Ok(())
}

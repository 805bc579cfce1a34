//! The scheduler file of an elastic cluster: how batch jobs find a running
//! `tessera scheduler` (what dask calls `scheduler_file`).
//!
//! `tessera scheduler` writes it when it starts listening and removes it
//! when it stops; `tessera worker --scheduler-file F` (and `tessera demo
//! --scheduler-file F`) read the address and the path of the secret from
//! it. It holds no secret itself: only where the secret file is, which
//! must be readable (and only readable) by the user running the workers.
//!
//! ```
//! use tessera::elastic::SchedulerFile;
//! let path = std::env::temp_dir().join(format!("tessera-doc-sched-{}.json", std::process::id()));
//! let f = SchedulerFile::new("10.0.0.5:40123", "/home/me/.config/tessera/secret".as_ref());
//! f.write(&path)?;
//! assert_eq!(SchedulerFile::read(&path)?.address, "10.0.0.5:40123");
//! # std::fs::remove_file(&path)?;
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What `tessera scheduler` writes for workers and clients to find it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerFile {
    /// `IP:PORT` the workers connect to.
    pub address: String,
    /// The cluster's secret file.
    pub secret_file: PathBuf,
    /// The scheduler process and its host (for `ps`/`kill`, and to tell a
    /// stale file from a live one).
    pub pid: u32,
    pub host: String,
    /// Seconds since the Unix epoch when it started listening.
    pub started: u64,
}

impl SchedulerFile {
    pub fn new(address: &str, secret_file: &Path) -> SchedulerFile {
        SchedulerFile {
            address: address.to_owned(),
            secret_file: secret_file.to_path_buf(),
            pid: std::process::id(),
            host: tessera_runtime::host::sys::hostname(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// Where it goes when no `--scheduler-file` is given.
    pub fn default_path() -> PathBuf {
        tessera_runtime::transport::secret::config_dir().join("scheduler.json")
    }

    /// Writes it (atomically: a reader never sees half a file).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("cannot write scheduler file {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write scheduler file {}", path.display()))
    }

    pub fn read(path: &Path) -> anyhow::Result<SchedulerFile> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read scheduler file {} (is `tessera scheduler` running, with this --scheduler-file?)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("scheduler file {} is malformed", path.display()))
    }

    /// Whether the scheduler that wrote this file is known to have exited: it
    /// ran on this host and its process is gone (read from `/proc`; where
    /// there is none, or on another host, nothing is known and this is false).
    pub fn is_gone(&self) -> bool {
        self.host == tessera_runtime::host::sys::hostname()
            && Path::new("/proc/self").exists()
            && !Path::new("/proc").join(self.pid.to_string()).exists()
    }

    /// Removes `path` if it still describes this process (a newer scheduler
    /// may have replaced it).
    pub fn remove_if_mine(path: &Path) {
        if SchedulerFile::read(path).is_ok_and(|f| f.pid == std::process::id()) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A job queue's view of a running scheduler, over a client connection:
/// the backlog and workers `tessera jobqueue scale`/`adapt` size the pool
/// by, and graceful retirement of the workers of a job (two round trips to
/// observe, one to retire).
pub struct ClientLink {
    client: tessera_runtime::launch::elastic::RemoteClient,
    address: String,
}

impl ClientLink {
    /// Connects to the scheduler at `address` as a client.
    pub fn connect(address: &str, tcp: tessera_runtime::transport::tcp::TcpOptions) -> anyhow::Result<ClientLink> {
        let client = tessera_runtime::launch::elastic::connect(address, tcp)
            .with_context(|| format!("no scheduler reachable at {address} (is `tessera scheduler` running there?)"))?;
        Ok(ClientLink { client, address: address.to_owned() })
    }
}

impl tessera_jobqueue::pool::SchedulerLink for ClientLink {
    fn address(&self) -> &str {
        &self.address
    }

    fn observe(&self) -> Result<tessera_jobqueue::pool::ClusterView, String> {
        let state = self.client.state().map_err(|e| e.to_string())?;
        let workers = self.client.try_workers().map_err(|e| e.to_string())?;
        let busy = |rank: u32| state.in_flight.iter().find(|f| f.0 == rank).map_or(0, |f| f.1);
        Ok(tessera_jobqueue::pool::ClusterView {
            backlog: state.backlog() as u64,
            workers: workers
                .iter()
                .map(|w| tessera_jobqueue::pool::WorkerView { name: w.name.clone(), busy: busy(w.rank) })
                .collect(),
        })
    }

    fn retire(&self, names: &[String]) -> Result<(), String> {
        let workers = self.client.try_workers().map_err(|e| e.to_string())?;
        let ranks: Vec<u32> = workers.iter().filter(|w| names.contains(&w.name)).map(|w| w.rank).collect();
        if ranks.is_empty() {
            return Ok(()); // gone already, or draining by itself
        }
        match self.client.retire_workers(&ranks) {
            Ok(_) => Ok(()),
            // It left between the listing and the request.
            Err(tessera_runtime::Error::UnknownWorker { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SchedulerFile;

    #[test]
    fn a_file_of_a_live_scheduler_on_this_host_is_not_gone_and_one_of_an_exited_one_is() {
        let live = SchedulerFile::new("127.0.0.1:1", "secret".as_ref());
        assert!(!live.is_gone(), "this process runs");
        let mut child = std::process::Command::new("true").spawn().expect("run `true`");
        let pid = child.id();
        child.wait().expect("wait for `true`");
        let exited = SchedulerFile { pid, ..live.clone() };
        assert_eq!(exited.is_gone(), std::path::Path::new("/proc/self").exists());
        let elsewhere = SchedulerFile { host: format!("{}-elsewhere", exited.host), ..exited };
        assert!(!elsewhere.is_gone(), "nothing is known of a process on another host");
    }
}

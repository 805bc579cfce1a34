//! Which cluster a command runs on: the configuration of a computing
//! command, and the one rule that finds an elastic cluster for every command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;
use tessera::elastic::SchedulerFile;
use tessera::runtime::transport::secret::{self, Secret};
use tessera::{Config, Launch, MemorySettings, WorkerSettings};

use crate::cli::ClusterArgs;

impl ClusterArgs {
    /// What every worker is started with: the same for a cluster this
    /// process starts ([`ClusterArgs::config`]) and for `tessera worker`.
    pub(crate) fn worker_settings(&self) -> WorkerSettings {
        WorkerSettings {
            threads: self.threads,
            bind: self.bind,
            events: !self.no_events,
            transport: self.transport,
            gpus: self.gpus.clone(),
            gpu_math: self.gpu_math,
            memory: MemorySettings {
                limit: self.memory_limit,
                target: self.memory_target,
                pause: self.memory_pause,
                local_directory: self.local_directory.clone(),
                ..MemorySettings::default()
            },
        }
    }

    /// The configuration of a computing command (svd, qr, matmul, demo, bench
    /// overhead, info): a client of the elastic cluster [`ClusterArgs::elastic`]
    /// finds, else a local or MPI cluster.
    pub(crate) fn config(&self) -> anyhow::Result<Config> {
        let mut config = Config::builder()
            .launch(self.launch)
            .scheduler_works(self.scheduler_works)
            .heartbeat_timeout(std::time::Duration::from_secs_f64(self.heartbeat_timeout))
            .worker(self.worker_settings())
            .build();
        config.workers = self.workers;
        config.secret_file = self.secret_file.clone();
        if let Some(found) = self.elastic(Need::IfAny)? {
            if let Found::DefaultFile(path) = &found.from {
                eprintln!(
                    "tessera: running on the elastic cluster at {} (from the scheduler file {}; --launch local runs locally)",
                    found.address,
                    path.display()
                );
            }
            config.scheduler = Some(found.address);
            config.secret_file = Some(found.secret_file);
        }
        Ok(config)
    }

    /// The elastic cluster the flags, the environment or the default scheduler
    /// file name: one rule for every command (stated in `--scheduler`'s help).
    /// `need` says whether the command needs one (an error when none is found)
    /// or runs without (then the default file counts only outside mpirun/srun
    /// and without an explicit --launch).
    pub(crate) fn elastic(&self, need: Need) -> anyhow::Result<Option<Elastic>> {
        let secret = |from_file: PathBuf| self.secret_file.clone().unwrap_or(from_file);
        if let Some(addr) = &self.scheduler {
            return Ok(Some(Elastic {
                address: addr.clone(),
                secret_file: secret(secret::default_path()),
                from: Found::Address,
            }));
        }
        if let Some(path) = &self.scheduler_file {
            let file = SchedulerFile::read(path).context("--scheduler-file (or TESSERA_SCHEDULER_FILE)")?;
            return Ok(Some(Elastic {
                address: file.address,
                secret_file: secret(file.secret_file),
                from: Found::File(path.clone()),
            }));
        }
        let path = SchedulerFile::default_path();
        let skip = need == Need::IfAny
            && (self.launch != Launch::Auto || tessera::runtime::host::launcher::mpi_launch_size().is_some());
        if skip || !path.exists() {
            if need == Need::Required {
                bail!(
                    "no elastic cluster: give --scheduler ADDR or --scheduler-file FILE, or start `tessera scheduler` \
                     (which writes the default scheduler file {})",
                    path.display()
                );
            }
            return Ok(None);
        }
        let file = SchedulerFile::read(&path).with_context(|| {
            format!(
                "the default scheduler file exists; remove {} or give --launch local to run locally",
                path.display()
            )
        })?;
        if file.is_gone() {
            eprintln!(
                "tessera: ignoring the scheduler file {}: its scheduler (pid {} on this host) has exited",
                path.display(),
                file.pid
            );
            if need == Need::Required {
                bail!("no elastic cluster: the scheduler of {} has exited; start `tessera scheduler`", path.display());
            }
            return Ok(None);
        }
        Ok(Some(Elastic {
            address: file.address,
            secret_file: secret(file.secret_file),
            from: Found::DefaultFile(path),
        }))
    }

    /// The scheduler to join and the secret to use, for the commands that need
    /// an elastic cluster (see [`ClusterArgs::elastic`]).
    pub(crate) fn scheduler_address(&self) -> anyhow::Result<(String, PathBuf)> {
        let found = self.elastic(Need::Required)?.expect("required");
        Ok((found.address, found.secret_file))
    }

    /// The scheduler file: `--scheduler-file`, else the default one.
    pub(crate) fn scheduler_file_path(&self) -> PathBuf {
        self.scheduler_file.clone().unwrap_or_else(SchedulerFile::default_path)
    }

    pub(crate) fn tcp_options(&self, secret: Secret) -> tessera::runtime::transport::tcp::TcpOptions {
        let mut tcp = tessera::runtime::transport::tcp::TcpOptions::new(secret);
        tcp.dead_after = Duration::from_secs_f64(self.heartbeat_timeout);
        tcp
    }
}

/// Whether a command needs an elastic cluster or runs without one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    Required,
    IfAny,
}

/// Where [`ClusterArgs::elastic`] found the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// --scheduler ADDR or TESSERA_SCHEDULER.
    Address,
    /// --scheduler-file F or TESSERA_SCHEDULER_FILE.
    File(PathBuf),
    /// The default scheduler file, which exists.
    DefaultFile(PathBuf),
}

/// An elastic cluster to join.
#[derive(Clone, Debug)]
pub(crate) struct Elastic {
    pub(crate) address: String,
    pub(crate) secret_file: PathBuf,
    pub(crate) from: Found,
}

/// The elastic cluster the computing commands would use, for `info`.
pub(crate) fn elastic_json(args: &ClusterArgs) -> serde_json::Value {
    match args.elastic(Need::IfAny) {
        Ok(None) => serde_json::Value::Null,
        Ok(Some(Elastic { address, secret_file, from })) => {
            let from = match from {
                Found::Address => json!({"flag": "--scheduler"}),
                Found::File(f) => json!({"scheduler_file": f}),
                Found::DefaultFile(f) => json!({"default_scheduler_file": f}),
            };
            json!({"address": address, "secret_file": secret_file, "from": from})
        }
        Err(e) => json!({"error": format!("{e:#}")}),
    }
}

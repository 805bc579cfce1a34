//! Batch-system adapters for Tessera: job scripts for Slurm, PBS (PBS Pro /
//! OpenPBS and Torque) and SGE, profiles, and submit/status/wait/cancel/list
//! through the systems' own commands.
//!
//! The model: a [`JobSpec`] says what a job needs (nodes, tasks per node,
//! cores, memory with explicit units, walltime, queue, ...), a [`Payload`]
//! what it runs (one MPI job holding all ranks, or elastic workers), and
//! [`render`] turns both into a script for one [`System`] through a minijinja
//! template, as a pure function. [`connect`] gives the [`BatchSystem`] that
//! submits such a script and follows the job with the real commands; every
//! parser of their output is a pure function tested on captured real output.
//! [`config::Settings`] merges a TOML profile, `TESSERA_JOBQUEUE_*`
//! variables and flags, remembering where each value came from.
//!
//! Elastic clusters: [`scale`] decides how many worker jobs a running
//! `tessera scheduler` should have (from a target, or from its backlog with
//! hysteresis) and which to remove (pending first, then graceful
//! retirement); [`pool`] carries that out on a batch system, keeping the
//! jobs it started in a state file.
//!
//! It knows the runtime only through the `tessera` command line it writes
//! into job scripts, and through [`pool::SchedulerLink`] (backlog, workers,
//! retire), which the `tessera` crate implements over a client.
//!
//! ```
//! use tessera_jobqueue::{render, JobSpec, Launcher, Payload, System, Template};
//!
//! let spec = JobSpec {
//!     nodes: 2,
//!     tasks_per_node: 4,
//!     walltime: Some("00:10:00".parse()?),
//!     memory: Some("8GiB".parse()?),
//!     workdir: "/scratch/me".into(),
//!     log_dir: "/scratch/me/logs".into(),
//!     ..JobSpec::default()
//! };
//! let run = Payload::Mpi {
//!     argv: vec!["tessera".into(), "demo".into()],
//!     launcher: Launcher::Srun { mpi: Some("pmix".into()) },
//! };
//! let script = render(System::Slurm, &spec, &run, &Template::Builtin)?;
//! assert!(script.contains("#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=4\n"));
//! assert!(script.contains("#SBATCH --mem=8192M\n"));
//! assert!(script.contains("\nsrun --mpi=pmix tessera demo\n"));
//! # Ok::<(), tessera_jobqueue::Error>(())
//! ```

mod batch;
pub mod config;
mod error;
mod pbs;
pub mod pool;
mod render;
pub mod scale;
mod sge;
mod slurm;
mod spec;
mod system;

pub use batch::{connect, BatchSystem, Cancelled, JobState, JobStatus, Submitted};
pub use error::{Error, Result};
pub use render::{
    absolute, drain_margin, output_file, render, shell_quote, worker_command, write_script, Launcher, Payload,
    SchedulerRef, Template, WorkerOptions, BUILTIN_TEMPLATE,
};
pub use spec::{JobArray, JobSpec, Memory, Walltime};
pub use system::{find_program, System};

/// The pure parsers of each system's command output, for tools of one's own.
pub mod parse {
    pub use crate::pbs::{
        parse_qstat_f, parse_qstat_json, parse_qsub, parse_torque_qstat_xml, pbs_status, torque_status,
        tracejob_status, TorqueJob, TRACEJOB_DAYS,
    };
    pub use crate::sge::{
        parse_qacct, parse_qstat_table_ids, parse_qstat_xml, parse_qsub_terse, qacct_status, sge_state, QstatJob,
    };
    pub use crate::slurm::{
        parse_sacct, parse_sbatch_parsable, parse_scontrol, slurm_state, status_from_sacct, status_from_scontrol,
    };
}

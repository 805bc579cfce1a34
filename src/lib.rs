//! Tessera: a Rust runtime for HPC clusters.
//!
//! One program runs on every rank (`mpirun`/`srun`), or on an in-process
//! local cluster with no MPI at all. Rank 0 runs the scheduler and your
//! driver code; the other ranks are workers that run kernels on blocks and
//! move blocks between themselves over MPI.
//!
//! Three ways in:
//!
//! * [`run`]: the program is a Tessera job. Under `mpirun` rank 0 runs the
//!   closure and the other ranks serve as workers; otherwise a local cluster
//!   does the work.
//! * `tessera::mpi::run_on` (feature `mpi`): an MPI application hands over a
//!   communicator, Tessera computes on it and returns, MPI stays usable.
//! * [`LocalCluster`]: an explicit in-process cluster, for tests and laptops.
//!
//! ```
//! use tessera::{Graph, Key, Task};
//! let total = tessera::LocalCluster::builder().workers(2).start()?
//!     .client()
//!     .compute(
//!         (0..8).map(|i| Task::new(Key::new("x", [i]), "sum").param(&1.0f64))
//!             .chain([Task::new(Key::new("total", []), "sum").param(&0.0f64)
//!                 .inputs((0..8).map(|i| Key::new("x", [i])))])
//!             .collect(),
//!         &[Key::new("total", [])],
//!     )?;
//! assert_eq!(total[0].to_scalar(), Some(8.0));
//! # Ok::<(), tessera::Error>(())
//! ```

pub use tessera_runtime::{
    builtin, run, Block, BlockHeader, Buffer, Client, ClusterState, Config, ConfigBuilder, DType, Error, Graph,
    IoError, KernelCtx, KernelError, Key, Launch, LocalCluster, LocalClusterBuilder, MemoryLimit, MemorySettings,
    NumericalError, Persisted, Progress, Registry, Result, SchedulerWorks, Task, TaskId, TransportKind, WorkerInfo,
    WorkerSettings, HAS_CUDA, HAS_MPI, HAS_UCX,
};

/// The runtime crate, for what the facade does not re-export.
pub use tessera_runtime as runtime;

pub use tessera_jobqueue as jobqueue;
pub use tessera_linalg as linalg;

/// Running on a communicator the application owns (feature `mpi`).
#[cfg(feature = "mpi")]
pub use tessera_runtime::launch::mpi;

#[cfg(feature = "mpi")]
pub mod spmd;

// The command line's own modules (feature `cli`); public for its tests.
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod bench;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod elastic;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod observe;

/// The README's Rust examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

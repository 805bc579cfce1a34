//! Tessera's runtime: ranks, transports, task graphs, the scheduler and workers.
//!
//! A job is a set of ranks. Rank 0 runs the **scheduler** and the **driver**
//! (the user's code, holding a [`Client`]); the other ranks run **workers**.
//! The driver builds a [`Graph`] of [`Task`]s, each naming a kernel from the
//! [`Registry`] that every rank builds identically, and submits it. The
//! scheduler hands ready tasks to workers, preferring the one that already
//! holds most of a task's input bytes; workers fetch missing inputs directly
//! from their peers, run kernels on their compute threads, keep the output
//! [`Block`]s and report back. Blocks are released as soon as nothing needs
//! them.
//!
//! Ranks talk through a [`transport::Transport`]: threads of one process
//! ([`LocalCluster`], the default), MPI ranks (feature `mpi`), or the
//! processes of an elastic cluster over authenticated TCP ([`launch::elastic`]:
//! a long-lived scheduler that workers join and leave, and drivers connect to).
//!
//! ```
//! use tessera_runtime::{Graph, Key, LocalCluster, Task};
//!
//! let cluster = LocalCluster::builder().workers(2).start()?;
//! let mut g = Graph::new();
//! g.push(Task::new(Key::new("a", []), "sum").param(&2.0f64));
//! g.push(Task::new(Key::new("b", []), "sum").param(&1.0f64).inputs([Key::new("a", [])]));
//! let b = cluster.client().compute(g, &[Key::new("b", [])])?;
//! assert_eq!(b[0].to_scalar(), Some(3.0));
//! # Ok::<(), tessera_runtime::Error>(())
//! ```

mod block;
mod client;
/// The binary codec of frames and parameters. Hidden, not private: the fuzz
/// targets and the facade's tests encode with it; not a stable interface.
#[doc(hidden)]
pub mod codec;
mod error;
/// Entry points of the fuzz targets. Hidden, not private: `fuzz/` calls
/// them; not a stable interface.
#[doc(hidden)]
pub mod fuzzing;
pub mod gpu;
mod graph;
pub mod host;
mod kernel;
pub mod launch;
pub mod observe;
mod panic;
/// The wire types. Hidden, not private: the facade's tests speak the protocol
/// to check the handshake; not a stable interface.
#[doc(hidden)]
pub mod protocol;
pub mod scheduler;
/// How bytes move. Hidden, not private: the command builds TCP options and
/// loads secrets, and the transport tests drive planes directly; what a user
/// needs is re-exported (`launch::elastic::{Secret, TcpOptions}`).
#[doc(hidden)]
pub mod transport;
mod worker;

pub use block::{Block, BlockHeader, Buffer, DType, DeviceCopy, SizeError, WeakBlock, MAX_BLOCK};
pub use client::{Client, Persisted};
pub use codec::CodecError;
pub use error::{report, Error, IoError, KernelError, NumericalError, Result};
pub use graph::{Graph, Key, Params, Task, TaskId};
pub use host::memory::MemoryLimit;
pub use kernel::{builtin, KernelCtx, KernelFn, KernelSet, Registry, KERNEL_SETS};
pub use launch::local::{LocalCluster, LocalClusterBuilder};
pub use launch::{Config, ConfigBuilder, Launch, MemorySettings, SchedulerWorks, TransportKind, WorkerSettings};
pub use observe::events::EventLog;
pub use observe::progress::Progress;
pub use protocol::{ClusterState, WorkerInfo};

#[doc(hidden)]
pub use linkme;
pub use worker::WorkerExit;

/// Runs `driver` on the cluster the environment calls for (see [`Config::run`]).
pub fn run<R, E, F>(driver: F) -> std::result::Result<R, E>
where
    F: FnOnce(&Client) -> std::result::Result<R, E> + Send,
    R: Send,
    E: From<Error> + std::fmt::Display + Send,
{
    Config::default().run(driver)
}

/// Whether this build has the MPI transport.
pub const HAS_MPI: bool = cfg!(feature = "mpi");

/// Whether this build has the UCX transport for blocks.
pub const HAS_UCX: bool = cfg!(feature = "ucx");

/// Whether this build reads the hardware topology and binds threads (hwloc).
pub const HAS_HWLOC: bool = cfg!(feature = "hwloc");

/// Whether this build has GPU workers (feature `cuda`; see [`gpu`]).
pub const HAS_CUDA: bool = cfg!(feature = "cuda");

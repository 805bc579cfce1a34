//! [`Config::run`]: the one entry that picks a launch (local, MPI, or a
//! client of an elastic scheduler) from the configuration and the
//! environment. It sits above the launches so that none of them, nor the
//! configuration they share, depends on another.

use std::fmt::Display;

use super::local::LocalCluster;
use super::{drive, Config, Launch};
use crate::client::Client;
use crate::error::{Error, Result};

impl Config {
    /// Runs `driver` on a cluster chosen by [`Config::launch`].
    ///
    /// Local: starts a [`LocalCluster`], runs `driver`, shuts down, returns.
    /// MPI: initialises MPI; rank 0 runs `driver` and returns its result
    /// after every rank has stopped; **the other ranks never return**: they
    /// serve as workers and exit the process when the driver is done (with
    /// status 0: rank 0 reports a failed driver and exits non-zero, which fails
    /// the job), like dask-mpi's workers.
    ///
    /// With `scheduler` set: connects to that elastic scheduler as a client,
    /// runs `driver`, disconnects (the scheduler and its workers go on).
    ///
    /// A driver that panics stops the cluster first; the panic then goes on.
    pub fn run<R, E, F>(self, driver: F) -> Result<R, E>
    where
        F: FnOnce(&Client) -> Result<R, E> + Send,
        R: Send,
        E: From<Error> + Display + Send,
    {
        if let Some(addr) = &self.scheduler {
            let client = super::elastic::connect(addr, self.tcp_options()?)?;
            client.set_progress(self.progress);
            return drive(&client, driver, |_, _| {});
        }
        match self.resolve_launch()? {
            Launch::Mpi => {
                #[cfg(feature = "mpi")]
                return super::mpi::run_world(self, driver);
                #[cfg(not(feature = "mpi"))]
                unreachable!("resolve_launch refuses MPI without the feature");
            }
            _ => {
                let progress = self.progress;
                let cluster = LocalCluster::start_with(self)?;
                cluster.client().set_progress(progress);
                drive(cluster.client(), driver, |failed, reason| cluster.client().shutdown(failed, reason))
            }
        }
    }
}

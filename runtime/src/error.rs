//! The runtime's error type.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::graph::Key;

/// Everything the runtime can report to a driver or an embedding application.
///
/// Errors cross the wire to remote clients (serde), so each keeps its fields.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// A submitted task names a kernel that no rank registered.
    #[error("task {key} uses kernel `{kernel}`, which is not registered (known: {known})")]
    UnknownKernel { key: Key, kernel: String, known: String },

    /// A submitted task reads a key that is neither in the graph nor held by the cluster.
    #[error("task {key} needs input {input}, which is neither in the graph nor held by the cluster")]
    MissingInput { key: Key, input: Key },

    /// The submitted graph has a cycle; `path` lists it from `key` back to `key`.
    #[error("the graph has a cycle through {key}: {path}")]
    Cycle { key: Key, path: String },

    /// Two tasks of one graph claim the same key.
    #[error("two tasks in the graph produce {key}")]
    DuplicateKey { key: Key },

    /// A task is pinned to a rank that runs no worker.
    #[error("task {key} is pinned to rank {rank}, which runs no worker")]
    NoSuchWorker { key: Key, rank: u32 },

    /// An output asked for is not in the graph.
    #[error("output {key} is not produced by the graph")]
    UnknownOutput { key: Key },

    /// A kernel returned an error or panicked. `key` is the task that failed,
    /// which may be an ancestor of the output that was asked for; `cause` is
    /// its text, and `numerical` the failure itself when it was a numerical
    /// one (no convergence, a NaN or infinity in the input), for a program
    /// that handles those apart from bugs and broken nodes.
    #[error("task {key} (kernel `{kernel}`) failed on rank {rank}: {cause}")]
    TaskFailed { key: Key, kernel: String, rank: u32, cause: String, numerical: Option<Box<NumericalError>> },

    /// The handle was released or its result was lost.
    #[error("no result for {key}: {reason}")]
    Lost { key: Key, reason: String },

    /// A worker rank stopped answering or disappeared.
    #[error("worker rank {rank} was lost: {reason}")]
    WorkerLost { rank: u32, reason: String },

    /// Ranks built different kernel registries (different binaries or registration order).
    #[error(
        "rank {rank} registered different kernels than rank 0 ({detail}); every rank must build the same registry"
    )]
    RegistryMismatch { rank: u32, detail: String },

    /// The driver on rank 0 failed; reported on the other ranks.
    #[error("the driver on rank 0 failed: {reason}")]
    DriverFailed { reason: String },

    /// The driver closure panicked.
    #[error("the driver panicked: {message}")]
    DriverPanicked { message: String },

    /// The cluster was shut down (or its scheduler stopped) before the call.
    #[error("the cluster is shut down")]
    ShutDown,

    /// Something this build was not compiled with was asked for.
    #[error("{what} needs the `{feature}` feature, and this build of tessera was compiled without it (rebuild with `--features {feature}`)")]
    FeatureDisabled {
        /// Not sent over the wire (a scheduler never reports it to a client).
        #[serde(skip)]
        feature: &'static str,
        what: String,
    },

    /// A UCX call failed (feature `ucx`): what was being done, and UCX's reason.
    #[error("UCX: {what}: {status}")]
    Ucx { what: String, status: String },

    /// Invalid configuration (flag or environment variable).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// An MPI-level failure.
    #[error("MPI on rank {rank}: {message}")]
    Mpi { rank: u32, message: String },

    /// A message could not be encoded or decoded.
    #[error("malformed message from rank {rank}: {source}")]
    Codec {
        rank: u32,
        #[source]
        source: crate::codec::CodecError,
    },

    /// A message could not be sent: `what` it carried encodes over the
    /// frame limit (256 MiB), or not at all. The connection stays up.
    #[error("{what} cannot be sent: {source}")]
    Unsendable {
        what: String,
        #[source]
        source: crate::codec::CodecError,
    },

    /// A secret file is missing, unreadable, malformed or too widely
    /// readable; `source`: the I/O error, when one was the cause.
    #[error("secret file {}: {reason}", path.display())]
    SecretFile { path: PathBuf, reason: String, source: Option<IoError> },

    /// A TCP connection could not be made or was refused; `source`: the
    /// I/O error, when one was the cause.
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String, source: Option<IoError> },

    /// The scheduler went away after this process joined it (it was
    /// killed, its host or the link to it failed): `reason` names its
    /// address and what was seen (the connection closed, or no message
    /// within the heartbeat timeout).
    #[error("{reason}")]
    SchedulerLost { reason: String },

    /// The scheduler's own thread ended without being told to (a panic:
    /// a bug), in the process that hosts it.
    #[error("the scheduler stopped unexpectedly: {why}")]
    SchedulerStopped { why: String },

    /// A worker rank that the cluster does not have (or that has left).
    #[error("rank {rank} runs no worker of this cluster")]
    UnknownWorker { rank: u32 },

    /// An output file (report, trace) could not be written; nothing was
    /// left at `path`. `source`: the I/O error, when one was the cause.
    #[error("cannot write {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String, source: Option<IoError> },
}

/// `e` and its sources, joined by `: ` (what `{:#}` prints with anyhow), for
/// a log line or a message that must say everything.
pub fn report(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// An I/O error kept as the source of an [`Error`]: what failed is in the
/// error's text, the operating system's reason in this source (print the
/// chain, `{:#}` with anyhow, to see both). It crosses the wire to a remote
/// client as its OS error code, or its text when it has none, and comes
/// back as an `io::Error` of that code or text.
#[derive(Debug, Clone)]
pub struct IoError(Arc<std::io::Error>);

impl IoError {
    /// The I/O error itself (its `kind()`: `NotFound`, `PermissionDenied`...).
    pub fn io(&self) -> &std::io::Error {
        &self.0
    }
}

impl From<std::io::Error> for IoError {
    fn from(e: std::io::Error) -> IoError {
        IoError(Arc::new(e))
    }
}

impl std::fmt::Display for IoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for IoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl Serialize for IoError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (self.0.raw_os_error(), self.0.to_string()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for IoError {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<IoError, D::Error> {
        let (code, text) = <(Option<i32>, String)>::deserialize(d)?;
        Ok(IoError::from(code.map_or_else(|| std::io::Error::other(text), std::io::Error::from_raw_os_error)))
    }
}

/// `Result` with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a kernel returns when it fails: a message, a numerical failure, or
/// another error kept with its chain of sources.
///
/// Any `std::error::Error` converts into it with `?` (a [`NumericalError`]
/// into [`KernelError::Numerical`], anything else into
/// [`KernelError::Source`]). Its text ([`std::fmt::Display`]: the message, or
/// the error and its sources joined by `: `) is what the worker reports and
/// what [`Error::TaskFailed`] carries as `cause`.
///
/// ```
/// use tessera_runtime::{KernelError, NumericalError};
/// let e: KernelError = NumericalError::NoConvergence { what: "the SVD".into(), detail: "after 30 sweeps".into() }.into();
/// assert!(matches!(e.numerical(), Some(NumericalError::NoConvergence { .. })));
/// assert_eq!(e.to_string(), "the SVD did not converge (after 30 sweeps)");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum KernelError {
    /// A failure described in words ([`KernelError::msg`]).
    Message(String),
    /// The data or the algorithm failed, not the program: no convergence, a
    /// NaN or an infinity in the input.
    Numerical(NumericalError),
    /// Another error, with its sources.
    Source(Box<dyn std::error::Error + Send + Sync>),
}

/// A numerical failure of a kernel.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum NumericalError {
    /// An iterative algorithm (an SVD, an eigensolver) did not converge.
    #[error("{what} did not converge ({detail})")]
    NoConvergence { what: String, detail: String },
    /// The input holds a NaN or an infinity: `value` at index `at` of `what`
    /// (in the whole array), with what needed finite values, if said.
    #[error("{what} contains {value} at {at:?}{}", needs.as_deref().map(|n| format!("; {n}")).unwrap_or_default())]
    NonFinite { what: String, value: f64, at: Vec<usize>, needs: Option<String> },
}

impl KernelError {
    pub fn msg(message: impl Into<String>) -> KernelError {
        KernelError::Message(message.into())
    }

    /// The text the worker reports (the same as `to_string()`).
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The numerical failure, if this is one.
    pub fn numerical(&self) -> Option<&NumericalError> {
        match self {
            KernelError::Numerical(n) => Some(n),
            _ => None,
        }
    }

    /// The error this one wraps, if any (a `KernelError` is not itself a
    /// `std::error::Error`: that would conflict with its `From` for every error).
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            KernelError::Message(_) => None,
            KernelError::Numerical(n) => Some(n),
            KernelError::Source(e) => Some(&**e),
        }
    }
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelError::Message(m) => f.write_str(m),
            KernelError::Numerical(n) => write!(f, "{n}"),
            KernelError::Source(e) => {
                write!(f, "{e}")?;
                let mut source = e.source();
                while let Some(s) = source {
                    write!(f, ": {s}")?;
                    source = s.source();
                }
                Ok(())
            }
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for KernelError {
    fn from(e: E) -> KernelError {
        let e: Box<dyn std::error::Error + Send + Sync> = Box::new(e);
        match e.downcast::<NumericalError>() {
            Ok(n) => KernelError::Numerical(*n),
            Err(e) => KernelError::Source(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_stays_the_source_across_the_wire() {
        let io = std::io::Error::from_raw_os_error(2);
        let text = io.to_string();
        let e = Error::SecretFile { path: "/x".into(), reason: "cannot read it".into(), source: Some(io.into()) };
        let bytes = crate::codec::encode(&e, 1024).unwrap();
        let back: Error = crate::codec::decode(&bytes, 1024).unwrap();
        assert_eq!(back.to_string(), "secret file /x: cannot read it");
        let Error::SecretFile { source: Some(io), .. } = &back else { panic!("{back:?}") };
        assert_eq!(io.io().kind(), std::io::ErrorKind::NotFound);
        assert_eq!(std::error::Error::source(&back).map(|s| s.to_string()), Some(text));
        // Without an OS code, the text travels.
        let e =
            Error::Write { path: "/y".into(), reason: "r".into(), source: Some(std::io::Error::other("odd").into()) };
        let back: Error = crate::codec::decode(&crate::codec::encode(&e, 1024).unwrap(), 1024).unwrap();
        assert_eq!(std::error::Error::source(&back).map(|s| s.to_string()).as_deref(), Some("odd"));
        assert_eq!(report(&back), "cannot write /y: r: odd");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_kernel_error_keeps_its_source_and_says_the_whole_chain() {
        let e: KernelError = Outer(std::io::Error::other("inner")).into();
        assert_eq!(e.to_string(), "outer: inner");
        let source = e.source().expect("a source");
        assert_eq!(source.to_string(), "outer");
        assert_eq!(source.source().map(|s| s.to_string()).as_deref(), Some("inner"));
        assert!(e.numerical().is_none());
        assert!(KernelError::msg("plain").source().is_none());
    }

    #[test]
    fn a_numerical_failure_has_its_own_variant() {
        let nan = NumericalError::NonFinite {
            what: "the input of svd".into(),
            value: f64::NAN,
            at: vec![3, 1],
            needs: Some("the SVD and QR need finite values".into()),
        };
        let e: KernelError = nan.into();
        let Some(NumericalError::NonFinite { value, at, .. }) = e.numerical() else { panic!("{e:?}") };
        assert!(value.is_nan() && at == &[3, 1], "{e:?}");
        assert_eq!(e.to_string(), "the input of svd contains NaN at [3, 1]; the SVD and QR need finite values");
        let inf = NumericalError::NonFinite { what: "x".into(), value: f64::INFINITY, at: vec![0], needs: None };
        assert_eq!(KernelError::from(inf).to_string(), "x contains inf at [0]");
    }
}

//! The linear-algebra crate's error type.

use tessera_runtime::DType;

/// What building, computing or storing a distributed array can report.
///
/// Shape and chunk errors are found while the graph is built, before
/// anything is scheduled; numerical and I/O errors come back from the task
/// that met them, with the block at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinalgError {
    /// Two operands do not fit together (`op` says which operation).
    #[error("{op}: shapes {left:?} and {right:?} do not match{hint}")]
    ShapeMismatch { op: &'static str, left: Vec<usize>, right: Vec<usize>, hint: &'static str },

    /// Two operands have the same shape but different chunks.
    #[error("{op}: chunks {left} and {right} differ; rechunk one operand to the other's chunks first (`rechunk`)")]
    ChunkMismatch { op: &'static str, left: String, right: String },

    /// Chunks that do not add up to the shape, or an empty chunk.
    #[error("invalid chunks {chunks} for shape {shape:?}: {reason}")]
    BadChunks { chunks: String, shape: Vec<usize>, reason: String },

    /// An operation needs an array of another number of dimensions.
    #[error("{op} needs a {expected}-D array, got shape {shape:?}")]
    Dimensions { op: &'static str, expected: usize, shape: Vec<usize> },

    /// An operation that needs one layout of chunks got another.
    #[error("{op}: {reason}")]
    Layout { op: &'static str, reason: String },

    /// A parameter out of its range (`k` larger than the matrix, say).
    #[error("invalid {name}: {reason}")]
    Parameter { name: &'static str, reason: String },

    /// Operands of different element types.
    #[error("{op}: element types {left} and {right} differ")]
    DTypeMismatch { op: &'static str, left: DType, right: DType },

    /// An element type the operation does not handle.
    #[error("{op}: unsupported element type {dtype}")]
    UnsupportedDType { op: &'static str, dtype: DType },

    /// An HDF5 file or dataset could not be read or written.
    #[error("{file}{}: {reason}", dataset.as_deref().map(|d| format!(":{d}")).unwrap_or_default())]
    Hdf5 { file: String, dataset: Option<String>, reason: String },

    /// Something this build was compiled without.
    #[error("{what} needs the `{feature}` feature, and this build was compiled without it (rebuild with `--features {feature}`)")]
    FeatureDisabled { feature: &'static str, what: String },

    /// A block gathered to the driver is not what the array promised (a
    /// kernel bug, or a key reused for something else).
    #[error("block {key} came back as {got}, expected {expected}")]
    BadBlock { key: String, got: String, expected: String },

    /// One rank's part of a distributed input does not fit the others'
    /// (`tessera::spmd`): every rank gets this error, naming the same rank.
    #[error("rank {rank}: {reason}")]
    Part { rank: usize, reason: String },

    /// The runtime failed: a task, a worker, or the cluster.
    #[error(transparent)]
    Runtime(#[from] tessera_runtime::Error),
}

/// `Result` with [`LinalgError`].
pub type Result<T, E = LinalgError> = std::result::Result<T, E>;

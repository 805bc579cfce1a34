//! Distributed arrays and blocked linear algebra on the Tessera runtime.
//!
//! This crate will own `DArray` (shape, chunks, dtype, lazily built graph),
//! its constructors and HDF5 I/O, blocked matmul, TSQR, SVD and randomized
//! SVD with faer kernels. It is empty until that work lands; the runtime it
//! builds on is re-exported here for its users.

pub use tessera_runtime as runtime;

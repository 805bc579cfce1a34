//! Distributed arrays and blocked linear algebra on the Tessera runtime.
//!
//! A [`DArray`] is a 2-D (or 1-D) array cut into blocks ([`Chunks`], regular
//! or not), of f64 or f32, whose blocks are computed by a task graph built
//! lazily as operations are applied. Nothing runs until the array is
//! persisted or gathered; then the graph is optimised ([`fuse`]) and the
//! runtime schedules it over the workers (threads of this process, or MPI
//! ranks), each block computed where its inputs are.
//!
//! | what | how |
//! |---|---|
//! | constructors | seeded [`DArray::random`], `zeros`/`ones`/`full`/`eye`, [`DArray::from_ndarray`], HDF5 (feature `hdf5`) |
//! | arithmetic | elementwise and scalar ops, fused into one task per block ([`expr`]) |
//! | structure | [`DArray::t`], [`DArray::rechunk`], [`DArray::blocks`] |
//! | products | [`DArray::matmul`] with a tree reduction over the contraction axis |
//! | reductions | [`DArray::sum`], [`DArray::mean`], [`DArray::norm`] |
//! | factorisations | [`tsqr`] / [`qr`], [`svd`], [`randomized_svd`] |
//!
//! Local kernels are faer's, run single-threaded inside each worker thread
//! (one level of parallelism). They are part of every
//! `Registry::builtin()` of a program this crate is linked into, so
//! clusters started with default settings know them on every rank.
//!
//! ```
//! use tessera_linalg::{randomized_svd, DArray, RandomizedSvd};
//! use tessera_runtime::LocalCluster;
//!
//! let cluster = LocalCluster::builder().workers(2).registry(tessera_linalg::registry()).start()?;
//! let client = cluster.client();
//! let a = DArray::random_normal(&[2000, 300], &[500, 300], 42)?;
//! let f = randomized_svd(&a, &RandomizedSvd { k: 5, ..RandomizedSvd::new(5) })?;
//! let s = f.s.to_ndarray::<f64>(client)?;
//! assert_eq!(s.len(), 5);
//! # Ok::<(), tessera_linalg::LinalgError>(())
//! ```

mod array;
mod chunks;
mod create;
pub mod dense;
mod element;
mod error;
pub mod expr;
pub mod fuse;
#[cfg(feature = "cuda")]
pub mod gpu;
#[cfg(feature = "hdf5")]
pub mod hdf5;
mod kernels;
mod ops;
mod svd;
mod tsqr;

pub use array::{compute, fresh_name, DArray, Gathered, IntoChunks};
pub use chunks::Chunks;
pub use element::Element;
pub use error::{LinalgError, Result};
pub use kernels::{register_kernels, Distribution};
pub use ops::REDUCE_ARITY;
pub use svd::{randomized_svd, svd, svd_truncated, RandomizedSvd, Svd};
pub use tsqr::{qr, tsqr, Qr, ARITY as TSQR_ARITY};

pub use tessera_runtime as runtime;

/// The crates in this API: faer for local matrices, ndarray at the edge.
pub use {faer, ndarray};

/// Whether this build reads and writes HDF5.
pub const HAS_HDF5: bool = cfg!(feature = "hdf5");

/// The runtime's built-in kernels plus this crate's (what
/// `Registry::builtin()` holds in a program linking this crate).
pub fn registry() -> tessera_runtime::Registry {
    let mut r = tessera_runtime::Registry::builtin();
    register_kernels(&mut r);
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_builtin_registry_has_the_array_kernels() {
        let r = tessera_runtime::Registry::builtin();
        assert!(r.id("linalg.gemm").is_some() && r.id("linalg.qr_leaf").is_some() && r.id("sum").is_some());
        assert_eq!(crate::registry().digest(), r.digest(), "registering twice changes nothing");
    }
}

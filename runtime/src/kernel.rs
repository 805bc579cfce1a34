//! Kernels and the registry that names them.
//!
//! Tasks name their kernel; every rank builds the same [`Registry`] (same
//! binary, same registration order), so no code ever travels, only the
//! kernel's index. Rank 0 checks at start-up that every worker's registry has
//! the same [`Registry::digest`] and refuses to run otherwise.
//!
//! Kernels run on a worker's compute threads with single-threaded semantics:
//! the worker runs as many tasks at once as it has threads, so a kernel must
//! not start a parallel region of its own ([`KernelCtx::threads`] is what it
//! may use, 1 unless the worker runs one task at a time).
//!
//! ```
//! use tessera_runtime::{Block, KernelError, Registry};
//! let mut registry = Registry::builtin();
//! registry.register("scale", |_ctx, factor: f64, inputs: &[Block]| {
//!     let x = inputs[0].as_f64().ok_or_else(|| KernelError::msg("scale needs f64 input"))?;
//!     Ok(Block::new(inputs[0].shape().to_vec(),
//!                   tessera_runtime::Buffer::F64(x.iter().map(|v| v * factor).collect())))
//! });
//! assert!(registry.id("scale").is_some());
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::block::{Block, Buffer};
use crate::error::KernelError;
use crate::graph::Key;
use crate::protocol::decode_params;

/// What a running kernel may know about where it runs.
#[derive(Debug)]
pub struct KernelCtx<'a> {
    /// The task's output key.
    pub key: &'a Key,
    /// Rank of the worker running it.
    pub rank: u32,
    /// Threads the kernel may use itself (1 when the worker runs several tasks at once).
    pub threads: usize,
    /// The worker's GPU, on a GPU worker (see [`crate::gpu`]).
    pub gpu: Option<&'a Arc<crate::gpu::Gpu>>,
}

/// Kernels a crate adds to every [`Registry::builtin`] of a program it is
/// linked into (declared with [`kernel_set!`](crate::kernel_set)), so that
/// clusters started with default settings know them on every rank.
pub struct KernelSet {
    /// Orders the sets; also what the set is called in messages.
    pub name: &'static str,
    pub register: fn(&mut Registry),
}

/// Every [`KernelSet`] linked into this program.
#[linkme::distributed_slice]
pub static KERNEL_SETS: [KernelSet];

/// Declares a [`KernelSet`]: `kernel_set!("linalg", register_kernels);`
/// adds the kernels `register_kernels` registers to every
/// [`Registry::builtin`] of the programs this crate is linked into.
#[macro_export]
macro_rules! kernel_set {
    ($name:literal, $register:path) => {
        #[$crate::linkme::distributed_slice($crate::KERNEL_SETS)]
        #[linkme(crate = $crate::linkme)]
        static TESSERA_KERNEL_SET: $crate::KernelSet = $crate::KernelSet { name: $name, register: $register };
    };
}

/// A kernel on raw parameter bytes.
pub type KernelFn = dyn Fn(&KernelCtx<'_>, &[u8], &[Block]) -> Result<Block, KernelError> + Send + Sync;

/// Kernels by name, in registration order.
#[derive(Clone, Default)]
pub struct Registry {
    names: Vec<Arc<str>>,
    kernels: Vec<Arc<KernelFn>>,
    index: HashMap<Arc<str>, u32>,
    /// Kernels with a GPU implementation (placed on GPU workers).
    gpu: Vec<bool>,
}

impl Registry {
    /// A registry with no kernels at all.
    pub fn empty() -> Registry {
        Registry::default()
    }

    /// The built-in kernels (see [`builtin`] for what each does), then every
    /// [`KernelSet`] linked into this program, in the order of their names.
    /// The same binary builds the same registry on every rank.
    pub fn builtin() -> Registry {
        let mut r = Registry::empty();
        builtin::register_all(&mut r);
        let mut sets: Vec<&KernelSet> = KERNEL_SETS.iter().collect();
        sets.sort_by_key(|s| s.name);
        for set in sets {
            (set.register)(&mut r);
        }
        r
    }

    /// Registers a kernel on raw parameter bytes. Panics if `name` is taken:
    /// two kernels with one name would make graphs ambiguous.
    pub fn register_raw<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(&KernelCtx<'_>, &[u8], &[Block]) -> Result<Block, KernelError> + Send + Sync + 'static,
    {
        assert!(!self.index.contains_key(name), "kernel `{name}` is registered twice");
        let name: Arc<str> = Arc::from(name);
        self.index.insert(Arc::clone(&name), self.names.len() as u32);
        self.names.push(name);
        self.kernels.push(Arc::new(f));
        self.gpu.push(false);
        self
    }

    /// Marks kernel `name` as GPU-capable: it uses [`KernelCtx::gpu`] when
    /// it has one (and runs on the CPU otherwise), so the scheduler places
    /// its tasks on GPU workers whenever the cluster has any. Panics if no
    /// such kernel is registered.
    pub fn mark_gpu(&mut self, name: &str) -> &mut Registry {
        let id = self.id(name).unwrap_or_else(|| panic!("no kernel `{name}` to mark as GPU-capable"));
        self.gpu[id as usize] = true;
        self
    }

    /// Whether kernel `id` is GPU-capable ([`Registry::mark_gpu`]).
    pub fn is_gpu(&self, id: u32) -> bool {
        self.gpu.get(id as usize).copied().unwrap_or(false)
    }

    /// Registers a kernel whose parameters are a `P` encoded by
    /// [`crate::Task::param`].
    pub fn register<P, F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        P: DeserializeOwned,
        F: Fn(&KernelCtx<'_>, P, &[Block]) -> Result<Block, KernelError> + Send + Sync + 'static,
    {
        let kernel = name.to_owned();
        self.register_raw(name, move |ctx, raw, inputs| {
            let p: P = decode_params(raw)
                .map_err(|e| KernelError::msg(format!("bad parameters for kernel `{kernel}`: {e}")))?;
            f(ctx, p, inputs)
        })
    }

    /// The index of a kernel, as tasks carry it on the wire.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    pub fn name(&self, id: u32) -> Option<&Arc<str>> {
        self.names.get(id as usize)
    }

    pub fn get(&self, id: u32) -> Option<&Arc<KernelFn>> {
        self.kernels.get(id as usize)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// A fingerprint of the names in order (FNV-1a), compared across ranks.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for name in &self.names {
            for b in name.bytes().chain([0u8]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names.iter()).finish()
    }
}

/// The kernels every registry starts with. They are small on purpose: they
/// exist for benchmarks, tests and health checks of a cluster.
///
/// | name | parameters | inputs | output |
/// |---|---|---|---|
/// | `noop` | none | any | an empty block |
/// | `sum` | `f64` offset | f64 blocks | scalar: offset + sum of all input elements |
/// | `fill` | `(usize, f64)` length, value | none | f64 vector |
/// | `sleep` | `u64` milliseconds | any | an empty block, after sleeping |
/// | `fail` | `String` message | any | the error `message` |
/// | `panic` | `String` message | any | panics with `message` |
pub mod builtin {
    use super::*;

    pub(super) fn register_all(r: &mut Registry) {
        r.register_raw("noop", |_, _, _| Ok(Block::empty()));
        r.register("sum", |_, offset: f64, inputs: &[Block]| {
            let mut total = offset;
            for (i, b) in inputs.iter().enumerate() {
                let x =
                    b.as_f64().ok_or_else(|| KernelError::msg(format!("sum: input {i} is {}, not f64", b.dtype())))?;
                total += x.iter().sum::<f64>();
            }
            Ok(Block::scalar(total))
        });
        r.register("fill", |_, (len, value): (usize, f64), _: &[Block]| {
            Ok(Block::new(vec![len], Buffer::F64(vec![value; len])))
        });
        r.register("sleep", |_, ms: u64, _: &[Block]| {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(Block::empty())
        });
        r.register("fail", |_, message: String, _: &[Block]| Err(KernelError::msg(message)));
        r.register("panic", |_, message: String, _: &[Block]| -> Result<Block, KernelError> { panic!("{message}") });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_names_and_order() {
        let a = Registry::builtin();
        let mut b = Registry::builtin();
        assert_eq!(a.digest(), b.digest());
        b.register_raw("extra", |_, _, _| Ok(Block::empty()));
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn duplicate_names_are_refused() {
        let mut r = Registry::builtin();
        r.register_raw("sum", |_, _, _| Ok(Block::empty()));
    }
}

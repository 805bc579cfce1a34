//! GPUs: which this host has, which a cluster uses, and the device side of a
//! GPU worker.
//!
//! A cluster started with `--gpus all` (or a list of device numbers, as the
//! driver numbers them after `CUDA_VISIBLE_DEVICES`) runs one **GPU worker**
//! per chosen GPU beside its CPU workers: in a local cluster, extra workers
//! of this process; under MPI, the working ranks of each host share its GPUs
//! out by UUID ([`share_out`]); an elastic worker drives one ([`pick_own`]). A GPU worker owns a [`Gpu`]: the device's context and stream, its
//! cuBLAS and cuSOLVER handles, NVRTC-compiled kernels, and the account of
//! device memory its blocks hold (see [`Gpu::reserve`]).
//!
//! Kernels see their worker's GPU in [`crate::KernelCtx::gpu`]. Those
//! registered as GPU-capable ([`crate::Registry::mark_gpu`]) are placed on
//! GPU workers whenever the cluster has one, and CPU workers do not steal
//! them; everything else runs wherever its data is, GPU workers included.
//!
//! Blocks a GPU kernel makes stay on the device until something reads them
//! on the host (see [`crate::Block`]); blocks it reads from the host are
//! uploaded once and keep their device copy while the device has room.
//!
//! The `cuda` feature loads the CUDA libraries at run time (cudarc's dynamic
//! loading), so it builds anywhere. Before touching the driver this module
//! checks that its library can be loaded at all ([`probe`]): a `cuda` build
//! on a machine without one says "no CUDA driver found" and runs on CPU
//! workers.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
pub use cuda::{DeviceBlock, DeviceData, Gpu, GpuElement};

/// A GPU worker's device. This build has no `cuda` feature, so there is none:
/// [`crate::KernelCtx::gpu`] is always `None`.
#[cfg(not(feature = "cuda"))]
#[derive(Debug)]
pub enum Gpu {}

#[cfg(not(feature = "cuda"))]
impl Gpu {
    /// The device number (never called: no value of this type exists).
    pub fn ordinal(&self) -> usize {
        match *self {}
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        match *self {}
    }
}

/// How GPU workers multiply f32 matrices (`--gpu-math`). f64 products are
/// always exact IEEE arithmetic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuMath {
    /// IEEE f32 (cuBLAS's default math): relative error about 1e-7 per
    /// element-sum, as on the CPU.
    #[default]
    Exact,
    /// f32 products on tensor cores with TF32 inputs (10-bit mantissas):
    /// several times faster, relative error about 1e-3 per product.
    Tf32,
}

impl FromStr for GpuMath {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<GpuMath, String> {
        match s.trim() {
            "exact" => Ok(GpuMath::Exact),
            "tf32" => Ok(GpuMath::Tf32),
            other => Err(format!(
                "`{other}`: expected `exact` (IEEE f32) or `tf32` (tensor cores, about 1e-3 relative error)"
            )),
        }
    }
}

/// What a user gets told when no driver library can be loaded.
pub const NO_DRIVER: &str = "no CUDA driver found";

/// Which GPUs a cluster's workers use (`--gpus`, `TESSERA_GPUS`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GpuSelect {
    /// CPU workers only (the default).
    #[default]
    None,
    /// Every GPU the driver shows this process (none is no error: the
    /// cluster then runs on CPU workers and says so).
    All,
    /// These device numbers (as the driver numbers them, after
    /// `CUDA_VISIBLE_DEVICES`); each must exist.
    List(Vec<usize>),
}

impl FromStr for GpuSelect {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<GpuSelect, String> {
        match s.trim() {
            "all" => Ok(GpuSelect::All),
            "none" | "" => Ok(GpuSelect::None),
            list => {
                let mut ids = Vec::new();
                for part in list.split(',') {
                    let id = part.trim().parse::<usize>().map_err(|_| {
                        format!("`{s}`: expected `all`, `none` or device numbers like `0,1` (`{part}` is not one)")
                    })?;
                    if ids.contains(&id) {
                        return Err(format!("`{s}`: device {id} is named twice"));
                    }
                    ids.push(id);
                }
                Ok(GpuSelect::List(ids))
            }
        }
    }
}

impl fmt::Display for GpuSelect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuSelect::None => f.write_str("none"),
            GpuSelect::All => f.write_str("all"),
            GpuSelect::List(ids) => {
                let ids: Vec<String> = ids.iter().map(usize::to_string).collect();
                f.write_str(&ids.join(","))
            }
        }
    }
}

/// One GPU as the driver describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// Compute capability (9.0 for Hopper).
    pub capability: (i32, i32),
    /// The device's UUID (hex), the same whatever `CUDA_VISIBLE_DEVICES`
    /// numbers it as: how ranks of one host tell their GPUs apart.
    pub uuid: String,
}

/// What this process can see of CUDA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Built without the `cuda` feature.
    NotCompiled,
    /// The driver library (`libcuda`) cannot be loaded.
    NoDriver,
    /// The driver loaded but would not start or describe its devices.
    Failed(String),
    Found {
        /// The CUDA version the driver supports, e.g. (13, 0).
        driver: (i32, i32),
        devices: Vec<DeviceInfo>,
        /// The libraries GPU kernels load (cuBLAS, ...), and whether each loads.
        libraries: Vec<(&'static str, bool)>,
    },
}

impl Probe {
    /// Lines for `tessera info`.
    pub fn describe(&self) -> Vec<String> {
        match self {
            Probe::NotCompiled => vec!["not compiled in (rebuild with `--features cuda`)".into()],
            Probe::NoDriver => vec![NO_DRIVER.into()],
            Probe::Failed(e) => vec![format!("the CUDA driver failed: {e}")],
            Probe::Found { driver, devices, libraries } => {
                let libs: Vec<String> =
                    libraries.iter().map(|(l, ok)| format!("{l} {}", if *ok { "yes" } else { "MISSING" })).collect();
                let mut lines = vec![format!(
                    "CUDA driver {}.{}, {} GPU{}; libraries: {}",
                    driver.0,
                    driver.1,
                    devices.len(),
                    if devices.len() == 1 { "" } else { "s" },
                    libs.join(", ")
                )];
                for d in devices {
                    lines.push(format!(
                        "GPU {}: {} (compute {}.{}), {} memory, {} free",
                        d.ordinal,
                        d.name,
                        d.capability.0,
                        d.capability.1,
                        crate::host::sys::human_bytes(d.total_bytes),
                        crate::host::sys::human_bytes(d.free_bytes)
                    ));
                }
                lines
            }
        }
    }
}

/// Looks for the CUDA driver and its devices without ever panicking:
/// cudarc panics when a library is missing, so the library is tried first.
pub fn probe() -> Probe {
    #[cfg(feature = "cuda")]
    {
        cuda::probe()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Probe::NotCompiled
    }
}

/// The device numbers this process's GPU workers use for `select` (empty
/// for [`GpuSelect::None`], and for [`GpuSelect::All`] on a machine without
/// a driver, with a warning). Errors name the flag and what is wrong: no
/// `cuda` feature, no driver for an explicit list, or a device that does not
/// exist.
pub fn resolve(select: &GpuSelect) -> Result<Vec<usize>> {
    Ok(resolve_devices(select)?.into_iter().map(|d| d.ordinal).collect())
}

/// [`resolve`], with what the driver says of each device.
pub fn resolve_devices(select: &GpuSelect) -> Result<Vec<DeviceInfo>> {
    if *select == GpuSelect::None {
        return Ok(Vec::new());
    }
    let flag = format!("--gpus {select}");
    let devices = match probe() {
        Probe::NotCompiled => {
            return Err(Error::FeatureDisabled { feature: "cuda", what: format!("GPU workers ({flag})") })
        }
        Probe::Found { devices, .. } => devices,
        Probe::NoDriver if *select == GpuSelect::All => {
            tracing::warn!("{flag}: {NO_DRIVER}: running on CPU workers only");
            return Ok(Vec::new());
        }
        Probe::NoDriver => return Err(Error::Config(format!("{flag}: {NO_DRIVER}"))),
        Probe::Failed(e) => return Err(Error::Config(format!("{flag}: the CUDA driver failed: {e}"))),
    };
    match select {
        GpuSelect::None => Ok(Vec::new()),
        GpuSelect::All => {
            if devices.is_empty() {
                tracing::warn!("{flag}: the CUDA driver shows no GPU: running on CPU workers only");
            }
            Ok(devices)
        }
        GpuSelect::List(ids) => {
            for &id in ids {
                if id >= devices.len() {
                    return Err(Error::Config(format!(
                        "{flag}: there is no GPU {id}: this process sees {} (CUDA_VISIBLE_DEVICES={})",
                        devices.len(),
                        std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into())
                    )));
                }
            }
            Ok(ids.iter().map(|&id| devices[id].clone()).collect())
        }
    }
}

/// Shares a host's GPUs out among its working ranks, in rank order: each
/// takes the first device it sees (`(ordinal, uuid)`, as numbered in that
/// rank) that no rank before it took. Ranks that see the same GPUs get one
/// each in turn; ranks a launcher gave one GPU each (`CUDA_VISIBLE_DEVICES`
/// per rank, all numbered 0) each keep theirs. `None`: no GPU left for it.
pub fn share_out(seen: &[Vec<(usize, String)>]) -> Vec<Option<usize>> {
    let mut taken: Vec<&str> = Vec::new();
    seen.iter()
        .map(|devices| {
            let (ordinal, uuid) = devices.iter().find(|(_, uuid)| !taken.contains(&uuid.as_str()))?;
            taken.push(uuid);
            Some(*ordinal)
        })
        .collect()
}

/// The GPU an elastic worker process drives among `ordinals` (those it
/// sees): the only one; else the one of its launcher local rank (`srun`,
/// `mpirun` starting several workers per node), none if there are fewer;
/// else the first.
pub fn pick_own(ordinals: &[usize], local_rank: Option<usize>) -> Option<usize> {
    match (ordinals, local_rank) {
        ([], _) => None,
        ([only], _) => Some(*only),
        (many, Some(r)) => many.get(r).copied(),
        (many, None) => many.first().copied(),
    }
}

/// Opens the GPUs `select` names for this process's GPU workers (see
/// [`resolve`]).
pub fn open(select: &GpuSelect, math: GpuMath) -> Result<Vec<std::sync::Arc<Gpu>>> {
    resolve(select)?.into_iter().map(|o| open_one(o, math)).collect()
}

/// Opens GPU `ordinal` (one [`resolve`] returned) with the default memory limit.
pub fn open_one(ordinal: usize, math: GpuMath) -> Result<std::sync::Arc<Gpu>> {
    #[cfg(feature = "cuda")]
    {
        Gpu::open_with(ordinal, None, math)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = math;
        unreachable!("gpu::resolve names no GPU ({ordinal}) in a build without the `cuda` feature")
    }
}

/// The device memory a GPU worker's blocks may hold, from
/// `TESSERA_GPU_MEMORY` (bytes, or with a unit: `40GiB`, `500MB`; see
/// [`tessera_units`]) or else
/// 90 % of what is free when the worker starts.
pub fn memory_limit(free_bytes: u64) -> Result<u64> {
    match std::env::var("TESSERA_GPU_MEMORY") {
        Ok(v) => crate::host::sys::parse_bytes(&v).map_err(|e| Error::Config(format!("TESSERA_GPU_MEMORY={v}: {e}"))),
        Err(_) => Ok(free_bytes / 10 * 9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_flag_values() {
        assert_eq!("all".parse::<GpuSelect>(), Ok(GpuSelect::All));
        assert_eq!("none".parse::<GpuSelect>(), Ok(GpuSelect::None));
        assert_eq!("0,2".parse::<GpuSelect>(), Ok(GpuSelect::List(vec![0, 2])));
        assert_eq!("1".parse::<GpuSelect>(), Ok(GpuSelect::List(vec![1])));
        let e = "two".parse::<GpuSelect>().unwrap_err();
        assert!(e.contains("`two`") && e.contains("all"), "{e}");
        assert!("0,0".parse::<GpuSelect>().unwrap_err().contains("twice"));
        assert_eq!(GpuSelect::List(vec![0, 3]).to_string(), "0,3");
    }

    #[test]
    fn gpus_are_shared_out_by_uuid() {
        let dev = |o: usize, u: &str| (o, u.to_string());
        // Four ranks seeing the same two GPUs: the first two get one each.
        let same = vec![vec![dev(0, "a"), dev(1, "b")]; 4];
        assert_eq!(share_out(&same), vec![Some(0), Some(1), None, None]);
        // A launcher gave each rank its own GPU, numbered 0 in each.
        let own = vec![vec![dev(0, "a")], vec![dev(0, "b")], vec![dev(0, "c")]];
        assert_eq!(share_out(&own), vec![Some(0), Some(0), Some(0)]);
        // Two ranks given the same single GPU: only the first drives it.
        assert_eq!(share_out(&[vec![dev(0, "a")], vec![dev(0, "a")]]), vec![Some(0), None]);
        // A rank that sees none (or failed to look) takes none.
        assert_eq!(share_out(&[vec![], vec![dev(1, "b")]]), vec![None, Some(1)]);
    }

    #[test]
    fn an_elastic_worker_drives_one_gpu() {
        assert_eq!(pick_own(&[], Some(0)), None);
        assert_eq!(pick_own(&[3], Some(2)), Some(3), "the launcher gave it this one");
        assert_eq!(pick_own(&[0, 1, 2, 3], Some(2)), Some(2));
        assert_eq!(pick_own(&[0, 1], Some(2)), None, "more workers than GPUs on the node");
        assert_eq!(pick_own(&[0, 1], None), Some(0));
    }

    #[test]
    fn gpu_math_values() {
        assert_eq!("tf32".parse::<GpuMath>(), Ok(GpuMath::Tf32));
        assert_eq!("exact".parse::<GpuMath>(), Ok(GpuMath::Exact));
        assert!("bf16".parse::<GpuMath>().unwrap_err().contains("1e-3"));
    }

    #[test]
    fn no_gpus_asked_is_never_an_error() {
        assert_eq!(resolve(&GpuSelect::None).unwrap(), Vec::<usize>::new());
    }

    /// On a machine without a CUDA driver (CI) every way of asking for GPUs
    /// has a defined answer; with one, `all` finds them.
    #[test]
    fn gpus_without_a_driver_or_feature() {
        match probe() {
            Probe::NotCompiled => {
                let e = resolve(&GpuSelect::All).unwrap_err().to_string();
                assert!(e.contains("`cuda` feature") && e.contains("--gpus all"), "{e}");
            }
            Probe::NoDriver => {
                assert_eq!(resolve(&GpuSelect::All).unwrap(), Vec::<usize>::new(), "all: CPU workers only");
                let e = resolve(&GpuSelect::List(vec![0])).unwrap_err().to_string();
                assert!(e.contains("--gpus 0") && e.contains(NO_DRIVER), "{e}");
                assert_eq!(probe().describe(), vec![NO_DRIVER.to_string()]);
            }
            Probe::Failed(e) => panic!("the CUDA driver is there but failed: {e}"),
            Probe::Found { devices, .. } => {
                assert_eq!(resolve(&GpuSelect::All).unwrap().len(), devices.len());
                let e = resolve(&GpuSelect::List(vec![devices.len()])).unwrap_err().to_string();
                assert!(e.contains("there is no GPU"), "{e}");
            }
        }
    }
}

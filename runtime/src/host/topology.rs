//! The host's hardware (packages, NUMA nodes, cores, GPUs) and binding worker
//! threads to its cores.
//!
//! [`detect`] reads the topology with hwloc (feature `hwloc`, through
//! hwlocality) into a [`HostTopology`] that serialises, so a worker can report
//! its host to the scheduler. [`plan`] decides, for one worker, which CPUs
//! each of its compute threads is bound to under a [`Bind`] policy, and
//! [`bind_current_thread`] applies that from the thread itself.
//!
//! The workers that share a host share out its cores: with `local_size`
//! workers of `threads` threads each, the host has `T = local_size * threads`
//! threads for its `n` usable cores, in hwloc's order (package by package).
//!
//! - `T <= n`: worker `i` gets `threads` consecutive cores starting at core
//!   `i * n / local_size`, so workers never share a core and are spread
//!   evenly over the host (two workers on a two-package host get a package
//!   each), while a worker's own threads sit on neighbouring cores.
//! - `T > n` (the wrap): global thread `k = i * threads + j` goes to core
//!   `k * n / T`. Each core then carries `T / n` threads, rounded down or up,
//!   and a worker's threads still sit on neighbouring cores, so consecutive
//!   threads share a core rather than each worker spanning the whole host.
//!
//! "Usable" is what this process may run on: the CPUs the host allows it
//! (cgroups, as hwloc reads them) that its main thread's affinity held when
//! the topology was first read. When that is narrower than what the host
//! allows, a launcher (`mpirun --bind-to`, `srun --cpu-bind`) or `taskset`
//! already confined the process ([`confined`]); [`Bind::Auto`] then leaves
//! the threads alone.
//!
//! hwloc builds the topology once per process (it takes tens of
//! milliseconds); GPUs are looked up once more, with I/O devices, the first
//! time [`detect`] runs, since that can initialise GPU drivers. Without the
//! feature, the functions that need hwloc say so with
//! [`Error::FeatureDisabled`]; those that only ask the kernel or the
//! environment ([`current_affinity`], [`current_cpu`], [`cpu_list`]) work in
//! every build.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::sys::human_bytes;

/// How worker threads are bound to cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bind {
    /// [`Core`](Bind::Core) when several workers share this host
    /// (`local_size > 1`) and no launcher confined the process to a subset
    /// of it ([`confined`]); otherwise [`None`](Bind::None). A lone worker's
    /// threads are left to the kernel's scheduler, and so is a launcher's
    /// binding. Without the `hwloc` feature, always `None`.
    #[default]
    Auto,
    /// Threads are not bound (they keep the process's affinity).
    None,
    /// Each thread is bound to one core: all of its PUs (hyperthreads).
    Core,
    /// Each thread is bound to the whole NUMA node that holds its core.
    Numa,
}

impl Bind {
    /// The flag value: `auto`, `none`, `core` or `numa`.
    pub fn as_str(self) -> &'static str {
        match self {
            Bind::Auto => "auto",
            Bind::None => "none",
            Bind::Core => "core",
            Bind::Numa => "numa",
        }
    }

    /// What this policy stands for for a worker among `local_size` on its
    /// host: [`Auto`](Bind::Auto) becomes `Core` or `None` (see there);
    /// the others stay as they are.
    pub fn resolve(self, local_size: usize) -> Bind {
        match self {
            Bind::Auto => auto(local_size),
            other => other,
        }
    }
}

#[cfg(feature = "hwloc")]
fn auto(local_size: usize) -> Bind {
    match hw::machine() {
        Ok(m) if local_size > 1 && !m.confined => Bind::Core,
        Ok(_) => Bind::None,
        Err(e) => {
            tracing::warn!("--bind auto: leaving threads unbound: {e}");
            Bind::None
        }
    }
}

#[cfg(not(feature = "hwloc"))]
fn auto(_local_size: usize) -> Bind {
    Bind::None
}

impl FromStr for Bind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Bind> {
        match s {
            "auto" => Ok(Bind::Auto),
            "none" => Ok(Bind::None),
            "core" => Ok(Bind::Core),
            "numa" => Ok(Bind::Numa),
            other => Err(Error::Config(format!("--bind `{other}`: expected auto, none, core or numa"))),
        }
    }
}

impl fmt::Display for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host's hardware as hwloc sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostTopology {
    pub host: String,
    pub packages: usize,
    pub numa_nodes: Vec<NumaNode>,
    /// Cores of the whole host, including those this process may not use.
    pub cores: usize,
    /// Processing units (hardware threads) of the whole host.
    pub pus: usize,
    /// The PUs (OS indices) this process may run on.
    pub usable_cpus: Vec<usize>,
    pub gpus: Vec<Gpu>,
    /// The hwloc library's version, e.g. `2.9.0`.
    pub hwloc_version: String,
}

/// A NUMA node: a memory bank and the PUs closest to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNode {
    /// The OS index (`/sys/devices/system/node/node<index>`).
    pub index: usize,
    /// OS indices of its PUs.
    pub cpus: Vec<usize>,
    pub memory_bytes: u64,
}

/// A GPU or other compute accelerator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// The model (`NVIDIA H100 80GB HBM3`), or the PCI name or ids when no
    /// driver backend named it.
    pub name: String,
    /// The backends that expose it (`CUDA`, `OpenCL`, `NVML`, `RSMI`,
    /// `LevelZero`, comma-separated), or `PCI display` when only the PCI bus
    /// shows it.
    pub kind: String,
    /// Device memory, when a backend reports it.
    pub memory_bytes: Option<u64>,
    /// `domain:bus:device.function`, when it sits on a PCI bus hwloc sees.
    pub pci_bus_id: Option<String>,
    /// The PUs closest to it (its locality), empty when unknown.
    pub cpus: Vec<usize>,
}

/// Reads this host's topology (built once per process, then cloned).
///
/// Without the `hwloc` feature: [`Error::FeatureDisabled`].
pub fn detect() -> Result<HostTopology> {
    #[cfg(feature = "hwloc")]
    {
        static HOST: std::sync::OnceLock<HostTopology> = std::sync::OnceLock::new();
        if let Some(h) = HOST.get() {
            return Ok(h.clone());
        }
        let h = hw::host_topology(hw::machine()?);
        Ok(HOST.get_or_init(|| h).clone())
    }
    #[cfg(not(feature = "hwloc"))]
    {
        Err(disabled("reading the hardware topology"))
    }
}

impl HostTopology {
    /// A few lines for people: `host n1: 1 package, 2 NUMA nodes (0: cpus
    /// 0-7, 63.9 GiB; 1: ...), 16 cores, 32 PUs; GPUs: none`, then one line
    /// per GPU.
    pub fn describe(&self) -> String {
        let nodes: Vec<String> = self
            .numa_nodes
            .iter()
            .map(|n| format!("{}: cpus {}, {}", n.index, cpu_list(&n.cpus), human_bytes(n.memory_bytes)))
            .collect();
        let mut s = format!(
            "host {}: {}, {} ({}), {}, {}",
            self.host,
            count(self.packages, "package"),
            count(self.numa_nodes.len(), "NUMA node"),
            nodes.join("; "),
            count(self.cores, "core"),
            count(self.pus, "PU"),
        );
        if self.usable_cpus.len() != self.pus {
            s += &format!(" ({} usable: {})", self.usable_cpus.len(), cpu_list(&self.usable_cpus));
        }
        if self.gpus.is_empty() {
            s += "; GPUs: none";
            return s;
        }
        s += &format!("; GPUs: {}", self.gpus.len());
        for (i, g) in self.gpus.iter().enumerate() {
            let mut facts = vec![g.kind.clone()];
            facts.extend(g.memory_bytes.map(human_bytes));
            facts.extend(g.pci_bus_id.as_ref().map(|b| format!("PCI {b}")));
            if !g.cpus.is_empty() {
                facts.push(format!("near cpus {}", cpu_list(&g.cpus)));
            }
            s += &format!("\n  GPU {i}: {} ({})", g.name, facts.join(", "));
        }
        s
    }
}

/// `1 core`, `2 cores`.
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Which CPUs (OS indices) each of a worker's `threads` threads is bound to:
/// one `Vec` per thread, empty = unbound.
///
/// `local_rank` / `local_size`: this worker's place among the workers that
/// share its host (MPI local rank, see [`super::launcher::local_rank`], or the worker
/// index of a local cluster). The host's cores are shared out among them as
/// the [module docs](self) describe, wrap included. [`Bind::Auto`] is
/// resolved by [`Bind::resolve`]; [`Bind::None`] gives all threads empty.
/// [`Bind::Core`] binds a thread to the usable PUs of its core;
/// [`Bind::Numa`] to the usable PUs of the NUMA node(s) holding its core.
///
/// A process that a launcher confined ([`confined`]) can only use its own
/// CPUs, so `local_rank` / `local_size` should then count only the workers
/// that share those: `(0, 1)` when the launcher gave each rank a set of its
/// own (`srun --cpu-bind=cores`, `mpirun --bind-to core`); with the host-wide
/// counts, later ranks would wrap their threads onto few cores.
///
/// Errors: `local_rank >= local_size` ([`Error::Config`]); `Core` or `Numa`
/// without the `hwloc` feature ([`Error::FeatureDisabled`]).
pub fn plan(bind: Bind, local_rank: usize, local_size: usize, threads: usize) -> Result<Vec<Vec<usize>>> {
    if local_rank >= local_size {
        return Err(Error::Config(format!(
            "local rank {local_rank} among {local_size} workers on the host: the rank must be below the count"
        )));
    }
    match bind.resolve(local_size) {
        Bind::None | Bind::Auto => Ok(vec![Vec::new(); threads]),
        #[cfg(feature = "hwloc")]
        b => Ok(place(&hw::machine()?.cores, b, local_rank, local_size, threads)),
        #[cfg(not(feature = "hwloc"))]
        b => Err(disabled(&format!(
            "binding threads to {} (--bind {b})",
            if b == Bind::Core { "cores" } else { "NUMA nodes" }
        ))),
    }
}

/// Binds the calling thread to `cpus` (OS indices; a no-op when empty).
///
/// Without the `hwloc` feature: [`Error::FeatureDisabled`] unless `cpus` is
/// empty.
pub fn bind_current_thread(cpus: &[usize]) -> Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    #[cfg(feature = "hwloc")]
    {
        hw::bind_current_thread(cpus)
    }
    #[cfg(not(feature = "hwloc"))]
    {
        Err(disabled(&format!("binding a thread to cpus {}", cpu_list(cpus))))
    }
}

/// Whether a launcher (or `taskset`) confined this process to fewer CPUs
/// than the host allows it, as the main thread's affinity said when the
/// topology was first read. Without the `hwloc` feature: `false`.
pub fn confined() -> bool {
    #[cfg(feature = "hwloc")]
    {
        hw::machine().is_ok_and(|m| m.confined)
    }
    #[cfg(not(feature = "hwloc"))]
    {
        false
    }
}

#[cfg(not(feature = "hwloc"))]
fn disabled(what: &str) -> Error {
    Error::FeatureDisabled { feature: "hwloc", what: what.into() }
}

/// The CPUs one core offers a bound thread: its own usable PUs, and those of
/// the NUMA node(s) that hold it.
#[cfg(any(feature = "hwloc", test))]
#[derive(Clone, Debug, PartialEq, Eq)]
struct CoreCpus {
    pus: Vec<usize>,
    numa: Vec<usize>,
}

/// [`plan`] on the usable `cores` (in hwloc's order), `bind` resolved.
#[cfg(any(feature = "hwloc", test))]
fn place(cores: &[CoreCpus], bind: Bind, local_rank: usize, local_size: usize, threads: usize) -> Vec<Vec<usize>> {
    if cores.is_empty() || matches!(bind, Bind::None | Bind::Auto) {
        return vec![Vec::new(); threads];
    }
    core_slots(local_rank, local_size, threads, cores.len())
        .into_iter()
        .map(|c| if bind == Bind::Numa { cores[c].numa.clone() } else { cores[c].pus.clone() })
        .collect()
}

/// The core (index into `n` cores) of each thread of worker `local_rank`;
/// see the module docs.
#[cfg(any(feature = "hwloc", test))]
fn core_slots(local_rank: usize, local_size: usize, threads: usize, n: usize) -> Vec<usize> {
    let total = local_size * threads;
    if total <= n {
        let start = local_rank * n / local_size;
        (start..start + threads).collect()
    } else {
        (local_rank * threads..(local_rank + 1) * threads).map(|k| k * n / total).collect()
    }
}

/// The calling thread's affinity as the kernel reports it (OS indices);
/// empty where it cannot be read (or off Linux).
pub fn current_affinity() -> Vec<usize> {
    affinity_of(0)
}

/// The affinity of thread `tid` (0: the calling thread; the process id: the
/// main thread).
#[cfg(target_os = "linux")]
fn affinity_of(tid: libc::pid_t) -> Vec<usize> {
    const BITS: usize = libc::c_ulong::BITS as usize;
    let mut words = 1024 / BITS;
    loop {
        let mut mask: Vec<libc::c_ulong> = vec![0; words];
        let size = words * std::mem::size_of::<libc::c_ulong>();
        // SAFETY: the buffer is valid for `size` bytes, and the kernel writes
        // at most `size` bytes into it.
        let rc = unsafe { libc::sched_getaffinity(tid, size, mask.as_mut_ptr().cast()) };
        if rc == 0 {
            return (0..words * BITS).filter(|&c| (mask[c / BITS] >> (c % BITS)) & 1 == 1).collect();
        }
        // EINVAL: the kernel's mask is larger than the buffer.
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) || words >= 1 << 16 {
            return Vec::new();
        }
        words *= 2;
    }
}

#[cfg(not(target_os = "linux"))]
fn affinity_of(_tid: i32) -> Vec<usize> {
    Vec::new()
}

/// The CPU (OS index) the calling thread runs on now, if known.
pub fn current_cpu() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Compact list form, as Linux writes CPU lists: `[0, 1, 2, 3, 8]` ->
/// `0-3,8`; `[]` -> `-`. Order and duplicates do not matter.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if j > i { format!("{}-{}", sorted[i], sorted[j]) } else { sorted[i].to_string() });
        i = j + 1;
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

#[cfg(feature = "hwloc")]
mod hw {
    use std::sync::OnceLock;

    use hwlocality::cpu::binding::CpuBindingFlags;
    use hwlocality::cpu::cpuset::CpuSet;
    use hwlocality::object::attributes::ObjectAttributes;
    use hwlocality::object::types::{OSDeviceType, ObjectType};
    use hwlocality::object::TopologyObject;
    use hwlocality::topology::builder::{BuildFlags, TypeFilter};
    use hwlocality::Topology;

    use super::{affinity_of, cpu_list, CoreCpus, Gpu, HostTopology, NumaNode};
    use crate::error::{Error, Result};

    /// This host's CPUs and memory as hwloc sees them (no I/O devices), and
    /// what this process may use of them.
    pub(super) struct Machine {
        topology: Topology,
        /// The usable PUs of each core with a usable PU, in hwloc's order.
        pub cores: Vec<CoreCpus>,
        /// The PUs this process may use: allowed by the host and in the main
        /// thread's affinity when the topology was read.
        pub usable: Vec<usize>,
        /// `usable` is narrower than what the host allows.
        pub confined: bool,
    }

    static MACHINE: OnceLock<std::result::Result<Machine, String>> = OnceLock::new();

    /// The machine, read on first use.
    pub(super) fn machine() -> Result<&'static Machine> {
        MACHINE
            .get_or_init(load)
            .as_ref()
            .map_err(|e| Error::Config(format!("hwloc could not read this host's topology: {e}")))
    }

    fn load() -> std::result::Result<Machine, String> {
        let topology = Topology::builder()
            .with_flags(BuildFlags::INCLUDE_DISALLOWED)
            .map_err(|e| e.to_string())?
            .build()
            .map_err(|e| e.to_string())?;
        let allowed = indices(&topology.allowed_cpuset());
        let affinity = affinity_of(std::process::id() as libc::pid_t);
        let mut usable: Vec<usize> = allowed.iter().copied().filter(|c| affinity.contains(c)).collect();
        if usable.is_empty() {
            usable = allowed.clone(); // affinity unreadable: trust the host
        }
        let keep = |cpus: Vec<usize>| -> Vec<usize> { cpus.into_iter().filter(|c| usable.contains(c)).collect() };
        let nodes: Vec<Vec<usize>> = topology
            .objects_with_type(ObjectType::NUMANode)
            .map(|n| n.cpuset().map_or(Vec::new(), |c| indices(&c)))
            .collect();
        let mut units: Vec<&TopologyObject> = topology.objects_with_type(ObjectType::Core).collect();
        if units.is_empty() {
            units = topology.objects_with_type(ObjectType::PU).collect(); // no core level: each PU is one
        }
        let cores = units
            .into_iter()
            .filter_map(|core| {
                let all = core.cpuset().map_or(Vec::new(), |c| indices(&c));
                let pus = keep(all.clone());
                let numa: Vec<usize> =
                    nodes.iter().filter(|n| n.iter().any(|c| all.contains(c))).flatten().copied().collect();
                let mut numa = keep(numa);
                numa.sort_unstable();
                numa.dedup();
                (!pus.is_empty()).then(|| CoreCpus { numa: if numa.is_empty() { pus.clone() } else { numa }, pus })
            })
            .collect();
        let confined = usable.len() < allowed.len();
        Ok(Machine { topology, cores, usable, confined })
    }

    fn indices(set: &CpuSet) -> Vec<usize> {
        set.iter_set().map(usize::from).collect()
    }

    pub(super) fn bind_current_thread(cpus: &[usize]) -> Result<()> {
        let m = machine()?;
        let mut set = CpuSet::new();
        for &c in cpus {
            let idx = hwlocality::bitmap::BitmapIndex::try_from(c)
                .map_err(|_| Error::Config(format!("cpu {c} is beyond what hwloc can bind to")))?;
            set.set(idx);
        }
        m.topology
            .bind_cpu(&set, CpuBindingFlags::THREAD)
            .map_err(|e| Error::Config(format!("binding a thread to cpus {}: {e}", cpu_list(cpus))))
    }

    pub(super) fn host_topology(m: &Machine) -> HostTopology {
        let t = &m.topology;
        let numa_nodes = t
            .objects_with_type(ObjectType::NUMANode)
            .map(|n| NumaNode {
                index: n.os_index().unwrap_or(n.logical_index()),
                cpus: n.cpuset().map_or(Vec::new(), |c| indices(&c)),
                memory_bytes: n.total_memory(),
            })
            .collect();
        let pus = t.objects_with_type(ObjectType::PU).len();
        let cores = match t.objects_with_type(ObjectType::Core).len() {
            0 => pus,
            n => n,
        };
        let hwloc_version = match t.root_object().info("hwlocVersion") {
            Some(v) => v.to_string_lossy().into_owned(),
            None => {
                let v = hwlocality::hwloc_api_version();
                format!("API {}.{}.{}", v >> 16, (v >> 8) & 0xff, v & 0xff)
            }
        };
        HostTopology {
            host: crate::host::sys::hostname(),
            packages: t.objects_with_type(ObjectType::Package).len(),
            numa_nodes,
            cores,
            pus,
            usable_cpus: m.usable.clone(),
            gpus: gpus(),
            hwloc_version,
        }
    }

    /// PCI vendors whose display controllers are taken for GPUs even when no
    /// backend names them: NVIDIA, AMD, Intel (not the BMC's or a VM's VGA).
    const GPU_VENDORS: [u16; 3] = [0x10de, 0x1002, 0x8086];

    /// The GPUs, from a second topology that includes I/O devices: one per
    /// PCI device that a compute backend exposes or that is a GPU vendor's
    /// display controller or accelerator, plus backend devices off any PCI
    /// bus hwloc sees.
    fn gpus() -> Vec<Gpu> {
        let topology = Topology::builder()
            .with_flags(BuildFlags::INCLUDE_DISALLOWED)
            .map_err(|e| e.to_string())
            .and_then(|b| b.with_io_type_filter(TypeFilter::KeepImportant).map_err(|e| e.to_string()))
            .and_then(|b| b.build().map_err(|e| e.to_string()));
        let topology = match topology {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("hwloc could not list this host's I/O devices; no GPUs are reported: {e}");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for pci in topology.objects_with_type(ObjectType::PCIDevice) {
            let Some(ObjectAttributes::PCIDevice(attr)) = pci.attributes() else { continue };
            let devs: Vec<&TopologyObject> = pci.io_children().filter(|&o| compute_backend(o).is_some()).collect();
            let display = matches!(attr.class_id() >> 8, 0x03 | 0x12) && GPU_VENDORS.contains(&attr.vendor_id());
            if devs.is_empty() && !display {
                continue;
            }
            let pci_name = || {
                let info = |k: &str| pci.info(k).map(|v| v.to_string_lossy().into_owned());
                match (info("PCIVendor"), info("PCIDevice")) {
                    (Some(v), Some(d)) => Some(format!("{v} {d}")),
                    (None, Some(d)) => Some(d),
                    _ => pci.name().map(|n| n.to_string_lossy().into_owned()),
                }
            };
            let name = model(&devs).or_else(pci_name).unwrap_or_else(|| {
                let vendor = match attr.vendor_id() {
                    0x10de => "NVIDIA ",
                    0x1002 => "AMD ",
                    0x8086 => "Intel ",
                    _ => "",
                };
                format!("{vendor}PCI device {:04x}:{:04x}", attr.vendor_id(), attr.device_id())
            });
            let bus =
                format!("{:04x}:{:02x}:{:02x}.{:x}", attr.domain(), attr.bus_id(), attr.bus_device(), attr.function());
            out.push(gpu(name, &devs, Some(bus), pci));
        }
        for dev in topology.objects_with_type(ObjectType::OSDevice) {
            let off_pci = !dev.ancestors().any(|a| a.object_type() == ObjectType::PCIDevice);
            if off_pci && compute_backend(dev).is_some() {
                let name = model(&[dev]).or_else(|| dev.name().map(|n| n.to_string_lossy().into_owned()));
                out.push(gpu(name.unwrap_or_else(|| "unnamed device".into()), &[dev], None, dev));
            }
        }
        out
    }

    fn gpu(name: String, devs: &[&TopologyObject], pci_bus_id: Option<String>, at: &TopologyObject) -> Gpu {
        let mut kinds: Vec<String> = Vec::new();
        for k in devs.iter().filter_map(|&d| compute_backend(d)) {
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        let kind = if kinds.is_empty() { "PCI display".to_owned() } else { kinds.join(", ") };
        // Both backends report kB.
        let memory_bytes = devs
            .iter()
            .flat_map(|d| ["CUDAGlobalMemorySize", "OpenCLGlobalMemorySize"].map(|k| d.info(k)))
            .flatten()
            .filter_map(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .max()
            .map(|kib| kib * 1024);
        let cpus = at.ancestors().find_map(|a| a.cpuset()).map_or(Vec::new(), |c| indices(&c));
        Gpu { name, kind, memory_bytes, pci_bus_id, cpus }
    }

    /// The model a backend reports for any of `devs`.
    fn model(devs: &[&TopologyObject]) -> Option<String> {
        devs.iter().find_map(|d| d.info("GPUModel")).map(|v| v.to_string_lossy().into_owned())
    }

    /// The compute backend an OS device belongs to (`CUDA`, `OpenCL`, `NVML`,
    /// ...), or `None` when it is not a compute device: not a GPU or
    /// co-processor, or only a DRM display node (`card0`, `renderD128`).
    fn compute_backend(dev: &TopologyObject) -> Option<String> {
        let Some(ObjectAttributes::OSDevice(attr)) = dev.attributes() else { return None };
        let name = dev.name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match attr.device_type() {
            OSDeviceType::GPU | OSDeviceType::CoProcessor => {}
            _ => return None,
        }
        if let Some(sub) = dev.subtype() {
            return Some(sub.to_string_lossy().into_owned());
        }
        if ["card", "renderD", "controlD"].iter().any(|p| name.starts_with(p)) {
            return None;
        }
        let backend = name.trim_end_matches(|c: char| c.is_ascii_digit());
        Some(match backend {
            "nvml" => "NVML".to_owned(),
            "rsmi" => "RSMI".to_owned(),
            "" => format!("{:?}", attr.device_type()),
            other => other.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_compact() {
        assert_eq!(cpu_list(&[]), "-");
        assert_eq!(cpu_list(&[5]), "5");
        assert_eq!(cpu_list(&[0, 1]), "0-1");
        assert_eq!(cpu_list(&[0, 1, 2, 3, 8]), "0-3,8");
        assert_eq!(cpu_list(&[8, 3, 2, 2, 1, 10, 11]), "1-3,8,10-11");
    }

    #[test]
    fn bind_parses_its_flag_values_and_names_a_bad_one() {
        for b in [Bind::Auto, Bind::None, Bind::Core, Bind::Numa] {
            assert_eq!(b.to_string().parse::<Bind>().unwrap(), b);
        }
        assert_eq!(Bind::default(), Bind::Auto);
        let err = "sockets".parse::<Bind>().unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        assert!(err.to_string().contains("--bind `sockets`: expected auto, none, core or numa"), "{err}");
        assert!("Core".parse::<Bind>().unwrap_err().to_string().contains("`Core`"));
    }

    #[test]
    fn plan_none_and_lone_auto_leave_threads_unbound() {
        assert_eq!(plan(Bind::None, 1, 2, 3).unwrap(), vec![Vec::<usize>::new(); 3]);
        assert_eq!(plan(Bind::Auto, 0, 1, 4).unwrap(), vec![Vec::<usize>::new(); 4]);
        assert_eq!(Bind::Auto.resolve(1), Bind::None);
        assert_eq!(Bind::Numa.resolve(1), Bind::Numa);
        assert!(plan(Bind::None, 0, 1, 0).unwrap().is_empty());
        let err = plan(Bind::None, 2, 2, 1).unwrap_err();
        assert!(err.to_string().contains("local rank 2 among 2"), "{err}");
    }

    #[test]
    fn workers_that_fit_get_disjoint_cores_spread_over_the_host() {
        // 2 workers x 4 threads on 16 cores: one half each, neighbouring cores.
        assert_eq!(core_slots(0, 2, 4, 16), [0, 1, 2, 3]);
        assert_eq!(core_slots(1, 2, 4, 16), [8, 9, 10, 11]);
        // Exactly full: worker i gets [i*threads, (i+1)*threads).
        for r in 0..4 {
            assert_eq!(core_slots(r, 4, 2, 8), [2 * r, 2 * r + 1]);
        }
        // Any fitting shape: no core twice.
        for n in 1..20 {
            for size in 1..=n {
                for threads in 1..=n / size {
                    let mut all: Vec<usize> = (0..size).flat_map(|r| core_slots(r, size, threads, n)).collect();
                    assert!(all.iter().all(|&c| c < n));
                    all.sort_unstable();
                    all.dedup();
                    assert_eq!(all.len(), size * threads, "n={n} size={size} threads={threads}");
                }
            }
        }
    }

    #[test]
    fn more_threads_than_cores_wrap_evenly_and_keep_a_worker_together() {
        // 2 workers x 16 threads on 16 cores (hyperthreads): 8 cores each, two threads a core.
        assert_eq!(core_slots(0, 2, 16, 16), [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]);
        assert_eq!(core_slots(1, 2, 16, 16)[0], 8);
        assert_eq!(core_slots(0, 1, 3, 2), [0, 0, 1]);
        for n in 1..12 {
            for size in 1..6 {
                for threads in 1..8 {
                    if size * threads <= n {
                        continue;
                    }
                    let mut load = vec![0usize; n];
                    for r in 0..size {
                        let s = core_slots(r, size, threads, n);
                        assert!(s.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1), "{s:?}");
                        s.iter().for_each(|&c| load[c] += 1);
                    }
                    let (lo, hi) = (load.iter().min().unwrap(), load.iter().max().unwrap());
                    assert!(hi - lo <= 1, "n={n} size={size} threads={threads}: {load:?}");
                }
            }
        }
    }

    /// Two packages of 4 cores with 2 PUs each (PU c and c+8), one NUMA node each.
    fn two_packages() -> Vec<CoreCpus> {
        (0..8)
            .map(|c| CoreCpus {
                pus: vec![c, c + 8],
                numa: if c < 4 { vec![0, 1, 2, 3, 8, 9, 10, 11] } else { vec![4, 5, 6, 7, 12, 13, 14, 15] },
            })
            .collect()
    }

    #[test]
    fn place_binds_to_core_pus_or_their_numa_node() {
        let cores = two_packages();
        assert_eq!(place(&cores, Bind::Core, 1, 2, 2), [vec![4, 12], vec![5, 13]]);
        assert_eq!(place(&cores, Bind::Numa, 0, 2, 1), [vec![0, 1, 2, 3, 8, 9, 10, 11]]);
        assert_eq!(place(&cores, Bind::Numa, 1, 2, 1), [vec![4, 5, 6, 7, 12, 13, 14, 15]]);
        assert_eq!(place(&cores, Bind::None, 0, 1, 2), [Vec::<usize>::new(), Vec::new()]);
        assert_eq!(place(&[], Bind::Core, 0, 1, 1), [Vec::<usize>::new()]);
    }

    #[test]
    fn describe_reads_like_the_hardware() {
        let node =
            |index, cpus: std::ops::Range<usize>| NumaNode { index, cpus: cpus.collect(), memory_bytes: 64 << 30 };
        let mut h = HostTopology {
            host: "n1".into(),
            packages: 1,
            numa_nodes: vec![node(0, 0..8), node(1, 8..16)],
            cores: 16,
            pus: 16,
            usable_cpus: (0..16).collect(),
            gpus: Vec::new(),
            hwloc_version: "2.9.0".into(),
        };
        assert_eq!(
            h.describe(),
            "host n1: 1 package, 2 NUMA nodes (0: cpus 0-7, 64.0 GiB; 1: cpus 8-15, 64.0 GiB), 16 cores, 16 PUs; GPUs: none"
        );
        h.usable_cpus = vec![0, 1];
        h.gpus.push(Gpu {
            name: "NVIDIA H100".into(),
            kind: "CUDA, OpenCL".into(),
            memory_bytes: Some(80 << 30),
            pci_bus_id: Some("0000:19:00.0".into()),
            cpus: (0..8).collect(),
        });
        let d = h.describe();
        assert!(d.contains(", 16 PUs (2 usable: 0-1); GPUs: 1\n"), "{d}");
        assert!(d.ends_with("\n  GPU 0: NVIDIA H100 (CUDA, OpenCL, 80.0 GiB, PCI 0000:19:00.0, near cpus 0-7)"), "{d}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernel_reports_where_a_thread_may_run() {
        let affinity = current_affinity();
        assert!(!affinity.is_empty());
        assert!(affinity.len() <= crate::host::sys::host_cores(), "{affinity:?}");
        let cpu = current_cpu().expect("sched_getcpu");
        // The thread may migrate between the two calls, but only within its affinity.
        assert!(current_affinity().contains(&cpu), "cpu {cpu} not in {affinity:?}");
    }

    #[cfg(not(feature = "hwloc"))]
    #[test]
    fn without_hwloc_binding_and_detection_say_which_feature_they_need() {
        let is_disabled = |e: Error, what: &str| match e {
            Error::FeatureDisabled { feature, what: w } => feature == "hwloc" && w.contains(what),
            _ => false,
        };
        assert!(is_disabled(detect().unwrap_err(), "reading the hardware topology"));
        assert!(is_disabled(plan(Bind::Core, 0, 2, 1).unwrap_err(), "binding threads to cores (--bind core)"));
        assert!(is_disabled(plan(Bind::Numa, 0, 2, 1).unwrap_err(), "(--bind numa)"));
        assert!(is_disabled(bind_current_thread(&[0]).unwrap_err(), "cpus 0"));
        bind_current_thread(&[]).unwrap();
        // Auto is unbound even when several workers share the host.
        assert_eq!(Bind::Auto.resolve(4), Bind::None);
        assert_eq!(plan(Bind::Auto, 1, 4, 2).unwrap(), vec![Vec::<usize>::new(); 2]);
        assert!(!confined());
    }

    #[cfg(feature = "hwloc")]
    mod hwloc {
        use super::super::*;

        fn usable_cores() -> usize {
            hw::machine().unwrap().cores.len()
        }

        #[test]
        fn detect_counts_this_host() {
            let h = detect().unwrap();
            assert!(h.cores >= 1 && h.pus >= h.cores && h.packages >= 1, "{h:?}");
            assert!(h.numa_nodes.iter().map(|n| n.memory_bytes).sum::<u64>() > 0, "{h:?}");
            // Every PU lies in some NUMA node (a node may have no PUs, or share them).
            let mut numa_cpus: Vec<usize> = h.numa_nodes.iter().flat_map(|n| n.cpus.clone()).collect();
            numa_cpus.sort_unstable();
            numa_cpus.dedup();
            assert_eq!(numa_cpus.len(), h.pus, "{h:?}");
            assert!(!h.usable_cpus.is_empty() && h.usable_cpus.len() <= h.pus);
            assert!(h.hwloc_version.starts_with('2'), "{}", h.hwloc_version);
            assert!(h.describe().starts_with(&format!("host {}: ", h.host)));
            assert_eq!(detect().unwrap(), h, "read once, then the same");
        }

        #[test]
        fn two_workers_get_disjoint_cores() {
            let mut plans: Vec<Vec<usize>> = (0..2).flat_map(|r| plan(Bind::Core, r, 2, 1).unwrap()).collect();
            let usable = hw::machine().unwrap().usable.clone();
            assert!(plans.iter().all(|p| !p.is_empty() && p.iter().all(|c| usable.contains(c))), "{plans:?}");
            if usable_cores() >= 2 {
                assert!(plans[0].iter().all(|c| !plans[1].contains(c)), "{plans:?}");
            } else {
                assert_eq!(plans[0], plans[1], "one core: both wrap onto it");
            }
            // Auto is Core here, as long as nothing confined the test process.
            if !confined() {
                assert_eq!(Bind::Auto.resolve(2), Bind::Core);
                assert_eq!(plan(Bind::Auto, 1, 2, 1).unwrap(), vec![plans.pop().unwrap()]);
            }
        }

        #[test]
        fn more_threads_than_cores_share_cores_evenly() {
            let n = usable_cores();
            let threads = plan(Bind::Core, 0, 1, n + 1).unwrap();
            assert_eq!(threads.len(), n + 1);
            assert_eq!(threads[0], threads[1], "the first core takes the extra thread");
            let mut distinct = threads.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), n, "every core is used");
            let numa = plan(Bind::Numa, 0, 1, 1).unwrap();
            assert!(threads[0].iter().all(|c| numa[0].contains(c)), "a core lies in its NUMA node");
        }

        #[test]
        fn a_bound_thread_reads_its_binding_back() {
            let m = hw::machine().unwrap();
            let last = m.cores.last().unwrap().pus.clone();
            let first = m.cores[0].pus.clone();
            let (bound, cpu, rebound) = std::thread::spawn(move || {
                bind_current_thread(&[]).unwrap();
                bind_current_thread(&last).unwrap();
                let bound = current_affinity();
                let cpu = current_cpu();
                bind_current_thread(&first).unwrap();
                (bound, cpu, current_affinity())
            })
            .join()
            .unwrap();
            assert_eq!(bound, m.cores.last().unwrap().pus);
            assert!(cpu.is_some_and(|c| bound.contains(&c)), "{cpu:?} not in {bound:?}");
            assert_eq!(rebound, m.cores[0].pus);
            assert!(current_affinity().len() >= bound.len(), "the test thread itself stays unbound");
        }

        #[test]
        fn binding_to_a_cpu_that_is_not_there_fails() {
            let err = std::thread::spawn(|| bind_current_thread(&[1 << 20])).join().unwrap().unwrap_err();
            assert!(err.to_string().contains("binding a thread to cpus 1048576"), "{err}");
        }
    }
}

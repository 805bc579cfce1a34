//! The CUDA side of [`super`] (feature `cuda`): the driver probe and a GPU
//! worker's device ([`Gpu`]), with the device copies of blocks
//! ([`DeviceBlock`]) and the account of the memory they hold.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::cusolver::DnHandle;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, DriverError, ValidAsZeroBits};
use parking_lot::Mutex;

use super::{DeviceInfo, GpuMath, Probe};
use crate::block::{Block, Buffer, DType, DeviceCopy, WeakBlock};
use crate::error::KernelError;

pub(super) fn probe() -> Probe {
    // SAFETY: only tries to open the driver library; no symbol is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Probe::NoDriver;
    }
    describe().unwrap_or_else(|e| Probe::Failed(e.to_string()))
}

fn describe() -> Result<Probe, DriverError> {
    cudarc::driver::result::init()?;
    let mut version = 0;
    // SAFETY: the driver is loaded and initialised; the pointer is valid.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }.result()?;
    let count = CudaContext::device_count()?;
    let devices = (0..count as usize)
        .map(|ordinal| {
            let ctx = CudaContext::new(ordinal)?;
            let (free, total) = ctx.mem_get_info()?;
            let uuid = ctx.uuid()?.bytes.iter().map(|b| format!("{:02x}", *b as u8)).collect();
            Ok(DeviceInfo {
                ordinal,
                uuid,
                name: ctx.name()?,
                total_bytes: total as u64,
                free_bytes: free as u64,
                capability: ctx.compute_capability()?,
            })
        })
        .collect::<Result<Vec<_>, DriverError>>()?;
    // SAFETY: each only tries to open its library.
    let libraries = unsafe {
        vec![
            ("cuBLAS", cudarc::cublas::sys::is_culib_present()),
            ("cuSOLVER", cudarc::cusolver::sys::is_culib_present()),
            ("cuRAND", cudarc::curand::sys::is_culib_present()),
            ("NVRTC", cudarc::nvrtc::sys::is_culib_present()),
        ]
    };
    Ok(Probe::Found { driver: (version / 1000, version % 1000 / 10), devices, libraries })
}

/// Element types GPU kernels work on (f64 and f32).
pub trait GpuElement: DeviceRepr + ValidAsZeroBits + Copy + Send + Sync + 'static {
    const DTYPE: DType;
    fn host(buffer: &Buffer) -> Option<&[Self]>;
    fn wrap(slice: CudaSlice<Self>) -> DeviceData;
    fn device(data: &DeviceData) -> Option<&CudaSlice<Self>>;
}

macro_rules! gpu_element {
    ($t:ty, $variant:ident) => {
        impl GpuElement for $t {
            const DTYPE: DType = DType::$variant;
            fn host(buffer: &Buffer) -> Option<&[$t]> {
                match buffer {
                    Buffer::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(slice: CudaSlice<$t>) -> DeviceData {
                DeviceData::$variant(slice)
            }
            fn device(data: &DeviceData) -> Option<&CudaSlice<$t>> {
                match data {
                    DeviceData::$variant(s) => Some(s),
                    _ => None,
                }
            }
        }
    };
}
gpu_element!(f64, F64);
gpu_element!(f32, F32);

/// Elements in device memory.
pub enum DeviceData {
    F64(CudaSlice<f64>),
    F32(CudaSlice<f32>),
}

impl DeviceData {
    fn nbytes(&self) -> usize {
        match self {
            DeviceData::F64(s) => s.num_bytes(),
            DeviceData::F32(s) => s.num_bytes(),
        }
    }
}

/// A block's elements on one GPU. Its memory is counted in that GPU's
/// account from when it is made until it is dropped.
pub struct DeviceBlock {
    data: DeviceData,
    ordinal: usize,
    stream: Arc<CudaStream>,
    used: Arc<AtomicU64>,
}

impl DeviceBlock {
    pub fn data(&self) -> &DeviceData {
        &self.data
    }

    /// The elements as a `T` slice, if they are `T`s.
    pub fn slice<T: GpuElement>(&self) -> Option<&CudaSlice<T>> {
        T::device(&self.data)
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Copies `len` elements from `start` to the host (part of a block, as
    /// when only the small R of a packed QR factor is needed).
    pub fn range_to_host<T: GpuElement>(&self, start: usize, len: usize) -> Result<Vec<T>, String> {
        let slice = self.slice::<T>().ok_or_else(|| format!("GPU {}: the block is not {}", self.ordinal, T::DTYPE))?;
        let part = slice.try_slice(start..start + len).ok_or_else(|| {
            format!("GPU {}: elements {start}..{} of a block of {}", self.ordinal, start + len, slice.len())
        })?;
        let v = self.stream.clone_dtoh(&part).map_err(|e| e.to_string())?;
        self.stream.synchronize().map_err(|e| e.to_string())?;
        Ok(v)
    }
}

impl Drop for DeviceBlock {
    fn drop(&mut self) {
        self.used.fetch_sub(self.data.nbytes() as u64, Ordering::Relaxed);
    }
}

impl DeviceCopy for DeviceBlock {
    fn to_host(&self) -> Result<Buffer, String> {
        let copy = match &self.data {
            DeviceData::F64(s) => self.stream.clone_dtoh(s).map(Buffer::F64),
            DeviceData::F32(s) => self.stream.clone_dtoh(s).map(Buffer::F32),
        };
        let buffer = copy.map_err(|e| e.to_string())?;
        self.stream.synchronize().map_err(|e| e.to_string())?;
        Ok(buffer)
    }

    fn nbytes(&self) -> usize {
        self.data.nbytes()
    }

    fn device(&self) -> String {
        format!("GPU {}", self.ordinal)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The math libraries' handles, made when a kernel first needs each (a
/// worker that only multiplies never loads cuSOLVER).
#[derive(Default)]
struct Libs {
    blas: Option<CudaBlas>,
    solver: Option<DnHandle>,
}

/// A GPU worker's device: context, stream, library handles, compiled
/// kernels, and the account of device memory its blocks hold.
///
/// Every kernel of the worker runs on the one stream, so work on the device
/// is ordered as the worker's tasks are; kernels take the library handles
/// through [`Gpu::blas`] and [`Gpu::solver`], which serialise their use.
pub struct Gpu {
    ordinal: usize,
    name: String,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    libs: Mutex<Libs>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    /// How cuBLAS multiplies f32 (set on its handle when made).
    math: GpuMath,
    /// Device bytes held by this GPU's [`DeviceBlock`]s.
    used: Arc<AtomicU64>,
    limit: u64,
    /// Blocks with a device copy here, oldest first (what eviction walks).
    resident: Mutex<VecDeque<WeakBlock>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GPU {} ({}, {} of {} held)", self.ordinal, self.name, self.used_bytes(), self.limit)
    }
}

impl Gpu {
    /// Opens device `ordinal` with its own stream; blocks may hold up to
    /// `limit` bytes of its memory (default: [`super::memory_limit`]).
    pub fn open(ordinal: usize, limit: Option<u64>) -> crate::Result<Arc<Gpu>> {
        Gpu::open_with(ordinal, limit, GpuMath::Exact)
    }

    /// [`Gpu::open`], multiplying f32 matrices as `math` says.
    pub fn open_with(ordinal: usize, limit: Option<u64>, math: GpuMath) -> crate::Result<Arc<Gpu>> {
        let fail = |what: &str, e: &dyn std::fmt::Display| crate::Error::Config(format!("GPU {ordinal}: {what}: {e}"));
        // SAFETY: only tries to open the driver library (cudarc panics on
        // its first call without it).
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(crate::Error::Config(format!("GPU {ordinal}: {}", super::NO_DRIVER)));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| fail("opening the device", &e))?;
        let stream = ctx.new_stream().map_err(|e| fail("making a stream", &e))?;
        let name = ctx.name().map_err(|e| fail("reading its name", &e))?;
        let limit = match limit {
            Some(l) => l,
            None => {
                let (free, _) = ctx.mem_get_info().map_err(|e| fail("reading its free memory", &e))?;
                super::memory_limit(free as u64)?
            }
        };
        tracing::info!(gpu = ordinal, %name, limit = %crate::host::sys::human_bytes(limit), "GPU opened");
        Ok(Arc::new(Gpu {
            ordinal,
            name,
            ctx,
            stream,
            libs: Mutex::default(),
            functions: Mutex::default(),
            math,
            used: Arc::default(),
            limit,
            resident: Mutex::default(),
        }))
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Device bytes the blocks held here occupy now.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit
    }

    /// An error about this GPU, for a kernel to return.
    pub fn error(&self, what: &str, e: impl std::fmt::Display) -> KernelError {
        KernelError::msg(format!("GPU {}: {what}: {e}", self.ordinal))
    }

    /// Makes room for `bytes` more within the limit: drops the device
    /// copies of the oldest resident blocks (copying to the host first those
    /// that are only here) until they fit. An error names the GPU and the
    /// sizes when even an empty device could not hold them.
    pub fn reserve(&self, bytes: u64) -> Result<(), KernelError> {
        if bytes > self.limit {
            return Err(KernelError::msg(format!(
                "GPU {}: a block of {} does not fit in the {} its blocks may use (TESSERA_GPU_MEMORY)",
                self.ordinal,
                crate::host::sys::human_bytes(bytes),
                crate::host::sys::human_bytes(self.limit)
            )));
        }
        let mut resident = self.resident.lock();
        while self.used_bytes() + bytes > self.limit {
            let Some(weak) = resident.pop_front() else { break };
            let Some(block) = weak.upgrade() else { continue };
            if self.holds(&block) {
                let freed = block.evict_device_copy().map_err(KernelError::msg)?;
                tracing::debug!(gpu = self.ordinal, bytes = freed, "block's device copy dropped");
            }
        }
        if self.used_bytes() + bytes > self.limit {
            // What is left is held by blocks being used right now.
            return Err(KernelError::msg(format!(
                "GPU {}: out of memory for its blocks: {} needed, {} of {} in use by blocks in use",
                self.ordinal,
                crate::host::sys::human_bytes(bytes),
                crate::host::sys::human_bytes(self.used_bytes()),
                crate::host::sys::human_bytes(self.limit)
            )));
        }
        Ok(())
    }

    /// Whether `block`'s device copy is on this GPU.
    fn holds(&self, block: &Block) -> bool {
        block.device_copy().is_some_and(|c| self.owns(&*c))
    }

    /// Whether `copy` is in this GPU's memory.
    fn owns(&self, copy: &dyn DeviceCopy) -> bool {
        copy.as_any().downcast_ref::<DeviceBlock>().is_some_and(|d| d.ordinal == self.ordinal)
    }

    /// `len` zeroed elements of device memory, within the limit.
    pub fn alloc<T: GpuElement>(&self, len: usize) -> Result<CudaSlice<T>, KernelError> {
        self.reserve((len * std::mem::size_of::<T>()) as u64)?;
        self.stream.alloc_zeros::<T>(len).map_err(|e| self.error("allocating device memory", e))
    }

    /// The device copy of `block`'s elements on this GPU, uploading them if
    /// the block has none here (the copy is kept on the block for later
    /// kernels, and counted here).
    pub fn input<T: GpuElement>(&self, block: &Block) -> Result<Arc<dyn DeviceCopy>, KernelError> {
        if let Some(copy) = block.device_copy().filter(|c| self.owns(&**c)) {
            return Ok(copy);
        }
        let host = T::host(block.buffer())
            .ok_or_else(|| KernelError::msg(format!("GPU input is {}, expected {}", block.dtype(), T::DTYPE)))?;
        self.reserve(std::mem::size_of_val(host) as u64)?;
        let slice = self.stream.clone_htod(host).map_err(|e| self.error("copying a block to the device", e))?;
        let copy: Arc<dyn DeviceCopy> = Arc::new(self.account(T::wrap(slice)));
        block.set_device_copy(Arc::clone(&copy));
        self.remember(block);
        Ok(copy)
    }

    /// A block of `shape` whose elements are `data` on this device (a
    /// kernel's output, in memory from [`Gpu::alloc`]); it stays here until
    /// read on the host. Waits for the stream first, so that a task is done
    /// when its result is (its duration is the device's, and a device error
    /// fails the task that caused it).
    pub fn output(&self, shape: Vec<usize>, data: DeviceData) -> Result<Block, KernelError> {
        let dtype = match data {
            DeviceData::F64(_) => DType::F64,
            DeviceData::F32(_) => DType::F32,
        };
        let data = self.account(data);
        self.synchronize()?;
        let block = Block::from_device(shape, dtype, Arc::new(data));
        self.remember(&block);
        Ok(block)
    }

    /// Adds `block` to the resident list. Eviction only skips the blocks
    /// released since, so the list is swept of them whenever its length
    /// reaches a power of two from 1024 on: it holds at most about twice the
    /// blocks alive (or 1024 entries), at O(1) amortised per block.
    fn remember(&self, block: &Block) {
        let mut resident = self.resident.lock();
        resident.push_back(block.downgrade());
        if resident.len() >= 1024 && resident.len().is_power_of_two() {
            resident.retain(WeakBlock::alive);
        }
    }

    fn account(&self, data: DeviceData) -> DeviceBlock {
        self.used.fetch_add(data.nbytes() as u64, Ordering::Relaxed);
        DeviceBlock { data, ordinal: self.ordinal, stream: Arc::clone(&self.stream), used: Arc::clone(&self.used) }
    }

    /// Runs `f` with this GPU's cuBLAS handle (made on first use, bound to
    /// the worker's stream).
    pub fn blas<R>(&self, f: impl FnOnce(&CudaBlas) -> Result<R, KernelError>) -> Result<R, KernelError> {
        let mut libs = self.libs.lock();
        let blas = match &mut libs.blas {
            Some(blas) => blas,
            slot => {
                // SAFETY: only tries to open the library.
                if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                    return Err(self.error("cuBLAS", "the library (libcublas) cannot be loaded"));
                }
                let blas = CudaBlas::new(Arc::clone(&self.stream)).map_err(|e| self.error("starting cuBLAS", e))?;
                if self.math == GpuMath::Tf32 {
                    use cudarc::cublas::sys::{cublasMath_t, cublasSetMathMode};
                    // SAFETY: the handle is live; the mode is one cuBLAS defines.
                    unsafe { cublasSetMathMode(*blas.handle(), cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH) }
                        .result()
                        .map_err(|e| self.error("setting TF32 math", e))?;
                }
                slot.insert(blas)
            }
        };
        f(blas)
    }

    /// Runs `f` with this GPU's cuSOLVER dense handle (made on first use).
    pub fn solver<R>(&self, f: impl FnOnce(&DnHandle) -> Result<R, KernelError>) -> Result<R, KernelError> {
        let mut libs = self.libs.lock();
        let solver = match &mut libs.solver {
            Some(solver) => solver,
            slot => {
                // SAFETY: only tries to open the library.
                if !unsafe { cudarc::cusolver::sys::is_culib_present() } {
                    return Err(self.error("cuSOLVER", "the library (libcusolver) cannot be loaded"));
                }
                slot.insert(DnHandle::new(Arc::clone(&self.stream)).map_err(|e| self.error("starting cuSOLVER", e))?)
            }
        };
        f(solver)
    }

    /// The kernel `name` of the CUDA C `source`, compiled with NVRTC for this
    /// device the first time it is asked for. Compiled without fused
    /// multiply-add, so a kernel that ports CPU arithmetic (as the random
    /// generator does) rounds as the CPU does.
    pub fn function(&self, name: &str, source: &str) -> Result<CudaFunction, KernelError> {
        let mut functions = self.functions.lock();
        if let Some(f) = functions.get(name) {
            return Ok(f.clone());
        }
        // SAFETY: only tries to open the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(self.error("NVRTC", "the library (libnvrtc) cannot be loaded"));
        }
        let options = cudarc::nvrtc::CompileOptions { fmad: Some(false), ..Default::default() };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(source, options)
            .map_err(|e| self.error(&format!("compiling `{name}`"), e))?;
        let module = self.ctx.load_module(ptx).map_err(|e| self.error(&format!("loading `{name}`"), e))?;
        let f = module.load_function(name).map_err(|e| self.error(&format!("loading `{name}`"), e))?;
        functions.insert(name.to_owned(), f.clone());
        Ok(f)
    }

    /// Waits for everything queued on the worker's stream.
    pub fn synchronize(&self) -> Result<(), KernelError> {
        self.stream.synchronize().map_err(|e| self.error("synchronising", e))
    }
}

//! GPU implementations of the array kernels (feature `cuda`).
//!
//! A kernel marked GPU-capable ([`mark_kernels`]) runs here when its worker
//! has a GPU ([`tessera_runtime::KernelCtx::gpu`]) and its blocks are f64 or
//! f32; otherwise it runs its CPU implementation. Inputs are uploaded once
//! (the block keeps its device copy); outputs stay on the device until a CPU
//! kernel or another rank reads them.
//!
//! | kernel | on the GPU |
//! |---|---|
//! | `linalg.gemm` | cuBLAS `dgemm` / `sgemm` |
//! | `linalg.random` | an NVRTC-compiled kernel computing exactly what the CPU kernel does (the same SplitMix64 counters), so an array is the same whichever worker makes each block |
//! | `linalg.qr_explicit` | cuSOLVER `geqrf` + `orgqr` (explicit Q and R, for TSQR leaves on GPU workers) |

use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use tessera_runtime::gpu::{DeviceBlock, Gpu, GpuElement};
use tessera_runtime::{Block, DeviceCopy, KernelError, Registry};

use crate::kernels::{Distribution, GemmParams, RandomParams};

/// Marks the kernels this module implements as GPU-capable.
pub(crate) fn mark_kernels(registry: &mut Registry) {
    registry.mark_gpu("linalg.gemm").mark_gpu("linalg.random");
}

/// A block's device copy on `gpu` as a slice of `T`, uploading it if needed.
/// The returned handle keeps the copy alive while the kernel uses it.
fn device_input<T: GpuElement>(gpu: &Gpu, block: &Block) -> Result<Arc<dyn DeviceCopy>, KernelError> {
    gpu.input::<T>(block)
}

fn slice_of<'a, T: GpuElement>(gpu: &Gpu, copy: &'a Arc<dyn DeviceCopy>) -> Result<&'a CudaSlice<T>, KernelError> {
    copy.as_any()
        .downcast_ref::<DeviceBlock>()
        .and_then(DeviceBlock::slice::<T>)
        .ok_or_else(|| gpu.error("device input", "not a block of this GPU's element type"))
}

fn dim(gpu: &Gpu, n: usize) -> Result<i32, KernelError> {
    i32::try_from(n).map_err(|_| gpu.error("cuBLAS", format!("dimension {n} exceeds 2^31")))
}

/// `op(a) @ op(b)` with cuBLAS, for f64 and f32 blocks whose shapes the
/// caller checked.
pub(crate) fn gemm(gpu: &Gpu, p: &GemmParams, a: &Block, b: &Block) -> Result<Block, KernelError> {
    match a.dtype() {
        tessera_runtime::DType::F64 => gemm_t::<f64>(gpu, p, a, b),
        tessera_runtime::DType::F32 => gemm_t::<f32>(gpu, p, a, b),
        other => Err(crate::kernels::unsupported("gemm on a GPU", other)),
    }
}

/// `op(a) @ op(b)` with cuBLAS. Blocks are row-major, cuBLAS column-major:
/// a row-major `r x c` buffer is the column-major `c x r` transpose, so the
/// row-major product `C = op(A) op(B)` is computed as the column-major
/// `C^T = op(B)^T op(A)^T`, with no copy. Shapes were checked by the caller.
fn gemm_t<T: GpuElement + crate::element::Element>(
    gpu: &Gpu,
    p: &GemmParams,
    a: &Block,
    b: &Block,
) -> Result<Block, KernelError>
where
    cudarc::cublas::CudaBlas: Gemm<T>,
{
    let (ar, ac) = (a.shape()[0], a.shape()[1]);
    let (br, bc) = (b.shape()[0], b.shape()[1]);
    let (m, k) = if p.ta { (ac, ar) } else { (ar, ac) };
    let n = if p.tb { br } else { bc };
    let mut c = gpu.alloc::<T>(m * n)?;
    if m > 0 && n > 0 && k > 0 {
        let (da, db) = (device_input::<T>(gpu, a)?, device_input::<T>(gpu, b)?);
        let (sa, sb) = (slice_of::<T>(gpu, &da)?, slice_of::<T>(gpu, &db)?);
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        let cfg = GemmConfig {
            transa: op(p.tb),
            transb: op(p.ta),
            m: dim(gpu, n)?,
            n: dim(gpu, m)?,
            k: dim(gpu, k)?,
            alpha: T::from_f64(1.0),
            lda: dim(gpu, bc)?,
            ldb: dim(gpu, ac)?,
            beta: T::from_f64(0.0),
            ldc: dim(gpu, n)?,
        };
        // SAFETY: the slices hold exactly the row-major blocks described by
        // the dimensions and leading dimensions above (lda = bc >= the rows
        // cuBLAS reads of B's column-major view, likewise A), and `c` holds
        // m * n elements.
        gpu.blas(|blas| unsafe { blas.gemm(cfg, sb, sa, &mut c) }.map_err(|e| gpu.error("cuBLAS gemm", e)))?;
    }
    Ok(gpu.output(vec![m, n], T::wrap(c)))
}

/// The CPU kernel's generator (`kernels::random`), element for element:
/// SplitMix64 of the element's counter, Box-Muller for normals.
const RANDOM_SOURCE: &str = r#"
typedef unsigned long long u64;
__device__ u64 mix(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
__device__ double uniform01(u64 key, u64 counter) {
    return (double)(mix(key + counter * 0x9e3779b97f4a7c15ULL) >> 11) * (1.0 / 9007199254740992.0);
}
__device__ double draw(u64 key, u64 i, int normal, double a, double b) {
    if (!normal) return a + (b - a) * uniform01(key, i);
    double u1 = 1.0 - uniform01(key, 2 * i);
    double u2 = uniform01(key, 2 * i + 1);
    return a + b * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
#define RANDOM(NAME, T)                                                                  \
extern "C" __global__ void NAME(T* out, u64 key, u64 rows, u64 cols, u64 r0, u64 c0,     \
                                u64 width, int normal, double a, double b) {             \
    u64 n = rows * cols;                                                                 \
    for (u64 e = blockIdx.x * (u64)blockDim.x + threadIdx.x; e < n;                      \
         e += (u64)gridDim.x * blockDim.x) {                                             \
        u64 i = e / cols, j = e % cols;                                                  \
        out[e] = (T)draw(key, (r0 + i) * width + (c0 + j), normal, a, b);                \
    }                                                                                    \
}
RANDOM(tessera_random_f64, double)
RANDOM(tessera_random_f32, float)
"#;

/// A block of `linalg.random` made on the device.
pub(crate) fn random<T: GpuElement>(gpu: &Gpu, p: &RandomParams, key: u64) -> Result<Block, KernelError> {
    let (rows, cols, r0, c0, width) = match (&p.shape[..], &p.start[..], &p.full[..]) {
        ([r, c], [r0, c0], [_, w]) => (*r, *c, *r0, *c0, *w),
        ([r], [r0], [_]) => (*r, 1, *r0, 0, 1),
        _ => return Err(KernelError::msg(format!("random: bad block {:?} at {:?}", p.shape, p.start))),
    };
    let name = if T::DTYPE == tessera_runtime::DType::F64 { "tessera_random_f64" } else { "tessera_random_f32" };
    let f = gpu.function(name, RANDOM_SOURCE)?;
    let n = rows * cols;
    let mut out = gpu.alloc::<T>(n)?;
    if n > 0 {
        let (normal, a, b) = match p.dist {
            Distribution::Uniform { low, high } => (0i32, low, high),
            Distribution::Normal { mean, std } => (1i32, mean, std),
        };
        let (rows, cols, r0, c0, width) = (rows as u64, cols as u64, r0 as u64, c0 as u64, width as u64);
        let threads = 256u32;
        let blocks = n.div_ceil(threads as usize).min(65_535) as u32;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let mut launch = gpu.stream().launch_builder(&f);
        launch.arg(&mut out).arg(&key).arg(&rows).arg(&cols).arg(&r0).arg(&c0).arg(&width);
        launch.arg(&normal).arg(&a).arg(&b);
        // SAFETY: the arguments match the kernel's signature in order and
        // type, and `out` holds rows * cols elements, the most it writes.
        unsafe { launch.launch(cfg) }.map_err(|e| gpu.error(&format!("launching {name}"), e))?;
    }
    Ok(gpu.output(p.shape.clone(), T::wrap(out)))
}

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
//! | `linalg.qr_leaf` | cuSOLVER `geqrf` + `orgqr`: the leaf in explicit form (thin Q and R, see `tsqr::is_explicit`) rather than faer's compact reflectors |
//! | `linalg.qr_leaf_r` | of an explicit leaf still on the device, only R is copied to the host |
//! | `linalg.qr_apply` | cuBLAS GEMM of the explicit Q with the factor from the tree |
//! | `linalg.ew` | when an input is only on the device: the fused program as CUDA C, compiled by NVRTC once per program (not marked GPU-capable: it runs where its inputs are) |

use std::ffi::c_int;
use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::cusolver::sys::{cusolverDnHandle_t, cusolverStatus_t};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use tessera_runtime::gpu::{DeviceBlock, Gpu, GpuElement};
use tessera_runtime::{Block, DType, DeviceCopy, KernelError, Registry};

use crate::element::Element;
use crate::expr::{Binary, EwParams, Op, Unary};
use crate::kernels::{Distribution, GemmParams, RandomParams};
use crate::tsqr::{ApplyParams, LeafParams};

/// Marks the kernels this module implements as GPU-capable.
pub(crate) fn mark_kernels(registry: &mut Registry) {
    registry.mark_gpu("linalg.gemm").mark_gpu("linalg.random").mark_gpu("linalg.qr_leaf").mark_gpu("linalg.qr_apply");
}

/// The elements of a device copy (from [`Gpu::input`], whose handle keeps
/// it alive while the kernel uses it) as a slice of `T`.
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
fn gemm_t<T: GpuElement + Element>(gpu: &Gpu, p: &GemmParams, a: &Block, b: &Block) -> Result<Block, KernelError>
where
    cudarc::cublas::CudaBlas: Gemm<T>,
{
    let (ar, ac) = (a.shape()[0], a.shape()[1]);
    let (br, bc) = (b.shape()[0], b.shape()[1]);
    let (m, k) = if p.ta { (ac, ar) } else { (ar, ac) };
    let n = if p.tb { br } else { bc };
    let mut c = gpu.alloc::<T>(m * n)?;
    if m > 0 && n > 0 && k > 0 {
        let (da, db) = (gpu.input::<T>(a)?, gpu.input::<T>(b)?);
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
    gpu.output(vec![m, n], T::wrap(c))
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
    gpu.output(p.shape.clone(), T::wrap(out))
}

/// Small kernels the QR needs around cuSOLVER: a row-major to column-major
/// transpose, and R cut out of `geqrf`'s output.
const QR_SOURCE: &str = r#"
typedef unsigned long long u64;
#define KERNELS(SUFFIX, T)                                                                    \
extern "C" __global__ void tessera_to_cols_##SUFFIX(T* dst, const T* src, u64 rows, u64 cols) { \
    u64 n = rows * cols;                                                                       \
    for (u64 e = blockIdx.x * (u64)blockDim.x + threadIdx.x; e < n; e += (u64)gridDim.x * blockDim.x) { \
        u64 i = e % rows, j = e / rows;                                                        \
        dst[e] = src[i * cols + j];                                                            \
    }                                                                                          \
}                                                                                              \
extern "C" __global__ void tessera_upper_##SUFFIX(T* r, const T* a, u64 m, u64 n) {           \
    u64 total = n * n;                                                                         \
    for (u64 e = blockIdx.x * (u64)blockDim.x + threadIdx.x; e < total; e += (u64)gridDim.x * blockDim.x) { \
        u64 i = e % n, j = e / n;                                                              \
        r[e] = i <= j ? a[j * m + i] : (T)0;                                                   \
    }                                                                                          \
}
KERNELS(f64, double)
KERNELS(f32, float)
"#;

/// A grid-stride launch over `n` elements.
fn launch_config(n: usize) -> LaunchConfig {
    let threads = 256u32;
    let blocks = n.div_ceil(threads as usize).clamp(1, 65_535) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// cuSOLVER's dense Householder QR for one element type.
trait Lapack: GpuElement + Element {
    const SUFFIX: &'static str;
    unsafe fn geqrf_lwork(
        h: cusolverDnHandle_t,
        m: c_int,
        n: c_int,
        a: *mut Self,
        lwork: *mut c_int,
    ) -> cusolverStatus_t;
    #[allow(clippy::too_many_arguments)]
    unsafe fn geqrf(
        h: cusolverDnHandle_t,
        m: c_int,
        n: c_int,
        a: *mut Self,
        tau: *mut Self,
        work: *mut Self,
        lwork: c_int,
        info: *mut c_int,
    ) -> cusolverStatus_t;
    unsafe fn orgqr_lwork(
        h: cusolverDnHandle_t,
        m: c_int,
        n: c_int,
        a: *const Self,
        tau: *const Self,
        lwork: *mut c_int,
    ) -> cusolverStatus_t;
    #[allow(clippy::too_many_arguments)]
    unsafe fn orgqr(
        h: cusolverDnHandle_t,
        m: c_int,
        n: c_int,
        a: *mut Self,
        tau: *const Self,
        work: *mut Self,
        lwork: c_int,
        info: *mut c_int,
    ) -> cusolverStatus_t;
}

macro_rules! lapack {
    ($t:ty, $suffix:literal, $geqrf_lwork:ident, $geqrf:ident, $orgqr_lwork:ident, $orgqr:ident) => {
        impl Lapack for $t {
            const SUFFIX: &'static str = $suffix;
            unsafe fn geqrf_lwork(
                h: cusolverDnHandle_t,
                m: c_int,
                n: c_int,
                a: *mut $t,
                lwork: *mut c_int,
            ) -> cusolverStatus_t {
                // SAFETY: the caller upholds cuSOLVER's contract for these pointers.
                unsafe { cudarc::cusolver::sys::$geqrf_lwork(h, m, n, a, m, lwork) }
            }
            unsafe fn geqrf(
                h: cusolverDnHandle_t,
                m: c_int,
                n: c_int,
                a: *mut $t,
                tau: *mut $t,
                work: *mut $t,
                lwork: c_int,
                info: *mut c_int,
            ) -> cusolverStatus_t {
                // SAFETY: the caller upholds cuSOLVER's contract for these pointers.
                unsafe { cudarc::cusolver::sys::$geqrf(h, m, n, a, m, tau, work, lwork, info) }
            }
            unsafe fn orgqr_lwork(
                h: cusolverDnHandle_t,
                m: c_int,
                n: c_int,
                a: *const $t,
                tau: *const $t,
                lwork: *mut c_int,
            ) -> cusolverStatus_t {
                // SAFETY: the caller upholds cuSOLVER's contract for these pointers.
                unsafe { cudarc::cusolver::sys::$orgqr_lwork(h, m, n, n, a, m, tau, lwork) }
            }
            unsafe fn orgqr(
                h: cusolverDnHandle_t,
                m: c_int,
                n: c_int,
                a: *mut $t,
                tau: *const $t,
                work: *mut $t,
                lwork: c_int,
                info: *mut c_int,
            ) -> cusolverStatus_t {
                // SAFETY: the caller upholds cuSOLVER's contract for these pointers.
                unsafe { cudarc::cusolver::sys::$orgqr(h, m, n, n, a, m, tau, work, lwork, info) }
            }
        }
    };
}
lapack!(f64, "f64", cusolverDnDgeqrf_bufferSize, cusolverDnDgeqrf, cusolverDnDorgqr_bufferSize, cusolverDnDorgqr);
lapack!(f32, "f32", cusolverDnSgeqrf_bufferSize, cusolverDnSgeqrf, cusolverDnSorgqr_bufferSize, cusolverDnSorgqr);

/// A TSQR leaf on the GPU, in explicit form (`tsqr::is_explicit`): the
/// `m x n` block (m >= n, shape checked by the caller) is made column-major
/// on the device, factored by `geqrf`, its R cut out, and Q formed by
/// `orgqr` in place.
pub(crate) fn qr_leaf(gpu: &Gpu, p: &LeafParams, x: &Block) -> Result<Block, KernelError> {
    match x.dtype() {
        DType::F64 => qr_leaf_t::<f64>(gpu, p, x),
        DType::F32 => qr_leaf_t::<f32>(gpu, p, x),
        other => Err(crate::kernels::unsupported("qr_leaf on a GPU", other)),
    }
}

fn qr_leaf_t<T: Lapack>(gpu: &Gpu, p: &LeafParams, x: &Block) -> Result<Block, KernelError> {
    let (m, n) = (p.rows, p.cols);
    let stream = gpu.stream();
    let input = gpu.input::<T>(x)?;
    let a = slice_of::<T>(gpu, &input)?;
    let mut out = gpu.alloc::<T>(m * n + n * n)?;
    if m * n > 0 {
        let mut q = out.slice_mut(0..m * n);
        if p.transposed {
            // An `n x m` row-major block is the `m x n` column-major A.
            stream.memcpy_dtod(a, &mut q).map_err(|e| gpu.error("copying the block", e))?;
        } else {
            let f = gpu
                .function(if T::SUFFIX == "f64" { "tessera_to_cols_f64" } else { "tessera_to_cols_f32" }, QR_SOURCE)?;
            let (rows, cols) = (m as u64, n as u64);
            let mut launch = stream.launch_builder(&f);
            launch.arg(&mut q).arg(a).arg(&rows).arg(&cols);
            // SAFETY: `q` and `a` hold m * n elements, all the kernel touches.
            unsafe { launch.launch(launch_config(m * n)) }.map_err(|e| gpu.error("transposing the block", e))?;
        }
    }
    drop(input);
    let (mi, ni) = (dim(gpu, m)?, dim(gpu, n)?);
    let mut tau = gpu.alloc::<T>(n.max(1))?;
    let mut info = stream.alloc_zeros::<c_int>(1).map_err(|e| gpu.error("allocating", e))?;
    let solver_error = |what: &str, e: cudarc::cusolver::result::CusolverError| gpu.error(what, e);
    if m * n > 0 {
        gpu.solver(|h| {
            let mut lwork: c_int = 0;
            {
                let (a_ptr, _a) = out.device_ptr_mut(stream);
                // SAFETY: `a_ptr` is m x n column-major with leading dimension m.
                unsafe { T::geqrf_lwork(h.cu(), mi, ni, a_ptr as *mut T, &mut lwork) }
                    .result()
                    .map_err(|e| solver_error("geqrf workspace", e))?;
            }
            let mut work = gpu.alloc::<T>((lwork as usize).max(1))?;
            {
                let (a_ptr, _a) = out.device_ptr_mut(stream);
                let (tau_ptr, _t) = tau.device_ptr_mut(stream);
                let (work_ptr, _w) = work.device_ptr_mut(stream);
                let (info_ptr, _i) = info.device_ptr_mut(stream);
                // SAFETY: as above; tau holds n elements, work lwork, info one.
                unsafe {
                    T::geqrf(
                        h.cu(),
                        mi,
                        ni,
                        a_ptr as *mut T,
                        tau_ptr as *mut T,
                        work_ptr as *mut T,
                        lwork,
                        info_ptr as *mut c_int,
                    )
                }
                .result()
                .map_err(|e| solver_error("geqrf", e))?;
            }
            // R out of the upper triangle, before orgqr overwrites it.
            let upper =
                gpu.function(if T::SUFFIX == "f64" { "tessera_upper_f64" } else { "tessera_upper_f32" }, QR_SOURCE)?;
            {
                let (whole, _o) = out.device_ptr_mut(stream);
                let r_ptr = whole + (m * n * std::mem::size_of::<T>()) as u64;
                let (mm, nn) = (m as u64, n as u64);
                let mut launch = stream.launch_builder(&upper);
                launch.arg(&r_ptr).arg(&whole).arg(&mm).arg(&nn);
                // SAFETY: R's n * n elements follow Q's m * n in `out`; the
                // kernel reads the first n rows of the m x n factor.
                unsafe { launch.launch(launch_config(n * n)) }.map_err(|e| gpu.error("extracting R", e))?;
            }
            let mut lwork2: c_int = 0;
            {
                let (a_ptr, _a) = out.device_ptr(stream);
                let (tau_ptr, _t) = tau.device_ptr(stream);
                // SAFETY: as for geqrf.
                unsafe { T::orgqr_lwork(h.cu(), mi, ni, a_ptr as *const T, tau_ptr as *const T, &mut lwork2) }
                    .result()
                    .map_err(|e| solver_error("orgqr workspace", e))?;
            }
            if lwork2 > lwork {
                work = gpu.alloc::<T>(lwork2 as usize)?;
            }
            let lwork = lwork.max(lwork2);
            let (a_ptr, _a) = out.device_ptr_mut(stream);
            let (tau_ptr, _t) = tau.device_ptr(stream);
            let (work_ptr, _w) = work.device_ptr_mut(stream);
            let (info_ptr, _i) = info.device_ptr_mut(stream);
            // SAFETY: as for geqrf; Q (m x n) overwrites the factor in place.
            unsafe {
                T::orgqr(
                    h.cu(),
                    mi,
                    ni,
                    a_ptr as *mut T,
                    tau_ptr as *const T,
                    work_ptr as *mut T,
                    lwork,
                    info_ptr as *mut c_int,
                )
            }
            .result()
            .map_err(|e| solver_error("orgqr", e))
        })?;
    }
    let info = stream.clone_dtoh(&info).map_err(|e| gpu.error("reading cuSOLVER's status", e))?;
    if info[0] != 0 {
        return Err(gpu.error("cuSOLVER QR", format!("argument {} was wrong (info {})", -info[0], info[0])));
    }
    let block = gpu.output(vec![m + n, n], T::wrap(out))?;
    // NaN or Inf anywhere in the block reaches R's diagonal.
    let r = explicit_r_values::<T>(&block, m, n)?;
    // (column-major: the diagonal at i * n + i, the first row at j * n)
    if (0..n).any(|i| !r[i * n + i].to_f64().is_finite() || !r[i * n].to_f64().is_finite()) {
        return Err(crate::tsqr::non_finite_error::<T>(p, x));
    }
    Ok(block)
}

/// The column-major R of an explicit leaf (its last n x n elements), copied
/// from the device alone when the block is not on the host.
fn explicit_r_values<T: GpuElement + Element>(x: &Block, m: usize, n: usize) -> Result<Vec<T>, KernelError> {
    let on_device = if x.on_host() { None } else { x.device_copy() };
    match on_device.as_ref().and_then(|c| c.as_any().downcast_ref::<DeviceBlock>()) {
        Some(d) => d.range_to_host::<T>(m * n, n * n).map_err(KernelError::msg),
        None => Ok(T::slice(x).ok_or_else(|| crate::kernels::unsupported("qr", x.dtype()))?[m * n..].to_vec()),
    }
}

/// `qr_leaf_r` of an explicit leaf that is only on the device: R alone is
/// copied to the host (row-major `n x n`). `None` when the block is on the
/// host (the CPU kernel reads it there).
pub(crate) fn explicit_r(x: &Block, m: usize, n: usize) -> Result<Option<Block>, KernelError> {
    if x.on_host() || x.shape() != [m + n, n] {
        return Ok(None);
    }
    fn rows_of<T: GpuElement + Element>(x: &Block, m: usize, n: usize) -> Result<Block, KernelError> {
        let cols = explicit_r_values::<T>(x, m, n)?;
        let r = faer::MatRef::from_column_major_slice(&cols, n, n);
        Ok(crate::dense::block(vec![n, n], crate::dense::to_rows(r)))
    }
    match x.dtype() {
        DType::F64 => rows_of::<f64>(x, m, n).map(Some),
        DType::F32 => rows_of::<f32>(x, m, n).map(Some),
        _ => Ok(None),
    }
}

/// `Q_leaf @ F` (or its transpose) for an explicit leaf, with cuBLAS.
/// Q is column-major `m x n`; F row-major `n x c` (its column-major view
/// is Fᵀ). Row-major `Q F` is the column-major `(Q F)ᵀ = Fᵀ Qᵀ`; its
/// transpose (`transpose_out`), row-major `c x m`, is the column-major `Q F`.
pub(crate) fn qr_apply(gpu: &Gpu, p: &ApplyParams, packed: &Block, f: &Block) -> Result<Block, KernelError> {
    let (m, n, c) = (p.rows, p.cols, p.c);
    if packed.shape() != [m + n, n] || f.shape() != [n, c] || packed.dtype() != f.dtype() {
        return Err(KernelError::msg(format!(
            "qr_apply: factor {:?} {} and packed leaf {:?} {} do not fit {m} x {n} with {c} columns",
            f.shape(),
            f.dtype(),
            packed.shape(),
            packed.dtype()
        )));
    }
    match packed.dtype() {
        DType::F64 => qr_apply_t::<f64>(gpu, p, packed, f),
        DType::F32 => qr_apply_t::<f32>(gpu, p, packed, f),
        other => Err(crate::kernels::unsupported("qr_apply on a GPU", other)),
    }
}

fn qr_apply_t<T: GpuElement + Element>(
    gpu: &Gpu,
    p: &ApplyParams,
    packed: &Block,
    f: &Block,
) -> Result<Block, KernelError>
where
    cudarc::cublas::CudaBlas: Gemm<T>,
{
    let (m, n, c) = (p.rows, p.cols, p.c);
    let mut out = gpu.alloc::<T>(m * c)?;
    if m > 0 && n > 0 && c > 0 {
        let (dq, df) = (gpu.input::<T>(packed)?, gpu.input::<T>(f)?);
        let q = slice_of::<T>(gpu, &dq)?.slice(0..m * n);
        let fs = slice_of::<T>(gpu, &df)?;
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
        let (mi, ni, ci) = (dim(gpu, m)?, dim(gpu, n)?, dim(gpu, c)?);
        let gemm = |blas: &cudarc::cublas::CudaBlas, out: &mut CudaSlice<T>| {
            // SAFETY: q is m x n column-major (ld m), fs n x c row-major
            // (column-major c x n, ld c), out m * c elements.
            unsafe {
                if p.transpose_out {
                    let cfg = GemmConfig {
                        transa: op(false),
                        transb: op(true),
                        m: mi,
                        n: ci,
                        k: ni,
                        alpha: one,
                        lda: mi,
                        ldb: ci,
                        beta: zero,
                        ldc: mi,
                    };
                    blas.gemm(cfg, &q, fs, out)
                } else {
                    let cfg = GemmConfig {
                        transa: op(false),
                        transb: op(true),
                        m: ci,
                        n: mi,
                        k: ni,
                        alpha: one,
                        lda: ci,
                        ldb: mi,
                        beta: zero,
                        ldc: ci,
                    };
                    blas.gemm(cfg, fs, &q, out)
                }
            }
            .map_err(|e| gpu.error("cuBLAS gemm (Q F)", e))
        };
        gpu.blas(|blas| gemm(blas, &mut out))?;
    }
    let shape = if p.transpose_out { vec![c, m] } else { vec![m, c] };
    gpu.output(shape, T::wrap(out))
}

/// An elementwise program on the device, if an input is there only (on the
/// host the CPU kernel is as fast and costs no copies); `None` leaves it to
/// the CPU kernel (host inputs, other element types, or inputs it refuses,
/// so its messages stay the only ones).
pub(crate) fn ew(gpu: &Gpu, p: &EwParams, inputs: &[Block]) -> Result<Option<Block>, KernelError> {
    let Some(first) = inputs.first() else { return Ok(None) };
    let fits = inputs.iter().all(|b| b.dtype() == p.dtype && b.shape() == first.shape());
    if !fits || inputs.iter().all(Block::on_host) || p.depth(inputs.len()).is_err() {
        return Ok(None);
    }
    match p.dtype {
        DType::F64 => ew_t::<f64>(gpu, p, inputs).map(Some),
        DType::F32 => ew_t::<f32>(gpu, p, inputs).map(Some),
        _ => Ok(None),
    }
}

/// The program as one CUDA C expression per element, with the CPU kernel's
/// arithmetic: `+ - * /`, negation and squares in the element type; `abs`,
/// `sqrt`, `exp`, `ln` and `pow` in double, rounded to it; constants exact
/// (their bits); max and min taking the right operand when the left is NaN.
fn ew_source(p: &EwParams, name: &str, ty: &str, inputs: usize) -> String {
    let mut exprs: Vec<String> = Vec::new();
    for op in &p.program {
        let e = match *op {
            Op::Load(i) => format!("x{i}[e]"),
            Op::Const(c) => format!("((T)__longlong_as_double((long long){:#x}ULL))", c.to_bits()),
            Op::Unary(f) => {
                let a = exprs.pop().expect("checked");
                match f {
                    Unary::Neg => format!("(-{a})"),
                    Unary::Abs => format!("((T)fabs((double){a}))"),
                    Unary::Sqrt => format!("((T)sqrt((double){a}))"),
                    Unary::Exp => format!("((T)exp((double){a}))"),
                    Unary::Ln => format!("((T)log((double){a}))"),
                    Unary::Square => format!("sq({a})"),
                }
            }
            Op::Binary(f) => {
                let b = exprs.pop().expect("checked");
                let a = exprs.pop().expect("checked");
                match f {
                    Binary::Add => format!("({a} + {b})"),
                    Binary::Sub => format!("({a} - {b})"),
                    Binary::Mul => format!("({a} * {b})"),
                    Binary::Div => format!("({a} / {b})"),
                    Binary::Pow => format!("((T)pow((double){a}, (double){b}))"),
                    Binary::Max => format!("tmax({a}, {b})"),
                    Binary::Min => format!("tmin({a}, {b})"),
                }
            }
        };
        exprs.push(e);
    }
    let expr = exprs.pop().expect("checked");
    let params: Vec<String> = (0..inputs).map(|i| format!("const T* x{i}")).collect();
    format!(
        r#"typedef unsigned long long u64;
typedef {ty} T;
__device__ T sq(T v) {{ return v * v; }}
__device__ T tmax(T a, T b) {{ return (b > a || isnan(a)) ? b : a; }}
__device__ T tmin(T a, T b) {{ return (b < a || isnan(a)) ? b : a; }}
extern "C" __global__ void {name}(T* out, {params}, u64 n) {{
    for (u64 e = blockIdx.x * (u64)blockDim.x + threadIdx.x; e < n; e += (u64)gridDim.x * blockDim.x) {{
        out[e] = {expr};
    }}
}}
"#,
        params = params.join(", ")
    )
}

fn ew_t<T: GpuElement + Element>(gpu: &Gpu, p: &EwParams, inputs: &[Block]) -> Result<Block, KernelError> {
    let shape = inputs[0].shape().to_vec();
    let n: usize = shape.iter().product();
    // One kernel per distinct program and element type (FNV-1a of both).
    let dtype = <T as GpuElement>::DTYPE;
    let key = format!("{:?} {dtype}", p.program);
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let name = format!("tessera_ew_{hash:016x}");
    let ty = if dtype == DType::F64 { "double" } else { "float" };
    let f = gpu.function(&name, &ew_source(p, &name, ty, inputs.len()))?;
    let copies = inputs.iter().map(|b| gpu.input::<T>(b)).collect::<Result<Vec<_>, _>>()?;
    let slices = copies.iter().map(|c| slice_of::<T>(gpu, c)).collect::<Result<Vec<_>, _>>()?;
    let mut out = gpu.alloc::<T>(n)?;
    if n > 0 {
        let count = n as u64;
        let mut launch = gpu.stream().launch_builder(&f);
        launch.arg(&mut out);
        for s in &slices {
            launch.arg(*s);
        }
        launch.arg(&count);
        // SAFETY: the kernel takes the output, one pointer per input and the
        // count, in this order; every slice holds n elements.
        unsafe { launch.launch(launch_config(n)) }.map_err(|e| gpu.error("launching an elementwise kernel", e))?;
    }
    gpu.output(shape, T::wrap(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated CUDA C (compiled only where there is a GPU): operand
    /// order, the CPU kernel's rounding points, exact constants.
    #[test]
    fn elementwise_programs_become_one_expression() {
        let program = vec![
            Op::Load(0),
            Op::Load(1),
            Op::Binary(Binary::Sub),
            Op::Const(0.1),
            Op::Binary(Binary::Max),
            Op::Unary(Unary::Sqrt),
            Op::Unary(Unary::Square),
        ];
        let p = EwParams { program, dtype: DType::F32 };
        let src = ew_source(&p, "k", "float", 2);
        let c = format!("((T)__longlong_as_double((long long){:#x}ULL))", 0.1f64.to_bits());
        let want = format!("out[e] = sq(((T)sqrt((double)tmax((x0[e] - x1[e]), {c}))));");
        assert!(src.contains(&want), "{src}");
        assert!(
            src.contains("typedef float T;") && src.contains("void k(T* out, const T* x0, const T* x1, u64 n)"),
            "{src}"
        );
    }
}

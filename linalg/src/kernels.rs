//! The kernels arrays are computed with, and their parameters.
//!
//! Every kernel is named `linalg.*` and registered by [`register_kernels`]
//! on every rank. Parameters are small serde structs; blocks are row-major
//! f64 or f32, and a kernel meets a block of another type or shape with an
//! error naming the input, never a panic.

use serde::{Deserialize, Serialize};
use tessera_runtime::{Block, DType, KernelCtx, KernelError, NumericalError, Registry};

use crate::dense::{self, block, block2, rows};
use crate::dispatch;
use crate::element::Element;
use crate::expr::EwParams;

tessera_runtime::kernel_set!("linalg", register_kernels);

/// Registers every kernel of this crate (`linalg.*`) in `registry`, unless
/// it has them already. [`Registry::builtin`] does this by itself in every
/// program this crate is linked into; call it for registries built from
/// [`Registry::empty`].
pub fn register_kernels(registry: &mut Registry) {
    if registry.id("linalg.gemm").is_some() {
        return;
    }
    registry.register("linalg.random", |ctx, p: RandomParams, _: &[Block]| {
        #[cfg(feature = "cuda")]
        if let Some(gpu) = ctx.gpu {
            let key = random_key(p.seed);
            match p.dtype {
                DType::F64 => return crate::gpu::random::<f64>(gpu, &p, key),
                DType::F32 => return crate::gpu::random::<f32>(gpu, &p, key),
                _ => {}
            }
        }
        let _ = ctx;
        random(&p)
    });
    registry.register("linalg.full", |_, p: FullParams, _: &[Block]| {
        dispatch!(p.dtype, T => Ok(full::<T>(&p)), _ => Err(unsupported("full", p.dtype)))
    });
    registry.register("linalg.data", |_, p: DataParams, _: &[Block]| Ok(p.into_block()));
    registry.register("linalg.ew", |ctx, p: EwParams, inputs: &[Block]| {
        // Not marked GPU-capable: it runs where its inputs are, and on the
        // GPU when they are there.
        #[cfg(feature = "cuda")]
        if let Some(gpu) = ctx.gpu {
            if let Some(out) = crate::gpu::ew(gpu, &p, inputs)? {
                return Ok(out);
            }
        }
        let _ = ctx;
        crate::expr::eval(&p, inputs)
    });
    registry.register("linalg.transpose", |_, (): (), inputs: &[Block]| {
        let x = one(inputs, "transpose")?;
        dispatch!(x.dtype(), T => transpose::<T>(x), _ => Err(unsupported("transpose", x.dtype())))
    });
    registry.register("linalg.gemm", |ctx, p: GemmParams, inputs: &[Block]| {
        let [a, b] = inputs else { return Err(KernelError::msg("gemm takes two blocks")) };
        dispatch!(a.dtype(), T => gemm::<T>(ctx, &p, a, b), _ => Err(unsupported("gemm", a.dtype())))
    });
    registry.register("linalg.add", |_, (): (), inputs: &[Block]| {
        let x = inputs.first().ok_or_else(|| KernelError::msg("add takes at least one block"))?;
        dispatch!(x.dtype(), T => add::<T>(inputs), _ => Err(unsupported("add", x.dtype())))
    });
    registry.register("linalg.sum", |_, p: SumParams, inputs: &[Block]| {
        let x = one(inputs, "sum")?;
        dispatch!(x.dtype(), T => sum::<T>(&p, x), _ => Err(unsupported("sum", x.dtype())))
    });
    registry.register("linalg.assemble", |_, p: AssembleParams, inputs: &[Block]| {
        let x = inputs.first().ok_or_else(|| KernelError::msg("assemble takes at least one block"))?;
        dispatch!(x.dtype(), T => assemble::<T>(&p, inputs), _ => Err(unsupported("assemble", x.dtype())))
    });
    registry.register("linalg.check_finite", |ctx, p: CheckParams, inputs: &[Block]| {
        let x = one(inputs, "check_finite")?;
        dispatch!(x.dtype(), T => check_finite::<T>(ctx, &p, x), _ => Err(unsupported("check_finite", x.dtype())))
    });
    registry.register("linalg.peak_memory", |_, (): (), _: &[Block]| {
        Ok(Block::scalar(tessera_runtime::host::sys::peak_rss_bytes().unwrap_or(0) as f64))
    });
    crate::tsqr::register_kernels(registry);
    #[cfg(feature = "cuda")]
    crate::gpu::mark_kernels(registry);
    #[cfg(feature = "hdf5")]
    crate::hdf5::register_kernels(registry);
}

pub(crate) fn unsupported(op: &str, dtype: DType) -> KernelError {
    KernelError::msg(format!("{op}: unsupported element type {dtype}"))
}

fn one<'a>(inputs: &'a [Block], op: &str) -> Result<&'a Block, KernelError> {
    match inputs {
        [x] => Ok(x),
        _ => Err(KernelError::msg(format!("{op} takes one block, got {}", inputs.len()))),
    }
}

/// Distribution of random elements.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Distribution {
    /// Uniform on `[low, high)`.
    Uniform { low: f64, high: f64 },
    /// Normal with mean and standard deviation.
    Normal { mean: f64, std: f64 },
}

/// A block of seeded random numbers. Element `(i, j)` of the whole array
/// depends only on the seed and its position, so the array is the same
/// whatever its chunks and however many workers compute it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RandomParams {
    pub seed: u64,
    pub dist: Distribution,
    pub dtype: DType,
    /// Block shape, its offset in the array, and the array's shape.
    pub shape: Vec<usize>,
    pub start: Vec<usize>,
    pub full: Vec<usize>,
}

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform on [0, 1) from (seed, counter): SplitMix64 with the counter as
/// its state, so any element can be drawn on its own.
fn uniform01(key: u64, counter: u64) -> f64 {
    (mix(key.wrapping_add(counter.wrapping_mul(0x9e37_79b9_7f4a_7c15))) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn draw(dist: Distribution, key: u64, i: u64) -> f64 {
    match dist {
        Distribution::Uniform { low, high } => low + (high - low) * uniform01(key, i),
        Distribution::Normal { mean, std } => {
            // Box-Muller on two uniforms of this element's own counters.
            let u1 = 1.0 - uniform01(key, 2 * i); // (0, 1]
            let u2 = uniform01(key, 2 * i + 1);
            mean + std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        }
    }
}

/// The generator's key for a seed (the GPU kernel uses the same).
pub(crate) fn random_key(seed: u64) -> u64 {
    mix(seed ^ 0x5851_f42d_4c95_7f2d)
}

fn random(p: &RandomParams) -> Result<Block, KernelError> {
    let key = random_key(p.seed);
    let (rows, cols, width) = match (&p.shape[..], &p.start[..], &p.full[..]) {
        ([r, c], [r0, c0], [_, w]) => ((*r0..r0 + r), (*c0..c0 + c), *w),
        ([r], [r0], [_]) => ((*r0..r0 + r), (0..1), 1),
        _ => return Err(KernelError::msg(format!("random: bad block {:?} at {:?}", p.shape, p.start))),
    };
    let counters = rows.flat_map(move |i| cols.clone().map(move |j| (i * width + j) as u64));
    match p.dtype {
        DType::F64 => Ok(block(p.shape.clone(), counters.map(|i| draw(p.dist, key, i)).collect::<Vec<f64>>())),
        DType::F32 => Ok(block(p.shape.clone(), counters.map(|i| draw(p.dist, key, i) as f32).collect::<Vec<f32>>())),
        other => Err(unsupported("random", other)),
    }
}

/// A block of one value, or of an identity's part (`eye`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FullParams {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub value: f64,
    /// For `eye`: ones where `col - row == diagonal` (block coordinates).
    pub diagonal: Option<i64>,
}

fn full<T: Element>(p: &FullParams) -> Block {
    let n: usize = p.shape.iter().product();
    match (p.diagonal, &p.shape[..]) {
        (Some(d), [r, c]) => {
            let mut v = vec![T::default(); n];
            for i in 0..*r {
                let j = i as i64 + d;
                if j >= 0 && (j as usize) < *c {
                    v[i * c + j as usize] = T::from_f64(p.value);
                }
            }
            block(p.shape.clone(), v)
        }
        _ => block(p.shape.clone(), vec![T::from_f64(p.value); n]),
    }
}

/// Elements from the driver, carried in the task's parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum DataParams {
    F64 { shape: Vec<usize>, values: Vec<f64> },
    F32 { shape: Vec<usize>, values: Vec<f32> },
}

impl DataParams {
    fn into_block(self) -> Block {
        match self {
            DataParams::F64 { shape, values } => block(shape, values),
            DataParams::F32 { shape, values } => block(shape, values),
        }
    }
}

fn transpose<T: Element>(x: &Block) -> Result<Block, KernelError> {
    let (data, r, c) = block2::<T>(x, "transpose input")?;
    Ok(block(vec![c, r], dense::to_rows(rows(data, r, c).transpose())))
}

/// `op(a) @ op(b)`, `op` transposing an operand when its flag is set (a
/// transpose folded into the product by [`crate::fuse`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GemmParams {
    pub ta: bool,
    pub tb: bool,
}

fn gemm<T: Element>(ctx: &KernelCtx<'_>, p: &GemmParams, a: &Block, b: &Block) -> Result<Block, KernelError> {
    let operand = |x: &Block, what: &str| match (x.dtype() == T::DTYPE, x.shape()) {
        (true, &[r, c]) => Ok((r, c)),
        (false, _) => Err(KernelError::msg(format!("{what} is {}, expected {}", x.dtype(), T::DTYPE))),
        (_, s) => Err(KernelError::msg(format!("{what} has shape {s:?}, expected a matrix"))),
    };
    let ((ar, ac), (br, bc)) = (operand(a, "left operand")?, operand(b, "right operand")?);
    let (inner_a, inner_b) = (if p.ta { ar } else { ac }, if p.tb { bc } else { br });
    if inner_a != inner_b {
        let (sa, sb) = (if p.ta { [ac, ar] } else { [ar, ac] }, if p.tb { [bc, br] } else { [br, bc] });
        return Err(KernelError::msg(format!("gemm: blocks of shapes {sa:?} and {sb:?} do not fit")));
    }
    #[cfg(feature = "cuda")]
    if let Some(gpu) = ctx.gpu {
        return crate::gpu::gemm(gpu, p, a, b);
    }
    let _ = ctx;
    let (ad, bd) = (T::slice(a).expect("dtype checked"), T::slice(b).expect("dtype checked"));
    let a = if p.ta { rows(ad, ar, ac).transpose() } else { rows(ad, ar, ac) };
    let b = if p.tb { rows(bd, br, bc).transpose() } else { rows(bd, br, bc) };
    Ok(block(vec![a.nrows(), b.ncols()], dense::gemm(a, b)))
}

fn add<T: Element>(inputs: &[Block]) -> Result<Block, KernelError> {
    let first = &inputs[0];
    let mut acc: Vec<T> = T::slice(first).ok_or_else(|| unsupported("add", first.dtype()))?.to_vec();
    for (i, b) in inputs.iter().enumerate().skip(1) {
        let x = T::slice(b)
            .filter(|x| x.len() == acc.len() && b.shape() == first.shape())
            .ok_or_else(|| KernelError::msg(format!("add: input {i} is {b:?}, expected {first:?}")))?;
        acc.iter_mut().zip(x).for_each(|(a, &x)| *a += x);
    }
    Ok(block(first.shape().to_vec(), acc))
}

/// Sums (of squares, when `squared`) along `axis`, or of everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumParams {
    pub axis: Option<usize>,
    pub squared: bool,
}

fn sum<T: Element>(p: &SumParams, x: &Block) -> Result<Block, KernelError> {
    let data = T::slice(x).ok_or_else(|| unsupported("sum", x.dtype()))?;
    let f = |v: T| {
        let v = v.to_f64();
        if p.squared {
            v * v
        } else {
            v
        }
    };
    // Partial sums accumulate in f64 whatever the element type.
    let (shape, out): (Vec<usize>, Vec<f64>) = match (p.axis, x.shape()) {
        (None, _) | (Some(0), [_]) => (vec![], vec![data.iter().map(|&v| f(v)).sum()]),
        (Some(0), &[r, c]) => {
            let mut acc = vec![0.0; c];
            for i in 0..r {
                acc.iter_mut().zip(&data[i * c..(i + 1) * c]).for_each(|(a, &v)| *a += f(v));
            }
            (vec![c], acc)
        }
        (Some(1), &[r, c]) => (vec![r], (0..r).map(|i| data[i * c..(i + 1) * c].iter().map(|&v| f(v)).sum()).collect()),
        (axis, shape) => return Err(KernelError::msg(format!("sum: no axis {axis:?} in a block of shape {shape:?}"))),
    };
    Ok(block(shape, out.into_iter().map(T::from_f64).collect::<Vec<T>>()))
}

/// One output block of a rechunk, cut from the input blocks it overlaps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AssembleParams {
    pub shape: Vec<usize>,
    pub pieces: Vec<Piece>,
}

/// `len` elements per axis from input `input` at `src`, to `dst` of the output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Piece {
    pub input: u32,
    pub src: Vec<usize>,
    pub dst: Vec<usize>,
    pub len: Vec<usize>,
}

fn assemble<T: Element>(p: &AssembleParams, inputs: &[Block]) -> Result<Block, KernelError> {
    let mut out = vec![T::default(); p.shape.iter().product()];
    for piece in &p.pieces {
        let b = inputs
            .get(piece.input as usize)
            .ok_or_else(|| KernelError::msg(format!("assemble: no input {}", piece.input)))?;
        let src = T::slice(b).ok_or_else(|| unsupported("assemble", b.dtype()))?;
        match (&piece.len[..], b.shape()) {
            ([n], [_]) => out[piece.dst[0]..piece.dst[0] + n].copy_from_slice(&src[piece.src[0]..piece.src[0] + n]),
            ([r, c], [_, w]) => {
                // A single row may land in a 1-D output.
                let width = p.shape.get(1).copied().unwrap_or(*c);
                for i in 0..*r {
                    let s = (piece.src[0] + i) * w + piece.src[1];
                    let d = (piece.dst[0] + i) * width + piece.dst[1];
                    out[d..d + c].copy_from_slice(&src[s..s + c]);
                }
            }
            (len, shape) => return Err(KernelError::msg(format!("assemble: piece {len:?} of block {shape:?}"))),
        }
    }
    Ok(block(p.shape.clone(), out))
}

/// Fails if a block holds NaN or Inf, naming where in the array; passes the
/// block on otherwise (shared, not copied).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckParams {
    /// What the array is, for the message (`the input of svd`).
    pub what: String,
    /// The block's offset in the array.
    pub start: Vec<usize>,
}

fn check_finite<T: Element>(_: &KernelCtx<'_>, p: &CheckParams, x: &Block) -> Result<Block, KernelError> {
    let data = T::slice(x).ok_or_else(|| unsupported("check_finite", x.dtype()))?;
    let c = x.shape().get(1).copied().unwrap_or(1);
    if let Some((i, j)) = dense::first_non_finite(data, c) {
        let at: Vec<usize> = match p.start[..] {
            [r0, c0] => vec![r0 + i, c0 + j],
            [r0] => vec![r0 + i],
            _ => vec![i, j],
        };
        let value = data[i * c + j].to_f64();
        return Err(KernelError::Numerical(NumericalError::NonFinite { what: p.what.clone(), value, at, needs: None }));
    }
    Ok(x.clone())
}

//! Elementwise arithmetic: programs evaluated block by block.
//!
//! An elementwise task carries a small postfix program over its input
//! blocks (`Load(i)`), constants and operators. Chains of elementwise
//! operations are fused into one program, so `((a + b) * 2).sqrt()` is one
//! task per block reading `a` and `b`, with no intermediate blocks. The
//! program runs over tiles of [`TILE`] elements that stay in L1 cache, so a
//! fused chain costs one pass over memory.
//!
//! ```
//! use tessera_linalg::DArray;
//! let a = DArray::ones(&[4, 4], &[2, 2])?;
//! let b = DArray::zeros(&[4, 4], &[2, 2])?;
//! let c = (&a.add(&b)? * 2.0).sqrt();
//! assert_eq!(c.shape(), &[4, 4]);
//! # Ok::<(), tessera_linalg::LinalgError>(())
//! ```

use serde::{Deserialize, Serialize};
use tessera_runtime::{Block, DType, KernelError, Task};

use crate::array::DArray;
use crate::dense::block;
use crate::dispatch;
use crate::element::Element;
use crate::error::{LinalgError, Result};
use crate::kernels::unsupported;

/// Elements per tile of evaluation.
pub const TILE: usize = 256;

/// One-argument functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unary {
    Neg,
    Abs,
    Sqrt,
    Exp,
    Ln,
    Square,
}

/// Two-argument operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
}

/// An instruction of an elementwise program (postfix).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Push the task's input block `i`.
    Load(u32),
    /// Push a constant.
    Const(f64),
    Unary(Unary),
    Binary(Binary),
}

/// Parameters of `linalg.ew`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EwParams {
    pub program: Vec<Op>,
    pub dtype: DType,
}

impl EwParams {
    /// Stack slots the program needs, or an error if it is malformed.
    pub(crate) fn depth(&self, inputs: usize) -> Result<usize, KernelError> {
        let (mut d, mut most) = (0usize, 0usize);
        for op in &self.program {
            match op {
                Op::Load(i) if *i as usize >= inputs => {
                    return Err(KernelError::msg(format!("ew: program loads input {i} of {inputs}")))
                }
                Op::Load(_) | Op::Const(_) => d += 1,
                Op::Unary(_) if d >= 1 => {}
                Op::Binary(_) if d >= 2 => d -= 1,
                _ => return Err(KernelError::msg("ew: program pops an empty stack")),
            }
            most = most.max(d);
        }
        if d != 1 {
            return Err(KernelError::msg(format!("ew: program leaves {d} values")));
        }
        Ok(most)
    }
}

fn unary<T: Element>(f: Unary, x: &mut [T]) {
    match f {
        Unary::Neg => x.iter_mut().for_each(|v| *v = -*v),
        Unary::Abs => x.iter_mut().for_each(|v| *v = T::from_f64(v.to_f64().abs())),
        Unary::Sqrt => x.iter_mut().for_each(|v| *v = T::from_f64(v.to_f64().sqrt())),
        Unary::Exp => x.iter_mut().for_each(|v| *v = T::from_f64(v.to_f64().exp())),
        Unary::Ln => x.iter_mut().for_each(|v| *v = T::from_f64(v.to_f64().ln())),
        Unary::Square => x.iter_mut().for_each(|v| *v = *v * *v),
    }
}

fn binary<T: Element>(f: Binary, a: &mut [T], b: &[T]) {
    let zip = a.iter_mut().zip(b);
    match f {
        Binary::Add => zip.for_each(|(a, &b)| *a += b),
        Binary::Sub => zip.for_each(|(a, &b)| *a -= b),
        Binary::Mul => zip.for_each(|(a, &b)| *a *= b),
        Binary::Div => zip.for_each(|(a, &b)| *a /= b),
        Binary::Pow => zip.for_each(|(a, &b)| *a = T::from_f64(a.to_f64().powf(b.to_f64()))),
        Binary::Max => zip.for_each(|(a, &b)| *a = if b > *a || a.to_f64().is_nan() { b } else { *a }),
        Binary::Min => zip.for_each(|(a, &b)| *a = if b < *a || a.to_f64().is_nan() { b } else { *a }),
    }
}

/// Runs `linalg.ew` on its input blocks.
pub(crate) fn eval(p: &EwParams, inputs: &[Block]) -> Result<Block, KernelError> {
    dispatch!(p.dtype, T => eval_as::<T>(p, inputs), _ => Err(unsupported("ew", p.dtype)))
}

fn eval_as<T: Element>(p: &EwParams, inputs: &[Block]) -> Result<Block, KernelError> {
    let depth = p.depth(inputs.len())?;
    let first = inputs.first().ok_or_else(|| KernelError::msg("ew: no input blocks"))?;
    let shape = first.shape().to_vec();
    let data: Vec<&[T]> = inputs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            T::slice(b)
                .filter(|_| b.shape() == shape.as_slice())
                .ok_or_else(|| KernelError::msg(format!("ew: input {i} is {b:?}, expected {} {shape:?}", T::DTYPE)))
        })
        .collect::<Result<_, _>>()?;
    let n = first.shape().iter().product::<usize>();
    let mut out = vec![T::default(); n];
    let mut stack = vec![[T::default(); TILE]; depth];
    let mut start = 0;
    while start < n {
        let len = TILE.min(n - start);
        let mut top = 0;
        for op in &p.program {
            match *op {
                Op::Load(i) => {
                    stack[top][..len].copy_from_slice(&data[i as usize][start..start + len]);
                    top += 1;
                }
                Op::Const(c) => {
                    stack[top][..len].fill(T::from_f64(c));
                    top += 1;
                }
                Op::Unary(f) => unary(f, &mut stack[top - 1][..len]),
                Op::Binary(f) => {
                    let (lo, hi) = stack.split_at_mut(top - 1);
                    binary(f, &mut lo[top - 2][..len], &hi[0][..len]);
                    top -= 1;
                }
            }
        }
        out[start..start + len].copy_from_slice(&stack[0][..len]);
        start += len;
    }
    Ok(block(shape, out))
}

/// An elementwise task over `inputs` (same block shape) running `program`.
fn ew_array(op: &str, inputs: &[&DArray], program: Vec<Op>) -> DArray {
    let first = inputs[0];
    let params = EwParams { program, dtype: first.dtype() };
    DArray::build(op, first.shape().to_vec(), first.chunks().clone(), first.dtype(), inputs, |idx, key| {
        Task::new(key, "linalg.ew").param(&params).inputs(inputs.iter().map(|a| a.key(idx).clone()))
    })
}

impl DArray {
    /// Applies `f` to every element.
    pub fn map(&self, f: Unary) -> DArray {
        ew_array("map", &[self], vec![Op::Load(0), Op::Unary(f)])
    }

    /// `self op x` for every element.
    pub fn scalar(&self, f: Binary, x: f64) -> DArray {
        ew_array("scalar", &[self], vec![Op::Load(0), Op::Const(x), Op::Binary(f)])
    }

    /// `x op self` for every element (`2.0 - a`, `1.0 / a`).
    pub fn rscalar(&self, f: Binary, x: f64) -> DArray {
        ew_array("scalar", &[self], vec![Op::Const(x), Op::Load(0), Op::Binary(f)])
    }

    /// `self op other`, element by element. Both must have the same shape,
    /// element type and chunks.
    pub fn zip(&self, f: Binary, other: &DArray) -> Result<DArray> {
        let op = "elementwise operation";
        if self.shape() != other.shape() {
            return Err(LinalgError::ShapeMismatch {
                op,
                left: self.shape().to_vec(),
                right: other.shape().to_vec(),
                hint: "",
            });
        }
        if self.dtype() != other.dtype() {
            return Err(LinalgError::DTypeMismatch { op, left: self.dtype(), right: other.dtype() });
        }
        if self.chunks() != other.chunks() {
            return Err(LinalgError::ChunkMismatch {
                op,
                left: self.chunks().to_string(),
                right: other.chunks().to_string(),
            });
        }
        Ok(ew_array("zip", &[self, other], vec![Op::Load(0), Op::Load(1), Op::Binary(f)]))
    }

    pub fn add(&self, other: &DArray) -> Result<DArray> {
        self.zip(Binary::Add, other)
    }

    pub fn sub(&self, other: &DArray) -> Result<DArray> {
        self.zip(Binary::Sub, other)
    }

    pub fn mul(&self, other: &DArray) -> Result<DArray> {
        self.zip(Binary::Mul, other)
    }

    pub fn div(&self, other: &DArray) -> Result<DArray> {
        self.zip(Binary::Div, other)
    }

    pub fn abs(&self) -> DArray {
        self.map(Unary::Abs)
    }

    pub fn sqrt(&self) -> DArray {
        self.map(Unary::Sqrt)
    }

    pub fn exp(&self) -> DArray {
        self.map(Unary::Exp)
    }

    pub fn ln(&self) -> DArray {
        self.map(Unary::Ln)
    }

    pub fn powf(&self, x: f64) -> DArray {
        self.scalar(Binary::Pow, x)
    }
}

macro_rules! scalar_ops {
    ($($tr:ident $method:ident $op:ident),*) => {$(
        impl std::ops::$tr<f64> for &DArray {
            type Output = DArray;
            fn $method(self, x: f64) -> DArray {
                self.scalar(Binary::$op, x)
            }
        }
        impl std::ops::$tr<&DArray> for f64 {
            type Output = DArray;
            fn $method(self, a: &DArray) -> DArray {
                a.rscalar(Binary::$op, self)
            }
        }
    )*};
}

scalar_ops!(Add add Add, Sub sub Sub, Mul mul Mul, Div div Div);

impl std::ops::Neg for &DArray {
    type Output = DArray;
    fn neg(self) -> DArray {
        self.map(Unary::Neg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_evaluate_over_tiles_and_check_their_stack() {
        let n = TILE * 2 + 3;
        let a = block(vec![n], (0..n).map(|i| i as f64).collect::<Vec<_>>());
        let b = block(vec![n], vec![2.0f64; n]);
        // (a - b) * a + 1
        let p = EwParams {
            program: vec![
                Op::Load(0),
                Op::Load(1),
                Op::Binary(Binary::Sub),
                Op::Load(0),
                Op::Binary(Binary::Mul),
                Op::Const(1.0),
                Op::Binary(Binary::Add),
            ],
            dtype: DType::F64,
        };
        let out = eval(&p, &[a, b.clone()]).unwrap();
        let v = out.as_f64().unwrap();
        for (i, &x) in v.iter().enumerate() {
            let i = i as f64;
            assert_eq!(x, (i - 2.0) * i + 1.0);
        }
        let bad = EwParams { program: vec![Op::Load(0), Op::Binary(Binary::Add)], dtype: DType::F64 };
        assert!(eval(&bad, std::slice::from_ref(&b)).unwrap_err().to_string().contains("empty stack"));
        let bad = EwParams { program: vec![Op::Load(3)], dtype: DType::F64 };
        assert!(eval(&bad, &[b]).unwrap_err().to_string().contains("loads input 3"));
    }
}

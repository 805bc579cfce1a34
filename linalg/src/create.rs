//! Constructors: seeded random arrays, constants, identities, and arrays
//! from an `ndarray` on the driver.
//!
//! Random arrays draw element `(i, j)` from a counter-based generator keyed
//! by the seed and the element's position, so an array is the same whatever
//! its chunks and however many workers compute it.

use ndarray::{ArrayView, Dimension};
use tessera_runtime::{DType, Task};

use crate::array::{check_float, DArray, IntoChunks};
use crate::chunks::Chunks;
use crate::element::Element;
use crate::error::{LinalgError, Result};
use crate::kernels::{DataParams, Distribution, FullParams, RandomParams};

fn check_ndim(op: &'static str, shape: &[usize]) -> Result<()> {
    if shape.is_empty() || shape.len() > 2 {
        return Err(LinalgError::Dimensions { op, expected: 2, shape: shape.to_vec() });
    }
    Ok(())
}

fn starts(chunks: &Chunks, idx: &[usize]) -> Vec<usize> {
    idx.iter().enumerate().map(|(a, &i)| chunks.offsets(a)[i]).collect()
}

impl DArray {
    /// Random elements of `dist`, reproducible from `seed`.
    pub fn random(
        shape: &[usize],
        chunks: impl IntoChunks,
        dist: Distribution,
        seed: u64,
        dtype: DType,
    ) -> Result<DArray> {
        check_ndim("random", shape)?;
        check_float("random", dtype)?;
        let chunks = chunks.into_chunks(shape)?;
        let offsets: Vec<Vec<usize>> = (0..shape.len()).map(|a| chunks.offsets(a)).collect();
        Ok(DArray::build("random", shape.to_vec(), chunks.clone(), dtype, &[], |idx, key| {
            let p = RandomParams {
                seed,
                dist,
                dtype,
                shape: chunks.block_shape(idx),
                start: idx.iter().enumerate().map(|(a, &i)| offsets[a][i]).collect(),
                full: shape.to_vec(),
            };
            Task::new(key, "linalg.random").param(&p)
        }))
    }

    /// f64 elements uniform on [0, 1).
    pub fn random_uniform(shape: &[usize], chunks: impl IntoChunks, seed: u64) -> Result<DArray> {
        DArray::random(shape, chunks, Distribution::Uniform { low: 0.0, high: 1.0 }, seed, DType::F64)
    }

    /// f64 elements from the standard normal distribution.
    pub fn random_normal(shape: &[usize], chunks: impl IntoChunks, seed: u64) -> Result<DArray> {
        DArray::random(shape, chunks, Distribution::Normal { mean: 0.0, std: 1.0 }, seed, DType::F64)
    }

    /// Every element `value`.
    pub fn full(shape: &[usize], chunks: impl IntoChunks, value: f64, dtype: DType) -> Result<DArray> {
        check_ndim("full", shape)?;
        check_float("full", dtype)?;
        let chunks = chunks.into_chunks(shape)?;
        Ok(DArray::build("full", shape.to_vec(), chunks.clone(), dtype, &[], |idx, key| {
            let p = FullParams { shape: chunks.block_shape(idx), dtype, value, diagonal: None };
            Task::new(key, "linalg.full").param(&p)
        }))
    }

    /// f64 zeros.
    pub fn zeros(shape: &[usize], chunks: impl IntoChunks) -> Result<DArray> {
        DArray::full(shape, chunks, 0.0, DType::F64)
    }

    /// f64 ones.
    pub fn ones(shape: &[usize], chunks: impl IntoChunks) -> Result<DArray> {
        DArray::full(shape, chunks, 1.0, DType::F64)
    }

    /// The `n x n` f64 identity.
    pub fn eye(n: usize, chunks: impl IntoChunks) -> Result<DArray> {
        let shape = [n, n];
        let chunks = chunks.into_chunks(&shape)?;
        Ok(DArray::build("eye", shape.to_vec(), chunks.clone(), DType::F64, &[], |idx, key| {
            let s = starts(&chunks, idx);
            let p = FullParams {
                shape: chunks.block_shape(idx),
                dtype: DType::F64,
                value: 1.0,
                diagonal: Some(s[0] as i64 - s[1] as i64),
            };
            Task::new(key, "linalg.full").param(&p)
        }))
    }

    /// An array holding a copy of `data` (1-D or 2-D), cut into `chunks`.
    /// The blocks travel to the workers inside their tasks.
    pub fn from_ndarray<T: Element, D: Dimension>(
        data: ArrayView<'_, T, D>,
        chunks: impl IntoChunks,
    ) -> Result<DArray> {
        let shape = data.shape().to_vec();
        check_ndim("from_ndarray", &shape)?;
        let chunks = chunks.into_chunks(&shape)?;
        let data = data.into_dyn();
        Ok(DArray::build("array", shape, chunks.clone(), T::DTYPE, &[], |idx, key| {
            let s = starts(&chunks, idx);
            let bshape = chunks.block_shape(idx);
            let values: Vec<f64> = match bshape[..] {
                [r] => (0..r).map(|i| data[[s[0] + i].as_slice()].to_f64()).collect(),
                [r, c] => (0..r)
                    .flat_map(|i| (0..c).map(move |j| (i, j)))
                    .map(|(i, j)| data[[s[0] + i, s[1] + j].as_slice()].to_f64())
                    .collect(),
                _ => unreachable!("checked above"),
            };
            let p = match T::DTYPE {
                DType::F32 => DataParams::F32 { shape: bshape, values: values.into_iter().map(|v| v as f32).collect() },
                _ => DataParams::F64 { shape: bshape, values },
            };
            Task::new(key, "linalg.data").param(&p)
        }))
    }
}

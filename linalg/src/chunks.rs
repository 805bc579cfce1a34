//! Chunks: how each axis of an array is cut into blocks.
//!
//! As dask's tuple-of-tuples: per axis, the lengths of its blocks in order.
//! Regular chunks (all equal but the last) are the common case; irregular
//! ones come from files, slicing and user choice.
//!
//! ```
//! use tessera_linalg::Chunks;
//! let c = Chunks::regular(&[10, 4], &[4, 4]).unwrap();
//! assert_eq!(c.axis(0), &[4, 4, 2]);
//! assert_eq!(c.grid(), vec![3, 1]);
//! ```

use std::fmt;
use std::ops::Range;

use crate::error::{LinalgError, Result};

/// Block lengths along each axis.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Chunks(Vec<Vec<usize>>);

impl Chunks {
    /// Blocks of `size[a]` along axis `a` (the last block of an axis may be
    /// shorter). A size of 0 means the whole axis in one block.
    pub fn regular(shape: &[usize], size: &[usize]) -> Result<Chunks> {
        if shape.len() != size.len() {
            return Err(LinalgError::BadChunks {
                chunks: format!("{size:?}"),
                shape: shape.to_vec(),
                reason: format!("{} chunk sizes for {} axes", size.len(), shape.len()),
            });
        }
        let axes = shape
            .iter()
            .zip(size)
            .map(|(&n, &c)| {
                if n == 0 {
                    return vec![0];
                }
                let c = if c == 0 { n } else { c.min(n) };
                let mut v = vec![c; n / c];
                if n % c != 0 {
                    v.push(n % c);
                }
                v
            })
            .collect();
        Ok(Chunks(axes))
    }

    /// Explicit block lengths per axis, checked against `shape`.
    pub fn explicit(shape: &[usize], axes: Vec<Vec<usize>>) -> Result<Chunks> {
        let c = Chunks(axes);
        c.check(shape)?;
        Ok(c)
    }

    fn check(&self, shape: &[usize]) -> Result<()> {
        let bad = |reason: String| LinalgError::BadChunks { chunks: self.to_string(), shape: shape.to_vec(), reason };
        if self.0.len() != shape.len() {
            return Err(bad(format!("{} axes of chunks for {} axes", self.0.len(), shape.len())));
        }
        for (a, (axis, &n)) in self.0.iter().zip(shape).enumerate() {
            if axis.is_empty() {
                return Err(bad(format!("axis {a} has no blocks")));
            }
            if n > 0 && axis.contains(&0) {
                return Err(bad(format!("axis {a} has an empty block")));
            }
            let total: usize = axis.iter().sum();
            if total != n {
                return Err(bad(format!("axis {a} adds up to {total}, not {n}")));
            }
        }
        Ok(())
    }

    pub fn ndim(&self) -> usize {
        self.0.len()
    }

    /// Block lengths along `axis`.
    pub fn axis(&self, axis: usize) -> &[usize] {
        &self.0[axis]
    }

    /// Number of blocks along each axis.
    pub fn grid(&self) -> Vec<usize> {
        self.0.iter().map(Vec::len).collect()
    }

    /// Total number of blocks.
    pub fn nblocks(&self) -> usize {
        self.0.iter().map(Vec::len).product()
    }

    /// Offset of each block along `axis`, plus the total at the end.
    pub fn offsets(&self, axis: usize) -> Vec<usize> {
        let mut o = Vec::with_capacity(self.0[axis].len() + 1);
        let mut at = 0;
        o.push(0);
        for &c in &self.0[axis] {
            at += c;
            o.push(at);
        }
        o
    }

    /// Element range of block `i` along `axis`.
    pub fn range(&self, axis: usize, i: usize) -> Range<usize> {
        let start: usize = self.0[axis][..i].iter().sum();
        start..start + self.0[axis][i]
    }

    /// Shape of the block at grid index `idx`.
    pub fn block_shape(&self, idx: &[usize]) -> Vec<usize> {
        idx.iter().enumerate().map(|(a, &i)| self.0[a][i]).collect()
    }

    /// The chunks with the two axes of a 2-D array swapped.
    pub fn transposed(&self) -> Chunks {
        let mut v = self.0.clone();
        v.reverse();
        Chunks(v)
    }

    /// The sub-grid of blocks `ranges[a]` along each axis.
    pub fn select(&self, ranges: &[Range<usize>]) -> Chunks {
        Chunks(self.0.iter().zip(ranges).map(|(axis, r)| axis[r.clone()].to_vec()).collect())
    }

    /// Whether every axis but `axis` is in one block.
    pub fn only_along(&self, axis: usize) -> bool {
        self.0.iter().enumerate().all(|(a, c)| a == axis || c.len() == 1)
    }

    pub(crate) fn from_axes(axes: Vec<Vec<usize>>) -> Chunks {
        Chunks(axes)
    }

    pub(crate) fn into_axes(self) -> Vec<Vec<usize>> {
        self.0
    }
}

impl fmt::Display for Chunks {
    /// `((4, 4, 2), (4,))` for short axes; long regular axes as `(4 x 250, 2)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        for (a, axis) in self.0.iter().enumerate() {
            if a > 0 {
                f.write_str(", ")?;
            }
            if axis.len() > 6 && axis[..axis.len() - 1].iter().all(|&c| c == axis[0]) {
                write!(f, "({} x {}", axis[0], axis.len() - 1)?;
                write!(f, ", {})", axis[axis.len() - 1])?;
            } else {
                f.write_str("(")?;
                for (i, c) in axis.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str(if axis.len() == 1 { ",)" } else { ")" })?;
            }
        }
        f.write_str(")")
    }
}

/// Row-major (C order) position of grid index `idx` in a grid of `grid`.
pub(crate) fn linear(idx: &[usize], grid: &[usize]) -> usize {
    idx.iter().zip(grid).fold(0, |acc, (&i, &n)| acc * n + i)
}

/// Every grid index of `grid` in row-major order.
pub(crate) fn grid_indices(grid: &[usize]) -> impl Iterator<Item = Vec<usize>> + '_ {
    let total: usize = grid.iter().product();
    (0..total).map(move |mut l| {
        let mut idx = vec![0; grid.len()];
        for a in (0..grid.len()).rev() {
            idx[a] = l % grid[a];
            l /= grid[a];
        }
        idx
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_chunks_end_with_the_remainder() {
        let c = Chunks::regular(&[10, 3], &[4, 0]).unwrap();
        assert_eq!(c.axis(0), &[4, 4, 2]);
        assert_eq!(c.axis(1), &[3]);
        assert_eq!(c.offsets(0), vec![0, 4, 8, 10]);
        assert_eq!(c.range(0, 2), 8..10);
        assert_eq!(c.block_shape(&[1, 0]), vec![4, 3]);
        assert_eq!(c.to_string(), "((4, 4, 2), (3,))");
    }

    #[test]
    fn explicit_chunks_must_add_up() {
        assert!(Chunks::explicit(&[5, 2], vec![vec![2, 3], vec![2]]).is_ok());
        let e = Chunks::explicit(&[5, 2], vec![vec![2, 2], vec![2]]).unwrap_err().to_string();
        assert!(e.contains("adds up to 4, not 5"), "{e}");
        let e = Chunks::explicit(&[5], vec![vec![5, 0]]).unwrap_err().to_string();
        assert!(e.contains("empty block"), "{e}");
    }

    #[test]
    fn grid_indices_are_row_major() {
        let all: Vec<Vec<usize>> = grid_indices(&[2, 3]).collect();
        assert_eq!(all.len(), 6);
        for (l, idx) in all.iter().enumerate() {
            assert_eq!(linear(idx, &[2, 3]), l);
        }
        assert_eq!(all[4], vec![1, 1]);
    }
}

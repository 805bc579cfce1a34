//! Element types of distributed arrays: `f64` and `f32`.

use faer::traits::RealField;
use tessera_runtime::{Block, Buffer, DType};

/// A floating-point element type an array can hold.
///
/// Kernels are generic over it; blocks carry their [`DType`] at run time,
/// and [`dispatch!`](crate::dispatch) picks the instance.
pub trait Element: RealField + Copy + Default + Send + Sync + std::fmt::Debug + 'static {
    const DTYPE: DType;
    /// Machine epsilon.
    const EPSILON: Self;
    fn slice(block: &Block) -> Option<&[Self]>;
    fn buffer(v: Vec<Self>) -> Buffer;
    /// The elements of a buffer of this type (the buffer back otherwise).
    fn from_buffer(b: Buffer) -> Result<Vec<Self>, Buffer>;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    const EPSILON: f64 = f64::EPSILON;
    fn slice(block: &Block) -> Option<&[f64]> {
        block.as_f64()
    }
    fn buffer(v: Vec<f64>) -> Buffer {
        Buffer::F64(v)
    }
    fn from_buffer(b: Buffer) -> Result<Vec<f64>, Buffer> {
        match b {
            Buffer::F64(v) => Ok(v),
            other => Err(other),
        }
    }
    fn from_f64(x: f64) -> f64 {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    const EPSILON: f32 = f32::EPSILON;
    fn slice(block: &Block) -> Option<&[f32]> {
        block.as_f32()
    }
    fn buffer(v: Vec<f32>) -> Buffer {
        Buffer::F32(v)
    }
    fn from_buffer(b: Buffer) -> Result<Vec<f32>, Buffer> {
        match b {
            Buffer::F32(v) => Ok(v),
            other => Err(other),
        }
    }
    fn from_f64(x: f64) -> f32 {
        x as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

/// Runs `$body` with `$T` bound to the element type of `$dtype` (f64 or
/// f32); other dtypes evaluate `$other`.
#[macro_export]
#[doc(hidden)]
macro_rules! dispatch {
    ($dtype:expr, $T:ident => $body:expr, _ => $other:expr) => {
        match $dtype {
            ::tessera_runtime::DType::F64 => {
                type $T = f64;
                $body
            }
            ::tessera_runtime::DType::F32 => {
                type $T = f32;
                $body
            }
            _ => $other,
        }
    };
}

/// Whether arrays may hold `dtype`.
pub fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F64 | DType::F32)
}

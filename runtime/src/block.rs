//! Blocks: the values tasks produce and consume.
//!
//! A [`Block`] is an immutable, reference-counted buffer with a dtype and a
//! shape. Inside one process a block is shared by cloning the `Arc`, never
//! copied. Between processes its elements travel as raw bytes (the
//! [`Block::as_bytes`] view on the sender, [`Block::receive_buffer`] on the
//! receiver), so a transfer costs one network copy and nothing else.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Element type of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    F64,
    F32,
    I64,
    /// Uninterpreted bytes (serialised small objects, counters).
    U8,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 => 4,
            DType::U8 => 1,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F64 => "f64",
            DType::F32 => "f32",
            DType::I64 => "i64",
            DType::U8 => "u8",
        })
    }
}

/// Typed element storage. Each variant owns a properly aligned `Vec`.
#[derive(Debug, PartialEq)]
pub enum Buffer {
    F64(Vec<f64>),
    F32(Vec<f32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
}

impl Buffer {
    pub fn dtype(&self) -> DType {
        match self {
            Buffer::F64(_) => DType::F64,
            Buffer::F32(_) => DType::F32,
            Buffer::I64(_) => DType::I64,
            Buffer::U8(_) => DType::U8,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Buffer::F64(v) => v.len(),
            Buffer::F32(v) => v.len(),
            Buffer::I64(v) => v.len(),
            Buffer::U8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A zeroed buffer of `len` elements of `dtype`.
    pub fn zeroed(dtype: DType, len: usize) -> Buffer {
        match dtype {
            DType::F64 => Buffer::F64(vec![0.0; len]),
            DType::F32 => Buffer::F32(vec![0.0; len]),
            DType::I64 => Buffer::I64(vec![0; len]),
            DType::U8 => Buffer::U8(vec![0; len]),
        }
    }

    /// The elements as bytes (native endianness).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: every element type is plain old data without padding, and
        // u8 has alignment 1, so any of these slices can be viewed as bytes.
        unsafe {
            match self {
                Buffer::F64(v) => bytes_of(v),
                Buffer::F32(v) => bytes_of(v),
                Buffer::I64(v) => bytes_of(v),
                Buffer::U8(v) => v,
            }
        }
    }

    /// The elements as mutable bytes, for receiving into.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_bytes`; additionally every bit pattern is a valid
        // f64, f32, i64 or u8, so arbitrary bytes may be written.
        unsafe {
            match self {
                Buffer::F64(v) => bytes_of_mut(v),
                Buffer::F32(v) => bytes_of_mut(v),
                Buffer::I64(v) => bytes_of_mut(v),
                Buffer::U8(v) => v,
            }
        }
    }
}

/// # Safety
/// `T` must be plain old data without padding bytes.
unsafe fn bytes_of<T>(v: &[T]) -> &[u8] {
    std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v))
}

/// # Safety
/// `T` must be plain old data without padding, valid for every bit pattern.
unsafe fn bytes_of_mut<T>(v: &mut [T]) -> &mut [u8] {
    std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v))
}

/// What travels ahead of a block's bytes: enough to allocate the receive
/// buffer and rebuild the block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl BlockHeader {
    /// Number of elements the shape holds.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Payload size in bytes.
    pub fn nbytes(&self) -> usize {
        self.len() * self.dtype.size()
    }
}

struct Inner {
    shape: Vec<usize>,
    buffer: Buffer,
    /// Received from a peer: the buffer goes back to the pool for the next
    /// receive.
    received: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.received && self.buffer.len() * self.buffer.dtype().size() >= pool::MIN_BYTES {
            pool::put(std::mem::replace(&mut self.buffer, Buffer::U8(Vec::new())));
        }
    }
}

/// Large buffers of released blocks, kept to receive the next blocks into.
///
/// Fresh memory costs a page fault per 4 KiB the first time it is written:
/// receiving 64 MiB into a new allocation takes about twice as long as into
/// a reused one. Blocked algorithms move many blocks of one size, so the
/// buffer of a released block that was itself received is kept (up to
/// [`LIMIT_BYTES`] per process) and handed to the next receive of the same
/// dtype and length.
///
/// Blocks made by kernels go back to the allocator: a worker that only
/// computes (reading its own input, say) keeps nothing in the pool, and in a
/// local cluster nothing is ever received.
pub(crate) mod pool {
    use super::{Buffer, DType};
    use parking_lot::Mutex;

    /// Buffers smaller than this are not worth keeping.
    pub const MIN_BYTES: usize = 1 << 20;
    /// Bytes the pool holds at most.
    pub const LIMIT_BYTES: usize = 256 << 20;

    struct Pool {
        bytes: usize,
        free: Vec<Buffer>,
    }

    static POOL: Mutex<Pool> = Mutex::new(Pool { bytes: 0, free: Vec::new() });

    fn nbytes(b: &Buffer) -> usize {
        b.len() * b.dtype().size()
    }

    pub fn put(buffer: Buffer) {
        let n = nbytes(&buffer);
        if n > LIMIT_BYTES {
            return;
        }
        let mut pool = POOL.lock();
        while pool.bytes + n > LIMIT_BYTES && !pool.free.is_empty() {
            let old = pool.free.remove(0);
            pool.bytes -= nbytes(&old);
        }
        pool.bytes += n;
        pool.free.push(buffer);
    }

    /// Bytes kept now.
    #[cfg(test)]
    pub fn held_bytes() -> usize {
        POOL.lock().bytes
    }

    /// A kept buffer of exactly `len` elements of `dtype`, if there is one.
    /// Its contents are stale: the caller overwrites all of it.
    pub fn take(dtype: DType, len: usize) -> Option<Buffer> {
        if len * dtype.size() < MIN_BYTES {
            return None;
        }
        let mut pool = POOL.lock();
        let i = pool.free.iter().rposition(|b| b.dtype() == dtype && b.len() == len)?;
        let b = pool.free.swap_remove(i);
        pool.bytes -= nbytes(&b);
        Some(b)
    }
}

/// An immutable n-dimensional block of elements, cheap to clone.
///
/// The element order is row-major (C order) over `shape`. A scalar has an
/// empty shape and one element.
#[derive(Clone)]
pub struct Block(Arc<Inner>);

impl Block {
    /// A block from a buffer and a shape. Panics if they disagree in length:
    /// that is a bug in the kernel that built it.
    pub fn new(shape: Vec<usize>, buffer: Buffer) -> Block {
        Block::build(shape, buffer, false)
    }

    fn build(shape: Vec<usize>, buffer: Buffer, received: bool) -> Block {
        let expected: usize = shape.iter().product();
        assert_eq!(
            expected,
            buffer.len(),
            "block shape {shape:?} needs {expected} elements, buffer has {}",
            buffer.len()
        );
        Block(Arc::new(Inner { shape, buffer, received }))
    }

    /// A block holding one f64.
    pub fn scalar(x: f64) -> Block {
        Block::new(Vec::new(), Buffer::F64(vec![x]))
    }

    /// An empty byte block (what side-effect-only tasks return).
    pub fn empty() -> Block {
        Block::new(vec![0], Buffer::U8(Vec::new()))
    }

    /// A one-dimensional byte block.
    pub fn from_bytes(bytes: Vec<u8>) -> Block {
        Block::new(vec![bytes.len()], Buffer::U8(bytes))
    }

    /// A block from a header and a buffer filled by a receive.
    /// Its buffer is recycled for later receives once the block is released.
    pub fn from_parts(header: BlockHeader, buffer: Buffer) -> Block {
        Block::build(header.shape, buffer, true)
    }

    /// A buffer of the right size to receive a block described by `header`
    /// into (see [`Buffer::as_bytes_mut`]); its contents are unspecified
    /// (large ones are recycled from released blocks).
    pub fn receive_buffer(header: &BlockHeader) -> Buffer {
        pool::take(header.dtype, header.len()).unwrap_or_else(|| Buffer::zeroed(header.dtype, header.len()))
    }

    pub fn header(&self) -> BlockHeader {
        BlockHeader { dtype: self.dtype(), shape: self.0.shape.clone() }
    }

    pub fn dtype(&self) -> DType {
        self.0.buffer.dtype()
    }

    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    pub fn buffer(&self) -> &Buffer {
        &self.0.buffer
    }

    /// Size of the elements in bytes (what the scheduler accounts).
    pub fn nbytes(&self) -> usize {
        self.0.buffer.len() * self.dtype().size()
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.buffer.as_bytes()
    }

    /// The elements if this is an f64 block.
    pub fn as_f64(&self) -> Option<&[f64]> {
        match &self.0.buffer {
            Buffer::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The elements if this is an f32 block.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.0.buffer {
            Buffer::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The single value of an f64 scalar or one-element block.
    pub fn to_scalar(&self) -> Option<f64> {
        match self.as_f64() {
            Some([x]) => Some(*x),
            _ => None,
        }
    }

    /// Whether two handles share one allocation (used to check that local
    /// transfers do not copy).
    pub fn ptr_eq(a: &Block, b: &Block) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Block({} {:?}, {} bytes)", self.dtype(), self.shape(), self.nbytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_through_a_receive_buffer() {
        let b = Block::new(vec![2, 3], Buffer::F64(vec![1.0, -2.5, 3.0, 4.0, 5.5, 6.0]));
        let header = b.header();
        assert_eq!(header.nbytes(), 48);
        let mut buf = Block::receive_buffer(&header);
        buf.as_bytes_mut().copy_from_slice(b.as_bytes());
        let c = Block::from_parts(header, buf);
        assert_eq!(c.as_f64(), b.as_f64());
        assert_eq!(c.shape(), &[2, 3]);
        assert!(!Block::ptr_eq(&b, &c));
        assert!(Block::ptr_eq(&b, &b.clone()));
    }

    #[test]
    fn large_received_buffers_are_reused_for_receives() {
        let len = (pool::MIN_BYTES / 8) + 12345; // a length no other test uses
        let header = BlockHeader { dtype: DType::F64, shape: vec![len] };
        let computed = Block::new(vec![len], Buffer::F64(vec![3.0; len]));
        let held = pool::held_bytes();
        drop(computed);
        assert_eq!(pool::held_bytes(), held, "a computed block's buffer goes back to the allocator");

        let b = Block::from_parts(header.clone(), Buffer::F64(vec![3.0; len]));
        let ptr = b.as_bytes().as_ptr();
        drop(b);
        let again = Block::receive_buffer(&header);
        assert_eq!(again.len(), len);
        assert_eq!(again.as_bytes().as_ptr(), ptr, "the released received allocation is handed out again");
        let small = BlockHeader { dtype: DType::F64, shape: vec![10] };
        assert_eq!(Block::receive_buffer(&small).len(), 10);
    }

    #[test]
    #[should_panic(expected = "needs 6 elements")]
    fn shape_and_buffer_must_agree() {
        Block::new(vec![2, 3], Buffer::F32(vec![0.0; 5]));
    }
}

//! Blocks: the values tasks produce and consume.
//!
//! A [`Block`] is an immutable, reference-counted buffer with a dtype and a
//! shape. Inside one process a block is shared by cloning the `Arc`, never
//! copied. Between processes its elements travel as raw bytes (the
//! [`Block::as_bytes`] view on the sender, [`Block::receive_buffer`] on the
//! receiver), so a transfer costs one network copy and nothing else.
//!
//! A block made by a GPU kernel lives in device memory ([`DeviceCopy`]):
//! its host copy is made the first time anything reads its elements (a CPU
//! kernel, a transfer to another rank), and kept from then on. A host block
//! a GPU kernel reads gains a device copy the same way (see `crate::gpu`),
//! which the device may drop again when it needs the memory: the block then
//! still has its host copy, so dropping it loses nothing.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

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

    /// An empty buffer of `dtype` with room for exactly `len` elements,
    /// reserved fallibly: a failed allocation is an error, not an abort.
    /// Nothing is touched yet, so no memory is committed until
    /// [`Buffer::grow_zeroed`] fills it.
    pub fn try_reserved(dtype: DType, len: usize) -> Result<Buffer, std::collections::TryReserveError> {
        fn reserve<T>(len: usize) -> Result<Vec<T>, std::collections::TryReserveError> {
            let mut v = Vec::new();
            v.try_reserve_exact(len)?;
            Ok(v)
        }
        Ok(match dtype {
            DType::F64 => Buffer::F64(reserve(len)?),
            DType::F32 => Buffer::F32(reserve(len)?),
            DType::I64 => Buffer::I64(reserve(len)?),
            DType::U8 => Buffer::U8(reserve(len)?),
        })
    }

    /// Appends `n` zeroed elements and returns their bytes, to receive into.
    /// Within the capacity [`Buffer::try_reserved`] gave, this never
    /// reallocates.
    pub fn grow_zeroed(&mut self, n: usize) -> &mut [u8] {
        let old = self.len();
        match self {
            Buffer::F64(v) => v.resize(old + n, 0.0),
            Buffer::F32(v) => v.resize(old + n, 0.0),
            Buffer::I64(v) => v.resize(old + n, 0),
            Buffer::U8(v) => v.resize(old + n, 0),
        }
        let size = self.dtype().size();
        &mut self.as_bytes_mut()[old * size..]
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
    // SAFETY: the caller promises `T` has no padding; the length is `v`'s in bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// # Safety
/// `T` must be plain old data without padding, valid for every bit pattern.
unsafe fn bytes_of_mut<T>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: the caller promises `T` has no padding and takes any bit pattern.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Largest block, in bytes, that a peer may announce (1 TiB).
///
/// A block's bytes never pass through a control frame (whose limit is
/// [`crate::protocol::MAX_FRAME`]): over TCP they follow the frame as raw
/// bytes, over MPI they go in pieces of at most 1 GiB on the data tag, over
/// UCX as one tagged message of the data plane. So this cap is separate from
/// the frame's and far above it. What a receiver allocates from a header is
/// checked against it by [`BlockHeader::checked_nbytes`], and reserved
/// fallibly, so a header that lies is an error and never an abort.
pub const MAX_BLOCK: u64 = 1 << 40;

/// What travels ahead of a block's bytes: enough to allocate the receive
/// buffer and rebuild the block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// A received block header whose size is unusable: its byte count
/// overflows, exceeds [`MAX_BLOCK`], or disagrees with what was announced,
/// or its buffer could not be allocated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SizeError {
    /// The dtype's size times the shape's product does not fit in 64 bits.
    #[error("a block of shape {} ({dtype}) has a byte count that overflows", ShapeOf(shape))]
    Overflow { dtype: DType, shape: Vec<usize> },
    /// The block would be larger than a peer may announce.
    #[error("a block of shape {} ({dtype}) needs {nbytes} bytes, over the limit of {MAX_BLOCK}", ShapeOf(shape))]
    OverLimit { dtype: DType, shape: Vec<usize>, nbytes: u64 },
    /// The bytes that came with the header are not the header's size.
    #[error("a block of shape {} ({dtype}) needs {nbytes} bytes, {announced} were announced", ShapeOf(shape))]
    Mismatch { dtype: DType, shape: Vec<usize>, nbytes: u64, announced: u64 },
    /// The receive buffer could not be reserved.
    #[error("cannot allocate {nbytes} bytes for a block of shape {} ({dtype})", ShapeOf(shape))]
    Alloc { dtype: DType, shape: Vec<usize>, nbytes: u64 },
}

/// A shape for messages: at most eight dimensions, then how many more (a
/// hostile header may carry millions).
struct ShapeOf<'a>(&'a [usize]);

impl fmt::Display for ShapeOf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        let s = self.0;
        if s.len() <= SHOWN {
            write!(f, "{s:?}")
        } else {
            write!(f, "{:?} and {} more dimensions", &s[..SHOWN], s.len() - SHOWN)
        }
    }
}

impl BlockHeader {
    /// The block's size in bytes, checked: the dtype's size times every
    /// dimension, each product checked for overflow, at most [`MAX_BLOCK`].
    /// Every receiver calls this before it allocates anything for a header
    /// that came from a peer.
    pub fn checked_nbytes(&self) -> Result<usize, SizeError> {
        let overflow = || SizeError::Overflow { dtype: self.dtype, shape: self.shape.clone() };
        let n = self
            .shape
            .iter()
            .try_fold(self.dtype.size() as u64, |acc, &d| acc.checked_mul(u64::try_from(d).ok()?))
            .ok_or_else(overflow)?;
        if n > MAX_BLOCK {
            return Err(SizeError::OverLimit { dtype: self.dtype, shape: self.shape.clone(), nbytes: n });
        }
        usize::try_from(n).map_err(|_| overflow())
    }

    /// As [`BlockHeader::checked_nbytes`], and equal to `announced`: the
    /// bytes that came with the header (an inline block's) or that a peer
    /// said follow it.
    pub fn check_announced(&self, announced: u64) -> Result<usize, SizeError> {
        let n = self.checked_nbytes()?;
        if n as u64 != announced {
            return Err(SizeError::Mismatch {
                dtype: self.dtype,
                shape: self.shape.clone(),
                nbytes: n as u64,
                announced,
            });
        }
        Ok(n)
    }

    fn alloc_error(&self) -> SizeError {
        let nbytes = self.checked_nbytes().map_or(0, |n| n as u64);
        SizeError::Alloc { dtype: self.dtype, shape: self.shape.clone(), nbytes }
    }

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

/// A copy of a block's elements outside host memory (a GPU's).
pub trait DeviceCopy: Send + Sync + 'static {
    /// Copies the elements to a new host buffer (blocking). An error names
    /// the device and what failed.
    fn to_host(&self) -> Result<Buffer, String>;
    /// Bytes the copy occupies on its device.
    fn nbytes(&self) -> usize;
    /// The device, for messages (`GPU 0`).
    fn device(&self) -> String;
    /// For downcasting to the device's own type.
    fn as_any(&self) -> &dyn Any;
}

struct Inner {
    shape: Vec<usize>,
    dtype: DType,
    /// The elements in host memory: set at creation for host blocks, on the
    /// first read for blocks made on a device.
    host: OnceLock<Buffer>,
    /// The elements on a device, if a GPU kernel made or read this block.
    device: Mutex<Option<Arc<dyn DeviceCopy>>>,
    /// Received from a peer: the buffer goes back to the pool for the next
    /// receive.
    received: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.received {
            return;
        }
        if let Some(buffer) = self.host.take() {
            if buffer.len() * buffer.dtype().size() >= pool::MIN_BYTES {
                pool::put(buffer);
            }
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
    /// Bytes the pool holds at most (less under a memory limit: [`cap`]).
    pub const LIMIT_BYTES: usize = 256 << 20;

    static CAP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(LIMIT_BYTES);

    /// Keeps at most `bytes` (never more than [`LIMIT_BYTES`]) from now on:
    /// a worker with a memory limit keeps an eighth of it.
    pub fn cap(bytes: usize) {
        CAP.fetch_min(bytes, std::sync::atomic::Ordering::Relaxed);
    }

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
        let limit = CAP.load(std::sync::atomic::Ordering::Relaxed);
        if n > limit {
            return;
        }
        let mut pool = POOL.lock();
        while pool.bytes + n > limit && !pool.free.is_empty() {
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
        let dtype = buffer.dtype();
        Block(Arc::new(Inner { shape, dtype, host: OnceLock::from(buffer), device: Mutex::new(None), received }))
    }

    /// A block whose elements are on a device only (a GPU kernel's output);
    /// its host copy is made when first read. Panics if the copy's size
    /// disagrees with the shape: a bug in the kernel that built it.
    pub fn from_device(shape: Vec<usize>, dtype: DType, copy: Arc<dyn DeviceCopy>) -> Block {
        let expected = shape.iter().product::<usize>() * dtype.size();
        assert_eq!(expected, copy.nbytes(), "block shape {shape:?} of {dtype} needs {expected} bytes on the device");
        Block(Arc::new(Inner { shape, dtype, host: OnceLock::new(), device: Mutex::new(Some(copy)), received: false }))
    }

    /// The elements of a block nobody else holds, without a copy; the
    /// block back if it is shared or its elements are on a device only.
    pub fn into_buffer(self) -> Result<Buffer, Block> {
        match Arc::try_unwrap(self.0) {
            Ok(mut inner) => match inner.host.take() {
                Some(buffer) => Ok(buffer),
                None => Err(Block(Arc::new(inner))),
            },
            Err(shared) => Err(Block(shared)),
        }
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
    /// (large ones are recycled from released blocks). The header's size is
    /// checked first ([`BlockHeader::checked_nbytes`]) and the buffer
    /// reserved fallibly, so a hostile header is an error.
    pub fn receive_buffer(header: &BlockHeader) -> Result<Buffer, SizeError> {
        let mut buffer = Block::receive_reserved(header)?;
        let missing = header.len() - buffer.len();
        buffer.grow_zeroed(missing);
        Ok(buffer)
    }

    /// As [`Block::receive_buffer`], but a buffer that is not recycled comes
    /// back empty with its room reserved, for a receiver to fill with
    /// [`Buffer::grow_zeroed`] as the bytes arrive, so that memory is
    /// committed only for bytes a peer actually sent. Its length is either
    /// 0 or the header's.
    pub fn receive_reserved(header: &BlockHeader) -> Result<Buffer, SizeError> {
        let nbytes = header.checked_nbytes()?;
        let len = nbytes / header.dtype.size();
        if let Some(buffer) = pool::take(header.dtype, len) {
            return Ok(buffer);
        }
        Buffer::try_reserved(header.dtype, len).map_err(|_| header.alloc_error())
    }

    pub fn header(&self) -> BlockHeader {
        BlockHeader { dtype: self.dtype(), shape: self.0.shape.clone() }
    }

    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    /// The elements in host memory, copied from the device first if this
    /// block was made there.
    ///
    /// # Panics
    /// If that copy fails (the device failed): the panic names the device,
    /// and a kernel's panic becomes its task's error.
    pub fn buffer(&self) -> &Buffer {
        self.0.host.get_or_init(|| {
            let copy = self.0.device.lock().clone().expect("a block has its elements on the host or a device");
            copy.to_host().unwrap_or_else(|e| panic!("{}: copying a block to the host: {e}", copy.device()))
        })
    }

    /// Size of the elements in bytes (what the scheduler accounts).
    pub fn nbytes(&self) -> usize {
        self.0.shape.iter().product::<usize>() * self.0.dtype.size()
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buffer().as_bytes()
    }

    /// Whether nothing but this handle holds the block (dropping it frees it).
    pub fn is_unique(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// Whether the elements are in host memory now (reading them costs no copy).
    pub fn on_host(&self) -> bool {
        self.0.host.get().is_some()
    }

    /// The block's device copy, if it has one.
    pub fn device_copy(&self) -> Option<Arc<dyn DeviceCopy>> {
        self.0.device.lock().clone()
    }

    /// Gives the block a device copy (replacing any other), made by the
    /// caller from its elements.
    pub fn set_device_copy(&self, copy: Arc<dyn DeviceCopy>) {
        *self.0.device.lock() = Some(copy);
    }

    /// Drops the device copy, copying the elements to the host first if they
    /// are only there (spilling). Returns the device bytes freed, or the
    /// copy's error (the device copy then stays).
    pub fn evict_device_copy(&self) -> Result<usize, String> {
        if !self.on_host() {
            let Some(copy) = self.device_copy() else { return Ok(0) };
            let buffer = copy.to_host().map_err(|e| format!("{}: spilling a block to the host: {e}", copy.device()))?;
            let _ = self.0.host.set(buffer);
        }
        Ok(self.0.device.lock().take().map_or(0, |c| c.nbytes()))
    }

    /// A handle that does not keep the block alive.
    pub fn downgrade(&self) -> WeakBlock {
        WeakBlock(Arc::downgrade(&self.0))
    }

    /// The elements if this is an f64 block.
    pub fn as_f64(&self) -> Option<&[f64]> {
        match self.buffer() {
            Buffer::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The elements if this is an f32 block.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self.buffer() {
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

/// A [`Block`] handle that does not keep it alive (what a device's list of
/// resident blocks holds).
#[derive(Clone)]
pub struct WeakBlock(Weak<Inner>);

impl WeakBlock {
    pub fn upgrade(&self) -> Option<Block> {
        self.0.upgrade().map(Block)
    }

    /// Whether the block still exists.
    pub fn alive(&self) -> bool {
        self.0.strong_count() > 0
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
    fn a_block_nobody_else_holds_gives_up_its_buffer_without_a_copy() {
        let v = vec![1.0, 2.0, 3.0];
        let at = v.as_ptr();
        let b = Block::new(vec![3], Buffer::F64(v));
        let shared = b.clone();
        let b = b.into_buffer().expect_err("shared");
        drop(shared);
        match b.into_buffer() {
            Ok(Buffer::F64(v)) => assert_eq!((v.as_ptr(), v), (at, vec![1.0, 2.0, 3.0])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bytes_round_trip_through_a_receive_buffer() {
        let b = Block::new(vec![2, 3], Buffer::F64(vec![1.0, -2.5, 3.0, 4.0, 5.5, 6.0]));
        let header = b.header();
        assert_eq!(header.nbytes(), 48);
        let mut buf = Block::receive_buffer(&header).unwrap();
        buf.as_bytes_mut().copy_from_slice(b.as_bytes());
        let c = Block::from_parts(header, buf);
        assert_eq!(c.as_f64(), b.as_f64());
        assert_eq!(c.shape(), &[2, 3]);
        assert!(!Block::ptr_eq(&b, &c));
        assert!(Block::ptr_eq(&b, &b.clone()));
    }

    fn header(dtype: DType, shape: &[usize]) -> BlockHeader {
        BlockHeader { dtype, shape: shape.to_vec() }
    }

    #[test]
    fn a_normal_header_has_its_size() {
        assert_eq!(header(DType::F64, &[3, 4]).checked_nbytes(), Ok(96));
        assert_eq!(header(DType::F32, &[]).checked_nbytes(), Ok(4), "a scalar holds one element");
        assert_eq!(header(DType::U8, &[0, 7]).checked_nbytes(), Ok(0));
        assert_eq!(
            header(DType::F64, &[1 << 20, 1 << 17]).checked_nbytes(),
            Ok(1 << 40),
            "the limit itself is allowed"
        );
        assert_eq!(header(DType::F64, &[3, 4]).check_announced(96), Ok(96));
    }

    #[test]
    fn a_header_over_the_limit_is_refused_naming_shape_and_dtype() {
        let err = header(DType::F64, &[1 << 40]).checked_nbytes().unwrap_err();
        assert!(matches!(err, SizeError::OverLimit { nbytes, .. } if nbytes == 8 << 40), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("[1099511627776]") && text.contains("f64") && text.contains("limit"), "{text}");
        // Refused before anything is allocated for it.
        assert!(Block::receive_buffer(&header(DType::F64, &[1 << 40])).is_err());
        assert!(Block::receive_reserved(&header(DType::F64, &[1 << 40])).is_err());
    }

    #[test]
    fn a_header_whose_size_overflows_is_refused_without_a_panic() {
        let err = header(DType::F64, &[1 << 61]).checked_nbytes().unwrap_err();
        assert!(matches!(err, SizeError::Overflow { .. }), "{err:?}");
        assert!(err.to_string().contains("overflows"), "{err}");
        assert!(Block::receive_buffer(&header(DType::F64, &[1 << 61])).is_err());
    }

    #[test]
    fn a_shape_whose_product_wraps_is_refused_not_a_zero_byte_block() {
        // 2^32 * 2^32 is 2^64, which wraps to 0 in unchecked arithmetic.
        let h = header(DType::F64, &[1 << 32, 1 << 32]);
        assert!(matches!(h.checked_nbytes(), Err(SizeError::Overflow { .. })), "{:?}", h.checked_nbytes());
        assert!(h.check_announced(0).is_err(), "announcing zero bytes does not make it a zero-byte block");
        assert!(Block::receive_buffer(&h).is_err());
        // So does a hostile header of many dimensions, whose message stays short.
        let many = header(DType::U8, &vec![1 << 8; 100_000]);
        let text = many.checked_nbytes().unwrap_err().to_string();
        assert!(text.contains("99992 more dimensions") && text.len() < 200, "{text}");
    }

    #[test]
    fn an_announced_size_that_disagrees_with_the_shape_is_refused() {
        let err = header(DType::F64, &[2, 3]).check_announced(40).unwrap_err();
        assert_eq!(err, SizeError::Mismatch { dtype: DType::F64, shape: vec![2, 3], nbytes: 48, announced: 40 });
        assert!(err.to_string().contains("48 bytes, 40 were announced"), "{err}");
    }

    #[test]
    fn a_reserved_receive_buffer_fills_as_bytes_arrive() {
        let h = header(DType::F32, &[5]);
        let mut b = Block::receive_reserved(&h).unwrap();
        assert!(b.is_empty());
        b.grow_zeroed(2).copy_from_slice(&[0u8; 8]);
        let piece = b.grow_zeroed(3);
        assert_eq!(piece.len(), 12);
        piece.copy_from_slice(f32_bytes(&[1.0, 2.0, 3.0]).as_slice());
        let block = Block::from_parts(h, b);
        assert_eq!(block.as_f32(), Some(&[0.0, 0.0, 1.0, 2.0, 3.0][..]));
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_ne_bytes()).collect()
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
        let again = Block::receive_buffer(&header).unwrap();
        assert_eq!(again.len(), len);
        assert_eq!(again.as_bytes().as_ptr(), ptr, "the released received allocation is handed out again");
        let small = BlockHeader { dtype: DType::F64, shape: vec![10] };
        assert_eq!(Block::receive_buffer(&small).unwrap().len(), 10);
    }

    /// A "device" in host memory that counts its copies: enough to check
    /// how a block moves between sides (the GPU tests check real devices).
    struct Elsewhere {
        data: Vec<f64>,
        copies: std::sync::atomic::AtomicUsize,
        fail: bool,
    }

    impl DeviceCopy for Elsewhere {
        fn to_host(&self) -> Result<Buffer, String> {
            if self.fail {
                return Err("device lost".into());
            }
            self.copies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Buffer::F64(self.data.clone()))
        }
        fn nbytes(&self) -> usize {
            self.data.len() * 8
        }
        fn device(&self) -> String {
            "test device".into()
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    fn elsewhere(data: Vec<f64>, fail: bool) -> Arc<Elsewhere> {
        Arc::new(Elsewhere { data, copies: Default::default(), fail })
    }

    #[test]
    fn a_device_block_is_copied_to_the_host_once_when_read() {
        let dev = elsewhere(vec![1.0, 2.0, 3.0, 4.0], false);
        let b = Block::from_device(vec![2, 2], DType::F64, dev.clone());
        assert!(!b.on_host());
        assert_eq!(b.nbytes(), 32);
        assert_eq!(b.dtype(), DType::F64);
        assert_eq!(b.as_f64(), Some(&[1.0, 2.0, 3.0, 4.0][..]));
        assert_eq!(b.as_bytes().len(), 32);
        assert!(b.on_host());
        assert_eq!(dev.copies.load(std::sync::atomic::Ordering::Relaxed), 1, "read twice, copied once");
        assert!(b.device_copy().is_some(), "reading keeps the device copy");
        assert_eq!(b.evict_device_copy(), Ok(32));
        assert!(b.device_copy().is_none());
        assert_eq!(
            dev.copies.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "evicting a block on both sides copies nothing"
        );
    }

    #[test]
    fn evicting_a_device_only_block_spills_it_to_the_host() {
        let dev = elsewhere(vec![5.0; 6], false);
        let b = Block::from_device(vec![3, 2], DType::F64, dev.clone());
        let weak = b.downgrade();
        assert_eq!(b.evict_device_copy(), Ok(48));
        assert!(b.on_host() && b.device_copy().is_none());
        assert_eq!(b.as_f64(), Some(&[5.0; 6][..]));
        assert!(weak.upgrade().is_some());
        drop(b);
        assert!(weak.upgrade().is_none() && !weak.alive(), "a weak handle does not keep the block");
    }

    #[test]
    fn a_failed_spill_keeps_the_device_copy_and_names_the_device() {
        let b = Block::from_device(vec![2], DType::F64, elsewhere(vec![1.0, 2.0], true));
        let err = b.evict_device_copy().unwrap_err();
        assert!(err.contains("test device") && err.contains("device lost"), "{err}");
        assert!(b.device_copy().is_some(), "nothing is lost");
        let host = Block::new(vec![2], Buffer::F64(vec![1.0, 2.0]));
        host.set_device_copy(elsewhere(vec![1.0, 2.0], true));
        assert_eq!(host.evict_device_copy(), Ok(16), "a block on the host drops its device copy without a copy");
    }

    #[test]
    #[should_panic(expected = "needs 6 elements")]
    fn shape_and_buffer_must_agree() {
        Block::new(vec![2, 3], Buffer::F32(vec![0.0; 5]));
    }
}

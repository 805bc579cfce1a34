//! [`DArray`]: a distributed array of blocks, built lazily as a task graph.
//!
//! An array is a shape, its [`Chunks`], an element type, one task key per
//! block and the graph that computes those blocks. Operations build new
//! arrays whose graphs extend their operands' (shared, not copied); nothing
//! runs until [`DArray::persist`], [`DArray::to_ndarray`] or [`compute`]
//! submits the graph. Then the graph is optimised (elementwise chains fused
//! into one task per block, transposes folded into the matrix products that
//! read them, see [`crate::fuse`]) and handed to the scheduler, which culls
//! what is not needed.
//!
//! A persisted array's blocks stay on the workers until the last `DArray`
//! holding them is dropped, and later graphs read them without recomputing.
//!
//! ```
//! use tessera_linalg::DArray;
//! use tessera_runtime::LocalCluster;
//! let cluster = LocalCluster::builder().workers(2).registry(tessera_linalg::registry()).start()?;
//! let a = DArray::ones(&[6, 4], &[4, 4])?;
//! let b = (&a * 3.0).sum(None)?;
//! let total = b.to_ndarray::<f64>(cluster.client())?;
//! assert_eq!(total.into_iter().next(), Some(72.0));
//! # Ok::<(), tessera_linalg::LinalgError>(())
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};
use rustc_hash::FxHashSet;
use tessera_runtime::{Block, Client, DType, Graph, Key, Persisted, Task};

use crate::chunks::{grid_indices, linear, Chunks};
use crate::element::{is_float, Element};
use crate::error::{LinalgError, Result};

/// What a set of blocks needs to exist: the tasks that compute them and the
/// layers those tasks read from, or blocks already held by the cluster.
pub(crate) struct Layer {
    tasks: Vec<Task>,
    deps: Vec<Arc<Layer>>,
    /// Blocks persisted on the workers; released when the last array holding
    /// this layer is dropped.
    _held: Option<Persisted>,
}

/// A distributed array: shape, chunks, element type and the lazily built
/// graph of its blocks. Cheap to clone (the graph is shared).
#[derive(Clone)]
pub struct DArray {
    shape: Vec<usize>,
    chunks: Chunks,
    dtype: DType,
    /// One key per block, in row-major order over the block grid.
    keys: Arc<[Key]>,
    layer: Arc<Layer>,
}

static NAMES: AtomicU64 = AtomicU64::new(0);

/// A key name no other array of this process uses: `op-N` (for the keys of
/// tasks made outside this crate, as `DArray::from_block_tasks` takes them).
pub fn fresh_name(op: &str) -> Arc<str> {
    let n = NAMES.fetch_add(1, Ordering::Relaxed);
    Arc::from(format!("{op}-{n}"))
}

/// Something that says how to cut a shape into blocks.
pub trait IntoChunks {
    fn into_chunks(self, shape: &[usize]) -> Result<Chunks>;
}

/// Block sizes per axis (0: the whole axis); the last block may be shorter.
impl IntoChunks for &[usize] {
    fn into_chunks(self, shape: &[usize]) -> Result<Chunks> {
        Chunks::regular(shape, self)
    }
}

impl<const N: usize> IntoChunks for &[usize; N] {
    fn into_chunks(self, shape: &[usize]) -> Result<Chunks> {
        Chunks::regular(shape, self)
    }
}

impl IntoChunks for Chunks {
    fn into_chunks(self, shape: &[usize]) -> Result<Chunks> {
        Chunks::explicit(shape, self.into_axes())
    }
}

impl IntoChunks for &Chunks {
    fn into_chunks(self, shape: &[usize]) -> Result<Chunks> {
        self.clone().into_chunks(shape)
    }
}

impl DArray {
    /// An array whose block at each grid index is computed by the task
    /// `make(index, key)` returns; `deps` are the arrays those tasks read.
    pub(crate) fn build(
        op: &str,
        shape: Vec<usize>,
        chunks: Chunks,
        dtype: DType,
        deps: &[&DArray],
        mut make: impl FnMut(&[usize], Key) -> Task,
    ) -> DArray {
        let name = fresh_name(op);
        let grid = chunks.grid();
        let mut keys = Vec::with_capacity(chunks.nblocks());
        let mut tasks = Vec::with_capacity(chunks.nblocks());
        for idx in grid_indices(&grid) {
            let key = Key::with_shared_name(&name, idx.iter().map(|&i| i as u32));
            tasks.push(make(&idx, key.clone()));
            keys.push(key);
        }
        DArray::from_tasks(shape, chunks, dtype, keys, tasks, deps)
    }

    /// An array from explicit block keys and the tasks (possibly more than
    /// one per block: partial products, trees) that compute them.
    pub(crate) fn from_tasks(
        shape: Vec<usize>,
        chunks: Chunks,
        dtype: DType,
        keys: Vec<Key>,
        tasks: Vec<Task>,
        deps: &[&DArray],
    ) -> DArray {
        debug_assert_eq!(keys.len(), chunks.nblocks());
        let layer = Layer { tasks, deps: deps.iter().map(|d| Arc::clone(&d.layer)).collect(), _held: None };
        DArray { shape, chunks, dtype, keys: keys.into(), layer: Arc::new(layer) }
    }

    /// An array whose blocks your own tasks compute: `tasks[i]` makes the
    /// `i`-th block in row-major order over the block grid of `chunks`
    /// (its key is the block's key), and may read the blocks of `reads`,
    /// whose graphs join this one. Tasks may be pinned
    /// ([`Task::on_rank`]): the way to start an array from data that
    /// already lies on the workers (see `tessera::spmd`).
    pub fn from_block_tasks(
        shape: &[usize],
        chunks: impl IntoChunks,
        dtype: DType,
        tasks: Vec<Task>,
        reads: &[&DArray],
    ) -> Result<DArray> {
        let chunks = chunks.into_chunks(shape)?;
        if tasks.len() != chunks.nblocks() {
            return Err(LinalgError::Parameter {
                name: "tasks",
                reason: format!("{} tasks for the {} blocks of chunks {chunks}", tasks.len(), chunks.nblocks()),
            });
        }
        let keys = tasks.iter().map(|t| t.key.clone()).collect();
        Ok(DArray::from_tasks(shape.to_vec(), chunks, dtype, keys, tasks, reads))
    }

    /// An array over blocks that other arrays' graphs compute (no tasks of
    /// its own): a selection of blocks, a reinterpretation of keys.
    pub(crate) fn view(&self, shape: Vec<usize>, chunks: Chunks, keys: Vec<Key>) -> DArray {
        DArray { shape, chunks, dtype: self.dtype, keys: keys.into(), layer: Arc::clone(&self.layer) }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    pub fn chunks(&self) -> &Chunks {
        &self.chunks
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of all elements.
    pub fn nbytes(&self) -> usize {
        self.len() * self.dtype.size()
    }

    /// Number of blocks.
    pub fn nblocks(&self) -> usize {
        self.keys.len()
    }

    /// Keys of the blocks, row-major over the block grid.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Key of the block at grid index `idx`.
    pub fn key(&self, idx: &[usize]) -> &Key {
        &self.keys[linear(idx, &self.chunks.grid())]
    }

    /// The 2-D shape `(rows, cols)`, or an error naming `op`.
    pub(crate) fn dims2(&self, op: &'static str) -> Result<(usize, usize)> {
        match self.shape[..] {
            [m, n] => Ok((m, n)),
            _ => Err(LinalgError::Dimensions { op, expected: 2, shape: self.shape.clone() }),
        }
    }

    /// Every task needed for this array and `others` that is not already
    /// held by the cluster, each once.
    pub fn graph(arrays: &[&DArray]) -> Graph {
        let mut seen: FxHashSet<*const Layer> = FxHashSet::default();
        let mut stack: Vec<&Arc<Layer>> = arrays.iter().map(|a| &a.layer).collect();
        let mut layers = Vec::new();
        while let Some(l) = stack.pop() {
            if seen.insert(Arc::as_ptr(l)) {
                layers.push(l);
                stack.extend(l.deps.iter());
            }
        }
        let mut g = Graph::with_capacity(layers.iter().map(|l| l.tasks.len()).sum());
        // Dependencies first: the scheduler does not care, but fused and
        // printed graphs read better.
        for l in layers.iter().rev() {
            for t in &l.tasks {
                g.push(t.clone());
            }
        }
        g
    }

    /// Computes the array and keeps its blocks on the workers: the result
    /// reads them without recomputing anything.
    pub fn persist(&self, client: &Client) -> Result<DArray> {
        let (mut kept, _) = compute(client, &[self], &[])?;
        Ok(kept.pop().expect("one array persisted"))
    }

    /// Computes the array and gathers it into one `ndarray` on the driver.
    pub fn to_ndarray<T: Element>(&self, client: &Client) -> Result<ArrayD<T>> {
        let (_, mut got) = compute(client, &[], &[self])?;
        got.pop().expect("one array gathered").into_ndarray()
    }

    /// [`DArray::to_ndarray`] for a 2-D array.
    pub fn to_array2<T: Element>(&self, client: &Client) -> Result<ndarray::Array2<T>> {
        self.dims2("to_array2")?;
        Ok(self.to_ndarray::<T>(client)?.into_dimensionality().expect("2-D"))
    }
}

impl fmt::Debug for DArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DArray({} {:?}, chunks {}, {} blocks)", self.dtype, self.shape, self.chunks, self.keys.len())
    }
}

/// An array gathered to the driver: shape and row-major elements.
#[derive(Debug)]
pub struct Gathered {
    shape: Vec<usize>,
    data: GatheredData,
}

#[derive(Debug)]
enum GatheredData {
    F64(Vec<f64>),
    F32(Vec<f32>),
}

impl Gathered {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            GatheredData::F64(_) => DType::F64,
            GatheredData::F32(_) => DType::F32,
        }
    }

    /// The elements as an `ndarray` of `T` (f32 data widens to f64; f64
    /// data asked for as f32 is an error rather than a silent rounding).
    pub fn into_ndarray<T: Element>(self) -> Result<ArrayD<T>> {
        let v: Vec<T> = match self.data {
            GatheredData::F64(v) if T::DTYPE == DType::F64 => v.into_iter().map(T::from_f64).collect(),
            GatheredData::F32(v) if T::DTYPE == DType::F32 => {
                v.into_iter().map(|x| T::from_f64(f64::from(x))).collect()
            }
            GatheredData::F32(v) => v.into_iter().map(|x| T::from_f64(f64::from(x))).collect(),
            GatheredData::F64(_) => {
                return Err(LinalgError::DTypeMismatch { op: "into_ndarray", left: DType::F64, right: T::DTYPE })
            }
        };
        Ok(ArrayD::from_shape_vec(IxDyn(&self.shape), v).expect("gathered length matches shape"))
    }

    /// The elements widened to f64.
    pub fn to_f64(&self) -> ArrayD<f64> {
        let v = match &self.data {
            GatheredData::F64(v) => v.clone(),
            GatheredData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        };
        ArrayD::from_shape_vec(IxDyn(&self.shape), v).expect("gathered length matches shape")
    }
}

/// Computes `persist` and `gather` in one submission: the first stay on the
/// workers (returned as arrays over their held blocks), the second come to
/// the driver. Shared parts of their graphs run once.
pub fn compute(client: &Client, persist: &[&DArray], gather: &[&DArray]) -> Result<(Vec<DArray>, Vec<Gathered>)> {
    let all: Vec<&DArray> = persist.iter().chain(gather).copied().collect();
    let mut outputs: Vec<Key> = Vec::with_capacity(all.iter().map(|a| a.nblocks()).sum());
    for a in &all {
        outputs.extend(a.keys.iter().cloned());
    }
    let graph = crate::fuse::optimize(DArray::graph(&all), &outputs);
    tracing::debug!(tasks = graph.len(), outputs = outputs.len(), "submitting array graph");
    let mut held = client.persist(graph, &outputs).map_err(hint_registry)?;
    let n_persist: usize = persist.iter().map(|a| a.nblocks()).sum();
    let to_gather = held.split_off(n_persist);
    let blocks = to_gather.gather().map_err(hint_registry)?;
    drop(to_gather);
    let mut gathered = Vec::with_capacity(gather.len());
    let mut at = 0;
    for a in gather {
        gathered.push(assemble(a, &blocks[at..at + a.nblocks()])?);
        at += a.nblocks();
    }
    held.wait()?;
    let mut kept = Vec::with_capacity(persist.len());
    for a in persist.iter().rev() {
        let mine = held.split_off(held.len() - a.nblocks());
        let layer = Layer { tasks: Vec::new(), deps: Vec::new(), _held: Some(mine) };
        kept.push(DArray {
            shape: a.shape.clone(),
            chunks: a.chunks.clone(),
            dtype: a.dtype,
            keys: Arc::clone(&a.keys),
            layer: Arc::new(layer),
        });
    }
    kept.reverse();
    Ok((kept, gathered))
}

/// A cluster started without this crate's kernels says only that a kernel is
/// unknown; say how to fix it.
fn hint_registry(e: tessera_runtime::Error) -> LinalgError {
    match e {
        tessera_runtime::Error::UnknownKernel { ref kernel, .. } if kernel.starts_with("linalg.") => {
            LinalgError::Layout {
                op: "compute",
                reason: format!(
                    "{e}; start the cluster with the array kernels registered (`tessera_linalg::registry()`, \
                     or `tessera_linalg::register_kernels(&mut registry)`)"
                ),
            }
        }
        e => LinalgError::Runtime(e),
    }
}

/// Copies gathered blocks into one row-major buffer.
fn assemble(a: &DArray, blocks: &[Block]) -> Result<Gathered> {
    match a.dtype {
        DType::F64 => Ok(Gathered { shape: a.shape.clone(), data: GatheredData::F64(assemble_as::<f64>(a, blocks)?) }),
        DType::F32 => Ok(Gathered { shape: a.shape.clone(), data: GatheredData::F32(assemble_as::<f32>(a, blocks)?) }),
        other => Err(LinalgError::UnsupportedDType { op: "gather", dtype: other }),
    }
}

fn assemble_as<T: Element>(a: &DArray, blocks: &[Block]) -> Result<Vec<T>> {
    let mut out = vec![T::default(); a.len()];
    let grid = a.chunks.grid();
    let offsets: Vec<Vec<usize>> = (0..a.ndim()).map(|ax| a.chunks.offsets(ax)).collect();
    for (idx, block) in grid_indices(&grid).zip(blocks) {
        let want = a.chunks.block_shape(&idx);
        let data =
            T::slice(block).filter(|_| block.shape() == want.as_slice()).ok_or_else(|| LinalgError::BadBlock {
                key: a.keys[linear(&idx, &grid)].to_string(),
                got: format!("{} {:?}", block.dtype(), block.shape()),
                expected: format!("{} {:?}", T::DTYPE, want),
            })?;
        let start: Vec<usize> = idx.iter().enumerate().map(|(ax, &i)| offsets[ax][i]).collect();
        copy_block(data, &want, &mut out, &a.shape, &start);
    }
    Ok(out)
}

/// Copies a row-major block of shape `bshape` into a row-major array of
/// shape `shape` at `start` (1-D or 2-D; scalars are 0-D).
pub(crate) fn copy_block<T: Copy>(src: &[T], bshape: &[usize], dst: &mut [T], shape: &[usize], start: &[usize]) {
    match bshape.len() {
        0 => dst[0] = src[0],
        1 => dst[start[0]..start[0] + bshape[0]].copy_from_slice(src),
        2 => {
            let (r, c) = (bshape[0], bshape[1]);
            let width = shape[1];
            for i in 0..r {
                let d = (start[0] + i) * width + start[1];
                dst[d..d + c].copy_from_slice(&src[i * c..(i + 1) * c]);
            }
        }
        n => unreachable!("{n}-D blocks are not built by this crate"),
    }
}

/// Checks that `dtype` is a float type arrays can hold.
pub(crate) fn check_float(op: &'static str, dtype: DType) -> Result<()> {
    if is_float(dtype) {
        Ok(())
    } else {
        Err(LinalgError::UnsupportedDType { op, dtype })
    }
}

//! Linear algebra on data the ranks already hold (feature `mpi`): every rank
//! of a communicator calls the same function with its own part of the
//! matrix, and gets its own part of the result back.
//!
//! This is how ScaLAPACK, SLATE or PETSc are called from a simulation: the
//! matrix stays where it lies. Two layouts:
//!
//! * **Rows** ([`Spmd::svd`], [`Spmd::qr`], [`Spmd::randomized_svd`]): rank
//!   `r` holds rows of the matrix, ranks in order (rank 0's rows first);
//!   row counts may differ and may be zero, the column count is the same
//!   everywhere. Each rank gets its rows of `U` (or `Q`); the small factors
//!   (`S`, `Vᵀ`, `R`) come to every rank.
//! * **2-D block-cyclic** ([`Spmd::matmul`], [`BlockCyclic`]), described as
//!   ScaLAPACK's array descriptor does: the global shape, the block size, a
//!   process grid whose ranks are numbered row-major (BLACS' default), and
//!   the grid row and column holding the first block. Each rank gets its
//!   local array of the product in the same layout.
//!
//! ```no_run
//! use mpi::traits::*;
//! use tessera::linalg::ndarray::Array2;
//! let universe = mpi::initialize().unwrap();
//! let world = universe.world();
//! let rank = world.rank() as usize;
//! // This rank's slab: 1000 + rank rows of the global 64-column matrix.
//! let slab = Array2::from_shape_fn((1000 + rank, 64), |(i, j)| ((i * 64 + j + rank) % 97) as f64);
//! let f = tessera::spmd::Spmd::new(&world).svd(slab).unwrap();
//! assert_eq!(f.u.dim(), (1000 + rank, 64)); // my rows of U
//! assert_eq!(f.s.len(), 64); // all of S, on every rank
//! world.barrier(); // MPI is the application's again
//! ```
//!
//! **Where the data goes.** Every call is collective: the ranks first
//! exchange the shapes and element types of their parts (a part that does
//! not fit is an error on every rank, naming the rank at fault, before
//! anything runs), then run a Tessera cluster on the communicator
//! ([`crate::mpi::run_on`]: rank 0 schedules, every rank works). A rank's
//! part is stored by its own worker and never passes through rank 0 or a
//! file: a TSQR leaf runs where its rows are, and only the small factors
//! move. Each rank's share of the result is handed to it by the worker
//! that holds it; the small factors are broadcast from rank 0 at the end.
//!
//! **Copies and memory.** A part given as an owned array in standard
//! (row-major) layout is moved in without a copy; a view, or a
//! column-major array, is copied once into row-major order. The rows
//! layout cuts a part into one block per thread of the rank's worker
//! ([`Spmd::chunk_rows`]), each copied out of it once as its TSQR leaf
//! starts, and lets the part go when the last is taken: a part of one
//! block is handed to its leaf as it is. A block-cyclic block is copied out of the local array (its rows
//! are strided there). A rank's rows of a result are gathered into the
//! returned array, each block let go as it is copied; a block-cyclic
//! result's blocks are copied into the local array.
//!
//! Each call starts and stops its cluster (a few milliseconds on one
//! host); MPI stays usable between and after calls, on any communicator
//! (the world, a split, one without world rank 0).

use std::sync::{Arc, Mutex};

use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, Root};
use serde::{Deserialize, Serialize};
use tessera_linalg::ndarray::{self, Array1, Array2, ArrayView2};
use tessera_linalg::{self as linalg, Chunks, DArray, Element, LinalgError, RandomizedSvd, Result};
use tessera_runtime::launch::mpi::{all_gather_json, core_share, run_on};
use tessera_runtime::{codec, Block, Buffer, Client, Config, DType, Error, KernelError, Key, SchedulerWorks, Task};

/// One rank's part of a matrix: owned (moved in, no copy when row-major)
/// or borrowed (copied once).
pub enum Part<'a, T> {
    Owned(Array2<T>),
    Borrowed(ArrayView2<'a, T>),
}

impl<T> From<Array2<T>> for Part<'_, T> {
    fn from(a: Array2<T>) -> Self {
        Part::Owned(a)
    }
}

impl<'a, T> From<ArrayView2<'a, T>> for Part<'a, T> {
    fn from(a: ArrayView2<'a, T>) -> Self {
        Part::Borrowed(a)
    }
}

impl<'a, T> From<&'a Array2<T>> for Part<'a, T> {
    fn from(a: &'a Array2<T>) -> Self {
        Part::Borrowed(a.view())
    }
}

impl<T: Element> Part<'_, T> {
    fn dim(&self) -> (usize, usize) {
        match self {
            Part::Owned(a) => a.dim(),
            Part::Borrowed(a) => a.dim(),
        }
    }

    /// The part as one row-major block.
    fn into_block(self) -> Block {
        let (rows, cols) = self.dim();
        let values = match self {
            Part::Owned(a) if a.is_standard_layout() => {
                let (v, offset) = a.into_raw_vec_and_offset();
                debug_assert!(offset.unwrap_or(0) == 0, "a standard-layout array starts its buffer");
                v
            }
            Part::Owned(a) => a.iter().copied().collect(),
            Part::Borrowed(a) => a.iter().copied().collect(),
        };
        Block::new(vec![rows, cols], T::buffer(values))
    }
}

/// This rank's part of a 2-D block-cyclic matrix, as ScaLAPACK's array
/// descriptor describes it (`DESC_ = (M, N, MB, NB, RSRC, CSRC)` over a
/// `NPROW x NPCOL` grid). Rank `prow * npcol + pcol` is grid position
/// `(prow, pcol)`; ranks past the grid hold nothing (a 0 x 0 part).
pub struct BlockCyclic<'a, T> {
    /// The local array: `numroc(M, MB, prow, RSRC, NPROW)` rows by
    /// `numroc(N, NB, pcol, CSRC, NPCOL)` columns ([`numroc`]).
    pub local: Part<'a, T>,
    /// Global `(M, N)`.
    pub shape: (usize, usize),
    /// `(MB, NB)`.
    pub block: (usize, usize),
    /// `(NPROW, NPCOL)`.
    pub grid: (usize, usize),
    /// `(RSRC, CSRC)`: the grid row and column holding the first block.
    pub source: (usize, usize),
}

impl<'a, T: Element> BlockCyclic<'a, T> {
    /// A part of an `shape` matrix in `block`-sized blocks dealt over
    /// `grid`, the first block on grid position (0, 0).
    pub fn new(
        local: impl Into<Part<'a, T>>,
        shape: (usize, usize),
        block: (usize, usize),
        grid: (usize, usize),
    ) -> Self {
        BlockCyclic { local: local.into(), shape, block, grid, source: (0, 0) }
    }
}

/// ScaLAPACK's `NUMROC`: how many of `n` rows (or columns), in blocks of
/// `nb` dealt cyclically over `nprocs` processes starting at `isrc`,
/// process `iproc` holds.
pub fn numroc(n: usize, nb: usize, iproc: usize, isrc: usize, nprocs: usize) -> usize {
    let mydist = (nprocs + iproc - isrc % nprocs) % nprocs;
    let nblocks = n / nb;
    let mut num = (nblocks / nprocs) * nb;
    let extra = nblocks % nprocs;
    if mydist < extra {
        num += nb;
    } else if mydist == extra {
        num += n % nb;
    }
    num
}

/// How a block-cyclic matrix lies over the ranks (what every rank must agree on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Layout {
    shape: (usize, usize),
    block: (usize, usize),
    grid: (usize, usize),
    source: (usize, usize),
}

impl Layout {
    fn of<T>(b: &BlockCyclic<'_, T>) -> Layout {
        Layout { shape: b.shape, block: b.block, grid: b.grid, source: b.source }
    }

    /// Grid position of `rank`, if it is on the grid.
    fn position(&self, rank: usize) -> Option<(usize, usize)> {
        let (nprow, npcol) = self.grid;
        (rank < nprow * npcol).then(|| (rank / npcol, rank % npcol))
    }

    /// The local shape `rank` must hold.
    fn local_shape(&self, rank: usize) -> (usize, usize) {
        let Some((p, q)) = self.position(rank) else { return (0, 0) };
        (
            numroc(self.shape.0, self.block.0, p, self.source.0, self.grid.0),
            numroc(self.shape.1, self.block.1, q, self.source.1, self.grid.1),
        )
    }

    /// Owner rank of global block `(bi, bj)` and where it starts in the owner's local array.
    fn owner(&self, bi: usize, bj: usize) -> (u32, usize, usize) {
        let (nprow, npcol) = self.grid;
        let p = (self.source.0 + bi) % nprow;
        let q = (self.source.1 + bj) % npcol;
        ((p * npcol + q) as u32, (bi / nprow) * self.block.0, (bj / npcol) * self.block.1)
    }

    fn check(&self, what: &str, size: usize) -> Result<()> {
        let bad = |reason: String| Err(LinalgError::Parameter { name: "layout", reason: format!("{what}: {reason}") });
        let (nprow, npcol) = self.grid;
        if self.block.0 == 0 || self.block.1 == 0 {
            return bad(format!("block size {:?} has a zero", self.block));
        }
        if nprow == 0 || npcol == 0 || nprow * npcol > size {
            return bad(format!("a {nprow} x {npcol} process grid does not fit a communicator of {size} ranks"));
        }
        if self.source.0 >= nprow || self.source.1 >= npcol {
            return bad(format!("source {:?} lies outside the {nprow} x {npcol} grid", self.source));
        }
        if self.shape.0 == 0 || self.shape.1 == 0 {
            return bad(format!("the matrix is empty ({} x {})", self.shape.0, self.shape.1));
        }
        Ok(())
    }
}

/// What each rank tells the others before anything runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Meta {
    dtype: DType,
    /// Local shape of each input.
    dims: Vec<(usize, usize)>,
    /// Block-cyclic inputs: their layouts.
    layouts: Vec<Layout>,
    /// Threads of the rank's worker (rows are cut into as many blocks).
    threads: usize,
}

/// Bytes that moved between workers during a call, from the workers'
/// recorded events (recorded only when the config turns events on:
/// `WorkerSettings { events: true, .. }`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    /// Every block copied from one worker to another.
    pub bytes: u64,
    /// Of those, the ones rank 0's worker sent or received.
    pub rank0_bytes: u64,
}

/// A rank's share of an SVD: `A ≈ U diag(S) Vᵀ`.
#[derive(Clone, Debug)]
pub struct LocalSvd<T> {
    /// This rank's rows of `U` (its part's rows by `k`).
    pub u: Array2<T>,
    /// All `k` singular values, largest first (on every rank).
    pub s: Array1<T>,
    /// `Vᵀ`, `k` by `n` (on every rank).
    pub vt: Array2<T>,
    pub moved: Option<Moved>,
}

/// A rank's share of `A = Q R`.
#[derive(Clone, Debug)]
pub struct LocalQr<T> {
    /// This rank's rows of `Q`.
    pub q: Array2<T>,
    /// `R`, `n` by `n` with a non-negative diagonal (on every rank).
    pub r: Array2<T>,
    pub moved: Option<Moved>,
}

/// A rank's local array of a block-cyclic product.
#[derive(Clone, Debug)]
pub struct LocalMatmul<T> {
    /// This rank's local array of `C = A B`, laid out as `C`'s descriptor
    /// (`A`'s row blocks, `B`'s column blocks, the same grid) says.
    pub c: Array2<T>,
    pub moved: Option<Moved>,
}

/// Linear algebra on the ranks of a communicator, each holding its own
/// part of the data (module docs). Every method is collective.
pub struct Spmd<'c, C: Communicator> {
    comm: &'c C,
    config: Config,
    chunk_rows: Option<usize>,
}

impl<'c, C: Communicator> Spmd<'c, C> {
    /// On `comm`, with the default configuration.
    pub fn new(comm: &'c C) -> Self {
        Spmd::with_config(comm, Config::default())
    }

    /// On `comm`, with `config` (threads, transport, events...). Rank 0
    /// always works, as it holds data too.
    pub fn with_config(comm: &'c C, mut config: Config) -> Self {
        config.scheduler_works = SchedulerWorks::Yes;
        Spmd { comm, config, chunk_rows: None }
    }

    /// Rows per block a rank's part is cut into for the rows layout
    /// (default: one block per worker thread of the rank, so one block
    /// when it has one thread). Each block is one TSQR leaf, copied out of
    /// the part once (a part of one block is used as it is); the part is
    /// let go when its last block is taken.
    pub fn chunk_rows(mut self, rows: usize) -> Self {
        self.chunk_rows = Some(rows.max(1));
        self
    }

    /// Exact thin SVD of the matrix whose rows the ranks hold (through TSQR):
    /// `k = min(m, n)`.
    pub fn svd<'a, T: Element>(&self, part: impl Into<Part<'a, T>>) -> Result<LocalSvd<T>> {
        self.svd_with("svd", part.into(), None)
    }

    /// [`Spmd::svd`] truncated to the `k` largest singular values.
    pub fn svd_truncated<'a, T: Element>(&self, part: impl Into<Part<'a, T>>, k: usize) -> Result<LocalSvd<T>> {
        self.svd_with("svd", part.into(), Some(k))
    }

    /// The top `p.k` singular triplets by randomized range finding
    /// ([`linalg::randomized_svd`]), the rows staying on their ranks.
    pub fn randomized_svd<'a, T: Element>(
        &self,
        part: impl Into<Part<'a, T>>,
        p: &RandomizedSvd,
    ) -> Result<LocalSvd<T>> {
        let p = *p;
        let (u, mut small, moved) = self.rows("randomized_svd", part.into(), move |a| {
            let f = linalg::randomized_svd(a, &p)?;
            Ok((f.u, vec![f.s, f.vt]))
        })?;
        let vt = take2(small.pop())?;
        let s = take1(small.pop())?;
        Ok(LocalSvd { u, s, vt, moved })
    }

    /// `A = Q R` by direct TSQR: each rank gets its rows of `Q`, every rank `R`.
    pub fn qr<'a, T: Element>(&self, part: impl Into<Part<'a, T>>) -> Result<LocalQr<T>> {
        let (q, mut small, moved) = self.rows("qr", part.into(), |a| {
            let f = linalg::tsqr(a)?;
            Ok((f.q, vec![f.r]))
        })?;
        Ok(LocalQr { q, r: take2(small.pop())?, moved })
    }

    fn svd_with<T: Element>(&self, op: &'static str, part: Part<'_, T>, k: Option<usize>) -> Result<LocalSvd<T>> {
        let (u, mut small, moved) = self.rows(op, part, move |a| {
            let f = match k {
                Some(k) => linalg::svd_truncated(a, k)?,
                None => linalg::svd(a)?,
            };
            Ok((f.u, vec![f.s, f.vt]))
        })?;
        let vt = take2(small.pop())?;
        let s = take1(small.pop())?;
        Ok(LocalSvd { u, s, vt, moved })
    }

    /// `C = A B` of two block-cyclic matrices on the same grid, `A`'s
    /// column blocks as wide as `B`'s row blocks are tall; `C` comes back
    /// block-cyclic with `A`'s row blocks and `B`'s column blocks.
    pub fn matmul<T: Element>(&self, a: BlockCyclic<'_, T>, b: BlockCyclic<'_, T>) -> Result<LocalMatmul<T>> {
        let comm = self.comm.duplicate();
        let (rank, size) = (comm.rank() as usize, comm.size() as usize);
        let (la, lb) = (Layout::of(&a), Layout::of(&b));
        let meta =
            Meta { dtype: T::DTYPE, dims: vec![a.local.dim(), b.local.dim()], layouts: vec![la, lb], threads: 0 };
        let metas: Vec<Meta> = all_gather_json(&comm, &meta);
        check_agreement("matmul", &metas)?;
        la.check("matmul: A", size)?;
        lb.check("matmul: B", size)?;
        if la.grid != lb.grid {
            return Err(param(format!("A is dealt over a {:?} grid and B over {:?}; use one grid", la.grid, lb.grid)));
        }
        if la.shape.1 != lb.shape.0 || la.block.1 != lb.block.0 {
            return Err(param(format!(
                "A is {:?} in {:?} blocks and B {:?} in {:?} blocks: A's columns and their blocks must match B's rows",
                la.shape, la.block, lb.shape, lb.block
            )));
        }
        for (i, (layout, name)) in [(la, "A"), (lb, "B")].into_iter().enumerate() {
            for (r, m) in metas.iter().enumerate() {
                let want = layout.local_shape(r);
                if m.dims[i] != want {
                    return Err(LinalgError::Part {
                        rank: r,
                        reason: format!(
                            "its local part of {name} is {} x {}, but the layout ({} x {} in {} x {} blocks on a {} x {} grid) gives it {} x {}",
                            m.dims[i].0, m.dims[i].1, layout.shape.0, layout.shape.1, layout.block.0, layout.block.1,
                            layout.grid.0, layout.grid.1, want.0, want.1
                        ),
                    });
                }
            }
        }
        let lc = Layout {
            shape: (la.shape.0, lb.shape.1),
            block: (la.block.0, lb.block.1),
            grid: la.grid,
            source: (la.source.0, lb.source.1),
        };
        // How many blocks of each this rank holds (each is taken once).
        let owned = |l: &Layout| {
            let (rows, cols) = (l.shape.0.div_ceil(l.block.0), l.shape.1.div_ceil(l.block.1));
            (0..rows)
                .flat_map(|bi| (0..cols).map(move |bj| (bi, bj)))
                .filter(|&(bi, bj)| l.owner(bi, bj).0 as usize == rank)
                .count()
        };
        let inputs = vec![(a.local.into_block(), owned(&la)), (b.local.into_block(), owned(&lb))];
        let (given, small) = self.run(&comm, inputs, move |_client| {
            let am = block_cyclic_array::<T>(0, &la)?;
            let bm = block_cyclic_array::<T>(1, &lb)?;
            let c = am.matmul(&bm)?;
            let grid = c.chunks().grid();
            let gives = (0..grid[0])
                .flat_map(|bi| (0..grid[1]).map(move |bj| (bi, bj)))
                .map(|(bi, bj)| {
                    let (owner, row0, col0) = lc.owner(bi, bj);
                    (owner, Give { row0, col0 })
                })
                .collect();
            Ok((c, gives, Vec::new()))
        })?;
        let c = assemble::<T>(given, lc.local_shape(rank))?;
        Ok(LocalMatmul { c, moved: small.moved })
    }

    /// A rows-layout computation: `compute` gets the array of every rank's
    /// rows and returns the distributed result (rows aligned with the
    /// input's) and the small ones. Returns this rank's rows of the first,
    /// the small ones, and the bytes moved.
    fn rows<T, F>(
        &self,
        op: &'static str,
        part: Part<'_, T>,
        compute: F,
    ) -> Result<(Array2<T>, Vec<Small>, Option<Moved>)>
    where
        T: Element,
        F: FnOnce(&DArray) -> Result<(DArray, Vec<DArray>)> + Send,
    {
        let comm = self.comm.duplicate();
        let rank = comm.rank() as usize;
        let local_size = comm.split_shared(rank as i32).size() as usize;
        let threads = self.config.worker.threads.unwrap_or_else(|| core_share(local_size));
        let meta = Meta { dtype: T::DTYPE, dims: vec![part.dim()], layouts: Vec::new(), threads };
        let metas: Vec<Meta> = all_gather_json(&comm, &meta);
        check_agreement(op, &metas)?;
        let rows: Vec<usize> = metas.iter().map(|m| m.dims[0].0).collect();
        let n = metas[0].dims[0].1;
        let m: usize = rows.iter().sum();
        if m == 0 || n == 0 {
            return Err(LinalgError::Parameter {
                name: "part",
                reason: format!("{op}: the ranks hold an empty matrix ({m} rows, {n} columns)"),
            });
        }
        // Every rank cuts every rank's rows alike: (owner, first row in its
        // part, rows) of each block, in order.
        let blocks: Vec<(u32, usize, usize)> = (0..rows.len())
            .flat_map(|r| {
                let per = self.chunk_rows.unwrap_or_else(|| rows[r].div_ceil(metas[r].threads.max(1))).max(1);
                let rows = rows[r];
                (0..rows.div_ceil(per)).map(move |i| (r as u32, i * per, per.min(rows - i * per)))
            })
            .collect();
        let mine = blocks.iter().filter(|b| b.0 as usize == rank).count();
        let (given, small) = self.run(&comm, vec![(part.into_block(), mine)], |_client| {
            // Each block pinned to its owner.
            let chunks = Chunks::explicit(&[m, n], vec![blocks.iter().map(|b| b.2).collect(), vec![n]])?;
            let name = linalg::fresh_name("spmd.rows");
            let tasks = blocks
                .iter()
                .enumerate()
                .map(|(i, &(owner, row0, rows))| {
                    take_task(&name, [i as u32, 0], owner, Take { slot: 0, row0, rows, col0: 0, cols: n })
                })
                .collect();
            let a = DArray::from_block_tasks(&[m, n], chunks, T::DTYPE, tasks, &[])?;
            let (dist, small) = compute(&a)?;
            if dist.chunks().axis(0) != a.chunks().axis(0) || dist.chunks().axis(1).len() != 1 {
                return Err(LinalgError::Layout {
                    op,
                    reason: format!(
                        "internal: the result's chunks {} do not follow the rows {}",
                        dist.chunks(),
                        a.chunks()
                    ),
                });
            }
            let gives = blocks.iter().map(|&(owner, row0, _)| (owner, Give { row0, col0: 0 })).collect();
            Ok((dist, gives, small))
        })?;
        let cols = small.dist_cols;
        let mine = assemble::<T>(given, (rows[rank], cols))?;
        Ok((mine, small.arrays, small.moved))
    }

    /// Runs a cluster on `comm` with this rank's `inputs` in its worker's
    /// reach; rank 0 runs `build` (the distributed result, where each of
    /// its blocks goes, the small results), the blocks are handed to their
    /// ranks and the small results broadcast. Every rank returns the same
    /// success or an error.
    fn run<B>(
        &self,
        comm: &SimpleCommunicator,
        inputs: Vec<(Block, usize)>,
        build: B,
    ) -> Result<(Vec<(Give, Block)>, Outcome)>
    where
        B: FnOnce(&Client) -> Result<(DArray, Vec<(u32, Give)>, Vec<DArray>)> + Send,
    {
        let (inputs, takes_left) = inputs.into_iter().map(|(b, n)| (Some(b), n)).unzip();
        let local = Arc::new(Mutex::new(Local { inputs, takes_left, given: Vec::new() }));
        let mut config = self.config.clone();
        register(&mut config.registry, &local);
        let events = config.worker.events;
        let outcome = run_on(comm, config, |client| -> Result<Outcome> {
            let (dist, gives, small) = build(client)?;
            let dist_cols = dist.shape()[1];
            let name = linalg::fresh_name("spmd.give");
            let grid = dist.chunks().grid();
            let tasks: Vec<Task> = gives
                .iter()
                .enumerate()
                .map(|(i, &(owner, give))| {
                    let (bi, bj) = (i / grid[1], i % grid[1]);
                    Task::new(Key::with_shared_name(&name, [i as u32]), "spmd.give")
                        .param(&give)
                        .inputs([dist.key(&[bi, bj]).clone()])
                        .on_rank(owner)
                })
                .collect();
            let count = tasks.len();
            let given = DArray::from_block_tasks(
                &[count],
                Chunks::explicit(&[count], vec![vec![1; count]])?,
                DType::F64,
                tasks,
                &[&dist],
            )?;
            let mut wanted: Vec<&DArray> = small.iter().collect();
            wanted.push(&given);
            let (_, mut got) = linalg::compute(client, &[], &wanted)?;
            let delivered = got.pop().expect("the hand-off was gathered").to_f64();
            let expected: usize = dist.chunks().axis(0).iter().map(|r| r * grid[1]).sum();
            let total: f64 = delivered.iter().sum();
            if total as usize != expected {
                return Err(LinalgError::Runtime(Error::Config(format!(
                    "internal: {total} result rows handed to their ranks, expected {expected}"
                ))));
            }
            let arrays = got
                .into_iter()
                .map(|g| {
                    let a = g.to_f64();
                    Small { shape: a.shape().to_vec(), values: a.into_raw_vec_and_offset().0 }
                })
                .collect();
            let moved = if events { Some(moved(client)?) } else { None };
            Ok(Outcome { dist_cols, arrays, moved })
        });
        // Every rank learns whether every rank succeeded (a worker rank that
        // failed while rank 0 did not must not leave rank 0 in the broadcast).
        let status: Vec<Option<String>> = all_gather_json(comm, &outcome.as_ref().err().map(|e| e.to_string()));
        let outcome = outcome?;
        if let Some((r, why)) = status.iter().enumerate().find_map(|(r, s)| s.as_ref().map(|s| (r, s))) {
            return Err(LinalgError::Runtime(Error::DriverFailed { reason: format!("rank {r}: {why}") }));
        }
        let small = broadcast(comm, outcome)?;
        let given = std::mem::take(&mut local.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).given);
        Ok((given, small))
    }
}

/// A small result, as broadcast to every rank.
#[derive(Debug, Serialize, Deserialize)]
struct Small {
    shape: Vec<usize>,
    values: Vec<f64>,
}

/// What rank 0 learned, broadcast to every rank.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Outcome {
    /// Columns of the distributed result.
    dist_cols: usize,
    arrays: Vec<Small>,
    moved: Option<Moved>,
}

/// Rank 0's `outcome` on every rank (collective).
fn broadcast<D: Communicator>(comm: &D, outcome: Option<Outcome>) -> Result<Outcome> {
    let root = comm.process_at_rank(0);
    // The runtime's codec: exact floats (NaN included), sizes checked on decoding.
    const LIMIT: u64 = 1 << 40;
    let mut bytes = match &outcome {
        Some(o) => codec::encode(o, LIMIT).map_err(|e| Error::Mpi { rank: 0, message: format!("{e}") })?,
        None => Vec::new(),
    };
    let mut len = bytes.len() as u64;
    root.broadcast_into(&mut len);
    bytes.resize(len as usize, 0);
    root.broadcast_into(&mut bytes[..]);
    match outcome {
        Some(o) => Ok(o),
        None => codec::decode(&bytes, LIMIT).map_err(|e| {
            LinalgError::Runtime(Error::Mpi {
                rank: comm.rank() as u32,
                message: format!("bad broadcast of the results: {e}"),
            })
        }),
    }
}

/// Block `i` of a rank's part: which input, and the rectangle of it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Take {
    slot: usize,
    row0: usize,
    rows: usize,
    col0: usize,
    cols: usize,
}

/// Where a result block goes in its rank's local array.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Give {
    row0: usize,
    col0: usize,
}

/// One rank's inputs, and the result blocks handed to it.
struct Local {
    /// Each input, until all its blocks were taken (then the store holds
    /// what is still needed, and the part's memory goes with the last).
    inputs: Vec<Option<Block>>,
    takes_left: Vec<usize>,
    given: Vec<(Give, Block)>,
}

/// `spmd.take` reads this rank's inputs, `spmd.give` keeps the blocks
/// handed to it: each rank's registry has its own, on its own data (the
/// kernel names, all that ranks compare, are the same everywhere).
fn register(registry: &mut tessera_runtime::Registry, local: &Arc<Mutex<Local>>) {
    let mine = Arc::clone(local);
    registry.register("spmd.take", move |_, t: Take, _| {
        let mut local = mine.lock().map_err(|_| KernelError::msg("spmd.take: a kernel panicked"))?;
        let Some(Some(src)) = local.inputs.get(t.slot) else {
            return Err(KernelError::msg(format!("spmd.take: input {} of this rank was handed over already", t.slot)));
        };
        let src = src.clone();
        let (rows, cols) = (src.shape()[0], src.shape()[1]);
        if t.row0 + t.rows > rows || t.col0 + t.cols > cols {
            return Err(KernelError::msg(format!(
                "spmd.take: rows {}..{} and columns {}..{} lie outside this rank's {rows} x {cols} part",
                t.row0,
                t.row0 + t.rows,
                t.col0,
                t.col0 + t.cols
            )));
        }
        let block = if t.rows == rows && t.cols == cols {
            src
        } else {
            let buffer = match src.buffer() {
                Buffer::F64(v) => Buffer::F64(rectangle(v, cols, t)),
                Buffer::F32(v) => Buffer::F32(rectangle(v, cols, t)),
                _ => return Err(KernelError::msg("spmd.take: parts are f64 or f32")),
            };
            Block::new(vec![t.rows, t.cols], buffer)
        };
        local.takes_left[t.slot] = local.takes_left[t.slot].saturating_sub(1);
        if local.takes_left[t.slot] == 0 {
            local.inputs[t.slot] = None;
        }
        Ok(block)
    });
    let mine = Arc::clone(local);
    registry.register("spmd.give", move |_, g: Give, inputs| {
        let [block] = inputs else { return Err(KernelError::msg("spmd.give takes one block")) };
        let rows = block.shape().first().copied().unwrap_or(0);
        mine.lock().map_err(|_| KernelError::msg("spmd.give: a kernel panicked"))?.given.push((g, block.clone()));
        Ok(Block::new(vec![1], Buffer::F64(vec![rows as f64])))
    });
}

/// Rows `t.row0..` and columns `t.col0..` of a row-major matrix `cols` wide.
fn rectangle<T: Copy>(v: &[T], cols: usize, t: Take) -> Vec<T> {
    let mut out = Vec::with_capacity(t.rows * t.cols);
    for r in t.row0..t.row0 + t.rows {
        out.extend_from_slice(&v[r * cols + t.col0..r * cols + t.col0 + t.cols]);
    }
    out
}

fn take_task(name: &Arc<str>, idx: [u32; 2], owner: u32, take: Take) -> Task {
    Task::new(Key::with_shared_name(name, idx), "spmd.take").param(&take).on_rank(owner)
}

/// The block-cyclic input `slot` as an array of its global blocks, each
/// read on its owner.
fn block_cyclic_array<T: Element>(slot: usize, l: &Layout) -> Result<DArray> {
    let chunks = Chunks::regular(&[l.shape.0, l.shape.1], &[l.block.0, l.block.1])?;
    let grid = chunks.grid();
    let name = linalg::fresh_name("spmd.block");
    let mut tasks = Vec::with_capacity(chunks.nblocks());
    for bi in 0..grid[0] {
        for bj in 0..grid[1] {
            let (owner, row0, col0) = l.owner(bi, bj);
            let [rows, cols] = chunks.block_shape(&[bi, bj])[..] else { unreachable!("2-D") };
            tasks.push(take_task(&name, [bi as u32, bj as u32], owner, Take { slot, row0, rows, col0, cols }));
        }
    }
    DArray::from_block_tasks(&[l.shape.0, l.shape.1], chunks, T::DTYPE, tasks, &[])
}

/// This rank's local array from the blocks handed to it: rows one below
/// the other (the rows layout) are appended in order, each block let go as
/// soon as it is copied (a single one is taken without a copy when the
/// cluster has let go of it); block-cyclic blocks are copied into place.
fn assemble<T: Element>(mut given: Vec<(Give, Block)>, shape: (usize, usize)) -> Result<Array2<T>> {
    let bad = |b: &Block, why: &str| LinalgError::BadBlock {
        key: "a result block handed to this rank".into(),
        got: format!("{} {:?}", b.dtype(), b.shape()),
        expected: format!("{} {why}", T::DTYPE),
    };
    let dims = |b: &Block| match b.shape() {
        &[r, c] if b.dtype() == T::DTYPE => Ok((r, c)),
        _ => Err(bad(b, "2-D")),
    };
    given.sort_by_key(|(g, _)| (g.row0, g.col0));
    let mut at = 0;
    for (g, b) in &given {
        let (r, c) = dims(b)?;
        if g.row0 + r > shape.0 || g.col0 + c > shape.1 {
            return Err(bad(b, &format!("at ({}, {}) within {shape:?}", g.row0, g.col0)));
        }
        if g.col0 == 0 && g.row0 == at && c == shape.1 {
            at += r;
        }
    }
    if at == shape.0 {
        if given.len() == 1 {
            let (_, b) = given.pop().expect("one block");
            match b.into_buffer().map(T::from_buffer) {
                Ok(Ok(v)) => return Ok(Array2::from_shape_vec(shape, v).expect("checked: the rows add up")),
                Ok(Err(_)) => unreachable!("checked: a block of T"),
                Err(shared) => given.push((Give { row0: 0, col0: 0 }, shared)),
            }
        }
        let mut v = Vec::with_capacity(shape.0 * shape.1);
        for (_, b) in given {
            v.extend_from_slice(T::slice(&b).expect("checked: a block of T"));
        }
        return Ok(Array2::from_shape_vec(shape, v).expect("checked: the rows add up"));
    }
    let mut out = Array2::<T>::zeros(shape);
    for (g, b) in given {
        let (r, c) = dims(&b)?;
        let src = ArrayView2::from_shape((r, c), T::slice(&b).expect("checked: a block of T"))
            .expect("a block holds its shape");
        out.slice_mut(ndarray::s![g.row0..g.row0 + r, g.col0..g.col0 + c]).assign(&src);
    }
    Ok(out)
}

/// Every rank gives the same element type and (rows layout) column count,
/// (block-cyclic) layouts: else the rank at fault is named, on every rank.
fn check_agreement(op: &str, metas: &[Meta]) -> Result<()> {
    let odd = |values: Vec<String>| -> Option<(usize, String, String)> {
        // The value most ranks give is right (ties: the lowest rank's).
        let mut best = &values[0];
        let mut best_n = 0;
        for v in &values {
            let n = values.iter().filter(|x| *x == v).count();
            if n > best_n {
                best = v;
                best_n = n;
            }
        }
        values.iter().position(|v| v != best).map(|r| (r, values[r].clone(), best.clone()))
    };
    if let Some((rank, got, want)) = odd(metas.iter().map(|m| m.dtype.to_string()).collect()) {
        return Err(LinalgError::Part { rank, reason: format!("{op}: its part holds {got}, the other ranks' {want}") });
    }
    if metas[0].layouts.is_empty() {
        if let Some((rank, got, want)) = odd(metas.iter().map(|m| m.dims[0].1.to_string()).collect()) {
            return Err(LinalgError::Part {
                rank,
                reason: format!("{op}: its part has {got} columns, the other ranks' {want}"),
            });
        }
    } else if let Some((rank, got, want)) = odd(metas.iter().map(|m| format!("{:?}", m.layouts)).collect()) {
        return Err(LinalgError::Part {
            rank,
            reason: format!("{op}: it describes the matrices as {got}, the other ranks as {want}"),
        });
    }
    Ok(())
}

/// Bytes moved between workers, from the recorded events.
fn moved(client: &Client) -> Result<Moved> {
    let log = client.events()?;
    let to_or_from_0 = log.workers.iter().flat_map(|w| w.transfers.iter().filter(move |t| w.rank == 0 || t.from == 0));
    Ok(Moved { bytes: log.moved().0, rank0_bytes: to_or_from_0.map(|t| t.bytes).sum() })
}

fn param(reason: String) -> LinalgError {
    LinalgError::Parameter { name: "matmul", reason }
}

/// The next small result, as a 1-D array.
fn take1<T: Element>(s: Option<Small>) -> Result<Array1<T>> {
    Ok(take2::<T>(s)?.into_iter().collect())
}

/// The next small result, as a 2-D array (a 1-D one as a row).
fn take2<T: Element>(s: Option<Small>) -> Result<Array2<T>> {
    let bad =
        |got: String| LinalgError::BadBlock { key: "a broadcast factor".into(), got, expected: "a factor".into() };
    let s = s.ok_or_else(|| bad("nothing".into()))?;
    let dims = match s.shape[..] {
        [n] => (1, n),
        [r, c] => (r, c),
        _ => return Err(bad(format!("shape {:?}", s.shape))),
    };
    let got = format!("shape {:?} with {} values", s.shape, s.values.len());
    Array2::from_shape_vec(dims, s.values.into_iter().map(T::from_f64).collect()).map_err(|_| bad(got))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numroc_counts_as_scalapack_does() {
        // 10 rows in blocks of 3 over 2 processes: blocks 0, 2 (3 + 3) and 1, 3 (3 + 1).
        assert_eq!((numroc(10, 3, 0, 0, 2), numroc(10, 3, 1, 0, 2)), (6, 4));
        // The first block on process 1.
        assert_eq!((numroc(10, 3, 0, 1, 2), numroc(10, 3, 1, 1, 2)), (4, 6));
        assert_eq!((0..3).map(|p| numroc(7, 7, p, 0, 3)).collect::<Vec<_>>(), vec![7, 0, 0]);
        assert_eq!(numroc(0, 4, 0, 0, 2), 0);
    }

    #[test]
    fn the_blocks_each_rank_owns_tile_its_local_array_exactly() {
        for (shape, block, grid, source) in
            [((37, 23), (5, 4), (2, 2), (0, 0)), ((37, 23), (5, 4), (2, 3), (1, 2)), ((9, 9), (10, 2), (3, 1), (2, 0))]
        {
            let l = Layout { shape, block, grid, source };
            let chunks = Chunks::regular(&[shape.0, shape.1], &[block.0, block.1]).unwrap();
            let g = chunks.grid();
            let size = grid.0 * grid.1 + 1; // one rank off the grid
            let mut covered: Vec<Array2<u8>> = (0..size).map(|r| Array2::zeros(l.local_shape(r))).collect();
            for bi in 0..g[0] {
                for bj in 0..g[1] {
                    let (owner, r0, c0) = l.owner(bi, bj);
                    let [h, w] = chunks.block_shape(&[bi, bj])[..] else { unreachable!() };
                    let mut area = covered[owner as usize].slice_mut(ndarray::s![r0..r0 + h, c0..c0 + w]);
                    area.mapv_inplace(|x| x + 1);
                }
            }
            for (r, c) in covered.iter().enumerate() {
                assert!(c.iter().all(|&x| x == 1), "{shape:?} {block:?} {grid:?} {source:?}: rank {r} {c:?}");
            }
            assert_eq!(covered[size - 1].dim(), (0, 0));
        }
    }

    #[test]
    fn a_ranks_result_is_assembled_from_its_blocks() {
        let block = |r: usize, v: f64| Block::new(vec![r, 2], Buffer::F64(vec![v; r * 2]));
        let at = |row0, col0| Give { row0, col0 };
        // Rows in two blocks, handed over in any order.
        let a = assemble::<f64>(vec![(at(2, 0), block(1, 2.0)), (at(0, 0), block(2, 1.0))], (3, 2)).unwrap();
        assert_eq!(a.column(0).to_vec(), vec![1.0, 1.0, 2.0]);
        // One block still held elsewhere: copied, not taken.
        let shared = block(3, 5.0);
        let a = assemble::<f64>(vec![(at(0, 0), shared.clone())], (3, 2)).unwrap();
        assert_eq!((a.sum(), shared.as_f64().map(|v| v.len())), (30.0, Some(6)));
        // Block-cyclic blocks, copied into place.
        let a = assemble::<f64>(vec![(at(0, 2), block(2, 3.0)), (at(0, 0), block(2, 4.0))], (2, 4)).unwrap();
        assert_eq!(a.row(1).to_vec(), vec![4.0, 4.0, 3.0, 3.0]);
        // Another element type, or a block outside the array: an error, not a panic.
        let f32s = Block::new(vec![3, 2], Buffer::F32(vec![0.0; 6]));
        assert!(matches!(assemble::<f64>(vec![(at(0, 0), f32s)], (3, 2)), Err(LinalgError::BadBlock { .. })));
        assert!(matches!(assemble::<f64>(vec![(at(2, 0), block(2, 1.0))], (3, 2)), Err(LinalgError::BadBlock { .. })));
    }

    #[test]
    fn the_odd_rank_out_is_named() {
        let meta = |dtype, cols| Meta { dtype, dims: vec![(10, cols)], layouts: Vec::new(), threads: 1 };
        let metas = vec![meta(DType::F64, 8), meta(DType::F64, 8), meta(DType::F64, 7)];
        match check_agreement("svd", &metas) {
            Err(LinalgError::Part { rank: 2, reason }) => assert!(reason.contains("7 columns, the other ranks' 8")),
            other => panic!("{other:?}"),
        }
        let metas = vec![meta(DType::F32, 8), meta(DType::F64, 8), meta(DType::F64, 8)];
        assert!(matches!(check_agreement("svd", &metas), Err(LinalgError::Part { rank: 0, .. })));
        // Two ranks: the second is the odd one.
        let metas = vec![meta(DType::F64, 8), meta(DType::F64, 9)];
        assert!(matches!(check_agreement("svd", &metas), Err(LinalgError::Part { rank: 1, .. })));
        assert!(check_agreement("svd", &[meta(DType::F64, 8)]).is_ok());
    }
}

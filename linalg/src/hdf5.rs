//! HDF5 input and output (feature `hdf5`, hdf5-metno over the system
//! libhdf5): workers read and write their own blocks; nothing is funnelled
//! through the driver.
//!
//! **Reading.** The driver opens the file once to learn the dataset's
//! shape, type and chunking ([`Hdf5Dataset::open`]), checks them, and
//! builds one read task per block: the worker computing the block reads its
//! hyperslab. By default blocks are whole multiples of the file's chunks
//! (about [`TARGET_BLOCK_BYTES`] each), so no file chunk is read twice.
//!
//! **Writing.** [`Hdf5Writer`] creates a hidden temporary file next to the
//! destination, with the datasets laid out; workers write each block as it
//! is computed (opening the file under an exclusive lock, so that separate
//! processes never write it at once, as serial HDF5 requires), and
//! [`Hdf5Writer::commit`] renames it into place. A file at the destination
//! is therefore complete: a failed or interrupted write leaves no file
//! claiming to be the result (the temporary is removed when the writer is
//! dropped without commit). The datasets' chunks are all allocated when
//! they are created, so a block's write touches only its own bytes: a
//! worker killed while writing leaves a file that the write run again
//! (writes are idempotent) completes, which is how an elastic cluster
//! recovers from it.
//!
//! ```no_run
//! use tessera_linalg::hdf5::{Hdf5Dataset, Hdf5Writer};
//! # fn f(client: &tessera_runtime::Client) -> tessera_linalg::Result<()> {
//! let a = Hdf5Dataset::open("data.h5", "/X")?.read(None)?;
//! let mut out = Hdf5Writer::create("out.h5")?;
//! out.store(client, &[("/Y", &(&a * 2.0))], &[])?;
//! out.commit()?;
//! # Ok(()) }
//! ```
//!
//! Files are assumed to be visible from every rank (a shared file system),
//! as for any MPI job reading its input.

use std::fs::File;
use std::path::{Path, PathBuf};

use hdf5::dataset::{AllocTime, FillTime};
use ndarray::s;
use serde::{Deserialize, Serialize};
use tessera_runtime::{Block, Client, DType, KernelError, Key, Registry, Task};

use crate::array::{compute, fresh_name, DArray, Gathered, IntoChunks};
use crate::chunks::Chunks;
use crate::dense::block;
use crate::dispatch;
use crate::element::Element;
use crate::error::{LinalgError, Result};
use crate::kernels::unsupported;

/// The hdf5-metno crate, for files this module does not write itself.
pub use ::hdf5 as h5lib;

/// Bytes a block read from a file aims for by default.
pub const TARGET_BLOCK_BYTES: usize = 64 << 20;

/// `FILE:/DATASET` split into its parts (the last `:` separates them).
pub fn parse_spec(spec: &str) -> Result<(PathBuf, String)> {
    match spec.rsplit_once(':') {
        Some((file, dataset)) if !file.is_empty() && dataset.starts_with('/') && dataset.len() > 1 => {
            Ok((PathBuf::from(file), dataset.to_owned()))
        }
        _ => Err(LinalgError::Parameter {
            name: "dataset",
            reason: format!("`{spec}` is not FILE:/DATASET (for example data.h5:/X)"),
        }),
    }
}

fn h5err(file: &Path, dataset: Option<&str>, reason: impl std::fmt::Display) -> LinalgError {
    LinalgError::Hdf5 {
        file: file.display().to_string(),
        dataset: dataset.map(str::to_owned),
        reason: reason.to_string(),
    }
}

/// A dataset in a file, as the driver found it.
#[derive(Clone, Debug)]
pub struct Hdf5Dataset {
    pub file: PathBuf,
    pub dataset: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// The file's chunk shape (None: contiguous).
    pub file_chunks: Option<Vec<usize>>,
}

impl Hdf5Dataset {
    /// Opens `file` and checks that `dataset` is a 1-D or 2-D array of f32
    /// or f64.
    pub fn open(file: impl AsRef<Path>, dataset: &str) -> Result<Hdf5Dataset> {
        let file = file.as_ref();
        if !file.exists() {
            return Err(h5err(file, None, "no such file"));
        }
        let f = hdf5::File::open(file).map_err(|e| h5err(file, None, format!("not a readable HDF5 file ({e})")))?;
        let ds = f.dataset(dataset).map_err(|_| h5err(file, Some(dataset), "no such dataset in the file"))?;
        let shape = ds.shape();
        let desc = ds.dtype().and_then(|t| t.to_descriptor()).map_err(|e| h5err(file, Some(dataset), e))?;
        let dtype = match desc {
            hdf5::types::TypeDescriptor::Float(hdf5::types::FloatSize::U8) => DType::F64,
            hdf5::types::TypeDescriptor::Float(hdf5::types::FloatSize::U4) => DType::F32,
            other => {
                return Err(h5err(
                    file,
                    Some(dataset),
                    format!("holds {other}; only floating-point (f32, f64) datasets can be read"),
                ))
            }
        };
        if shape.is_empty() || shape.len() > 2 {
            return Err(h5err(file, Some(dataset), format!("has shape {shape:?}; arrays are 1-D or 2-D")));
        }
        Ok(Hdf5Dataset { file: file.to_owned(), dataset: dataset.to_owned(), shape, dtype, file_chunks: ds.chunk() })
    }

    /// Blocks of about [`TARGET_BLOCK_BYTES`], whole rows when they fit,
    /// each a whole number of the file's chunks. An empty dataset is one
    /// empty block, as [`Chunks::regular`] makes it.
    pub fn default_chunks(&self) -> Chunks {
        let elem = self.dtype.size();
        // A contiguous dataset reads best in whole rows: its "chunks" are
        // rows (a 1-D one, one row), at least one element long.
        let fc = self.file_chunks.clone().unwrap_or_else(|| {
            let mut c = vec![1; self.shape.len()];
            *c.last_mut().expect("1-D or 2-D") = (*self.shape.last().expect("1-D or 2-D")).max(1);
            c
        });
        let size: Vec<usize> = match (&self.shape[..], &fc[..]) {
            ([_], [c]) => vec![(TARGET_BLOCK_BYTES / elem / c).max(1) * c],
            ([_, n], [cr, cc]) => {
                let cols = if n * cr * elem <= TARGET_BLOCK_BYTES {
                    *n
                } else {
                    ((TARGET_BLOCK_BYTES / (cr * elem) / cc).max(1) * cc).min(*n)
                };
                let rows = (TARGET_BLOCK_BYTES / (cols * elem).max(1) / cr).max(1) * cr;
                vec![rows, cols]
            }
            _ => unreachable!("checked in open"),
        };
        Chunks::regular(&self.shape, &size).expect("sizes fit the shape")
    }

    /// An array whose blocks the workers read from the file; `None` chunks
    /// means [`Hdf5Dataset::default_chunks`].
    pub fn read(&self, chunks: Option<Chunks>) -> Result<DArray> {
        let chunks = match chunks {
            Some(c) => c.into_chunks(&self.shape)?,
            None => self.default_chunks(),
        };
        let offsets: Vec<Vec<usize>> = (0..self.shape.len()).map(|a| chunks.offsets(a)).collect();
        Ok(DArray::build("h5read", self.shape.clone(), chunks.clone(), self.dtype, &[], |idx, key| {
            let p = ReadParams {
                file: self.file.clone(),
                dataset: self.dataset.clone(),
                start: idx.iter().enumerate().map(|(a, &i)| offsets[a][i]).collect(),
                shape: chunks.block_shape(idx),
                dtype: self.dtype,
            };
            Task::new(key, "linalg.h5_read").param(&p)
        }))
    }
}

/// Reads `FILE:/DATASET` with the given block sizes per axis (0: whole
/// axis), or the defaults.
pub fn from_hdf5(spec: &str, chunks: Option<&[usize]>) -> Result<DArray> {
    let (file, dataset) = parse_spec(spec)?;
    let ds = Hdf5Dataset::open(&file, &dataset)?;
    let chunks = chunks.map(|c| c.into_chunks(&ds.shape)).transpose()?;
    ds.read(chunks)
}

/// Writes arrays into a new HDF5 file that appears at its path only when
/// complete.
pub struct Hdf5Writer {
    path: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

impl Hdf5Writer {
    /// Starts a file to be published at `path`: checks that its directory is
    /// writable now, before any work is done.
    pub fn create(path: impl AsRef<Path>) -> Result<Hdf5Writer> {
        let path = path.as_ref().to_owned();
        let name = path.file_name().ok_or_else(|| h5err(&path, None, "not a file path"))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        if path.is_dir() {
            return Err(h5err(&path, None, "is a directory"));
        }
        let tmp = dir.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        hdf5::File::create(&tmp).map_err(|e| {
            let why = if !dir.is_dir() {
                "its directory does not exist".to_owned()
            } else {
                format!("cannot write there ({e})")
            };
            h5err(&path, None, why)
        })?;
        // The writers' lock lives as long as the unfinished file: a write
        // run again after the file was published (a recomputed block's)
        // finds neither and fails, leaving nothing behind.
        let w = Hdf5Writer { path, tmp, committed: false };
        File::create(lock_path(&w.tmp)).map_err(|e| h5err(&w.path, None, format!("cannot write there ({e})")))?;
        Ok(w)
    }

    /// Where the file will appear.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Computes `datasets` and writes each block from the worker holding it,
    /// in one graph with `gather`, whose arrays come back to the driver.
    /// Blocks are released as soon as they are written.
    pub fn store(
        &mut self,
        client: &Client,
        datasets: &[(&str, &DArray)],
        gather: &[&DArray],
    ) -> Result<Vec<Gathered>> {
        let mut markers = Vec::with_capacity(datasets.len());
        for (name, a) in datasets {
            self.create_dataset(name, a)?;
            markers.push(self.write_array(name, a));
        }
        // The markers (empty blocks) are kept until every write is done,
        // then released.
        let (_, got) = compute(client, &markers.iter().collect::<Vec<_>>(), gather)?;
        Ok(got)
    }

    /// Renames the finished file into place (replacing what was there).
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| h5err(&self.path, None, format!("cannot move into place: {e}")))?;
        let _ = std::fs::remove_file(lock_path(&self.tmp));
        self.committed = true;
        Ok(())
    }

    fn create_dataset(&self, name: &str, a: &DArray) -> Result<()> {
        let f = hdf5::File::open_rw(&self.tmp).map_err(|e| h5err(&self.path, None, e))?;
        // File chunks: the array's blocks, cut to at most ~4 MiB.
        let elem = a.dtype().size();
        let mut chunk: Vec<usize> = (0..a.ndim()).map(|ax| a.chunks().axis(ax)[0].max(1)).collect();
        let row_bytes: usize = chunk[1..].iter().product::<usize>() * elem;
        chunk[0] = chunk[0].min(((4 << 20) / row_bytes.max(1)).max(1));
        let make = |b: hdf5::DatasetBuilder| {
            // Every chunk allocated now, none filled: a block's write then
            // touches only its own bytes, never the file's metadata, so a
            // writer killed midway leaves a file that the task run again
            // (writes are idempotent) completes.
            let b = if a.is_empty() {
                b
            } else {
                b.chunk(chunk.clone()).alloc_time(Some(AllocTime::Early)).fill_time(FillTime::Never)
            };
            match a.dtype() {
                DType::F32 => b.empty::<f32>().shape(a.shape()).create(name),
                _ => b.empty::<f64>().shape(a.shape()).create(name),
            }
        };
        make(f.new_dataset_builder())
            .map_err(|e| h5err(&self.path, Some(name), format!("cannot create the dataset ({e})")))?;
        Ok(())
    }

    /// A 1-D array of empty markers, one per block, whose tasks write `a`.
    fn write_array(&self, name: &str, a: &DArray) -> DArray {
        let tag = fresh_name("h5write");
        let offsets: Vec<Vec<usize>> = (0..a.ndim()).map(|ax| a.chunks().offsets(ax)).collect();
        let grid = a.chunks().grid();
        let mut keys = Vec::with_capacity(a.nblocks());
        let mut tasks = Vec::with_capacity(a.nblocks());
        for (i, idx) in crate::chunks::grid_indices(&grid).enumerate() {
            let key = Key::with_shared_name(&tag, [i as u32]);
            let p = WriteParams {
                file: self.tmp.clone(),
                dataset: name.to_owned(),
                start: idx.iter().enumerate().map(|(ax, &b)| offsets[ax][b]).collect(),
            };
            tasks.push(Task::new(key.clone(), "linalg.h5_write").param(&p).inputs([a.key(&idx).clone()]));
            keys.push(key);
        }
        let n = keys.len();
        DArray::from_tasks(vec![0; 1], Chunks::from_axes(vec![vec![0; n]]), DType::U8, keys, tasks, &[a])
    }
}

impl Drop for Hdf5Writer {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
            let _ = std::fs::remove_file(lock_path(&self.tmp));
        }
    }
}

impl DArray {
    /// Writes the array to `dataset` of a new file at `path` (replacing any
    /// file there once complete).
    pub fn to_hdf5(&self, client: &Client, path: impl AsRef<Path>, dataset: &str) -> Result<()> {
        let mut w = Hdf5Writer::create(path)?;
        w.store(client, &[(dataset, self)], &[])?;
        w.commit()
    }
}

fn lock_path(tmp: &Path) -> PathBuf {
    let mut p = tmp.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

// ---- kernels -------------------------------------------------------------------

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ReadParams {
    file: PathBuf,
    dataset: String,
    start: Vec<usize>,
    shape: Vec<usize>,
    dtype: DType,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct WriteParams {
    file: PathBuf,
    dataset: String,
    start: Vec<usize>,
}

pub(crate) fn register_kernels(r: &mut Registry) {
    r.register("linalg.h5_read", |_, p: ReadParams, _: &[Block]| {
        dispatch!(p.dtype, T => read::<T>(&p), _ => Err(unsupported("h5_read", p.dtype)))
    });
    r.register("linalg.h5_write", |_, p: WriteParams, inputs: &[Block]| {
        let x = inputs.first().ok_or_else(|| KernelError::msg("h5_write takes one block"))?;
        dispatch!(x.dtype(), T => write::<T>(&p, x), _ => Err(unsupported("h5_write", x.dtype())))
    });
}

fn kerr(file: &Path, dataset: &str, what: &str, e: impl std::fmt::Display) -> KernelError {
    KernelError::msg(format!("{}:{dataset}: {what}: {e}", file.display()))
}

fn read<T: Element + hdf5::H5Type>(p: &ReadParams) -> Result<Block, KernelError> {
    let f = hdf5::File::open(&p.file).map_err(|e| kerr(&p.file, &p.dataset, "cannot open", e))?;
    let ds = f.dataset(&p.dataset).map_err(|e| kerr(&p.file, &p.dataset, "cannot open the dataset", e))?;
    let data: Vec<T> = match (&p.start[..], &p.shape[..]) {
        ([r0], [r]) => ds.read_slice_1d::<T, _>(s![*r0..r0 + r]).map(|a| a.into_raw_vec_and_offset().0),
        ([r0, c0], [r, c]) => ds.read_slice_2d::<T, _>(s![*r0..r0 + r, *c0..c0 + c]).map(|a| {
            if a.is_standard_layout() {
                a.into_raw_vec_and_offset().0
            } else {
                a.iter().copied().collect()
            }
        }),
        _ => return Err(KernelError::msg(format!("h5_read: bad block {:?} at {:?}", p.shape, p.start))),
    }
    .map_err(|e| kerr(&p.file, &p.dataset, &format!("cannot read {:?} at {:?}", p.shape, p.start), e))?;
    Ok(block(p.shape.clone(), data))
}

fn write<T: Element + hdf5::H5Type>(p: &WriteParams, x: &Block) -> Result<Block, KernelError> {
    let data = T::slice(x).ok_or_else(|| unsupported("h5_write", x.dtype()))?;
    // Serial HDF5: one writer at a time, across processes and threads.
    let lock = File::open(lock_path(&p.file)).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "the file is no longer being written (finished or abandoned)".to_owned(),
            _ => format!("cannot open the writers' lock ({e})"),
        };
        KernelError::msg(format!("{}:{}: {why}", p.file.display(), p.dataset))
    })?;
    // Released when `lock` is closed at the end of this function.
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| kerr(&p.file, &p.dataset, "cannot lock", std::io::Error::from(e)))?;
    let f = hdf5::File::open_rw(&p.file).map_err(|e| kerr(&p.file, &p.dataset, "cannot open for writing", e))?;
    let ds = f.dataset(&p.dataset).map_err(|e| kerr(&p.file, &p.dataset, "cannot open the dataset", e))?;
    let result = match (&p.start[..], x.shape()) {
        ([r0], [r]) => ds.write_slice(ndarray::ArrayView1::from(data), s![*r0..r0 + r]),
        ([r0, c0], &[r, c]) => {
            let view = ndarray::ArrayView2::from_shape((r, c), data).expect("block length matches its shape");
            ds.write_slice(view, s![*r0..r0 + r, *c0..c0 + c])
        }
        (start, shape) => return Err(KernelError::msg(format!("h5_write: block {shape:?} at {start:?}"))),
    };
    result.map_err(|e| kerr(&p.file, &p.dataset, &format!("cannot write {:?} at {:?}", x.shape(), p.start), e))?;
    drop(ds);
    f.close().map_err(|e| kerr(&p.file, &p.dataset, "cannot close", e))?;
    drop(lock);
    Ok(Block::empty())
}

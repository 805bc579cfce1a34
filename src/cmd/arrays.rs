//! The array commands: `tessera svd`, `qr`, `matmul` and `demo`.
//!
//! Each runs on whatever cluster the environment gives (a local cluster, or
//! the ranks of `mpirun`/`srun`), reads its input from HDF5 or generates it
//! (`--random`), writes its results with the workers holding them, prints a
//! one-line summary and, with `--json`, one JSON object on stdout instead
//! (the summary then goes to stderr).

use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::json;
use tessera::linalg::{self, compute, DArray, Distribution, RandomizedSvd, Svd};
use tessera::observe::Observe;
use tessera::{Client, Config, DType};

/// Where an array comes from.
#[derive(Args, Debug, Clone)]
pub struct InputArgs {
    /// Input dataset as FILE.h5:/DATASET (or give --random MxN).
    #[arg(value_name = "FILE.h5:/DATASET", conflicts_with = "random")]
    pub input: Option<String>,

    /// A seeded random input of M x N instead of a file (uniform on [0, 1)).
    #[arg(long, value_name = "MxN", value_parser = parse_shape::<2>)]
    pub random: Option<[usize; 2]>,

    /// Seed of the random input and of the randomized SVD's test matrix.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Element type of a random input.
    #[arg(long, value_enum, default_value = "f64")]
    pub dtype: Elem,

    /// Rows per block (whole rows per block; what TSQR needs).
    #[arg(long, value_name = "R", conflicts_with = "chunks", value_parser = crate::cli::at_least_one)]
    pub chunk_rows: Option<usize>,

    /// Block shape, rows x columns (0 = the whole axis).
    #[arg(long, value_name = "RxC", value_parser = parse_dims::<2>)]
    pub chunks: Option<[usize; 2]>,

    /// Compute the input first and keep it on the workers, timing the
    /// operation on its own (as benchmarks on persisted arrays do).
    #[arg(long)]
    pub persist_input: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Elem {
    F64,
    F32,
}

impl Elem {
    fn dtype(self) -> DType {
        match self {
            Elem::F64 => DType::F64,
            Elem::F32 => DType::F32,
        }
    }
}

/// Options every array command shares.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Print one JSON object on stdout (the one-line summary goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Exact (TSQR) for tall-and-skinny or short-and-fat arrays, randomized
    /// with --k for arrays large in both dimensions.
    Auto,
    Tsqr,
    Randomized,
}

#[derive(Args, Debug, Clone)]
pub struct SvdArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Singular triplets to keep [default: all, the exact thin SVD].
    #[arg(long, value_parser = crate::cli::at_least_one)]
    pub k: Option<usize>,
    /// Exact or randomized SVD.
    #[arg(long, value_enum, default_value = "auto")]
    pub method: Method,
    /// Randomized SVD: extra columns of the test matrix.
    #[arg(long, default_value_t = 10)]
    pub oversample: usize,
    /// Randomized SVD: power iterations.
    #[arg(long, default_value_t = 2)]
    pub power_iters: usize,
    /// Output file (datasets /U, /S, /VT).
    #[arg(short, long, value_name = "OUT.h5")]
    pub output: Option<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug, Clone)]
pub struct QrArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Output file (datasets /Q, /R).
    #[arg(short, long, value_name = "OUT.h5")]
    pub output: Option<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug, Clone)]
pub struct MatmulArgs {
    /// Left operand, FILE.h5:/DATASET.
    #[arg(value_name = "A.h5:/A", required_unless_present = "random", conflicts_with = "random")]
    pub a: Option<String>,
    /// Right operand, FILE.h5:/DATASET.
    #[arg(value_name = "B.h5:/B", required_unless_present = "random")]
    pub b: Option<String>,
    /// Seeded random operands of M x K and K x N instead of files.
    #[arg(long, value_name = "MxKxN", value_parser = parse_shape::<3>)]
    pub random: Option<[usize; 3]>,
    /// Seed of the random operands (B's is the next one).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Element type of the random operands.
    #[arg(long, value_enum, default_value = "f64")]
    pub dtype: Elem,
    /// Blocks of A, R x C (B gets C x C); one number means square blocks.
    #[arg(long, value_name = "RxC", value_parser = parse_chunks)]
    pub chunks: Option<[usize; 2]>,
    /// Compute the operands first and keep them on the workers.
    #[arg(long)]
    pub persist_input: bool,
    /// Output dataset, C.h5:/C [default: computed, checked by its norm, not kept].
    #[arg(short, long, value_name = "C.h5:/C")]
    pub output: Option<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}

fn parse_dims<const N: usize>(s: &str) -> Result<[usize; N], String> {
    let parts: Vec<&str> = s.split(['x', 'X']).collect();
    let bad = || format!("`{s}` is not {} whole numbers joined by x (for example {})", N, ["1000"; N].join("x"));
    if parts.len() != N {
        return Err(bad());
    }
    let mut out = [0; N];
    for (o, p) in out.iter_mut().zip(parts) {
        *o = p.trim().parse().map_err(|_| bad())?;
    }
    Ok(out)
}

/// An array's shape, `MxN` (or `MxKxN`): every dimension at least 1.
fn parse_shape<const N: usize>(s: &str) -> Result<[usize; N], String> {
    let dims = parse_dims::<N>(s)?;
    if dims.contains(&0) {
        return Err(format!("`{s}`: every dimension must be at least 1"));
    }
    Ok(dims)
}

fn parse_chunks(s: &str) -> Result<[usize; 2], String> {
    match s.parse::<usize>() {
        Ok(n) => Ok([n, n]),
        Err(_) => parse_dims::<2>(s),
    }
}

/// Per-block sizes from the flags, for an array of `shape`; `one_axis`
/// asks for blocks along one axis unless --chunks or --chunk-rows say
/// otherwise: whole rows of a tall-and-skinny array, whole columns of a
/// short-and-fat one (what TSQR and the short-and-fat QR need).
fn block_sizes(a: &InputArgs, shape: [usize; 2], one_axis: bool) -> Option<[usize; 2]> {
    if let Some(c) = a.chunks {
        return Some(c);
    }
    if let Some(r) = a.chunk_rows {
        return Some([r, 0]);
    }
    one_axis.then(|| {
        // About 64 MiB per block, each at least as long as the short side is
        // wide (the QR of the first block is square or tall), at least 4
        // blocks when the long side is long enough: every worker gets work.
        let [m, n] = shape.map(|d| d.max(1));
        let (long, short) = (m.max(n), m.min(n));
        let per_block = ((64usize << 20) / (short * 8)).clamp(short, long);
        let per_block = per_block.min(long.div_ceil(4).max(short));
        if m >= n {
            [per_block, 0]
        } else {
            [0, per_block]
        }
    })
}

/// The input array, as asked for, and a description of where it came from.
/// `one_axis` asks a file to be read in blocks along one axis (as TSQR
/// needs, see [`block_sizes`]) rather than in its own chunks; random arrays
/// always come that way.
fn input_array(a: &InputArgs, one_axis: bool) -> anyhow::Result<(DArray, String)> {
    if let Some(shape) = a.random {
        let sizes = block_sizes(a, shape, true).expect("one axis always gives sizes");
        let dist = Distribution::Uniform { low: 0.0, high: 1.0 };
        let arr = DArray::random(&shape, &sizes, dist, a.seed, a.dtype.dtype())?;
        return Ok((arr, format!("random {}x{} (seed {})", shape[0], shape[1], a.seed)));
    }
    let Some(spec) = a.input.as_deref() else { bail!("give FILE.h5:/DATASET or --random MxN") };
    Ok((read_input(spec, a, one_axis)?, spec.to_owned()))
}

#[cfg(feature = "hdf5")]
fn read_input(spec: &str, a: &InputArgs, one_axis: bool) -> anyhow::Result<DArray> {
    let (file, dataset) = linalg::hdf5::parse_spec(spec)?;
    let ds = linalg::hdf5::Hdf5Dataset::open(&file, &dataset)?;
    let [m, n] = match ds.shape[..] {
        [m, n] => [m, n],
        _ => bail!("{spec}: the dataset has shape {:?}; this command needs a matrix (2-D)", ds.shape),
    };
    let sizes = block_sizes(a, [m, n], one_axis);
    let chunks = sizes.map(|s| linalg::Chunks::regular(&ds.shape, &s)).transpose()?;
    Ok(ds.read(chunks)?)
}

#[cfg(not(feature = "hdf5"))]
fn read_input(spec: &str, _: &InputArgs, _: bool) -> anyhow::Result<DArray> {
    Err(linalg::LinalgError::FeatureDisabled { feature: "hdf5", what: format!("reading {spec}") }.into())
}

/// Writes `datasets` to a new file at `path` with the workers, gathering
/// `gather` in the same graph; the file appears only when complete.
#[cfg(feature = "hdf5")]
fn store(
    client: &Client,
    path: &str,
    datasets: &[(&str, &DArray)],
    gather: &[&DArray],
) -> anyhow::Result<Vec<linalg::Gathered>> {
    let mut w = linalg::hdf5::Hdf5Writer::create(path)?;
    let got = w.store(client, datasets, gather)?;
    w.commit()?;
    Ok(got)
}

#[cfg(not(feature = "hdf5"))]
fn store(_: &Client, path: &str, _: &[(&str, &DArray)], _: &[&DArray]) -> anyhow::Result<Vec<linalg::Gathered>> {
    Err(linalg::LinalgError::FeatureDisabled { feature: "hdf5", what: format!("writing {path}") }.into())
}

/// Checks early that `path` can be written (before any work).
#[cfg(feature = "hdf5")]
fn check_output(path: &str) -> anyhow::Result<()> {
    linalg::hdf5::Hdf5Writer::create(path)?;
    Ok(())
}

#[cfg(not(feature = "hdf5"))]
fn check_output(path: &str) -> anyhow::Result<()> {
    Err(linalg::LinalgError::FeatureDisabled { feature: "hdf5", what: format!("writing {path}") }.into())
}

/// A client of an elastic cluster may arrive before any worker has joined.
pub fn wait_for_a_worker(client: &tessera::Client) -> anyhow::Result<()> {
    if client.is_elastic() {
        client
            .wait_for_workers(1, std::time::Duration::from_secs(60))
            .context("the scheduler has no worker (start some with `tessera worker --scheduler ADDR`)")?;
    }
    Ok(())
}

/// Peak resident memory of every rank: the driver's process, and each
/// worker's (one tiny task pinned to each worker rank).
pub fn peak_memory(client: &Client) -> anyhow::Result<Vec<(u32, u64)>> {
    let own = tessera::runtime::host::sys::peak_rss_bytes().unwrap_or(0);
    if client.transport() == "local" {
        return Ok(vec![(0, own)]);
    }
    let mut g = tessera::Graph::new();
    let keys: Vec<tessera::Key> = client.workers().iter().map(|w| tessera::Key::new("peak_memory", [w.rank])).collect();
    for (k, w) in keys.iter().zip(client.workers()) {
        g.push(tessera::Task::new(k.clone(), "linalg.peak_memory").on_rank(w.rank));
    }
    let got = client.compute(g, &keys)?;
    let mut out = vec![(0, own)];
    for (w, b) in client.workers().iter().zip(got) {
        if w.rank != 0 {
            out.push((w.rank, b.to_scalar().unwrap_or(0.0) as u64));
        }
    }
    Ok(out)
}

fn persist_if(client: &Client, a: DArray, yes: bool) -> anyhow::Result<(DArray, Option<f64>)> {
    if !yes {
        return Ok((a, None));
    }
    let t = Instant::now();
    let kept = a.persist(client)?;
    Ok((kept, Some(t.elapsed().as_secs_f64())))
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// What a command measured, printed as one line (and JSON).
struct Report {
    what: &'static str,
    summary: String,
    seconds: f64,
    /// Floating-point operations the algorithm performs (see docs/benchmarks.md).
    flops: f64,
    input_seconds: Option<f64>,
    /// The scheduler's loss counts when the command started.
    losses: Losses,
    /// Command-specific JSON fields.
    extra: serde_json::Value,
}

/// Workers lost without notice, and task runs repeated because of them, as
/// the scheduler counts them (since it started; a command reports the
/// difference between its end and its start).
#[derive(Clone, Copy, Debug, Default)]
struct Losses {
    workers_lost: u64,
    recomputed: u64,
}

impl Losses {
    fn now(client: &Client) -> Losses {
        match client.state() {
            Ok(s) => Losses { workers_lost: s.workers_lost, recomputed: s.recomputed },
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the scheduler for its state");
                Losses::default()
            }
        }
    }

    /// What happened since `self` was taken.
    fn since(self, client: &Client) -> Losses {
        let now = Losses::now(client);
        Losses {
            workers_lost: now.workers_lost.saturating_sub(self.workers_lost),
            recomputed: now.recomputed.saturating_sub(self.recomputed),
        }
    }

    /// A line for the summary when anything was lost.
    fn text(&self) -> Option<String> {
        let Losses { workers_lost, recomputed } = *self;
        (workers_lost > 0 || recomputed > 0).then(|| {
            let s = if workers_lost == 1 { "" } else { "s" };
            format!("recovered from {workers_lost} lost worker{s}: {recomputed} tasks recomputed")
        })
    }

    fn insert_into(&self, obj: &mut serde_json::Map<String, serde_json::Value>) {
        obj.insert("workers_lost".into(), json!(self.workers_lost));
        obj.insert("recomputed".into(), json!(self.recomputed));
    }
}

impl Report {
    fn print(self, client: &Client, json_out: bool) -> anyhow::Result<()> {
        let Report { what, summary, seconds, flops, input_seconds, losses, mut extra } = self;
        let losses = losses.since(client);
        let peaks = peak_memory(client)?;
        let peak_text = peaks.iter().map(|(r, b)| format!("r{r} {:.2}", gib(*b))).collect::<Vec<_>>().join(", ");
        let gflops = flops / seconds / 1e9;
        say!(
            json_out,
            "{what}: {summary}; {seconds:.3} s, {gflops:.1} GFLOP/s{}; {} over {}; peak GiB {peak_text}",
            input_seconds.map(|s| format!(" (input {s:.3} s before)")).unwrap_or_default(),
            workers_text(client),
            client.transport(),
        );
        if let Some(text) = losses.text() {
            say!(json_out, "{what}: {text}");
        }
        if json_out {
            let obj = extra.as_object_mut().expect("an object");
            losses.insert_into(obj);
            obj.insert("command".into(), json!(what));
            obj.insert("seconds".into(), json!(seconds));
            obj.insert("gflops".into(), json!(gflops));
            obj.insert("input_seconds".into(), json!(input_seconds));
            obj.insert("workers".into(), json!(client.workers().len()));
            obj.insert(
                "gpus".into(),
                json!(client.workers().iter().filter(|w| !w.gpu.is_empty()).map(|w| &w.gpu).collect::<Vec<_>>()),
            );
            obj.insert("threads".into(), json!(client.total_threads()));
            obj.insert("transport".into(), json!(client.transport()));
            obj.insert(
                "peak_rss_bytes".into(),
                json!(peaks.iter().map(|(r, b)| json!({"rank": r, "bytes": b})).collect::<Vec<_>>()),
            );
            println!("{extra}");
        }
        Ok(())
    }
}

pub fn svd(config: Config, observe: &Observe, args: SvdArgs) -> anyhow::Result<()> {
    if let Some(out) = &args.output {
        check_output(out)?;
    }
    observe.run(config, |client| -> anyhow::Result<()> {
        wait_for_a_worker(client)?;
        let losses = Losses::now(client);
        let shape = shape_of(&args.input)?;
        let [m, n] = shape;
        let method = match (args.method, args.k) {
            (Method::Randomized, None) => bail!("--method randomized needs --k (how many singular triplets)"),
            // Large in both dimensions and few triplets wanted: sketch.
            (Method::Auto, Some(k))
                if m.min(n) >= 1000 && 4 * (k + args.oversample).max(RandomizedSvd::MIN_SUBSPACE) <= m.min(n) =>
            {
                Method::Randomized
            }
            (Method::Auto, _) => Method::Tsqr,
            (m, _) => m,
        };
        // TSQR: whole rows of a tall array, whole columns of a short-and-fat one.
        let (a, from) = input_array(&args.input, method == Method::Tsqr)?;
        let (a, input_seconds) = persist_if(client, a, args.input.persist_input)?;
        let t = Instant::now();
        let f: Svd = match method {
            Method::Randomized => {
                let k = args.k.expect("checked above");
                let p = RandomizedSvd {
                    k,
                    oversample: args.oversample,
                    power_iters: args.power_iters,
                    seed: args.input.seed,
                };
                linalg::randomized_svd(&a, &p)?
            }
            _ => linalg::svd_truncated(&a, args.k.unwrap_or(m.min(n)))?,
        };
        let gathered = match &args.output {
            Some(path) => store(client, path, &[("/U", &f.u), ("/S", &f.s), ("/VT", &f.vt)], &[&f.s])?,
            None => {
                // Everything computed; U and Vᵀ kept on the workers until done.
                let (_, got) = compute(client, &[&f.u, &f.vt], &[&f.s])?;
                got
            }
        };
        let seconds = t.elapsed().as_secs_f64();
        let s = gathered.into_iter().next().context("singular values")?.to_f64();
        let s: Vec<f64> = s.iter().copied().collect();
        let k = s.len();
        let (big, small) = (m.max(n) as f64, m.min(n) as f64);
        let flops = match method {
            // Householder QR and forming U: 4 m n^2 for tall arrays.
            Method::Tsqr | Method::Auto => 4.0 * big * small * small,
            Method::Randomized => {
                let l = RandomizedSvd { k, oversample: args.oversample, ..RandomizedSvd::new(k) }.subspace(m, n) as f64;
                2.0 * (m * n) as f64 * l * (2 * args.power_iters + 2) as f64
            }
        };
        let method_name = if method == Method::Randomized { "randomized" } else { "tsqr" };
        let shown: Vec<String> = s.iter().take(4).map(|x| format!("{x:.6e}")).collect();
        let summary = format!(
            "{m} x {n} {} from {from}, chunks {}, {method_name}, k = {k}: s = [{}{}]{}",
            a.dtype(),
            a.chunks(),
            shown.join(", "),
            if k > 4 { ", ..." } else { "" },
            args.output.as_ref().map(|o| format!("; wrote {o} (/U /S /VT)")).unwrap_or_default()
        );
        let extra = json!({"shape": [m, n], "dtype": a.dtype().to_string(), "chunks": a.chunks().to_string(),
            "method": method_name, "k": k, "s": s, "output": args.output});
        Report { what: "svd", summary, seconds, flops, input_seconds, losses, extra }.print(client, args.out.json)
    })
}

fn shape_of(a: &InputArgs) -> anyhow::Result<[usize; 2]> {
    if let Some(s) = a.random {
        return Ok(s);
    }
    let Some(spec) = a.input.as_deref() else { bail!("give FILE.h5:/DATASET or --random MxN") };
    #[cfg(feature = "hdf5")]
    {
        let (file, dataset) = linalg::hdf5::parse_spec(spec)?;
        let ds = linalg::hdf5::Hdf5Dataset::open(&file, &dataset)?;
        match ds.shape[..] {
            [m, n] => Ok([m, n]),
            _ => bail!("{spec}: the dataset has shape {:?}; this command needs a matrix (2-D)", ds.shape),
        }
    }
    #[cfg(not(feature = "hdf5"))]
    Err(linalg::LinalgError::FeatureDisabled { feature: "hdf5", what: format!("reading {spec}") }.into())
}

pub fn qr(config: Config, observe: &Observe, args: QrArgs) -> anyhow::Result<()> {
    if let Some(out) = &args.output {
        check_output(out)?;
    }
    observe.run(config, |client| -> anyhow::Result<()> {
        wait_for_a_worker(client)?;
        let losses = Losses::now(client);
        let [m, n] = shape_of(&args.input)?;
        let (a, from) = input_array(&args.input, true)?;
        let (a, input_seconds) = persist_if(client, a, args.input.persist_input)?;
        let t = Instant::now();
        let f = linalg::qr(&a)?;
        let r = match &args.output {
            Some(path) => store(client, path, &[("/Q", &f.q), ("/R", &f.r)], &[&f.r])?,
            None => compute(client, &[&f.q], &[&f.r])?.1,
        };
        let seconds = t.elapsed().as_secs_f64();
        let r = r.into_iter().next().context("R")?.to_f64();
        let diag: Vec<f64> = (0..r.shape()[0].min(r.shape()[1])).map(|i| r[[i, i]]).collect();
        let flops = 4.0 * (m.max(n) * m.min(n) * m.min(n)) as f64;
        let summary = format!(
            "{m} x {n} {} from {from}, chunks {}: R[0,0] = {:.6e}, R[k-1,k-1] = {:.6e}{}",
            a.dtype(),
            a.chunks(),
            diag.first().copied().unwrap_or(0.0),
            diag.last().copied().unwrap_or(0.0),
            args.output.as_ref().map(|o| format!("; wrote {o} (/Q /R)")).unwrap_or_default()
        );
        let extra = json!({"shape": [m, n], "dtype": a.dtype().to_string(), "chunks": a.chunks().to_string(),
            "r_diagonal": diag, "output": args.output});
        Report { what: "qr", summary, seconds, flops, input_seconds, losses, extra }.print(client, args.out.json)
    })
}

pub fn matmul(config: Config, observe: &Observe, args: MatmulArgs) -> anyhow::Result<()> {
    let output = args.output.as_deref().map(linalg_spec).transpose()?;
    if let Some((path, _)) = &output {
        check_output(path)?;
    }
    observe.run(config, |client| -> anyhow::Result<()> {
        wait_for_a_worker(client)?;
        let losses = Losses::now(client);
        let (a, b, from) = match args.random {
            Some([m, k, n]) => {
                let [r, c] = args.chunks.unwrap_or([m.div_ceil(4).max(1), k]);
                let dist = Distribution::Uniform { low: 0.0, high: 1.0 };
                let dt = args.dtype.dtype();
                let a = DArray::random(&[m, k], &[r, c], dist, args.seed, dt)?;
                let b = DArray::random(&[k, n], &[c, c], dist, args.seed.wrapping_add(1), dt)?;
                (a, b, format!("random (seed {})", args.seed))
            }
            None => {
                let (sa, sb) = (args.a.as_deref().expect("clap"), args.b.as_deref().expect("clap"));
                let a = matmul_operand(sa, args.chunks)?;
                let b = matmul_operand(sb, args.chunks.map(|[_, c]| [c, c]))?;
                (a, b, format!("{sa} @ {sb}"))
            }
        };
        let (a, a_secs) = persist_if(client, a, args.persist_input)?;
        let (b, b_secs) = persist_if(client, b, args.persist_input)?;
        let input_seconds = a_secs.zip(b_secs).map(|(x, y)| x + y);
        let t = Instant::now();
        let c = a.matmul(&b)?;
        let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
        let norm = match &output {
            Some((path, dataset)) => {
                store(client, path, &[(dataset.as_str(), &c)], &[])?;
                None
            }
            None => {
                let (_, got) = compute(client, &[&c], &[&c.norm(None)?])?;
                Some(got[0].to_f64().sum())
            }
        };
        let seconds = t.elapsed().as_secs_f64();
        let flops = 2.0 * (m * k) as f64 * n as f64;
        let summary = format!(
            "{m} x {k} @ {k} x {n} {} from {from}, chunks {} @ {}{}",
            a.dtype(),
            a.chunks(),
            b.chunks(),
            match (&output, norm) {
                (Some((p, d)), _) => format!("; wrote {p}:{d}"),
                (None, Some(x)) => format!("; |C|_F = {x:.6e}"),
                _ => String::new(),
            }
        );
        let extra = json!({"shape": [m, n], "inner": k, "dtype": a.dtype().to_string(), "chunks": a.chunks().to_string(),
            "norm": norm, "output": args.output});
        Report { what: "matmul", summary, seconds, flops, input_seconds, losses, extra }.print(client, args.out.json)
    })
}

fn linalg_spec(spec: &str) -> anyhow::Result<(String, String)> {
    match spec.rsplit_once(':') {
        Some((f, d)) if !f.is_empty() && d.starts_with('/') && d.len() > 1 => Ok((f.to_owned(), d.to_owned())),
        _ => bail!("-o `{spec}`: expected FILE.h5:/DATASET (for example C.h5:/C)"),
    }
}

#[cfg(feature = "hdf5")]
fn matmul_operand(spec: &str, sizes: Option<[usize; 2]>) -> anyhow::Result<DArray> {
    Ok(linalg::hdf5::from_hdf5(spec, sizes.as_ref().map(|s| &s[..]))?)
}

#[cfg(not(feature = "hdf5"))]
fn matmul_operand(spec: &str, _: Option<[usize; 2]>) -> anyhow::Result<DArray> {
    Err(linalg::LinalgError::FeatureDisabled { feature: "hdf5", what: format!("reading {spec}") }.into())
}

/// `N workers (T threads)`, naming the GPU workers' devices when there are any.
fn workers_text(client: &Client) -> String {
    let workers = client.workers();
    let gpus: Vec<&str> = workers.iter().filter(|w| !w.gpu.is_empty()).map(|w| w.gpu.as_str()).collect();
    let gpus = if gpus.is_empty() { String::new() } else { format!("; GPU workers on {}", gpus.join(", ")) };
    format!("{} workers ({} threads{gpus})", workers.len(), client.total_threads())
}

/// `tessera demo`: a randomized SVD of a matrix with known singular values
/// and a blocked matmul, both checked, with their timings.
pub fn demo(config: Config, observe: &Observe, json_out: bool) -> anyhow::Result<()> {
    observe.run(config, |client| -> anyhow::Result<()> {
        wait_for_a_worker(client)?;
        let losses = Losses::now(client);
        say!(json_out, "tessera demo: {} over the {} transport", workers_text(client), client.transport());
        // A = G diag(w) with G Gaussian: singular values close to w's.
        let (m, n, k) = (20_000, 400, 5);
        let t = Instant::now();
        let g = DArray::random_normal(&[m, n], &[2_500, 0], 7)?;
        let weights: Vec<f64> = (0..n).map(|j| if j < k { 10.0 * (k - j) as f64 } else { 0.01 }).collect();
        let w = DArray::from_ndarray(linalg::ndarray::Array2::from_diag(&linalg::ndarray::Array1::from(weights)).view(), &[n, n])?;
        let a = g.matmul(&w)?;
        let f = linalg::randomized_svd(&a, &RandomizedSvd { seed: 1, ..RandomizedSvd::new(k) })?;
        let s = f.s.to_ndarray::<f64>(client)?;
        let scale = (m as f64).sqrt();
        let shown: Vec<String> = s.iter().map(|x| format!("{:.2}", x / scale)).collect();
        let svd_seconds = t.elapsed().as_secs_f64();
        say!(
            json_out,
            "  randomized SVD of {m} x {n} (k = {k}, 2 power iterations): s / sqrt(m) = [{}] (expected about [50, 40, 30, 20, 10]), {:.3} s",
            shown.join(", "),
            svd_seconds
        );
        let ok = s.iter().enumerate().all(|(j, x)| (x / scale - 10.0 * (k - j) as f64).abs() < 0.05 * 10.0 * (k - j) as f64);
        if !ok {
            bail!("the randomized SVD's singular values are off: {shown:?}");
        }
        let size = 2_000;
        let x = DArray::random_uniform(&[size, size], &[500, 500], 3)?;
        let t = Instant::now();
        let c = x.matmul(&x.t())?;
        let (_, got) = compute(client, &[&c], &[&c.sum(None)?, &x.sum(Some(0))?])?;
        let secs = t.elapsed().as_secs_f64();
        // sum(X Xᵀ) = |column sums of X|^2.
        let total = got[0].to_f64().sum();
        let colsums = got[1].to_f64();
        let want: f64 = colsums.iter().map(|v| v * v).sum();
        if (total - want).abs() > 1e-9 * want {
            bail!("matmul check failed: sum(X Xt) = {total}, expected {want}");
        }
        let gflops = 2.0 * (size as f64).powi(3) / secs / 1e9;
        say!(
            json_out,
            "  matmul {size} x {size} @ {size} x {size} in blocks of 500: {secs:.3} s, {gflops:.1} GFLOP/s (result checked)"
        );
        let losses = losses.since(client);
        if let Some(text) = losses.text() {
            say!(json_out, "  {text}");
        }
        if json_out {
            let mut out = json!({"command": "demo", "transport": client.transport(), "workers": client.workers().len(),
                   "threads": client.total_threads(),
                   "svd": {"shape": [m, n], "k": k, "s_over_sqrt_m": s.iter().map(|x| x / scale).collect::<Vec<_>>(),
                           "expected": (0..k).map(|j| 10.0 * (k - j) as f64).collect::<Vec<_>>(),
                           "seconds": svd_seconds, "checked": true},
                   "matmul": {"shape": [size, size], "chunks": [500, 500], "seconds": secs, "gflops": gflops,
                              "checked": true}});
            losses.insert_into(out.as_object_mut().expect("an object"));
            println!("{out}");
        }
        Ok(())
    })
}

//! Benchmarks behind `tessera bench`: programs that print figures, never
//! timed assertions.
//!
//! * [`overhead`]: per-task scheduling cost on trivial tasks, in three graph
//!   shapes (wide, chain, tree), the figure to compare with Dask.
//! * [`transfer`]: one block moved between two workers, timed end to end.
//! * [`gemm`]: one faer matrix product on this process's cores; [`gpu_gemm`]:
//!   one GEMM on a GPU, cuBLAS called directly against the same product
//!   through a Tessera GPU worker.

use std::time::Instant;

use serde::Serialize;
#[cfg(feature = "cuda")]
use tessera_runtime::gpu::GpuSelect;
use tessera_runtime::{Client, Config, DType, Graph, Key, Task};

/// Graph shapes of the overhead benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// N independent tasks.
    Wide,
    /// Each task depends on the one before.
    Chain,
    /// A binary reduction tree of N tasks in all.
    Tree,
}

/// A graph of `n` trivial `sum` tasks of `shape`, the keys to ask for, and
/// the value the last key must hold.
pub fn graph(shape: Shape, n: usize) -> (Graph, Vec<Key>, f64) {
    let n = n.max(1);
    let mut g = Graph::with_capacity(n);
    match shape {
        Shape::Wide => {
            let name: std::sync::Arc<str> = "w".into();
            let keys: Vec<Key> = (0..n as u32).map(|i| Key::with_shared_name(&name, [i])).collect();
            for k in &keys {
                g.push(Task::new(k.clone(), "sum").param(&1.0f64));
            }
            (g, keys, 1.0)
        }
        Shape::Chain => {
            let name: std::sync::Arc<str> = "c".into();
            g.push(Task::new(Key::with_shared_name(&name, [0]), "sum").param(&1.0f64));
            for i in 1..n as u32 {
                g.push(
                    Task::new(Key::with_shared_name(&name, [i]), "sum")
                        .param(&1.0f64)
                        .inputs([Key::with_shared_name(&name, [i - 1])]),
                );
            }
            (g, vec![Key::with_shared_name(&name, [n as u32 - 1])], n as f64)
        }
        Shape::Tree => {
            let leaves = n.div_ceil(2);
            let keys: Vec<Key> = (0..leaves as u32).map(|i| Key::new("t", [0, i])).collect();
            for k in &keys {
                g.push(Task::new(k.clone(), "sum").param(&1.0f64));
            }
            let root = g.reduce("t", keys, 2, |k| Task::new(k, "sum").param(&0.0f64));
            (g, vec![root], leaves as f64)
        }
    }
}

/// One overhead measurement.
#[derive(Debug, Clone, Serialize)]
pub struct OverheadRun {
    pub shape: Shape,
    pub tasks: usize,
    /// Median over the repeats, submission to last result, graph build excluded.
    pub seconds: f64,
    pub seconds_min: f64,
    pub us_per_task: f64,
    pub tasks_per_second: f64,
    pub build_seconds: f64,
    /// Median time for the scheduler to validate, order and admit the graph.
    pub submit_seconds: f64,
    pub repeat: usize,
    pub workers: usize,
    pub threads: usize,
    pub transport: &'static str,
}

/// Runs `shape` with `n` tasks `repeat` times; checks every result.
pub fn overhead(client: &Client, shape: Shape, n: usize, repeat: usize) -> tessera_runtime::Result<OverheadRun> {
    let mut times = Vec::with_capacity(repeat);
    let mut build = Vec::with_capacity(repeat);
    let mut submit = Vec::with_capacity(repeat);
    let mut tasks = 0;
    for _ in 0..repeat.max(1) {
        let t0 = Instant::now();
        let (g, outputs, expect) = graph(shape, n);
        tasks = g.len();
        build.push(t0.elapsed().as_secs_f64());
        let t1 = Instant::now();
        let held = client.persist(g, &outputs)?;
        submit.push(t1.elapsed().as_secs_f64());
        held.wait()?;
        times.push(t1.elapsed().as_secs_f64());
        if shape != Shape::Wide {
            let got = held.gather()?[0].to_scalar();
            assert_eq!(got, Some(expect), "{shape:?} of {n} tasks computed a wrong result");
        }
    }
    let seconds = median(&mut times);
    Ok(OverheadRun {
        shape,
        tasks,
        seconds,
        seconds_min: times.iter().copied().fold(f64::INFINITY, f64::min),
        us_per_task: seconds * 1e6 / tasks as f64,
        tasks_per_second: tasks as f64 / seconds,
        build_seconds: median(&mut build),
        submit_seconds: median(&mut submit),
        repeat: times.len(),
        workers: client.workers().len(),
        threads: client.total_threads(),
        transport: client.transport(),
    })
}

/// Median of a non-empty sample (sorts it).
pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

/// Moves a block of `bytes` from the worker on rank `from` to the one on
/// rank `to`, `repeat` times; returns the median seconds per transfer.
///
/// Each repeat makes a fresh block on `from` (not timed), then times a task
/// pinned to `to` that reads it: one fetch request, one block message, the
/// task (`noop`) and its report.
pub fn transfer(client: &Client, from: u32, to: u32, bytes: usize, repeat: usize) -> tessera_runtime::Result<Vec<f64>> {
    let len = bytes / 8;
    let mut times = Vec::with_capacity(repeat);
    for r in 0..repeat.max(1) as u32 {
        let src = Key::new("transfer-src", [r]);
        let mut g = Graph::new();
        g.push(Task::new(src.clone(), "fill").param(&(len, 1.0f64)).on_rank(from));
        let held = client.persist(g, std::slice::from_ref(&src))?;
        held.wait()?;
        let dst = Key::new("transfer-dst", [r]);
        let mut g = Graph::new();
        g.push(Task::new(dst.clone(), "noop").inputs([src]).on_rank(to));
        let t = Instant::now();
        client.persist(g, &[dst])?.wait()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(times)
}

/// Element types of `tessera bench gemm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GemmDtype {
    F64,
    F32,
    /// f64, then f32: one measurement each.
    Both,
}

impl GemmDtype {
    pub fn dtypes(self) -> &'static [DType] {
        match self {
            GemmDtype::F64 => &[DType::F64],
            GemmDtype::F32 => &[DType::F32],
            GemmDtype::Both => &[DType::F64, DType::F32],
        }
    }
}

/// One faer matrix product `m x k @ k x n` on `threads` cores (rayon), the
/// ceiling a blocked product on the same cores is measured against.
#[derive(Clone, Debug, Serialize)]
pub struct GemmRun {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub dtype: String,
    pub threads: usize,
    pub seconds: f64,
    pub gflops: f64,
    pub repeat: usize,
}

/// Times [`GemmRun`]: median of `repeat` products of `dtype` (f64 or f32)
/// elements after one warm-up.
pub fn gemm(m: usize, k: usize, n: usize, dtype: DType, threads: usize, repeat: usize) -> GemmRun {
    match dtype {
        DType::F32 => gemm_as::<f32>(m, k, n, threads, repeat),
        _ => gemm_as::<f64>(m, k, n, threads, repeat),
    }
}

fn gemm_as<T: tessera_linalg::Element>(m: usize, k: usize, n: usize, threads: usize, repeat: usize) -> GemmRun {
    use tessera_linalg::faer::{linalg::matmul::matmul, Accum, Mat, Par};
    let a = Mat::<T>::from_fn(m, k, |i, j| T::from_f64(((i * 31 + j * 17) % 97) as f64 / 97.0));
    let b = Mat::<T>::from_fn(k, n, |i, j| T::from_f64(((i * 13 + j * 7) % 89) as f64 / 89.0));
    let mut c = Mat::<T>::zeros(m, n);
    let par = if threads > 1 { Par::rayon(threads) } else { Par::Seq };
    let mut times = Vec::with_capacity(repeat);
    for i in 0..=repeat.max(1) {
        let t = Instant::now();
        matmul(c.as_mut(), Accum::Replace, a.as_ref(), b.as_ref(), T::from_f64(1.0), par);
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let seconds = median(&mut times);
    GemmRun {
        m,
        k,
        n,
        dtype: T::DTYPE.to_string(),
        threads,
        seconds,
        gflops: 2.0 * (m * k * n) as f64 / seconds / 1e9,
        repeat: times.len(),
    }
}

/// One GEMM `m x k @ k x n` on one GPU, two ways in one run (medians over
/// the repeats, each after one warm-up product):
///
/// * `direct`: cuBLAS called directly on operands uploaded once, the
///   stream synchronised before and after each product;
/// * `tessera`: `A @ B` persisted through a local cluster whose GPU worker
///   holds A and B (persisted first, one block each), timed from building
///   the product's graph until the device has finished it; the result is
///   released before the next repeat.
///
/// The two products are checked against each other.
#[derive(Clone, Debug, Serialize)]
pub struct GpuGemmRun {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub dtype: String,
    /// `GPU 0 (NVIDIA H100 80GB HBM3)`.
    pub gpu: String,
    pub direct_seconds: f64,
    pub direct_tflops: f64,
    pub tessera_seconds: f64,
    pub tessera_tflops: f64,
    /// Until the worker had reported the task done (GPU kernels wait for
    /// their stream before returning, so the product was finished then).
    pub tessera_reported_seconds: f64,
    /// The `linalg.gemm` task's own duration on the GPU worker, from its
    /// events (allocation, the cuBLAS call, the wait for the device).
    /// `None` with `--no-events`.
    pub task_seconds: Option<f64>,
    /// Throughput through Tessera over cuBLAS's own: `tessera_tflops / direct_tflops`.
    pub ratio: f64,
    /// max |C_tessera - C_direct| / max |C_direct|.
    pub max_rel_diff: f64,
    pub repeat: usize,
}

/// Measures [`GpuGemmRun`] on the first GPU of `config.worker.gpus` (needs the
/// `cuda` feature and a CUDA driver). `config` is the command line's cluster
/// configuration; the bench's local cluster takes its settings but runs one
/// CPU worker and one GPU worker, on that GPU only.
#[cfg(feature = "cuda")]
pub fn gpu_gemm(
    config: Config,
    [m, k, n]: [usize; 3],
    dtype: DType,
    repeat: usize,
    seed: u64,
) -> anyhow::Result<GpuGemmRun> {
    let ordinal = first_gpu(&config.worker.gpus)?;
    match dtype {
        DType::F64 => gpu_gemm_as::<f64>(config, ordinal, [m, k, n], repeat, seed),
        DType::F32 => gpu_gemm_as::<f32>(config, ordinal, [m, k, n], repeat, seed),
        other => anyhow::bail!("bench gemm: {other} is not a GEMM element type (f64 or f32)"),
    }
}

/// [`gpu_gemm`] in a build without the `cuda` feature: the error that says so.
#[cfg(not(feature = "cuda"))]
pub fn gpu_gemm(config: Config, _: [usize; 3], _: DType, _: usize, _: u64) -> anyhow::Result<GpuGemmRun> {
    let what = format!("bench gemm --gpus {}", config.worker.gpus);
    Err(tessera_runtime::Error::FeatureDisabled { feature: "cuda", what }.into())
}

/// The first device of `select`, or an error that says why there is none
/// (never a fallback to the CPU: the figure would mean nothing).
#[cfg(feature = "cuda")]
fn first_gpu(select: &GpuSelect) -> anyhow::Result<usize> {
    use tessera_runtime::gpu::{probe, resolve, Probe, NO_DRIVER};
    let flag = format!("bench gemm --gpus {select}");
    match probe() {
        Probe::Found { .. } => {}
        Probe::NoDriver => anyhow::bail!("{flag}: {NO_DRIVER}"),
        Probe::Failed(e) => anyhow::bail!("{flag}: the CUDA driver failed: {e}"),
        Probe::NotCompiled => {
            return Err(tessera_runtime::Error::FeatureDisabled { feature: "cuda", what: flag }.into())
        }
    }
    match resolve(select)?.first() {
        Some(&ordinal) => Ok(ordinal),
        None => anyhow::bail!("{flag}: the CUDA driver shows no GPU"),
    }
}

#[cfg(feature = "cuda")]
fn gpu_gemm_as<T>(
    config: Config,
    ordinal: usize,
    [m, k, n]: [usize; 3],
    repeat: usize,
    seed: u64,
) -> anyhow::Result<GpuGemmRun>
where
    T: tessera_runtime::gpu::GpuElement + tessera_linalg::Element,
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    use anyhow::{anyhow, ensure, Context};
    use cudarc::cublas::sys::cublasOperation_t;
    use cudarc::cublas::{Gemm, GemmConfig};
    use tessera_linalg::{DArray, Distribution};
    use tessera_runtime::gpu::Gpu;
    use tessera_runtime::{LocalCluster, Progress, WorkerSettings};

    ensure!(m > 0 && k > 0 && n > 0, "bench gemm: every dimension must be positive");
    let dim = |x: usize| i32::try_from(x).map_err(|_| anyhow!("bench gemm: dimension {x} exceeds cuBLAS's 2^31 - 1"));
    let dtype = <T as tessera_linalg::Element>::DTYPE;
    let repeat = repeat.max(1);
    let flops = 2.0 * m as f64 * k as f64 * n as f64;

    // This process's own handle on the device: its stream for the direct
    // calls, and its context (the device's primary context, which the GPU
    // worker's stream belongs to as well) to wait for the worker's products.
    // The same f32 math as the worker's (`--gpu-math`).
    let tf32 = config.worker.gpu_math == tessera_runtime::gpu::GpuMath::Tf32 && dtype == DType::F32;
    let gpu = Gpu::open_with(ordinal, Some(u64::MAX), config.worker.gpu_math)?;
    let device_sync = || gpu.context().synchronize().map_err(|e| anyhow!("GPU {ordinal}: synchronising: {e}"));

    let worker = WorkerSettings { threads: Some(1), gpus: GpuSelect::List(vec![ordinal]), ..config.worker.clone() };
    let mut config = config;
    config.workers = Some(1);
    config.worker = worker;
    let events = config.worker.events;
    let cluster = LocalCluster::start_with(config)?;
    let client = cluster.client();
    client.set_progress(Progress::Off);
    let gpu_rank = client
        .workers()
        .iter()
        .find(|w| !w.gpu.is_empty())
        .map(|w| w.rank)
        .context("bench gemm: the local cluster started no GPU worker")?;

    // Operands made on the GPU worker (`linalg.random` runs there), one block each.
    let dist = Distribution::Normal { mean: 0.0, std: 1.0 };
    let a = DArray::random(&[m, k], &[m, k], dist, seed, dtype)?.persist(client)?;
    let b = DArray::random(&[k, n], &[k, n], dist, seed.wrapping_add(1), dtype)?.persist(client)?;
    let a_host: Vec<T> = a.to_ndarray::<T>(client)?.into_iter().collect();
    let b_host: Vec<T> = b.to_ndarray::<T>(client)?.into_iter().collect();

    // 1. cuBLAS directly, as the GPU worker's kernel calls it: the row-major
    // product C = A B is the column-major C^T = B^T A^T, no copy.
    let stream = gpu.stream();
    let da = stream.clone_htod(&a_host)?;
    let db = stream.clone_htod(&b_host)?;
    stream.synchronize()?;
    drop((a_host, b_host));
    let mut dc = stream.alloc_zeros::<T>(m * n)?;
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_N,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: dim(n)?,
        n: dim(m)?,
        k: dim(k)?,
        alpha: T::from_f64(1.0),
        lda: dim(n)?,
        ldb: dim(k)?,
        beta: T::from_f64(0.0),
        ldc: dim(n)?,
    };
    let mut product = || {
        // SAFETY: `db` holds the k x n row-major B (column-major n x k,
        // leading dimension n), `da` the m x k A (column-major k x m, leading
        // dimension k) and `dc` m * n elements (column-major n x m, leading
        // dimension n), as `cfg` describes.
        gpu.blas(|blas| unsafe { blas.gemm(cfg, &db, &da, &mut dc) }.map_err(|e| gpu.error("cuBLAS gemm", e)))
            .map_err(|e| anyhow!("{e}"))?;
        Ok::<(), anyhow::Error>(())
    };
    product()?; // warm-up: makes the cuBLAS handle
    stream.synchronize()?;
    let mut direct = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        stream.synchronize()?;
        let t = Instant::now();
        product()?;
        stream.synchronize()?;
        direct.push(t.elapsed().as_secs_f64());
    }
    let c_direct: Vec<T> = stream.clone_dtoh(&dc)?;
    stream.synchronize()?;
    drop((da, db, dc));

    // 2. The same product through the GPU worker.
    drop(a.matmul(&b)?.persist(client)?); // warm-up: the worker's cuBLAS handle
    device_sync()?;
    if events {
        client.take_events()?;
    }
    let (mut reported, mut done) = (Vec::with_capacity(repeat), Vec::with_capacity(repeat));
    let mut last: Option<DArray> = None;
    for _ in 0..repeat {
        drop(last.take()); // the previous product's device memory goes back
        let t = Instant::now();
        let c = a.matmul(&b)?.persist(client)?;
        reported.push(t.elapsed().as_secs_f64());
        device_sync()?;
        done.push(t.elapsed().as_secs_f64());
        last = Some(c);
    }
    let mut task = Vec::new();
    if events {
        let log = client.take_events()?;
        let gemm_kernel = log.kernels.iter().position(|name| name == "linalg.gemm");
        for w in &log.workers {
            for t in w.tasks.iter().filter(|t| Some(t.kernel as usize) == gemm_kernel) {
                ensure!(
                    w.rank == gpu_rank,
                    "bench gemm: the product ran on worker rank {}, not on the GPU worker (rank {gpu_rank})",
                    w.rank
                );
                task.push(t.dur_us as f64 * 1e-6);
            }
        }
    }
    let c_tessera: Vec<T> = last.context("a product")?.to_ndarray::<T>(client)?.into_iter().collect();
    drop((a, b));
    cluster.shutdown();

    let scale = c_direct.iter().fold(0.0f64, |x, v| x.max(v.to_f64().abs())).max(f64::MIN_POSITIVE);
    let diff = c_direct.iter().zip(&c_tessera).fold(0.0f64, |x, (p, q)| x.max((p.to_f64() - q.to_f64()).abs()));
    let max_rel_diff = diff / scale;
    // TF32 inputs keep 10 mantissa bits (unit roundoff 2^-11).
    let eps = if tf32 { 2f64.powi(-11) } else { <T as tessera_linalg::Element>::EPSILON.to_f64() };
    let tolerance = 100.0 * eps * (k as f64).sqrt();
    ensure!(
        c_direct.len() == c_tessera.len() && max_rel_diff <= tolerance,
        "bench gemm: the product through Tessera differs from cuBLAS's: max relative difference {max_rel_diff:.3e} (tolerance {tolerance:.1e})"
    );

    let direct_seconds = median(&mut direct);
    let tessera_seconds = median(&mut done);
    Ok(GpuGemmRun {
        m,
        k,
        n,
        dtype: if tf32 { "f32 (tf32 math)".into() } else { dtype.to_string() },
        gpu: format!("GPU {ordinal} ({})", gpu.name()),
        direct_seconds,
        direct_tflops: flops / direct_seconds / 1e12,
        tessera_seconds,
        tessera_tflops: flops / tessera_seconds / 1e12,
        tessera_reported_seconds: median(&mut reported),
        task_seconds: (!task.is_empty()).then(|| median(&mut task)),
        ratio: direct_seconds / tessera_seconds,
        max_rel_diff,
        repeat,
    })
}

/// One run of the elastic benchmark (medians over the repeats).
#[derive(Debug, Clone, Serialize)]
pub struct ElasticRun {
    pub workers: usize,
    /// From starting the worker processes to the first / the last one joined.
    pub join_first_seconds: f64,
    pub join_all_seconds: f64,
    /// `retire_workers` of all workers but one, which receives their blocks.
    pub drain_seconds: f64,
    /// From the retire call until those worker processes had exited.
    pub exit_seconds: f64,
    /// MiB of blocks the drained workers handed off.
    pub handed_off_mib: f64,
    /// Blocks computed per repeat, all verified after the drain.
    pub tasks: usize,
    /// One block of `mib` MiB fetched by a task on another worker
    /// ([`transfer`]: scheduling, fetch, bytes, report), in GiB/s ...
    pub transfer_gib_per_s: f64,
    /// ... against the same bytes over a plain loopback TCP socket between
    /// two threads, into a reused buffer.
    pub plain_tcp_gib_per_s: f64,
    pub repeat: usize,
    pub transport: &'static str,
}

/// Scale-up and drain of an elastic cluster on this host: starts a
/// scheduler on 127.0.0.1, starts `n` `exe worker` processes and times
/// until all have joined; fills each with blocks of `mib` MiB in all;
/// retires all but one (timing until the call returns and until their
/// processes are gone); checks every block arrived intact and no task ran
/// twice.
pub fn elastic(
    exe: &std::path::Path,
    n: usize,
    mib: usize,
    repeat: usize,
    dead_after: std::time::Duration,
) -> anyhow::Result<ElasticRun> {
    use anyhow::{ensure, Context};
    use std::process::{Command, Stdio};
    use std::time::Duration;
    use tessera_runtime::launch::elastic::{self, SchedulerOptions};
    use tessera_runtime::transport::secret::Secret;
    use tessera_runtime::transport::tcp::TcpOptions;

    ensure!(n >= 2, "bench elastic needs at least 2 workers (one receives the others' blocks)");
    let dir = std::env::temp_dir().join(format!("tessera-bench-elastic-{}", std::process::id()));
    let secret_path = dir.join("secret");
    let _ = std::fs::remove_dir_all(&dir);
    let secret = Secret::load_or_create(&secret_path)?;
    let mut tcp_opts = TcpOptions::new(secret);
    tcp_opts.dead_after = dead_after;
    let (mut first, mut all, mut drain, mut exit) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut moves = Vec::new();
    let blocks_per_worker = 4usize;
    let len = (mib << 20) / 8 / blocks_per_worker;
    let mut tasks = 0;
    for r in 0..repeat.max(1) {
        let opts = SchedulerOptions { listen: "127.0.0.1:0".into(), ..SchedulerOptions::new(tcp_opts.clone()) };
        let server = elastic::Scheduler::start(opts)?;
        let client = server.client().clone();
        let t0 = Instant::now();
        let mut children = Vec::new();
        for _ in 0..n {
            let child = Command::new(exe)
                .args(["worker", "--scheduler", server.address(), "--threads", "1", "--log", "warn"])
                .arg("--secret-file")
                .arg(&secret_path)
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start {}", exe.display()))?;
            children.push(child);
        }
        let mut t_first = None;
        loop {
            let k = client.workers().len();
            if k >= 1 && t_first.is_none() {
                t_first = Some(t0.elapsed().as_secs_f64());
            }
            if k >= n {
                break;
            }
            ensure!(t0.elapsed() < Duration::from_secs(60), "only {k} of {n} workers joined within 60 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        all.push(t0.elapsed().as_secs_f64());
        first.push(t_first.unwrap_or(f64::NAN));

        // Every worker computes blocks of its own.
        let ranks: Vec<u32> = client.workers().iter().map(|w| w.rank).collect();
        moves.extend(transfer(&client, ranks[0], ranks[1], mib << 20, 3)?);
        let mut g = Graph::new();
        let keys: Vec<Key> = (0..(n * blocks_per_worker) as u32).map(|i| Key::new(format!("e{r}"), [i])).collect();
        for (i, k) in keys.iter().enumerate() {
            let rank = ranks[i % ranks.len()];
            g.push(Task::new(k.clone(), "fill").param(&(len, i as f64)).on_rank(rank));
        }
        tasks = keys.len();
        let held = client.persist(g, &keys)?;
        held.wait()?;
        let keep = ranks[0];
        let leaving: Vec<u32> = ranks[1..].to_vec();
        let t1 = Instant::now();
        client.retire_workers(&leaving)?;
        drain.push(t1.elapsed().as_secs_f64());
        // Which process got which rank is not known here: wait until all
        // but one have exited, each with status 0.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut exited = vec![false; children.len()];
        while exited.iter().filter(|&&e| e).count() < leaving.len() {
            for (c, done) in children.iter_mut().zip(exited.iter_mut()) {
                if !*done {
                    if let Some(st) = c.try_wait()? {
                        ensure!(st.success(), "a drained worker exited with {st}");
                        *done = true;
                    }
                }
            }
            ensure!(Instant::now() < deadline, "drained workers did not exit within 60 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        exit.push(t1.elapsed().as_secs_f64());
        let workers_now: Vec<u32> = client.workers().iter().map(|w| w.rank).collect();
        ensure!(workers_now == [keep], "after the drain the workers are {workers_now:?}, expected [{keep}]");
        let out = held.gather()?;
        for (i, b) in out.iter().enumerate() {
            let v = b.as_f64().context("fill makes f64 blocks")?;
            ensure!(v.len() == len && v.iter().all(|&x| x == i as f64), "block {i} arrived damaged after the drain");
        }
        let locs = held.locations()?;
        ensure!(locs.iter().all(|l| l == &[keep]), "blocks are not all on the remaining worker: {locs:?}");
        drop(held);
        server.shutdown();
        for mut c in children {
            let _ = c.wait();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let handed_off_mib = ((n - 1) * blocks_per_worker * len * 8) as f64 / (1u64 << 20) as f64;
    let gib = |s: f64| (mib << 20) as f64 / s / (1u64 << 30) as f64;
    let mut plain = plain_tcp(mib << 20, 3 * repeat.max(1))?;
    Ok(ElasticRun {
        workers: n,
        join_first_seconds: median(&mut first),
        join_all_seconds: median(&mut all),
        drain_seconds: median(&mut drain),
        exit_seconds: median(&mut exit),
        handed_off_mib,
        tasks,
        transfer_gib_per_s: gib(median(&mut moves)),
        plain_tcp_gib_per_s: gib(median(&mut plain)),
        repeat: repeat.max(1),
        transport: "tcp",
    })
}

/// Seconds to move `bytes` over a loopback TCP connection between two
/// threads (write from one buffer, read into a reused one), `repeat` times.
fn plain_tcp(bytes: usize, repeat: usize) -> anyhow::Result<Vec<f64>> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let data = vec![1u8; bytes];
        let mut go = [0u8; 1];
        for _ in 0..repeat {
            s.read_exact(&mut go)?;
            s.write_all(&data)?;
        }
        Ok(())
    });
    let (mut r, _) = listener.accept()?;
    r.set_nodelay(true)?;
    let mut buf = vec![0u8; bytes];
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let t = Instant::now();
        r.write_all(&[1])?;
        r.read_exact(&mut buf)?;
        times.push(t.elapsed().as_secs_f64());
    }
    sender.join().map_err(|_| anyhow::anyhow!("the sending thread panicked"))??;
    Ok(times)
}

/// Figures of `tessera bench scale`: elastic workers through the job queue.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRun {
    pub workers: u32,
    /// Tasks of each run's graph, every one counted exactly once in the workers' logs.
    pub tasks: usize,
    /// From starting `tessera jobqueue scale N` (0 workers, the graph
    /// waiting) until the scheduler lists all N workers: median, min, max.
    pub up_seconds: [f64; 3],
    /// From starting `scale 1` in the middle of the graph until the other
    /// workers have left the scheduler (blocks handed off) ...
    pub down_left_seconds: [f64; 3],
    /// ... and until their jobs have ended (the command returns: it polls
    /// the batch system every 0.1 s).
    pub down_gone_seconds: [f64; 3],
    /// `scale 0` once the graph is done: until the last job has ended.
    pub zero_gone_seconds: [f64; 3],
    pub repeat: usize,
}

fn spread(xs: &mut [f64]) -> [f64; 3] {
    let m = median(xs);
    [m, xs.first().copied().unwrap_or(f64::NAN), xs.last().copied().unwrap_or(f64::NAN)]
}

/// Elastic scale-up and scale-down through `tessera jobqueue scale`, with a
/// computation running across both, on a batch system (the local Slurm in
/// `benches/elastic_slurm.sh`).
///
/// `client` is connected to a running scheduler with no workers; `tessera`
/// runs `exe <cluster flags> jobqueue --json scale N <jobqueue flags>
/// --log-dir DIR/runR`. Each run submits a graph of `tasks` sleeps of `ms`
/// (each feeding a one-element block, all summed) before any worker exists,
/// scales to `n` (timed until all joined), scales to 1 once a quarter of the
/// graph is done (timed until the others left and their jobs ended), checks
/// the result, scales to 0 (timed until the job ended), and counts in the
/// jobs' output (the workers log every task they run at debug) that every
/// task ran exactly once.
#[allow(clippy::too_many_arguments)]
pub fn scale(
    client: &Client,
    exe: &std::path::Path,
    cluster: &[String],
    jobqueue: &[String],
    log_dir: &std::path::Path,
    n: u32,
    tasks: u32,
    ms: u64,
    repeat: usize,
) -> anyhow::Result<ScaleRun> {
    use anyhow::{bail, ensure, Context};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    ensure!(n >= 2, "bench scale needs at least 2 workers (it scales down to 1)");
    ensure!(tasks >= 4, "bench scale needs at least 4 tasks");
    ensure!(
        client.try_workers()?.is_empty(),
        "bench scale needs a scheduler without workers (it counts the ones it starts)"
    );
    let scale_cmd = |target: u32, dir: &std::path::Path| {
        let mut c = Command::new(exe);
        c.args(cluster).args(["jobqueue", "--json", "scale", &target.to_string()]).args(jobqueue);
        c.arg("--log-dir").arg(dir).args(["--env", "RUST_LOG=info,tessera_runtime::worker=debug"]);
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    };
    let finish = |c: std::process::Child, what: &str| -> anyhow::Result<serde_json::Value> {
        let o = c.wait_with_output()?;
        if !o.status.success() {
            bail!("{what} failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr));
        }
        serde_json::from_slice(&o.stdout).with_context(|| format!("{what} printed no JSON"))
    };
    let wait_for = |what: &str, pred: &dyn Fn(usize) -> bool| -> anyhow::Result<()> {
        let t = Instant::now();
        while !pred(client.try_workers()?.len()) {
            ensure!(t.elapsed() < Duration::from_secs(300), "{what}: not within 300 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    };
    let (mut up, mut left, mut gone, mut zero) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut total_tasks = 0;
    for r in 0..repeat.max(1) {
        let dir = log_dir.join(format!("run{r}"));
        let _ = std::fs::remove_dir_all(&dir);
        let (g, tot, want) = naps(&r.to_string(), tasks, ms);
        total_tasks = g.len();
        let held = client.persist(g, std::slice::from_ref(&tot))?;

        let t0 = Instant::now();
        let c = scale_cmd(n, &dir).spawn().context("cannot start tessera jobqueue scale")?;
        wait_for("scale-up", &|k| k >= n as usize)?;
        up.push(t0.elapsed().as_secs_f64());
        finish(c, &format!("scale {n}"))?;

        let backlog0 = total_tasks;
        let t = Instant::now();
        while client.state()?.backlog() * 4 > backlog0 * 3 {
            ensure!(t.elapsed() < Duration::from_secs(300), "the graph made no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        let t1 = Instant::now();
        let c = scale_cmd(1, &dir).spawn()?;
        wait_for("scale-down", &|k| k == 1)?;
        left.push(t1.elapsed().as_secs_f64());
        let down = finish(c, "scale 1")?;
        gone.push(t1.elapsed().as_secs_f64());
        ensure!(
            down["retired"].as_array().map_or(0, Vec::len) == n as usize - 1,
            "scale 1 did not retire {} workers: {down}",
            n - 1
        );
        ensure!(client.state()?.backlog() > 0, "the graph ended before the scale-down finished; use more --tasks");

        let out = held.gather()?;
        ensure!(out[0].to_scalar() == Some(want), "{tot} = {:?}, expected {want}", out[0].to_scalar());
        drop(held);

        let t2 = Instant::now();
        let z = finish(scale_cmd(0, &dir).spawn()?, "scale 0")?;
        zero.push(t2.elapsed().as_secs_f64());
        ensure!(z["jobs"].as_array().is_some_and(Vec::is_empty), "jobs left after scale 0: {z}");

        // Every task ran once, in whichever job's worker it ran.
        naps_ran_once(&task_runs(&dir)?, &r.to_string(), tasks).map_err(anyhow::Error::msg)?;
    }
    Ok(ScaleRun {
        workers: n,
        tasks: total_tasks,
        up_seconds: spread(&mut up),
        down_left_seconds: spread(&mut left),
        down_gone_seconds: spread(&mut gone),
        zero_gone_seconds: spread(&mut zero),
        repeat: repeat.max(1),
    })
}

/// A graph of `n` tasks `nap<s>[i]` sleeping `ms` each, each feeding
/// `one<s>[i]` (a one-element block holding `i`; `fill` ignores its input),
/// and their sum `tot<s>`: the graph, the sum's key, and its value.
pub fn naps(s: &str, n: u32, ms: u64) -> (Graph, Key, f64) {
    let (nap, one) = (format!("nap{s}"), format!("one{s}"));
    let mut g = Graph::new();
    for i in 0..n {
        g.push(Task::new(Key::new(nap.as_str(), [i]), "sleep").param(&ms));
        g.push(
            Task::new(Key::new(one.as_str(), [i]), "fill")
                .param(&(1usize, f64::from(i)))
                .inputs([Key::new(nap.as_str(), [i])]),
        );
    }
    let tot = Key::new(format!("tot{s}"), []);
    g.push(Task::new(tot.clone(), "sum").param(&0.0f64).inputs((0..n).map(|i| Key::new(one.as_str(), [i]))));
    (g, tot, f64::from(n) * f64::from(n.saturating_sub(1)) / 2.0)
}

/// How often each task ran, by key, from the `ran` events elastic workers
/// log at debug level (`RUST_LOG=info,tessera_runtime::worker=debug`), in
/// every `*.out` file of `dir` (the batch jobs' output).
pub fn task_runs(dir: &std::path::Path) -> std::io::Result<std::collections::BTreeMap<String, usize>> {
    let mut runs = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.path().extension().is_some_and(|x| x == "out") {
            for line in std::fs::read_to_string(e.path())?.lines() {
                if let Some(task) = line.split(" ran ").nth(1).and_then(|r| r.split("task=").nth(1)) {
                    *runs.entry(task.split_whitespace().next().unwrap_or("").to_string()).or_default() += 1;
                }
            }
        }
    }
    Ok(runs)
}

/// Whether every task of [`naps`]`(s, n, _)` ran exactly once, and nothing else ran.
pub fn naps_ran_once(runs: &std::collections::BTreeMap<String, usize>, s: &str, n: u32) -> Result<(), String> {
    let mut want: Vec<String> = (0..n).flat_map(|i| [format!("nap{s}[{i}]"), format!("one{s}[{i}]")]).collect();
    want.push(format!("tot{s}"));
    let wrong: Vec<String> = want
        .iter()
        .filter(|k| runs.get(*k) != Some(&1))
        .map(|k| format!("{k} ran {} times", runs.get(k).copied().unwrap_or(0)))
        .collect();
    if !wrong.is_empty() || runs.len() != want.len() {
        return Err(format!(
            "{} of {} tasks did not run exactly once: {wrong:?} ({} keys ran)",
            wrong.len(),
            want.len(),
            runs.len()
        ));
    }
    Ok(())
}

/// One size of [`ucx`]: a bare UCP probe against Tessera's UCX plane.
#[derive(Clone, Debug, Serialize)]
pub struct UcxRun {
    pub bytes: usize,
    /// `UCX_TLS` in force (`default`: UCX's own choice).
    pub tls: String,
    /// 8 B: half a round trip in microseconds; larger: GB/s (10^9 B/s) streaming.
    pub probe: f64,
    pub plane: f64,
    /// plane / probe for bandwidth, probe / plane for latency (1 = as fast as bare UCP).
    pub ratio: f64,
    pub unit: &'static str,
}

/// Blocks of `bytes` between two UCP workers of this process, each driven by
/// its own thread: first bare (tagged send and receive through
/// [`tessera_runtime::transport::ucx::ucp`], nothing else), then through two
/// [`UcxPlane`](tessera_runtime::transport::ucx::UcxPlane)s as the runtime
/// uses them (command queue, progress thread, delivery into an inbox).
/// 8 bytes: ping-pong latency; larger: streaming bandwidth, `window` blocks
/// in flight. UCX reads `UCX_TLS` from the environment.
#[cfg(feature = "ucx")]
pub fn ucx(bytes: usize, repeat: usize) -> anyhow::Result<UcxRun> {
    use std::time::Duration;
    use tessera_runtime::protocol::{Endpoint, Msg, Payload};
    use tessera_runtime::transport::ucx::ucp::Worker;
    use tessera_runtime::transport::ucx::{Options, UcxPlane};
    use tessera_runtime::transport::{DataPlane, Mailboxes};
    use tessera_runtime::{Block, Buffer, TaskId};

    let latency = bytes <= 64;
    let window = if latency { 1 } else { (64usize << 20).div_ceil(bytes).clamp(1, 16) };
    let rounds = if latency { 2000 } else { ((1usize << 30) / (window * bytes)).clamp(4, 200) };
    let block = Block::new(vec![bytes], Buffer::U8(vec![1u8; bytes]));
    let header = block.header();
    let figure = |secs: f64| {
        if latency {
            secs / (2 * rounds) as f64 * 1e6
        } else {
            (rounds * window * bytes) as f64 / secs / 1e9
        }
    };

    // Bare: thread B receives `window` blocks (or echoes), thread A sends.
    let mut probe = Vec::new();
    for _ in 0..repeat.max(1) {
        let a = Worker::new(&Options::default())?;
        let b = Worker::new(&Options::default())?;
        let (a_addr, b_addr) = (a.address()?, b.address()?);
        let h = header.clone();
        let blk = block.clone();
        let receiver = std::thread::spawn(move || -> tessera_runtime::Result<()> {
            let ep = b.connect(0, &a_addr)?;
            for r in 0..rounds as u64 {
                let mut ops: Vec<_> =
                    (0..window as u64).map(|i| b.recv(r * 64 + i, h.clone())).collect::<Result<_, _>>()?;
                wait_all(&b, &mut ops)?;
                // As the plane does: the received blocks are made and
                // dropped, so their buffers are recycled, not faulted in anew.
                ops.into_iter().for_each(|op| drop(op.into_block()));
                // Ack (or echo): one message back.
                let mut back = vec![b.send(&ep, 1 << 40 | r, if latency { blk.clone() } else { Block::empty() })?];
                wait_all(&b, &mut back)?;
            }
            b.close(ep, false, Duration::from_secs(1));
            Ok(())
        });
        let ep = a.connect(1, &b_addr)?;
        let t = Instant::now();
        for r in 0..rounds as u64 {
            let mut ops: Vec<_> =
                (0..window as u64).map(|i| a.send(&ep, r * 64 + i, block.clone())).collect::<Result<_, _>>()?;
            let ack_header = if latency { header.clone() } else { Block::empty().header() };
            ops.push(a.recv(1 << 40 | r, ack_header)?);
            wait_all(&a, &mut ops)?;
        }
        probe.push(t.elapsed().as_secs_f64());
        receiver.join().expect("probe thread")?;
        a.close(ep, false, Duration::from_secs(1));
    }

    // Through two planes: blocks delivered into an inbox on each side.
    let mut plane = Vec::new();
    for _ in 0..repeat.max(1) {
        let (mut ma, mut mb) = (Mailboxes::new(), Mailboxes::new());
        let (ia, ib) = (ma.open(Endpoint::worker(1)), mb.open(Endpoint::worker(2)));
        let pa = UcxPlane::start(1, &Options::default(), ma)?;
        let pb = UcxPlane::start(2, &Options::default(), mb)?;
        pa.learn(2, pb.address().to_vec());
        pb.learn(1, pa.address().to_vec());
        let take = |inbox: &crossbeam_channel::Receiver<Msg>| -> anyhow::Result<()> {
            match inbox.recv_timeout(Duration::from_secs(60))? {
                Msg::Block { payload: Payload::Ready(_), .. } => Ok(()),
                other => anyhow::bail!("expected a block, got {other:?}"),
            }
        };
        let t = Instant::now();
        let mut id = 0u64;
        for _ in 0..rounds {
            for _ in 0..window {
                id += 1;
                pb.expect_block(1, Endpoint::worker(2), TaskId(id), header.clone());
                pa.send_block(2, TaskId(id), block.clone());
            }
            for _ in 0..window {
                take(&ib)?;
            }
            if latency {
                id += 1;
                pa.expect_block(2, Endpoint::worker(1), TaskId(id), header.clone());
                pb.send_block(1, TaskId(id), block.clone());
                take(&ia)?;
            }
        }
        plane.push(t.elapsed().as_secs_f64());
        pa.stop();
        pb.stop();
    }
    let (p, q) = (figure(median(&mut probe)), figure(median(&mut plane)));
    Ok(UcxRun {
        bytes,
        tls: std::env::var("UCX_TLS").unwrap_or_else(|_| "default".into()),
        probe: p,
        plane: q,
        ratio: if latency { p / q } else { q / p },
        unit: if latency { "us" } else { "GB/s" },
    })
}

/// Drives `w` until every operation in `ops` has completed.
#[cfg(feature = "ucx")]
fn wait_all(
    w: &tessera_runtime::transport::ucx::ucp::Worker,
    ops: &mut [tessera_runtime::transport::ucx::ucp::Op],
) -> tessera_runtime::Result<()> {
    for op in ops.iter_mut() {
        if op.is_done() {
            continue;
        }
        loop {
            w.progress();
            if let Some(r) = w.test(op) {
                r?;
                break;
            }
        }
    }
    Ok(())
}

//! GPU workers (feature `cuda`): the command line with and without a CUDA
//! driver, GPU workers in local clusters running the shared bodies, cuBLAS
//! GEMM and the NVRTC random kernel against the CPU kernels, TSQR and SVD
//! on clusters with GPU workers, where GPU-capable tasks run, and a GPU's
//! memory account (eviction, spilling, blocks too large for it).
//!
//! This machine may have no GPU (CI does not): each test that needs one
//! asks [`usable_gpus`] first, which prints one line naming why it skips
//! (`skipped NAME: no CUDA driver found (tessera::runtime::gpu::probe)`) and
//! the test returns. The command-line tests run everywhere and check what
//! the binary must say in either case. Tolerances scale with the element
//! type's machine epsilon and the size of the problem, as in
//! `tests/common/arrays.rs`.

mod common;

use common::arrays::{local_normal, with_singular_values};

use std::process::{Command, Output};

use tessera::linalg::ndarray::{Array1, Array2, ArrayD, ArrayView2, Axis};
use tessera::linalg::{compute, randomized_svd, svd, tsqr, Chunks, DArray, Distribution, RandomizedSvd};
use tessera::runtime::gpu::{probe, DeviceData, DeviceInfo, Gpu, GpuSelect, Probe};
use tessera::{Block, Buffer, Client, DType, Graph, Key, LocalCluster, Registry, Task};

// ---- skipping, clusters, the binary ----------------------------------------

/// The GPUs this process can use, or `None` after printing one line naming
/// why `test` is skipped: no driver, a driver that fails or shows no GPU,
/// or a CUDA library the GPU kernels load missing.
fn usable_gpus(test: &str) -> Option<Vec<DeviceInfo>> {
    let why = match probe() {
        Probe::Found { devices, libraries, .. } => {
            let missing: Vec<&str> = libraries.iter().filter(|(_, ok)| !ok).map(|(l, _)| *l).collect();
            if devices.is_empty() {
                "the CUDA driver shows no GPU".to_owned()
            } else if !missing.is_empty() {
                format!("{} GPU(s) but CUDA libraries missing: {}", devices.len(), missing.join(", "))
            } else {
                return Some(devices);
            }
        }
        other => other.describe().join("; "),
    };
    eprintln!("skipped {test}: {why} (tessera::runtime::gpu::probe)");
    None
}

/// A local cluster of `cpu_workers` CPU workers and one GPU worker per GPU.
fn gpu_cluster(cpu_workers: usize, registry: Registry) -> LocalCluster {
    let cluster = LocalCluster::builder().workers(cpu_workers).registry(registry).gpus(GpuSelect::All).start().unwrap();
    assert!(!gpu_ranks(cluster.client()).is_empty(), "--gpus all on a machine with GPUs started no GPU worker");
    cluster
}

/// A local cluster of CPU workers only: the reference GPU results are held to.
fn cpu_cluster(workers: usize) -> LocalCluster {
    LocalCluster::builder().workers(workers).start().unwrap()
}

/// Ranks of the cluster's GPU workers.
fn gpu_ranks(client: &Client) -> Vec<u32> {
    client.workers().iter().filter(|w| !w.gpu.is_empty()).map(|w| w.rank).collect()
}

/// Runs the `tessera` binary as a user would: no MPI launcher, log filter or
/// Tessera settings inherited from the test's environment, plus `env`.
fn tessera(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(args);
    for var in [
        "RUST_LOG",
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "TESSERA_GPUS",
        "TESSERA_GPU_MEMORY",
        "TESSERA_WORKERS",
        "TESSERA_THREADS",
        "TESSERA_TRANSPORT",
        "TESSERA_SCHEDULER",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run tessera")
}

/// stdout and stderr as text, and both in one string for messages.
fn texts(out: &Output) -> (String, String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let both = format!("status {:?}\n--- stdout\n{stdout}--- stderr\n{stderr}", out.status.code());
    (stdout, stderr, both)
}

/// Whether `text` names a GPU (`GPU 0`, `GPU 1`, ...).
fn names_a_gpu(text: &str) -> bool {
    text.match_indices("GPU ").any(|(i, m)| text[i + m.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

// ---- numerics ---------------------------------------------------------------

fn eps(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => f64::from(f32::EPSILON),
        _ => f64::EPSILON,
    }
}

fn fro(a: &Array2<f64>) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn max_abs(a: &Array2<f64>) -> f64 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn max_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    assert_eq!(a.dim(), b.dim());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// ‖QᵀQ − I‖_max for the columns of `q`.
fn orthogonality(q: ArrayView2<'_, f64>) -> f64 {
    let qtq = q.t().dot(&q);
    let n = qtq.nrows();
    max_abs(&(qtq - Array2::<f64>::eye(n)))
}

/// Computes `arrays` on `client` and gathers them widened to f64 (exactly,
/// for f32), checking each came back in its array's element type.
fn gather(client: &Client, arrays: &[&DArray]) -> Vec<ArrayD<f64>> {
    let (_, got) = compute(client, &[], arrays).unwrap();
    got.into_iter()
        .zip(arrays)
        .map(|(g, a)| {
            assert_eq!(g.dtype(), a.dtype(), "{a:?} came back as {}", g.dtype());
            g.into_ndarray::<f64>().unwrap()
        })
        .collect()
}

fn two(a: ArrayD<f64>) -> Array2<f64> {
    a.into_dimensionality().expect("2-D")
}

fn one(a: ArrayD<f64>) -> Array1<f64> {
    a.into_dimensionality().expect("1-D")
}

/// `data` as a distributed array of `dtype` (rounded once for f32), and the
/// values it then holds, widened back to f64.
fn distribute(data: &Array2<f64>, chunks: &[usize], dtype: DType) -> (DArray, Array2<f64>) {
    match dtype {
        DType::F32 => {
            let rounded = data.mapv(|x| x as f32);
            (DArray::from_ndarray(rounded.view(), chunks).unwrap(), rounded.mapv(f64::from))
        }
        _ => (DArray::from_ndarray(data.view(), chunks).unwrap(), data.clone()),
    }
}

// ---- the command line: runs everywhere --------------------------------------

/// `tessera info` (and `info --json`) list the GPUs, or say why there are none.
#[test]
fn info_lists_gpus_or_says_why() {
    let out = tessera(&["info"], &[]);
    let (stdout, _, both) = texts(&out);
    assert!(out.status.success(), "{both}");
    let json_out = tessera(&["info", "--json"], &[]);
    let (json_text, _, json_both) = texts(&json_out);
    assert!(json_out.status.success(), "{json_both}");
    // The text, then one JSON object on the last line.
    let last = json_text.lines().last().unwrap_or_default();
    let info: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {json_both}"));
    let gpus = &info["gpus"];
    match probe() {
        Probe::NoDriver => {
            assert!(stdout.contains("gpus:") && stdout.contains("no CUDA driver found"), "{both}");
            assert!(!stdout.contains("GPU 0:"), "{both}");
            assert_eq!(gpus["unavailable"], "no CUDA driver found", "{json_both}");
        }
        Probe::Found { devices, driver, .. } => {
            assert!(stdout.contains(&format!("CUDA driver {}.{}", driver.0, driver.1)), "{both}");
            for d in &devices {
                assert!(stdout.contains(&format!("GPU {}: {}", d.ordinal, d.name)), "{both}");
            }
            assert!(devices.is_empty() || stdout.contains("GPU 0:"), "{both}");
            let listed = gpus["devices"].as_array().unwrap_or_else(|| panic!("no devices: {json_both}"));
            assert_eq!(listed.len(), devices.len(), "{json_both}");
            for (d, j) in devices.iter().zip(listed) {
                assert_eq!((j["ordinal"].as_u64(), j["name"].as_str()), (Some(d.ordinal as u64), Some(&*d.name)));
            }
            for lib in ["cuBLAS", "cuSOLVER", "NVRTC"] {
                assert!(gpus["libraries"].to_string().contains(lib), "{json_both}");
            }
        }
        Probe::Failed(e) => {
            assert!(stdout.contains("the CUDA driver failed"), "{e}: {both}");
            assert!(gpus["unavailable"].as_str().is_some_and(|u| u.contains("the CUDA driver failed")), "{json_both}");
        }
        Probe::NotCompiled => unreachable!("this test is built with the `cuda` feature"),
    }
}

/// `--gpus all` is no error without a driver: the cluster runs on its CPU
/// workers and says why; an explicit device list is an error naming the
/// flag and the cause, never a panic. With a driver, `--gpus all` adds one
/// worker per GPU and a device that does not exist is an error.
#[test]
fn gpus_all_without_a_driver_runs_on_cpu() {
    let out = tessera(&["--gpus", "all", "--workers", "2", "-q", "demo"], &[]);
    let (stdout, stderr, both) = texts(&out);
    assert!(!both.contains("panicked"), "{both}");
    match probe() {
        Probe::NoDriver => {
            assert!(out.status.success(), "{both}");
            assert!(stderr.contains("--gpus all") && stderr.contains("no CUDA driver found"), "{both}");
            assert!(stdout.contains("tessera demo: 2 workers"), "CPU workers only: {both}");
            assert!(stdout.contains("(result checked)"), "{both}");

            let out = tessera(&["--gpus", "0", "--workers", "2", "-q", "demo"], &[]);
            let (_, stderr, both) = texts(&out);
            assert!(!out.status.success(), "{both}");
            assert!(stderr.contains("--gpus 0") && stderr.contains("no CUDA driver found"), "{both}");
            assert!(!both.contains("panicked") && !both.contains("tessera demo:"), "{both}");
        }
        Probe::Found { devices, .. } => {
            assert!(out.status.success(), "{both}");
            let n = devices.len();
            assert!(stdout.contains(&format!("tessera demo: {} workers", 2 + n)), "2 CPU + {n} GPU workers: {both}");
            assert!(stdout.contains("(result checked)"), "{both}");
            let missing = n.to_string();
            let out = tessera(&["--gpus", &missing, "--workers", "2", "-q", "demo"], &[]);
            let (_, stderr, both) = texts(&out);
            assert!(!out.status.success(), "{both}");
            assert!(stderr.contains(&format!("there is no GPU {n}")), "{both}");
            assert!(!both.contains("panicked"), "{both}");
        }
        Probe::Failed(e) => {
            assert!(!out.status.success() && stderr.contains("the CUDA driver failed"), "{e}: {both}");
        }
        Probe::NotCompiled => unreachable!("this test is built with the `cuda` feature"),
    }
}

// ---- clusters with GPU workers: each skips without a GPU --------------------

/// CPU workers first, then one single-threaded GPU worker per GPU, each
/// naming its device; a device list picks GPUs, and a device that does not
/// exist is refused before anything starts.
#[test]
fn clusters_list_gpu_workers_after_cpu_workers() {
    let Some(devices) = usable_gpus("clusters_list_gpu_workers_after_cpu_workers") else { return };
    let cluster = LocalCluster::builder().workers(2).threads_per_worker(2).gpus(GpuSelect::All).start().unwrap();
    let workers = cluster.client().workers();
    assert_eq!(workers.len(), 2 + devices.len(), "{workers:?}");
    for (i, w) in workers.iter().enumerate() {
        assert_eq!(w.rank, i as u32 + 1);
        if i < 2 {
            assert!(w.gpu.is_empty() && w.threads == 2, "CPU worker {w:?}");
        } else {
            let d = &devices[i - 2];
            assert!(w.gpu.contains(&format!("GPU {}", d.ordinal)) && w.gpu.contains(&d.name), "{w:?} for {d:?}");
            assert_eq!(w.threads, 1, "a GPU worker runs one task at a time: {w:?}");
        }
    }
    drop(cluster);

    let last = devices.len() - 1;
    let one = LocalCluster::builder().workers(1).gpus(GpuSelect::List(vec![last])).start().unwrap();
    let workers = one.client().workers();
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert!(workers[1].gpu.contains(&format!("GPU {last}")), "{workers:?}");
    drop(one);

    let e = LocalCluster::builder().workers(1).gpus(GpuSelect::List(vec![devices.len()])).start().err().unwrap();
    let e = e.to_string();
    assert!(e.contains(&format!("--gpus {}", devices.len())) && e.contains("there is no GPU"), "{e}");
    let e = Gpu::open(devices.len(), Some(1 << 20)).unwrap_err().to_string();
    assert!(e.contains(&format!("GPU {}", devices.len())), "{e}");
}

/// The multi-rank and array bodies every cluster passes, on two CPU workers
/// and the GPU workers: GPU-capable tasks (GEMM, random blocks) run on the
/// GPUs, everything else wherever its data is.
#[test]
fn shared_bodies_with_gpu_workers() {
    let Some(_) = usable_gpus("shared_bodies_with_gpu_workers") else { return };
    let cluster = gpu_cluster(2, common::registry());
    common::all(cluster.client());
    common::arrays::all(cluster.client());
}

/// cuBLAS GEMM against the CPU kernel: f64 and f32, square and rectangular,
/// every combination of transposed operands, several blocks along each
/// axis (so partial products are summed), inputs made on the GPU and
/// inputs uploaded from the host (with a contraction axis that is
/// rechunked). max |GPU - CPU| <= 4 eps k max|A| max|B|, k the inner
/// dimension: a few times the expected rounding difference of two
/// summation orders, and far below what TF32 or a wrong operand gives.
#[test]
fn gemm_on_gpu_matches_cpu() {
    let Some(_) = usable_gpus("gemm_on_gpu_matches_cpu") else { return };
    let gpu = gpu_cluster(1, Registry::builtin());
    let cpu = cpu_cluster(4);
    let uniform = Distribution::Uniform { low: -1.0, high: 1.0 };
    for dtype in [DType::F64, DType::F32] {
        for (m, k, n, c) in [(1000, 700, 500, 256), (600, 600, 600, 200), (300, 1, 7, 128)] {
            let a = DArray::random(&[m, k], &[c, c], uniform, 1, dtype).unwrap();
            let at = DArray::random(&[k, m], &[c, c], uniform, 2, dtype).unwrap();
            let b = DArray::random(&[k, n], &[c, c], uniform, 3, dtype).unwrap();
            let bt = DArray::random(&[n, k], &[c, c], uniform, 4, dtype).unwrap();
            let products = [
                ("A @ B", a.matmul(&b).unwrap()),
                ("Aᵀ @ B", at.t().matmul(&b).unwrap()),
                ("A @ Bᵀ", a.matmul(&bt.t()).unwrap()),
                ("Aᵀ @ Bᵀ", at.t().matmul(&bt.t()).unwrap()),
            ];
            let mut arrays: Vec<&DArray> = vec![&a, &at, &b, &bt];
            arrays.extend(products.iter().map(|(_, p)| p));
            let on_gpu: Vec<Array2<f64>> = gather(gpu.client(), &arrays).into_iter().map(two).collect();
            let on_cpu: Vec<Array2<f64>> = gather(cpu.client(), &arrays).into_iter().map(two).collect();
            let scale = on_cpu[..4].iter().map(max_abs).fold(0.0, f64::max);
            let tol = 4.0 * eps(dtype) * k as f64 * scale * scale;
            for (i, (what, p)) in products.iter().enumerate() {
                assert_eq!(p.shape(), &[m, n]);
                let d = max_diff(&on_gpu[4 + i], &on_cpu[4 + i]);
                assert!(
                    d <= tol,
                    "{dtype} {m}x{k} @ {k}x{n} in {c}-blocks, {what}: max |GPU - CPU| = {d:e} (tol {tol:e})"
                );
            }
        }
        // Host data uploaded to the GPU, irregular blocks, and a
        // contraction axis chunked differently on the two sides.
        let (la, lb) = (local_normal(301, 257, 5), local_normal(257, 130, 6));
        let a_chunks = Chunks::explicit(&[301, 257], vec![vec![100, 150, 51], vec![100, 157]]).unwrap();
        let b_chunks = Chunks::explicit(&[257, 130], vec![vec![57, 200], vec![64, 66]]).unwrap();
        let (a, b) = match dtype {
            DType::F32 => (
                DArray::from_ndarray(la.mapv(|x| x as f32).view(), a_chunks).unwrap(),
                DArray::from_ndarray(lb.mapv(|x| x as f32).view(), b_chunks).unwrap(),
            ),
            _ => {
                (DArray::from_ndarray(la.view(), a_chunks).unwrap(), DArray::from_ndarray(lb.view(), b_chunks).unwrap())
            }
        };
        let c = a.matmul(&b).unwrap();
        let g = two(gather(gpu.client(), &[&c]).remove(0));
        let w = two(gather(cpu.client(), &[&c]).remove(0));
        let tol = 4.0 * eps(dtype) * 257.0 * max_abs(&la) * max_abs(&lb);
        let d = max_diff(&g, &w);
        assert!(d <= tol, "{dtype} host inputs 301x257 @ 257x130: max |GPU - CPU| = {d:e} (tol {tol:e})");
    }
}

/// `--gpu-math tf32`: f32 products on tensor cores stay within the accuracy
/// the flag states (TF32 inputs keep 10 mantissa bits: unit roundoff 2^-11),
/// against the exact f64 product of the same f32 inputs.
#[test]
fn tf32_products_keep_their_stated_accuracy() {
    let Some(_) = usable_gpus("tf32_products_keep_their_stated_accuracy") else { return };
    let cluster = LocalCluster::builder()
        .workers(1)
        .gpus(GpuSelect::All)
        .gpu_math(tessera::runtime::gpu::GpuMath::Tf32)
        .start()
        .unwrap();
    let cpu = cpu_cluster(2);
    let (m, k, n) = (512, 1024, 384);
    let uniform = Distribution::Uniform { low: -1.0, high: 1.0 };
    let a = DArray::random(&[m, k], &[256, 512], uniform, 11, DType::F32).unwrap();
    let b = DArray::random(&[k, n], &[512, 384], uniform, 12, DType::F32).unwrap();
    let c = a.matmul(&b).unwrap();
    let inputs = gather(cpu.client(), &[&a, &b]);
    let exact = two(inputs[0].clone()).dot(&two(inputs[1].clone()));
    let tf32 = two(gather(cluster.client(), &[&c]).remove(0));
    // Each product term rounds its two inputs to TF32 (2 * 2^-11 relative),
    // |terms| <= 1; the sum adds f32 rounding.
    let tol = (2.0 * 2f64.powi(-11) + 2.0 * eps(DType::F32)) * k as f64;
    let d = max_diff(&tf32, &exact);
    assert!(d <= tol, "TF32 {m}x{k} @ {k}x{n}: max |C - C_exact| = {d:e} (tol {tol:e})");
}

/// Elementwise programs on blocks held only on a GPU run there (their result
/// stays on the device) and compute what the CPU kernel does: bit for bit
/// for `+ * abs sqrt max` (IEEE-exact, no fused multiply-add), within a few
/// ulps for `exp` and `ln`; on host blocks they run on the CPU as before.
#[test]
fn elementwise_on_device_blocks_matches_cpu() {
    use tessera::linalg::expr::{Binary, Unary};
    let Some(_) = usable_gpus("elementwise_on_device_blocks_matches_cpu") else { return };
    let gpu = gpu_cluster(1, registry_with_where());
    let cpu = cpu_cluster(2);
    let uniform = Distribution::Uniform { low: -2.0, high: 2.0 };
    for dtype in [DType::F64, DType::F32] {
        let a = DArray::random(&[700, 300], &[256, 300], uniform, 21, dtype).unwrap();
        let b = DArray::random(&[700, 300], &[256, 300], uniform, 22, dtype).unwrap();
        let exact = a.zip(Binary::Mul, &b).unwrap().scalar(Binary::Add, 0.5).map(Unary::Abs).map(Unary::Sqrt);
        let exact = exact.zip(Binary::Max, &a).unwrap();
        let rounded = exact.map(Unary::Exp).map(Unary::Ln).scalar(Binary::Sub, 0.25);
        let (a_g, b_g) = (a.persist(gpu.client()).unwrap(), b.persist(gpu.client()).unwrap());
        let on_device = exact.persist(gpu.client()).unwrap();
        assert!(
            where_are(gpu.client(), &on_device).iter().all(|w| w.starts_with("on_host=false device=GPU")),
            "{dtype}: the elementwise result stays on the device: {:?}",
            where_are(gpu.client(), &on_device)
        );
        drop((a_g, b_g));
        let g = gather(gpu.client(), &[&exact, &rounded]);
        let c = gather(cpu.client(), &[&exact, &rounded]);
        for (i, (x, y)) in g[0].iter().zip(&c[0]).enumerate() {
            assert_eq!(x.to_bits(), y.to_bits(), "{dtype} element {i}: GPU {x:e}, CPU {y:e}");
        }
        for (i, (x, y)) in g[1].iter().zip(&c[1]).enumerate() {
            let tol = 8.0 * eps(dtype) * (1.0 + y.abs());
            assert!((x - y).abs() <= tol, "{dtype} exp/ln element {i}: GPU {x:e}, CPU {y:e}");
        }
    }
}

/// A test kernel that reports, without reading it, where its input's
/// elements are: `on_host=B device=GPU N|none`.
fn registry_with_where() -> Registry {
    let mut r = Registry::builtin();
    r.register("test.where", |_, (): (), inputs: &[Block]| {
        let b = &inputs[0];
        let device = b.device_copy().map_or_else(|| "none".to_owned(), |c| c.device());
        Ok(Block::from_bytes(format!("on_host={} device={device}", b.on_host()).into_bytes()))
    });
    r
}

/// Where the blocks of `a` (persisted) are, as `test.where` reports them.
fn where_are(client: &Client, a: &DArray) -> Vec<String> {
    let mut g = Graph::new();
    let keys: Vec<Key> = a
        .keys()
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let key = Key::new("test.where", [i as u32]);
            g.push(Task::new(key.clone(), "test.where").param(&()).inputs([k.clone()]));
            key
        })
        .collect();
    let out = client.compute(g, &keys).unwrap();
    out.iter().map(|b| String::from_utf8(b.as_bytes().to_vec()).unwrap()).collect()
}

/// Random arrays made on GPU workers equal the CPU kernel's: uniform ones
/// bit for bit, normal ones (log and cos differ by an ulp or two between
/// the device's and the host's math libraries) within 8 eps of the terms'
/// magnitude, f64 and f32, regular and irregular blocks and 1-D arrays.
/// The blocks stay in device memory until gathered, and keep their device
/// copy after.
#[test]
fn random_on_gpu_matches_cpu() {
    let Some(_) = usable_gpus("random_on_gpu_matches_cpu") else { return };
    let gpu = gpu_cluster(1, registry_with_where());
    let cpu = cpu_cluster(2);
    let uniforms = [(0.0, 1.0), (-1.0, 1.0), (-2.0, 3.0)].map(|(low, high)| Distribution::Uniform { low, high });
    let normals = [(0.0, 1.0), (1.0, 2.0)].map(|(mean, std)| Distribution::Normal { mean, std });
    for dtype in [DType::F64, DType::F32] {
        for (shape, chunks) in [(vec![1000, 300], vec![256, 128]), (vec![5000], vec![1024])] {
            for (seed, dist) in uniforms.iter().chain(&normals).enumerate() {
                let a = DArray::random(&shape, chunks.as_slice(), *dist, 40 + seed as u64, dtype).unwrap();
                let g = gather(gpu.client(), &[&a]).remove(0);
                let c = gather(cpu.client(), &[&a]).remove(0);
                let what = format!("{dtype} {shape:?} in {chunks:?}, {dist:?}");
                match *dist {
                    Distribution::Uniform { .. } => {
                        for (i, (x, y)) in g.iter().zip(&c).enumerate() {
                            assert_eq!(x.to_bits(), y.to_bits(), "{what}: element {i}: GPU {x:e}, CPU {y:e}");
                        }
                    }
                    Distribution::Normal { mean, .. } => {
                        for (i, (x, y)) in g.iter().zip(&c).enumerate() {
                            let tol = 8.0 * eps(dtype) * (mean.abs() + (y - mean).abs());
                            assert!((x - y).abs() <= tol, "{what}: element {i}: GPU {x:e}, CPU {y:e} (tol {tol:e})");
                        }
                    }
                }
            }
        }
        // Made on a GPU worker, held there on the device until read.
        let a = DArray::random(&[600, 50], &[200, 0], Distribution::Uniform { low: 0.0, high: 1.0 }, 9, dtype).unwrap();
        let kept = a.persist(gpu.client()).unwrap();
        for w in where_are(gpu.client(), &kept) {
            assert!(w.starts_with("on_host=false device=GPU "), "{dtype}: a random block made on a GPU: {w}");
        }
        let got = two(gather(gpu.client(), &[&kept]).remove(0));
        assert_eq!(got, two(gather(cpu.client(), &[&a]).remove(0)), "{dtype}");
        for w in where_are(gpu.client(), &kept) {
            assert!(
                w.starts_with("on_host=true device=GPU "),
                "{dtype}: gathered, the block keeps its device copy: {w}"
            );
        }
    }
}

/// TSQR of a tall matrix made on the GPU workers, f64 and f32:
/// ‖A − QR‖/‖A‖ and ‖QᵀQ − I‖ within eps-scaled tolerances, R upper
/// triangular with a non-negative diagonal, and R equal to the CPU
/// cluster's (R is unique, and A well conditioned).
#[test]
fn tsqr_on_gpu_workers() {
    let Some(_) = usable_gpus("tsqr_on_gpu_workers") else { return };
    let gpu = gpu_cluster(2, Registry::builtin());
    let cpu = cpu_cluster(4);
    let (m, n) = (20_000, 64);
    for dtype in [DType::F64, DType::F32] {
        let a = DArray::random(&[m, n], &[5_000, 0], Distribution::Normal { mean: 0.0, std: 1.0 }, 17, dtype).unwrap();
        let f = tsqr(&a).unwrap();
        gpu_kernel_runs(gpu.client());
        let mut got = gather(gpu.client(), &[&a, &f.q, &f.r]).into_iter().map(two);
        // Whatever parts of TSQR are GPU-capable ran on the GPU workers.
        let ran = gpu_kernel_runs(gpu.client());
        let registry = Registry::builtin();
        for kernel in registry.names().filter(|k| k.starts_with("linalg.qr")) {
            if registry.id(kernel).is_some_and(|id| registry.is_gpu(id)) {
                assert!(ran.get(kernel).is_some_and(|&n| n > 0), "{dtype}: {kernel} is GPU-capable: {ran:?}");
            }
        }
        let (a_, q, r) = (got.next().unwrap(), got.next().unwrap(), got.next().unwrap());
        assert_eq!((q.dim(), r.dim()), ((m, n), (n, n)), "{dtype}");
        let e = eps(dtype);
        let tol = 20.0 * e * (n as f64).sqrt();
        let res = fro(&(&a_ - &q.dot(&r))) / fro(&a_);
        assert!(res < tol, "{dtype} {m}x{n}: |A - QR|/|A| = {res:e} (tol {tol:e})");
        let orth = orthogonality(q.view());
        let tol = 20.0 * e * (m as f64).sqrt();
        assert!(orth < tol, "{dtype} {m}x{n}: |QtQ - I| = {orth:e} (tol {tol:e})");
        for i in 0..n {
            assert!(r[[i, i]] >= 0.0, "{dtype}: R[{i},{i}] = {}", r[[i, i]]);
            for j in 0..i {
                assert_eq!(r[[i, j]], 0.0, "{dtype}: R[{i},{j}] below the diagonal");
            }
        }
        let r_cpu = two(gather(cpu.client(), &[&f.r]).remove(0));
        let d = fro(&(&r - &r_cpu)) / fro(&r_cpu);
        let tol = 100.0 * e * (m as f64).sqrt();
        assert!(d < tol, "{dtype}: |R_gpu - R_cpu|/|R| = {d:e} (tol {tol:e})");
    }
}

/// Exact SVD (TSQR, then the small SVD) of a tall matrix with known
/// singular values (1 down to 1e-3) on a cluster with GPU workers, f64 and
/// f32: the singular values equal the known ones and the CPU cluster's,
/// A = U S Vᵀ, and U and V have orthonormal columns, within eps-scaled
/// tolerances.
#[test]
fn svd_on_gpu_workers() {
    let Some(_) = usable_gpus("svd_on_gpu_workers") else { return };
    let gpu = gpu_cluster(2, Registry::builtin());
    let cpu = cpu_cluster(4);
    let (m, n) = (20_000, 64);
    let known: Vec<f64> = (0..n).map(|i| 10f64.powf(-3.0 * i as f64 / (n - 1) as f64)).collect();
    let data = with_singular_values(m, n, &known, 31);
    for dtype in [DType::F64, DType::F32] {
        let (a, data) = distribute(&data, &[5_000, 0], dtype);
        let f = svd(&a).unwrap();
        let mut got = gather(gpu.client(), &[&f.u, &f.s, &f.vt]).into_iter();
        let u = two(got.next().unwrap());
        let s = one(got.next().unwrap());
        let vt = two(got.next().unwrap());
        assert_eq!((u.dim(), s.len(), vt.dim()), ((m, n), n, (n, n)), "{dtype}");
        let s_cpu = one(gather(cpu.client(), &[&f.s]).remove(0));
        let e = eps(dtype);
        let tol = 100.0 * e * (n as f64).sqrt() * known[0];
        for j in 0..n {
            assert!((s[j] - known[j]).abs() <= tol, "{dtype}: s[{j}] = {:e}, known {:e} (tol {tol:e})", s[j], known[j]);
            assert!((s[j] - s_cpu[j]).abs() <= tol, "{dtype}: s[{j}] = {:e}, CPU {:e} (tol {tol:e})", s[j], s_cpu[j]);
        }
        let us = &u * &s.clone().insert_axis(Axis(0));
        let res = fro(&(&data - &us.dot(&vt))) / fro(&data);
        let tol = 50.0 * e * (n as f64).sqrt();
        assert!(res < tol, "{dtype}: |A - USVt|/|A| = {res:e} (tol {tol:e})");
        let tol = 50.0 * e * (m as f64).sqrt();
        assert!(orthogonality(u.view()) < tol, "{dtype}: U not orthonormal: {:e}", orthogonality(u.view()));
        assert!(orthogonality(vt.t()) < tol, "{dtype}: V not orthonormal: {:e}", orthogonality(vt.t()));
    }
}

/// Randomized SVD (random test matrix and GEMMs on the GPUs) of a tall
/// matrix with known singular values 100, 50, 25, 10, 5 and then 1e-3:
/// the top k within Halko, Martinsson and Tropp's bound for the
/// oversampling and power iterations, never above the exact values,
/// orthonormal factors, A v_j = s_j u_j, and the same values as the CPU
/// cluster's (same seed, same test matrix).
#[test]
fn randomized_svd_on_gpu_workers() {
    let Some(_) = usable_gpus("randomized_svd_on_gpu_workers") else { return };
    let gpu = gpu_cluster(2, Registry::builtin());
    let cpu = cpu_cluster(4);
    let (m, n, k) = (20_000, 64, 5);
    let known: Vec<f64> = (0..n).map(|j| [100.0, 50.0, 25.0, 10.0, 5.0].get(j).copied().unwrap_or(1e-3)).collect();
    let data = with_singular_values(m, n, &known, 41);
    for dtype in [DType::F64, DType::F32] {
        let (a, data) = distribute(&data, &[5_000, 0], dtype);
        for q in [1, 2] {
            let p = RandomizedSvd { k, oversample: 10, power_iters: q, seed: 4 };
            let f = randomized_svd(&a, &p).unwrap();
            let mut got = gather(gpu.client(), &[&f.u, &f.s, &f.vt]).into_iter();
            let u = two(got.next().unwrap());
            let s = one(got.next().unwrap());
            let vt = two(got.next().unwrap());
            assert_eq!((u.dim(), s.len(), vt.dim()), ((m, k), k, (k, n)), "{dtype} q={q}");
            let e = eps(dtype);
            // HMT (2011), eq. (10.14) with the power scheme's exponent (sec. 10.4).
            let l = p.subspace(m, n) as f64;
            let bound = (1.0 + 11.0 * l.sqrt() * (n as f64).sqrt()).powf(1.0 / (2 * q + 1) as f64) * known[k];
            let slack = 10.0 * e * (n as f64).sqrt() * known[0];
            for j in 0..k {
                let gap = known[j] - s[j];
                assert!(
                    gap >= -slack && gap <= bound + slack,
                    "{dtype} q={q}: s[{j}] = {}, known {}, bound {bound:e}",
                    s[j],
                    known[j]
                );
            }
            let tol = 100.0 * e * (m as f64).sqrt();
            assert!(orthogonality(u.view()) < tol, "{dtype} q={q}: U not orthonormal");
            assert!(orthogonality(vt.t()) < tol, "{dtype} q={q}: V not orthonormal");
            let av = data.dot(&vt.t());
            let us = &u * &s.clone().insert_axis(Axis(0));
            assert!(max_abs(&(av - us)) <= bound + slack, "{dtype} q={q}: A V != U S");
            let s_cpu = one(gather(cpu.client(), &[&f.s]).remove(0));
            for j in 0..k {
                assert!((s[j] - s_cpu[j]).abs() <= slack, "{dtype} q={q}: s[{j}] = {}, CPU {}", s[j], s_cpu[j]);
            }
        }
    }
}

/// Runs of each GPU-capable kernel ([`Registry::is_gpu`] in the builtin
/// registry) in the events recorded since the last call, after checking
/// that each ran on a GPU worker and none failed.
fn gpu_kernel_runs(client: &Client) -> std::collections::BTreeMap<String, usize> {
    let registry = Registry::builtin();
    let on_gpus = gpu_ranks(client);
    let log = client.take_events().unwrap();
    let mut ran = std::collections::BTreeMap::new();
    for w in &log.workers {
        for t in &w.tasks {
            let kernel = log.kernels[t.kernel as usize].as_str();
            assert!(!t.failed, "{kernel} task {} failed on rank {}", w.key(t), w.rank);
            if registry.id(kernel).is_some_and(|id| registry.is_gpu(id)) {
                assert!(on_gpus.contains(&w.rank), "{kernel} task {} ran on CPU worker {}", w.key(t), w.rank);
                *ran.entry(kernel.to_owned()).or_default() += 1;
            }
        }
    }
    ran
}

/// Every GEMM and random task runs on a GPU worker when the cluster has
/// one (CPU workers do not steal them), as the workers' events record.
#[test]
fn gemm_and_random_tasks_run_on_gpu_workers() {
    let Some(_) = usable_gpus("gemm_and_random_tasks_run_on_gpu_workers") else { return };
    let cluster = gpu_cluster(1, Registry::builtin());
    let client = cluster.client();
    gpu_kernel_runs(client);
    let a = DArray::random_normal(&[1200, 900], &[300, 300], 1).unwrap();
    let b = DArray::random_uniform(&[900, 600], &[300, 200], 2).unwrap();
    let c = a.matmul(&b).unwrap();
    let total = c.sum(None).unwrap().to_ndarray::<f64>(client).unwrap();
    assert!(total.iter().all(|x| x.is_finite()));
    let ran = gpu_kernel_runs(client);
    assert_eq!(ran.get("linalg.random"), Some(&(4 * 3 + 3 * 3)), "random blocks of A and B: {ran:?}");
    assert_eq!(ran.get("linalg.gemm"), Some(&(4 * 3 * 3)), "one GEMM per block triple: {ran:?}");
}

/// A GPU's memory account on a device opened with a 64 MiB limit: uploads
/// beyond it evict the oldest device copies (host blocks lose nothing),
/// device-only blocks beyond it are spilled to the host with their values,
/// a block larger than the limit is refused naming the GPU and
/// `TESSERA_GPU_MEMORY`, blocks in use are never evicted from under a
/// kernel, and the account returns to zero when the blocks are dropped.
#[test]
fn gpu_memory_limit_evicts_and_spills() {
    let Some(_) = usable_gpus("gpu_memory_limit_evicts_and_spills") else { return };
    let limit: u64 = 64 << 20;
    let len = 1 << 20; // 8 MiB of f64: eight fit
    let bytes = (len * 8) as u64;
    let gpu = Gpu::open(0, Some(limit)).unwrap();
    assert_eq!((gpu.limit_bytes(), gpu.used_bytes(), gpu.ordinal()), (limit, 0, 0));
    let values = |b: usize| -> Vec<f64> { (0..len).map(|i| (b * len + i) as f64 * 0.5).collect() };

    // Host blocks uploaded: the oldest device copies make room.
    let blocks: Vec<Block> = (0..12).map(|b| Block::new(vec![len], Buffer::F64(values(b)))).collect();
    for b in &blocks {
        let copy = gpu.input::<f64>(b).unwrap();
        assert_eq!((copy.nbytes() as u64, copy.device()), (bytes, "GPU 0".to_owned()));
        assert!(gpu.used_bytes() <= gpu.limit_bytes(), "{gpu:?}");
    }
    let resident: Vec<bool> = blocks.iter().map(|b| b.device_copy().is_some()).collect();
    assert_eq!(resident, [vec![false; 4], vec![true; 8]].concat(), "the oldest four evicted");
    assert_eq!(gpu.used_bytes(), 8 * bytes);
    for (i, b) in blocks.iter().enumerate() {
        assert!(b.on_host() && b.as_f64() == Some(&values(i)[..]), "host block {i} intact");
    }
    // A block with a device copy is not uploaded again.
    let again = gpu.input::<f64>(&blocks[11]).unwrap();
    assert!(std::sync::Arc::ptr_eq(&again, &blocks[11].device_copy().unwrap()));
    drop(again);
    drop(blocks);
    assert_eq!(gpu.used_bytes(), 0, "dropped blocks free their device memory");

    // Device-only blocks (as GPU kernels make them): spilled, not lost.
    let made: Vec<Block> = (0..12)
        .map(|b| {
            gpu.reserve(bytes).unwrap();
            let slice = gpu.stream().clone_htod(&values(b)[..]).unwrap();
            let block = gpu.output(vec![len], DeviceData::F64(slice)).unwrap();
            assert!(!block.on_host() && gpu.used_bytes() <= gpu.limit_bytes(), "{gpu:?}");
            block
        })
        .collect();
    for (i, b) in made.iter().enumerate() {
        let spilled = i < 4;
        assert_eq!((b.on_host(), b.device_copy().is_none()), (spilled, spilled), "block {i}");
    }
    for (i, b) in made.iter().enumerate() {
        assert_eq!(b.as_f64(), Some(&values(i)[..]), "device block {i} read on the host");
    }
    assert!(made[11].device_copy().is_some(), "reading a block keeps its device copy");
    drop(made);
    assert_eq!(gpu.used_bytes(), 0);

    // Larger than the limit: an error naming the GPU and the setting.
    let big = Block::new(vec![9 * len], Buffer::F64(vec![1.0; 9 * len]));
    let e = gpu.input::<f64>(&big).err().expect("72 MiB into 64 MiB").to_string();
    assert!(e.contains("GPU 0") && e.contains("TESSERA_GPU_MEMORY"), "{e}");
    let e = gpu.alloc::<f64>(9 * len).expect_err("72 MiB into 64 MiB").to_string();
    assert!(e.contains("GPU 0") && e.contains("TESSERA_GPU_MEMORY"), "{e}");
    assert!(big.device_copy().is_none() && gpu.used_bytes() == 0);

    // Device copies a kernel holds stay valid; a ninth block then does not fit.
    let blocks: Vec<Block> = (0..9).map(|b| Block::new(vec![len], Buffer::F64(values(b)))).collect();
    let held: Vec<_> = blocks[..8].iter().map(|b| gpu.input::<f64>(b).unwrap()).collect();
    let e = gpu.input::<f64>(&blocks[8]).err().expect("all memory in use").to_string();
    assert!(e.contains("GPU 0") && e.contains("in use"), "{e}");
    assert_eq!(gpu.used_bytes(), 8 * bytes, "held copies stay allocated");
    for (copy, b) in held.iter().zip(&blocks) {
        assert_eq!(copy.to_host().unwrap(), *b.buffer(), "a held device copy is intact");
    }
    drop(held);
    assert_eq!(gpu.used_bytes(), 0, "released copies free their memory");
    drop(gpu.input::<f64>(&blocks[8]).unwrap());
}

/// `TESSERA_GPU_MEMORY` in a whole run (set on a child process, so no
/// other test sees it): the demo's 8 MiB blocks fit a 24 MiB limit only by
/// spilling and still check out; a 1 MiB limit fails the run with an
/// error naming the GPU and the setting, and a malformed one is refused;
/// never a panic.
#[test]
fn gpu_memory_setting_in_a_run() {
    let Some(_) = usable_gpus("gpu_memory_setting_in_a_run") else { return };
    let args = ["--gpus", "all", "--workers", "2", "-q", "demo"];
    let out = tessera(&args, &[("TESSERA_GPU_MEMORY", "24MiB")]);
    let (stdout, _, both) = texts(&out);
    assert!(out.status.success() && stdout.contains("(result checked)"), "{both}");
    let out = tessera(&args, &[("TESSERA_GPU_MEMORY", "1MiB")]);
    let (_, stderr, both) = texts(&out);
    assert!(!out.status.success(), "{both}");
    assert!(names_a_gpu(&stderr) && stderr.contains("TESSERA_GPU_MEMORY"), "{both}");
    assert!(!both.contains("panicked"), "{both}");
    let out = tessera(&args, &[("TESSERA_GPU_MEMORY", "lots")]);
    let (_, stderr, both) = texts(&out);
    assert!(!out.status.success() && stderr.contains("TESSERA_GPU_MEMORY=lots"), "{both}");
    assert!(!both.contains("panicked"), "{both}");
}

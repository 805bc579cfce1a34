//! Workers under a real memory limit: `tessera svd` (TSQR and randomized)
//! and `tessera matmul` on HDF5 data several times larger than a memory
//! cgroup they run in, locally and under `mpirun -n 3`, with `--memory-limit
//! auto` finding the cgroup's limit. Each run must finish with exact
//! results (checked against the input read here), the kernel must have
//! killed nothing, and each rank's own peak resident memory must stay under
//! the limit. And the bad input around memory: a limit smaller than a block,
//! malformed limits, an unwritable spill directory, a full disk.
//!
//! The cgroup cases need root (they make cgroups under /sys/fs/cgroup, v1 or
//! v2) and the `hdf5` feature; the MPI cases need `mpi` and `mpirun`.
//! Without them they print why they skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::arrays::TempDir;

const MIB: u64 = 1 << 20;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Runs `tessera ARGS` (2 workers) that must fail with exit 1 (2 for what
/// the command line refuses) and a message holding each of `want`.
fn fails(args: &[&str], code: i32, want: &[&str]) -> String {
    let o = common::tessera(&[&["--workers", "2"], args].concat());
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {out}\n{err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: message lacks {w:?}: {err}");
    }
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{args:?}: {err}");
    assert!(!out.contains("svd:") && !out.contains("matmul:"), "no summary of a failed run: {out}");
    err
}

#[test]
fn malformed_and_negative_limits_are_refused_naming_the_flag() {
    for bad in ["-1", "4G", "lots", "1.5", "-0.5"] {
        fails(&["--memory-limit", bad, "svd", "--random", "100x4"], 2, &["--memory-limit", &format!("`{bad}`")]);
    }
    fails(&["--memory-target", "0", "svd", "--random", "100x4"], 2, &["--memory-target", "(0, 1]"]);
    fails(&["--memory-pause", "2", "svd", "--random", "100x4"], 2, &["--memory-pause", "(0, 1]"]);
    fails(
        &["--memory-target", "0.9", "--memory-pause", "0.5", "svd", "--random", "100x4"],
        1,
        &["--memory-target 0.9", "--memory-pause 0.5"],
    );
}

#[test]
fn a_limit_smaller_than_a_block_names_both_sizes() {
    // 50,000 x 32 f64 blocks are 12.2 MiB; 2 workers share 8 MiB.
    fails(
        &["--memory-limit", "8MiB", "svd", "--random", "100000x32", "--chunk-rows", "50000"],
        1,
        &["12.2 MiB", "4.0 MiB", "memory limit"],
    );
}

#[test]
fn an_unwritable_spill_directory_is_an_error_naming_it() {
    let err = fails(
        &["--memory-limit", "1GiB", "--local-directory", "/proc/no-such-dir", "svd", "--random", "100x4"],
        1,
        &["/proc/no-such-dir", "--local-directory"],
    );
    assert!(!err.contains("svd:"), "{err}");
}

#[test]
fn spill_folders_are_removed_when_the_run_ends() {
    let dir = TempDir::new("spill-clean");
    let o = common::tessera(&[
        "--workers",
        "2",
        "--memory-limit",
        "64MiB",
        "--local-directory",
        &dir.0.to_string_lossy(),
        "svd",
        "--random",
        "400000x32",
        "--chunk-rows",
        "25000",
        "--persist-input",
        "--json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(dir.files().is_empty(), "left behind: {:?}", dir.files());
}

#[test]
fn sigterm_removes_the_spill_folders() {
    let dir = TempDir::new("spill-term");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["--workers", "2", "-q", "--memory-limit", "64MiB", "--local-directory"])
        .arg(&dir.0)
        .args(["svd", "--random", "8000000x32", "--chunk-rows", "16384", "--persist-input"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start tessera");
    // Wait until a worker has spilled something.
    let spilled = |d: &Path| {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .any(|f| std::fs::read_dir(f.path()).is_ok_and(|mut e| e.next().is_some()))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !spilled(&dir.0) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(spilled(&dir.0), "nothing was spilled within a minute");
    // SAFETY: kill sends a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert!(dir.files().is_empty(), "left behind after SIGTERM: {:?}", dir.files());
}

/// A small tmpfs mounted on a fresh directory, unmounted when dropped.
struct Tmpfs(TempDir);

impl Tmpfs {
    fn mount(bytes: u64) -> Option<Tmpfs> {
        let dir = TempDir::new("tmpfs");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&dir.0)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0 .0).status();
    }
}

#[test]
fn a_full_disk_fails_the_run_naming_the_directory() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let Some(disk) = Tmpfs::mount(4 * MIB) else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    let at = disk.0 .0.to_string_lossy().into_owned();
    // 100 MiB of persisted input, 2 workers of 16 MiB each, 4 MiB of disk.
    fails(
        &[
            "--memory-limit",
            "32MiB",
            "--local-directory",
            &at,
            "svd",
            "--random",
            "400000x32",
            "--chunk-rows",
            "25000",
            "--persist-input",
        ],
        1,
        &[&at, "No space left on device", "spilling failed"],
    );
    assert!(disk.0.files().is_empty(), "spill folders left on the full disk: {:?}", disk.0.files());
}

/// A memory cgroup of `limit` bytes, removed when dropped.
#[cfg_attr(not(feature = "hdf5"), allow(dead_code))]
struct Cgroup {
    dir: PathBuf,
    v2: bool,
}

#[cfg_attr(not(feature = "hdf5"), allow(dead_code))]
impl Cgroup {
    /// A new cgroup (v1 under /sys/fs/cgroup/memory, else v2), or `None`
    /// with the reason printed.
    fn new(tag: &str, limit: u64) -> Option<Cgroup> {
        if !is_root() {
            eprintln!("skipped: making a memory cgroup needs root");
            return None;
        }
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (base, v2) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.to_path_buf(), false)
        } else if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
            (PathBuf::from("/sys/fs/cgroup"), true)
        } else {
            eprintln!("skipped: no memory cgroup controller mounted under /sys/fs/cgroup");
            return None;
        };
        let dir = base.join(format!("tessera-test-{tag}-{}", std::process::id()));
        let made = std::fs::create_dir_all(&dir).and_then(|_| {
            if v2 {
                std::fs::write(dir.join("memory.max"), limit.to_string())?;
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                Ok(())
            } else {
                std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string())
            }
        });
        if let Err(e) = made {
            eprintln!("skipped: cannot make the memory cgroup {}: {e}", dir.display());
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(Cgroup { dir, v2 })
    }

    /// Runs `program ARGS` inside the cgroup.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.dir)
            .arg(program)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run sh")
    }

    /// Processes the kernel killed in this cgroup for lack of memory.
    fn oom_kills(&self) -> u64 {
        let file = if self.v2 { "memory.events" } else { "memory.oom_control" };
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

#[cfg(feature = "hdf5")]
mod larger_than_memory {
    use super::*;
    use common::arrays::{fro, orthogonality, EPS};
    use tessera::linalg::hdf5::h5lib;
    use tessera::linalg::ndarray::{Array1, Array2, Axis};

    fn read2(path: &str, dataset: &str) -> Array2<f64> {
        let f = h5lib::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        f.dataset(dataset).and_then(|d| d.read_2d::<f64>()).unwrap_or_else(|e| panic!("{path}:{dataset}: {e}"))
    }

    fn read1(path: &str, dataset: &str) -> Array1<f64> {
        let f = h5lib::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        f.dataset(dataset).and_then(|d| d.read_1d::<f64>()).unwrap_or_else(|e| panic!("{path}:{dataset}: {e}"))
    }

    /// Columns of the input, and rows per block (4 MiB blocks).
    const N: usize = 32;
    const ROWS: &str = "16384";

    struct Input {
        dir: TempDir,
        x: String,
        y: String,
    }

    /// X (M x N, a product of uniform random matrices) and Y (N x N).
    fn input(m: usize) -> Input {
        let dir = TempDir::new("larger-than-memory");
        let (x, y) = (dir.path("x.h5"), dir.path("y.h5"));
        for (shape, out) in [(format!("{m}x{N}x{N}"), format!("{x}:/X")), (format!("{N}x{N}x{N}"), format!("{y}:/Y"))] {
            let o = common::tessera(&[
                "--workers",
                "2",
                "-q",
                "matmul",
                "--random",
                &shape,
                "--chunks",
                &format!("{ROWS}x0"),
                "-o",
                &out,
            ]);
            assert!(o.status.success(), "{:?}", text(&o));
        }
        Input { dir, x, y }
    }

    /// Runs `tessera ARGS --json` (under `mpirun -n 3` when `mpi`) inside a
    /// cgroup of `limit` bytes: it must succeed with nothing killed and each
    /// rank's peak resident memory under the limit. Its JSON.
    fn run_limited(tag: &str, limit: u64, mpi: bool, args: &[&str]) -> Option<serde_json::Value> {
        let cg = Cgroup::new(tag, limit)?;
        let tessera = env!("CARGO_BIN_EXE_tessera");
        let mut all: Vec<&str> = Vec::new();
        if mpi {
            all.extend(["-n", "3", "--oversubscribe", "--bind-to", "none", tessera]);
        } else {
            all.extend(["--workers", "2"]);
        }
        all.extend(["-q", "--memory-limit", "auto"]);
        all.extend(args);
        all.push("--json");
        let o = cg.run(if mpi { "mpirun" } else { tessera }, &all);
        let (out, err) = text(&o);
        assert_eq!(cg.oom_kills(), 0, "{tag}: the kernel killed a process of the run: {err}");
        assert!(o.status.success(), "{tag}: {out}\n{err}");
        let j: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{tag}: not JSON ({e}): {out}"));
        for r in j["peak_rss_bytes"].as_array().expect("peak memory per rank") {
            let peak = r["bytes"].as_u64().unwrap();
            assert!(peak < limit, "{tag}: rank {} peaked at {} MiB, limit {} MiB", r["rank"], peak / MIB, limit / MIB);
        }
        Some(j)
    }

    fn check_svd(tag: &str, x: &Array2<f64>, out: &str, k: usize) {
        let m = x.nrows();
        let (u, s, vt) = (read2(out, "/U"), read1(out, "/S"), read2(out, "/VT"));
        assert_eq!((u.dim(), s.len(), vt.dim()), ((m, k), k, (k, N)), "{tag}");
        let tol = 50.0 * EPS * (m as f64).sqrt();
        assert!(orthogonality(u.view()) < tol, "{tag}: U not orthonormal");
        assert!(orthogonality(vt.t()) < tol, "{tag}: V not orthonormal");
        if k == N {
            let us = &u * &s.clone().insert_axis(Axis(0));
            let res = fro(&(x - &us.dot(&vt))) / fro(x);
            assert!(res < 50.0 * EPS * (N as f64).sqrt(), "{tag}: |X - USVt|/|X| = {res:e}");
        } else {
            // Randomized: X V = U S for the triplets found, to the accuracy the
            // well-separated first one allows.
            let xv = x.dot(&vt.t());
            let res = fro(&(&xv.column(0).to_owned().insert_axis(Axis(1))
                - &(&u.column(0).to_owned() * s[0]).insert_axis(Axis(1))));
            assert!(res < 1e-8 * s[0], "{tag}: |X v0 - s0 u0| = {res:e}");
        }
    }

    /// TSQR SVD, randomized SVD and matmul of an `m` x 32 input inside a
    /// cgroup of `limit` bytes, each checked against the input. The input
    /// is read here only after the runs: a process started from this one
    /// would otherwise inherit its peak resident memory.
    fn cases(mpi: bool, m: usize, limit: u64) {
        let tag = if mpi { "mpirun" } else { "local" };
        assert!((m * N * 8) as u64 >= 4 * limit, "the working set is at least four times the limit");
        let inp = input(m);
        let x_in = format!("{}:/X", inp.x);

        // TSQR SVD: its Q blocks (as large as X) wait for the reduction.
        let tsqr = inp.dir.path("svd.h5");
        let Some(j) =
            run_limited(&format!("{tag}-tsqr"), limit, mpi, &["svd", &x_in, "--chunk-rows", ROWS, "-o", &tsqr])
        else {
            return;
        };
        assert_eq!(j["method"], "tsqr");

        // Randomized SVD of the input held on the workers (spilled).
        let rsvd = inp.dir.path("rsvd.h5");
        let args =
            ["svd", &x_in, "--chunk-rows", ROWS, "--k", "4", "--method", "randomized", "--persist-input", "-o", &rsvd];
        let j = run_limited(&format!("{tag}-rsvd"), limit, mpi, &args).unwrap();
        assert_eq!(j["method"], "randomized");

        // Matmul with both inputs held on the workers.
        let c = inp.dir.path("c.h5");
        let y_in = format!("{}:/Y", inp.y);
        let chunks = format!("{ROWS}x{N}");
        let args = ["matmul", &x_in, &y_in, "--chunks", &chunks, "--persist-input", "-o", &format!("{c}:/C")];
        run_limited(&format!("{tag}-matmul"), limit, mpi, &args).unwrap();

        let x = read2(&inp.x, "/X");
        check_svd(&format!("{tag} tsqr"), &x, &tsqr, N);
        let exact = read1(&tsqr, "/S");
        check_svd(&format!("{tag} randomized"), &x, &rsvd, 4);
        let s = read1(&rsvd, "/S");
        assert!((s[0] - exact[0]).abs() <= 1e-10 * exact[0], "{tag}: s0 {} vs exact {}", s[0], exact[0]);
        for i in 1..4 {
            assert!(
                s[i] <= exact[i] * (1.0 + 1e-12) && s[i] > 0.5 * exact[i],
                "{tag}: s[{i}] {} vs {}",
                s[i],
                exact[i]
            );
        }
        let want = x.dot(&read2(&inp.y, "/Y"));
        let res = fro(&(&read2(&c, "/C") - &want)) / fro(&want);
        assert!(res < 10.0 * EPS * (N as f64).sqrt(), "{tag}: |C - XY|/|XY| = {res:e}");
    }

    #[test]
    fn svd_and_matmul_of_data_four_times_the_memory_limit() {
        // 1 GiB in 256 MiB, two workers.
        cases(false, 4 << 20, 256 * MIB);
    }

    #[cfg(feature = "mpi")]
    #[test]
    fn the_same_under_mpirun() {
        if Command::new("mpirun").arg("--version").output().is_err() {
            eprintln!("skipped: no mpirun");
            return;
        }
        // 1.5 GiB in 384 MiB shared by mpirun and 3 ranks (about 40 MiB each
        // goes to the MPI library itself).
        cases(true, 6 << 20, 384 * MIB);
    }
}

//! `tessera svd`, `qr` and `matmul` as a user runs them on a local cluster:
//! figures and JSON, files written whole, and a clear error (no panic, no
//! file left behind) for every kind of bad input. MPI runs are in tests/mpi.rs.

mod common;

use std::process::Output;

use common::arrays::TempDir as Dir;

/// `tessera --workers 2 ARGS...`.
fn tessera(args: &[&str]) -> Output {
    common::tessera(&[&["--workers", "2"], args].concat())
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn json(o: &Output) -> serde_json::Value {
    let (out, err) = text(o);
    assert!(o.status.success(), "{out}\n{err}");
    serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Runs a command that must fail with exit 1 and a message holding `want`.
fn fails(args: &[&str], want: &[&str]) {
    let o = tessera(args);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: message lacks {w:?}: {err}");
    }
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{args:?}: {err}");
}

#[test]
fn svd_qr_and_matmul_report_checked_figures() {
    let j = json(&tessera(&["svd", "--random", "3000x20", "--chunk-rows", "500", "--json"]));
    assert_eq!((j["command"].as_str(), j["method"].as_str(), j["k"].as_u64()), (Some("svd"), Some("tsqr"), Some(20)));
    assert_eq!(j["shape"], serde_json::json!([3000, 20]));
    let s: Vec<f64> = j["s"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert!(s.windows(2).all(|w| w[0] >= w[1]) && s[19] > 0.0, "{s:?}");
    assert!(j["seconds"].as_f64().unwrap() > 0.0 && j["gflops"].as_f64().unwrap() > 0.0);
    assert_eq!(j["workers"], 2);
    assert!(j["peak_rss_bytes"][0]["bytes"].as_u64().unwrap() > 1 << 20);

    // Randomized against exact on the same matrix: the well-separated top
    // value agrees closely; the others never exceed the exact ones.
    let r = json(&tessera(&["svd", "--random", "1500x300", "--k", "3", "--method", "randomized", "--json"]));
    let e = json(&tessera(&["svd", "--random", "1500x300", "--k", "3", "--method", "tsqr", "--json"]));
    assert_eq!((r["method"].as_str(), e["method"].as_str()), (Some("randomized"), Some("tsqr")));
    let (r0, e0) = (r["s"][0].as_f64().unwrap(), e["s"][0].as_f64().unwrap());
    assert!((r0 - e0).abs() <= 1e-10 * e0, "s[0]: randomized {r0} vs exact {e0}");
    for i in 1..3 {
        let (a, b) = (r["s"][i].as_f64().unwrap(), e["s"][i].as_f64().unwrap());
        assert!(a <= b * (1.0 + 1e-12) && a > 0.5 * b, "s[{i}]: randomized {a} vs exact {b}");
    }
    // Auto picks the sketch for arrays large in both dimensions.
    let auto = json(&tessera(&["svd", "--random", "2000x1000", "--k", "3", "--json"]));
    assert_eq!(auto["method"], "randomized");

    let q = json(&tessera(&["qr", "--random", "4000x16", "--chunk-rows", "1000", "--json"]));
    assert!(q["r_diagonal"].as_array().unwrap().iter().all(|d| d.as_f64().unwrap() > 0.0));
    let m = json(&tessera(&["matmul", "--random", "300x200x100", "--chunks", "100x50", "--json"]));
    // Uniform [0, 1) entries: E[C_ij] = 200/4, so |C|_F is about 50 * sqrt(300 * 100).
    let norm = m["norm"].as_f64().unwrap();
    assert!((norm / (50.0 * (300.0f64 * 100.0).sqrt()) - 1.0).abs() < 0.05, "{norm}");
}

#[test]
fn short_and_fat_inputs_work_as_in_the_library() {
    // 20 x 600 uniform [0, 1) entries: the squares of all 20 singular values
    // add up to |A|_F^2, about m n / 3 (E[a^2] = 1/3; its spread over 12,000
    // entries is about 1%).
    let (m, n) = (20usize, 600usize);
    for method in ["tsqr", "auto"] {
        let j = json(&tessera(&["svd", "--random", &format!("{m}x{n}"), "--method", method, "--json"]));
        assert_eq!(j["shape"], serde_json::json!([m, n]));
        assert_eq!(j["k"].as_u64(), Some(m as u64), "{j}");
        let s: Vec<f64> = j["s"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert!(s.windows(2).all(|w| w[0] >= w[1]) && s[m - 1] > 0.0, "{s:?}");
        let frob2: f64 = s.iter().map(|x| x * x).sum();
        let expected = (m * n) as f64 / 3.0;
        assert!((frob2 / expected - 1.0).abs() < 0.05, "sum of s^2 = {frob2}, expected about {expected}");
    }
    // A few triplets of a short-and-fat array, and its QR (R is m x n; its
    // diagonal has m entries, none zero for a random array).
    let j = json(&tessera(&["svd", "--random", "30x400", "--k", "3", "--json"]));
    assert_eq!(j["k"].as_u64(), Some(3), "{j}");
    let q = json(&tessera(&["qr", "--random", &format!("{m}x{n}"), "--json"]));
    let d: Vec<f64> = q["r_diagonal"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(d.len(), m, "{q}");
    assert!(d.iter().all(|x| x.abs() > 1e-8), "{d:?}");
    // |R_ii| is the part of column i of A outside the span of the columns
    // before it: at most that column's norm, below sqrt(m) for entries < 1.
    assert!(d.iter().all(|x| x.abs() < (m as f64).sqrt()), "{d:?}");
    // Explicit column blocks, the first at least m wide, work too.
    let q = json(&tessera(&["qr", "--random", "16x300", "--chunks", "16x100", "--json"]));
    assert_eq!(q["r_diagonal"].as_array().unwrap().len(), 16, "{q}");
}

#[test]
fn bad_parameters_are_refused_before_any_work() {
    fails(&["svd", "--random", "100x10", "--k", "11"], &["k = 11", "min(m, n) = 10"]);
    fails(&["svd", "--random", "100x10", "--method", "randomized"], &["needs --k"]);
    fails(&["svd", "--random", "1000x40", "--chunks", "100x20", "--method", "tsqr"], &["rechunk", "--chunk-rows 100"]);
    fails(&["qr", "--random", "1000x40", "--chunks", "100x20"], &["rechunk"]);
    // Values that mean nothing are usage errors (tests/cli.rs has more).
    for (args, flag) in
        [(&["svd", "--random", "0x10"][..], "--random"), (&["svd", "--random", "100x10", "--k", "0"], "--k")]
    {
        let o = tessera(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o).1);
        assert!(text(&o).1.contains(flag), "{args:?}: {}", text(&o).1);
    }
    let o = tessera(&["svd", "--random", "100"]);
    assert_eq!(o.status.code(), Some(2), "clap rejects the value");
    assert!(text(&o).1.contains("--random"), "{}", text(&o).1);
    let o = tessera(&["svd"]);
    assert_eq!(o.status.code(), Some(2), "an input is required");
}

#[cfg(not(feature = "hdf5"))]
#[test]
fn files_need_the_hdf5_feature() {
    let dir = Dir::new("files");
    let x = dir.path("x.h5");
    fails(&["svd", &format!("{x}:/X")], &["`hdf5` feature", "--features hdf5"]);
    fails(&["svd", "--random", "100x10", "-o", &x], &["`hdf5` feature"]);
    fails(&["matmul", &format!("{x}:/A"), &format!("{x}:/B")], &["`hdf5` feature"]);
    assert!(dir.files().is_empty());
}

#[cfg(feature = "hdf5")]
#[test]
fn files_are_read_and_written_whole() {
    let dir = Dir::new("files");
    let x = dir.path("x.h5");
    // Write an input with matmul, decompose it, check the file's datasets.
    json(&tessera(&["matmul", "--random", "5000x12x12", "--chunks", "1000x12", "-o", &format!("{x}:/X"), "--json"]));
    let out = dir.path("svd.h5");
    let j = json(&tessera(&["svd", &format!("{x}:/X"), "--chunk-rows", "700", "-o", &out, "--json"]));
    assert_eq!(j["output"], out.as_str());
    assert_eq!(dir.files(), vec!["svd.h5", "x.h5"], "no temporary files left");
    let u = tessera::linalg::hdf5::Hdf5Dataset::open(&out, "/U").unwrap();
    assert_eq!(u.shape, vec![5000, 12]);
    let vt = tessera::linalg::hdf5::Hdf5Dataset::open(&out, "/VT").unwrap();
    assert_eq!(vt.shape, vec![12, 12]);
}

#[cfg(feature = "hdf5")]
#[test]
fn short_and_fat_files_are_read_in_whole_columns() {
    let dir = Dir::new("fat");
    let x = dir.path("x.h5");
    json(&tessera(&["matmul", "--random", "12x12x3000", "--chunks", "12x12", "-o", &format!("{x}:/W"), "--json"]));
    let s = json(&tessera(&["svd", &format!("{x}:/W"), "--json"]));
    assert_eq!((s["shape"].clone(), s["k"].as_u64()), (serde_json::json!([12, 3000]), Some(12)), "{s}");
    assert!(s["chunks"].as_str().unwrap().starts_with("((12,), ("), "whole columns: {s}");
    let q = json(&tessera(&["qr", &format!("{x}:/W"), "--json"]));
    assert_eq!(q["r_diagonal"].as_array().unwrap().len(), 12, "{q}");
    // The largest singular value bounds |R_00| (the first column's norm).
    assert!(q["r_diagonal"][0].as_f64().unwrap().abs() <= s["s"][0].as_f64().unwrap() * (1.0 + 1e-12), "{q} {s}");
}

#[cfg(feature = "hdf5")]
#[test]
fn bad_files_get_clear_errors_and_leave_nothing_behind() {
    use tessera::linalg::hdf5::h5lib;
    let dir = Dir::new("bad");
    let f = h5lib::File::create(dir.0.join("in.h5")).unwrap();
    let mut data = tessera::linalg::ndarray::Array2::from_shape_fn((200, 6), |(i, j)| (i * 7 + j) as f64);
    f.new_dataset::<f64>().shape([200, 6]).create("ok").unwrap().write(&data).unwrap();
    data[[150, 2]] = f64::NAN;
    f.new_dataset::<f64>().shape([200, 6]).create("nan").unwrap().write(&data).unwrap();
    data[[150, 2]] = f64::INFINITY;
    f.new_dataset::<f64>().shape([200, 6]).create("inf").unwrap().write(&data).unwrap();
    f.new_dataset::<i64>().shape([20, 6]).create("ints").unwrap();
    f.new_dataset::<f64>().shape([2, 3, 4]).create("cube").unwrap();
    f.new_dataset::<f64>().shape([7, 9]).create("other").unwrap();
    drop(f);
    let input = dir.path("in.h5");
    let spec = |d: &str| format!("{input}:/{d}");
    let out = dir.path("out.h5");
    fails(&["svd", &dir.path("missing.h5:/X")], &["missing.h5", "no such file"]);
    fails(&["svd", &spec("nope")], &["in.h5:/nope", "no such dataset"]);
    fails(&["svd", &spec("ints"), "-o", &out], &["/ints", "only floating-point"]);
    fails(&["svd", &spec("cube"), "-o", &out], &["/cube", "[2, 3, 4]"]);
    fails(&["svd", &spec("ok"), "--k", "7", "-o", &out], &["k = 7"]);
    fails(&["svd", "in.h5"], &["FILE:/DATASET"]);
    for bad in ["nan", "inf"] {
        fails(
            &["svd", &spec(bad), "--chunk-rows", "50", "-o", &out],
            &[if bad == "nan" { "NaN" } else { "inf" }, "[150, 2]"],
        );
    }
    fails(&["matmul", &spec("ok"), &spec("other"), "-o", &format!("{out}:/C")], &["[200, 6]", "[7, 9]", "columns"]);
    for unwritable in [dir.path("no/such/dir/out.h5"), "/proc/out.h5".to_string()] {
        fails(&["svd", &spec("ok"), "-o", &unwritable], &[unwritable.as_str()]);
    }
    fails(&["matmul", &spec("ok"), &spec("ok"), "-o", &out], &["C.h5:/C"]);
    assert_eq!(dir.files(), vec!["in.h5"], "nothing written by failed commands");
    assert!(!std::path::Path::new("/proc/out.h5").exists());
}

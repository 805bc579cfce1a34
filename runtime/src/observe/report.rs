//! Performance reports: one self-contained HTML file, and Chrome traces.
//!
//! Both are made on the driver from an [`EventLog`] ([`crate::Client::events`]).
//!
//! * [`write_html`]: a page with no outside resources (data and code
//!   inline), to copy home from a cluster and open anywhere: a summary
//!   (ranks, hosts, cores, where each thread ran, features, durations), the
//!   task stream (a row per worker thread, a bar per task coloured by kernel,
//!   hover for key, duration and bytes), transfers between workers, memory
//!   per worker over time and time per kernel. Runs with more than
//!   [`MAX_TASK_BARS`] tasks are drawn aggregated: each row is cut into
//!   [`BINS`] time bins (about one per pixel) that carry their task count,
//!   busy time and dominant kernel, so 100,000 tasks stay a small file.
//! * [`write_chrome_trace`]: the Chrome trace-event format (JSON), which
//!   Perfetto and `chrome://tracing` open: a complete event (`ph: "X"`) per
//!   task and per transfer, a counter (`ph: "C"`) for each worker's memory,
//!   process and thread names (with each thread's CPU binding in `args`).
//!
//! Files are written next to their destination and renamed into place, so
//! a report that exists is complete.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::host::topology::cpu_list;
use crate::observe::events::{now_us, EventLog, ThreadInfo, WorkerEvents};

/// Above this many tasks the task stream is aggregated into bins.
pub const MAX_TASK_BARS: usize = 20_000;

/// Time bins per row of an aggregated task stream.
pub const BINS: u64 = 2_000;

/// Individual transfers drawn at most (the matrix always counts all).
pub const MAX_TRANSFER_BARS: usize = 20_000;

/// Points per worker in the memory chart at most.
pub const MAX_MEMORY_POINTS: usize = 1_000;

const TEMPLATE: &str = include_str!("report/report.html");

/// What the events do not say about a run.
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// What was run (a command line, or a description).
    pub command: String,
    /// Start and end, microseconds since the Unix epoch ([`now_us`]).
    pub started_us: u64,
    pub ended_us: u64,
    /// Features of this build.
    pub features: Vec<String>,
    /// Tasks the scheduler counted as completed, if asked (a count
    /// independent of the workers' events, to check them against).
    pub scheduler_completed: Option<u64>,
}

impl RunInfo {
    /// A run that starts now; call [`RunInfo::finish`] at its end.
    pub fn start(command: impl Into<String>) -> RunInfo {
        let now = now_us();
        RunInfo {
            command: command.into(),
            started_us: now,
            ended_us: now,
            features: Vec::new(),
            scheduler_completed: None,
        }
    }

    pub fn finish(&mut self) {
        self.ended_us = now_us();
    }
}

/// Where a thread ran, for people: the CPUs it is bound to, else those it was seen on.
fn placement(t: &ThreadInfo) -> String {
    if !t.bound.is_empty() {
        cpu_list(&t.affinity)
    } else if t.seen.is_empty() {
        "-".into()
    } else {
        format!("unbound, ran on {}", cpu_list(&t.seen))
    }
}

/// The report's data (the schema `report/report.html` draws).
pub fn report_data(log: &EventLog, info: &RunInfo) -> Value {
    let (lo, hi) = log.span().unwrap_or((info.started_us, info.ended_us));
    let t0 = lo.min(info.started_us);
    let t1 = hi.max(info.ended_us).max(t0 + 1);
    let wall = t1 - t0;
    let rel = |t: u64| t.saturating_sub(t0);

    // Rows: one per worker thread.
    let mut rows = Vec::new();
    let mut row_of = BTreeMap::new();
    for w in &log.workers {
        for (i, t) in w.threads.iter().enumerate() {
            row_of.insert((w.rank, i as u16), rows.len());
            rows.push(json!({"rank": w.rank, "thread": i, "host": w.host, "cpus": placement(t)}));
        }
    }
    let row = |w: &WorkerEvents, thread: u16| row_of.get(&(w.rank, thread)).copied().unwrap_or(0);

    let tasks = log.task_count();
    let (task_bars, bins) = if tasks <= MAX_TASK_BARS {
        let bars: Vec<Value> = log
            .workers
            .iter()
            .flat_map(|w| {
                w.tasks
                    .iter()
                    .map(move |t| (w, t))
                    .map(|(w, t)| json!([row(w, t.thread), t.kernel, rel(t.start_us), t.dur_us, t.bytes, w.key(t)]))
            })
            .collect();
        (bars, Value::Null)
    } else {
        (Vec::new(), bin_tasks(log, t0, wall, &row))
    };

    let mut transfers = Vec::new();
    let mut matrix: BTreeMap<(u32, u32), (u64, u64)> = BTreeMap::new();
    for w in &log.workers {
        for t in &w.transfers {
            if transfers.len() < MAX_TRANSFER_BARS {
                transfers.push(json!([t.from, w.rank, rel(t.start_us), t.dur_us, t.bytes]));
            }
            let e = matrix.entry((t.from, w.rank)).or_default();
            e.0 += 1;
            e.1 += t.bytes;
        }
    }
    let transfer_matrix: Vec<Value> = matrix.iter().map(|(&(f, t), &(n, b))| json!([f, t, n, b])).collect();

    let memory: Vec<Value> = log
        .workers
        .iter()
        .map(|w| {
            let points = downsample(&w.memory.iter().map(|m| (rel(m.t_us), m.bytes)).collect::<Vec<_>>());
            let spilled = if w.memory.iter().any(|m| m.spilled > 0) {
                downsample(&w.memory.iter().map(|m| (rel(m.t_us), m.spilled)).collect::<Vec<_>>())
            } else {
                Vec::new()
            };
            let (out, back) = w.spills.iter().fold(((0, 0), 0), |((n, b), r), s| {
                if s.read_back {
                    ((n, b), r + s.blocks)
                } else {
                    ((n + s.blocks, b + s.bytes), r)
                }
            });
            json!({"rank": w.rank, "points": points.iter().map(|&(t, b)| json!([t, b])).collect::<Vec<_>>(),
                   "spilled": spilled.iter().map(|&(t, b)| json!([t, b])).collect::<Vec<_>>(),
                   "spills": {"blocks": out.0, "bytes": out.1, "read_back": back}})
        })
        .collect();

    // Per kernel: tasks, total, max, bytes.
    let mut per_kernel: BTreeMap<u32, (u64, u64, u64, u64)> = BTreeMap::new();
    let mut failed = 0;
    for t in log.workers.iter().flat_map(|w| &w.tasks) {
        let e = per_kernel.entry(t.kernel).or_default();
        e.0 += 1;
        e.1 += t.dur_us;
        e.2 = e.2.max(t.dur_us);
        e.3 += t.bytes;
        failed += t.failed as u64;
    }
    let kernel_time: Vec<Value> = per_kernel
        .iter()
        .map(|(&k, &(n, total, max, bytes))| {
            json!({"kernel": k, "tasks": n, "total_us": total, "mean_us": total / n.max(1), "max_us": max, "bytes": bytes})
        })
        .collect();

    let mut hosts: BTreeMap<&str, (usize, Vec<u32>)> = BTreeMap::new();
    for w in &log.workers {
        let h = hosts.entry(&w.host).or_insert((w.host_cores, Vec::new()));
        h.1.push(w.rank);
    }
    let (bytes_moved, n_transfers) = log.moved();
    let summary = json!({
        "command": info.command,
        "started": rfc3339(t0),
        "wall_us": wall,
        "transport": log.transport,
        "version": env!("CARGO_PKG_VERSION"),
        "features": info.features,
        "hosts": hosts.iter().map(|(h, (c, r))| json!({"host": h, "cores": c, "ranks": r})).collect::<Vec<_>>(),
        "workers": log.workers.iter().map(|w| json!({
            "rank": w.rank, "host": w.host, "threads": w.threads.len(),
            "cpus": w.threads.iter().map(placement).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "tasks": tasks,
        "failed": failed,
        "bytes_moved": bytes_moved,
        "transfers": n_transfers,
        "events_dropped": log.dropped(),
        "scheduler_completed": info.scheduler_completed,
    });
    json!({
        "title": info.command,
        "summary": summary,
        "kernels": log.kernels,
        "rows": rows,
        "tasks": task_bars,
        "bins": bins,
        "transfers": transfers,
        "transfer_matrix": transfer_matrix,
        "memory": memory,
        "kernel_time": kernel_time,
    })
}

/// The task stream cut into [`BINS`] bins per row: `[row, bin, dominant
/// kernel, tasks started in it, busy microseconds]` for every bin with work.
fn bin_tasks(log: &EventLog, t0: u64, wall: u64, row: &dyn Fn(&WorkerEvents, u16) -> usize) -> Value {
    let width = wall.div_ceil(BINS).max(1);
    /// Tasks started in a cell, its busy microseconds, and those per kernel.
    type Cell = (u64, u64, BTreeMap<u32, u64>);
    let mut cells: BTreeMap<(usize, u64), Cell> = BTreeMap::new();
    for w in &log.workers {
        for t in &w.tasks {
            let r = row(w, t.thread);
            let start = t.start_us.saturating_sub(t0);
            let end = start + t.dur_us.max(1);
            cells.entry((r, start / width)).or_default().0 += 1;
            for bin in start / width..=(end - 1) / width {
                let overlap = end.min((bin + 1) * width) - start.max(bin * width);
                let c = cells.entry((r, bin)).or_default();
                c.1 += overlap;
                *c.2.entry(t.kernel).or_default() += overlap;
            }
        }
    }
    let cells: Vec<Value> = cells
        .into_iter()
        .map(|((r, bin), (count, busy, kernels))| {
            let dominant = kernels.iter().max_by_key(|(_, &us)| us).map(|(&k, _)| k).unwrap_or(0);
            json!([r, bin, dominant, count, busy])
        })
        .collect();
    json!({"width_us": width, "cells": cells})
}

/// At most [`MAX_MEMORY_POINTS`] points: the largest value of each stretch,
/// so peaks survive.
fn downsample(points: &[(u64, u64)]) -> Vec<(u64, u64)> {
    if points.len() <= MAX_MEMORY_POINTS {
        return points.to_vec();
    }
    let per = points.len().div_ceil(MAX_MEMORY_POINTS);
    points.chunks(per).map(|c| (c[0].0, c.iter().map(|p| p.1).max().unwrap_or(0))).collect()
}

/// Microseconds since the epoch as `2026-11-23T10:00:00Z` (UTC, whole seconds).
fn rfc3339(us: u64) -> String {
    let secs = us / 1_000_000;
    match i64::try_from(secs).ok().and_then(|s| jiff::Timestamp::from_second(s).ok()) {
        Some(t) => t.to_string(),
        None => format!("{secs} s after 1970-01-01T00:00:00Z"),
    }
}

/// The HTML page for `log`: `report/report.html` rendered by minijinja with
/// HTML autoescape, so the title (a command line) is escaped, and the data
/// inserted as JSON in which `<` is written `\u003c` (`</script>` or `<!--`
/// inside the script would end or confuse it; `<` only occurs inside JSON
/// strings, where `\u003c` means the same).
pub fn html(log: &EventLog, info: &RunInfo) -> String {
    let data = report_data(log, info).to_string().replace('<', "\\u003c");
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    env.add_template("report.html", TEMPLATE).expect("the report template compiles (a unit test renders it)");
    let page = env.get_template("report.html").and_then(|t| {
        t.render(minijinja::context! { title => info.command, data => minijinja::Value::from_safe_string(data) })
    });
    page.expect("the report template renders (a unit test renders it)")
}

/// The Chrome trace-event JSON for `log`.
pub fn chrome_trace(log: &EventLog, info: &RunInfo) -> Value {
    let t0 = log.span().map_or(info.started_us, |(lo, _)| lo.min(info.started_us));
    let rel = |t: u64| t.saturating_sub(t0);
    let mut events = Vec::new();
    for w in &log.workers {
        let pid = w.rank;
        events.push(json!({"ph": "M", "name": "process_name", "pid": pid,
                           "args": {"name": format!("rank {} ({})", w.rank, w.host)}}));
        for (i, t) in w.threads.iter().enumerate() {
            events.push(json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": i,
                               "args": {"name": format!("thread {i} (cpus {})", placement(t)),
                                        "bound": t.bound, "affinity": t.affinity, "seen": t.seen}}));
        }
        for t in &w.tasks {
            events.push(json!({"ph": "X", "cat": "task", "name": log.kernel_name(t.kernel), "pid": pid,
                               "tid": t.thread, "ts": rel(t.start_us), "dur": t.dur_us,
                               "args": {"key": w.key(t), "bytes": t.bytes, "failed": t.failed}}));
        }
        let transfers_tid = w.threads.len() + 1000;
        if !w.transfers.is_empty() {
            events.push(json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": transfers_tid,
                               "args": {"name": "transfers in"}}));
        }
        for t in &w.transfers {
            events.push(json!({"ph": "X", "cat": "transfer", "name": format!("from rank {}", t.from), "pid": pid,
                               "tid": transfers_tid, "ts": rel(t.start_us), "dur": t.dur_us,
                               "args": {"from": t.from, "to": w.rank, "bytes": t.bytes}}));
        }
        for m in &w.memory {
            events.push(json!({"ph": "C", "name": "memory", "pid": pid, "ts": rel(m.t_us),
                               "args": {"bytes": m.bytes, "spilled": m.spilled}}));
        }
    }
    json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"command": info.command, "started": rfc3339(t0), "transport": log.transport,
                      "version": env!("CARGO_PKG_VERSION"), "events_dropped": log.dropped(),
                      "scheduler_completed": info.scheduler_completed},
    })
}

/// Writes [`html`] to `path` (complete or not at all).
pub fn write_html(log: &EventLog, info: &RunInfo, path: &Path) -> Result<()> {
    write_atomically(path, html(log, info).as_bytes())
}

/// Writes [`chrome_trace`] to `path` (complete or not at all).
pub fn write_chrome_trace(log: &EventLog, info: &RunInfo, path: &Path) -> Result<()> {
    write_atomically(path, chrome_trace(log, info).to_string().as_bytes())
}

/// Writes `bytes` to a temporary file beside `path`, then renames it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let fail = |reason: String| Error::Write { path: path.to_owned(), reason, source: None };
    let name = path.file_name().ok_or_else(|| fail("not a file name".into()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(fail(format!("directory {} does not exist", dir.display())));
    }
    let tmp = dir.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
    let result = std::fs::write(&tmp, bytes)
        .map_err(|e| ("writing a temporary file beside it", e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| ("renaming it into place", e)));
    if let Err((what, e)) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Write { path: path.to_owned(), reason: what.into(), source: Some(e.into()) });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Key;
    use crate::observe::events::{MemorySample, SpillEvent, TaskEvent, TaskKey, TransferEvent};

    fn log(tasks: usize) -> EventLog {
        let mut w = WorkerEvents {
            rank: 1,
            host: "h".into(),
            host_cores: 2,
            threads: vec![ThreadInfo::default(), ThreadInfo { bound: vec![1], affinity: vec![1], seen: vec![1] }],
            names: vec!["t</script>".into()],
            ..Default::default()
        };
        for i in 0..tasks {
            let kernel = (i % 3) as u32;
            let start_us = 1_000_000 + 10 * i as u64;
            let key = TaskKey::new(0, &Key::new("t</script>", [i as u32]));
            w.tasks.push(TaskEvent {
                key,
                kernel,
                thread: (i % 2) as u16,
                start_us,
                dur_us: 7,
                bytes: 8,
                failed: false,
            });
        }
        w.transfers.push(TransferEvent { from: 2, start_us: 1_000_000, dur_us: 50, bytes: 1 << 20 });
        w.memory.push(MemorySample { t_us: 1_000_100, bytes: 1 << 20, spilled: 3 << 20 });
        w.spills.push(SpillEvent { t_us: 1_000_100, blocks: 3, bytes: 3 << 20, read_back: false });
        EventLog { kernels: vec!["a".into(), "b".into(), "c".into()], workers: vec![w], transport: "local".into() }
    }

    fn info() -> RunInfo {
        RunInfo {
            command: "test <run>".into(),
            started_us: 999_000,
            ended_us: 2_100_000,
            features: vec![],
            scheduler_completed: None,
        }
    }

    #[test]
    fn small_runs_draw_every_task_and_large_ones_bins_that_count_them_all() {
        let small = report_data(&log(100), &info());
        assert_eq!(small["tasks"].as_array().unwrap().len(), 100);
        assert!(small["bins"].is_null());
        let large = report_data(&log(MAX_TASK_BARS + 1000), &info());
        assert!(large["tasks"].as_array().unwrap().is_empty());
        let cells = large["bins"]["cells"].as_array().unwrap();
        let counted: u64 = cells.iter().map(|c| c[3].as_u64().unwrap()).sum();
        assert_eq!(counted as usize, MAX_TASK_BARS + 1000);
        assert!(cells.len() <= 2 * BINS as usize, "{} cells", cells.len());
        // Busy time is conserved: 7 us per task.
        let busy: u64 = cells.iter().map(|c| c[4].as_u64().unwrap()).sum();
        assert_eq!(busy, 7 * (MAX_TASK_BARS as u64 + 1000));
    }

    #[test]
    fn the_page_embeds_data_that_cannot_close_its_script() {
        let page = html(&log(3), &info());
        assert!(!page.contains("/*TESSERA_DATA*/"));
        assert!(page.contains("<title>") && page.contains("test &lt;run&gt;"));
        assert!(!page.contains("{{"), "every placeholder filled");
        assert!(!page.contains("t</script>"), "a key ended the script early");
        assert!(page.contains(r"t\u003c/script>"));
    }

    #[test]
    fn chrome_traces_hold_one_event_per_task_and_thread_bindings() {
        let trace = chrome_trace(&log(10), &info());
        let events = trace["traceEvents"].as_array().unwrap();
        let tasks = events.iter().filter(|e| e["ph"] == "X" && e["cat"] == "task").count();
        assert_eq!(tasks, 10);
        let thread = events.iter().find(|e| e["name"] == "thread_name" && e["tid"] == 1).unwrap();
        assert_eq!(thread["args"]["affinity"], json!([1]));
        assert!(events.iter().any(|e| e["cat"] == "transfer" && e["args"]["bytes"] == 1 << 20));
        assert!(events.iter().any(|e| e["name"] == "memory" && e["args"]["spilled"] == 3 << 20));
    }

    #[test]
    fn the_memory_panel_has_spilled_bytes_and_spill_counts() {
        let data = report_data(&log(10), &info());
        let m = &data["memory"][0];
        assert_eq!(m["spilled"][0][1], 3 << 20);
        assert_eq!(m["spills"], json!({"blocks": 3, "bytes": 3 << 20, "read_back": 0}));
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_435_200_000_000), "2026-11-23T12:00:00Z");
        assert_eq!(rfc3339(1_795_435_200_999_999), "2026-11-23T12:00:00Z", "whole seconds");
        assert_eq!(rfc3339(951_782_400_000_000), "2000-02-29T00:00:00Z");
        assert!(rfc3339(u64::MAX).contains("after 1970"), "a clock past year 9999 still says something");
    }

    #[test]
    fn writes_are_complete_or_absent() {
        let dir = std::env::temp_dir().join(format!("tessera-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.html");
        write_html(&log(5), &info(), &path).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("</html>"));
        let err = write_html(&log(5), &info(), &dir.join("missing/r.html")).unwrap_err().to_string();
        assert!(err.contains("missing") && err.contains("does not exist"), "{err}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

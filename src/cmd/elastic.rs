//! The elastic cluster's commands: `scheduler`, `worker`, `workers` and
//! `retire`.

use std::time::Duration;

use anyhow::bail;
use serde_json::json;
use tessera::elastic::SchedulerFile;
use tessera::runtime::launch::elastic;
use tessera::runtime::transport::secret::{self, Secret};

use crate::cli::ClusterArgs;

/// `tessera scheduler`: listen, write the scheduler file, serve until a signal.
pub(crate) fn scheduler(
    args: &ClusterArgs,
    listen: &str,
    interface: Option<String>,
    allowed_failures: u32,
    json: bool,
) -> anyhow::Result<()> {
    let secret_path = args.secret_file.clone().unwrap_or_else(secret::default_path);
    let secret = Secret::load_or_create(&secret_path)?;
    let file_path = args.scheduler_file.clone().unwrap_or_else(SchedulerFile::default_path);
    let stop = tessera::runtime::host::sys::termination_flag();
    let opts = elastic::SchedulerOptions {
        listen: listen.to_owned(),
        interface,
        allowed_failures,
        ..elastic::SchedulerOptions::new(args.tcp_options(secret))
    };
    let mut server = elastic::Scheduler::start(opts)?;
    let addr = server.address().to_owned();
    SchedulerFile::new(&addr, &secret_path).write(&file_path)?;
    if json {
        println!(
            "{}",
            json!({"event": "listening", "address": addr, "secret_file": secret_path, "scheduler_file": file_path,
                   "pid": std::process::id()})
        );
    } else {
        println!("tessera scheduler listening on {addr}");
        println!("  secret file:    {} (mode 0600; workers and clients need to read it)", secret_path.display());
        println!("  scheduler file: {}", file_path.display());
        println!("  workers join:   tessera worker --scheduler {addr} --secret-file {}", secret_path.display());
        println!("  clients run:    tessera demo --scheduler {addr} --secret-file {}", secret_path.display());
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        if let Err(e) = server.check() {
            SchedulerFile::remove_if_mine(&file_path);
            return Err(e.into());
        }
    }
    tracing::info!("stopping: telling the workers to stop");
    server.shutdown();
    SchedulerFile::remove_if_mine(&file_path);
    if json {
        println!("{}", json!({"event": "stopped", "address": addr}));
    } else {
        println!("tessera scheduler stopped");
    }
    Ok(())
}

/// `tessera worker`: join, work, drain on lifetime or SIGTERM, exit.
pub(crate) fn worker(
    args: &ClusterArgs,
    lifetime: Option<f64>,
    stagger: f64,
    drain_timeout: f64,
    interface: Option<String>,
    name: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let (addr, secret_path) = args.scheduler_address()?;
    let secret = Secret::load(&secret_path)?;
    let mut opts = elastic::WorkerOptions::new(&addr, args.tcp_options(secret));
    opts.worker = args.worker_settings();
    opts.lifetime = lifetime.map(Duration::from_secs_f64);
    opts.lifetime_stagger = Duration::from_secs_f64(stagger);
    opts.drain_timeout = Duration::from_secs_f64(drain_timeout);
    opts.interface = interface;
    opts.drain_on_signal = true;
    if let Some(n) = name {
        opts.name = n;
    }
    let report = elastic::run_worker(opts)?;
    if json {
        let (stopped, failed, reason) = match &report.exit {
            tessera::runtime::WorkerExit::Shutdown { failed, reason } => ("shutdown", *failed, Some(reason.as_str())),
            tessera::runtime::WorkerExit::Disconnected => ("disconnected", true, None),
        };
        println!(
            "{}",
            json!({"event": "stopped", "rank": report.rank, "scheduler": addr, "drained": report.drained,
                   "drain_cause": report.drain_cause, "stopped": stopped, "failed": failed, "reason": reason})
        );
    }
    match report.exit {
        tessera::runtime::WorkerExit::Shutdown { failed: false, ref reason } => {
            tracing::info!(rank = report.rank, drained = report.drained, cause = ?report.drain_cause, %reason, "done");
            Ok(())
        }
        tessera::runtime::WorkerExit::Shutdown { failed: true, reason } => {
            bail!("the scheduler at {addr} stopped this worker (rank {}): {reason}", report.rank)
        }
        tessera::runtime::WorkerExit::Disconnected => bail!("worker rank {} lost its inbox", report.rank),
    }
}

/// A client of the elastic cluster the flags name.
pub(crate) fn connect(args: &ClusterArgs) -> anyhow::Result<elastic::RemoteClient> {
    let (addr, secret_path) = args.scheduler_address()?;
    Ok(elastic::connect(&addr, args.tcp_options(Secret::load(&secret_path)?))?)
}

/// One worker of `tessera workers --json`; `address` is where it listens
/// for its peers (null if the scheduler has not announced it).
fn worker_json(w: &tessera::WorkerInfo, address: Option<String>) -> serde_json::Value {
    json!({"rank": w.rank, "name": w.name, "host": w.host, "address": address, "threads": w.threads, "gpu": w.gpu})
}

/// `tessera workers`: the workers that take tasks now.
pub(crate) fn list_workers(args: &ClusterArgs, json: bool) -> anyhow::Result<()> {
    let client = connect(args)?;
    let workers = client.try_workers()?;
    if json {
        let list: Vec<_> = workers.iter().map(|w| worker_json(w, client.worker_address(w.rank))).collect();
        println!("{}", json!({ "workers": list }));
        return Ok(());
    }
    println!("{} workers", workers.len());
    for w in &workers {
        let gpu = if w.gpu.is_empty() { String::new() } else { format!(", {}", w.gpu) };
        let at = client.worker_address(w.rank).map(|a| format!(" at {a}")).unwrap_or_default();
        println!("  rank {:>4}  {:<16} {} threads on {}{at}{gpu}", w.rank, w.name, w.threads, w.host);
    }
    Ok(())
}

/// `tessera retire`: drains the workers named by rank or name.
pub(crate) fn retire(args: &ClusterArgs, which: &[String], json: bool) -> anyhow::Result<()> {
    let client = connect(args)?;
    let workers = client.try_workers()?;
    let mut ranks = Vec::new();
    for w in which {
        let found: Vec<u32> =
            workers.iter().filter(|x| x.name == *w || x.rank.to_string() == *w).map(|x| x.rank).collect();
        if found.is_empty() {
            let known: Vec<String> = workers.iter().map(|x| format!("{} ({})", x.rank, x.name)).collect();
            bail!("no worker with rank or name `{w}`; the workers are: {}", known.join(", "));
        }
        ranks.extend(found);
    }
    ranks.sort_unstable();
    ranks.dedup();
    let start = std::time::Instant::now();
    let left = client.retire_workers(&ranks)?;
    say!(json, "retired {} workers in {:.3} s: ranks {left:?}", left.len(), start.elapsed().as_secs_f64());
    if json {
        println!("{}", json!({"retired": left, "seconds": start.elapsed().as_secs_f64()}));
    }
    Ok(())
}

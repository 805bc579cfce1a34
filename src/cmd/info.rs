//! `tessera info` (what this build and this machine offer) and `tessera man`.

use anyhow::Context;
use serde_json::json;
use tessera::elastic::SchedulerFile;
use tessera::runtime::transport::secret;
use tessera::{Config, Launch};

use crate::cli;

/// `tessera man DIR`: the man pages of every command, from the same
/// definitions as `--help`.
pub(crate) fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the man page directory {}", dir.display()))?;
    clap_mangen::generate_to(cli::command(), dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    let pages = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name().to_string_lossy().starts_with("tessera") && e.path().extension().is_some_and(|x| x == "1")
        })
        .count();
    eprintln!(
        "tessera: {pages} man pages in {} (`man tessera` finds them when DIR is a man1 directory on MANPATH)",
        dir.display()
    );
    Ok(())
}

pub(crate) fn info(config: &Config, json: bool, elastic: serde_json::Value) -> anyhow::Result<()> {
    let features = tessera::observe::features();
    let (mem_total, mem_avail) = tessera::runtime::host::sys::memory().unwrap_or((0, 0));
    let launch = config.resolve_launch()?;
    let mpi = mpi_info(launch)?;
    if mpi.as_ref().is_some_and(|m| m["rank"] != 0) {
        return Ok(()); // rank 0 speaks for the job
    }
    let registry = tessera::Registry::builtin();
    let mut transports = vec!["local", "tcp"];
    if tessera::HAS_MPI {
        transports.push("mpi");
    }
    if tessera::HAS_UCX {
        transports.push("ucx (blocks; --transport ucx)");
    }
    let ucx = ucx_info();
    let gpu = tessera::runtime::gpu::probe();
    let gpus_json = match &gpu {
        tessera::runtime::gpu::Probe::Found { driver, devices, libraries } => json!({
            "driver": format!("{}.{}", driver.0, driver.1),
            "devices": devices.iter().map(|d| json!({"ordinal": d.ordinal, "name": d.name, "memory_bytes": d.total_bytes,
                "free_bytes": d.free_bytes, "compute_capability": format!("{}.{}", d.capability.0, d.capability.1)})).collect::<Vec<_>>(),
            "libraries": libraries.iter().map(|(l, ok)| json!({"name": l, "loads": ok})).collect::<Vec<_>>(),
        }),
        other => json!({"unavailable": other.describe().join("; ")}),
    };
    let interfaces: Vec<serde_json::Value> = tessera::runtime::host::sys::interfaces()
        .into_iter()
        .map(|(name, ip, lo)| json!({"name": name, "ipv4": ip.to_string(), "loopback": lo}))
        .collect();
    let routable = tessera::runtime::host::sys::routable_address(None).map(|a| a.to_string()).unwrap_or_default();
    let (topologies, hosts) = match &mpi {
        Some(m) => (m["topologies"].clone(), m["hosts"].clone()),
        None => match tessera::runtime::host::topology::detect() {
            Ok(t) => (json!([t]), json!([t.host])),
            Err(e) => (json!([]), json!({"unavailable": e.to_string()})),
        },
    };
    let obj = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "topology": topologies,
        "rank_hosts": hosts,
        "binding": if tessera::runtime::HAS_HWLOC { "available (--bind auto|core|numa|none)" } else { "unavailable in this build (rebuild with --features hwloc)" },
        "features": features,
        "transports": transports,
        "ucx": ucx,
        "gpus": gpus_json,
        "tcp": {"routable_address": routable, "interfaces": interfaces,
                "secret_file": secret::default_path(), "scheduler_file": SchedulerFile::default_path()},
        "launch": format!("{launch:?}").to_lowercase(),
        "elastic": elastic,
        "mpi": mpi,
        "launched_by": tessera::runtime::host::launcher::describe_mpi_launch(),
        "host": tessera::runtime::host::sys::hostname(),
        "cores": tessera::runtime::host::sys::host_cores(),
        "usable_cores": tessera::runtime::host::sys::usable_cores(),
        "memory_bytes": mem_total,
        "memory_available_bytes": mem_avail,
        "memory_limit": memory_limit(config),
        "kernels": registry.names().collect::<Vec<_>>(),
    });
    if json {
        println!("{obj}");
        return Ok(());
    }
    println!("tessera {}", env!("CARGO_PKG_VERSION"));
    println!(
        "  features:  {}",
        if features.is_empty() { "(none: local and TCP clusters)".into() } else { features.join(", ") }
    );
    if !tessera::HAS_MPI {
        println!("  mpi:       not compiled in (rebuild with --features mpi)");
    }
    if !tessera::linalg::HAS_HDF5 {
        println!("  hdf5:      not compiled in (rebuild with --features hdf5)");
    }
    match &obj["mpi"] {
        serde_json::Value::Null if tessera::HAS_MPI => println!(
            "  mpi:       {} (not launched by mpirun/srun)",
            obj["mpi_library"].as_str().unwrap_or("available")
        ),
        serde_json::Value::Null => {}
        m => println!(
            "  mpi:       {}; world size {}; CUDA-aware: {} (blocks between GPU workers go through host memory)",
            m["library"].as_str().unwrap_or("?"),
            m["world_size"],
            match m["cuda_aware"].as_bool() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "the library does not say",
            }
        ),
    }
    println!("  transports: {} (tcp: elastic workers, `tessera scheduler` / `tessera worker`)", transports.join(", "));
    match &ucx {
        serde_json::Value::Null => println!("  ucx:       not compiled in (rebuild with --features ucx)"),
        u if u["error"].is_string() => println!("  ucx:       {}", u["error"].as_str().unwrap_or("")),
        u => println!(
            "  ucx:       {} (UCX_TLS={}): {}",
            u["version"].as_str().unwrap_or("?"),
            u["tls"].as_str().unwrap_or("?"),
            u["resources"]
                .as_array()
                .map(|r| r.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        ),
    }
    let mut gpu_lines = gpu.describe().into_iter();
    println!("  gpus:      {}", gpu_lines.next().unwrap_or_default());
    for line in gpu_lines {
        println!("             {line}");
    }
    println!(
        "  tcp:       workers would reach this host at {routable}; interfaces: {}",
        tessera::runtime::host::sys::interfaces()
            .iter()
            .map(|(n, ip, _)| format!("{n} {ip}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  launch:    {}", obj["launch"].as_str().unwrap_or("?"));
    match &obj["elastic"] {
        serde_json::Value::Null => println!("  elastic:   none (computing commands run on the launch's cluster)"),
        e if e["error"].is_string() => println!("  elastic:   {}", e["error"].as_str().unwrap_or("")),
        e => println!("  elastic:   the scheduler at {} ({})", e["address"].as_str().unwrap_or("?"), e["from"]),
    }
    println!("  host:      {}", obj["host"].as_str().unwrap_or("?"));
    println!("  cores:     {} ({} usable by this process)", obj["cores"], obj["usable_cores"]);
    println!(
        "  memory:    {:.1} GiB ({:.1} GiB available)",
        mem_total as f64 / (1u64 << 30) as f64,
        mem_avail as f64 / (1u64 << 30) as f64
    );
    let limit = &obj["memory_limit"];
    match limit["bytes"].as_u64() {
        Some(b) => println!(
            "  limit:     {} per worker process ({}: {}; spill past {}, pause past {}, into {})",
            tessera::runtime::host::sys::human_bytes(b),
            limit["setting"].as_str().unwrap_or("?"),
            limit["source"].as_str().unwrap_or("?"),
            limit["target"],
            limit["pause"],
            limit["local_directory"].as_str().unwrap_or("?"),
        ),
        None => println!("  limit:     none (--memory-limit none: blocks stay in memory)"),
    }
    for s in limit["sources"].as_array().into_iter().flatten() {
        println!(
            "             found {} from {}",
            tessera::runtime::host::sys::human_bytes(s["bytes"].as_u64().unwrap_or(0)),
            s["source"].as_str().unwrap_or("?")
        );
    }
    match obj["topology"].as_array() {
        Some(hosts) if !hosts.is_empty() => {
            for t in hosts {
                let t: tessera::runtime::host::topology::HostTopology = serde_json::from_value(t.clone())?;
                println!("  topology:  {}", t.describe().replace('\n', "\n             "));
            }
        }
        _ => println!(
            "  topology:  not read: {}",
            tessera::runtime::host::topology::detect().err().map(|e| e.to_string()).unwrap_or_default()
        ),
    }
    println!("  binding:   {}", obj["binding"].as_str().unwrap_or("?"));
    println!("  kernels:   {}", registry.names().collect::<Vec<_>>().join(", "));
    Ok(())
}

/// UCX's version and the transports it would use here (null without `ucx`).
pub(crate) fn ucx_info() -> serde_json::Value {
    #[cfg(feature = "ucx")]
    {
        let tls = std::env::var("UCX_TLS").unwrap_or_else(|_| "default (all)".into());
        match tessera::runtime::transport::ucx::ucp::resources() {
            Ok(r) => json!({"version": tessera::runtime::transport::ucx::ucp::version(), "tls": tls, "resources": r}),
            Err(e) => {
                json!({"version": tessera::runtime::transport::ucx::ucp::version(), "tls": tls, "error": e.to_string()})
            }
        }
    }
    #[cfg(not(feature = "ucx"))]
    serde_json::Value::Null
}

#[cfg(feature = "mpi")]
pub(crate) fn mpi_info(launch: Launch) -> anyhow::Result<Option<serde_json::Value>> {
    if launch != Launch::Mpi {
        return Ok(None);
    }
    let i = tessera::mpi::info().context("MPI was already initialised")?;
    Ok(Some(json!({
        "library": i.library,
        "standard": format!("{}.{}", i.standard.0, i.standard.1),
        "world_size": i.world_size,
        "rank": i.rank,
        "hosts": i.hosts,
        "topologies": i.topologies,
        "cuda_aware": i.cuda_aware,
    })))
}

#[cfg(not(feature = "mpi"))]
pub(crate) fn mpi_info(_: Launch) -> anyhow::Result<Option<serde_json::Value>> {
    Ok(None)
}

/// The memory limit a worker of this process would get, where it came from,
/// and every limit the host sets (what `auto` chose from).
fn memory_limit(config: &Config) -> serde_json::Value {
    use tessera::runtime::host::memory;
    let m = &config.worker.memory;
    let ranks = tessera::runtime::host::launcher::local_rank().map_or(1, |(_, n)| n);
    let found = memory::resolve(m.limit, ranks);
    let dir = m.directory();
    let sources: Vec<_> =
        memory::sources(ranks).into_iter().map(|f| json!({"bytes": f.bytes, "source": f.source})).collect();
    json!({
        "setting": m.limit.to_string(),
        "bytes": found.as_ref().map(|f| f.bytes),
        "source": found.as_ref().map(|f| f.source.clone()),
        "ranks_on_host": ranks,
        "target": m.target,
        "pause": m.pause,
        "local_directory": dir,
        "sources": sources,
    })
}

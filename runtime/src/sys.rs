//! Facts about the host: name, cores, memory, and what launched us.

use std::collections::BTreeMap;

/// This host's name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // on success (or truncates, which we handle by searching for NUL).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Logical CPUs online on this host.
pub fn host_cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        usable_cores()
    }
}

/// Logical CPUs this process may run on (its affinity mask).
pub fn usable_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// `(total, available)` memory of the host in bytes, from `/proc/meminfo`.
pub fn memory() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// Environment variables by which MPI launchers announce a rank.
const MPI_SIZE_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"];
const MPI_RANK_VARS: [&str; 3] = ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"];

/// What the environment says about an MPI launch: the variables found, if
/// any. A process started by `mpirun`, `mpiexec` or `srun --mpi=...` has some.
pub fn mpi_launch_vars() -> BTreeMap<String, String> {
    MPI_SIZE_VARS
        .iter()
        .chain(MPI_RANK_VARS.iter())
        .filter_map(|&v| std::env::var(v).ok().map(|val| (v.to_owned(), val)))
        .collect()
}

/// World size announced by the launcher, if launched by one.
pub fn mpi_launch_size() -> Option<usize> {
    MPI_SIZE_VARS
        .iter()
        .filter(|&&v| v != "MPI_LOCALNRANKS")
        .find_map(|&v| std::env::var(v).ok()?.parse().ok())
        .or_else(|| (!mpi_launch_vars().is_empty()).then_some(1))
}

/// One-line description of how the launcher announced itself (for messages).
pub fn describe_mpi_launch() -> String {
    mpi_launch_vars().into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

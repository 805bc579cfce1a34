//! How much memory a worker may use: the `--memory-limit` setting, what
//! `auto` finds on this host, and the process's resident memory.
//!
//! Batch systems enforce memory in one of three ways, and `auto` reads all
//! of them and takes the smallest:
//!
//! * a memory cgroup (Slurm's `ConstrainRAMSpace`, PBS Pro's cgroup hook,
//!   systemd): v2 `memory.max` or v1 `memory.limit_in_bytes` of the
//!   process's cgroup and its parents, found through `/proc/self/cgroup`;
//! * the grant the batch system announces: `SLURM_MEM_PER_NODE`, or
//!   `SLURM_MEM_PER_CPU` times `SLURM_CPUS_ON_NODE` (MiB);
//! * an address-space limit (`RLIMIT_AS`: how SGE enforces `h_vmem` and
//!   PBS/Torque `vmem`);
//! * and the host's physical memory.
//!
//! The cgroup, the Slurm grant and physical memory belong to the whole host
//! (or job on it): they are shared among the ranks there. An address-space
//! limit is the process's own. A fraction (`0.5`) is that share of what
//! `auto` finds. A process running several workers (a local cluster) shares
//! its limit among them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The `--memory-limit` setting: how much memory each worker process may use.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum MemoryLimit {
    /// The smallest of the cgroup limit, the batch system's grant, the
    /// address-space limit and physical memory, shared among the host's ranks.
    #[default]
    Auto,
    /// No limit: blocks stay in memory whatever happens.
    None,
    /// This many bytes per worker process.
    Bytes(u64),
    /// This fraction (0 < f <= 1) of what `Auto` finds.
    Fraction(f64),
}

impl FromStr for MemoryLimit {
    type Err = String;

    /// `auto`, `none`, a fraction in (0, 1] (`0.5`), or a byte size with
    /// its unit (`8GiB`, `512MB`; `4G` is ambiguous and refused).
    fn from_str(s: &str) -> Result<MemoryLimit, String> {
        let t = s.trim();
        match t.to_ascii_lowercase().as_str() {
            "auto" => return Ok(MemoryLimit::Auto),
            "none" | "0" => return Ok(MemoryLimit::None),
            _ => {}
        }
        // A number is a fraction in (0, 1] or a whole count of bytes.
        if let Ok(f) = t.parse::<f64>() {
            if f.is_finite() && f > 0.0 && f <= 1.0 {
                return Ok(MemoryLimit::Fraction(f));
            }
            if !t.chars().all(|c| c.is_ascii_digit()) {
                return Err(format!(
                    "`{s}` is not a memory limit: a fraction must be in (0, 1]; \
                     give bytes with a unit (`8GiB`), `auto` or `none`"
                ));
            }
        }
        match crate::host::sys::parse_bytes(t) {
            Ok(0) => Ok(MemoryLimit::None),
            Ok(b) => Ok(MemoryLimit::Bytes(b)),
            Err(e) => Err(format!("`{s}` is not a memory limit ({e}); give bytes with a unit (`8GiB`), a fraction (`0.5`), `auto` or `none`")),
        }
    }
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryLimit::Auto => f.write_str("auto"),
            MemoryLimit::None => f.write_str("none"),
            MemoryLimit::Bytes(b) => f.write_str(&crate::host::sys::human_bytes(*b)),
            MemoryLimit::Fraction(x) => write!(f, "{x}"),
        }
    }
}

/// A limit found on this host, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Bytes for this process (after sharing among the host's ranks).
    pub bytes: u64,
    /// Where it came from, for `tessera info` and logs
    /// (`cgroup v1 /sys/fs/cgroup/memory/job_42 (3.0 GiB) / 3 ranks`).
    pub source: String,
}

/// What the process may use under `limit`, with `ranks_on_host` ranks
/// sharing the host's memory; `None` for no limit.
pub fn resolve(limit: MemoryLimit, ranks_on_host: usize) -> Option<Found> {
    match limit {
        MemoryLimit::None => None,
        MemoryLimit::Bytes(bytes) => Some(Found { bytes, source: "--memory-limit".into() }),
        MemoryLimit::Auto => auto(ranks_on_host),
        MemoryLimit::Fraction(f) => auto(ranks_on_host)
            .map(|a| Found { bytes: (a.bytes as f64 * f) as u64, source: format!("{f} of {}", a.source) }),
    }
}

/// Every limit this host sets on this process (shared among
/// `ranks_on_host` where it is the host's), smallest first.
pub fn sources(ranks_on_host: usize) -> Vec<Found> {
    let ranks = ranks_on_host.max(1) as u64;
    let shared = |bytes: u64, what: String| {
        let source = if ranks > 1 { format!("{what} / {ranks} ranks") } else { what };
        Found { bytes: bytes / ranks, source }
    };
    let human = crate::host::sys::human_bytes;
    let mut found = Vec::new();
    if let Some((bytes, file)) = cgroup_limit() {
        found.push(shared(bytes, format!("cgroup {} ({})", file.display(), human(bytes))));
    }
    if let Some((bytes, what)) = slurm_grant(|k| std::env::var(k).ok()) {
        found.push(shared(bytes, format!("{what} ({})", human(bytes))));
    }
    if let Some(bytes) = address_space_limit() {
        found.push(Found { bytes, source: format!("RLIMIT_AS ({})", human(bytes)) });
    }
    if let Some((total, _)) = crate::host::sys::memory() {
        found.push(shared(total, format!("physical memory ({})", human(total))));
    }
    found.sort_by_key(|f| f.bytes);
    found
}

fn auto(ranks_on_host: usize) -> Option<Found> {
    sources(ranks_on_host).into_iter().next()
}

/// Values at or above this mean "no limit" in cgroup files (v1 writes
/// `9223372036854771712`; v2 writes `max`).
const UNLIMITED: u64 = 1 << 62;

/// The smallest memory limit of this process's cgroup and its parents, and
/// the file that set it.
pub fn cgroup_limit() -> Option<(u64, PathBuf)> {
    let table = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup_limit_in(&table, Path::new("/sys/fs/cgroup"))
}

/// [`cgroup_limit`] for a `/proc/self/cgroup` table and a cgroup mount root.
pub fn cgroup_limit_in(table: &str, root: &Path) -> Option<(u64, PathBuf)> {
    let mut best: Option<(u64, PathBuf)> = None;
    for line in table.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (dir, file) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max") // v2: the unified hierarchy
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        // The cgroup and each parent up to the mount's root.
        let mut at = Some(Path::new(path.trim_start_matches('/')));
        while let Some(rel) = at {
            let f = dir.join(rel).join(file);
            if let Some(v) = std::fs::read_to_string(&f).ok().and_then(|t| t.trim().parse::<u64>().ok()) {
                if v < UNLIMITED && best.as_ref().is_none_or(|(b, _)| v < *b) {
                    best = Some((v, f));
                }
            }
            at = rel.parent().filter(|_| !rel.as_os_str().is_empty());
        }
    }
    best
}

/// The memory Slurm granted the job on this node, from its environment.
pub fn slurm_grant(var: impl Fn(&str) -> Option<String>) -> Option<(u64, String)> {
    let mib = |k: &str| var(k).and_then(|v| v.trim().parse::<u64>().ok()).filter(|&v| v > 0);
    if let Some(m) = mib("SLURM_MEM_PER_NODE") {
        return Some((m << 20, format!("SLURM_MEM_PER_NODE={m}")));
    }
    let per_cpu = mib("SLURM_MEM_PER_CPU")?;
    // `SLURM_CPUS_ON_NODE` is a count; `SLURM_JOB_CPUS_PER_NODE` may read `4(x2)`.
    let cpus = mib("SLURM_CPUS_ON_NODE").unwrap_or(1);
    Some(((per_cpu * cpus) << 20, format!("SLURM_MEM_PER_CPU={per_cpu} x SLURM_CPUS_ON_NODE={cpus}")))
}

/// The process's address-space limit (`ulimit -v`), if it has one.
pub fn address_space_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::As).current.filter(|&b| b < UNLIMITED)
}

/// The process's resident memory now, in bytes (`/proc/self/statm`).
pub fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_with_units_fractions_and_words() {
        assert_eq!("auto".parse::<MemoryLimit>(), Ok(MemoryLimit::Auto));
        assert_eq!("none".parse::<MemoryLimit>(), Ok(MemoryLimit::None));
        assert_eq!("0.5".parse::<MemoryLimit>(), Ok(MemoryLimit::Fraction(0.5)));
        assert_eq!("1".parse::<MemoryLimit>(), Ok(MemoryLimit::Fraction(1.0)));
        assert_eq!("768MiB".parse::<MemoryLimit>(), Ok(MemoryLimit::Bytes(768 << 20)));
        assert_eq!("2GB".parse::<MemoryLimit>(), Ok(MemoryLimit::Bytes(2_000_000_000)));
        assert_eq!("1073741824".parse::<MemoryLimit>(), Ok(MemoryLimit::Bytes(1 << 30)));
        for bad in ["-1", "-0.5", "1.5", "4G", "lots", "", "nan", "inf"] {
            let e = bad.parse::<MemoryLimit>().expect_err(bad);
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
    }

    #[test]
    fn cgroup_v1_and_v2_limits_are_found_through_the_parents() {
        let root = std::env::temp_dir().join(format!("tessera-cgroup-{}", std::process::id()));
        let v1 = root.join("memory/job_7/step_0");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(root.join("memory/job_7/memory.limit_in_bytes"), "805306368\n").unwrap();
        let (b, f) = cgroup_limit_in("4:memory:/job_7/step_0\n1:cpu:/x\n", &root).unwrap();
        assert_eq!(b, 768 << 20);
        assert!(f.ends_with("memory/job_7/memory.limit_in_bytes"), "{}", f.display());

        let v2 = root.join("user.slice/job");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        std::fs::write(root.join("user.slice/memory.max"), "2147483648\n").unwrap();
        assert_eq!(cgroup_limit_in("0::/user.slice/job\n", &root).map(|x| x.0), Some(2 << 30));
        assert_eq!(cgroup_limit_in("0::/elsewhere\n", &root), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn slurm_grants_read_per_node_or_per_cpu() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(slurm_grant(env(&[("SLURM_MEM_PER_NODE", "4096")])).unwrap().0, 4 << 30);
        let (b, what) = slurm_grant(env(&[("SLURM_MEM_PER_CPU", "1000"), ("SLURM_CPUS_ON_NODE", "8")])).unwrap();
        assert_eq!(b, 8000 << 20);
        assert!(what.contains("SLURM_MEM_PER_CPU=1000"), "{what}");
        assert_eq!(slurm_grant(env(&[])), None);
        assert_eq!(slurm_grant(env(&[("SLURM_MEM_PER_NODE", "0")])), None);
    }

    #[test]
    fn auto_is_the_smallest_source_and_is_shared_among_ranks() {
        let one = resolve(MemoryLimit::Auto, 1).expect("physical memory at least");
        let three = resolve(MemoryLimit::Auto, 3).unwrap();
        assert!(three.bytes <= one.bytes / 3 + 1, "{one:?} {three:?}");
        let half = resolve(MemoryLimit::Fraction(0.5), 1).unwrap();
        assert!(half.bytes.abs_diff(one.bytes / 2) <= 1, "{half:?}");
        assert_eq!(resolve(MemoryLimit::None, 1), None);
        assert!(resident_bytes().unwrap() > 0);
    }
}

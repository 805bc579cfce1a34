//! What a job asks for, independent of the batch system: [`JobSpec`] and its
//! strictly parsed units ([`Memory`], [`Walltime`], [`JobArray`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Serialize;

use crate::{Error, Result};

/// One job description, rendered by [`crate::render`] for any batch system.
///
/// Counts are per node: `nodes` x `tasks_per_node` MPI ranks (or workers),
/// each with `cores_per_task` cores; `memory` and `gpus_per_node` per node.
/// Every string is checked by [`JobSpec::validate`] before it reaches a
/// script: a value that could end a directive line or smuggle shell code in is
/// refused with an error naming the field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSpec {
    /// Job name (`--job-name`, `-N`); starts with a letter, then letters, digits, `_`, `.` or `-`.
    pub job_name: String,
    pub nodes: u32,
    pub tasks_per_node: u32,
    pub cores_per_task: u32,
    /// Memory per node.
    pub memory: Option<Memory>,
    pub gpus_per_node: u32,
    pub walltime: Option<Walltime>,
    /// Slurm partition, PBS/SGE queue.
    pub queue: Option<String>,
    /// Slurm/PBS account, SGE project.
    pub account: Option<String>,
    /// Where the job's output file goes (and where `submit` writes the script).
    pub log_dir: PathBuf,
    /// Directory the job runs in (`cd` at the top of the script).
    pub workdir: PathBuf,
    /// Variables exported at the top of the script.
    pub env: BTreeMap<String, String>,
    /// Extra directives in the system's own syntax, without the prefix (`--constraint=haswell`).
    pub directives: Vec<String>,
    /// Default directives containing any of these strings are left out.
    pub skip: Vec<String>,
    /// Shell lines before the command (`module load openmpi`).
    pub prologue: Vec<String>,
    /// Shell lines after the command; the job still exits with the command's status.
    pub epilogue: Vec<String>,
    pub array: Option<JobArray>,
    /// SGE parallel environment.
    pub parallel_env: String,
    /// SGE resource that carries the memory request (per slot).
    pub sge_memory_resource: String,
    /// SGE resource that carries the GPU request.
    pub sge_gpu_resource: String,
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec {
            job_name: "tessera".into(),
            nodes: 1,
            tasks_per_node: 1,
            cores_per_task: 1,
            memory: None,
            gpus_per_node: 0,
            walltime: None,
            queue: None,
            account: None,
            log_dir: PathBuf::from("tessera-jobs"),
            workdir: PathBuf::from("."),
            env: BTreeMap::new(),
            directives: Vec::new(),
            skip: Vec::new(),
            prologue: Vec::new(),
            epilogue: Vec::new(),
            array: None,
            parallel_env: "mpi".into(),
            sge_memory_resource: "mem_free".into(),
            sge_gpu_resource: "gpu".into(),
        }
    }
}

impl JobSpec {
    /// MPI ranks (or workers) of the whole job.
    pub fn total_tasks(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.tasks_per_node)
    }

    /// Cores per node.
    pub fn cores_per_node(&self) -> u64 {
        u64::from(self.tasks_per_node) * u64::from(self.cores_per_task)
    }

    /// Checks every field; the first bad one is the error.
    pub fn validate(&self) -> Result<()> {
        check_name("job_name", &self.job_name)?;
        for (field, v) in
            [("nodes", self.nodes), ("tasks_per_node", self.tasks_per_node), ("cores_per_task", self.cores_per_task)]
        {
            if v == 0 {
                return Err(Error::invalid(field, "0", "must be at least 1"));
            }
        }
        if let Some(q) = &self.queue {
            check_word("queue", q, "@")?;
        }
        if let Some(a) = &self.account {
            check_word("account", a, "")?;
        }
        check_path("log_dir", &self.log_dir)?;
        check_path("workdir", &self.workdir)?;
        for (k, v) in &self.env {
            check_env_name(k)?;
            check_line(&format!("env.{k}"), v)?;
        }
        for d in &self.directives {
            check_line("directives", d)?;
            if d.trim().is_empty() {
                return Err(Error::invalid("directives", d, "is empty"));
            }
        }
        for s in &self.skip {
            check_line("skip", s)?;
            if s.is_empty() {
                return Err(Error::invalid("skip", s, "an empty pattern would skip every directive"));
            }
        }
        for l in &self.prologue {
            check_line("prologue", l)?;
        }
        for l in &self.epilogue {
            check_line("epilogue", l)?;
        }
        check_word("parallel_env", &self.parallel_env, "")?;
        check_word("sge_memory_resource", &self.sge_memory_resource, "")?;
        check_word("sge_gpu_resource", &self.sge_gpu_resource, "")?;
        Ok(())
    }
}

/// A string that goes into a script as a line of its own (shell code or a
/// directive): no line breaks, no NUL, no other control characters.
pub(crate) fn check_line(field: &str, v: &str) -> Result<()> {
    if let Some(c) = v.chars().find(|c| c.is_control() && *c != '\t') {
        let what = match c {
            '\n' | '\r' => "contains a line break, which would start a new line (a new directive) in the job script",
            _ => "contains a control character",
        };
        return Err(Error::invalid(field, v.escape_debug().to_string(), what));
    }
    Ok(())
}

/// Job names: a letter, then letters, digits, `_`, `.`, `-`; at most 64 (PBS and SGE are strictest).
fn check_name(field: &str, v: &str) -> Result<()> {
    check_line(field, v)?;
    let ok = v.len() <= 64
        && v.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && v.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        return Err(Error::invalid(
            field,
            v,
            "must start with a letter and hold only letters, digits, `_`, `.` and `-` (at most 64)",
        ));
    }
    Ok(())
}

/// Queue, account and resource names: letters, digits, `_`, `.`, `-`, `+` and `extra`.
pub(crate) fn check_word(field: &str, v: &str, extra: &str) -> Result<()> {
    check_line(field, v)?;
    if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || "_.-+".contains(c) || extra.contains(c)) {
        return Err(Error::invalid(
            field,
            v,
            format!(
                "must be non-empty and hold only letters, digits and `_.-+{extra}` (no spaces, quotes or shell characters)"
            ),
        ));
    }
    Ok(())
}

/// Paths end up inside directives, unquoted: a conservative set of characters.
pub(crate) fn check_path(field: &str, p: &std::path::Path) -> Result<()> {
    let s = p.to_string_lossy();
    check_line(field, &s)?;
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || "_./+,=@:%-~".contains(c)) {
        return Err(Error::invalid(
            field,
            s,
            "paths in job scripts may hold only letters, digits and `_./+,=@:%-~` (no spaces, quotes or $)",
        ));
    }
    Ok(())
}

fn check_env_name(k: &str) -> Result<()> {
    let ok = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(Error::invalid("env", k, "variable names are letters, digits and `_`, not starting with a digit"));
    }
    Ok(())
}

/// An amount of memory in bytes, parsed from a number with an explicit unit.
///
/// Read by [`tessera_units::parse`], the one rule for byte sizes: decimal
/// units (`KB`, `MB`, `GB`, `TB`: powers of 1000) and binary units (`KiB`,
/// `MiB`, `GiB`, `TiB`: powers of 1024) are both accepted and never confused;
/// a one-letter unit (`4G`, which Slurm reads as GiB and SGE's `g` as GB) is
/// refused. A bare number, elsewhere a count of bytes, is refused here too. Scripts get the value in the system's
/// own unit, rounded up, so a job never asks for less than was written.
///
/// ```
/// use tessera_jobqueue::Memory;
/// let m: Memory = "4GiB".parse()?;
/// assert_eq!(m.bytes(), 4 << 30);
/// assert_eq!("4GB".parse::<Memory>()?.bytes(), 4_000_000_000);
/// assert!("4G".parse::<Memory>().is_err());
/// # Ok::<(), tessera_jobqueue::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Memory(u64);

impl Memory {
    pub fn from_bytes(bytes: u64) -> Self {
        Memory(bytes)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// In MiB (2^20 bytes), rounded up: the unit of Slurm's `--mem=...M`,
    /// PBS's `mb` and SGE's `M`, all of which are binary.
    pub fn mib_ceil(self) -> u64 {
        self.0.div_ceil(1 << 20)
    }
}

impl FromStr for Memory {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("memory", s, why.to_string());
        let size = tessera_units::parse(s).map_err(|e| bad(&e.to_string()))?;
        // Batch systems read a bare number as megabytes (Slurm's --mem=4) or
        // bytes (PBS): a job's memory always names its unit.
        if !size.has_unit() {
            return Err(bad("a unit is required: GiB (2^30 bytes) or GB (10^9 bytes), MiB or MB, ..."));
        }
        if size.bytes() == 0 {
            return Err(bad("must be more than zero"));
        }
        let bytes = size.bytes();
        Ok(Memory(bytes))
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        // The largest unit that divides the amount: 4000 MB is 4GB, not 3906250KiB.
        let units = [
            ("TiB", 1u64 << 40),
            ("TB", 1_000_000_000_000),
            ("GiB", 1 << 30),
            ("GB", 1_000_000_000),
            ("MiB", 1 << 20),
            ("MB", 1_000_000),
            ("KiB", 1 << 10),
            ("KB", 1_000),
        ];
        if let Some((unit, m)) = units.iter().find(|(_, m)| b >= *m && b.checked_rem(*m) == Some(0)) {
            return write!(f, "{}{unit}", b / m);
        }
        write!(f, "{b}B")
    }
}

impl Serialize for Memory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A wall-clock limit, parsed as Slurm reads one with a day part, or as a
/// number with a unit:
///
/// - `HH:MM:SS` (hours may exceed 23);
/// - `D-HH`, `D-HH:MM` or `D-HH:MM:SS` (days, then hours below 24);
/// - `90m`, `1h`, `2d`, `45s`, or several in that order (`1h30m`).
///
/// Minutes and seconds are below 60. A bare number (`90`: minutes or
/// seconds?) and `MM:SS` (`10:00`: ten minutes in Slurm, ten hours to a
/// reader of `HH:MM`) are refused rather than guessed.
///
/// ```
/// use tessera_jobqueue::Walltime;
/// assert_eq!("01:30:00".parse::<Walltime>()?.seconds(), 5400);
/// assert_eq!("2-00:00:00".parse::<Walltime>()?.seconds(), 172_800);
/// assert_eq!("2-12".parse::<Walltime>()?.seconds(), 216_000);
/// assert_eq!("90m".parse::<Walltime>()?.seconds(), 5400);
/// assert!("90".parse::<Walltime>().is_err()); // minutes? seconds? refused
/// # Ok::<(), tessera_jobqueue::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Walltime(u64);

impl Walltime {
    pub fn from_seconds(s: u64) -> Self {
        Walltime(s)
    }

    pub fn seconds(self) -> u64 {
        self.0
    }

    /// `HH:MM:SS` with as many hour digits as needed (PBS, SGE, Slurm).
    pub fn hms(self) -> String {
        format!("{:02}:{:02}:{:02}", self.0 / 3600, self.0 / 60 % 60, self.0 % 60)
    }

    /// `D-HH:MM:SS` from one day on, else `HH:MM:SS` (Slurm's own form).
    pub fn slurm(self) -> String {
        if self.0 >= 86_400 {
            let rest = self.0 % 86_400;
            format!("{}-{:02}:{:02}:{:02}", self.0 / 86_400, rest / 3600, rest / 60 % 60, rest % 60)
        } else {
            self.hms()
        }
    }
}

impl FromStr for Walltime {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "walltime",
                s,
                "expected HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (for example 00:30:00, 2-12 or 1-12:00:00, minutes and \
                 seconds below 60, hours below 24 after a day), or a number with a unit: 90m, 1h, 2d, 1h30m",
            )
        };
        let t = s.trim();
        let total = if t.ends_with(|c: char| c.is_ascii_alphabetic()) {
            with_units(t).ok_or_else(bad)?
        } else {
            clock(t).ok_or_else(bad)?
        };
        if total == 0 {
            return Err(Error::invalid("walltime", s, "must be more than zero"));
        }
        Ok(Walltime(total))
    }
}

/// Seconds of `HH:MM:SS`, `D-HH`, `D-HH:MM` or `D-HH:MM:SS`.
fn clock(t: &str) -> Option<u64> {
    let num = |p: &str, max_len: usize| -> Option<u64> {
        if p.is_empty() || p.len() > max_len || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let (days, hms) = match t.split_once('-') {
        Some((d, rest)) => (Some(num(d, 4)?), rest),
        None => (None, t),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    let (h, m, sec) = match (days, &parts[..]) {
        (_, [h, m, sec]) => (num(h, 6)?, num(m, 2)?, num(sec, 2)?),
        (Some(_), [h, m]) => (num(h, 2)?, num(m, 2)?, 0),
        (Some(_), [h]) => (num(h, 2)?, 0, 0),
        _ => return None,
    };
    if m >= 60 || sec >= 60 || (days.is_some() && h >= 24) {
        return None;
    }
    Some(days.unwrap_or(0) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Seconds of numbers with units, largest unit first: `90m`, `1h30m`, `2d`.
fn with_units(t: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut rest = t;
    let mut last_unit = u64::MAX;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 || digits > 9 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        let unit_len = rest[digits..].find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len() - digits);
        let unit = match &rest[digits..digits + unit_len] {
            "d" => 86_400,
            "h" => 3600,
            "m" | "min" => 60,
            "s" => 1,
            _ => return None,
        };
        if unit >= last_unit {
            return None; // `1m1h`, `1h1h`
        }
        last_unit = unit;
        total = total.checked_add(n.checked_mul(unit)?)?;
        rest = &rest[digits + unit_len..];
    }
    Some(total)
}

impl fmt::Display for Walltime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.slurm())
    }
}

impl Serialize for Walltime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A job array: indices `start..=end` every `step`, at most `max_running` at once.
/// Written `1-10`, `1-10:2`, `1-10%4` or `1-10:2%4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobArray {
    pub start: u32,
    pub end: u32,
    pub step: u32,
    pub max_running: Option<u32>,
}

impl JobArray {
    /// The range without the concurrency limit: `1-10` or `1-10:2`.
    pub fn range(&self) -> String {
        if self.step == 1 {
            format!("{}-{}", self.start, self.end)
        } else {
            format!("{}-{}:{}", self.start, self.end, self.step)
        }
    }
}

impl FromStr for JobArray {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("array", s, why.to_string());
        let form = "expected START-END[:STEP][%MAX_RUNNING], for example 1-10, 0-99:2 or 1-100%5";
        let n = |p: &str| -> Result<u32> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(form));
            }
            p.parse().map_err(|_| bad(form))
        };
        let (range, max) = match s.trim().split_once('%') {
            Some((r, m)) => (r, Some(n(m)?)),
            None => (s.trim(), None),
        };
        let (range, step) = match range.split_once(':') {
            Some((r, st)) => (r, n(st)?),
            None => (range, 1),
        };
        let (a, b) = range.split_once('-').ok_or_else(|| bad(form))?;
        let (start, end) = (n(a)?, n(b)?);
        if end < start {
            return Err(bad("the end is below the start"));
        }
        if step == 0 || max == Some(0) {
            return Err(bad("step and the running limit must be at least 1"));
        }
        Ok(JobArray { start, end, step, max_running: max })
    }
}

impl fmt::Display for JobArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.range())?;
        if let Some(m) = self.max_running {
            write!(f, "%{m}")?;
        }
        Ok(())
    }
}

impl Serialize for JobArray {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units_are_never_confused() {
        let b = |s: &str| s.parse::<Memory>().map(Memory::bytes);
        assert_eq!(b("4GiB").unwrap(), 4 * 1024 * 1024 * 1024);
        assert_eq!(b("4GB").unwrap(), 4_000_000_000);
        assert_eq!(b("4 gib").unwrap(), 4 << 30);
        assert_eq!(b("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(b("0.1KB").unwrap(), 100);
        assert_eq!(b("512MiB").unwrap(), 512 << 20);
        // 4 GB is less than 4 GiB: in MiB, rounded up.
        assert_eq!("4GB".parse::<Memory>().unwrap().mib_ceil(), 3815);
        assert_eq!("4GiB".parse::<Memory>().unwrap().mib_ceil(), 4096);
        assert_eq!(Memory::from_bytes(1).mib_ceil(), 1);
    }

    #[test]
    fn memory_refuses_ambiguous_or_malformed_input_naming_the_field() {
        for (s, says) in [
            ("4G", "ambiguous"),
            ("4g", "ambiguous"),
            ("4", "unit is required"),
            ("GiB", "number"),
            ("4 gigs", "unknown unit"),
            ("4..0GB", "malformed"),
            ("4.GB", "malformed"),
            ("0GB", "more than zero"),
            ("-4GB", "number"),
            ("99999999999TiB", "too large"),
        ] {
            let e = s.parse::<Memory>().unwrap_err().to_string();
            assert!(e.starts_with("memory:") && e.contains(says), "{s}: {e}");
        }
    }

    #[test]
    fn memory_displays_in_the_unit_it_divides() {
        assert_eq!("4096MiB".parse::<Memory>().unwrap().to_string(), "4GiB");
        assert_eq!("4000MB".parse::<Memory>().unwrap().to_string(), "4GB");
        assert_eq!(Memory::from_bytes(1023).to_string(), "1023B");
    }

    #[test]
    fn walltime_is_parsed_strictly() {
        let s = |t: &str| t.parse::<Walltime>().map(Walltime::seconds);
        assert_eq!(s("00:10:00").unwrap(), 600);
        assert_eq!(s("48:00:00").unwrap(), 172_800);
        assert_eq!(s("1-02:03:04").unwrap(), 93_784);
        for bad in ["10", "10:00", "00:60:00", "00:00:61", "1-24:00:00", "a:b:c", "00:00:00", "1:2:3:4", "", "-1:00:00"]
        {
            let e = bad.parse::<Walltime>().unwrap_err().to_string();
            assert!(e.starts_with("walltime:"), "{bad}: {e}");
        }
        // Slurm's day forms and numbers with units.
        assert_eq!(s("2-12:00:00").unwrap(), 216_000);
        assert_eq!(s("2-12").unwrap(), 216_000);
        assert_eq!(s("1-02:30").unwrap(), 95_400);
        assert_eq!(s("0-1").unwrap(), 3600);
        assert_eq!(s("1h").unwrap(), 3600);
        assert_eq!(s("90m").unwrap(), 5400);
        assert_eq!(s("90min").unwrap(), 5400);
        assert_eq!(s("2d").unwrap(), 172_800);
        assert_eq!(s("45s").unwrap(), 45);
        assert_eq!(s("1h30m").unwrap(), 5400);
        assert_eq!(s(" 1d12h ").unwrap(), 129_600);
        for bad in [
            "1x",
            "h",
            "1.5h",
            "1m1h",
            "1h1h",
            "-1h",
            "0h",
            "0-0",
            "2-24",
            "2-1:60",
            "2-",
            "-2",
            "1-2-3",
            "2-123",
            "1h 30m",
            "99999999999d",
        ] {
            let e = bad.parse::<Walltime>().unwrap_err().to_string();
            assert!(e.starts_with("walltime:") && e.contains(&format!("`{}`", bad)), "{bad}: {e}");
        }
        // The message names the forms it takes.
        let e = "1x".parse::<Walltime>().unwrap_err().to_string();
        assert!(e.contains("D-HH:MM") && e.contains("90m"), "{e}");
        assert_eq!(Walltime::from_seconds(93_784).slurm(), "1-02:03:04");
        assert_eq!(Walltime::from_seconds(93_784).hms(), "26:03:04");
    }

    #[test]
    fn arrays() {
        let a: JobArray = "1-10:2%3".parse().unwrap();
        assert_eq!(a, JobArray { start: 1, end: 10, step: 2, max_running: Some(3) });
        assert_eq!(a.to_string(), "1-10:2%3");
        assert_eq!("0-4".parse::<JobArray>().unwrap().range(), "0-4");
        for bad in ["5", "5-1", "1-10:0", "1-10%0", "a-b", "1-2-3", "1 - 3"] {
            assert!(bad.parse::<JobArray>().unwrap_err().to_string().starts_with("array:"), "{bad}");
        }
    }

    #[test]
    fn values_that_would_inject_a_directive_are_refused_naming_the_field() {
        let ok = JobSpec::default();
        ok.validate().unwrap();
        let cases: Vec<(JobSpec, &str)> = vec![
            (JobSpec { job_name: "x\n#SBATCH --uid=0".into(), ..ok.clone() }, "job_name"),
            (JobSpec { job_name: "a'b".into(), ..ok.clone() }, "job_name"),
            (JobSpec { queue: Some("debug\"; rm -rf ~".into()), ..ok.clone() }, "queue"),
            (JobSpec { account: Some("p 1".into()), ..ok.clone() }, "account"),
            (JobSpec { log_dir: "/tmp/$(id)".into(), ..ok.clone() }, "log_dir"),
            (JobSpec { workdir: "/tmp/a b".into(), ..ok.clone() }, "workdir"),
            (JobSpec { directives: vec!["--comment=x\n--uid=0".into()], ..ok.clone() }, "directives"),
            (JobSpec { prologue: vec!["module load a\rb".into()], ..ok.clone() }, "prologue"),
            (JobSpec { env: [("A B".into(), "1".into())].into(), ..ok.clone() }, "env"),
            (JobSpec { env: [("A".into(), "1\nexport B=2".into())].into(), ..ok.clone() }, "env.A"),
            (JobSpec { nodes: 0, ..ok.clone() }, "nodes"),
            (JobSpec { parallel_env: "mpi -l x".into(), ..ok.clone() }, "parallel_env"),
            (JobSpec { skip: vec![String::new()], ..ok.clone() }, "skip"),
        ];
        for (spec, field) in cases {
            let e = spec.validate().unwrap_err().to_string();
            assert!(e.starts_with(&format!("{field}:")), "{field}: {e}");
        }
        let e = JobSpec { job_name: "x\n#SBATCH".into(), ..ok }.validate().unwrap_err().to_string();
        assert!(e.contains("line break") && e.contains("x\\n#SBATCH"), "{e}");
    }
}

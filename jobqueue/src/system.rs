//! The batch systems this crate knows, and finding out which one is here.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A batch system (and, for PBS, its dialect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// Slurm: `#SBATCH`, `sbatch`/`squeue`/`scontrol`/`sacct`/`scancel`.
    Slurm,
    /// PBS Pro / OpenPBS: `#PBS -l select=...`, `qstat -x -f -F json`.
    Pbs,
    /// Torque (and other PBS with `nodes=N:ppn=M`): `qstat -f`.
    Torque,
    /// (Son of) Grid Engine: `#$`, parallel environments, `qacct`.
    Sge,
}

impl System {
    pub const ALL: [System; 4] = [System::Slurm, System::Pbs, System::Torque, System::Sge];

    pub fn name(self) -> &'static str {
        match self {
            System::Slurm => "slurm",
            System::Pbs => "pbs",
            System::Torque => "torque",
            System::Sge => "sge",
        }
    }

    /// The directive prefix in job scripts.
    pub fn prefix(self) -> &'static str {
        match self {
            System::Slurm => "#SBATCH",
            System::Pbs | System::Torque => "#PBS",
            System::Sge => "#$",
        }
    }

    /// The submit command.
    pub fn submit_program(self) -> &'static str {
        match self {
            System::Slurm => "sbatch",
            _ => "qsub",
        }
    }

    /// Which system is installed here, judged by the commands on `PATH`:
    /// `sbatch` means Slurm; `qsub` with `qconf` (or `SGE_ROOT` set) means
    /// SGE; another `qsub` is PBS Pro when `qstat --version` says
    /// `pbs_version`, else Torque.
    pub fn detect() -> Result<System> {
        if find_program("sbatch").is_some() {
            return Ok(System::Slurm);
        }
        if find_program("qsub").is_none() {
            return Err(Error::NoSystemFound);
        }
        if find_program("qconf").is_some() || std::env::var_os("SGE_ROOT").is_some() {
            return Ok(System::Sge);
        }
        let version = std::process::Command::new("qstat")
            .arg("--version")
            .output()
            .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
            .unwrap_or_default();
        Ok(if version.contains("pbs_version") { System::Pbs } else { System::Torque })
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for System {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "slurm" => Ok(System::Slurm),
            "pbs" | "pbspro" | "openpbs" => Ok(System::Pbs),
            "torque" => Ok(System::Torque),
            "sge" | "gridengine" | "grid-engine" => Ok(System::Sge),
            _ => Err(Error::UnknownSystem { name: s.to_string() }),
        }
    }
}

/// The first executable `name` in the directories of `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_say_what_exists() {
        for s in System::ALL {
            assert_eq!(s.name().parse::<System>().unwrap(), s);
        }
        assert_eq!("OpenPBS".parse::<System>().unwrap(), System::Pbs);
        let e = "lsf".parse::<System>().unwrap_err().to_string();
        assert!(e.contains("`lsf`") && e.contains("slurm, pbs, torque or sge"), "{e}");
    }
}

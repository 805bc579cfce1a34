//! What the launcher of this process announced in its environment, read in
//! one place: whether an MPI launcher (`mpirun`, `mpiexec`, `srun --mpi=...`)
//! started it and with how many ranks, its rank and local rank (Open MPI,
//! MPICH/Hydra, Intel MPI, MVAPICH, PMI, PALS, Slurm), and the batch job it
//! runs in (Slurm, PBS, SGE). Everything here only reads environment
//! variables, in every build; a value that is absent or contradicts another
//! reads as `None` (or empty), never as an error.
//!
//! ```
//! // Outside any launcher or batch job, there is nothing to read.
//! if std::env::var_os("SLURM_STEP_ID").is_none() && tessera_runtime::host::launcher::mpi_launch_size().is_none() {
//!     assert_eq!(tessera_runtime::host::launcher::local_rank(), None);
//! }
//! ```

use std::collections::BTreeMap;

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

/// This process's rank as the launcher announced it, if launched by one
/// (`SLURM_PROCID` too, for `srun` without an MPI plugin, but only in a job
/// step: a batch script has it as well, always 0).
pub fn rank() -> Option<u32> {
    let slurm_step = std::env::var_os("SLURM_STEP_ID").is_some();
    let vars = MPI_RANK_VARS.iter().chain(slurm_step.then_some(&"SLURM_PROCID"));
    vars.into_iter().find_map(|&v| std::env::var(v).ok()?.parse().ok())
}

/// One-line description of how the launcher announced itself (for messages).
pub fn describe_mpi_launch() -> String {
    mpi_launch_vars().into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// Environment variables by which launchers announce a local rank and the
/// number of ranks on the host, in the order they are tried.
const LOCAL_RANK_VARS: [(&str, &str); 5] = [
    ("OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"), // Open MPI
    ("MPI_LOCALRANKID", "MPI_LOCALNRANKS"),                       // MPICH's Hydra, Intel MPI
    ("MV2_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_SIZE"),   // MVAPICH
    ("PMI_LOCAL_RANK", "PMI_LOCAL_SIZE"),                         // Cray PMI, Flux
    ("PALS_LOCAL_RANKID", "PALS_LOCAL_SIZE"),                     // HPE Cray PALS
];

/// This process's MPI local rank and the number of ranks on its host, from
/// the launcher's environment: Open MPI, MPICH/Hydra and Intel MPI, MVAPICH,
/// PMI, PALS, then Slurm's `srun` (`SLURM_LOCALID` with the step's tasks on
/// this node). `None` when no launcher started it (a Slurm batch script
/// itself is no step task) or the variables contradict each other.
pub fn local_rank() -> Option<(usize, usize)> {
    local_rank_from(|v| std::env::var(v).ok())
}

fn local_rank_from(var: impl Fn(&str) -> Option<String>) -> Option<(usize, usize)> {
    let num = |v: &str| var(v)?.trim().parse::<usize>().ok();
    let found = LOCAL_RANK_VARS.iter().find_map(|&(rank, size)| Some((num(rank)?, num(size)?))).or_else(|| {
        // Only srun's tasks have a step id; a batch script has SLURM_LOCALID too.
        var("SLURM_STEP_ID")?;
        let node = num("SLURM_STEP_NODEID").or_else(|| num("SLURM_NODEID")).unwrap_or(0);
        let size = ["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"]
            .iter()
            .find_map(|v| tasks_on_node(&var(v)?, node))
            .or_else(|| num("SLURM_NTASKS_PER_NODE"))?;
        Some((num("SLURM_LOCALID")?, size))
    });
    found.filter(|&(rank, size)| rank < size)
}

/// Entry `node` of Slurm's tasks-per-node list: `2(x3),1` is 2, 2, 2, 1.
fn tasks_on_node(list: &str, node: usize) -> Option<usize> {
    let mut seen = 0;
    for part in list.split(',') {
        let (tasks, repeat) = match part.split_once("(x") {
            Some((t, r)) => (t, r.strip_suffix(')')?.parse::<usize>().ok()?),
            None => (part, 1),
        };
        seen += repeat;
        if node < seen {
            return tasks.trim().parse().ok();
        }
    }
    None
}

/// The batch job this process runs in, from the variables Slurm, PBS and
/// SGE set (empty outside a job).
pub fn batch_job_id() -> String {
    ["SLURM_JOB_ID", "PBS_JOBID", "JOB_ID"].iter().find_map(|v| std::env::var(v).ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_rank_reads_each_launcher() {
        let from = |vars: &[(&str, &str)]| {
            let vars: std::collections::HashMap<String, String> =
                vars.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect();
            local_rank_from(|k| vars.get(k).cloned())
        };
        assert_eq!(from(&[]), None);
        assert_eq!(from(&[("OMPI_COMM_WORLD_LOCAL_RANK", "1"), ("OMPI_COMM_WORLD_LOCAL_SIZE", "4")]), Some((1, 4)));
        assert_eq!(from(&[("MPI_LOCALRANKID", "0"), ("MPI_LOCALNRANKS", "2")]), Some((0, 2)));
        assert_eq!(from(&[("PALS_LOCAL_RANKID", "3"), ("PALS_LOCAL_SIZE", "4")]), Some((3, 4)));
        assert_eq!(from(&[("PMI_LOCAL_RANK", "5"), ("PMI_LOCAL_SIZE", "4")]), None, "rank beyond size");
        let srun = [("SLURM_STEP_ID", "0"), ("SLURM_LOCALID", "1"), ("SLURM_NODEID", "3")];
        assert_eq!(from(&[&srun[..], &[("SLURM_STEP_TASKS_PER_NODE", "4(x3),2")]].concat()), Some((1, 2)));
        assert_eq!(from(&[&srun[..], &[("SLURM_TASKS_PER_NODE", "2(x2),3(x2)")]].concat()), Some((1, 3)));
        assert_eq!(from(&[&srun[..], &[("SLURM_NTASKS_PER_NODE", "8")]].concat()), Some((1, 8)));
        // A batch script: SLURM_LOCALID but no step.
        assert_eq!(from(&[("SLURM_LOCALID", "0"), ("SLURM_TASKS_PER_NODE", "4")]), None);
        assert_eq!(tasks_on_node("2(x3),1", 2), Some(2));
        assert_eq!(tasks_on_node("2(x3),1", 3), Some(1));
        assert_eq!(tasks_on_node("2(x3),1", 4), None);
    }
}

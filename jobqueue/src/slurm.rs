//! Slurm: `sbatch --parsable`, `scontrol show job -o`, `sacct`, `squeue`, `scancel`.
//!
//! Finished jobs stay in `scontrol` for `MinJobAge` (300 s by default), then
//! only accounting (`sacct`) knows them; an id neither knows does not exist.
//! `scancel` exits 0 for ids that never existed, so `cancel` looks first.

use std::collections::BTreeMap;
use std::path::Path;

use crate::batch::{signal_exit, JobState, JobStatus, Runner, Submitted};
use crate::{BatchSystem, Error, Result, System};

pub(crate) struct Slurm {
    pub run: Runner,
}

// ---- pure parsers -------------------------------------------------------------

/// The job id from `sbatch --parsable` (`42`, or `42;cluster` on a federation).
pub fn parse_sbatch_parsable(stdout: &str) -> Option<String> {
    let first = stdout.lines().map(str::trim).find(|l| !l.is_empty())?;
    let id = first.split(';').next()?.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_string())
}

/// `scontrol show job -o` output: one `Key=Value ...` map per line. Values
/// may be empty, and a value with spaces continues until the next `Key=`.
pub fn parse_scontrol(stdout: &str) -> Vec<BTreeMap<String, String>> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut map = BTreeMap::new();
            let mut last: Option<String> = None;
            for tok in line.split(' ').filter(|t| !t.is_empty()) {
                match tok.split_once('=') {
                    Some((k, v)) if is_key(k) => {
                        map.insert(k.to_string(), v.to_string());
                        last = Some(k.to_string());
                    }
                    _ => {
                        if let Some(v) = last.as_ref().and_then(|k| map.get_mut(k)) {
                            v.push(' ');
                            v.push_str(tok);
                        }
                    }
                }
            }
            map
        })
        .collect()
}

fn is_key(k: &str) -> bool {
    k.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || ":/_".contains(c))
}

/// `sacct -X -n -P -o JobID,State,ExitCode` lines: `(id, state, exit)`.
pub fn parse_sacct(stdout: &str) -> Vec<(String, String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.trim().split('|');
            Some((f.next()?.to_string(), f.next()?.to_string(), f.next().unwrap_or("").to_string()))
        })
        .filter(|(id, _, _)| !id.is_empty())
        .collect()
}

/// A Slurm state (`COMPLETED`, `CANCELLED by 0`, `CANCELLED+`) and `ExitCode`
/// (`exit:signal`) in normalised form.
pub fn slurm_state(state: &str, exit_code: &str) -> (JobState, Option<i32>) {
    let word = state.split_whitespace().next().unwrap_or("").trim_end_matches('+');
    let (code, signal) = exit_code
        .split_once(':')
        .map(|(a, b)| (a.parse::<i32>().unwrap_or(0), b.parse::<i32>().unwrap_or(0)))
        .unwrap_or((0, 0));
    let exit = if signal != 0 { signal_exit(signal) } else { code };
    match word {
        "COMPLETED" => (JobState::Completed, Some(0)),
        "FAILED" | "NODE_FAIL" | "BOOT_FAIL" | "OUT_OF_MEMORY" | "SPECIAL_EXIT" => (JobState::Failed, Some(exit)),
        "CANCELLED" | "PREEMPTED" | "REVOKED" => (JobState::Cancelled, None),
        "TIMEOUT" | "DEADLINE" => (JobState::Timeout, None),
        "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD" | "CONFIGURING" => {
            (JobState::Pending, None)
        }
        "RUNNING" | "COMPLETING" | "SUSPENDED" | "STOPPED" | "SIGNALING" | "STAGE_OUT" | "RESIZING" => {
            (JobState::Running, None)
        }
        _ => (JobState::Unknown, None),
    }
}

/// The status of `job_id` from `scontrol show job -o` lines: one job, or an
/// array (one line per element, the master's own id among them).
pub fn status_from_scontrol(job_id: &str, jobs: &[BTreeMap<String, String>]) -> Option<JobStatus> {
    let one = |j: &BTreeMap<String, String>, id: String| {
        let get = |k: &str| j.get(k).map(String::as_str).unwrap_or("");
        let (state, exit_code) = slurm_state(get("JobState"), get("ExitCode"));
        let reason = get("Reason");
        JobStatus {
            job_id: id,
            system: System::Slurm,
            state,
            exit_code,
            detail: if reason.is_empty() || reason == "None" {
                get("JobState").to_string()
            } else {
                format!("{} ({reason})", get("JobState"))
            },
            name: j.get("JobName").cloned(),
            source: "scontrol",
            elements: Vec::new(),
        }
    };
    let array: Vec<JobStatus> = jobs
        .iter()
        .filter(|j| j.get("ArrayJobId").map(String::as_str) == Some(job_id) && j.contains_key("ArrayTaskId"))
        .map(|j| one(j, format!("{job_id}_{}", j["ArrayTaskId"])))
        .collect();
    if !array.is_empty() && !job_id.contains('_') {
        let mut elements = array;
        elements.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        return Some(JobStatus::aggregate(job_id, System::Slurm, "scontrol", elements));
    }
    let j = jobs.first()?;
    Some(one(j, job_id.to_string()))
}

/// The status of `job_id` from `sacct` lines (the most recent record of each id).
pub fn status_from_sacct(job_id: &str, rows: &[(String, String, String)]) -> Option<JobStatus> {
    let mut latest: BTreeMap<&str, &(String, String, String)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.0 == job_id || r.0.starts_with(&format!("{job_id}_"))) {
        latest.insert(&r.0, r);
    }
    let to_status = |r: &(String, String, String)| {
        let (state, exit_code) = slurm_state(&r.1, &r.2);
        JobStatus {
            job_id: r.0.clone(),
            system: System::Slurm,
            state,
            exit_code,
            detail: r.1.clone(),
            name: None,
            source: "sacct",
            elements: Vec::new(),
        }
    };
    match latest.len() {
        0 => None,
        1 if latest.contains_key(job_id) => latest.get(job_id).map(|r| to_status(r)),
        _ => {
            Some(JobStatus::aggregate(job_id, System::Slurm, "sacct", latest.values().map(|r| to_status(r)).collect()))
        }
    }
}

fn check_id(job_id: &str) -> Result<()> {
    let ok = !job_id.is_empty() && job_id.chars().all(|c| c.is_ascii_digit() || c == '_');
    if !ok {
        return Err(Error::UnknownJob {
            system: System::Slurm,
            job_id: job_id.to_string(),
            detail: ": Slurm job ids are numbers (an array element: 12_3)".into(),
        });
    }
    Ok(())
}

// ---- the adapter ----------------------------------------------------------------

impl BatchSystem for Slurm {
    fn system(&self) -> System {
        System::Slurm
    }

    fn submit(&self, script: &Path) -> Result<Submitted> {
        self.run.submit("sbatch", &["--parsable", &script.to_string_lossy()], parse_sbatch_parsable)
    }

    fn status(&self, job_id: &str) -> Result<JobStatus> {
        check_id(job_id)?;
        let args = ["show", "job", "-o", job_id];
        let o = self.run.run("scontrol", &args)?;
        if o.status == 0 {
            if let Some(s) = status_from_scontrol(job_id, &parse_scontrol(&o.stdout)) {
                return Ok(s);
            }
        } else if !o.stderr.contains("Invalid job id") {
            return Err(self.run.failed("scontrol", &args, &o));
        }
        // Not (or no longer) in slurmctld's memory: ask accounting.
        let args = ["-j", job_id, "-X", "-n", "-P", "-o", "JobID,State,ExitCode"];
        let o = self.run.run("sacct", &args)?;
        if o.status != 0 {
            return Ok(JobStatus {
                job_id: job_id.to_string(),
                system: System::Slurm,
                state: JobState::Unknown,
                exit_code: None,
                detail: format!(
                    "slurmctld no longer (or never) had this job, and sacct failed: {}",
                    crate::batch::first_words(&o)
                ),
                name: None,
                source: "sacct",
                elements: Vec::new(),
            });
        }
        status_from_sacct(job_id, &parse_sacct(&o.stdout)).ok_or_else(|| Error::UnknownJob {
            system: System::Slurm,
            job_id: job_id.to_string(),
            detail: " (neither slurmctld nor accounting has it)".into(),
        })
    }

    fn delete(&self, job_id: &str) -> Result<bool> {
        let o = self.run.run("scancel", &[job_id])?;
        if o.status != 0 {
            return Err(self.run.failed("scancel", &[job_id], &o));
        }
        Ok(true)
    }

    fn list(&self, prefix: &str) -> Result<Vec<JobStatus>> {
        let user = crate::batch::current_user();
        let args = ["-h", "-t", "all", "-u", user.as_str(), "-o", "%i|%T|%r|%j"];
        let o = self.run.run("squeue", &args)?;
        if o.status != 0 {
            return Err(self.run.failed("squeue", &args, &o));
        }
        Ok(o.stdout
            .lines()
            .filter_map(|l| {
                let mut f = l.trim().splitn(4, '|');
                let (id, state, reason, name) = (f.next()?, f.next()?, f.next()?, f.next()?);
                let (st, _) = slurm_state(state, "");
                name.starts_with(prefix).then(|| JobStatus {
                    job_id: id.to_string(),
                    system: System::Slurm,
                    state: st,
                    exit_code: None,
                    detail: if reason == "None" { state.to_string() } else { format!("{state} ({reason})") },
                    name: Some(name.to_string()),
                    source: "squeue",
                    elements: Vec::new(),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::replay::{capture, Always, Replay};
    use crate::batch::{connect_with, JobState::*};

    fn scontrol(file: &str) -> Option<JobStatus> {
        let (cmd, o) = capture(&format!("slurm/{file}"));
        let id = cmd.rsplit(' ').next().unwrap();
        status_from_scontrol(id, &parse_scontrol(&o.stdout))
    }

    fn sacct(file: &str) -> Option<JobStatus> {
        let (cmd, o) = capture(&format!("slurm/{file}"));
        let id = cmd.split(' ').nth(2).unwrap();
        status_from_sacct(id, &parse_sacct(&o.stdout))
    }

    #[test]
    fn sbatch_parsable_ids() {
        assert_eq!(parse_sbatch_parsable(&capture("slurm/submit-parsable.txt").1.stdout).as_deref(), Some("5"));
        assert_eq!(parse_sbatch_parsable(&capture("slurm/array-submit-parsable.txt").1.stdout).as_deref(), Some("17"));
        assert_eq!(parse_sbatch_parsable("42;cluster\n").as_deref(), Some("42"));
        // the default (non-parsable) form is not an id
        assert_eq!(parse_sbatch_parsable(&capture("slurm/submit-default.txt").1.stdout), None);
    }

    #[test]
    fn scontrol_states_of_every_captured_job() {
        let s = |f| scontrol(f).unwrap();
        assert_eq!(
            (s("status-running-scontrol.txt").state, s("status-running-scontrol.txt").exit_code),
            (Running, None)
        );
        assert_eq!(s("status-pending-resources-scontrol.txt").state, Pending);
        assert_eq!(s("status-pending-resources-scontrol.txt").detail, "PENDING (Resources)");
        assert_eq!(s("status-pending-held-scontrol.txt").detail, "PENDING (JobHeldUser)");
        assert_eq!(s("status-pending-partitionconfig-scontrol.txt").state, Pending);
        let c = s("status-completed-scontrol.txt");
        assert_eq!((c.state, c.exit_code, c.name.as_deref()), (Completed, Some(0), Some("ok")));
        let f = s("status-failed-scontrol.txt");
        assert_eq!((f.state, f.exit_code, f.wait_exit_code()), (Failed, Some(3), 3));
        assert_eq!(s("status-cancelled-running-scontrol.txt").state, Cancelled);
        assert_eq!(s("status-cancelled-pending-scontrol.txt").state, Cancelled);
        let t = s("status-timeout-scontrol.txt");
        assert_eq!((t.state, t.wait_exit_code()), (Timeout, 124));
        assert_eq!(s("status-running-multinode-scontrol.txt").state, Running);
    }

    #[test]
    fn scontrol_lines_keep_empty_and_odd_values() {
        let (_, o) = capture("slurm/status-failed-scontrol.txt");
        let j = &parse_scontrol(&o.stdout)[0];
        assert_eq!(j["AllocNode:Sid"], "localhost:23722");
        assert_eq!(j["CPUs/Task"], "1");
        assert_eq!(j["Power"], "");
        assert_eq!(j["StdOut"], "/home/u1/slurm/fail-10.out");
        let j = &parse_scontrol("JobId=1 Comment=two words here JobState=RUNNING Reason=None\n")[0];
        assert_eq!((j["Comment"].as_str(), j["JobState"].as_str()), ("two words here", "RUNNING"));
    }

    #[test]
    fn arrays_aggregate_their_elements() {
        let a = scontrol("array-status-scontrol.txt").unwrap();
        assert_eq!(a.state, Running);
        assert_eq!(a.elements.len(), 3);
        assert_eq!(a.elements.iter().map(|e| e.job_id.as_str()).collect::<Vec<_>>(), ["16_1", "16_2", "16_3"]);
        assert_eq!(a.detail, "array: 1 pending, 2 running");
        let done = scontrol("array-done-scontrol.txt").unwrap();
        assert_eq!((done.state, done.elements.len()), (Completed, 3));
        let acct = sacct("array-status-sacct.txt").unwrap();
        assert_eq!(acct.state, Running, "{acct:?}");
    }

    #[test]
    fn sacct_states_including_cancelled_by_uid() {
        let s = |f| sacct(f).unwrap();
        assert_eq!(s("status-completed-sacct.txt").state, Completed);
        let f = s("status-failed-sacct.txt");
        assert_eq!((f.state, f.exit_code), (Failed, Some(3)));
        let c = s("status-cancelled-running-sacct.txt");
        assert_eq!((c.state, c.detail.as_str()), (Cancelled, "CANCELLED by 0"));
        assert_eq!(s("status-cancelled-pending-sacct.txt").state, Cancelled);
        assert_eq!(s("status-timeout-sacct.txt").state, Timeout);
        assert_eq!(s("status-sbatch-wait-timeout-sacct.txt").state, Timeout);
        assert_eq!(s("status-pending-held-sacct.txt").state, Pending);
        assert_eq!(s("status-running-sacct.txt").state, Running);
        assert_eq!(sacct("status-unknown-sacct.txt"), None);
    }

    #[test]
    fn signals_become_128_plus_signal() {
        assert_eq!(slurm_state("FAILED", "0:9"), (Failed, Some(137)));
        assert_eq!(slurm_state("OUT_OF_MEMORY", "0:125"), (Failed, Some(253)));
        assert_eq!(slurm_state("WHATEVER", "0:0").0, Unknown);
    }

    #[test]
    fn a_job_gone_from_slurmctld_is_looked_up_in_sacct() {
        let slurm = connect_with(
            System::Slurm,
            Replay::new(&["slurm/status-unknown-scontrol.txt", "slurm/status-unknown-sacct.txt"]),
        );
        let e = slurm.status("999999").unwrap_err().to_string();
        assert!(e.contains("knows no job `999999`") && e.contains("accounting"), "{e}");
    }

    #[test]
    fn cancel_of_an_unknown_id_is_an_error_although_scancel_would_exit_0() {
        let slurm = connect_with(
            System::Slurm,
            Replay::new(&["slurm/status-unknown-scontrol.txt", "slurm/status-unknown-sacct.txt"]),
        );
        assert!(matches!(slurm.cancel("999999"), Err(Error::UnknownJob { .. })));
        let e = slurm.status("abc").unwrap_err().to_string();
        assert!(e.contains("`abc`") && e.contains("numbers"), "{e}");
    }

    #[test]
    fn cancel_of_a_finished_job_cancels_nothing() {
        let slurm = connect_with(System::Slurm, Replay::new(&["slurm/status-completed-scontrol.txt"]));
        let c = slurm.cancel("9").unwrap();
        assert_eq!((c.was, c.cancelled), (Completed, false));
    }

    #[test]
    fn a_rejected_submission_shows_slurms_message() {
        let (_, o) = capture("slurm/err-bad-partition-parsable.txt");
        let slurm = connect_with(System::Slurm, Box::new(Always(o)));
        let e = slurm.submit(Path::new("job.sh")).unwrap_err().to_string();
        assert!(e.contains("slurm rejected the job") && e.contains("invalid partition specified: nosuchpart"), "{e}");
        assert!(e.contains("exited with 1"), "{e}");
    }
}

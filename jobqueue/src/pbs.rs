//! PBS Pro / OpenPBS (`qstat -x -f -F json`) and Torque (`qstat -f`): `qsub`,
//! `qstat`, `qdel`.
//!
//! PBS Pro keeps finished jobs in `qstat -x` while job history is enabled;
//! Torque keeps them (state `C`) for `keep_completed` seconds, after which
//! neither can tell a finished job from one that never existed.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::batch::{signal_exit, JobState, JobStatus, Runner, Submitted};
use crate::{BatchSystem, Error, Result, System};

pub(crate) struct Pbs {
    pub run: Runner,
}

// ---- pure parsers -------------------------------------------------------------

/// The job id `qsub` prints (`3.pbshost`, `12[].pbshost`).
pub fn parse_qsub(stdout: &str) -> Option<String> {
    let id = stdout.lines().map(str::trim).find(|l| !l.is_empty())?;
    (id.chars().next().is_some_and(|c| c.is_ascii_digit()) && !id.contains(' ')).then(|| id.to_string())
}

/// `qstat -f -F json` output: the `Jobs` object (absent when no job matched).
pub fn parse_qstat_json(stdout: &str) -> std::result::Result<Vec<(String, Value)>, String> {
    let v: Value = serde_json::from_str(stdout).map_err(|e| e.to_string())?;
    Ok(v.get("Jobs")
        .and_then(Value::as_object)
        .map(|jobs| jobs.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default())
}

/// `qstat -f` text (Torque, or PBS Pro without `-F json`): `Job Id: ID` then
/// `    key = value` lines. Long values wrap onto lines starting with a TAB,
/// possibly mid-word, so continuations are joined with nothing in between.
pub fn parse_qstat_f(stdout: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut jobs: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let mut last: Option<String> = None;
    for line in stdout.lines() {
        if let Some(id) = line.strip_prefix("Job Id:") {
            jobs.push((id.trim().to_string(), BTreeMap::new()));
            last = None;
        } else if let Some(cont) = line.strip_prefix('\t') {
            if let (Some((_, map)), Some(k)) = (jobs.last_mut(), &last) {
                if let Some(v) = map.get_mut(k) {
                    v.push_str(cont);
                }
            }
        } else if let Some((k, v)) = line.trim().split_once(" = ") {
            if let Some((_, map)) = jobs.last_mut() {
                map.insert(k.trim().to_string(), v.to_string());
                last = Some(k.trim().to_string());
            }
        }
    }
    jobs
}

/// The normalised status of a PBS Pro job from its `qstat -x -f -F json` object.
///
/// A finished job (`F`) is told apart by what PBS recorded: no `Exit_status`
/// means it was deleted while queued; substate 91 or a comment "terminated"
/// means deleted while running (PBS records exit status 0 then); exit status
/// -29 or a comment "exceeded resource walltime" is a timeout; 256 + N means
/// killed by signal N.
pub fn pbs_status(job_id: &str, job: &Value) -> JobStatus {
    let text = |k: &str| match job.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(v) if !v.is_null() => v.to_string(),
        _ => String::new(),
    };
    let state_letter = text("job_state");
    let exit = job.get("Exit_status").and_then(Value::as_i64).map(|e| e as i32);
    let substate = job.get("substate").and_then(Value::as_i64);
    let comment = text("comment");
    let (state, exit_code) = pbs_state(&state_letter, exit, substate, &comment);
    let mut detail = format!("job_state={state_letter}");
    if let Some(e) = exit {
        detail.push_str(&format!(" Exit_status={e}"));
    }
    if !comment.is_empty() {
        detail.push_str(&format!(" ({comment})"));
    }
    JobStatus {
        job_id: job_id.to_string(),
        system: System::Pbs,
        state,
        exit_code,
        detail,
        name: job.get("Job_Name").and_then(Value::as_str).map(str::to_string),
        source: "qstat",
        elements: Vec::new(),
    }
}

fn pbs_state(letter: &str, exit: Option<i32>, substate: Option<i64>, comment: &str) -> (JobState, Option<i32>) {
    match letter {
        "Q" | "H" | "W" | "T" | "M" | "U" => (JobState::Pending, None),
        "R" | "E" | "B" | "S" | "X" => (JobState::Running, None),
        "F" | "C" => match exit {
            None => (JobState::Cancelled, None),
            Some(_) if substate == Some(91) || comment.contains("terminated") => (JobState::Cancelled, None),
            Some(-29) | Some(-11) => (JobState::Timeout, None),
            Some(_) if comment.contains("exceeded resource walltime") => (JobState::Timeout, None),
            Some(0) => (JobState::Completed, Some(0)),
            Some(e) if e > 256 => (JobState::Failed, Some(signal_exit(e - 256))),
            Some(e) => (JobState::Failed, Some(e)),
        },
        _ => (JobState::Unknown, None),
    }
}

/// The normalised status of a Torque job from its `qstat -f` fields
/// (`job_state`, `exit_status`; keys compared without case).
pub fn torque_status(job_id: &str, fields: &BTreeMap<String, String>) -> JobStatus {
    let get = |k: &str| fields.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.trim().to_string());
    let letter = get("job_state").unwrap_or_default();
    let exit = get("exit_status").and_then(|e| e.parse::<i32>().ok());
    let substate = get("substate").and_then(|s| s.parse::<i64>().ok());
    let comment = get("comment").unwrap_or_default();
    let (state, exit_code) = pbs_state(&letter, exit, substate, &comment);
    JobStatus {
        job_id: job_id.to_string(),
        system: System::Torque,
        state,
        exit_code,
        detail: match exit {
            Some(e) => format!("job_state={letter} exit_status={e}"),
            None => format!("job_state={letter}"),
        },
        name: get("Job_Name"),
        source: "qstat",
        elements: Vec::new(),
    }
}

fn unknown_job(system: System, job_id: &str, stderr: &str) -> Error {
    Error::UnknownJob { system, job_id: job_id.into(), detail: format!(" ({})", stderr.trim()) }
}

// ---- the adapter ----------------------------------------------------------------

impl Pbs {
    fn flavour(&self) -> System {
        self.run.system
    }
}

impl BatchSystem for Pbs {
    fn system(&self) -> System {
        self.flavour()
    }

    fn submit(&self, script: &Path) -> Result<Submitted> {
        self.run.submit("qsub", &[&script.to_string_lossy()], parse_qsub)
    }

    fn status(&self, job_id: &str) -> Result<JobStatus> {
        let system = self.flavour();
        if system == System::Pbs {
            let args = ["-x", "-f", "-F", "json", job_id];
            let o = self.run.run("qstat", &args)?;
            if o.stderr.contains("Unknown Job Id") || o.stderr.contains("illegally formed job identifier") {
                return Err(unknown_job(system, job_id, &o.stderr));
            }
            if o.status != 0 {
                return Err(self.run.failed("qstat", &args, &o));
            }
            let jobs = parse_qstat_json(&o.stdout).map_err(|reason| Error::Parse {
                system,
                command: crate::batch::command_line("qstat", &args),
                reason,
            })?;
            return match jobs.as_slice() {
                [(id, job)] => Ok(pbs_status(id, job)),
                [] => Err(unknown_job(system, job_id, "qstat returned no job")),
                many => {
                    let elements = many.iter().map(|(id, j)| pbs_status(id, j)).collect();
                    Ok(JobStatus::aggregate(job_id, system, "qstat", elements))
                }
            };
        }
        let args = ["-f", job_id];
        let o = self.run.run("qstat", &args)?;
        if o.stderr.contains("Unknown Job Id") {
            // Torque forgets finished jobs after keep_completed: it cannot say more.
            return Ok(JobStatus {
                job_id: job_id.into(),
                system,
                state: JobState::Unknown,
                exit_code: None,
                detail: "Torque does not know this job: it never existed, or ended more than keep_completed \
                         seconds ago"
                    .into(),
                name: None,
                source: "qstat",
                elements: Vec::new(),
            });
        }
        if o.status != 0 {
            return Err(self.run.failed("qstat", &args, &o));
        }
        let jobs = parse_qstat_f(&o.stdout);
        match jobs.as_slice() {
            [(id, fields)] => Ok(torque_status(id, fields)),
            [] => Err(unknown_job(system, job_id, "qstat -f returned no job")),
            many => {
                let elements = many.iter().map(|(id, f)| torque_status(id, f)).collect();
                Ok(JobStatus::aggregate(job_id, system, "qstat", elements))
            }
        }
    }

    fn delete(&self, job_id: &str) -> Result<bool> {
        let o = self.run.run("qdel", &[job_id])?;
        if o.stderr.contains("Unknown Job Id") {
            return Err(unknown_job(self.flavour(), job_id, &o.stderr));
        }
        if o.stderr.contains("Job has finished") {
            return Ok(false);
        }
        if o.status != 0 {
            return Err(self.run.failed("qdel", &[job_id], &o));
        }
        Ok(true)
    }

    fn list(&self, prefix: &str) -> Result<Vec<JobStatus>> {
        let user = crate::batch::current_user();
        let system = self.flavour();
        let owned = |owner: &str| owner.split('@').next() == Some(user.as_str());
        if system == System::Pbs {
            let args = ["-f", "-F", "json"];
            let o = self.run.run("qstat", &args)?;
            if o.status != 0 {
                return Err(self.run.failed("qstat", &args, &o));
            }
            let jobs = parse_qstat_json(&o.stdout).map_err(|reason| Error::Parse {
                system,
                command: "qstat -f -F json".into(),
                reason,
            })?;
            return Ok(jobs
                .iter()
                .filter(|(_, j)| j.get("Job_Owner").and_then(Value::as_str).is_some_and(owned))
                .map(|(id, j)| pbs_status(id, j))
                .filter(|s| s.name.as_deref().is_some_and(|n| n.starts_with(prefix)))
                .collect());
        }
        let o = self.run.run("qstat", &["-f"])?;
        if o.status != 0 {
            return Err(self.run.failed("qstat", &["-f"], &o));
        }
        Ok(parse_qstat_f(&o.stdout)
            .iter()
            .filter(|(_, f)| f.get("Job_Owner").is_some_and(|o| owned(o)))
            .map(|(id, f)| torque_status(id, f))
            .filter(|s| s.name.as_deref().is_some_and(|n| n.starts_with(prefix)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::replay::{capture, Always, Replay};
    use crate::batch::{connect_with, JobState::*};

    fn json(file: &str) -> JobStatus {
        let (_, o) = capture(&format!("pbs/{file}"));
        let jobs = parse_qstat_json(&o.stdout).unwrap();
        assert_eq!(jobs.len(), 1, "{file}");
        pbs_status(&jobs[0].0, &jobs[0].1)
    }

    #[test]
    fn qsub_ids() {
        assert_eq!(parse_qsub(&capture("pbs/submit-default.txt").1.stdout).as_deref(), Some("3.pbshost"));
        assert_eq!(parse_qsub(&capture("pbs/array-submit.txt").1.stdout).as_deref(), Some("12[].pbshost"));
        assert_eq!(parse_qsub(&capture("pbs/err-bad-queue.txt").1.stdout), None);
    }

    #[test]
    fn every_captured_state_from_json() {
        let r = json("status-running-qstat-x-f-json.txt");
        assert_eq!((r.state, r.name.as_deref(), r.job_id.as_str()), (Running, Some("sleeper"), "6.pbshost"));
        assert_eq!(json("status-pending-qstat-x-f-json.txt").state, Pending);
        assert_eq!(json("status-pending-held-qstat-x-f-json.txt").state, Pending);
        let never = json("status-pending-never-qstat-x-f-json.txt");
        assert!(never.state == Pending && never.detail.contains("Can Never Run"), "{never:?}");
        let c = json("status-completed-qstat-x-f-json.txt");
        assert_eq!((c.state, c.exit_code), (Completed, Some(0)));
        let f = json("status-failed-qstat-x-f-json.txt");
        assert_eq!((f.state, f.exit_code, f.wait_exit_code()), (Failed, Some(3), 3));
        assert_eq!(json("status-timeout-qstat-x-f-json.txt").state, Timeout);
        // Exit_status 0, yet deleted while running (substate 91, "terminated by").
        let cr = json("status-cancelled-running-qstat-x-f-json.txt");
        assert_eq!((cr.state, cr.exit_code), (Cancelled, None));
        // Deleted while queued: no Exit_status at all.
        assert_eq!(json("status-cancelled-pending-qstat-x-f-json.txt").state, Cancelled);
        assert_eq!(json("array-status-qstat-x-f-json.txt").state, Running);
        assert_eq!(json("array-done-qstat-x-f-json.txt").state, Completed);
        assert_eq!(json("array-status-subjob-qstat-x-f-json.txt").state, Running);
    }

    #[test]
    fn qstat_f_text_joins_wrapped_values_without_inserting_anything() {
        let (_, o) = capture("pbs/status-running-qstat-f.txt");
        let jobs = parse_qstat_f(&o.stdout);
        assert_eq!(jobs.len(), 1);
        let (id, f) = &jobs[0];
        assert_eq!(id, "6.pbshost");
        assert_eq!(f["job_state"], "R");
        assert!(f["Variable_List"].contains("pyenv-virtualenv"), "{}", f["Variable_List"]);
        let (_, o) = capture("pbs/status-pending-never-qstat-f.txt");
        let f = &parse_qstat_f(&o.stdout)[0].1;
        assert!(f["comment"].ends_with("(R: 64 A: 2 T: 2)"), "{}", f["comment"]);
        // The same text read as Torque output (Torque's qstat -f has this layout).
        let (_, o) = capture("pbs/status-running-qstat-f.txt");
        let (id, f) = &parse_qstat_f(&o.stdout)[0];
        let s = torque_status(id, f);
        assert_eq!((s.state, s.system, s.name.as_deref()), (Running, System::Torque, Some("sleeper")));
        let (_, o) = capture("pbs/status-pending-held-qstat-f.txt");
        let (id, f) = &parse_qstat_f(&o.stdout)[0];
        assert_eq!(torque_status(id, f).state, Pending);
        // Finished jobs need -x on PBS Pro (exit 35); Torque shows them as state C.
        let (_, o) = capture("pbs/status-failed-qstat-f.txt");
        assert!(parse_qstat_f(&o.stdout).is_empty() && o.stderr.contains("Job has finished"));
        let failed = [("job_state".to_string(), "C".to_string()), ("exit_status".into(), "3".into())].into();
        assert_eq!(torque_status("1.t", &failed).exit_code, Some(3));
        let torque_done = [("job_state".to_string(), "C".to_string()), ("exit_status".into(), "271".into())].into();
        assert_eq!(torque_status("1.t", &torque_done).exit_code, Some(143));
    }

    #[test]
    fn unknown_ids_are_errors_with_pbs_own_words() {
        let pbs = connect_with(System::Pbs, Replay::new(&["pbs/status-unknown-qstat-x-f-json.txt"]));
        let e = pbs.status("999999").unwrap_err().to_string();
        assert!(e.contains("knows no job `999999`") && e.contains("Unknown Job Id 999999.pbshost"), "{e}");
    }

    #[test]
    fn status_and_cancel_through_the_adapter() {
        let pbs = connect_with(
            System::Pbs,
            Replay::new(&["pbs/status-running-qstat-x-f-json.txt", "pbs/cancel-running.txt"]),
        );
        let c = pbs.cancel("6.pbshost").unwrap();
        assert_eq!((c.was, c.cancelled), (Running, true));
        let pbs = connect_with(System::Pbs, Replay::new(&["pbs/status-completed-qstat-x-f-json.txt"]));
        let c = pbs.cancel("8").unwrap();
        assert_eq!((c.was, c.cancelled), (Completed, false));
    }

    #[test]
    fn rejected_submissions_show_the_message() {
        for (file, says) in [("pbs/err-bad-queue.txt", "Unknown queue"), ("pbs/err-bad-walltime.txt", "walltime")] {
            let (_, o) = capture(file);
            assert_ne!(o.status, 0);
            let pbs = connect_with(System::Pbs, Box::new(Always(o)));
            let e = pbs.submit(Path::new("job.sh")).unwrap_err().to_string();
            assert!(e.contains("pbs rejected the job") && e.contains(says), "{e}");
        }
    }
}

//! PBS Pro / OpenPBS (`qstat -x -f -F json`) and Torque (`qstat -x`, XML;
//! `tracejob`): `qsub`, `qstat`, `qdel`.
//!
//! PBS Pro keeps finished jobs in `qstat -x` while job history is enabled.
//! Torque keeps them (state `C`) for `keep_completed` seconds; after that its
//! `tracejob`, where installed and allowed to read the server's logs, still
//! tells how a job ended from the server and accounting logs of the last
//! [`TRACEJOB_DAYS`] days. Past both, a finished job cannot be told from one
//! that never existed.

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

/// A Torque job as `qstat` shows it: its id and its fields.
pub type TorqueJob = (String, BTreeMap<String, String>);

/// Torque's `qstat -x` (XML): one field map per `<Job>`, keyed as in
/// `qstat -f` (`Job_Id` is the id; nested resources read
/// `Resource_List.walltime`). Empty output is no jobs; output that is not XML
/// is an error naming why.
pub fn parse_torque_qstat_xml(stdout: &str) -> std::result::Result<Vec<TorqueJob>, String> {
    if stdout.trim().is_empty() {
        return Ok(Vec::new());
    }
    let doc = roxmltree::Document::parse(stdout).map_err(|e| format!("not XML: {e}"))?;
    let mut jobs = Vec::new();
    for job in doc.descendants().filter(|n| n.has_tag_name("Job")) {
        let mut fields = BTreeMap::new();
        for field in job.children().filter(roxmltree::Node::is_element) {
            let key = field.tag_name().name();
            match field.children().find(roxmltree::Node::is_element) {
                None => {
                    fields.insert(key.to_string(), field.text().unwrap_or("").trim().to_string());
                }
                Some(_) => {
                    for sub in field.children().filter(roxmltree::Node::is_element) {
                        let k = format!("{key}.{}", sub.tag_name().name());
                        fields.insert(k, sub.text().unwrap_or("").trim().to_string());
                    }
                }
            }
        }
        let id = fields.remove("Job_Id").ok_or_else(|| "a <Job> without <Job_Id>".to_string())?;
        jobs.push((id, fields));
    }
    Ok(jobs)
}

/// How many days of logs `tracejob` searches (`-n`).
pub const TRACEJOB_DAYS: u32 = 7;

/// What Torque's `tracejob` output says about how a job ended: `None` when
/// it found no record of the job, else its status, `Unknown` if the records
/// stop before the job ended.
///
/// Lines are `MM/DD/YYYY HH:MM:SS[.mmm]  SOURCE  message`, SOURCE `S`
/// (server log), `A` (accounting), `M` (MOM), `C` (scheduler). An
/// `Exit_status=N` (server or accounting `E` record) ends the job; a deletion
/// ("Job deleted at request of", accounting `requestor=`) cancels it, with or
/// without an exit status; a walltime overrun (-11, or a log line saying the
/// walltime was exceeded) is a timeout. Lines about other jobs' log files
/// ("No such file or directory") are skipped.
pub fn tracejob_status(job_id: &str, stdout: &str) -> Option<JobStatus> {
    let mut records = 0;
    let (mut exit, mut deleted, mut walltime, mut name) = (None, false, false, None);
    for line in stdout.lines() {
        let mut words = line.split_whitespace();
        let (Some(date), Some(_time), Some(source)) = (words.next(), words.next(), words.next()) else { continue };
        let dated = date.len() == 10 && date.bytes().enumerate().all(|(i, b)| (i == 2 || i == 5) == (b == b'/'));
        if !dated || !matches!(source, "S" | "A" | "M" | "C") {
            continue;
        }
        records += 1;
        let message = line.split_once(source).map_or("", |(_, m)| m).trim();
        for word in message.split_whitespace() {
            if let Some(e) = word.strip_prefix("Exit_status=") {
                exit = e.trim_end_matches(',').parse::<i32>().ok().or(exit);
            } else if let Some(n) = word.strip_prefix("jobname=") {
                name = Some(n.to_string());
            }
        }
        if let Some((_, rest)) = message.split_once("job name = ") {
            name = rest.split(',').next().map(|n| n.trim().to_string());
        }
        if message.starts_with("Job deleted") || (source == "A" && message.starts_with("requestor=")) {
            deleted = true;
        }
        let lower = message.to_ascii_lowercase();
        if lower.contains("walltime") && lower.contains("exceeded") {
            walltime = true;
        }
    }
    if records == 0 {
        return None;
    }
    let comment = if deleted {
        "terminated"
    } else if walltime {
        "exceeded resource walltime"
    } else {
        ""
    };
    let (state, exit_code) =
        if exit.is_some() || deleted { pbs_state("C", exit, None, comment) } else { (JobState::Unknown, None) };
    let mut detail = match exit {
        Some(e) => format!("tracejob: Exit_status={e}"),
        None => "tracejob: no exit status".to_string(),
    };
    if !comment.is_empty() {
        detail.push_str(&format!(" ({})", if deleted { "deleted" } else { "walltime exceeded" }));
    }
    if state == JobState::Unknown {
        detail = format!(
            "tracejob has {records} log records of this job but none of how it ended (older than {TRACEJOB_DAYS} days?)"
        );
    }
    Some(JobStatus {
        job_id: job_id.to_string(),
        system: System::Torque,
        state,
        exit_code,
        detail,
        name,
        source: "tracejob",
        elements: Vec::new(),
    })
}

fn unknown_job(system: System, job_id: &str, stderr: &str) -> Error {
    Error::UnknownJob { system, job_id: job_id.into(), detail: format!(" ({})", stderr.trim()) }
}

// ---- the adapter ----------------------------------------------------------------

impl Pbs {
    fn flavour(&self) -> System {
        self.run.system
    }

    /// A Torque job `qstat` no longer knows: what `tracejob` finds in the
    /// logs, or `Unknown` (as before this fallback) when tracejob is not
    /// installed, cannot read the logs, or has no record.
    fn torque_tracejob(&self, job_id: &str) -> Result<JobStatus> {
        let days = TRACEJOB_DAYS.to_string();
        let args = ["-n", days.as_str(), job_id];
        let why = match self.run.run("tracejob", &args) {
            Ok(o) => match tracejob_status(job_id, &o.stdout) {
                Some(s) => return Ok(s),
                None => format!("tracejob has no record of it in the last {TRACEJOB_DAYS} days of logs it can read"),
            },
            Err(Error::CommandNotFound { .. }) => "tracejob is not installed here".to_string(),
            Err(e) => return Err(e),
        };
        Ok(JobStatus {
            job_id: job_id.into(),
            system: System::Torque,
            state: JobState::Unknown,
            exit_code: None,
            detail: format!(
                "Torque does not know this job: it never existed, or ended more than keep_completed seconds ago \
                 ({why})"
            ),
            name: None,
            source: "qstat",
            elements: Vec::new(),
        })
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
        // Torque: `qstat -x` lists a finished job (state C) while keep_completed holds it.
        let args = ["-x", job_id];
        let o = self.run.run("qstat", &args)?;
        if o.stderr.contains("Unknown Job Id") {
            return self.torque_tracejob(job_id);
        }
        if o.status != 0 {
            return Err(self.run.failed("qstat", &args, &o));
        }
        let jobs = parse_torque_qstat_xml(&o.stdout).map_err(|reason| Error::Parse {
            system,
            command: crate::batch::command_line("qstat", &args),
            reason,
        })?;
        match jobs.as_slice() {
            [(id, fields)] => Ok(torque_status(id, fields)),
            [] => Err(unknown_job(system, job_id, "qstat -x returned no job")),
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

    /// Replays captures, but `tracejob` is not installed.
    struct NoTracejob(Box<Replay>);

    impl crate::batch::Exec for NoTracejob {
        fn run(&self, program: &str, args: &[&str]) -> std::io::Result<crate::batch::Output> {
            if program == "tracejob" {
                return Err(std::io::ErrorKind::NotFound.into());
            }
            self.0.run(program, args)
        }
    }

    fn torque(files: &[&str]) -> Box<dyn BatchSystem> {
        connect_with(System::Torque, Replay::new(files))
    }

    #[test]
    fn torque_qstat_xml_reads_every_field_and_refuses_what_is_not_xml() {
        let (_, o) = capture("torque/status-running-qstat-x.txt");
        let jobs = parse_torque_qstat_xml(&o.stdout).unwrap();
        assert_eq!(jobs.len(), 1);
        let (id, f) = &jobs[0];
        assert_eq!(id, "41.torque-server");
        assert_eq!((f["job_state"].as_str(), f["Resource_List.walltime"].as_str()), ("R", "00:10:00"));
        assert!(f["Variable_List"].ends_with("PBS_O_SERVER=torque-server"), "{}", f["Variable_List"]);
        let s = torque_status(id, f);
        assert_eq!((s.state, s.name.as_deref()), (Running, Some("tessera-svd")));
        let (_, o) = capture("torque/status-failed-qstat-x.txt");
        let (id, f) = &parse_torque_qstat_xml(&o.stdout).unwrap()[0];
        let s = torque_status(id, f);
        assert_eq!((s.state, s.exit_code, s.name.as_deref()), (Failed, Some(3), Some("fail & retry")));
        assert_eq!(parse_torque_qstat_xml("  \n").unwrap(), Vec::new());
        assert!(parse_torque_qstat_xml("<Data><Job>").unwrap_err().starts_with("not XML"));
        let e = parse_torque_qstat_xml("<Data><Job><job_state>R</job_state></Job></Data>").unwrap_err();
        assert!(e.contains("Job_Id"), "{e}");
    }

    #[test]
    fn torque_tracejob_tells_how_a_forgotten_job_ended() {
        let t = |file: &str| {
            let (_, o) = capture(&format!("torque/{file}"));
            tracejob_status("40.torque-server", &o.stdout)
        };
        let f = t("status-failed-tracejob.txt").unwrap();
        assert_eq!(
            (f.state, f.exit_code, f.name.as_deref(), f.source),
            (Failed, Some(3), Some("tessera-svd"), "tracejob")
        );
        let c = t("status-cancelled-running-tracejob.txt").unwrap();
        assert_eq!((c.state, c.exit_code, c.name.as_deref()), (Cancelled, None, Some("sleeper")));
        let c = t("status-cancelled-pending-tracejob.txt").unwrap();
        assert_eq!((c.state, c.exit_code), (Cancelled, None));
        assert!(c.detail.contains("deleted"), "{}", c.detail);
        let w = t("status-timeout-tracejob.txt").unwrap();
        assert_eq!((w.state, w.exit_code), (Timeout, None));
        assert_eq!(t("status-unknown-tracejob.txt"), None);
        // Records that stop before the end say so instead of guessing.
        let started = "11/22/2026 10:00:01.020 S    Job Run at request of root@torque-server\n";
        let s = tracejob_status("40.torque-server", started).unwrap();
        assert!(s.state == Unknown && s.detail.contains("none of how it ended"), "{s:?}");
        let done = "11/22/2026 10:00:32.108 S    Exit_status=0 resources_used.walltime=00:00:31\n";
        let s = tracejob_status("40.torque-server", done).unwrap();
        assert_eq!((s.state, s.exit_code), (Completed, Some(0)));
    }

    #[test]
    fn torque_falls_back_from_qstat_to_tracejob() {
        let s = torque(&["torque/status-running-qstat-x.txt"]).status("41.torque-server").unwrap();
        assert_eq!((s.state, s.source), (Running, "qstat"));
        let s = torque(&["torque/status-failed-qstat-x.txt"]).status("42.torque-server").unwrap();
        assert_eq!((s.state, s.exit_code, s.source), (Failed, Some(3), "qstat"));
        let s = torque(&["torque/status-gone-qstat-x.txt", "torque/status-failed-tracejob.txt"])
            .status("40.torque-server")
            .unwrap();
        assert_eq!((s.state, s.exit_code, s.source), (Failed, Some(3), "tracejob"));
        assert_eq!(s.wait_exit_code(), 3);
        let s = torque(&["torque/status-gone-qstat-x.txt", "torque/status-timeout-tracejob.txt"])
            .status("40.torque-server")
            .unwrap();
        assert_eq!(s.state, Timeout);
        // No record: unknown, as before the fallback, saying why.
        let s = torque(&["torque/status-gone-qstat-x.txt", "torque/status-unknown-tracejob.txt"])
            .status("40.torque-server")
            .unwrap();
        assert!(s.state == Unknown && s.detail.contains("no record"), "{s:?}");
        let replay = Replay::new(&["torque/status-gone-qstat-x.txt"]);
        let s = connect_with(System::Torque, Box::new(NoTracejob(replay))).status("40.torque-server").unwrap();
        assert!(s.state == Unknown && s.detail.contains("tracejob is not installed"), "{s:?}");
        // A forgotten job that was deleted cannot be cancelled again.
        let c = torque(&["torque/status-gone-qstat-x.txt", "torque/status-cancelled-running-tracejob.txt"])
            .cancel("40.torque-server")
            .unwrap();
        assert_eq!((c.was, c.cancelled), (Cancelled, false));
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

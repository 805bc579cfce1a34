//! (Son of) Grid Engine: `qsub -terse`, `qstat -xml`, `qacct -j`, `qstat -s z`, `qdel`.
//!
//! SGE forgets a job in `qstat` the moment it ends; `qacct` has a record of
//! every job that ran (a few seconds later), none of a job deleted before it
//! ran. `qstat -s z` lists recently finished jobs of both kinds.

use std::collections::BTreeMap;
use std::path::Path;

use crate::batch::{JobState, JobStatus, Runner, Submitted};
use crate::{BatchSystem, Error, Result, System};

pub(crate) struct Sge {
    pub run: Runner,
}

// ---- pure parsers -------------------------------------------------------------

/// The job id from `qsub -terse`: `7`, or `20.1-3:1` for an array (the part before the dot).
pub fn parse_qsub_terse(stdout: &str) -> Option<String> {
    let first = stdout.lines().map(str::trim).find(|l| !l.is_empty())?;
    let id = first.split('.').next()?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_string())
}

/// One `<job_list>` entry of `qstat -xml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QstatJob {
    pub number: String,
    pub name: String,
    pub owner: String,
    /// State letters (`r`, `qw`, `hqw`, `Eqw`, `dr`).
    pub state: String,
    /// Array task id or range (`2`, `1-3:1`); empty for plain jobs.
    pub tasks: String,
}

/// The `<job_list>` entries of `qstat -xml` (running ones under
/// `<queue_info>`, pending ones under the inner `<job_info>`: both read).
/// Empty output is no jobs; output that is not XML is an error naming why.
pub fn parse_qstat_xml(stdout: &str) -> std::result::Result<Vec<QstatJob>, String> {
    if stdout.trim().is_empty() {
        return Ok(Vec::new());
    }
    let doc = roxmltree::Document::parse(stdout).map_err(|e| format!("not XML: {e}"))?;
    let jobs = doc
        .descendants()
        .filter(|n| n.has_tag_name("job_list"))
        .map(|job| {
            let tag = |t: &str| {
                job.children()
                    .find(|c| c.has_tag_name(t))
                    .and_then(|c| c.text())
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            QstatJob {
                number: tag("JB_job_number"),
                name: tag("JB_name"),
                owner: tag("JB_owner"),
                state: tag("state"),
                tasks: tag("tasks"),
            }
        })
        .collect();
    Ok(jobs)
}

/// SGE state letters in normalised form. `E` (error, the job will not start
/// until cleared) stays pending, with the letters in the detail.
pub fn sge_state(letters: &str) -> JobState {
    if letters.contains(['r', 't', 'R', 's', 'S', 'T', 'd']) {
        JobState::Running
    } else if letters.contains(['q', 'w', 'h', 'E']) {
        JobState::Pending
    } else {
        JobState::Unknown
    }
}

/// `qacct -j` records (one per task for arrays): `key value` lines between `====` rules.
pub fn parse_qacct(stdout: &str) -> Vec<BTreeMap<String, String>> {
    let mut records = Vec::new();
    let mut cur: Option<BTreeMap<String, String>> = None;
    for line in stdout.lines() {
        if line.starts_with("====") {
            records.extend(cur.take());
            cur = Some(BTreeMap::new());
        } else if let (Some(map), Some((k, v))) = (cur.as_mut(), line.split_once(char::is_whitespace)) {
            map.insert(k.to_string(), v.trim().to_string());
        }
    }
    records.extend(cur);
    records
}

/// The normalised status from one `qacct` record: `failed` 0 with
/// `exit_status` 0 is completed; `failed` 37 (qmaster enforced h_rt) a
/// timeout; `failed` 100 ("assumedly after job", exit 137) a qdel of a running
/// job; any other non-zero a failure.
pub fn qacct_status(job_id: &str, r: &BTreeMap<String, String>) -> JobStatus {
    let num = |k: &str| r.get(k).and_then(|v| v.split_whitespace().next()).and_then(|n| n.parse::<i32>().ok());
    let failed = num("failed").unwrap_or(0);
    let exit = num("exit_status");
    let (state, exit_code) = match (failed, exit) {
        (0, Some(0)) => (JobState::Completed, Some(0)),
        (0, e) => (JobState::Failed, e),
        (37, _) => (JobState::Timeout, None),
        (100, _) => (JobState::Cancelled, None),
        (_, Some(0)) | (_, None) => (JobState::Failed, None),
        (_, e) => (JobState::Failed, e),
    };
    let mut detail = format!("failed={}", r.get("failed").map(String::as_str).unwrap_or("?"));
    if let Some(e) = r.get("exit_status") {
        detail.push_str(&format!(" exit_status={}", e.split_whitespace().collect::<Vec<_>>().join(" ")));
    }
    JobStatus {
        job_id: job_id.to_string(),
        system: System::Sge,
        state,
        exit_code,
        detail,
        name: r.get("jobname").cloned(),
        source: "qacct",
        elements: Vec::new(),
    }
}

/// Job ids in a plain `qstat` table (such as `qstat -s z`).
pub fn parse_qstat_table_ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
        .collect()
}

fn status_from_qstat(job_id: &str, jobs: &[QstatJob]) -> Option<JobStatus> {
    let mine: Vec<&QstatJob> = jobs.iter().filter(|j| j.number == job_id).collect();
    let one = |j: &QstatJob, id: String| JobStatus {
        job_id: id,
        system: System::Sge,
        state: sge_state(&j.state),
        exit_code: None,
        detail: j.state.clone(),
        name: Some(j.name.clone()),
        source: "qstat",
        elements: Vec::new(),
    };
    match mine.as_slice() {
        [] => None,
        [j] if j.tasks.is_empty() => Some(one(j, job_id.to_string())),
        many => {
            let elements = many.iter().map(|j| one(j, format!("{job_id}.{}", j.tasks))).collect();
            Some(JobStatus::aggregate(job_id, System::Sge, "qstat", elements))
        }
    }
}

// ---- the adapter ----------------------------------------------------------------

impl Sge {
    /// `qstat -xml`'s jobs, or an error that says the output was unreadable.
    fn qstat_jobs(&self, stdout: &str) -> Result<Vec<QstatJob>> {
        parse_qstat_xml(stdout).map_err(|reason| Error::Parse {
            system: System::Sge,
            command: crate::batch::command_line("qstat", &["-xml"]),
            reason,
        })
    }
}

impl BatchSystem for Sge {
    fn system(&self) -> System {
        System::Sge
    }

    fn submit(&self, script: &Path) -> Result<Submitted> {
        self.run.submit("qsub", &["-terse", &script.to_string_lossy()], parse_qsub_terse)
    }

    fn status(&self, job_id: &str) -> Result<JobStatus> {
        if job_id.is_empty() || !job_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::UnknownJob {
                system: System::Sge,
                job_id: job_id.into(),
                detail: ": SGE job ids are numbers".into(),
            });
        }
        let o = self.run.run("qstat", &["-xml"])?;
        if o.status != 0 {
            return Err(self.run.failed("qstat", &["-xml"], &o));
        }
        if let Some(s) = status_from_qstat(job_id, &self.qstat_jobs(&o.stdout)?) {
            return Ok(s);
        }
        let o = self.run.run("qacct", &["-j", job_id])?;
        if o.status == 0 {
            let records = parse_qacct(&o.stdout);
            match records.as_slice() {
                [r] => return Ok(qacct_status(job_id, r)),
                [] => {}
                many => {
                    let elements = many
                        .iter()
                        .map(|r| {
                            let task = r.get("taskid").map(String::as_str).unwrap_or("?");
                            qacct_status(&format!("{job_id}.{task}"), r)
                        })
                        .collect();
                    return Ok(JobStatus::aggregate(job_id, System::Sge, "qacct", elements));
                }
            }
        } else if !(o.stderr.contains("not found") || o.stderr.contains("No such file")) {
            // "job id N not found"; "accounting: No such file" until the first job ended
            return Err(self.run.failed("qacct", &["-j", job_id], &o));
        }
        // No record: deleted before it ran, or it ended a moment ago and
        // accounting has not caught up; either way `qstat -s z` lists it.
        let o = self.run.run("qstat", &["-s", "z"])?;
        if o.status == 0 && parse_qstat_table_ids(&o.stdout).iter().any(|id| id == job_id) {
            return Ok(JobStatus {
                job_id: job_id.into(),
                system: System::Sge,
                state: JobState::Unknown,
                exit_code: None,
                detail: "ended without an accounting record: deleted before it ran, or qacct has not caught up yet"
                    .into(),
                name: None,
                source: "qstat -s z",
                elements: Vec::new(),
            });
        }
        Err(Error::UnknownJob {
            system: System::Sge,
            job_id: job_id.into(),
            detail: " (not in qstat, qstat -s z or qacct)".into(),
        })
    }

    fn delete(&self, job_id: &str) -> Result<bool> {
        // qdel writes its errors to stdout.
        let o = self.run.run("qdel", &[job_id])?;
        if o.stdout.contains("does not exist") {
            return Ok(false);
        }
        if o.status != 0 {
            return Err(self.run.failed("qdel", &[job_id], &o));
        }
        Ok(true)
    }

    fn list(&self, prefix: &str) -> Result<Vec<JobStatus>> {
        let user = crate::batch::current_user();
        let o = self.run.run("qstat", &["-xml"])?;
        if o.status != 0 {
            return Err(self.run.failed("qstat", &["-xml"], &o));
        }
        let jobs = self.qstat_jobs(&o.stdout)?;
        let mut ids: Vec<&str> =
            jobs.iter().filter(|j| j.owner == user && j.name.starts_with(prefix)).map(|j| j.number.as_str()).collect();
        ids.dedup();
        Ok(ids.into_iter().filter_map(|id| status_from_qstat(id, &jobs)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::replay::{capture, Always, Replay};
    use crate::batch::{connect_with, JobState::*};

    fn qacct(file: &str) -> JobStatus {
        let (_, o) = capture(&format!("sge/{file}"));
        let r = parse_qacct(&o.stdout);
        assert_eq!(r.len(), 1, "{file}");
        qacct_status("x", &r[0])
    }

    #[test]
    fn terse_ids_including_arrays() {
        assert_eq!(parse_qsub_terse(&capture("sge/submit-terse.txt").1.stdout).as_deref(), Some("7"));
        assert_eq!(parse_qsub_terse(&capture("sge/array-submit-terse.txt").1.stdout).as_deref(), Some("20"));
        assert_eq!(parse_qsub_terse(&capture("sge/submit-default.txt").1.stdout), None);
    }

    #[test]
    fn qstat_xml_running_pending_held_and_array_tasks() {
        let (_, o) = capture("sge/status-running-qstat-xml.txt");
        let jobs = parse_qstat_xml(&o.stdout).unwrap();
        assert_eq!(jobs.len(), 5);
        let s = |id| status_from_qstat(id, &jobs).unwrap();
        assert_eq!((s("9").state, s("9").name.as_deref()), (Running, Some("sleeper")));
        assert_eq!((s("10").state, s("10").detail.as_str()), (Pending, "qw"));
        assert_eq!((s("11").state, s("11").detail.as_str()), (Pending, "hqw"));
        assert_eq!(status_from_qstat("13", &jobs), None);
        let (_, o) = capture("sge/array-status-qstat-xml.txt");
        let jobs = parse_qstat_xml(&o.stdout).unwrap();
        let a = status_from_qstat("19", &jobs).unwrap();
        assert_eq!((a.state, a.elements.len(), a.elements[2].job_id.as_str()), (Running, 3, "19.3"));
        assert_eq!(status_from_qstat("20", &jobs).unwrap().state, Pending);
        assert_eq!(sge_state("Eqw"), Pending);
        assert_eq!(sge_state("dr"), Running);
    }

    #[test]
    fn qstat_xml_unescapes_entities_and_refuses_what_is_not_xml() {
        let xml = "<?xml version='1.0'?>\n<job_info><queue_info><job_list state=\"running\">\
                   <JB_job_number>5</JB_job_number><JB_name>a&amp;b &lt;x&gt; &#39;q&#39;</JB_name>\
                   <JB_owner>u1</JB_owner><state>r</state></job_list></queue_info><job_info/></job_info>\n";
        let jobs = parse_qstat_xml(xml).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!((jobs[0].number.as_str(), jobs[0].name.as_str()), ("5", "a&b <x> 'q'"));
        assert_eq!(parse_qstat_xml(""), Ok(Vec::new()));
        let e = parse_qstat_xml("<job_info><job_list><JB_job_number>5</job_list>").unwrap_err();
        assert!(e.starts_with("not XML"), "{e}");
        let sge = connect_with(
            System::Sge,
            Box::new(Always(crate::batch::Output {
                status: 0,
                stdout: "error: commlib error: got select error\n".into(),
                stderr: String::new(),
            })),
        );
        let e = sge.status("5").unwrap_err().to_string();
        assert!(e.contains("qstat -xml") && e.contains("not XML"), "{e}");
    }

    #[test]
    fn qacct_tells_completed_failed_timeout_and_cancelled_apart() {
        let c = qacct("status-completed-qacct.txt");
        assert_eq!((c.state, c.exit_code, c.name.as_deref()), (Completed, Some(0), Some("ok")));
        let f = qacct("status-failed-qacct.txt");
        assert_eq!((f.state, f.exit_code), (Failed, Some(3)));
        let t = qacct("status-timeout-qacct.txt");
        assert!(t.state == Timeout && t.detail.contains("h_rt") && t.detail.contains("137 (Killed)"), "{t:?}");
        assert_eq!(qacct("status-cancelled-running-qacct.txt").state, Cancelled);
        let (_, o) = capture("sge/array-done-qacct.txt");
        assert_eq!(parse_qacct(&o.stdout).len(), 3);
    }

    #[test]
    fn finished_jobs_fall_back_to_qacct_and_unknown_ids_are_errors() {
        let sge =
            connect_with(System::Sge, Replay::new(&["sge/status-failed-qstat-xml.txt", "sge/status-failed-qacct.txt"]));
        let s = sge.status("13").unwrap();
        assert_eq!((s.state, s.exit_code, s.source), (Failed, Some(3), "qacct"));
        // Deleted while pending: no accounting record, but listed as finished.
        let sge = connect_with(
            System::Sge,
            Replay::new(&[
                "sge/status-cancelled-pending-qstat-xml.txt",
                "sge/status-cancelled-pending-qacct.txt",
                "sge/status-finished-qstat-s-z.txt",
            ]),
        );
        let s = sge.status("10").unwrap();
        assert_eq!((s.state, s.source), (Unknown, "qstat -s z"));
        let sge = connect_with(
            System::Sge,
            Replay::new(&[
                "sge/status-cancelled-pending-qstat-xml.txt",
                "sge/status-unknown-qacct.txt",
                "sge/status-finished-qstat-s-z.txt",
            ]),
        );
        let e = sge.status("999999").unwrap_err().to_string();
        assert!(e.contains("knows no job `999999`"), "{e}");
    }

    #[test]
    fn rejected_submissions_show_sges_message() {
        let (_, o) = capture("sge/err-bad-queue-terse.txt");
        let sge = connect_with(System::Sge, Box::new(Always(o)));
        let e = sge.submit(Path::new("job.sh")).unwrap_err().to_string();
        assert!(e.contains("sge rejected the job") && e.contains("Unable to run job"), "{e}");
    }
}

//! Every captured status output of a real Slurm, OpenPBS and SGE
//! (`tests/data/`, see its README) parses to the state its file name says.

use std::path::{Path, PathBuf};

use tessera_jobqueue::parse::*;
use tessera_jobqueue::JobState;

struct Capture {
    file: String,
    command: String,
    stdout: String,
    status: i32,
}

fn captures(system: &str, suffix: &str) -> Vec<Capture> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(system);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {system}/*{suffix}");
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let (command, rest) = text.split_once('\n').unwrap();
            let (stdout, rest) = rest.split_once("--- stderr ---\n").unwrap();
            let status = rest.rsplit_once("--- exit ").unwrap().1.trim().parse().unwrap();
            Capture {
                file: p.file_name().unwrap().to_string_lossy().into_owned(),
                command: command.trim_start_matches("$ ").to_string(),
                stdout: stdout.to_string(),
                status,
            }
        })
        .collect()
}

/// The state a capture's name says its job was in; `None` for unknown ids.
fn expected(file: &str) -> Option<JobState> {
    let table = [
        ("status-unknown", None),
        ("array-status-pending", Some(JobState::Pending)),
        ("status-running", Some(JobState::Running)),
        ("status-pending", Some(JobState::Pending)),
        ("status-completed", Some(JobState::Completed)),
        ("status-failed", Some(JobState::Failed)),
        ("status-cancelled", Some(JobState::Cancelled)),
        ("status-timeout", Some(JobState::Timeout)),
        ("status-sbatch-wait-timeout", Some(JobState::Timeout)),
        ("array-status", Some(JobState::Running)),
        ("array-done", Some(JobState::Completed)),
    ];
    table.iter().find(|(p, _)| file.starts_with(p)).unwrap_or_else(|| panic!("no expectation for {file}")).1
}

/// The job id a command line asks about (`-j ID`, or its last word).
fn job_id(command: &str) -> String {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.iter().position(|w| *w == "-j") {
        Some(i) => words[i + 1].to_string(),
        None => words.last().unwrap().to_string(),
    }
}

#[test]
fn slurm_scontrol_sacct_and_squeue() {
    let mut n = 0;
    for c in captures("slurm", "-scontrol.txt")
        .into_iter()
        .filter(|c| c.file.starts_with("status") || c.file.starts_with("array"))
    {
        let s = status_from_scontrol(&job_id(&c.command), &parse_scontrol(&c.stdout));
        assert_eq!(s.map(|s| s.state), expected(&c.file), "{}", c.file);
        assert_eq!(c.status != 0, expected(&c.file).is_none(), "{}", c.file);
        n += 1;
    }
    for c in captures("slurm", "sacct.txt").into_iter().chain(captures("slurm", "sacct-steps.txt")) {
        if c.file.contains("elementid") {
            continue; // a plain `sacct -j 16_2` table, not the -P form
        }
        let s = status_from_sacct(&job_id(&c.command), &parse_sacct(&c.stdout));
        assert_eq!(s.map(|s| s.state), expected(&c.file), "{}", c.file);
        n += 1;
    }
    for c in captures("slurm", "-squeue-fmt.txt") {
        let states: Vec<JobState> =
            c.stdout.lines().filter_map(|l| l.split('|').nth(1)).map(|st| slurm_state(st, "").0).collect();
        match expected(&c.file) {
            None => assert!(states.is_empty() && c.status == 1, "{}", c.file),
            Some(JobState::Running) if c.file.starts_with("array") => assert!(states.contains(&JobState::Running)),
            Some(e) => assert_eq!(states.first(), Some(&e), "{}", c.file),
        }
        n += 1;
    }
    assert!(n >= 40, "{n} captures");
}

#[test]
fn pbs_qstat_json() {
    for c in captures("pbs", "-qstat-x-f-json.txt") {
        let jobs = parse_qstat_json(&c.stdout).unwrap();
        let state = jobs.first().map(|(id, j)| pbs_status(id, j).state);
        assert_eq!(state, expected(&c.file), "{}", c.file);
    }
}

#[test]
fn sge_qacct() {
    for c in captures("sge", "-qacct.txt") {
        let records = parse_qacct(&c.stdout);
        let state = match records.as_slice() {
            [] => None,
            [r] => Some(qacct_status("x", r).state),
            many => {
                let states: Vec<_> = many.iter().map(|r| qacct_status("x", r).state).collect();
                assert!(states.iter().all(|s| *s == states[0]), "{}", c.file);
                Some(states[0])
            }
        };
        let want = if c.file.starts_with("status-cancelled-pending") {
            None // deleted before it ran: no record, like an unknown id
        } else if c.file.starts_with("array-cancelled-task") {
            Some(JobState::Completed) // tasks 1 and 2 ran; the deleted task 3 has no record
        } else {
            expected(&c.file)
        };
        assert_eq!(state, want, "{}", c.file);
        assert_eq!(c.status != 0, state.is_none(), "{}", c.file);
    }
}

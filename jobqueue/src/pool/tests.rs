//! The pool against a scripted batch system and scheduler: what it
//! submits, cancels and retires, what it leaves alone, and its state file.
//! (`tests/batch.rs` runs the same on a real Slurm.)

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;
use crate::scale::plan;
use crate::{Cancelled, JobStatus, Submitted};

/// The jobs a fake batch system holds (shared with the fake scheduler) and
/// the workers the fake scheduler lists.
#[derive(Default)]
struct World {
    jobs: BTreeMap<String, JobState>,
    next: u32,
    workers: Vec<WorkerView>,
    deleted: Vec<String>,
    /// Retirements never finish (a worker stuck in a long task).
    stuck: bool,
    /// The scheduler has no tasks left (else its backlog is 7).
    idle: bool,
}

type Shared = Arc<Mutex<World>>;

struct FakeBatch(Shared);

impl BatchSystem for FakeBatch {
    fn system(&self) -> System {
        System::Slurm
    }
    fn submit(&self, script: &Path) -> Result<Submitted> {
        assert!(std::fs::read_to_string(script).unwrap().contains("tessera worker"));
        let mut w = self.0.lock().unwrap();
        w.next += 1;
        let id = (100 + w.next).to_string();
        w.jobs.insert(id.clone(), JobState::Pending);
        Ok(Submitted { job_id: id, warning: None })
    }
    fn status(&self, job_id: &str) -> Result<JobStatus> {
        let w = self.0.lock().unwrap();
        let state = *w.jobs.get(job_id).ok_or_else(|| Error::UnknownJob {
            system: System::Slurm,
            job_id: job_id.into(),
            detail: String::new(),
        })?;
        Ok(status(job_id, state))
    }
    fn delete(&self, job_id: &str) -> Result<bool> {
        let mut w = self.0.lock().unwrap();
        w.deleted.push(job_id.to_string());
        w.workers.retain(|x| x.name != job_id);
        w.jobs.insert(job_id.to_string(), JobState::Cancelled);
        Ok(true)
    }
    fn cancel(&self, job_id: &str) -> Result<Cancelled> {
        let was = self.status(job_id)?.state;
        self.delete(job_id)?;
        Ok(Cancelled { job_id: job_id.into(), was, cancelled: true })
    }
    fn list(&self, prefix: &str) -> Result<Vec<JobStatus>> {
        assert_eq!(prefix, "tessera-worker");
        let w = self.0.lock().unwrap();
        Ok(w.jobs.iter().map(|(id, s)| status(id, *s)).collect())
    }
}

fn status(id: &str, state: JobState) -> JobStatus {
    JobStatus {
        job_id: id.into(),
        system: System::Slurm,
        state,
        exit_code: None,
        detail: String::new(),
        name: Some("tessera-worker".into()),
        source: "fake",
        elements: Vec::new(),
    }
}

struct FakeLink(Shared, String);

impl SchedulerLink for FakeLink {
    fn address(&self) -> &str {
        &self.1
    }
    fn observe(&self) -> std::result::Result<ClusterView, String> {
        let w = self.0.lock().unwrap();
        Ok(ClusterView { backlog: if w.idle { 0 } else { 7 }, workers: w.workers.clone() })
    }
    fn retire(&self, names: &[String]) -> std::result::Result<(), String> {
        if self.0.lock().unwrap().stuck {
            std::thread::sleep(Duration::from_secs(3600));
        }
        let mut w = self.0.lock().unwrap();
        w.workers.retain(|x| !names.contains(&x.name));
        // The worker exits 0, so its job completes.
        for n in names {
            w.jobs.insert(n.clone(), JobState::Completed);
        }
        Ok(())
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-pool-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn open(world: &Shared, log_dir: &Path, timeout: Duration) -> Result<Pool> {
    let spec = JobSpec { job_name: "tessera-worker".into(), log_dir: log_dir.into(), ..JobSpec::default() };
    let link: Arc<dyn SchedulerLink> = Arc::new(FakeLink(world.clone(), "127.0.0.1:4000".into()));
    Pool::open(System::Slurm, Box::new(FakeBatch(world.clone())), link, spec, "tessera worker\n".into(), timeout)
}

/// Starts job `id` and has its worker join with `busy` tasks.
fn start(world: &Shared, id: &str, busy: u32) {
    let mut w = world.lock().unwrap();
    w.jobs.insert(id.into(), JobState::Running);
    w.workers.push(WorkerView { name: id.into(), busy });
}

/// Observes until `pred` holds (at most 5 s).
fn until(pool: &mut Pool, pred: impl Fn(&Pool) -> bool) {
    let t = Instant::now();
    loop {
        pool.observe().unwrap();
        if pred(pool) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "never happened; jobs: {:?}", pool.jobs());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn scales_up_then_down_pending_first_and_never_touches_other_jobs() {
    let world = Shared::default();
    let logs = dir("updown");
    // A job of the same name that this pool did not submit, with a worker.
    world.lock().unwrap().jobs.insert("42".into(), JobState::Running);
    world.lock().unwrap().workers.push(WorkerView { name: "42".into(), busy: 0 });
    let mut pool = open(&world, &logs, Duration::from_secs(60)).unwrap();
    let views = pool.observe().unwrap();
    assert!(views.is_empty(), "the other job is not the pool's");
    pool.apply(&plan(3, 1, &views), "scale 3").unwrap();
    let submitted: Vec<String> = pool.jobs().iter().map(|j| j.job_id.clone()).collect();
    assert_eq!(submitted, ["101", "102", "103"]);
    assert!(pool.jobs().iter().all(|j| j.script.starts_with(&logs) && j.script.exists()));
    // 101 and 102 start and join (101 busier); 103 stays pending.
    start(&world, "101", 5);
    start(&world, "102", 0);
    let views = pool.observe().unwrap();
    assert_eq!((pool.joined(), pool.capacity(), pool.backlog()), (2, 3, 7));
    let events = pool.take_events();
    assert_eq!(events.iter().filter(|e| matches!(e, Event::Joined { .. })).count(), 2, "{events:?}");
    // Down to 1: the pending job is cancelled, the idle worker retired.
    let p = plan(1, 1, &views);
    assert_eq!(
        (p.cancel.as_slice(), p.retire.as_slice()),
        (["103".to_string()].as_slice(), ["102".to_string()].as_slice())
    );
    pool.apply(&p, "scale 1").unwrap();
    assert_eq!(pool.capacity(), 1);
    until(&mut pool, |p| p.jobs().len() == 1);
    assert_eq!(pool.jobs()[0].job_id, "101");
    let events = pool.take_events();
    assert!(events.contains(&Event::Cancelled { job_id: "103".into(), was: JobState::Pending, why: "scale 1".into() }));
    assert!(events.iter().any(|e| matches!(e, Event::Retired { job_id, .. } if job_id == "102")), "{events:?}");
    assert!(events.iter().any(
        |e| matches!(e, Event::Ended { job_id, state: JobState::Completed, removed: true, joined: true, .. } if job_id == "102")
    ));
    // Only the pending job was cancelled; the retired one ended by itself.
    assert_eq!(world.lock().unwrap().deleted, ["103"]);
    // Down to 0: the other user's-tool job and its worker are untouched.
    let views = pool.observe().unwrap();
    pool.apply(&plan(0, 1, &views), "scale 0").unwrap();
    until(&mut pool, |p| p.jobs().is_empty());
    let w = world.lock().unwrap();
    assert_eq!(w.jobs["42"], JobState::Running);
    assert_eq!(w.workers, [WorkerView { name: "42".into(), busy: 0 }]);
    assert_eq!(w.deleted, ["103"]);
    drop(w);
    drop(pool);
    let _ = std::fs::remove_dir_all(&logs);
}

#[test]
fn a_retirement_that_does_not_end_is_cancelled_after_the_timeout() {
    let world = Shared::default();
    let logs = dir("stuck");
    let mut pool = open(&world, &logs, Duration::from_millis(300)).unwrap();
    pool.apply(&Plan { submit: 1, ..Plan::default() }, "scale 1").unwrap();
    start(&world, "101", 1);
    let views = pool.observe().unwrap();
    world.lock().unwrap().stuck = true;
    pool.apply(&plan(0, 1, &views), "scale 0").unwrap();
    pool.observe().unwrap();
    assert!(world.lock().unwrap().deleted.is_empty(), "not cancelled before the timeout");
    std::thread::sleep(Duration::from_millis(350));
    until(&mut pool, |p| p.jobs().is_empty());
    assert_eq!(world.lock().unwrap().deleted, ["101"]);
    let events = pool.take_events();
    assert!(
        events.iter().any(
            |e| matches!(e, Event::Cancelled { job_id, why, .. } if job_id == "101" && why.contains("had not ended"))
        ),
        "{events:?}"
    );
    drop(pool);
    let _ = std::fs::remove_dir_all(&logs);
}

#[test]
fn the_state_file_outlives_the_process_and_the_lock_admits_one_at_a_time() {
    let world = Shared::default();
    let logs = dir("state");
    let mut pool = open(&world, &logs, Duration::from_secs(60)).unwrap();
    pool.apply(&Plan { submit: 2, ..Plan::default() }, "scale 2").unwrap();
    let path = pool.path().to_path_buf();
    assert_eq!(path, logs.join("tessera-pool-127.0.0.1_4000.json"));
    // A second pool of the same scheduler is refused while the first holds it.
    let e = open(&world, &logs, Duration::from_secs(60)).err().expect("busy").to_string();
    assert!(
        e.contains(&format!("process {}", std::process::id())) && e.contains("another `tessera jobqueue scale`"),
        "{e}"
    );
    drop(pool);
    // The next one sees the jobs the first submitted.
    let mut pool = open(&world, &logs, Duration::from_secs(60)).unwrap();
    let views = pool.observe().unwrap();
    assert_eq!(views.iter().map(|v| v.job_id.as_str()).collect::<Vec<_>>(), ["101", "102"]);
    assert!(views.iter().all(|v| v.phase == Phase::Pending));
    drop(pool);
    // A lock left by a process that is gone is taken over.
    std::fs::write(path.with_extension("lock"), format!("999999999 {}\n", hostname())).unwrap();
    let pool = open(&world, &logs, Duration::from_secs(60)).unwrap();
    drop(pool);
    // Jobs that vanished from the batch system leave the pool.
    world.lock().unwrap().jobs.clear();
    let mut pool = open(&world, &logs, Duration::from_secs(60)).unwrap();
    assert!(pool.observe().unwrap().is_empty());
    let ended = pool.take_events();
    assert_eq!(ended.iter().filter(|e| matches!(e, Event::Ended { removed: false, joined: false, .. })).count(), 2);
    drop(pool);
    // A pool of another system's jobs is refused by name.
    std::fs::write(&path, r#"{"scheduler":"127.0.0.1:4000","system":"sge","next_seq":2,"jobs":[{"job_id":"5","seq":1,"workers":1,"submitted":0.0,"script":"/x.sh","output":null,"joined_ever":false,"running_since":null,"leaving":null}]}"#).unwrap();
    let e = open(&world, &logs, Duration::from_secs(60)).err().expect("refused").to_string();
    assert!(e.starts_with("system:") && e.contains("holds sge jobs"), "{e}");
    std::fs::write(&path, "{").unwrap();
    let e = open(&world, &logs, Duration::from_secs(60)).err().expect("refused").to_string();
    assert!(e.contains("not a pool state file"), "{e}");
    let _ = std::fs::remove_dir_all(&logs);
}

/// One round of `adapt`: a backlog of 7 tasks at 2 per worker (1 per job)
/// asks for 4 workers, capped at `max` 3: three jobs submitted.
#[test]
fn an_adapt_round_scales_up_with_a_backlog() {
    use crate::scale::{AdaptPolicy, Adapter};
    let world = Shared::default();
    let logs = dir("adapt-up");
    let mut pool = open(&world, &logs, Duration::from_secs(60)).unwrap();
    let policy = AdaptPolicy { min: 0, max: 3, tasks_per_worker: 2, ..AdaptPolicy::default() };
    let mut adapter = Adapter::new(policy, pool.per_job()).unwrap();
    let r = adapt::round(&mut pool, &mut adapter, Duration::from_secs(1000)).unwrap();
    assert_eq!((r.step.capacity, r.step.desired, r.step.target, r.step.plan.submit), (0, 3, 3, 3), "{r:?}");
    let submitted = r.events.iter().filter(|e| matches!(e, Event::Submitted { .. })).count();
    assert_eq!(submitted, 3, "{:?}", r.events);
    assert_eq!(world.lock().unwrap().jobs.len(), 3);
    assert_eq!(pool.capacity(), 3);
    let _ = std::fs::remove_dir_all(&logs);
}

/// When the scheduler has nothing left to do, the round after `down_after`
/// retires the idle workers (a running job's worker is asked to leave, it
/// is not cancelled) and [`adapt::drain`] sees its job end.
#[test]
fn an_adapt_round_scales_down_when_idle_and_drain_waits_for_the_job() {
    use crate::scale::{AdaptPolicy, Adapter};
    let world = Shared::default();
    let logs = dir("adapt-down");
    let mut pool = open(&world, &logs, Duration::from_secs(60)).unwrap();
    let policy = AdaptPolicy {
        min: 0,
        max: 2,
        tasks_per_worker: 4,
        down_after: Duration::from_secs(10),
        cooldown: Duration::ZERO,
        ..AdaptPolicy::default()
    };
    let mut adapter = Adapter::new(policy, pool.per_job()).unwrap();
    let up = adapt::round(&mut pool, &mut adapter, Duration::from_secs(1000)).unwrap();
    assert_eq!(up.step.plan.submit, 2, "{up:?}");
    let ids: Vec<String> = world.lock().unwrap().jobs.keys().cloned().collect();
    for id in &ids {
        start(&world, id, 0);
    }
    world.lock().unwrap().idle = true;
    let mut t = 1001;
    let down = loop {
        let r = adapt::round(&mut pool, &mut adapter, Duration::from_secs(t)).unwrap();
        if !r.step.plan.is_empty() {
            break r;
        }
        assert!(t < 1100, "never scaled down: {r:?}");
        t += 1;
    };
    assert!(t >= 1010, "scaled down before down_after: {down:?}");
    assert_eq!((down.step.target, down.step.plan.retire.len()), (0, 2), "{down:?}");
    assert!(down.step.plan.cancel.is_empty(), "{down:?}");
    let mut seen = down.events.clone();
    adapt::drain(&mut pool, Duration::from_secs(5), Duration::from_millis(10), |e| seen.push(e)).unwrap();
    assert!(pool.leaving().is_empty(), "{:?}", pool.jobs());
    for id in &ids {
        let ended =
            seen.iter().any(|e| matches!(e, Event::Ended { job_id, joined: true, removed: true, .. } if job_id == id));
        assert!(ended, "job {id} did not end: {seen:?}");
    }
    assert!(world.lock().unwrap().deleted.is_empty(), "a retired job was cancelled");
    let _ = std::fs::remove_dir_all(&logs);
}

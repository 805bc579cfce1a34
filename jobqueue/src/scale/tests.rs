//! The policy on scripted sequences of observations: what it submits,
//! cancels and retires, and what it never does (flap, leave the bounds,
//! retire a worker while a pending job could go instead).

use super::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn job(id: &str, phase: Phase, joined: u32, busy: u32, seq: u64) -> JobView {
    JobView {
        job_id: id.into(),
        phase,
        workers: 1,
        joined,
        joined_ever: joined > 0,
        busy,
        running_since: (phase == Phase::Running).then_some(Duration::ZERO),
        seq,
    }
}

#[test]
fn plan_counts_pending_jobs_as_coming_and_submits_only_the_rest() {
    let jobs = vec![job("1", Phase::Running, 1, 0, 1), job("2", Phase::Pending, 0, 0, 2)];
    assert_eq!(plan(2, 1, &jobs), Plan::default());
    assert_eq!(plan(5, 1, &jobs).submit, 3);
    // Jobs of 2 workers: 3 missing workers take 2 jobs.
    assert_eq!(plan(5, 2, &jobs).submit, 2);
    // A job being retired, or whose workers all left, is no capacity.
    let leaving = vec![job("1", Phase::Leaving, 1, 0, 1), JobView { joined: 0, ..job("2", Phase::Running, 1, 0, 2) }];
    assert_eq!(capacity(&leaving), 0);
    assert_eq!(plan(1, 1, &leaving).submit, 1);
}

#[test]
fn plan_cancels_pending_jobs_first_then_unjoined_then_retires_the_least_busy() {
    let jobs = vec![
        job("busy", Phase::Running, 1, 9, 1),
        job("idle", Phase::Running, 1, 0, 2),
        job("starting", Phase::Running, 0, 0, 3),
        job("old-pending", Phase::Pending, 0, 0, 4),
        job("new-pending", Phase::Pending, 0, 0, 5),
    ];
    // One fewer: the newest pending job.
    assert_eq!(plan(4, 1, &jobs), Plan { cancel: vec!["new-pending".into()], ..Plan::default() });
    // Two fewer: both pending, newest first.
    assert_eq!(plan(3, 1, &jobs).cancel, ["new-pending", "old-pending"]);
    assert!(plan(3, 1, &jobs).retire.is_empty());
    // Three fewer: then the running job none of whose workers joined.
    assert_eq!(plan(2, 1, &jobs).cancel, ["new-pending", "old-pending", "starting"]);
    // Four fewer: then the idle worker is retired, never the busy one.
    let p = plan(1, 1, &jobs);
    assert_eq!((p.cancel.len(), p.retire.as_slice()), (3, ["idle".to_string()].as_slice()));
    // All.
    let p = plan(0, 1, &jobs);
    assert_eq!((p.cancel.len(), p.retire.as_slice()), (3, ["idle".to_string(), "busy".to_string()].as_slice()));
}

#[test]
fn plan_never_goes_below_the_target_with_jobs_of_several_workers() {
    let big = |id: &str, phase, seq| JobView {
        workers: 4,
        ..job(id, phase, if phase == Phase::Running { 4 } else { 0 }, 0, seq)
    };
    let jobs = vec![big("a", Phase::Running, 1), big("b", Phase::Running, 2), big("c", Phase::Pending, 3)];
    // 12 workers, target 6: removing the pending job (4) leaves 8; another would leave 4 < 6.
    assert_eq!(plan(6, 4, &jobs), Plan { cancel: vec!["c".into()], ..Plan::default() });
    // Target 4: the pending job and one running job.
    assert_eq!(plan(4, 4, &jobs), Plan { cancel: vec!["c".into()], retire: vec!["b".into()], submit: 0 });
}

/// A small batch system: submitted jobs pend for `start_after` steps, then
/// run and their worker joins the next step; cancelled and retired jobs are
/// gone the step after.
struct Sim {
    jobs: Vec<(JobView, u32)>,
    next: u64,
    start_after: u32,
}

impl Sim {
    fn new(start_after: u32) -> Sim {
        Sim { jobs: Vec::new(), next: 0, start_after }
    }

    fn view(&self) -> Vec<JobView> {
        self.jobs.iter().map(|(j, _)| j.clone()).collect()
    }

    fn tick(&mut self, now: Duration) {
        self.jobs.retain(|(j, _)| j.phase != Phase::Leaving);
        for (j, age) in &mut self.jobs {
            *age += 1;
            if j.phase == Phase::Running && j.joined == 0 {
                j.joined = 1;
                j.joined_ever = true;
            }
            if j.phase == Phase::Pending && *age > self.start_after {
                j.phase = Phase::Running;
                j.running_since = Some(now);
            }
        }
    }

    fn apply(&mut self, p: &Plan) {
        for id in p.cancel.iter().chain(&p.retire) {
            let j = &mut self.jobs.iter_mut().find(|(j, _)| &j.job_id == id).expect("a job of the pool").0;
            assert_ne!(j.phase, Phase::Leaving, "job {id} removed twice");
            j.phase = Phase::Leaving;
        }
        for _ in 0..p.submit {
            self.next += 1;
            let j = JobView { job_id: self.next.to_string(), seq: self.next, ..JobView::default() };
            self.jobs.push((j, 0));
        }
    }
}

/// Runs `backlog` (one value per 5 s step) through the adapter; returns the
/// steps and checks the invariants every step.
fn run(policy: AdaptPolicy, start_after: u32, backlog: &[u64]) -> Vec<Step> {
    let (min, max) = (policy.min, policy.max);
    let mut a = Adapter::new(policy, 1).unwrap();
    let mut sim = Sim::new(start_after);
    let mut steps = Vec::new();
    for (i, &b) in backlog.iter().enumerate() {
        let now = secs(5 * i as u64);
        sim.tick(now);
        let jobs = sim.view();
        let pending_before: Vec<String> =
            jobs.iter().filter(|j| j.phase == Phase::Pending).map(|j| j.job_id.clone()).collect();
        let s = a.step(&Observation { now, backlog: b, jobs });
        assert!(s.target >= min && s.target <= max, "step {i}: target {} outside [{min}, {max}]", s.target);
        assert!(s.plan.submit == 0 || (s.plan.cancel.is_empty() && s.plan.retire.is_empty()), "step {i}: {s:?}");
        if !s.plan.retire.is_empty() {
            assert!(
                pending_before.iter().all(|p| s.plan.cancel.contains(p)),
                "step {i}: retired workers while jobs {pending_before:?} were pending: {s:?}"
            );
        }
        sim.apply(&s.plan);
        assert!(sim.view().iter().filter(|j| j.is_capacity()).count() as u32 <= max, "step {i}: above max");
        steps.push(s);
    }
    steps
}

fn direction(s: &Step) -> i32 {
    if s.plan.submit > 0 {
        1
    } else if !s.plan.cancel.is_empty() || !s.plan.retire.is_empty() {
        -1
    } else {
        0
    }
}

#[test]
fn scales_up_at_once_and_never_resubmits_for_jobs_that_wait_in_the_queue() {
    let policy = AdaptPolicy { min: 1, max: 8, tasks_per_worker: 10, ..AdaptPolicy::default() };
    // 200 queued tasks for a minute; the jobs pend for 6 steps (30 s) before starting.
    let steps = run(policy, 6, &[200; 12]);
    assert_eq!(steps[0].plan.submit, 8, "{:?}", steps[0]);
    assert!(steps[1..].iter().all(|s| s.plan.is_empty()), "{steps:#?}");
}

#[test]
fn a_backlog_that_comes_and_goes_does_not_make_it_flap() {
    let policy = AdaptPolicy { min: 0, max: 6, tasks_per_worker: 10, ..AdaptPolicy::default() };
    // High and low every 10 to 20 s for 10 minutes: shorter than down_after (30 s).
    let backlog: Vec<u64> = (0..120)
        .map(|i| {
            if (i / 3) % 2 == 0 {
                60
            } else {
                if i % 2 == 0 {
                    0
                } else {
                    5
                }
            }
        })
        .collect();
    let steps = run(policy, 1, &backlog);
    let moves: Vec<i32> = steps.iter().map(direction).filter(|&d| d != 0).collect();
    assert_eq!(moves, [1], "one scale-up, then the pool holds: {moves:?}");
}

#[test]
fn scales_down_after_the_backlog_stays_low_cancelling_pending_jobs_first() {
    let policy = AdaptPolicy {
        min: 1,
        max: 4,
        tasks_per_worker: 10,
        down_after: secs(30),
        cooldown: secs(60),
        ..AdaptPolicy::default()
    };
    // 40 tasks at first: 4 jobs. They pend for a long time (20 steps); the
    // backlog is gone after 10 s.
    let mut backlog = vec![40, 40];
    backlog.extend([0; 40]);
    let steps = run(policy, 20, &backlog);
    assert_eq!(steps[0].plan.submit, 4);
    let down: Vec<(usize, &Step)> = steps.iter().enumerate().filter(|(_, s)| direction(s) == -1).collect();
    assert_eq!(down.len(), 1, "{down:#?}");
    let (at, s) = down[0];
    // Not before the cool-down after the scale-up (60 s = 12 steps) has passed.
    assert_eq!(at, 12, "{s:?}");
    // Down to min = 1: three jobs go, all pending (newest first), none retired.
    assert_eq!(s.plan.cancel, ["4", "3", "2"]);
    assert!(s.plan.retire.is_empty() && s.target == 1);
}

#[test]
fn scales_down_to_the_highest_target_of_the_quiet_window() {
    let policy = AdaptPolicy {
        min: 0,
        max: 10,
        tasks_per_worker: 10,
        down_after: secs(30),
        cooldown: secs(0),
        ..AdaptPolicy::default()
    };
    // 100 tasks: 10 workers. Then 10, 30, 20, 10, ... tasks: never more than 3 workers wanted.
    let mut backlog = vec![100, 100, 100];
    backlog.extend([10, 30, 20, 10, 10, 10, 10, 10, 10, 10]);
    let steps = run(policy, 0, &backlog);
    let down: Vec<&Step> = steps.iter().filter(|s| direction(s) == -1).collect();
    assert_eq!(down.len(), 1, "{steps:#?}");
    assert_eq!(down[0].target, 3, "{:?}", down[0]);
    assert_eq!(down[0].plan.retire.len(), 7);
}

#[test]
fn never_leaves_min_and_max_on_random_backlogs() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..50 {
        let mut backlog = Vec::new();
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Bursts: mostly quiet, sometimes large.
            let burst = x % 7;
            backlog.push(if burst == 0 { x % 500 } else { x % 15 });
        }
        let min = (round % 3) as u32;
        let max = min + 1 + (round % 5) as u32;
        let policy = AdaptPolicy {
            min,
            max,
            tasks_per_worker: 8,
            down_after: secs(20),
            cooldown: secs(40),
            ..AdaptPolicy::default()
        };
        let steps = run(policy, (round % 4) as u32, &backlog);
        // No scale-down within the cool-down of a scale-up.
        let mut last_up = None;
        for (i, s) in steps.iter().enumerate() {
            match direction(s) {
                1 => last_up = Some(i),
                -1 => assert!(last_up.is_none_or(|u| i - u >= 8), "round {round}: down at step {i}, up at {last_up:?}"),
                _ => {}
            }
        }
    }
}

#[test]
fn jobs_that_never_bring_a_worker_are_cancelled_and_it_gives_up_after_three() {
    let policy = AdaptPolicy { min: 1, max: 2, wait_ready: secs(60), ..AdaptPolicy::default() };
    let mut a = Adapter::new(policy, 1).unwrap();
    let stuck = JobView { running_since: Some(secs(10)), ..job("7", Phase::Running, 0, 0, 1) };
    let obs = |now, jobs: Vec<JobView>| Observation { now: secs(now), backlog: 0, jobs };
    // Running 50 s without joining: still capacity, waited for.
    assert!(a.step(&obs(60, vec![stuck.clone()])).plan.is_empty());
    // 60 s: broken, cancelled, and replaced (min 1).
    let s = a.step(&obs(70, vec![stuck.clone()]));
    assert_eq!(
        (s.broken.as_slice(), s.plan.cancel.as_slice(), s.plan.submit),
        (["7".to_string()].as_slice(), ["7".to_string()].as_slice(), 1)
    );
    a.job_ended("7", false).unwrap();
    a.job_ended("8", false).unwrap();
    let e = a.job_ended("9", false).unwrap_err().to_string();
    assert!(e.contains("3 worker job(s) in a row") && e.contains("7, 8, 9"), "{e}");
    // A job whose worker joined resets the count.
    let mut a = Adapter::new(AdaptPolicy { max: 2, ..AdaptPolicy::default() }, 1).unwrap();
    a.job_ended("1", false).unwrap();
    a.job_ended("2", false).unwrap();
    a.job_ended("3", true).unwrap();
    a.job_ended("4", false).unwrap();
}

#[test]
fn bounds_are_checked_with_the_flag_named() {
    let bad = |min, max, per_job| check_bounds(min, max, per_job).unwrap_err().to_string();
    assert!(bad(0, 0, 1).starts_with("max:"), "{}", bad(0, 0, 1));
    assert!(bad(3, 2, 1).starts_with("min:") && bad(3, 2, 1).contains("--max 2"));
    // Jobs of 4 workers: --max 3 fits none.
    assert!(bad(0, 3, 4).contains("each job starts 4 workers"), "{}", bad(0, 3, 4));
    // --min 5 needs 2 jobs (8 workers) > --max 6.
    assert!(bad(5, 6, 4).contains("no whole number of jobs"));
    check_bounds(4, 8, 4).unwrap();
    let e = Adapter::new(AdaptPolicy { max: 2, tasks_per_worker: 0, ..AdaptPolicy::default() }, 1).unwrap_err();
    assert!(e.to_string().starts_with("tasks_per_worker:"), "{e}");
}

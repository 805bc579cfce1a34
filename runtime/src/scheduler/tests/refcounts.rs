//! Reference counts: blocks released when nothing needs them, tasks cancelled.

use super::*;

#[test]
fn an_intermediate_is_released_after_its_last_dependent() {
    let mut s = elastic(&[(1, 1)]);
    let (_, d) = s.submit(vec![root("a"), node("b", &["a"]), node("c", &["a"])], &["b", "c"]);
    let (a, b, c) = (s.id("a"), s.id("b"), s.id("c"));
    assert_eq!(sorted(runs(&d, 1)), sorted(vec![a, b, c]));
    assert!(!any_release(&s.done(a, 8)));
    assert!(!any_release(&s.done(b, 8)), "c still needs a");
    let d = s.done(c, 8);
    assert_eq!(released(&d, 1), vec![a]);
    // Its block is gone; its record stays while b and c name it (lineage).
    assert!(matches!(s.core.tasks[&a].state, State::Released));
    assert_eq!(s.core.mem_bytes, 16);
    let ids = [s.id("b"), s.id("c")];
    s.release(&ids[..1]);
    assert!(s.has("a"), "c still names a");
    s.release(&ids[1..]);
    assert!(s.core.tasks.is_empty(), "nothing names a any more");
    assert_eq!(s.core.mem_bytes, 0);
}

#[test]
fn a_long_lineage_goes_when_its_output_is_released() {
    // A chain far deeper than any stack would take recursively.
    let mut s = elastic(&[(1, 1)]);
    let n = 200_000;
    let mut tasks = vec![root("c0")];
    let names = names("c", n);
    for i in 1..n {
        tasks.push(node(&names[i], &[&names[i - 1]]));
    }
    let (out, d) = s.submit(tasks, &[&names[n - 1]]);
    s.run_all(d, 8);
    assert_eq!(s.core.tasks.len(), n, "the lineage is on record");
    assert_eq!(s.core.mem_bytes, 8, "one block held: the output's");
    s.release(&out);
    assert!(s.core.tasks.is_empty());
}

#[test]
fn without_elastic_workers_no_lineage_is_kept() {
    // Under MPI a lost rank ends the job: records go once computed and unneeded.
    let mut s = cluster(&[(1, 1)]);
    let (out, d) = s.submit(vec![root("a"), node("b", &["a"])], &["b"]);
    s.run_all(d, 8);
    assert!(!s.has("a"));
    s.release(&out);
    assert!(s.core.tasks.is_empty());
}

#[test]
fn releasing_an_output_releases_its_block() {
    let mut s = cluster(&[(1, 1)]);
    let (ids, _) = s.submit(vec![root("a")], &["a"]);
    s.done(ids[0], 8);
    let d = s.release(&ids);
    assert_eq!(released(&d, 1), ids);
    assert!(s.core.tasks.is_empty());
    assert_eq!(s.core.mem_bytes, 0);
}

#[test]
fn a_replicated_block_is_released_everywhere() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (ids, _) = s.submit(vec![root("a")], &["a"]);
    s.done(ids[0], 8);
    s.step(Event::Replica { rank: 2, id: ids[0] });
    let d = s.release(&ids);
    assert_eq!(released(&d, 1), ids);
    assert_eq!(released(&d, 2), ids);
}

#[test]
fn releasing_an_output_still_needed_releases_nothing_yet() {
    let mut s = cluster(&[(1, 1)]);
    let (ids, d) = s.submit(vec![root("a"), node("b", &["a"])], &["a", "b"]);
    let (a, b) = (ids[0], ids[1]);
    assert_eq!(runs(&d, 1), vec![a, b]);
    s.done(a, 8);
    let d = s.release(&[a]);
    assert!(!any_release(&d), "b still needs a: {d:?}");
    let d = s.done(b, 8);
    assert_eq!(released(&d, 1), vec![a]);
}

#[test]
fn an_unneeded_queued_task_is_dropped() {
    let mut s = cluster(&[(1, 1)]);
    let (ids, d) = s.submit(vec![root("r0"), root("r1")], &["r0", "r1"]);
    assert_eq!(runs(&d, 1), vec![ids[0]]);
    let d = s.release(&[ids[1]]);
    assert!(d.is_empty(), "a queued task is dropped silently: {d:?}");
    assert!(!s.has("r1"));
    assert!(s.core.unbound.is_empty());
    assert_eq!(s.core.queued, 0);
    let d = s.done(ids[0], 8);
    assert!(all_runs(&d).is_empty(), "r1 is never run");
}

#[test]
fn an_unneeded_running_task_is_released_when_done() {
    let mut s = cluster(&[(1, 1)]);
    let (ids, d) = s.submit(vec![root("a")], &["a"]);
    assert_eq!(runs(&d, 1), ids);
    let d = s.release(&ids);
    assert!(d.is_empty(), "it runs on: {d:?}");
    assert!(matches!(s.core.tasks[&ids[0]].state, State::Cancelled(0)));
    let d = s.done(ids[0], 8);
    assert_eq!(released(&d, 1), ids);
    assert!(s.core.tasks.is_empty());
    assert_eq!(s.core.mem_bytes, 0);
}

#[test]
fn a_released_task_whose_dependents_are_gone_frees_its_input() {
    let mut s = cluster(&[(1, 1)]);
    let (ids, _) = s.submit(vec![root("a"), node("b", &["a"])], &["b"]);
    let a = s.id("a");
    s.done(a, 8);
    // b is running (sent ahead); nobody wants it any more.
    s.release(&ids);
    let d = s.done(ids[0], 8);
    assert_eq!(sorted(released(&d, 1)), sorted(vec![a, ids[0]]));
    assert!(s.core.tasks.is_empty());
}

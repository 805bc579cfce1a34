//! Submission: validation, culling, priorities, reuse by key, waits.

use super::*;

/// A cluster holding `held` (computed on rank 1) before an invalid submission.
fn with_one_output() -> Sim {
    let mut s = cluster(&[(1, 1)]);
    let (ids, _) = s.submit(vec![root("held")], &["held"]);
    s.done(ids[0], 8);
    s
}

fn assert_refused(s: &mut Sim, tasks: Vec<Task>, outputs: &[&str]) -> Error {
    let before = s.core.tasks.len();
    let keys = s.core.keys.len();
    let (r, d) = s.try_submit(tasks, outputs);
    assert!(d.is_empty(), "nothing but the reply: {d:?}");
    assert_eq!(s.core.tasks.len(), before, "nothing added");
    assert_eq!(s.core.keys.len(), keys);
    r.expect_err("the graph is refused")
}

#[test]
fn duplicate_key_is_refused() {
    let mut s = with_one_output();
    let e = assert_refused(&mut s, vec![root("x"), node("x", &["held"]), node("y", &["x"])], &["y"]);
    assert!(matches!(e, Error::DuplicateKey { key } if key == k("x")));
}

#[test]
fn unknown_kernel_is_refused() {
    let mut s = with_one_output();
    let e = assert_refused(&mut s, vec![root("x"), Task::new(k("y"), "nope").inputs([k("x")])], &["y"]);
    match e {
        Error::UnknownKernel { key, kernel, known } => {
            assert_eq!((key, kernel.as_str()), (k("y"), "nope"));
            assert!(known.contains("sum"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_input_is_refused() {
    let mut s = with_one_output();
    let e = assert_refused(&mut s, vec![root("x"), node("y", &["x", "ghost"])], &["y"]);
    assert!(matches!(e, Error::MissingInput { key, input } if key == k("y") && input == k("ghost")));
}

#[test]
fn a_cycle_is_refused_naming_its_path() {
    let mut s = with_one_output();
    let e = assert_refused(&mut s, vec![node("a", &["c"]), node("b", &["a"]), node("c", &["b", "held"])], &["c"]);
    match e {
        Error::Cycle { path, .. } => assert_eq!(path, "c[0] -> b[0] -> a[0] -> c[0]"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_output_is_refused() {
    let mut s = with_one_output();
    let e = assert_refused(&mut s, vec![root("x")], &["x", "nowhere"]);
    assert!(matches!(e, Error::UnknownOutput { key } if key == k("nowhere")));
}

#[test]
fn tasks_not_needed_for_the_outputs_are_culled() {
    let mut s = cluster(&[(1, 4)]);
    let tasks = vec![root("a"), root("unused"), node("b", &["a"]), node("dead", &["unused"])];
    let (_, d) = s.submit(tasks, &["b"]);
    assert_eq!(s.core.tasks.len(), 2);
    assert!(!s.has("unused") && !s.has("dead"));
    let all = s.run_all(d, 8);
    assert_eq!(all.len(), 2);
}

#[test]
fn a_reduction_tree_runs_depth_first() {
    let mut s = cluster(&[(1, 1)]);
    let tasks = vec![
        root("l0"),
        root("l1"),
        root("l2"),
        root("l3"),
        node("p0", &["l0", "l1"]),
        node("p1", &["l2", "l3"]),
        node("top", &["p0", "p1"]),
    ];
    let (_, d) = s.submit(tasks, &["top"]);
    let expected: Vec<TaskId> = ["l0", "l1", "p0", "l2", "l3", "p1", "top"].iter().map(|n| s.id(n)).collect();
    let order: Vec<TaskId> = s.run_all(d, 8).into_iter().map(|(_, id)| id).collect();
    assert_eq!(order, expected);
}

#[test]
fn earlier_submissions_go_first() {
    let mut s = cluster(&[(1, 1)]);
    let (ids1, d) = s.submit(vec![root("a0"), root("a1")], &["a0", "a1"]);
    assert_eq!(runs(&d, 1), vec![ids1[0]]);
    let (ids2, d) = s.submit(vec![root("b0")], &["b0"]);
    assert!(all_runs(&d).is_empty());
    let d = s.done(ids1[0], 8);
    assert_eq!(runs(&d, 1), vec![ids1[1]]);
    let d = s.done(ids1[1], 8);
    assert_eq!(runs(&d, 1), ids2);
}

#[test]
fn a_later_graph_uses_an_earlier_output_by_key() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (a, _) = s.submit(vec![root("a").on_rank(2)], &["a"]);
    s.done(a[0], 64);
    let (b, d) = s.submit(vec![node("b", &["a"])], &["b"]);
    assert_eq!(s.core.tasks.len(), 2, "a is not recomputed");
    let Some(Decision::Run { rank: 2, tasks }) = d.iter().find(|x| matches!(x, Decision::Run { .. })) else {
        panic!("b goes where a is: {d:?}")
    };
    assert_eq!(tasks[0].id, b[0]);
    assert_eq!(tasks[0].inputs[0].id, a[0]);
    assert_eq!(tasks[0].inputs[0].holders[..], [2]);
    assert_eq!(tasks[0].inputs[0].nbytes, 64);
}

#[test]
fn a_later_graph_naming_an_existing_key_reuses_it() {
    let mut s = cluster(&[(1, 1)]);
    let (a, _) = s.submit(vec![root("a")], &["a"]);
    s.done(a[0], 8);
    let (again, d) = s.submit(vec![root("a")], &["a"]);
    assert_eq!(again, a);
    assert!(all_runs(&d).is_empty());
}

#[test]
fn wait_answers_at_once_for_computed_tasks() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (ids, _) = s.submit(vec![root("a"), root("b")], &["a", "b"]);
    s.done(ids[0], 8);
    s.done(ids[1], 8);
    s.step(Event::Replica { rank: 1, id: ids[1] });
    let (to, d) = s.wait(&ids);
    assert_eq!(wait_reply(&d, to).unwrap().as_ref().unwrap(), &vec![vec![1], vec![2, 1]]);
}

#[test]
fn wait_answers_once_pending_tasks_are_computed() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (ids, _) = s.submit(vec![root("a"), root("b")], &["a", "b"]);
    s.done(ids[0], 8);
    let (to, d) = s.wait(&ids);
    assert!(reply(&d, to).is_none(), "b is pending");
    let d = s.done(ids[1], 8);
    assert_eq!(wait_reply(&d, to).unwrap().as_ref().unwrap(), &vec![vec![1], vec![2]]);
}

#[test]
fn wait_on_a_released_task_is_an_error() {
    let mut s = cluster(&[(1, 1)]);
    let (ids, _) = s.submit(vec![root("a")], &["a"]);
    s.done(ids[0], 8);
    s.release(&ids);
    let (to, d) = s.wait(&ids);
    assert!(matches!(wait_reply(&d, to), Some(Err(Error::Lost { .. }))));
}

#[test]
fn wait_on_a_task_released_while_running_is_answered() {
    let mut s = cluster(&[(1, 1)]);
    let (ids, _) = s.submit(vec![root("a")], &["a"]);
    let (to, _) = s.wait(&ids);
    let mut d = s.release(&ids);
    d.extend(s.done(ids[0], 8));
    assert!(matches!(wait_reply(&d, to), Some(Err(Error::Lost { .. }))), "{d:?}");
}

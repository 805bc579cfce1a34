//! Membership: joining, draining, handing blocks off, retiring.

use super::*;

#[test]
fn a_worker_joining_later_gets_tasks() {
    let mut s = elastic(&[(1, 1)]);
    let rs = names("r", 3);
    let (_, d) = s.submit(rs.iter().map(|n| root(n)).collect(), &strs(&rs));
    assert_eq!(runs(&d, 1).len(), 1);
    let hello = s.hello(2, 1, "");
    let d = s.step(Event::Hello(hello));
    assert_eq!(runs(&d, 2).len(), 1);
    assert_eq!(s.core.worker_infos().iter().map(|w| w.rank).collect::<Vec<_>>(), vec![1, 2]);
}

#[test]
fn a_registry_mismatch_is_refused() {
    let mut s = elastic(&[(1, 1)]);
    let mut hello = s.hello(3, 4, "");
    hello.registry ^= 1;
    let d = s.step(Event::Hello(hello));
    assert_eq!(stops(&d), vec![(3, true)]);
    assert_eq!(s.core.workers.len(), 1);
    assert!(s.core.worker_infos().iter().all(|w| w.rank != 3));
    let (_, d) = s.submit(vec![root("a"), root("b")], &["a", "b"]);
    assert!(runs(&d, 3).is_empty());
}

#[test]
fn a_hello_after_start_up_is_ignored_when_not_elastic() {
    let mut s = cluster(&[(1, 1)]);
    let hello = s.hello(2, 1, "");
    let d = s.step(Event::Hello(hello));
    assert!(d.is_empty());
    assert_eq!(s.core.workers.len(), 1);
}

#[test]
fn a_draining_worker_gets_no_new_task_and_its_queue_moves() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (a, _) = s.submit(vec![root("a")], &["a"]);
    s.done(a[0], 8);
    // s keeps rank 2 busy, so it cannot steal what queues on rank 1.
    let (sl, d) = s.submit(vec![Task::new(k("s"), "sleep").param(&1u64).on_rank(2)], &["s"]);
    assert_eq!(runs(&d, 2), sl);
    let (bs, d) = backlog_on_a(&mut s, 3);
    assert_eq!(runs(&d, 1), vec![bs[0]]);
    assert_eq!(s.core.workers[0].queue.len(), 2);
    let d = s.step(Event::Drain { rank: 1 });
    assert!(all_runs(&d).is_empty(), "{d:?}");
    assert!(stops(&d).is_empty(), "b0 still runs there");
    assert!(s.core.workers[0].queue.is_empty());
    assert!(matches!(s.core.tasks[&bs[1]].state, State::Queued(None)));
    assert!(s.core.worker_infos().iter().all(|w| w.rank != 1));
    let d = s.done(sl[0], 8);
    assert_eq!(runs(&d, 2), vec![bs[1]]);
    let d = s.done(bs[0], 8);
    assert!(runs(&d, 1).is_empty(), "b2 is not given to the draining worker");
}

/// Submits `n` tasks reading the existing output `a`.
fn backlog_on_a(s: &mut Sim, n: usize) -> (Vec<TaskId>, Vec<Decision>) {
    let bs = names("b", n);
    s.submit(bs.iter().map(|b| node(b, &["a"])).collect(), &strs(&bs))
}

#[test]
fn a_draining_worker_hands_its_blocks_off_then_stops() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (ids, _) = s.submit(vec![root("a"), root("b")], &["a", "b"]);
    s.done(ids[0], 8);
    s.done(ids[1], 8);
    // Rank 1 holds a alone; b is on rank 2.
    let d = s.step(Event::Drain { rank: 1 });
    let acquires: Vec<_> = d
        .iter()
        .filter_map(|x| match x {
            Decision::Acquire { rank, blocks } => Some((*rank, blocks)),
            _ => None,
        })
        .collect();
    assert_eq!(acquires.len(), 1, "{d:?}");
    assert_eq!(acquires[0].0, 2);
    assert_eq!(acquires[0].1.len(), 1);
    assert_eq!((acquires[0].1[0].id, &acquires[0].1[0].holders[..], acquires[0].1[0].nbytes), (ids[0], &[1][..], 8));
    assert!(stops(&d).is_empty(), "not before the copy exists");
    let d = s.step(Event::Replica { rank: 2, id: ids[0] });
    assert_eq!(stops(&d), vec![(1, false)]);
    s.step(Event::Bye { rank: 1 });
    let (to, d) = s.wait(&ids);
    assert_eq!(wait_reply(&d, to).unwrap().as_ref().unwrap(), &vec![vec![2], vec![2]]);
}

#[test]
fn a_draining_worker_waits_for_its_running_tasks() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (ids, d) = s.submit(vec![root("a")], &["a"]);
    assert_eq!(runs(&d, 1), ids);
    let d = s.step(Event::Drain { rank: 1 });
    assert!(stops(&d).is_empty());
    let d = s.done(ids[0], 8);
    assert!(d.iter().any(|x| matches!(x, Decision::Acquire { rank: 2, .. })), "{d:?}");
    let d = s.step(Event::Replica { rank: 2, id: ids[0] });
    assert_eq!(stops(&d), vec![(1, false)]);
}

#[test]
fn a_draining_worker_whose_last_task_was_released_stops() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (ids, d) = s.submit(vec![root("a")], &["a"]);
    assert_eq!(runs(&d, 1), ids);
    s.step(Event::Drain { rank: 1 });
    s.release(&ids);
    let d = s.done(ids[0], 8);
    assert_eq!(released(&d, 1), ids);
    assert_eq!(stops(&d), vec![(1, false)], "it runs nothing and holds nothing: {d:?}");
}

#[test]
fn retire_is_answered_once_the_worker_left() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (to, d) = s.request(WireRequest::Retire { ranks: vec![2] });
    assert_eq!(stops(&d), vec![(2, false)], "it holds nothing: stopped at once");
    assert!(reply(&d, to).is_none());
    let d = s.step(Event::Bye { rank: 2 });
    assert!(matches!(reply(&d, to), Some(WireReply::Retire(Ok(r))) if r == &vec![2]), "{d:?}");
    assert_eq!(s.core.live_ranks().into_iter().collect::<Vec<_>>(), vec![1]);
}

#[test]
fn retiring_an_unknown_rank_is_an_error() {
    let mut s = elastic(&[(1, 1)]);
    let (to, d) = s.request(WireRequest::Retire { ranks: vec![1, 9] });
    assert!(matches!(reply(&d, to), Some(WireReply::Retire(Err(Error::UnknownWorker { rank: 9 })))), "{d:?}");
    assert!(stops(&d).is_empty(), "rank 1 is not retired either");
    assert!(!s.core.workers[0].draining);
}

#[test]
fn the_workers_answer_lists_open_workers() {
    let mut s = elastic(&[(2, 3), (1, 1)]);
    let (to, d) = s.request(WireRequest::Workers);
    let Some(WireReply::Workers(infos)) = reply(&d, to) else { panic!("{d:?}") };
    assert_eq!(infos.iter().map(|w| (w.rank, w.threads)).collect::<Vec<_>>(), vec![(1, 1), (2, 3)]);
}

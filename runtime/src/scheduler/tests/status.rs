//! The cluster state and event collection.

use super::*;

#[test]
fn the_state_counts_tasks_blocks_and_bytes() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (ids, _) = s.submit(vec![root("a"), root("b"), root("c")], &["a", "b", "c"]);
    let (to, d) = s.request(WireRequest::State);
    let Some(WireReply::State(st)) = reply(&d, to) else { panic!("{d:?}") };
    assert_eq!((st.tasks, st.in_memory, st.bytes, st.queued), (3, 0, 0, 1), "c waits for a thread");
    assert_eq!(st.in_flight, vec![(1, 1), (2, 1)]);
    s.done(ids[0], 100);
    s.done(ids[1], 300);
    let (to, d) = s.request(WireRequest::State);
    let Some(WireReply::State(st)) = reply(&d, to) else { panic!("{d:?}") };
    assert_eq!((st.tasks, st.in_memory, st.bytes, st.peak_bytes, st.completed), (3, 2, 400, 400, 2));
    s.release(&ids[..1]);
    let (to, d) = s.request(WireRequest::State);
    let Some(WireReply::State(st)) = reply(&d, to) else { panic!("{d:?}") };
    assert_eq!((st.tasks, st.in_memory, st.bytes, st.peak_bytes), (2, 1, 300, 400));
    let in_flight: u32 = st.in_flight.iter().map(|&(_, n)| n).sum();
    assert_eq!(in_flight, 1, "c runs now");
}

fn events_of(rank: u32) -> Box<WorkerEvents> {
    Box::new(WorkerEvents { rank, ..Default::default() })
}

/// Asks for events: the reply token and the collection's request number.
fn collect(s: &mut Sim) -> (ReplyTo, u64, Vec<Decision>) {
    let (to, d) = s.request(WireRequest::Events { clear: true });
    let mut asked: Vec<(u32, u64, bool)> = d
        .iter()
        .filter_map(|x| match x {
            Decision::CollectEvents { rank, req, clear } => Some((*rank, *req, *clear)),
            _ => None,
        })
        .collect();
    asked.sort();
    let req = asked[0].1;
    assert_eq!(asked, vec![(1, req, true), (2, req, true)]);
    (to, req, d)
}

#[test]
fn events_are_answered_once_every_worker_answered() {
    let mut s = cluster(&[(1, 1), (2, 1)]);
    let (to, req, d) = collect(&mut s);
    assert!(reply(&d, to).is_none());
    let d = s.step(Event::Events { rank: 2, req, events: events_of(2) });
    assert!(reply(&d, to).is_none(), "rank 1 has not answered");
    let d = s.step(Event::Events { rank: 1, req, events: events_of(1) });
    let Some(WireReply::Events(log)) = reply(&d, to) else { panic!("{d:?}") };
    assert_eq!(log.workers.iter().map(|w| w.rank).collect::<Vec<_>>(), vec![1, 2]);
    assert!(log.kernels.iter().any(|k| k == "sum"));
}

#[test]
fn events_are_answered_when_a_worker_leaves_without_answering() {
    let mut s = elastic(&[(1, 1), (2, 1)]);
    let (to, req, _) = collect(&mut s);
    s.step(Event::Events { rank: 1, req, events: events_of(1) });
    let d = s.step(Event::PeerLost { rank: 2, reason: "reset".into() });
    let Some(WireReply::Events(log)) = reply(&d, to) else { panic!("{d:?}") };
    assert_eq!(log.workers.iter().map(|w| w.rank).collect::<Vec<_>>(), vec![1]);
}

#[test]
fn events_with_no_worker_are_answered_at_once() {
    let mut s = Setup::new(&[]).elastic().build();
    let (to, d) = s.request(WireRequest::Events { clear: false });
    assert!(matches!(reply(&d, to), Some(WireReply::Events(log)) if log.workers.is_empty()));
}

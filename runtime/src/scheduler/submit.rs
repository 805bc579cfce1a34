//! Submission: a graph checked whole (duplicate keys, unknown kernels,
//! missing inputs, cycles, unknown outputs) before any of it is added,
//! culled to what the outputs need, and numbered in depth-first post-order
//! (earlier submissions first); clients' waits and releases, and what each
//! remote client holds.

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::state::{Ids, State, TaskRec, Waiter};
use super::{Core, ReplyTo};
use crate::error::{Error, Result};
use crate::graph::{Key, Task, TaskId};
use crate::protocol::{WireReply, WireRequest};

impl Core {
    /// A client's request; `client` is a remote client's rank.
    pub(super) fn on_request(&mut self, client: Option<u32>, req: WireRequest, reply: ReplyTo) {
        match req {
            WireRequest::Submit { tasks, outputs } => {
                let result = self.submit(tasks, outputs);
                // What a remote client holds is released if it goes away.
                if let (Some(rank), Ok(ids)) = (client, &result) {
                    let held = self.held_by.entry(rank).or_default();
                    for &t in ids {
                        *held.entry(t).or_insert(0) += 1;
                    }
                }
                self.reply(reply, WireReply::Submit(result));
            }
            WireRequest::Wait { ids } => self.wait(ids, reply),
            WireRequest::Release { ids } => self.release(client, ids),
            WireRequest::Workers => {
                let infos = self.worker_infos();
                self.reply(reply, WireReply::Workers(infos));
            }
            WireRequest::State => {
                let state = self.cluster_state();
                self.reply(reply, WireReply::State(state));
            }
            WireRequest::Retire { ranks } => self.retire(ranks, reply),
            WireRequest::Events { clear } => self.collect_events(clear, reply),
        }
    }

    /// A client drops its handles on `ids`. A remote client releases only
    /// what it holds: other ids are ignored, so it cannot free another
    /// client's results.
    fn release(&mut self, client: Option<u32>, ids: Vec<TaskId>) {
        let Some(rank) = client else {
            for id in ids {
                self.dec_ref(id);
            }
            return;
        };
        let Some(held) = self.held_by.get_mut(&rank) else {
            tracing::warn!(rank, ids = ids.len(), "a client released results it does not hold; ignored");
            return;
        };
        let mut mine = Vec::with_capacity(ids.len());
        for id in ids {
            match held.get_mut(&id) {
                Some(n) => {
                    *n -= 1;
                    if *n == 0 {
                        held.remove(&id);
                    }
                    mine.push(id);
                }
                None => tracing::warn!(rank, task = %id, "a client released a result it does not hold; ignored"),
            }
        }
        for id in mine {
            self.dec_ref(id);
        }
    }

    /// A remote client left: what it held is released.
    pub(super) fn client_left(&mut self, rank: u32, reason: &str) -> bool {
        let Some(held) = self.held_by.remove(&rank) else { return false };
        let n: u32 = held.values().sum();
        tracing::info!(rank, results = n, %reason, "a client left; releasing what it held");
        for (t, k) in held {
            for _ in 0..k {
                self.dec_ref(t);
            }
        }
        true
    }

    pub(super) fn submit(&mut self, tasks: Vec<Task>, outputs: Vec<Key>) -> Result<Vec<TaskId>> {
        // Index the new tasks; existing keys are reused, not recomputed.
        let mut local: FxHashMap<&Key, usize> = FxHashMap::default();
        local.reserve(tasks.len());
        for (i, t) in tasks.iter().enumerate() {
            if local.insert(&t.key, i).is_some() {
                return Err(Error::DuplicateKey { key: t.key.clone() });
            }
        }
        let mut kernels = Vec::with_capacity(tasks.len());
        let mut pins = Vec::with_capacity(tasks.len());
        let mut last_kernel: Option<(&str, u32)> = None;
        for t in &tasks {
            pins.push(match t.pin {
                None => None,
                Some(rank) => match self.worker_of_rank.get(&rank) {
                    Some(&w) if !self.workers[w].gone => Some(w),
                    _ => return Err(Error::NoSuchWorker { key: t.key.clone(), rank }),
                },
            });
            // Graphs name few kernels, usually in runs: skip the hash lookup.
            let k = match last_kernel {
                Some((name, id)) if name == &*t.kernel => id,
                _ => self.registry.id(&t.kernel).ok_or_else(|| Error::UnknownKernel {
                    key: t.key.clone(),
                    kernel: t.kernel.to_string(),
                    known: self.registry.names().collect::<Vec<_>>().join(", "),
                })?,
            };
            last_kernel = Some((&t.kernel, k));
            kernels.push(k);
        }
        // Resolve inputs: Ok(local index) or Err(existing id).
        enum Src {
            New(usize),
            Old(TaskId),
        }
        let existing = &self.keys;
        let resolve = |key: &Key, local: &FxHashMap<&Key, usize>| -> Option<Src> {
            match (!existing.is_empty()).then(|| existing.get(key)).flatten() {
                Some(id) => Some(Src::Old(*id)),
                None => local.get(key).map(|&i| Src::New(i)),
            }
        };
        let mut deps: Vec<Vec<Src>> = Vec::with_capacity(tasks.len());
        for t in &tasks {
            let mut d = Vec::with_capacity(t.inputs.len());
            for input in &t.inputs {
                match resolve(input, &local) {
                    Some(Src::Old(id)) => {
                        if let State::Erred(f) = &self.tasks[&id].state {
                            return Err(f.to_error());
                        }
                        d.push(Src::Old(id));
                    }
                    Some(s) => d.push(s),
                    None => return Err(Error::MissingInput { key: t.key.clone(), input: input.clone() }),
                }
            }
            deps.push(d);
        }
        let mut out_src = Vec::with_capacity(outputs.len());
        for key in &outputs {
            match resolve(key, &local) {
                Some(s) => out_src.push(s),
                None => return Err(Error::UnknownOutput { key: key.clone() }),
            }
        }

        // Depth-first post-order from the outputs: culls, orders, finds cycles.
        const WHITE: u8 = 0;
        const GREY: u8 = 1;
        const BLACK: u8 = 2;
        let mut color = vec![WHITE; tasks.len()];
        let mut order: Vec<usize> = Vec::with_capacity(tasks.len());
        let mut stack: Vec<(usize, usize)> = Vec::new();
        for src in &out_src {
            let Src::New(root) = *src else { continue };
            if color[root] != WHITE {
                continue;
            }
            color[root] = GREY;
            stack.push((root, 0));
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                // Skip existing inputs, and new ones already finished.
                let mut child = None;
                while *next < deps[node].len() {
                    let d = &deps[node][*next];
                    *next += 1;
                    if let Src::New(c) = *d {
                        match color[c] {
                            WHITE => {
                                child = Some(c);
                                break;
                            }
                            GREY => {
                                let start = stack.iter().position(|&(n, _)| n == c).unwrap_or(0);
                                let mut path: Vec<String> =
                                    stack[start..].iter().map(|&(n, _)| tasks[n].key.to_string()).collect();
                                path.push(tasks[c].key.to_string());
                                return Err(Error::Cycle { key: tasks[c].key.clone(), path: path.join(" -> ") });
                            }
                            _ => {}
                        }
                    }
                }
                match child {
                    Some(c) => {
                        color[c] = GREY;
                        stack.push((c, 0));
                    }
                    None => {
                        color[node] = BLACK;
                        order.push(node);
                        stack.pop();
                    }
                }
            }
        }
        if order.len() < tasks.len() {
            tracing::debug!(culled = tasks.len() - order.len(), "tasks not needed for the outputs");
        }

        // Everything is valid: commit.
        self.submissions += 1;
        let base = self.submissions << 40;
        let mut ids = vec![TaskId(u64::MAX); tasks.len()];
        for &i in &order {
            ids[i] = TaskId(self.next_id);
            self.next_id += 1;
        }
        let mut tasks: Vec<Option<Task>> = tasks.into_iter().map(Some).collect();
        let mut ready = Vec::new();
        self.tasks.reserve(order.len());
        for (n, &i) in order.iter().enumerate() {
            let t = tasks[i].take().expect("each task once");
            let id = ids[i];
            let mut inputs = Ids::with_capacity(deps[i].len());
            let mut waiting = 0;
            for d in &deps[i] {
                let input = match *d {
                    Src::New(j) => ids[j],
                    Src::Old(old) => old,
                };
                let rec = self.tasks.get_mut(&input).expect("inputs are known");
                rec.refs += 1;
                rec.kept_by += 1;
                rec.dependents.push(id);
                if !matches!(rec.state, State::Memory) {
                    waiting += 1;
                }
                inputs.push(input);
            }
            self.tasks.insert(
                id,
                TaskRec {
                    keyed: false,
                    key: t.key,
                    kernel: kernels[i],
                    params: t.params,
                    inputs,
                    dependents: Ids::new(),
                    waiting,
                    refs: 0,
                    kept_by: 0,
                    prio: base | n as u64,
                    pin: pins[i],
                    state: State::Waiting,
                    who_has: SmallVec::new(),
                    nbytes: 0,
                    waiters: Vec::new(),
                    retries: 0,
                    lost_runs: 0,
                },
            );
            if waiting == 0 {
                ready.push(id);
            }
        }
        let out_ids: Vec<TaskId> = out_src
            .iter()
            .map(|s| match *s {
                Src::New(i) => ids[i],
                Src::Old(id) => id,
            })
            .collect();
        // Outputs are what the cluster holds for the client: later graphs
        // name them by key. Intermediates are not looked up by key.
        for id in &out_ids {
            let rec = self.tasks.get_mut(id).expect("outputs are known");
            rec.refs += 1;
            if !rec.keyed {
                rec.keyed = true;
                self.keys.insert(rec.key.clone(), *id);
            }
        }
        self.deal_roots(&mut ready);
        for id in ready {
            self.make_ready(id);
        }
        tracing::debug!(tasks = order.len(), outputs = out_ids.len(), "graph submitted");
        Ok(out_ids)
    }

    fn wait(&mut self, ids: Vec<TaskId>, reply: ReplyTo) {
        let mut remaining = 0;
        for id in &ids {
            match self.tasks.get(id) {
                None => {
                    let err =
                        Error::Lost { key: Key::new(format!("task{}", id.0), []), reason: "it was released".into() };
                    self.reply(reply, WireReply::Wait(Err(err)));
                    return;
                }
                Some(rec) => match &rec.state {
                    State::Memory => {}
                    State::Cancelled(_) => {
                        let err = Error::Lost { key: rec.key.clone(), reason: "it was released".into() };
                        self.reply(reply, WireReply::Wait(Err(err)));
                        return;
                    }
                    State::Erred(f) => {
                        let err = f.to_error();
                        self.reply(reply, WireReply::Wait(Err(err)));
                        return;
                    }
                    _ => remaining += 1,
                },
            }
        }
        if remaining == 0 {
            let locations = self.locations(&ids);
            self.reply(reply, WireReply::Wait(Ok(locations)));
            return;
        }
        let w = self.next_waiter;
        self.next_waiter += 1;
        for id in &ids {
            let rec = self.tasks.get_mut(id).expect("checked above");
            if !matches!(rec.state, State::Memory) {
                rec.waiters.push(w);
            }
        }
        self.waiters.insert(w, Waiter { ids, remaining, reply });
    }
}

//! Graph optimisation before submission: fewer tasks, fewer blocks.
//!
//! Two rewrites, both local and linear in the size of the graph:
//!
//! * **Transposes fold into products.** A `linalg.transpose` task read only
//!   by `linalg.gemm` tasks disappears: the products read its input with
//!   their transpose flag flipped (faer multiplies transposed views at full
//!   speed), so `a.t().matmul(&q)` never copies `a`.
//! * **Elementwise chains fuse.** A `linalg.ew` task read by exactly one
//!   other `linalg.ew` task (and not asked for itself) is inlined into it:
//!   its program replaces the `Load` of its block. A chain of k operations
//!   becomes one task per block, one pass over memory, no intermediates.
//!
//! Blocks asked for as outputs are never fused away.

use rustc_hash::{FxHashMap, FxHashSet};
use tessera_runtime::{Graph, Key, Task};

use crate::expr::{EwParams, Op};
use crate::kernels::GemmParams;

const EW: &str = "linalg.ew";
const GEMM: &str = "linalg.gemm";
const TRANSPOSE: &str = "linalg.transpose";

/// Applies both rewrites; `outputs` are kept.
pub fn optimize(graph: Graph, outputs: &[Key]) -> Graph {
    let keep: FxHashSet<&Key> = outputs.iter().collect();
    let mut tasks: Vec<Option<Task>> = graph.into_tasks().into_iter().map(Some).collect();
    let index: FxHashMap<Key, usize> =
        tasks.iter().enumerate().map(|(i, t)| (t.as_ref().expect("all present").key.clone(), i)).collect();
    fold_transposes(&mut tasks, &index, &keep);
    fuse_elementwise(&mut tasks, &index, &keep);
    tasks.into_iter().flatten().collect()
}

/// The tasks reading each key, each consumer once.
fn consumers(tasks: &[Option<Task>]) -> FxHashMap<Key, Vec<usize>> {
    let mut c: FxHashMap<Key, Vec<usize>> = FxHashMap::default();
    for (i, t) in tasks.iter().enumerate() {
        let Some(t) = t else { continue };
        for input in &t.inputs {
            let v = c.entry(input.clone()).or_default();
            if v.last() != Some(&i) {
                v.push(i);
            }
        }
    }
    c
}

fn fold_transposes(tasks: &mut [Option<Task>], index: &FxHashMap<Key, usize>, keep: &FxHashSet<&Key>) {
    if !tasks.iter().flatten().any(|t| &*t.kernel == TRANSPOSE) {
        return;
    }
    let readers = consumers(tasks);
    for &i in index.values() {
        let Some(t) = &tasks[i] else { continue };
        if &*t.kernel != TRANSPOSE || keep.contains(&t.key) || t.inputs.len() != 1 {
            continue;
        }
        let Some(users) = readers.get(&t.key) else { continue };
        if !users.iter().all(|&u| tasks[u].as_ref().is_some_and(|c| &*c.kernel == GEMM)) {
            continue;
        }
        let (key, source) = (t.key.clone(), t.inputs[0].clone());
        for &u in users {
            let c = tasks[u].as_mut().expect("checked above");
            let Ok(mut p) = tessera_runtime::protocol::decode_params::<GemmParams>(&c.params) else { continue };
            for (pos, input) in c.inputs.iter_mut().enumerate() {
                if *input == key {
                    *input = source.clone();
                    if pos == 0 {
                        p.ta = !p.ta;
                    } else {
                        p.tb = !p.tb;
                    }
                }
            }
            *c = c.clone().param(&p);
        }
        tasks[i] = None;
    }
}

fn fuse_elementwise(tasks: &mut [Option<Task>], index: &FxHashMap<Key, usize>, keep: &FxHashSet<&Key>) {
    let mut count: FxHashMap<Key, usize> = consumers(tasks).into_iter().map(|(k, v)| (k, v.len())).collect();
    let decode = |t: &Task| tessera_runtime::protocol::decode_params::<EwParams>(&t.params).ok();
    for c in 0..tasks.len() {
        let Some(mut consumer) = tasks[c].take() else { continue };
        if &*consumer.kernel != EW {
            tasks[c] = Some(consumer);
            continue;
        }
        let Some(mut params) = decode(&consumer) else {
            tasks[c] = Some(consumer);
            continue;
        };
        // Inline fusable producers until none is left (chains collapse).
        loop {
            let fusable = consumer.inputs.iter().find_map(|k| {
                let &p = index.get(k)?;
                let producer = tasks[p].as_ref()?;
                let ok = &*producer.kernel == EW && count.get(k) == Some(&1) && !keep.contains(k);
                ok.then_some(p)
            });
            let Some(p) = fusable else { break };
            let producer = tasks[p].take().expect("present");
            let Some(pp) = decode(&producer).filter(|pp| pp.dtype == params.dtype) else {
                tasks[p] = Some(producer);
                break;
            };
            inline(&mut consumer, &mut params, &producer, &pp, &mut count);
        }
        tasks[c] = Some(consumer.param(&params));
    }
}

/// Replaces every load of `producer`'s block in `consumer` by its program.
fn inline(
    consumer: &mut Task,
    params: &mut EwParams,
    producer: &Task,
    pp: &EwParams,
    count: &mut FxHashMap<Key, usize>,
) {
    let mut inputs: Vec<Key> = Vec::with_capacity(consumer.inputs.len() + producer.inputs.len());
    let slot = |k: &Key, inputs: &mut Vec<Key>| -> u32 {
        match inputs.iter().position(|x| x == k) {
            Some(i) => i as u32,
            None => {
                inputs.push(k.clone());
                (inputs.len() - 1) as u32
            }
        }
    };
    let old: Vec<Option<u32>> =
        consumer.inputs.iter().map(|k| (*k != producer.key).then(|| slot(k, &mut inputs))).collect();
    let inner: Vec<u32> = producer.inputs.iter().map(|k| slot(k, &mut inputs)).collect();
    let mut program = Vec::with_capacity(params.program.len() + pp.program.len());
    for op in &params.program {
        match *op {
            Op::Load(j) => match old[j as usize] {
                Some(n) => program.push(Op::Load(n)),
                None => program.extend(pp.program.iter().map(|op| match *op {
                    Op::Load(y) => Op::Load(inner[y as usize]),
                    other => other,
                })),
            },
            other => program.push(other),
        }
    }
    // The producer's inputs are now read by the consumer instead: a key both
    // read has one reader fewer.
    for k in dedup(&producer.inputs) {
        if consumer.inputs.contains(k) {
            if let Some(n) = count.get_mut(k) {
                *n -= 1;
            }
        }
    }
    count.remove(&producer.key);
    consumer.inputs = inputs;
    params.program = program;
}

fn dedup(keys: &[Key]) -> Vec<&Key> {
    let mut seen: Vec<&Key> = Vec::with_capacity(keys.len());
    for k in keys {
        if !seen.contains(&k) {
            seen.push(k);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::Binary;
    use tessera_runtime::DType;

    fn ew(key: Key, inputs: Vec<Key>, program: Vec<Op>) -> Task {
        Task::new(key, EW).param(&EwParams { program, dtype: DType::F64 }).inputs(inputs)
    }

    fn k(n: &str) -> Key {
        Key::new(n, [0])
    }

    #[test]
    fn chains_fuse_into_one_task_and_outputs_stay() {
        // c = (a + 1) * b ; d = c - a ; a, b leaves of another kernel.
        let mut g = Graph::new();
        g.push(Task::new(k("a"), "linalg.full"));
        g.push(Task::new(k("b"), "linalg.full"));
        g.push(ew(k("a1"), vec![k("a")], vec![Op::Load(0), Op::Const(1.0), Op::Binary(Binary::Add)]));
        g.push(ew(k("c"), vec![k("a1"), k("b")], vec![Op::Load(0), Op::Load(1), Op::Binary(Binary::Mul)]));
        g.push(ew(k("d"), vec![k("c"), k("a")], vec![Op::Load(0), Op::Load(1), Op::Binary(Binary::Sub)]));
        let out = optimize(g.clone(), &[k("d")]);
        assert_eq!(out.len(), 3, "a, b and one fused task: {:?}", out.tasks());
        let d = out.tasks().iter().find(|t| t.key == k("d")).unwrap();
        assert_eq!(d.inputs, vec![k("a"), k("b")]);
        let p: EwParams = tessera_runtime::protocol::decode_params(&d.params).unwrap();
        assert_eq!(
            p.program,
            vec![
                Op::Load(0),
                Op::Const(1.0),
                Op::Binary(Binary::Add),
                Op::Load(1),
                Op::Binary(Binary::Mul),
                Op::Load(0),
                Op::Binary(Binary::Sub)
            ]
        );
        // Asking for c too keeps it (and a1 still fuses into c).
        let out = optimize(g, &[k("d"), k("c")]);
        assert_eq!(out.len(), 4);
        let c = out.tasks().iter().find(|t| t.key == k("c")).unwrap();
        assert!(c.inputs.len() == 2 && c.inputs.contains(&k("a")) && c.inputs.contains(&k("b")), "{c:?}");
    }

    #[test]
    fn transposes_read_only_by_products_fold_into_them() {
        let mut g = Graph::new();
        g.push(Task::new(k("x"), "linalg.full"));
        g.push(Task::new(k("xt"), TRANSPOSE).param(&()).inputs([k("x")]));
        g.push(Task::new(k("p"), GEMM).param(&GemmParams::default()).inputs([k("xt"), k("x")]));
        let out = optimize(g.clone(), &[k("p")]);
        assert_eq!(out.len(), 2);
        let p = out.tasks().iter().find(|t| t.key == k("p")).unwrap();
        assert_eq!(p.inputs, vec![k("x"), k("x")]);
        let gp: GemmParams = tessera_runtime::protocol::decode_params(&p.params).unwrap();
        assert_eq!(gp, GemmParams { ta: true, tb: false });
        // A transpose also read by something else stays.
        g.push(ew(k("e"), vec![k("xt")], vec![Op::Load(0)]));
        let out = optimize(g, &[k("p"), k("e")]);
        assert_eq!(out.len(), 4);
    }
}

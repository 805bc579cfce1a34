//! A program that is a Tessera job: `tessera::run`.
//!
//! ```text
//! cargo run --example run                                  # local cluster
//! mpirun -n 4 target/debug/examples/run                    # with --features mpi
//! ```
//!
//! Under `mpirun`, rank 0 runs the closure; the other ranks serve as workers
//! and exit when it is done.

use tessera::{Graph, Key, Task};

fn main() -> anyhow::Result<()> {
    let (workers, total) = tessera::run(|client| {
        // The sum of 1..=4096 as a binary reduction tree over 4096 tasks.
        let mut g = Graph::new();
        let leaves: Vec<Key> = (1..=4096u32).map(|i| Key::new("x", [i])).collect();
        for (i, key) in leaves.iter().enumerate() {
            g.push(Task::new(key.clone(), "sum").param(&((i + 1) as f64)));
        }
        let root = g.reduce("partial", leaves, 2, |key| Task::new(key, "sum").param(&0.0f64));
        let out = client.compute(g, &[root])?;
        Ok::<_, anyhow::Error>((client.workers().len(), out[0].to_scalar().unwrap_or(f64::NAN)))
    })?;
    println!("sum of 1..=4096 = {total} on {workers} workers");
    anyhow::ensure!(total == 4096.0 * 4097.0 / 2.0, "wrong sum {total}");
    Ok(())
}

//! An explicit in-process cluster with a kernel of your own: what a test or
//! a laptop program does. No MPI anywhere.
//!
//! ```text
//! cargo run --example local_cluster
//! ```

use tessera::{Block, Buffer, Graph, KernelError, Key, LocalCluster, Registry, Task};

fn main() -> anyhow::Result<()> {
    let mut registry = Registry::builtin();
    // Squares every element of its input.
    registry.register_raw("square", |_ctx, _params, inputs: &[Block]| {
        let x = inputs[0].as_f64().ok_or_else(|| KernelError::msg("square needs f64"))?;
        Ok(Block::new(inputs[0].shape().to_vec(), Buffer::F64(x.iter().map(|v| v * v).collect())))
    });
    let cluster = LocalCluster::builder().workers(3).registry(registry).start()?;

    let mut g = Graph::new();
    for i in 0..8u32 {
        g.push(Task::new(Key::new("x", [i]), "fill").param(&(1000usize, f64::from(i))));
        g.push(Task::new(Key::new("sq", [i]), "square").inputs([Key::new("x", [i])]));
    }
    g.push(Task::new(Key::new("total", []), "sum").param(&0.0f64).inputs((0..8).map(|i| Key::new("sq", [i]))));
    let out = cluster.client().compute(g, &[Key::new("total", [])])?;
    let total = out[0].to_scalar().unwrap_or(f64::NAN);
    println!("sum of squares = {total} on {} workers", cluster.client().workers().len());
    let expect: f64 = (0..8).map(|i| 1000.0 * f64::from(i * i)).sum();
    anyhow::ensure!(total == expect, "expected {expect}, got {total}");
    cluster.shutdown();
    Ok(())
}

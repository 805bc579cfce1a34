//! An MPI application hands Tessera its communicator, then goes on with its
//! own MPI work. Needs `--features mpi`.
//!
//! ```text
//! cargo build --features mpi --example embed_mpi
//! mpirun -n 4 target/debug/examples/embed_mpi
//! ```
//!
//! The application initialises MPI itself, runs Tessera on the world, then
//! on two halves made by `split` (two independent Tessera clusters at once),
//! checks that its own collectives still work, and finalises MPI itself.

use mpi::topology::Color;
use mpi::traits::*;
use tessera::{Config, Graph, Key, Task};

/// Sum of 1..=n as a Tessera graph; returns (workers, sum) on the communicator's rank 0.
fn tessera_sum<C: Communicator>(comm: &C, n: u32) -> anyhow::Result<Option<(usize, f64)>> {
    tessera::mpi::run_on(comm, Config::default(), |client| {
        let mut g = Graph::new();
        for i in 1..=n {
            g.push(Task::new(Key::new("x", [i]), "sum").param(&f64::from(i)));
        }
        g.push(Task::new(Key::new("total", []), "sum").param(&0.0f64).inputs((1..=n).map(|i| Key::new("x", [i]))));
        let out = client.compute(g, &[Key::new("total", [])])?;
        Ok((client.workers().len(), out[0].to_scalar().unwrap_or(f64::NAN)))
    })
}

fn main() -> anyhow::Result<()> {
    let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Funneled)
        .ok_or_else(|| anyhow::anyhow!("MPI already initialised"))?;
    let world = universe.world();
    let rank = world.rank();
    let size = world.size();

    // The application's own MPI work before...
    let mut ranks_sum = 0;
    world.all_reduce_into(&rank, &mut ranks_sum, mpi::collective::SystemOperation::sum());
    anyhow::ensure!(ranks_sum == size * (size - 1) / 2);

    // ...Tessera on the whole world...
    if let Some((workers, total)) = tessera_sum(&world, 100)? {
        println!("world: sum 1..=100 = {total} on {workers} workers ({threading:?})");
        anyhow::ensure!(total == 5050.0);
    }

    // ...and on each half of a split, concurrently.
    let half = world.split_by_color(Color::with_value(rank % 2)).expect("every rank has a color");
    if let Some((workers, total)) = tessera_sum(&half, 10 + rank as u32)? {
        let n = f64::from(10 + rank);
        println!("half {}: sum 1..={n} = {total} on {workers} workers", rank % 2);
        anyhow::ensure!(total == n * (n + 1.0) / 2.0);
    }
    drop(half);

    // ...and its own MPI work after.
    let mut again = 0;
    world.all_reduce_into(&1i32, &mut again, mpi::collective::SystemOperation::sum());
    anyhow::ensure!(again == size, "allreduce after Tessera gave {again}");
    world.barrier();
    println!("rank {rank}: MPI still usable after Tessera");
    Ok(())
}

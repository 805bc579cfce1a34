//! The shared multi-rank bodies on in-process clusters of 1, 2 and 3 workers,
//! and through `tessera::Config::run` with a local launch.

mod common;

use tessera::{Config, Launch, LocalCluster};

fn on_local(workers: usize, body: fn(&tessera::Client)) {
    let cluster = LocalCluster::builder().workers(workers).registry(common::registry()).start().unwrap();
    body(cluster.client());
}

macro_rules! per_size {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            for workers in 1..=3 {
                on_local(workers, common::$name);
            }
        }
    )*};
}

per_size!(reductions, transfers, failures, bad_graphs, reuse, spread);

macro_rules! arrays_per_size {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            for workers in 1..=3 {
                on_local(workers, common::arrays::$name);
            }
        }
    )*};
}

arrays_per_size!(
    qr_factors,
    svd_factors,
    randomized,
    products,
    elementwise_and_reductions,
    random_and_persist,
    bad_input
);

#[test]
fn config_run_uses_a_local_cluster_and_returns_the_driver_result() {
    let config = Config::builder().launch(Launch::Local).workers(2).registry(common::registry()).build();
    let n = config
        .run(|client| {
            common::reductions(client);
            Ok::<_, tessera::Error>(client.workers().len())
        })
        .unwrap();
    assert_eq!(n, 2);
}

#[test]
fn a_failing_driver_returns_its_error_and_a_panicking_one_panics() {
    let config = Config::builder().launch(Launch::Local).workers(2).build();
    let err = config.clone().run(|_| -> Result<(), anyhow::Error> { anyhow::bail!("driver gave up") }).unwrap_err();
    assert_eq!(err.to_string(), "driver gave up");
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        config.run(|_| -> Result<(), tessera::Error> { panic!("driver bug") })
    }));
    assert!(panicked.is_err());
}

#[cfg(feature = "hdf5")]
arrays_per_size!(hdf5_files);

//! The commands, one file per family; [`run`] dispatches a parsed command
//! line to them (`jobqueue` is dispatched from `main`: it has its own exit codes).

pub(crate) mod arrays;
pub(crate) mod bench;
pub(crate) mod cluster;
pub(crate) mod elastic;
pub(crate) mod info;
pub(crate) mod jobqueue;

use anyhow::{bail, Context};
use tessera::observe::Observe;
use tessera::runtime::scheduler::sim;
use tessera::{Config, Progress};

use crate::cli::{BenchCommand, Cli, Command};

pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    let args = cli.cluster.clone();
    match cli.command {
        Command::Scheduler { listen, interface, allowed_failures, json } => {
            return elastic::scheduler(&args, listen.as_deref().unwrap_or_default(), interface, allowed_failures, json)
        }
        Command::Worker { lifetime, lifetime_stagger, drain_timeout, interface, name, json } => {
            return elastic::worker(&args, lifetime, lifetime_stagger, drain_timeout, interface, name, json)
        }
        Command::Workers { json } => return elastic::list_workers(&args, json),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut crate::cli::command(), "tessera", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man { dir } => return info::man_pages(&dir),
        Command::Retire { which, json } => return elastic::retire(&args, &which, json),
        Command::Bench(BenchCommand::Elastic { workers, mib, repeat, json }) => {
            return bench::elastic_bench(&args, workers, mib, repeat, json)
        }
        Command::Bench(BenchCommand::Scale { workers, tasks, ms, repeat, log_dir, json, jobqueue }) => {
            return bench::scale_bench(&args, workers, tasks, ms, repeat, &log_dir, json, &jobqueue)
        }
        Command::Bench(BenchCommand::Simulate {
            workers,
            threads,
            tasks,
            shape,
            task_us,
            bandwidth,
            latency,
            block_bytes,
            queue_extra,
            seed,
            runs,
            kills,
            json,
        }) => {
            let cfg = sim::SimConfig {
                workers,
                threads: u32::try_from(threads).context("--threads: at most 4294967295")?,
                tasks,
                shape,
                task_us,
                bandwidth: bandwidth as f64,
                latency_us: latency,
                block_bytes: block_bytes as u64,
                queue_extra,
                seed,
                runs,
                kills,
            };
            return bench::simulate_bench(&cfg, json);
        }
        _ => {}
    }
    let mut config = if matches!(cli.command, Command::Info { .. }) {
        // Info joins no cluster; it says which one the others would use.
        Config::builder().launch(args.launch).worker(args.worker_settings()).build()
    } else {
        args.config()?
    };
    config.progress = if cli.observe.quiet { Progress::Off } else { Progress::Auto };
    let observe = Observe {
        report: cli.observe.report.clone(),
        trace: cli.observe.trace.clone(),
        command: ["tessera".to_owned()]
            .into_iter()
            .chain(std::env::args().skip(1).map(|a| tessera::jobqueue::shell_quote(&a)))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let computes = matches!(
        cli.command,
        Command::Demo { .. }
            | Command::Svd(_)
            | Command::Qr(_)
            | Command::Matmul(_)
            | Command::Bench(BenchCommand::Overhead { .. })
    );
    if observe.wanted() && !computes {
        bail!("--report and --trace go with a computing command: svd, qr, matmul, demo or bench overhead");
    }
    match cli.command {
        Command::Info { json } => info::info(&config, json, cluster::elastic_json(&args)),
        Command::Demo { json } => arrays::demo(config, &observe, json),
        Command::Svd(args) => arrays::svd(config, &observe, args),
        Command::Qr(args) => arrays::qr(config, &observe, args),
        Command::Matmul(args) => arrays::matmul(config, &observe, args),
        Command::Bench(BenchCommand::Overhead { tasks, shape, repeat, json }) => {
            bench::overhead(config, &observe, shape, tasks, repeat, json)
        }
        Command::Bench(BenchCommand::Transfer { mib, size, repeat, json }) => {
            bench::transfer(config, size.unwrap_or(mib << 20), repeat, json)
        }
        Command::Bench(BenchCommand::MpiHello { json }) => bench::mpi_hello(json),
        Command::Bench(BenchCommand::Ucx { sizes, repeat, json }) => bench::ucx_bench(&sizes, repeat, json),
        Command::Bench(BenchCommand::Gemm { m, k, n, dtype, cores, repeat, seed, json }) => {
            bench::gemm_bench(config, [m, k, n], dtype, cores, repeat, seed, json)
        }
        Command::Scheduler { .. }
        | Command::Worker { .. }
        | Command::Workers { .. }
        | Command::Retire { .. }
        | Command::Bench(BenchCommand::Elastic { .. })
        | Command::Bench(BenchCommand::Scale { .. })
        | Command::Bench(BenchCommand::Simulate { .. })
        | Command::Completions { .. }
        | Command::Man { .. } => unreachable!("handled above"),
        Command::Jobqueue(_) => unreachable!("handled in main"),
    }
}

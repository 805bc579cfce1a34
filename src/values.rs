//! The command line's fixed choices as clap value enums: clap lists their
//! values in `--help` and refuses any other value as a usage error (exit 2),
//! naming the flag and, in the library's words, the values it takes. Each
//! converts into the library type it stands for (the libraries do not depend
//! on clap), through [`parser`].
//!
//! ```text
//! #[arg(long, default_value = "auto", value_parser = values::parser::<values::LaunchArg, Launch>())]
//! launch: Launch,
//! ```

use std::ffi::OsStr;
use std::fmt::Display;
use std::marker::PhantomData;
use std::str::FromStr;

use clap::builder::{PossibleValue, TypedValueParser};
use clap::ValueEnum;
use tessera::jobqueue::System;
use tessera::runtime::gpu::GpuMath;
use tessera::runtime::host::topology::Bind;
use tessera::runtime::scheduler::sim;
use tessera::{Launch, SchedulerWorks, TransportKind};

/// A value parser for the choices `C` giving the library's `T`.
pub fn parser<C, T>() -> Choice<C, T> {
    Choice(PhantomData)
}

/// Parses one of the choices `C` into `T`; any other value is refused with
/// the message of `T`'s own parser.
pub struct Choice<C, T>(PhantomData<fn() -> (C, T)>);

impl<C, T> Clone for Choice<C, T> {
    fn clone(&self) -> Self {
        Choice(PhantomData)
    }
}

impl<C, T> TypedValueParser for Choice<C, T>
where
    C: ValueEnum + Clone + Send + Sync + 'static,
    T: From<C> + FromStr + Clone + Send + Sync + 'static,
    T::Err: Display,
{
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let ignore_case = arg.is_some_and(clap::Arg::is_ignore_case_set);
        let parse = move |s: &str| -> Result<T, String> {
            match C::from_str(s, ignore_case) {
                Ok(c) => Ok(T::from(c)),
                Err(_) => Err(match s.parse::<T>() {
                    Err(e) => e.to_string(),
                    Ok(_) => format!("`{s}` is not one of the values --help lists"),
                }),
            }
        };
        parse.parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(C::value_variants().iter().filter_map(ValueEnum::to_possible_value)))
    }
}

/// The name a choice has on the command line (and in a profile).
pub fn name<C: ValueEnum>(c: &C) -> String {
    c.to_possible_value().expect("no choice is skipped").get_name().to_owned()
}

/// An enum of choices and its conversion into the library's type.
macro_rules! choices {
    ($(#[$doc:meta])* $name:ident => $target:ty { $($(#[$vdoc:meta])* $variant:ident => $value:expr),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl From<$name> for $target {
            fn from(c: $name) -> $target {
                match c {
                    $($name::$variant => $value),+
                }
            }
        }
    };
}

choices! {
    /// `--launch`.
    LaunchArg => Launch {
        /// MPI when launched by mpirun/srun, else local
        Auto => Launch::Auto,
        /// An in-process cluster
        Local => Launch::Local,
        /// MPI (needs the `mpi` feature)
        Mpi => Launch::Mpi,
    }
}

choices! {
    /// `--scheduler-works`.
    SchedulerWorksArg => SchedulerWorks {
        /// Yes when rank 0 is alone or has more than one core to itself
        Auto => SchedulerWorks::Auto,
        #[value(alias = "true")]
        Yes => SchedulerWorks::Yes,
        #[value(alias = "false")]
        No => SchedulerWorks::No,
    }
}

choices! {
    /// `--bind`.
    BindArg => Bind {
        /// core when several MPI ranks share a host, else none
        Auto => Bind::Auto,
        /// Threads are not bound
        None => Bind::None,
        /// A distinct core per thread
        Core => Bind::Core,
        /// The NUMA node of that core
        Numa => Bind::Numa,
    }
}

choices! {
    /// `--transport`.
    TransportArg => TransportKind {
        /// The launch's own: in-process, MPI or TCP
        Auto => TransportKind::Auto,
        /// UCX for blocks (needs the `ucx` feature)
        Ucx => TransportKind::Ucx,
    }
}

choices! {
    /// `--gpu-math`.
    GpuMathArg => GpuMath {
        /// IEEE f32, as on the CPU
        Exact => GpuMath::Exact,
        /// Tensor cores with 10-bit-mantissa inputs (relative error about 1e-3)
        Tf32 => GpuMath::Tf32,
    }
}

choices! {
    /// `bench simulate --shape`.
    SimShapeArg => sim::Shape {
        /// Independent tasks
        Wide => sim::Shape::Wide,
        /// Each task depends on the one before
        Chain => sim::Shape::Chain,
        /// A binary reduction tree
        Tree => sim::Shape::Tree,
        /// Direct TSQR
        Tsqr => sim::Shape::Tsqr,
        /// A blocked matrix product
        Matmul => sim::Shape::Matmul,
    }
}

choices! {
    /// `jobqueue --system`.
    SystemArg => System {
        Slurm => System::Slurm,
        /// PBS Pro or OpenPBS
        #[value(alias = "pbspro", alias = "openpbs")]
        Pbs => System::Pbs,
        Torque => System::Torque,
        /// (Son of) Grid Engine
        #[value(alias = "gridengine", alias = "grid-engine")]
        Sge => System::Sge,
    }
}

/// `jobqueue --launcher`: how a job's ranks start (checked against the batch
/// system once it is known, as a profile's `launcher` is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LauncherArg {
    /// srun on Slurm, mpirun elsewhere
    Auto,
    /// srun (Slurm)
    Srun,
    /// mpirun with the node file the batch system provides
    Mpirun,
    /// The command runs once, as written
    None,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_choice_parses_as_the_library_parses_its_name() {
        for c in LaunchArg::value_variants() {
            assert_eq!(Launch::from(*c), name(c).parse::<Launch>().unwrap());
        }
        for c in SchedulerWorksArg::value_variants() {
            assert_eq!(SchedulerWorks::from(*c), name(c).parse::<SchedulerWorks>().unwrap());
        }
        for c in BindArg::value_variants() {
            assert_eq!(Bind::from(*c), name(c).parse::<Bind>().unwrap());
        }
        for c in TransportArg::value_variants() {
            assert_eq!(TransportKind::from(*c), name(c).parse::<TransportKind>().unwrap());
        }
        for c in GpuMathArg::value_variants() {
            assert_eq!(GpuMath::from(*c), name(c).parse::<GpuMath>().unwrap());
        }
        for c in SimShapeArg::value_variants() {
            assert_eq!(sim::Shape::from(*c), name(c).parse::<sim::Shape>().unwrap());
        }
        for c in SystemArg::value_variants() {
            assert_eq!(System::from(*c), name(c).parse::<System>().unwrap());
            assert_eq!(System::from(*c).name(), name(c));
        }
        for c in LauncherArg::value_variants() {
            let parsed = tessera::jobqueue::Launcher::parse(&name(c), None, System::Slurm);
            assert!(parsed.is_ok(), "{}: {parsed:?}", name(c));
        }
        // The aliases the libraries accept.
        assert_eq!(SchedulerWorksArg::from_str("true", false), Ok(SchedulerWorksArg::Yes));
        assert_eq!(SystemArg::from_str("openpbs", true), Ok(SystemArg::Pbs));
        assert_eq!(SystemArg::from_str("grid-engine", true), Ok(SystemArg::Sge));
    }
}

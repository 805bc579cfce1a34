//! Batch-system adapters for Tessera: job scripts for Slurm, PBS and SGE,
//! and submit/status/wait/cancel through the systems' own commands.
//!
//! It knows the runtime only through the `tessera` command line it writes
//! into job scripts. Empty until that work lands.

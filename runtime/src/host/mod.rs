//! The host this process runs on: its name, cores, memory and interfaces
//! ([`sys`]), its hardware topology and how worker threads are bound to its
//! cores ([`topology`]), and what the launcher (an MPI launcher, Slurm, PBS or
//! SGE) announced in the environment ([`launcher`]), read there and nowhere
//! else, and how much memory this process may use ([`memory`]). Nothing here knows about ranks' roles, tasks or messages: the
//! launches ask it how many cores to use, where to bind, and who started them.

pub mod launcher;
pub mod memory;
/// Hidden, not private: the command and the tests read the host's name,
/// cores and memory through it; not a stable interface.
#[doc(hidden)]
pub mod sys;
pub mod topology;

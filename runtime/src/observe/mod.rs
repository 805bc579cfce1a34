//! What a run leaves behind for people to look at: the events workers record
//! (what ran where and when, how blocks moved: [`events`]), the reports and
//! traces made from them on the driver ([`report`]), the progress a waiting
//! driver shows ([`progress`]), and the log lines of every rank, with the
//! first error of a worker forwarded to the driver ([`log`]). Nothing here
//! decides anything: the scheduler, the workers and the client call in, and
//! the computation runs the same with all of it switched off.

pub mod events;
pub mod log;
pub mod progress;
pub mod report;

//! The scheduler's thread: messages from the transport become [`Event`]s
//! for the [`Core`], its [`Decision`]s become messages. The only part of the
//! scheduler that touches a transport, a channel or the clock.
//!
//! One turn: wait for a message (at most half a second), handle it and every
//! message already queued behind it, then flush: each worker gets one `Run`,
//! one `Release` and one `Cancel` message per turn at most, however many
//! tasks changed state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rustc_hash::FxHashMap;

use super::{Core, Decision, Event, Exit, Hello, ReplyTo, SchedulerConfig, Time};
use crate::error::{Error, Result};
use crate::kernel::Registry;
use crate::protocol::{ClientRequest, Reply, WireReply, WireRequest, WorkerInfo};
use crate::protocol::{Endpoint, Msg};
use crate::transport::Transport;

/// Start-up result: the workers that said hello, or why they could not.
pub type Ready = Result<Vec<WorkerInfo>>;

/// How often silent workers are looked for.
const TICK: Duration = Duration::from_millis(500);

/// The scheduler's event loop around its [`Core`].
pub struct Scheduler {
    core: Core,
    transport: Arc<dyn Transport>,
    elastic: bool,
    /// The clock's origin: the core's time is measured from here.
    start: Instant,
    last_tick: Time,
    /// Where each pending answer goes, by the token the core gets.
    replies: FxHashMap<u64, Reply<WireReply>>,
    next_reply: u64,
    decisions: Vec<Decision>,
}

impl Scheduler {
    pub fn new(registry: Arc<Registry>, transport: Arc<dyn Transport>, config: SchedulerConfig) -> Scheduler {
        let elastic = config.elastic;
        let mut core = Core::new(registry, config);
        core.set_transport_name(transport.name());
        Scheduler {
            core,
            transport,
            elastic,
            start: Instant::now(),
            last_tick: Time::ZERO,
            replies: FxHashMap::default(),
            next_reply: 0,
            decisions: Vec::new(),
        }
    }

    fn now(&self) -> Time {
        self.start.elapsed()
    }

    /// Runs until the client asks for shutdown (and all workers stopped) or
    /// a worker is lost. `ready` gets the roll call once every worker said
    /// hello (or the first registry mismatch).
    pub fn run(mut self, inbox: Receiver<Msg>, ready: Sender<Ready>) -> Exit {
        if self.elastic {
            let _ = ready.send(Ok(Vec::new()));
            tracing::info!("scheduler ready; workers may join");
            return self.serve(&inbox);
        }
        if let Err(e) = self.roll_call(&inbox) {
            let exit = match &e {
                Error::WorkerLost { rank, reason } => Exit::WorkerLost { rank: *rank, reason: reason.clone() },
                _ => Exit::Clean,
            };
            let _ = ready.send(Err(e));
            self.core.shutdown(true, "start-up failed");
            self.carry_out();
            if matches!(exit, Exit::Clean) {
                self.wait_for_byes(&inbox, Duration::from_secs(10));
            }
            return exit;
        }
        let _ = ready.send(Ok(self.core.worker_infos()));
        tracing::info!(workers = self.core.joined(), "scheduler ready");
        self.serve(&inbox)
    }

    /// Waits for every expected worker's hello (at most 120 s).
    fn roll_call(&mut self, inbox: &Receiver<Msg>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let expected = self.core.config.worker_ranks.len();
        while self.core.joined() < expected {
            let msg = inbox.recv_deadline(deadline).map_err(|_| Error::WorkerLost {
                rank: self.core.missing_worker().unwrap_or(0),
                reason: "did not start within 120 s".into(),
            })?;
            match msg {
                Msg::Hello { rank, threads, host, name, registry, kernels, gpu } => {
                    let hello = Hello { rank, threads, host, name, gpu, registry, kernels };
                    self.core.join(self.now(), hello)?;
                }
                Msg::Client(ClientRequest::Shutdown { reply, .. }) => {
                    reply.send(());
                    return Err(Error::ShutDown);
                }
                other => tracing::debug!(msg = ?other, "ignored before start-up"),
            }
        }
        self.core.started();
        Ok(())
    }

    fn serve(&mut self, inbox: &Receiver<Msg>) -> Exit {
        loop {
            let first = match inbox.recv_timeout(TICK) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Exit::Clean,
            };
            let now = self.now();
            if let Some(m) = first {
                if let Some(exit) = self.handle(now, m, inbox) {
                    return exit;
                }
                // Take what is already there before flushing, so messages batch.
                for _ in 0..100_000 {
                    let Ok(m) = inbox.try_recv() else { break };
                    if let Some(exit) = self.handle(now, m, inbox) {
                        return exit;
                    }
                }
            }
            if now.saturating_sub(self.last_tick) >= TICK {
                self.last_tick = now;
                self.core.handle(now, Event::Tick);
            }
            if let Some(exit) = self.carry_out() {
                return exit;
            }
        }
    }

    /// Flushes the core and carries its decisions out.
    fn carry_out(&mut self) -> Option<Exit> {
        self.core.flush(&mut self.decisions);
        let mut exit = None;
        for d in self.decisions.drain(..) {
            let (rank, msg) = match d {
                Decision::Run { rank, tasks } => (rank, Msg::Run(tasks)),
                Decision::Release { rank, ids } => (rank, Msg::Release(ids)),
                Decision::Cancel { rank, ids } => (rank, Msg::Cancel(ids)),
                Decision::Acquire { rank, blocks } => (rank, Msg::Acquire(blocks)),
                Decision::Stop { rank, failed, reason } => (rank, Msg::Shutdown { failed, reason }),
                Decision::CollectEvents { rank, req, clear } => (rank, Msg::CollectEvents { req, clear }),
                Decision::Reply { to, answer } => {
                    match self.replies.remove(&to.0) {
                        Some(reply) => reply.send(answer),
                        None => tracing::error!(reply = to.0, "an answer nobody waits for"),
                    }
                    continue;
                }
                Decision::Abort { rank, reason } => {
                    exit.get_or_insert(Exit::WorkerLost { rank, reason });
                    continue;
                }
            };
            self.transport.send(Endpoint::worker(rank), msg);
        }
        exit
    }

    /// Hands one message to the core; returns `Some` when the loop must end.
    fn handle(&mut self, now: Time, msg: Msg, inbox: &Receiver<Msg>) -> Option<Exit> {
        let event = match msg {
            Msg::Done { id, nbytes, micros } => Event::Done { id, nbytes, micros },
            Msg::Failed { id, error, numerical } => Event::Failed { id, error, numerical },
            Msg::Replica { id, rank } => Event::Replica { rank, id },
            Msg::Heartbeat { rank } => Event::Heartbeat { rank },
            Msg::Memory { rank, memory, spilled, paused } => Event::Memory { rank, memory, spilled, paused },
            Msg::Events { req, events } => Event::Events { rank: events.rank, req, events },
            Msg::Log { rank, line } => Event::Log { rank, line },
            Msg::Hello { rank, threads, host, name, registry, kernels, gpu } => {
                Event::Hello(Hello { rank, threads, host, name, gpu, registry, kernels })
            }
            Msg::Drain { rank } => Event::Drain { rank },
            Msg::InputLost { id, input, rank } => Event::InputLost { id, input, from: rank },
            Msg::Bye { rank } => Event::Bye { rank },
            Msg::PeerLost { rank, reason } => Event::PeerLost { rank, reason },
            Msg::Request { id, from, req } => {
                let reply = match req {
                    WireRequest::Release { .. } => None,
                    _ => {
                        let transport = Arc::clone(&self.transport);
                        Some(Reply::new(move |reply| transport.send(from, Msg::Reply { id, reply })))
                    }
                };
                let reply = self.expect_reply(reply);
                Event::Request { client: Some(from.rank), req, reply }
            }
            Msg::Client(ClientRequest::Wire { req, reply }) => {
                let reply = self.expect_reply(reply);
                Event::Request { client: None, req, reply }
            }
            Msg::Client(ClientRequest::Shutdown { failed, reason, reply }) => {
                self.carry_out();
                self.core.shutdown(failed, &reason);
                self.carry_out();
                self.wait_for_byes(inbox, Duration::from_secs(30));
                reply.send(());
                return Some(Exit::Clean);
            }
            other => {
                tracing::warn!(msg = ?other, "scheduler got an unexpected message");
                return None;
            }
        };
        self.core.handle(now, event);
        None
    }

    /// A token for a request's answer (requests without one get a token no answer uses).
    fn expect_reply(&mut self, reply: Option<Reply<WireReply>>) -> ReplyTo {
        let token = self.next_reply;
        self.next_reply += 1;
        if let Some(reply) = reply {
            self.replies.insert(token, reply);
        }
        ReplyTo(token)
    }

    /// Waits (at most `limit`) for every worker still there to say goodbye.
    fn wait_for_byes(&self, inbox: &Receiver<Msg>, limit: Duration) {
        let mut left = self.core.live_ranks();
        let deadline = Instant::now() + limit;
        while !left.is_empty() {
            match inbox.recv_deadline(deadline) {
                Ok(Msg::Bye { rank }) | Ok(Msg::PeerLost { rank, .. }) => {
                    left.remove(&rank);
                }
                Ok(Msg::Client(ClientRequest::Shutdown { reply, .. })) => reply.send(()),
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(ranks = ?left, "workers did not confirm shutdown");
                    return;
                }
            }
        }
    }
}

//! Facts about the host: its name, cores, memory and network interfaces,
//! and small helpers over them (byte sizes, waiting on file descriptors,
//! the termination signal). What the launcher announced lives in
//! [`super::launcher`].

/// This host's name (`uname`'s node name).
pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// Logical CPUs online on this host.
pub fn host_cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        usable_cores()
    }
}

/// Logical CPUs this process may run on (its affinity mask).
pub fn usable_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// `(total, available)` memory of the host in bytes, from `/proc/meminfo`.
pub fn memory() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// The most resident memory this process has used so far, in bytes
/// (`getrusage`'s `ru_maxrss`).
pub fn peak_rss_bytes() -> Option<u64> {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    (rc == 0).then(|| usage.ru_maxrss as u64 * 1024)
}

/// The IPv4 addresses of this host's network interfaces that are up and
/// running: `(interface name, address, is loopback)`.
pub fn interfaces() -> Vec<(String, std::net::Ipv4Addr, bool)> {
    let all = if_addrs::get_if_addrs().unwrap_or_default();
    all.into_iter()
        .filter(|i| i.is_oper_up())
        .filter_map(|i| match i.addr {
            if_addrs::IfAddr::V4(ref a) => Some((i.name.clone(), a.ip, i.is_loopback())),
            if_addrs::IfAddr::V6(_) => None,
        })
        .collect()
}

/// The address other hosts can reach this one at: the IPv4 address of
/// `interface` if named (an error lists the interfaces there are), else of
/// the first interface that is up and not loopback, else 127.0.0.1.
pub fn routable_address(interface: Option<&str>) -> Result<std::net::IpAddr, String> {
    let all = interfaces();
    if let Some(name) = interface {
        return all.iter().find(|(n, _, _)| n == name).map(|(_, ip, _)| std::net::IpAddr::V4(*ip)).ok_or_else(|| {
            let names: Vec<String> = all.iter().map(|(n, ip, _)| format!("{n} ({ip})")).collect();
            format!("no interface `{name}` with an IPv4 address here; there are: {}", names.join(", "))
        });
    }
    Ok(match all.iter().find(|(_, _, lo)| !lo) {
        Some((_, ip, _)) => std::net::IpAddr::V4(*ip),
        None => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    })
}

/// Installs (once) handlers for SIGTERM and SIGINT that raise the returned
/// flag; a second signal ends the process at once (status 143). A batch
/// system sends SIGTERM some time before it kills a job at its walltime:
/// an elastic worker drains on it.
pub fn termination_flag() -> &'static std::sync::atomic::AtomicBool {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    TERMINATION.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            // The order matters: the shutdown handler runs first and exits
            // only if an earlier signal already raised the flag.
            let installed = signal_hook::flag::register_conditional_shutdown(sig, 143, Arc::clone(&flag))
                .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&flag)));
            if let Err(e) = installed {
                tracing::warn!(signal = sig, error = %e, "cannot install the termination handler");
            }
        }
        flag
    })
}

static TERMINATION: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> = std::sync::OnceLock::new();

/// Whether this process handles SIGTERM and SIGINT itself ([`termination_flag`]:
/// an elastic worker drains on them) rather than ending at once.
pub fn drains_on_signal() -> bool {
    TERMINATION.get().is_some()
}

/// Restores the default action of SIGPIPE (the Rust runtime ignores it), so
/// that a command line program writing to a pipe whose reader has gone (`tessera
/// info | head -3`) ends as Unix tools do instead of failing on every write.
/// Sockets are unaffected: std's `TcpStream` writes with `MSG_NOSIGNAL`, so a
/// lost peer is still an error to handle, never a signal.
pub fn default_sigpipe() {
    // Raw libc: signal-hook installs handlers and cannot restore SIG_DFL.
    // SAFETY: setting a signal's disposition to SIG_DFL has no memory-safety
    // preconditions; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `1536` -> `1.5 KiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

/// Byte sizes (`1234`, `64KiB`, `500MB`, `1.5GB`; `4G` is refused as
/// ambiguous) by the one rule every size in Tessera follows: see
/// [`tessera_units`].
pub use tessera_units::parse_bytes;

/// A Linux eventfd: how one thread wakes another that sleeps in [`sleep_on`].
pub struct EventFd {
    fd: std::os::fd::OwnedFd,
}

impl EventFd {
    pub fn new() -> std::io::Result<EventFd> {
        use rustix::event::EventfdFlags;
        let fd = rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(EventFd { fd })
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd)
    }

    /// Makes the fd readable.
    pub fn notify(&self) {
        // Fails only when the counter would overflow, and then it is readable anyway.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Empties the eventfd behind `fd` (non-blocking).
    pub fn drain_fd(fd: std::os::fd::RawFd) {
        let mut v = [0u8; 8];
        // SAFETY: the caller's fd (ours, or UCX's worker fd) stays open for this call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        // Empty already (EAGAIN) is what non-blocking means here.
        let _ = rustix::io::read(fd, &mut v);
    }
}

/// Sleeps until one of `fds` is readable, at most `timeout_ms`.
pub fn sleep_on(fds: &[std::os::fd::RawFd], timeout_ms: i32) {
    use rustix::event::{PollFd, PollFlags};
    let mut p: Vec<PollFd<'_>> = fds
        .iter()
        // SAFETY: the callers' fds (an EventFd's, UCX's worker fd) stay open while they sleep here.
        .map(|&fd| PollFd::from_borrowed_fd(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }, PollFlags::IN))
        .collect();
    let ms = timeout_ms.max(0);
    let timeout = rustix::event::Timespec { tv_sec: i64::from(ms / 1000), tv_nsec: i64::from(ms % 1000) * 1_000_000 };
    // An interruption (EINTR) is a spurious wake-up, which callers expect.
    let _ = rustix::event::poll(&mut p, Some(&timeout));
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_eventfd_wakes_a_sleeper_and_drains() {
        let e = super::EventFd::new().unwrap();
        let t = std::time::Instant::now();
        super::sleep_on(&[e.fd()], 20);
        assert!(t.elapsed() >= std::time::Duration::from_millis(15), "slept through the timeout");
        e.notify();
        let t = std::time::Instant::now();
        super::sleep_on(&[e.fd()], 5_000);
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "a notified fd wakes the sleeper");
        super::EventFd::drain_fd(e.fd());
        let t = std::time::Instant::now();
        super::sleep_on(&[e.fd()], 20);
        assert!(t.elapsed() >= std::time::Duration::from_millis(15), "drained: not readable any more");
    }

    #[test]
    fn the_host_has_a_name_and_a_loopback_interface() {
        assert!(!super::hostname().is_empty());
        let all = super::interfaces();
        assert!(all.iter().any(|(_, ip, lo)| *lo && ip.is_loopback()), "{all:?}");
    }

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(super::human_bytes(12), "12 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(64 << 30), "64.0 GiB");
    }
}

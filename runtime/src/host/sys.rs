//! Facts about the host: its name, cores, memory and network interfaces,
//! and small helpers over them (byte sizes, waiting on file descriptors,
//! the termination signal). What the launcher announced lives in
//! [`super::launcher`].

/// This host's name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // on success (or truncates, which we handle by searching for NUL).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
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

/// The IPv4 addresses of this host's network interfaces that are up:
/// `(interface name, address, is loopback)`.
pub fn interfaces() -> Vec<(String, std::net::Ipv4Addr, bool)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; we only
    // read entries while the list is alive.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET {
                continue;
            }
            if ifa.ifa_flags & libc::IFF_UP as u32 == 0 {
                continue;
            }
            let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
            out.push((name, ip, ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0));
        }
        libc::freeifaddrs(head);
    }
    out
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
    use std::sync::atomic::{AtomicBool, Ordering};
    static FLAG: AtomicBool = AtomicBool::new(false);
    static ONCE: std::sync::Once = std::sync::Once::new();
    extern "C" fn on_signal(_: libc::c_int) {
        if FLAG.swap(true, Ordering::SeqCst) {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(143) };
        }
    }
    ONCE.call_once(|| {
        for sig in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: the handler only touches an atomic and calls _exit,
            // both async-signal-safe; the sigaction struct is zeroed first.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    });
    &FLAG
}

/// Restores the default action of SIGPIPE (the Rust runtime ignores it), so
/// that a command line program writing to a pipe whose reader has gone (`tessera
/// info | head -3`) ends as Unix tools do instead of failing on every write.
/// Sockets are unaffected: std's `TcpStream` writes with `MSG_NOSIGNAL`, so a
/// lost peer is still an error to handle, never a signal.
pub fn default_sigpipe() {
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
    fd: std::os::fd::RawFd,
}

impl EventFd {
    pub fn new() -> std::io::Result<EventFd> {
        // SAFETY: plain syscall; the fd is owned by the returned value.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(EventFd { fd })
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        self.fd
    }

    /// Makes the fd readable.
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own fd.
        unsafe { libc::write(self.fd, &one as *const u64 as *const libc::c_void, 8) };
    }

    /// Empties the eventfd behind `fd` (non-blocking).
    pub fn drain_fd(fd: std::os::fd::RawFd) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; the fd is non-blocking.
        unsafe { libc::read(fd, &mut v as *mut u64 as *mut libc::c_void, 8) };
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: closes the fd this value owns, once.
        unsafe { libc::close(self.fd) };
    }
}

/// Sleeps until one of `fds` is readable, at most `timeout_ms`.
pub fn sleep_on(fds: &[std::os::fd::RawFd], timeout_ms: i32) {
    let mut p: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: `p` is a live array of pollfd of the length given.
    unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(super::human_bytes(12), "12 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(64 << 30), "64.0 GiB");
    }
}

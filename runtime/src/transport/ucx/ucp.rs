//! A small safe layer over UCX's UCP (feature `ucx`): one context and one
//! worker, endpoints to peers by worker address, tagged sends and receives
//! straight from and into caller memory, progress and wake-up.
//!
//! Every `unsafe` block of the UCX transport is in this module. The rules
//! it keeps:
//!
//! * A [`Worker`] is created in `UCS_THREAD_MODE_SINGLE` and is `Send` but
//!   not `Sync`: one thread at a time drives it (the transport's own
//!   progress thread, [`crate::transport::ucx`]).
//! * An operation ([`Op`]) owns the memory UCX reads or writes: the block it
//!   sends, or the buffer it receives into, until UCX reports it complete.
//!   An `Op` dropped while in flight leaks that memory rather than free
//!   what UCX may still use.
//! * With [`Options::peer_errors`], endpoints are created with
//!   `UCP_ERR_HANDLING_MODE_PEER`: a peer that disappears fails the
//!   operations in flight to it and is reported by [`Worker::failed_peers`].
//!   UCX 1.13's shared-memory transports cannot do that (it then picks TCP
//!   even between processes of one host), so it is off by default and the
//!   control transport reports lost peers instead.
//! * Statuses become [`Error::Ucx`] with UCX's own description.
//!
//! UCP pointer-returning calls encode "done", "error" or "request" in one
//! pointer; `tessera-ucx-sys` has the `UCS_PTR_*` macros as functions.

use std::ffi::{c_void, CStr, CString};
use std::os::fd::RawFd;
use std::sync::Arc;

use parking_lot::Mutex;
use tessera_ucx_sys as sys;

use crate::block::{Block, BlockHeader, Buffer};
use crate::error::{Error, Result};

/// The UCX library version this process loaded (`ucp_get_version_string`).
pub fn version() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(sys::ucp_get_version_string()) }.to_string_lossy().into_owned()
}

/// The transports and devices UCX can use here, as `transport/device`
/// (`posix/memory`, `tcp/eth0`, ...), honouring `UCX_TLS`.
pub fn resources() -> Result<Vec<String>> {
    let w = Worker::new(&Options::default())?;
    // SAFETY: the context is live; UCX writes its description to a temporary
    // file this function owns, read back and closed here.
    let text = unsafe {
        let f = libc::tmpfile();
        if f.is_null() {
            return Err(Error::Ucx { what: "describing the UCP context".into(), status: "no temporary file".into() });
        }
        sys::ucp_context_print_info(w.context, f as *mut sys::FILE);
        libc::fflush(f);
        libc::rewind(f);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = libc::fread(buf.as_mut_ptr() as *mut c_void, 1, buf.len(), f);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        libc::fclose(f);
        String::from_utf8_lossy(&out).into_owned()
    };
    // Lines like "#   resource 2  :  md 1  dev 0  flags -- posix/memory".
    let mut found: Vec<String> = text
        .lines()
        .filter(|l| l.contains("resource"))
        .filter_map(|l| l.rsplit("-- ").next().map(|r| r.trim().to_owned()))
        .filter(|r| r.contains('/'))
        .collect();
    found.dedup();
    Ok(found)
}

/// The UCX version the bindings were generated from.
pub const HEADERS_VERSION: &str = sys::UCX_VERSION;

fn status_text(status: sys::ucs_status_t) -> String {
    // SAFETY: ucs_status_string returns a static string for every status.
    unsafe { CStr::from_ptr(sys::ucs_status_string(status)) }.to_string_lossy().into_owned()
}

fn check(status: sys::ucs_status_t, what: &str) -> Result<()> {
    if status == sys::UCS_OK {
        Ok(())
    } else {
        Err(Error::Ucx { what: what.into(), status: status_text(status) })
    }
}

/// What a worker is created with.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// UCX transports to use (as `UCX_TLS`), overriding the environment.
    pub tls: Option<String>,
    /// Ask UCX to detect failed peers (`UCP_ERR_HANDLING_MODE_PEER`);
    /// excludes transports that cannot, shared memory among them.
    pub peer_errors: bool,
}

/// A peer that failed, as the error handler saw it: (peer, status).
type Failures = Arc<Mutex<Vec<(u32, sys::ucs_status_t)>>>;

/// What the error handler of one endpoint gets: its peer and where to tell.
struct EpArg {
    peer: u32,
    failures: Failures,
}

unsafe extern "C" fn on_ep_error(arg: *mut c_void, _ep: sys::ucp_ep_h, status: sys::ucs_status_t) {
    // SAFETY: `arg` is the EpArg boxed in the Endpoint, which outlives the
    // endpoint handle (it is closed before the box is dropped).
    let arg = unsafe { &*(arg as *const EpArg) };
    arg.failures.lock().push((arg.peer, status));
}

/// One UCP context with one worker.
pub struct Worker {
    context: sys::ucp_context_h,
    raw: sys::ucp_worker_h,
    efd: RawFd,
    failures: Failures,
    peer_errors: bool,
}

// SAFETY: the worker is single-threaded (UCS_THREAD_MODE_SINGLE) and not
// Sync: moving it to another thread is allowed, sharing it is not.
unsafe impl Send for Worker {}

impl Worker {
    /// Creates a context (tag matching and wake-up) and its worker.
    pub fn new(options: &Options) -> Result<Worker> {
        // SAFETY: plain calls with zero-initialised parameter structs whose
        // field masks name the fields set; every handle is checked.
        unsafe {
            let mut config = std::ptr::null_mut();
            check(
                sys::ucp_config_read(std::ptr::null(), std::ptr::null(), &mut config),
                "reading the UCX configuration",
            )?;
            if let Some(tls) = &options.tls {
                let name = c"TLS";
                let value = CString::new(tls.as_str()).map_err(|_| Error::Config(format!("UCX_TLS `{tls}`")))?;
                let st = sys::ucp_config_modify(config, name.as_ptr(), value.as_ptr());
                if st != sys::UCS_OK {
                    sys::ucp_config_release(config);
                    return Err(Error::Ucx { what: format!("setting UCX_TLS={tls}"), status: status_text(st) });
                }
            }
            let params = sys::ucp_params_t {
                field_mask: (sys::UCP_PARAM_FIELD_FEATURES | sys::UCP_PARAM_FIELD_MT_WORKERS_SHARED) as u64,
                features: (sys::UCP_FEATURE_TAG | sys::UCP_FEATURE_WAKEUP) as u64,
                mt_workers_shared: 0,
                ..Default::default()
            };
            let mut context = std::ptr::null_mut();
            let st = sys::ucp_init(&params, config, &mut context);
            sys::ucp_config_release(config);
            check(st, "initialising UCP (ucp_init)")?;
            let wp = sys::ucp_worker_params_t {
                field_mask: sys::UCP_WORKER_PARAM_FIELD_THREAD_MODE as u64,
                thread_mode: sys::UCS_THREAD_MODE_SINGLE,
                ..Default::default()
            };
            let mut raw = std::ptr::null_mut();
            if let Err(e) = check(sys::ucp_worker_create(context, &wp, &mut raw), "creating a UCP worker") {
                sys::ucp_cleanup(context);
                return Err(e);
            }
            let mut efd: i32 = -1;
            if let Err(e) = check(sys::ucp_worker_get_efd(raw, &mut efd), "getting the UCP worker's event fd") {
                sys::ucp_worker_destroy(raw);
                sys::ucp_cleanup(context);
                return Err(e);
            }
            Ok(Worker { context, raw, efd, failures: Failures::default(), peer_errors: options.peer_errors })
        }
    }

    /// This worker's address, for peers to connect to.
    pub fn address(&self) -> Result<Vec<u8>> {
        // SAFETY: the address is copied out and released at once.
        unsafe {
            let mut addr = std::ptr::null_mut();
            let mut len = 0usize;
            check(sys::ucp_worker_get_address(self.raw, &mut addr, &mut len), "getting the UCP worker address")?;
            let bytes = std::slice::from_raw_parts(addr as *const u8, len).to_vec();
            sys::ucp_worker_release_address(self.raw, addr);
            Ok(bytes)
        }
    }

    /// An endpoint to the worker at `address`, which belongs to `peer`.
    pub fn connect(&self, peer: u32, address: &[u8]) -> Result<Endpoint> {
        let mode = if self.peer_errors { sys::UCP_ERR_HANDLING_MODE_PEER } else { sys::UCP_ERR_HANDLING_MODE_NONE };
        let arg = Box::new(EpArg { peer, failures: Arc::clone(&self.failures) });
        let params = sys::ucp_ep_params_t {
            field_mask: (sys::UCP_EP_PARAM_FIELD_REMOTE_ADDRESS
                | sys::UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE
                | sys::UCP_EP_PARAM_FIELD_ERR_HANDLER) as u64,
            address: address.as_ptr() as *const sys::ucp_address_t,
            err_mode: mode,
            err_handler: sys::ucp_err_handler_t { cb: Some(on_ep_error), arg: &*arg as *const EpArg as *mut c_void },
            ..Default::default()
        };
        let mut raw = std::ptr::null_mut();
        // SAFETY: `address` is read during the call only; `arg` is boxed and
        // kept by the Endpoint until the endpoint is closed.
        check(unsafe { sys::ucp_ep_create(self.raw, &params, &mut raw) }, &format!("connecting to rank {peer}"))?;
        Ok(Endpoint { raw, peer, _arg: arg })
    }

    /// Closes `ep` (forcibly when `force`, as after a failure), driving
    /// progress until UCX has let go of it, at most `limit`.
    pub fn close(&self, ep: Endpoint, force: bool, limit: std::time::Duration) {
        let param = sys::ucp_request_param_t {
            op_attr_mask: sys::UCP_OP_ATTR_FIELD_FLAGS,
            flags: if force { sys::UCP_EP_CLOSE_FLAG_FORCE } else { 0 },
            ..Default::default()
        };
        // SAFETY: the endpoint is closed once (it is consumed); the request,
        // if any, is polled to completion or abandoned after `limit` (UCX
        // then frees it with the worker).
        unsafe {
            let req = sys::ucp_ep_close_nbx(ep.raw, &param);
            if sys::ucs_ptr_is_ptr(req) {
                let start = std::time::Instant::now();
                while sys::ucp_request_check_status(req) == sys::UCS_INPROGRESS && start.elapsed() < limit {
                    sys::ucp_worker_progress(self.raw);
                }
                sys::ucp_request_free(req);
            }
        }
        // The error handler may still fire during the close above; its
        // argument was alive until here.
        drop(ep);
    }

    /// Advances communication; true when something happened.
    pub fn progress(&self) -> bool {
        // SAFETY: the worker is valid and driven by this thread only.
        unsafe { sys::ucp_worker_progress(self.raw) != 0 }
    }

    /// Arms the event fd for [`Worker::event_fd`]: true when the thread may
    /// now sleep on it, false when events are already pending (progress first).
    pub fn arm(&self) -> Result<bool> {
        // SAFETY: as progress.
        match unsafe { sys::ucp_worker_arm(self.raw) } {
            sys::UCS_OK => Ok(true),
            sys::UCS_ERR_BUSY => Ok(false),
            st => check(st, "arming the UCP worker's event fd").map(|()| false),
        }
    }

    /// A file descriptor that becomes readable when the armed worker has work.
    pub fn event_fd(&self) -> RawFd {
        self.efd
    }

    /// Starts sending `block`'s bytes to `ep` with `tag`, straight from its
    /// memory; the operation keeps the block alive until it completes.
    pub fn send(&self, ep: &Endpoint, tag: u64, block: Block) -> Result<Op> {
        let bytes = block.as_bytes();
        let param = sys::ucp_request_param_t::default();
        // SAFETY: the block is immutable and its buffer stays where it is
        // when the block moves into the Op, which keeps it until UCX reports
        // the send complete. The default parameters mean contiguous bytes
        // and no callback (we poll).
        let ptr = unsafe { sys::ucp_tag_send_nbx(ep.raw, bytes.as_ptr() as *const c_void, bytes.len(), tag, &param) };
        Op::from_ptr(ptr, Keep::Block(block, ep.peer))
    }

    /// Starts receiving the block `header` describes, sent with `tag`,
    /// straight into a new buffer; [`Op::into_block`] has it once complete.
    pub fn recv(&self, tag: u64, header: BlockHeader) -> Result<Op> {
        // Checked against the block cap and reserved fallibly: the header
        // came from a peer.
        let mut buffer = Block::receive_buffer(&header)
            .map_err(|e| Error::Ucx { what: "receiving a block".into(), status: e.to_string() })?;
        let bytes = buffer.as_bytes_mut();
        let (ptr, len) = (bytes.as_mut_ptr(), bytes.len());
        let param = sys::ucp_request_param_t::default();
        // SAFETY: the buffer's heap memory stays where it is when the buffer
        // moves into the Op, which keeps it until UCX reports the receive
        // complete (or cancelled).
        let ptr = unsafe { sys::ucp_tag_recv_nbx(self.raw, ptr as *mut c_void, len, tag, u64::MAX, &param) };
        Op::from_ptr(ptr, Keep::Buffer(header, buffer))
    }

    /// Polls `op`: `None` while in progress, else how it ended (the request
    /// is released then).
    pub fn test(&self, op: &mut Op) -> Option<Result<()>> {
        let req = op.raw?;
        // SAFETY: the request is live until freed below, once.
        let st = unsafe { sys::ucp_request_check_status(req) };
        if st == sys::UCS_INPROGRESS {
            return None;
        }
        // SAFETY: completed requests are freed exactly once.
        unsafe { sys::ucp_request_free(req) };
        op.raw = None;
        Some(check(st, &op.describe()))
    }

    /// Asks UCX to cancel `op`; poll it with [`Worker::test`] until it reports done.
    pub fn cancel(&self, op: &Op) {
        if let Some(req) = op.raw {
            // SAFETY: the request is live (not yet freed).
            unsafe { sys::ucp_request_cancel(self.raw, req) };
        }
    }

    /// Peers whose endpoints failed since the last call, with UCX's reason.
    pub fn failed_peers(&self) -> Vec<(u32, String)> {
        std::mem::take(&mut *self.failures.lock()).into_iter().map(|(p, st)| (p, status_text(st))).collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SAFETY: endpoints are closed by their owner before the worker is
        // dropped (the transport closes every endpoint first); destroying
        // the worker frees what is left.
        unsafe {
            sys::ucp_worker_destroy(self.raw);
            sys::ucp_cleanup(self.context);
        }
    }
}

/// An endpoint to one peer's worker. Close it with [`Worker::close`].
pub struct Endpoint {
    raw: sys::ucp_ep_h,
    peer: u32,
    _arg: Box<EpArg>,
}

// SAFETY: moved along with its worker, used only by the worker's thread.
unsafe impl Send for Endpoint {}

/// An operation in flight (or already complete when it started), with the
/// memory it reads or writes.
pub struct Op {
    raw: Option<*mut c_void>,
    /// `None` only once taken by [`Op::into_block`] or leaked by `drop`.
    keep: Option<Keep>,
}

enum Keep {
    /// A send: the block, and the rank it goes to.
    Block(Block, u32),
    /// A receive: what the buffer becomes.
    Buffer(BlockHeader, Buffer),
}

// SAFETY: the request belongs to the worker and moves with it.
unsafe impl Send for Op {}

impl Op {
    fn from_ptr(ptr: sys::ucs_status_ptr_t, keep: Keep) -> Result<Op> {
        let mut op = Op { raw: None, keep: Some(keep) };
        if sys::ucs_ptr_is_err(ptr) {
            return Err(Error::Ucx { what: op.describe(), status: status_text(sys::ucs_ptr_raw_status(ptr)) });
        }
        op.raw = (!ptr.is_null()).then_some(ptr);
        Ok(op)
    }

    /// What the operation does, for errors.
    fn describe(&self) -> String {
        match &self.keep {
            Some(Keep::Block(b, to)) => format!("sending {} bytes to rank {to}", b.nbytes()),
            Some(Keep::Buffer(_, b)) => format!("receiving {} bytes", b.as_bytes().len()),
            None => "an operation".into(),
        }
    }

    /// The block a completed receive filled (`None` for a send, or while
    /// the operation is in flight).
    pub fn into_block(mut self) -> Option<Block> {
        if self.raw.is_some() {
            return None;
        }
        match self.keep.take() {
            Some(Keep::Buffer(header, buffer)) => Some(Block::from_parts(header, buffer)),
            _ => None,
        }
    }

    /// Completed: nothing to poll.
    pub fn is_done(&self) -> bool {
        self.raw.is_none()
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if self.raw.is_some() {
            // UCX may still read or write the memory: leak it rather than free it.
            std::mem::forget(self.keep.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(len: usize) -> Block {
        Block::new(vec![len], Buffer::F64((0..len).map(|i| (i % 251) as f64).collect()))
    }

    /// Drives both workers until both operations are done.
    fn finish(a: &Worker, b: &Worker, s: &mut Op, r: &mut Op) -> (Result<()>, Result<()>) {
        let start = std::time::Instant::now();
        let (mut sr, mut rr) = (s.is_done().then_some(Ok(())), r.is_done().then_some(Ok(())));
        while sr.is_none() || rr.is_none() {
            a.progress();
            b.progress();
            sr = sr.or_else(|| a.test(s));
            rr = rr.or_else(|| b.test(r));
            assert!(start.elapsed() < std::time::Duration::from_secs(20), "UCX operation hangs");
        }
        (sr.unwrap(), rr.unwrap())
    }

    #[test]
    fn two_workers_exchange_blocks() {
        let a = Worker::new(&Options::default()).unwrap();
        let b = Worker::new(&Options::default()).unwrap();
        let ep = a.connect(1, &b.address().unwrap()).unwrap();
        for len in [1usize, 1 << 17, 1 << 20] {
            let data = block(len);
            let mut r = b.recv(42, data.header()).unwrap();
            let mut s = a.send(&ep, 42, data.clone()).unwrap();
            let (sr, rr) = finish(&a, &b, &mut s, &mut r);
            sr.unwrap();
            rr.unwrap();
            assert_eq!(r.into_block().unwrap().as_f64(), data.as_f64(), "{len} values arrived damaged");
        }
        a.close(ep, false, std::time::Duration::from_secs(5));
        assert!(version().starts_with(char::is_numeric), "{}", version());
    }

    #[test]
    fn a_truncated_receive_is_an_error() {
        let a = Worker::new(&Options::default()).unwrap();
        let b = Worker::new(&Options::default()).unwrap();
        let ep = a.connect(1, &b.address().unwrap()).unwrap();
        let mut r = b.recv(5, block(2).header()).unwrap();
        let mut s = a.send(&ep, 5, block(512)).unwrap();
        let (_, rr) = finish(&a, &b, &mut s, &mut r);
        let e = rr.unwrap_err().to_string();
        assert!(e.contains("receiving 16 bytes") && e.to_lowercase().contains("truncat"), "{e}");
        a.close(ep, true, std::time::Duration::from_secs(1));
    }

    #[test]
    fn a_bad_transport_name_is_an_error() {
        let e = Worker::new(&Options { tls: Some("no-such-transport".into()), ..Options::default() })
            .err()
            .expect("refused");
        assert!(e.to_string().contains("UCX"), "{e}");
    }
}

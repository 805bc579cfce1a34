//! Kernel panics become task errors, without a backtrace on stderr.
//!
//! The default panic hook prints every panic; a panicking kernel is an error
//! the driver reports (naming the task), so while a kernel runs the hook
//! stays quiet. Panics anywhere else print as usual.

use std::any::Any;
use std::cell::Cell;
use std::sync::Once;

thread_local! {
    static IN_KERNEL: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once per process) a hook that is silent inside kernels.
pub(crate) fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_KERNEL.with(Cell::get) {
                tracing::debug!(%info, "kernel panicked");
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f` with the quiet hook armed.
pub(crate) fn in_kernel<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_KERNEL.with(|c| c.set(false));
        }
    }
    IN_KERNEL.with(|c| c.set(true));
    let _reset = Reset;
    f()
}

/// The message of a panic payload.
pub(crate) fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-string panic payload)".to_owned()
    }
}

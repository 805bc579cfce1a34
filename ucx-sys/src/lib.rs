//! Raw bindings to UCX (UCP, with the UCS and UCT types it uses), generated
//! by bindgen from the headers of the system's UCX, found with pkg-config.
//!
//! Nothing here is safe to call without reading UCX's documentation; the
//! runtime's `ucx` module is the safe layer. Two things differ from C:
//!
//! * `ucp_init` is an inline function in `ucp.h`; [`ucp_init`] here calls
//!   `ucp_init_version` with the API version of the headers, as it does.
//! * The pointer-status macros (`UCS_PTR_IS_ERR`, `UCS_PTR_IS_PTR`,
//!   `UCS_PTR_STATUS`) are functions here.
//!
//! Enum constants keep their C names (`UCS_OK`, `UCP_PARAM_FIELD_FEATURES`)
//! and enum types their C size: `ucs_status_t` is one signed byte.

// Generated bindings: the workspace lints do not apply to them.
#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code, unsafe_op_in_unsafe_fn, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// The UCX version pkg-config reported when these bindings were made.
pub const UCX_VERSION: &str = env!("TESSERA_UCX_VERSION");

/// `ucp_init` of `ucp.h` (an inline function there).
///
/// # Safety
/// As `ucp_init_version`: `params` and `config` (which may be null) must be
/// valid, `context_p` writable.
pub unsafe fn ucp_init(
    params: *const ucp_params_t,
    config: *const ucp_config_t,
    context_p: *mut ucp_context_h,
) -> ucs_status_t {
    ucp_init_version(UCP_API_MAJOR, UCP_API_MINOR, params, config, context_p)
}

/// `UCS_PTR_IS_ERR`: the pointer an operation returned encodes an error.
pub fn ucs_ptr_is_err(ptr: *const std::ffi::c_void) -> bool {
    (ptr as usize) >= (UCS_ERR_LAST as isize as usize)
}

/// `UCS_PTR_IS_PTR`: the pointer is a request handle (neither null nor an error).
pub fn ucs_ptr_is_ptr(ptr: *const std::ffi::c_void) -> bool {
    (ptr as usize).wrapping_sub(1) < (UCS_ERR_LAST as isize as usize).wrapping_sub(1)
}

/// `UCS_PTR_RAW_STATUS`: the status a non-request pointer encodes.
pub fn ucs_ptr_raw_status(ptr: *const std::ffi::c_void) -> ucs_status_t {
    ptr as isize as ucs_status_t
}

/// `UCS_PTR_STATUS`: `UCS_INPROGRESS` for a request handle, else the status encoded.
pub fn ucs_ptr_status(ptr: *const std::ffi::c_void) -> ucs_status_t {
    if ucs_ptr_is_ptr(ptr) {
        UCS_INPROGRESS
    } else {
        ucs_ptr_raw_status(ptr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_one_signed_byte() {
        assert_eq!(std::mem::size_of::<ucs_status_t>(), 1);
        assert_eq!(UCS_ERR_NO_MEMORY, -4);
    }

    #[test]
    fn pointer_status() {
        let null = std::ptr::null::<std::ffi::c_void>();
        assert!(!ucs_ptr_is_err(null) && !ucs_ptr_is_ptr(null));
        assert_eq!(ucs_ptr_status(null), UCS_OK);
        let err = UCS_ERR_UNREACHABLE as isize as *const std::ffi::c_void;
        assert!(ucs_ptr_is_err(err) && !ucs_ptr_is_ptr(err));
        assert_eq!(ucs_ptr_status(err), UCS_ERR_UNREACHABLE);
        let req = 0x1000 as *const std::ffi::c_void;
        assert!(ucs_ptr_is_ptr(req) && !ucs_ptr_is_err(req));
        assert_eq!(ucs_ptr_status(req), UCS_INPROGRESS);
    }

    #[test]
    fn context_and_worker_come_up() {
        unsafe {
            let mut params: ucp_params_t = std::mem::zeroed();
            params.field_mask = UCP_PARAM_FIELD_FEATURES as u64;
            params.features = UCP_FEATURE_TAG as u64;
            let mut ctx = std::ptr::null_mut();
            assert_eq!(ucp_init(&params, std::ptr::null(), &mut ctx), UCS_OK);
            let mut wp: ucp_worker_params_t = std::mem::zeroed();
            wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE as u64;
            wp.thread_mode = UCS_THREAD_MODE_SINGLE;
            let mut worker = std::ptr::null_mut();
            assert_eq!(ucp_worker_create(ctx, &wp, &mut worker), UCS_OK);
            ucp_worker_destroy(worker);
            ucp_cleanup(ctx);
        }
    }
}

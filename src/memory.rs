//! Giving freed memory back to the system. glibc's malloc keeps freed blocks in its heaps
//! (only the top of a heap is returned on its own): after a flood of connections or a client
//! that made the daemon queue megabytes, the daemon would stay that large. `trim` asks glibc
//! to return every free page (`malloc_trim(0)`, which releases free pages inside the heaps
//! too). The server calls it, at most every few seconds, after connections that held much
//! memory have closed (`rpc::server`).
//!
//! Also here: the process's `pow`. The binary's only use of libm is tokio's multi-thread
//! scheduler (a moving average of poll times calls `f64::powf`); defining `pow` in the
//! binary, with the `libm` crate's port of musl's, lets the linker drop libm.so (its
//! load-time relocations alone make ~0.5 MiB of it resident in every process that maps it;
//! docs/PERFORMANCE.md, "Memory").
//!
//! One of the crate's two audited `unsafe` uses (the other: `rpc::listen::adopt`): one call
//! into glibc with no pointer arguments, and the unmangled `pow` symbol.
#![allow(unsafe_code)]

/// C's `pow`, for every caller in the process (only tokio's scheduler calls it).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

/// Returns free heap pages to the system; true when some were released.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a size and touches only the allocator's own state,
        // under its own locks; it is safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pow_is_c_pow() {
        assert_eq!(super::pow(2.0, 10.0), 1024.0);
        assert_eq!(super::pow(0.8, 0.0), 1.0);
        // (0.8 ** 2.5 as CPython computes it with the platform libm.)
        assert!((super::pow(0.8, 2.5) - 0.5724334022399462).abs() < 1e-15);
        assert!(super::pow(-1.0, 0.5).is_nan());
    }
}

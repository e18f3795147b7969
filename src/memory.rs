//! Giving freed memory back to the system. glibc's malloc keeps freed blocks in its heaps
//! (only the top of a heap is returned on its own): after a flood of connections or a client
//! that made the daemon queue megabytes, the daemon would stay that large. `trim` asks glibc
//! to return every free page (`malloc_trim(0)`, which releases free pages inside the heaps
//! too). The server calls it, at most every few seconds, after connections that held much
//! memory have closed (`rpc::server`).
//!
//! One of the crate's two audited `unsafe` uses (the other: `rpc::listen::adopt`): one call
//! into glibc with no pointer arguments.
#![allow(unsafe_code)]

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

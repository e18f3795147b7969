//! Deterministic crash points (debug and test builds only): `METALVIRT_CRASH_AT=NAME` (or
//! `NAME#N`, the N-th time it is reached) makes the daemon kill itself with SIGKILL at that
//! step, exactly as a power cut or `kill -9` would. The crash-point harness
//! (`tests/blackbox/test_crash_points.py`) runs every operation with every point of it and
//! checks what the restarted daemon finds. Release builds compile every point to nothing.

/// Every point, in the order an operation reaches them.
pub const POINTS: &[&str] = &[
    "define:acked",
    "start:recorded",
    "start:mapped",
    "start:power-journaled",
    "start:powered",
    "start:active",
    "attach:journaled",
    "attach:mapped",
    "attach:committed",
    "detach:committed",
    "detach:unmapped",
    "resize:before",
    "resize:after",
    "stop:recorded",
    "stop:powered-off",
    "stop:unmapped",
];

/// Kills the daemon here when `METALVIRT_CRASH_AT` names this point.
#[cfg(debug_assertions)]
pub fn point(name: &'static str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static AT: OnceLock<Option<(String, u32)>> = OnceLock::new();
    static HITS: AtomicU32 = AtomicU32::new(0);
    debug_assert!(POINTS.contains(&name), "crash point {name} is not listed");
    let at = AT.get_or_init(|| {
        let v = std::env::var("METALVIRT_CRASH_AT").ok()?;
        match v.split_once('#') {
            Some((n, k)) => Some((n.to_string(), k.parse().unwrap_or(1))),
            None => Some((v, 1)),
        }
    });
    if let Some((want, nth)) = at {
        if want == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
            eprintln!("metalvirtd: crash point {name}: killing the daemon");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Release builds: nothing.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &'static str) {}

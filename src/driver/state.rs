//! Domain states and reasons with libvirt's numeric values. State and reason always change
//! together through [`Lifecycle`].

/// `virDomainState`.
#[allow(missing_docs)]
pub mod st {
    pub const NOSTATE: i32 = 0;
    pub const RUNNING: i32 = 1;
    pub const PAUSED: i32 = 3;
    pub const SHUTDOWN: i32 = 4;
    pub const SHUTOFF: i32 = 5;
}

/// Reasons, per state.
#[allow(missing_docs)]
pub mod reason {
    pub const RUNNING_UNKNOWN: i32 = 0;
    pub const RUNNING_BOOTED: i32 = 1;
    pub const RUNNING_UNPAUSED: i32 = 5;
    pub const PAUSED_USER: i32 = 1;
    pub const SHUTDOWN_USER: i32 = 1;
    pub const SHUTOFF_UNKNOWN: i32 = 0;
    pub const SHUTOFF_SHUTDOWN: i32 = 1;
    pub const SHUTOFF_DESTROYED: i32 = 2;
    pub const SHUTOFF_FAILED: i32 = 6;
    pub const SHUTOFF_DAEMON: i32 = 8;
}

/// Whether a state counts as active (libvirt: anything but SHUTOFF and NOSTATE... of a
/// defined domain with an id).
pub fn is_active(state: i32) -> bool {
    state != st::SHUTOFF && state != st::NOSTATE
}

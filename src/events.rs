//! Domain events as the driver publishes them (libvirt's numeric event ids and
//! event/detail values), and the bus that fans them out to connections.
//!
//! Backpressure: the bus is a bounded broadcast channel. A connection that falls more than
//! [`BUS_CAPACITY`] events behind is disconnected rather than allowed to stall anyone.

use std::sync::Arc;

use tokio::sync::broadcast;
use uuid::Uuid;

/// Events a lagging subscriber may fall behind before it is dropped (the ring is allocated
/// up front, so this is also its fixed memory cost).
pub const BUS_CAPACITY: usize = 1024;

/// `virDomainEventID` values metalvirt emits.
#[allow(missing_docs)]
pub mod id {
    pub const LIFECYCLE: i32 = 0;
    pub const REBOOT: i32 = 1;
    pub const DEVICE_REMOVED: i32 = 15;
    pub const DEVICE_ADDED: i32 = 19;
    pub const DEVICE_REMOVAL_FAILED: i32 = 22;
    /// `VIR_DOMAIN_EVENT_ID_LAST` of libvirt 9.x: ids at or above it are unknown.
    pub const LAST: i32 = 27;
}

/// `virDomainEventType` and detail values.
#[allow(missing_docs)]
pub mod lifecycle {
    pub const DEFINED: i32 = 0;
    pub const DEFINED_ADDED: i32 = 0;
    pub const DEFINED_UPDATED: i32 = 1;
    pub const UNDEFINED: i32 = 1;
    pub const UNDEFINED_REMOVED: i32 = 0;
    pub const STARTED: i32 = 2;
    pub const STARTED_BOOTED: i32 = 0;
    pub const SUSPENDED: i32 = 3;
    pub const SUSPENDED_PAUSED: i32 = 0;
    pub const RESUMED: i32 = 4;
    pub const RESUMED_UNPAUSED: i32 = 0;
    pub const STOPPED: i32 = 5;
    pub const STOPPED_SHUTDOWN: i32 = 0;
    pub const STOPPED_DESTROYED: i32 = 1;
    pub const STOPPED_FAILED: i32 = 5;
    pub const SHUTDOWN: i32 = 6;
    pub const SHUTDOWN_FINISHED: i32 = 0;
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Lifecycle change (`event`, `detail`).
    Lifecycle {
        /// `virDomainEventType`.
        event: i32,
        /// Detail for that type.
        detail: i32,
    },
    /// The server rebooted.
    Reboot,
    /// A device was hot-plugged (alias).
    DeviceAdded(String),
    /// A device was really removed (alias).
    DeviceRemoved(String),
    /// A device could not be removed (alias).
    DeviceRemovalFailed(String),
}

impl EventKind {
    /// The `virDomainEventID` this belongs to.
    pub fn event_id(&self) -> i32 {
        match self {
            EventKind::Lifecycle { .. } => id::LIFECYCLE,
            EventKind::Reboot => id::REBOOT,
            EventKind::DeviceAdded(_) => id::DEVICE_ADDED,
            EventKind::DeviceRemoved(_) => id::DEVICE_REMOVED,
            EventKind::DeviceRemovalFailed(_) => id::DEVICE_REMOVAL_FAILED,
        }
    }
}

/// An event about one domain; the domain fields are a snapshot taken when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEvent {
    /// Domain name.
    pub name: String,
    /// Domain uuid.
    pub uuid: Uuid,
    /// Domain id at the time (-1 when inactive).
    pub id: i32,
    /// What happened.
    pub kind: EventKind,
}

/// Fan-out of domain events to every interested connection.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<DomainEvent>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// A bus with [`BUS_CAPACITY`].
    pub fn new() -> Self {
        EventBus {
            tx: broadcast::channel(BUS_CAPACITY).0,
        }
    }

    /// Publishes; with nobody listening this costs nothing.
    pub fn publish(&self, ev: DomainEvent) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(ev));
        }
    }

    /// A new subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<DomainEvent>> {
        self.tx.subscribe()
    }
}

//! The domain lifecycle as one typed state machine: [`DomainState`] holds libvirt's state
//! together with its reason, and [`DomainState::next`] is the only way to a new one. It checks
//! that the transition is legal and returns the lifecycle events that announce it, so a state
//! change and its events cannot disagree. `DomState` (`driver/domstate.rs`, a module of its
//! own so the compiler keeps the field private) changes it only through this function.
//!
//! The table (docs/ARCHITECTURE.md reproduces it):
//!
//! | from | transition | to | events |
//! |---|---|---|---|
//! | shut off | `Started { paused: false }` | running (booted) | STARTED booted |
//! | shut off | `Started { paused: true }` | paused (user) | STARTED booted, SUSPENDED paused |
//! | shut off | `StartFailed` | shut off (failed) | — |
//! | shut off | `StartCancelled` | shut off (destroyed) | — |
//! | paused | `Resumed` | running (unpaused) | RESUMED unpaused |
//! | running, paused | `ShutdownFinished` | unchanged | SHUTDOWN finished |
//! | running, paused | `Stopped(why)` | shut off (why) | STOPPED (detail of why) |
//! | running, paused | `BmcLost` | same state, reason unknown | — |
//! | running, paused | `BmcBack(was)` | `was` (same state) | — |
//! | shut off, no state | `Recovered(s)` | `s` (active) | — |
//! | shut off | `InterruptedFinished(why)` | shut off (why) | — |
//! | any | `Unknown` | no state | — |

use crate::events::lifecycle as ev;

/// `virDomainState` numbers.
#[allow(missing_docs)]
pub mod st {
    pub const NOSTATE: i32 = 0;
    pub const RUNNING: i32 = 1;
    pub const PAUSED: i32 = 3;
    pub const SHUTDOWN: i32 = 4;
    pub const SHUTOFF: i32 = 5;
}

/// Why a domain runs (`virDomainRunningReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Running {
    /// Not known (the BMC stopped answering, or recovered so).
    Unknown = 0,
    /// Started.
    Booted = 1,
    /// Resumed from staged.
    Unpaused = 5,
}

/// Why a domain is paused (`virDomainPausedReason`): staged, power off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paused {
    /// Not known.
    Unknown = 0,
    /// Started paused (disks and NICs staged).
    User = 1,
}

/// Why a domain is shut off (`virDomainShutoffReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutoff {
    /// Never ran, or not known.
    Unknown = 0,
    /// The server was shut down (gracefully, or seen off).
    Shutdown = 1,
    /// Destroyed.
    Destroyed = 2,
    /// A start failed, or the server went off with a fault.
    Failed = 6,
    /// The daemon finished an operation a stop interrupted.
    Daemon = 8,
}

impl Shutoff {
    /// From a reason number (status files); unknown numbers are `Unknown`.
    pub fn from_code(r: i32) -> Shutoff {
        match r {
            1 => Shutoff::Shutdown,
            2 => Shutoff::Destroyed,
            6 => Shutoff::Failed,
            8 => Shutoff::Daemon,
            _ => Shutoff::Unknown,
        }
    }

    /// The STOPPED event's detail for this reason.
    fn stopped_detail(self) -> i32 {
        match self {
            Shutoff::Shutdown | Shutoff::Unknown => ev::STOPPED_SHUTDOWN,
            Shutoff::Destroyed => ev::STOPPED_DESTROYED,
            Shutoff::Failed | Shutoff::Daemon => ev::STOPPED_FAILED,
        }
    }
}

/// A domain's state with its reason: one value, so they always change together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    /// No state (a quarantined domain whose run could not be read).
    NoState,
    /// Running.
    Running(Running),
    /// Paused: staged, server off.
    Paused(Paused),
    /// Shut off.
    Shutoff(Shutoff),
}

/// What happens to a domain (see the table in the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A start brought the server up, or staged it (`paused`).
    Started {
        /// Staged with the power off (`VIR_DOMAIN_START_PAUSED`).
        paused: bool,
    },
    /// A start failed and was rolled back.
    StartFailed,
    /// A start was cancelled by a destroy and rolled back.
    StartCancelled,
    /// A staged domain's server was powered on.
    Resumed,
    /// The server was seen off after a shutdown (the run ends next).
    ShutdownFinished,
    /// The run ended.
    Stopped(Shutoff),
    /// The BMC stopped answering: the state stays, its reason becomes unknown.
    BmcLost,
    /// The BMC answers again: back to what it was.
    BmcBack(DomainState),
    /// Recovery re-attached a run recorded in this state.
    Recovered(DomainState),
    /// Recovery finished an operation a daemon stop interrupted.
    InterruptedFinished(Shutoff),
    /// The run's state cannot be known (quarantine).
    Unknown,
}

/// A transition the table does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Illegal {
    /// The state it was tried from.
    pub from: DomainState,
    /// The transition.
    pub transition: Transition,
}

impl std::fmt::Display for Illegal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "illegal lifecycle transition {:?} from {:?}",
            self.transition, self.from
        )
    }
}

/// A lifecycle event: (`virDomainEventType`, detail).
pub type Event = (i32, i32);

impl DomainState {
    /// A defined domain that never ran.
    pub const DEFINED: DomainState = DomainState::Shutoff(Shutoff::Unknown);

    /// `virDomainState`.
    pub fn code(self) -> i32 {
        match self {
            DomainState::NoState => st::NOSTATE,
            DomainState::Running(_) => st::RUNNING,
            DomainState::Paused(_) => st::PAUSED,
            DomainState::Shutoff(_) => st::SHUTOFF,
        }
    }

    /// The reason number of the state.
    pub fn reason_code(self) -> i32 {
        match self {
            DomainState::NoState => 0,
            DomainState::Running(r) => r as i32,
            DomainState::Paused(r) => r as i32,
            DomainState::Shutoff(r) => r as i32,
        }
    }

    /// From the numbers a status file records; `None` for a pair no run can be in.
    pub fn from_codes(state: i32, reason: i32) -> Option<DomainState> {
        Some(match (state, reason) {
            (st::RUNNING, 0) => DomainState::Running(Running::Unknown),
            (st::RUNNING, 1) => DomainState::Running(Running::Booted),
            (st::RUNNING, 5) => DomainState::Running(Running::Unpaused),
            (st::PAUSED, 0) => DomainState::Paused(Paused::Unknown),
            (st::PAUSED, 1) => DomainState::Paused(Paused::User),
            (st::SHUTOFF, r) => DomainState::Shutoff(Shutoff::from_code(r)),
            (st::NOSTATE, _) => DomainState::NoState,
            _ => return None,
        })
    }

    /// Active: running or paused (libvirt: it has an id).
    pub fn is_active(self) -> bool {
        matches!(self, DomainState::Running(_) | DomainState::Paused(_))
    }

    /// The same state with its reason unknown (the BMC stopped answering).
    fn reason_unknown(self) -> DomainState {
        match self {
            DomainState::Running(_) => DomainState::Running(Running::Unknown),
            DomainState::Paused(_) => DomainState::Paused(Paused::Unknown),
            other => other,
        }
    }

    /// The state after `t`, with the events that announce it; `Illegal` when the table has
    /// no such transition from this state.
    pub fn next(self, t: Transition) -> Result<(DomainState, Vec<Event>), Illegal> {
        use DomainState as S;
        use Transition as T;
        let illegal = Err(Illegal {
            from: self,
            transition: t,
        });
        let active = self.is_active();
        Ok(match (self, t) {
            (S::Shutoff(_), T::Started { paused: false }) => (
                S::Running(Running::Booted),
                vec![(ev::STARTED, ev::STARTED_BOOTED)],
            ),
            (S::Shutoff(_), T::Started { paused: true }) => (
                S::Paused(Paused::User),
                vec![
                    (ev::STARTED, ev::STARTED_BOOTED),
                    (ev::SUSPENDED, ev::SUSPENDED_PAUSED),
                ],
            ),
            (S::Shutoff(_), T::StartFailed) => (S::Shutoff(Shutoff::Failed), vec![]),
            (S::Shutoff(_), T::StartCancelled) => (S::Shutoff(Shutoff::Destroyed), vec![]),
            (S::Paused(_), T::Resumed) => (
                S::Running(Running::Unpaused),
                vec![(ev::RESUMED, ev::RESUMED_UNPAUSED)],
            ),
            (s, T::ShutdownFinished) if active => (s, vec![(ev::SHUTDOWN, ev::SHUTDOWN_FINISHED)]),
            (_, T::Stopped(why)) if active => {
                (S::Shutoff(why), vec![(ev::STOPPED, why.stopped_detail())])
            }
            (s, T::BmcLost) if active => (s.reason_unknown(), vec![]),
            (s, T::BmcBack(was)) if active && was.code() == s.code() => (was, vec![]),
            (S::Shutoff(_) | S::NoState, T::Recovered(to)) if to.is_active() => (to, vec![]),
            (S::Shutoff(_), T::InterruptedFinished(why)) => (S::Shutoff(why), vec![]),
            (_, T::Unknown) => (S::NoState, vec![]),
            _ => return illegal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_STATES: [DomainState; 12] = [
        DomainState::NoState,
        DomainState::Running(Running::Unknown),
        DomainState::Running(Running::Booted),
        DomainState::Running(Running::Unpaused),
        DomainState::Paused(Paused::Unknown),
        DomainState::Paused(Paused::User),
        DomainState::Shutoff(Shutoff::Unknown),
        DomainState::Shutoff(Shutoff::Shutdown),
        DomainState::Shutoff(Shutoff::Destroyed),
        DomainState::Shutoff(Shutoff::Failed),
        DomainState::Shutoff(Shutoff::Daemon),
        DomainState::DEFINED,
    ];

    #[test]
    fn numbers_are_libvirts_and_read_back() {
        let booted = DomainState::Running(Running::Booted);
        assert_eq!((booted.code(), booted.reason_code()), (1, 1));
        let staged = DomainState::Paused(Paused::User);
        assert_eq!((staged.code(), staged.reason_code()), (3, 1));
        let destroyed = DomainState::Shutoff(Shutoff::Destroyed);
        assert_eq!((destroyed.code(), destroyed.reason_code()), (5, 2));
        for s in ALL_STATES {
            assert_eq!(DomainState::from_codes(s.code(), s.reason_code()), Some(s));
        }
        assert_eq!(DomainState::from_codes(st::RUNNING, 9), None);
        assert_eq!(DomainState::from_codes(st::SHUTDOWN, 1), None);
    }

    #[test]
    fn the_table() {
        use DomainState as S;
        use Transition as T;
        let off = S::Shutoff(Shutoff::Destroyed);
        let running = S::Running(Running::Booted);
        let staged = S::Paused(Paused::User);
        let ok = |from: S, t: T| from.next(t).unwrap();
        assert_eq!(
            ok(off, T::Started { paused: false }),
            (running, vec![(ev::STARTED, ev::STARTED_BOOTED)])
        );
        assert_eq!(
            ok(off, T::Started { paused: true }),
            (
                staged,
                vec![
                    (ev::STARTED, ev::STARTED_BOOTED),
                    (ev::SUSPENDED, ev::SUSPENDED_PAUSED)
                ]
            )
        );
        assert_eq!(
            ok(staged, T::Resumed),
            (
                S::Running(Running::Unpaused),
                vec![(ev::RESUMED, ev::RESUMED_UNPAUSED)]
            )
        );
        for (why, detail) in [
            (Shutoff::Shutdown, ev::STOPPED_SHUTDOWN),
            (Shutoff::Destroyed, ev::STOPPED_DESTROYED),
            (Shutoff::Failed, ev::STOPPED_FAILED),
        ] {
            assert_eq!(
                ok(running, T::Stopped(why)),
                (S::Shutoff(why), vec![(ev::STOPPED, detail)])
            );
            assert_eq!(ok(staged, T::Stopped(why)).0, S::Shutoff(why));
        }
        assert_eq!(
            ok(running, T::ShutdownFinished),
            (running, vec![(ev::SHUTDOWN, ev::SHUTDOWN_FINISHED)])
        );
        // The BMC goes away and comes back: the reason is restored, the state never moves.
        let lost = ok(running, T::BmcLost).0;
        assert_eq!(lost, S::Running(Running::Unknown));
        assert_eq!(ok(lost, T::BmcBack(running)).0, running);
        assert_eq!(ok(staged, T::BmcLost).0, S::Paused(Paused::Unknown));
        assert!(lost.next(T::BmcBack(off)).is_err());
        // Failed and cancelled starts never ran: no event.
        assert_eq!(
            ok(off, T::StartFailed),
            (S::Shutoff(Shutoff::Failed), vec![])
        );
        assert_eq!(
            ok(S::Shutoff(Shutoff::Failed), T::StartCancelled),
            (off, vec![])
        );
        assert_eq!(ok(S::DEFINED, T::Recovered(staged)).0, staged);
        assert_eq!(ok(S::NoState, T::Recovered(running)).0, running);
        assert_eq!(
            ok(S::DEFINED, T::InterruptedFinished(Shutoff::Daemon)).0,
            S::Shutoff(Shutoff::Daemon)
        );
        assert_eq!(ok(running, T::Unknown).0, S::NoState);
    }

    #[test]
    fn everything_else_is_illegal() {
        use DomainState as S;
        use Transition as T;
        let transitions = [
            T::Started { paused: false },
            T::Started { paused: true },
            T::StartFailed,
            T::StartCancelled,
            T::Resumed,
            T::ShutdownFinished,
            T::Stopped(Shutoff::Destroyed),
            T::BmcLost,
            T::BmcBack(S::Running(Running::Booted)),
            T::Recovered(S::Running(Running::Booted)),
            T::InterruptedFinished(Shutoff::Daemon),
            T::Unknown,
        ];
        let mut legal = 0;
        for from in ALL_STATES {
            for t in transitions {
                let Ok((to, events)) = from.next(t) else {
                    continue;
                };
                legal += 1;
                // Only starts, resumes and stops change whether the domain is active, and
                // each of them announces it.
                if to.is_active() != from.is_active() && !matches!(t, T::Recovered(_) | T::Unknown)
                {
                    assert!(!events.is_empty(), "{from:?} -{t:?}-> {to:?} has no event");
                }
            }
        }
        // Nothing starts twice, stops while off, or resumes a running domain.
        let running = S::Running(Running::Booted);
        assert!(running.next(T::Started { paused: false }).is_err());
        assert!(running.next(T::Resumed).is_err());
        assert!(S::DEFINED.next(T::Stopped(Shutoff::Destroyed)).is_err());
        assert!(S::DEFINED.next(T::BmcLost).is_err());
        assert!(running.next(T::Recovered(running)).is_err());
        assert!(running.next(T::StartFailed).is_err());
        assert!(legal > 20 && legal < ALL_STATES.len() * transitions.len());
    }
}

//! OpenBMC over D-Bus: the host's power through phosphor-state-manager's objects and the
//! boot override through the settings daemon's, on the BMC's own bus (a metalvirtd or agent
//! running on the BMC or given its bus).
//!
//! | what | object | interface, property |
//! |---|---|---|
//! | state | `/xyz/openbmc_project/state/host0` | `State.Host` `CurrentHostState` |
//! | chassis power | `/xyz/openbmc_project/state/chassis0` | `State.Chassis` `CurrentPowerState` |
//! | on, graceful off, restarts | host0 | `State.Host` `RequestedHostTransition` |
//! | hard off | chassis0 | `State.Chassis` `RequestedPowerTransition` |
//! | boot device, mode | `/xyz/openbmc_project/control/host0/boot` | `Control.Boot.Source` `BootSource`, `Control.Boot.Type` `BootType` |
//! | next boot only | `…/boot/one_time` | `Object.Enable` `Enabled` |
//!
//! A transition request returns at once; the state changes later, announced by a
//! `PropertiesChanged` signal. A task keeps a subscription to those signals on host0 and
//! chassis0 and bumps [`Power::power_events`](crate::backend::Power::power_events) for each,
//! so the driver learns of an out-of-band power change within milliseconds instead of at its
//! next poll.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{watch, Mutex};
use zbus::Connection;

use crate::backend::{
    BResult, BackendError, BootDev, BootMode, BootRequest, ErrorKind, Power, PowerReading,
    PowerState,
};

const HOST_SERVICE: &str = "xyz.openbmc_project.State.Host";
const HOST_PATH: &str = "/xyz/openbmc_project/state/host0";
const HOST_IFACE: &str = "xyz.openbmc_project.State.Host";
const CHASSIS_SERVICE: &str = "xyz.openbmc_project.State.Chassis";
const CHASSIS_PATH: &str = "/xyz/openbmc_project/state/chassis0";
const CHASSIS_IFACE: &str = "xyz.openbmc_project.State.Chassis";
const SETTINGS_SERVICE: &str = "xyz.openbmc_project.Settings";
const BOOT_PATH: &str = "/xyz/openbmc_project/control/host0/boot";
const ONE_TIME_PATH: &str = "/xyz/openbmc_project/control/host0/boot/one_time";

/// How to reach one OpenBMC.
#[derive(Debug, Clone)]
pub struct OpenBmcSettings {
    /// The node, for messages.
    pub node: String,
    /// The bus's address (`unix:path=…`); `None`: the system bus.
    pub address: Option<String>,
    /// Time limit of one call.
    pub timeout: Duration,
}

/// An OpenBMC's host power and boot settings over D-Bus.
pub struct OpenBmc {
    settings: OpenBmcSettings,
    conn: Mutex<Option<Connection>>,
    events: watch::Sender<u64>,
}

impl std::fmt::Debug for OpenBmc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpenBmc({})", self.settings.node)
    }
}

fn classify(e: &zbus::Error) -> ErrorKind {
    use zbus::DBusError;
    let name = match e {
        zbus::Error::InputOutput(_) | zbus::Error::Address(_) | zbus::Error::Handshake(_) => {
            return ErrorKind::Unreachable
        }
        zbus::Error::MethodError(name, _, _) => name.as_str().to_string(),
        zbus::Error::FDO(f) => f.name().as_str().to_string(),
        _ => return ErrorKind::Failed,
    };
    let is = |suffix: &str| name.ends_with(suffix);
    if is("AccessDenied") || is("AuthFailed") {
        ErrorKind::Auth
    } else if is("ServiceUnknown") || is("NameHasNoOwner") || is("NoReply") || is("Disconnected") {
        ErrorKind::Unreachable
    } else if is("UnknownProperty")
        || is("UnknownInterface")
        || is("UnknownObject")
        || is("UnknownMethod")
        || is("NotSupported")
    {
        ErrorKind::Unsupported
    } else {
        ErrorKind::Failed
    }
}

/// The power state a `CurrentHostState` value stands for, with a fault when it names one.
pub fn host_state(value: &str) -> Option<PowerReading> {
    let v = value.rsplit('.').next()?;
    Some(match v {
        "Running" | "Standby" | "DiagnosticMode" => PowerReading::ok(PowerState::On),
        "Off" => PowerReading::ok(PowerState::Off),
        "TransitioningToRunning" => PowerReading::ok(PowerState::PoweringOn),
        "TransitioningToOff" => PowerReading::ok(PowerState::PoweringOff),
        "Quiesced" => PowerReading {
            state: PowerState::On,
            fault: Some("the host is quiesced (its firmware or OS stopped on an error)".into()),
        },
        _ => return None,
    })
}

/// The `Control.Boot.Source` value for a boot device.
pub fn boot_source(dev: BootDev) -> &'static str {
    match dev {
        BootDev::Disk => "xyz.openbmc_project.Control.Boot.Source.Sources.Disk",
        BootDev::Network => "xyz.openbmc_project.Control.Boot.Source.Sources.Network",
        BootDev::Cdrom => "xyz.openbmc_project.Control.Boot.Source.Sources.ExternalMedia",
    }
}

impl OpenBmc {
    /// Starts watching the BMC's power signals. Must run inside a tokio runtime.
    pub fn new(settings: OpenBmcSettings) -> Arc<OpenBmc> {
        let b = Arc::new(OpenBmc {
            settings,
            conn: Mutex::new(None),
            events: watch::Sender::new(0),
        });
        tokio::spawn(Self::watch(Arc::downgrade(&b)));
        b
    }

    fn err(&self, kind: ErrorKind, what: impl std::fmt::Display) -> BackendError {
        BackendError::with_kind(
            kind,
            format!("OpenBMC of node {}: {what}", self.settings.node),
        )
    }

    fn zerr(&self, what: &str, e: zbus::Error) -> BackendError {
        self.err(classify(&e), format!("{what}: {e}"))
    }

    /// The bus connection, opened when there is none.
    async fn conn(&self) -> BResult<Connection> {
        let mut c = self.conn.lock().await;
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let b = match &self.settings.address {
            Some(a) => zbus::connection::Builder::address(a.as_str()),
            None => zbus::connection::Builder::system(),
        };
        let conn = tokio::time::timeout(self.settings.timeout, b.build())
            .await
            .map_err(|_| self.err(ErrorKind::Timeout, "no D-Bus connection in time"))?
            .map_err(|e| self.zerr("cannot connect to its D-Bus", e))?;
        *c = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets a connection that failed, so the next call opens another.
    async fn drop_conn(&self, e: &BackendError) {
        if e.kind == ErrorKind::Unreachable {
            *self.conn.lock().await = None;
        }
    }

    async fn proxy<'a>(
        &self,
        conn: &Connection,
        service: &'a str,
        path: &'a str,
        iface: &'a str,
    ) -> BResult<zbus::Proxy<'a>> {
        zbus::proxy::Builder::new(conn)
            .destination(service)
            .path(path)
            .interface(iface)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| self.zerr(&format!("no {iface} at {path}"), e))
    }

    async fn get(&self, service: &str, path: &str, iface: &str, prop: &str) -> BResult<String> {
        let r = async {
            let conn = self.conn().await?;
            let p = self.proxy(&conn, service, path, iface).await?;
            tokio::time::timeout(self.settings.timeout, p.get_property::<String>(prop))
                .await
                .map_err(|_| self.err(ErrorKind::Timeout, format!("no answer for {prop}")))?
                .map_err(|e| self.zerr(&format!("cannot read {prop}"), e))
        }
        .await;
        if let Err(e) = &r {
            self.drop_conn(e).await;
        }
        r
    }

    async fn set<T>(&self, service: &str, path: &str, iface: &str, prop: &str, v: T) -> BResult<()>
    where
        T: serde::Serialize + zbus::zvariant::Type + Send,
    {
        let r = async {
            let conn = self.conn().await?;
            let p = self.proxy(&conn, service, path, iface).await?;
            tokio::time::timeout(self.settings.timeout, p.set_property(prop, v))
                .await
                .map_err(|_| self.err(ErrorKind::Timeout, format!("no answer setting {prop}")))?
                .map_err(|e| self.zerr(&format!("cannot set {prop}"), zbus::Error::from(e)))
        }
        .await;
        if let Err(e) = &r {
            self.drop_conn(e).await;
        }
        r
    }

    async fn host_transition(&self, to: &str) -> BResult<()> {
        self.set(
            HOST_SERVICE,
            HOST_PATH,
            HOST_IFACE,
            "RequestedHostTransition",
            format!("xyz.openbmc_project.State.Host.Transition.{to}"),
        )
        .await
    }

    /// Keeps a subscription to PropertiesChanged of host0 and chassis0; each signal bumps
    /// the event counter. Re-subscribes (and bumps once, for what it may have missed) after
    /// the bus connection is lost.
    async fn watch(me: Weak<OpenBmc>) {
        let mut pause = Duration::from_millis(250);
        loop {
            let Some(b) = me.upgrade() else { return };
            let streams = async {
                let conn = b.conn().await?;
                let mut out = Vec::new();
                for (service, path) in [(HOST_SERVICE, HOST_PATH), (CHASSIS_SERVICE, CHASSIS_PATH)]
                {
                    let props = zbus::fdo::PropertiesProxy::builder(&conn)
                        .destination(service)
                        .path(path)
                        .build()
                        .await
                        .map_err(|e| b.zerr("cannot watch power changes", e))?;
                    out.push(
                        props
                            .receive_properties_changed()
                            .await
                            .map_err(|e| b.zerr("cannot watch power changes", e))?,
                    );
                }
                Ok::<_, BackendError>(out)
            }
            .await;
            match streams {
                Ok(s) => {
                    pause = Duration::from_millis(250);
                    // Whatever changed while no one listened.
                    b.events.send_modify(|n| *n += 1);
                    let events = b.events.clone();
                    drop(b);
                    let mut merged = futures::stream::select_all(s);
                    while let Some(sig) = merged.next().await {
                        let relevant = sig.args().is_ok_and(|a| {
                            a.changed_properties().contains_key("CurrentHostState")
                                || a.changed_properties().contains_key("CurrentPowerState")
                        });
                        if relevant {
                            events.send_modify(|n| *n += 1);
                        }
                    }
                    // The connection ended.
                    if let Some(b) = me.upgrade() {
                        *b.conn.lock().await = None;
                    }
                }
                Err(e) => {
                    tracing::debug!(node = %b.settings.node, "cannot watch the OpenBMC's power signals yet: {e}");
                    drop(b);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[async_trait]
impl Power for OpenBmc {
    async fn state(&self) -> BResult<PowerReading> {
        let host = self
            .get(HOST_SERVICE, HOST_PATH, HOST_IFACE, "CurrentHostState")
            .await?;
        let reading = host_state(&host).ok_or_else(|| {
            self.err(
                ErrorKind::Failed,
                format!("unknown CurrentHostState '{host}'"),
            )
        })?;
        // A host reading Off with the chassis still powered is on its way off.
        if reading.state == PowerState::Off {
            if let Ok(p) = self
                .get(
                    CHASSIS_SERVICE,
                    CHASSIS_PATH,
                    CHASSIS_IFACE,
                    "CurrentPowerState",
                )
                .await
            {
                if p.ends_with(".On") || p.ends_with(".TransitioningToOff") {
                    return Ok(PowerReading::ok(PowerState::PoweringOff));
                }
            }
        }
        Ok(reading)
    }

    async fn on(&self) -> BResult<()> {
        self.host_transition("On").await
    }

    async fn off(&self, hard: bool) -> BResult<()> {
        if hard {
            self.set(
                CHASSIS_SERVICE,
                CHASSIS_PATH,
                CHASSIS_IFACE,
                "RequestedPowerTransition",
                "xyz.openbmc_project.State.Chassis.Transition.Off".to_string(),
            )
            .await
        } else {
            self.host_transition("Off").await
        }
    }

    async fn restart(&self, hard: bool) -> BResult<()> {
        self.host_transition(if hard {
            "ForceWarmReboot"
        } else {
            "GracefulWarmReboot"
        })
        .await
    }

    async fn set_boot(&self, req: &BootRequest) -> BResult<()> {
        self.set(
            SETTINGS_SERVICE,
            BOOT_PATH,
            "xyz.openbmc_project.Control.Boot.Source",
            "BootSource",
            boot_source(req.dev).to_string(),
        )
        .await?;
        if let Some(mode) = req.mode {
            let t = match mode {
                BootMode::Uefi => "xyz.openbmc_project.Control.Boot.Type.Types.EFI",
                BootMode::Legacy => "xyz.openbmc_project.Control.Boot.Type.Types.Legacy",
            };
            self.set(
                SETTINGS_SERVICE,
                BOOT_PATH,
                "xyz.openbmc_project.Control.Boot.Type",
                "BootType",
                t.to_string(),
            )
            .await?;
        }
        self.set(
            SETTINGS_SERVICE,
            ONE_TIME_PATH,
            "xyz.openbmc_project.Object.Enable",
            "Enabled",
            !req.persistent,
        )
        .await
    }

    fn power_events(&self) -> Option<watch::Receiver<u64>> {
        Some(self.events.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_states_read_as_libvirt_power() {
        let s = |v: &str| host_state(&format!("xyz.openbmc_project.State.Host.HostState.{v}"));
        assert_eq!(s("Running").unwrap(), PowerReading::ok(PowerState::On));
        assert_eq!(s("Off").unwrap(), PowerReading::ok(PowerState::Off));
        assert_eq!(
            s("TransitioningToRunning").unwrap().state,
            PowerState::PoweringOn
        );
        assert_eq!(
            s("TransitioningToOff").unwrap().state,
            PowerState::PoweringOff
        );
        assert!(s("Quiesced").unwrap().fault.unwrap().contains("quiesced"));
        assert_eq!(s("Bogus"), None);
    }
}

//! The `Power` trait over the Redfish client.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::backend::bmc::Action;
use crate::backend::{
    BResult, BackendError, BootDev, BootMode, BootRequest, ConsoleIo, ErrorKind, Power,
    PowerReading, Sensors,
};

use super::*;

#[async_trait]
impl Power for Redfish {
    async fn state(&self) -> BResult<PowerReading> {
        let sys = self.system().await?;
        let r = self.call(Method::GET, &sys.path, None).await?;
        power_reading(&r.body).map_err(|e| BackendError::new(format!("{} {e}", self.who())))
    }

    async fn sensors(&self) -> BResult<Sensors> {
        let paths = self.sensor_paths().await?;
        let get = |p: &Option<String>| {
            let p = p.clone();
            async move {
                match p {
                    Some(p) => self.call(Method::GET, &p, None).await.map(|r| Some(r.body)),
                    None => Ok(None),
                }
            }
        };
        let mut s = Sensors::default();
        if let Some(env) = get(&paths.environment).await? {
            (s.power_watts, s.inlet_celsius) = environment(&env);
        }
        if s.power_watts.is_none() {
            s.power_watts = get(&paths.power).await?.as_ref().and_then(power_consumed);
        }
        if s.inlet_celsius.is_none() {
            s.inlet_celsius = get(&paths.thermal).await?.as_ref().and_then(inlet_celsius);
        }
        Ok(s)
    }

    async fn console(&self) -> BResult<ConsoleIo> {
        Err(BackendError::with_kind(
            ErrorKind::Unsupported,
            format!(
                "{} is driven over Redfish, which gives metalvirt no serial console (Serial-over-LAN needs the node's BMC over IPMI)",
                self.who()
            ),
        ))
    }

    async fn on(&self) -> BResult<()> {
        self.reset(Action::On).await
    }

    async fn off(&self, hard: bool) -> BResult<()> {
        self.reset(if hard {
            Action::ForceOff
        } else {
            Action::GracefulOff
        })
        .await
    }

    async fn restart(&self, hard: bool) -> BResult<()> {
        self.reset(if hard {
            Action::ForceRestart
        } else {
            Action::GracefulRestart
        })
        .await
    }

    async fn set_boot(&self, req: &BootRequest) -> BResult<()> {
        let sys = self.system().await?;
        let target = match req.dev {
            BootDev::Disk => "Hdd",
            BootDev::Network => "Pxe",
            BootDev::Cdrom => "Cd",
        };
        if !sys.boot_targets.is_empty() && !sys.boot_targets.iter().any(|t| t == target) {
            return Err(BackendError::with_kind(
                ErrorKind::Unsupported,
                format!(
                    "{} cannot boot from {target} (it offers: {})",
                    self.who(),
                    sys.boot_targets.join(", ")
                ),
            ));
        }
        let mut boot = json!({
            "BootSourceOverrideTarget": target,
            "BootSourceOverrideEnabled": if req.persistent { "Continuous" } else { "Once" },
        });
        let mode = req.mode.map(|m| match m {
            BootMode::Uefi => "UEFI",
            BootMode::Legacy => "Legacy",
        });
        let mode = mode.filter(|m| {
            sys.has_mode && (sys.boot_modes.is_empty() || sys.boot_modes.iter().any(|x| x == m))
        });
        if let Some(m) = mode {
            boot["BootSourceOverrideMode"] = json!(m);
        }
        let mut etag: Option<String> = None;
        let mut tries = 0;
        loop {
            tries += 1;
            let r = self.patch_boot(&sys, &boot, etag.as_ref()).await?;
            match r.status {
                st if st.is_success() => return Ok(()),
                // Some BMCs reject the Mode property (or this mode): boot without it.
                StatusCode::BAD_REQUEST
                    if boot
                        .as_object_mut()
                        .and_then(|o| o.remove("BootSourceOverrideMode"))
                        .is_some() =>
                {
                    tracing::warn!(node = %self.s.node, "BMC refused BootSourceOverrideMode ({}); setting the boot device without it", r.message());
                }
                // The BMC wants If-Match: fetch the ETag and try again.
                StatusCode::PRECONDITION_FAILED | StatusCode::PRECONDITION_REQUIRED
                    if tries < 3 =>
                {
                    let g = self.call(Method::GET, &sys.path, None).await?;
                    etag = g
                        .header(reqwest::header::ETAG)
                        .or_else(|| g.body["@odata.etag"].as_str().map(str::to_string));
                }
                _ => return self.check(&Method::PATCH, &sys.path, r).map(|_| ()),
            }
        }
    }

    async fn close(&self) {
        let mut a = self.auth.lock().await;
        if let Auth::Session { uri, .. } = &*a {
            if !uri.is_empty() {
                let limit = Duration::from_secs(5);
                match self
                    .send(&Method::DELETE, uri, None, &[], Some(&a), limit)
                    .await
                {
                    Ok(r) => {
                        tracing::debug!(node = %self.s.node, status = %r.status, "Redfish session closed")
                    }
                    Err(e) => tracing::warn!(node = %self.s.node, "Redfish logout failed: {e}"),
                }
            }
        }
        *a = Auth::Unknown;
    }
}

//! Reading what a BMC answers: its error messages, URLs, power states, Retry-After, the
//! ComputerSystem fields and collections the client uses (and the fuzz entry over them).

use std::time::Duration;

use serde_json::Value;

use crate::backend::bmc::{pick_reset_type, Action};
use crate::backend::{PowerReading, PowerState};

use super::{System, MAX_RETRY_AFTER};

/// The BMC's own message from an error body: Redfish `error.@Message.ExtendedInfo[].Message`
/// and `error.message`, else the text itself (shortened).
pub(super) fn bmc_message(body: &Value, raw: &[u8]) -> String {
    let err = &body["error"];
    let mut parts: Vec<String> = err["@Message.ExtendedInfo"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["Message"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        if let Some(m) = err["message"].as_str() {
            parts.push(m.to_string());
        }
    }
    if parts.is_empty() {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim();
        if !text.is_empty() && !text.starts_with('<') {
            parts.push(text.chars().take(200).collect());
        }
    }
    parts.join("; ")
}

/// Scheme, host and port (the default port of the scheme when none is written).
pub(super) fn origin_of(url: &str) -> Result<(String, String, u16), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    let host = u.host_str().ok_or("no host")?.to_ascii_lowercase();
    let port = u.port_or_known_default().ok_or("no port")?;
    Ok((u.scheme().to_string(), host, port))
}

/// Resolves a BMC-supplied path against the base URL: a path from the root (`/redfish/...`)
/// is taken on the base; an absolute URL only when it has the base's origin.
pub(super) fn resolve_on(base: &str, path: &str) -> Result<String, String> {
    if path.starts_with('/') && !path.starts_with("//") {
        return Ok(format!("{base}{path}"));
    }
    if path.contains("://") {
        let theirs = origin_of(path)?;
        if theirs == origin_of(base)? {
            return Ok(path.to_string());
        }
        return Err(format!(
            "it points away from the configured BMC {base} (credentials are sent only there)"
        ));
    }
    Err("not a path from the service root".into())
}

pub(super) fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn odata_id(v: &Value) -> Option<String> {
    v["@odata.id"].as_str().map(str::to_string)
}

pub(super) fn power_state(s: &str) -> Option<PowerState> {
    match s {
        "On" => Some(PowerState::On),
        "Off" => Some(PowerState::Off),
        "PoweringOn" => Some(PowerState::PoweringOn),
        "PoweringOff" => Some(PowerState::PoweringOff),
        // A paused system is powered (DMTF: "Paused" means on, execution suspended).
        "Paused" => Some(PowerState::On),
        _ => None,
    }
}

pub(super) fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

/// What a ComputerSystem resource says about driving it, and where to read its reset
/// types when it does not list them (`@Redfish.ActionInfo`).
pub(super) fn system_from_body(path: String, sys: &Value) -> (System, Option<String>) {
    let reset = &sys["Actions"]["#ComputerSystem.Reset"];
    let reset_target = reset["target"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{path}/Actions/ComputerSystem.Reset"));
    let reset_types = str_list(&reset["ResetType@Redfish.AllowableValues"]);
    let action_info = if reset_types.is_empty() {
        reset["@Redfish.ActionInfo"].as_str().map(str::to_string)
    } else {
        None
    };
    let boot = &sys["Boot"];
    let system = System {
        path: odata_id(sys).unwrap_or(path),
        reset_target,
        reset_types,
        boot_targets: str_list(&boot["BootSourceOverrideTarget@Redfish.AllowableValues"]),
        boot_modes: str_list(&boot["BootSourceOverrideMode@Redfish.AllowableValues"]),
        has_mode: boot.get("BootSourceOverrideMode").is_some(),
        chassis: sys["Links"]["Chassis"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(odata_id),
    };
    (system, action_info)
}

/// The reset types an ActionInfo resource allows.
pub(super) fn reset_types_from_action_info(info: &Value) -> Vec<String> {
    info["Parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["Name"] == "ResetType"))
        .map(|p| str_list(&p["AllowableValues"]))
        .unwrap_or_default()
}

/// The member paths of a collection.
pub(super) fn members(coll: &Value) -> Vec<String> {
    coll["Members"]
        .as_array()
        .map(|a| a.iter().filter_map(odata_id).collect())
        .unwrap_or_default()
}

/// Whether a ComputerSystem is the one configured by Id, UUID or Name.
pub(super) fn is_system(sys: &Value, want: &str) -> bool {
    let hit = |k: &str| {
        sys[k]
            .as_str()
            .is_some_and(|v| v.eq_ignore_ascii_case(want))
    };
    hit("Id") || hit("UUID") || hit("Name")
}

/// Power state and fault of a ComputerSystem.
pub(super) fn power_reading(sys: &Value) -> Result<PowerReading, String> {
    let ps = sys["PowerState"].as_str().unwrap_or("");
    let state = power_state(ps).ok_or_else(|| format!("reports an unknown PowerState '{ps}'"))?;
    let health = sys["Status"]["Health"].as_str().unwrap_or("OK");
    let fault = (health == "Critical").then(|| {
        let st = sys["Status"]["State"].as_str().unwrap_or("unknown");
        format!("BMC reports health Critical (state {st})")
    });
    Ok(PowerReading { state, fault })
}

/// Fuzz target: whatever a BMC sends as a body, every interpretation of it is total, and no
/// path in it resolves to a URL outside the configured BMC (where credentials would go).
#[doc(hidden)]
pub fn fuzz_bodies(data: &[u8]) {
    let body: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
    let _ = bmc_message(&body, data);
    let _ = power_reading(&body);
    let _ = is_system(&body, "1");
    let _ = reset_types_from_action_info(&body);
    let (sys, info) = system_from_body("/redfish/v1/Systems/1".into(), &body);
    let _ = pick_reset_type(Action::On, &sys.reset_types);
    let mut paths = members(&body);
    paths.extend([sys.path, sys.reset_target]);
    paths.extend(info);
    paths.extend(odata_id(&body["Links"]["Sessions"]));
    for base in ["https://10.0.0.5", "http://127.0.0.1:8000"] {
        let home = origin_of(base).expect("base parses");
        for p in &paths {
            if let Ok(url) = resolve_on(base, p) {
                assert_eq!(
                    origin_of(&url).ok(),
                    Some(home.clone()),
                    "{p} resolved to {url}, away from {base}"
                );
            }
        }
    }
}

/// The power a `Power` resource reports drawn: the first `PowerControl` entry with a
/// `PowerConsumedWatts` reading.
pub(super) fn power_consumed(power: &Value) -> Option<f64> {
    power["PowerControl"]
        .as_array()?
        .iter()
        .find_map(|c| c["PowerConsumedWatts"].as_f64())
}

/// The inlet temperature a `Thermal` resource reports: the `Intake` sensor, else one named
/// inlet or intake, with a reading.
pub(super) fn inlet_celsius(thermal: &Value) -> Option<f64> {
    let temps = thermal["Temperatures"].as_array()?;
    let named = |t: &&Value| {
        let name = t["Name"].as_str().unwrap_or("").to_ascii_lowercase();
        name.contains("inlet") || name.contains("intake")
    };
    temps
        .iter()
        .filter(|t| t["ReadingCelsius"].is_number())
        .find(|t| t["PhysicalContext"] == "Intake")
        .or_else(|| {
            temps
                .iter()
                .filter(|t| t["ReadingCelsius"].is_number())
                .find(named)
        })
        .and_then(|t| t["ReadingCelsius"].as_f64())
}

/// The readings of an `EnvironmentMetrics` resource: (watts, °C).
pub(super) fn environment(env: &Value) -> (Option<f64>, Option<f64>) {
    (
        env["PowerWatts"]["Reading"].as_f64(),
        env["TemperatureCelsius"]["Reading"].as_f64(),
    )
}

//! The daemon's replica of the OVSDB tables it watches (bridges, ports, interfaces),
//! kept by an OVSDB `monitor`, and the helpers that read OVSDB's JSON values.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use super::*;

/// The members of an OVSDB set (a bare atom is a set of one).
pub(super) fn atoms(v: &Value) -> &[Value] {
    match v.as_array().map(Vec::as_slice) {
        Some([tag, Value::Array(items)]) if tag == "set" => items,
        Some([tag, _]) if tag == "uuid" || tag == "named-uuid" => std::slice::from_ref(v),
        Some(_) => &[],
        None => std::slice::from_ref(v),
    }
}

pub(super) fn uuid_of(v: &Value) -> Option<String> {
    match v.as_array().map(Vec::as_slice) {
        Some([tag, Value::String(u)]) if tag == "uuid" => Some(u.clone()),
        _ => None,
    }
}

pub(super) fn uuids(v: &Value) -> Vec<String> {
    atoms(v).iter().filter_map(uuid_of).collect()
}

pub(super) fn string_map(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some([tag, Value::Array(pairs)]) = v.as_array().map(Vec::as_slice) {
        if tag == "map" {
            for p in pairs {
                if let Some([Value::String(k), Value::String(v)]) = p.as_array().map(Vec::as_slice)
                {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    out
}

pub(super) fn ovs_map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Value {
    let pairs: Vec<Value> = pairs.into_iter().map(|(k, v)| json!([k, v])).collect();
    json!(["map", pairs])
}

// ------------------------------------------------------------------ replica

#[derive(Debug, Clone, Default)]
pub(super) struct Iface {
    pub(super) name: String,
    pub(super) ofport: Option<i64>,
    pub(super) error: Option<String>,
    pub(super) external_ids: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Port {
    pub(super) interfaces: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Bridge {
    pub(super) name: String,
    pub(super) ports: Vec<String>,
}

/// The rows NIC plumbing reads, as the server last reported them.
#[derive(Debug, Default)]
pub(super) struct Replica {
    pub(super) ifaces: HashMap<String, Iface>,
    pub(super) ports: HashMap<String, Port>,
    pub(super) bridges: HashMap<String, Bridge>,
    pub(super) cur_cfg: i64,
}

impl Replica {
    pub(super) fn apply(&mut self, updates: &Value) {
        let Some(tables) = updates.as_object() else {
            return;
        };
        for (table, rows) in tables {
            let Some(rows) = rows.as_object() else {
                continue;
            };
            for (uuid, change) in rows {
                let new = change.get("new").filter(|n| n.is_object());
                match (table.as_str(), new) {
                    ("Interface", None) => {
                        self.ifaces.remove(uuid);
                    }
                    ("Interface", Some(n)) => {
                        let iface = Iface {
                            name: n["name"].as_str().unwrap_or("").to_string(),
                            ofport: atoms(&n["ofport"]).first().and_then(Value::as_i64),
                            error: atoms(&n["error"])
                                .first()
                                .and_then(Value::as_str)
                                .map(str::to_string),
                            external_ids: string_map(&n["external_ids"]),
                        };
                        self.ifaces.insert(uuid.clone(), iface);
                    }
                    ("Port", None) => {
                        self.ports.remove(uuid);
                    }
                    ("Port", Some(n)) => {
                        let port = Port {
                            interfaces: uuids(&n["interfaces"]),
                        };
                        self.ports.insert(uuid.clone(), port);
                    }
                    ("Bridge", None) => {
                        self.bridges.remove(uuid);
                    }
                    ("Bridge", Some(n)) => {
                        let br = Bridge {
                            name: n["name"].as_str().unwrap_or("").to_string(),
                            ports: uuids(&n["ports"]),
                        };
                        self.bridges.insert(uuid.clone(), br);
                    }
                    ("Open_vSwitch", Some(n)) => {
                        self.cur_cfg = n["cur_cfg"].as_i64().unwrap_or(0);
                    }
                    _ => {}
                }
            }
        }
    }

    /// The interface a node's handle was plugged as: (uuid, row).
    pub(super) fn by_handle(&self, node: &str, handle: &str) -> Option<(&String, &Iface)> {
        self.ifaces.iter().find(|(_, i)| {
            i.external_ids.get(KEY_HANDLE).map(String::as_str) == Some(handle)
                && i.external_ids.get(KEY_NODE).map(String::as_str) == Some(node)
        })
    }

    pub(super) fn has_iface_named(&self, name: &str) -> bool {
        self.ifaces.values().any(|i| i.name == name)
    }

    /// Port and bridge holding an interface.
    pub(super) fn port_of(&self, iface: &str) -> Option<(String, Option<String>)> {
        let (port, _) = self
            .ports
            .iter()
            .find(|(_, p)| p.interfaces.iter().any(|i| i == iface))?;
        let bridge = self
            .bridges
            .iter()
            .find(|(_, b)| b.ports.contains(port))
            .map(|(u, _)| u.clone());
        Some((port.clone(), bridge))
    }
}

pub(super) fn monitor_requests() -> Value {
    json!({
        "Interface": {"columns": ["name", "ofport", "error", "external_ids"]},
        "Port": {"columns": ["interfaces"]},
        "Bridge": {"columns": ["name", "ports"]},
        "Open_vSwitch": {"columns": ["cur_cfg"]},
    })
}

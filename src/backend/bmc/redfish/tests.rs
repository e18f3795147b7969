//! Against a small in-process Redfish service: sushy-tools (the real peer, used by the
//! black-box tests) has no SessionService, no ActionInfo and never answers 503, so those
//! paths are exercised here, following the DMTF specification's exchanges.

use super::*;
use crate::backend::{BootDev, BootMode, BootRequest, Power, PowerState};
use std::sync::Mutex as StdMutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

#[derive(Default)]
struct Fake {
    sessions: bool,
    action_info: bool,
    reject_mode: bool,
    revoked: Vec<String>,
    tokens: u32,
    busy_503: u32,
    power: String,
    log: Vec<String>,
    bodies: Vec<String>,
}

type Shared = Arc<StdMutex<Fake>>;

fn reply(status: &str, headers: &[(&str, String)], body: &Value) -> String {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let mut r = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r + "\r\n" + &body
}

fn handle(f: &mut Fake, method: &str, path: &str, hdrs: &[(String, String)], body: &str) -> String {
    let h = |k: &str| {
        hdrs.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    let auth = match (h("x-auth-token"), h("authorization")) {
        (Some(t), _) => format!("token:{t}"),
        (None, Some(b)) => format!("basic:{}", b.len()),
        _ => "none".into(),
    };
    f.log.push(format!("{method} {path} {auth}"));
    f.bodies.push(body.to_string());
    let sys = "/redfish/v1/Systems/1";
    if path == "/redfish/v1/" {
        let mut root = json!({"Systems": {"@odata.id": "/redfish/v1/Systems"}});
        if f.sessions {
            root["Links"] =
                json!({"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}});
        }
        return reply("200 OK", &[], &root);
    }
    if method == "POST" && path == "/redfish/v1/SessionService/Sessions" {
        let creds: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        if creds["Password"] != "pw" {
            return reply(
                "401 Unauthorized",
                &[],
                &json!({"error": {"message": "Invalid credentials"}}),
            );
        }
        f.tokens += 1;
        let n = f.tokens;
        return reply(
            "201 Created",
            &[
                ("X-Auth-Token", format!("tok{n}")),
                (
                    "Location",
                    format!("/redfish/v1/SessionService/Sessions/{n}"),
                ),
            ],
            &json!({"@odata.id": format!("/redfish/v1/SessionService/Sessions/{n}")}),
        );
    }
    let authorized = if f.sessions {
        auth.strip_prefix("token:")
            .is_some_and(|t| t.starts_with("tok") && !f.revoked.iter().any(|r| r == t))
    } else {
        auth.starts_with("basic:")
    };
    if !authorized {
        return reply(
            "401 Unauthorized",
            &[],
            &json!({"error": {"message": "no session"}}),
        );
    }
    if method == "DELETE" {
        return reply("204 No Content", &[], &Value::Null);
    }
    if path == "/redfish/v1/Systems" {
        return reply("200 OK", &[], &json!({"Members": [{"@odata.id": sys}]}));
    }
    if path == sys && method == "GET" {
        if f.busy_503 > 0 {
            f.busy_503 -= 1;
            return reply(
                "503 Service Unavailable",
                &[("Retry-After", "0".into())],
                &Value::Null,
            );
        }
        let mut reset = json!({"target": format!("{sys}/Actions/ComputerSystem.Reset")});
        if f.action_info {
            reset["@Redfish.ActionInfo"] = json!(format!("{sys}/ResetActionInfo"));
        } else {
            reset["ResetType@Redfish.AllowableValues"] = json!(["On", "ForceOff"]);
        }
        return reply(
            "200 OK",
            &[],
            &json!({"@odata.id": sys, "PowerState": f.power, "Status": {"Health": "OK"},
                    "Boot": {"BootSourceOverrideMode": "UEFI"},
                    "Actions": {"#ComputerSystem.Reset": reset}}),
        );
    }
    if path == format!("{sys}/ResetActionInfo") {
        return reply(
            "200 OK",
            &[],
            &json!({"Parameters": [{"Name": "ResetType", "AllowableValues": ["ForceOn", "ForceOff"]}]}),
        );
    }
    if path.ends_with("ComputerSystem.Reset") {
        let b: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        return match b["ResetType"].as_str() {
            Some("On" | "ForceOn") => {
                f.power = "On".into();
                reply("204 No Content", &[], &Value::Null)
            }
            Some("ForceOff") => reply(
                "400 Bad Request",
                &[],
                &json!({"error": {"code": "Base.1.8.GeneralError", "message": "general",
                    "@Message.ExtendedInfo": [{"Message": "The server is in maintenance mode."}]}}),
            ),
            _ => reply("500 Internal Server Error", &[], &Value::Null),
        };
    }
    if method == "PATCH" && path == sys {
        if f.reject_mode && body.contains("BootSourceOverrideMode") {
            return reply(
                "400 Bad Request",
                &[],
                &json!({"error": {"message": "Mode is read-only"}}),
            );
        }
        return reply("204 No Content", &[], &Value::Null);
    }
    reply("404 Not Found", &[], &Value::Null)
}

async fn serve(f: Shared) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let f = f.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (m, p) = (
                        parts.next().unwrap_or("").to_string(),
                        parts.next().unwrap_or("").to_string(),
                    );
                    let mut hdrs = Vec::new();
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).await.unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            hdrs.push((k.trim().to_string(), v.trim().to_string()));
                        }
                    }
                    let len: usize = hdrs
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).await.unwrap();
                    let out = handle(
                        &mut f.lock().unwrap(),
                        &m,
                        &p,
                        &hdrs,
                        &String::from_utf8_lossy(&body),
                    );
                    if w.write_all(out.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

fn client(url: &str) -> Redfish {
    Redfish::new(RedfishSettings {
        node: "n1".into(),
        base_url: url.into(),
        system: None,
        username: "admin".into(),
        password: SecretValue::new(b"pw".to_vec()),
        ca_bundle_pem: None,
        insecure: false,
        timeout: Duration::from_secs(5),
        retries: 2,
        max_concurrency: 2,
    })
    .unwrap()
}

fn fake(f: Fake) -> Shared {
    Arc::new(StdMutex::new(Fake {
        power: "Off".into(),
        ..f
    }))
}

#[tokio::test]
async fn one_session_shared_renewed_on_expiry_and_deleted_at_close() {
    let f = fake(Fake {
        sessions: true,
        ..Fake::default()
    });
    let rf = client(&serve(f.clone()).await);
    let (a, b) = tokio::join!(rf.state(), rf.state());
    assert_eq!(a.unwrap().state, PowerState::Off);
    assert_eq!(b.unwrap().state, PowerState::Off);
    rf.on().await.unwrap();
    assert_eq!(rf.state().await.unwrap().state, PowerState::On);
    assert_eq!(f.lock().unwrap().tokens, 1, "one session for all calls");
    // The BMC expires the session: the next call logs in again, once.
    f.lock().unwrap().revoked.push("tok1".into());
    assert_eq!(rf.state().await.unwrap().state, PowerState::On);
    rf.close().await;
    let g = f.lock().unwrap();
    assert_eq!(g.tokens, 2);
    let log = g.log.join("\n");
    assert!(
        log.contains("GET /redfish/v1/Systems/1 token:tok1"),
        "{log}"
    );
    assert!(
        log.contains("GET /redfish/v1/Systems/1 token:tok2"),
        "{log}"
    );
    assert!(
        log.ends_with("DELETE /redfish/v1/SessionService/Sessions/2 token:tok2"),
        "{log}"
    );
    assert!(
        !log.contains("basic:"),
        "no basic auth when sessions exist: {log}"
    );
    let with_pw = g.bodies.iter().filter(|b| b.contains("\"pw\"")).count();
    assert_eq!(with_pw, 2, "the password travels only in the two logins");
}

#[tokio::test]
async fn basic_auth_retry_after_and_bmc_messages() {
    let f = fake(Fake {
        busy_503: 2,
        ..Fake::default()
    });
    let rf = client(&serve(f.clone()).await);
    assert_eq!(rf.state().await.unwrap().state, PowerState::Off);
    let e = rf.off(true).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Failed);
    assert!(e.msg.contains("The server is in maintenance mode."), "{e}");
    assert!(e.msg.contains("400"), "{e}");
    let g = f.lock().unwrap();
    let gets = g
        .log
        .iter()
        .filter(|l| l.starts_with("GET /redfish/v1/Systems/1"))
        .count();
    assert_eq!(
        gets, 4,
        "two 503s retried, then discovery and the state read"
    );
    assert!(
        g.log.iter().skip(1).all(|l| l.contains(" basic:")),
        "{:?}",
        g.log
    );
    let posts = g.log.iter().filter(|l| l.starts_with("POST")).count();
    assert_eq!(posts, 1, "a 4xx answer is not retried");
}

#[tokio::test]
async fn action_info_reset_types_and_mode_refusal() {
    let f = fake(Fake {
        action_info: true,
        reject_mode: true,
        ..Fake::default()
    });
    let rf = client(&serve(f.clone()).await);
    rf.on().await.unwrap();
    rf.set_boot(&BootRequest {
        dev: BootDev::Network,
        persistent: true,
        mode: Some(BootMode::Uefi),
    })
    .await
    .unwrap();
    let e = rf.restart(false).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(
        e.msg.contains("GracefulRestart") && e.msg.contains("ForceOn, ForceOff"),
        "{e}"
    );
    let g = f.lock().unwrap();
    assert!(
        g.bodies.iter().any(|b| b.contains("\"ForceOn\"")),
        "On falls back to ForceOn"
    );
    let patches: Vec<&String> = g
        .bodies
        .iter()
        .zip(&g.log)
        .filter(|(_, l)| l.starts_with("PATCH"))
        .map(|(b, _)| b)
        .collect();
    assert_eq!(patches.len(), 2, "{patches:?}");
    assert!(
        patches[0].contains("UEFI") && !patches[1].contains("Mode"),
        "{patches:?}"
    );
    assert!(patches[1].contains("\"Pxe\"") && patches[1].contains("Continuous"));
}

#[tokio::test]
async fn wrong_password_and_dead_bmc_are_classified() {
    let f = fake(Fake {
        sessions: true,
        ..Fake::default()
    });
    let url = serve(f).await;
    let mut s = client(&url).s.clone();
    s.password = SecretValue::new(b"nope".to_vec());
    let rf = Redfish::new(s).unwrap();
    let e = rf.state().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(
        e.msg.contains("user 'admin'") && e.msg.contains("Invalid credentials"),
        "{e}"
    );
    assert!(!e.msg.contains("nope"));
    // Nothing listens there any more.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let e = client(&dead).state().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
}

#[test]
fn sensor_readings_from_power_thermal_and_environment_metrics() {
    // Shapes from DMTF's Power.v1_7 / Thermal.v1_7 / EnvironmentMetrics.v1_3 mockups.
    let power = json!({"PowerControl": [
        {"MemberId": "0", "PowerConsumedWatts": null},
        {"MemberId": "1", "PowerConsumedWatts": 344.5}
    ]});
    assert_eq!(power_consumed(&power), Some(344.5));
    assert_eq!(power_consumed(&json!({"PowerControl": []})), None);
    let thermal = json!({"Temperatures": [
        {"Name": "CPU1 Temp", "PhysicalContext": "CPU", "ReadingCelsius": 61},
        {"Name": "Inlet Temp", "ReadingCelsius": 22.5},
        {"Name": "Chassis Intake Temp", "PhysicalContext": "Intake", "ReadingCelsius": 21}
    ]});
    assert_eq!(
        inlet_celsius(&thermal),
        Some(21.0),
        "the Intake context wins"
    );
    let named_only = json!({"Temperatures": [
        {"Name": "CPU1 Temp", "ReadingCelsius": 61},
        {"Name": "System Inlet", "ReadingCelsius": 19}
    ]});
    assert_eq!(inlet_celsius(&named_only), Some(19.0));
    assert_eq!(
        inlet_celsius(&json!({"Temperatures": [{"Name": "CPU", "ReadingCelsius": 50}]})),
        None
    );
    let env = json!({"TemperatureCelsius": {"Reading": 23.4}, "PowerWatts": {"Reading": 512.0}});
    assert_eq!(environment(&env), (Some(512.0), Some(23.4)));
}

//! The Redfish BMC driver: a small native client over reqwest and rustls.
//!
//! - Discovery: `Systems` collection → the configured ComputerSystem (path, Id, UUID or Name;
//!   the only one when none is configured), its `#ComputerSystem.Reset` target and
//!   `ResetType@Redfish.AllowableValues` (or its `@Redfish.ActionInfo`), and the boot override
//!   targets and modes it advertises. Cached; a failed discovery is retried by the next call.
//! - Auth: one session per BMC (`POST SessionService/Sessions`, `X-Auth-Token`), shared by all
//!   calls, logged in again when the BMC expires it (401), deleted at shutdown; basic auth
//!   when the service root offers no session service.
//! - Calls: at most `max_concurrency` in flight per BMC; each bounded by the call time limit
//!   (retries included); retried with backoff only on transient failures (connection errors,
//!   `503` with its `Retry-After`, other 5xx for reads); errors carry the BMC's own message.
//!
//! Files: `tls` (the BMC certificate policy), `body` (reading what a BMC answers),
//! `power` (the `Power` trait over the client in this file).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{Mutex, Semaphore};

use super::{backoff, pick_reset_type, Action};
use crate::backend::{BResult, BackendError, ErrorKind};
use crate::secret_value::SecretValue;

mod body;
mod power;
#[cfg(test)]
mod tests;
mod tls;

pub use body::fuzz_bodies;
use body::*;
use tls::*;

/// Where the service root lives.
const ROOT: &str = "/redfish/v1/";
/// The longest `Retry-After` honoured (the call time limit still applies).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Settings of one Redfish BMC.
#[derive(Debug, Clone)]
pub struct RedfishSettings {
    /// Node name (for logs).
    pub node: String,
    /// Base URL, e.g. `https://10.0.0.5` (no trailing slash needed).
    pub base_url: String,
    /// The ComputerSystem to drive (path, Id, UUID or Name).
    pub system: Option<String>,
    /// User.
    pub username: String,
    /// Password.
    pub password: SecretValue,
    /// TLS: `None` = system roots; `Some(pem)` = trust only these CAs.
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// TLS: accept any certificate.
    pub insecure: bool,
    /// Time limit of one call, retries included.
    pub timeout: Duration,
    /// Retries after transient failures.
    pub retries: u32,
    /// Calls in flight at most.
    pub max_concurrency: usize,
}

#[derive(Debug, Clone)]
enum Auth {
    /// Not decided yet (service root not read).
    Unknown,
    /// HTTP basic auth on every request.
    Basic,
    /// A session: its `X-Auth-Token` (marked sensitive) and its URI (for logout).
    Session { token: HeaderValue, uri: String },
}

/// What discovery learnt about the ComputerSystem.
#[derive(Debug, Clone)]
struct System {
    path: String,
    reset_target: String,
    reset_types: Vec<String>,
    boot_targets: Vec<String>,
    boot_modes: Vec<String>,
    has_mode: bool,
    /// The Chassis the system is in (`Links.Chassis`): where its sensors are.
    chassis: Option<String>,
}

/// Where a BMC's sensor readings are, found at the first reading: `EnvironmentMetrics`
/// (Redfish 2021+), else the older `Power` and `Thermal` of the chassis (linked, or at their
/// conventional paths). What the BMC does not have is not asked again.
#[derive(Debug, Default)]
struct SensorPaths {
    environment: Option<String>,
    power: Option<String>,
    thermal: Option<String>,
}

/// A response: status, headers, the raw body and its JSON (`Null` when empty or not JSON).
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    raw: Vec<u8>,
    body: Value,
}

impl Resp {
    /// The BMC's own message (for errors).
    fn message(&self) -> String {
        bmc_message(&self.body, &self.raw)
    }

    fn header(&self, name: impl reqwest::header::AsHeaderName) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// One Redfish BMC.
pub struct Redfish {
    s: RedfishSettings,
    http: reqwest::Client,
    slots: Semaphore,
    auth: Mutex<Auth>,
    /// `Authorization: Basic …`, built once (marked sensitive).
    basic: HeaderValue,
    system: Mutex<Option<Arc<System>>>,
    sensor_paths: Mutex<Option<Arc<SensorPaths>>>,
}

impl std::fmt::Debug for Redfish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redfish({} {})", self.s.node, self.s.base_url)
    }
}

impl Redfish {
    /// A client for one BMC; nothing is sent until the first call.
    pub fn new(s: RedfishSettings) -> Result<Redfish, String> {
        // reqwest's own TLS set-up (plain-HTTP clients too) needs a process-wide provider;
        // ring it is (an Err only says one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut s = s;
        s.base_url = s.base_url.trim_end_matches('/').to_string();
        // Redirects are followed only within the configured origin: reqwest keeps custom
        // headers (our X-Auth-Token) across hosts.
        let origin = origin_of(&s.base_url)?;
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("too many redirects")
            } else if origin_of(attempt.url().as_str()).ok().as_ref() == Some(&origin) {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let mut b = reqwest::Client::builder()
            .redirect(policy)
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("metalvirt/", env!("CARGO_PKG_VERSION")));
        if s.base_url.starts_with("https://") {
            b = b.tls_backend_preconfigured(tls_config(&s)?);
        }
        let http = b.build().map_err(|e| format!("HTTP client: {e}"))?;
        let mut creds = s.username.as_bytes().to_vec();
        creds.push(b':');
        creds.extend_from_slice(s.password.expose());
        let creds = SecretValue::new(creds);
        let mut basic = HeaderValue::try_from(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds.expose())
        ))
        .map_err(|e| format!("credentials: {e}"))?;
        basic.set_sensitive(true);
        Ok(Redfish {
            basic,
            slots: Semaphore::new(s.max_concurrency.max(1)),
            s,
            http,
            auth: Mutex::new(Auth::Unknown),
            system: Mutex::new(None),
            sensor_paths: Mutex::new(None),
        })
    }

    fn who(&self) -> String {
        format!("Redfish BMC {}", self.s.base_url)
    }

    /// The full URL of a path the BMC gave us (`@odata.id`, an action target, a session's
    /// `Location`). Credentials go only to the configured scheme, host and port: a path that
    /// is absolute elsewhere is refused, never followed.
    fn resolve(&self, path: &str) -> BResult<String> {
        resolve_on(&self.s.base_url, path)
            .map_err(|why| BackendError::new(format!("{}: refusing {path}: {why}", self.who())))
    }

    /// One HTTP exchange, no retries. `auth`: send credentials.
    async fn send(
        &self,
        method: &Method,
        url: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
        auth: Option<&Auth>,
        limit: Duration,
    ) -> Result<Resp, reqwest::Error> {
        let mut rb = self
            .http
            .request(method.clone(), url)
            .timeout(limit)
            .header("Accept", "application/json");
        match auth {
            Some(Auth::Basic) => rb = rb.header(reqwest::header::AUTHORIZATION, self.basic.clone()),
            Some(Auth::Session { token, .. }) => rb = rb.header("X-Auth-Token", token.clone()),
            _ => {}
        }
        for (k, v) in headers {
            rb = rb.header(*k, v);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let r = rb.send().await?;
        let status = r.status();
        let headers = r.headers().clone();
        let raw = r.bytes().await?.to_vec();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Ok(Resp {
            status,
            headers,
            raw,
            body,
        })
    }

    fn net_error(&self, e: &reqwest::Error) -> BackendError {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        if e.is_timeout() {
            BackendError::with_kind(ErrorKind::Timeout, format!("{}: {msg}", self.who()))
        } else {
            BackendError::with_kind(
                ErrorKind::Unreachable,
                format!("{} unreachable: {msg}", self.who()),
            )
        }
    }

    /// Decides basic auth or a session, logging in when the BMC offers sessions.
    async fn login(&self, auth: &mut Auth, deadline: Instant) -> BResult<()> {
        let limit = deadline.saturating_duration_since(Instant::now());
        let root = self
            .send(&Method::GET, &self.resolve(ROOT)?, None, &[], None, limit)
            .await
            .map_err(|e| self.net_error(&e))?;
        if !root.status.is_success() {
            return Err(BackendError::new(format!(
                "{}: service root answered {}",
                self.who(),
                root.status
            )));
        }
        let sessions = odata_id(&root.body["Links"]["Sessions"]).or_else(|| {
            root.body["SessionService"]["@odata.id"]
                .as_str()
                .map(|p| format!("{}/Sessions", p.trim_end_matches('/')))
        });
        let Some(sessions) = sessions else {
            *auth = Auth::Basic;
            return Ok(());
        };
        // The user name and password go in this body: only to the configured BMC.
        let sessions = self.resolve(&sessions)?;
        let creds = json!({
            "UserName": self.s.username,
            "Password": String::from_utf8_lossy(self.s.password.expose()),
        });
        let limit = deadline.saturating_duration_since(Instant::now());
        let r = self
            .send(&Method::POST, &sessions, Some(&creds), &[], None, limit)
            .await
            .map_err(|e| self.net_error(&e))?;
        match r.status {
            s if s.is_success() => {
                let mut token = r.headers.get("X-Auth-Token").cloned().ok_or_else(|| {
                    BackendError::new(format!(
                        "{}: session created without an X-Auth-Token",
                        self.who()
                    ))
                })?;
                token.set_sensitive(true);
                let uri = r
                    .header(reqwest::header::LOCATION)
                    .or_else(|| odata_id(&r.body))
                    .unwrap_or_default();
                // The token goes to this URI at logout: a foreign one is never used.
                let uri = if uri.is_empty() {
                    uri
                } else {
                    self.resolve(&uri)?
                };
                tracing::debug!(node = %self.s.node, session = %uri, "Redfish session opened");
                *auth = Auth::Session { token, uri };
                Ok(())
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(self.auth_error(&r)),
            // Advertised but not really there: basic auth it is.
            StatusCode::NOT_FOUND
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::NOT_IMPLEMENTED => {
                *auth = Auth::Basic;
                Ok(())
            }
            s => Err(BackendError::new(format!(
                "{}: session login answered {s}: {}",
                self.who(),
                r.message()
            ))),
        }
    }

    fn auth_error(&self, r: &Resp) -> BackendError {
        let (status, m) = (r.status, r.message());
        BackendError::with_kind(
            ErrorKind::Auth,
            format!(
                "{} rejected the credentials of user '{}' ({status}{}{m})",
                self.who(),
                self.s.username,
                if m.is_empty() { "" } else { ": " }
            ),
        )
    }

    /// A call that succeeds only with a 2xx answer.
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> BResult<Resp> {
        let r = self.call_with(method.clone(), path, body, &[]).await?;
        self.check(&method, path, r)
    }

    /// A non-2xx answer as an error with the BMC's message.
    fn check(&self, method: &Method, path: &str, r: Resp) -> BResult<Resp> {
        let st = r.status;
        if st.is_success() {
            return Ok(r);
        }
        let m = r.message();
        let kind = if st == StatusCode::NOT_IMPLEMENTED {
            ErrorKind::Unsupported
        } else {
            ErrorKind::Failed
        };
        Err(BackendError::with_kind(
            kind,
            format!(
                "{}: {method} {path} answered {st}{}{m}",
                self.who(),
                if m.is_empty() { "" } else { ": " }
            ),
        ))
    }

    /// A call: bounded concurrency, one time limit for all attempts, retries on transient
    /// failures, a new session when the old one expired. Credentials refused are an error;
    /// any other final answer is returned with its raw body.
    async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> BResult<Resp> {
        let deadline = Instant::now() + self.s.timeout;
        let timed_out = || {
            BackendError::with_kind(
                ErrorKind::Timeout,
                format!(
                    "{}: {method} {path} got no answer within {:?}",
                    self.who(),
                    self.s.timeout
                ),
            )
        };
        let url = self.resolve(path)?;
        let _slot = tokio::time::timeout_at(deadline.into(), self.slots.acquire())
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| BackendError::new("BMC client closed"))?;
        let mut attempt = 0;
        let mut relogged = false;
        let idempotent = method == Method::GET || method == Method::DELETE;
        loop {
            let mut auth = self.auth.lock().await;
            if matches!(*auth, Auth::Unknown) {
                match self.login(&mut auth, deadline).await {
                    Ok(()) => {}
                    Err(e)
                        if matches!(e.kind, ErrorKind::Unreachable | ErrorKind::Timeout)
                            && attempt < self.s.retries
                            && Instant::now() < deadline =>
                    {
                        drop(auth);
                        self.pause(attempt, None, deadline).await;
                        attempt += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let limit = deadline.saturating_duration_since(Instant::now());
            if limit.is_zero() {
                return Err(timed_out());
            }
            // The lock is held only to read the credentials; a second login waits for the
            // first instead of racing it.
            let creds = auth.clone();
            drop(auth);
            let sent = self
                .send(&method, &url, body, headers, Some(&creds), limit)
                .await;
            match sent {
                Err(e) => {
                    let transient = e.is_connect() || (e.is_timeout() && idempotent);
                    if transient && attempt < self.s.retries && Instant::now() < deadline {
                        tracing::debug!(node = %self.s.node, attempt, "Redfish {method} {path}: {e}; retrying");
                        self.pause(attempt, None, deadline).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(if e.is_timeout() {
                        timed_out()
                    } else {
                        self.net_error(&e)
                    });
                }
                Ok(r) => {
                    let st = r.status;
                    if st.is_success() {
                        return Ok(r);
                    }
                    if st == StatusCode::UNAUTHORIZED && !relogged {
                        let mut a = self.auth.lock().await;
                        if matches!(*a, Auth::Session { .. }) {
                            tracing::info!(node = %self.s.node, "Redfish session expired; logging in again");
                            *a = Auth::Unknown;
                            relogged = true;
                            continue;
                        }
                    }
                    if st == StatusCode::UNAUTHORIZED || st == StatusCode::FORBIDDEN {
                        return Err(self.auth_error(&r));
                    }
                    let retryable = st == StatusCode::SERVICE_UNAVAILABLE
                        || (idempotent
                            && st.is_server_error()
                            && st != StatusCode::NOT_IMPLEMENTED);
                    if retryable && attempt < self.s.retries && Instant::now() < deadline {
                        tracing::debug!(node = %self.s.node, attempt, "Redfish {method} {path}: {st}; retrying");
                        self.pause(attempt, retry_after(&r.headers), deadline).await;
                        attempt += 1;
                        continue;
                    }
                    return Ok(r);
                }
            }
        }
    }

    async fn pause(&self, attempt: u32, hint: Option<Duration>, deadline: Instant) {
        let d = hint.unwrap_or_else(|| backoff(attempt));
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(d.min(left)).await;
    }

    /// The ComputerSystem, discovered on first use.
    /// Where the sensor readings are (found once; see [`SensorPaths`]). A resource the BMC
    /// answers 404 (or 405, 501) for is absent; any other failure is an error and the
    /// search is made again next time.
    async fn sensor_paths(&self) -> BResult<Arc<SensorPaths>> {
        let mut cached = self.sensor_paths.lock().await;
        if let Some(p) = &*cached {
            return Ok(p.clone());
        }
        let sys = self.system().await?;
        let Some(chassis) = sys.chassis.clone() else {
            return Err(BackendError::with_kind(
                ErrorKind::Unsupported,
                format!(
                    "{}: the system links no Chassis (where sensors are)",
                    self.who()
                ),
            ));
        };
        let ch = self.call(Method::GET, &chassis, None).await?.body;
        let link = |k: &str| ch[k]["@odata.id"].as_str().map(str::to_string);
        let exists = |path: String| async move {
            let r = self.call_with(Method::GET, &path, None, &[]).await?;
            let absent = [
                StatusCode::NOT_FOUND,
                StatusCode::METHOD_NOT_ALLOWED,
                StatusCode::NOT_IMPLEMENTED,
            ];
            if absent.contains(&r.status) {
                return Ok(None);
            }
            self.check(&Method::GET, &path, r).map(|_| Some(path))
        };
        let base = chassis.trim_end_matches('/');
        let mut p = SensorPaths::default();
        if let Some(env) = link("EnvironmentMetrics") {
            p.environment = exists(env).await?;
        }
        if p.environment.is_none() {
            let power = link("Power").unwrap_or_else(|| format!("{base}/Power"));
            p.power = exists(power).await?;
            let thermal = link("Thermal").unwrap_or_else(|| format!("{base}/Thermal"));
            p.thermal = exists(thermal).await?;
        }
        if p.environment.is_none() && p.power.is_none() && p.thermal.is_none() {
            tracing::info!(bmc = %self.who(), "the BMC offers no power or temperature readings");
        }
        let p = Arc::new(p);
        *cached = Some(p.clone());
        Ok(p)
    }

    async fn system(&self) -> BResult<Arc<System>> {
        let mut cached = self.system.lock().await;
        if let Some(s) = &*cached {
            return Ok(s.clone());
        }
        let path = self.find_system().await?;
        let sys = self.call(Method::GET, &path, None).await?.body;
        let (mut system, action_info) = system_from_body(path, &sys);
        if let Some(info) = action_info {
            if let Ok(r) = self.call(Method::GET, &info, None).await {
                system.reset_types = reset_types_from_action_info(&r.body);
            }
        }
        let s = Arc::new(system);
        tracing::info!(node = %self.s.node, system = %s.path, reset_types = ?s.reset_types, boot_targets = ?s.boot_targets, "Redfish system discovered");
        *cached = Some(s.clone());
        Ok(s)
    }

    async fn find_system(&self) -> BResult<String> {
        if let Some(h) = self.s.system.as_deref().filter(|h| h.starts_with('/')) {
            return Ok(h.trim_end_matches('/').to_string());
        }
        let coll = self.call(Method::GET, "/redfish/v1/Systems", None).await?;
        let members = members(&coll.body);
        let Some(want) = self.s.system.as_deref() else {
            return match members.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(BackendError::new(format!(
                    "{} lists no ComputerSystem",
                    self.who()
                ))),
                many => Err(BackendError::new(format!(
                    "{} has {} systems ({}); set bmc.system to one of them",
                    self.who(),
                    many.len(),
                    many.join(", ")
                ))),
            };
        };
        if let Some(m) = members
            .iter()
            .find(|m| m.trim_end_matches('/').rsplit('/').next() == Some(want))
        {
            return Ok(m.clone());
        }
        for m in &members {
            let s = self.call(Method::GET, m, None).await?.body;
            if is_system(&s, want) {
                return Ok(m.clone());
            }
        }
        Err(BackendError::new(format!(
            "{} has no ComputerSystem '{want}' (it has: {})",
            self.who(),
            members.join(", ")
        )))
    }

    async fn reset(&self, action: Action) -> BResult<()> {
        let sys = self.system().await?;
        let Some(kind) = pick_reset_type(action, &sys.reset_types) else {
            return Err(BackendError::with_kind(
                ErrorKind::Unsupported,
                format!(
                    "{} offers none of the reset types {} (it offers: {})",
                    self.who(),
                    action.reset_types().join(", "),
                    sys.reset_types.join(", ")
                ),
            ));
        };
        tracing::debug!(node = %self.s.node, reset = kind, "Redfish reset");
        self.call(
            Method::POST,
            &sys.reset_target,
            Some(&json!({ "ResetType": kind })),
        )
        .await
        .map(|_| ())
    }

    /// PATCHes the boot override; returns the final answer whatever its status.
    async fn patch_boot(&self, sys: &System, boot: &Value, etag: Option<&String>) -> BResult<Resp> {
        let headers: Vec<(&str, String)> =
            etag.map(|e| ("If-Match", e.clone())).into_iter().collect();
        self.call_with(
            Method::PATCH,
            &sys.path,
            Some(&json!({ "Boot": boot })),
            &headers,
        )
        .await
    }
}

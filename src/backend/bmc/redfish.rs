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

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{Mutex, Semaphore};

use super::{backoff, pick_reset_type, Action};
use crate::backend::{
    BResult, BackendError, BootDev, BootMode, BootRequest, ErrorKind, Power, PowerReading,
    PowerState,
};
use crate::secret_value::SecretValue;

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
}

impl std::fmt::Debug for Redfish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redfish({} {})", self.s.node, self.s.base_url)
    }
}

fn tls_config(s: &RedfishSettings) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let custom = |trust| {
        Arc::new(BmcCertVerifier {
            trust,
            provider: provider.clone(),
        })
    };
    if s.insecure {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(custom(Trust::Any))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match &s.ca_bundle_pem {
        Some(pem) => {
            let mut pins = Vec::new();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("CA bundle: {e}"))?;
                // A self-signed BMC certificate is a CA to webpki; keep it as a pin too.
                let _ = roots.add(cert.clone());
                pins.push(cert);
            }
            if pins.is_empty() {
                return Err("CA bundle holds no certificate".into());
            }
            let chain = if roots.is_empty() {
                None
            } else {
                Some(
                    rustls::client::WebPkiServerVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider.clone(),
                    )
                    .build()
                    .map_err(|e| format!("CA bundle: {e}"))?,
                )
            };
            return Ok(builder
                .dangerous()
                .with_custom_certificate_verifier(custom(Trust::Bundle { pins, chain }))
                .with_no_client_auth());
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                tracing::warn!(node = %s.node, "no system CA certificates found; HTTPS to this BMC will fail unless bmc.ca_bundle is set");
            }
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// How the BMC's certificate is checked when it is not plain webpki against system roots.
#[derive(Debug)]
enum Trust {
    /// `insecure = true`: any certificate.
    Any,
    /// `ca_bundle`: one of the bundle's own certificates (a pinned self-signed BMC
    /// certificate, which webpki refuses as "CA used as end entity"), or a chain to one of
    /// them with the host name checked.
    Bundle {
        pins: Vec<rustls::pki_types::CertificateDer<'static>>,
        chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    },
}

/// Certificate check per [`Trust`]; handshake signatures are always verified.
#[derive(Debug)]
struct BmcCertVerifier {
    trust: Trust,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for BmcCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ok = Ok(rustls::client::danger::ServerCertVerified::assertion());
        match &self.trust {
            Trust::Any => ok,
            Trust::Bundle { pins, .. }
                if pins.iter().any(|p| p.as_ref() == end_entity.as_ref()) =>
            {
                ok
            }
            Trust::Bundle { chain: Some(v), .. } => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            Trust::Bundle { chain: None, .. } => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The BMC's own message from an error body: Redfish `error.@Message.ExtendedInfo[].Message`
/// and `error.message`, else the text itself (shortened).
fn bmc_message(body: &Value, raw: &[u8]) -> String {
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
fn origin_of(url: &str) -> Result<(String, String, u16), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    let host = u.host_str().ok_or("no host")?.to_ascii_lowercase();
    let port = u.port_or_known_default().ok_or("no port")?;
    Ok((u.scheme().to_string(), host, port))
}

/// Resolves a BMC-supplied path against the base URL: a path from the root (`/redfish/...`)
/// is taken on the base; an absolute URL only when it has the base's origin.
fn resolve_on(base: &str, path: &str) -> Result<String, String> {
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

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn odata_id(v: &Value) -> Option<String> {
    v["@odata.id"].as_str().map(str::to_string)
}

fn power_state(s: &str) -> Option<PowerState> {
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

fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

/// What a ComputerSystem resource says about driving it, and where to read its reset
/// types when it does not list them (`@Redfish.ActionInfo`).
fn system_from_body(path: String, sys: &Value) -> (System, Option<String>) {
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
    };
    (system, action_info)
}

/// The reset types an ActionInfo resource allows.
fn reset_types_from_action_info(info: &Value) -> Vec<String> {
    info["Parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["Name"] == "ResetType"))
        .map(|p| str_list(&p["AllowableValues"]))
        .unwrap_or_default()
}

/// The member paths of a collection.
fn members(coll: &Value) -> Vec<String> {
    coll["Members"]
        .as_array()
        .map(|a| a.iter().filter_map(odata_id).collect())
        .unwrap_or_default()
}

/// Whether a ComputerSystem is the one configured by Id, UUID or Name.
fn is_system(sys: &Value, want: &str) -> bool {
    let hit = |k: &str| {
        sys[k]
            .as_str()
            .is_some_and(|v| v.eq_ignore_ascii_case(want))
    };
    hit("Id") || hit("UUID") || hit("Name")
}

/// Power state and fault of a ComputerSystem.
fn power_reading(sys: &Value) -> Result<PowerReading, String> {
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

#[async_trait]
impl Power for Redfish {
    async fn state(&self) -> BResult<PowerReading> {
        let sys = self.system().await?;
        let r = self.call(Method::GET, &sys.path, None).await?;
        power_reading(&r.body).map_err(|e| BackendError::new(format!("{} {e}", self.who())))
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

#[cfg(test)]
mod tests {
    //! Against a small in-process Redfish service: sushy-tools (the real peer, used by the
    //! black-box tests) has no SessionService, no ActionInfo and never answers 503, so those
    //! paths are exercised here, following the DMTF specification's exchanges.

    use super::*;
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

    fn handle(
        f: &mut Fake,
        method: &str,
        path: &str,
        hdrs: &[(String, String)],
        body: &str,
    ) -> String {
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
}

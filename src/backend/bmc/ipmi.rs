//! The IPMI BMC driver: IPMI 2.0 lanplus (RMCP+) through `ipmitool`.
//!
//! `ipmitool` is the most widely proven RMCP+ implementation (cipher suites, vendor quirks);
//! running it keeps cryptography out of metalvirt. The password reaches the child through a
//! pipe on its standard input (`-f /dev/stdin`), which only that child reads: never in its
//! arguments or environment (both readable in `/proc`). `-v` makes ipmitool say why a
//! session failed (`RAKP 2 HMAC is invalid` = wrong password), which separates refused
//! credentials from a BMC that does not answer. ipmitool's own `-R`/`-N` retransmit lost UDP
//! packets; the call time limit kills a hung child.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::Semaphore;

use crate::backend::{
    BResult, BackendError, BootDev, BootMode, BootRequest, ConsoleIo, ErrorKind, Power,
    PowerReading, PowerState, Sensors,
};
use crate::secret_value::SecretValue;

/// Settings of one IPMI BMC.
#[derive(Debug, Clone)]
pub struct IpmiSettings {
    /// Node name (for logs).
    pub node: String,
    /// Host name or address.
    pub host: String,
    /// UDP port.
    pub port: u16,
    /// User.
    pub username: String,
    /// Password.
    pub password: SecretValue,
    /// Cipher suite (`-C`).
    pub cipher_suite: u8,
    /// The ipmitool binary.
    pub ipmitool: PathBuf,
    /// Time limit of one call.
    pub timeout: Duration,
    /// Retransmissions of a lost request (`-R`).
    pub retries: u32,
    /// Calls in flight at most (BMCs have few session slots).
    pub max_concurrency: usize,
    /// How long a graceful restart waits for the server to go off before powering it on.
    pub graceful_restart_wait: Duration,
}

/// One IPMI BMC.
pub struct Ipmi {
    s: IpmiSettings,
    slots: Semaphore,
}

/// Splits `host[:port]` (IPv6 in brackets: `[::1]:623`).
pub fn parse_address(addr: &str) -> Result<(String, u16), String> {
    let bad = || format!("bad IPMI address '{addr}' (want host or host:port)");
    if let Some(rest) = addr.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tail.is_empty() => 623,
            None => return Err(bad()),
        };
        return Ok((h.to_string(), port));
    }
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h.to_string(), p.parse().map_err(|_| bad())?)),
        _ if addr.is_empty() => Err(bad()),
        _ => Ok((addr.to_string(), 623)),
    }
}

/// What ipmitool said went wrong, classified. `out` is its stderr (and stdout).
fn classify(out: &str) -> BackendError {
    let lines: Vec<&str> = out
        .lines()
        .map(|l| l.trim_start_matches('>').trim())
        .filter(|l| !l.is_empty() && !l.starts_with("Loading IANA PEN Registry"))
        .collect();
    let text = lines.join("; ");
    let has = |needles: &[&str]| {
        let low = text.to_ascii_lowercase();
        needles.iter().any(|n| low.contains(n))
    };
    let kind = if has(&[
        "rakp 2 hmac is invalid",
        "unauthorized name",
        "invalid user name",
        "invalid password",
        "password is longer",
        "insufficient privilege",
        "unauthorized role or privilege",
    ]) {
        ErrorKind::Auth
    } else if has(&[
        "get auth capabilities error",
        "no response",
        "unable to establish",
        "connection refused",
    ]) {
        ErrorKind::Unreachable
    } else if has(&["invalid command", "invalid data field", "not supported"]) {
        ErrorKind::Unsupported
    } else {
        ErrorKind::Failed
    };
    BackendError::with_kind(kind, text)
}

/// A `chassis status` report: power and faults.
fn parse_chassis_status(out: &str) -> BResult<PowerReading> {
    let field = |name: &str| {
        out.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_ascii_lowercase())
        })
    };
    let state = match field("System Power").as_deref() {
        Some("on") => PowerState::On,
        Some("off") => PowerState::Off,
        other => {
            return Err(BackendError::new(format!(
                "unexpected chassis status (System Power: {})",
                other.unwrap_or("missing")
            )))
        }
    };
    let faults: Vec<&str> = [
        ("Main Power Fault", "main power fault"),
        ("Power Control Fault", "power control fault"),
        ("Power Overload", "power overload"),
    ]
    .into_iter()
    .filter(|(k, _)| field(k).as_deref() == Some("true"))
    .map(|(_, text)| text)
    .collect();
    let fault = (!faults.is_empty()).then(|| format!("BMC reports {}", faults.join(", ")));
    Ok(PowerReading { state, fault })
}

/// The readings metalvirt reports, picked from `ipmitool -c sdr list full` (CSV: name, value,
/// unit, status, and with `-v` more columns). Sensor names are the vendor's, so they are
/// matched by unit and a few words vendors use:
/// - power: a Watts sensor named for the whole system ("Pwr Consumption", "System Power",
///   "Total Power"); else the sum of the power supplies' input sensors ("PS1 Input Power");
///   else the only Watts sensor there is;
/// - inlet: a degrees-C sensor named inlet, ambient or intake (a CPU's temperature is not
///   the air the server takes in).
///
/// Sensors that read nothing ("no reading", "na", "disabled") are skipped.
fn parse_sdr_csv(out: &str) -> Sensors {
    let readings: Vec<(String, f64, String)> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',');
            let name = f.next()?.trim().to_ascii_lowercase();
            let value: f64 = f.next()?.trim().parse().ok()?;
            let unit = f.next()?.trim().to_ascii_lowercase();
            value.is_finite().then_some((name, value, unit))
        })
        .collect();
    let named = |unit: &str, words: &[&str]| -> Vec<f64> {
        readings
            .iter()
            .filter(|(n, _, u)| u == unit && words.iter().any(|w| n.contains(w)))
            .map(|(_, v, _)| *v)
            .collect()
    };
    let watts: Vec<f64> = readings
        .iter()
        .filter(|(_, _, u)| u == "watts")
        .map(|(_, v, _)| *v)
        .collect();
    let inputs = named("watts", &["input"]);
    let power_watts = named("watts", &["consumption", "system", "total"])
        .first()
        .copied()
        .or_else(|| (!inputs.is_empty()).then(|| inputs.iter().sum()))
        .or_else(|| (watts.len() == 1).then(|| watts[0]));
    let inlet_celsius = named("degrees c", &["inlet", "ambient", "intake"])
        .first()
        .copied();
    Sensors {
        power_watts,
        inlet_celsius,
    }
}

impl Ipmi {
    /// A client for one BMC; nothing is sent until the first call.
    pub fn new(s: IpmiSettings) -> Ipmi {
        Ipmi {
            slots: Semaphore::new(s.max_concurrency.max(1)),
            s,
        }
    }

    fn who(&self) -> String {
        format!("IPMI BMC {}:{}", self.s.host, self.s.port)
    }

    /// Runs one ipmitool command; returns its standard output.
    async fn run(&self, args: &[&str]) -> BResult<String> {
        let deadline = Instant::now() + self.s.timeout;
        let timed_out = || {
            BackendError::with_kind(
                ErrorKind::Timeout,
                format!(
                    "{}: '{}' got no answer within {:?}",
                    self.who(),
                    args.join(" "),
                    self.s.timeout
                ),
            )
        };
        let _slot = tokio::time::timeout_at(deadline.into(), self.slots.acquire())
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| BackendError::new("BMC client closed"))?;
        let port = self.s.port.to_string();
        let cipher = self.s.cipher_suite.to_string();
        let retries = self.s.retries.max(1).to_string();
        let mut cmd = Command::new(&self.s.ipmitool);
        cmd.args(["-v", "-I", "lanplus", "-H", &self.s.host, "-p", &port])
            .args(["-U", &self.s.username, "-f", "/dev/stdin", "-C", &cipher])
            .args(["-R", &retries, "-N", "1"])
            .args(args)
            .env_remove("IPMI_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let cant_run = |e: std::io::Error| {
            BackendError::new(format!("cannot run {}: {e}", self.s.ipmitool.display()))
        };
        let run = async {
            let mut child = cmd.spawn().map_err(cant_run)?;
            if let Some(mut stdin) = child.stdin.take() {
                let mut line = self.s.password.expose().to_vec();
                line.push(b'\n');
                // ipmitool reads its password file (the pipe) once at start; it is closed after.
                let _ = stdin.write_all(&line).await;
                line.iter_mut().for_each(|b| *b = 0);
            }
            child.wait_with_output().await.map_err(cant_run)
        };
        let out = tokio::time::timeout_at(deadline.into(), run)
            .await
            .map_err(|_| timed_out())??;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // ipmitool exits 0 for some refused boot parameters: look for its "failed" lines too.
        let failed = !out.status.success()
            || stderr
                .lines()
                .chain(stdout.lines())
                .any(|l| l.contains(" failed"));
        if failed {
            let mut e = classify(&format!("{stderr}\n{stdout}"));
            if e.kind == ErrorKind::Auth {
                e.msg = format!(
                    "{} rejected the credentials of user '{}' ({})",
                    self.who(),
                    self.s.username,
                    e.msg
                );
            } else {
                e.msg = format!("{}: '{}': {}", self.who(), args.join(" "), e.msg);
            }
            return Err(e);
        }
        Ok(stdout)
    }

    /// `sol activate` as a long-lived child: its standard output is the serial line, its
    /// standard input the keystrokes (after the password line it reads first). ipmitool's
    /// escape character is set to ^] — virsh's own, which never reaches the daemon — so
    /// nothing typed ends the session behind the client's back.
    async fn sol(&self) -> BResult<ConsoleIo> {
        use tokio::io::AsyncReadExt;
        // A session a killed daemon left open would refuse this one.
        let _ = self.run(&["sol", "deactivate"]).await;
        let port = self.s.port.to_string();
        let cipher = self.s.cipher_suite.to_string();
        let mut cmd = Command::new(&self.s.ipmitool);
        cmd.args(["-I", "lanplus", "-H", &self.s.host, "-p", &port])
            .args(["-U", &self.s.username, "-f", "/dev/stdin", "-C", &cipher])
            .args(["-e", "\u{1d}", "sol", "activate"])
            .env_remove("IPMI_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            BackendError::new(format!("cannot run {}: {e}", self.s.ipmitool.display()))
        })?;
        let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(BackendError::new("ipmitool started without its pipes"));
        };
        let mut line = self.s.password.expose().to_vec();
        line.push(b'\n');
        let wrote = stdin.write_all(&line).await;
        line.iter_mut().for_each(|b| *b = 0);
        wrote.map_err(|e| BackendError::new(format!("cannot give ipmitool its password: {e}")))?;
        // ipmitool announces the session ("[SOL Session operational …]") into its stdio
        // buffer, which only the console's first output flushes: up is "still running a
        // moment later"; an ipmitool that exits has failed.
        let grace = tokio::time::sleep(Duration::from_millis(1500));
        let exited = tokio::select! {
            r = child.wait() => Some(r),
            _ = grace => None,
        };
        if exited.is_some() {
            let mut err = String::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(1), stderr.read_to_string(&mut err)).await;
            let mut out = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(1), stdout.read_to_end(&mut out)).await;
            let mut e = classify(&format!("{err}\n{}", String::from_utf8_lossy(&out)));
            e.msg = format!("{}: sol activate: {}", self.who(), e.msg);
            return Err(e);
        }
        // Its remarks (tcgetattr without a tty) are not the console's.
        tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = stderr.read_to_end(&mut sink).await;
        });
        // The serial line, without ipmitool's announcement.
        let (mut line, output) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            const UP: &[u8] = b"[SOL Session operational";
            let mut head: Option<Vec<u8>> = Some(Vec::new());
            let mut buf = [0u8; 4096];
            loop {
                let n = match stdout.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let data = match head.as_mut() {
                    None => buf[..n].to_vec(),
                    Some(h) => {
                        h.extend_from_slice(&buf[..n]);
                        let announcing = h.starts_with(UP) || UP.starts_with(h);
                        match h.iter().position(|&b| b == b'\n') {
                            Some(end) if announcing => h.split_off(end + 1),
                            None if announcing && h.len() < 512 => continue,
                            _ => std::mem::take(h),
                        }
                    }
                };
                head = None;
                if line.write_all(&data).await.is_err() {
                    break;
                }
            }
        });
        Ok(ConsoleIo {
            output: Box::new(output),
            input: Box::new(SolInput {
                stdin: Some(stdin),
                child: Some(child),
            }),
        })
    }

    async fn chassis_power(&self, what: &str) -> BResult<()> {
        self.run(&["chassis", "power", what]).await.map(|_| ())
    }
}

/// Keystrokes to `ipmitool sol activate`; owns the child. Dropped, it ends the session the
/// way a user would (ipmitool's escape, then `.`), so the BMC frees its SOL payload, and
/// kills ipmitool if it has not gone within two seconds.
struct SolInput {
    stdin: Option<tokio::process::ChildStdin>,
    child: Option<tokio::process::Child>,
}

impl SolInput {
    fn stdin(&mut self) -> std::io::Result<std::pin::Pin<&mut tokio::process::ChildStdin>> {
        self.stdin
            .as_mut()
            .map(std::pin::Pin::new)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

impl tokio::io::AsyncWrite for SolInput {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.stdin() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.stdin() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.stdin() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

impl Drop for SolInput {
    fn drop(&mut self) {
        let (Some(mut stdin), Some(mut child)) = (self.stdin.take(), self.child.take()) else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // the child is killed on drop
        };
        rt.spawn(async move {
            // ipmitool's escape (^], set at activation) after a new line, then '.'.
            let _ = stdin.write_all(b"\r\x1d.").await;
            drop(stdin);
            if tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        });
    }
}

#[async_trait]
impl Power for Ipmi {
    async fn console(&self) -> BResult<ConsoleIo> {
        self.sol().await
    }

    /// The sensor data repository's full-sensor readings, in one session. A BMC without an
    /// SDR repository ("Invalid command") reads none.
    async fn sensors(&self) -> BResult<Sensors> {
        let out = self.run(&["-c", "sdr", "list", "full"]).await?;
        Ok(parse_sdr_csv(&out))
    }

    async fn state(&self) -> BResult<PowerReading> {
        let out = self.run(&["chassis", "status"]).await?;
        parse_chassis_status(&out).map_err(|mut e| {
            e.msg = format!("{}: {}", self.who(), e.msg);
            e
        })
    }

    async fn on(&self) -> BResult<()> {
        self.chassis_power("on").await
    }

    async fn off(&self, hard: bool) -> BResult<()> {
        self.chassis_power(if hard { "off" } else { "soft" }).await
    }

    /// Hard: `chassis power reset`. Graceful: IPMI has no such command, so a soft power off
    /// (ACPI), a wait until the server is off, then power on.
    async fn restart(&self, hard: bool) -> BResult<()> {
        if hard {
            return self.chassis_power("reset").await;
        }
        self.chassis_power("soft").await?;
        let deadline = Instant::now() + self.s.graceful_restart_wait;
        let mut pause = Duration::from_millis(100);
        loop {
            if self.state().await?.state == PowerState::Off {
                break;
            }
            if Instant::now() >= deadline {
                return Err(BackendError::with_kind(
                    ErrorKind::Timeout,
                    format!(
                        "{}: the server did not power off within {:?} of a soft power off",
                        self.who(),
                        self.s.graceful_restart_wait
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
        self.chassis_power("on").await
    }

    async fn set_boot(&self, req: &BootRequest) -> BResult<()> {
        let dev = match req.dev {
            BootDev::Disk => "disk",
            BootDev::Network => "pxe",
            BootDev::Cdrom => "cdrom",
        };
        let mut opts = Vec::new();
        if req.persistent {
            opts.push("persistent");
        }
        if req.mode == Some(BootMode::Uefi) {
            opts.push("efiboot");
        }
        let opts = format!("options={}", opts.join(","));
        let mut args = vec!["chassis", "bootdev", dev];
        if opts != "options=" {
            args.push(&opts);
        }
        self.run(&args).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split() {
        assert_eq!(parse_address("10.0.0.5").unwrap(), ("10.0.0.5".into(), 623));
        assert_eq!(
            parse_address("127.0.0.1:9623").unwrap(),
            ("127.0.0.1".into(), 9623)
        );
        assert_eq!(parse_address("[::1]:700").unwrap(), ("::1".into(), 700));
        assert_eq!(parse_address("[::1]").unwrap(), ("::1".into(), 623));
        assert_eq!(parse_address("::1").unwrap(), ("::1".into(), 623));
        assert!(parse_address("h:x").is_err());
        assert!(parse_address("").is_err());
    }

    #[test]
    fn failures_are_classified() {
        // What ipmitool 1.8.19 -v printed against pyghmi and ipmi_sim (PEERS.md §3).
        let wrong_pw = "Loading IANA PEN Registry...\n> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n";
        assert_eq!(classify(wrong_pw).kind, ErrorKind::Auth);
        let wrong_user = "RAKP 2 message indicates an error : unauthorized name\nError: Unable to establish IPMI v2 / RMCP+ session";
        assert_eq!(classify(wrong_user).kind, ErrorKind::Auth);
        let dead = "Loading IANA PEN Registry...\nGet Auth Capabilities error\nError issuing Get Channel Authentication Capabilities request\nError: Unable to establish IPMI v2 / RMCP+ session\n";
        let e = classify(dead);
        assert_eq!(e.kind, ErrorKind::Unreachable);
        assert!(!e.msg.contains("IANA"), "{}", e.msg);
        assert_eq!(
            classify("Chassis Power Control: Invalid data field in request").kind,
            ErrorKind::Unsupported
        );
    }

    #[test]
    fn sdr_readings_are_picked_by_unit_and_name() {
        // ipmitool 1.8.19 -v -c against ipmi_sim with two full sensor records.
        let sim = "Inlet Temp,30,degrees C,ok,55.1,Air Inlet,Temperature,,,,,,,,,,0.000,255.000\nPwr Consumption,412,Watts,ok,21.1,Power Management,Other,,,,,,,,,,0.000,1020.000\n";
        assert_eq!(
            parse_sdr_csv(sim),
            Sensors {
                power_watts: Some(412.0),
                inlet_celsius: Some(30.0)
            }
        );
        // Two supplies and no system sensor: their inputs add up; a CPU is not the inlet;
        // unreadable sensors are skipped.
        let psus = "CPU1 Temp,61,degrees C,ok\nPS1 Input Power,180,Watts,ok\nPS2 Input Power,175.5,Watts,ok\nPS1 Output Power,150,Watts,ok\nAmbient Temp,no reading,degrees C,ns\n";
        assert_eq!(
            parse_sdr_csv(psus),
            Sensors {
                power_watts: Some(355.5),
                inlet_celsius: None
            }
        );
        // One Watts sensor of any name is the draw; two unnamed ones are not guessed at.
        assert_eq!(parse_sdr_csv("PSU,220,Watts,ok").power_watts, Some(220.0));
        assert_eq!(
            parse_sdr_csv("A,1,Watts,ok\nB,2,Watts,ok").power_watts,
            None
        );
        assert_eq!(parse_sdr_csv(""), Sensors::default());
    }

    #[test]
    fn chassis_status_parses() {
        let out = "System Power         : on\nPower Overload       : false\nPower Interlock      : inactive\nMain Power Fault     : false\nPower Control Fault  : false\n";
        assert_eq!(
            parse_chassis_status(out).unwrap(),
            PowerReading::ok(PowerState::On)
        );
        let out = out.replace(": on", ": off").replace(
            "Main Power Fault     : false",
            "Main Power Fault     : true",
        );
        let r = parse_chassis_status(&out).unwrap();
        assert_eq!(r.state, PowerState::Off);
        assert_eq!(r.fault.as_deref(), Some("BMC reports main power fault"));
        assert!(parse_chassis_status("garbage").is_err());
    }
}

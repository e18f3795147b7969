//! Where clients come in: the unix sockets, the TLS and TCP listeners, bound by the daemon or
//! passed by systemd (socket activation), and the readiness notification to systemd.
//!
//! Socket activation follows `sd_listen_fds(3)`: `LISTEN_PID` must be this process,
//! `LISTEN_FDS` sockets start at descriptor 3, and `LISTEN_FDNAMES` names them. A socket's
//! role comes from its name (`FileDescriptorName=`, by default the socket unit's name):
//! ending in `-ro` the read-only socket, `-tls` the TLS listener, `-tcp` plain TCP, otherwise
//! the read-write socket; an unnamed socket's role comes from its path (`…-ro`) or port
//! (`tcp_port` is TCP, any other TLS). As with libvirtd, the network listeners of an activated
//! daemon are the ones systemd passes; `--listen`, `listen_tls` and `listen_tcp` do not add
//! more.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

use crate::config::Config;

/// Socket file names inside the socket directory: what libvirt's client looks for with
/// `metal:///system` (`/run/libvirt/virtmetald-sock`).
pub const RW_SOCKET: &str = "virtmetald-sock";
/// Read-only socket.
pub const RO_SOCKET: &str = "virtmetald-sock-ro";

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The read-write unix socket.
    Rw,
    /// The read-only unix socket.
    Ro,
    /// TLS with client certificates.
    Tls,
    /// Plain TCP (`auth_tcp = "none"`).
    Tcp,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Rw => "read-write socket",
            Role::Ro => "read-only socket",
            Role::Tls => "TLS",
            Role::Tcp => "TCP",
        }
    }
}

/// A bound socket.
#[derive(Debug)]
pub enum Socket {
    /// A unix socket.
    Unix(UnixListener),
    /// A TCP socket.
    Inet(TcpListener),
}

/// One listener of the daemon.
#[derive(Debug)]
pub struct Listener {
    /// What it serves.
    pub role: Role,
    /// The socket.
    pub socket: Socket,
    /// The socket file to remove at exit (one the daemon created itself).
    pub owned_path: Option<PathBuf>,
    /// Where it listens, for the log.
    pub place: String,
    /// Passed by systemd.
    pub passed: bool,
}

/// Binds a unix socket, replacing a stale socket file, with the given mode.
pub fn bind_unix(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        // A live daemon would answer; a stale file from a killed one would refuse.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by a running daemon", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(l)
}

/// Binds TCP listeners on `addr` (all addresses when `None`: IPv6 and IPv4 on one socket
/// where the system allows, else IPv4) and `port`; a host name binds every address it
/// resolves to, as libvirtd does.
pub fn bind_inet(addr: Option<&str>, port: u16) -> Result<Vec<TcpListener>, String> {
    let targets: Vec<SocketAddr> = match addr {
        None => {
            let any6 = SocketAddr::new(IpAddr::from([0u16; 8]), port);
            match std::net::TcpListener::bind(any6) {
                Ok(l) => return Ok(vec![tokio_listener(l, any6)?]),
                Err(_) => vec![SocketAddr::new(IpAddr::from([0u8; 4]), port)],
            }
        }
        Some(a) => {
            let a = a.trim_start_matches('[').trim_end_matches(']');
            match a.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(a, port))
                    .map_err(|e| format!("listen_addr '{a}': {e}"))?
                    .collect(),
            }
        }
    };
    let mut out = Vec::new();
    for t in targets {
        let l = std::net::TcpListener::bind(t).map_err(|e| format!("cannot listen on {t}: {e}"))?;
        out.push(tokio_listener(l, t)?);
    }
    Ok(out)
}

fn tokio_listener(l: std::net::TcpListener, at: SocketAddr) -> Result<TcpListener, String> {
    l.set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(l))
        .map_err(|e| format!("cannot listen on {at}: {e}"))
}

/// Sockets passed by systemd, with their names; empty when the daemon was not activated.
/// The environment variables are removed, so child processes do not see them.
pub fn activated_sockets() -> Result<Vec<(String, OwnedFd)>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        // Meant for another process (an inherited environment).
        return Ok(Vec::new());
    }
    let n: i32 = fds
        .trim()
        .parse()
        .map_err(|_| format!("socket activation: LISTEN_FDS '{fds}' is not a number"))?;
    let names: Vec<String> = names
        .map(|s| s.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for i in 0..n.max(0) {
        let fd = adopt(3 + i)?;
        let name = names.get(i as usize).cloned().unwrap_or_default();
        out.push((name, fd));
    }
    Ok(out)
}

/// Takes ownership of an inherited descriptor after checking it is an open, listening
/// socket, and marks it close-on-exec.
#[allow(unsafe_code)]
fn adopt(raw: i32) -> Result<OwnedFd, String> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::os::fd::{BorrowedFd, FromRawFd};
    // SAFETY: `raw` is only borrowed here for the checks below, while this process holds
    // it open: systemd passed it (LISTEN_PID is ours) and nothing else in the process
    // knows the number. fcntl(F_GETFD) fails on a closed descriptor, before any use.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    fcntl(borrowed, FcntlArg::F_GETFD)
        .map_err(|e| format!("socket activation: descriptor {raw}: {e}"))?;
    let listening = nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::AcceptConn)
        .map_err(|e| format!("socket activation: descriptor {raw} is not a socket: {e}"))?;
    if !listening {
        return Err(format!(
            "socket activation: descriptor {raw} is not a listening socket (Accept=no is needed)"
        ));
    }
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| format!("socket activation: descriptor {raw}: {e}"))?;
    // SAFETY: checked open above; ownership moves here exactly once per passed number
    // (`activated_sockets` visits each of 3..3+LISTEN_FDS once), and nothing else in this
    // process closes or uses it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Turns a passed socket into a listener, its role told by its name or address.
pub fn from_activated(name: &str, fd: OwnedFd, cfg: &Config) -> Result<Listener, String> {
    use nix::sys::socket::{getsockname, AddressFamily, SockaddrLike, SockaddrStorage};
    let addr: SockaddrStorage = getsockname(fd.as_raw_fd())
        .map_err(|e| format!("socket activation: socket '{name}': {e}"))?;
    let base = name.strip_suffix(".socket").unwrap_or(name);
    let named = |suffix: &str| base.ends_with(suffix);
    match addr.family() {
        Some(AddressFamily::Unix) => {
            let path = addr
                .as_unix_addr()
                .and_then(|u| u.path())
                .map(Path::to_path_buf);
            let role = if named("-tls") || named("-tcp") {
                return Err(format!(
                    "socket activation: socket '{name}' is a unix socket, not a TCP one"
                ));
            } else if named("-ro")
                || path
                    .as_deref()
                    .and_then(Path::to_str)
                    .is_some_and(|p| p.ends_with("-ro"))
            {
                Role::Ro
            } else {
                Role::Rw
            };
            let std = std::os::unix::net::UnixListener::from(fd);
            std.set_nonblocking(true).map_err(|e| e.to_string())?;
            let l = UnixListener::from_std(std).map_err(|e| e.to_string())?;
            Ok(Listener {
                role,
                socket: Socket::Unix(l),
                owned_path: None,
                place: path
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| name.to_string()),
                passed: true,
            })
        }
        Some(AddressFamily::Inet) | Some(AddressFamily::Inet6) => {
            let std = std::net::TcpListener::from(fd);
            let local = std.local_addr().map_err(|e| e.to_string())?;
            let role = if named("-tls") {
                Role::Tls
            } else if named("-tcp") || (!named("-ro") && local.port() == cfg.tcp_port.0) {
                Role::Tcp
            } else {
                Role::Tls
            };
            Ok(Listener {
                role,
                socket: Socket::Inet(tokio_listener(std, local)?),
                owned_path: None,
                place: local.to_string(),
                passed: true,
            })
        }
        _ => Err(format!(
            "socket activation: socket '{name}' is neither a unix nor a TCP socket"
        )),
    }
}

/// Every listener the daemon serves: passed by systemd where it passed them, the unix sockets
/// bound here otherwise, and (only without activation) the network listeners `--listen`
/// turns on.
pub fn open_all(cfg: &Config, activated: Vec<(String, OwnedFd)>) -> Result<Vec<Listener>, String> {
    let was_activated = !activated.is_empty();
    let mut out = Vec::new();
    for (name, fd) in activated {
        out.push(from_activated(&name, fd, cfg)?);
    }
    for (role, file, mode) in [
        (Role::Rw, RW_SOCKET, cfg.rw_socket_mode),
        (Role::Ro, RO_SOCKET, cfg.ro_socket_mode),
    ] {
        if out.iter().any(|l| l.role == role) {
            continue;
        }
        let path = cfg.socket_dir.join(file);
        let l = bind_unix(&path, mode)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        out.push(Listener {
            role,
            socket: Socket::Unix(l),
            place: path.display().to_string(),
            owned_path: Some(path),
            passed: false,
        });
    }
    if was_activated {
        if cfg.listen {
            tracing::info!("socket activation: network listeners are the ones systemd passes (metalvirtd-tls.socket), --listen adds none");
        }
    } else if cfg.listen {
        for (on, role, port) in [
            (cfg.listen_tls, Role::Tls, cfg.tls_port.0),
            (cfg.listen_tcp, Role::Tcp, cfg.tcp_port.0),
        ] {
            if !on {
                continue;
            }
            for l in bind_inet(cfg.listen_addr.as_deref(), port)? {
                let place = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                out.push(Listener {
                    role,
                    socket: Socket::Inet(l),
                    owned_path: None,
                    place,
                    passed: false,
                });
            }
        }
    }
    for l in &out {
        if l.role == Role::Tcp {
            if cfg.auth_tcp != "none" {
                return Err(format!(
                    "a plain TCP socket ({}) was passed, but auth_tcp is \"{}\": metalvirtd has no SASL; set auth_tcp = \"none\" to serve unauthenticated TCP, or pass a TLS socket",
                    l.place, cfg.auth_tcp
                ));
            }
            tracing::warn!(
                listen = %l.place,
                "PLAIN TCP LISTENER: no authentication and no encryption (auth_tcp = \"none\"); anyone who can reach {} controls every server; use TLS", l.place
            );
        }
        let how = if l.passed {
            "passed by systemd"
        } else {
            "bound"
        };
        tracing::info!(listen = %l.place, "{} ({how})", l.role.name());
    }
    Ok(out)
}

/// Tells systemd (`Type=notify`) about the daemon's state (`READY=1`, `STOPPING=1`,
/// `STATUS=…`), when `NOTIFY_SOCKET` says where; otherwise nothing.
pub fn notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()).to_vec();
    let addr = match bytes.strip_prefix(b"@") {
        Some(abs) => UnixAddr::from_abstract_name(abs),
        None => UnixAddr::from_pathname(Path::new(&target)),
    };
    let sent = addr.and_then(|a| {
        let s = UnixDatagram::unbound()?;
        s.send_to_addr(state.as_bytes(), &a)
    });
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd ({}): {e}", target.to_string_lossy());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_a_datagram_socket() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&p).unwrap();
        // The environment is the process's: this test is the only one that sets it.
        std::env::set_var("NOTIFY_SOCKET", &p);
        notify("READY=1\nSTATUS=serving");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
    }

    #[test]
    fn passed_sockets_get_their_role_from_name_or_address() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config::default();
        let _rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = _rt.enter();
        let unix = |file: &str| -> OwnedFd {
            std::os::unix::net::UnixListener::bind(d.path().join(file))
                .unwrap()
                .into()
        };
        let tcp = || -> (OwnedFd, u16) {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            (l.into(), port)
        };
        let role = |name: &str, fd: OwnedFd| from_activated(name, fd, &cfg).unwrap().role;
        assert_eq!(role("metalvirtd.socket", unix("a")), Role::Rw);
        assert_eq!(role("metalvirtd-ro.socket", unix("b")), Role::Ro);
        assert_eq!(role("", unix("virtmetald-sock-ro")), Role::Ro);
        assert_eq!(role("", unix("virtmetald-sock")), Role::Rw);
        assert_eq!(role("metalvirtd-tls.socket", tcp().0), Role::Tls);
        assert_eq!(role("metalvirtd-tcp", tcp().0), Role::Tcp);
        assert_eq!(role("", tcp().0), Role::Tls);
        let e = from_activated("metalvirtd-tls.socket", unix("c"), &cfg).unwrap_err();
        assert!(e.contains("not a TCP"), "{e}");
    }
}

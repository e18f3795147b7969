//! The TLS listener's gate, as libvirtd's: a client certificate is required, must chain to
//! `ca_file` (and not be revoked in `crl_file`), and its Distinguished Name must match
//! `tls_allowed_dn_list` (or `tls_readonly_dn_list`, which makes the connection read-only).
//! Only then the server writes the single byte `0x01` that libvirt's client waits for before
//! its first call; a refused client sees the connection closed instead, which libvirt reports
//! as "server verification (of our certificate or IP address) failed".
//!
//! The certificate is checked after the handshake, not inside it: libvirtd does the same
//! (gnutls verifies the peer once the handshake is done), so every refusal looks alike to the
//! client and is logged here with its reason, DN and address. The handshake itself still
//! proves the client holds the certificate's key (its signature is verified by rustls).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::Config;

/// Who a TLS client is, once admitted.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The client certificate's Distinguished Name, as libvirt writes it.
    pub dn: String,
    /// The DN matched `tls_readonly_dn_list`.
    pub readonly: bool,
}

/// Why a TLS client was refused.
#[derive(Debug)]
pub struct Refused {
    /// The client certificate's DN, when it got that far.
    pub dn: Option<String>,
    /// The reason, for the log.
    pub why: String,
}

/// The TLS listener's configuration and checks.
pub struct Gate {
    acceptor: tokio_rustls::TlsAcceptor,
    /// The real verifier (chain to the CA, validity, revocation), run after the handshake.
    verifier: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
    readonly: Vec<String>,
    handshake_limit: Duration,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("allowed", &self.allowed)
            .field("readonly", &self.readonly)
            .finish_non_exhaustive()
    }
}

/// Asks for a client certificate in the handshake, checks the client's signature with it,
/// and leaves the certificate itself to [`Gate::admit`].
#[derive(Debug)]
struct Deferred {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for Deferred {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a client sends the certificate it has, so a refusal can say why.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key} {}: {e}", path.display()))
}

fn certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(key, path)?;
    let v: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{key} {}: {e}", path.display()))?;
    if v.is_empty() {
        return Err(format!(
            "{key} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(v)
}

impl Gate {
    /// Loads the server's key, certificate, CA and CRL from the configuration and checks
    /// them as libvirtd does at start-up (every error names the key and the file).
    pub fn load(cfg: &Config) -> Result<Gate, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key_path = cfg.resolve(&cfg.key_file);
        let cert_path = cfg.resolve(&cfg.cert_file);
        let ca_path = cfg.resolve(&cfg.ca_file);
        let chain = certs("cert_file", &cert_path)?;
        let key = PrivateKeyDer::from_pem_slice(&read("key_file", &key_path)?)
            .map_err(|e| format!("key_file {}: {e}", key_path.display()))?;
        let ca = certs("ca_file", &ca_path)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in &ca {
            roots
                .add(c.clone())
                .map_err(|e| format!("ca_file {}: {e}", ca_path.display()))?;
        }
        check_own_chain(&chain, &ca)
            .map_err(|e| format!("cert_file {}: {e}", cert_path.display()))?;
        let mut crls = Vec::new();
        if let Some(p) = &cfg.crl_file {
            let p = cfg.resolve(p);
            let pem = read("crl_file", &p)?;
            for c in CertificateRevocationListDer::pem_slice_iter(&pem) {
                crls.push(c.map_err(|e| format!("crl_file {}: {e}", p.display()))?);
            }
            if crls.is_empty() {
                return Err(format!("crl_file {}: no PEM CRL in it", p.display()));
            }
        }
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| match (&e, &cfg.crl_file) {
                (rustls::server::VerifierBuilderError::InvalidCrl(_), Some(p)) => {
                    format!("crl_file {}: {e}", cfg.resolve(p).display())
                }
                _ => format!("ca_file {}: {e}", ca_path.display()),
            })?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .with_client_cert_verifier(Arc::new(Deferred {
                inner: inner.clone(),
            }))
            // Refuses a key that does not belong to the certificate.
            .with_single_cert(chain, key)
            .map_err(|e| {
                format!(
                    "key_file {} with cert_file {}: {e}",
                    key_path.display(),
                    cert_path.display()
                )
            })?;
        // No TLS 1.3 session tickets: libvirt's client polls for the confirmation byte right
        // after the handshake, and a ticket arriving first makes its read fail with EAGAIN
        // ("Unable to read TLS confirmation"). libvirt clients do not resume sessions anyway.
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(Gate {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            verifier: inner,
            allowed: cfg.tls_allowed_dn_list.clone(),
            readonly: cfg.tls_readonly_dn_list.clone(),
            handshake_limit: cfg.client_write_timeout(),
        })
    }

    /// The handshake, the certificate and DN checks, and the confirmation byte.
    pub async fn admit(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
    ) -> Result<(TlsStream<TcpStream>, Admitted), Refused> {
        let refuse = |dn: Option<String>, why: String| Refused { dn, why };
        let mut tls =
            match tokio::time::timeout(self.handshake_limit, self.acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(refuse(None, format!("TLS handshake failed: {e}"))),
                Err(_) => return Err(refuse(None, "TLS handshake timed out".into())),
            };
        let verdict = self.check(tls.get_ref().1.peer_certificates());
        match verdict {
            Ok(a) => {
                let ok = tokio::time::timeout(self.handshake_limit, async {
                    tls.write_all(&[1]).await?;
                    tls.flush().await
                })
                .await;
                match ok {
                    Ok(Ok(())) => Ok((tls, a)),
                    _ => Err(refuse(
                        Some(a.dn),
                        format!("could not confirm the handshake to {addr}"),
                    )),
                }
            }
            Err(r) => {
                // A clean close (close_notify): libvirt's client reads no confirmation byte
                // and reports that the server refused it.
                let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
                Err(r)
            }
        }
    }

    fn check(&self, chain: Option<&[CertificateDer<'static>]>) -> Result<Admitted, Refused> {
        let Some((ee, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return Err(Refused {
                dn: None,
                why: "no client certificate".into(),
            });
        };
        let dn = distinguished_name(ee).unwrap_or_else(|e| format!("<unreadable: {e}>"));
        if let Err(e) = self
            .verifier
            .verify_client_cert(ee, intermediates, UnixTime::now())
        {
            return Err(Refused {
                dn: Some(dn),
                why: format!("client certificate refused: {e}"),
            });
        }
        let readonly = self.readonly.iter().any(|p| fnmatch(p, &dn));
        let allowed = self.allowed.is_empty() || self.allowed.iter().any(|p| fnmatch(p, &dn));
        if !(allowed || readonly) {
            return Err(Refused {
                dn: Some(dn),
                why: "client certificate DN not in tls_allowed_dn_list".into(),
            });
        }
        Ok(Admitted { dn, readonly })
    }
}

/// The server's own chain, checked at start-up as libvirtd does: each certificate valid
/// now, signed by the next, the last signed by a CA of `ca_file`.
fn check_own_chain(chain: &[CertificateDer<'_>], ca: &[CertificateDer<'_>]) -> Result<(), String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    fn parse<'a>(c: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, String> {
        X509Certificate::from_der(c.as_ref())
            .map(|(_, x)| x)
            .map_err(|e| format!("unreadable certificate: {e}"))
    }
    let certs: Vec<X509Certificate<'_>> = chain.iter().map(parse).collect::<Result<_, _>>()?;
    let cas: Vec<X509Certificate<'_>> = ca.iter().map(parse).collect::<Result<_, _>>()?;
    for c in &certs {
        if !c.validity().is_valid() {
            return Err(format!(
                "certificate '{}' is not valid now (valid from {} to {})",
                c.subject(),
                c.validity().not_before,
                c.validity().not_after
            ));
        }
    }
    for w in certs.windows(2) {
        w[0].verify_signature(Some(w[1].public_key()))
            .map_err(|_| format!("'{}' is not signed by '{}'", w[0].subject(), w[1].subject()))?;
    }
    let last = certs.last().expect("a non-empty chain");
    if cas.iter().any(|ca| {
        ca.subject() == last.issuer() && last.verify_signature(Some(ca.public_key())).is_ok()
    }) {
        return Ok(());
    }
    Err(format!(
        "'{}' is not signed by a CA of ca_file (issuer '{}')",
        last.subject(),
        last.issuer()
    ))
}

/// A certificate's subject as libvirt (gnutls) writes it and `tls_allowed_dn_list` matches
/// it: the attributes in the certificate's order, `TYPE=value`, joined by commas, values
/// escaped as RFC 4514 says (e.g. `C=GB,O=Example\, Ltd,CN=nova1`).
pub fn distinguished_name(cert: &CertificateDer<'_>) -> Result<String, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, x) = X509Certificate::from_der(cert.as_ref()).map_err(|e| e.to_string())?;
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    for (i, rdn) in x.subject().iter_rdn().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.attr_type();
            match x509_parser::objects::oid2abbrev(oid, registry) {
                Ok(name) => out.push_str(name),
                Err(_) => out.push_str(&oid.to_id_string()),
            }
            out.push('=');
            match atv.as_str() {
                Ok(v) => escape_value(v, &mut out),
                Err(_) => {
                    // Not a string type: its DER value in hex, as RFC 4514 writes it.
                    out.push('#');
                    for b in atv.attr_value().data.iter() {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
    }
    Ok(out)
}

fn escape_value(v: &str, out: &mut String) {
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == n && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

/// `fnmatch(3)` with no flags, as libvirt matches DN patterns: `*` any run of characters,
/// `?` one character, `[...]` a set (`[!...]` or `[^...]` its complement, `a-z` ranges),
/// `\x` the character x.
pub fn fnmatch(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where to resume after the last `*`: its pattern position and the text it reached.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => match set(&p, pi + 1, t[ti]) {
                Some((true, next)) => Some(next),
                Some((false, _)) => None,
                // No closing bracket: a literal '['.
                None => (t[ti] == '[').then_some(pi + 1),
            },
            Some('\\') if pi + 1 < p.len() => (p[pi + 1] == t[ti]).then_some(pi + 2),
            Some(&c) => (c == t[ti]).then_some(pi + 1),
            None => None,
        };
        match step {
            Some(next) => {
                pi = next;
                ti += 1;
            }
            None => match star {
                Some((sp, st)) => {
                    pi = sp;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the set starting at `p[i]` (after its `[`): whether it matched, and
/// the pattern position after the `]`; `None` when the set has no `]`.
fn set(p: &[char], mut i: usize, c: char) -> Option<(bool, usize)> {
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let mut lo = *p.get(i)?;
        if lo == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if lo == '\\' {
            i += 1;
            lo = *p.get(i)?;
        }
        i += 1;
        if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&h| h != ']') {
            let mut hi = p[i + 1];
            i += 2;
            if hi == '\\' {
                hi = *p.get(i)?;
                i += 1;
            }
            matched |= lo <= c && c <= hi;
        } else {
            matched |= lo == c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_follows_libc() {
        let dn = "C=GB,ST=London,L=London,O=Red Hat,CN=client1";
        assert!(fnmatch("C=GB,ST=London,L=London,O=Red Hat,CN=*", dn));
        assert!(fnmatch(dn, dn));
        assert!(fnmatch("*CN=client?", dn));
        assert!(fnmatch("*CN=client[0-9]", dn));
        assert!(!fnmatch("*CN=client[!0-9]", dn));
        assert!(fnmatch("*CN=client[^a-z]", dn));
        assert!(!fnmatch("C=GB,*,CN=client2", dn));
        assert!(!fnmatch("C=GB", dn));
        assert!(!fnmatch("CN=*", dn));
        assert!(fnmatch("*", ""));
        assert!(!fnmatch("?", ""));
        // A backslash takes the next character literally.
        assert!(fnmatch(r"O=a\*b", "O=a*b"));
        assert!(!fnmatch(r"O=a\*b", "O=axb"));
        assert!(fnmatch(r"O=Example\\, Ltd*", r"O=Example\, Ltd,CN=x"));
        // An unclosed set is a literal bracket; `]` first in a set is a member.
        assert!(fnmatch("a[b", "a[b"));
        assert!(fnmatch("[]x]", "]"));
        // Backtracking over several stars.
        assert!(fnmatch("*a*b*c", "xxaxxbxxbxc"));
        assert!(!fnmatch("*a*b*c", "xxaxxbxxbx"));
        assert!(fnmatch("ÄÖ*ü", "ÄÖxyzü"));
    }

    #[test]
    fn dn_values_are_escaped_as_rfc4514() {
        let mut s = String::new();
        escape_value(" #Example, Ltd+\"x\" ", &mut s);
        assert_eq!(s, r#"\ #Example\, Ltd\+\"x\"\ "#);
        let mut s = String::new();
        escape_value("a#b", &mut s);
        assert_eq!(s, "a#b");
    }
}

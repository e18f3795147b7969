//! TLS to a BMC: its CA bundle, a pinned certificate, or (only when configured) no
//! verification at all.

use std::sync::Arc;

use super::RedfishSettings;

pub(super) fn tls_config(s: &RedfishSettings) -> Result<rustls::ClientConfig, String> {
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
pub(super) enum Trust {
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
pub(super) struct BmcCertVerifier {
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

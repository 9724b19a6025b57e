//! TLS for SQL connections with libpq's `sslmode` semantics, on rustls with the
//! ring provider (the workspace never links aws-lc or OpenSSL).
//!
//! | sslmode | encrypts | verifies |
//! | --- | --- | --- |
//! | disable, allow | no | - |
//! | prefer | if the server agrees | nothing |
//! | require | yes | the CA, only when a root file exists (given or default), as libpq |
//! | verify-ca | yes | the CA |
//! | verify-full | yes | the CA and the host name |

use super::params::{ConnParams, Host, RootCert, SslMode};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "root certificate file \"{0}\" does not exist: provide it with sslrootcert=, or use sslmode=require to encrypt without verifying the server"
    )]
    NoRootFile(PathBuf),
    #[error("could not read root certificate file \"{path}\": {reason}")]
    BadRootFile { path: PathBuf, reason: String },
    #[error("sslrootcert=system is not supported: give the CA file with sslrootcert=/path")]
    SystemRoots,
    #[error("certificate present, but not private key file \"{0}\"")]
    NoKeyFile(PathBuf),
    #[error("could not load client certificate \"{path}\": {reason}")]
    BadClientCert { path: PathBuf, reason: String },
    #[error("could not set up TLS: {0}")]
    Rustls(String),
}

/// How the connection is to be made: whether tokio-postgres asks for TLS, and
/// with which client configuration.
pub struct TlsPlan {
    pub mode: tokio_postgres::config::SslMode,
    pub config: Option<ClientConfig>,
}

/// The TLS plan for `p`. libpq never uses TLS over Unix sockets, whatever sslmode says.
pub fn plan(p: &ConnParams) -> Result<TlsPlan, TlsError> {
    use tokio_postgres::config::SslMode as Wire;
    let all_sockets = p.hosts.iter().all(|h| matches!(h, Host::Socket(_)));
    if all_sockets || matches!(p.sslmode, SslMode::Disable | SslMode::Allow) {
        // `allow` would try plain first and TLS only if refused; tokio-postgres has
        // no such fallback, and a server that insists on TLS is rare: plain it is.
        return Ok(TlsPlan { mode: Wire::Disable, config: None });
    }
    let verify = match p.sslmode {
        SslMode::Prefer => Verify::Nothing,
        SslMode::Require => match &p.sslrootcert {
            Some(RootCert::File(f)) if p.sslrootcert_explicit || f.exists() => Verify::Ca(roots(f)?),
            Some(RootCert::System) => return Err(TlsError::SystemRoots),
            _ => Verify::Nothing,
        },
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let f = match &p.sslrootcert {
                Some(RootCert::File(f)) => f,
                Some(RootCert::System) => return Err(TlsError::SystemRoots),
                None => return Err(TlsError::NoRootFile(PathBuf::from("~/.postgresql/root.crt"))),
            };
            let store = roots(f)?;
            if p.sslmode == SslMode::VerifyFull { Verify::Full(store) } else { Verify::Ca(store) }
        }
        SslMode::Disable | SslMode::Allow => Verify::Nothing,
    };
    let mode = if p.sslmode == SslMode::Prefer { Wire::Prefer } else { Wire::Require };
    let mut config = client_config(verify, p.sslcert.as_deref(), p.sslkey.as_deref())?;
    if p.ssl_direct {
        // Direct TLS (PostgreSQL 17+) requires the ALPN protocol name.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    Ok(TlsPlan { mode, config: Some(config) })
}

enum Verify {
    Nothing,
    Ca(RootCertStore),
    Full(RootCertStore),
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    if !path.exists() {
        return Err(TlsError::NoRootFile(path.to_path_buf()));
    }
    let bad = |reason: String| TlsError::BadRootFile { path: path.to_path_buf(), reason };
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        store.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(bad("no certificate found".into()));
    }
    Ok(store)
}

fn provider() -> Arc<CryptoProvider> {
    // Explicit, so that a process-wide default provider (or its absence) cannot change this.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(verify: Verify, cert: Option<&Path>, key: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(EncryptOnly { algs }),
        Verify::Ca(store) => Arc::new(CaOnly { inner: webpki(store, &provider)? }),
        Verify::Full(store) => webpki(store, &provider)?,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    // libpq sends a client certificate only when the certificate file exists.
    match cert.filter(|c| c.exists()) {
        None => Ok(builder.with_no_client_auth()),
        Some(cert) => {
            let key = key.filter(|k| k.exists()).ok_or_else(|| {
                TlsError::NoKeyFile(key.map_or_else(|| PathBuf::from("postgresql.key"), Path::to_path_buf))
            })?;
            let bad = |reason: String| TlsError::BadClientCert { path: cert.to_path_buf(), reason };
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(format!("key {}: {e}", key.display())))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| bad(e.to_string()))
        }
    }
}

fn webpki(store: RootCertStore, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))
}

/// `sslmode=prefer/require` without a root file: encryption against passive
/// eavesdropping only. The handshake signature is still checked against the
/// certificate the server sent.
#[derive(Debug)]
struct EncryptOnly {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the root file, the name may differ.
/// webpki checks the chain before the name, so a name error means the chain passed.
#[derive(Debug)]
struct CaOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::conninfo::Conninfo;
    use crate::postgres::params::LibpqEnv;
    use tokio_postgres::config::SslMode as Wire;

    fn params(ci: &str, home: &Path) -> ConnParams {
        let env = LibpqEnv::isolated().with_os_user("u").with_home(home);
        ConnParams::resolve(&Conninfo::parse(ci).unwrap(), &env).unwrap()
    }

    #[test]
    fn modes_map_as_libpq() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        let p = plan(&params("host=db sslmode=disable", h)).unwrap();
        assert!(p.mode == Wire::Disable && p.config.is_none());
        let p = plan(&params("host=db sslmode=allow", h)).unwrap();
        assert!(p.mode == Wire::Disable && p.config.is_none());
        let p = plan(&params("host=db", h)).unwrap();
        assert!(p.mode == Wire::Prefer && p.config.is_some());
        // No root file: require encrypts without verifying.
        let p = plan(&params("host=db sslmode=require", h)).unwrap();
        assert!(p.mode == Wire::Require && p.config.is_some());
        // Unix sockets never use TLS.
        let p = plan(&params("host=/run/pg sslmode=verify-full", h)).unwrap();
        assert!(p.mode == Wire::Disable && p.config.is_none());
    }

    #[test]
    fn verification_needs_a_root_file() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        let e = plan(&params("host=db sslmode=verify-full", h)).err().unwrap();
        assert!(matches!(e, TlsError::NoRootFile(_)), "{e}");
        assert!(e.to_string().contains("root.crt"));
        let e = plan(&params("host=db sslmode=verify-ca sslrootcert=system", h)).err().unwrap();
        assert!(matches!(e, TlsError::SystemRoots));
        // An explicit root file for require is used, so it must be readable.
        let e = plan(&params("host=db sslmode=require sslrootcert=/nonexistent/ca.pem", h)).err().unwrap();
        assert!(matches!(e, TlsError::NoRootFile(_)));
        std::fs::create_dir_all(h.join(".postgresql")).unwrap();
        std::fs::write(h.join(".postgresql/root.crt"), "not a certificate\n").unwrap();
        let e = plan(&params("host=db sslmode=verify-ca", h)).err().unwrap();
        assert!(matches!(e, TlsError::BadRootFile { .. }), "{e}");
        // The default root file, once present, makes require verify the CA (libpq).
        let e = plan(&params("host=db sslmode=require", h)).err().unwrap();
        assert!(matches!(e, TlsError::BadRootFile { .. }), "{e}");
    }
}

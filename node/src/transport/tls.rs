//! The cluster's mutual TLS: a private CA, one certificate per node (client and server at
//! once: every node calls and is called), and the rustls configurations built from the PEM
//! files named in the configuration. Only the ring provider is used.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::catalog::durable::{self, DurableFile};

/// How long a new CA and a new node certificate are valid, in years.
const CA_YEARS: i32 = 20;
const NODE_YEARS: i32 = 10;

/// What to run to get each file, for the error messages.
const CA_HINT: &str = "create the cluster CA once with 'barman cluster cert ca' and copy its certificate to every node";
const NODE_HINT: &str = "create one with 'barman cluster cert node NAME'";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file named by an option is missing, unreadable or unusable.
    #[error("{option} {}: {why}", path.display())]
    File { option: &'static str, path: PathBuf, why: String },
    #[error("{} already exists: remove it first if you mean to replace it", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    /// A certificate could not be made (bad name, bad CA given).
    #[error("cannot make the certificate: {0}")]
    Generate(String),
    #[error("cannot set up TLS: {0}")]
    Config(String),
}

/// A certificate and its private key, PEM-encoded. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pem").field("cert", &self.cert).field("key", &"<private key>").finish()
    }
}

fn generate(e: impl fmt::Display) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Validity from yesterday (clocks of the cluster may lag) for `years`.
fn validity(params: &mut CertificateParams, years: i32) {
    use chrono::Datelike;
    let from = chrono::Utc::now().date_naive() - chrono::Days::new(1);
    let (m, d) = (from.month() as u8, from.day().min(28) as u8);
    params.not_before = rcgen::date_time_ymd(from.year(), m, d);
    params.not_after = rcgen::date_time_ymd(from.year() + years, m, d);
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// A new cluster CA (ECDSA P-256), whose subject is only `common_name`.
pub fn new_ca(common_name: &str) -> Result<Pem, TlsError> {
    if common_name.trim().is_empty() {
        return Err(TlsError::Generate("the CA needs a name".into()));
    }
    let mut params = ca_params(common_name);
    validity(&mut params, CA_YEARS);
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

/// A certificate for node `node_name` signed by `ca`: the name as CN and first DNS name,
/// then every host in `hosts` (IP addresses as IP names), usable as client and as server.
pub fn new_node_cert(ca: &Pem, node_name: &str, hosts: &[String]) -> Result<Pem, TlsError> {
    if !matches!(ServerName::try_from(node_name), Ok(ServerName::DnsName(_))) {
        return Err(TlsError::Generate(format!(
            "node name '{node_name}' is not a valid DNS name: use letters, digits, '-' and '.'"
        )));
    }
    let (ca_der, issuer) = issuer_of(ca)?;
    let mut sans = vec![node_name.to_string()];
    for h in hosts {
        if !sans.contains(h) {
            sans.push(h.clone());
        }
    }
    let mut params = CertificateParams::new(sans).map_err(generate)?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, NODE_YEARS);
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;

    verify_as_node(&ca_der, cert.der(), node_name).map_err(not_of_ca)?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

fn not_of_ca(e: String) -> TlsError {
    TlsError::Generate(format!(
        "the new certificate does not verify against the CA ({e}): is the CA key the one of this CA \
         certificate, made by 'barman cluster cert ca'?"
    ))
}

/// The CA certificate, and the issuer that signs with its key.
fn issuer_of(ca: &Pem) -> Result<(CertificateDer<'static>, Issuer<'static, KeyPair>), TlsError> {
    let ca_der = CertificateDer::from_pem_slice(ca.cert.as_bytes())
        .map_err(|e| TlsError::Generate(format!("the CA certificate is not PEM: {e}")))?;
    let ca_key = KeyPair::from_pem(&ca.key).map_err(|e| TlsError::Generate(format!("the CA key is unusable: {e}")))?;
    let ca_name = cert_names(&ca_der)
        .and_then(|n| n.common_name)
        .ok_or_else(|| TlsError::Generate("the CA certificate has no common name".into()))?;
    // rcgen 0.14 cannot read a certificate back (that needs its x509-parser feature): the
    // issuer is rebuilt from the same subject, and the result verified by the caller.
    Ok((ca_der, Issuer::new(ca_params(&ca_name), ca_key)))
}

/// What a WAL client certificate's name becomes: `NAME (WAL client)`. It cannot be a node
/// name (those are DNS names, without spaces), so such a certificate is never admitted as
/// a member of the cluster (Raft, Sync), only to the Archive service.
pub fn wal_client_name(name: &str) -> String {
    format!("{name}{WAL_CLIENT_SUFFIX}")
}

const WAL_CLIENT_SUFFIX: &str = " (WAL client)";

/// A client-only certificate for the PostgreSQL host `name`, signed by `ca`, for
/// `barman-wal-archive` / `barman-wal-restore` talking to nodes over gRPC: it may put and
/// get the WAL of `servers` only (one SAN URI `barman://server/NAME` each).
pub fn new_client_cert(ca: &Pem, name: &str, servers: &[String]) -> Result<Pem, TlsError> {
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err(TlsError::Generate(format!("client name '{name}' is empty or holds control characters")));
    }
    if servers.is_empty() {
        return Err(TlsError::Generate(format!(
            "a WAL client certificate names the servers it serves: give --server SERVER for each server of '{name}'"
        )));
    }
    let mut sans = Vec::new();
    for s in servers {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(TlsError::Generate(format!("'{s}' is not a server name (letters, digits, '-', '_' and '.')")));
        }
        let uri = format!("{SERVER_URI_PREFIX}{s}").try_into().map_err(generate)?;
        sans.push(rcgen::SanType::URI(uri));
    }
    let (ca_der, issuer) = issuer_of(ca)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    params.subject_alt_names = sans;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, wal_client_name(name));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, NODE_YEARS);
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;
    let mut roots = RootCertStore::empty();
    roots.add(ca_der).map_err(|e| not_of_ca(e.to_string()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| not_of_ca(e.to_string()))?;
    verifier.verify_client_cert(cert.der(), &[], UnixTime::now()).map_err(|e| not_of_ca(e.to_string()))?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

/// Checks `cert` as both ends will: a client certificate, and a server certificate for `name`.
fn verify_as_node(ca: &CertificateDer<'_>, cert: &CertificateDer<'_>, name: &str) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| e.to_string())?;
    let roots = Arc::new(roots);
    let now = UnixTime::now();
    let client =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build().map_err(|e| e.to_string())?;
    client.verify_client_cert(cert, &[], now).map_err(|e| e.to_string())?;
    let server = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    server.verify_server_cert(cert, &[], &name, &[], now).map_err(|e| e.to_string())?;
    Ok(())
}

/// Writes a certificate (mode 0644) and its key (mode 0600) durably, refusing to replace
/// either file.
pub fn write_pem_files(pem: &Pem, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    for p in [cert_path, key_path] {
        if p.symlink_metadata().is_ok() {
            return Err(TlsError::Exists(p.to_path_buf()));
        }
    }
    let write = |path: &Path, text: &str, mode: u32| -> Result<DurableFile, TlsError> {
        let err = |source| TlsError::Write { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            durable::create_dir_all(dir).map_err(err)?;
        }
        let mut f = DurableFile::create(path).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.seal(mode, None).map_err(err)?;
        Ok(f)
    };
    let key = write(key_path, &pem.key, 0o600)?;
    let cert = write(cert_path, &pem.cert, 0o644)?;
    let publish = |f: DurableFile, path: &Path| match f.publish_new() {
        Ok(true) => Ok(()),
        Ok(false) => Err(TlsError::Exists(path.to_path_buf())),
        Err(source) => Err(TlsError::Write { path: path.to_path_buf(), source }),
    };
    publish(key, key_path)?;
    if let Err(e) = publish(cert, cert_path) {
        // A key alone would block the next attempt: take it back.
        let _ = durable::remove(key_path);
        return Err(e);
    }
    Ok(())
}

/// The PEM files of a node's TLS setup, as named by `cluster_ca_file`, `node_cert_file`
/// and `node_key_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The node's own files, as `[barman]` names them (cluster_ca_file, node_cert_file,
    /// node_key_file).
    pub fn of_node(g: &crate::config::GlobalConfig) -> TlsFiles {
        TlsFiles { ca: g.cluster_ca_file.clone(), cert: g.node_cert_file.clone(), key: g.node_key_file.clone() }
    }

    fn read(option: &'static str, path: &Path, hint: &str) -> Result<Vec<u8>, TlsError> {
        std::fs::read(path).map_err(|e| TlsError::File { option, path: path.into(), why: format!("{e}; {hint}") })
    }

    fn certs(option: &'static str, path: &Path, hint: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let bytes = Self::read(option, path, hint)?;
        let bad = |why: String| TlsError::File { option, path: path.into(), why };
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not a PEM certificate file ({e}); {hint}")))?;
        if certs.is_empty() {
            return Err(bad(format!("no certificate found; {hint}")));
        }
        Ok(certs)
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in Self::certs("cluster_ca_file", &self.ca, CA_HINT)? {
            roots.add(c).map_err(|e| TlsError::File {
                option: "cluster_ca_file",
                path: self.ca.clone(),
                why: format!("not a usable CA certificate ({e}); {CA_HINT}"),
            })?;
        }
        Ok(roots)
    }

    fn identity(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let certs = Self::certs("node_cert_file", &self.cert, NODE_HINT)?;
        let bytes = Self::read("node_key_file", &self.key, NODE_HINT)?;
        let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::File {
            option: "node_key_file",
            path: self.key.clone(),
            why: format!("no private key found ({e}); {NODE_HINT}"),
        })?;
        Ok((certs, key))
    }

    fn mismatch(&self, e: rustls::Error) -> TlsError {
        TlsError::File {
            option: "node_key_file",
            path: self.key.clone(),
            why: format!(
                "unusable with node_cert_file {} ({e}): use the key made with that certificate",
                self.cert.display()
            ),
        }
    }
}

/// The server side: a client certificate signed by the cluster CA is required; ALPN h2.
/// Our own certificate is checked against the CA here, so a wrong file fails at start and
/// not at every peer's first call.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = Arc::new(files.roots()?);
    let (certs, key) = files.identity()?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let intermediates = certs.get(1..).unwrap_or_default();
    if let Err(e) = verifier.verify_client_cert(&certs[0], intermediates, UnixTime::now()) {
        return Err(TlsError::File {
            option: "node_cert_file",
            path: files.cert.clone(),
            why: format!(
                "not valid for cluster_ca_file {} ({e}); {NODE_HINT} with the cluster's CA",
                files.ca.display()
            ),
        });
    }
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| files.mismatch(e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The client side: the server must present a certificate of the cluster CA (for the name
/// the caller expects); ours is presented in return. ALPN h2.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = files.roots()?;
    let (certs, key) = files.identity()?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| files.mismatch(e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What a node presents and trusts when it calls a peer, read and checked once. tonic's
/// client TLS is configured from PEM text (it cannot take a rustls `ClientConfig`), so this
/// keeps the text; `Debug` never shows the key.
#[derive(Clone)]
pub struct ClientTls {
    ca: Arc<str>,
    cert: Arc<str>,
    key: Arc<str>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the files, checking them as [`client_config`] does.
    pub fn load(files: &TlsFiles) -> Result<ClientTls, TlsError> {
        client_config(files)?;
        let text = |option, path: &Path, hint| {
            String::from_utf8(TlsFiles::read(option, path, hint)?).map_err(|_| TlsError::File {
                option,
                path: path.into(),
                why: format!("not a PEM text file; {hint}"),
            })
        };
        Ok(ClientTls {
            ca: text("cluster_ca_file", &files.ca, CA_HINT)?.into(),
            cert: text("node_cert_file", &files.cert, NODE_HINT)?.into(),
            key: text("node_key_file", &files.key, NODE_HINT)?.into(),
        })
    }

    /// From PEM text already in memory (tests, certificates just made).
    pub fn from_pem(ca_cert: &str, node: &Pem) -> ClientTls {
        ClientTls { ca: ca_cert.into(), cert: node.cert.as_str().into(), key: node.key.as_str().into() }
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert
    }

    pub fn key_pem(&self) -> &str {
        &self.key
    }
}

/// The node name a verified peer certificate stands for: its first DNS name, else its
/// common name. Call it only on a certificate rustls has verified.
pub fn peer_name(cert_der: &CertificateDer<'_>) -> Option<String> {
    let names = cert_names(cert_der)?;
    names.dns.into_iter().next().or(names.common_name)
}

/// The names a certificate carries.
#[derive(Debug, Default)]
struct CertNames {
    common_name: Option<String>,
    dns: Vec<String>,
    uris: Vec<String>,
    /// The serial number, lower-case hex without leading zero bytes.
    serial: String,
}

/// How a certificate is named on the deny list: `sha256:<hex of the DER's SHA-256>` and
/// `serial:<hex>` (never its name: a rotated certificate carries the same name).
pub fn revocation_ids(cert_der: &CertificateDer<'_>) -> Vec<String> {
    use sha2::{Digest, Sha256};
    let hex: String = Sha256::digest(cert_der.as_ref()).iter().map(|b| format!("{b:02x}")).collect();
    let mut ids = vec![format!("sha256:{hex}")];
    if let Some(n) = cert_names(cert_der) {
        ids.push(format!("serial:{}", n.serial));
    }
    ids
}

/// A revocation id as an operator gives it: a SHA-256 fingerprint (64 hex digits, colons
/// allowed, as `openssl x509 -fingerprint -sha256` prints it) or a serial number
/// (`serial=HEX` as `openssl x509 -serial` prints it, or hex); None when it is neither.
pub fn parse_revocation_id(text: &str) -> Option<String> {
    let t = text.trim();
    let t = t.split_once('=').map_or(t, |(_, v)| v).trim();
    let hex: String = t.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let fingerprint = text.to_ascii_lowercase().contains("sha256") || (hex.len() == 64 && t.contains(':'));
    if hex.len() == 64 && (fingerprint || !text.to_ascii_lowercase().contains("serial")) {
        return Some(format!("sha256:{hex}"));
    }
    let serial = hex.trim_start_matches("00");
    Some(format!("serial:{}", if serial.is_empty() { "0" } else { serial }))
}

/// How a WAL client certificate names a server it may serve: one SAN URI per server.
pub const SERVER_URI_PREFIX: &str = "barman://server/";

/// Who a verified peer certificate stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A node certificate (DNS names): a member of the cluster if its name is one.
    Node,
    /// A WAL client certificate (`NAME (WAL client)`, no DNS name), with the servers it
    /// names (none: made before certificates named their servers).
    WalClient { servers: Vec<String> },
}

/// The role of a verified peer certificate. Call it only on one rustls has verified.
pub fn peer_role(cert_der: &CertificateDer<'_>) -> Option<Role> {
    let names = cert_names(cert_der)?;
    let client = names.dns.is_empty() && names.common_name.as_deref().is_some_and(|n| n.ends_with(WAL_CLIENT_SUFFIX));
    if !client {
        return Some(Role::Node);
    }
    let servers = names.uris.iter().filter_map(|u| u.strip_prefix(SERVER_URI_PREFIX)).map(str::to_string).collect();
    Some(Role::WalClient { servers })
}

/// Reads the subject's common name and the DNS subject alternative names out of a DER
/// certificate (RFC 5280: Certificate, TBSCertificate, Name, Extensions). Only what we need:
/// rustls verifies certificates but does not show their names.
fn cert_names(der: &[u8]) -> Option<CertNames> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
    const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
    let (cert, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let fields = elements(tbs)?;
    // version [0] is optional; then serial, signature, issuer, validity, subject, key.
    let skip = usize::from(fields.first()?.0 == 0xa0);
    let subject = fields.get(skip + 4).filter(|f| f.0 == SEQUENCE)?.1;
    let mut names = CertNames::default();
    let serial = fields.get(skip).filter(|f| f.0 == 0x02)?.1;
    let serial: String = serial.iter().skip_while(|b| **b == 0).map(|b| format!("{b:02x}")).collect();
    names.serial = if serial.is_empty() { "0".into() } else { serial };
    for (tag, rdn) in elements(subject)? {
        if tag != SET {
            return None;
        }
        for (_, atv) in elements(rdn)? {
            if let [(0x06, oid), (string_tag, value)] = elements(atv)?.as_slice()
                && *oid == OID_CN
                && names.common_name.is_none()
            {
                names.common_name = text(*string_tag, value);
            }
        }
    }
    if let Some((_, explicit)) = fields.iter().skip(skip + 6).find(|f| f.0 == 0xa3) {
        let (exts, _) = expect(explicit, SEQUENCE)?;
        for (_, ext) in elements(exts)? {
            let parts = elements(ext)?;
            let (Some((0x06, oid)), Some((0x04, value))) = (parts.first(), parts.last()) else { return None };
            if *oid != OID_SAN {
                continue;
            }
            let (general_names, _) = expect(value, SEQUENCE)?;
            for (tag, name) in elements(general_names)? {
                // dNSName [2] and uniformResourceIdentifier [6]: IA5String, implicitly tagged.
                match tag {
                    0x82 => names.dns.push(String::from_utf8(name.to_vec()).ok()?),
                    0x86 => names.uris.push(String::from_utf8(name.to_vec()).ok()?),
                    _ => {}
                }
            }
        }
    }
    Some(names)
}

/// A directory string: UTF8String, PrintableString or IA5String.
fn text(tag: u8, value: &[u8]) -> Option<String> {
    matches!(tag, 0x0c | 0x13 | 0x16).then(|| String::from_utf8(value.to_vec()).ok()).flatten()
}

/// One DER element: (tag, content, what follows).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |l, &b| (l << 8) | usize::from(b)), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, content, rest) = element(input)?;
    (t == tag).then_some((content, rest))
}

fn elements(mut input: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (tag, content, rest) = element(input)?;
        out.push((tag, content));
        input = rest;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn node_certificates_name_the_node_first_and_verify_both_ways() {
        let ca = new_ca("barman cluster").unwrap();
        let node =
            new_node_cert(&ca, "site-a", &["backup1.example.net".into(), "10.0.0.7".into(), "site-a".into()]).unwrap();
        let names = cert_names(&der(&node.cert)).unwrap();
        assert_eq!(names.common_name.as_deref(), Some("site-a"));
        assert_eq!(names.dns, ["site-a", "backup1.example.net"], "the IP is an IP name, the duplicate dropped");
        assert_eq!(peer_name(&der(&node.cert)).as_deref(), Some("site-a"));
        assert_eq!(cert_names(&der(&ca.cert)).unwrap().common_name.as_deref(), Some("barman cluster"));
        assert_eq!(peer_name(&der(&ca.cert)).as_deref(), Some("barman cluster"), "no DNS name: the CN");
        verify_as_node(&der(&ca.cert), &der(&node.cert), "site-a").unwrap();
        verify_as_node(&der(&ca.cert), &der(&node.cert), "site-b").unwrap_err();
        assert!(!format!("{node:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn a_wal_client_certificate_is_a_client_only_and_never_a_member_name() {
        let ca = new_ca("c").unwrap();
        let servers = ["pg".to_string(), "pg-2".to_string()];
        let client = new_client_cert(&ca, "n1", &servers).unwrap();
        let name = peer_name(&der(&client.cert)).unwrap();
        assert_eq!(name, "n1 (WAL client)");
        assert_eq!(peer_role(&der(&client.cert)), Some(Role::WalClient { servers: servers.to_vec() }));
        let node = new_node_cert(&ca, "n2", &[]).unwrap();
        assert_eq!(peer_role(&der(&node.cert)), Some(Role::Node));
        // A certificate names at least one server, each a server name.
        assert!(new_client_cert(&ca, "n1", &[]).unwrap_err().to_string().contains("--server"));
        assert!(new_client_cert(&ca, "n1", &["a/b".into()]).is_err());
        // Members are admitted by a node name, which is a DNS name: this one never is.
        assert!(!matches!(ServerName::try_from(name.as_str()), Ok(ServerName::DnsName(_))));
        // Usable to call a node, not to be one.
        verify_as_node(&der(&ca.cert), &der(&client.cert), "n1").unwrap_err();
        let other = new_ca("c").unwrap();
        let e =
            new_client_cert(&Pem { cert: ca.cert.clone(), key: other.key }, "pg1", &servers).unwrap_err().to_string();
        assert!(e.contains("does not verify against the CA"), "{e}");
        assert!(new_client_cert(&ca, " ", &servers).is_err());
    }

    #[test]
    fn revocation_ids_are_the_fingerprint_and_the_serial_as_openssl_prints_them() {
        let ca = new_ca("c").unwrap();
        let cert = der(&new_client_cert(&ca, "pg1", &["pg".into()]).unwrap().cert);
        let ids = revocation_ids(&cert);
        assert!(ids[0].starts_with("sha256:") && ids[0].len() == 7 + 64, "{ids:?}");
        assert!(ids[1].starts_with("serial:"), "{ids:?}");
        let hex = ids[0].trim_start_matches("sha256:");
        let colons: Vec<String> = (0..32).map(|i| hex[2 * i..2 * i + 2].to_ascii_uppercase()).collect();
        let openssl = format!("sha256 Fingerprint={}", colons.join(":"));
        assert_eq!(parse_revocation_id(&openssl).as_deref(), Some(ids[0].as_str()));
        assert_eq!(parse_revocation_id(hex).as_deref(), Some(ids[0].as_str()));
        let serial = ids[1].trim_start_matches("serial:").to_ascii_uppercase();
        assert_eq!(parse_revocation_id(&format!("serial={serial}")).as_deref(), Some(ids[1].as_str()));
        assert_eq!(parse_revocation_id("serial=00AB").as_deref(), Some("serial:ab"));
        assert_eq!(parse_revocation_id("pg1"), None);
        assert_eq!(parse_revocation_id(""), None);
    }

    #[test]
    fn a_certificate_is_made_only_with_the_key_of_its_ca_and_a_dns_name() {
        let ca = new_ca("one").unwrap();
        let other = new_ca("one").unwrap();
        let mixed = Pem { cert: ca.cert.clone(), key: other.key.clone() };
        let e = new_node_cert(&mixed, "n1", &[]).unwrap_err().to_string();
        assert!(e.contains("does not verify against the CA"), "{e}");
        let e = new_node_cert(&ca, "not a name", &[]).unwrap_err().to_string();
        assert!(e.contains("not a valid DNS name"), "{e}");
    }

    #[test]
    fn pem_files_are_written_once_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let ca = new_ca("c").unwrap();
        let node = new_node_cert(&ca, "n1", &[]).unwrap();
        let (cert, key) = (d.path().join("tls/n1.crt"), d.path().join("tls/n1.key"));
        write_pem_files(&node, &cert, &key).unwrap();
        assert_eq!(std::fs::read_to_string(&key).unwrap(), node.key);
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777, 0o644);
        let again = new_node_cert(&ca, "n1", &[]).unwrap();
        let e = write_pem_files(&again, &cert, &d.path().join("other.key")).unwrap_err().to_string();
        assert!(e.contains("n1.crt already exists"), "{e}");
        assert!(!d.path().join("other.key").exists());
        assert_eq!(std::fs::read_to_string(&key).unwrap(), node.key, "untouched");
    }

    #[test]
    fn configs_name_the_bad_file_and_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        let ca = new_ca("c").unwrap();
        let foreign = new_ca("c").unwrap();
        let node = new_node_cert(&ca, "n1", &[]).unwrap();
        let p = |n: &str| d.path().join(n);
        std::fs::write(p("ca.crt"), &ca.cert).unwrap();
        std::fs::write(p("foreign.crt"), &foreign.cert).unwrap();
        std::fs::write(p("empty.crt"), "").unwrap();
        write_pem_files(&node, &p("n1.crt"), &p("n1.key")).unwrap();
        let files = TlsFiles { ca: p("ca.crt"), cert: p("n1.crt"), key: p("n1.key") };
        server_config(&files).unwrap();
        client_config(&files).unwrap();
        ClientTls::load(&files).unwrap();

        let e = server_config(&TlsFiles { cert: p("empty.crt"), ..files.clone() }).unwrap_err().to_string();
        assert!(e.starts_with("node_cert_file ") && e.contains("no certificate found; create one with"), "{e}");
        let e = client_config(&TlsFiles { ca: p("missing.crt"), ..files.clone() }).unwrap_err().to_string();
        assert!(e.starts_with("cluster_ca_file ") && e.contains("barman cluster cert ca"), "{e}");
        let e = server_config(&TlsFiles { ca: p("foreign.crt"), ..files.clone() }).unwrap_err().to_string();
        assert!(e.contains("not valid for cluster_ca_file"), "{e}");
        let e = client_config(&TlsFiles { key: p("empty.crt"), ..files.clone() }).unwrap_err().to_string();
        assert!(e.starts_with("node_key_file ") && e.contains("no private key found"), "{e}");
        let other = new_node_cert(&ca, "n1", &[]).unwrap();
        std::fs::write(p("other.key"), &other.key).unwrap();
        let e = server_config(&TlsFiles { key: p("other.key"), ..files }).unwrap_err().to_string();
        assert!(e.contains("use the key made with that certificate"), "{e}");
    }

    #[test]
    fn truncated_der_is_not_read_past_its_end() {
        let ca = new_ca("c").unwrap();
        let node = new_node_cert(&ca, "n1", &[]).unwrap();
        let d = der(&node.cert);
        for cut in 0..d.len() {
            let _ = cert_names(&d[..cut]);
        }
        assert!(cert_names(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
    }
}

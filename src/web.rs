//! `--web.config.file`: the web configuration file of the Prometheus
//! exporter toolkit (what node_exporter and Prometheus read), for the
//! metrics endpoint: TLS, with client certificates when a client CA is
//! given, basic authentication with bcrypt hashes, and response headers.
//!
//! The whole file is read and checked at start: a field this tool does not
//! know, a file it cannot read, a certificate or key it cannot use, a hash
//! that is not bcrypt, each ends the run before tracing with one line that
//! names the field. Relative paths are relative to the file's directory,
//! as in the toolkit.
//!
//! Where the toolkit differs: a client CA without `client_auth_type`
//! requires and verifies client certificates (the toolkit refuses such a
//! file); `RequestClientCert` and `RequireAnyClientCert`, which accept
//! certificates nobody verifies, are refused; TLS 1.0 and 1.1 do not exist
//! here; `cipher_suites`, `curve_preferences` and `client_allowed_sans`
//! are refused rather than ignored.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper::header::{HeaderName, HeaderValue};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::Deserialize;

/// The file as the toolkit documents it (the fields this tool takes).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    cert: Option<String>,
    key_file: Option<PathBuf>,
    key: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    client_ca: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    // Taken only to refuse them by name.
    cipher_suites: Option<serde_yaml_ng::Value>,
    curve_preferences: Option<serde_yaml_ng::Value>,
    client_allowed_sans: Option<serde_yaml_ng::Value>,
    prefer_server_cipher_suites: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// HTTP/2 is never offered (scrapes are HTTP/1.1); taken, ignored.
    #[allow(dead_code)]
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// The headers the toolkit lets a file add to every response.
const HEADERS: [&str; 5] = [
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
];

/// A web configuration, checked: what the endpoint serves with.
#[derive(Clone)]
pub struct WebConfig {
    path: PathBuf,
    /// TLS, when the file asks for it.
    pub tls: Option<Arc<ServerConfig>>,
    /// Basic authentication, when the file names users.
    pub users: Option<Arc<Users>>,
    /// Headers added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("path", &self.path)
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.as_ref().map(|u| u.hashes.len()))
            .finish()
    }
}

/// Two configurations are the same file's.
impl PartialEq for WebConfig {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}
impl Eq for WebConfig {}

impl WebConfig {
    /// Reads and checks `path`; the error is one line naming the field.
    pub fn load(path: &Path) -> Result<Self, String> {
        let fail = |what: String| format!("--web.config.file {}: {what}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| fail(one_line(&e.to_string())))?
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let tls = file
            .tls_server_config
            .map(|tls| tls_config(tls, dir).map(Arc::new))
            .transpose()
            .map_err(fail)?;
        let users = file
            .basic_auth_users
            .filter(|users| !users.is_empty())
            .map(|users| Users::new(users).map(Arc::new))
            .transpose()
            .map_err(fail)?;
        let headers = file
            .http_server_config
            .and_then(|http| http.headers)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| header(&name, &value))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        Ok(Self {
            path: path.to_owned(),
            tls,
            users,
            headers,
        })
    }
}

/// serde_yaml's message on one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let field = format!("http_server_config.headers.{name}");
    let Some(known) = HEADERS.iter().find(|h| h.eq_ignore_ascii_case(name)) else {
        return Err(format!(
            "{field}: not a header this endpoint sets (it sets {})",
            HEADERS.join(", ")
        ));
    };
    let value = HeaderValue::from_str(value).map_err(|_| format!("{field}: not a header value"))?;
    let name =
        HeaderName::from_bytes(known.as_bytes()).map_err(|_| format!("{field}: bad name"))?;
    Ok((name, value))
}

/// PEM text, from the file `file` (relative to `dir`) or inline, one of
/// the two; None when neither is given.
fn pem(
    dir: &Path,
    field: &str,
    file: Option<PathBuf>,
    inline: Option<String>,
) -> Result<Option<(String, Vec<u8>)>, String> {
    match (file, inline) {
        (Some(_), Some(_)) => Err(format!(
            "tls_server_config: both {field}_file and {field} given; one of them"
        )),
        (Some(file), None) => {
            let path = dir.join(&file);
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("tls_server_config.{field}_file: {}: {e}", path.display()))?;
            Ok(Some((format!("tls_server_config.{field}_file"), bytes)))
        }
        (None, Some(text)) => Ok(Some((
            format!("tls_server_config.{field}"),
            text.into_bytes(),
        ))),
        (None, None) => Ok(None),
    }
}

fn certificates(field: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{field}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{field}: no PEM certificate in it"));
    }
    Ok(certs)
}

fn version(field: &str, name: &str) -> Result<u8, String> {
    match name {
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        "TLS10" | "TLS11" => Err(format!(
            "tls_server_config.{field}: {name} is not offered (TLS12 or TLS13)"
        )),
        _ => Err(format!(
            "tls_server_config.{field}: {name}: not TLS12 or TLS13"
        )),
    }
}

/// What a client must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    None,
    /// A certificate the client CA signed, if the client sends one.
    IfGiven,
    /// A certificate the client CA signed.
    Required,
}

fn tls_config(tls: TlsFile, dir: &Path) -> Result<ServerConfig, String> {
    for (name, given) in [
        ("cipher_suites", tls.cipher_suites.is_some()),
        ("curve_preferences", tls.curve_preferences.is_some()),
        ("client_allowed_sans", tls.client_allowed_sans.is_some()),
    ] {
        if given {
            return Err(format!(
                "tls_server_config.{name}: not supported (the TLS library's defaults apply)"
            ));
        }
    }
    let _ = tls.prefer_server_cipher_suites;
    let (cert_field, cert_pem) = pem(dir, "cert", tls.cert_file, tls.cert)?
        .ok_or("tls_server_config: no cert_file (or cert)")?;
    let (key_field, key_pem) =
        pem(dir, "key", tls.key_file, tls.key)?.ok_or("tls_server_config: no key_file (or key)")?;
    let certs = certificates(&cert_field, &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{key_field}: not a PEM private key: {e}"))?;
    let client_ca = pem(dir, "client_ca", tls.client_ca_file, tls.client_ca)?;
    let auth = match (tls.client_auth_type.as_deref(), &client_ca) {
        (None, None) | (Some("NoClientCert"), None) => ClientAuth::None,
        (None, Some(_)) | (Some("RequireAndVerifyClientCert"), Some(_)) => ClientAuth::Required,
        (Some("VerifyClientCertIfGiven"), Some(_)) => ClientAuth::IfGiven,
        (Some("NoClientCert"), Some(_)) => {
            return Err(
                "tls_server_config.client_auth_type: NoClientCert with a client CA; \
                 RequireAndVerifyClientCert or VerifyClientCertIfGiven"
                    .into(),
            );
        }
        (Some(kind @ ("RequireAndVerifyClientCert" | "VerifyClientCertIfGiven")), None) => {
            return Err(format!(
                "tls_server_config.client_auth_type: {kind} needs client_ca_file"
            ));
        }
        (Some(kind @ ("RequestClientCert" | "RequireAnyClientCert")), _) => {
            return Err(format!(
                "tls_server_config.client_auth_type: {kind} accepts certificates nobody \
                 verifies: not supported (RequireAndVerifyClientCert or VerifyClientCertIfGiven)"
            ));
        }
        (Some(other), _) => {
            return Err(format!(
                "tls_server_config.client_auth_type: {other}: not NoClientCert, \
                 VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            ));
        }
    };
    let min = version("min_version", tls.min_version.as_deref().unwrap_or("TLS12"))?;
    let max = version("max_version", tls.max_version.as_deref().unwrap_or("TLS13"))?;
    if min > max {
        return Err("tls_server_config: min_version above max_version".into());
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, version)| version)
            .collect();
    // ring rather than aws-lc-rs: it builds with a C compiler alone, for
    // both architectures the packages ship. rustls deprecates its provider
    // for lacking a post-quantum key exchange (X25519MLKEM768).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?;
    let builder = match (auth, client_ca) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some((field, pem))) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(&field, &pem)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{field}: not a CA certificate: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::IfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| format!("{field}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{cert_field} and {key_field}: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A bcrypt hash of a password nobody has, checked for unknown users so
/// that a wrong name takes as long as a wrong password (cost 10, as the
/// toolkit's examples).
const NOBODY: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

/// The users of basic authentication and their bcrypt hashes.
pub struct Users {
    hashes: BTreeMap<String, String>,
    /// SHA-256 of name, password and hash of each login that succeeded:
    /// bcrypt costs tens of milliseconds by design, a scraper logs in every
    /// few seconds. Bounded: cleared when full.
    granted: Mutex<HashSet<[u8; 32]>>,
}

/// Logins remembered at most.
const GRANTED: usize = 256;

impl Users {
    fn new(hashes: BTreeMap<String, String>) -> Result<Self, String> {
        for (user, hash) in &hashes {
            hash.parse::<bcrypt::HashParts>()
                .map_err(|e| format!("basic_auth_users.{user}: not a bcrypt hash ({e})"))?;
        }
        Ok(Self {
            hashes,
            granted: Mutex::new(HashSet::new()),
        })
    }

    /// The credentials of an Authorization header, read once for
    /// [`Users::remembers`] and [`Users::verify`]; None without (or with
    /// malformed) basic credentials.
    pub fn login(&self, authorization: Option<&[u8]>) -> Option<Login> {
        let (user, password) = authorization.and_then(basic_credentials)?;
        let hash = self.hashes.get(&user).cloned();
        let key = login_key(&user, &password, hash.as_ref());
        Some(Login {
            password,
            hash,
            key,
        })
    }

    fn granted(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.granted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this login succeeded before (no bcrypt needed).
    pub fn remembers(&self, login: &Login) -> bool {
        login.hash.is_some() && self.granted().contains(&login.key)
    }

    /// Whether the password is the user's, by bcrypt (tens of
    /// milliseconds: run it off the server's thread); a success is
    /// remembered. An unknown user costs as much, and fails.
    pub fn verify(&self, login: &Login) -> bool {
        let hash = login.hash.as_deref();
        let ok = bcrypt::verify(&login.password, hash.unwrap_or(NOBODY)).unwrap_or(false);
        if !(ok && hash.is_some()) {
            return false;
        }
        let mut granted = self.granted();
        if granted.len() >= GRANTED {
            granted.clear();
        }
        granted.insert(login.key);
        true
    }
}

/// One request's basic credentials (see [`Users::login`]).
pub struct Login {
    password: Vec<u8>,
    /// The user's bcrypt hash; None for a name no user has.
    hash: Option<String>,
    /// See [`login_key`].
    key: [u8; 32],
}

/// SHA-256 of a login: name, password and the hash it is checked against.
fn login_key(user: &str, password: &[u8], hash: Option<&String>) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        user.as_bytes(),
        password,
        hash.map_or(&b""[..], |h| h.as_bytes()),
    ] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// The name and password of `Basic <base64 of name:password>`.
fn basic_credentials(header: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_decode(encoded.trim())?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// Standard base64 with padding (RFC 4648), as browsers and Prometheus
/// send it.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.len() % 4 != 0 {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = n << 6 | value(c)?;
        }
        n <<= 6 * pad as u32;
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_decode() {
        // "prometheus:s3cr:et" and "a:" in base64.
        assert_eq!(
            basic_credentials(b"Basic cHJvbWV0aGV1czpzM2NyOmV0"),
            Some(("prometheus".into(), b"s3cr:et".to_vec()))
        );
        assert_eq!(
            basic_credentials(b"basic YTo="),
            Some(("a".into(), Vec::new()))
        );
        assert_eq!(basic_credentials(b"Bearer YTo="), None);
        assert_eq!(basic_credentials(b"Basic YTo"), None);
        assert_eq!(basic_credentials(b"Basic !!!!"), None);
        assert_eq!(basic_credentials(b"Basic YQ=="), None, "no colon");
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tcpstates-web-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn users_check_bcrypt_and_remember_logins() {
        let dir = temp_dir("users");
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let path = write(
            &dir,
            "web.yml",
            &format!("basic_auth_users:\n  prometheus: '{hash}'\n"),
        );
        let config = WebConfig::load(&path).unwrap();
        assert!(config.tls.is_none());
        let users = config.users.unwrap();
        // As the endpoint asks: remembered, else checked by bcrypt.
        let allows = |header: Option<&[u8]>| {
            users
                .login(header)
                .is_some_and(|login| users.remembers(&login) || users.verify(&login))
        };
        // "prometheus:s3cret", "prometheus:wrong", "nobody:s3cret".
        let right: &[u8] = b"Basic cHJvbWV0aGV1czpzM2NyZXQ=";
        assert!(!users.remembers(&users.login(Some(right)).unwrap()));
        assert!(allows(Some(right)));
        assert_eq!(users.granted.lock().unwrap().len(), 1);
        assert!(users.remembers(&users.login(Some(right)).unwrap()));
        assert!(allows(Some(right)));
        assert!(!allows(Some(b"Basic cHJvbWV0aGV1czp3cm9uZw==")));
        assert!(!allows(Some(b"Basic bm9ib2R5OnMzY3JldA==")));
        assert!(!allows(None));
        assert_eq!(users.granted.lock().unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_files_name_the_field() {
        let dir = temp_dir("bad");
        for (text, wanted) in [
            (
                "tls_server_config:\n  cert_fil: x\n",
                "unknown field `cert_fil`",
            ),
            (
                "basic_auth_users:\n  a: plain\n",
                "basic_auth_users.a: not a bcrypt hash",
            ),
            (
                "tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.key\n",
                "tls_server_config.cert_file:",
            ),
            ("tls_server_config:\n  key_file: k\n", "no cert_file"),
            (
                "tls_server_config:\n  cipher_suites: [x]\n",
                "cipher_suites: not supported",
            ),
            (
                "http_server_config:\n  headers:\n    Server: x\n",
                "headers.Server",
            ),
            ("nonsense: 1\n", "unknown field `nonsense`"),
            ("basic_auth_users: [a]\n", "basic_auth_users"),
        ] {
            let path = write(&dir, "web.yml", text);
            let err = WebConfig::load(&path).unwrap_err();
            assert!(err.contains(wanted), "{text:?}: {err}");
            assert!(err.starts_with("--web.config.file "), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let err = WebConfig::load(&dir.join("absent.yml")).unwrap_err();
        assert!(err.contains("absent.yml"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn empty_file_is_plain_http() {
        let dir = temp_dir("empty");
        let config = WebConfig::load(&write(&dir, "web.yml", "")).unwrap();
        assert!(config.tls.is_none() && config.users.is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}

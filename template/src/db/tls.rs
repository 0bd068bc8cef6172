//! TLS to PostgreSQL, as libpq's `sslmode` and `sslrootcert` describe it, with rustls.
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | when the server offers it | no |
//! | `require` | always | no; with a CA given (`sslrootcert`, `TENANCY_DATABASE_CA_FILE`), as `verify-ca` (libpq does the same) |
//! | `verify-ca` | always | signed by the CA |
//! | `verify-full` | always | signed by the CA, and for the host name of the URL |
//!
//! The CA is `sslrootcert` of the URL, else `TENANCY_DATABASE_CA_FILE`, else (or with
//! `sslrootcert=system`) the web PKI roots built into the service (Mozilla's list).
//!
//! Over TLS, SCRAM authentication binds itself to the connection (`tls-server-end-point`,
//! RFC 5929): a server in the middle that knows no password cannot relay it. As in libpq,
//! `channel_binding=prefer` is the default and `channel_binding=require` in the URL
//! refuses any server that does not bind.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres::tls::{ChannelBinding, TlsConnect};

/// libpq's `sslmode` values (`allow` is not offered: it prefers no encryption).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not supported: use disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }
}

/// A PostgreSQL URL's connection settings and how its connections are secured.
#[derive(Clone)]
pub struct PgConfig {
    config: tokio_postgres::Config,
    tls: Tls,
    /// False for connections through a pooler in transaction mode, which drops or refuses
    /// start-up options: settings then go in each transaction instead.
    start_up_options: bool,
    /// Whether a connection keeps the statements it prepared, for reuse (not through a
    /// transaction pooler that does not keep them apart per client).
    prepared_statements: bool,
}

impl PgConfig {
    /// Parses a `postgres://` URL or a `key=value` string. `sslmode` and `sslrootcert` are
    /// read here; `ca_file` (`TENANCY_DATABASE_CA_FILE`) is the CA when the URL names none.
    /// Errors never hold the URL (it may carry a password).
    pub fn parse(url: &str, ca_file: Option<&Path>) -> Result<Self, String> {
        let (rest, mode, root) = take_tls_options(url)?;
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| format!("not a PostgreSQL URL ({e})"))?;
        let mode = mode.unwrap_or(SslMode::Prefer);
        config.ssl_mode(match mode {
            SslMode::Disable => WireMode::Disable,
            SslMode::Prefer => WireMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
        });
        let ca = match root.as_deref() {
            Some("system") => Ca::System,
            Some(path) => Ca::File(path.to_owned()),
            None => match ca_file {
                Some(path) => Ca::File(path.display().to_string()),
                None => Ca::System,
            },
        };
        let given = !matches!(ca, Ca::System) || root.is_some();
        let tls = Tls::new(mode, given, &ca)?;
        Ok(Self {
            config,
            tls,
            start_up_options: true,
            prepared_statements: true,
        })
    }

    pub fn tls(&self) -> &Tls {
        &self.tls
    }

    /// The same settings for connections through a pooler in transaction mode: refuses a
    /// URL with `options` (such a pooler drops or refuses them), and keeps any from being
    /// added (`connect::with_session_option` and `with_statement_timeout` leave it as it is).
    /// `prepared_statements`: whether the pooler keeps each client's prepared statements
    /// apart (PgBouncer 1.21 and newer with `max_prepared_statements`).
    pub fn through_transaction_pooler(mut self, prepared_statements: bool) -> Result<Self, String> {
        if self
            .config
            .get_options()
            .is_some_and(|o| !o.trim().is_empty())
        {
            return Err(
                "a pooler in transaction mode drops or refuses the URL's `options`: \
                 remove them (TENANCY_POOLER=transaction sets what each transaction needs)"
                    .into(),
            );
        }
        self.start_up_options = false;
        self.prepared_statements = prepared_statements;
        Ok(self)
    }

    /// Whether connections keep their prepared statements for reuse.
    pub fn keeps_prepared_statements(&self) -> bool {
        self.prepared_statements
    }

    /// Whether start-up options reach the server (not through a transaction pooler).
    pub fn takes_start_up_options(&self) -> bool {
        self.start_up_options
    }

    /// The connection settings of `url` without building its TLS (no CA file is read):
    /// for what only describes the URL, such as log lines.
    pub fn settings_only(url: &str) -> Result<tokio_postgres::Config, String> {
        let (rest, _, _) = take_tls_options(url)?;
        tokio_postgres::Config::from_str(&rest).map_err(|e| format!("not a PostgreSQL URL ({e})"))
    }
}

impl std::fmt::Debug for PgConfig {
    // tokio-postgres's own Debug leaves the password out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("config", &self.config)
            .field("sslmode", &self.tls.mode)
            .finish()
    }
}

impl std::ops::Deref for PgConfig {
    type Target = tokio_postgres::Config;
    fn deref(&self) -> &Self::Target {
        &self.config
    }
}

impl std::ops::DerefMut for PgConfig {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.config
    }
}

/// Where the CA comes from.
enum Ca {
    System,
    File(String),
}

/// The cryptography of every TLS connection to PostgreSQL: rustls's *ring* provider.
///
/// rustls 0.23.48 deprecated it because *ring* has no post-quantum key exchange
/// (X25519MLKEM768, which rustls offers only with aws-lc-rs). Keeping *ring* is a choice: it
/// keeps the key exchanges and cipher suites the TLS tests were written against, and the
/// build free of aws-lc's C library. Moving to aws-lc-rs is this function and the features
/// of `rustls` and `tokio-rustls` in Cargo.toml (and the licences cargo-deny allows).
#[allow(deprecated)]
fn crypto_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// How connections of one URL are secured: a rustls client configuration shared by them.
#[derive(Clone)]
pub struct Tls {
    mode: SslMode,
    client: Arc<ClientConfig>,
}

impl Tls {
    fn new(mode: SslMode, ca_given: bool, ca: &Ca) -> Result<Self, String> {
        let provider = Arc::new(crypto_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?;
        // Whether the certificate's chain is checked, and whether its name is too.
        let (check_chain, check_name) = match mode {
            SslMode::Disable | SslMode::Prefer => (false, false),
            SslMode::Require => (ca_given, false),
            SslMode::VerifyCa => (true, false),
            SslMode::VerifyFull => (true, true),
        };
        let chain = match check_chain {
            true => Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca)?), provider.clone())
                    .build()
                    .map_err(|e| format!("TLS set-up: {e}"))?,
            ),
            false => None,
        };
        let verifier = Verifier {
            provider,
            chain,
            check_name,
        };
        let client = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Self {
            mode,
            client: Arc::new(client),
        })
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// What opens the TLS session of one connection to `host` (the name the certificate
    /// must hold with `verify-full`).
    pub fn connector(&self, host: &str) -> Result<Connector, io::Error> {
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("'{host}' cannot be checked against a certificate"),
            )
        })?;
        Ok(Connector {
            client: self.client.clone(),
            name,
        })
    }
}

/// Refuses a CA file that cannot be read or holds no certificate.
pub fn check_ca_file(path: &Path) -> Result<(), String> {
    roots(&Ca::File(path.display().to_string())).map(drop)
}

/// The CA certificates of `ca`.
fn roots(ca: &Ca) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca {
        Ca::System => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Ca::File(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read the CA file {path}: {e}"))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("the CA file {path} is not PEM: {e}"))?;
                store
                    .add(cert)
                    .map_err(|e| format!("the CA file {path} holds a bad certificate: {e}"))?;
            }
            if store.is_empty() {
                return Err(format!("the CA file {path} holds no certificate"));
            }
        }
    }
    Ok(store)
}

/// `url` without its `sslmode` and `sslrootcert` options, and their values (which
/// tokio-postgres does not know all of).
fn take_tls_options(url: &str) -> Result<(String, Option<SslMode>, Option<String>), String> {
    let mut mode = None;
    let mut root = None;
    let mut take = |key: &str, value: String| -> Result<bool, String> {
        match key {
            "sslmode" => mode = Some(value.parse::<SslMode>()?),
            "sslrootcert" => root = Some(value),
            _ => return Ok(false),
        }
        Ok(true)
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), None, None));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(key, percent_decode(value)?)? {
                kept.push(pair);
            }
        }
        let rest = match kept.is_empty() {
            true => base.to_owned(),
            false => format!("{base}?{}", kept.join("&")),
        };
        return Ok((rest, mode, root));
    }
    // key=value form: values are plain words or single-quoted.
    let mut kept = String::new();
    let mut chars = url.trim().chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let key = key.trim().to_owned();
        let mut raw = String::new();
        let mut value = String::new();
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek() == Some(&'\'') {
            raw.push(chars.next().unwrap_or('\''));
            while let Some(c) = chars.next() {
                raw.push(c);
                match c {
                    '\\' => {
                        if let Some(next) = chars.next() {
                            raw.push(next);
                            value.push(next);
                        }
                    }
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                raw.push(c);
                value.push(c);
            }
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if !take(&key, value)? {
            kept.push_str(&format!("{key}={raw} "));
        }
    }
    Ok((kept.trim_end().to_owned(), mode, root))
}

/// A URL option's value, %-decoded. A bad escape is refused, as libpq refuses it
/// (`percent-encoding` would keep it as it is).
fn percent_decode(value: &str) -> Result<String, String> {
    if !value
        .split('%')
        .skip(1)
        .all(|after| after.get(..2).is_some_and(is_hex))
    {
        return Err("a URL option holds a bad %-escape".to_owned());
    }
    percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| "a URL option is not UTF-8".to_owned())
}

fn is_hex(digits: &str) -> bool {
    digits.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a connection checks of the server's certificate: nothing (`prefer`, `require`
/// without a CA: encrypted, any certificate), or that its chain leads to a CA, and with
/// `check_name` that it is for the host name (`verify-ca`, `verify-full`). The
/// handshake's signatures are checked in every case.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Opens the TLS session of one connection (tokio-postgres asks for it after the server
/// agreed to TLS).
pub struct Connector {
    client: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let session = tokio_rustls::TlsConnector::from(self.client)
                .connect(self.name, stream)
                .await?;
            Ok(TlsStream(Box::new(session)))
        })
    }
}

/// An encrypted connection's stream.
pub struct TlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        match self.0.get_ref().1.peer_certificates() {
            Some([certificate, ..]) => {
                ChannelBinding::tls_server_end_point(server_end_point(certificate))
            }
            _ => ChannelBinding::none(),
        }
    }
}

/// RFC 5929's `tls-server-end-point` of a server certificate (DER): its hash, by the hash
/// function of its signature algorithm, SHA-256 for MD5, SHA-1 and any other, and for a
/// certificate that cannot be read (as PostgreSQL computes it).
fn server_end_point(certificate: &[u8]) -> Vec<u8> {
    use x509_cert::der::Decode;
    use x509_cert::der::oid::db::rfc5912::{
        ECDSA_WITH_SHA_384, ECDSA_WITH_SHA_512, SHA_384_WITH_RSA_ENCRYPTION,
        SHA_512_WITH_RSA_ENCRYPTION,
    };
    let algorithm = x509_cert::Certificate::from_der(certificate)
        .map(|certificate| certificate.signature_algorithm.oid);
    let hash = match algorithm {
        Ok(SHA_384_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_384) => &ring::digest::SHA384,
        Ok(SHA_512_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_512) => &ring::digest::SHA512,
        _ => &ring::digest::SHA256,
    };
    ring::digest::digest(hash, certificate).as_ref().to_vec()
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate made by `openssl req` with `key` (an `openssl genpkey`
    /// algorithm and its options) and `digest` (none: the key's own), as DER.
    fn certificate(key: &[&str], digest: &str) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("tls-unit-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let (key_file, cert_file) = (dir.join("key.pem"), dir.join("cert.der"));
        let run = |args: &[&str]| {
            let status = std::process::Command::new("openssl")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl is needed to make test certificates");
            assert!(status.success(), "openssl {args:?}");
        };
        let key_path = key_file.to_str().unwrap();
        run(&[&["genpkey", "-out", key_path, "-algorithm"][..], key].concat());
        let mut req = vec!["req", "-x509", "-new", "-key", key_path, "-subj", "/CN=db"];
        // Ed25519 signs without a separate digest.
        req.extend(Some(digest).filter(|d| !d.is_empty()));
        req.extend(["-days", "1", "-outform", "DER", "-out"]);
        req.push(cert_file.to_str().unwrap());
        run(&req);
        let der = std::fs::read(&cert_file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        der
    }

    #[test]
    fn the_channel_binding_hash_follows_the_certificates_signature_algorithm() {
        let rsa = ["RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
        let ec = ["EC", "-pkeyopt", "ec_paramgen_curve:P-384"];
        for (key, digest, hash, length) in [
            (&rsa[..], "-sha256", &ring::digest::SHA256, 32),
            (&rsa, "-sha1", &ring::digest::SHA256, 32),
            (&ec, "-sha384", &ring::digest::SHA384, 48),
            (&rsa, "-sha512", &ring::digest::SHA512, 64),
            (&["ED25519"], "", &ring::digest::SHA256, 32),
        ] {
            let certificate = certificate(key, digest);
            let end_point = server_end_point(&certificate);
            assert_eq!(end_point.len(), length, "{key:?} {digest}");
            assert_eq!(end_point, ring::digest::digest(hash, &certificate).as_ref());
        }
        // What cannot be read is hashed with SHA-256.
        assert_eq!(server_end_point(b"not DER").len(), 32);
    }

    #[test]
    fn tls_options_are_taken_out_of_both_url_forms() {
        let (rest, mode, root) = take_tls_options(
            "postgres://app:pw@db:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://app:pw@db:5432/app?application_name=x");
        assert_eq!(mode, Some(SslMode::VerifyFull));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));

        let (rest, mode, root) = take_tls_options(
            "host=db sslmode=verify-ca user=app sslrootcert='/etc/my ca.pem' password='a b'",
        )
        .unwrap();
        assert_eq!(rest, "host=db user=app password='a b'");
        assert_eq!(mode, Some(SslMode::VerifyCa));
        assert_eq!(root.as_deref(), Some("/etc/my ca.pem"));

        let (rest, mode, root) = take_tls_options("postgres://db/app").unwrap();
        assert_eq!(
            (rest.as_str(), mode, root),
            ("postgres://db/app", None, None)
        );
    }

    #[test]
    fn modes_map_to_what_is_sent_and_what_is_checked() {
        let parse = |url: &str| PgConfig::parse(url, None).unwrap();
        assert_eq!(parse("postgres://db/app").tls().mode(), SslMode::Prefer);
        assert_eq!(parse("postgres://db/app").get_ssl_mode(), WireMode::Prefer);
        for (url, wire) in [
            ("postgres://db/app?sslmode=disable", WireMode::Disable),
            ("postgres://db/app?sslmode=require", WireMode::Require),
            ("postgres://db/app?sslmode=verify-ca", WireMode::Require),
            ("host=db sslmode=verify-full", WireMode::Require),
        ] {
            assert_eq!(parse(url).get_ssl_mode(), wire, "{url}");
        }
    }

    #[test]
    fn bad_tls_options_are_refused_without_showing_the_url() {
        let err = PgConfig::parse("postgres://app:s3cret@db/app?sslmode=allow", None)
            .err()
            .unwrap();
        assert!(err.contains("sslmode=allow is not supported"), "{err}");
        // A bad %-escape is refused, as libpq refuses it; so is one that is not UTF-8.
        for bad in ["%zz", "%2", "ca%", "%ff"] {
            let url = format!("postgres://app:s3cret@db/app?sslrootcert={bad}");
            let err = PgConfig::parse(&url, None).err().unwrap();
            assert!(err.contains("a URL option"), "{bad}: {err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        let err = PgConfig::parse(
            "postgres://app:s3cret@db/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            None,
        )
        .err()
        .unwrap();
        assert!(
            err.contains("cannot read the CA file /nonexistent/ca.pem"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
        let err = PgConfig::parse(
            "postgres://db/app?sslmode=verify-ca",
            Some(Path::new("/nonexistent/x.pem")),
        )
        .err()
        .unwrap();
        assert!(err.contains("/nonexistent/x.pem"), "{err}");
    }
}

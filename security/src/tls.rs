//! Certificates and keys from PEM files, as rustls configurations that follow the files.
//!
//! A [`ServerTls`] or [`ClientTls`] reads its files once at start, where an error stops
//! start-up, and looks at them again (their size and modification time, at most once a
//! second) whenever it is about to be used for a new connection, or at once on
//! [`ServerTls::reload`] (SIGHUP). Changed files are loaded into a new configuration for the
//! connections made from then on; connections already open keep theirs, so a rotation drops
//! nothing. Files that fail to load (a certificate written before its key, say) are
//! reported and the previous configuration stays in use until they change again.
//!
//! Only TLS 1.3 is offered, with ALPN `h2`: every client and server of Settle is gRPC.
//! Error messages name files and what is wrong with them, never their contents.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig, crypto::CryptoProvider, server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tracing::{info, warn};

use crate::Error;

/// How often the files are looked at, at most.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The files of a server's TLS.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates are verified against. With it, a
    /// client may present a certificate, which must then verify, and its name is the
    /// caller's; without it, clients are not asked for one.
    pub client_ca: Option<PathBuf>,
}

/// A server's TLS configuration, following its files. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<Reloading<ServerConfig>>,
    verifies_clients: bool,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.config.files())
            .field("verifies_clients", &self.verifies_clients)
            .finish()
    }
}

impl ServerTls {
    /// Loads `files`; fails if any is missing or unusable.
    pub fn load(files: ServerTlsFiles) -> Result<ServerTls, Error> {
        let verifies_clients = files.client_ca.is_some();
        let mut watched = vec![files.cert.clone(), files.key.clone()];
        watched.extend(files.client_ca.clone());
        let config = Reloading::new("server TLS", watched, move || server_config(&files))?;
        Ok(ServerTls {
            config: Arc::new(config),
            verifies_clients,
        })
    }

    /// Whether client certificates are verified (a client CA is configured), so that
    /// callers can be known by them.
    pub fn verifies_clients(&self) -> bool {
        self.verifies_clients
    }

    /// Loads the files again now, whether or not they look changed.
    pub fn reload(&self) -> Result<(), Error> {
        self.config.reload()
    }

    /// The configuration for a connection accepted now.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        self.config.current()
    }
}

/// The files of a client's TLS.
#[derive(Debug, Clone)]
pub struct ClientTlsFiles {
    /// CA certificates (PEM) that servers' certificates are verified against.
    pub ca: PathBuf,
    /// The client's own certificate chain (PEM), presented to servers that verify clients.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM); given exactly when `cert` is.
    pub key: Option<PathBuf>,
}

/// A client's TLS configuration, following its files. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<Reloading<ClientConfig>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("files", &self.config.files())
            .finish()
    }
}

impl ClientTls {
    /// Loads `files`; fails if any is missing or unusable, or if only one of a certificate
    /// and a key is given.
    pub fn load(files: ClientTlsFiles) -> Result<ClientTls, Error> {
        if files.cert.is_some() != files.key.is_some() {
            return Err(Error::Tls(
                "a client certificate needs its key, and a key its certificate".to_owned(),
            ));
        }
        let mut watched = vec![files.ca.clone()];
        watched.extend(files.cert.clone());
        watched.extend(files.key.clone());
        let config = Reloading::new("client TLS", watched, move || client_config(&files))?;
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// Loads the files again now, whether or not they look changed.
    pub fn reload(&self) -> Result<(), Error> {
        self.config.reload()
    }

    /// The configuration for a connection made now.
    pub(crate) fn current(&self) -> Arc<ClientConfig> {
        self.config.current()
    }
}

/// The TLS files a process that serves and calls is started with (`--tls-cert`,
/// `--tls-key`, `--tls-client-ca`, `--tls-ca`): its certificate serves, and is presented
/// as its client certificate to the servers it calls, which it verifies against `ca`.
#[derive(Debug, Clone, Default)]
pub struct TlsFlags {
    /// Its certificate chain.
    pub cert: Option<PathBuf>,
    /// The certificate's key.
    pub key: Option<PathBuf>,
    /// The CA its callers' certificates are verified against.
    pub client_ca: Option<PathBuf>,
    /// The CA the servers it calls are verified against.
    pub ca: Option<PathBuf>,
}

impl TlsFlags {
    /// Its server TLS (with a certificate and key) and its client TLS (with a CA).
    pub fn load(&self) -> Result<(Option<ServerTls>, Option<ClientTls>), Error> {
        let server = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(ServerTls::load(ServerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.client_ca.clone(),
            })?),
            _ => None,
        };
        let client = match &self.ca {
            Some(ca) => Some(ClientTls::load(ClientTlsFiles {
                ca: ca.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
            })?),
            None => None,
        };
        Ok((server, client))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(files: &ServerTlsFiles) -> Result<ServerConfig, Error> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = match &files.client_ca {
        // Optional client certificates: a caller without one can still present a bearer
        // token, and is refused with UNAUTHENTICATED (not a failed handshake) if it has
        // neither. A certificate that is presented must verify.
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::Tls(format!("client CA {}: {e}", ca.display())))?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| {
            Error::Tls(format!(
                "{} with {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn client_config(files: &ClientTlsFiles) -> Result<ClientConfig, Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots(&files.ca)?);
    let mut config = match (&files.cert, &files.key) {
        (Some(cert), Some(key_file)) => builder
            .with_client_auth_cert(certs(cert)?, key(key_file)?)
            .map_err(|e| {
                Error::Tls(format!(
                    "{} with {}: {e}",
                    cert.display(),
                    key_file.display()
                ))
            })?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn file_error(path: &Path, reason: impl fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

fn roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots.add(cert).map_err(|e| file_error(path, e))?;
    }
    Ok(roots)
}

/// What a file looked like: a change to any part means it was rewritten (the inode
/// catches a file moved into place within the clock's granularity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    files
        .iter()
        .map(|path| {
            fs::metadata(path).ok().map(|meta| Stamp {
                modified: meta.modified().ok(),
                len: meta.len(),
                inode: inode(&meta),
            })
        })
        .collect()
}

#[cfg(unix)]
fn inode(meta: &fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_: &fs::Metadata) -> u64 {
    0
}

type Loader<T> = Box<dyn Fn() -> Result<T, Error> + Send + Sync>;

/// A value loaded from files and loaded again when they change.
pub(crate) struct Reloading<T> {
    what: &'static str,
    files: Vec<PathBuf>,
    load: Loader<T>,
    current: RwLock<Arc<T>>,
    /// The files as last loaded (or last failed to load).
    seen: Mutex<Vec<Option<Stamp>>>,
    /// Milliseconds after `epoch` before which the files are not looked at again, so the
    /// common case costs one atomic load.
    next_check: AtomicU64,
    epoch: Instant,
}

impl<T> Reloading<T> {
    pub(crate) fn new(
        what: &'static str,
        files: Vec<PathBuf>,
        load: impl Fn() -> Result<T, Error> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, Error> {
        let seen = stamps(&files);
        let value = load()?;
        Ok(Reloading {
            what,
            files,
            load: Box::new(load),
            current: RwLock::new(Arc::new(value)),
            seen: Mutex::new(seen),
            next_check: AtomicU64::new(CHECK_EVERY.as_millis() as u64),
            epoch: Instant::now(),
        })
    }

    pub(crate) fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The value, loaded again first if the files changed and were not looked at for a
    /// second.
    pub(crate) fn current(&self) -> Arc<T> {
        let now = self.epoch.elapsed().as_millis() as u64;
        if now >= self.next_check.load(Ordering::Relaxed) {
            // One caller looks; the others go on with the value they have.
            if let Ok(mut seen) = self.seen.try_lock() {
                self.next_check
                    .store(now + CHECK_EVERY.as_millis() as u64, Ordering::Relaxed);
                let stamps = stamps(&self.files);
                if stamps != *seen {
                    *seen = stamps;
                    if let Err(error) = self.load_now() {
                        warn!(what = self.what, %error, "changed files not loaded; the previous ones stay in use");
                    }
                }
            }
        }
        self.value()
    }

    /// Loads the files now.
    pub(crate) fn reload(&self) -> Result<(), Error> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        *seen = stamps(&self.files);
        self.load_now()
    }

    fn load_now(&self) -> Result<(), Error> {
        let value = (self.load)()?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
        info!(what = self.what, files = ?self.files, "loaded again");
        Ok(())
    }

    fn value(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

//! Certificates made at test time: a [`Pki`] is a CA in a temporary directory that issues
//! certificates for names (valid for the name, `localhost` and 127.0.0.1, usable by servers
//! and clients alike), and the TLS settings of `settle_security` built from them; and which
//! certificate a server presents now ([`Pki::served_leaf`]), to see a rotation take effect.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use settle_security::{
    ClientTls, ServerTls,
    tls::{ClientTlsFiles, ServerTlsFiles},
};
use tempfile::TempDir;
use tokio_rustls::{
    TlsConnector,
    rustls::{
        ClientConfig, RootCertStore,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    },
};

/// A test CA and the files it wrote.
pub struct Pki {
    dir: TempDir,
    name: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
}

impl Issued {
    /// The certificate, DER-encoded, as a server presents it.
    pub fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_file(&self.cert)
            .expect("certificate file")
            .to_vec()
    }
}

impl Pki {
    /// A new CA called `name`, writing into a fresh temporary directory.
    pub fn new(name: &str) -> Pki {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write CA");
        Pki {
            dir,
            name: name.to_owned(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate's file.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The leaf certificate (DER) the TLS server at `addr` presents to a new connection.
    pub async fn served_leaf(&self, addr: SocketAddr) -> Vec<u8> {
        served_leaf(&self.ca(), addr).await
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a certificate for `name` into `NAME.pem` and `NAME-key.pem`, replacing any
    /// earlier one (which is how a test rotates a certificate).
    pub fn issue(&self, name: &str) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![name.to_owned(), "localhost".to_owned()])
            .expect("certificate params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} ({})", self.name));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let issued = self.files(name);
        // The key first, then the certificate under a temporary name moved into place: a
        // reader never sees a certificate without its key.
        std::fs::write(&issued.key, key.serialize_pem()).expect("write key");
        let partial = self.dir.path().join(format!("{name}.pem.new"));
        std::fs::write(&partial, cert.pem()).expect("write certificate");
        std::fs::rename(&partial, &issued.cert).expect("move certificate");
        issued
    }

    /// `name`'s current certificate, issued now if it has none: a server and a client of
    /// the same name share one, and only [`Pki::issue`] replaces it.
    fn current(&self, name: &str) -> Issued {
        let issued = self.files(name);
        if issued.cert.exists() {
            issued
        } else {
            self.issue(name)
        }
    }

    /// Where `name`'s certificate and key are written.
    fn files(&self, name: &str) -> Issued {
        Issued {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}-key.pem")),
        }
    }

    /// Server TLS for `name`'s certificate, verifying client certificates against this CA.
    pub fn server(&self, name: &str) -> ServerTls {
        let issued = self.current(name);
        ServerTls::load(ServerTlsFiles {
            cert: issued.cert,
            key: issued.key,
            client_ca: Some(self.ca()),
        })
        .expect("server TLS")
    }

    /// Client TLS trusting this CA and presenting `name`'s certificate (`None`: none).
    pub fn client(&self, name: Option<&str>) -> ClientTls {
        let issued = name.map(|name| self.current(name));
        ClientTls::load(ClientTlsFiles {
            ca: self.ca(),
            cert: issued.as_ref().map(|i| i.cert.clone()),
            key: issued.map(|i| i.key),
        })
        .expect("client TLS")
    }
}

/// The leaf certificate (DER) the TLS server at `addr` presents to a new connection,
/// verified against the CA certificates in the file `ca`.
pub async fn served_leaf(ca: &Path, addr: SocketAddr) -> Vec<u8> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("CA root");
    }
    let config = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let (_, session) = tls.get_ref();
    session.peer_certificates().expect("a certificate")[0].to_vec()
}

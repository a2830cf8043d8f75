//! A server's accepted connections, plain or TLS, for tonic's `serve_with_incoming`.
//!
//! [`incoming`] accepts on a listener with Nagle's algorithm off (gRPC messages are small,
//! and without it a reply can sit out a delayed ACK), and, with a [`ServerTls`], completes
//! each handshake in its own task under a timeout, so a slow or silent client holds up
//! nobody else. Each connection carries its [`Peer`], which tonic puts in every request's
//! extensions: the name of a verified client certificate is how a caller is known.
//!
//! A failed handshake (no shared protocol, a certificate from another CA) closes that
//! connection and is logged at debug: no request on it ever reaches a service.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::ServerTls;

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is at the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its address.
    pub addr: Option<SocketAddr>,
    /// The name in its client certificate (the first DNS name among its subject
    /// alternative names), which the handshake verified against the client CA. `None` on
    /// a plain connection or when the client presented no certificate.
    pub identity: Option<String>,
}

/// An accepted connection.
#[derive(Debug)]
pub enum Conn {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS, handshake completed.
    Tls(Box<TlsStream<TcpStream>>),
}

/// The connections accepted on `listener`, with TLS when `tls` is given. Accepting stops
/// when the stream is dropped (the server stopped), which frees the port.
pub fn incoming(
    listener: TcpListener,
    tls: Option<ServerTls>,
) -> impl Stream<Item = Result<Conn, io::Error>> + Send + 'static {
    let (accepted, stream) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = accepted.closed() => return,
                result = listener.accept() => match result {
                    Ok(connection) => connection,
                    Err(error) => {
                        // Out of file descriptors, usually: pause rather than spin.
                        warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            if let Err(error) = tcp.set_nodelay(true) {
                debug!(%error, %addr, "TCP_NODELAY not set");
            }
            match &tls {
                None => {
                    if accepted.send(Ok(Conn::Plain(tcp))).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let acceptor = TlsAcceptor::from(tls.current());
                    let accepted = accepted.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let _ = accepted.send(Ok(Conn::Tls(Box::new(stream)))).await;
                            }
                            Ok(Err(error)) => debug!(%error, %addr, "TLS handshake failed"),
                            Err(_) => debug!(%addr, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    ReceiverStream::new(stream)
}

/// The first DNS name among a certificate's subject alternative names.
fn identity(cert: &rustls_pki_types::CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    cert.valid_dns_names().next().map(str::to_owned)
}

impl Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        match self {
            Conn::Plain(tcp) => Peer {
                addr: tcp.peer_addr().ok(),
                identity: None,
            },
            Conn::Tls(stream) => {
                let (tcp, session) = stream.get_ref();
                Peer {
                    addr: tcp.peer_addr().ok(),
                    identity: session
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(identity),
                }
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(tcp) => tcp.is_write_vectored(),
            Conn::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

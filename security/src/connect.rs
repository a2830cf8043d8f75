//! Client channels to Settle's servers: `http://` in plaintext, `https://` over TLS with a
//! [`ClientTls`], verifying the server's certificate for the endpoint's host name (or IP
//! address) and presenting the client's own certificate when it has one.
//!
//! The TLS is done here rather than by tonic's static TLS settings so that every new
//! connection uses the files as they are now: a reconnect after a certificate rotation
//! presents the new certificate without restarting anything.

use std::{io, sync::Arc};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::{ClientTls, Error};

/// Where to connect, and how.
#[derive(Debug, Clone)]
pub struct Target {
    endpoint: Endpoint,
    tls: Option<(ClientTls, ServerName<'static>)>,
}

impl From<Endpoint> for Target {
    /// A plaintext target.
    fn from(endpoint: Endpoint) -> Target {
        Target {
            endpoint,
            tls: None,
        }
    }
}

impl Target {
    /// `url` as a target: `http://HOST:PORT` plain, `https://HOST:PORT` with `tls`, which
    /// must then be given.
    pub fn new(url: &str, tls: Option<&ClientTls>) -> Result<Target, Error> {
        let uri: Uri = url
            .parse()
            .map_err(|_| Error::Endpoint(format!("{url:?} is not a URL like http://host:port")))?;
        let host = uri
            .host()
            .ok_or_else(|| Error::Endpoint(format!("{url:?} has no host")))?;
        match uri.scheme_str() {
            Some("http") => {
                let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| {
                    Error::Endpoint(format!("{url:?} is not a usable endpoint: {e}"))
                })?;
                Ok(Target {
                    endpoint,
                    tls: None,
                })
            }
            Some("https") => {
                let tls = tls.ok_or_else(|| {
                    Error::Endpoint(format!(
                        "{url} is https, and no CA was given to verify it (--tls-ca)"
                    ))
                })?;
                let name = host.trim_start_matches('[').trim_end_matches(']');
                let server_name = ServerName::try_from(name.to_owned())
                    .map_err(|e| Error::Endpoint(format!("{url}: host {name:?}: {e}")))?;
                // tonic sees a plain endpoint (with its own TLS features off it would
                // anyway) and the connector below adds TLS; requests still say https.
                let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
                let port = uri.port_u16().map_or(":443", |_| "");
                let endpoint = Endpoint::from_shared(format!("http://{authority}{port}"))
                    .map(|endpoint| endpoint.origin(uri.clone()))
                    .map_err(|e| {
                        Error::Endpoint(format!("{url:?} is not a usable endpoint: {e}"))
                    })?;
                Ok(Target {
                    endpoint,
                    tls: Some((tls.clone(), server_name)),
                })
            }
            _ => Err(Error::Endpoint(format!(
                "{url:?} must start with http:// or https://"
            ))),
        }
    }

    /// Adjusts the endpoint (timeouts, keep-alive…).
    pub fn configure(mut self, configure: impl FnOnce(Endpoint) -> Endpoint) -> Target {
        self.endpoint = configure(self.endpoint);
        self
    }

    /// A channel that connects on first use and reconnects as needed.
    pub fn connect_lazy(self) -> Channel {
        match self.tls {
            None => self.endpoint.tcp_nodelay(true).connect_lazy(),
            Some((tls, name)) => self
                .endpoint
                .connect_with_connector_lazy(connector(tls, name)),
        }
    }

    /// A channel, connected now.
    pub async fn connect(self) -> Result<Channel, tonic::transport::Error> {
        match self.tls {
            None => self.endpoint.tcp_nodelay(true).connect().await,
            Some((tls, name)) => {
                self.endpoint
                    .connect_with_connector(connector(tls, name))
                    .await
            }
        }
    }
}

fn connector(
    tls: ClientTls,
    name: ServerName<'static>,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = io::Error,
    Future: Send,
> + Send
+ 'static {
    tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        let name = name.clone();
        async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::other("endpoint without a host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let connector = TlsConnector::from(Arc::clone(&tls.current()));
            let stream = connector.connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        }
    })
}

//! Settle's transport security, shared by every process that serves or calls gRPC: the
//! coordinator, the SDK (participants and initiators), `settle-participants`, `settlectl`
//! and the benchmark.
//!
//! - [`tls`]: certificates and keys read from PEM files, TLS 1.3 with rustls on ring, and
//!   reloaded when the files change, so a rotation needs no restart and drops nothing;
//! - [`listen`]: the accepted connections of a server, plain or TLS, each carrying its
//!   [`Peer`] (address, and the name in a verified client certificate);
//! - [`connect`]: client channels to `http://` or `https://` endpoints;
//! - [`auth`]: who a caller is ([`Caller`]: a client certificate's name or a bearer token's),
//!   the tokens file, and the [`Authenticator`] that refuses a call without valid
//!   credentials;
//! - [`exposure`]: the rule that nothing listens beyond loopback unprotected unless told to.
//!
//! What a caller may do once known (register which participant, send which phase-two call)
//! is decided by the services themselves; this crate only says who is calling.

pub mod auth;
pub mod connect;
pub mod exposure;
pub mod listen;
pub mod tls;

pub use auth::{Authenticator, Caller, Secret, Tokens};
pub use listen::Peer;
pub use tls::{ClientTls, ServerTls};

/// Why security material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The files were read but do not make a usable TLS configuration (a key that does not
    /// match its certificate, say).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// An endpoint could not be used.
    #[error("{0}")]
    Endpoint(String),
}

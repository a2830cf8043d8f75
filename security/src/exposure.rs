//! The rule for where a server may listen: on loopback always; on any other address only
//! with TLS and authentication of callers, or when told `--insecure`, which the server logs
//! as a warning when it starts serving ([`Exposure::warn`]; checking alone logs nothing,
//! so a check made early, before anything is printed, does not log twice). Without TLS,
//! anyone on the network could read payloads and forge calls; without authentication,
//! anyone could begin, decide or Confirm.

use std::net::SocketAddr;

use tracing::warn;

/// How a server that may listen is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Exposure {
    /// On loopback, or protected by TLS and authentication.
    Safe,
    /// Beyond loopback unprotected, as `--insecure` allowed.
    Insecure,
}

impl Exposure {
    /// Logs the risk of an insecure exposure of `server` on `addr`.
    pub fn warn(self, server: &str, addr: SocketAddr) {
        if self == Exposure::Insecure {
            warn!(
                server,
                %addr,
                "listening beyond loopback without TLS and authentication (--insecure): \
                 anyone who can reach this address can read and forge calls"
            );
        }
    }
}

/// Whether a server may listen on `addr`: `protected` when it has TLS and authenticates its
/// callers. The error says what to do, in the words of `hint` (the process's flags).
pub fn check(
    addr: SocketAddr,
    protected: bool,
    insecure: bool,
    hint: &str,
) -> Result<Exposure, String> {
    if addr.ip().is_loopback() || protected {
        return Ok(Exposure::Safe);
    }
    if insecure {
        return Ok(Exposure::Insecure);
    }
    Err(format!(
        "refusing to listen on {addr} without TLS and authentication of callers: {hint}; or \
         listen on 127.0.0.1; or pass --insecure to accept the risk"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_protected_or_insecure_may_listen() {
        let loopback: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:1".parse().expect("addr");
        assert_eq!(check(loopback, false, false, "h"), Ok(Exposure::Safe));
        assert_eq!(check(any, true, false, "h"), Ok(Exposure::Safe));
        assert_eq!(check(any, false, true, "h"), Ok(Exposure::Insecure));
        let refused = check(any, false, false, "set --tls-cert").expect_err("refused");
        assert!(
            refused.contains("0.0.0.0:1") && refused.contains("set --tls-cert"),
            "{refused}"
        );
    }
}

//! The rule for where a server may listen: on loopback always; on any other address only
//! with TLS and authentication of callers, or when told `--insecure`, which is logged as a
//! warning at start. Without TLS, anyone on the network could read payloads and forge
//! calls; without authentication, anyone could begin, decide or Confirm.

use std::net::SocketAddr;

use tracing::warn;

/// Whether `server` may listen on `addr`: `protected` when it has TLS and authenticates its
/// callers. The error says what to do, in the words of `hint` (the process's flags).
pub fn check(
    server: &str,
    addr: SocketAddr,
    protected: bool,
    insecure: bool,
    hint: &str,
) -> Result<(), String> {
    if addr.ip().is_loopback() || protected {
        return Ok(());
    }
    if insecure {
        warn!(
            server,
            %addr,
            "listening beyond loopback without TLS and authentication (--insecure): anyone who \
             can reach this address can read and forge calls"
        );
        return Ok(());
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
        assert!(check("s", loopback, false, false, "h").is_ok());
        assert!(check("s", any, true, false, "h").is_ok());
        assert!(check("s", any, false, true, "h").is_ok());
        let refused = check("s", any, false, false, "set --tls-cert").expect_err("refused");
        assert!(
            refused.contains("0.0.0.0:1") && refused.contains("set --tls-cert"),
            "{refused}"
        );
    }
}

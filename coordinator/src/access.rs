//! Who may reach this coordinator, and what a caller may do: its TLS, how callers are known
//! (verified client certificates, the tokens file), which caller may register which
//! participant name, the Admin token, the TLS used to call participants, and whether it may
//! listen where it was asked to (`settle_security::exposure`).
//!
//! The mechanisms (reloading certificates, checking tokens) are `settle_security`'s; this
//! module holds the coordinator's policy. Every call on the Coordinator service is
//! authenticated when credentials are configured (`UNAUTHENTICATED` otherwise, before any
//! handler runs); `RegisterParticipant` is further limited to the names a caller may
//! register (`PERMISSION_DENIED`), so nobody can point a participant's name at their own
//! endpoint and receive its Confirms.

use std::net::SocketAddr;

use settle_security::{
    Authenticator, Caller, ClientTls, Secret, ServerTls, Tokens,
    exposure::{self, Exposure},
};
use tracing::{info, warn};

/// A caller allowed to register a participant name other than its own:
/// `--allow-register CALLER=NAME` (`NAME` may be `*`, any name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The caller's name.
    pub caller: String,
    /// The participant name it may register, or `*`.
    pub participant: String,
}

impl std::str::FromStr for Grant {
    type Err = String;

    fn from_str(s: &str) -> Result<Grant, String> {
        let (caller, participant) = s
            .split_once('=')
            .ok_or_else(|| format!("expected CALLER=NAME, got {s:?}"))?;
        let (caller, participant) = (caller.trim(), participant.trim());
        if !settle_security::auth::is_caller_name(caller) {
            return Err(format!("{caller:?} is not a caller name"));
        }
        if participant != "*" && !settle_security::auth::is_caller_name(participant) {
            return Err(format!("{participant:?} is not a participant name or *"));
        }
        Ok(Grant {
            caller: caller.to_owned(),
            participant: participant.to_owned(),
        })
    }
}

/// A coordinator's security settings. The default is none: plaintext, nobody
/// authenticated, which is allowed on loopback only.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// TLS for the coordinator's listener (`--tls-cert`, `--tls-key`); with a client CA
    /// (`--tls-client-ca`), callers may be known by their certificates.
    pub tls: Option<ServerTls>,
    /// Bearer tokens of callers (`--tokens FILE`).
    pub tokens: Option<Tokens>,
    /// TLS for calls to participants at `https://` endpoints (`--tls-ca`, presenting the
    /// coordinator's own certificate).
    pub participant_tls: Option<ClientTls>,
    /// The token every Admin call must carry (`--admin-token`).
    pub admin_token: Option<Secret>,
    /// Who may register which names besides their own.
    pub grants: Vec<Grant>,
    /// Listen beyond loopback unprotected anyway (`--insecure`).
    pub insecure: bool,
}

impl Security {
    /// The authenticator of Coordinator calls.
    pub fn authenticator(&self) -> Authenticator {
        Authenticator::new(
            self.tokens.clone(),
            self.tls.as_ref().is_some_and(ServerTls::verifies_clients),
        )
    }

    /// Refuses to listen on `addr` beyond loopback unless calls are encrypted and callers
    /// authenticated, and the Admin API has its token (or `--insecure` was given). The
    /// answer says whether to warn of an insecure exposure once serving.
    pub fn check_exposure(&self, addr: SocketAddr) -> Result<Exposure, String> {
        let protected = self.tls.is_some() && self.authenticator().is_required();
        let exposure = exposure::check(
            addr,
            protected,
            self.insecure,
            "set --tls-cert and --tls-key, with --tls-client-ca or --tokens",
        )?;
        if self.admin_token.is_none() && !addr.ip().is_loopback() && !self.insecure {
            return Err(format!(
                "refusing to serve the Admin API on non-loopback address {addr} without an \
                 admin token: set --admin-token (SETTLE_ADMIN_TOKEN) or listen on 127.0.0.1"
            ));
        }
        Ok(exposure)
    }

    /// Whether `caller` may register (or move) the participant `name`: its own name, or one
    /// granted to it. Without authentication (`caller` is `None`) anyone may, which is why
    /// the coordinator then listens on loopback only.
    pub fn may_register(&self, caller: Option<&Caller>, name: &str) -> bool {
        let Some(caller) = caller else {
            return !self.authenticator().is_required();
        };
        caller.name == name
            || self
                .grants
                .iter()
                .any(|g| g.caller == caller.name && (g.participant == "*" || g.participant == name))
    }

    /// Loads every certificate, key and tokens file again now (SIGHUP). A file that fails
    /// keeps the previous configuration in use.
    pub fn reload(&self) {
        let results = [
            ("TLS certificate", self.tls.as_ref().map(ServerTls::reload)),
            ("tokens", self.tokens.as_ref().map(Tokens::reload)),
            (
                "participant TLS",
                self.participant_tls.as_ref().map(ClientTls::reload),
            ),
        ];
        for (what, result) in results {
            match result {
                Some(Ok(())) => info!(what, "reloaded"),
                Some(Err(error)) => warn!(what, %error, "reload failed; the previous one stays"),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use settle_security::auth::Via;

    use super::*;

    fn caller(name: &str) -> Caller {
        Caller {
            name: name.to_owned(),
            via: Via::Token,
        }
    }

    #[test]
    fn grants_parse_and_limit_registration() {
        assert!("order".parse::<Grant>().is_err());
        assert!("a b=order".parse::<Grant>().is_err());
        let security = Security {
            grants: vec![
                "deployer=inventory".parse().expect("grant"),
                "ops=*".parse().expect("grant"),
            ],
            insecure: true,
            ..Security::default()
        };
        assert!(security.may_register(Some(&caller("order")), "order"));
        assert!(!security.may_register(Some(&caller("order")), "payment"));
        assert!(security.may_register(Some(&caller("deployer")), "inventory"));
        assert!(!security.may_register(Some(&caller("deployer")), "payment"));
        assert!(security.may_register(Some(&caller("ops")), "payment"));
        assert!(security.may_register(None, "payment"));
    }
}

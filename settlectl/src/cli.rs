//! The command line: global flags, subcommands and their arguments, as clap parses them,
//! and the parsers for the values clap cannot check alone (durations, labels). Flag and
//! subcommand names are a contract with operators' scripts, so they change only with care.
//!
//! It does not talk to the coordinator or print anything; what a parsed command does is
//! [`crate::command`]'s, and which exit code a failure gets is [`crate::error`]'s.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use settle_proto::v1 as pb;
use settle_security::{ClientTls, tls::ClientTlsFiles};

use crate::error::Error;

/// Operate a Settle coordinator: find stuck transactions, see why, and resolve them.
#[derive(Debug, Parser)]
#[command(name = "settlectl", version)]
pub struct Cli {
    /// The coordinator's gRPC URL.
    #[arg(
        long,
        global = true,
        env = "SETTLE_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,
    /// Admin token, when the coordinator requires one.
    #[arg(
        long,
        global = true,
        env = "SETTLE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The CA certificate (PEM) that an `https://` coordinator's certificate is verified
    /// against.
    #[arg(long, global = true, env = "SETTLECTL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) to present, when the coordinator verifies them; its name
    /// is recorded in the audit trail beside --actor.
    #[arg(long, global = true, env = "SETTLECTL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, global = true, env = "SETTLECTL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Your name in the audit trail [default: $USER].
    #[arg(long, global = true, env = "SETTLE_ACTOR")]
    actor: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The admin token; an empty one is no token.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref().filter(|t| !t.is_empty())
    }

    /// The client TLS of `--tls-ca`, `--tls-cert` and `--tls-key`, if a CA was given.
    pub fn tls(&self) -> Result<Option<ClientTls>, Error> {
        let Some(ca) = &self.tls_ca else {
            return match self.tls_cert {
                Some(_) => Err(Error::Usage(
                    "--tls-cert needs --tls-ca, the CA of the coordinator's certificate".to_owned(),
                )),
                None => Ok(None),
            };
        };
        ClientTls::load(ClientTlsFiles {
            ca: ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        })
        .map(Some)
        .map_err(|error| Error::Usage(error.to_string()))
    }

    /// The operator's name: `--actor`, else `$USER`; an empty one leaves the choice to the
    /// coordinator, and an explicitly empty `--actor` does not fall back to `$USER`.
    pub fn actor(&self) -> Option<String> {
        self.actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .filter(|a| !a.is_empty())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// One JSON document on stdout.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List transactions, newest first.
    List(ListArgs),
    /// Show one transaction: branches, attempts, last errors, audit trail, and why it waits.
    Show {
        /// Global transaction id.
        gid: String,
    },
    /// Run a phase-two round now instead of waiting for the next retry.
    Retry {
        /// Global transaction id.
        gid: String,
        /// Why, for the audit trail.
        #[arg(long, default_value = "")]
        note: String,
        /// How long to wait for the round.
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        wait: Duration,
    },
    /// Abort a transaction that is still TRYING.
    Abort {
        /// Global transaction id.
        gid: String,
        /// Why, for the audit trail and the abort reason.
        #[arg(long, default_value = "")]
        note: String,
        /// How long to wait for every Cancel.
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        wait: Duration,
    },
    /// Mark a pending branch done after fixing it by hand; the transaction then finishes.
    Resolve {
        /// Global transaction id.
        gid: String,
        /// Branch id, as `show` lists it.
        branch: u32,
        /// What was done by hand (required).
        #[arg(long)]
        note: String,
    },
    /// Stop retrying a transaction until `resume`.
    Pause {
        /// Global transaction id.
        gid: String,
        /// Why, for the audit trail.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Restart retrying a paused transaction.
    Resume {
        /// Global transaction id.
        gid: String,
        /// Why, for the audit trail.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Counts by status, transactions needing attention, oldest unfinished.
    Stats,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this status (repeatable).
    #[arg(long, value_enum, ignore_case = true)]
    pub status: Vec<StatusArg>,
    /// Only transactions not yet COMMITTED or ABORTED.
    #[arg(long, conflicts_with = "status")]
    pub unfinished: bool,
    /// Only unfinished transactions flagged needs-attention.
    #[arg(long)]
    pub needs_attention: bool,
    /// Only transactions created at least this long ago (e.g. 90s, 5m, 2h, 1d).
    #[arg(long, value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Only transactions with a branch on this participant.
    #[arg(long)]
    pub participant: Option<String>,
    /// Only transactions carrying this label, as key=value.
    #[arg(long, value_parser = parse_label)]
    pub label: Option<String>,
    /// Transactions per page.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub limit: u32,
    /// Oldest first.
    #[arg(long)]
    pub oldest_first: bool,
    /// Continue a previous listing (printed after a full page).
    #[arg(long)]
    pub page_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    Trying,
    Committing,
    Committed,
    Aborting,
    Aborted,
    Running,
    Compensating,
    Prepared,
}

impl StatusArg {
    pub fn to_proto(self) -> pb::Status {
        match self {
            StatusArg::Trying => pb::Status::Trying,
            StatusArg::Committing => pb::Status::Committing,
            StatusArg::Committed => pb::Status::Committed,
            StatusArg::Aborting => pb::Status::Aborting,
            StatusArg::Aborted => pb::Status::Aborted,
            StatusArg::Running => pb::Status::Running,
            StatusArg::Compensating => pb::Status::Compensating,
            StatusArg::Prepared => pb::Status::Prepared,
        }
    }
}

/// Parses `250ms`, `90s`, `5m`, `2h`, `1d` and sums like `1h30m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 90s, 5m, 2h or 1h30m");
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let ms = value.checked_mul(unit_ms).ok_or_else(bad)?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

fn parse_label(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(text.to_owned()),
        _ => Err(format!("{text:?} is not a label like key=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "5", "m", "5x", "-5m", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}

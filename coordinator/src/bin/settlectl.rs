//! `settlectl`: the operator's command line for Settle. It talks to the coordinator's
//! `settle.v1.Admin` service over gRPC and prints human tables (ages by the coordinator's
//! clock) or one JSON document per command.
//!
//! Exit codes are for scripts: 0 ok, 1 error (refused, unreachable, unauthenticated),
//! 2 usage (bad flags or arguments, also when the coordinator says INVALID_ARGUMENT),
//! 3 not found. The rules for what an operator may do are the coordinator's, not this tool's.

use std::{collections::BTreeMap, io::Write, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use settle_proto::{
    metadata,
    v1::{self as pb, admin_client::AdminClient},
};
use tonic::{
    Code, Request,
    metadata::{AsciiMetadataValue, MetadataValue},
    transport::{Channel, Endpoint},
};

/// Operate a Settle coordinator: find stuck transactions, see why, and resolve them.
#[derive(Debug, Parser)]
#[command(name = "settlectl", version, about)]
struct Cli {
    /// The coordinator's gRPC URL.
    #[arg(
        long,
        global = true,
        env = "SETTLE_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    /// Admin token, when the coordinator requires one.
    #[arg(
        long,
        global = true,
        env = "SETTLE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Your name in the audit trail [default: $USER].
    #[arg(long, global = true, env = "SETTLE_ACTOR")]
    actor: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Human-readable tables.
    Table,
    /// One JSON document on stdout.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
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
struct ListArgs {
    /// Only this status (repeatable).
    #[arg(long, value_enum, ignore_case = true)]
    status: Vec<StatusArg>,
    /// Only transactions not yet COMMITTED or ABORTED.
    #[arg(long, conflicts_with = "status")]
    unfinished: bool,
    /// Only unfinished transactions flagged needs-attention.
    #[arg(long)]
    needs_attention: bool,
    /// Only transactions created at least this long ago (e.g. 90s, 5m, 2h, 1d).
    #[arg(long, value_parser = parse_duration)]
    older_than: Option<Duration>,
    /// Only transactions with a branch on this participant.
    #[arg(long)]
    participant: Option<String>,
    /// Only transactions carrying this label, as key=value.
    #[arg(long, value_parser = parse_label)]
    label: Option<String>,
    /// Transactions per page.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    limit: u32,
    /// Oldest first.
    #[arg(long)]
    oldest_first: bool,
    /// Continue a previous listing (printed after a full page).
    #[arg(long)]
    page_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StatusArg {
    Trying,
    Committing,
    Committed,
    Aborting,
    Aborted,
    Running,
    Compensating,
}

impl StatusArg {
    fn to_proto(self) -> pb::Status {
        match self {
            StatusArg::Trying => pb::Status::Trying,
            StatusArg::Committing => pb::Status::Committing,
            StatusArg::Committed => pb::Status::Committed,
            StatusArg::Aborting => pb::Status::Aborting,
            StatusArg::Aborted => pb::Status::Aborted,
            StatusArg::Running => pb::Status::Running,
            StatusArg::Compensating => pb::Status::Compensating,
        }
    }
}

/// Why a command failed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
enum Error {
    /// Bad flags or arguments.
    #[error("{0}")]
    Usage(String),
    /// No connection to the coordinator.
    #[error("cannot reach the coordinator at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The coordinator answered with an error.
    #[error("{}", describe(*code, message))]
    Rpc { code: Code, message: String },
    /// Stdout is gone.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// JSON encoding failed.
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Rpc {
                code: Code::InvalidArgument,
                ..
            } => 2,
            Error::Rpc {
                code: Code::NotFound,
                ..
            } => 3,
            _ => 1,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Error {
        Error::Rpc {
            code: status.code(),
            message: one_line(status.message()),
        }
    }
}

fn describe(code: Code, message: &str) -> String {
    match code {
        Code::Unauthenticated => {
            format!("unauthenticated: {message} (pass --token or set SETTLE_ADMIN_TOKEN)")
        }
        Code::NotFound => format!("not found: {message}"),
        Code::FailedPrecondition => format!("refused: {message}"),
        Code::InvalidArgument => format!("invalid: {message}"),
        Code::Unavailable => format!("unavailable: {message}"),
        Code::DeadlineExceeded => format!("timed out: {message}"),
        Code::Unimplemented => {
            format!("the coordinator does not offer this ({message}); is it an older version?")
        }
        other => format!("{other:?}: {message}"),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("settlectl: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// An Admin client that sends the token and the actor with every call.
struct Client {
    admin: AdminClient<Channel>,
    authorization: Option<AsciiMetadataValue>,
    actor: Option<AsciiMetadataValue>,
}

impl Client {
    async fn connect(cli: &Cli) -> Result<Client, Error> {
        let authorization = match cli.token.as_deref().filter(|t| !t.is_empty()) {
            Some(token) => Some(
                MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| Error::Usage("the token must be printable ASCII".to_owned()))?,
            ),
            None => None,
        };
        let actor = cli
            .actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .filter(|a| !a.is_empty());
        let actor =
            match actor {
                Some(actor) => Some(MetadataValue::try_from(actor.as_str()).map_err(|_| {
                    Error::Usage(format!("actor {actor:?} must be printable ASCII"))
                })?),
                None => None,
            };
        let endpoint = Endpoint::from_shared(cli.coordinator.clone())
            .map_err(|_| {
                Error::Usage(format!(
                    "--coordinator {:?} is not a URL like http://127.0.0.1:50051",
                    cli.coordinator
                ))
            })?
            .connect_timeout(Duration::from_secs(5))
            // Longer than the longest wait a command may ask the coordinator for.
            .timeout(Duration::from_secs(90));
        let channel = endpoint
            .connect()
            .await
            .map_err(|error| Error::Unreachable {
                url: cli.coordinator.clone(),
                reason: error_chain(&error),
            })?;
        Ok(Client {
            // Show carries branch payloads, up to 64 branches of 64 KiB by default.
            admin: AdminClient::new(channel).max_decoding_message_size(64 * 1024 * 1024),
            authorization,
            actor,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        if let Some(authorization) = &self.authorization {
            metadata.insert(metadata::AUTHORIZATION, authorization.clone());
        }
        if let Some(actor) = &self.actor {
            metadata.insert(metadata::ACTOR, actor.clone());
        }
        request
    }
}

/// The innermost causes say what went wrong ("Connection refused"); the outer ones only
/// that something did.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    one_line(&parts.join(": "))
}

async fn run(cli: Cli) -> Result<(), Error> {
    let mut client = Client::connect(&cli).await?;
    let output = cli.output;
    match &cli.command {
        Command::List(args) => {
            let mut status: Vec<i32> = args.status.iter().map(|s| s.to_proto() as i32).collect();
            if args.unfinished {
                status = [
                    pb::Status::Trying,
                    pb::Status::Committing,
                    pb::Status::Aborting,
                    pb::Status::Running,
                    pb::Status::Compensating,
                ]
                .into_iter()
                .map(|s| s as i32)
                .collect();
            }
            let request = client.request(pb::ListRequest {
                status,
                needs_attention: args.needs_attention,
                older_than_ms: args
                    .older_than
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                participant: args.participant.clone().unwrap_or_default(),
                label: args.label.clone().unwrap_or_default(),
                page_size: args.limit,
                page_token: args.page_token.clone().unwrap_or_default(),
                oldest_first: args.oldest_first,
            });
            let page = client.admin.list(request).await?.into_inner();
            print_list(output, &page)
        }
        Command::Show { gid } => {
            let request = client.request(pb::ShowRequest { gid: gid.clone() });
            let shown = client.admin.show(request).await?.into_inner();
            print_show(output, &shown)
        }
        Command::Retry { gid, note, wait } => {
            let request = client.request(pb::RetryRequest {
                gid: gid.clone(),
                note: note.clone(),
                wait_ms: millis(*wait),
            });
            let done = client.admin.retry(request).await?.into_inner();
            print_change(output, Action::Retry, &done)
        }
        Command::Abort { gid, note, wait } => {
            let request = client.request(pb::ForceAbortRequest {
                gid: gid.clone(),
                note: note.clone(),
                wait_ms: millis(*wait),
            });
            let done = client.admin.force_abort(request).await?.into_inner();
            print_change(output, Action::Abort, &done)
        }
        Command::Resolve { gid, branch, note } => {
            if note.trim().is_empty() {
                return Err(Error::Usage(
                    "--note must say what was fixed by hand".to_owned(),
                ));
            }
            let request = client.request(pb::ResolveBranchRequest {
                gid: gid.clone(),
                branch_id: *branch,
                note: note.clone(),
            });
            let done = client.admin.resolve_branch(request).await?.into_inner();
            print_change(output, Action::Resolve(*branch), &done)
        }
        Command::Pause { gid, note } => {
            let request = client.request(pb::PauseRequest {
                gid: gid.clone(),
                note: note.clone(),
            });
            let done = client.admin.pause(request).await?.into_inner();
            print_change(output, Action::Pause, &done)
        }
        Command::Resume { gid, note } => {
            let request = client.request(pb::ResumeRequest {
                gid: gid.clone(),
                note: note.clone(),
            });
            let done = client.admin.resume(request).await?.into_inner();
            print_change(output, Action::Resume, &done)
        }
        Command::Stats => {
            let request = client.request(pb::StatsRequest {});
            let stats = client.admin.stats(request).await?.into_inner();
            print_stats(output, &stats)
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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

#[derive(Debug, Serialize)]
struct TxView {
    gid: String,
    mode: String,
    status: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    deadline_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at_ms: Option<i64>,
    attempts: u32,
    needs_attention: bool,
    paused: bool,
    reason: String,
    labels: BTreeMap<String, String>,
    branches: Vec<BranchView>,
}

#[derive(Debug, Serialize)]
struct BranchView {
    branch_id: u32,
    participant: String,
    action: String,
    status: String,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at_ms: Option<i64>,
    /// The payload as text when it is UTF-8 ...
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    /// ... and as hex otherwise. Listings leave payloads out.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_hex: Option<String>,
}

#[derive(Debug, Serialize)]
struct AuditView {
    at_ms: i64,
    actor: String,
    action: String,
    note: String,
}

#[derive(Debug, Serialize)]
struct ListView {
    now_ms: i64,
    transactions: Vec<TxView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

#[derive(Debug, Serialize)]
struct ShowView {
    now_ms: i64,
    transaction: TxView,
    #[serde(skip_serializing_if = "Option::is_none")]
    decided_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    explanation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
    audit: Vec<AuditView>,
}

#[derive(Debug, Serialize)]
struct ChangeView {
    now_ms: i64,
    changed: bool,
    transaction: TxView,
}

#[derive(Debug, Serialize)]
struct StatsView {
    by_status: BTreeMap<String, u64>,
    needs_attention: u64,
    oldest_unfinished_age_ms: i64,
}

fn non_zero(value: i64) -> Option<i64> {
    (value != 0).then_some(value)
}

fn status_name(value: i32) -> String {
    match pb::Status::try_from(value) {
        Ok(status) => strip(status.as_str_name(), "STATUS_"),
        Err(_) => format!("UNKNOWN({value})"),
    }
}

fn branch_status_name(value: i32) -> String {
    match pb::BranchStatus::try_from(value) {
        Ok(status) => strip(status.as_str_name(), "BRANCH_STATUS_"),
        Err(_) => format!("UNKNOWN({value})"),
    }
}

fn mode_name(value: i32) -> String {
    match pb::Mode::try_from(value) {
        Ok(pb::Mode::Unspecified) => "TCC".to_owned(),
        Ok(mode) => strip(mode.as_str_name(), "MODE_"),
        Err(_) => format!("UNKNOWN({value})"),
    }
}

fn strip(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

impl TxView {
    fn of(tx: &pb::Transaction) -> TxView {
        TxView {
            gid: tx.gid.clone(),
            mode: mode_name(tx.mode),
            status: status_name(tx.status),
            created_at_ms: tx.created_at_ms,
            updated_at_ms: tx.updated_at_ms,
            deadline_ms: tx.deadline_ms,
            next_attempt_at_ms: non_zero(tx.next_attempt_at_ms),
            attempts: tx.attempts,
            needs_attention: tx.needs_attention,
            paused: tx.paused,
            reason: tx.reason.clone(),
            labels: tx.labels.clone().into_iter().collect(),
            branches: tx.branches.iter().map(BranchView::of).collect(),
        }
    }
}

impl BranchView {
    fn of(branch: &pb::Branch) -> BranchView {
        let (payload, payload_hex) = if branch.payload.is_empty() {
            (None, None)
        } else {
            match std::str::from_utf8(&branch.payload) {
                Ok(text) => (Some(text.to_owned()), None),
                Err(_) => (None, Some(hex(&branch.payload))),
            }
        };
        BranchView {
            branch_id: branch.branch_id,
            participant: branch.participant.clone(),
            action: branch.action.clone(),
            status: branch_status_name(branch.status),
            attempts: branch.attempts,
            last_error: Some(branch.last_error.clone()).filter(|e| !e.is_empty()),
            next_attempt_at_ms: non_zero(branch.next_attempt_at_ms),
            payload,
            payload_hex,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn print_json(value: &impl Serialize) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value)?;
    writeln!(stdout)?;
    Ok(())
}

fn print_text(text: &str) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    Ok(())
}

/// `3m ago`, `in 12s`, by the coordinator's clock.
fn relative(now: i64, at: i64) -> String {
    let diff = now - at;
    if diff.abs() < 1_000 {
        "just now".to_owned()
    } else if diff > 0 {
        format!("{} ago", span(diff))
    } else {
        format!("in {}", span(-diff))
    }
}

/// A duration in its largest sensible unit, rounded down: `45s`, `3m`, `5h`, `2d`.
fn span(ms: i64) -> String {
    let s = ms / 1_000;
    match s {
        _ if s < 60 => format!("{s}s"),
        _ if s < 3_600 => format!("{}m", s / 60),
        _ if s < 48 * 3_600 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Epoch milliseconds as `2026-05-01 12:03:04Z`, without a time-zone database.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to civil date, after Howard Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

fn when(now: i64, at: i64) -> String {
    format!("{} ({})", utc(at), relative(now, at))
}

/// Left-aligned columns separated by two spaces.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn is_final(status: i32) -> bool {
    matches!(
        pb::Status::try_from(status),
        Ok(pb::Status::Committed | pb::Status::Aborted)
    )
}

fn next_attempt(now: i64, tx: &pb::Transaction) -> String {
    if tx.paused {
        "paused".to_owned()
    } else if is_final(tx.status) || tx.next_attempt_at_ms == 0 {
        "-".to_owned()
    } else if tx.next_attempt_at_ms < now + 1_000 {
        "due".to_owned()
    } else {
        relative(now, tx.next_attempt_at_ms)
    }
}

fn flags(tx: &pb::Transaction) -> String {
    let mut flags = Vec::new();
    if tx.needs_attention && !is_final(tx.status) {
        flags.push("needs-attention");
    }
    if tx.paused {
        flags.push("paused");
    }
    flags.join(",")
}

fn is_pending(branch: &pb::Branch) -> bool {
    branch.status() == pb::BranchStatus::Pending
}

fn branches_summary(tx: &pb::Transaction) -> String {
    let pending: Vec<&str> = tx
        .branches
        .iter()
        .filter(|b| is_pending(b))
        .map(|b| b.participant.as_str())
        .collect();
    let done = tx.branches.len() - pending.len();
    if pending.is_empty() || tx.status() == pb::Status::Trying {
        format!("{done}/{}", tx.branches.len())
    } else {
        format!(
            "{done}/{} (waiting: {})",
            tx.branches.len(),
            pending.join(",")
        )
    }
}

/// One sentence on why a transaction is where it is and what an operator can do.
fn explain(now: i64, tx: &pb::Transaction) -> String {
    let gid = &tx.gid;
    let status = tx.status();
    match status {
        pb::Status::Committed => return "finished: committed".to_owned(),
        pb::Status::Aborted if tx.reason.is_empty() => return "finished: aborted".to_owned(),
        pb::Status::Aborted => return format!("finished: aborted ({})", tx.reason),
        pb::Status::Trying if tx.deadline_ms > now => {
            return format!(
                "waiting for its initiator to commit or abort; aborted at its deadline ({}) \
                 unless `settlectl abort {gid}` comes first",
                relative(now, tx.deadline_ms)
            );
        }
        pb::Status::Trying => {
            return "past its deadline; recovery is aborting it".to_owned();
        }
        _ => {}
    }
    if tx.paused {
        return format!("paused by an operator: nothing is retried until `settlectl resume {gid}`");
    }
    let pending: Vec<&pb::Branch> = tx.branches.iter().filter(|b| is_pending(b)).collect();
    let Some(first) = pending.first() else {
        return "every branch is done; recovery writes the final status shortly".to_owned();
    };
    let waiting = pending
        .iter()
        .map(|b| format!("branch {} ({})", b.branch_id, b.participant))
        .collect::<Vec<_>>()
        .join(", ");
    if first.last_error.is_empty() {
        format!(
            "{} is being carried out; waiting on {waiting}",
            status_name(tx.status)
        )
    } else {
        format!(
            "waiting on {waiting}; {} attempts so far, last error: {}",
            tx.attempts, first.last_error
        )
    }
}

/// What an operator can do about a transaction flagged needs-attention.
fn hint(tx: &pb::Transaction) -> Option<String> {
    if !tx.needs_attention || tx.paused || is_final(tx.status) {
        return None;
    }
    let first = tx.branches.iter().find(|b| is_pending(b))?;
    let gid = &tx.gid;
    Some(format!(
        "fix {} and `settlectl retry {gid}`, or fix it by hand and `settlectl resolve {gid} {} \
         --note ...`",
        first.participant, first.branch_id
    ))
}

fn print_list(output: Output, page: &pb::ListResponse) -> Result<(), Error> {
    let next_page_token = Some(page.next_page_token.clone()).filter(|t| !t.is_empty());
    if output == Output::Json {
        return print_json(&ListView {
            now_ms: page.now_ms,
            transactions: page.transactions.iter().map(TxView::of).collect(),
            next_page_token,
        });
    }
    if page.transactions.is_empty() {
        return print_text("no transactions match\n");
    }
    let now = page.now_ms;
    let rows: Vec<Vec<String>> = page
        .transactions
        .iter()
        .map(|tx| {
            vec![
                tx.gid.clone(),
                status_name(tx.status),
                relative(now, tx.created_at_ms),
                tx.attempts.to_string(),
                next_attempt(now, tx),
                branches_summary(tx),
                flags(tx),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "GID", "STATUS", "CREATED", "ATTEMPTS", "NEXT", "BRANCHES", "FLAGS",
        ],
        &rows,
    );
    if let Some(token) = next_page_token {
        text.push_str(&format!("more: repeat with --page-token {token}\n"));
    }
    print_text(&text)
}

fn print_show(output: Output, shown: &pb::ShowResponse) -> Result<(), Error> {
    let empty = pb::Transaction::default();
    let tx = shown.transaction.as_ref().unwrap_or(&empty);
    let now = shown.now_ms;
    let explanation = explain(now, tx);
    if output == Output::Json {
        return print_json(&ShowView {
            now_ms: now,
            transaction: TxView::of(tx),
            decided_at_ms: non_zero(shown.decided_at_ms),
            owner: Some(shown.owner.clone()).filter(|o| !o.is_empty()),
            explanation,
            hint: hint(tx),
            audit: shown
                .audit
                .iter()
                .map(|a| AuditView {
                    at_ms: a.at_ms,
                    actor: a.actor.clone(),
                    action: a.action.clone(),
                    note: a.note.clone(),
                })
                .collect(),
        });
    }
    let mut fields: Vec<(&str, String)> = vec![
        ("gid", tx.gid.clone()),
        ("mode", mode_name(tx.mode)),
        ("status", {
            let flags = flags(tx);
            if flags.is_empty() {
                status_name(tx.status)
            } else {
                format!("{} ({flags})", status_name(tx.status))
            }
        }),
        ("created", when(now, tx.created_at_ms)),
    ];
    if shown.decided_at_ms != 0 {
        fields.push(("decided", when(now, shown.decided_at_ms)));
    } else {
        fields.push(("deadline", when(now, tx.deadline_ms)));
    }
    fields.push(("attempts", tx.attempts.to_string()));
    fields.push(("next attempt", next_attempt(now, tx)));
    if !shown.owner.is_empty() {
        fields.push(("driven by", shown.owner.clone()));
    }
    if !tx.reason.is_empty() {
        fields.push(("reason", tx.reason.clone()));
    }
    if !tx.labels.is_empty() {
        let labels: BTreeMap<_, _> = tx.labels.iter().collect();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        fields.push(("labels", labels.join(", ")));
    }
    fields.push(("why", explanation));
    if let Some(hint) = hint(tx) {
        fields.push(("next step", hint));
    }
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut text = String::new();
    for (key, value) in &fields {
        text.push_str(&format!("{key:<width$}  {value}\n"));
    }
    text.push('\n');
    if tx.branches.is_empty() {
        text.push_str("no branches\n");
    } else {
        let rows: Vec<Vec<String>> = tx
            .branches
            .iter()
            .map(|b| {
                vec![
                    b.branch_id.to_string(),
                    b.participant.clone(),
                    b.action.clone(),
                    branch_status_name(b.status),
                    b.attempts.to_string(),
                    b.last_error.clone(),
                ]
            })
            .collect();
        text.push_str(&table(
            &[
                "BRANCH",
                "PARTICIPANT",
                "ACTION",
                "STATUS",
                "ATTEMPTS",
                "LAST ERROR",
            ],
            &rows,
        ));
    }
    text.push('\n');
    if shown.audit.is_empty() {
        text.push_str("no operator actions\n");
    } else {
        let rows: Vec<Vec<String>> = shown
            .audit
            .iter()
            .map(|a| {
                vec![
                    when(now, a.at_ms),
                    a.actor.clone(),
                    a.action.clone(),
                    a.note.clone(),
                ]
            })
            .collect();
        text.push_str(&table(&["AT", "ACTOR", "ACTION", "NOTE"], &rows));
    }
    print_text(&text)
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Retry,
    Abort,
    Resolve(u32),
    Pause,
    Resume,
}

fn print_change(output: Output, action: Action, done: &pb::AdminResponse) -> Result<(), Error> {
    let empty = pb::Transaction::default();
    let tx = done.transaction.as_ref().unwrap_or(&empty);
    if output == Output::Json {
        return print_json(&ChangeView {
            now_ms: done.now_ms,
            changed: done.changed,
            transaction: TxView::of(tx),
        });
    }
    let gid = &tx.gid;
    let status = status_name(tx.status);
    let line = match action {
        Action::Retry if is_final(tx.status) => format!("retried {gid}: now {status}"),
        Action::Retry => format!(
            "retried {gid}: still {status}; {}",
            explain(done.now_ms, tx)
        ),
        Action::Abort if !done.changed => format!("{gid} was already {status}"),
        Action::Abort if is_final(tx.status) => format!("aborted {gid}: now {status}"),
        Action::Abort => format!(
            "abort decided for {gid}: {status}, Cancel is retried until every branch has it"
        ),
        Action::Resolve(branch) if tx.paused => format!(
            "resolved branch {branch} of {gid}; it is paused: `settlectl resume {gid}` lets it \
             finish"
        ),
        Action::Resolve(branch) => {
            format!(
                "resolved branch {branch} of {gid}; {}",
                explain(done.now_ms, tx)
            )
        }
        Action::Pause if !done.changed => format!("{gid} was already paused"),
        Action::Pause => {
            format!("paused {gid} ({status}): nothing is retried until `settlectl resume {gid}`")
        }
        Action::Resume if !done.changed => format!("{gid} was not paused ({status})"),
        Action::Resume => format!("resumed {gid} ({status}): retrying now"),
    };
    print_text(&format!("{line}\n"))
}

fn print_stats(output: Output, stats: &pb::StatsResponse) -> Result<(), Error> {
    if output == Output::Json {
        return print_json(&StatsView {
            by_status: stats.by_status.clone().into_iter().collect(),
            needs_attention: stats.needs_attention,
            oldest_unfinished_age_ms: stats.oldest_unfinished_age_ms,
        });
    }
    let order = [
        pb::Status::Trying,
        pb::Status::Committing,
        pb::Status::Aborting,
        pb::Status::Running,
        pb::Status::Compensating,
        pb::Status::Committed,
        pb::Status::Aborted,
    ];
    let rows: Vec<Vec<String>> = order
        .iter()
        .map(|status| {
            let name = status_name(*status as i32);
            let count = stats.by_status.get(&name).copied().unwrap_or(0);
            vec![name, count.to_string()]
        })
        .collect();
    let mut text = table(&["STATUS", "COUNT"], &rows);
    text.push('\n');
    text.push_str(&format!("needs attention    {}\n", stats.needs_attention));
    let oldest = if stats.oldest_unfinished_age_ms > 0 {
        span(stats.oldest_unfinished_age_ms)
    } else {
        "-".to_owned()
    };
    text.push_str(&format!("oldest unfinished  {oldest}\n"));
    print_text(&text)
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

    #[test]
    fn ages() {
        assert_eq!(relative(10_000, 9_500), "just now");
        assert_eq!(relative(200_000, 20_000), "3m ago");
        assert_eq!(relative(0, 12_000), "in 12s");
        assert_eq!(span(5 * 3_600_000), "5h");
        assert_eq!(span(3 * 86_400_000), "3d");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_767_225_599_999), "2025-12-31 23:59:59Z");
        assert_eq!(utc(-1_000), "1969-12-31 23:59:59Z");
    }

    #[test]
    fn tables_align() {
        let text = table(
            &["A", "LONG"],
            &[vec!["xyz".into(), "1".into()], vec!["q".into(), "".into()]],
        );
        assert_eq!(text, "A    LONG\nxyz  1\nq\n");
    }
}

//! What can go wrong in a command, worded as the one line settlectl prints on stderr, and
//! the exit code each kind gets: 1 error, 2 usage, 3 not found. Scripts branch on those
//! codes, so they are a contract like the flags.
//!
//! It does not decide whether something is an error: the coordinator does, through the gRPC
//! status it answers; this module only translates.

use tonic::Code;

/// Why a command failed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    pub fn exit_code(&self) -> u8 {
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

/// The innermost causes say what went wrong ("Connection refused"); the outer ones only
/// that something did.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    one_line(&parts.join(": "))
}

//! Input rules checked at the edge, before anything is stored: gid format, names, payload
//! size, timeouts, labels and endpoints. Each check returns [`Invalid`] with a message
//! meant for the caller; the gRPC layer answers it as `INVALID_ARGUMENT`.
//!
//! Limits that operators may change (payload size, branches per transaction) are
//! [`Limits`]; the rest are fixed here.

use std::{collections::HashMap, time::Duration};

/// A rejected input, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Input limits an operator may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest branch payload, in bytes.
    pub max_payload: usize,
    /// Most branches in one transaction.
    pub max_branches: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: 64 * 1024,
            max_branches: 64,
        }
    }
}

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

/// Longest gid.
pub const MAX_GID_LEN: usize = 128;
/// Longest participant name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest action.
pub const MAX_ACTION_LEN: usize = 128;
/// Longest abort reason or operator note.
pub const MAX_TEXT_LEN: usize = 1024;
/// Most labels on one transaction.
pub const MAX_LABELS: usize = 16;
/// Longest transaction timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Longest a Commit or Abort may wait for phase two.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// A gid: 1 to 128 characters of `[A-Za-z0-9._:-]`.
pub fn gid(gid: &str) -> Result<(), Invalid> {
    if gid.is_empty() {
        return Err(invalid("gid is empty"));
    }
    if gid.len() > MAX_GID_LEN {
        return Err(invalid(format!(
            "gid is {} characters long; at most {MAX_GID_LEN} allowed",
            gid.len()
        )));
    }
    if let Some(bad) = gid
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(invalid(format!(
            "gid contains {bad:?}; only letters, digits and . _ : - are allowed"
        )));
    }
    Ok(())
}

/// A participant name: 1 to 64 characters of `[A-Za-z0-9._-]`.
pub fn participant(name: &str) -> Result<(), Invalid> {
    if name.is_empty() {
        return Err(invalid("participant name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "participant name is {} characters long; at most {MAX_NAME_LEN} allowed",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(format!(
            "participant name contains {bad:?}; only letters, digits and . _ - are allowed"
        )));
    }
    Ok(())
}

/// An action: at most 128 printable ASCII characters (it may be empty).
pub fn action(action: &str) -> Result<(), Invalid> {
    if action.len() > MAX_ACTION_LEN {
        return Err(invalid(format!(
            "action is {} characters long; at most {MAX_ACTION_LEN} allowed",
            action.len()
        )));
    }
    if action.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(invalid("action must be printable ASCII without spaces"));
    }
    Ok(())
}

/// A payload no larger than `limit` bytes.
pub fn payload(payload: &[u8], limit: usize) -> Result<(), Invalid> {
    if payload.len() > limit {
        return Err(invalid(format!(
            "payload is {} bytes; at most {limit} allowed",
            payload.len()
        )));
    }
    Ok(())
}

/// A transaction timeout between 1 ms and 24 h.
pub fn timeout(timeout_ms: u64) -> Result<Duration, Invalid> {
    let timeout = Duration::from_millis(timeout_ms);
    if timeout_ms == 0 || timeout > MAX_TIMEOUT {
        return Err(invalid(format!(
            "timeout_ms is {timeout_ms}; it must be between 1 and {}",
            MAX_TIMEOUT.as_millis()
        )));
    }
    Ok(timeout)
}

/// How long a call may wait for phase two: at most 60 s.
pub fn wait(wait_ms: u64) -> Result<Duration, Invalid> {
    let wait = Duration::from_millis(wait_ms);
    if wait > MAX_WAIT {
        return Err(invalid(format!(
            "wait_ms is {wait_ms}; at most {} allowed",
            MAX_WAIT.as_millis()
        )));
    }
    Ok(wait)
}

/// A free-text reason or note: at most 1024 bytes.
pub fn text(what: &str, text: &str) -> Result<(), Invalid> {
    if text.len() > MAX_TEXT_LEN {
        return Err(invalid(format!(
            "{what} is {} bytes; at most {MAX_TEXT_LEN} allowed",
            text.len()
        )));
    }
    Ok(())
}

/// Labels: at most 16, keys named like participants, values at most 256 bytes.
pub fn labels(labels: &HashMap<String, String>) -> Result<(), Invalid> {
    if labels.len() > MAX_LABELS {
        return Err(invalid(format!(
            "{} labels given; at most {MAX_LABELS} allowed",
            labels.len()
        )));
    }
    for (key, value) in labels {
        participant(key).map_err(|e| invalid(format!("label key {key:?}: {}", e.0)))?;
        if value.len() > 256 {
            return Err(invalid(format!("label {key:?} is longer than 256 bytes")));
        }
    }
    Ok(())
}

/// A participant endpoint: an `http://` or `https://` URL with a host.
pub fn endpoint(endpoint: &str) -> Result<(), Invalid> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| {
            invalid(format!(
                "endpoint {endpoint:?} must start with http:// or https://"
            ))
        })?;
    if rest.is_empty() || rest.starts_with('/') || endpoint.len() > 512 {
        return Err(invalid(format!("endpoint {endpoint:?} has no host")));
    }
    endpoint
        .parse::<http::Uri>()
        .map_err(|e| invalid(format!("endpoint {endpoint:?} is not a valid URL: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_rules() {
        assert!(gid("order-1:a.b_c").is_ok());
        assert!(gid(&"a".repeat(128)).is_ok());
        assert!(gid(&"a".repeat(129)).is_err());
        assert!(gid("").is_err());
        assert!(gid("with space").is_err());
        assert!(gid("semi;colon").is_err());
        assert!(gid("ünïcode").is_err());
    }

    #[test]
    fn timeouts_and_waits() {
        assert!(timeout(0).is_err());
        assert!(timeout(1).is_ok());
        assert!(timeout(24 * 3600 * 1000).is_ok());
        assert!(timeout(24 * 3600 * 1000 + 1).is_err());
        assert!(wait(0).is_ok());
        assert!(wait(60_001).is_err());
    }

    #[test]
    fn endpoints() {
        assert!(endpoint("http://127.0.0.1:5000").is_ok());
        assert!(endpoint("https://inventory.svc:443").is_ok());
        assert!(endpoint("127.0.0.1:5000").is_err());
        assert!(endpoint("http://").is_err());
        assert!(endpoint("ftp://x").is_err());
    }
}

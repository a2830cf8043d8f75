//! Who is calling: a [`Caller`] is known by the name in its verified client certificate
//! or by a bearer token from the tokens file, and the [`Authenticator`] refuses a call
//! with neither (`UNAUTHENTICATED`) when credentials are required.
//!
//! The tokens file has one `TOKEN NAME` pair per line (`#` starts a comment); it follows
//! the file like the certificates do ([`crate::tls`]). A presented token is compared with
//! every configured one in constant time, and a wrong token is refused even if the
//! connection also has a certificate: wrong credentials are never ignored. Tokens never
//! appear in errors or logs; a line of the file is named by its number.

use std::{fmt, path::PathBuf, sync::Arc};

use settle_proto::metadata;
use tonic::{Request, Status, metadata::MetadataMap, service::Interceptor};

use crate::{Error, Peer, tls::Reloading};

/// A secret value (a token) that prints as `***` in `Debug`, so configurations holding one
/// can be logged. It has no `==`: tokens are compared with [`constant_time_eq`].
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that compares or sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A client certificate verified by the TLS handshake.
    Certificate,
    /// A bearer token from the tokens file.
    Token,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its name: the certificate's DNS name, or the token's name in the tokens file.
    pub name: String,
    /// How it proved it.
    pub via: Via,
}

impl Caller {
    /// The caller an [`Authenticator`] found for `request`, if any.
    pub fn of<T>(request: &Request<T>) -> Option<&Caller> {
        request.extensions().get::<Caller>()
    }
}

/// Each token's bytes and the caller name it stands for.
type TokenTable = Vec<(Vec<u8>, String)>;

/// Bearer tokens and the callers they stand for, following the tokens file.
#[derive(Clone)]
pub struct Tokens {
    table: Arc<Reloading<TokenTable>>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("file", &self.table.files())
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Reads the tokens file at `path`.
    pub fn load(path: impl Into<PathBuf>) -> Result<Tokens, Error> {
        let path = path.into();
        let file = path.clone();
        let table = Reloading::new("tokens", vec![path], move || parse_tokens(&file))?;
        Ok(Tokens {
            table: Arc::new(table),
        })
    }

    /// Reads the file again now.
    pub fn reload(&self) -> Result<(), Error> {
        self.table.reload()
    }

    /// The name of the caller `presented` stands for, if it is a configured token.
    pub fn caller(&self, presented: &str) -> Option<String> {
        let table = self.table.current();
        let mut found = None;
        // Every token is compared, so the time taken does not say which one was close.
        for (token, name) in table.iter() {
            if constant_time_eq(token, presented.as_bytes()) && found.is_none() {
                found = Some(name.clone());
            }
        }
        found
    }
}

fn parse_tokens(path: &PathBuf) -> Result<TokenTable, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let bad = |number: usize, reason: &str| Error::File {
        path: path.display().to_string(),
        reason: format!("line {number}: {reason}"),
    };
    let mut table: TokenTable = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(token), Some(name), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad(number, "expected TOKEN NAME"));
        };
        if token.len() < 16 {
            return Err(bad(number, "a token must be at least 16 characters"));
        }
        if !is_caller_name(name) {
            return Err(bad(
                number,
                "a caller name is 1 to 128 letters, digits, '.', '-' or '_'",
            ));
        }
        if table.iter().any(|(t, _)| t == token.as_bytes()) {
            return Err(bad(number, "this token is also on an earlier line"));
        }
        table.push((token.as_bytes().to_vec(), name.to_owned()));
    }
    Ok(table)
}

/// Whether `name` can be a caller's name (and a participant's, which it is matched with).
pub fn is_caller_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The token of an `authorization` value using the Bearer scheme (case-insensitive, as
/// HTTP auth schemes are).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// Compares without stopping at the first difference, so response timing does not reveal
/// how much of a guess was right. Lengths are compared first: a token's length is not
/// worth hiding.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Finds the caller of each request, and refuses it when credentials are required and it
/// has none. As a tonic interceptor it puts the [`Caller`] in the request's extensions.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    tokens: Option<Tokens>,
    certificates: bool,
}

impl Authenticator {
    /// Callers known by `tokens` and, when `certificates`, by verified client
    /// certificates. With neither, nobody is asked for anything.
    pub fn new(tokens: Option<Tokens>, certificates: bool) -> Authenticator {
        Authenticator {
            tokens,
            certificates,
        }
    }

    /// Whether every call must carry credentials.
    pub fn is_required(&self) -> bool {
        self.tokens.is_some() || self.certificates
    }

    /// The caller of a request with these extensions and metadata: `Ok(None)` when nothing
    /// is required and nothing was presented.
    pub fn authenticate(
        &self,
        extensions: &http::Extensions,
        metadata: &MetadataMap,
    ) -> Result<Option<Caller>, Status> {
        if let Some(tokens) = &self.tokens
            && let Some(value) = metadata.get(metadata::AUTHORIZATION)
        {
            let token = value.to_str().ok().and_then(bearer).ok_or_else(|| {
                Status::unauthenticated("authorization must be \"Bearer <token>\"")
            })?;
            return match tokens.caller(token) {
                Some(name) => Ok(Some(Caller {
                    name,
                    via: Via::Token,
                })),
                None => Err(Status::unauthenticated("unknown token")),
            };
        }
        if self.certificates
            && let Some(name) = extensions
                .get::<Peer>()
                .and_then(|peer| peer.identity.clone())
        {
            return Ok(Some(Caller {
                name,
                via: Via::Certificate,
            }));
        }
        if self.is_required() {
            return Err(Status::unauthenticated(self.wanted()));
        }
        Ok(None)
    }

    fn wanted(&self) -> &'static str {
        match (self.certificates, self.tokens.is_some()) {
            (true, true) => {
                "credentials required: a client certificate from the trusted CA, or authorization: Bearer <token>"
            }
            (true, false) => "credentials required: a client certificate from the trusted CA",
            _ => "credentials required: authorization: Bearer <token>",
        }
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(caller) = self.authenticate(request.extensions(), request.metadata())? {
            request.extensions_mut().insert(caller);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_takes_the_token_of_the_bearer_scheme_only() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secrets"));
    }

    fn tokens(text: &str) -> Result<Tokens, Error> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, text).expect("write tokens");
        Tokens::load(path)
    }

    #[test]
    fn a_tokens_file_maps_tokens_to_callers() {
        let tokens = tokens("# who may call\n0123456789abcdef-order order # the order service\n\nfedcba9876543210-shop shop\n")
            .expect("valid file");
        assert_eq!(
            tokens.caller("0123456789abcdef-order").as_deref(),
            Some("order")
        );
        assert_eq!(
            tokens.caller("fedcba9876543210-shop").as_deref(),
            Some("shop")
        );
        assert_eq!(tokens.caller("0123456789abcdef-orde"), None);
    }

    #[test]
    fn a_bad_tokens_file_is_refused_by_line_without_showing_the_token() {
        for (text, reason) in [
            (
                "short order\n",
                "line 1: a token must be at least 16 characters",
            ),
            ("0123456789abcdef\n", "line 1: expected TOKEN NAME"),
            ("0123456789abcdef a b\n", "line 1: expected TOKEN NAME"),
            ("0123456789abcdef or/der\n", "line 1: a caller name"),
            (
                "0123456789abcdef a\n0123456789abcdef b\n",
                "line 2: this token is also on an earlier line",
            ),
        ] {
            let error = tokens(text).expect_err(text).to_string();
            assert!(error.contains(reason), "{text:?}: {error}");
            assert!(!error.contains("0123456789abcdef"), "{error}");
        }
    }
}

//! Who may write through the API: a bearer token read from a file
//! (`http.token_file`); and where the API may listen without one.

use std::net::SocketAddr;
use std::path::Path;

use axum::http::HeaderMap;

use crate::Error;

/// The bearer token writes must carry. `Debug` does not show it.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(redacted)")
    }
}

/// Tokens shorter than this are refused: a guessable token is no guard.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a token's text is refused ([`Token::new`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Shorter than [`MIN_TOKEN_LEN`] characters (its length).
    #[error("the token is {0} characters long: write one of {MIN_TOKEN_LEN} or more on its first line (openssl rand -hex 32)")]
    Short(usize),
    /// Holds whitespace or control characters inside it.
    #[error("the token holds spaces or control characters")]
    Spaces,
}

impl Token {
    /// The first line of `path`, surrounding whitespace removed.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Token {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::new(text.lines().next().unwrap_or_default()).map_err(|e| Error::Token {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// A token from its text, surrounding whitespace removed.
    ///
    /// # Errors
    /// [`TokenError`] when it is shorter than [`MIN_TOKEN_LEN`] or holds
    /// whitespace or control characters.
    pub fn new(text: &str) -> Result<Self, TokenError> {
        let t = text.trim();
        if t.len() < MIN_TOKEN_LEN {
            return Err(TokenError::Short(t.len()));
        }
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TokenError::Spaces);
        }
        Ok(Self(t.to_string()))
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`,
    /// compared in constant time.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let (a, b) = (given.trim().as_bytes(), self.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Refuse an address others can reach unless the API has TLS and a token:
/// the fleet's state (and any write) must not cross a network in clear or
/// unauthenticated. Loopback addresses are always allowed.
pub fn exposure(addr: SocketAddr, tls: bool, token: bool) -> Result<(), Error> {
    if addr.ip().is_loopback() || (tls && token) {
        return Ok(());
    }
    let missing = match (tls, token) {
        (false, false) => "TLS (http.tls.cert_file and key_file) and a token (http.token_file)",
        (false, true) => "TLS (http.tls.cert_file and key_file)",
        _ => "a token (http.token_file)",
    };
    Err(Error::Exposed(format!(
        "refusing to serve HTTP on {addr}, an address other machines can reach, without {missing}; \
         set them, or listen on 127.0.0.1 (http.listen, --http)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reachable_address_needs_tls_and_a_token() {
        let lo: SocketAddr = "127.0.0.1:9477".parse().unwrap();
        let lo6: SocketAddr = "[::1]:9477".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9477".parse().unwrap();
        assert!(exposure(lo, false, false).is_ok());
        assert!(exposure(lo6, false, false).is_ok());
        let e = exposure(any, false, false).unwrap_err().to_string();
        assert!(
            e.contains("without TLS") && e.contains("and a token"),
            "{e}"
        );
        let e = exposure(any, false, true).unwrap_err().to_string();
        assert!(e.contains("without TLS (http.tls"), "{e}");
        let e = exposure(any, true, false).unwrap_err().to_string();
        assert!(e.contains("without a token"), "{e}");
        assert!(exposure(any, true, true).is_ok());
    }

    #[test]
    fn the_token_is_checked_whole_and_never_shown() {
        let t = Token::new("  0123456789abcdef0123\n").unwrap();
        assert_eq!(format!("{t:?}"), "Token(redacted)");
        let mut h = HeaderMap::new();
        assert!(!t.admits(&h));
        h.insert(
            "authorization",
            "Bearer 0123456789abcdef0123".parse().unwrap(),
        );
        assert!(t.admits(&h));
        h.insert(
            "authorization",
            "Bearer 0123456789abcdef012".parse().unwrap(),
        );
        assert!(!t.admits(&h));
        h.insert(
            "authorization",
            "Basic 0123456789abcdef0123".parse().unwrap(),
        );
        assert!(!t.admits(&h));
        assert_eq!(Token::new("short").unwrap_err(), TokenError::Short(5));
        assert_eq!(
            Token::new("0123456789 abcdef0123").unwrap_err(),
            TokenError::Spaces
        );
    }

    #[test]
    fn a_refused_token_file_is_named_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "tooshort\n").unwrap();
        let e = Token::read(&path).unwrap_err().to_string();
        assert!(
            e.contains("token") && e.contains("8 characters long"),
            "{e}"
        );
        assert!(e.contains(&path.display().to_string()), "{e}");
    }
}

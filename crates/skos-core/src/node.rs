//! Node names: one NATS subject token, validated wherever a name enters.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest accepted node name, in bytes.
pub const MAX_NODE_NAME_LEN: usize = 128;

/// A node name that is safe to use as a single NATS subject token and as a
/// file-name component: non-empty, at most [`MAX_NODE_NAME_LEN`] bytes, no
/// `.`, `*`, `>`, `/`, whitespace or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct NodeName(String);

/// Written as the plain string, as `into = "String"` wrote it, without
/// copying the name first (every state, command and audit record names
/// nodes).
impl Serialize for NodeName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeNameError {
    #[error("node name is empty")]
    Empty,
    #[error("node name is {0} bytes long, the limit is {MAX_NODE_NAME_LEN}")]
    TooLong(usize),
    #[error("node name {name:?} contains {ch:?}, which cannot appear in a subject token")]
    BadChar { name: String, ch: char },
}

impl NodeName {
    pub fn parse(name: &str) -> Result<Self, NodeNameError> {
        Self::check(name)?;
        Ok(Self(name.to_owned()))
    }

    /// Why `name` is not a valid node name, if it is not.
    fn check(name: &str) -> Result<(), NodeNameError> {
        if name.is_empty() {
            return Err(NodeNameError::Empty);
        }
        if name.len() > MAX_NODE_NAME_LEN {
            return Err(NodeNameError::TooLong(name.len()));
        }
        if let Some(ch) = name.chars().find(|c| {
            matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control()
        }) {
            return Err(NodeNameError::BadChar {
                name: name.escape_debug().to_string(),
                ch,
            });
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeName {
    type Error = NodeNameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::check(&value)?;
        Ok(Self(value))
    }
}

impl From<NodeName> for String {
    fn from(value: NodeName) -> Self {
        value.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for NodeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_length_limit_is_inclusive_and_the_name_reads_back() {
        let longest = "n".repeat(MAX_NODE_NAME_LEN);
        let n = NodeName::parse(&longest).unwrap();
        assert_eq!(n.to_string(), longest);
        assert_eq!(n.as_ref(), longest.as_str());
        assert_eq!(String::from(n), longest);
        assert!(NodeName::parse(&"n".repeat(MAX_NODE_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn accepts_ordinary_names() {
        for n in ["nova", "lyra-01", "athena_2", "GPU-Box"] {
            assert_eq!(NodeName::parse(n).unwrap().as_str(), n);
        }
    }

    #[test]
    fn rejects_hostile_names() {
        for n in [
            "", "a.b", "*", "nova>", "no va", "a\tb", "a\u{0}b", "../etc", "x/y",
        ] {
            assert!(NodeName::parse(n).is_err(), "{n:?} accepted");
        }
        assert_eq!(
            NodeName::parse(&"x".repeat(200)),
            Err(NodeNameError::TooLong(200))
        );
    }

    #[test]
    fn serde_validates() {
        let ok: NodeName = serde_json::from_str("\"nova\"").unwrap();
        assert_eq!(ok.as_str(), "nova");
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"nova\"");
        assert!(serde_json::from_str::<NodeName>("\"a.b\"").is_err());
    }
}

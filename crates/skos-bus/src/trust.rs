//! Who may order a node to act: commands are signed by the coordinator with
//! an Ed25519 key in NATS's nkeys format, and agents check the signature.
//!
//! The signature travels in NATS headers over the exact payload bytes, so
//! the command JSON itself stays in the seed's format (the seed's agents,
//! which ignore headers, can still read it):
//!
//! * `Skos-Signer`: the signer's public key (`U...`),
//! * `Skos-Signature`: base64url (no padding) of the Ed25519 signature.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use nkeys::KeyPair;

use crate::{Error, Result};

pub const HEADER_SIGNER: &str = "Skos-Signer";
pub const HEADER_SIGNATURE: &str = "Skos-Signature";

/// Why a command's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("unsigned command (signatures are required)")]
    Unsigned,
    #[error("command signed by unknown key {0}")]
    UnknownSigner(String),
    #[error("bad signature from {0}")]
    BadSignature(String),
    #[error("malformed signature header: {0}")]
    Malformed(String),
}

/// The coordinator's signing key.
pub struct Signer {
    key: KeyPair,
}

impl Signer {
    /// A fresh key that lives as long as the process (embedded mode).
    pub fn ephemeral() -> Self {
        Self {
            key: KeyPair::new_user(),
        }
    }

    /// Read a seed file written by `skos keys generate`.
    pub fn from_seed_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let seed = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with('S'))
            .ok_or_else(|| Error::Corrupt {
                path: path.display().to_string(),
                reason: "no nkeys seed (a line starting with 'S') in the file".into(),
            })?;
        let key = KeyPair::from_seed(seed).map_err(|e| Error::Corrupt {
            path: path.display().to_string(),
            reason: format!("not a valid nkeys seed: {e}"),
        })?;
        Ok(Self { key })
    }

    /// A new key: (seed, public key). The seed is secret.
    pub fn generate() -> Result<(String, String)> {
        let key = KeyPair::new_user();
        let seed = key.seed().map_err(|e| Error::Corrupt {
            path: "new key".into(),
            reason: e.to_string(),
        })?;
        Ok((seed, key.public_key()))
    }

    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The two header values for a payload.
    pub fn sign(&self, payload: &[u8]) -> Result<(String, String)> {
        let sig = self.key.sign(payload).map_err(|e| Error::Corrupt {
            path: "signing key".into(),
            reason: e.to_string(),
        })?;
        Ok((self.key.public_key(), URL_SAFE_NO_PAD.encode(sig)))
    }
}

/// The agent's side: the coordinator keys it trusts (several, so keys can
/// be rotated) and whether unsigned commands are refused.
pub struct Verifier {
    keys: Vec<KeyPair>,
    required: bool,
}

impl Verifier {
    /// `keys` are public keys; an invalid one is an error naming it.
    pub fn new(keys: &[String], required: bool) -> Result<Self> {
        let keys = keys
            .iter()
            .map(|k| {
                KeyPair::from_public_key(k.trim()).map_err(|e| Error::Corrupt {
                    path: "trust.coordinator_keys".into(),
                    reason: format!("{k:?} is not a public key: {e}"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { keys, required })
    }

    pub fn required(&self) -> bool {
        self.required
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Check a payload against its headers. `Ok(None)`: unsigned but
    /// signatures are not required. `Ok(Some(signer))`: a trusted signature.
    pub fn check(
        &self,
        payload: &[u8],
        signer: Option<&str>,
        signature: Option<&str>,
    ) -> Result<Option<String>, TrustError> {
        let (signer, signature) = match (signer, signature) {
            (Some(a), Some(b)) => (a.trim(), b.trim()),
            (None, None) if !self.required => return Ok(None),
            (None, None) => return Err(TrustError::Unsigned),
            _ => {
                return Err(TrustError::Malformed(
                    "one of the two signature headers is missing".into(),
                ))
            }
        };
        if signer.len() > 64 || signature.len() > 200 {
            return Err(TrustError::Malformed("header too long".into()));
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.public_key() == signer)
            .ok_or_else(|| TrustError::UnknownSigner(signer.to_string()))?;
        let sig = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|e| TrustError::Malformed(format!("signature is not base64url: {e}")))?;
        key.verify(payload, &sig)
            .map_err(|_| TrustError::BadSignature(signer.to_string()))?;
        Ok(Some(signer.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let s = Signer::ephemeral();
        let other = Signer::ephemeral();
        let v = Verifier::new(&[other.public_key(), s.public_key()], true).unwrap();
        let payload = br#"{"action_id":"a","action_type":"throttle_10"}"#;
        let (who, sig) = s.sign(payload).unwrap();
        assert_eq!(
            v.check(payload, Some(&who), Some(&sig)).unwrap(),
            Some(who.clone())
        );
        // One byte changed.
        let mut evil = payload.to_vec();
        evil[20] = b'X';
        assert_eq!(
            v.check(&evil, Some(&who), Some(&sig)),
            Err(TrustError::BadSignature(who.clone()))
        );
        // Unknown signer.
        let stranger = Signer::ephemeral();
        let (sk, ss) = stranger.sign(payload).unwrap();
        assert!(matches!(
            v.check(payload, Some(&sk), Some(&ss)),
            Err(TrustError::UnknownSigner(_))
        ));
        // A trusted signer's name with a stranger's signature.
        assert!(matches!(
            v.check(payload, Some(&who), Some(&ss)),
            Err(TrustError::BadSignature(_))
        ));
        // Unsigned.
        assert_eq!(v.check(payload, None, None), Err(TrustError::Unsigned));
        assert!(matches!(
            v.check(payload, Some(&who), None),
            Err(TrustError::Malformed(_))
        ));
        assert!(matches!(
            v.check(payload, Some(&who), Some("!!!")),
            Err(TrustError::Malformed(_))
        ));
        let lax = Verifier::new(&[], false).unwrap();
        assert_eq!(lax.check(payload, None, None), Ok(None));
    }

    #[test]
    fn seed_file_round_trip_and_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (seed, public) = Signer::generate().unwrap();
        let path = dir.path().join("coordinator.nk");
        std::fs::write(&path, format!("{seed}\n")).unwrap();
        assert_eq!(Signer::from_seed_file(&path).unwrap().public_key(), public);
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(Signer::from_seed_file(&path).is_err());
        assert!(Verifier::new(&["not-a-key".into()], true).is_err());
        assert!(Verifier::new(&[public], true).is_ok());
    }
}

//! The mesh healer's error: each variant names the interface, peer or file
//! it failed on. Messages never quote a key.

use skos_core::escape::ShowPath;
use std::path::PathBuf;

use super::template::TemplateError;
use super::wg::DumpError;

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("{interface} exists but is down")]
    Down { interface: String },
    #[error("{interface} does not exist")]
    Missing { interface: String },
    /// A program that failed to run or answer (`ip`, `wg`), or a file.
    #[error(transparent)]
    Agent(#[from] crate::Error),
    #[error("wg cannot read {interface}: {output}")]
    WgShow { interface: String, output: String },
    #[error("{source}")]
    Dump {
        interface: String,
        #[source]
        source: DumpError,
    },
    /// `what` is the key that named the file (`private_key_file`,
    /// `preshared_key_file of <peer>`).
    #[error("{what} {}: {source}", .path.escaped())]
    KeyFile {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {} does not hold a WireGuard key", .path.escaped())]
    NotAKey { what: String, path: PathBuf },
    #[error("no private_key_file configured for {interface} (mesh.interfaces[].private_key_file)")]
    NoPrivateKeyFile { interface: String },
    #[error("template {}: {source}", .path.escaped())]
    Template {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Render(TemplateError),
    #[error("rendered config: {source}")]
    Rendered {
        interface: String,
        #[source]
        source: TemplateError,
    },
    #[error("rendered config: peer {peer} is missing (does the template use {{{{peers}}}}?)")]
    PeerMissing { peer: String },
    #[error("{} has no directory", .path.escaped())]
    NoDirectory { path: PathBuf },
    #[error("cannot keep the previous config: {source}")]
    KeepPrevious {
        path: PathBuf,
        #[source]
        source: skos_fs::Error,
    },
}

impl MeshError {
    /// The kernel or `wg` refused for lack of privilege (`CAP_NET_ADMIN`).
    pub fn is_permission_denied(&self) -> bool {
        let text = self.to_string();
        text.contains("Operation not permitted") || text.contains("Permission denied")
    }
}

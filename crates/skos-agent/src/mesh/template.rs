//! `regenerate_config`: render an interface's wg-quick file from a template
//! with the node's key and the configured peers, and validate what was
//! rendered before anything is written. Pure: the keys arrive as text.
//!
//! Placeholders: `{{interface}}`, `{{private_key}}`, `{{listen_port}}`,
//! `{{address}}`, `{{mtu}}`, `{{interface_options}}` (the ListenPort,
//! Address and MTU lines that are configured) and `{{peers}}` (one
//! `[Peer]` section per configured peer). An unknown placeholder is an
//! error. Messages never quote a key or a line that holds one.

use std::collections::BTreeMap;

use skos_core::config::{endpoint, is_wg_key, parse_cidr, MeshInterface, MeshPeer};

/// Why a template did not render, or a rendered file is not a valid
/// wg-quick config. Never quotes a key: it names the peer, the placeholder,
/// or the line and key that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("the private key file does not hold a WireGuard key")]
    PrivateKey,
    #[error("peer {peer} has no public_key (mesh.peers)")]
    NoPublicKey { peer: String },
    #[error("the preshared key file of peer {peer} does not hold a WireGuard key")]
    PresharedKey { peer: String },
    #[error("template: `{{{{` without `}}}}`")]
    Unclosed,
    #[error("template: unknown placeholder {{{{{name}}}}}")]
    UnknownPlaceholder { name: String },
    #[error("line {line}: the previous [Peer] has no PublicKey")]
    PeerWithoutKey { line: usize },
    #[error("line {line}: unknown section")]
    UnknownSection { line: usize },
    #[error("line {line}: not `Key = value`")]
    NotKeyValue { line: usize },
    #[error("line {line}: {key} outside a section")]
    OutsideSection { line: usize, key: String },
    #[error("line {line}: {key} is not {expected}")]
    BadValue {
        line: usize,
        key: String,
        expected: &'static str,
    },
    #[error("line {line}: unknown key {key}")]
    UnknownKey { line: usize, key: String },
    #[error("the last [Peer] has no PublicKey")]
    LastPeerWithoutKey,
    #[error("{count} [Interface] sections, expected exactly one")]
    InterfaceCount { count: usize },
    #[error("[Interface] has no PrivateKey")]
    NoPrivateKey,
}

/// The template used when the interface names none.
pub const BUILTIN: &str = "\
# {{interface}}: written by SKOS (regenerate_config) from mesh.interfaces and mesh.peers.
[Interface]
PrivateKey = {{private_key}}
{{interface_options}}
{{peers}}";

/// A peer as it goes into the file: the configured entry and its
/// preshared key, if it has one.
pub struct PeerKeys<'a> {
    pub peer: &'a MeshPeer,
    pub preshared_key: Option<String>,
}

/// Render `template` for `itf`. `private_key` is the node's key, read from
/// `private_key_file` by the caller.
pub fn render(
    template: &str,
    itf: &MeshInterface,
    private_key: &str,
    peers: &[PeerKeys<'_>],
) -> Result<String, TemplateError> {
    if !is_wg_key(private_key) {
        return Err(TemplateError::PrivateKey);
    }
    let mut options = Vec::new();
    if let Some(p) = itf.listen_port {
        options.push(format!("ListenPort = {p}"));
    }
    if !itf.address.is_empty() {
        options.push(format!("Address = {}", itf.address.join(", ")));
    }
    if let Some(m) = itf.mtu {
        options.push(format!("MTU = {m}"));
    }
    let mut sections = Vec::new();
    for pk in peers {
        let p = pk.peer;
        let key = p
            .public_key
            .as_deref()
            .ok_or_else(|| TemplateError::NoPublicKey {
                peer: p.name.clone(),
            })?;
        let mut s = format!("[Peer]\n# {}\nPublicKey = {key}\n", p.name);
        if let Some(psk) = &pk.preshared_key {
            if !is_wg_key(psk) {
                return Err(TemplateError::PresharedKey {
                    peer: p.name.clone(),
                });
            }
            s.push_str(&format!("PresharedKey = {psk}\n"));
        }
        if let Some(e) = &p.endpoint {
            s.push_str(&format!("Endpoint = {e}\n"));
        }
        if !p.allowed_ips.is_empty() {
            s.push_str(&format!("AllowedIPs = {}\n", p.allowed_ips.join(", ")));
        }
        if let Some(k) = p.persistent_keepalive {
            s.push_str(&format!("PersistentKeepalive = {k}\n"));
        }
        sections.push(s);
    }
    let values: BTreeMap<&str, String> = BTreeMap::from([
        ("interface", itf.name.clone()),
        ("private_key", private_key.to_string()),
        (
            "listen_port",
            itf.listen_port.map(|p| p.to_string()).unwrap_or_default(),
        ),
        ("address", itf.address.join(", ")),
        ("mtu", itf.mtu.map(|m| m.to_string()).unwrap_or_default()),
        ("interface_options", options.join("\n")),
        ("peers", sections.join("\n")),
    ]);
    let mut out = String::with_capacity(template.len() + 512);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(TemplateError::Unclosed)?;
        let name = after[..end].trim();
        let v = values
            .get(name)
            .ok_or_else(|| TemplateError::UnknownPlaceholder {
                name: name.to_string(),
            })?;
        out.push_str(v);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// What a validated config holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub peer_keys: Vec<String>,
}

/// Check a wg-quick file: one `[Interface]` with a valid `PrivateKey`,
/// `[Peer]` sections with valid `PublicKey`s, known keys only, well-formed
/// values. Errors give the line number and key, never a key's value.
pub fn validate(text: &str) -> Result<Checked, TemplateError> {
    #[derive(PartialEq)]
    enum Section {
        None,
        Interface,
        Peer,
    }
    let mut section = Section::None;
    let mut interfaces = 0;
    let mut private_key = false;
    let mut peer_keys = Vec::new();
    let mut peer_has_key = true;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            if !peer_has_key {
                return Err(TemplateError::PeerWithoutKey { line: n });
            }
            section = match line.to_ascii_lowercase().as_str() {
                "[interface]" => {
                    interfaces += 1;
                    Section::Interface
                }
                "[peer]" => {
                    peer_has_key = false;
                    Section::Peer
                }
                _ => return Err(TemplateError::UnknownSection { line: n }),
            };
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(TemplateError::NotKeyValue { line: n });
        };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim();
        let bad = |expected: &'static str| {
            Err(TemplateError::BadValue {
                line: n,
                key: key.clone(),
                expected,
            })
        };
        match (&section, key.as_str()) {
            (Section::None, _) => {
                return Err(TemplateError::OutsideSection {
                    line: n,
                    key: key.clone(),
                })
            }
            (Section::Interface, "privatekey") => {
                if !is_wg_key(value) {
                    return bad("a WireGuard key");
                }
                private_key = true;
            }
            (Section::Interface, "listenport") => {
                if value.parse::<u16>().is_err() {
                    return bad("a port");
                }
            }
            (Section::Interface, "fwmark") => {
                let ok = value == "off"
                    || value.parse::<u32>().is_ok()
                    || value
                        .strip_prefix("0x")
                        .is_some_and(|h| u32::from_str_radix(h, 16).is_ok());
                if !ok {
                    return bad("a fwmark");
                }
            }
            (Section::Interface, "address") => {
                for a in value.split(',') {
                    if parse_cidr(a.trim()).is_err() {
                        return bad("a list of addresses");
                    }
                }
            }
            (Section::Interface, "mtu") => {
                if !value
                    .parse::<u32>()
                    .is_ok_and(|m| (576..=65535).contains(&m))
                {
                    return bad("an MTU");
                }
            }
            (Section::Interface, "saveconfig") => {
                if value != "true" && value != "false" {
                    return bad("true or false");
                }
            }
            (Section::Interface, "dns" | "table" | "preup" | "postup" | "predown" | "postdown") => {
            }
            (Section::Peer, "publickey") => {
                if !is_wg_key(value) {
                    return bad("a WireGuard key");
                }
                peer_keys.push(value.to_string());
                peer_has_key = true;
            }
            (Section::Peer, "presharedkey") => {
                if !is_wg_key(value) {
                    return bad("a WireGuard key");
                }
            }
            (Section::Peer, "allowedips") => {
                for a in value.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                    if parse_cidr(a).is_err() {
                        return bad("a list of networks");
                    }
                }
            }
            (Section::Peer, "endpoint") => {
                if endpoint(value).is_err() {
                    return bad("host:port");
                }
            }
            (Section::Peer, "persistentkeepalive") => {
                if value != "off" && value.parse::<u16>().is_err() {
                    return bad("a number of seconds");
                }
            }
            _ => {
                return Err(TemplateError::UnknownKey {
                    line: n,
                    key: key.clone(),
                })
            }
        }
    }
    if !peer_has_key {
        return Err(TemplateError::LastPeerWithoutKey);
    }
    if interfaces != 1 {
        return Err(TemplateError::InterfaceCount { count: interfaces });
    }
    if !private_key {
        return Err(TemplateError::NoPrivateKey);
    }
    Ok(Checked { peer_keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIV: &str = "YK86J1JS22zRRFV7h0yOf3qlpGPEeFomPrpmctMM8FY=";
    const PUB: &str = "Po5SJsFbRL9I/+l1cP+616Jr6zhCKIJZqmAKYukmgGc=";
    const PSK: &str = "KKo4ECqMy91+XNtkfz2aK8A3mtDRPaSYahIe4BnnGSw=";

    fn itf() -> MeshInterface {
        MeshInterface {
            address: vec!["10.99.0.1/24".into()],
            listen_port: Some(51820),
            ..MeshInterface::named("wg0")
        }
    }

    fn peer() -> MeshPeer {
        MeshPeer {
            name: "lyra".into(),
            interface: "wg0".into(),
            public_key: Some(PUB.into()),
            endpoint: Some("192.0.2.7:51820".into()),
            allowed_ips: vec!["10.99.0.2/32".into()],
            persistent_keepalive: Some(25),
            ..Default::default()
        }
    }

    #[test]
    fn builtin_renders_a_valid_config() {
        let p = peer();
        let text = render(
            BUILTIN,
            &itf(),
            PRIV,
            &[PeerKeys {
                peer: &p,
                preshared_key: Some(PSK.into()),
            }],
        )
        .unwrap();
        assert!(
            text.contains("ListenPort = 51820\nAddress = 10.99.0.1/24\n"),
            "{text}"
        );
        assert!(text.contains(&format!("PublicKey = {PUB}\nPresharedKey = {PSK}\nEndpoint = 192.0.2.7:51820\nAllowedIPs = 10.99.0.2/32\nPersistentKeepalive = 25\n")), "{text}");
        let c = validate(&text).unwrap();
        assert_eq!(c.peer_keys, [PUB]);
    }

    #[test]
    fn custom_template_and_its_mistakes() {
        let p = peer();
        let peers = [PeerKeys {
            peer: &p,
            preshared_key: None,
        }];
        let t = "[Interface]\nPrivateKey={{ private_key }}\nListenPort={{listen_port}}\nPostUp = logger up {{interface}}\n\n{{peers}}";
        let text = render(t, &itf(), PRIV, &peers).unwrap();
        validate(&text).unwrap();
        assert_eq!(
            render("{{secret}}", &itf(), PRIV, &peers)
                .unwrap_err()
                .to_string(),
            "template: unknown placeholder {{secret}}"
        );
        assert_eq!(
            render("{{peers", &itf(), PRIV, &peers)
                .unwrap_err()
                .to_string(),
            "template: `{{` without `}}`"
        );
        assert!(render("{{peers", &itf(), PRIV, &peers).is_err());
        assert!(render(BUILTIN, &itf(), "short", &peers).is_err());
        // ListenPort left empty is caught by validation.
        let no_port = MeshInterface {
            listen_port: None,
            ..itf()
        };
        let text = render(t, &no_port, PRIV, &peers).unwrap();
        assert_eq!(
            validate(&text).unwrap_err().to_string(),
            "line 3: listenport is not a port"
        );
        let keyless = MeshPeer {
            public_key: None,
            ..peer()
        };
        assert!(render(
            BUILTIN,
            &itf(),
            PRIV,
            &[PeerKeys {
                peer: &keyless,
                preshared_key: None
            }]
        )
        .is_err());
    }

    #[test]
    fn validation_never_quotes_a_key() {
        let corrupt = format!("[Interface]\nPrivateKey = {}\n", &PRIV[..40]);
        let e = validate(&corrupt).unwrap_err().to_string();
        assert!(e.contains("line 2") && !e.contains(&PRIV[..40]), "{e}");
        for bad in [
            "PrivateKey = x\n".to_string(),
            format!("[Interface]\nPrivateKey = {PRIV}\n[Interface]\nPrivateKey = {PRIV}\n"),
            format!("[Interface]\nPrivateKey = {PRIV}\n[Peer]\nEndpoint = 1.2.3.4:5\n"),
            format!("[Interface]\nPrivateKey = {PRIV}\nColour = blue\n"),
            format!("[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB}\nAllowedIPs = 10.0.0.0/99\n"),
            "[Interface]\nListenPort = 1\n".to_string(),
            "garbage\u{0}\u{1}".to_string(),
        ] {
            let e = validate(&bad).unwrap_err().to_string();
            assert!(!e.contains(PRIV), "{e}");
        }
    }
}

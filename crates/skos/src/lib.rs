//! What the `skos` and `skos-agent` binaries share: the agent's process
//! ([`node`]) and giving free heap back ([`heap`]). The rest of `skos`
//! (coordinator, embedded mode, operator's commands) lives in the `skos`
//! binary itself, so that `skos-agent` links none of it.

pub mod heap;
pub mod node;

#[cfg(test)]
mod tests {
    /// The audit trail's verifier needs floats read back exactly (the
    /// default `exact-floats` feature): this package tested alone
    /// (`cargo test -p skos`) without it fails here. A workspace-wide run
    /// unifies features across crates, so `test.sh` also asks the package's
    /// own dependency graph (`cargo tree`).
    #[test]
    fn floats_read_back_exactly() {
        for text in [
            "10059.572680154533",
            "30031.507059462838",
            "-1.603964615428183e+143",
            "1.5860846119992697e-265",
        ] {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(v.to_string(), text);
        }
    }
}

//! Every subject, stream and consumer name in one place.

use skos_core::NodeName;

pub const HEARTBEATS: &str = "skos.heartbeat.*";
pub const ALERTS: &str = "skos.alert.>";
pub const COMMANDS: &str = "skos.command.>";
pub const RESULTS: &str = "skos.result.>";
pub const AUDIT: &str = "SKOS_AUDIT.*";
/// Where two or more audit records written together go, as one message
/// holding a JSON array of records (a lone record goes on its event's
/// subject, [`audit`]).
pub const AUDIT_BATCH: &str = "SKOS_AUDIT.batch";
/// Request/reply: the coordinator answers with its status.
pub const STATUS: &str = "skos.coordinator.status";
/// Request/reply: operators' changes (silences, forgetting a node),
/// answered by the leader.
pub const CONTROL: &str = "skos.coordinator.control";

pub const STREAM_ALERTS: &str = "SKOS_ALERTS";
pub const STREAM_COMMANDS: &str = "SKOS_COMMANDS";
pub const STREAM_RESULTS: &str = "SKOS_RESULTS";
pub const STREAM_AUDIT: &str = skos_core::protocol::AUDIT_STREAM;
pub const STREAM_STATE: &str = "SKOS_STATE";
/// Snapshots of state that must survive a crash, one kept per key.
pub const STATE: &str = "SKOS_STATE.*";

/// The key-value bucket of the coordinators' leader lease, and its one key.
pub const LEADER_BUCKET: &str = "SKOS_LEADER";
pub const LEADER_KEY: &str = "coordinator";

pub const CONSUMER_COORDINATOR: &str = "skos-coordinator";

/// Where operators' commands (`skos status`, `skos audit`) take replies:
/// an inbox of their own, so a read-only credential subscribes to its own
/// replies only (an agent's is `_INBOX_<node>`; `skos fleet nats-config`
/// refuses a node named `operator`).
pub const OPERATOR_INBOX: &str = "_INBOX_operator";

pub fn heartbeat(node: &NodeName) -> String {
    format!("skos.heartbeat.{node}")
}

pub fn alert(node: &NodeName) -> String {
    format!("skos.alert.{node}")
}

pub fn command(node: &NodeName) -> String {
    format!("skos.command.{node}")
}

pub fn result(node: &NodeName) -> String {
    format!("skos.result.{node}")
}

/// Request/reply (or fire-and-forget): applications' chain steps for the
/// loop breaker of `node`.
pub fn chain(node: &NodeName) -> String {
    format!("skos.chain.{node}")
}

/// Breaks and resets of `node`'s chains, announced to applications. A
/// second token of its own (`chainctl`, not `chain.control`), so a
/// subscription to `skos.chain.>` never sees announcements and one to
/// `skos.chainctl.>` never sees steps.
pub fn chain_control(node: &NodeName) -> String {
    format!("skos.chainctl.{node}")
}

pub fn audit(event_type: &str) -> String {
    let token: String = event_type
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("SKOS_AUDIT.{token}")
}

pub fn state(key: &str) -> String {
    format!("SKOS_STATE.{key}")
}

pub fn agent_consumer(node: &NodeName) -> String {
    format!("skos-agent-{node}")
}

/// The node of a `skos.<kind>.<node>` subject: exactly three tokens, the
/// last a valid node name.
pub fn node_of(subject: &str) -> Option<NodeName> {
    let mut parts = subject.split('.');
    let (Some("skos"), Some(_), Some(node), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    NodeName::parse(node).ok()
}

/// Whether `subject` is a `skos.<kind>.<node>` subject of `node`, as
/// [`node_of`] would find, without building a name (`node` is valid
/// already, so the same token is too).
pub fn is_of_node(subject: &str, node: &NodeName) -> bool {
    let mut parts = subject.split('.');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some("skos"), Some(_), Some(n), None) if n == node.as_str()
    )
}

/// NATS subject matching: `*` is one token, `>` the rest (one or more).
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("skos.heartbeat.*", "skos.heartbeat.nova"));
        assert!(!matches("skos.heartbeat.*", "skos.heartbeat.nova.x"));
        assert!(matches("skos.alert.>", "skos.alert.nova"));
        assert!(matches("skos.alert.>", "skos.alert.nova.x"));
        assert!(!matches("skos.alert.>", "skos.alert"));
        assert!(matches("skos.command.nova", "skos.command.nova"));
        assert!(!matches("skos.command.nova", "skos.command.lyra"));
    }

    #[test]
    fn node_from_subject() {
        assert_eq!(node_of("skos.alert.nova").unwrap().as_str(), "nova");
        assert!(node_of("skos.alert.nova.extra").is_none());
        assert!(node_of("skos.alert").is_none());
        assert!(node_of("other.alert.nova").is_none());
    }

    #[test]
    fn a_subject_is_of_a_node_exactly_when_node_of_finds_it() {
        let nova = NodeName::parse("nova").unwrap();
        for subject in [
            "skos.alert.nova",
            "skos.heartbeat.nova",
            "skos.alert.lyra",
            "skos.alert.nova.extra",
            "skos.alert",
            "skos.nova",
            "other.alert.nova",
            "skos..nova",
            "skos.alert.nova.",
            "skos.alert.novae",
        ] {
            assert_eq!(
                is_of_node(subject, &nova),
                node_of(subject).as_ref() == Some(&nova),
                "{subject}"
            );
        }
    }

    #[test]
    fn chain_subjects_never_overlap() {
        let nova = NodeName::parse("nova").unwrap();
        let control = NodeName::parse("control").unwrap();
        let (steps, ctl) = (chain(&nova), chain_control(&nova));
        assert_eq!(node_of(&steps).unwrap(), nova);
        assert_eq!(node_of(&ctl).unwrap(), nova);
        for (pattern, subject) in [
            ("skos.chain.>", ctl.as_str()),
            ("skos.chain.*", ctl.as_str()),
            ("skos.chainctl.>", steps.as_str()),
            ("skos.chainctl.*", steps.as_str()),
        ] {
            assert!(!matches(pattern, subject), "{pattern} matches {subject}");
        }
        // Not even for a node called `control`.
        assert!(!matches(&chain(&control), &ctl));
        assert!(!matches(&chain_control(&control), &steps));
    }

    #[test]
    fn audit_subject_is_one_token() {
        assert_eq!(audit("alert"), "SKOS_AUDIT.alert");
        assert_eq!(audit("a.b *"), "SKOS_AUDIT.a_b__");
    }
}

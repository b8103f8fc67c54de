//! The router against its documentation, and its answers without a
//! coordinator: a real server on a free port, a real audit file.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use skos_bus::audit::AuditLog;
use skos_bus::audit_follow::AuditSource;
use skos_bus::{Bus, InProcBus};
use skos_core::counters::Counters;
use skos_core::AuditEntry;
use skos_http::api::routes;
use skos_http::{HttpOptions, Sources};

/// (method, path) of every operation in `docs/openapi.yaml`.
fn documented() -> BTreeSet<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut out = BTreeSet::new();
    for (p, ops) in doc["paths"].as_mapping().unwrap() {
        for (method, _) in ops.as_mapping().unwrap() {
            let m = method.as_str().unwrap();
            if ["get", "post", "put", "delete", "patch"].contains(&m) {
                out.insert((m.to_string(), p.as_str().unwrap().to_string()));
            }
        }
    }
    out
}

#[test]
fn the_openapi_file_lists_exactly_the_routes_served() {
    let served: BTreeSet<(String, String)> = routes()
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let doc = documented();
    let undocumented: Vec<_> = served.difference(&doc).collect();
    let unserved: Vec<_> = doc.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in docs/openapi.yaml: {undocumented:?}; documented but not served: {unserved:?}"
    );
}

/// One request; the status code and the body (up to `max` bytes, or what
/// came within `wait` for a stream).
fn get(addr: SocketAddr, path: &str, wait: Duration) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (code, body)
}

/// Dechunk a `Transfer-Encoding: chunked` body well enough for JSON.
fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {body}"))
    })
}

fn entry(i: u64) -> AuditEntry {
    AuditEntry::new(
        skos_core::AuditEvent::Node,
        chrono::Utc::now(),
        None,
        "test",
        format!("e{i}"),
        Value::Null,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_and_the_audit_pages_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_file(&path).unwrap();
    for i in 0..5 {
        log.append(entry(i)).await.unwrap();
    }
    let opts = HttpOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        explicit: true,
        token: None,
        tls: None,
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = skos_http::start(
        opts,
        Sources {
            bus: Bus::InProc(InProcBus::new()),
            audit: AuditSource::File(path.clone()),
            counters: Counters::default(),
            holder: None,
        },
        async move {
            let _ = stop_rx.wait_for(|v| *v).await;
        },
    )
    .await
    .unwrap()
    .unwrap();
    let addr = server.addr;
    let short = Duration::from_secs(5);
    let call = move |p: &str, wait: Duration| {
        let p = p.to_string();
        tokio::task::spawn_blocking(move || get(addr, &p, wait))
    };
    for (_, route) in routes() {
        let p = route.replace("{file}", "app.js");
        let wait = if p.ends_with("/events") {
            Duration::from_millis(500)
        } else {
            short
        };
        let (code, body) = call(&p, wait).await.unwrap();
        assert!(code != 404 && code != 0, "{p} answered {code}: {body}");
    }
    // No coordinator on this bus: said plainly, 503.
    let (code, body) = call("/api/v1/status", short).await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert_eq!(json(&body)["role"], "single");
    let (code, body) = call("/api/v1/status?page=0", short).await.unwrap();
    assert_eq!(code, 400, "{body}");
    let (code, _) = call("/nowhere", short).await.unwrap();
    assert_eq!(code, 404);

    // Pages of the trail, after a seq, bounded.
    let page = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (code, body) = call("/api/v1/audit?after=1&limit=2", short).await.unwrap();
            assert_eq!(code, 200, "{body}");
            let v = json(&body);
            if v["records"].as_array().is_some_and(|r| r.len() == 2) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(page["records"][0]["seq"], 2);
    assert_eq!(page["next_after"], 3);
    assert_eq!(page["more"], true);
    let (code, _) = call("/api/v1/audit?limit=5000", short).await.unwrap();
    assert_eq!(code, 400);

    // A stream that names where it stopped is given what it missed first.
    let (code, body) = call("/api/v1/events?after=3", Duration::from_millis(800))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("id: 4") && body.contains("id: 5") && !body.contains("id: 3\n"),
        "{body}"
    );

    // A record written now reaches an open event stream.
    let stream = call("/api/v1/events?types=node", Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(500)).await;
    log.append(entry(99)).await.unwrap();
    let (code, body) = stream.await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("event: node"), "{body}");
    assert!(body.contains("\"e99\""), "{body}");

    // The server stops, open streams or not.
    let open = call("/api/v1/events", Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server.stopped())
        .await
        .expect("the server stops with an event stream open");
    drop(open);
}

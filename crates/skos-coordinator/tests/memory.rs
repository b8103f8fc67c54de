//! How much heap the engine keeps per healthy node: 100,000 nodes fed one
//! heartbeat each (the shape `skos-bench` and a thermal sentinel send),
//! counted by a counting global allocator.
//!
//! The count is deterministic: the engine allocates the same for the same
//! inputs, and this binary holds this one test, so nothing else allocates
//! while it runs. It counts the bytes asked for, not the allocator's own
//! overhead per block.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use serde_json::json;
use skos_coordinator::Engine;
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::protocol::Heartbeat;
use skos_core::NodeName;

/// The system allocator, counting the bytes live.
struct Counting;

/// Bytes allocated and not yet freed.
static LIVE: AtomicIsize = AtomicIsize::new(0);

fn add(bytes: usize) {
    LIVE.fetch_add(bytes as isize, Ordering::Relaxed);
}

fn sub(bytes: usize) {
    LIVE.fetch_sub(bytes as isize, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counting only reads the layouts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            add(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            add(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        sub(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            sub(layout.size());
            add(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Nodes in the fleet.
const NODES: usize = 100_000;

/// The most heap the engine may keep per healthy node. The coordinator's
/// whole resident memory must stay within 1 KB per node at 100,000 nodes
/// (`skos-bench footprint`), and the engine is only part of it: about
/// 410 bytes now, with the service's per-node digests, the allocator's
/// overhead and the code beside it.
const BUDGET_PER_NODE: usize = 512;

/// A thermal sentinel's heartbeat, as `skos-bench` sends it.
fn heartbeat(i: usize, now: chrono::DateTime<chrono::Utc>) -> Heartbeat {
    let node = NodeName::parse(&format!("node-{i:06}")).expect("a valid node name");
    Heartbeat {
        agent_id: format!("thermal-sentinel-{node}"),
        agent_type: "thermal_sentinel".into(),
        node,
        timestamp: now,
        cpu_temp: Some(45.0 + (i % 20) as f64),
        gpu_temp: None,
        storage_percent: None,
        interval_seconds: Some(10.0),
        throttle_level: Some(0),
        metadata: json!({"antibodies": ["thermal_sentinel"]})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        workloads: Vec::new(),
    }
}

#[test]
fn a_healthy_node_costs_at_most_half_a_kilobyte() {
    let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("a valid time");
    let mut engine = Engine::new(Config::default(), Counters::default(), "memory");
    // The first heartbeat creates the counters' entries: not per node.
    drop(engine.on_heartbeat(heartbeat(NODES, now), now));
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..NODES {
        drop(engine.on_heartbeat(heartbeat(i, now), now));
    }
    let after = LIVE.load(Ordering::Relaxed);
    let per_node = (after - before).max(0) as usize / NODES;
    println!(
        "engine heap: {} bytes for {NODES} nodes, {per_node} bytes per node",
        after - before
    );
    assert!(
        per_node <= BUDGET_PER_NODE,
        "{per_node} bytes per node, more than {BUDGET_PER_NODE}"
    );
    drop(engine);
}

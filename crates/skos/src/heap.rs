//! Giving the heap's free memory back to the system, for the lean
//! `skos-agent` binary, which keeps glibc's malloc (the `skos` binary,
//! coordinator included, allocates with jemalloc: see its `main.rs`).
//!
//! glibc's malloc keeps what a burst freed: a free chunk below a live one
//! stays in the process's resident set for ever. `malloc_trim(0)` returns
//! the free pages of every arena; with nothing to return it walks the free
//! lists and makes no system call, so running it every [`EVERY`] costs
//! next to nothing.

use std::time::Duration;

/// How often the free heap is given back.
pub const EVERY: Duration = Duration::from_secs(10);

/// Give the free heap back every [`EVERY`], for as long as the runtime
/// runs. A no-op where the C library is not glibc.
pub fn spawn_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            if tokio::task::spawn_blocking(trim).await.is_err() {
                return;
            }
        }
    });
}

/// Return the free pages of every malloc arena to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes the arenas' own locks and only releases
    // pages of free chunks; it has no precondition on the caller.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn trimming_keeps_live_memory() {
        let live: Vec<Vec<u8>> = (0..1000).map(|i| vec![i as u8; 4096]).collect();
        let freed: Vec<Vec<u8>> = (0..1000).map(|_| vec![0u8; 4096]).collect();
        drop(freed);
        super::trim();
        for (i, v) in live.iter().enumerate() {
            assert!(v.iter().all(|b| *b == i as u8));
        }
    }
}

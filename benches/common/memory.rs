//! Memory per connection, as the deflate and tls benches measure it: the server's RSS and,
//! through gdb after `malloc_trim(0)` (soak's `heap`), its heap in use, read once settled
//! with no connection and again with the connections.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::heap::{self, Heap};
use crate::launch::Server;

/// Whether gdb can be run (for `malloc_trim`).
pub fn gdb_works() -> bool {
    let ok = Command::new("gdb")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("gdb not found: memory figures are raw RSS (noisier)");
    }
    ok
}

/// The server's memory at one moment.
pub struct Reading {
    rss: u64,
    /// The allocator's bytes in use (gdb), if trimmed.
    heap: Option<Heap>,
}

impl Reading {
    /// Waits `settle`, then (if `trim`) trims the server's heap and reads it, then its RSS.
    pub fn take(server: &Server, settle: Duration, trim: bool) -> Result<Reading, String> {
        std::thread::sleep(settle);
        let heap = if trim {
            Some(heap::report_and_trim(server.pid(), &server.log_path)?)
        } else {
            None
        };
        Ok(Reading {
            rss: server.rss_bytes()?,
            heap,
        })
    }
}

/// The difference `n` connections made.
pub struct PerConn {
    pub n: usize,
    pub before: Reading,
    pub after: Reading,
}

impl PerConn {
    pub fn rss_per_conn(&self) -> f64 {
        (self.after.rss as f64 - self.before.rss as f64) / self.n as f64
    }

    pub fn heap_per_conn(&self) -> Option<f64> {
        self.before
            .heap
            .zip(self.after.heap)
            .map(|(before, after)| (after.in_use as f64 - before.in_use as f64) / self.n as f64)
    }

    /// Heap in use if measured, else RSS.
    pub fn per_conn(&self) -> f64 {
        self.heap_per_conn().unwrap_or_else(|| self.rss_per_conn())
    }
}

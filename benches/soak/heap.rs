//! What the server's allocator holds, as opposed to what the server uses.
//!
//! glibc's malloc keeps memory the program freed (fragments between live
//! blocks, the top of a heap below its trim threshold, large blocks reused
//! from the heap once its dynamic mmap threshold rose), so the RSS of a
//! server that freed everything its attackers cost goes back down only by
//! chance: in this soak it came back anywhere from -5% to +30% of the same
//! baseline while the heap in use was flat (1.45 MB before, 1.42 MB after).
//! To tell a leak from that cache, the leak check asks the allocator to give
//! its free pages back first: `malloc_trim(0)` called inside the server by
//! gdb (which also calls `malloc_stats()`, whose totals go to the server's
//! stderr, i.e. its log). The server is stopped for the fraction of a second
//! gdb is attached; nothing else in it changes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long gdb may take.
const GDB_TIMEOUT: Duration = Duration::from_secs(30);

/// malloc_stats' totals (all arenas, mmapped blocks included).
#[derive(Clone, Copy, Debug, Default)]
pub struct Heap {
    /// Bytes the allocator got from the system.
    pub system: u64,
    /// Bytes in blocks the program holds.
    pub in_use: u64,
}

/// Reports the heap, then trims it: `malloc_stats(); malloc_trim(0)` in
/// process `pid`, whose stderr goes to `log`.
pub fn report_and_trim(pid: u32, log: &Path) -> Result<Heap, String> {
    let before = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let mut gdb = Command::new("gdb")
        .args(["-p", &pid.to_string(), "-batch", "-nx"])
        .args(["-ex", "call (void)malloc_stats()"])
        .args(["-ex", "call (int)malloc_trim(0)"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run gdb: {e}"))?;
    let start = Instant::now();
    // Bounded by GDB_TIMEOUT.
    let status = loop {
        match gdb.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < GDB_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Ok(None) => {
                // Our own gdb, by its PID; the kernel detaches it from the server.
                let _ = gdb.kill();
                let _ = gdb.wait();
                return Err(format!("gdb did not finish within {GDB_TIMEOUT:?}"));
            }
            Err(e) => return Err(format!("waiting for gdb: {e}")),
        }
    };
    if !status.success() {
        return Err(format!("gdb failed ({status})"));
    }
    let text = std::fs::read(log).map_err(|e| format!("cannot read {}: {e}", log.display()))?;
    let new = String::from_utf8_lossy(&text[(before as usize).min(text.len())..]).into_owned();
    parse_totals(&new).ok_or_else(|| {
        "gdb ran but malloc_stats printed nothing (not glibc, or no debug symbols?)".to_string()
    })
}

/// The `Total (incl. mmap):` block of malloc_stats' output.
fn parse_totals(text: &str) -> Option<Heap> {
    let (_, total) = text.rsplit_once("Total (incl. mmap):")?;
    let value = |name: &str| -> Option<u64> {
        total
            .lines()
            .find(|l| l.trim_start().starts_with(name))?
            .split('=')
            .nth(1)?
            .trim()
            .parse()
            .ok()
    };
    Some(Heap {
        system: value("system bytes")?,
        in_use: value("in use bytes")?,
    })
}

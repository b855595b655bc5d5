//! What the deflate and tls benches' reports share: medians, number formatting, the noise
//! line, the header and where the report goes.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// 1234567 → "1.23M".
pub fn si(value: f64) -> String {
    match value {
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// How much other processes ran during the CPU runs, given each run's (wall time, CPU
/// time of other processes).
pub fn noise_summary(runs: impl IntoIterator<Item = (Duration, Duration)>) -> String {
    let shares: Vec<f64> = runs
        .into_iter()
        .filter(|(wall, _)| *wall >= Duration::from_millis(250))
        .map(|(wall, foreign)| foreign.as_secs_f64() / wall.as_secs_f64() * 100.0)
        .collect();
    if shares.is_empty() {
        return "not measured (no CPU run long enough)".to_string();
    }
    let max = shares.iter().copied().fold(0.0, f64::max);
    format!(
        "other processes used a median {:.0}% (max {max:.0}%) of one CPU during the CPU runs",
        median(shares)
    )
}

/// The target directory this binary was built in (`<target>/<profile>/deps/`, honouring
/// CARGO_TARGET_DIR): where the logs and the report go.
pub fn target_dir(manifest_dir: &Path) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            (deps.file_name()? == "deps").then_some(())?;
            Some(deps.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(|| manifest_dir.join("target"))
}

/// The top of a report.
pub struct Header<'a> {
    /// As in "wshub TLS benchmark".
    pub title: &'a str,
    pub quick: bool,
    pub manifest_dir: &'a Path,
    pub cores: usize,
    pub cpu_model: &'a str,
    /// Server pinned to CPU 0, clients to CPU 1.
    pub pinned: bool,
    pub command: String,
    pub elapsed: Duration,
    pub noise: String,
}

impl Header<'_> {
    fn text(&self) -> String {
        format!(
            "# wshub {} benchmark{}\n\n\
             - date: {}\n- commit: {}\n- machine: {} logical CPUs, {}; {}\n\
             - command: `{}` (took {:.0} s)\n- noise: {}\n\n",
            self.title,
            if self.quick {
                " (quick: correctness only, figures too short to compare)"
            } else {
                ""
            },
            crate::sys::utc_now_string(),
            crate::sys::git_commit(self.manifest_dir),
            self.cores,
            self.cpu_model,
            if self.pinned {
                "server pinned to CPU 0 (taskset), clients to CPU 1"
            } else {
                "processes not pinned"
            },
            self.command,
            self.elapsed.as_secs_f64(),
            self.noise,
        )
    }

    /// Writes the header and `body` to `<target_dir>/<stem>.md` (`<stem>-quick.md` in quick
    /// mode) and returns that path.
    pub fn write(&self, target_dir: &Path, stem: &str, body: &str) -> Result<PathBuf, String> {
        let path = target_dir.join(if self.quick {
            format!("{stem}-quick.md")
        } else {
            format!("{stem}.md")
        });
        std::fs::write(&path, format!("{}{body}", self.text()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }
}

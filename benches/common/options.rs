//! The command-line options the deflate and tls benches share; unknown arguments (such as
//! cargo's `--bench`) are ignored.

/// What both benches accept: `--quick` (or `WSHUB_BENCH_QUICK=1`, or no `--bench`, as under
/// `cargo test`), `--repeats N`, `--no-cpu`, `--no-memory`, `--raw-rss`.
pub struct Options {
    /// Run by `cargo bench` (which passes `--bench`), not by `cargo test`.
    pub bench: bool,
    pub quick: bool,
    pub repeats: usize,
    pub cpu: bool,
    pub memory: bool,
    pub raw_rss: bool,
    args: Vec<String>,
}

impl Options {
    /// Parses the shared options, then the bench's own with `more` (given the arguments),
    /// then checks that something is left to do.
    pub fn parse<T>(
        args: &[String],
        full_repeats: usize,
        more: impl FnOnce(&[String]) -> Result<T, String>,
    ) -> Result<(Options, T), String> {
        let has = |flag: &str| args.iter().any(|a| a == flag);
        let bench = has("--bench");
        let env_quick = std::env::var("WSHUB_BENCH_QUICK").is_ok_and(|v| v == "1");
        let quick = env_quick || has("--quick") || !bench;
        let repeats = value(args, "--repeats")?
            .map(|r| r.clamp(1, 9))
            .unwrap_or(if quick { 1 } else { full_repeats });
        let own = more(args)?;
        let (cpu, memory) = (!has("--no-cpu"), !has("--no-memory"));
        if !cpu && !memory {
            return Err("--no-cpu and --no-memory leave nothing to do".to_string());
        }
        let options = Options {
            bench,
            quick,
            repeats,
            cpu,
            memory,
            raw_rss: has("--raw-rss"),
            args: args.iter().filter(|a| *a != "--bench").cloned().collect(),
        };
        Ok((options, own))
    }

    /// How this run was started, for the report: `cargo` is the bench's `cargo bench ...`
    /// command.
    pub fn command_line(&self, cargo: &str) -> String {
        let args = if self.args.is_empty() {
            String::new()
        } else {
            format!(" -- {}", self.args.join(" "))
        };
        if self.bench {
            format!("{cargo}{args}")
        } else {
            format!("the bench binary without --bench, as cargo test runs it{args}")
        }
    }
}

/// The number after `flag`, if `flag` is given.
pub fn value(args: &[String], flag: &str) -> Result<Option<usize>, String> {
    match args.iter().position(|a| a == flag) {
        Some(i) => {
            let v = args.get(i + 1).ok_or(format!("{flag} needs a value"))?;
            v.parse::<usize>()
                .map(Some)
                .map_err(|e| format!("{flag} {v}: {e}"))
        }
        None => Ok(None),
    }
}

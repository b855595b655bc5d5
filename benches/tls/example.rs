//! Builds the release `broadcast` example with `--features tls` in this bench's own target
//! directory (benches/fanout/server.rs builds it without features, which could not serve
//! `wss://`), and makes the bench's certificate for it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustls::pki_types::CertificateDer;

/// `cargo build --release --features tls --example broadcast --target-dir TARGET` (a no-op
/// when up to date); returns the executable.
pub fn build_broadcast(manifest_dir: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let args = [
        "build",
        "--release",
        "--features",
        "tls",
        "--example",
        "broadcast",
    ];
    let shown = format!(
        "{cargo} {} --target-dir {}",
        args.join(" "),
        target_dir.display()
    );
    eprintln!("building the wshub broadcast example: {shown}");
    let mut command = Command::new(&cargo);
    // What cargo set for running this bench (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...) must
    // not reach the inner build: ring's build script reruns when they change, so the inner
    // and the outer build would each rebuild ring, rustls and wshub every time.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CFG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || ["OUT_DIR", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"].contains(&&*name)
        {
            command.env_remove(&*name);
        }
    }
    let output = command
        .args(args)
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(manifest_dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run `{shown}`: {e}"))?;
    if !output.status.success() {
        return Err(format!("`{shown}` failed ({})", output.status));
    }
    let exe = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "broadcast")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| {
            target_dir
                .join("release")
                .join("examples")
                .join("broadcast")
        });
    if !exe.is_file() {
        return Err(format!(
            "built the example but {} is missing",
            exe.display()
        ));
    }
    Ok(exe)
}

/// A self-signed certificate for `localhost`, written as PEM into a directory of its own
/// (removed when dropped), for the servers' `--tls-cert`/`--tls-key`.
pub struct Certs {
    pub dir: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    /// What the clients trust.
    pub der: CertificateDer<'static>,
}

impl Certs {
    pub fn generate() -> Result<Certs, String> {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .map_err(|e| format!("rcgen: {e}"))?;
        let dir = std::env::temp_dir().join(format!("wshub-tls-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let certs = Certs {
            cert_pem: dir.join("cert.pem"),
            key_pem: dir.join("key.pem"),
            der: made.cert.der().clone(),
            dir,
        };
        let write = |path: &Path, text: String| {
            std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
        };
        write(&certs.cert_pem, made.cert.pem())?;
        write(&certs.key_pem, made.signing_key.serialize_pem())?;
        Ok(certs)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

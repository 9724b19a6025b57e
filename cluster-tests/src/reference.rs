//! The real Barman 3.17.0, installed by `scripts/setup-reference.sh`: a reference peer for
//! interoperability tests and the source of golden files.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The reference Barman version.
pub const VERSION: &str = "3.17.0";

/// The reference venv: `$BARMAN_REFERENCE_VENV`, else `<workspace>/.reference/barman-3.17.0`.
pub fn venv() -> Result<PathBuf> {
    let venv = match std::env::var_os("BARMAN_REFERENCE_VENV") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join(".reference").join(format!("barman-{VERSION}")),
    };
    if !venv.join("bin").join("barman").is_file() {
        bail!("the reference Barman {VERSION} is not installed in {}: run scripts/setup-reference.sh", venv.display());
    }
    Ok(venv)
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `<venv>/bin/barman`.
pub fn barman() -> Result<PathBuf> {
    tool("barman")
}

/// `<venv>/bin/barman-wal-archive`.
pub fn barman_wal_archive() -> Result<PathBuf> {
    tool("barman-wal-archive")
}

/// `<venv>/bin/barman-wal-restore`.
pub fn barman_wal_restore() -> Result<PathBuf> {
    tool("barman-wal-restore")
}

/// `<venv>/bin/python`, the interpreter with barman's modules importable.
pub fn python() -> Result<PathBuf> {
    tool("python")
}

fn tool(name: &str) -> Result<PathBuf> {
    let path = venv()?.join("bin").join(name);
    if !path.exists() {
        bail!("{} is missing: rerun scripts/setup-reference.sh", path.display());
    }
    Ok(path)
}

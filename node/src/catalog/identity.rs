//! `identity.json`: the system identifier and major version of the cluster a
//! server's archive belongs to. Written once, at the first backup.

use crate::wal::SystemId;
use std::io;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub systemid: SystemId,
    /// PostgreSQL major version as Barman stores it ("15", "9.6").
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "{path}: not a valid identity file ({why}); it should hold {{\"systemid\": \"<digits>\", \"version\": \"<major>\"}}"
    )]
    Invalid { path: String, why: String },
}

impl Identity {
    /// Barman's exact bytes: sorted keys, 4-space indent, trailing newline.
    pub fn to_json_text(&self) -> String {
        format!("{{\n    \"systemid\": \"{}\",\n    \"version\": \"{}\"\n}}\n", self.systemid, self.version)
    }

    /// The major version as a number (15, 16; 9.6 as 96), for page magic checks.
    pub fn major(&self) -> Option<u32> {
        match self.version.split_once('.') {
            Some(("9", b)) => format!("9{b}").parse().ok(),
            _ => self.version.parse().ok(),
        }
    }

    pub fn read(path: &Path) -> Result<Option<Identity>, IdentityError> {
        let p = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(IdentityError::Io { path: p, source }),
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| IdentityError::Invalid { path: p.clone(), why: e.to_string() })?;
        let field = |k: &str| -> Option<String> {
            match v.get(k)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let systemid = field("systemid")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| IdentityError::Invalid { path: p.clone(), why: "no numeric systemid".into() })?;
        let version = field("version").ok_or_else(|| IdentityError::Invalid { path: p, why: "no version".into() })?;
        Ok(Some(Identity { systemid, version }))
    }

    /// Writes the file unless it exists (Barman never overwrites it), even
    /// when two processes write it at once.
    pub fn write_once(&self, path: &Path) -> Result<bool, IdentityError> {
        let io = |source| IdentityError::Io { path: path.display().to_string(), source };
        if path.exists() {
            return Ok(false);
        }
        // The server's directory may not exist yet: streaming can come before anything else.
        if let Some(dir) = path.parent() {
            super::durable::create_dir_all(dir).map_err(io)?;
        }
        let mut f = super::durable::DurableFile::create(path).map_err(io)?;
        std::io::Write::write_all(&mut f, self.to_json_text().as_bytes()).map_err(io)?;
        f.seal(0o644, None).map_err(io)?;
        f.publish_new().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_never_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pg").join("identity.json");
        let id = Identity { systemid: SystemId(7_380_000_000_000_000_123), version: "15".into() };
        assert!(id.write_once(&p).unwrap());
        assert_eq!(Identity::read(&p).unwrap(), Some(id.clone()));
        let other = Identity { systemid: SystemId(1), version: "16".into() };
        assert!(!other.write_once(&p).unwrap());
        assert_eq!(Identity::read(&p).unwrap(), Some(id));
        assert_eq!(Identity { systemid: SystemId(1), version: "9.6".into() }.major(), Some(96));
    }

    #[test]
    fn bad_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("identity.json");
        std::fs::write(&p, "{\"version\": \"15\"}").unwrap();
        let e = Identity::read(&p).unwrap_err().to_string();
        assert!(e.contains("identity.json") && e.contains("systemid"), "{e}");
        assert_eq!(Identity::read(&d.path().join("none")).unwrap(), None);
    }
}

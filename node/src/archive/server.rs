//! What the archive commands need to know about a server: its codecs and the
//! identity of the cluster its WAL must come from.

use crate::catalog::ServerLayout;
use crate::catalog::identity::Identity;
use crate::config::ServerConfig;
use crate::postgres::{Conninfo, PgConnection};
use crate::wal::compression::{Codec, Codecs, CustomFilters};
use crate::wal::header::Expected;

/// The codecs of a server, with its custom filters and `path_prefix`.
pub fn codecs_for(s: &ServerConfig) -> Codecs {
    let custom = CustomFilters {
        compress: s.opts.custom_compression_filter.clone(),
        decompress: s.opts.custom_decompression_filter.clone(),
        magic: s.opts.custom_compression_magic.as_ref().map(|m| m.bytes.clone()),
    };
    // Barman takes every unidentified file as custom-compressed when the server
    // uses custom compression without a magic.
    let unidentified = (s.opts.compression == Some(Codec::Custom) && custom.magic.is_none()).then_some(Codec::Custom);
    Codecs { custom, path_env: s.path_env(), unidentified }
}

fn from_identity(id: &Identity) -> Expected {
    Expected { sysid: Some(id.systemid), major: id.major(), seg_size: None }
}

/// What `identity.json` says, if it exists.
pub fn expected_from_identity(layout: &ServerLayout) -> Result<Option<Expected>, String> {
    Identity::read(&layout.identity_path()).map(|o| o.as_ref().map(from_identity)).map_err(|e| e.to_string())
}

/// The cluster identity: `identity.json`, or else the server itself over
/// `conninfo` (then pinned in `identity.json`, so later checks need no
/// connection). An error says why WAL cannot be checked yet.
pub fn expected_identity(s: &ServerConfig, layout: &ServerLayout) -> Result<Expected, String> {
    if let Some(e) = expected_from_identity(layout)? {
        return Ok(e);
    }
    let Some(ci) = s.opts.conninfo.as_deref() else {
        return Err("no identity.json yet and no conninfo to ask PostgreSQL for its system identifier".into());
    };
    let ci = Conninfo::parse(ci).map_err(|e| format!("conninfo: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let (sysid, major, seg) = rt
        .block_on(async {
            let c = PgConnection::connect(&ci, Some("barman")).await?;
            let sysid = c.system_identifier().await?;
            let seg = c.wal_segment_size().await?;
            Ok::<_, crate::postgres::PgError>((sysid, c.server_major_version(), seg))
        })
        .map_err(|e| format!("no identity.json yet and PostgreSQL cannot be asked for its system identifier: {e}"))?;
    let id = Identity { systemid: sysid, version: major };
    pin_identity(layout, id.clone());
    Ok(Expected { seg_size: Some(seg), ..from_identity(&id) })
}

/// Records the cluster identity in `identity.json` (never replacing one); a
/// failure is logged, not fatal: the identity is asked again next time.
pub fn pin_identity(layout: &ServerLayout, id: Identity) {
    if let Err(e) = id.write_once(&layout.identity_path()) {
        tracing::warn!(server = %layout.server, "cannot record the cluster identity: {e}");
    }
}

//! `sync-info`: Barman's JSON for a passive node, on standard output with nothing else.

use std::io::Write;

use super::context::{Ctx, Pick};
use crate::catalog::pyjson;
use crate::sync::info::{Cursor, sync_info as build};

pub fn sync_info(ctx: &mut Ctx, server: &str, last_wal: Option<String>, last_position: Option<u64>) {
    let Some(s) = ctx.server(server, Pick::DEFAULT) else { return };
    match build(&ctx.cfg.global, &s, &Cursor { last_wal, last_position }) {
        Ok(v) => {
            // As Python's json.dump with indent=4: no newline at the end.
            let text = pyjson::dumps(&v, Some(4), false);
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                ctx.out.error(format!("cannot write the sync-info of server {}: {e}", s.name));
            }
        }
        Err(e) => ctx.out.error(e.to_string()),
    }
}

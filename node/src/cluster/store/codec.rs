//! The one place stored values become bytes and back. Today bincode 2 through serde with
//! its standard configuration; bincode is unmaintained, so nothing else in the store knows
//! about it. Every value starts with a format byte so that a replacement codec can tell old
//! records from new ones instead of misreading them.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Format byte of bincode 2, serde path, `config::standard()`.
const BINCODE2_STANDARD: u8 = 1;

/// Why bytes could not be turned into a value (or, for a bug, a value into bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(String);

/// Encodes `value` for storage.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![BINCODE2_STANDARD];
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| CodecError(format!("cannot encode: {e}")))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes what [`encode`] wrote; trailing bytes or an unknown format byte are errors.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError("empty record".into())),
        Some((&BINCODE2_STANDARD, body)) => {
            let (value, read) = bincode::serde::decode_from_slice(body, bincode::config::standard())
                .map_err(|e| CodecError(format!("undecodable record ({} bytes): {e}", bytes.len())))?;
            if read != body.len() {
                return Err(CodecError(format!("{} unexpected trailing bytes", body.len() - read)));
            }
            Ok(value)
        }
        Some((format, _)) => Err(CodecError(format!("unknown record format {format}"))),
    }
}

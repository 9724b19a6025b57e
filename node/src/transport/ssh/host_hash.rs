//! OpenSSH's hashed known_hosts names (`|1|salt|hash`, `HashKnownHosts`): the hash is
//! HMAC-SHA1 of the name keyed with the salt. It only hides names from a reader of the
//! file; the host key itself is still compared in full.

use russh::keys::ssh_encoding::base64::{Base64, Encoding};

/// Whether `entry` (`|1|<base64 salt>|<base64 hash>`) is the hash of `name`.
pub(super) fn matches(entry: &str, name: &str) -> bool {
    let Some(rest) = entry.strip_prefix("|1|") else {
        return false;
    };
    let Some((salt, hash)) = rest.split_once('|') else {
        return false;
    };
    match (Base64::decode_vec(salt), Base64::decode_vec(hash)) {
        (Ok(salt), Ok(hash)) => hmac_sha1(&salt, name.as_bytes())[..] == hash[..],
        _ => false,
    }
}

fn hmac_sha1(key: &[u8], message: &[u8]) -> [u8; 20] {
    use hmac::{KeyInit, Mac};
    // HMAC takes a key of any length: new_from_slice cannot fail for it.
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(key) else { return [0; 20] };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_sha1_matches_rfc_2202() {
        assert_eq!(hex(&hmac_sha1(&[0x0b; 20], b"Hi There")), "b617318655057264e28bc0b6fb378c8ef146be00");
        assert_eq!(
            hex(&hmac_sha1(b"Jefe", b"what do ya want for nothing?")),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        // A key longer than the block is hashed first.
        assert_eq!(
            hex(&hmac_sha1(&[0xaa; 80], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "aa4ae5e15272d00e95705637ce8a3b55ed402112"
        );
    }

    #[test]
    fn names_hashed_by_ssh_keygen() {
        // `ssh-keygen -H` (OpenSSH 9.2) of `db1` and `[db1]:2222`.
        let plain = "|1|al/dusf5ikE2e/SQCTGooGdd+g8=|Jmr1rmALYrMWecu/Ze50LUCSCKc=";
        let ported = "|1|NX6D1+7zKuZhm3Sgo0pUY5cL8cw=|UAlWMJLqtSJVX6dgX/dQvISJULQ=";
        assert!(matches(plain, "db1"));
        assert!(!matches(plain, "db2"));
        assert!(!matches(plain, "[db1]:2222"));
        assert!(matches(ported, "[db1]:2222"));
        assert!(!matches("|1|not base64|x", "db1"));
        assert!(!matches("|2|al/dusf5ikE2e/SQCTGooGdd+g8=|Jmr1rmALYrMWecu/Ze50LUCSCKc=", "db1"));
    }
}

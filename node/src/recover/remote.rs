//! A recovery to another host: everything the destination receives, as units for the copy
//! engine, in one push (base backup, tablespaces, metadata, WAL, status and signal files).

use std::path::Path;
use std::sync::Arc;

use crate::archive::get_wal::{Delivery, WalSource as ArchiveSource};
use crate::transport::copy::{CopyError, CopyOptions, Unit, push};
use crate::transport::ssh::Remote;

use super::copy::BackupCopy;
use super::plan::backup_units;

impl BackupCopy<'_> {
    /// Everything, in one push to the remote host.
    pub fn to_remote(&self, remote: &Remote, opts: &CopyOptions) -> Result<(), CopyError> {
        let read = |path: &Path| {
            let path = path.display().to_string();
            move |source| CopyError::Read { path, source }
        };
        let backup_dir = self.l.base_dir.join(&self.b.id);
        let mut units =
            backup_units(&backup_dir, &self.b.id, self.b.info.compression.as_deref(), self.dest, self.placements)
                .map_err(read(&backup_dir))?;
        units.push(made(self.dest.join(".barman-recover.info"), self.b.info.to_text().into_bytes()));
        let wal_dest = self.wal_dest;
        units.push(Unit::Dir { dest: wal_dest.to_path_buf(), mode: 0o700 });
        // As Barman's: the directory even when get-wal copies nothing into it.
        units.push(Unit::Dir { dest: wal_dest.join("archive_status"), mode: 0o700 });
        let layout = Arc::new(self.l.clone());
        let codecs = Arc::new(self.codecs.clone());
        for e in self.needed {
            let (layout, codecs, name) = (layout.clone(), codecs.clone(), e.name.clone());
            let custom_decompression = self.custom_decompression;
            units.push(Unit::Made {
                dest: wal_dest.join(e.name.as_str()),
                mode: 0o600,
                size: e.size,
                produce: Box::new(move || {
                    let src = ArchiveSource { layout: &layout, codecs: &codecs, custom_decompression };
                    let mut out = Vec::with_capacity(16 << 20);
                    src.send(&name, Delivery::default(), &mut out).map_err(std::io::Error::other)?;
                    Ok(out)
                }),
            });
            if self.archive_status {
                units.push(made(wal_dest.join("archive_status").join(format!("{}.done", e.name)), Vec::new()));
            }
        }
        if let Some(signal) = self.signal {
            units.push(made(self.dest.join(signal), Vec::new()));
        }
        push(remote, units, opts)
    }
}

fn made(dest: std::path::PathBuf, data: Vec<u8>) -> Unit {
    Unit::Made { dest, mode: 0o600, size: data.len() as u64, produce: Box::new(move || Ok(data)) }
}

/// This host's fully qualified name as Python's `socket.getfqdn()` gives it to Barman: the
/// host name resolved, its address looked up again (`gethostbyaddr`), then the first of that
/// entry's name and aliases with a dot, else its name; the host name if any step fails.
pub fn fqdn() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let host = String::from_utf8_lossy(&buf[..end]).into_owned();
    reverse_entry(&host)
        .map_or(host, |names| names.iter().find(|n| n.contains('.')).or(names.first()).cloned().unwrap_or_default())
}

unsafe extern "C" {
    // In glibc, not declared by the libc crate.
    fn gethostbyaddr(addr: *const libc::c_void, len: libc::socklen_t, kind: libc::c_int) -> *mut libc::hostent;
}

/// The name and aliases of the host entry for the first address of `host`.
fn reverse_entry(host: &str) -> Option<Vec<String>> {
    let c_host = std::ffi::CString::new(host).ok()?;
    // SAFETY: zeroed addrinfo is a valid "no hints" value.
    let hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid C string and hints; res is freed below.
    if unsafe { libc::getaddrinfo(c_host.as_ptr(), std::ptr::null(), &hints, &mut res) } != 0 || res.is_null() {
        return None;
    }
    // SAFETY: res is a valid list from getaddrinfo; the address is read by its family's layout,
    // then the list is freed. gethostbyaddr's static result is copied at once.
    unsafe {
        let ai = &*res;
        let entry = match ai.ai_family {
            libc::AF_INET => {
                let sa = &*(ai.ai_addr as *const libc::sockaddr_in);
                gethostbyaddr((&sa.sin_addr as *const libc::in_addr).cast(), 4, libc::AF_INET)
            }
            libc::AF_INET6 => {
                let sa = &*(ai.ai_addr as *const libc::sockaddr_in6);
                gethostbyaddr((&sa.sin6_addr as *const libc::in6_addr).cast(), 16, libc::AF_INET6)
            }
            _ => std::ptr::null_mut(),
        };
        libc::freeaddrinfo(res);
        if entry.is_null() || (*entry).h_name.is_null() {
            return None;
        }
        let mut names = vec![std::ffi::CStr::from_ptr((*entry).h_name).to_string_lossy().into_owned()];
        let mut alias = (*entry).h_aliases;
        while !alias.is_null() && !(*alias).is_null() {
            names.push(std::ffi::CStr::from_ptr(*alias).to_string_lossy().into_owned());
            alias = alias.add(1);
        }
        Some(names)
    }
}

//! Who runs us: the effective uid's passwd entry.

use std::ffi::CStr;
use std::path::PathBuf;

/// The user name and home directory of the effective uid, as libpq and OpenSSH look them up
/// (`$USER` when the passwd entry cannot be read).
pub fn passwd_entry() -> (Option<String>, Option<PathBuf>) {
    let env_user = std::env::var("USER").ok().filter(|u| !u.is_empty());
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain data; all-zero is a valid (empty) value that
    // getpwuid_r overwrites.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live storage of the stated size; on success
    // the strings in `pwd` point into `buf`, which outlives their use below.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return (env_user, None);
    }
    // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string in `buf`.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned();
    let home = if pwd.pw_dir.is_null() {
        None
    } else {
        // SAFETY: as above, pw_dir is NUL-terminated inside `buf`.
        Some(PathBuf::from(unsafe { CStr::from_ptr(pwd.pw_dir) }.to_string_lossy().into_owned()))
    };
    (Some(name), home)
}

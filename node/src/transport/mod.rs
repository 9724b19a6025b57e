//! Moving bytes between hosts: our SSH client and the copy engine that streams files over it
//! (remote recovery now; sync-backup over SSH and the rsync backup method reuse it).

pub mod copy;
pub mod ssh;

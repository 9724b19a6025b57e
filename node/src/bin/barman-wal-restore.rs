//! `barman-wal-restore`: PostgreSQL's restore_command side of get-wal.

use clap::Parser;

fn main() {
    let args = barman::archive::client::wal_restore::Args::parse();
    std::process::exit(barman::archive::client::wal_restore::run(args));
}

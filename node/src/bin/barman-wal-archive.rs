//! `barman-wal-archive`: PostgreSQL's archive_command side of put-wal.

use clap::Parser;

fn main() {
    let args = barman::archive::client::wal_archive::Args::parse();
    std::process::exit(barman::archive::client::wal_archive::run(args));
}

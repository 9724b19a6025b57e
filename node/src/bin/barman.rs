//! `barman`: backup and recovery for PostgreSQL, with Barman's commands.

fn main() {
    let code = barman::cli::run(std::env::args_os().collect());
    std::process::exit(code);
}

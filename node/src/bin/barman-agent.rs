//! `barman-agent serve`: the PostgreSQL host's side of the rsync backup method (run over
//! SSH by the node, or beside it for local-rsync). It speaks on stdin/stdout only.

fn main() {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("serve"), None) => {
            if let Err(e) = barman::transport::agent::serve(std::io::stdin().lock(), std::io::stdout().lock()) {
                eprintln!("barman-agent: {e}");
                std::process::exit(1);
            }
        }
        (Some("--version"), None) => println!("barman-agent {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!("usage: barman-agent serve (the node runs it over SSH; it is not for interactive use)");
            std::process::exit(2);
        }
    }
}

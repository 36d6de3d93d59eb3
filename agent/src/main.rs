//! `agent`: the tether device agent and on-device CLI.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    tether_agent::cli::main()
}

//! `agent`: the tether device agent and on-device CLI.

fn main() -> std::process::ExitCode {
    tether_agent::cli::main()
}

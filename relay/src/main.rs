//! `relay`: the tether relay and its admin commands.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    tether_relay::cli::main()
}

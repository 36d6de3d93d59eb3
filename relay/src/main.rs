//! `relay`: the tether relay and its admin commands.

fn main() -> std::process::ExitCode {
    tether_relay::cli::main()
}

use std::process::ExitCode;

fn main() -> ExitCode {
    stale_guard::cli::main()
}

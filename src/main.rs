use std::process::ExitCode;

// The system allocator (glibc malloc), on purpose: for the webhook's small
// live heap mimalloc retained several times more memory, for no measurable
// throughput gain (docs/reliability.md, "Memory").

fn main() -> ExitCode {
    stale_guard::cli::main()
}

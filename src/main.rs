use std::process::ExitCode;

// The webhook allocates small, short-lived objects on every request from
// two worker threads; glibc's malloc spent ~15% of a request in
// allocation and arena locking (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    stale_guard::cli::main()
}

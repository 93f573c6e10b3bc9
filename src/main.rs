//! The `slotbandit` command line; each subcommand lives in `src/cli/`.

mod cli;

/// mimalloc: the job, the backfill and the service allocate per event and per request from
/// several threads, where it costs less than glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::run()
}

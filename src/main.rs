//! The `slotbandit` command line; each subcommand lives in `src/cli/`.

mod cli;

/// mimalloc: the job, the backfill and the service allocate per event and per request from
/// several threads, where it costs less than glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // mimalloc asks for transparent huge pages on its arenas, and the kernel then zeroes 2 MiB
    // on each first touch of pages that the short-lived batch buffers never fill; without them
    // the backfill spends less time in the kernel (bench/backfill/README.md). Failing to switch
    // them off is harmless.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    cli::run()
}

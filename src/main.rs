//! The `slotbandit` command line; each subcommand lives in `src/cli/`.

mod cli;

/// mimalloc: the job, the backfill and the service allocate per event and per request from
/// several threads, where it costs less than glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // mimalloc asks for transparent huge pages on its arenas, and the kernel then zeroes 2 MiB
    // on each first touch: an eighth of the backfill's CPU went to clearing pages the short-lived
    // batch buffers never fill. Without them the backfill spends less in the kernel and in user
    // mode (bench/backfill/README.md, session 6). Failing to switch them off is harmless.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    cli::run()
}

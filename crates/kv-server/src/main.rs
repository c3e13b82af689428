//! The `kv-server` binary.

use std::process::ExitCode;

use kv_server::config::Config;

/// A coordinated write allocates on one thread (an event loop decoding
/// the request) and frees on another (the cluster thread), and the
/// cluster thread allocates a message per replica: with the system
/// allocator a third of a coordinator's CPU went to malloc and free
/// (docs/performance.md). mimalloc's thread-local free lists make those
/// cheap; Redis links jemalloc for the same reason.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::parse_args();
    raise_fd_limit();
    match kv_server::run(config, |_| {}) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv-server: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the open-file limit to its hard maximum, so that thousands of
/// clients can connect (as Redis does at start-up).
fn raise_fd_limit() {
    // SAFETY: plain system calls on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

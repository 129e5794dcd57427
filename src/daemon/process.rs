//! Process-wide settings of the daemon, made before its runtime starts a thread.

use std::fs::File;

/// Read-ahead allocates and frees a multi-MiB buffer per ranged GET. By default glibc
/// serves those with mmap and returns them with munmap, so every byte read costs a
/// page fault in the kernel: a third of the daemon's CPU time in a sequential read.
/// Keeping them on the heap (bounded by the read-ahead budget anyway) avoids it.
/// Block-cache reads allocate on blocking-pool threads and free on runtime
/// threads; with glibc's default of one arena per thread the freed memory sits
/// in many arenas at once (a re-read from the disk cache peaked near 300 MiB).
/// Two arenas keep the peak at that of a cold read, at no measurable cost.
pub(super) fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters and is called before the
    // runtime starts any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The block cache keeps block files open, one descriptor each; many systems
/// start processes with a soft limit of 1024 descriptors and a far higher hard
/// limit. Raise the soft limit to the hard one (the cache uses a quarter).
pub(super) fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!("cannot raise the open files limit to {hard}: {e}");
    }
}

/// Points standard input, output and error at /dev/null so a detached daemon holds
/// no terminal.
pub(super) fn detach_stdio() {
    use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout};
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        // Each replaces its descriptor atomically; std's handles keep referring
        // to 0-2 by number. A failure leaves that one pointing where it did.
        let _ = dup2_stdin(&null);
        let _ = dup2_stdout(&null);
        let _ = dup2_stderr(&null);
    }
}

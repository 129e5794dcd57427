//! Process-wide settings of the daemon, made before its runtime starts a thread.

use std::fs::File;

/// Uploads read each part (8 MiB) into a buffer of its own. By default glibc
/// serves those with mmap and returns them with munmap, so every byte costs a page
/// fault in the kernel. Keeping them on the heap avoids it. (Read-ahead's part
/// buffers are mapped and reused by the store itself.) Larger allocations, such
/// as the FUSE request buffers (16 MiB each, mostly never touched), are mapped:
/// from the heap they would be resident from the start. Memory freed is kept for
/// reuse while the volume is busy and given back once it is idle
/// ([`trim_when_idle`]).
///
/// Block-cache reads allocate on blocking-pool threads and free on runtime
/// threads, and upload parts are read on one thread and freed on another; with
/// glibc's default of one arena per thread the freed memory sits in many arenas
/// at once (a re-read from the disk cache peaked near 300 MiB), and even two
/// arenas each kept a whole upload window of parts (a 1 GiB write peaked at
/// 143 MiB, 85 MiB with one arena). One arena keeps the peak at what the
/// volume holds at once; the daemon allocates little besides, so the lock it
/// shares costs nothing measurable.
pub(super) fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters and is called before the
    // runtime starts any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 12 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Gives the memory freed since the volume was last busy back to the system, once
/// it has sent no request for two seconds. The allocator keeps freed memory for
/// reuse (see [`tune_allocator`]), which a busy volume wants and an idle one
/// should not hold: a platform host runs one volume per customer, most of them
/// idle at any moment.
pub(super) async fn trim_when_idle(requests: std::sync::Arc<crate::store::counted::RequestStats>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Seconds since the request count last moved.
    let (mut last, mut quiet) = (requests.total(), 0u32);
    loop {
        tick.tick().await;
        let now = requests.total();
        quiet = if now == last {
            quiet.saturating_add(1)
        } else {
            0
        };
        last = now;
        if quiet == 2 {
            // SAFETY: malloc_trim only returns free memory to the system; it is
            // safe to call at any time from any thread.
            unsafe { libc::malloc_trim(0) };
        }
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

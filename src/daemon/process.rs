//! Process-wide settings of the daemon, made before its runtime starts a thread,
//! and the memory it gives back once idle.

use std::fs::File;
use std::ops::Range;

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
/// it has sent no request for two seconds, and the store's free GET buffers once
/// it has read nothing for two seconds. The allocator keeps freed memory for
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
        // Busy or not: a volume that stopped reading (writing now, say) keeps
        // no GET buffers it does not use.
        crate::store::s3::release_idle_buffers();
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
            release_program_pages();
        }
    }
}

/// Unmaps the pages of the program's own code and read-only data from this
/// process, leaving them in the page cache.
///
/// Starting a volume runs much of the program once (the S3 client's setup, the
/// checks of the bucket, the mount), and every page of it that ran stays mapped,
/// counted in the process's RSS, though a volume at rest never runs it again: a
/// worker held about 13 MiB of the program mapped, its supervisor 3. The pages
/// stay in the page cache, which every process of the program shares, and those
/// the volume runs again are mapped back when it does (a minor fault while the
/// page cache still holds them); at rest it then has mapped only what it runs
/// at rest. This lowers RSS only: the pages are shared, and what the host's
/// memory holds is the same. Called once a process has nothing to do (the
/// supervisor once its worker serves, a worker once its volume has sent no
/// request for two seconds).
///
/// Only the main program's segments mapped without write permission are
/// touched, and of them only pages that are the file's own ([`file_pages`]):
/// a page the process has a copy of (text relocated at load, a debugger's
/// breakpoint, code copied into anonymous memory in its place) is left alone,
/// since dropping it would lose the copy. (A breakpoint or uprobe set in the
/// microseconds between reading the page map and unmapping may still be lost;
/// no data can be.)
pub(super) fn release_program_pages() {
    let Ok(pagemap) = File::open("/proc/self/pagemap") else {
        return;
    };
    for segment in read_only_segments() {
        for run in file_pages(&pagemap, segment) {
            // SAFETY: `run` is pages of the program's file that the process
            // had no copy of a moment ago (above; nothing of the program writes
            // them): MADV_DONTNEED only unmaps them, and a later access maps the
            // same file pages back.
            unsafe {
                libc::madvise(
                    run.start as *mut libc::c_void,
                    run.len(),
                    libc::MADV_DONTNEED,
                )
            };
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// The runs of pages of `range` (whole pages) that hold nothing of the
/// process's own, by its page map: mapped from the file, or neither mapped nor
/// swapped out. A page mapped but not from a file, or swapped out, is a private
/// copy. No runs when the page map cannot be read.
fn file_pages(pagemap: &File, range: Range<usize>) -> Vec<Range<usize>> {
    use std::os::unix::fs::FileExt;
    let page = page_size();
    let mut entries = vec![0u8; range.len() / page * 8];
    if pagemap
        .read_exact_at(&mut entries, (range.start / page * 8) as u64)
        .is_err()
    {
        return Vec::new();
    }
    let mut runs = Vec::new();
    let mut run: Option<usize> = None;
    for (i, entry) in entries.chunks_exact(8).enumerate() {
        let entry = u64::from_le_bytes(entry.try_into().expect("8 bytes"));
        let bit = |n: u32| entry >> n & 1 == 1;
        // Bits 63: present; 62: swapped; 61: a file page (or shared memory).
        let the_files = if bit(63) { bit(61) } else { !bit(62) };
        let at = range.start + i * page;
        match (the_files, run) {
            (true, None) => run = Some(at),
            (false, Some(start)) => {
                runs.push(start..at);
                run = None;
            }
            _ => {}
        }
    }
    runs.extend(run.map(|start| start..range.end));
    runs
}

/// The whole pages of the main program's loaded segments mapped without write
/// permission (as far as they hold the file: the kernel or the loader zeroes
/// what lies past it).
fn read_only_segments() -> Vec<Range<usize>> {
    unsafe extern "C" fn program(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        ranges: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid `info` whose program headers
        // are `dlpi_phnum` entries at `dlpi_phdr`, and `ranges` is the vector
        // handed to it below.
        let (info, ranges) = unsafe { (&*info, &mut *(ranges as *mut Vec<Range<usize>>)) };
        // SAFETY: as above.
        let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
        let page = page_size();
        for header in headers {
            if header.p_type != libc::PT_LOAD || header.p_flags & libc::PF_W != 0 {
                continue;
            }
            let start = (info.dlpi_addr + header.p_vaddr) as usize;
            let end = start + header.p_filesz as usize;
            let (start, end) = (start.next_multiple_of(page), end / page * page);
            if start < end {
                ranges.push(start..end);
            }
        }
        // The first object visited is the main program: stop there.
        1
    }
    let mut ranges = Vec::new();
    // SAFETY: the callback only reads what it is given and writes `ranges`,
    // which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(
            Some(program),
            &mut ranges as *mut Vec<Range<usize>> as *mut libc::c_void,
        )
    };
    ranges
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// How many of the pages of `ranges` are mapped, read from this process's
    /// page map with nothing but system calls into `entries` (8 bytes a page),
    /// so that reading it maps none of the program's pages but this function's.
    fn mapped(pagemap: &File, ranges: &[Range<usize>], entries: &mut [u8]) -> usize {
        let page = page_size();
        let mut at = 0;
        for range in ranges {
            let len = range.len() / page * 8;
            // SAFETY: `entries` has room for `len` bytes from `at` (the caller
            // sized it for all the ranges).
            let read = unsafe {
                libc::pread(
                    pagemap.as_raw_fd(),
                    entries[at..].as_mut_ptr().cast(),
                    len,
                    (range.start / page * 8) as libc::off_t,
                )
            };
            assert_eq!(read, len as isize);
            at += len;
        }
        entries[..at]
            .chunks_exact(8)
            .filter(|entry| u64::from_le_bytes((*entry).try_into().unwrap()) >> 63 == 1)
            .count()
    }

    /// Data of the program's writable segment (not zero, so in the file's
    /// `.data`, not `.bss`), which must survive.
    static WRITTEN: AtomicU64 = AtomicU64::new(1);

    /// Runs in a process of its own (it starts one, running this test alone), so
    /// that no other test runs the program's code while it counts.
    #[test]
    fn the_programs_pages_are_unmapped_and_mapped_back_when_they_run_again() {
        const ALONE: &str = "S3VOL_TEST_PROGRAM_PAGES_ALONE";
        let name = "daemon::process::tests::the_programs_pages_are_unmapped_and_mapped_back_when_they_run_again";
        if std::env::var_os(ALONE).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--nocapture"])
                .args(["--test-threads", "1"])
                .env(ALONE, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && text.contains("1 passed"), "{text}");
            return;
        }
        let page = page_size();
        let ranges = read_only_segments();
        // The program's code is among them: this test's own.
        let here = the_programs_pages_are_unmapped_and_mapped_back_when_they_run_again as *const ()
            as usize;
        assert!(ranges.iter().any(|r| r.contains(&here)), "{ranges:x?}");
        let pages: usize = ranges.iter().map(|r| r.len() / page).sum();
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let mut entries = vec![0u8; pages * 8];
        // Every page of them mapped, as if all had run.
        for range in &ranges {
            for at in range.clone().step_by(page) {
                // SAFETY: a readable page of the program's.
                unsafe { std::ptr::read_volatile(at as *const u8) };
            }
        }
        assert_eq!(mapped(&pagemap, &ranges, &mut entries), pages);
        WRITTEN.store(0x5a5a, Ordering::Relaxed);
        release_program_pages();
        let after = mapped(&pagemap, &ranges, &mut entries);
        // The few that ran in between (returning, reading the page map: some 15
        // pages in a debug build) are mapped back, each with the pages around it
        // that the kernel maps with it (16 here, as much as a large folio where
        // the page cache holds the program in those): 6% of them here.
        assert!(after * 2 < pages, "{after} of {pages} pages still mapped");
        // Code that had not run since is mapped back as it runs, and does its
        // work: formatting and parsing a number.
        let text = format!("{here:x}");
        assert_eq!(usize::from_str_radix(&text, 16).unwrap(), here);
        assert_eq!(WRITTEN.load(Ordering::Relaxed), 0x5a5a);
        eprintln!("{pages} pages mapped before, {after} after");
    }

    #[test]
    fn a_page_the_process_has_a_copy_of_is_not_released() {
        let page = page_size();
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &vec![b'f'; 4 * page]).unwrap();
        // SAFETY: a new private mapping of the file, unmapped below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        let start = map as usize;
        // SAFETY: within the mapping: page 0 read (the file's), page 1 written
        // (a copy of the process's own), pages 2 and 3 never touched; then the
        // mapping made read-only, as a relocated segment is.
        unsafe {
            std::ptr::read_volatile(start as *const u8);
            std::ptr::write_volatile((start + page) as *mut u8, b'c');
            assert_eq!(libc::mprotect(map, 4 * page, libc::PROT_READ), 0);
        }
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let runs = file_pages(&pagemap, start..start + 4 * page);
        assert_eq!(
            runs,
            [start..start + page, start + 2 * page..start + 4 * page]
        );
        for run in runs {
            // SAFETY: pages of the mapping above.
            unsafe {
                libc::madvise(
                    run.start as *mut libc::c_void,
                    run.len(),
                    libc::MADV_DONTNEED,
                )
            };
        }
        // SAFETY: within the mapping, which is then unmapped.
        unsafe {
            assert_eq!(std::ptr::read_volatile((start + page) as *const u8), b'c');
            assert_eq!(std::ptr::read_volatile(start as *const u8), b'f');
            libc::munmap(map, 4 * page);
        }
    }
}

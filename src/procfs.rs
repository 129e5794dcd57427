//! What `/proc` says of the processes that call the volume.

/// What `/proc/TID/status` says of a calling thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thread {
    /// Its process (thread group).
    pub process: u32,
    /// It has no memory map left: it is exiting (past the point where the
    /// kernel releases a dying process's memory, before it closes its files).
    pub exiting: bool,
}

/// Thread `tid`, as its status says. `None` when it cannot be told: 0 (a
/// caller outside the mount's PID namespace) or a thread already gone.
/// Safe to read while the thread waits on the volume (its status takes no
/// lock an `execve` holds).
pub fn thread(tid: u32) -> Option<Thread> {
    if tid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    thread_in(&status)
}

/// [`thread`] from the text of `/proc/TID/status`.
fn thread_in(status: &str) -> Option<Thread> {
    let process = status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()?;
    // The memory lines are there while the thread has a memory map.
    let exiting = !status.lines().any(|line| line.starts_with("VmSize:"));
    Some(Thread { process, exiting })
}

/// The process (thread group) of thread `tid`, as the kernel names a caller by
/// its thread. `None` when it cannot be told (see [`thread`]).
pub fn thread_group(tid: u32) -> Option<u32> {
    thread(tid).map(|thread| thread.process)
}

/// The signal that is ending thread `tid`, which [`thread`] found exiting,
/// while it exits because of one (killed, or crashed): `None` when it exits
/// normally (`exit`, a return from `main`), or when that cannot be told (a
/// thread already gone, or a process this one may not trace, whose exit code
/// the kernel hides).
///
/// Never ask of a thread that is not exiting while it waits on the volume:
/// Linux takes the exec lock of the thread to show its stat, and a thread in
/// `execve` closes its close-on-exec files holding that lock, so the read
/// would wait for the close, and the close for the read.
///
/// The kernel sets `PF_EXITING` in the flags of a thread that has begun to
/// exit, and its exit code (the status `waitpid` will report) before it
/// closes the process's files; the low seven bits of that code are the
/// signal that ended the process, 0 for a normal exit. Every thread of a
/// process shares the process's exit code, so the answer holds whichever
/// thread closes the last descriptor.
pub fn fatal_signal(tid: u32) -> Option<i32> {
    if tid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    fatal_signal_in(&stat)
}

/// [`fatal_signal`] from the text of `/proc/TID/stat`.
fn fatal_signal_in(stat: &str) -> Option<i32> {
    /// include/linux/sched.h: the thread is being shut down.
    const PF_EXITING: u64 = 0x4;
    // The command name, in parentheses, may hold spaces and parentheses of its
    // own: the fields that follow start after the last `)`. Of those, the
    // state is field 3 of proc_pid_stat(5), the flags field 9 and the exit
    // code field 52.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let flags: u64 = fields.get(9 - 3)?.parse().ok()?;
    let exit_code: i32 = fields.get(52 - 3)?.parse().ok()?;
    let signal = exit_code & 0x7f;
    (flags & PF_EXITING != 0 && signal != 0).then_some(signal)
}

/// Whether this process runs in the host's first PID namespace, where every
/// process on the host has a PID it can see. In any other (a container's
/// without the host's PIDs), the kernel names a caller from outside the
/// namespace as PID 0.
pub fn in_host_pid_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    // The kernel gives its first PID namespace this inode number
    // (PROC_PID_INIT_INO in include/linux/proc_ns.h), and no other one.
    const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;
    std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == PROC_PID_INIT_INO)
}

/// The command name of process `pid` (`/proc/PID/comm`), if it is still there.
pub fn command_name(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end_matches('\n').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_its_own_thread_group() {
        let me = std::process::id();
        assert_eq!(thread_group(me), Some(me));
        assert_eq!(thread_group(0), None);
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(command_name(me).unwrap(), comm.trim_end());
        // Running, it is ending on no signal.
        assert_eq!(fatal_signal(me), None);
        assert_eq!(fatal_signal(0), None);
        assert_eq!(
            thread(me),
            Some(Thread {
                process: me,
                exiting: false
            })
        );
    }

    #[test]
    fn a_thread_without_memory_is_exiting() {
        let running = "Name:\tsh\nTgid:\t42\nPid:\t43\nVmPeak:\t  1 kB\nVmSize:\t  1 kB\n";
        assert_eq!(
            thread_in(running),
            Some(Thread {
                process: 42,
                exiting: false
            })
        );
        let dying = "Name:\tsh\nTgid:\t42\nPid:\t43\nThreads:\t1\n";
        assert_eq!(
            thread_in(dying),
            Some(Thread {
                process: 42,
                exiting: true
            })
        );
        assert_eq!(thread_in("Name:\tsh\n"), None);
    }

    /// A /proc/TID/stat line with `flags` and `exit_code`, its command name
    /// holding what would trip a naive parser.
    fn stat_line(flags: u64, exit_code: i32) -> String {
        let mut fields = vec!["0".to_string(); 52 - 2];
        fields[0] = "R".into();
        fields[9 - 3] = flags.to_string();
        fields[52 - 3] = exit_code.to_string();
        format!("4242 (a) b (c)) {}\n", fields.join(" "))
    }

    #[test]
    fn a_thread_exiting_on_a_signal_is_told_from_one_exiting_normally() {
        const PF_EXITING: u64 = 0x4;
        const PF_SIGNALED: u64 = 0x400;
        // SIGKILL; SIGSEGV with a core dumped (bit 7).
        assert_eq!(
            fatal_signal_in(&stat_line(PF_EXITING | PF_SIGNALED, 9)),
            Some(9)
        );
        assert_eq!(
            fatal_signal_in(&stat_line(PF_EXITING | PF_SIGNALED, 0x80 | 11)),
            Some(11)
        );
        // exit(3), and a thread of a process exiting normally that the kernel
        // marked signalled as it stopped it: the exit code says no signal.
        assert_eq!(fatal_signal_in(&stat_line(PF_EXITING, 3 << 8)), None);
        assert_eq!(
            fatal_signal_in(&stat_line(PF_EXITING | PF_SIGNALED, 0)),
            None
        );
        // Not exiting (yet): a code left from before says nothing.
        assert_eq!(fatal_signal_in(&stat_line(0, 9)), None);
        assert_eq!(fatal_signal_in("4242 (truncated"), None);
        assert_eq!(fatal_signal_in("4242 (x) R 1 2"), None);
    }
}

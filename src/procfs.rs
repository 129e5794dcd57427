//! What `/proc` says of the processes that call the volume.

/// The process (thread group) of thread `tid`, as the kernel names a caller by
/// its thread. `None` when it cannot be told: 0 (a caller outside the mount's
/// PID namespace) or a thread already gone.
pub fn thread_group(tid: u32) -> Option<u32> {
    if tid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
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
    }
}

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

//! The kernel side of a volume's life: mounting, serving, unmounting.
//!
//! With the privilege to mount (root, or CAP_SYS_ADMIN in a container), s3vol
//! calls mount(2) itself with the type `fuse.s3vol`, so `findmnt`, `mount -t`
//! and `umount -t` know the volume for what it is (fuser's own mount would say
//! `fuse`). Without it, s3vol goes through the setuid fusermount3, as libfuse does,
//! which builds the same type from the `subtype` option.
//!
//! Stopping has three strengths: [`VolumeHandle::unmount`] is umount(8), which
//! the kernel refuses while files are open; [`VolumeHandle::detach`] is
//! `umount -l`, which removes the volume from the directory tree at once and
//! keeps serving the files still open until they are closed; and
//! [`VolumeHandle::abort`] ends the connection, failing whatever is still open.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use fuser::{Config, Session, SessionACL};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use tracing::debug;

use super::FuseAdapter;

/// The filesystem type the kernel shows for a volume.
pub const FSTYPE: &str = "fuse.s3vol";

/// FUSE request threads. All read the one descriptor the volume's supervisor
/// also holds, never clones of it: a request read through a clone dies with
/// the clone's worker (the kernel fails it), while one read through the
/// shared descriptor stays pending until a new worker asks the kernel to send
/// it again ([`resend`]). Each decodes a request and either answers it at once
/// (reads of cached data, writes into a staging file, directory listings already
/// fetched) or hands it to tokio, so a few suffice; more than one keeps a slow
/// answer from serializing the kernel.
const FUSE_THREADS: usize = 4;

/// Who besides the user who mounted may use the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Owner,
    OwnerAndRoot,
    Everyone,
}

/// How to mount.
pub struct MountPlan {
    /// Shown as the mount's source: `BUCKET/PREFIX`.
    pub source: String,
    pub read_only: bool,
    pub noexec: bool,
    pub access: Access,
}

/// The kernel's caches of a volume, corrected through FUSE notifications.
struct KernelNotifier(fuser::Notifier);

impl crate::fs::kernel::KernelCache for KernelNotifier {
    fn attributes_changed(&self, ino: u64) {
        // A negative offset invalidates the attributes alone.
        if let Err(e) = self.0.inval_inode(fuser::INodeNo(ino), -1, 0) {
            debug!(
                ino,
                "the kernel did not take the invalidation of attributes: {e}"
            );
        }
    }

    fn drop_pages(&self, ino: u64) {
        // Offset 0, length 0: every page of the file.
        if let Err(e) = self.0.inval_inode(fuser::INodeNo(ino), 0, 0) {
            debug!(
                ino,
                "the kernel did not take the invalidation of pages: {e}"
            );
        }
    }
}

/// A mounted volume, ready to serve.
pub struct Volume {
    session: Session<FuseAdapter>,
    handle: VolumeHandle,
}

/// What it takes to stop a volume from another thread.
#[derive(Clone, Debug)]
pub struct VolumeHandle {
    mountpoint: PathBuf,
    /// `MAJOR:MINOR` of the mount, which also names its FUSE connection.
    device: Option<String>,
}

/// Mounts `adapter` at `mountpoint` (an absolute, canonical path). The kernel has
/// accepted the mount and the FUSE handshake is done when this returns.
pub fn mount(adapter: FuseAdapter, mountpoint: &Path, plan: &MountPlan) -> io::Result<Volume> {
    let fd = match mount_directly(mountpoint, plan)? {
        Some(fd) => fd,
        None => {
            debug!("no privilege to mount; going through fusermount3");
            mount_with_fusermount(mountpoint, plan)?
        }
    };
    let handle = VolumeHandle {
        mountpoint: mountpoint.to_path_buf(),
        device: crate::mountinfo::device(mountpoint),
    };
    let fs = adapter.fs.clone();
    let session =
        Session::from_fd(adapter, fd, session_acl(plan.access), config()).inspect_err(|_| {
            let _ = handle.detach();
        })?;
    fs.set_kernel_cache(Arc::new(KernelNotifier(session.notifier())));
    fs.set_backings(Arc::new(KernelBackings(connection_of(&session)?)));
    handle.tune_kernel_readahead();
    Ok(Volume { session, handle })
}

fn session_acl(access: Access) -> SessionACL {
    match access {
        Access::Owner => SessionACL::Owner,
        Access::OwnerAndRoot => SessionACL::RootAndOwner,
        Access::Everyone => SessionACL::All,
    }
}

fn config() -> Config {
    let mut config = Config::default();
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = false;
    config
}

/// The descriptor of a mounted volume's FUSE connection, for its supervisor
/// to hold.
pub fn connection(volume: &Volume) -> io::Result<OwnedFd> {
    connection_of(&volume.session)
}

fn connection_of(session: &Session<FuseAdapter>) -> io::Result<OwnedFd> {
    use std::os::fd::AsFd;
    session.as_fd().try_clone_to_owned()
}

/// The kernel's backing files of a volume's connection (FUSE passthrough).
struct KernelBackings(OwnedFd);

nix::ioctl_write_ptr!(backing_close, 229, 2, u32);

impl crate::fs::passthrough::Backings for KernelBackings {
    fn open(&self, file: &File) -> io::Result<u32> {
        fuser::BackingId::create_raw(&self.0, file)
    }

    fn close(&self, id: u32) {
        // SAFETY: FUSE_DEV_IOC_BACKING_CLOSE reads one u32 from the pointer.
        if let Err(e) = unsafe { backing_close(self.0.as_raw_fd(), &id) } {
            debug!(id, "the kernel did not close a backing file: {e}");
        }
    }
}

/// Serves the volume at `mountpoint` whose FUSE connection is `fd`, which a
/// worker before this one served: the kernel sent its INIT then, and sends
/// none now.
///
/// fuser starts every session with the INIT exchange. So the session is
/// begun on one end of a socket pair, whose other end plays the kernel's part
/// of that exchange; then the connection takes the socket's place under the
/// same descriptor number (dup2), and every read, reply and notification of
/// the session goes to the kernel.
///
/// `device` is the mount's `MAJOR:MINOR` as the first worker found it: the
/// mountpoint may hold another mount by now (the volume detached with `umount
/// -l`), which this volume's stop must never touch.
pub fn take_over(
    adapter: FuseAdapter,
    fd: OwnedFd,
    mountpoint: &Path,
    plan: &MountPlan,
    device: Option<String>,
) -> io::Result<Volume> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (ours, kernel_part) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    nix::unistd::write(&kernel_part, &init_request())?;
    let fs = adapter.fs.clone();
    let session = Session::from_fd(adapter, ours, session_acl(plan.access), config())?;
    {
        use std::os::fd::{AsFd, AsRawFd};
        let number = session.as_fd().as_raw_fd();
        // SAFETY: dup3 closes the socket under the session's descriptor number
        // and puts the connection there (close-on-exec) in one step; the
        // session's File goes on owning that number, and no thread uses it yet.
        if unsafe { libc::dup3(fd.as_raw_fd(), number, libc::O_CLOEXEC) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    drop(kernel_part);
    drop(fd);
    fs.set_kernel_cache(Arc::new(KernelNotifier(session.notifier())));
    fs.set_backings(Arc::new(KernelBackings(connection_of(&session)?)));
    Ok(Volume {
        session,
        handle: VolumeHandle::new(mountpoint, device),
    })
}

/// The FUSE INIT request a kernel sends first: protocol 7.31 (all that fuser
/// needs to hear), no capability but passthrough. The reply, which the kernel would take as
/// the filesystem's settings, is never read: the kernel keeps those of the
/// first INIT for the connection's life.
fn init_request() -> Vec<u8> {
    const FUSE_INIT: u32 = 26;
    let header_len = 40;
    let init_len = 64;
    let mut request = Vec::with_capacity(header_len + init_len);
    let mut put = |bytes: &[u8]| request.extend_from_slice(bytes);
    put(&((header_len + init_len) as u32).to_ne_bytes()); // len
    put(&FUSE_INIT.to_ne_bytes()); // opcode
    put(&1u64.to_ne_bytes()); // unique
    put(&0u64.to_ne_bytes()); // nodeid
    put(&0u32.to_ne_bytes()); // uid
    put(&0u32.to_ne_bytes()); // gid
    put(&0u32.to_ne_bytes()); // pid
    put(&0u32.to_ne_bytes()); // total_extlen, padding
    put(&7u32.to_ne_bytes()); // major
    put(&31u32.to_ne_bytes()); // minor
    put(&(1u32 << 20).to_ne_bytes()); // max_readahead
    // FUSE_INIT_EXT, and in the second word FUSE_PASSTHROUGH: whether the
    // connection has it, the kernel says at the first backing file.
    put(&(1u32 << 30).to_ne_bytes()); // flags
    put(&(1u32 << (37 - 32)).to_ne_bytes()); // flags2
    put(&[0u8; 44]); // unused
    request
}

/// FUSE_NOTIFY_RESEND: the kernel puts every request read through `fd` and
/// not yet answered back in the queue, to be read again (Linux 6.9 and
/// later). Fails with EINVAL where the kernel cannot.
pub fn resend(fd: &OwnedFd) -> io::Result<()> {
    const FUSE_NOTIFY_RESEND: i32 = 7;
    let mut header = Vec::with_capacity(16);
    header.extend_from_slice(&16u32.to_ne_bytes());
    header.extend_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    header.extend_from_slice(&0u64.to_ne_bytes());
    let written = nix::unistd::write(fd, &header)?;
    if written != header.len() {
        return Err(io::Error::other("short write of FUSE_NOTIFY_RESEND"));
    }
    Ok(())
}

/// Whether the running kernel can send a FUSE request again
/// (FUSE_NOTIFY_RESEND, Linux 6.9): what a volume needs to outlive its
/// worker.
pub fn kernel_resends() -> bool {
    let Ok(release) = nix::sys::utsname::uname() else {
        return false;
    };
    let release = release.release().to_string_lossy().to_string();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (6, 9)
}

/// mount(2) of type fuse.s3vol on a new /dev/fuse connection. `None` when this
/// process may not open /dev/fuse or mount.
fn mount_directly(mountpoint: &Path, plan: &MountPlan) -> io::Result<Option<OwnedFd>> {
    let device = match File::options().read(true).write(true).open("/dev/fuse") {
        Ok(device) => device,
        // Where only root may open it, fusermount3 (setuid root) still can.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(None),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot open /dev/fuse: {e}"),
            ));
        }
    };
    // rootmode only tells the kernel the root is a directory; the attributes
    // s3vol reports replace it.
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={},default_permissions",
        device.as_raw_fd(),
        libc::S_IFDIR,
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );
    if plan.access != Access::Owner {
        // Root-and-owner is enforced by fuser on each request.
        data.push_str(",allow_other");
    }
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if plan.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    if plan.noexec {
        flags |= MsFlags::MS_NOEXEC;
    }
    match nix::mount::mount(
        Some(plan.source.as_str()),
        mountpoint,
        Some(FSTYPE),
        flags,
        Some(data.as_str()),
    ) {
        Ok(()) => Ok(Some(device.into())),
        Err(Errno::EPERM) => Ok(None),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Mounts through fusermount3, the setuid helper of the fuse3 package, as
/// libfuse does for users: it opens /dev/fuse, mounts, and sends the descriptor
/// back over the socket named in `_FUSE_COMMFD`. Its complaints (such as
/// allow_other without user_allow_other in /etc/fuse.conf) become the error.
fn mount_with_fusermount(mountpoint: &Path, plan: &MountPlan) -> io::Result<OwnedFd> {
    let escape = |text: &str| text.replace('\\', "\\\\").replace(',', "\\,");
    let mut options = vec![
        format!("fsname={}", escape(&plan.source)),
        "subtype=s3vol".to_string(),
        if plan.read_only { "ro" } else { "rw" }.to_string(),
        "nosuid,nodev,default_permissions".to_string(),
    ];
    if plan.noexec {
        options.push("noexec".into());
    }
    if plan.access != Access::Owner {
        options.push("allow_other".into());
    }
    let (ours, theirs) = UnixStream::pair()?;
    // dup() leaves close-on-exec off, so fusermount3 inherits this copy.
    let inherited = nix::unistd::dup(&theirs)?;
    drop(theirs);
    let child = Command::new("fusermount3")
        .arg("-o")
        .arg(options.join(","))
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", inherited.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run fusermount3: {e}")))?;
    drop(inherited);
    let received = receive_descriptor(&ours);
    let output = child.wait_with_output()?;
    received.map_err(|e| {
        let said = String::from_utf8_lossy(&output.stderr).trim().to_string();
        io::Error::other(if said.is_empty() {
            format!("fusermount3 failed: {e}")
        } else {
            said
        })
    })
}

/// The descriptor fusermount3 sends as SCM_RIGHTS.
fn receive_descriptor(socket: &UnixStream) -> io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(std::os::fd::RawFd);
    let message = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            other => break other?,
        }
    };
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = control
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this descriptor in our table for
            // this message; nothing else refers to it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(io::Error::other("no descriptor received"))
}

impl Volume {
    pub fn handle(&self) -> VolumeHandle {
        self.handle.clone()
    }

    /// Serves requests until the volume is unmounted (after the last open file
    /// of a detached volume is closed) or its connection aborted.
    pub fn run(self) -> io::Result<()> {
        self.session.run()
    }
}

impl VolumeHandle {
    /// The mount's `MAJOR:MINOR`, if known.
    pub fn device(&self) -> Option<&str> {
        self.device.as_deref()
    }

    /// The volume mounted at `mountpoint` as the kernel's device `device`
    /// (`MAJOR:MINOR`, from /proc/self/mountinfo).
    pub fn new(mountpoint: &Path, device: Option<String>) -> Self {
        Self {
            mountpoint: mountpoint.to_path_buf(),
            device,
        }
    }

    /// umount(8): fails with [`io::ErrorKind::ResourceBusy`] while files are open.
    pub fn unmount(&self) -> io::Result<()> {
        self.umount(false)
    }

    /// `umount -l`: the volume leaves the directory tree now and is served until
    /// its last open file is closed.
    pub fn detach(&self) -> io::Result<()> {
        self.umount(true)
    }

    /// Whether the mount at the mountpoint is this volume: someone else may have
    /// detached it (`umount -l`) and mounted something else there since.
    fn is_mounted_here(&self) -> bool {
        match &self.device {
            Some(device) => crate::mountinfo::device(&self.mountpoint).as_ref() == Some(device),
            // Unknown since the mount: the path is all there is to go by.
            None => true,
        }
    }

    /// umount2(2) of this volume's mount, never of another one at the same path:
    /// [`io::ErrorKind::NotFound`] when the volume is no longer mounted there.
    fn umount(&self, lazy: bool) -> io::Result<()> {
        if !self.is_mounted_here() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "the volume is no longer mounted at {}",
                    self.mountpoint.display()
                ),
            ));
        }
        let flags = if lazy {
            MntFlags::MNT_DETACH
        } else {
            MntFlags::empty()
        };
        match nix::mount::umount2(&self.mountpoint, flags) {
            Ok(()) => Ok(()),
            // Only root may umount2(); users unmount their own FUSE mounts
            // through the setuid fusermount3.
            Err(Errno::EPERM) => {
                let mut command = Command::new("fusermount3");
                command.arg("-u");
                if lazy {
                    command.arg("-z");
                }
                let out = command.arg(&self.mountpoint).output()?;
                if out.status.success() {
                    return Ok(());
                }
                let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
                let kind = if message.contains("busy") {
                    io::ErrorKind::ResourceBusy
                } else {
                    io::ErrorKind::Other
                };
                Err(io::Error::new(kind, message))
            }
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// Ends the FUSE connection through fusectl: every request still waiting and
    /// every later one fails, and [`Volume::run`] returns.
    pub fn abort(&self) -> io::Result<()> {
        let device = self
            .device
            .as_deref()
            .ok_or_else(|| io::Error::other("the volume's device number is unknown"))?;
        let parse = |n: Option<&str>| n.and_then(|n| n.parse::<u32>().ok());
        let mut parts = device.split(':');
        let (Some(major), Some(minor)) = (parse(parts.next()), parse(parts.next())) else {
            return Err(io::Error::other(format!("odd device number {device:?}")));
        };
        // The kernel's internal encoding, which names the connection's directory.
        let connection = (major << 20) | minor;
        let abort = format!("/sys/fs/fuse/connections/{connection}/abort");
        std::fs::write(&abort, "1")
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write {abort}: {e}")))
    }

    /// The kernel reads ahead 128 KiB at a time on a new FUSE mount, so a
    /// sequential reader costs one FUSE request per 128 KiB. Raising the mount's
    /// read-ahead to 1 MiB cuts that eightfold (s3vol's own read-ahead works
    /// further out). Needs root; without it the default stays, which only costs
    /// some CPU.
    fn tune_kernel_readahead(&self) {
        let Some(device) = &self.device else {
            return;
        };
        let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
        if let Err(e) = std::fs::write(&knob, "1024") {
            debug!("cannot raise kernel read-ahead via {knob}: {e}");
        }
    }
}

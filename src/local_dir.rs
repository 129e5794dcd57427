//! Directories of local data (the cache directory, its `blocks` and `staging`
//! subdirectories, each mount's own): opened once without following symbolic
//! links, checked to be the daemon's user's alone, and from then on used only
//! through their descriptors. Renaming a directory away and putting a link (to
//! `/etc`, say) in its place therefore never sends a block or staging file, or a
//! removal, anywhere else.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag, openat, renameat};
use nix::sys::stat::{Mode, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// How directories are opened: never through a link, never inherited by a
/// program the daemon runs.
const DIRECTORY: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_RDONLY);

/// A directory held open.
#[derive(Debug)]
pub struct LocalDir {
    fd: OwnedFd,
    /// Where it was when opened, for messages.
    path: PathBuf,
}

impl LocalDir {
    /// Opens the directory at `path`, creating it (and its parents) mode 0700 if
    /// it is missing. It must belong to the user running s3vol and be closed to
    /// writes by others; the error says what to change.
    pub fn open_or_create(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| format!("cannot create {shown}: {e}"))?;
        let fd = nix::fcntl::open(path, DIRECTORY, Mode::empty()).map_err(|e| refusal(path, e))?;
        let dir = Self {
            fd,
            path: path.to_path_buf(),
        };
        dir.check_private()?;
        Ok(dir)
    }

    /// Refuses a directory that is another user's, or that others may change.
    fn check_private(&self) -> Result<(), String> {
        let shown = self.path.display();
        let stat = fstat(&self.fd).map_err(|e| format!("cannot look at {shown}: {e}"))?;
        let me = nix::unistd::geteuid().as_raw();
        if stat.st_uid != me {
            return Err(format!(
                "{shown} belongs to uid {}, not to the user running s3vol (uid {me}), who \
                 keeps cached data and files being written there: choose another directory, \
                 or `chown {me} {shown}`",
                stat.st_uid
            ));
        }
        let mode = stat.st_mode & 0o7777;
        if mode & 0o022 != 0 {
            return Err(format!(
                "{shown} may be changed by other users (mode {mode:04o}): `chmod 700 \
                 {shown}`, or choose another directory"
            ));
        }
        Ok(())
    }

    /// Where the directory was when it was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another descriptor of the same directory.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// The subdirectory `name`, created mode 0700 if missing, with the same
    /// checks as [`LocalDir::open_or_create`].
    pub fn subdir(&self, name: &str) -> Result<Self, String> {
        match mkdirat(&self.fd, name, Mode::S_IRWXU) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(format!(
                    "cannot create {}: {e}",
                    self.path.join(name).display()
                ));
            }
        }
        self.existing_subdir(name)
    }

    /// Creates the subdirectory `name`, mode 0700, which must not be there
    /// (`AlreadyExists` if it is), and opens it.
    pub fn new_subdir(&self, name: &str) -> io::Result<Self> {
        mkdirat(&self.fd, name, Mode::S_IRWXU)?;
        self.existing_subdir(name).map_err(io::Error::other)
    }

    /// Takes the exclusive lock (`flock`) on the directory itself without
    /// waiting: `None` when another open of it holds the lock. The lock lasts
    /// as long as the returned value.
    pub fn try_lock(&self) -> io::Result<Option<Flock<OwnedFd>>> {
        match Flock::lock(self.fd.try_clone()?, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e.into()),
        }
    }

    /// The subdirectory `name` if it is there (never created), with the same
    /// checks as [`LocalDir::open_or_create`].
    pub fn existing_subdir(&self, name: &str) -> Result<Self, String> {
        let path = self.path.join(name);
        let fd = openat(&self.fd, name, DIRECTORY, Mode::empty()).map_err(|e| refusal(&path, e))?;
        let dir = Self { fd, path };
        dir.check_private()?;
        Ok(dir)
    }

    /// When the directory was last changed (an entry made or removed).
    pub fn modified(&self) -> io::Result<std::time::SystemTime> {
        let stat = fstat(&self.fd)?;
        let since_epoch = std::time::Duration::new(
            stat.st_mtime.max(0) as u64,
            stat.st_mtime_nsec.clamp(0, 999_999_999) as u32,
        );
        Ok(std::time::UNIX_EPOCH + since_epoch)
    }

    /// Creates `name` (which must not exist), mode 0600, for reading and writing.
    pub fn create_file(&self, name: &str) -> io::Result<File> {
        self.open_with(
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
    }

    /// Opens the existing file `name` for reading.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        self.open_with(name, OFlag::O_RDONLY, Mode::empty())
    }

    /// Opens the existing file `name` for writes that bypass the page cache
    /// (`O_DIRECT`): each must start, end and lie in memory at multiples of
    /// the file system's block size. Fails with `EINVAL` where the file system
    /// has no direct I/O.
    pub fn open_direct_writer(&self, name: &str) -> io::Result<File> {
        self.open_with(name, OFlag::O_WRONLY | OFlag::O_DIRECT, Mode::empty())
    }

    /// Opens `name` for reading and writing, creating it (mode 0600) if asked.
    pub fn open_read_write(&self, name: &str, create: bool) -> io::Result<File> {
        let create = if create {
            OFlag::O_CREAT
        } else {
            OFlag::empty()
        };
        self.open_with(name, OFlag::O_RDWR | create, Mode::S_IRUSR | Mode::S_IWUSR)
    }

    fn open_with(&self, name: &str, flags: OFlag, mode: Mode) -> io::Result<File> {
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        Ok(File::from(openat(&self.fd, name, flags, mode)?))
    }

    /// A file with no name in this directory: gone when closed, so a crash
    /// leaves nothing behind and no other process can open it.
    pub fn unnamed_file(&self) -> io::Result<File> {
        let flags = OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC;
        match openat(&self.fd, ".", flags, Mode::S_IRUSR | Mode::S_IWUSR) {
            Ok(fd) => Ok(File::from(fd)),
            // A file system without unnamed files: make one and unlink it.
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => loop {
                let name = format!(".staging-{:016x}", fastrand::u64(..));
                match self.create_file(&name) {
                    Ok(file) => {
                        self.remove_file(&name)?;
                        break Ok(file);
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => break Err(e),
                }
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Renames `from` to `to`, both in this directory.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(renameat(&self.fd, from, &self.fd, to)?)
    }

    /// Removes the file (or link) `name`.
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        Ok(unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir)?)
    }

    /// The names in the directory with whether each is a directory (a link
    /// never counts as one).
    pub fn entries(&self) -> io::Result<Vec<(String, bool)>> {
        Ok(self
            .raw_entries()?
            .into_iter()
            .map(|(name, is_dir)| (name.to_string_lossy().into_owned(), is_dir))
            .collect())
    }

    /// [`LocalDir::entries`], each name as it is on disk: what removes them
    /// must name each exactly, whatever bytes it holds. An entry gone before
    /// it could be looked at (where the file system does not say what each
    /// entry is) is left out.
    fn raw_entries(&self) -> io::Result<Vec<(CString, bool)>> {
        let mut dir = Dir::openat(&self.fd, ".", DIRECTORY, Mode::empty())?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let is_dir = match entry.file_type() {
                Some(kind) => kind == Type::Directory,
                None => match self.is_directory(name) {
                    Ok(is_dir) => is_dir,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                },
            };
            out.push((name.to_owned(), is_dir));
        }
        Ok(out)
    }

    fn is_directory(&self, name: &std::ffi::CStr) -> io::Result<bool> {
        let stat = nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        Ok(stat.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }

    /// Removes the directory `name` and everything in it, through descriptors
    /// only: a link inside is removed, never followed, so nothing outside this
    /// directory is touched. What appears in it meanwhile (a block written
    /// behind a reader as the cache closes) goes too: the directory is listed
    /// again until it is empty when removed, and what vanished meanwhile (an
    /// eviction) is no error.
    pub fn remove_tree(&self, name: &str) -> io::Result<()> {
        self.remove_tree_named(&CString::new(name).map_err(io::Error::other)?)
    }

    fn remove_tree_named(&self, name: &CStr) -> io::Result<()> {
        let fd = match openat(&self.fd, name, DIRECTORY, Mode::empty()) {
            Ok(fd) => fd,
            // A link or a file in its place: remove just that.
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Ok(unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir)?);
            }
            Err(e) => return Err(e.into()),
        };
        let inner = Self {
            fd,
            path: self.path.join(OsStr::from_bytes(name.to_bytes())),
        };
        let mut passes = 0;
        loop {
            for (entry, is_dir) in inner.raw_entries()? {
                let removed = match is_dir {
                    true => inner.remove_tree_named(&entry),
                    false => unlinkat(&inner.fd, entry.as_c_str(), UnlinkatFlags::NoRemoveDir)
                        .map_err(io::Error::from),
                };
                match removed {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    other => other?,
                }
            }
            passes += 1;
            match unlinkat(&self.fd, name, UnlinkatFlags::RemoveDir) {
                Err(Errno::ENOTEMPTY) if passes < MOST_REMOVAL_PASSES => {}
                done => return Ok(done?),
            }
        }
    }
}

/// How often [`LocalDir::remove_tree`] lists a directory that filled again
/// before giving up: what writes into it is finished writing long before.
const MOST_REMOVAL_PASSES: usize = 1000;

/// Why the directory at `path` could not be opened: a link (which O_NOFOLLOW
/// with O_DIRECTORY reports as "not a directory") is named as one.
fn refusal(path: &Path, e: Errno) -> String {
    let shown = path.display();
    let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match e {
        Errno::ELOOP | Errno::ENOTDIR if link => {
            format!("{shown} is a symbolic link; give the directory itself")
        }
        Errno::ENOTDIR => format!("{shown} is not a directory"),
        e => format!("cannot open {shown}: {e}"),
    }
}

impl AsFd for LocalDir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn directories_are_created_private_and_refused_when_not() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("a/b/cache");
        let dir = LocalDir::open_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        dir.subdir("blocks").unwrap();

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = LocalDir::open_or_create(&path).unwrap_err();
        assert!(error.contains("chmod 700"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        LocalDir::open_or_create(&path).unwrap();

        let link = base.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let error = LocalDir::open_or_create(&link).unwrap_err();
        assert!(error.contains("symbolic link"), "{error}");
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let error = LocalDir::open_or_create(&path).unwrap_err();
            assert!(error.contains("belongs to uid 65534"), "{error}");
        }
    }

    #[test]
    fn files_live_where_the_directory_was_opened_whatever_its_path_becomes() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("cache");
        let dir = LocalDir::open_or_create(&path).unwrap();
        // Someone renames the directory away and puts a link to theirs in its
        // place.
        let elsewhere = base.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::rename(&path, base.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();

        dir.create_file("block")
            .unwrap()
            .write_all(b"data")
            .unwrap();
        dir.rename("block", "placed").unwrap();
        let mut back = String::new();
        dir.open_file("placed")
            .unwrap()
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "data");
        let mut unnamed = dir.unnamed_file().unwrap();
        unnamed.write_all(b"staged").unwrap();
        assert_eq!(
            std::fs::read_dir(base.path().join("moved"))
                .unwrap()
                .count(),
            1,
            "the unnamed file has no name"
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert_eq!(
            std::fs::read(base.path().join("moved/placed")).unwrap(),
            b"data"
        );
    }

    #[test]
    fn a_tree_goes_whole_while_files_are_still_being_written_into_it() {
        let base = tempfile::tempdir().unwrap();
        let dir = LocalDir::open_or_create(&base.path().join("cache")).unwrap();
        let tree = dir.subdir("mount-1-0").unwrap();
        let (started, ready) = std::sync::mpsc::channel();
        let done = Arc::new(AtomicBool::new(false));
        // A writer that goes on until the directory is gone, as blocks written
        // behind a reader do at unmount (or until the test is over).
        let writer = std::thread::spawn({
            let done = done.clone();
            move || {
                let mut written = 0;
                // At most 500 files once the removal may have begun: fewer
                // than the passes it makes, so a pass must find it empty.
                while !done.load(Ordering::Relaxed)
                    && written < 600
                    && tree.create_file(&format!("{written}.block")).is_ok()
                {
                    written += 1;
                    if written == 100 {
                        started.send(()).unwrap();
                    }
                }
                written
            }
        });
        ready.recv().unwrap();
        let removed = dir.remove_tree("mount-1-0");
        done.store(true, Ordering::Relaxed);
        let written = writer.join().unwrap();
        removed.unwrap();
        assert!(dir.entries().unwrap().is_empty());
        assert!(written >= 100);
    }

    #[test]
    fn subdirectories_are_opened_without_being_made_made_once_and_locked_alone() {
        let base = tempfile::tempdir().unwrap();
        let dir = LocalDir::open_or_create(&base.path().join("cache")).unwrap();
        assert!(dir.existing_subdir("absent").is_err());
        assert!(dir.entries().unwrap().is_empty(), "looking made it");
        let made = dir.new_subdir("made").unwrap();
        let again = dir.new_subdir("made").map(drop).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        let held = made.try_lock().unwrap().expect("a lock nobody holds");
        let other = dir.existing_subdir("made").unwrap();
        assert!(other.try_lock().unwrap().is_none(), "held by another open");
        drop(held);
        assert!(other.try_lock().unwrap().is_some());
    }

    #[test]
    fn a_tree_goes_whatever_bytes_its_names_hold() {
        let base = tempfile::tempdir().unwrap();
        let dir = LocalDir::open_or_create(&base.path().join("cache")).unwrap();
        let tree = dir.subdir("mount-1-0").unwrap();
        let odd = OsStr::from_bytes(b"not-utf8-\xff");
        std::fs::write(tree.path().join(odd), b"x").unwrap();
        std::fs::create_dir(tree.path().join(odd).with_extension("d")).unwrap();
        dir.remove_tree("mount-1-0").unwrap();
        assert!(dir.entries().unwrap().is_empty());
    }

    #[test]
    fn removing_a_tree_never_follows_a_link_out_of_it() {
        let base = tempfile::tempdir().unwrap();
        let dir = LocalDir::open_or_create(&base.path().join("cache")).unwrap();
        let victim = base.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("precious"), "keep").unwrap();
        let tree = dir.subdir("mount-1-0").unwrap();
        tree.create_file("block").unwrap();
        std::os::unix::fs::symlink(&victim, tree.path().join("link")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("mount-2-0")).unwrap();
        dir.remove_tree("mount-1-0").unwrap();
        dir.remove_tree("mount-2-0").unwrap();
        assert!(dir.entries().unwrap().is_empty());
        assert_eq!(std::fs::read(victim.join("precious")).unwrap(), b"keep");
    }
}

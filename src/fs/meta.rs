//! chmod, chown, utimens and extended attributes: a change of a file's mode,
//! owner, time or extended attributes goes into
//! the upload of a file being written; on a file already in S3 it waits
//! [`METADATA_DELAY`] for the next one, so that `rsync -a`'s chmod, utimens and
//! rename cost one copy, and is then copied onto the object in place (same
//! bytes, same ETag, every other header kept). A directory's go the same way
//! onto its marker object, which is made if the directory has none.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tracing::{debug, warn};

use super::changes::Taken;
use super::inode::{Kind, ROOT_INO};
use super::posix::{self, Posix};
use super::xattrs::{self, BadName, METADATA_LIMIT, Xattrs};
use super::{Entry, Fs, FsError, FsResult, Node};
use crate::audit::{Detail, Op};
use crate::store::{ObjectHeaders, StoreError};

/// How long a change of a closed file's mode, owner or time waits for more.
pub const METADATA_DELAY: Duration = Duration::from_millis(500);

/// setxattr(2)'s flags.
const XATTR_CREATE: i32 = libc::XATTR_CREATE;
const XATTR_REPLACE: i32 = libc::XATTR_REPLACE;

impl Fs {
    /// Sets what `change` sets of `ino`'s mode, owner and time: a file's in
    /// its object, a directory's in its marker object (made if it has none).
    /// The volume root's are not kept.
    pub(super) fn change_posix(&self, ino: u64, mut change: Posix) -> FsResult<()> {
        let node = self.node(ino)?;
        if !self.config.metadata || ino == ROOT_INO || change == Posix::default() {
            return Ok(());
        }
        // Any change is one of the file's: its change time is now.
        change.ctime = Some(SystemTime::now());
        // A file open with its name gone keeps its change to itself, as an
        // unlinked file does: the object under the name is another's.
        if node.unlinked {
            self.show_change(ino, &change);
            return Ok(());
        }
        // A file being written carries it in its next upload; it also waits
        // for a copy in place, which that upload makes moot (see
        // [`ChangeQueue::settle_pending`](super::changes::ChangeQueue::settle_pending)),
        // and which is all there is for a file whose content is in S3
        // already.
        if let Some(file) = self.staging.file(ino) {
            file.set_posix(&change);
        }
        self.changes
            .merge_pending(ino, |waiting| waiting.updated(&change))?;
        self.show_change(ino, &change);
        Ok(())
    }

    /// `change` on what `ino` shows, if its metadata is known: if it is not
    /// (a listing came meanwhile), the lookup that brings it shows the change
    /// over it, and a partial one would show defaults for the rest.
    fn show_change(&self, ino: u64, change: &Posix) {
        let mut table = self.inodes.lock();
        if let Some(known) = table.get(ino).and_then(|node| node.stat.posix.clone()) {
            table.set_posix(ino, known.updated(change));
        }
    }

    /// The headers an object this mount makes carries: `posix` in its user
    /// metadata and, unless `--no-content-type`, the type of `key`'s
    /// extension (a directory marker's, s3fs's).
    pub(super) fn own_headers(&self, key: &str, posix: &Posix, kind: Kind) -> ObjectHeaders {
        let mut headers = posix.headers(kind);
        if self.config.content_types {
            headers.content_type = Some(
                match kind {
                    Kind::File => super::content_type::of_file(key),
                    Kind::Directory => super::content_type::DIRECTORY,
                }
                .to_string(),
            );
        }
        headers
    }

    /// The headers `key` (of `ino`) must carry with `change`: built from the
    /// mode, owner and time alone when this mount uploaded the object (they are
    /// all it carries, with its type), else (or if `ask`) from a HEAD. With
    /// the version they apply to: its ETag and size.
    pub(super) async fn headers_with(
        &self,
        ino: u64,
        key: &str,
        change: &Posix,
        ask: bool,
    ) -> FsResult<(ObjectHeaders, String, u64)> {
        let node = self.node(ino)?;
        let kind = node.kind;
        // An encrypted object carries its envelope too: always asked for.
        let own = node.stat.own_headers && !self.config.codec.encrypts() && !ask;
        let (mut headers, posix, etag, size) = match node.stat.posix.filter(|_| own) {
            Some(own) => (
                self.own_headers(key, &Posix::default(), kind),
                own,
                node.stat.etag.clone(),
                node.stat.size,
            ),
            None => {
                let info = self.store.head_object(key).await?;
                let headers = info.headers.unwrap_or_default();
                let posix = Posix::read(&headers.user, kind);
                (headers, posix, info.etag, info.size)
            }
        };
        let updated = posix.updated(change);
        updated.write(&mut headers.user, kind);
        // Attributes changed here meet the set as it is now: one that cannot
        // be read is left as it is, and one that no longer fits is not sent.
        if change.xattrs.as_ref().is_some_and(|x| x.is_edited()) {
            if updated.xattrs.as_ref().is_some_and(|x| x.is_unreadable()) {
                return Err(FsError::XattrsUnreadable {
                    key: key.to_string(),
                });
            }
            fits(key, &headers)?;
        }
        Ok((headers, etag, size))
    }

    /// Puts the change waiting for `ino` in S3 now, if one is (see
    /// [`Fs::apply_taken`]): for an fsync or a stop, which do not wait for
    /// an upload to carry it.
    pub(super) async fn apply_pending_posix(&self, ino: u64) -> FsResult<()> {
        match self.changes.take_pending(ino) {
            Some(taken) => self.apply_taken(ino, taken, false).await,
            None => Ok(()),
        }
    }

    /// Puts `taken`, the change of `ino`, in S3: a copy of the object onto
    /// itself with the new metadata, pinned to the ETag it was read at (or,
    /// if `upload_carries` and the file is being written, it waits for the
    /// upload, which carries it). A change whose copy fails waits again (see
    /// [`ChangeQueue`]), unless it never can succeed; either way the error is
    /// returned.
    ///
    /// [`ChangeQueue`]: super::changes::ChangeQueue
    async fn apply_taken(&self, ino: u64, taken: Taken<'_>, upload_carries: bool) -> FsResult<()> {
        let Ok(node) = self.named_node(ino) else {
            taken.settle(); // unlinked or replaced since: the name is not its own
            return Ok(());
        };
        // Written again since: the upload will carry it, and takes it off
        // then (none comes for what a killed process left, so the object in
        // S3 gets it now). Until then it waits.
        if upload_carries
            && self
                .staging
                .file(ino)
                .is_some_and(|file| file.is_dirty() && file.held_back().is_none())
        {
            drop(taken);
            return Ok(());
        }
        let change = taken.posix().clone();
        // After a failure, what S3 holds is asked for again: another client
        // may have replaced even an object this mount wrote.
        let ask = taken.failures() > 0;
        let Err(e) = self.put_change(ino, &node, &change, ask).await else {
            taken.settle();
            return Ok(());
        };
        // The file may have lost that name meanwhile, to an unlink (which
        // took no change: this one had been taken): the change is moot.
        if self.named_node(ino).is_err() {
            taken.settle();
            return Ok(());
        }
        let first = taken.failures() == 0;
        if never_kept(&e, node.kind, !first) {
            warn!(
                key = node.key,
                "the change of mode, owner or time cannot be kept: {e:#}"
            );
            taken.lost();
        } else {
            let pause = taken.failed();
            let say = format!(
                "the change of mode, owner or time could not be copied onto the object \
                 (tried again in {}s, and at fsync or unmount): {e:#}",
                pause.as_secs()
            );
            match first {
                true => warn!(key = node.key, "{say}"),
                false => debug!(key = node.key, "{say}"),
            }
        }
        Err(e)
    }

    /// Copies the object of `node` (`ino`) onto itself with `change` (its
    /// headers asked of S3 if `ask`), or makes the marker a directory lacks.
    async fn put_change(&self, ino: u64, node: &Node, change: &Posix, ask: bool) -> FsResult<()> {
        let (key, kind) = (node.key.as_str(), node.kind);
        let marker_gone = |e: &FsError| {
            kind == Kind::Directory
                && matches!(e, FsError::Store(e) if matches!(**e, StoreError::NotFound { .. }))
        };
        let (headers, etag, size) = match self.headers_with(ino, key, change, ask).await {
            Err(e) if marker_gone(&e) => return self.make_marker(ino, key, change.clone()).await,
            found => found?,
        };
        fits(key, &headers)?;
        let copied = match self.copy(key, key, size, Some(&etag), Some(&headers)).await {
            // A marker this mount made, removed by another client since.
            Err(e) if marker_gone(&e) => return self.make_marker(ino, key, change.clone()).await,
            copied => copied?,
        };
        // Reads pinned to the version before read the copy.
        self.uploads.copies.note(key, &etag, key, &copied);
        debug!(key, ?change, "mode, owner or time changed in place");
        let mut table = self.inodes.lock();
        table.set_etag(ino, copied);
        // What the object carries now, whatever a refresh learnt meanwhile.
        table.set_posix(ino, Posix::read(&headers.user, kind));
        if etag != node.stat.etag {
            // Another client's version got the change: learn the rest of it.
            table.expire(ino);
        }
        Ok(())
    }

    /// A directory with no marker object gets one, carrying `change`.
    async fn make_marker(&self, ino: u64, key: &str, change: Posix) -> FsResult<()> {
        let headers = self.own_headers(key, &change, Kind::Directory);
        let etag = self.store.put_object(key, Bytes::new(), &headers).await?;
        debug!(
            key,
            ?change,
            "directory marker made for its mode, owner or time"
        );
        let mut table = self.inodes.lock();
        table.set_etag(ino, etag);
        table.set_posix(ino, change);
        Ok(())
    }

    /// Puts every change that has waited `delay` (and the pause after a failed
    /// copy) in S3, each in a turn of its own (so that an fsync or a stop
    /// waits for one copy at most); the keys of those that could not be.
    pub async fn apply_metadata(&self, delay: Duration) -> Vec<String> {
        let mut failed = Vec::new();
        for ino in self.changes.due(delay) {
            let _turn = self.metadata_turn.lock().await;
            // Due still: another turn, an fsync or a rename may have taken it
            // while this one waited.
            let Some(taken) = self.changes.take_due(ino, delay) else {
                continue;
            };
            if self.apply_taken(ino, taken, true).await.is_err() {
                failed.push(self.node(ino).map(|n| n.key).unwrap_or_default());
            }
        }
        failed
    }

    /// Tries to put every change waiting in S3 at once, failed copies too, by
    /// whoever holds the turn throughout (a stop), until none is left that it
    /// has not tried. Those that cannot be wait.
    pub(super) async fn apply_every_change(&self) {
        let mut tried = std::collections::HashSet::new();
        loop {
            let next: Vec<u64> = self.changes.not_in_s3();
            let next: Vec<u64> = next.into_iter().filter(|ino| tried.insert(*ino)).collect();
            if next.is_empty() {
                return;
            }
            for ino in next {
                let _ = self.apply_pending_posix(ino).await;
            }
        }
    }

    /// Puts every change waiting in S3 at once, within `within` (a worker
    /// about to step aside); the keys of the files whose change is not in S3
    /// then.
    pub async fn copy_changes_now(&self, within: Duration) -> Vec<String> {
        let _ = tokio::time::timeout(within, async {
            let _turn = self.metadata_turn.lock().await;
            self.apply_every_change().await;
        })
        .await;
        self.changes_not_in_s3()
    }

    /// The keys of the files whose change of mode, owner or time is not in
    /// S3: waiting, being copied, or never to be.
    pub fn changes_not_in_s3(&self) -> Vec<String> {
        let inos = self.changes.not_kept();
        inos.into_iter()
            .filter_map(|ino| self.named_node(ino).ok().map(|n| n.key))
            .collect()
    }

    /// Applies changes as they come due, for as long as the volume lives.
    pub async fn apply_metadata_as_due(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(METADATA_DELAY / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.staging.running().is_err() {
                return;
            }
            self.apply_metadata(METADATA_DELAY).await;
        }
    }
}

/// Refuses `headers` for `key` if their user metadata would not fit S3's
/// bound (beside what else the object keeps).
fn fits(key: &str, headers: &ObjectHeaders) -> FsResult<()> {
    let needed = xattrs::metadata_bytes(&headers.user);
    match needed > METADATA_LIMIT {
        true => Err(FsError::XattrsFull {
            key: key.to_string(),
            needed,
            alone: false,
        }),
        false => Ok(()),
    }
}

/// Whether `error`, met copying a change onto an object (of `kind`), says
/// the change can never be put there as the object is: its metadata would
/// not fit, cannot be read, or the file's object is gone (when S3 was asked
/// again, on a `retry`: a copy in parts loses its upload to a cleanup, a
/// store may lag).
fn never_kept(error: &FsError, kind: Kind, retry: bool) -> bool {
    match error {
        FsError::XattrsFull { .. } | FsError::XattrsUnreadable { .. } => true,
        // S3 refuses every copy of an archived object until it is restored.
        FsError::Store(e) if matches!(**e, StoreError::Archived { .. }) => true,
        FsError::Store(e) => {
            retry && kind == Kind::File && matches!(**e, StoreError::NotFound { .. })
        }
        _ => false,
    }
}

/// The name an application asks for, if it is one this volume keeps.
pub fn xattr_name(name: &OsStr) -> FsResult<&str> {
    let name = name.to_str().ok_or(FsError::Invalid(
        "an extended attribute name that is not UTF-8",
    ))?;
    match xattrs::check_name(name) {
        Ok(()) => Ok(name),
        Err(BadName::Namespace) => Err(FsError::XattrNamespace),
        Err(BadName::Unreadable) => Err(FsError::Invalid(
            "an extended attribute name s3fs could not read back (empty, or with a quote, comma, \
             colon or control character)",
        )),
    }
}

impl Fs {
    /// The extended attributes `ino` has, as fresh as its attributes: its
    /// object's (a directory's marker's), with a change not yet in S3. None
    /// on the root, or with `--no-metadata`.
    async fn xattrs_of(&self, ino: u64) -> FsResult<Arc<Xattrs>> {
        self.getattr(ino).await?;
        if !self.config.metadata || ino == ROOT_INO {
            return Ok(Arc::default());
        }
        let node = self.node(ino)?;
        Ok(self
            .changes
            .shown(ino, node.stat.posix.as_ref())
            .and_then(|posix| posix.xattrs)
            .unwrap_or_default())
    }

    /// getxattr(2): the value of `name`.
    pub async fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        let name = xattr_name(name)?;
        let xattrs = self.xattrs_of(ino).await?;
        xattrs.get(name).map(<[u8]>::to_vec).ok_or(FsError::NoXattr)
    }

    /// listxattr(2): the names set, each ended by a NUL.
    pub async fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let xattrs = self.xattrs_of(ino).await?;
        let mut names = Vec::new();
        for name in xattrs.names() {
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        Ok(names)
    }

    /// setxattr(2) (`value` given) and removexattr(2): kept like a change of
    /// mode ([`Fs::change_posix`]), once the set is known to fit S3's bound.
    pub(super) async fn change_xattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: Option<&[u8]>,
        flags: i32,
    ) -> FsResult<()> {
        self.writable()?;
        let name = xattr_name(name)?;
        if !self.config.metadata {
            return Err(FsError::NotSupported(
                "an extended attribute on a volume mounted with --no-metadata",
            ));
        }
        if ino == ROOT_INO {
            return Err(FsError::NotSupported(
                "an extended attribute on the volume's root",
            ));
        }
        // Its value would be the one thing of the file stored in clear (as a
        // link's target would); those another writer stored are shown.
        if self.config.codec.encrypts() {
            return Err(FsError::NotSupported(
                "an extended attribute on an encrypted volume (it would be stored unencrypted)",
            ));
        }
        // One change at a time, each made on the last.
        let _turn = self.xattr_changes.lock().await;
        let xattrs = self.xattrs_of(ino).await?;
        if xattrs.is_unreadable() {
            return Err(FsError::XattrsUnreadable {
                key: self.key_of(ino),
            });
        }
        let set = xattrs.get(name).is_some();
        let changed = match value {
            Some(_) if set && flags & XATTR_CREATE != 0 => return Err(FsError::Exists),
            Some(_) if !set && flags & XATTR_REPLACE != 0 => return Err(FsError::NoXattr),
            None if !set => return Err(FsError::NoXattr),
            Some(value) => {
                let changed = xattrs.with(name, value);
                self.check_room(ino, &changed, &Xattrs::default().with(name, value))
                    .await?;
                changed
            }
            None => xattrs.without(name),
        };
        self.change_posix(
            ino,
            Posix {
                xattrs: Some(Arc::new(changed)),
                ..Posix::default()
            },
        )
    }

    /// Whether `xattrs` fit in `ino`'s object beside what else it keeps
    /// (counted at its widest: any mode, owner and times) under S3's bound;
    /// `alone` is the attribute being set, by itself.
    async fn check_room(&self, ino: u64, xattrs: &Xattrs, alone: &Xattrs) -> FsResult<()> {
        let node = self.node(ino)?;
        // An object this mount made keeps only what it sets; another's, what a
        // HEAD says.
        let mut others = BTreeMap::new();
        if !node.stat.own_headers {
            match self.store.head_object(&node.key).await {
                Ok(info) => others = info.headers.unwrap_or_default().user,
                // Not uploaded yet (a directory without a marker, a file being
                // written): what the upload brings.
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let needed = |others: &BTreeMap<String, String>, xattrs: &Xattrs| {
            let mut user = others.clone();
            Posix {
                perm: Some(0o7777),
                uid: Some(u32::MAX),
                gid: Some(u32::MAX),
                xattrs: Some(Arc::new(xattrs.clone())),
                ..Posix::default()
            }
            .write(&mut user, node.kind);
            // The widest time utimensat can set.
            for time in [posix::MTIME, posix::CTIME] {
                user.insert(time.into(), format!("{}.999999999", i64::MAX));
            }
            // A value kept as it is (one that is not read as a mode, an owner
            // or a time) may be wider still.
            for (key, value) in others {
                if user.get(key).is_some_and(|ours| ours.len() < value.len()) {
                    user.insert(key.clone(), value.clone());
                }
            }
            xattrs::metadata_bytes(&user)
        };
        let needed_now = needed(&others, xattrs);
        if needed_now <= METADATA_LIMIT {
            return Ok(());
        }
        Err(FsError::XattrsFull {
            key: node.key,
            needed: needed_now,
            alone: needed(&BTreeMap::new(), alone) > METADATA_LIMIT,
        })
    }
}

// The entry points the audit log records (see `super::audit`).
impl Fs {
    /// [`Fs::change_xattr`] setting `name` to `value`, recorded.
    pub async fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        let result = self.change_xattr(ino, name, Some(value), flags).await;
        let detail = Detail::Xattr(name.to_string_lossy().into_owned());
        self.audit_on(Op::Setxattr, ino, &result, Some(detail));
        result
    }

    /// [`Fs::change_xattr`] removing `name`, recorded.
    pub async fn removexattr(&self, ino: u64, name: &OsStr) -> FsResult<()> {
        let result = self.change_xattr(ino, name, None, 0).await;
        let detail = Detail::Xattr(name.to_string_lossy().into_owned());
        self.audit_on(Op::Removexattr, ino, &result, Some(detail));
        result
    }

    /// [`Fs::set_attributes`], recorded when it sets a mode, an owner or a
    /// time (in that order of precedence, one line; a change of size, and the
    /// time that comes with it, is recorded by the upload that makes it, as a
    /// `write`).
    pub async fn setattr(
        &self,
        ino: u64,
        size: Option<u64>,
        change: Posix,
        fh: Option<u64>,
    ) -> FsResult<Entry> {
        self.setattr_by(ino, size, change, fh, None).await
    }

    /// [`Fs::setattr`] asked by process `by` (`None`: not known), who is
    /// then the author of a change of size.
    pub async fn setattr_by(
        &self,
        ino: u64,
        size: Option<u64>,
        change: Posix,
        fh: Option<u64>,
        by: Option<u32>,
    ) -> FsResult<Entry> {
        let what = match &change {
            Posix {
                perm: Some(mode), ..
            } => Some((Op::Chmod, Some(Detail::Mode(*mode)))),
            Posix { uid, gid, .. } if uid.is_some() || gid.is_some() => Some((
                Op::Chown,
                Some(Detail::Owner {
                    uid: *uid,
                    gid: *gid,
                }),
            )),
            // The time a truncation sets comes with it: the upload's `write`
            // records both.
            Posix { mtime: Some(_), .. } if size.is_none() => Some((Op::Utimens, None)),
            _ => None,
        };
        let result = self.set_attributes(ino, size, change, fh, by).await;
        if let Some((op, detail)) = what {
            self.audit_on(op, ino, &result, detail);
        }
        result
    }
}

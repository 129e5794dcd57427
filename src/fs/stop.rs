//! The volume's end: what closed files left is uploaded, every file still
//! being written abandoned, the changes of metadata still waiting put in S3
//! or counted lost; once, whoever asks.

use std::time::Duration;

use tracing::warn;

use super::Fs;

impl Fs {
    /// The session ended with every file closed (an unmount): the kernel drops
    /// the releases it had not yet sent, so what they would have uploaded is
    /// uploaded now; then [`Fs::stop`]. Returns the keys whose changes were not
    /// uploaded.
    pub async fn finish(&self, within: Duration) -> Vec<String> {
        for (ino, file) in self.staging.all() {
            if file.has_unsent_changes()
                && let Err(e) = self.publish(ino, &file).await
            {
                warn!(key = file.key(), "cannot upload at unmount: {e:#}");
            }
        }
        self.stop(within).await
    }

    /// The volume is going away: nothing more is uploaded, and every file still
    /// being written is abandoned, its multipart upload aborted once any upload
    /// already under way has finished (so a close in progress still completes).
    /// The files are abandoned together, and given up on `within` from now:
    /// one whose upload is still under way then counts as lost (S3 may or may
    /// not get it, and `s3vol cleanup` finds what it leaves). Returns the keys
    /// whose changes were not uploaded. A close after this fails (ENOTCONN), so
    /// no application is told its data is safe when it is not.
    /// Changes of closed files' modes, owners and times still waiting are put
    /// in S3 first, in two thirds of that time at most; those that could not
    /// be count as lost.
    /// The closes of files released already (the wait for their part
    /// uploads, the abort of an upload not completed) are waited for in the
    /// same time; what became of those files their closes told.
    ///
    /// The volume stops once: a call while another is stopping it waits for
    /// that one (a daemon must not exit while uploads are being aborted), and
    /// every call returns the same keys.
    pub async fn stop(&self, within: Duration) -> Vec<String> {
        self.stopped
            .get_or_init(|| self.stop_once(within))
            .await
            .clone()
    }

    async fn stop_once(&self, within: Duration) -> Vec<String> {
        let now = tokio::time::Instant::now();
        let deadline = now + within;
        // The copies of changes get two thirds of the time at most, so that
        // copies that hang leave the files' aborts time to be sent.
        let copies_deadline = now + within * 2 / 3;
        // Taken once the change another turn is copying is in S3, and held
        // until nothing can be taken any more: every change still waiting is
        // put in S3 by this turn or counted below, and so is one whose copy
        // outlasts the time given (it may or may not reach S3).
        let turn = tokio::time::timeout_at(copies_deadline, self.metadata_turn.lock()).await;
        if turn.is_ok() && self.staging.running().is_ok() {
            let _ = tokio::time::timeout_at(copies_deadline, self.apply_every_change()).await;
        }
        let not_kept = self.changes.stop();
        let taken = self.staging.stop();
        drop(turn);
        let mut lost = Vec::new();
        for ino in not_kept {
            if let Ok(node) = self.named_node(ino) {
                warn!(
                    key = node.key,
                    "the change of mode, owner or time was not kept: the volume stopped"
                );
                lost.push(node.key);
            }
        }
        let abandoned = futures::future::join_all(taken.staged.iter().map(|file| async move {
            let lost = tokio::time::timeout_at(deadline, file.abandon())
                .await
                .unwrap_or(true);
            (file.key(), lost)
        }));
        let closed = futures::future::join_all(taken.closing.iter().map(|file| async move {
            if tokio::time::timeout_at(deadline, file.close())
                .await
                .is_err()
            {
                warn!(
                    key = file.key(),
                    "the volume stopped before the close of the file was done: an upload of \
                     it may be left in S3, which `s3vol cleanup` removes"
                );
            }
        }));
        let (outcomes, _) = futures::join!(abandoned, closed);
        for (key, abandoned) in outcomes {
            if abandoned && !lost.contains(&key) {
                lost.push(key);
            }
        }
        lost
    }
}

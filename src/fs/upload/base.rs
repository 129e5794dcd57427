//! The object a file was opened on, copied into its staging file once, before
//! the file's first change. A truncation to nothing meanwhile makes the copy
//! needless: it stops, and however it ends, the change that asked for it goes
//! on.

use tracing::debug;

use super::{Base, StageResult, StagedFile};

impl StagedFile {
    /// Copies the object the file was opened on into the staging file, once,
    /// before its first change.
    pub(super) async fn load_base(&self) -> StageResult<()> {
        let Some(base) = self.state.lock().base.clone() else {
            return Ok(());
        };
        let _exclusive = self.exclusive.lock().await;
        {
            // Checked and counted at once: a truncation to nothing between
            // the two would leave the object's size counted for an empty file.
            let mut state = self.state.lock();
            if state.base.is_none() {
                return Ok(()); // loaded, or truncated, while we waited
            }
            self.take_to(&mut state, base.size)?;
        }
        match self.copy_base(&base).await {
            Ok(()) => {}
            // Truncated to nothing meanwhile: the copy is not needed any more,
            // and the change that asked for it goes on however it ended.
            Err(e) if self.state.lock().base.is_none() => {
                debug!(key = %base.key, error = %e, "a download no longer needed failed");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let mut state = self.state.lock();
        if state.base.is_none() {
            return Ok(()); // truncated to nothing meanwhile
        }
        state.base = None;
        let size = state.size;
        self.touch(&mut state, 0..size, None);
        debug!(
            key = state.key.as_str(),
            size = base.size,
            "downloaded the object to change it"
        );
        Ok(())
    }

    /// Copies `base` into the staging file and checks it; stops, writing
    /// nothing more, once a truncation to nothing has dropped it.
    async fn copy_base(&self, base: &Base) -> StageResult<()> {
        let object = self.base_version(base).await?;
        let chunk = self.layout.first_size();
        let mut offset = 0;
        while offset < base.size {
            let end = (offset + chunk).min(base.size);
            let mut at = offset;
            for piece in object.get(offset..end).await? {
                // Written under the state lock, while the file still stands
                // for the object: a truncation to nothing meanwhile (which
                // does not wait for this) dropped it, and what this brings
                // must not come back over what was written since.
                let state = self.state.lock();
                if state.base.is_none() {
                    return Ok(());
                }
                self.file.write_at(&piece, at).map_err(|e| self.local(e))?;
                drop(state);
                at += piece.len() as u64;
            }
            if at == offset {
                break;
            }
            offset = at;
        }
        // Read whole from its start, the object was checked as it came; a
        // check that could not chain is made whole now.
        object.authenticate().await?;
        Ok(())
    }
}

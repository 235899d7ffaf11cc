//! Image records in SQLite (`meta.db`, WAL mode): full image name -> target descriptor, with
//! created and updated times, and the repositories kept with no image required (made empty in
//! the mount). Every change is one transaction, so several processes can share the store and
//! a failed import registers nothing. An older schema is upgraded when the records are opened
//! for writing and read as it is on a read-only filesystem; a newer one is refused.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};

use crate::content::Change;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{Descriptor, MAX_DESCRIPTOR_SIZE};
use crate::reference::{check_repository, Reference, ReferenceError};

/// How long a writer waits for another process's transaction before giving up.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause before retrying what SQLite refused as BUSY without waiting.
const BUSY_RETRY: Duration = Duration::from_millis(5);
/// Schema version kept in `PRAGMA user_version` (3 added the `state` table, 4 the
/// `repositories` table, 5 the `origins` table, 6 the `verified` table of `store::verified`).
const SCHEMA_VERSION: i64 = 6;
/// The schema that added the `repositories` table.
const KEPT_SCHEMA: i64 = 4;
/// The schema that added the `origins` table.
const ORIGINS_SCHEMA: i64 = 5;
/// The `state` row set when `meta.db` was created while `blobs/` already held blobs: the
/// records were lost (a missing or empty database), so gc must not take every blob for
/// garbage. Its value is how many blob files there were; `since` when it was set.
const ADOPTED_KEY: &str = "adopted_without_records";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images (
    name       TEXT PRIMARY KEY,
    repository TEXT NOT NULL,
    descriptor TEXT NOT NULL,
    created    INTEGER NOT NULL,
    updated    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS images_by_repository ON images(repository);
CREATE TABLE IF NOT EXISTS leases (
    id      TEXT PRIMARY KEY,
    pid     INTEGER NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS lease_blobs (
    lease  TEXT NOT NULL,
    holder TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (lease, holder, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    since INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS repositories (
    name    TEXT PRIMARY KEY,
    created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS origins (
    digest     TEXT NOT NULL,
    registry   TEXT NOT NULL,
    repository TEXT NOT NULL,
    seen       INTEGER NOT NULL,
    PRIMARY KEY (digest, registry, repository)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS verified (
    digest   TEXT PRIMARY KEY,
    ino      INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    verity   BLOB
) WITHOUT ROWID;
";

/// How the store's connections open `meta.db`: read-write, created when missing, and never
/// through a symbolic link.
pub(super) fn write_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW
}

/// Opens `meta.db` of a store on a read-only filesystem: read-only, and when SQLite cannot
/// read a WAL database so (it needs to create `-shm`), as an immutable file (`immutable=1`:
/// no locks, no WAL; nothing can write it there anyway).
pub(super) fn open_read_only(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let probe = |c: &Connection| c.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0));
    if let Ok(conn) = Connection::open_with_flags(path, flags) {
        if probe(&conn).is_ok() {
            return Ok(conn);
        }
    }
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        tracing::warn!(
            "{}: read as an immutable file: changes still in its write-ahead log are not seen",
            path.display()
        );
    }
    let uri = format!("file:{}?immutable=1", uri_path(path));
    let conn = Connection::open_with_flags(uri, flags)?;
    probe(&conn)?;
    Ok(conn)
}

/// `path` for a `file:` URI: bytes other than unreserved characters and `/` percent-encoded.
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `state` mark of a store whose records were lost: (blob files then, when), if set. A
/// database from before the `state` table has none.
pub(super) fn adopted_mark(conn: &Connection) -> rusqlite::Result<Option<(i64, i64)>> {
    let has_table: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'state'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_table {
        return Ok(None);
    }
    conn.query_row(
        "SELECT value, since FROM state WHERE key = ?1",
        [ADOPTED_KEY],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// Clears the mark that the records were lost.
pub(super) fn clear_adopted_mark(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM state WHERE key = ?1", [ADOPTED_KEY])?;
    Ok(())
}

/// Runs `f` again while SQLite answers BUSY without having waited, up to `BUSY_TIMEOUT`.
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let start = std::time::Instant::now();
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && start.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(BUSY_RETRY);
            }
            other => return other,
        }
    }
}

/// One registered image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: Reference,
    pub target: Descriptor,
    /// Milliseconds since the Unix epoch.
    pub created: i64,
    pub updated: i64,
}

/// Checks that `name` may be registered for `target`, where `old` is what it names now, and
/// returns the record as compact JSON. Every catalog of image records keeps these rules: a
/// name with a digest names exactly that content, and keeps its media type for good (given
/// another, gc would judge its children by the new one); a record is at most
/// `MAX_DESCRIPTOR_SIZE` bytes.
pub fn check_record(
    name: &Reference,
    target: &Descriptor,
    old: Option<&Descriptor>,
) -> Result<String> {
    name.check_target(&target.digest)?;
    let json = serde_json::to_string(target).map_err(|e| Error::Invalid(e.to_string()))?;
    if json.len() as u64 > MAX_DESCRIPTOR_SIZE {
        return Err(Error::Image {
            name: name.to_string(),
            message: format!(
                "its descriptor is {} bytes, over the {MAX_DESCRIPTOR_SIZE}-byte limit",
                json.len()
            ),
        });
    }
    if let Some(old) = old.filter(|_| name.tag().is_none()) {
        if old.media_type != target.media_type {
            return Err(Error::Image {
                name: name.to_string(),
                message: format!(
                    "registered as {}; refusing to make it {}",
                    old.media_type, target.media_type
                ),
            });
        }
    }
    Ok(json)
}

/// The image-record table of one store.
pub struct Records {
    conn: Mutex<Connection>,
    /// Changes committed through this handle: SQLite's `data_version` counts only those of
    /// other connections.
    commits: AtomicI64,
    /// Whether the database has the `repositories` table (schema 4): one of an older version
    /// read on a read-only filesystem, which is never upgraded, has none.
    kept_table: bool,
    /// Whether the database has the `origins` table (schema 5).
    origins_table: bool,
}

impl Records {
    /// Opens (creating when missing) the records at `path`, as a database of no store.
    pub fn open(path: &Path) -> Result<Records> {
        Records::open_in_store(path, &|| Ok(0))
    }

    /// Opens the records of a store read-only (a store on a read-only filesystem).
    pub(super) fn open_read_only(path: &Path) -> Result<Records> {
        let conn = open_read_only(path)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(newer(path, version));
        }
        Ok(Records {
            conn: Mutex::new(conn),
            commits: AtomicI64::new(0),
            kept_table: version >= KEPT_SCHEMA,
            origins_table: version >= ORIGINS_SCHEMA,
        })
    }

    /// Opens (creating when missing) the records of a store. When this creates the schema,
    /// a missing or empty database, and `blob_files` counts any blob already in the store,
    /// the records were lost: the `state` mark `ADOPTED_KEY` is set in the same transaction,
    /// and gc refuses until it is cleared.
    pub(super) fn open_in_store(
        path: &Path,
        blob_files: &dyn Fn() -> Result<usize>,
    ) -> Result<Records> {
        let conn = Connection::open_with_flags(path, write_flags())?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Several processes may open a new store at once: the switch to WAL and the schema
        // take write locks, and SQLite answers BUSY at once, without waiting, where waiting
        // could deadlock (two connections converting the journal, or a reader upgrading).
        retry_busy(|| conn.pragma_update(None, "journal_mode", "WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let version: i64 =
            retry_busy(|| conn.pragma_query_value(None, "user_version", |r| r.get(0)))?;
        if version > SCHEMA_VERSION {
            return Err(newer(path, version));
        }
        if version < SCHEMA_VERSION {
            // A new or older store: the schema, once, under the write lock.
            let mut counted = None;
            let mut failed = None;
            retry_busy(|| {
                let tx = Transaction::new_unchecked(&conn, TransactionBehavior::Immediate)?;
                let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
                if version < SCHEMA_VERSION {
                    tx.execute_batch(SCHEMA)?;
                    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
                }
                if version == 0 {
                    // A database just made: were there blobs already?
                    let n = match counted {
                        Some(n) => n,
                        None => match blob_files() {
                            Ok(n) => *counted.insert(n),
                            Err(e) => {
                                failed = Some(e);
                                return Err(rusqlite::Error::InvalidQuery);
                            }
                        },
                    };
                    if n > 0 {
                        tx.execute(
                            "INSERT OR REPLACE INTO state (key, value, since) VALUES (?1, ?2, ?3)",
                            params![ADOPTED_KEY, n as i64, now_ms()],
                        )?;
                    }
                }
                tx.commit()
            })
            .map_err(|e| failed.take().unwrap_or(Error::Db(e)))?;
        }
        Ok(Records {
            conn: Mutex::new(conn),
            commits: AtomicI64::new(0),
            kept_table: true,
            origins_table: true,
        })
    }

    /// Registers (or re-points) images, all or none.
    pub fn put(&self, images: &[(Reference, Descriptor)]) -> Result<()> {
        self.update(images, &[])
    }

    /// In one transaction: removes `remove` (names that are not there are ignored) and
    /// registers `put`. What a write into the mount does to a repository. A name with a digest
    /// is refused for any other content: the last line of defence of every path that makes
    /// names (import, tag, the mount).
    pub fn update(&self, put: &[(Reference, Descriptor)], remove: &[Reference]) -> Result<()> {
        self.apply(&Change {
            put,
            remove,
            ..Change::default()
        })
    }

    /// Makes `change` in one transaction: images removed, then registered (see `update`),
    /// repositories forgotten, then kept (each name checked first).
    pub fn apply(&self, change: &Change) -> Result<()> {
        for (name, target) in change.put {
            name.check_target(&target.digest)?;
        }
        for repo in change.keep {
            check_repository(repo).map_err(|why| ReferenceError::Invalid(repo.clone(), why))?;
        }
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for name in change.remove {
            tx.execute("DELETE FROM images WHERE name = ?1", [name.to_string()])?;
        }
        let now = now_ms();
        for (name, target) in change.put {
            // Only a name with a digest keeps its media type: only its old record matters.
            let old: Option<String> = match name.tag() {
                Some(_) => None,
                None => tx
                    .query_row(
                        "SELECT descriptor FROM images WHERE name = ?1",
                        [name.to_string()],
                        |r| r.get(0),
                    )
                    .optional()?,
            };
            let old = old.and_then(|o| serde_json::from_str::<Descriptor>(&o).ok());
            let json = check_record(name, target, old.as_ref())?;
            tx.execute(
                "INSERT INTO images (name, repository, descriptor, created, updated)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT(name) DO UPDATE SET descriptor = ?3, updated = ?4",
                params![name.to_string(), name.repository(), json, now],
            )?;
        }
        for repo in change.forget {
            tx.execute("DELETE FROM repositories WHERE name = ?1", [repo])?;
        }
        for repo in change.keep {
            tx.execute(
                "INSERT INTO repositories (name, created) VALUES (?1, ?2)
                 ON CONFLICT(name) DO NOTHING",
                params![repo, now],
            )?;
        }
        tx.commit()?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The repositories kept whether they have images or not, sorted (none in records from
    /// before the `repositories` table, read on a read-only filesystem).
    pub fn repositories(&self) -> Result<Vec<String>> {
        if !self.kept_table {
            return Ok(Vec::new());
        }
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached("SELECT name FROM repositories ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        // Names are checked when kept; one written into the database by other means is left
        // out, as an image record that does not parse is refused.
        Ok(names
            .into_iter()
            .filter(|name| match check_repository(name) {
                Ok(()) => true,
                Err(why) => {
                    tracing::warn!("kept repository {name:?} left out: {why}");
                    false
                }
            })
            .collect())
    }

    /// Notes that `registry` has `digests` in `repository` (pulled from there, or pushed):
    /// a later push to another repository of that registry mounts them from there. Not an
    /// image change: the mount's views do not count it.
    pub fn note_origins(&self, registry: &str, repository: &str, digests: &[Digest]) -> Result<()> {
        if !self.origins_table {
            return Ok(());
        }
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO origins (digest, registry, repository, seen) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let now = super::now_ms();
            for d in digests {
                stmt.execute(rusqlite::params![d.to_string(), registry, repository, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The repositories of `registry` that `digest` was seen in, most recent first.
    pub fn origins(&self, digest: &Digest, registry: &str) -> Result<Vec<String>> {
        if !self.origins_table {
            return Ok(Vec::new());
        }
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT repository FROM origins WHERE digest = ?1 AND registry = ?2 ORDER BY seen DESC",
        )?;
        let repos = stmt
            .query_map([digest.to_string(), registry.to_owned()], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(repos)
    }

    /// Removes the named images, all or none: an unknown name fails the whole call.
    pub fn remove(&self, names: &[Reference]) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for name in names {
            let n = tx.execute("DELETE FROM images WHERE name = ?1", [name.to_string()])?;
            if n == 0 {
                return Err(Error::NotFound(name.to_string()));
            }
        }
        tx.commit()?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn get(&self, name: &Reference) -> Result<Option<Image>> {
        let conn = self.conn.lock();
        conn.query_row(
            "SELECT name, descriptor, created, updated FROM images WHERE name = ?1",
            [name.to_string()],
            row_to_raw,
        )
        .optional()?
        .map(RawImage::parse)
        .transpose()
    }

    /// All images, sorted by name.
    pub fn list(&self) -> Result<Vec<Image>> {
        self.query(
            "SELECT name, descriptor, created, updated FROM images ORDER BY name",
            [],
        )
    }

    /// Each repository with images: its name, how many, and the latest update (milliseconds
    /// since the epoch), by name. One pass over the repository index, no descriptor parsed: what
    /// the mount's tree needs (its views read `of_repository` when a repository is looked at).
    pub fn repository_summaries(&self) -> Result<Vec<crate::content::Summary>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT repository, COUNT(*), MAX(updated) FROM images GROUP BY repository ORDER BY repository",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<(String, i64, i64)>>>()?;
        Ok(rows
            .into_iter()
            .filter(|(name, _, _)| check_repository(name).is_ok())
            .map(|(repository, n, updated)| crate::content::Summary {
                repository,
                images: usize::try_from(n).unwrap_or(0),
                updated,
            })
            .collect())
    }

    /// The images of one repository, sorted by name.
    pub fn of_repository(&self, repository: &str) -> Result<Vec<Image>> {
        self.query(
            "SELECT name, descriptor, created, updated FROM images WHERE repository = ?1 ORDER BY name",
            [repository],
        )
    }

    /// Runs `f` on the records' connection (what the store reads of its own state there).
    pub(super) fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        f(&self.conn.lock())
    }

    /// A number that changes whenever another connection (another process, or another `Store`
    /// in this one) commits a change: a cheap way to notice that the records changed.
    pub fn data_version(&self) -> Result<i64> {
        let conn = self.conn.lock();
        Ok(conn.pragma_query_value(None, "data_version", |r| r.get(0))?)
    }

    /// A number that changes whenever the records change, through this handle or any other:
    /// `data_version` plus the changes this handle committed (both only grow).
    pub fn version(&self) -> Result<i64> {
        Ok(self
            .data_version()?
            .wrapping_add(self.commits.load(Ordering::Relaxed)))
    }

    fn query<P: rusqlite::Params>(&self, sql: &str, p: P) -> Result<Vec<Image>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(sql)?;
        let raws = stmt
            .query_map(p, row_to_raw)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        raws.into_iter().map(RawImage::parse).collect()
    }
}

fn newer(path: &Path, version: i64) -> Error {
    Error::Invalid(format!(
        "{}: written by a newer layoutfs (schema {version})",
        path.display()
    ))
}

struct RawImage {
    name: String,
    descriptor: String,
    created: i64,
    updated: i64,
}

fn row_to_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawImage> {
    Ok(RawImage {
        name: r.get(0)?,
        descriptor: r.get(1)?,
        created: r.get(2)?,
        updated: r.get(3)?,
    })
}

impl RawImage {
    fn parse(self) -> Result<Image> {
        let bad = |m: String| Error::Invalid(format!("image record {:?}: {m}", self.name));
        let name = self.name.parse().map_err(|e| bad(format!("{e}")))?;
        let target = serde_json::from_str(&self.descriptor).map_err(|e| bad(e.to_string()))?;
        Ok(Image {
            name,
            target,
            created: self.created,
            updated: self.updated,
        })
    }
}

/// Forgets where `digests` were seen on registries, in gc's transaction (gc removed them).
pub(super) fn forget_origins_in<'a>(
    tx: &rusqlite::Transaction<'_>,
    digests: impl IntoIterator<Item = &'a Digest>,
) -> rusqlite::Result<()> {
    delete_digests_in(tx, "DELETE FROM origins WHERE digest = ?1", digests)
}

/// Runs `delete` (a statement of one `?1`, a digest) for each of `digests` in `tx`: how gc
/// drops the rows other tables keep of the blobs it removed.
pub(super) fn delete_digests_in<'a>(
    tx: &rusqlite::Transaction<'_>,
    delete: &'static str,
    digests: impl IntoIterator<Item = &'a Digest>,
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(delete)?;
    for d in digests {
        stmt.execute([d.to_string()])?;
    }
    Ok(())
}

/// Runs `f` on every image record read through `conn`, sorted by name, one row at a time:
/// what walks them all without holding them all (100,000 records are tens of MiB as `Image`s).
pub(super) fn for_each_in(conn: &Connection, mut f: impl FnMut(Image) -> Result<()>) -> Result<()> {
    let mut stmt =
        conn.prepare("SELECT name, descriptor, created, updated FROM images ORDER BY name")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        f(row_to_raw(row)?.parse()?)?;
    }
    Ok(())
}

/// The number of characters of the longest image name (0 with no image).
pub(super) fn longest_name_in(conn: &Connection) -> Result<usize> {
    let n: i64 = conn.query_row(
        "SELECT coalesce(max(length(name)), 0) FROM images",
        [],
        |r| r.get(0),
    )?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Runs `f` on the (name, descriptor JSON) of each record changed at or after `since_ms`,
/// read in `tx` one row at a time, sorted by name (gc's view: `i64::MIN` for all of them).
pub(super) fn each_changed_since_in(
    tx: &rusqlite::Transaction<'_>,
    since_ms: i64,
    mut f: impl FnMut(&str, &str) -> Result<()>,
) -> Result<()> {
    let mut stmt =
        tx.prepare("SELECT name, descriptor FROM images WHERE updated >= ?1 ORDER BY name")?;
    let mut rows = stmt.query([since_ms])?;
    while let Some(r) = rows.next()? {
        let name: String = r.get(0)?;
        let json: String = r.get(1)?;
        f(&name, &json)?;
    }
    Ok(())
}

/// Milliseconds since the epoch, as records and leases keep time.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{Algorithm, Digest};

    #[test]
    fn put_get_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::open(&dir.path().join("meta.db")).unwrap();
        let d = crate::oci::tests::desc(
            crate::oci::MEDIA_OCI_MANIFEST,
            Digest::of(Algorithm::Sha256, b"m"),
            1,
        );
        let a: Reference = "busybox:latest".parse().unwrap();
        let b: Reference = "docker.io/library/busybox:1.36".parse().unwrap();
        r.put(&[(a.clone(), d.clone()), (b.clone(), d.clone())])
            .unwrap();
        assert_eq!(r.get(&a).unwrap().unwrap().target, d);
        let names: Vec<String> = r
            .list()
            .unwrap()
            .iter()
            .map(|i| i.name.to_string())
            .collect();
        assert_eq!(names, ["busybox:latest", "docker.io/library/busybox:1.36"]);
        assert_eq!(r.of_repository("busybox").unwrap().len(), 1);
        // A second process sees the same records.
        let r2 = Records::open(&dir.path().join("meta.db")).unwrap();
        assert_eq!(r2.list().unwrap().len(), 2);
        // Removing an unknown name removes nothing.
        let unknown: Reference = "nothere:1".parse().unwrap();
        assert!(matches!(
            r.remove(&[a.clone(), unknown]),
            Err(Error::NotFound(_))
        ));
        assert_eq!(r.list().unwrap().len(), 2);
        r.remove(std::slice::from_ref(&a)).unwrap();
        assert!(r.get(&a).unwrap().is_none());
    }

    #[test]
    fn data_version_counts_other_handles_changes_and_version_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let (a, b) = (Records::open(&path).unwrap(), Records::open(&path).unwrap());
        let keep = |r: &Records, repo: &str| {
            r.apply(&Change {
                keep: &[repo.to_owned()],
                ..Change::default()
            })
        };
        let seen = |r: &Records| (r.data_version().unwrap(), r.version().unwrap());
        let (a0, b0) = (seen(&a), seen(&b));
        keep(&a, "one").unwrap();
        let (a1, b1) = (seen(&a), seen(&b));
        // SQLite's data_version moves for the other connection only; version for both.
        assert_eq!(a1.0, a0.0, "data_version moved for a change of its own");
        assert_ne!(b1.0, b0.0);
        assert_ne!(a1.1, a0.1);
        assert_ne!(b1.1, b0.1);
        // A refused change moves neither.
        assert!(keep(&a, "not valid").is_err());
        assert_eq!((seen(&a), seen(&b)), (a1, b1));
        assert_eq!(b.repositories().unwrap(), ["one"]);
    }
}

//! Leases: how a process keeps blobs that no image record refers to yet safe from gc, as
//! containerd's leases do. A lease is a row in `meta.db` owned by a process (its pid); it holds
//! digests, each under a holder label (an import holds everything under one label; the mount
//! holds a blob per writing process and repository until that writer's `index.json` lands).
//!
//! The protocol that makes gc safe: a writer adds a digest to its lease *before* it looks
//! whether the blob is in the store, and gc marks and sweeps inside one write transaction of
//! the same database. A lease added before gc's transaction is seen by gc; one added after it
//! finds the blob either kept or gone (and then writes it). A lease of a process that is gone
//! is void once it is older than gc's grace period.
//!
//! A store on a read-only filesystem has no leases: nothing can be removed from it, so a
//! reader there holds nothing (and could not write the rows anyway).

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{params, Connection, TransactionBehavior};

use crate::digest::Digest;
use crate::error::Result;

use super::ingest::process_unique_id;
use super::records::{now_ms, write_flags, BUSY_TIMEOUT};

static NEXT_LEASE: AtomicU64 = AtomicU64::new(0);

/// The lease connection of one store. Leases need no durability (a lease of a process that
/// crashed is void anyway), so this connection commits without fsync: holding a blob costs
/// microseconds, not a disk flush. None on a read-only store: every lease there is empty.
pub struct Leases {
    conn: Option<Mutex<Connection>>,
}

impl Leases {
    pub(super) fn open(db: &Path) -> Result<Leases> {
        let conn = Connection::open_with_flags(db, write_flags())?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        Ok(Leases {
            conn: Some(Mutex::new(conn)),
        })
    }

    /// The leases of a store on a read-only filesystem: they hold nothing.
    pub(super) fn disabled() -> Leases {
        Leases { conn: None }
    }

    /// Whether `id` names a live lease of this store (on a read-only store, where nothing is
    /// written and no lease holds anything, any).
    pub fn knows(&self, id: &str) -> Result<bool> {
        let Some(conn) = &self.conn else {
            return Ok(true);
        };
        let n: i64 =
            conn.lock()
                .query_row("SELECT COUNT(*) FROM leases WHERE id = ?1", [id], |r| {
                    r.get(0)
                })?;
        Ok(n > 0)
    }

    /// Starts a lease owned by this process.
    pub fn create(self: &Arc<Self>) -> Result<Lease> {
        let id = process_unique_id(&NEXT_LEASE);
        if let Some(conn) = &self.conn {
            conn.lock().execute(
                "INSERT INTO leases (id, pid, created) VALUES (?1, ?2, ?3)",
                params![id, std::process::id(), now_ms()],
            )?;
        }
        Ok(Lease {
            leases: Arc::clone(self),
            id,
        })
    }
}

/// A lease of this process; dropping it releases everything it holds.
pub struct Lease {
    leases: Arc<Leases>,
    id: String,
}

impl Lease {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Holds `digests` under `holder` (again holding a held digest is harmless). Call it
    /// before looking whether the blobs are in the store.
    pub fn hold<'d>(
        &self,
        holder: &str,
        digests: impl IntoIterator<Item = &'d Digest>,
    ) -> Result<()> {
        let Some(conn) = &self.leases.conn else {
            return Ok(());
        };
        let mut conn = conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO lease_blobs (lease, holder, digest) VALUES (?1, ?2, ?3)",
            )?;
            for d in digests {
                stmt.execute(params![self.id, holder, d.to_string()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Releases what `holder` holds.
    pub fn release(&self, holder: &str) -> Result<()> {
        let Some(conn) = &self.leases.conn else {
            return Ok(());
        };
        conn.lock().execute(
            "DELETE FROM lease_blobs WHERE lease = ?1 AND holder = ?2",
            params![self.id, holder],
        )?;
        Ok(())
    }

    /// Releases what every holder whose label starts with `prefix` holds.
    pub fn release_prefix(&self, prefix: &str) -> Result<()> {
        let Some(conn) = &self.leases.conn else {
            return Ok(());
        };
        conn.lock().execute(
            "DELETE FROM lease_blobs WHERE lease = ?1 AND substr(holder, 1, length(?2)) = ?2",
            params![self.id, prefix],
        )?;
        Ok(())
    }

    /// How many digests the lease holds (under all holders, counted once).
    pub fn held(&self) -> Result<usize> {
        let Some(conn) = &self.leases.conn else {
            return Ok(0);
        };
        let n: i64 = conn.lock().query_row(
            "SELECT count(DISTINCT digest) FROM lease_blobs WHERE lease = ?1",
            [&self.id],
            |r| r.get(0),
        )?;
        Ok(n as usize)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(conn) = &self.leases.conn else {
            return;
        };
        let mut conn = conn.lock();
        let result = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                tx.execute("DELETE FROM lease_blobs WHERE lease = ?1", [&self.id])?;
                tx.execute("DELETE FROM leases WHERE id = ?1", [&self.id])?;
                tx.commit()
            });
        if let Err(e) = result {
            // The rows stay until gc finds their process gone: blobs are kept, not lost.
            tracing::warn!("lease {}: could not release it: {e}", self.id);
        }
    }
}

/// A lease as gc sees it, within its transaction.
pub(super) struct LeaseRow {
    pub id: String,
    pub pid: i64,
    pub created: i64,
}

/// Every lease, read in `tx`.
pub(super) fn all_in(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Vec<LeaseRow>> {
    let mut stmt = tx.prepare("SELECT id, pid, created FROM leases")?;
    let rows = stmt.query_map([], |r| {
        Ok(LeaseRow {
            id: r.get(0)?,
            pid: r.get(1)?,
            created: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// Every (lease, digest) held, read in `tx`; digests that do not parse are left out.
pub(super) fn holds_in(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Vec<(String, Digest)>> {
    let mut stmt = tx.prepare("SELECT DISTINCT lease, digest FROM lease_blobs")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (lease, digest) = row?;
        if let Ok(d) = digest.parse::<Digest>() {
            out.push((lease, d));
        }
    }
    Ok(out)
}

/// Deletes lease `id` and what it holds, in `tx`.
pub(super) fn delete_in(tx: &rusqlite::Transaction<'_>, id: &str) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM lease_blobs WHERE lease = ?1", [id])?;
    tx.execute("DELETE FROM leases WHERE id = ?1", [id])?;
    Ok(())
}

//! Hashing behind the writes: a writer's running hash continued on a thread of its own, which
//! reads back from the data file (the page cache, just written) what the writes appended, in
//! order, while the writer goes on to the next write. The mount's writes then wait only for
//! their copy into the page cache, and `cp -r` into the mount hashes on one core while it
//! copies on the other.
//!
//! - Only appends are hashed: the writer cancels the hash (`cancel`) at a write anywhere else
//!   or a truncate that changes the content, as it drops its running hash then.
//! - No bytes are queued: the thread reads them from the file, one `STEP` at a time, so memory
//!   does not grow with what is written or how far the hash lags. At most `MAX_RUNNING` such
//!   threads run in the process (each with one `STEP` buffer and one descriptor); a writer
//!   that finds none free hashes its writes as they arrive.
//! - A thread with nothing to hash for `IDLE` ends, giving its slot and descriptor back; the
//!   writer takes its hasher back at its next append (`advance` says so, then `finish`).
//! - A failed read back ends the hash without a result: the digest then comes from the file,
//!   whose read reports the error at commit.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::digest::Hasher;

/// Threads hashing behind writes at once in the process; past this, writes are hashed as they
/// arrive. Bounds the memory (one `STEP` buffer each), threads and descriptors this takes,
/// whatever the number of files written at once.
pub const MAX_RUNNING: usize = 4;

/// Bytes read back and hashed per step.
const STEP: usize = 1 << 20;

/// How long a thread with nothing to hash waits for more before it ends.
const IDLE: Duration = Duration::from_millis(200);

/// Threads hashing now, in the whole process.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// What the writer asked the thread to do once it has hashed all it was given.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Hash up to the target, then end.
    Finish,
    /// End as soon as possible: the result is not wanted.
    Cancel,
}

struct State {
    /// Bytes `0..target` of the file are written and to be hashed.
    target: u64,
    /// Bytes `0..done` are hashed.
    done: u64,
    stop: Option<Stop>,
    /// The hasher: here before the thread starts and after it ended (None when a read failed
    /// or it was cancelled).
    hasher: Option<Hasher>,
    ended: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// A running hash continued on its own thread (see the module doc).
pub struct HashBehind {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Gives a slot of `RUNNING` back when dropped.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        RUNNING
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_RUNNING).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HashBehind {
    /// Continues the running hash in `hasher`, which covers bytes `0..from` of `file`, over
    /// `from..to` on a thread of its own, taking it. Leaves it when no thread is free (or none
    /// could start): the caller hashes as before.
    pub fn start(
        file: &File,
        hasher: &mut Option<Hasher>,
        from: u64,
        to: u64,
    ) -> Option<HashBehind> {
        let slot = Slot::take()?;
        let file = file.try_clone().ok()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                target: to,
                done: from,
                stop: None,
                hasher: Some(hasher.take()?),
                ended: false,
            }),
            changed: Condvar::new(),
        });
        let theirs = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("hash-behind".into())
            .spawn(move || run(&theirs, &file, slot));
        match spawned {
            Ok(thread) => Some(HashBehind {
                shared,
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::debug!("hashing as writes arrive: no thread ({e})");
                // The thread never ran: the hasher is where it was put.
                *hasher = shared.state.lock().hasher.take();
                None
            }
        }
    }

    /// Bytes `0..to` are written: hash them too. False when the thread has ended (idle): the
    /// caller takes the hasher back (`finish`, covering what was given before) and goes on.
    #[must_use]
    pub fn advance(&self, to: u64) -> bool {
        let mut s = self.shared.state.lock();
        if s.ended {
            return false;
        }
        s.target = s.target.max(to);
        drop(s);
        self.shared.changed.notify_one();
        true
    }

    /// Waits until everything given is hashed and returns the hasher, or None when a read
    /// back failed (the digest is then to come from the file).
    pub fn finish(mut self) -> Option<Hasher> {
        self.end(Stop::Finish)
    }

    /// Ends the hash, its result not wanted.
    pub fn cancel(mut self) {
        self.end(Stop::Cancel);
    }

    fn end(&mut self, stop: Stop) -> Option<Hasher> {
        let mut s = self.shared.state.lock();
        if !s.ended && s.stop != Some(Stop::Cancel) {
            s.stop = Some(stop);
        }
        drop(s);
        self.shared.changed.notify_one();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                return None;
            }
        }
        let mut s = self.shared.state.lock();
        // An idle end before all was given cannot be: the thread ends idle only caught up.
        (s.done >= s.target).then(|| s.hasher.take()).flatten()
    }
}

impl Drop for HashBehind {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.end(Stop::Cancel);
        }
    }
}

/// The thread: hashes what is given, in order, until told to stop or idle for `IDLE`.
fn run(shared: &Shared, file: &File, slot: Slot) {
    let mut buf = vec![0u8; STEP];
    let mut hasher = shared.state.lock().hasher.take();
    loop {
        let (from, to) = {
            let mut s = shared.state.lock();
            loop {
                if s.stop == Some(Stop::Cancel) {
                    hasher = None;
                    break;
                }
                if s.done < s.target {
                    break;
                }
                if s.stop == Some(Stop::Finish) {
                    break;
                }
                if shared.changed.wait_for(&mut s, IDLE).timed_out()
                    && s.done >= s.target
                    && s.stop.is_none()
                {
                    break;
                }
            }
            if hasher.is_none() || s.done >= s.target {
                s.hasher = hasher;
                s.ended = true;
                drop(s);
                drop(slot);
                shared.changed.notify_all();
                return;
            }
            (s.done, s.target.min(s.done + STEP as u64))
        };
        let n = (to - from) as usize;
        match file.read_exact_at(&mut buf[..n], from) {
            Ok(()) => {
                if let Some(h) = hasher.as_mut() {
                    h.update(&buf[..n]);
                }
            }
            Err(e) => {
                tracing::debug!("hashing from the file at commit: read back failed ({e})");
                hasher = None;
            }
        }
        shared.state.lock().done = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{Algorithm, Digest};

    const MIB: usize = 1 << 20;

    /// `n` bytes that differ from MiB to MiB and from `seed` to `seed`.
    /// A new hash-behind writer of `store`, named at commit.
    fn writer(store: &crate::store::Store) -> crate::store::BlobWriter {
        store
            .ingest_unnamed(Algorithm::Sha256)
            .unwrap()
            .hash_behind()
    }

    fn content(n: usize, seed: u8) -> Vec<u8> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) >> 13) as u8) ^ seed)
            .collect()
    }

    #[test]
    fn more_writers_than_threads_all_hash_right() {
        let (_tmp, store) = crate::store::tests::store();
        let writers = 2 * MAX_RUNNING + 1;
        std::thread::scope(|s| {
            for i in 0..writers {
                let store = &store;
                s.spawn(move || {
                    let data = content(4 * MIB + 100, i as u8);
                    let mut w = writer(store);
                    for (n, chunk) in data.chunks(MIB).enumerate() {
                        w.write_at((n * MIB) as u64, chunk).unwrap();
                        assert!(RUNNING.load(Ordering::Acquire) <= MAX_RUNNING);
                        // Some pause longer than a hashing thread waits: it ends, and the
                        // next write takes the hash back.
                        if i % 3 == 0 && n == 1 {
                            std::thread::sleep(IDLE * 2);
                        }
                    }
                    let (d, placed) = w.commit_named().unwrap();
                    assert_eq!(d, Digest::of(Algorithm::Sha256, &data), "writer {i}");
                    assert!(placed);
                });
            }
        });
    }

    #[test]
    fn a_rewrite_or_truncate_behind_the_hash_makes_it_come_from_the_file() {
        let (_tmp, store) = crate::store::tests::store();
        let mut data = content(3 * MIB, 1);
        // A rewrite of the middle while the first bytes may still be hashed behind.
        let mut w = writer(&store);
        for (n, chunk) in data.chunks(MIB).enumerate() {
            w.write_at((n * MIB) as u64, chunk).unwrap();
        }
        data[MIB..2 * MIB].fill(7);
        w.write_at(MIB as u64, &data[MIB..2 * MIB]).unwrap();
        assert!(w.behind.is_none() && w.hasher.is_none());
        let (d, _) = w.commit_named().unwrap();
        assert_eq!(d, Digest::of(Algorithm::Sha256, &data));

        // Truncated, then appended to: from the file; truncated to nothing: hashed anew.
        let mut w = writer(&store);
        w.write_at(0, &data).unwrap();
        w.truncate(2 * MIB as u64).unwrap();
        w.write_at(2 * MIB as u64, &data[..MIB]).unwrap();
        let mut want = data[..2 * MIB].to_vec();
        want.extend_from_slice(&data[..MIB]);
        assert_eq!(
            w.digest(Algorithm::Sha256).unwrap(),
            Digest::of(Algorithm::Sha256, &want)
        );
        w.truncate(0).unwrap();
        w.write_at(0, &data).unwrap();
        w.write_at(data.len() as u64, &data[..MIB]).unwrap();
        let mut want = data.clone();
        want.extend_from_slice(&data[..MIB]);
        assert_eq!(
            w.digest(Algorithm::Sha256).unwrap(),
            Digest::of(Algorithm::Sha256, &want)
        );
        // Parked while hashing behind: the thread's descriptor goes too, the hash stays.
        w.write_at(want.len() as u64, &data[..MIB]).unwrap();
        want.extend_from_slice(&data[..MIB]);
        w.park();
        assert!(w.is_parked() && w.behind.is_none() && w.hasher.is_some());
        let (d, _) = w.commit_named().unwrap();
        assert_eq!(d, Digest::of(Algorithm::Sha256, &want));
    }
}

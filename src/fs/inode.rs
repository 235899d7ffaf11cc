//! Inode numbers: each node of the tree (a directory path, a repository's layout files, a blob)
//! has a number while the kernel holds it, and the table holds only what the kernel (or the
//! mount itself) still refers to, so the daemon's memory follows the kernel's cache, not every
//! name ever looked at.
//!
//! A number is derived from the node (`home`: a hash of its kind and repository path, or of
//! its digest and size), so a node the kernel forgot and asks for again gets the same number
//! back, with nothing kept for it meanwhile. Two live nodes never share a number: when a node's
//! home number is held by another live node, it takes the next free one (open addressing), and
//! keeps it while it lives. What a number stood for is only reused once the kernel forgot it.
//!
//! Lookup counts: every reply that hands the kernel an entry (lookup, create, mkdir, symlink,
//! readdirplus) counts one on the node (`entry`), each `forget` subtracts what the kernel says
//! it drops (`forget`), and a node at zero is freed (`free`) unless the caller finds it pinned
//! (an open file, a temporary entry still alive, a time set on it, the root).
//!
//! A blob is one node whatever repository shows it: it is the same immutable content, and the
//! kernel's cache and the passthrough backing file are shared. A rename keeps numbers
//! (`rename_tree`), and `rebind` gives a node the number of a file renamed onto it; after either,
//! a node's number is not its home number until the kernel forgets it.
//!
//! Lock order: the table's lock is a leaf; nothing else is locked while it is held.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::digest::{Algorithm, Digest};

/// The root directory's inode number (FUSE fixes it at 1).
pub const ROOT_INO: u64 = 1;

/// The scratch entry of an orphaned inode: none is ever numbered 0, so it is a temporary file
/// that is gone (ENOENT to a lookup or stat; writes through a descriptor still open on it
/// reach nothing anyone sees).
pub const ORPHANED: u64 = 0;

/// The lowest number a node other than the root gets (0 means "no inode" to FUSE).
const FIRST_INO: u64 = 2;
/// Numbers stay below 2^63, so that nothing reading `st_ino` as signed sees a negative one.
const INO_MASK: u64 = u64::MAX >> 1;

/// What an inode number stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Node {
    /// A directory for a repository-name path; `""` is the mount root.
    Dir(Arc<str>),
    /// `<repo>/oci-layout`.
    LayoutFile(Arc<str>),
    /// `<repo>/index.json`.
    Index(Arc<str>),
    /// `<repo>/blobs`.
    Blobs(Arc<str>),
    /// `<repo>/blobs/<alg>`.
    AlgDir(Arc<str>, Algorithm),
    /// A blob, with the size its descriptors give (checked against the file on open).
    Blob(Digest, u64),
    /// A file or directory written into the mount (see `fs::write`), by its number there.
    Scratch(u64),
}

/// How a node's home number is derived (replaceable in tests, to force collisions).
pub type HashFn = fn(&Node) -> u64;

/// The hash of a node, fixed for the life of the process (no random keys).
pub fn node_hash(node: &Node) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    node.hash(&mut h);
    h.finish()
}

/// A hasher for keys that are hashes or inode numbers already: one multiply spreads them.
#[derive(Default)]
struct Spread(u64);

impl Hasher for Spread {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type ByNumber<V> = HashMap<u64, V, BuildHasherDefault<Spread>>;

/// One live number.
#[derive(Debug)]
struct Slot {
    node: Node,
    /// References the kernel holds (entries it was handed, less what it forgot).
    lookups: u64,
    /// The kernel forgot every reference it was handed: the number may be freed. A number
    /// the mount gave out for its own use and never handed to the kernel is kept (the mount's
    /// own callers may hold it, as before lookup counts).
    forgotten: bool,
}

#[derive(Default)]
struct Table {
    /// Every live number.
    slots: ByNumber<Slot>,
    /// The current number of each node, by the node's hash; a node whose hash another node
    /// holds here (a collision of full hashes) is in `overflow`.
    by_hash: ByNumber<u64>,
    overflow: HashMap<Node, u64>,
}

impl Table {
    /// The current number of `node` (`h` its hash).
    fn find(&self, node: &Node, h: u64) -> Option<u64> {
        if let Some(&ino) = self.by_hash.get(&h) {
            if self.slots.get(&ino).is_some_and(|s| s.node == *node) {
                return Some(ino);
            }
        }
        self.overflow.get(node).copied()
    }

    /// The number a node of hash `h` gets now: its home, or the first free one after it.
    fn free_number(&self, h: u64) -> u64 {
        let mut ino = home(h);
        while self.slots.contains_key(&ino) {
            ino = if ino >= INO_MASK { FIRST_INO } else { ino + 1 };
        }
        ino
    }

    /// Makes `ino` the current number of `node` (its slot already says so).
    fn map(&mut self, node: &Node, h: u64, ino: u64) {
        match self.by_hash.get(&h) {
            Some(&other)
                if other != ino && self.slots.get(&other).is_some_and(|s| s.node != *node) =>
            {
                self.overflow.insert(node.clone(), ino);
            }
            _ => {
                self.by_hash.insert(h, ino);
                self.overflow.remove(node);
            }
        }
    }

    /// Drops `node`'s mapping if it is to `ino`.
    fn unmap(&mut self, node: &Node, h: u64, ino: u64) {
        if self.by_hash.get(&h) == Some(&ino) {
            self.by_hash.remove(&h);
        } else if self.overflow.get(node) == Some(&ino) {
            self.overflow.remove(node);
        }
    }
}

/// Below this many slots of capacity the maps are left as they are.
const SHRINK_FROM: usize = 1024;

impl Table {
    /// Gives the maps' memory back once they are mostly empty (the kernel dropped its cache):
    /// a hash map keeps its capacity otherwise. Each shrink halves what is left at least four
    /// times over, so its rehash is paid for by the frees before it.
    fn shrink(&mut self) {
        let len = self.slots.len();
        if self.slots.capacity() > SHRINK_FROM && len * 4 < self.slots.capacity() {
            self.slots.shrink_to(len * 2);
            self.by_hash.shrink_to(self.by_hash.len() * 2);
            self.overflow.shrink_to(self.overflow.len() * 2);
        }
    }
}

/// A node's home number from its hash: never 0 or the root's, below 2^63.
fn home(h: u64) -> u64 {
    (h & INO_MASK).max(FIRST_INO)
}

/// The two-way map between live nodes and inode numbers, with the kernel's lookup counts.
pub struct Inodes {
    table: RwLock<Table>,
    hash: HashFn,
}

impl Default for Inodes {
    fn default() -> Self {
        Self::new()
    }
}

impl Inodes {
    pub fn new() -> Inodes {
        Self::with_hash(node_hash)
    }

    /// A table deriving numbers with `hash` (tests force collisions with it).
    pub fn with_hash(hash: HashFn) -> Inodes {
        let inodes = Inodes {
            table: RwLock::new(Table::default()),
            hash,
        };
        {
            let root = Node::Dir(Arc::from(""));
            let h = hash(&root);
            let mut t = inodes.table.write();
            t.slots.insert(
                ROOT_INO,
                Slot {
                    node: root.clone(),
                    lookups: 0,
                    forgotten: false,
                },
            );
            t.map(&root, h, ROOT_INO);
        }
        inodes
    }

    /// The inode number of `node`, assigned if it has none (with no lookup counted: for the
    /// mount's own use; the kernel's entries go through `entry`).
    pub fn ino(&self, node: &Node) -> u64 {
        self.assign(node, 0)
    }

    /// The inode number of `node`, handed to the kernel in an entry: one lookup counted.
    pub fn entry(&self, node: &Node) -> u64 {
        self.assign(node, 1)
    }

    fn assign(&self, node: &Node, lookups: u64) -> u64 {
        let h = (self.hash)(node);
        if lookups == 0 {
            if let Some(ino) = self.table.read().find(node, h) {
                return ino;
            }
        }
        let mut t = self.table.write();
        if let Some(ino) = t.find(node, h) {
            if let Some(s) = t.slots.get_mut(&ino) {
                s.lookups = s.lookups.saturating_add(lookups);
                s.forgotten &= lookups == 0;
            }
            return ino;
        }
        let ino = t.free_number(h);
        t.slots.insert(
            ino,
            Slot {
                node: node.clone(),
                lookups,
                forgotten: false,
            },
        );
        t.map(node, h, ino);
        ino
    }

    /// The number `node` has, or would get if it were given one now (a directory listing
    /// shows it without the table keeping anything).
    pub fn peek(&self, node: &Node) -> u64 {
        let h = (self.hash)(node);
        let t = self.table.read();
        t.find(node, h).unwrap_or_else(|| t.free_number(h))
    }

    /// The inode number of `node`, if it has one.
    pub fn get(&self, node: &Node) -> Option<u64> {
        let h = (self.hash)(node);
        self.table.read().find(node, h)
    }

    /// The node a live inode number stands for.
    pub fn node(&self, ino: u64) -> Option<Node> {
        self.table.read().slots.get(&ino).map(|s| s.node.clone())
    }

    /// Counts one more lookup of live number `ino` (an entry handed to the kernel for a number
    /// the mount gave out itself); false if the number is not live.
    pub fn add_lookup(&self, ino: u64) -> bool {
        match self.table.write().slots.get_mut(&ino) {
            Some(s) => {
                s.lookups = s.lookups.saturating_add(1);
                s.forgotten = false;
                true
            }
            None => false,
        }
    }

    /// The kernel dropped `n` references to `ino`: the node when none is left, for the caller
    /// to `free` unless something else pins it.
    pub fn forget(&self, ino: u64, n: u64) -> Option<Node> {
        let mut t = self.table.write();
        let s = t.slots.get_mut(&ino)?;
        s.lookups = s.lookups.saturating_sub(n);
        s.forgotten = s.lookups == 0;
        (s.lookups == 0 && ino != ROOT_INO).then(|| s.node.clone())
    }

    /// Frees `ino` if the kernel forgot every reference to it (none was counted since
    /// `forget` said so); true if it was freed. The root, and a number never handed to the
    /// kernel, are never freed.
    pub fn free(&self, ino: u64) -> bool {
        let mut t = self.table.write();
        if ino == ROOT_INO
            || t.slots
                .get(&ino)
                .is_none_or(|s| s.lookups > 0 || !s.forgotten)
        {
            return false;
        }
        let Some(slot) = t.slots.remove(&ino) else {
            return false;
        };
        let h = (self.hash)(&slot.node);
        t.unmap(&slot.node, h, ino);
        t.shrink();
        true
    }

    /// The references the kernel holds to `ino` (None: not live).
    pub fn lookups(&self, ino: u64) -> Option<u64> {
        self.table.read().slots.get(&ino).map(|s| s.lookups)
    }

    /// Moves every node under repository path `from` (itself included) to the same place under
    /// `to`, keeping their numbers: after `mv a b` the kernel's inode for `a` is `b`.
    pub fn rename_tree(&self, from: &str, to: &str) {
        let moved = |p: &Arc<str>| -> Option<Arc<str>> {
            if &**p == from {
                Some(Arc::from(to))
            } else {
                p.strip_prefix(from)
                    .filter(|rest| rest.starts_with('/'))
                    .map(|rest| Arc::from(format!("{to}{rest}")))
            }
        };
        let mut t = self.table.write();
        let mut moves = Vec::new();
        for (&ino, slot) in &t.slots {
            let new = match &slot.node {
                Node::Dir(p) => moved(p).map(Node::Dir),
                Node::LayoutFile(p) => moved(p).map(Node::LayoutFile),
                Node::Index(p) => moved(p).map(Node::Index),
                Node::Blobs(p) => moved(p).map(Node::Blobs),
                Node::AlgDir(p, alg) => moved(p).map(|p| Node::AlgDir(p, *alg)),
                Node::Blob(..) | Node::Scratch(_) => None,
            };
            // A number whose node another number took over (the path of a directory removed,
            // then made again or renamed onto) stays with its old path: it is not moved along.
            let h = (self.hash)(&slot.node);
            if let Some(new) = new.filter(|_| t.find(&slot.node, h) == Some(ino)) {
                moves.push((ino, h, new));
            }
        }
        // All old mappings go first, so that a node moved onto a name another moved node
        // leaves is not taken for a collision.
        for (ino, h, _) in &moves {
            let old = t.slots[ino].node.clone();
            t.unmap(&old, *h, *ino);
        }
        for (ino, _, new) in moves {
            let h = (self.hash)(&new);
            if let Some(s) = t.slots.get_mut(&ino) {
                s.node = new.clone();
            }
            t.map(&new, h, ino);
        }
    }

    /// Makes inode `ino` stand for `node` from now on, as the number `node` is given: a file
    /// renamed onto a layout name is that name's inode now (the kernel keeps the renamed
    /// file's number for the name, and asks for it next). The number `node` had before is
    /// orphaned (`ORPHANED`), as the file a rename replaces on a disk: what still holds it
    /// (an open descriptor) reaches nothing through it.
    pub fn rebind(&self, ino: u64, node: &Node) {
        let mut t = self.table.write();
        let Some(old) = t.slots.get(&ino).map(|s| s.node.clone()) else {
            return;
        };
        let h_old = (self.hash)(&old);
        t.unmap(&old, h_old, ino);
        let h = (self.hash)(node);
        if let Some(prev) = t.find(node, h).filter(|p| *p != ino) {
            t.unmap(node, h, prev);
            if let Some(s) = t.slots.get_mut(&prev) {
                s.node = Node::Scratch(ORPHANED);
            }
        }
        if let Some(s) = t.slots.get_mut(&ino) {
            s.node = node.clone();
        }
        t.map(node, h, ino);
    }

    /// Live numbers (the root included).
    pub fn len(&self) -> usize {
        self.table.read().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(p: &str) -> Node {
        Node::Dir(Arc::from(p))
    }

    #[test]
    fn numbers_are_stable_and_distinct() {
        let inodes = Inodes::new();
        assert_eq!(inodes.node(ROOT_INO), Some(dir("")));
        let a = inodes.ino(&dir("busybox"));
        let b = inodes.ino(&Node::Index(Arc::from("busybox")));
        assert_ne!(a, b);
        assert_ne!(a, ROOT_INO);
        assert_eq!(inodes.ino(&dir("busybox")), a);
        assert_eq!(inodes.node(b), Some(Node::Index(Arc::from("busybox"))));
        assert_eq!(inodes.node(0), None);
        assert_eq!(inodes.node(999), None);
        assert_eq!(inodes.len(), 3);

        let nested = inodes.ino(&dir("busybox/sub"));
        let other = inodes.ino(&dir("busyboxes"));
        inodes.rename_tree("busybox", "bb");
        assert_eq!(inodes.node(a), Some(dir("bb")));
        assert_eq!(inodes.node(b), Some(Node::Index(Arc::from("bb"))));
        assert_eq!(inodes.node(nested), Some(dir("bb/sub")));
        assert_eq!(inodes.node(other), Some(dir("busyboxes")));
        assert_eq!(inodes.ino(&dir("bb")), a);
        assert_ne!(inodes.ino(&dir("busybox")), a);

        // `x` removed, `y` moved onto its name, then moved on: the number `x` had before stays
        // behind, and the path follows the directory that was moved.
        let x = inodes.ino(&dir("x"));
        let y = inodes.ino(&dir("y"));
        inodes.rename_tree("y", "x");
        assert_eq!(inodes.ino(&dir("x")), y);
        inodes.rename_tree("x", "z");
        assert_eq!(inodes.ino(&dir("z")), y);
        assert_ne!(inodes.node(x), Some(dir("z")));
    }

    #[test]
    fn a_number_rebound_to_a_node_is_its_number_and_the_old_one_is_orphaned() {
        let inodes = Inodes::new();
        let index = Node::Index(Arc::from("r"));
        let old = inodes.ino(&index);
        let tmp = inodes.ino(&Node::Scratch(7));
        inodes.rebind(tmp, &index);
        assert_eq!(inodes.ino(&index), tmp);
        assert_eq!(inodes.node(tmp), Some(index.clone()));
        assert_eq!(inodes.node(old), Some(Node::Scratch(ORPHANED)));
        // The scratch entry's node gets a new number if it is ever asked for again.
        assert_ne!(inodes.ino(&Node::Scratch(7)), tmp);
        // A rename moves the current number only.
        inodes.rename_tree("r", "s");
        assert_eq!(inodes.node(tmp), Some(Node::Index(Arc::from("s"))));
        assert_eq!(inodes.node(old), Some(Node::Scratch(ORPHANED)));
        inodes.rebind(0, &Node::Scratch(1));
        inodes.rebind(999, &Node::Scratch(1));
        assert_eq!(inodes.node(999), None);
    }

    #[test]
    fn lookups_are_counted_and_a_node_forgotten_to_zero_is_freed() {
        let inodes = Inodes::new();
        let node = Node::Blobs(Arc::from("r"));
        let ino = inodes.entry(&node);
        assert_eq!(inodes.entry(&node), ino);
        assert_eq!(inodes.ino(&node), ino, "the mount's own use counts nothing");
        assert_eq!(inodes.lookups(ino), Some(2));
        assert_eq!(inodes.forget(ino, 1), None, "one reference is left");
        assert!(!inodes.free(ino), "not freed while the kernel holds it");
        assert_eq!(inodes.forget(ino, 1), Some(node.clone()));
        // A lookup between forget and free keeps it.
        assert_eq!(inodes.entry(&node), ino);
        assert!(!inodes.free(ino));
        assert_eq!(
            inodes.forget(ino, 5),
            Some(node.clone()),
            "saturates at zero"
        );
        assert!(inodes.free(ino));
        assert_eq!(inodes.node(ino), None);
        assert_eq!(inodes.get(&node), None);
        assert_eq!(inodes.len(), 1, "the root alone");
        // The same node comes back with the same number.
        assert_eq!(inodes.peek(&node), ino);
        assert_eq!(inodes.len(), 1, "peeking keeps nothing");
        assert_eq!(inodes.entry(&node), ino);
        // The root is never freed; a number not live is nothing to forget.
        assert_eq!(inodes.forget(ROOT_INO, 100), None);
        assert!(!inodes.free(ROOT_INO));
        assert_eq!(inodes.forget(12345, 1), None);
        assert!(!inodes.free(12345));
        assert!(inodes.add_lookup(ROOT_INO));
        assert!(!inodes.add_lookup(12345));
        // A number the mount gave out for its own use, never handed to the kernel, stays.
        let own = inodes.ino(&Node::Index(Arc::from("own")));
        assert!(!inodes.free(own));
        assert!(inodes.node(own).is_some());
    }

    #[test]
    fn numbers_are_derived_from_the_node_and_never_zero_or_the_root() {
        let a = Inodes::new();
        let b = Inodes::new();
        let nodes = [
            dir("r"),
            Node::Index(Arc::from("r")),
            Node::LayoutFile(Arc::from("r")),
            Node::AlgDir(Arc::from("r"), Algorithm::Sha256),
            Node::Blob(Digest::of(Algorithm::Sha256, b"x"), 1),
            Node::Scratch(3),
        ];
        for n in &nodes {
            let ino = a.entry(n);
            assert_eq!(
                b.entry(n),
                ino,
                "{n:?}: another table gives the same number"
            );
            assert!((FIRST_INO..=INO_MASK).contains(&ino), "{n:?}: {ino}");
        }
        // Hashes of 0 and 1 are moved off the numbers FUSE reserves.
        assert_eq!(home(0), FIRST_INO);
        assert_eq!(home(1), FIRST_INO);
        assert_eq!(home(u64::MAX), INO_MASK);
    }

    /// Every node hashes alike: each collides with every other.
    fn same_hash(node: &Node) -> u64 {
        match node {
            Node::Dir(p) if p.is_empty() => 1,
            _ => 42,
        }
    }

    #[test]
    fn colliding_nodes_get_distinct_numbers_and_keep_them_while_live() {
        let inodes = Inodes::with_hash(same_hash);
        let (a, b, c) = (dir("a"), dir("b"), dir("c"));
        let ia = inodes.entry(&a);
        let ib = inodes.entry(&b);
        let ic = inodes.entry(&c);
        assert_eq!(ia, 42);
        assert_eq!((ib, ic), (43, 44), "probed past the numbers taken");
        for (n, i) in [(&a, ia), (&b, ib), (&c, ic)] {
            assert_eq!(inodes.get(n), Some(i));
            assert_eq!(inodes.node(i).as_ref(), Some(n));
        }
        // `a` freed: `b` and `c` keep their numbers; `a` back takes its home again, and a new
        // node takes the next free number, never a live one.
        inodes.forget(ia, 1);
        assert!(inodes.free(ia));
        assert_eq!(inodes.get(&b), Some(ib));
        assert_eq!(inodes.get(&c), Some(ic));
        assert_eq!(inodes.peek(&a), 42);
        let d = dir("d");
        assert_eq!(inodes.entry(&d), 42, "the free home number");
        assert_eq!(inodes.entry(&a), 45);
        let live: std::collections::HashSet<u64> = [&a, &b, &c, &d]
            .iter()
            .map(|n| inodes.get(n).unwrap())
            .collect();
        assert_eq!(live.len(), 4);
        // A rename among colliding nodes and a rebind keep every live node findable.
        inodes.rename_tree("b", "e");
        assert_eq!(inodes.get(&dir("e")), Some(ib));
        assert_eq!(inodes.get(&b), None);
        assert_eq!(inodes.get(&c), Some(ic));
        inodes.rebind(ic, &a);
        assert_eq!(inodes.get(&a), Some(ic));
        assert_eq!(inodes.node(45), Some(Node::Scratch(ORPHANED)));
        assert_eq!(inodes.get(&c), None);
        assert_eq!(inodes.get(&d), Some(42));
        // Freed nodes leave no mapping behind.
        for ino in [42, 45, ib, ic] {
            inodes.forget(ino, 1);
            assert!(inodes.free(ino), "{ino}");
        }
        assert_eq!(inodes.len(), 1);
        for n in [&a, &b, &c, &d, &dir("e")] {
            assert_eq!(inodes.get(n), None, "{n:?}");
        }
    }

    #[test]
    fn a_table_holds_what_is_live_only() {
        let inodes = Inodes::new();
        let blobs: Vec<Node> = (0..1000u32)
            .map(|i| Node::Blob(Digest::of(Algorithm::Sha256, &i.to_le_bytes()), 1))
            .collect();
        let first: Vec<u64> = blobs.iter().map(|n| inodes.entry(n)).collect();
        assert_eq!(inodes.len(), 1001);
        for ino in &first {
            assert!(inodes.forget(*ino, 1).is_some());
            assert!(inodes.free(*ino));
        }
        assert_eq!(inodes.len(), 1);
        let capacity = inodes.table.read().slots.capacity();
        assert!(
            capacity <= SHRINK_FROM,
            "the maps shrank with the frees: {capacity}"
        );
        let again: Vec<u64> = blobs.iter().map(|n| inodes.entry(n)).collect();
        assert_eq!(first, again);
    }
}

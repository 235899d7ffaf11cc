//! Inode numbers: each node of the tree (a directory path, a repository's layout files, a blob)
//! gets a number the first time the kernel sees it, and keeps it for the life of the mount, so
//! the same path always has the same inode and a number is never reused for something else.
//! A blob is one node whatever repository shows it: it is the same immutable content, and the
//! kernel's cache and the passthrough backing file are shared.
//!
//! Lock order: the table's lock is a leaf; nothing else is locked while it is held.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::digest::{Algorithm, Digest};

/// The root directory's inode number (FUSE fixes it at 1).
pub const ROOT_INO: u64 = 1;

/// The scratch entry of an orphaned inode: none is ever numbered 0, so it is a temporary file
/// that is gone (ENOENT to a lookup or stat; writes through a descriptor still open on it
/// reach nothing anyone sees).
pub const ORPHANED: u64 = 0;

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

#[derive(Default)]
struct Table {
    by_node: HashMap<Node, u64>,
    /// `nodes[i]` is inode `i + ROOT_INO`.
    nodes: Vec<Node>,
}

/// The two-way map between nodes and inode numbers.
pub struct Inodes {
    table: RwLock<Table>,
}

impl Default for Inodes {
    fn default() -> Self {
        Self::new()
    }
}

impl Inodes {
    pub fn new() -> Inodes {
        let inodes = Inodes {
            table: RwLock::new(Table::default()),
        };
        let root = inodes.ino(&Node::Dir(Arc::from("")));
        debug_assert_eq!(root, ROOT_INO);
        inodes
    }

    /// The inode number of `node`, assigned on first use.
    pub fn ino(&self, node: &Node) -> u64 {
        if let Some(&ino) = self.table.read().by_node.get(node) {
            return ino;
        }
        let mut t = self.table.write();
        if let Some(&ino) = t.by_node.get(node) {
            return ino;
        }
        let ino = t.nodes.len() as u64 + ROOT_INO;
        t.nodes.push(node.clone());
        t.by_node.insert(node.clone(), ino);
        ino
    }

    /// The inode number of `node`, if it was given one.
    pub fn get(&self, node: &Node) -> Option<u64> {
        self.table.read().by_node.get(node).copied()
    }

    /// The node an inode number stands for, if it was ever handed out.
    pub fn node(&self, ino: u64) -> Option<Node> {
        let i = usize::try_from(ino.checked_sub(ROOT_INO)?).ok()?;
        self.table.read().nodes.get(i).cloned()
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
        for i in 0..t.nodes.len() {
            // A number whose node another number took over (the path of a directory removed,
            // then made again or renamed onto) stays with its old path: it is not moved along.
            let current = t.by_node.get(&t.nodes[i]) == Some(&(i as u64 + ROOT_INO));
            if !current {
                continue;
            }
            let new = match &t.nodes[i] {
                Node::Dir(p) => moved(p).map(Node::Dir),
                Node::LayoutFile(p) => moved(p).map(Node::LayoutFile),
                Node::Index(p) => moved(p).map(Node::Index),
                Node::Blobs(p) => moved(p).map(Node::Blobs),
                Node::AlgDir(p, alg) => moved(p).map(|p| Node::AlgDir(p, *alg)),
                Node::Blob(..) | Node::Scratch(_) => None,
            };
            if let Some(new) = new {
                let old = std::mem::replace(&mut t.nodes[i], new.clone());
                t.by_node.remove(&old);
                t.by_node.insert(new, i as u64 + ROOT_INO);
            }
        }
    }

    /// Makes inode `ino` stand for `node` from now on, as the number `node` is given: a file
    /// renamed onto a layout name is that name's inode now (the kernel keeps the renamed
    /// file's number for the name, and asks for it next). The number `node` had before is
    /// orphaned (`ORPHANED`), as the file a rename replaces on a disk: what still holds it
    /// (an open descriptor) reaches nothing through it.
    pub fn rebind(&self, ino: u64, node: &Node) {
        let index = |ino: u64| {
            ino.checked_sub(ROOT_INO)
                .and_then(|i| usize::try_from(i).ok())
        };
        let Some(i) = index(ino) else {
            return;
        };
        let mut t = self.table.write();
        if i >= t.nodes.len() {
            return;
        }
        let old = std::mem::replace(&mut t.nodes[i], node.clone());
        if t.by_node.get(&old) == Some(&ino) {
            t.by_node.remove(&old);
        }
        if let Some(prev) = t.by_node.insert(node.clone(), ino) {
            if let Some(p) = index(prev).filter(|_| prev != ino) {
                t.nodes[p] = Node::Scratch(ORPHANED);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.table.read().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_distinct() {
        let inodes = Inodes::new();
        assert_eq!(inodes.node(ROOT_INO), Some(Node::Dir(Arc::from(""))));
        let a = inodes.ino(&Node::Dir(Arc::from("busybox")));
        let b = inodes.ino(&Node::Index(Arc::from("busybox")));
        assert_ne!(a, b);
        assert_ne!(a, ROOT_INO);
        assert_eq!(inodes.ino(&Node::Dir(Arc::from("busybox"))), a);
        assert_eq!(inodes.node(b), Some(Node::Index(Arc::from("busybox"))));
        assert_eq!(inodes.node(0), None);
        assert_eq!(inodes.node(999), None);
        assert_eq!(inodes.len(), 3);

        let nested = inodes.ino(&Node::Dir(Arc::from("busybox/sub")));
        let other = inodes.ino(&Node::Dir(Arc::from("busyboxes")));
        inodes.rename_tree("busybox", "bb");
        assert_eq!(inodes.node(a), Some(Node::Dir(Arc::from("bb"))));
        assert_eq!(inodes.node(b), Some(Node::Index(Arc::from("bb"))));
        assert_eq!(inodes.node(nested), Some(Node::Dir(Arc::from("bb/sub"))));
        assert_eq!(inodes.node(other), Some(Node::Dir(Arc::from("busyboxes"))));
        assert_eq!(inodes.ino(&Node::Dir(Arc::from("bb"))), a);
        assert_ne!(inodes.ino(&Node::Dir(Arc::from("busybox"))), a);

        // `x` removed, `y` moved onto its name, then moved on: the number `x` had before stays
        // behind, and the path follows the directory that was moved.
        let x = inodes.ino(&Node::Dir(Arc::from("x")));
        let y = inodes.ino(&Node::Dir(Arc::from("y")));
        inodes.rename_tree("y", "x");
        assert_eq!(inodes.ino(&Node::Dir(Arc::from("x"))), y);
        inodes.rename_tree("x", "z");
        assert_eq!(inodes.ino(&Node::Dir(Arc::from("z"))), y);
        assert_ne!(inodes.node(x), Some(Node::Dir(Arc::from("z"))));
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
    }
}

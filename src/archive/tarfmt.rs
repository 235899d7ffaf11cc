//! Deterministic tar headers: ustar records with fixed owner, time and modes, and a PAX
//! extended header in front when a path or size does not fit ustar's fields.

/// Size of a tar block.
pub const BLOCK: usize = 512;
/// Largest size ustar's 11 octal digits can hold.
const USTAR_MAX_SIZE: u64 = 0o777_7777_7777;
/// Longest name (without prefix) and prefix ustar can hold.
const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;

/// What a tar entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

/// Bytes of zero padding after `size` bytes of content.
pub fn padding(size: u64) -> usize {
    let rem = (size % BLOCK as u64) as usize;
    if rem == 0 {
        0
    } else {
        BLOCK - rem
    }
}

/// The header block(s) of one entry: a PAX header first where needed, then the ustar header.
/// Owner is 0:0 with empty names and the time is the epoch, so output depends only on the
/// path, kind, mode and size.
pub fn header(path: &str, kind: EntryKind, mode: u32, size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK);
    let split = split_path(path);
    let mut pax = String::new();
    if split.is_none() {
        pax.push_str(&pax_record("path", path));
    }
    if size > USTAR_MAX_SIZE {
        pax.push_str(&pax_record("size", &size.to_string()));
    }
    if !pax.is_empty() {
        let name = format!("PaxHeaders/{}", tail(path, NAME_LEN - "PaxHeaders/".len()));
        out.extend_from_slice(&ustar(("", &name), b'x', 0o644, pax.len() as u64));
        out.extend_from_slice(pax.as_bytes());
        out.resize(out.len() + padding(pax.len() as u64), 0);
    }
    let (prefix, name) = split.unwrap_or(("", tail(path, NAME_LEN)));
    let flag = match kind {
        EntryKind::File => b'0',
        EntryKind::Dir => b'5',
    };
    out.extend_from_slice(&ustar((prefix, name), flag, mode, size.min(USTAR_MAX_SIZE)));
    out
}

/// The end of an archive: two zero blocks.
pub fn trailer() -> [u8; 2 * BLOCK] {
    [0; 2 * BLOCK]
}

/// Splits a path into ustar's prefix and name fields, if it fits.
fn split_path(path: &str) -> Option<(&str, &str)> {
    if path.len() <= NAME_LEN {
        return Some(("", path));
    }
    // The prefix ends at a '/' that is not part of the name.
    let bytes = path.as_bytes();
    (0..bytes.len()).rev().find_map(|i| {
        (bytes[i] == b'/'
            && i <= PREFIX_LEN
            && bytes.len() - i - 1 <= NAME_LEN
            && i + 1 < bytes.len())
        .then(|| (&path[..i], &path[i + 1..]))
    })
}

/// The last `max` bytes of `s`, at a character boundary.
fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// One PAX record: `<len> <key>=<value>\n`, where len counts the whole record.
fn pax_record(key: &str, value: &str) -> String {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    format!("{len} {key}={value}\n")
}

fn ustar((prefix, name): (&str, &str), flag: u8, mode: u32, size: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0); // mtime
    h[156] = flag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    h[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    h[154] = 0;
    h
}

/// Zero-padded octal filling all but the field's last byte, which stays NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn entries(archive: &[u8]) -> Vec<(String, u64, u32, bool)> {
        let mut a = tar::Archive::new(archive);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let h = e.header().clone();
                let mut body = Vec::new();
                e.read_to_end(&mut body).unwrap();
                assert_eq!(body.len() as u64, h.size().unwrap());
                assert!(body.iter().all(|b| *b == b'z'));
                (path, e.size(), h.mode().unwrap(), h.entry_type().is_dir())
            })
            .collect()
    }

    #[test]
    fn headers_read_back_with_a_tar_reader() {
        let long = format!("blobs/sha512/{}", "a".repeat(128));
        let longer = format!("{}/{}", "d".repeat(160), "f".repeat(120));
        let cases: Vec<(&str, EntryKind, u32, u64)> = vec![
            ("blobs/", EntryKind::Dir, 0o755, 0),
            ("index.json", EntryKind::File, 0o644, 700),
            ("oci-layout", EntryKind::File, 0o444, 512),
            (&long, EntryKind::File, 0o444, 3),
            (&longer, EntryKind::File, 0o444, 1),
        ];
        let mut archive = Vec::new();
        for (path, kind, mode, size) in &cases {
            archive.extend(header(path, *kind, *mode, *size));
            archive.resize(archive.len() + *size as usize, b'z');
            archive.resize(archive.len() + padding(*size), 0);
        }
        archive.extend(trailer());
        let got = entries(&archive);
        for ((path, kind, mode, size), (gp, gs, gm, gd)) in cases.iter().zip(&got) {
            assert_eq!(
                (path.trim_end_matches('/'), *size, *mode),
                (gp.trim_end_matches('/'), *gs, *gm)
            );
            assert_eq!(*kind == EntryKind::Dir, *gd);
        }
        assert_eq!(got.len(), cases.len());
    }

    #[test]
    fn huge_sizes_go_into_a_pax_record() {
        let h = header("big", EntryKind::File, 0o444, 9 << 30);
        assert_eq!(h.len(), 3 * BLOCK);
        assert!(String::from_utf8_lossy(&h).contains("size=9663676416\n"));
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for v in ["", "x", &"y".repeat(90), &"z".repeat(995)] {
            let r = pax_record("path", v);
            let (n, _) = r.split_once(' ').unwrap();
            assert_eq!(n.parse::<usize>().unwrap(), r.len(), "{r}");
        }
    }
}

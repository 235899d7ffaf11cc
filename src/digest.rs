//! Content digests: the `Digest` type (`sha256:` + 64 lowercase hex, or `sha512:` + 128), its
//! parsing (everything else is refused before it can become a path), and the streaming `Hasher`
//! that computes one while bytes are written.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

/// The hash algorithms a digest may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// All supported algorithms, in the order their blob directories sort.
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

    /// The name used in digests and as the directory under `blobs/`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the encoded (hex) part of a digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("invalid digest {0:?}: expected ALGORITHM:HEX")]
    Form(String),
    #[error("invalid digest {0:?}: unsupported algorithm (sha256 and sha512 are supported)")]
    Algorithm(String),
    #[error("invalid digest {0:?}: {1} wants {2} hex characters")]
    Length(String, Algorithm, usize),
    #[error("invalid digest {0:?}: hex must be lowercase 0-9a-f")]
    Hex(String),
}

/// A validated content digest. Its string form is safe to use as a path component pair
/// (`<alg>/<hex>`): it never holds `/`, `..` or anything but lowercase hex.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    alg: Algorithm,
    hex: String,
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The blob's path relative to a layout or store root: `blobs/<alg>/<hex>`.
    pub fn blob_path(&self) -> String {
        format!("blobs/{}/{}", self.alg.name(), self.hex)
    }

    /// Builds a digest from an algorithm directory name and a file name, as found under `blobs/`.
    pub fn from_parts(alg: &str, hex: &str) -> Result<Digest, DigestError> {
        format!("{alg}:{hex}").parse()
    }

    /// The digest of `bytes` with the given algorithm.
    pub fn of(alg: Algorithm, bytes: &[u8]) -> Digest {
        let mut h = alg.hasher();
        h.update(bytes);
        h.finish()
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Digest, DigestError> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Form(s.to_owned()))?;
        if alg.is_empty() || hex.is_empty() {
            return Err(DigestError::Form(s.to_owned()));
        }
        let alg = Algorithm::from_name(alg).ok_or_else(|| DigestError::Algorithm(s.to_owned()))?;
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::Hex(s.to_owned()));
        }
        if hex.len() != alg.hex_len() {
            return Err(DigestError::Length(s.to_owned(), alg, alg.hex_len()));
        }
        Ok(Digest {
            alg,
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.alg.name(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A running hash over bytes as they stream past.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        let (alg, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, to_hex(&h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, to_hex(&h.finalize())),
        };
        Digest { alg, hex }
    }
}

/// Hashes `file` from its start with `alg`: up to `len` bytes when given (the file must hold
/// them), else to its end. Positional reads through `buf` leave a shared descriptor's offset
/// alone; `seen` is told each count read. The one hash-a-file loop: the mount's verifier, fsck
/// and the store's ingest writer (after writes out of order) call it.
pub fn hash_file(
    alg: Algorithm,
    file: &std::fs::File,
    len: Option<u64>,
    buf: &mut [u8],
    seen: impl FnMut(u64),
) -> std::io::Result<Digest> {
    let mut h = alg.hasher();
    hash_into(&mut h, file, len, buf, seen)?;
    Ok(h.finish())
}

/// As `hash_file`, feeding `h` and leaving it open: a resumed ingest continues its hash
/// from the bytes it kept.
pub fn hash_into(
    h: &mut Hasher,
    file: &std::fs::File,
    len: Option<u64>,
    buf: &mut [u8],
    mut seen: impl FnMut(u64),
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut offset = 0u64;
    loop {
        let want = match len {
            Some(l) => (l - offset).min(buf.len() as u64) as usize,
            None => buf.len(),
        };
        if want == 0 {
            break;
        }
        let n = match file.read_at(&mut buf[..want], offset) {
            Ok(0) if len.is_some() => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        offset += n as u64;
        seen(n as u64);
    }
    Ok(())
}

fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn valid_digests_parse_and_print_back() {
        let valid = [
            EMPTY_SHA256.to_owned(),
            format!("sha512:{}", "0a".repeat(64)),
            format!("sha256:{}", "f".repeat(64)),
        ];
        for s in &valid {
            let d: Digest = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(&d.to_string(), s);
        }
    }

    #[test]
    fn invalid_digests_are_refused_with_their_reason() {
        let hex64 = "a".repeat(64);
        type Case = (String, fn(&DigestError) -> bool);
        let cases: &[Case] = &[
            (String::new(), |e| matches!(e, DigestError::Form(_))),
            ("sha256".into(), |e| matches!(e, DigestError::Form(_))),
            ("sha256:".into(), |e| matches!(e, DigestError::Form(_))),
            (format!(":{hex64}"), |e| matches!(e, DigestError::Form(_))),
            (format!("sha384:{hex64}"), |e| {
                matches!(e, DigestError::Algorithm(_))
            }),
            (format!("md5:{hex64}"), |e| {
                matches!(e, DigestError::Algorithm(_))
            }),
            (format!("SHA256:{hex64}"), |e| {
                matches!(e, DigestError::Algorithm(_))
            }),
            (format!("sha256:{}", "A".repeat(64)), |e| {
                matches!(e, DigestError::Hex(_))
            }),
            (format!("sha256:{}", "a".repeat(63)), |e| {
                matches!(e, DigestError::Length(..))
            }),
            (format!("sha256:{}", "a".repeat(65)), |e| {
                matches!(e, DigestError::Length(..))
            }),
            (format!("sha512:{hex64}"), |e| {
                matches!(e, DigestError::Length(..))
            }),
            (format!("sha256:../{}", "a".repeat(61)), |e| {
                matches!(e, DigestError::Hex(_))
            }),
            (format!("sha256:a/{}", "a".repeat(62)), |e| {
                matches!(e, DigestError::Hex(_))
            }),
            (format!("sha256:{hex64}\n"), |e| {
                matches!(e, DigestError::Hex(_))
            }),
            (format!("sha256:{hex64}:x"), |e| {
                matches!(e, DigestError::Hex(_))
            }),
        ];
        for (s, want) in cases {
            let err = s.parse::<Digest>().expect_err(s);
            assert!(want(&err), "{s:?} gave {err:?}");
            assert!(err.to_string().contains("invalid digest"), "{err}");
        }
    }

    #[test]
    fn hash_file_reads_to_the_end_or_exactly_len() {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"abcdef").unwrap();
        let mut buf = [0u8; 4]; // smaller than the file: several reads
        let mut seen = 0;
        let whole = hash_file(Algorithm::Sha256, &f, None, &mut buf, |n| seen += n).unwrap();
        assert_eq!(whole, Digest::of(Algorithm::Sha256, b"abcdef"));
        assert_eq!(seen, 6);
        let head = hash_file(Algorithm::Sha512, &f, Some(3), &mut buf, |_| {}).unwrap();
        assert_eq!(head, Digest::of(Algorithm::Sha512, b"abc"));
        let past = hash_file(Algorithm::Sha256, &f, Some(7), &mut buf, |_| {});
        assert_eq!(past.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn hasher_matches_known_values() {
        assert_eq!(Digest::of(Algorithm::Sha256, b"").to_string(), EMPTY_SHA256);
        let mut h = Algorithm::Sha256.hasher();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(
            h.finish().to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            Digest::of(Algorithm::Sha512, b"abc").hex()[..16],
            *"ddaf35a193617aba"
        );
    }

    #[test]
    fn blob_path_and_parts_round_trip() {
        let d: Digest = EMPTY_SHA256.parse().unwrap();
        assert_eq!(d.blob_path(), format!("blobs/sha256/{}", d.hex()));
        assert_eq!(Digest::from_parts("sha256", d.hex()).unwrap(), d);
        assert!(Digest::from_parts("sha256", "..").is_err());
    }
}

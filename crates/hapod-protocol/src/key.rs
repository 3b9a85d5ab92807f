//! The shared HMAC-SHA256 keys (from a mounted Secret): one signs, all verify, so that a key
//! can be rotated without a datagram that either side refuses.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::MAC_LEN;

type HmacSha256 = Hmac<Sha256>;

/// The placeholder key that `deploy/base/notify.key` publishes. Anyone can forge
/// notifications with it, so it is refused unless the caller says it runs a demo.
pub const DEMO_KEY: &[u8] = b"PLACEHOLDER-hapod-notify-key-replace-me-before-use";

/// The shared key, and the keys still accepted during a rotation. `Debug` never shows the
/// bytes.
#[derive(Clone)]
pub struct Key {
    /// HMAC states after absorbing each key, cloned for every datagram; never empty. The first
    /// signs; a datagram signed with any of them verifies.
    keyed: Vec<HmacSha256>,
    /// One of them is [`DEMO_KEY`].
    demo: bool,
}

impl Key {
    /// A key from raw bytes; it must not be empty (32 random bytes or more are recommended).
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Key, KeyError> {
        let bytes = bytes.as_ref();
        if bytes.is_empty() {
            return Err(KeyError::Empty);
        }
        let keyed = HmacSha256::new_from_slice(bytes).map_err(|_| KeyError::Empty)?;
        Ok(Key {
            keyed: vec![keyed],
            demo: bytes == DEMO_KEY,
        })
    }

    /// Reads a key file; trailing `\r`/`\n` are dropped so that a Secret created from a text
    /// file with a final newline gives the same key on both sides.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Key, KeyError> {
        let path = path.as_ref();
        let mut bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        Key::new(bytes).map_err(|e| match e {
            KeyError::Empty => KeyError::EmptyFile(path.display().to_string()),
            e => e,
        })
    }

    /// The keys of `paths`: the first signs, every one verifies (during a rotation, the
    /// current key first, then the one going out or coming in). `None` without paths. A file
    /// holding [`DEMO_KEY`] is refused unless `allow_demo`.
    pub fn from_files(
        paths: &[impl AsRef<Path>],
        allow_demo: bool,
    ) -> Result<Option<Key>, KeyError> {
        let mut ring: Option<Key> = None;
        for path in paths {
            let key = Key::from_file(path)?;
            if key.demo && !allow_demo {
                return Err(KeyError::Demo(path.as_ref().display().to_string()));
            }
            match &mut ring {
                Some(ring) => {
                    ring.keyed.extend(key.keyed);
                    ring.demo |= key.demo;
                }
                None => ring = Some(key),
            }
        }
        Ok(ring)
    }

    /// Whether one of the keys is the public placeholder [`DEMO_KEY`].
    pub fn is_demo(&self) -> bool {
        self.demo
    }

    pub(crate) fn mac(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.keyed[0].clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    pub(crate) fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        self.keyed.iter().any(|keyed| {
            let mut mac = keyed.clone();
            mac.update(data);
            // Constant-time comparison.
            mac.verify_slice(tag).is_ok()
        })
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<{} redacted>)", self.keyed.len())
    }
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("notification key is empty")]
    Empty,
    #[error("notification key file {0} is empty")]
    EmptyFile(String),
    #[error("cannot read notification key file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "notification key file {0} holds the public placeholder key of deploy/base: anyone who \
         can reach the pods could forge notifications with it. Put a random key in the Secret \
         hapod-notify-key (docs/deploy.md, \"Set the notification key first\"), or pass \
         --allow-demo-key (HAPOD_ALLOW_DEMO_KEY=true) to run a demo with it"
    )]
    Demo(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, Notification, Role, decode, encode};

    fn file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn msg() -> Notification {
        Notification::new("ns/g", "pod", Role::Active, 1 << 32 | 1)
    }

    /// A rotation: old side [old], then [new, old] on both, then [new]. Every datagram one
    /// step signs verifies on the step before and after, never across two steps.
    #[test]
    fn the_first_key_signs_and_every_key_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let old = file(dir.path(), "old", b"old key 0123456789abcdef");
        let new = file(dir.path(), "new", b"new key 0123456789abcdef\n");
        let only_old = Key::from_files(&[&old], false).unwrap().unwrap();
        let both = Key::from_files(&[&new, &old], false).unwrap().unwrap();
        let only_new = Key::from_files(&[&new], false).unwrap().unwrap();
        // One message: each Notification::new draws a fresh message id.
        let m = msg();
        let signed = |k: &Key| encode(&m, Some(k)).unwrap();
        let verifies = |d: &[u8], k: &Key| decode(d, Some(k)) == Ok(Message::Notify(m.clone()));
        assert!(verifies(&signed(&only_old), &both));
        assert!(verifies(&signed(&both), &only_new), "the first key signs");
        assert!(verifies(&signed(&only_new), &both));
        assert!(!verifies(&signed(&both), &only_old));
        assert!(!verifies(&signed(&only_old), &only_new));
    }

    #[test]
    fn no_files_no_key() {
        let none: [&Path; 0] = [];
        assert!(Key::from_files(&none, false).unwrap().is_none());
    }

    #[test]
    fn the_placeholder_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let mut published = DEMO_KEY.to_vec();
        published.push(b'\n');
        let demo = file(dir.path(), "key", &published);
        let own = file(dir.path(), "own", b"0123456789abcdef0123456789abcdef");
        let err = Key::from_files(&[&own, &demo], false).unwrap_err();
        assert!(
            matches!(&err, KeyError::Demo(p) if p.ends_with("key")),
            "{err}"
        );
        assert!(err.to_string().contains("--allow-demo-key"), "{err}");
        let allowed = Key::from_files(&[&demo], true).unwrap().unwrap();
        assert!(allowed.is_demo());
        assert!(!Key::from_files(&[&own], false).unwrap().unwrap().is_demo());
    }

    #[test]
    fn unreadable_and_empty_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = file(dir.path(), "empty", b"\r\n");
        let err = Key::from_files(&[&empty], false).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        assert!(err.to_string().contains(&empty.display().to_string()));
        let missing = dir.path().join("missing");
        let err = Key::from_files(&[&missing], false).unwrap_err();
        assert!(matches!(err, KeyError::Read { .. }), "{err}");
    }

    #[test]
    fn debug_hides_the_bytes() {
        let key = Key::new(b"secret bytes").unwrap();
        assert!(!format!("{key:?}").contains("secret"));
    }
}

//! The shared secret that admits a process to an elastic (TCP) cluster.
//!
//! The scheduler creates 32 random bytes, written hex-encoded to a file that
//! only its owner can read (mode 0600, in a directory of mode 0700 when it
//! creates that too). Workers and clients read the same file (a shared home
//! or project directory, as batch jobs have). A file that group or others
//! can read is refused when loaded: anyone who can read it could join the
//! cluster and receive its data.
//!
//! The secret never travels. Each connection proves knowledge of it with
//! HMAC-SHA256 over fresh random nonces of both sides (see
//! [`crate::transport::tcp`]), and MACs are compared in constant time. The
//! same handshake derives one key per direction of the connection
//! (`FrameMac`); every frame after it carries a MAC under that key and
//! the frame's sequence number, so frames cannot be forged, altered,
//! replayed or reordered by a host on the path.
//!
//! ```
//! use tessera_runtime::transport::secret::Secret;
//! let dir = std::env::temp_dir().join(format!("tessera-doc-secret-{}", std::process::id()));
//! let path = dir.join("secret");
//! let created = Secret::load_or_create(&path).unwrap();
//! assert_eq!(Secret::load(&path).unwrap().fingerprint(), created.fingerprint());
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

/// Length of a MAC and of a nonce, in bytes.
pub const TAG_LEN: usize = 32;

/// A cluster's shared secret (never printed: `Debug` shows a fingerprint).
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.fingerprint())
    }
}

impl Secret {
    /// 32 fresh random bytes.
    pub fn generate() -> Result<Secret> {
        Ok(Secret { key: random_bytes::<32>()?.to_vec() })
    }

    /// A secret from raw bytes (tests, or an application that keeps its own).
    pub fn from_bytes(key: &[u8]) -> Result<Secret> {
        if key.len() < 16 {
            return Err(Error::Config(format!("a secret needs at least 16 bytes, got {}", key.len())));
        }
        Ok(Secret { key: key.to_vec() })
    }

    /// Reads a secret file, refusing one that group or others may read.
    pub fn load(path: &Path) -> Result<Secret> {
        let bad = |reason: String| Error::SecretFile { path: path.to_path_buf(), reason, source: None };
        let meta = std::fs::metadata(path).map_err(|e| io_error(path, "cannot read it", e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "it is readable by group or others (mode {mode:04o}); run `chmod 600 {}`",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| io_error(path, "cannot read it", e))?;
        let key = hex::decode(text.trim()).map_err(|e| bad(format!("it does not hold a hex-encoded secret ({e})")))?;
        Secret::from_bytes(&key).map_err(|e| bad(e.to_string()))
    }

    /// Reads `path`, or creates it (mode 0600, parent directories 0700) with
    /// a fresh secret if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Secret> {
        if path.exists() {
            return Secret::load(path);
        }
        let bad = |what: &str, e: std::io::Error| io_error(path, what, e);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| bad("cannot create its directory", e))?;
            }
        }
        let secret = Secret::generate()?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| bad("cannot create it", e))?;
        writeln!(f, "{}", hex::encode(&secret.key)).map_err(|e| bad("cannot write it", e))?;
        tracing::info!(path = %path.display(), "created a new cluster secret (mode 0600)");
        Ok(secret)
    }

    /// A short digest that identifies the secret in logs without revealing it.
    pub fn fingerprint(&self) -> String {
        let tag = self.mac(&[b"tessera-fingerprint"]);
        hex::encode(&tag[..4])
    }

    /// HMAC-SHA256 of the concatenated `parts`.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `parts`, compared in constant time.
    pub(crate) fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        for p in parts {
            m.update(p);
        }
        m.verify_slice(tag).is_ok()
    }
}

/// Secret file `path` could not be `what` (read, created...) for I/O error `e`.
fn io_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::SecretFile { path: path.to_path_buf(), reason: what.to_owned(), source: Some(e.into()) }
}

/// The MAC of one direction of a connection: HMAC-SHA256 under a key
/// derived from the secret and both handshake nonces, over the frame's
/// sequence number (counted from 0 on each side, never sent) and the frame.
pub(crate) struct FrameMac {
    keyed: Hmac<Sha256>,
    next: u64,
}

impl FrameMac {
    /// The MAC of direction `label` (`b"c->a"`, `b"a->c"`) of the
    /// connection whose handshake used nonces `nc` and `na`.
    pub(crate) fn derive(secret: &Secret, label: &[u8], nc: &[u8], na: &[u8]) -> FrameMac {
        let key = secret.mac(&[b"tessera frames ", label, nc, na]);
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes keys of any length");
        FrameMac { keyed, next: 0 }
    }

    /// The tag of the next frame sent, whose parts are `parts`.
    pub(crate) fn sign(&mut self, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        self.tagged(parts).finalize().into_bytes().into()
    }

    /// Whether `tag` is that of the next frame received, whose parts are
    /// `parts` (compared in constant time). A frame that fails leaves the
    /// connection unusable: its sequence has moved on.
    pub(crate) fn check(&mut self, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.tagged(parts).verify_slice(tag).is_ok()
    }

    fn tagged(&mut self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut m = self.keyed.clone();
        m.update(&self.next.to_le_bytes());
        self.next += 1;
        for p in parts {
            m.update(p);
        }
        m
    }
}

/// `N` bytes from the operating system's random source.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Error::Config(format!("no random numbers from the system: {e}")))?;
    Ok(b)
}

/// Where the secret lives when no `--secret-file` is given:
/// `$TESSERA_SECRET_FILE`, else `~/.config/tessera/secret`.
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("TESSERA_SECRET_FILE") {
        return PathBuf::from(p);
    }
    config_dir().join("secret")
}

/// `$XDG_CONFIG_HOME/tessera` (unless empty), else `~/.config/tessera`.
///
/// The same rule as `tessera_jobqueue::config::user_config_file`, which
/// cannot call this one (jobqueue does not depend on the runtime); the
/// crates that do it well (`dirs`, `etcetera`) bring an MPL-2.0 dependency or
/// a newer Rust than this workspace's minimum.
pub fn config_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("tessera")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tessera-secret-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn created_files_are_owner_only_and_load_back() {
        let dir = temp("create");
        let path = dir.join("sub").join("secret");
        let a = Secret::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        let b = Secret::load_or_create(&path).unwrap();
        assert_eq!(a.key, b.key);
        assert!(!format!("{a:?}").contains(&hex::encode(&a.key)), "Debug must not print the secret");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn group_or_world_readable_files_and_garbage_are_refused() {
        let dir = temp("perm");
        let path = dir.join("secret");
        Secret::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Secret::load(&path).unwrap_err().to_string();
        assert!(err.contains("readable by group or others") && err.contains("chmod 600"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not hex at all\n").unwrap();
        assert!(Secret::load(&path).unwrap_err().to_string().contains("hex-encoded"));
        let err = Secret::load(&dir.join("missing")).unwrap_err().to_string();
        assert!(err.contains("missing") && err.contains("cannot read"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn macs_depend_on_key_and_message() {
        let a = Secret::from_bytes(&[1; 32]).unwrap();
        let b = Secret::from_bytes(&[2; 32]).unwrap();
        let tag = a.mac(&[b"x", b"y"]);
        assert!(a.verify(&[b"xy"], &tag), "parts are concatenated");
        assert!(!b.verify(&[b"x", b"y"], &tag));
        assert!(!a.verify(&[b"x", b"z"], &tag));
        assert!(!a.verify(&[b"x", b"y"], &tag[..31]));
    }

    #[test]
    fn frame_macs_are_per_direction_and_per_position() {
        let s = Secret::from_bytes(&[3; 32]).unwrap();
        let (nc, na) = ([1u8; 32], [2u8; 32]);
        let mut send = FrameMac::derive(&s, b"c->a", &nc, &na);
        let mut recv = FrameMac::derive(&s, b"c->a", &nc, &na);
        let first = send.sign(&[b"len", b"frame"]);
        let second = send.sign(&[b"len", b"frame"]);
        assert_ne!(first, second, "the same frame twice has two tags");
        // Replayed or reordered frames fail; in order they pass.
        assert!(!FrameMac::derive(&s, b"c->a", &nc, &na).check(&[b"len", b"frame"], &second));
        assert!(recv.check(&[b"len", b"frame"], &first));
        assert!(recv.check(&[b"len", b"frame"], &second));
        // Another direction, nonce, secret or frame gives another tag.
        let tag = FrameMac::derive(&s, b"c->a", &nc, &na).sign(&[b"x"]);
        assert_ne!(FrameMac::derive(&s, b"a->c", &nc, &na).sign(&[b"x"]), tag);
        assert_ne!(FrameMac::derive(&s, b"c->a", &na, &nc).sign(&[b"x"]), tag);
        assert_ne!(FrameMac::derive(&Secret::from_bytes(&[4; 32]).unwrap(), b"c->a", &nc, &na).sign(&[b"x"]), tag);
        assert!(!FrameMac::derive(&s, b"c->a", &nc, &na).check(&[b"y"], &tag));
    }
}

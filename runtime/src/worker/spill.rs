//! A worker's spill directory: blocks written to disk when memory is short.
//!
//! Each managed worker gets its own folder under `--local-directory`
//! (`tessera-worker-r<rank>-<pid>-<n>`), made when the worker starts, so an
//! unwritable directory is an error before any work is done, and removed
//! when the worker ends: normally, on an error (its `Drop`), or on SIGTERM
//! or SIGINT (a handler removes every live spill folder of the process,
//! then ends it as the signal would have). A block is one file of its raw
//! bytes, named by its task id, written and read whole with one large
//! sequential call each; its dtype and shape stay in the store.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::block::{Block, BlockHeader};
use crate::graph::TaskId;

/// Spill folders alive in this process (removed by the signal handler).
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Set by the signal handler: no new spill file is made.
static ENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A worker's spill folder; removed with everything in it when dropped.
#[derive(Debug)]
pub struct SpillDir {
    path: PathBuf,
}

impl SpillDir {
    /// Makes `parent/tessera-worker-r<rank>-<pid>-<n>` and checks that a file
    /// can be written there. The error names the directory.
    pub fn create(parent: &Path, rank: u32) -> Result<SpillDir, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("tessera-worker-r{rank}-{}-{n}", std::process::id()));
        let made = std::fs::create_dir_all(&path).and_then(|_| {
            let probe = path.join(".probe");
            std::fs::write(&probe, b"tessera")?;
            std::fs::remove_file(&probe)
        });
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&path);
            return Err(format!("cannot use {} as the local directory for spilled blocks: {e}", parent.display()));
        }
        install_signal_cleanup();
        LIVE.lock().push(path.clone());
        Ok(SpillDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, id: TaskId) -> PathBuf {
        self.path.join(format!("{}", id.0))
    }

    /// Writes `block`'s bytes to its file. The error names the file and size.
    pub fn write(&self, id: TaskId, block: &Block) -> Result<(), String> {
        let file = self.file(id);
        if ENDING.load(Ordering::SeqCst) {
            return Err(format!("not spilling block {id}: the process is ending"));
        }
        let written = std::fs::File::create(&file).and_then(|mut f| f.write_all(block.as_bytes()));
        written.map_err(|e| {
            let _ = std::fs::remove_file(&file);
            format!(
                "cannot spill block {id} ({}) to {}: {e}",
                crate::host::sys::human_bytes(block.nbytes() as u64),
                self.path.display()
            )
        })
    }

    /// Reads block `id` back. The error names the file.
    pub fn read(&self, id: TaskId, header: &BlockHeader) -> Result<Block, String> {
        let file = self.file(id);
        let fail = |e: &dyn std::fmt::Display| format!("cannot read spilled block {id} from {}: {e}", file.display());
        let mut buffer = Block::receive_buffer(header).map_err(|e| fail(&e))?;
        let mut f = std::fs::File::open(&file).map_err(|e| fail(&e))?;
        f.read_exact(buffer.as_bytes_mut()).map_err(|e| fail(&e))?;
        Ok(Block::new(header.shape.clone(), buffer))
    }

    /// Deletes block `id`'s file.
    pub fn remove(&self, id: TaskId) {
        let _ = std::fs::remove_file(self.file(id));
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        LIVE.lock().retain(|p| p != &self.path);
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.path.display(), "cannot remove the spill directory: {e}");
            }
        }
    }
}

/// On SIGTERM or SIGINT, removes the live spill folders. Where the process
/// drains on those signals instead (an elastic worker), the folders are
/// left to the worker's own end; otherwise the process ends with 143 (130
/// for SIGINT), as the signal's default would have.
fn install_signal_cleanup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot watch for SIGTERM to remove spill directories: {e}");
                return;
            }
        };
        let spawned = std::thread::Builder::new().name("tessera-spill-signals".into()).spawn(move || {
            if let Some(sig) = signals.forever().next() {
                if crate::host::sys::drains_on_signal() {
                    return;
                }
                ENDING.store(true, Ordering::SeqCst);
                // A write under way may add a file while the folder goes:
                // try again until it is gone.
                for dir in LIVE.lock().drain(..) {
                    for _ in 0..50 {
                        match std::fs::remove_dir_all(&dir) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                                std::thread::sleep(std::time::Duration::from_millis(10))
                            }
                            _ => break,
                        }
                    }
                }
                std::process::exit(128 + sig);
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot watch for SIGTERM to remove spill directories: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Buffer;

    #[test]
    fn blocks_round_trip_and_the_folder_goes_with_the_worker() {
        let parent = std::env::temp_dir();
        let dir = SpillDir::create(&parent, 3).unwrap();
        let path = dir.path().to_path_buf();
        assert!(path.is_dir());
        let b = Block::new(vec![2, 3], Buffer::F64((0..6).map(f64::from).collect()));
        dir.write(TaskId(42), &b).unwrap();
        let back = dir.read(TaskId(42), &b.header()).unwrap();
        assert_eq!(back.as_f64(), b.as_f64());
        assert_eq!(back.shape(), &[2, 3]);
        dir.remove(TaskId(42));
        let e = dir.read(TaskId(42), &b.header()).unwrap_err();
        assert!(e.contains("block #42") && e.contains(&path.display().to_string()), "{e}");
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn an_unwritable_directory_is_an_error_naming_it() {
        let e = SpillDir::create(Path::new("/proc/tessera-no-such-dir"), 1).unwrap_err();
        assert!(e.contains("/proc/tessera-no-such-dir"), "{e}");
    }
}

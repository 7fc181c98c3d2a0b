//! Named pipes, for tests of code that must not block on one (a kubeconfig's file, a token
//! file): make one, and afterwards wake any reader still blocked opening it.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `O_NONBLOCK`: opening a FIFO for writing fails (`ENXIO`) instead of waiting for a reader.
const O_NONBLOCK: i32 = 0o4000;

/// A FIFO made at `path` (with `mkfifo`), and its path.
///
/// # Panics
/// When `mkfifo` cannot run or fails.
pub fn make(path: &Path) -> PathBuf {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {path:?}");
    path.to_owned()
}

/// Wake any reader blocked opening one of `fifos`, so that no blocking thread is left behind:
/// each is opened for writing without blocking and closed, 20 times over about 200 ms (a
/// reader may reach its `open` late). Returns at once when `fifos` is empty.
pub fn release(fifos: &[PathBuf]) {
    if fifos.is_empty() {
        return;
    }
    for _ in 0..20 {
        for fifo in fifos {
            if let Ok(file) = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(O_NONBLOCK)
                .open(fifo)
            {
                drop(file);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

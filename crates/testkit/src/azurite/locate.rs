//! Where the `azurite-blob` entry point is: `TESTKIT_AZURITE_BIN`, else under the workspace's
//! `target/tools/azurite` (where `cargo xtask setup` installs it).

use std::path::{Path, PathBuf};

/// Set by `cargo xtask it|test` to the `azurite-blob` it installed.
pub const AZURITE_BIN_ENV: &str = "TESTKIT_AZURITE_BIN";

/// The workspace root: the nearest ancestor of the package under test (`CARGO_MANIFEST_DIR` at
/// run time, as `cargo test` sets it), else of this crate's source, whose `Cargo.toml` has
/// `[workspace]`.
pub fn workspace_root() -> Option<PathBuf> {
    let runtime = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let compiled = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    runtime
        .iter()
        .chain(std::iter::once(&compiled))
        .find_map(|start| find_workspace(start))
}

fn find_workspace(start: &Path) -> Option<PathBuf> {
    start.ancestors().find_map(|dir| {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
        manifest
            .lines()
            .any(|line| line.trim() == "[workspace]")
            .then(|| dir.to_path_buf())
    })
}

/// The entry point `cargo xtask setup` installs.
pub fn installed_azurite_bin(root: &Path) -> PathBuf {
    root.join("target")
        .join("tools")
        .join("azurite")
        .join("node_modules")
        .join(".bin")
        .join("azurite-blob")
}

/// Where to look for `azurite-blob`, given an environment `lookup` (not checked for existence).
pub(crate) fn azurite_bin(lookup: impl Fn(&str) -> Option<String>) -> PathBuf {
    match lookup(AZURITE_BIN_ENV).filter(|v| !v.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => {
            let root = workspace_root().unwrap_or_else(|| PathBuf::from("."));
            installed_azurite_bin(&root)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_wins_else_the_workspace_install() {
        let from_env = azurite_bin(|k| (k == AZURITE_BIN_ENV).then(|| "/x/azurite-blob".into()));
        assert_eq!(from_env, PathBuf::from("/x/azurite-blob"));
        let default = azurite_bin(|_| None);
        assert!(default.ends_with("target/tools/azurite/node_modules/.bin/azurite-blob"));
        let root = workspace_root().unwrap();
        assert!(root.join("crates").join("testkit").exists());
    }
}

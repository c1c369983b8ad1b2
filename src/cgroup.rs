//! cgroup v2 ids to paths. A cgroup's id is the inode number of its folder
//! under the cgroup2 mount; the path shown is that folder's, relative to the
//! mount ("/" for the root, "/system.slice/ssh.service").

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Walks the hierarchy again at most this often when an id is not known.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// A cache of the cgroup v2 hierarchy: id -> path.
#[derive(Debug)]
pub struct CgroupPaths {
    /// The cgroup2 mount, if there is one.
    root: Option<PathBuf>,
    paths: HashMap<u64, Arc<str>>,
    last_scan: Option<Instant>,
    /// The largest id the last walk found: ids are handed out in increasing
    /// order, so a larger one is a group made since, worth a walk at once.
    newest: u64,
}

impl CgroupPaths {
    /// For the host's cgroup2 mount (none: every path is unknown).
    pub fn new() -> Self {
        Self::at(cgroup2_mount())
    }

    /// For a hierarchy mounted at `root`.
    pub fn at(root: Option<PathBuf>) -> Self {
        Self {
            root,
            paths: HashMap::new(),
            last_scan: None,
            newest: 0,
        }
    }

    /// The path of cgroup `id`, walking the hierarchy again when it is not
    /// known: at once for a group made since the last walk, otherwise (a
    /// group gone) at most once a second.
    pub fn path(&mut self, id: u64) -> Option<Arc<str>> {
        if let Some(path) = self.paths.get(&id) {
            return Some(Arc::clone(path));
        }
        let root = self.root.clone()?;
        if !self.may_walk(id) {
            return None;
        }
        self.last_scan = Some(Instant::now());
        self.paths.clear();
        let paths = &mut self.paths;
        each_group(&root, |id, path| {
            paths.insert(id, Arc::from(path));
        });
        self.newest = self.paths.keys().copied().max().unwrap_or(0);
        self.paths.get(&id).cloned()
    }
}

impl Default for CgroupPaths {
    fn default() -> Self {
        Self::new()
    }
}

impl CgroupPaths {
    /// Whether an unknown `id` is worth a walk now.
    fn may_walk(&self, id: u64) -> bool {
        id > self.newest || self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY)
    }
}

/// Every group of the hierarchy mounted at `mount`, each with its id (the
/// inode of its folder) and its path under the mount (`/` first): parents
/// before their children, siblings in name order, so that a walk of the
/// same groups goes the same way each time.
pub fn each_group(mount: &Path, mut group: impl FnMut(u64, String)) {
    let mut dirs = vec![mount.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        let relative = dir.strip_prefix(mount).unwrap_or(&dir);
        group(meta.ino(), format!("/{}", relative.display()));
        let Ok(children) = fs::read_dir(&dir) else {
            continue;
        };
        let mut children: Vec<PathBuf> = children
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        // Popped from the end: the first name first.
        children.sort_unstable_by(|a, b| b.cmp(a));
        dirs.extend(children);
    }
}

/// Where cgroup2 is mounted, from /proc/self/mounts.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    parse_mounts(&mounts)
}

fn parse_mounts(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dir))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let mounts = "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(parse_mounts(mounts), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(parse_mounts("tmpfs /run tmpfs rw 0 0\n"), None);
    }

    #[test]
    fn ids_are_folder_inodes_and_paths_are_relative() {
        let root = std::env::temp_dir().join(format!("tcpstates-cg-{}", std::process::id()));
        fs::create_dir_all(root.join("a/b")).unwrap();
        let id = |p: &str| fs::metadata(root.join(p)).unwrap().ino();
        let mut paths = CgroupPaths::at(Some(root.clone()));
        assert_eq!(paths.path(id("a/b")).as_deref(), Some("/a/b"));
        assert_eq!(paths.path(id("")).as_deref(), Some("/"));
        // A group made since (a larger id: cgroup ids grow) is walked for
        // at once; one gone, at most once a second.
        let newest = [id(""), id("a"), id("a/b")].into_iter().max().unwrap();
        assert_eq!(paths.newest, newest);
        assert!(paths.may_walk(newest + 1));
        assert!(!paths.may_walk(newest - 1));
        fs::create_dir_all(root.join("c")).unwrap();
        paths.last_scan = None;
        assert_eq!(paths.path(id("c")).as_deref(), Some("/c"));
        assert_eq!(CgroupPaths::at(None).path(1), None);
        fs::remove_dir_all(&root).unwrap();
    }
}

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
    /// The id asked for last and its path: consecutive events mostly share
    /// an owner.
    last: Option<(u64, Arc<str>)>,
    last_scan: Option<Instant>,
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
            last: None,
            last_scan: None,
        }
    }

    /// The path of cgroup `id`, walking the hierarchy again when it is not
    /// known (a group made since), at most once a second.
    pub fn path(&mut self, id: u64) -> Option<Arc<str>> {
        if let Some((last, path)) = &self.last {
            if *last == id {
                return Some(Arc::clone(path));
            }
        }
        let path = self.lookup(id)?;
        self.last = Some((id, Arc::clone(&path)));
        Some(path)
    }

    fn lookup(&mut self, id: u64) -> Option<Arc<str>> {
        if let Some(path) = self.paths.get(&id) {
            return Some(Arc::clone(path));
        }
        let root = self.root.clone()?;
        if self.last_scan.is_some_and(|t| t.elapsed() < RESCAN_EVERY) {
            return None;
        }
        self.last_scan = Some(Instant::now());
        self.paths.clear();
        scan(&root, &root, &mut self.paths);
        self.paths.get(&id).cloned()
    }
}

impl Default for CgroupPaths {
    fn default() -> Self {
        Self::new()
    }
}

fn scan(root: &Path, dir: &Path, paths: &mut HashMap<u64, Arc<str>>) {
    let Ok(meta) = fs::metadata(dir) else { return };
    let relative = dir.strip_prefix(root).unwrap_or(dir);
    paths.insert(meta.ino(), Arc::from(format!("/{}", relative.display())));
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            scan(root, &entry.path(), paths);
        }
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
        // Unknown, and no second walk within the second.
        fs::create_dir_all(root.join("c")).unwrap();
        assert_eq!(paths.path(id("c")), None);
        assert_eq!(CgroupPaths::at(None).path(1), None);
        fs::remove_dir_all(&root).unwrap();
    }
}

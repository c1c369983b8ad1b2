//! Names the host shows without any API: a container's, from its runtime's
//! own state files (Podman's and CRI-O's `containers.json`, Docker's
//! `config.v2.json`), and a pod's namespace, name and container name, from
//! the kubelet's log folders (`/var/log/pods/<namespace>_<name>_<uid>/`,
//! and `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`, which
//! ties a container id to its name). All read under a root (`--host-root`,
//! for a tool that runs in a container with the host's `/` mounted
//! elsewhere). Nothing found is nothing said: a name is never guessed.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::{Identity, Pod, Runtime};

/// A name not found is looked for again at most this often.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// [`Names`] shared by the thread that sees groups made (it looks their
/// names up at once, while a short-lived container still exists) and the
/// reader, which names owners later.
pub type SharedNames = std::sync::Arc<std::sync::Mutex<Names>>;

/// Reads and caches the names of containers and pods; a name found is kept
/// for the run.
#[derive(Debug)]
pub struct Names {
    root: PathBuf,
    /// `containers.json` files read, with their modification times.
    storage: HashMap<PathBuf, SystemTime>,
    /// Container id -> name, from every `containers.json`.
    stored: HashMap<String, String>,
    /// Ids and pod uids looked for in vain, and when.
    missed: HashMap<String, Instant>,
    /// Pod uid -> (namespace, name).
    pods: HashMap<String, (String, String)>,
    /// Container id -> its name in the pod spec.
    pod_containers: HashMap<String, String>,
}

impl Names {
    /// Names read under `root` (`/` on the host).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            storage: HashMap::new(),
            stored: HashMap::new(),
            missed: HashMap::new(),
            pods: HashMap::new(),
            pod_containers: HashMap::new(),
        }
    }

    /// Fills in the names `id` lacks, where the host shows them.
    pub fn fill(&mut self, id: &mut Identity) {
        if let Some(pod) = &mut id.pod {
            self.fill_pod(pod, id.container.as_ref().map(|c| c.id.as_str()));
        }
        let Some(container) = &mut id.container else {
            return;
        };
        if container.name.is_some() || !self.may_look(&container.id) {
            return;
        }
        container.name = match container.runtime {
            Runtime::Docker => self.docker_name(&container.id),
            Runtime::Podman | Runtime::CriO => self.stored_name(&container.id),
            // The kubelet's names are the pod's (see fill_pod).
            Runtime::Containerd | Runtime::Unknown => None,
        };
        if container.name.is_none() {
            self.missed.insert(container.id.clone(), Instant::now());
        }
    }

    /// Whether `key` was not looked for in vain within the last second.
    fn may_look(&self, key: &str) -> bool {
        self.missed
            .get(key)
            .is_none_or(|at| at.elapsed() >= RETRY_EVERY)
    }

    fn fill_pod(&mut self, pod: &mut Pod, container: Option<&str>) {
        let known = self.pods.contains_key(&pod.uid)
            && container.is_none_or(|id| self.pod_containers.contains_key(id));
        if !known && self.may_look(&pod.uid) {
            self.read_pod_logs();
            if !self.pods.contains_key(&pod.uid) {
                self.missed.insert(pod.uid.clone(), Instant::now());
            }
        }
        if let Some((namespace, name)) = self.pods.get(&pod.uid) {
            pod.namespace = Some(namespace.clone());
            pod.name = Some(name.clone());
        }
        pod.container = container.and_then(|id| self.pod_containers.get(id).cloned());
    }

    /// The kubelet's folders: `var/log/pods/<namespace>_<name>_<uid>` and
    /// the links `var/log/containers/<pod>_<namespace>_<container>-<id>.log`
    /// (names in Kubernetes cannot hold `_`).
    fn read_pod_logs(&mut self) {
        for name in dir_names(&self.root.join("var/log/pods")) {
            let mut parts = name.splitn(3, '_');
            if let (Some(ns), Some(pod), Some(uid)) = (parts.next(), parts.next(), parts.next()) {
                self.pods
                    .insert(uid.to_string(), (ns.to_string(), pod.to_string()));
            }
        }
        for name in dir_names(&self.root.join("var/log/containers")) {
            let Some(stem) = name.strip_suffix(".log") else {
                continue;
            };
            let Some((front, id)) = stem.rsplit_once('-') else {
                continue;
            };
            if let Some(container) = front.splitn(3, '_').nth(2) {
                self.pod_containers
                    .insert(id.to_string(), container.to_string());
            }
        }
    }

    /// Docker: `var/lib/docker/containers/<id>/config.v2.json`'s `Name`
    /// (`/web`).
    fn docker_name(&self, id: &str) -> Option<String> {
        let path = self
            .root
            .join("var/lib/docker/containers")
            .join(id)
            .join("config.v2.json");
        let config: serde_json::Value = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
        let name = config.get("Name")?.as_str()?;
        Some(name.trim_start_matches('/').to_string())
    }

    /// Podman and CRI-O (containers/storage): the `names` of the id in
    /// `<graph root>/<driver>-containers/containers.json`, under the
    /// system's graph root and the users' (rootless Podman), read again
    /// when one changes.
    fn stored_name(&mut self, id: &str) -> Option<String> {
        let mut roots = vec![self.root.join("var/lib/containers/storage")];
        for home in dir_names(&self.root.join("home")) {
            roots.push(
                self.root
                    .join("home")
                    .join(home)
                    .join(".local/share/containers/storage"),
            );
        }
        roots.push(self.root.join("root/.local/share/containers/storage"));
        for root in roots {
            for dir in dir_names(&root) {
                if dir.ends_with("-containers") {
                    self.read_storage(&root.join(dir).join("containers.json"));
                }
            }
        }
        self.stored.get(id).cloned()
    }

    fn read_storage(&mut self, file: &Path) {
        let Ok(modified) = fs::metadata(file).and_then(|m| m.modified()) else {
            return;
        };
        if self.storage.get(file) == Some(&modified) {
            return;
        }
        self.storage.insert(file.to_path_buf(), modified);
        let Ok(bytes) = fs::read(file) else { return };
        let Ok(serde_json::Value::Array(list)) = serde_json::from_slice(&bytes) else {
            return;
        };
        for entry in list {
            let id = entry.get("id").and_then(|v| v.as_str());
            let name = entry
                .get("names")
                .and_then(|v| v.as_array())
                .and_then(|names| names.first())
                .and_then(|v| v.as_str());
            if let (Some(id), Some(name)) = (id, name) {
                self.stored.insert(id.to_string(), name.to_string());
            }
        }
    }
}

/// The names in a folder (none if it cannot be read).
fn dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8450f1dc0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5";
    const UID: &str = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d";

    fn temp_root(name: &str) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("tcpstates-names-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        root
    }

    fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn podman_docker_and_crio_names_from_their_state() {
        let root = temp_root("runtimes");
        write(
            &root,
            "var/lib/containers/storage/overlay-containers/containers.json",
            &format!(r#"[{{"id":"{ID}","names":["web"],"image":"x"}}]"#),
        );
        write(
            &root,
            &format!("var/lib/docker/containers/{ID}/config.v2.json"),
            r#"{"ID":"x","Name":"/db"}"#,
        );
        let mut names = Names::new(&root);
        let mut podman = Identity::parse(&format!("/machine.slice/libpod-{ID}.scope"));
        names.fill(&mut podman);
        assert_eq!(podman.container.unwrap().name.as_deref(), Some("web"));
        let mut docker = Identity::parse(&format!("/docker/{ID}"));
        names.fill(&mut docker);
        assert_eq!(docker.container.unwrap().name.as_deref(), Some("db"));
        // Unknown ids stay unknown.
        let other = ID.replace('8', "9");
        let mut unknown = Identity::parse(&format!("/libpod_parent/libpod-{other}"));
        names.fill(&mut unknown);
        assert_eq!(unknown.container.unwrap().name, None);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn pods_from_the_kubelet_log_folders() {
        let root = temp_root("pods");
        write(
            &root,
            &format!("var/log/pods/shop_cart-0_{UID}/app/0.log"),
            "",
        );
        write(
            &root,
            &format!("var/log/containers/cart-0_shop_app-{ID}.log"),
            "",
        );
        let mut names = Names::new(&root);
        let uid_ = UID.replace('-', "_");
        let mut id = Identity::parse(&format!(
            "/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"
        ));
        names.fill(&mut id);
        let pod = id.pod.clone().unwrap();
        assert_eq!(
            (
                pod.namespace.as_deref(),
                pod.name.as_deref(),
                pod.container.as_deref()
            ),
            (Some("shop"), Some("cart-0"), Some("app"))
        );
        assert_eq!(id.to_string(), "shop/cart-0/app");
        // Another container of the pod (its sandbox): the pod, no name.
        let sandbox = ID.replace('8', "7");
        let mut id = Identity::parse(&format!("/kubepods/pod{UID}/{sandbox}"));
        names.fill(&mut id);
        assert_eq!(id.pod.unwrap().container, None);
        fs::remove_dir_all(&root).unwrap();
    }
}

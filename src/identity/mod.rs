//! Who a cgroup belongs to, as users name it: the systemd unit, the
//! container and the Kubernetes pod, read from the owner's cgroup v2 path
//! (every runtime writes them there), and, where the host shows them without
//! any API, the container's and the pod's names ([`names`]).
//!
//! [`Identity::parse`] is pure: the layouts it knows are its test cases.
//! [`groups`] turns the `--unit` and `--container` filters and the summary's
//! labels into the kernel's table of cgroup ids.

pub mod groups;
pub mod names;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::cgroup::CgroupPaths;
use names::SharedNames;

/// Owners' cgroup ids to their paths and identities, each looked up once
/// (again while a name is missing, at most once a second).
#[derive(Debug)]
pub struct Identities {
    paths: CgroupPaths,
    names: SharedNames,
    /// Each group's path and identity, and when a name it lacks was last
    /// looked for.
    known: HashMap<u64, (Arc<str>, Arc<Identity>, Instant)>,
    /// The kernel's paths of groups made while tracing (`group_paths`), for
    /// groups gone before they were looked up.
    made: Option<libbpf_rs::MapHandle>,
    /// The group asked for last, when complete: consecutive events mostly
    /// share an owner.
    last: Option<(u64, Arc<str>, Arc<Identity>)>,
}

impl Identities {
    /// For the cgroup2 hierarchy at `mount`; names from `names` (which the
    /// thread that sees groups made fills at once), and the paths of groups
    /// gone before they were looked up from the kernel's `made`
    /// (`group_paths`), when there is one.
    pub fn new(
        mount: Option<PathBuf>,
        names: SharedNames,
        made: Option<libbpf_rs::MapHandle>,
    ) -> Self {
        Self {
            paths: CgroupPaths::at(mount),
            names,
            known: HashMap::new(),
            made,
            last: None,
        }
    }

    /// The path of cgroup `id` and who it belongs to, when the group is
    /// found.
    pub fn of(&mut self, id: u64) -> Option<(Arc<str>, Arc<Identity>)> {
        if let Some((last, path, identity)) = &self.last {
            if *last == id {
                return Some((Arc::clone(path), Arc::clone(identity)));
            }
        }
        let path = match self.known.get(&id) {
            Some((path, identity, at))
                if identity.is_complete() || at.elapsed() < names::RETRY_EVERY =>
            {
                if identity.is_complete() {
                    self.last = Some((id, Arc::clone(path), Arc::clone(identity)));
                }
                return Some((Arc::clone(path), Arc::clone(identity)));
            }
            Some((path, _, _)) => Arc::clone(path),
            None => match self.paths.path(id) {
                Some(path) => path,
                None => Arc::from(groups::made_path(self.made.as_ref()?, id)?),
            },
        };
        let mut identity = Identity::parse(&path);
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fill(&mut identity);
        let identity = Arc::new(identity);
        self.known.insert(
            id,
            (Arc::clone(&path), Arc::clone(&identity), Instant::now()),
        );
        if identity.is_complete() {
            self.last = Some((id, Arc::clone(&path), Arc::clone(&identity)));
        }
        Some((path, identity))
    }
}

/// A container runtime, as told by its cgroup's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// Docker (`docker-<id>.scope`, `/docker/<id>`).
    Docker,
    /// containerd's CRI plugin (`cri-containerd-<id>.scope`).
    Containerd,
    /// CRI-O (`crio-<id>.scope`, `crio-<id>`).
    CriO,
    /// Podman (`libpod-<id>.scope`, `libpod-<id>`).
    Podman,
    /// A bare id (Kubernetes' cgroupfs driver names no runtime).
    Unknown,
}

impl Runtime {
    /// Its name in every output.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "crio",
            Runtime::Podman => "podman",
            Runtime::Unknown => "container",
        }
    }
}

/// A container: its runtime, id, and name when the runtime's state shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Container {
    /// Which runtime made its cgroup.
    pub runtime: Runtime,
    /// The full id (64 hex digits).
    pub id: String,
    /// The name users gave it (`podman run --name`), when known.
    pub name: Option<String>,
}

/// A Kubernetes pod: its uid, and, from `/var/log/pods`, its namespace, name
/// and the container's name within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Pod {
    /// The pod's uid (dashed form).
    pub uid: String,
    /// Its namespace, when known.
    pub namespace: Option<String>,
    /// Its name, when known.
    pub name: Option<String>,
    /// The container's name in the pod spec, when known.
    pub container: Option<String>,
}

/// Who a cgroup belongs to; every part unknown unless its path says it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Identity {
    /// The innermost system unit (service or scope) holding the group:
    /// `nginx.service`, `session-3.scope`, `user@1000.service`.
    pub unit: Option<String>,
    /// Under a user's manager (`user@UID.service`), the innermost user unit
    /// and that uid.
    pub user_unit: Option<(u32, String)>,
    /// The container, if the group is one's or below one's.
    pub container: Option<Container>,
    /// The Kubernetes pod, if the group is in one.
    pub pod: Option<Pod>,
}

/// The suffixes of systemd unit names that hold processes or groups.
const UNIT_SUFFIXES: [&str; 3] = [".service", ".scope", ".slice"];

impl Identity {
    /// Reads a cgroup v2 path (relative to the mount, `/` first). Units are
    /// read up to the container; what a container holds inside (its own
    /// systemd's units) is the container's business.
    pub fn parse(path: &str) -> Identity {
        let mut id = Identity::default();
        let mut user: Option<u32> = None;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if let Some(uid) = pod_uid(part) {
                id.pod = Some(Pod {
                    uid,
                    ..Pod::default()
                });
                continue;
            }
            if let Some(container) = container(part, path) {
                id.container = Some(container);
                break;
            }
            if !UNIT_SUFFIXES.iter().any(|s| part.ends_with(s)) || part.ends_with(".slice") {
                continue;
            }
            match user {
                Some(uid) => id.user_unit = Some((uid, part.to_string())),
                None => {
                    id.unit = Some(part.to_string());
                    user = part
                        .strip_prefix("user@")
                        .and_then(|rest| rest.strip_suffix(".service"))
                        .and_then(|uid| uid.parse().ok());
                }
            }
        }
        id
    }

    /// Whether one of the path's components is the unit `name` (a name
    /// without a suffix is a service, as systemctl reads it).
    pub fn path_has_unit(path: &str, name: &str) -> bool {
        let wanted = unit_name(name);
        path.split('/').any(|part| part == wanted)
    }

    /// Whether the container is `wanted`: its name, or a prefix of its id
    /// (at least 3 digits, as runtimes accept).
    pub fn is_container(&self, wanted: &str) -> bool {
        let Some(c) = &self.container else {
            return false;
        };
        c.name.as_deref() == Some(wanted)
            || (wanted.len() >= 3 && c.id.starts_with(&wanted.to_ascii_lowercase()))
            || self.pod.as_ref().is_some_and(|p| {
                p.name.is_some()
                    && p.container.is_some()
                    && wanted
                        == format!(
                            "{}/{}",
                            p.name.as_deref().unwrap_or_default(),
                            p.container.as_deref().unwrap_or_default()
                        )
            })
    }

    /// Whether no name is missing that the host might show later.
    fn is_complete(&self) -> bool {
        // containerd's and the kubelet's names are the pod's.
        self.container.as_ref().is_none_or(|c| {
            c.name.is_some() || matches!(c.runtime, Runtime::Containerd | Runtime::Unknown)
        }) && self.pod.as_ref().is_none_or(|p| p.name.is_some())
    }
}

/// `name` as systemd spells the unit: `nginx` is `nginx.service`.
pub fn unit_name(name: &str) -> String {
    let known = UNIT_SUFFIXES
        .iter()
        .chain(&[".socket", ".mount", ".target"])
        .any(|s| name.ends_with(s));
    if known {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}

impl Identity {
    /// Appends the compact form (see the `Display` impl) to `out`, without
    /// the formatting machinery: the table writes it on every line.
    pub fn push_compact(&self, out: &mut Vec<u8>) {
        if let Some(pod) = &self.pod {
            if let (Some(ns), Some(name)) = (&pod.namespace, &pod.name) {
                for part in [ns.as_str(), "/", name.as_str()] {
                    out.extend_from_slice(part.as_bytes());
                }
                if let Some(c) = &pod.container {
                    out.push(b'/');
                    out.extend_from_slice(c.as_bytes());
                }
                return;
            }
        }
        if let Some(c) = &self.container {
            out.extend_from_slice(c.runtime.name().as_bytes());
            out.push(b':');
            let shown = c.name.as_deref().unwrap_or(&c.id[..12]);
            out.extend_from_slice(shown.as_bytes());
            return;
        }
        if let Some((uid, unit)) = &self.user_unit {
            out.extend_from_slice(format!("user@{uid}:{unit}").as_bytes());
            return;
        }
        out.extend_from_slice(self.unit.as_deref().unwrap_or("-").as_bytes());
    }
}

/// The compact form the table's column shows: the pod's
/// `namespace/name/container`, else the container's `runtime:name` (or the
/// first 12 digits of its id), else the user unit (`user@UID:unit`), else
/// the unit, else `-`.
impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Vec::new();
        self.push_compact(&mut text);
        f.write_str(&String::from_utf8_lossy(&text))
    }
}

/// A pod's uid from its group: `kubepods-burstable-pod<uid>.slice` (the
/// systemd driver, dashes written as underscores) or `pod<uid>` (cgroupfs).
fn pod_uid(part: &str) -> Option<String> {
    let uid = match part.strip_suffix(".slice") {
        Some(slice) if slice.starts_with("kubepods") => {
            slice.rsplit_once("-pod")?.1.replace('_', "-")
        }
        Some(_) => return None,
        None => part.strip_prefix("pod")?.to_string(),
    };
    let is_uid = uid.len() == 36
        && uid.chars().enumerate().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
        });
    is_uid.then_some(uid)
}

/// A container's group: `<prefix>-<id>.scope` (systemd drivers),
/// `<prefix>-<id>` or a bare id (cgroupfs drivers). Conmon's groups
/// (`libpod-conmon-<id>`, `crio-conmon-<id>`) are the runtime's monitor,
/// not the container.
fn container(part: &str, path: &str) -> Option<Container> {
    const PREFIXES: [(&str, Runtime); 4] = [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
    ];
    let name = part.strip_suffix(".scope").unwrap_or(part);
    let (runtime, id) = PREFIXES
        .iter()
        .find_map(|(prefix, runtime)| Some((*runtime, name.strip_prefix(prefix)?)))
        .unwrap_or_else(|| {
            // cgroupfs: Docker's /docker/<id>; Kubernetes' pod<uid>/<id>.
            let runtime = if path.starts_with("/docker/") {
                Runtime::Docker
            } else {
                Runtime::Unknown
            };
            (runtime, name)
        });
    let is_id = id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    is_id.then(|| Container {
        runtime,
        id: id.to_string(),
        name: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8450f1dc0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5";
    const UID: &str = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d";

    fn container(runtime: Runtime) -> Option<Container> {
        Some(Container {
            runtime,
            id: ID.to_string(),
            name: None,
        })
    }

    fn pod() -> Option<Pod> {
        Some(Pod {
            uid: UID.to_string(),
            ..Pod::default()
        })
    }

    fn unit(name: &str) -> Option<String> {
        Some(name.to_string())
    }

    /// Real paths of each layout, as the runtimes and systemd write them.
    #[test]
    fn every_layout() {
        let uid_ = UID.replace('-', "_");
        let cases: Vec<(String, Identity)> = vec![
            ("/".into(), Identity::default()),
            (
                "/init.scope".into(),
                Identity {
                    unit: unit("init.scope"),
                    ..Default::default()
                },
            ),
            (
                "/system.slice/nginx.service".into(),
                Identity {
                    unit: unit("nginx.service"),
                    ..Default::default()
                },
            ),
            (
                "/system.slice/system-getty.slice/getty@tty1.service".into(),
                Identity {
                    unit: unit("getty@tty1.service"),
                    ..Default::default()
                },
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope".into(),
                Identity {
                    unit: unit("session-3.scope"),
                    ..Default::default()
                },
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service".into(),
                Identity {
                    unit: unit("user@1000.service"),
                    user_unit: Some((1000, "foo.service".into())),
                    ..Default::default()
                },
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/init.scope".into(),
                Identity {
                    unit: unit("user@1000.service"),
                    user_unit: Some((1000, "init.scope".into())),
                    ..Default::default()
                },
            ),
            // Docker: systemd driver, cgroupfs driver.
            (
                format!("/system.slice/docker-{ID}.scope"),
                Identity {
                    container: container(Runtime::Docker),
                    ..Default::default()
                },
            ),
            (
                format!("/docker/{ID}"),
                Identity {
                    container: container(Runtime::Docker),
                    ..Default::default()
                },
            ),
            // Podman: systemd driver (rootful, rootless, in a pod, with its
            // own systemd inside), cgroupfs driver; conmon is not the
            // container.
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                Identity {
                    container: container(Runtime::Podman),
                    ..Default::default()
                },
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope/container/system.slice/nginx.service"),
                Identity {
                    container: container(Runtime::Podman),
                    ..Default::default()
                },
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                Identity {
                    unit: unit("user@1000.service"),
                    container: container(Runtime::Podman),
                    ..Default::default()
                },
            ),
            (
                format!("/machine.slice/machine-libpod_pod_0123abcd.slice/libpod-{ID}.scope"),
                Identity {
                    container: container(Runtime::Podman),
                    ..Default::default()
                },
            ),
            (
                format!("/libpod_parent/libpod-{ID}"),
                Identity {
                    container: container(Runtime::Podman),
                    ..Default::default()
                },
            ),
            (
                format!("/machine.slice/libpod-conmon-{ID}.scope"),
                Identity {
                    unit: unit(&format!("libpod-conmon-{ID}.scope")),
                    ..Default::default()
                },
            ),
            // Kubernetes, systemd driver: containerd and CRI-O, each QoS class.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
                Identity {
                    container: container(Runtime::Containerd),
                    pod: pod(),
                    ..Default::default()
                },
            ),
            (
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                Identity {
                    container: container(Runtime::Containerd),
                    pod: pod(),
                    ..Default::default()
                },
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{ID}.scope"
                ),
                Identity {
                    container: container(Runtime::CriO),
                    pod: pod(),
                    ..Default::default()
                },
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-conmon-{ID}.scope"
                ),
                Identity {
                    unit: unit(&format!("crio-conmon-{ID}.scope")),
                    pod: pod(),
                    ..Default::default()
                },
            ),
            // Kubernetes, cgroupfs driver: containerd (a bare id), CRI-O.
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                Identity {
                    container: container(Runtime::Unknown),
                    pod: pod(),
                    ..Default::default()
                },
            ),
            (
                format!("/kubepods/pod{UID}/{ID}"),
                Identity {
                    container: container(Runtime::Unknown),
                    pod: pod(),
                    ..Default::default()
                },
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/crio-{ID}"),
                Identity {
                    container: container(Runtime::CriO),
                    pod: pod(),
                    ..Default::default()
                },
            ),
            // A pod's own group (its sandbox's parent): the pod, no container.
            (
                format!("/kubepods.slice/kubepods-pod{uid_}.slice"),
                Identity {
                    pod: pod(),
                    ..Default::default()
                },
            ),
            // Not ids: too short, upper case, another unit.
            ("/docker/abc123".into(), Identity::default()),
            (
                format!("/system.slice/docker-{}.scope", ID.to_uppercase()),
                Identity {
                    unit: unit(&format!("docker-{}.scope", ID.to_uppercase())),
                    ..Default::default()
                },
            ),
            (
                "/system.slice/docker.service".into(),
                Identity {
                    unit: unit("docker.service"),
                    ..Default::default()
                },
            ),
        ];
        for (path, want) in cases {
            assert_eq!(Identity::parse(&path), want, "{path}");
        }
    }

    #[test]
    fn compact_forms() {
        let show = |path: &str| Identity::parse(path).to_string();
        assert_eq!(show("/system.slice/nginx.service"), "nginx.service");
        assert_eq!(
            show("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service"),
            "user@1000:foo.service"
        );
        assert_eq!(
            show(&format!("/machine.slice/libpod-{ID}.scope")),
            "podman:8450f1dc0a1b"
        );
        assert_eq!(show("/"), "-");
        let mut named = Identity::parse(&format!("/libpod_parent/libpod-{ID}"));
        named.container.as_mut().unwrap().name = Some("web".into());
        assert_eq!(named.to_string(), "podman:web");
        named.pod = Some(Pod {
            uid: UID.into(),
            namespace: Some("shop".into()),
            name: Some("cart-0".into()),
            container: Some("app".into()),
        });
        assert_eq!(named.to_string(), "shop/cart-0/app");
    }

    #[test]
    fn units_and_containers_match_as_users_name_them() {
        let path = "/system.slice/system-getty.slice/getty@tty1.service";
        assert!(Identity::path_has_unit(path, "getty@tty1"));
        assert!(Identity::path_has_unit(path, "getty@tty1.service"));
        assert!(Identity::path_has_unit(path, "system-getty.slice"));
        assert!(!Identity::path_has_unit(path, "getty"));
        assert!(!Identity::path_has_unit(
            path,
            "system.slice/system-getty.slice"
        ));
        let mut id = Identity::parse(&format!("/docker/{ID}"));
        assert!(id.is_container("8450f1"));
        assert!(id.is_container("8450F1"));
        assert!(id.is_container(ID));
        assert!(!id.is_container("84"));
        assert!(!id.is_container("web"));
        id.container.as_mut().unwrap().name = Some("web".into());
        assert!(id.is_container("web"));
        assert!(!Identity::default().is_container("web"));
    }
}

//! The kernel's table of cgroups (`groups` in `src/bpf/maps.bpf.h`): for
//! each cgroup that matters, whether its processes pass the group filters
//! (`--cgroup`, `--unit`, `--container`) and its summary label
//! (`--label-by`).
//!
//! The program judges a socket's owner by its cgroup id when the owner
//! changes: one lookup. A [`Keeper`] thread walks the cgroup2 hierarchy at
//! start and every few seconds, judges every group by its path
//! ([`GroupRules`]) and fills the table. Groups made while tracing (a unit
//! restarted, a container started) are judged as they are made: a program
//! on `cgroup_mkdir` keeps each one's path and sends its id, and the keeper,
//! woken, judges it within microseconds, before a process in it can open a
//! socket. Should the program still meet a group made since the table was
//! filled (cgroup ids only grow, so it knows which ones those are), it
//! counts it (`COUNTER_NEW_GROUPS`), which makes the keeper walk again, and
//! leaves the decision to user space: the reader judges such events by the
//! same rules ([`GroupRules::keeps`]); summary mode counts the transitions
//! it could not judge under the `unknown` label, or, filtered, says how
//! many it left out (`unjudged`).
//!
//! Without rules (owners shown, no group filter or label), the keeper only
//! looks the names of groups made up as they are made, while a short-lived
//! container's state still exists.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, RingBufferBuilder};

use super::Identity;
use super::names::SharedNames;
use crate::cgroup;
use crate::config::{Config, LabelBy, Labels};

/// The label slots before the named ones (`enum group_labels`).
pub const LABEL_UNKNOWN: u16 = 0;
/// The owner is in no unit (or container).
pub const LABEL_NONE: u16 = 1;
/// Beyond `--max-labels`.
pub const LABEL_OTHER: u16 = 2;
/// The first named label's slot.
pub const LABEL_FIRST: u16 = 3;

/// The most cgroups the table holds (a map without preallocation: memory
/// as used).
pub const MAX_GROUPS: u32 = 65536;

/// The paths of groups made while tracing that the kernel keeps (the most
/// recent ones).
pub const NEW_GROUP_PATHS: u32 = 4096;

/// How often the keeper walks the hierarchy when nothing asks it to.
const WALK_EVERY: Duration = Duration::from_secs(2);
/// How often it looks whether the program met a group too new to judge
/// (at once when the kernel says a group was made).
const LOOK_EVERY: Duration = Duration::from_millis(50);

/// What the run asks of owners' groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRules {
    cgroup: Option<String>,
    unit: Option<String>,
    container: Option<String>,
    labels: Option<Labels>,
}

impl GroupRules {
    /// The rules of `config`; None when nothing asks about groups.
    pub fn of(config: &Config) -> Option<Self> {
        let f = &config.filter;
        let rules = GroupRules {
            cgroup: f.cgroup.clone(),
            unit: f.unit.clone(),
            container: f.container.clone(),
            // Port labels are not the owner's.
            labels: config.labels.filter(|l| l.by.by_owner()),
        };
        (f.by_group() || rules.labels.is_some()).then_some(rules)
    }

    /// Whether a group filter is on.
    pub fn filters(&self) -> bool {
        self.cgroup.is_some() || self.unit.is_some() || self.container.is_some()
    }

    /// Whether the group at `path` (under the mount), which belongs to
    /// `identity`, passes every group filter.
    pub fn keeps(&self, path: &str, identity: &Identity) -> bool {
        let below = |top: &str| {
            top == "/"
                || path == top
                || path
                    .strip_prefix(top)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        self.cgroup.as_deref().is_none_or(below)
            && self
                .unit
                .as_deref()
                .is_none_or(|unit| Identity::path_has_unit(path, unit))
            && self
                .container
                .as_deref()
                .is_none_or(|c| identity.is_container(c))
    }

    /// The label `identity` counts under, None for no unit (container).
    pub fn label(&self, identity: &Identity) -> Option<String> {
        match self.labels?.by {
            LabelBy::Unit => match &identity.user_unit {
                Some((uid, unit)) => Some(format!("user@{uid}:{unit}")),
                None => identity.unit.clone(),
            },
            LabelBy::Container => identity.container.is_some().then(|| identity.to_string()),
            LabelBy::Port => None,
        }
    }
}

/// One cgroup's entry: `struct group` (in_groups, pad, label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    /// Its processes pass the group filters.
    pub in_groups: bool,
    /// Its label's slot.
    pub label: u16,
}

impl Group {
    fn bytes(self) -> [u8; 4] {
        let label = self.label.to_ne_bytes();
        [u8::from(self.in_groups), 0, label[0], label[1]]
    }
}

/// Judges groups and hands out label slots, first come first served, up to
/// the bound; a label keeps its slot for the run (a restarted unit counts
/// on where it left off).
#[derive(Debug)]
pub struct GroupTable {
    /// None: groups are only looked at for their names.
    rules: Option<GroupRules>,
    names: SharedNames,
    slots: HashMap<String, u16>,
    labels: Arc<Mutex<Vec<String>>>,
}

impl GroupTable {
    /// For `rules` (None: names only), with `names`.
    pub fn new(rules: Option<GroupRules>, names: SharedNames) -> Self {
        Self {
            rules,
            names,
            slots: HashMap::new(),
            labels: Arc::default(),
        }
    }

    /// The named labels, slot LABEL_FIRST first; they only grow.
    pub fn labels(&self) -> Arc<Mutex<Vec<String>>> {
        Arc::clone(&self.labels)
    }

    /// The entry of the group at `path`, None when it needs none (it
    /// passes no filter and has no label).
    pub fn judge(&mut self, path: &str) -> Option<Group> {
        let mut identity = Identity::parse(path);
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fill(&mut identity);
        let rules = self.rules.as_ref()?;
        let in_groups = rules.filters() && rules.keeps(path, &identity);
        let label = match rules.label(&identity) {
            None => LABEL_NONE,
            Some(label) => self.slot(label),
        };
        (in_groups || label != LABEL_NONE).then_some(Group { in_groups, label })
    }

    fn slot(&mut self, label: String) -> u16 {
        if let Some(&slot) = self.slots.get(&label) {
            return slot;
        }
        let max = self
            .rules
            .as_ref()
            .and_then(|r| r.labels)
            .map_or(0, |l| l.max);
        let mut labels = self.labels.lock().unwrap_or_else(|e| e.into_inner());
        if labels.len() >= usize::from(max) {
            return LABEL_OTHER;
        }
        let slot = LABEL_FIRST + labels.len() as u16;
        labels.push(label.clone());
        self.slots.insert(label, slot);
        slot
    }

    /// Every group under `mount`, judged: the entries, and the largest id
    /// found. Parents first, in name order, so that slots go the same way
    /// on each run.
    pub fn walk(&mut self, mount: &Path) -> (HashMap<u64, Group>, u64) {
        let mut entries = HashMap::new();
        let mut newest = 0;
        cgroup::each_group(mount, |id, path| {
            newest = newest.max(id);
            if let Some(group) = self.judge(&path) {
                entries.insert(id, group);
            }
        });
        (entries, newest)
    }
}

/// The thread that keeps the kernel's table filled while the run lasts
/// (without rules, it only looks the names of groups made up at once).
#[derive(Debug)]
pub struct Keeper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    labels: Arc<Mutex<Vec<String>>>,
}

/// The maps the keeper fills and the counter it watches.
#[derive(Debug)]
pub struct GroupMaps {
    /// `groups`.
    pub groups: MapHandle,
    /// `groups_known`.
    pub known: MapHandle,
    /// `group_paths`: groups made while tracing.
    pub paths: MapHandle,
    /// `group_events`: their ids, as they are made.
    pub events: MapHandle,
    /// `counters` (per CPU).
    pub counters: MapHandle,
    /// COUNTER_NEW_GROUPS's index.
    pub new_groups: u32,
}

impl Keeper {
    /// Fills the table (two walks, so that the program can tell new groups
    /// from the first event on) and keeps it filled from a thread.
    pub fn start(mut table: GroupTable, mount: PathBuf, maps: GroupMaps) -> Result<Self> {
        let mut filled = Filled::default();
        if table.rules.is_some() {
            let (_, first) = table.walk(&mount);
            filled.apply(&mut table, &mount, &maps, first)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let labels = table.labels();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("groups".into())
                .spawn(move || keep(table, mount, maps, filled, &stop))
                .context("starting the cgroup walker")?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            labels,
        })
    }

    /// The named labels, slot LABEL_FIRST first, as they grow.
    pub fn label_list(&self) -> Arc<Mutex<Vec<String>>> {
        Arc::clone(&self.labels)
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the table holds, and the largest id of the walk before.
#[derive(Debug, Default)]
struct Filled {
    entries: HashMap<u64, Group>,
    newest: u64,
    /// Groups made while tracing, judged by the path the kernel kept: a
    /// group gone before a walk saw it stays judged for the sockets its
    /// processes left behind.
    made: HashMap<u64, Option<Group>>,
}

impl Filled {
    /// Walks, and brings the table to what the walk found. Groups no larger
    /// than the previous walk's newest existed before this walk began, so
    /// this walk saw them all: the program may judge those by the table.
    fn apply(
        &mut self,
        table: &mut GroupTable,
        mount: &Path,
        maps: &GroupMaps,
        before: u64,
    ) -> Result<()> {
        let (mut entries, newest) = table.walk(mount);
        self.judge_made(table, maps);
        for (id, group) in &self.made {
            if let Some(group) = group {
                entries.entry(*id).or_insert(*group);
            }
        }
        for (id, group) in &entries {
            if self.entries.get(id) != Some(group) {
                maps.groups
                    .update(&id.to_ne_bytes(), &group.bytes(), MapFlags::ANY)
                    .with_context(|| {
                        format!("adding cgroup {id} to the group table (at most {MAX_GROUPS})")
                    })?;
            }
        }
        for id in self.entries.keys().filter(|id| !entries.contains_key(id)) {
            let _ = maps.groups.delete(&id.to_ne_bytes());
        }
        maps.known
            .update(&0u32.to_ne_bytes(), &before.to_ne_bytes(), MapFlags::ANY)
            .context("updating the group table's bound")?;
        self.entries = entries;
        self.newest = newest;
        Ok(())
    }
}

impl Filled {
    /// Judges groups just made, by the paths the kernel kept, into the
    /// table at once.
    fn judge_now(&mut self, table: &mut GroupTable, maps: &GroupMaps, ids: &[u64]) -> Result<()> {
        for &id in ids {
            let judged = made_path(&maps.paths, id).and_then(|path| table.judge(&path));
            if table.rules.is_none() {
                // Names only: nothing to keep.
                continue;
            }
            self.made.insert(id, judged);
            if let Some(group) = judged {
                maps.groups
                    .update(&id.to_ne_bytes(), &group.bytes(), MapFlags::ANY)
                    .with_context(|| format!("adding cgroup {id} to the group table"))?;
                self.entries.insert(id, group);
            }
        }
        Ok(())
    }

    /// Judges the groups made since the last look, by their paths.
    fn judge_made(&mut self, table: &mut GroupTable, maps: &GroupMaps) {
        let ids: Vec<u64> = maps
            .paths
            .keys()
            .filter_map(|key| Some(u64::from_ne_bytes(key.get(..8)?.try_into().ok()?)))
            .collect();
        self.made.retain(|id, _| ids.contains(id));
        for id in ids {
            if self.made.contains_key(&id) {
                continue;
            }
            let judged = made_path(&maps.paths, id).and_then(|path| table.judge(&path));
            self.made.insert(id, judged);
        }
    }
}

/// The path the kernel kept for group `id`, made while tracing.
pub fn made_path(paths: &MapHandle, id: u64) -> Option<String> {
    let value = paths.lookup(&id.to_ne_bytes(), MapFlags::ANY).ok()??;
    let end = value.iter().position(|&b| b == 0)?;
    let path = std::str::from_utf8(&value[..end]).ok()?;
    path.starts_with('/').then(|| path.to_string())
}

/// Judges groups as the kernel says they are made (within microseconds:
/// before a process in them can open a socket), walks the hierarchy when
/// the program met a group it could not judge, and every WALK_EVERY.
fn keep(
    mut table: GroupTable,
    mount: PathBuf,
    maps: GroupMaps,
    mut filled: Filled,
    stop: &AtomicBool,
) {
    let made = Rc::new(RefCell::new(Vec::new()));
    let sink = Rc::clone(&made);
    let mut builder = RingBufferBuilder::new();
    let ring = builder
        .add(&maps.events, move |data: &[u8]| {
            if let Some(id) = data.get(..8).and_then(|b| b.try_into().ok()) {
                sink.borrow_mut().push(u64::from_ne_bytes(id));
            }
            0
        })
        .map(|_| ())
        .and_then(|()| builder.build());
    if let Err(err) = &ring {
        eprintln!("tcpstates: new groups are found by walking only: {err}");
    }
    let mut asked = new_groups(&maps);
    let mut walked = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match &ring {
            Ok(ring) => {
                let _ = ring.poll(LOOK_EVERY);
            }
            Err(_) => std::thread::sleep(LOOK_EVERY),
        }
        let ids: Vec<u64> = made.borrow_mut().drain(..).collect();
        if let Err(err) = filled.judge_now(&mut table, &maps, &ids) {
            eprintln!("tcpstates: {err:#}");
        }
        let now_asked = new_groups(&maps);
        if table.rules.is_none() || (now_asked == asked && walked.elapsed() < WALK_EVERY) {
            continue;
        }
        asked = now_asked;
        walked = Instant::now();
        let before = filled.newest;
        if let Err(err) = filled.apply(&mut table, &mount, &maps, before) {
            eprintln!("tcpstates: {err:#}");
        }
    }
}

/// COUNTER_NEW_GROUPS, summed over the CPUs.
fn new_groups(maps: &GroupMaps) -> u64 {
    maps.counters
        .lookup_percpu(&maps.new_groups.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .map_or(0, |per_cpu| {
            per_cpu
                .iter()
                .filter_map(|v| v.get(..8)?.try_into().ok())
                .map(u64::from_ne_bytes)
                .sum()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Filter;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    const ID: &str = "8450f1dc0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5";

    fn nowhere() -> SharedNames {
        Arc::new(Mutex::new(crate::identity::names::Names::new(
            "/nonexistent",
        )))
    }

    fn rules(filter: Filter, labels: Option<Labels>) -> GroupRules {
        let config = Config {
            filter,
            labels,
            ..Config::default()
        };
        GroupRules::of(&config).unwrap()
    }

    #[test]
    fn filters_keep_their_groups_and_below() {
        let podman = format!("/machine.slice/libpod-{ID}.scope");
        let inner = format!("{podman}/container");
        let nginx = "/system.slice/nginx.service";
        let keeps = |r: &GroupRules, path: &str| r.keeps(path, &Identity::parse(path));
        let cgroup = rules(
            Filter {
                cgroup: Some("/system.slice".into()),
                ..Filter::default()
            },
            None,
        );
        assert!(keeps(&cgroup, nginx) && keeps(&cgroup, "/system.slice"));
        assert!(!keeps(&cgroup, "/system.slices") && !keeps(&cgroup, &podman));
        let unit = rules(
            Filter {
                unit: Some("nginx.service".into()),
                ..Filter::default()
            },
            None,
        );
        assert!(keeps(&unit, nginx) && keeps(&unit, &format!("{nginx}/worker")));
        assert!(!keeps(&unit, "/system.slice/nginx.service2") && !keeps(&unit, &podman));
        let container = rules(
            Filter {
                container: Some("8450f1dc".into()),
                ..Filter::default()
            },
            None,
        );
        assert!(keeps(&container, &podman) && keeps(&container, &inner));
        assert!(!keeps(&container, nginx));
        // Both: each must hold.
        let both = rules(
            Filter {
                unit: Some("nginx.service".into()),
                cgroup: Some("/machine.slice".into()),
                ..Filter::default()
            },
            None,
        );
        assert!(!keeps(&both, nginx) && !keeps(&both, &podman));
        assert!(GroupRules::of(&Config::default()).is_none());
    }

    #[test]
    fn labels_are_bounded_and_kept() {
        let labels = Some(Labels {
            by: LabelBy::Unit,
            max: 2,
        });
        let mut table = GroupTable::new(Some(rules(Filter::default(), labels)), nowhere());
        let judge = |t: &mut GroupTable, path: &str| t.judge(path);
        assert_eq!(judge(&mut table, "/"), None, "no unit: not in the table");
        let a = judge(&mut table, "/system.slice/a.service").unwrap();
        let b = judge(&mut table, "/system.slice/b.service").unwrap();
        let c = judge(&mut table, "/system.slice/c.service").unwrap();
        assert_eq!(
            (a.label, b.label, c.label),
            (LABEL_FIRST, LABEL_FIRST + 1, LABEL_OTHER)
        );
        assert!(!a.in_groups);
        // The same unit again (restarted, or a group below it): its slot.
        assert_eq!(
            judge(&mut table, "/system.slice/a.service/x")
                .unwrap()
                .label,
            LABEL_FIRST
        );
        let user = judge(
            &mut table,
            "/user.slice/user-1000.slice/user@1000.service/app.slice/d.service",
        );
        assert_eq!(user.unwrap().label, LABEL_OTHER);
        assert_eq!(*table.labels().lock().unwrap(), ["a.service", "b.service"]);
        let by_container = Some(Labels {
            by: LabelBy::Container,
            max: 5,
        });
        let mut table = GroupTable::new(Some(rules(Filter::default(), by_container)), nowhere());
        assert_eq!(judge(&mut table, "/system.slice/a.service"), None);
        let podman = judge(&mut table, &format!("/libpod_parent/libpod-{ID}")).unwrap();
        assert_eq!(podman.label, LABEL_FIRST);
        assert_eq!(*table.labels().lock().unwrap(), ["podman:8450f1dc0a1b"]);
    }

    #[test]
    fn a_walk_judges_every_group_and_finds_the_newest() {
        let root = std::env::temp_dir().join(format!("tcpstates-groups-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("system.slice/nginx.service/worker")).unwrap();
        fs::create_dir_all(root.join("system.slice/cron.service")).unwrap();
        let ino = |p: &str| fs::metadata(root.join(p)).unwrap().ino();
        let unit = rules(
            Filter {
                unit: Some("nginx.service".into()),
                ..Filter::default()
            },
            None,
        );
        let mut table = GroupTable::new(Some(unit), nowhere());
        let (entries, newest) = table.walk(&root);
        let kept = Group {
            in_groups: true,
            label: LABEL_NONE,
        };
        let want: HashMap<u64, Group> = [
            (ino("system.slice/nginx.service"), kept),
            (ino("system.slice/nginx.service/worker"), kept),
        ]
        .into();
        assert_eq!(entries, want);
        let all = [
            "",
            "system.slice",
            "system.slice/nginx.service",
            "system.slice/nginx.service/worker",
            "system.slice/cron.service",
        ];
        assert_eq!(newest, all.iter().map(|p| ino(p)).max().unwrap());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_entry_is_the_kernels_struct_group() {
        use crate::bpf::types::group;
        assert_eq!(std::mem::size_of::<group>(), 4);
        let bytes = Group {
            in_groups: true,
            label: 0x1234,
        }
        .bytes();
        assert_eq!(bytes[std::mem::offset_of!(group, in_groups)], 1);
        let at = std::mem::offset_of!(group, label);
        assert_eq!(u16::from_ne_bytes([bytes[at], bytes[at + 1]]), 0x1234);
    }
}

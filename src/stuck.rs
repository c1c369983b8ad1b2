//! Stuck sockets (`--stuck`): sockets that have sat in one state longer
//! than a threshold, found by walking the sockets again every few seconds
//! (the socket iterator of `src/bpf/snapshot.bpf.h`), with their owner,
//! addresses and age: exact when their entry into the state was seen, a
//! lower bound (the trace's age) when they have been in it since before
//! the trace.
//!
//! Where the kernel keeps the sockets' times (summary mode, filters) the
//! walk reports only the stuck ones, with their times and owners from its
//! store; where the reader keeps them, it reports every socket in a
//! watched state and the reader judges each from its own tables.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::event::{Event, Owner, TcpState};
use crate::output::json;
use crate::snapshot::Found;

/// When a socket entered the state it is in, as far as anybody knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// At this monotonic time.
    At(u64),
    /// Before the trace began.
    BeforeTrace,
    /// Not known (a lost event, a full table): never called stuck.
    Unknown,
}

/// One stuck socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckSocket {
    /// The socket as walked.
    pub found: Found,
    /// Its owner, when known.
    pub owner: Option<Owner>,
    /// Its time in the state, as of the walk ...
    pub age_ns: u64,
    /// ... which is a lower bound (it has been there since before the
    /// trace).
    pub at_least: bool,
}

impl StuckSocket {
    /// `found` if it has been in its state for `threshold_ns` or more, as
    /// `since` says; `began_ns` is when the trace began.
    pub fn judge(
        found: Found,
        since: Since,
        owner: Option<Owner>,
        began_ns: u64,
        threshold_ns: u64,
    ) -> Option<StuckSocket> {
        let (age_ns, at_least) = match since {
            Since::At(at) => (found.ts_ns.saturating_sub(at), false),
            Since::BeforeTrace => (found.ts_ns.saturating_sub(began_ns), true),
            Since::Unknown => return None,
        };
        (age_ns >= threshold_ns).then_some(StuckSocket {
            found,
            owner,
            age_ns,
            at_least,
        })
    }

    /// [`StuckSocket::judge`] where the kernel keeps the times: by what
    /// the walk read from its store, with the owner kept there.
    pub fn judge_in_kernel(found: Found, began_ns: u64, threshold_ns: u64) -> Option<StuckSocket> {
        let since = match (found.since_ns, found.before_trace) {
            (Some(at), _) => Since::At(at),
            (None, true) => Since::BeforeTrace,
            (None, false) => Since::Unknown,
        };
        let owner = found.holder;
        Self::judge(found, since, owner, began_ns, threshold_ns)
    }

    /// The report as an event for the stream outputs: `old` and `new` its
    /// state, its age the duration (or the lower bound), the owner the
    /// task shown.
    pub fn as_event(&self) -> Event {
        let f = &self.found;
        let owner = self.owner;
        Event {
            skaddr: f.skaddr,
            ts_ns: f.ts_ns,
            duration_ns: (!self.at_least).then_some(self.age_ns),
            at_least_ns: self.at_least.then_some(self.age_ns),
            before_trace: self.at_least,
            pid: owner.map_or(0, |o| o.pid),
            comm: owner.map_or([0; 16], |o| o.comm),
            netns: f.netns,
            laddr: f.laddr,
            lport: f.lport,
            raddr: f.raddr,
            rport: f.rport,
            old: f.state,
            new: f.state,
            map_full: false,
            uid: owner.map_or(0, |o| o.uid),
            cgroup_id: owner.map_or(0, |o| o.cgroup_id),
            owner,
            cgroup: None,
            identity: None,
            accepted: false,
            owner_undecided: false,
            stuck: true,
        }
    }
}

/// Which stuck sockets were reported, so that each is reported once per
/// stay in a state: when it crosses the line.
#[derive(Debug, Default)]
pub struct Crossings {
    /// By socket: the state and the entry (time, or 0 for before the
    /// trace) reported.
    reported: HashMap<u64, (TcpState, u64)>,
}

impl Crossings {
    /// The sockets of `now` (every stuck socket of one walk) not reported
    /// for this stay yet; forgets the ones no longer stuck.
    pub fn crossed(&mut self, now: Vec<StuckSocket>) -> Vec<StuckSocket> {
        let key = |s: &StuckSocket| {
            let entered = s.found.ts_ns.saturating_sub(s.age_ns);
            (s.found.state, if s.at_least { 0 } else { entered })
        };
        let mut next = HashMap::with_capacity(now.len());
        let mut new = Vec::new();
        for stuck in now {
            let k = key(&stuck);
            if self.reported.get(&stuck.found.skaddr) != Some(&k) {
                new.push(stuck.clone());
            }
            next.insert(stuck.found.skaddr, k);
        }
        self.reported = next;
        new
    }
}

/// Stuck sockets per state, and, when asked, per owner name: the `most`
/// names with the most stuck sockets, the rest `other`, none `unknown`.
pub fn by_state_and_owner(
    stuck: &[StuckSocket],
    most: u16,
) -> Vec<(TcpState, Option<String>, u64)> {
    let name = |s: &StuckSocket| s.owner.map(|o| o.comm().into_owned());
    let mut named: HashMap<String, u64> = HashMap::new();
    for s in stuck {
        if let Some(n) = name(s) {
            *named.entry(n).or_default() += 1;
        }
    }
    let mut ranked: Vec<(String, u64)> = named.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let kept: HashSet<String> = ranked
        .into_iter()
        .take(usize::from(most))
        .map(|(n, _)| n)
        .collect();
    let mut counts: HashMap<(TcpState, Option<String>), u64> = HashMap::new();
    for s in stuck {
        let owner = (most > 0).then(|| match name(s) {
            Some(n) if kept.contains(&n) => n,
            Some(_) => "other".to_owned(),
            None => "unknown".to_owned(),
        });
        *counts.entry((s.found.state, owner)).or_default() += 1;
    }
    let mut out: Vec<_> = counts.into_iter().map(|((s, o), n)| (s, o, n)).collect();
    out.sort_by(|a, b| (a.0.number(), &a.1).cmp(&(b.0.number(), &b.1)));
    out
}

/// The summary's list: a heading, then a line per socket, oldest first.
pub fn write_text(stuck: &[StuckSocket], after_s: u64, out: &mut String) {
    let _ = writeln!(
        out,
        "Stuck sockets (over {after_s} s in one state): {}",
        stuck.len()
    );
    for s in sorted(stuck) {
        let f = &s.found;
        let owner = match s.owner {
            Some(o) => format!("{} {}", o.pid, o.comm()),
            None => "- -".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {:<11} {} -> {}  {owner}  {}{:.3} s",
            f.state.to_string(),
            SocketAddr::new(f.laddr, f.lport),
            SocketAddr::new(f.raddr, f.rport),
            if s.at_least { ">" } else { "" },
            s.age_ns as f64 / 1e9
        );
    }
}

/// The summary's JSON list: `"stuck":[{...},...]`, oldest first.
pub fn write_json(stuck: &[StuckSocket], out: &mut String) {
    out.push_str("\"stuck\":[");
    for (i, s) in sorted(stuck).into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let f = &s.found;
        let _ = write!(out, "{{\"skaddr\":\"{:x}\",\"state\":", f.skaddr);
        json::push_json_str(out, &f.state.to_string());
        let _ = write!(
            out,
            ",\"laddr\":\"{}\",\"lport\":{},\"raddr\":\"{}\",\"rport\":{},\"netns\":{},",
            f.laddr, f.lport, f.raddr, f.rport, f.netns
        );
        match s.owner {
            Some(o) => {
                let _ = write!(out, "\"pid\":{},\"comm\":", o.pid);
                json::push_json_str(out, &o.comm());
                let _ = write!(out, ",\"uid\":{},", o.uid);
            }
            None => out.push_str("\"pid\":null,\"comm\":null,\"uid\":null,"),
        }
        let _ = write!(out, "\"seconds\":{:.3}", s.age_ns as f64 / 1e9);
        if s.at_least {
            out.push_str(",\"seconds_at_least\":true");
        }
        out.push('}');
    }
    out.push(']');
}

fn sorted(stuck: &[StuckSocket]) -> Vec<&StuckSocket> {
    let mut all: Vec<&StuckSocket> = stuck.iter().collect();
    all.sort_by(|a, b| {
        b.age_ns
            .cmp(&a.age_ns)
            .then(a.found.skaddr.cmp(&b.found.skaddr))
    });
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(skaddr: u64, state: TcpState, ts_ns: u64) -> Found {
        Found {
            skaddr,
            ts_ns,
            state,
            netns: 1,
            lport: 7071,
            rport: 50000,
            laddr: "127.0.0.1".parse().unwrap(),
            raddr: "127.0.0.1".parse().unwrap(),
            holder: None,
            seeded: false,
            since_ns: None,
            before_trace: false,
            inode: 0,
        }
    }

    fn owner(name: &str) -> Owner {
        let mut comm = [0u8; 16];
        comm[..name.len()].copy_from_slice(name.as_bytes());
        Owner {
            pid: 42,
            uid: 0,
            cgroup_id: 1,
            comm,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn judged_by_its_time_or_the_traces_age() {
        let f = found(1, TcpState::CloseWait, 100 * S);
        let exact = StuckSocket::judge(f, Since::At(30 * S), None, 10 * S, 60 * S).unwrap();
        assert_eq!((exact.age_ns, exact.at_least), (70 * S, false));
        assert!(StuckSocket::judge(f, Since::At(50 * S), None, 10 * S, 60 * S).is_none());
        let older = StuckSocket::judge(f, Since::BeforeTrace, None, 10 * S, 60 * S).unwrap();
        assert_eq!((older.age_ns, older.at_least), (90 * S, true));
        assert!(StuckSocket::judge(f, Since::Unknown, None, 10 * S, 0).is_none());
        let ev = older.as_event();
        assert!(ev.stuck && ev.old == TcpState::CloseWait && ev.new == TcpState::CloseWait);
        assert_eq!((ev.duration_ns, ev.at_least_ns), (None, Some(90 * S)));
    }

    #[test]
    fn each_stay_is_reported_once() {
        let stuck = |skaddr, ts| {
            StuckSocket::judge(
                found(skaddr, TcpState::FinWait2, ts),
                Since::At(S),
                None,
                0,
                0,
            )
            .unwrap()
        };
        let mut crossings = Crossings::default();
        assert_eq!(crossings.crossed(vec![stuck(1, 10 * S)]).len(), 1);
        // The same stay, walked again: nothing new; another socket: new.
        let again = crossings.crossed(vec![stuck(1, 12 * S), stuck(2, 12 * S)]);
        assert_eq!(
            again.iter().map(|s| s.found.skaddr).collect::<Vec<_>>(),
            [2]
        );
        // Gone from one walk, back in the next: a new stay.
        assert!(crossings.crossed(vec![stuck(2, 13 * S)]).is_empty());
        assert_eq!(
            crossings
                .crossed(vec![stuck(1, 14 * S), stuck(2, 14 * S)])
                .len(),
            1
        );
    }

    #[test]
    fn counted_by_state_and_bounded_owner_names() {
        let with = |skaddr, state, name: Option<&str>| StuckSocket {
            found: found(skaddr, state, 0),
            owner: name.map(owner),
            age_ns: 0,
            at_least: false,
        };
        let all = [
            with(1, TcpState::CloseWait, Some("java")),
            with(2, TcpState::CloseWait, Some("java")),
            with(3, TcpState::CloseWait, Some("nginx")),
            with(4, TcpState::FinWait2, None),
        ];
        assert_eq!(
            by_state_and_owner(&all, 0),
            [
                (TcpState::FinWait2, None, 1),
                (TcpState::CloseWait, None, 3)
            ]
        );
        let named = |s: &str| Some(s.to_owned());
        assert_eq!(
            by_state_and_owner(&all, 1),
            [
                (TcpState::FinWait2, named("unknown"), 1),
                (TcpState::CloseWait, named("java"), 2),
                (TcpState::CloseWait, named("other"), 1),
            ]
        );
        let mut text = String::new();
        write_text(&all[..1], 60, &mut text);
        assert_eq!(
            text,
            "Stuck sockets (over 60 s in one state): 1\n  CLOSE_WAIT  127.0.0.1:7071 -> 127.0.0.1:50000  42 java  0.000 s\n"
        );
        let mut json = String::new();
        write_json(&all[3..], &mut json);
        assert_eq!(
            json,
            "\"stuck\":[{\"skaddr\":\"4\",\"state\":\"FIN_WAIT2\",\"laddr\":\"127.0.0.1\",\"lport\":7071,\
             \"raddr\":\"127.0.0.1\",\"rport\":50000,\"netns\":1,\"pid\":null,\"comm\":null,\"uid\":null,\
             \"seconds\":0.000}]"
        );
    }
}

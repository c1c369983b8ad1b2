//! JSON lines (`-j`): one object per transition, with stable names and
//! real types, for log pipelines (Vector, Fluent Bit, Loki, jq).
//!
//! Pure, like the table: appends to a byte buffer, allocating nothing per
//! event (a task name that is not valid UTF-8 aside). The fields, in this
//! order, are documented in the README; a value that is not known is
//! `null`, never a stand-in (the owner, until the socket's process is
//! seen in process context; the cgroup, where there is no cgroup v2).

use super::LineFormat;
use super::number::{push_hex, push_ip, push_micros, push_two_digits, push_u64};
use crate::clock::{EventClock, Utc};
use crate::close::{Close, Detail};
use crate::event::{Event, Owner};
use crate::identity::Identity;
use std::net::IpAddr;

/// Formats events as JSON lines.
#[derive(Debug, Clone, Default)]
pub struct JsonFormat;

impl LineFormat for JsonFormat {
    /// JSON lines have no header.
    fn header(&mut self, _out: &mut Vec<u8>) {}

    fn record(&mut self, out: &mut Vec<u8>, ev: &Event, clock: &mut EventClock) {
        write_event(out, ev, Utc::at_unix_ns(clock.unix_ns(ev.ts_ns)));
    }
}

impl LineFormat<Close> for JsonFormat {
    fn header(&mut self, _out: &mut Vec<u8>) {}

    fn record(&mut self, out: &mut Vec<u8>, c: &Close, clock: &mut EventClock) {
        write_close(out, c, Utc::at_unix_ns(clock.unix_ns(c.ts_ns)));
    }
}

/// Appends the close record `c` as one JSON object and a newline: the
/// owner, addresses, role, cause, lifetime, every state with its time and
/// the counters; a counter the kernel lacks is left out, never zero.
pub fn write_close(out: &mut Vec<u8>, c: &Close, time: Utc) {
    push_head(
        out,
        time,
        c.skaddr,
        (c.pid, c.comm_bytes()),
        c.owner.as_ref(),
        (c.laddr, c.lport, c.raddr, c.rport),
    );
    out.extend_from_slice(b",\"role\":");
    push_json_string(out, c.role.name().as_bytes());
    out.extend_from_slice(b",\"cause\":");
    push_json_string(out, c.cause.name().as_bytes());
    out.extend_from_slice(b",\"detail\":");
    push_json_option(out, (c.detail != Detail::None).then(|| c.detail.name()));
    out.extend_from_slice(b",\"error\":");
    push_json_option(out, c.error_name().as_deref());
    out.extend_from_slice(b",\"lifetime_ms\":");
    match c.lifetime_ns {
        Some(ns) => push_micros(out, ns, 3),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"states\":[");
    for (i, step) in c.steps().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"state\":");
        step.state.text().write_json(out);
        out.extend_from_slice(b",\"ms\":");
        match (step.spent_ns, step.at_least_ns) {
            (Some(ns), _) => push_micros(out, ns, 3),
            (None, Some(ns)) => {
                push_micros(out, ns, 3);
                out.extend_from_slice(b",\"ms_at_least\":true");
            }
            (None, None) => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"states_left_out\":");
    push_u64(out, c.steps_left_out.into());
    for (name, value) in c.counters.named() {
        if let Some(value) = value {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            push_u64(out, value);
        }
    }
    out.extend_from_slice(b",\"netns\":");
    push_u64(out, c.netns.into());
    out.extend_from_slice(b",\"cgroup\":");
    push_json_option(out, c.cgroup.as_deref());
    push_identity(out, c.identity.as_deref());
    out.extend_from_slice(b"}\n");
}

/// What a transition's and a close record's objects start with: `{`, the
/// time, the socket's address, the task on the CPU (pid, name), the owner,
/// the family, the addresses and ports.
fn push_head(
    out: &mut Vec<u8>,
    time: Utc,
    skaddr: u64,
    (pid, comm): (u32, &[u8]),
    owner: Option<&Owner>,
    (laddr, lport, raddr, rport): (IpAddr, u16, IpAddr, u16),
) {
    out.extend_from_slice(b"{\"time\":\"");
    push_iso8601(out, time);
    out.extend_from_slice(b"\",\"skaddr\":\"");
    push_hex(out, skaddr);
    out.extend_from_slice(b"\",\"pid\":");
    push_u64(out, pid.into());
    out.extend_from_slice(b",\"comm\":");
    push_json_string(out, comm);
    push_owner(out, owner);
    out.extend_from_slice(b",\"family\":");
    out.push(if laddr.is_ipv4() { b'4' } else { b'6' });
    out.extend_from_slice(b",\"laddr\":\"");
    push_ip(out, laddr);
    out.extend_from_slice(b"\",\"lport\":");
    push_u64(out, lport.into());
    out.extend_from_slice(b",\"raddr\":\"");
    push_ip(out, raddr);
    out.extend_from_slice(b"\",\"rport\":");
    push_u64(out, rport.into());
}

/// The owner's pid, name and uid, `null` each when not known.
fn push_owner(out: &mut Vec<u8>, owner: Option<&Owner>) {
    match owner {
        Some(owner) => {
            out.extend_from_slice(b",\"owner_pid\":");
            push_u64(out, owner.pid.into());
            out.extend_from_slice(b",\"owner_comm\":");
            push_json_string(out, owner.comm_bytes());
            out.extend_from_slice(b",\"owner_uid\":");
            push_u64(out, owner.uid.into());
        }
        None => {
            out.extend_from_slice(b",\"owner_pid\":null,\"owner_comm\":null,\"owner_uid\":null")
        }
    }
}

/// Appends `ev` as one JSON object and a newline; `time` is the kernel's
/// event time as UTC.
pub fn write_event(out: &mut Vec<u8>, ev: &Event, time: Utc) {
    push_head(
        out,
        time,
        ev.skaddr,
        (ev.pid, ev.comm_bytes()),
        ev.owner.as_ref(),
        (ev.laddr, ev.lport, ev.raddr, ev.rport),
    );
    out.extend_from_slice(b",\"oldstate\":");
    ev.old.text().write_json(out);
    out.extend_from_slice(b",\"newstate\":");
    ev.new.text().write_json(out);
    // Not a transition: the socket has been in its state too long.
    if ev.stuck {
        out.extend_from_slice(b",\"stuck\":true");
    }
    out.extend_from_slice(b",\"ms\":");
    match (ev.duration_ns, ev.at_least_ns) {
        (Some(ns), _) => push_micros(out, ns, 3),
        // In the state since before the trace: at least this long.
        (None, Some(ns)) => {
            push_micros(out, ns, 3);
            out.extend_from_slice(b",\"ms_at_least\":true");
        }
        (None, None) => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"netns\":");
    push_u64(out, ev.netns.into());
    out.extend_from_slice(b",\"cgroup\":");
    match &ev.cgroup {
        Some(path) => push_json_string(out, path.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    push_identity(out, ev.identity.as_deref());
    out.extend_from_slice(b"}\n");
}

/// The owner's unit, user unit, container and pod: `null` each when not
/// known, objects for the container and the pod with `null` for a name not
/// known.
fn push_identity(out: &mut Vec<u8>, id: Option<&Identity>) {
    out.extend_from_slice(b",\"unit\":");
    push_json_option(out, id.and_then(|id| id.unit.as_deref()));
    out.extend_from_slice(b",\"user_unit\":");
    push_json_option(
        out,
        id.and_then(|id| Some(id.user_unit.as_ref()?.1.as_str())),
    );
    out.extend_from_slice(b",\"container\":");
    match id.and_then(|id| id.container.as_ref()) {
        Some(c) => {
            out.extend_from_slice(b"{\"runtime\":");
            push_json_string(out, c.runtime.name().as_bytes());
            out.extend_from_slice(b",\"id\":");
            push_json_string(out, c.id.as_bytes());
            out.extend_from_slice(b",\"name\":");
            push_json_option(out, c.name.as_deref());
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"pod\":");
    match id.and_then(|id| id.pod.as_ref()) {
        Some(p) => {
            out.extend_from_slice(b"{\"uid\":");
            push_json_string(out, p.uid.as_bytes());
            out.extend_from_slice(b",\"namespace\":");
            push_json_option(out, p.namespace.as_deref());
            out.extend_from_slice(b",\"name\":");
            push_json_option(out, p.name.as_deref());
            out.extend_from_slice(b",\"container\":");
            push_json_option(out, p.container.as_deref());
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn push_json_option(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => push_json_string(out, text.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// `2026-11-29T23:59:58.123456Z`.
pub fn push_iso8601(out: &mut Vec<u8>, t: Utc) {
    if (0..=9999).contains(&t.year) {
        push_two_digits(out, (t.year / 100) as u8);
        push_two_digits(out, (t.year % 100) as u8);
    } else {
        // Outside ISO 8601's four digits: still a number, never garbage.
        push_u64(out, t.year.unsigned_abs());
    }
    out.push(b'-');
    push_two_digits(out, t.month);
    out.push(b'-');
    push_two_digits(out, t.day);
    out.push(b'T');
    push_two_digits(out, t.hour);
    out.push(b':');
    push_two_digits(out, t.minute);
    out.push(b':');
    push_two_digits(out, t.second);
    out.push(b'.');
    let mut div = 100_000;
    while div > 0 {
        out.push(b'0' + (t.micros / div % 10) as u8);
        div /= 10;
    }
    out.push(b'Z');
}

/// A JSON string of `bytes` (RFC 8259): quotes, backslashes and control
/// characters escaped; bytes that are not UTF-8 replaced with U+FFFD, as a
/// JSON text must be UTF-8.
pub fn push_json_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    match std::str::from_utf8(bytes) {
        Ok(text) => push_escaped(out, text),
        Err(_) => push_escaped(out, &String::from_utf8_lossy(bytes)),
    }
    out.push(b'"');
}

/// [`push_json_string`] into text being built.
pub fn push_json_str(out: &mut String, text: &str) {
    let mut bytes = Vec::with_capacity(text.len() + 2);
    push_json_string(&mut bytes, text.as_bytes());
    out.push_str(&String::from_utf8_lossy(&bytes));
}

fn push_escaped(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in text.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            // UTF-8 passes through as it is: the text is valid UTF-8.
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::raw_v4;
    use crate::state::TcpState;

    const T: Utc = Utc {
        year: 2026,
        month: 11,
        day: 29,
        hour: 9,
        minute: 5,
        second: 7,
        micros: 42,
    };

    fn line(ev: &Event) -> String {
        let mut out = Vec::new();
        write_event(&mut out, ev, T);
        String::from_utf8(out).unwrap()
    }

    fn v4() -> Event {
        let mut ev = Event::from_raw(&raw_v4()).unwrap();
        ev.netns = 4026531840;
        ev
    }

    #[test]
    fn one_object_per_line_with_every_field() {
        assert_eq!(
            line(&v4()),
            "{\"time\":\"2026-11-29T09:05:07.000042Z\",\"skaddr\":\"ffff8881043b9280\",\
             \"pid\":9376,\"comm\":\"python3\",\"owner_pid\":null,\"owner_comm\":null,\
             \"owner_uid\":null,\"family\":4,\"laddr\":\"127.0.0.1\",\"lport\":48792,\
             \"raddr\":\"10.1.2.3\",\"rport\":80,\"oldstate\":\"SYN_SENT\",\
             \"newstate\":\"ESTABLISHED\",\"ms\":0.271,\"netns\":4026531840,\"cgroup\":null,\
             \"unit\":null,\"user_unit\":null,\"container\":null,\"pod\":null}\n"
        );
    }

    #[test]
    fn a_known_owner_and_cgroup() {
        let mut ev = v4();
        let mut comm = [0; 16];
        comm[..5].copy_from_slice(b"nginx");
        ev.owner = Some(crate::event::Owner {
            pid: 77,
            uid: 33,
            cgroup_id: 9,
            comm,
        });
        ev.cgroup = Some("/system.slice/nginx \"x\".service".into());
        let text = line(&ev);
        assert!(
            text.contains("\"owner_pid\":77,\"owner_comm\":\"nginx\",\"owner_uid\":33,"),
            "{text}"
        );
        assert!(
            text.contains(",\"cgroup\":\"/system.slice/nginx \\\"x\\\".service\","),
            "{text}"
        );
    }

    #[test]
    fn the_unit_container_and_pod() {
        let id = "8450f1dc0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5";
        let mut ev = v4();
        let mut identity = Identity::parse(&format!(
            "/kubepods/pod1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d/crio-{id}"
        ));
        identity.pod.as_mut().unwrap().name = Some("cart-0".into());
        ev.identity = Some(identity.into());
        assert!(line(&ev).ends_with(&format!(
            ",\"unit\":null,\"user_unit\":null,\
             \"container\":{{\"runtime\":\"crio\",\"id\":\"{id}\",\"name\":null}},\
             \"pod\":{{\"uid\":\"1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d\",\"namespace\":null,\
             \"name\":\"cart-0\",\"container\":null}}}}\n"
        )));
        ev.identity = Some(
            Identity::parse("/user.slice/user-1000.slice/user@1000.service/app.slice/a.service")
                .into(),
        );
        assert!(line(&ev).ends_with(
            ",\"unit\":\"user@1000.service\",\"user_unit\":\"a.service\",\"container\":null,\"pod\":null}\n"
        ));
    }

    #[test]
    fn a_lower_bound_is_marked() {
        let mut ev = v4();
        ev.duration_ns = None;
        ev.at_least_ns = Some(12_034_521_400);
        assert!(
            line(&ev).contains(",\"ms\":12034.521,\"ms_at_least\":true,\"netns\":"),
            "{}",
            line(&ev)
        );
        assert!(!line(&v4()).contains("ms_at_least"));
    }

    #[test]
    fn unknowns_are_null_and_numbers() {
        let mut ev = v4();
        ev.duration_ns = None;
        ev.old = TcpState::Unknown(42);
        ev.new = TcpState::Unknown(-1);
        ev.laddr = "2001:db8::1".parse().unwrap();
        ev.raddr = "::ffff:10.1.2.3".parse().unwrap();
        let text = line(&ev);
        assert!(text.contains(",\"ms\":null,"), "{text}");
        assert!(text.contains(",\"oldstate\":42,\"newstate\":-1,"), "{text}");
        assert!(
            text.contains(",\"family\":6,\"laddr\":\"2001:db8::1\","),
            "{text}"
        );
        assert!(text.contains(",\"raddr\":\"::ffff:10.1.2.3\","), "{text}");
    }

    #[test]
    fn hostile_task_names_stay_one_valid_string() {
        let mut ev = v4();
        ev.comm = [0; 16];
        let name = b"a\"b\\c\nd\x01\x7f\xffe\xc3\xb1";
        ev.comm[..name.len()].copy_from_slice(name);
        let text = line(&ev);
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(
            text.contains("\"comm\":\"a\\\"b\\\\c\\nd\\u0001\\u007f\u{fffd}e\u{f1}\""),
            "{text}"
        );
    }

    #[test]
    fn iso8601_times() {
        let text = |t: Utc| {
            let mut out = Vec::new();
            push_iso8601(&mut out, t);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(T), "2026-11-29T09:05:07.000042Z");
        assert_eq!(
            text(Utc::at_unix_ns(1_795_996_798_123_456_789)),
            "2026-11-29T23:59:58.123456Z"
        );
        assert_eq!(text(Utc::at_unix_ns(0)), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn a_close_record_is_one_object_without_absent_counters() {
        let mut raw = crate::close::tests::raw_client();
        raw.present &= !crate::bpf::types::close_counters::HAS_SEGS_IN.0;
        let c = crate::close::tests::close_of(&raw);
        let mut out = Vec::new();
        write_close(&mut out, &c, Utc::at_unix_ns(1_700_000_000_123_456_789));
        let expected = concat!(
            r#"{"time":"2023-11-14T22:13:20.123456Z","skaddr":"ffff8881043b9280","pid":0,"#,
            r#""comm":"swapper/1","owner_pid":4711,"owner_comm":"curl","owner_uid":1000,"#,
            r#""family":4,"laddr":"127.0.0.1","lport":41234,"raddr":"127.0.0.2","rport":8080,"#,
            r#""role":"client","cause":"normal","detail":"local-first","error":null,"#,
            r#""lifetime_ms":12.345,"states":[{"state":"CLOSE","ms":null},"#,
            r#"{"state":"SYN_SENT","ms":0.051},{"state":"ESTABLISHED","ms":12.203},"#,
            r#"{"state":"FIN_WAIT1","ms":0.010},{"state":"FIN_WAIT2","ms":0.020}],"#,
            r#""states_left_out":0,"bytes_acked":1000,"bytes_received":1000,"segs_out":7,"#,
            r#""retransmits":1,"srtt_us":35,"rtt_min_us":12,"netns":4026531840,"cgroup":null,"#,
            r#""unit":null,"user_unit":null,"container":null,"pod":null}"#,
            "\n"
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }
}

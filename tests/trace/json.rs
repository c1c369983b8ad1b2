//! JSON lines of real events.

use super::*;

/// JSON lines of real events, in whatever attach mode runs (the kernel
/// matrix runs this in each): one valid object per event, every field what
/// the kernel reported and the traffic was.
#[test]
fn json_lines_of_real_events() {
    let Some(_root) = root() else { return };
    let mut capture = Capture::start(&opts(test_attach(), Filter::default()));
    let clock = tcpstates::clock::EventClock::now();
    for v6 in [false, true] {
        let o = connection(&mut capture, v6, Close::ServerFirst);
        check_common(&o);
        for life in [&o.listener, &o.client, &o.server] {
            for (i, e) in life.events.iter().enumerate() {
                let mut line = Vec::new();
                let utc = tcpstates::clock::Utc::at_unix_ns(clock.unix_ns(e.ts_ns));
                tcpstates::output::json::write_event(&mut line, e, utc);
                let text = String::from_utf8(line).expect("UTF-8");
                assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
                let j: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
                assert_eq!(j["skaddr"], format!("{:x}", e.skaddr));
                assert_eq!(j["pid"], e.pid);
                assert_eq!(j["comm"], e.comm().as_ref());
                assert_eq!(j["family"], if v6 { 6 } else { 4 });
                assert_eq!(j["laddr"], e.laddr.to_string());
                assert_eq!(j["raddr"], e.raddr.to_string());
                assert_eq!(
                    (j["lport"].as_u64(), j["rport"].as_u64()),
                    (Some(e.lport.into()), Some(e.rport.into()))
                );
                assert_eq!(j["oldstate"], e.old.to_string());
                assert_eq!(j["newstate"], e.new.to_string());
                assert_eq!(j["netns"], e.netns);
                match e.duration_ns {
                    None => assert!(j["ms"].is_null() && i == 0, "{text}"),
                    Some(ns) => {
                        let ms = j["ms"].as_f64().expect("a number");
                        assert!((ms - ns as f64 / 1e6).abs() < 0.001, "{text}");
                    }
                }
                assert!(
                    j["time"]
                        .as_str()
                        .is_some_and(|t| t.len() == 27 && t.ends_with('Z'))
                );
            }
        }
    }
}

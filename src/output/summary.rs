//! Summary mode's printer: what the kernel counted since the last print,
//! as text (BCC's log2 histograms and a transition matrix) or one JSON
//! object, to any writer.

use std::io::{self, Write};
use std::time::Instant;

use crate::census::Census;
use crate::clock::{Utc, WallClock};
use crate::config::SummaryOutput;
use crate::stuck::StuckSocket;
use crate::summary::{ByLabel, Summary};

/// What is printed as it is now, not as counted since the last print:
/// the census, and with --stuck the stuck sockets and the threshold in
/// seconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Now<'a> {
    /// The census, when kept.
    pub census: Option<&'a Census>,
    /// The stuck sockets, and --stuck's seconds.
    pub stuck: Option<(&'a [StuckSocket], u64)>,
}

/// Prints what the kernel counted since the last print.
pub struct SummaryPrinter<W: Write> {
    output: SummaryOutput,
    out: W,
    shown: Summary,
    shown_labels: Option<ByLabel>,
    since: Instant,
}

impl<W: Write> SummaryPrinter<W> {
    /// Prints as `output` says, to `out`.
    pub fn new(output: SummaryOutput, out: W) -> Self {
        Self {
            output,
            out,
            shown: Summary::default(),
            shown_labels: None,
            since: Instant::now(),
        }
    }

    /// Prints `now` less what was printed before, and, with --label-by,
    /// each label's share, then the census; an error once standard output
    /// is gone.
    pub fn print(
        &mut self,
        now: &Summary,
        labels: Option<&ByLabel>,
        gauges: &Now<'_>,
    ) -> io::Result<()> {
        let census = gauges.census;
        if !self.output.print {
            return Ok(());
        }
        let delta = now.since(&self.shown);
        let labels_delta = labels.map(|l| l.since(self.shown_labels.as_ref()));
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let mut text = String::new();
        if self.output.json {
            let seconds = self.since.elapsed().as_secs_f64();
            delta.write_json_labelled(
                &mut text,
                Utc::at_unix_ns(unix_ns),
                seconds,
                labels_delta.as_ref(),
                census,
                gauges.stuck.map(|(stuck, _)| stuck),
            );
        } else {
            if self.output.clock {
                let wall = WallClock::at_unix((unix_ns / 1_000_000_000) as i64);
                text.push_str(&format!(
                    "{:02}:{:02}:{:02}\n",
                    wall.hour, wall.minute, wall.second
                ));
            }
            delta.write_text(&mut text);
            text.push('\n');
            if let Some(labels) = labels_delta.filter(|l| !l.values.is_empty()) {
                labels.write_text(&mut text);
                text.push('\n');
            }
            if let Some(census) = census {
                census.write_text(&mut text);
                text.push('\n');
            }
            if let Some((stuck, after_s)) = gauges.stuck {
                crate::stuck::write_text(stuck, after_s, &mut text);
                text.push('\n');
            }
        }
        self.shown = now.clone();
        self.shown_labels = labels.cloned();
        self.since = Instant::now();
        self.out.write_all(text.as_bytes())?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_only_what_came_since_the_last_print() {
        let output = SummaryOutput {
            print: true,
            json: true,
            ..SummaryOutput::default()
        };
        let mut printer = SummaryPrinter::new(output, Vec::new());
        let mut now = Summary::default();
        now.transitions[1][8] = 3;
        printer.print(&now, None, &Now::default()).unwrap();
        now.transitions[1][8] = 5;
        printer.print(&now, None, &Now::default()).unwrap();
        let text = String::from_utf8(printer.out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("\"count\":3"), "{}", lines[0]);
        assert!(lines[1].contains("\"count\":2"), "{}", lines[1]);
    }

    #[test]
    fn prints_nothing_when_not_asked_to() {
        let mut printer = SummaryPrinter::new(SummaryOutput::default(), Vec::new());
        printer
            .print(&Summary::default(), None, &Now::default())
            .unwrap();
        assert!(printer.out.is_empty());
    }
}

//! The TCP states: the one table of the kernel's numbers and names
//! (`include/net/tcp_states.h`), and the one way a state becomes text for
//! every output (the table, CSV, JSON, the journal, the summary, the
//! metrics). A number this tool does not know stays a number: it is never
//! looked up past the table.
//!
//! Self-contained (std only): `build.rs` includes it with the command
//! line's definition, whose `--state` takes these names.

use std::fmt;

/// Defines [`TcpState`] and its conversions from one list.
macro_rules! states {
    ($($variant:ident = $number:literal $name:literal,)*) => {
        /// A TCP state, as numbered in the kernel's `include/net/tcp_states.h`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum TcpState {
            $(
                #[doc = $name]
                $variant,
            )*
            /// A number this tool does not know: printed as the number.
            Unknown(i32),
        }

        impl TcpState {
            /// Every state this tool names, in the kernel's order.
            pub const NAMED: &[TcpState] = &[$(TcpState::$variant),*];

            /// The state the kernel numbers `n`.
            pub fn from_raw(n: i32) -> Self {
                match n {
                    $($number => TcpState::$variant,)*
                    n => TcpState::Unknown(n),
                }
            }

            /// The kernel's number for the state.
            pub const fn number(self) -> i32 {
                match self {
                    $(TcpState::$variant => $number,)*
                    TcpState::Unknown(n) => n,
                }
            }

            /// The state as text: its name without `TCP_`, or the number
            /// the tool does not know.
            pub fn text(self) -> StateText {
                match self {
                    $(TcpState::$variant => StateText::Name($name),)*
                    TcpState::Unknown(n) => StateText::Number(n),
                }
            }
        }
    };
}

states! {
    Established = 1 "ESTABLISHED",
    SynSent = 2 "SYN_SENT",
    SynRecv = 3 "SYN_RECV",
    FinWait1 = 4 "FIN_WAIT1",
    FinWait2 = 5 "FIN_WAIT2",
    TimeWait = 6 "TIME_WAIT",
    Close = 7 "CLOSE",
    CloseWait = 8 "CLOSE_WAIT",
    LastAck = 9 "LAST_ACK",
    Listen = 10 "LISTEN",
    Closing = 11 "CLOSING",
    NewSynRecv = 12 "NEW_SYN_RECV",
    BoundInactive = 13 "BOUND_INACTIVE",
}

/// A state as every output writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateText {
    /// The kernel's name without `TCP_`.
    Name(&'static str),
    /// A number this tool has no name for.
    Number(i32),
}

impl TcpState {
    /// The state named `name` (any case, `TCP_` optional), for `--state`.
    pub fn by_name(name: &str) -> Option<Self> {
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("TCP_").unwrap_or(&upper);
        Self::NAMED
            .iter()
            .copied()
            .find(|state| matches!(state.text(), StateText::Name(known) if known == bare))
    }

    /// Every name, comma-separated, for messages.
    pub fn names() -> String {
        let names: Vec<String> = Self::NAMED.iter().map(|s| s.to_string()).collect();
        names.join(", ")
    }
}

impl StateText {
    /// As plain bytes: the name, or the number.
    pub fn write(self, out: &mut Vec<u8>) {
        match self {
            StateText::Name(name) => out.extend_from_slice(name.as_bytes()),
            StateText::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        }
    }

    /// For JSON: the name as a string, the number as a number.
    pub fn write_json(self, out: &mut Vec<u8>) {
        match self {
            StateText::Name(name) => {
                out.push(b'"');
                out.extend_from_slice(name.as_bytes());
                out.push(b'"');
            }
            StateText::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        }
    }

    /// [`StateText::write_json`] as a string.
    pub fn json(self) -> String {
        let mut out = Vec::new();
        self.write_json(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl fmt::Display for StateText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateText::Name(name) => f.pad(name),
            StateText::Number(n) => f.pad(&n.to_string()),
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.text().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for n in -2..20 {
            assert_eq!(TcpState::from_raw(n).number(), n);
        }
        for (i, state) in TcpState::NAMED.iter().enumerate() {
            assert_eq!(state.number(), i as i32 + 1);
        }
    }

    #[test]
    fn names_and_numbers() {
        assert_eq!(TcpState::from_raw(1).to_string(), "ESTABLISHED");
        assert_eq!(TcpState::from_raw(12).to_string(), "NEW_SYN_RECV");
        assert_eq!(TcpState::from_raw(13).to_string(), "BOUND_INACTIVE");
        assert_eq!(TcpState::from_raw(0).to_string(), "0");
        assert_eq!(TcpState::from_raw(99).to_string(), "99");
        assert_eq!(TcpState::from_raw(-5), TcpState::Unknown(-5));
        assert_eq!(format!("{:<6}|", TcpState::Unknown(42)), "42    |");
        assert_eq!(format!("{:<6}|", TcpState::Close), "CLOSE |");
    }

    #[test]
    fn json_text() {
        let json = |state: TcpState| {
            let mut out = Vec::new();
            state.text().write_json(&mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(json(TcpState::Listen), "\"LISTEN\"");
        assert_eq!(json(TcpState::Unknown(-1)), "-1");
    }

    #[test]
    fn names_for_the_command_line() {
        assert_eq!(TcpState::by_name("close_wait"), Some(TcpState::CloseWait));
        assert_eq!(TcpState::by_name("TCP_LISTEN"), Some(TcpState::Listen));
        assert_eq!(TcpState::by_name("LISTENING"), None);
        assert!(TcpState::names().starts_with("ESTABLISHED, SYN_SENT"));
    }
}

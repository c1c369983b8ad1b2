//! Why a connection ended, and how it began: the names of the kernel's
//! `enum close_cause`, `enum close_detail` and `enum close_role`
//! (`src/bpf/tcpstates.h`, judged in `src/bpf/close.bpf.h`), the one place
//! every output takes their text from.
//!
//! Self-contained (std only): `build.rs` includes it with the command
//! line's definition, whose `--cause` takes these names.

use std::fmt;

/// Defines a C enum's Rust twin from one list: its numbers, names and
/// descriptions.
macro_rules! named {
    ($(#[$doc:meta])* $type:ident { $($variant:ident = $number:literal $name:literal $what:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $type {
            $(
                #[doc = $what]
                $variant = $number,
            )*
        }

        impl $type {
            /// Every value, in the kernel's order.
            pub const ALL: &[$type] = &[$($type::$variant),*];

            /// The value the kernel numbers `n`, if any.
            pub fn from_raw(n: u8) -> Option<Self> {
                match n {
                    $($number => Some($type::$variant),)*
                    _ => None,
                }
            }

            /// Its name in every output.
            pub const fn name(self) -> &'static str {
                match self {
                    $($type::$variant => $name,)*
                }
            }

            /// What it means, for the help and the manual.
            pub const fn meaning(self) -> &'static str {
                match self {
                    $($type::$variant => $what,)*
                }
            }

            /// The value named `name` (any case).
            pub fn by_name(name: &str) -> Option<Self> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.name().eq_ignore_ascii_case(name))
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named! {
    /// Why a connection ended (`enum close_cause`).
    Cause {
        Unknown = 0 "unknown" "the states and the socket's error fit no cause below",
        Normal = 1 "normal" "both FINs went through (the detail says which side sent the first)",
        Refused = 2 "refused" "a reset answered the SYN (ECONNREFUSED)",
        Timeout = 3 "timeout" "the handshake, retransmissions or keepalive gave up (the detail says which)",
        Reset = 4 "reset" "the peer reset the connection (ECONNRESET, EPIPE)",
        Aborted = 5 "aborted" "this side closed it with a reset: unread data, SO_LINGER 0, a listener closed before accepting it, or ss -K",
        Cancelled = 6 "cancelled" "the application closed it during the handshake (SYN_SENT)",
        Listener = 7 "listener" "a listening socket closed",
        Error = 8 "error" "another error ended it (an ICMP error in the handshake, say): see its errno",
    }
}

named! {
    /// What else the cause says (`enum close_detail`).
    Detail {
        None = 0 "" "nothing more",
        LocalFirst = 1 "local-first" "this side sent the first FIN",
        PeerFirst = 2 "peer-first" "the peer sent the first FIN",
        Both = 3 "both" "both sides sent a FIN at once",
        Handshake = 4 "handshake" "in the handshake",
        Retransmission = 5 "retransmission" "retransmissions were not acknowledged",
        Keepalive = 6 "keepalive" "keepalive (or zero-window) probes were not answered",
        UnreadData = 7 "unread-data" "the application closed with data it had not read",
        LingerZero = 8 "linger-zero" "the application closed with SO_LINGER 0",
        Unaccepted = 9 "unaccepted" "its listener closed before the application accepted it",
    }
}

named! {
    /// How the socket came to be (`enum close_role`).
    Role {
        Unknown = 0 "unknown" "it started before the trace, and its states do not say",
        Client = 1 "client" "active open: it connected",
        Server = 2 "server" "passive open: a listener's connection",
        Listener = 3 "listener" "a listening socket",
    }
}

impl Cause {
    /// The causes `--cause failed` stands for: every one but a normal end
    /// and a listener's.
    pub const FAILED: &[Cause] = &[
        Cause::Refused,
        Cause::Timeout,
        Cause::Reset,
        Cause::Aborted,
        Cause::Cancelled,
        Cause::Error,
        Cause::Unknown,
    ];

    /// A comma list of cause names (any case; `failed` for
    /// [`Cause::FAILED`]) as a bit mask: bit n for the cause numbered n.
    pub fn parse_mask(text: &str) -> Result<u32, String> {
        let mut mask = 0;
        for item in text.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(format!("empty item in cause list '{text}'"));
            }
            mask |= if item.eq_ignore_ascii_case("failed") {
                Cause::FAILED.iter().fold(0, |m, c| m | 1 << *c as u32)
            } else {
                let cause = Cause::by_name(item).ok_or_else(|| {
                    let names: Vec<_> = Cause::ALL.iter().map(|c| c.name()).collect();
                    format!("'{item}' is not a cause ({}, or failed)", names.join(", "))
                })?;
                1 << cause as u32
            };
        }
        Ok(mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for cause in Cause::ALL {
            assert_eq!(Cause::by_name(cause.name()), Some(*cause));
            assert_eq!(Cause::from_raw(*cause as u8), Some(*cause));
        }
        assert_eq!(Cause::from_raw(9), None);
        assert_eq!(Role::by_name("CLIENT"), Some(Role::Client));
        assert_eq!(Detail::from_raw(8), Some(Detail::LingerZero));
    }

    #[test]
    fn cause_lists_become_masks() {
        assert_eq!(Cause::parse_mask("refused"), Ok(1 << 2));
        assert_eq!(Cause::parse_mask("Reset, timeout"), Ok(1 << 4 | 1 << 3));
        let failed = Cause::parse_mask("failed").unwrap();
        assert_eq!(failed & (1 << Cause::Normal as u32), 0);
        assert_eq!(failed & (1 << Cause::Listener as u32), 0);
        assert_eq!(failed.count_ones(), 7);
        assert_eq!(
            Cause::parse_mask("refused,,reset"),
            Err("empty item in cause list 'refused,,reset'".into())
        );
        let err = Cause::parse_mask("slow").unwrap_err();
        assert!(
            err.starts_with("'slow' is not a cause (unknown, normal, refused"),
            "{err}"
        );
    }
}

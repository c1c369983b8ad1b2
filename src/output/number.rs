//! Numbers, addresses and durations as text, appended to a byte buffer
//! without allocating: the formatters' hot path.

use std::io::Write;
use std::net::IpAddr;

/// "00" to "99".
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// Decimal digits of `n`, two at a time.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        at -= 2;
        let pair = n as usize * 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        digits[at] = b'0' + n as u8;
    }
    out.extend_from_slice(&digits[at..]);
}

/// Two decimal digits, with a leading zero (0 to 99).
pub fn push_two_digits(out: &mut Vec<u8>, n: u8) {
    let pair = usize::from(n.min(99)) * 2;
    out.extend_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
}

/// Lower-case hex digits of `n`, without leading zeros.
pub fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[(n >> ((15 - i) * 4)) as usize & 0xf];
    }
    let nibbles = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    out.extend_from_slice(&digits[16 - nibbles..]);
}

/// An address in its canonical text form (RFC 5952 for IPv6).
pub fn push_ip(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            push_u64(out, a.into());
            for octet in [b, c, d] {
                out.push(b'.');
                push_u64(out, octet.into());
            }
        }
        // The standard library's form; writing to a Vec cannot fail.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A duration in nanoseconds with `digits` decimals: 3 for milliseconds, 6
/// for seconds. Rounded to the microsecond, in integers.
pub fn push_micros(out: &mut Vec<u8>, ns: u64, digits: u32) {
    let micros = ns.saturating_add(500) / 1000;
    let per_unit = 10u64.pow(digits);
    push_u64(out, micros / per_unit);
    out.push(b'.');
    let frac = micros % per_unit;
    let mut div = per_unit / 10;
    while div > 0 {
        out.push(b'0' + (frac / div % 10) as u8);
        div /= 10;
    }
}

/// `n` spaces.
pub fn push_spaces(out: &mut Vec<u8>, n: usize) {
    const SPACES: [u8; 64] = [b' '; 64];
    let mut left = n;
    while left > 0 {
        let chunk = left.min(SPACES.len());
        out.extend_from_slice(&SPACES[..chunk]);
        left -= chunk;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl Fn(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn integers() {
        assert_eq!(text(|o| push_hex(o, 0)), "0");
        assert_eq!(text(|o| push_hex(o, 0xf)), "f");
        assert_eq!(text(|o| push_hex(o, u64::MAX)), "ffffffffffffffff");
        assert_eq!(text(|o| push_u64(o, 0)), "0");
        assert_eq!(text(|o| push_u64(o, 7)), "7");
        assert_eq!(text(|o| push_u64(o, 42)), "42");
        assert_eq!(text(|o| push_u64(o, 100)), "100");
        assert_eq!(text(|o| push_u64(o, u64::MAX)), u64::MAX.to_string());
        assert_eq!(text(|o| push_two_digits(o, 5)), "05");
        assert_eq!(text(|o| push_two_digits(o, 59)), "59");
    }

    #[test]
    fn durations() {
        assert_eq!(text(|o| push_micros(o, 1_000_000_000, 6)), "1.000000");
        assert_eq!(text(|o| push_micros(o, 1_234_567, 3)), "1.235");
        assert_eq!(text(|o| push_micros(o, 499, 3)), "0.000");
        assert_eq!(text(|o| push_micros(o, 500, 3)), "0.001");
    }

    #[test]
    fn addresses_and_spaces() {
        assert_eq!(
            text(|o| push_ip(o, "10.0.255.1".parse().unwrap())),
            "10.0.255.1"
        );
        assert_eq!(
            text(|o| push_ip(o, "2001:db8:0:0:0:0:0:1".parse().unwrap())),
            "2001:db8::1"
        );
        assert_eq!(text(|o| push_spaces(o, 70)), " ".repeat(70));
    }
}

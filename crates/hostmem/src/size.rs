//! Numbers as QEMU's command line reads them (util/cutils.c): sizes with
//! `qemu_strtosz` (a k/M/G/T/P/E suffix in powers of 1024, fractions rounded to the
//! nearest byte, hex without suffix), integers with C's `strtoull` in base 0 (hex
//! `0x`, octal after a leading `0`). `-object` text is typed by these, so a size or a
//! count means the same bytes in hostmem as in QEMU.

/// C's `isspace` in the C locale: what `strtoull` and `strtod` skip first.
fn c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Why a C number parse failed: `EINVAL` (nothing or garbage) or `ERANGE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumError {
    Invalid,
    Range,
}

/// glibc's `strtoull(s, &end, base)`: the value (negated modulo 2^64 after a `-`),
/// where the number ends (0: no conversion) and whether it overflowed.
/// C's number prefix: blanks, then an optional sign. Whether it is `-`, and where the
/// digits start.
fn blanks_and_sign(s: &[u8]) -> (bool, usize) {
    let mut i = 0;
    while s.get(i).is_some_and(|&b| c_space(b)) {
        i += 1;
    }
    let neg = s.get(i) == Some(&b'-');
    if matches!(s.get(i), Some(b'+' | b'-')) {
        i += 1;
    }
    (neg, i)
}

fn strtoull(s: &[u8], base: u32) -> (u64, usize, bool) {
    let (neg, mut i) = blanks_and_sign(s);
    let hex_prefix = s.get(i) == Some(&b'0')
        && matches!(s.get(i + 1), Some(b'x' | b'X'))
        && s.get(i + 2).is_some_and(|b| b.is_ascii_hexdigit());
    let base = match base {
        0 | 16 if hex_prefix => {
            i += 2;
            16
        }
        0 if s.get(i) == Some(&b'0') => 8,
        0 => 10,
        b => b,
    };
    let start = i;
    let (mut val, mut over) = (0u64, false);
    while let Some(d) = s.get(i).and_then(|&b| (b as char).to_digit(base)) {
        match val
            .checked_mul(base.into())
            .and_then(|v| v.checked_add(d.into()))
        {
            Some(v) => val = v,
            None => over = true,
        }
        i += 1;
    }
    if i == start {
        return (0, 0, false);
    }
    if over {
        return (u64::MAX, i, true);
    }
    (if neg { val.wrapping_neg() } else { val }, i, false)
}

/// QEMU's `parse_uint`: `strtoull` that refuses a sign `-`; the end of the number
/// comes back with the result.
fn parse_uint(s: &[u8], base: u32) -> (Result<u64, NumError>, usize) {
    let (val, end, over) = strtoull(s, base);
    if over {
        return (Err(NumError::Range), end);
    }
    if end == 0 {
        return (Err(NumError::Invalid), 0);
    }
    let first = s.iter().position(|&b| !c_space(b)).unwrap_or(s.len());
    if s.get(first) == Some(&b'-') {
        return (Err(NumError::Range), end);
    }
    (Ok(val), end)
}

/// An unsigned integer as QEMU's option visitor reads it: `parse_uint` in base 0
/// (`0x1f` hex, `017` octal, `08` refused), leading blanks and `+` allowed, nothing
/// after the number.
pub fn parse_c_uint(text: &str) -> Option<u64> {
    match parse_uint(text.as_bytes(), 0) {
        (Ok(v), end) if end == text.len() => Some(v),
        _ => None,
    }
}

/// One element of an integer list as QEMU's option visitor reads it: a number or a
/// range `lo-hi` (both in base 0, `lo <= hi`, fewer than 65536 ids), inclusive.
pub fn parse_c_uint_range(text: &str) -> Option<(u64, u64)> {
    let s = text.as_bytes();
    let (lo, end) = parse_uint(s, 0);
    let lo = lo.ok()?;
    if end == s.len() {
        return Some((lo, lo));
    }
    if s[end] != b'-' {
        return None;
    }
    let hi = parse_c_uint(&text[end + 1..])?;
    (lo <= hi && hi - lo < 65536).then_some((lo, hi))
}

/// The multiplier of a size suffix (any case), as QEMU's `suffix_mul` with unit 1024.
fn suffix_shift(b: Option<&u8>) -> Option<u32> {
    Some(match b?.to_ascii_uppercase() {
        b'B' => 0,
        b'K' => 10,
        b'M' => 20,
        b'G' => 30,
        b'T' => 40,
        b'P' => 50,
        b'E' => 60,
        _ => return None,
    })
}

/// `strtod` of the fraction QEMU cuts out (an exponent letter ends it): blanks, a sign,
/// then `.digits`; anything else (no digits, inf, nan) is no conversion. The value,
/// whether it was negative, whether it underflowed to 0, and where it ends.
fn fraction(s: &[u8]) -> Option<(f64, bool, bool, usize)> {
    let (neg, i) = blanks_and_sign(s);
    if s.get(i) != Some(&b'.') {
        return None;
    }
    let digits_at = i + 1;
    let mut j = digits_at;
    while s.get(j).is_some_and(u8::is_ascii_digit) {
        j += 1;
    }
    if j == digits_at {
        return None;
    }
    let digits = std::str::from_utf8(&s[digits_at..j]).ok()?;
    let v: f64 = format!("0.{digits}").parse().ok()?;
    let underflow = v == 0.0 && digits.bytes().any(|b| b != b'0');
    Some((v, neg, underflow, j))
}

/// QEMU's `qemu_strtosz`: `1G`, `512M`, `4096`, `1.5G`, `0.1M` (rounded to the nearest
/// byte), `0x1000` (hex takes no suffix and no fraction), ` +4k` (leading blanks and
/// `+`); a fraction needs a suffix, nothing may follow, and 2^64 or more is refused.
pub fn parse_size(text: &str) -> Option<u64> {
    let s = text.as_bytes();
    let (first, mut end) = parse_uint(s, 10);
    if first == Err(NumError::Range) {
        return None;
    }
    let mut val = first.unwrap_or(0);
    let mut valf: u64 = 0;
    if first == Ok(0) && matches!(s.get(end), Some(b'x' | b'X')) {
        // Hex: reparsed whole, and neither a fraction nor a suffix may follow.
        let (v, e, over) = strtoull(s, 16);
        if over || e == 0 {
            return None;
        }
        if s.get(e) == Some(&b'.') || suffix_shift(s.get(e)).is_some() {
            return None;
        }
        val = v;
        end = e;
    } else if s.get(end) == Some(&b'.') || (end == 0 && s.contains(&b'.')) {
        if first.is_ok() && !s.get(end + 1).is_some_and(u8::is_ascii_digit) {
            // `1.k`, `1.`: a point without digits.
            end += 1;
        } else {
            // strtod on a copy cut at the first `e`/`E` (QEMU's suffix, not an exponent).
            let cut = s[end..]
                .iter()
                .position(|&b| b == b'e' || b == b'E')
                .map_or(s.len(), |p| end + p);
            let (f, neg, underflow, len) = fraction(&s[end..cut])?;
            if neg {
                return None;
            }
            end += len;
            if f == 1.0 {
                val = val.checked_add(1)?;
            } else if underflow {
                valf = 1;
            } else {
                valf = (f * 18446744073709551616.0) as u64;
                if valf == 0 && f > 0.0 {
                    valf = 1;
                }
            }
        }
    } else if first.is_err() {
        return None;
    }
    let shift = match suffix_shift(s.get(end)) {
        Some(sh) => {
            end += 1;
            sh
        }
        None => 0,
    };
    let result = if shift == 0 {
        // A fraction needs a unit: `1.5` bytes is refused, `1.0` is 1.
        (valf == 0).then_some(val)?
    } else {
        // 64.64 fixed point times 2^shift, rounded half up, as QEMU does.
        let whole = u128::from(val) << shift;
        let frac = u128::from(valf) << shift;
        let total = whole + (frac >> 64) + ((frac >> 63) & 1);
        u64::try_from(total).ok()?
    };
    (end == s.len()).then_some(result)
}

/// Human form for reports: `1 GiB`, `2 MiB`, `4 KiB`, `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut i = 0;
    let mut v = bytes as f64;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if (v - v.round()).abs() < 1e-9 {
        format!("{} {}", v.round() as u64, UNITS[i])
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_suffixes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size("16E"), None);
        assert_eq!(parse_size("1.5"), None);
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("-1"), None);
    }

    #[test]
    fn every_suffix_qemu_takes() {
        assert_eq!(parse_size("4096b"), Some(4096));
        assert_eq!(parse_size("512B"), Some(512));
        assert_eq!(parse_size("b"), None);
        assert_eq!(parse_size("1P"), Some(1 << 50));
        assert_eq!(parse_size("1.5p"), Some(3 << 49));
        assert_eq!(parse_size("1E"), Some(1 << 60));
        assert_eq!(parse_size("15E"), Some(15 << 60));
        assert_eq!(parse_size("16383P"), Some(16383 << 50));
        assert_eq!(parse_size("16384P"), None, "2^64 does not fit");
        // strtoull's leading blanks and `+`, but nothing after the number.
        assert_eq!(parse_size("+1"), Some(1));
        assert_eq!(parse_size("+1G"), Some(1 << 30));
        assert_eq!(parse_size(" 2M"), Some(2 << 20));
        assert_eq!(parse_size("2M "), None);
        assert_eq!(parse_size("2M\n"), None);
    }

    #[test]
    fn hex_fractions_and_rounding_as_qemu_strtosz() {
        assert_eq!(parse_size("0x1000"), Some(4096));
        assert_eq!(parse_size("0X100000"), Some(1 << 20));
        assert_eq!(parse_size("+0x10"), Some(16));
        assert_eq!(parse_size("0x1b"), Some(27), "b is a hex digit, not bytes");
        assert_eq!(parse_size("0x20M"), None, "hex takes no suffix");
        assert_eq!(parse_size("0x1.8"), None);
        assert_eq!(parse_size("0x"), None);
        assert_eq!(
            parse_size("0.1M"),
            Some(104858),
            "rounded to the nearest byte"
        );
        assert_eq!(parse_size(".5k"), Some(512));
        assert_eq!(parse_size("1.k"), Some(1024));
        assert_eq!(parse_size("1."), Some(1));
        assert_eq!(parse_size("1.0"), Some(1));
        assert_eq!(
            parse_size("1.5e"),
            Some(3 << 59),
            "e is exa, not an exponent"
        );
        assert_eq!(parse_size("-0.5M"), None);
        assert_eq!(parse_size("-.5M"), None);
        assert_eq!(parse_size("08"), Some(8), "sizes are decimal");
        assert_eq!(parse_size("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_size("18446744073709551616"), None);
        assert_eq!(
            parse_size("15.9999999999999999999E"),
            None,
            "rounds to 2^64"
        );
    }

    #[test]
    fn c_integers_in_base_zero() {
        assert_eq!(parse_c_uint("0x2"), Some(2));
        assert_eq!(parse_c_uint("010"), Some(8), "octal");
        assert_eq!(parse_c_uint("08"), None, "invalid octal");
        assert_eq!(parse_c_uint(" +4"), Some(4));
        assert_eq!(parse_c_uint("4 "), None);
        assert_eq!(parse_c_uint("-1"), None);
        assert_eq!(parse_c_uint(""), None);
        assert_eq!(parse_c_uint_range("0-3"), Some((0, 3)));
        assert_eq!(parse_c_uint_range("0x0-0x2"), Some((0, 2)));
        assert_eq!(parse_c_uint_range("3-1"), None);
        assert_eq!(parse_c_uint_range("0:0"), None);
        assert_eq!(parse_c_uint_range("0-65536"), None, "65537 ids");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(3 << 29), "1.50 GiB");
        assert_eq!(format_size(4096), "4 KiB");
    }
}

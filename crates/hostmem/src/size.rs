//! Sizes as QEMU writes them: a number with an optional k/M/G/T/P/E suffix (powers of
//! 1024), a bare number being bytes.

/// Parses `1G`, `512M`, `4096`, `1.5G` (QEMU accepts fractions with a suffix).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    let (num, shift) = match t.as_bytes()[t.len() - 1].to_ascii_lowercase() {
        b'b' => (&t[..t.len() - 1], 0),
        b'k' => (&t[..t.len() - 1], 10),
        b'm' => (&t[..t.len() - 1], 20),
        b'g' => (&t[..t.len() - 1], 30),
        b't' => (&t[..t.len() - 1], 40),
        b'p' => (&t[..t.len() - 1], 50),
        b'e' => (&t[..t.len() - 1], 60),
        _ => (t, 0),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    if let Some((int, frac)) = num.split_once('.') {
        // A fraction only makes sense with a unit (QEMU refuses "1.5" bytes).
        if shift == 0 || frac.contains('.') {
            return None;
        }
        let whole: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let frac_val: f64 = format!("0.{frac}").parse().ok()?;
        let base = whole.checked_shl(shift)?;
        if base >> shift != whole {
            return None;
        }
        return base.checked_add((frac_val * (1u64 << shift) as f64) as u64);
    }
    let v: u64 = num.parse().ok()?;
    let r = v.checked_shl(shift)?;
    (r >> shift == v).then_some(r)
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
        // Digits only: no sign (u64's own parser would take "+1").
        assert_eq!(parse_size("+1"), None);
        assert_eq!(parse_size("+1G"), None);
        assert_eq!(parse_size(" 2M "), Some(2 << 20));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(3 << 29), "1.50 GiB");
        assert_eq!(format_size(4096), "4 KiB");
    }
}

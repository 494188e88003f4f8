//! Size parsing: no panic, no overflow; a parsed size with a suffix is the number times
//! the unit, and bare numbers round-trip.
#![no_main]

use hostmem::size::{format_size, parse_size};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(v) = parse_size(text) {
        assert_eq!(parse_size(&v.to_string()), Some(v));
        let _ = format_size(v);
    }
});

//! The `-object` parser and property setters: any text gives a backend or an error,
//! never a panic, and nothing is allocated (configuration only).
#![no_main]

use hostmem::{MachineDefaults, ObjectSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = ObjectSpec::parse(text) {
        assert!(hostmem::objspec::valid_id(&spec.id));
        if let Ok(b) = spec.to_backend(&MachineDefaults::default()) {
            // Every property reads back, and its text form parses to the same value.
            for p in b.properties() {
                let v = b.get(p.name).expect("listed property reads back");
                let again =
                    p.ty.parse(p.name, &v.to_string())
                        .expect("printed value parses");
                assert_eq!(again, v, "{}", p.name);
            }
        }
    }
});

//! QEMU's `info ramblock` table: each RAM block's name, page size, length and host
//! virtual address (HVA) in QEMU's address space.
//!
//! QEMU 10.0 prints (one row per block, `Block Name` right-aligned, empty for a block
//! with no name):
//!
//! ```text
//!               Block Name    PSize              Offset               Used              Total                HVA  RO
//!                       m0    4 KiB  0x0000000000000000 0x0000000008000000 0x0000000008000000 0x00007f06ffe00000  rw
//! ```
//!
//! QEMU 7.2 (Debian bookworm) prints only `Block Name PSize Offset Used Total`: without
//! the HVA column there is no way to find a block in QEMU's memory, and that is said.

/// One RAM block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBlock {
    /// Its name: a memory backend's id, `/objects/ID` with
    /// `x-use-canonical-path-for-ramblock-id`, a device's ROM, or empty.
    pub name: String,
    /// Host page size of the block, bytes.
    pub page_size: u64,
    /// Bytes in use (the guest-visible length).
    pub used: u64,
    /// Bytes reserved (resizable blocks may grow up to it).
    pub total: u64,
    /// Host virtual address in QEMU's process.
    pub hva: u64,
    /// Read-only (ROMs).
    pub read_only: bool,
}

impl RamBlock {
    /// The memory backend id this block belongs to, by its name. A block registered
    /// by a device on a bus is named `DEVICE-PATH/ID` (a virtio-mem-pci device's memdev:
    /// `0000:00:02.0/mem-vm0`), so a leading device path (never starting with `/`,
    /// unlike `/objects/ID` and ROMs' `/rom@...`) is dropped first.
    pub fn backend_id(&self) -> Option<&str> {
        let n = self.name.as_str();
        let n = match n.split_once('/') {
            Some((dev, rest)) if !dev.is_empty() && !dev.contains('@') => rest,
            _ => n,
        };
        let n = n.strip_prefix("/objects/").unwrap_or(n);
        (!n.is_empty() && !n.contains('/') && !n.contains('@')).then_some(n)
    }
}

/// Why the table cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RamBlockError {
    /// The header has no HVA column (QEMU 7.2 and other older releases).
    #[error(
        "QEMU {version}'s `info ramblock` has no HVA column (header: {header:?}), so its RAM \
         blocks cannot be found in its memory; QEMU 7.2 lacks it, QEMU 10.0 has it"
    )]
    NoHva {
        /// QEMU's version.
        version: String,
        /// The header it printed.
        header: String,
    },
    /// A row that does not read as the header says.
    #[error("cannot read `info ramblock` row {row:?}: {why}")]
    BadRow {
        /// The row.
        row: String,
        /// What is wrong.
        why: String,
    },
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// `4 KiB`, `2 MiB`, `1 GiB` as bytes.
fn psize(num: &str, unit: &str) -> Option<u64> {
    let n: u64 = num.parse().ok()?;
    let shift = match unit {
        "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// Parses the table. The name may be empty (then the row starts with the page size) and
/// may not contain spaces (QEMU's idstr has none).
pub fn parse(text: &str, version: &str) -> Result<Vec<RamBlock>, RamBlockError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().unwrap_or("").trim().to_string();
    if !header.split_whitespace().any(|w| w == "HVA") {
        return Err(RamBlockError::NoHva {
            version: version.into(),
            header,
        });
    }
    let mut out = Vec::new();
    for row in lines {
        let w: Vec<&str> = row.split_whitespace().collect();
        let bad = |why: &str| RamBlockError::BadRow {
            row: row.trim().into(),
            why: why.into(),
        };
        // name? num unit offset used total hva [ro|rw]
        let named = w.len() >= 7 && psize(w[1], w[2]).is_some();
        let (name, rest) = if named { (w[0], &w[1..]) } else { ("", &w[..]) };
        if rest.len() < 6 {
            return Err(bad("too few columns"));
        }
        let page_size = psize(rest[0], rest[1]).ok_or_else(|| bad("page size"))?;
        let used = hex(rest[3]).ok_or_else(|| bad("Used is not 0x hex"))?;
        let total = hex(rest[4]).ok_or_else(|| bad("Total is not 0x hex"))?;
        let hva = hex(rest[5]).ok_or_else(|| bad("HVA is not 0x hex"))?;
        out.push(RamBlock {
            name: name.into(),
            page_size,
            used,
            total,
            hva,
            read_only: rest.get(6) == Some(&"ro"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Printed by QEMU 10.0.2 for `-object memory-backend-ram,id=m0,size=128M
    /// -object memory-backend-memfd,id=m1,size=128M -object memory-backend-ram,id=m2,size=64M`,
    /// m2 attached to no NUMA node.
    const QEMU_10: &str = "              Block Name    PSize              Offset               Used              Total                HVA  RO
                      m0    4 KiB  0x0000000000000000 0x0000000008000000 0x0000000008000000 0x00007f06ffe00000  rw
                      m1    4 KiB  0x0000000008000000 0x0000000008000000 0x0000000008000000 0x00007f06f7dff000  rw
                            4 KiB  0x0000000010000000 0x0000000004000000 0x0000000004000000 0x00007f06f3a00000  rw
    /rom@etc/acpi/tables    4 KiB  0x0000000014080000 0x0000000000020000 0x0000000000200000 0x00007f074c200000  ro
                 pc.bios    4 KiB  0x0000000014000000 0x0000000000040000 0x0000000000040000 0x00007f074c800000  ro
";

    #[test]
    fn qemu_10_rows_named_and_unnamed() {
        let b = parse(QEMU_10, "10.0.2").unwrap();
        assert_eq!(b.len(), 5);
        assert_eq!(b[0].name, "m0");
        assert_eq!(b[0].backend_id(), Some("m0"));
        assert_eq!((b[0].used, b[0].hva), (128 << 20, 0x7f06_ffe0_0000));
        assert_eq!(b[2].name, "", "a backend on no NUMA node gets no name");
        assert_eq!(b[2].backend_id(), None);
        assert_eq!(b[2].used, 64 << 20);
        assert_eq!(b[3].backend_id(), None, "a ROM is no backend");
        assert!(b[3].read_only && !b[0].read_only);
        assert_eq!(b[3].total, 0x20_0000);
        assert_eq!(b[4].page_size, 4096);
    }

    #[test]
    fn canonical_path_names_and_huge_pages() {
        let t = "Block Name PSize Offset Used Total HVA RO\n\
                 /objects/hp    2 MiB  0x0 0x0000000008000000 0x0000000008000000 0x00007f0000000000  rw\n";
        let b = parse(t, "10.0.2").unwrap();
        assert_eq!(b[0].backend_id(), Some("hp"));
        assert_eq!(b[0].page_size, 2 << 20);
    }

    /// Printed by QEMU 10.0.2 for `-device virtio-mem-pci,id=vm0,memdev=mem-vm0`: the
    /// device registers its memdev's block under its PCI path; its option ROM too.
    #[test]
    fn a_device_owned_block_is_its_memdev_after_the_device_path() {
        let t = "Block Name PSize Offset Used Total HVA RO\n\
                 0000:00:02.0/mem-vm0    4 KiB  0x0 0x0000000080000000 0x0000000080000000 0x00007f1cb3e00000  rw\n\
                 0000:00:03.0//objects/m1    4 KiB  0x0 0x0000000080000000 0x0000000080000000 0x00007f1cb3e00000  rw\n\
                 0000:00:04.0/virtio-net-pci.rom    4 KiB  0x0 0x40000 0x40000 0x00007f1cb3e00000  ro\n\
                 /rom@etc/acpi/tables    4 KiB  0x0 0x20000 0x200000 0x00007f074c200000  ro\n";
        let b = parse(t, "10.0.2").unwrap();
        assert_eq!(b[0].backend_id(), Some("mem-vm0"));
        assert_eq!(b[0].used, 2 << 30);
        assert_eq!(
            b[1].backend_id(),
            Some("m1"),
            "canonical path under a device"
        );
        assert!(
            b[2].read_only,
            "a device's ROM is read-only, so never taken for a backend"
        );
        assert_eq!(b[3].backend_id(), None, "a ROM is no backend");
    }

    #[test]
    fn qemu_7_2_has_no_hva_column() {
        let t = "              Block Name    PSize              Offset               Used              Total\n\
                                       m0    4 KiB  0x0000000000000000 0x0000000008000000 0x0000000008000000\n";
        let e = parse(t, "7.2.0").unwrap_err();
        assert!(
            e.to_string()
                .contains("QEMU 7.2.0's `info ramblock` has no HVA column"),
            "{e}"
        );
        let bad = "Block Name PSize Offset Used Total HVA RO\n m0 4 KiB 0x0 zz 0x1 0x2 rw\n";
        assert!(matches!(
            parse(bad, "10.0.2"),
            Err(RamBlockError::BadRow { .. })
        ));
    }
}

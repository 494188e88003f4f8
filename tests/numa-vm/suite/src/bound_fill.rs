//! Memory filled after creation, bound to node 2 (issues 21 and 22): blocks plugged
//! into a `reserve=off` backend, and a copy restore of an image. Both land wholly on
//! the bound node (this process's numa_maps of the range), and both are refused before
//! any page when the node cannot hold them, naming the node: the range has no page
//! (numa_maps) and the node's free memory did not fall (its meminfo).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use hostmem::plug::Blocks;
use hostmem::snapshot::{restore, save, Image, RestoreOptions, SaveOptions, SnapshotError};
use hostmem::{Backend, Error, Kind, Policy, Progress};

use crate::common::*;
use crate::limits::{node_free, node_room};

const NODE: u32 = 2;
const PAGE: u64 = 4096;

/// A ram backend of `size` bound to node 2, mapped without faulting anything in;
/// `reserve=off` for plugging.
fn bound(id: &str, size: u64, reserve: bool) -> Result<Backend, String> {
    Backend::builder(Kind::Ram, id)
        .size(size)
        .reserve(reserve)
        .policy(Policy::Bind)
        .host_nodes(nodes(&NODE.to_string()))
        .create()
        .map_err(|e| format!("{id}: {e}"))
}

/// Pages of the mapping at `addr` per node, and their sum (numa_maps).
fn pages(b: &Backend) -> Result<(std::collections::BTreeMap<u32, u64>, u64), String> {
    let addr = b.host_addr().ok_or("not allocated")?;
    let p = own_numa_maps(addr)?;
    let sum = p.values().sum();
    Ok((p, sum))
}

/// Every page of `b` that numa_maps shows is on node 2, and there are `want` of them.
fn all_on_node(b: &Backend, want: u64, step: &str) -> Result<String, String> {
    let (p, sum) = pages(b)?;
    ensure(sum == want && p.keys().all(|&n| n == NODE), || {
        format!(
            "{step}: numa_maps {} ({sum} pages), want N{NODE}={want}",
            dist(&p)
        )
    })?;
    Ok(format!("{step}: {}", dist(&p)))
}

/// A refusal before any page: nothing of `b` in numa_maps, node 2's free memory not
/// lower than before (less 8 MiB of the kernel's own churn).
fn nothing_placed(b: &Backend, free0: u64, step: &str) -> Result<(), String> {
    let (p, sum) = pages(b)?;
    let free = node_free(NODE)?;
    ensure(sum == 0 && free + 8 * MIB >= free0, || {
        format!(
            "{step}: numa_maps {} ({sum} pages), node {NODE} free {} MiB, {} MiB before",
            dist(&p),
            free / MIB,
            free0 / MIB
        )
    })
}

/// Blocks plugged into memory bound to node 2 land there, and leave with an unplug;
/// a plug larger than node 2's room is refused naming the node, before any page.
pub fn plug_on_bound_node(_: &Topo) -> Check {
    with_thp("never", || {
        let b = bound("plugged", 256 * MIB, false)?;
        let mut blocks = Blocks::new(&b, 2 * MIB).map_err(|e| e.to_string())?;
        blocks.plug(0..64 * MIB).map_err(|e| e.to_string())?;
        blocks
            .plug(128 * MIB..160 * MIB)
            .map_err(|e| e.to_string())?;
        let plugged = all_on_node(&b, 96 * MIB / PAGE, "96 MiB plugged")?;
        blocks
            .unplug(0..32 * MIB, false)
            .map_err(|e| e.to_string())?;
        let unplugged = all_on_node(&b, 64 * MIB / PAGE, "32 MiB unplugged")?;
        drop(blocks);
        drop(b);
        let room = node_room(NODE)?;
        let big = bound("too-big", 1 << 30, false)?;
        let mut blocks = Blocks::new(&big, 2 * MIB).map_err(|e| e.to_string())?;
        let free0 = node_free(NODE)?;
        let e = match blocks.plug(0..1 << 30) {
            Ok(_) => {
                return Err(format!(
                    "1 GiB plugged on node {NODE} with {} MiB room",
                    room / MIB
                ))
            }
            Err(e) => e,
        };
        let text = e.to_string();
        ensure(
            matches!(e, Error::NodeMemoryShort { .. }) && text.contains(&format!("node {NODE}")),
            || format!("the refusal does not name node {NODE}: {text}"),
        )?;
        nothing_placed(&big, free0, "1 GiB plug refused")?;
        ensure(blocks.plugged().is_empty(), || {
            "blocks marked plugged".into()
        })?;
        Ok(format!("{plugged}; {unplugged}; 1 GiB refused: {text}"))
    })
}

/// An image of `data` MiB of bytes (then `hole` MiB never written) saved from memory
/// of the default policy at `path`; the bytes' checksum as read from that memory.
fn image(path: &str, data: u64, hole: u64) -> Result<(Image, u64), String> {
    let src = Backend::builder(Kind::Ram, "src")
        .size((data + hole) * MIB)
        .create()
        .map_err(|e| e.to_string())?;
    let mem = src.hold().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; MIB as usize];
    for (i, x) in buf.iter_mut().enumerate() {
        *x = (i * 7 + i / 4096) as u8;
    }
    for m in 0..data {
        mem.write_at((m * MIB) as usize, &buf)
            .map_err(|e| e.to_string())?;
    }
    let sum = checksum(&mem, data * MIB)?;
    save(&src, path, &SaveOptions::default(), &Progress::new()).map_err(|e| e.to_string())?;
    Ok((Image::open(path).map_err(|e| e.to_string())?, sum))
}

/// A checksum of the first `len` bytes of the memory, read through its hold.
fn checksum(mem: &hostmem::InUse, len: u64) -> Result<u64, String> {
    let mut buf = vec![0u8; MIB as usize];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for m in 0..len / MIB {
        mem.read_at((m * MIB) as usize, &mut buf)
            .map_err(|e| e.to_string())?;
        for &x in &buf {
            h = (h ^ x as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    Ok(h)
}

/// `numa-suite eat 2 MIB` (eaten.rs): holds `mib` on node 2 until its stdin closes.
fn eater(mib: u64) -> Result<Child, String> {
    let mut child = Command::new("/bin/numa-suite")
        .args(["eat", &NODE.to_string(), &mib.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the eater: {e}"))?;
    let mut said = String::new();
    BufReader::new(child.stdout.take().ok_or("eater stdout")?)
        .read_line(&mut said)
        .map_err(|e| e.to_string())?;
    if said.trim() != "ate" {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("the eater did not eat: {}", said.trim()));
    }
    Ok(child)
}

/// Issue 21: a copy restore into memory bound to node 2 puts every data page there
/// (holes stay holes) with the saved bytes; with node 2 nearly full (another process
/// holds all but 64 MiB of its room) a 128 MiB restore is refused naming the node,
/// before any page.
pub fn restore_on_bound_node(_: &Topo) -> Check {
    with_thp("never", || {
        let path = "/tmp/bound-restore.img";
        let (img, sum) = image(path, 32, 32)?;
        let dst = bound("restored", 64 * MIB, true)?;
        let r = restore(&img, &dst, &RestoreOptions::default(), &Progress::new());
        r.map_err(|e| format!("restore: {e}"))?;
        let placed = all_on_node(&dst, 32 * MIB / PAGE, "32 MiB restored")?;
        let back = checksum(&dst.hold().map_err(|e| e.to_string())?, 32 * MIB)?;
        ensure(back == sum, || {
            format!("restored bytes differ: {back:x} != {sum:x}")
        })?;
        drop((dst, img));
        let (img, _) = image(path, 128, 0)?;
        let dst = bound("refused", 128 * MIB, true)?;
        let room = node_room(NODE)?;
        let mut eat = eater(room.saturating_sub(64 * MIB) / MIB / 2 * 2)?;
        let free0 = node_free(NODE)?;
        let r = restore(&img, &dst, &RestoreOptions::default(), &Progress::new());
        let checked = nothing_placed(&dst, free0, "128 MiB restore refused");
        drop(eat.stdin.take());
        let _ = eat.wait();
        let _ = std::fs::remove_file(path);
        let text = match r {
            Ok(_) => {
                return Err(format!(
                    "128 MiB restored onto node {NODE} with about 64 MiB room"
                ))
            }
            Err(SnapshotError::Backend(e @ Error::NodeMemoryShort { .. })) => e.to_string(),
            Err(e) => return Err(format!("refused, but not naming the node: {e}")),
        };
        checked?;
        ensure(text.contains(&format!("node {NODE}")), || {
            format!("the refusal does not name node {NODE}: {text}")
        })?;
        Ok(format!("{placed}, bytes equal; 128 MiB refused: {text}"))
    })
}

//! `hostmem vm --qmp SOCKET resize DEVICE SIZE`: asks a virtio-mem device for SIZE
//! (`qom-set requested-size`), then follows both sides until they agree: the guest's
//! plugged size over QMP (woken by MEMORY_DEVICE_SIZE_CHANGE, read with `qom-get
//! size`), and the host's resident memory of the device's memdev in
//! /proc/QEMU_PID/smaps. QEMU preallocates a block before it tells the guest it is
//! plugged (prealloc=on) and discards it when the guest unplugs it, so the host's
//! resident bytes must end equal to the plugged size; that is checked, not assumed.
//!
//! Every refusal (no such device, not virtio-mem, a size off the block grid or above
//! the maximum) comes before the request, so nothing changes.

use std::time::{Duration, Instant};

use hostmem::size::{format_size, parse_size};
use hostmem::{KernelView, Process};
use serde_json::json;

use super::client::{QmpClient, QmpError};
use super::error::VmError;
use super::snapshot;
use super::virtio_mem::{self, VirtioMem};
use crate::signals::Events;

/// How often both sides are read while they move (between size-change events, which
/// QEMU sends at most once a second).
const TICK: Duration = Duration::from_millis(50);

/// Both sides at one moment, since the request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the request.
    pub seconds: f64,
    /// The guest's plugged size.
    pub plugged: u64,
    /// Resident bytes of the memdev's range (huge TLB pages included).
    pub resident: u64,
}

/// How the resize ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum End {
    /// The guest plugged what was asked and the host's resident memory followed.
    Done,
    /// Neither side moved for this many seconds before both were there.
    Stalled(f64),
    /// SIGINT/SIGTERM.
    Cancelled,
}

/// What the command did.
pub struct Outcome {
    /// The device before the request.
    pub before: VirtioMem,
    /// The device id.
    pub device: String,
    /// Its memdev's resident bytes before the request.
    pub resident_before: u64,
    /// The device's prealloc property: whether plugged blocks must be resident.
    pub prealloc: bool,
    /// The memdev's reserve property (None when QEMU does not say).
    pub reserve: Option<bool>,
    /// The memdev's RAM block page size.
    pub page_size: u64,
    /// The size asked for.
    pub target: u64,
    /// Every sample where either side changed, the first and the last.
    pub timeline: Vec<Sample>,
    /// The kernel's view of the memdev's range at the end.
    pub host: KernelView,
    /// When the guest's plugged size reached the target (and stayed).
    pub guest_seconds: Option<f64>,
    /// When the host's resident memory of the memdev got to the target size (prealloc=on;
    /// no more than it without) and stayed there.
    pub host_seconds: Option<f64>,
    /// How it ended.
    pub end: End,
    /// What the operator should know (prealloc=off, reserve=on, ...).
    pub warnings: Vec<String>,
}

impl Outcome {
    /// The last sample.
    pub fn last(&self) -> Sample {
        *self.timeline.last().unwrap_or(&Sample {
            seconds: 0.0,
            plugged: self.before.plugged,
            resident: self.resident_before,
        })
    }
}

/// Whether the host followed the guest: with prealloc=on every plugged block is
/// resident and nothing else is; without it a plugged block is resident only once the
/// guest touched it, so only "no more than plugged" can be checked.
pub fn host_follows(prealloc: bool, plugged: u64, resident: u64) -> bool {
    if prealloc {
        resident == plugged
    } else {
        resident <= plugged
    }
}

/// The device `id` among the virtio-mem devices, or why it is not one.
fn find_device(c: &mut QmpClient, id: &str) -> Result<VirtioMem, VmError> {
    let devices = virtio_mem::query(c)?;
    if let Some(d) = devices
        .virtio_mem
        .iter()
        .find(|d| d.id.as_deref() == Some(id))
    {
        return Ok(d.clone());
    }
    let known = devices
        .virtio_mem
        .iter()
        .filter_map(|d| d.id.clone())
        .collect::<Vec<_>>()
        .join(", ");
    let kind = match devices.all.iter().find(|d| d.id.as_deref() == Some(id)) {
        Some(d) => Some(format!("a {} memory device", d.kind)),
        // Not a memory device: QOM still knows what it is, if it exists.
        None => match c.execute(
            "qom-get",
            json!({"path": virtio_mem::qom_path(id), "property": "type"}),
        ) {
            Ok(t) => Some(format!("a {} device", t.as_str().unwrap_or("?"))),
            Err(QmpError::Command { .. }) => None,
            Err(e) => return Err(e.into()),
        },
    };
    Err(VmError::NotVirtioMem {
        id: id.into(),
        kind,
        known: if known.is_empty() {
            "none".into()
        } else {
            known
        },
    })
}

/// The checks QEMU would make on `requested-size`, made first so the message can name
/// the sizes that would do.
pub fn check_size(d: &VirtioMem, text: &str) -> Result<u64, VmError> {
    let bad = |why: String| VmError::BadResize {
        size: text.into(),
        why,
    };
    let size = parse_size(text).ok_or_else(|| {
        bad("not a size (a number of bytes with an optional K, M, G or T suffix: 1G, 512M)".into())
    })?;
    let block = d.block_size.max(1);
    if size % block != 0 {
        let below = size / block * block;
        return Err(bad(format!(
            "not a multiple of the device's block size {} (the nearest are {} and {})",
            format_size(block),
            format_size(below),
            format_size(below + block)
        )));
    }
    if size > d.max {
        return Err(bad(format!(
            "more than the device's maximum {} (its memdev {}'s size)",
            format_size(d.max),
            d.memdev
        )));
    }
    Ok(size)
}

fn qom_bool(c: &mut QmpClient, path: &str, property: &str) -> Result<Option<bool>, VmError> {
    match c.execute("qom-get", json!({"path": path, "property": property})) {
        Ok(v) => Ok(v.as_bool()),
        Err(QmpError::Command { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Checks, asks, follows. `stall`: give up when neither side moved for that long.
pub fn run(
    c: &mut QmpClient,
    process: &Process,
    id: &str,
    size: &str,
    stall: Duration,
    events: &Events,
) -> Result<Outcome, VmError> {
    let pid = process.pid();
    let before = find_device(c, id).map_err(|e| e.or_exited(pid))?;
    let target = check_size(&before, size)?;
    let snap = snapshot::take(c).map_err(|e| e.or_exited(pid))?;
    let backend = snap.backend(&before.memdev)?;
    let block = backend.block.as_ref().ok_or_else(|| VmError::NotAttached {
        id: before.memdev.clone(),
    })?;
    let region = process
        .region(block.hva, block.used)
        .map_err(|e| VmError::from(e).or_exited(pid))?;
    let prealloc = qom_bool(c, &virtio_mem::qom_path(id), "prealloc")?.unwrap_or(false);
    let reserve = backend.requested["reserve"].as_bool();
    let mut warnings = Vec::new();
    if !prealloc {
        warnings.push(format!(
            "{id} has prealloc=off: a plugged block is resident only once the guest touches it, \
             so the host is checked for no more resident than plugged, not for all of it"
        ));
    }
    if reserve == Some(true) {
        warnings.push(format!(
            "memdev {} has reserve=on: the host commits its whole size up front, plugged or not \
             (QEMU's advice for virtio-mem is reserve=off)",
            before.memdev
        ));
    }
    let read_host = |r: &hostmem::remote::RemoteRegion| {
        r.inspect().map_err(|e| VmError::from(e).or_exited(pid))
    };
    let resident_before = read_host(&region)?.resident;
    // Events from before the request are not about it.
    while c
        .wait_event("MEMORY_DEVICE_SIZE_CHANGE", Duration::ZERO)?
        .is_some()
    {}
    c.execute(
        "qom-set",
        json!({"path": virtio_mem::qom_path(id), "property": "requested-size", "value": target}),
    )
    .map_err(|e| VmError::from(e).or_exited(pid))?;
    let started = Instant::now();
    let mut timeline: Vec<Sample> = Vec::new();
    let mut last_move = started;
    let (mut guest_seconds, mut host_seconds) = (None, None);
    let (end, host) = loop {
        let plugged = virtio_mem::plugged(c, id).map_err(|e| e.or_exited(pid))?;
        let view = read_host(&region)?;
        let now = Instant::now();
        let s = Sample {
            seconds: now.duration_since(started).as_secs_f64(),
            plugged,
            resident: view.resident,
        };
        let moved = timeline
            .last()
            .is_none_or(|l| (l.plugged, l.resident) != (s.plugged, s.resident));
        if moved {
            timeline.push(s);
            last_move = now;
        }
        let guest_there = plugged == target;
        // Each side timed on its own: the host's resident memory may get to the target
        // before the guest's plugged size says so (QEMU preallocates a block before it
        // acknowledges the plug, and discards it before it acknowledges the unplug).
        let host_there = host_follows(prealloc, target, view.resident);
        guest_seconds = if guest_there {
            guest_seconds.or(Some(s.seconds))
        } else {
            None
        };
        host_seconds = if host_there {
            host_seconds.or(Some(s.seconds))
        } else {
            None
        };
        if guest_there && host_there {
            break (End::Done, view);
        }
        let quiet = now.duration_since(last_move);
        if quiet >= stall {
            break (End::Stalled(quiet.as_secs_f64()), view);
        }
        if events.rx.try_recv().is_ok() {
            break (End::Cancelled, view);
        }
        c.wait_event("MEMORY_DEVICE_SIZE_CHANGE", TICK)
            .map_err(|e| VmError::from(e).or_exited(pid))?;
    };
    Ok(Outcome {
        before,
        device: id.into(),
        resident_before,
        prealloc,
        reserve,
        page_size: block.page_size,
        target,
        timeline,
        host,
        guest_seconds,
        host_seconds,
        end,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn vm0() -> VirtioMem {
        VirtioMem {
            id: Some("vm0".into()),
            memdev: "mem-vm0".into(),
            plugged: 0,
            requested: 0,
            max: 256 * MIB,
            block_size: 2 * MIB,
            node: 0,
            memaddr: 1 << 32,
        }
    }

    #[test]
    fn a_size_on_the_block_grid_up_to_the_maximum_is_taken() {
        assert_eq!(check_size(&vm0(), "0").unwrap(), 0);
        assert_eq!(check_size(&vm0(), "64M").unwrap(), 64 * MIB);
        assert_eq!(check_size(&vm0(), "256M").unwrap(), 256 * MIB);
        assert_eq!(check_size(&vm0(), "4194304").unwrap(), 4 * MIB);
    }

    #[test]
    fn a_size_off_the_grid_above_the_maximum_or_unreadable_is_refused_by_name() {
        let refused = |text: &str| check_size(&vm0(), text).unwrap_err().to_string();
        assert_eq!(
            refused("5M"),
            "SIZE \"5M\": not a multiple of the device's block size 2 MiB (the nearest are \
             4 MiB and 6 MiB); nothing was changed"
        );
        assert_eq!(
            refused("258M"),
            "SIZE \"258M\": more than the device's maximum 256 MiB (its memdev mem-vm0's \
             size); nothing was changed"
        );
        assert!(refused("1x").contains("not a size"), "{}", refused("1x"));
        assert!(refused("-2M").contains("not a size"), "{}", refused("-2M"));
    }

    #[test]
    fn the_host_follows_exactly_with_prealloc_and_from_below_without() {
        assert!(host_follows(true, 64 * MIB, 64 * MIB));
        assert!(
            !host_follows(true, 64 * MIB, 62 * MIB),
            "a plugged block not resident"
        );
        assert!(
            !host_follows(true, 64 * MIB, 66 * MIB),
            "an unplugged block not given back"
        );
        assert!(host_follows(false, 64 * MIB, 0), "untouched plugged blocks");
        assert!(
            !host_follows(false, 64 * MIB, 66 * MIB),
            "an unplugged block not given back"
        );
    }
}

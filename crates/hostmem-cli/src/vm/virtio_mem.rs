//! The VM's virtio-mem devices, from `query-memory-devices`: how much of each device's
//! memdev the guest has plugged, how much it was asked for, and the limits a resize
//! must respect (block size, maximum). The guest's side of a resize is read here; the
//! host's side is the memdev's range in /proc/PID/smaps.

use serde_json::{json, Value};

use super::client::{QmpClient, QmpError};
use super::error::VmError;

/// One virtio-mem device as QEMU describes it (QAPI `VirtioMEMDeviceInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioMem {
    /// The device id (`-device virtio-mem-pci,id=...`); None for a device made without
    /// one (it cannot be resized by name).
    pub id: Option<String>,
    /// The memdev's id (QEMU gives its QOM path, `/objects/ID`).
    pub memdev: String,
    /// Bytes the guest has plugged (`size`).
    pub plugged: u64,
    /// Bytes the guest was asked to plug (`requested-size`).
    pub requested: u64,
    /// The most it can plug: the memdev's size (`max-size`).
    pub max: u64,
    /// Plug granularity (`block-size`).
    pub block_size: u64,
    /// The guest NUMA node the memory is given to.
    pub node: u64,
    /// Guest physical address of the device's region.
    pub memaddr: u64,
}

/// Any memory device `query-memory-devices` lists: its type (`dimm`, `nvdimm`,
/// `virtio-pmem`, `virtio-mem`, `sgx-epc`, `hv-balloon`) and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryDevice {
    /// QAPI's type tag.
    pub kind: String,
    /// The device id, when it has one.
    pub id: Option<String>,
}

/// The memory devices and, parsed, the virtio-mem ones among them.
#[derive(Debug, Clone, Default)]
pub struct MemoryDevices {
    /// Every device listed.
    pub all: Vec<MemoryDevice>,
    /// The virtio-mem devices.
    pub virtio_mem: Vec<VirtioMem>,
}

fn field(data: &Value, name: &str) -> Result<u64, VmError> {
    data[name].as_u64().ok_or_else(|| VmError::Reply {
        command: "query-memory-devices",
        why: format!("a virtio-mem device without a numeric {name:?}: {data}"),
    })
}

/// Reads `query-memory-devices`' reply.
pub fn parse(reply: &Value) -> Result<MemoryDevices, VmError> {
    let list = reply.as_array().ok_or_else(|| VmError::Reply {
        command: "query-memory-devices",
        why: format!("not a list: {reply}"),
    })?;
    let mut out = MemoryDevices::default();
    for d in list {
        let kind = d["type"].as_str().unwrap_or("?").to_string();
        let data = &d["data"];
        let id = data["id"].as_str().map(str::to_string);
        if kind == "virtio-mem" {
            let memdev = data["memdev"].as_str().unwrap_or("");
            out.virtio_mem.push(VirtioMem {
                id: id.clone(),
                memdev: memdev.strip_prefix("/objects/").unwrap_or(memdev).into(),
                plugged: field(data, "size")?,
                requested: field(data, "requested-size")?,
                max: field(data, "max-size")?,
                block_size: field(data, "block-size")?,
                node: field(data, "node")?,
                memaddr: field(data, "memaddr")?,
            });
        }
        out.all.push(MemoryDevice { kind, id });
    }
    Ok(out)
}

/// Asks QEMU now. A QEMU without the command (none this old is supported, but a
/// report should not fail for it) has no memory devices.
pub fn query(c: &mut QmpClient) -> Result<MemoryDevices, VmError> {
    match c.execute("query-memory-devices", json!({})) {
        Ok(r) => parse(&r),
        Err(QmpError::Command { class, .. }) if class == "CommandNotFound" => {
            Ok(MemoryDevices::default())
        }
        Err(e) => Err(e.into()),
    }
}

/// The QOM path of a device made with `-device ...,id=ID`.
pub fn qom_path(id: &str) -> String {
    format!("/machine/peripheral/{id}")
}

/// The device's `size` property now: what the guest has plugged.
pub fn plugged(c: &mut QmpClient, id: &str) -> Result<u64, VmError> {
    let v = c.execute("qom-get", json!({"path": qom_path(id), "property": "size"}))?;
    v.as_u64().ok_or_else(|| VmError::Reply {
        command: "qom-get size",
        why: format!("not a size: {v}"),
    })
}

/// The device's JSON in a report (schema: `$defs/virtio-mem` of docs/vm.schema.json).
pub fn json(d: &VirtioMem) -> Value {
    json!({
        "id": d.id,
        "plugged-size": d.plugged,
        "requested-size": d.requested,
        "max-size": d.max,
        "block-size": d.block_size,
        "node": d.node,
        "memaddr": d.memaddr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 10.0.2's reply for `-device pc-dimm,id=d0,memdev=m0 -device
    /// virtio-mem-pci,id=vm0,memdev=mem-vm0,block-size=2M` with 1 GiB plugged.
    fn reply() -> Value {
        json!([
            {"type": "dimm", "data": {"id": "d0", "memdev": "/objects/m0", "addr": 4294967296u64,
             "size": 134217728, "slot": 0, "node": 0, "hotplugged": false, "hotpluggable": true}},
            {"type": "virtio-mem", "data": {"memdev": "/objects/mem-vm0", "memaddr": 4429185024u64,
             "block-size": 2097152, "size": 1073741824, "node": 0, "max-size": 2147483648u64,
             "requested-size": 1073741824, "id": "vm0"}}
        ])
    }

    #[test]
    fn virtio_mem_devices_are_read_and_others_listed() {
        let d = parse(&reply()).unwrap();
        assert_eq!(d.all.len(), 2);
        assert_eq!(d.all[0].kind, "dimm");
        assert_eq!(d.all[0].id.as_deref(), Some("d0"));
        assert_eq!(
            d.virtio_mem,
            [VirtioMem {
                id: Some("vm0".into()),
                memdev: "mem-vm0".into(),
                plugged: 1 << 30,
                requested: 1 << 30,
                max: 2 << 30,
                block_size: 2 << 20,
                node: 0,
                memaddr: 4429185024,
            }]
        );
    }

    #[test]
    fn a_virtio_mem_device_without_its_sizes_is_an_error() {
        let mut r = reply();
        r[1]["data"]["size"] = json!("1G");
        let e = parse(&r).unwrap_err().to_string();
        assert!(e.contains("without a numeric \"size\""), "{e}");
        assert!(parse(&json!({})).is_err(), "not a list");
    }
}

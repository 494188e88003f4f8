"""`__org.hostmem_memdev-save`: a live backend saved to a snapshot image over QMP.

The image's bytes are compared with the backend's memory as the test reads it itself
(/proc/PID/mem at the address the residency command gives, checked against smaps),
not with hostmem's checksums; a failed save is an error reply that loses nothing."""

import json
import os
import subprocess

from conftest import Qmp, hostmem_bin
from kernel import backend_view

MIB = 1 << 20
SAVE = "__org.hostmem_memdev-save"
RESIDENCY = "__org.hostmem_query-memdev-residency"


def read_mem(pid, addr, size):
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(addr)
        return f.read(size)


def write_mem(pid, addr, data):
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as f:
        f.seek(addr)
        assert f.write(data) == len(data)


def image_region_bytes(path):
    """The image's bytes of its one region, read from the file at the offset its
    header gives (holes read as zeros), and the header."""
    info = json.loads(subprocess.run([hostmem_bin(), "image", "info", "--json", str(path)],
                                     check=True, capture_output=True, text=True).stdout)
    (region,) = info["header"]["regions"]
    with open(path, "rb") as f:
        f.seek(region["file_offset"])
        return f.read(region["len"]), info


def test_a_live_backend_saves_byte_for_byte_and_sparse(hostmem, tmp_path):
    q = Qmp(hostmem.sock)
    assert q("object-add", **{"qom-type": "memory-backend-memfd", "id": "s",
                              "size": 8 * MIB}) == {}
    entry = q(RESIDENCY, id="s")[0]
    backend_view(hostmem.pid, entry)  # the address really is the backend's mapping
    pattern = os.urandom(192 * 1024)
    write_mem(hostmem.pid, entry["host-addr"] + 5 * MIB + 4096, pattern)
    image = tmp_path / "s.img"
    out = q(SAVE, id="s", file=str(image))
    assert out["id"] == "s" and out["file"] == str(image)
    memory = read_mem(hostmem.pid, entry["host-addr"], 8 * MIB)
    data, info = image_region_bytes(image)
    assert data == memory, "the image's region differs from the memory read by the test"
    assert memory[5 * MIB + 4096:5 * MIB + 4096 + len(pattern)] == pattern
    # One 2 MiB block holds the written bytes; the other three were never written.
    assert (out["data-blocks"], out["hole-blocks"], out["blocks"]) == (1, 3, 4)
    assert info["data-bytes"] == out["data-bytes"] == 2 * MIB
    assert os.stat(image).st_blocks * 512 <= 2 * MIB + 1 * MIB  # data + header, sparse
    subprocess.run([hostmem_bin(), "image", "verify", str(image)], check=True,
                   capture_output=True)
    q.close()


def test_a_failed_save_is_an_error_reply_that_keeps_the_old_image(hostmem, mounts, tmp_path):
    full = mounts("tmpfs", "size=1M")
    q = Qmp(hostmem.sock)
    assert q("object-add", **{"qom-type": "memory-backend-ram", "id": "r",
                              "size": 8 * MIB, "prealloc": True}) == {}
    entry = q(RESIDENCY, id="r")[0]
    write_mem(hostmem.pid, entry["host-addr"], os.urandom(4 * MIB))
    old = full / "r.img"
    old.write_bytes(b"an earlier image")
    cls, desc = q.error(SAVE, id="r", file=str(old))
    assert cls == "GenericError" and "saving 'r'" in desc and str(full) in desc, desc
    assert old.read_bytes() == b"an earlier image", "a failed save overwrote the old image"
    assert sorted(p.name for p in full.iterdir()) == ["r.img"], "a partial file was left"
    assert q.error(SAVE, id="zz", file=str(tmp_path / "x")) == (
        "GenericError", "object 'zz' not found")
    assert q.error(SAVE, id="r")[0] == "GenericError"  # no file
    assert not (tmp_path / "x").exists()
    # The connection and the backend are as they were: a save elsewhere works.
    before = read_mem(hostmem.pid, entry["host-addr"], 8 * MIB)
    out = q(SAVE, id="r", file=str(tmp_path / "r.img"))
    assert out["data-bytes"] == 4 * MIB
    data, _ = image_region_bytes(tmp_path / "r.img")
    assert data == before
    q.close()

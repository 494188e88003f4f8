"""The differences from QEMU 10.0 that hostmem means to have, each with the exact reply
hostmem must give and the exact reply QEMU 10.0 gives (test_differential.py compares
the normalised replies with these): a changed reply on either side fails, as does a
listed difference that stops differing. docs/qmp.md lists the same entries with the
same replies ("Reply by reply"); a test checks that its table is the one `doc_table()`
renders, and `python3 tests/qmp/differential_intended.py` prints it.

Replies are written after normalisation (test_differential.normalise). Placeholders
stand for what is the host's or the run's own: @DIR@ the script's temporary directory,
@ONLINE@ the host's online NUMA nodes (/sys/devices/system/node/online), @HUGE-SIZES@
the huge page sizes it offers (/sys/kernel/mm/hugepages), as hostmem words them.
"""

import json
import re
from pathlib import Path

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


def err(desc, cls="GenericError"):
    return {"error": {"class": cls, "desc": desc}}


def ok(value=None):
    return {"return": {} if value is None else value}


def size_words(n):
    """A size as hostmem's messages give it ("2 MiB", "1 GiB")."""
    for unit, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} B"


def host_facts():
    """The placeholders' values on this host."""
    sizes = sorted(int(m.group(1)) * KIB
                   for d in Path("/sys/kernel/mm/hugepages").iterdir()
                   if (m := re.fullmatch(r"hugepages-(\d+)kB", d.name)))
    return {"@ONLINE@": Path("/sys/devices/system/node/online").read_text().strip(),
            "@HUGE-SIZES@": ", ".join(size_words(s) for s in sizes)}


def expand(v, facts):
    """`v` with the placeholders replaced by their values (none holds a quote)."""
    text = json.dumps(v)
    for k, x in facts.items():
        text = text.replace(k, x)
    return json.loads(text)


def cell(reply):
    """One reply as a table cell."""
    if "error" in reply:
        text = f"`{reply['error']['class']}`: `{reply['error']['desc']}`"
    else:
        text = f"returns `{json.dumps(reply['return'])}`"
    return text.replace("|", "\\|")


class Intended:
    """A difference of behaviour: hostmem's reply `ours` and QEMU's `qemu`, exactly."""
    kind = "behaviour"

    def __init__(self, why, ours, qemu):
        self.why, self.ours, self.qemu = why, ours, qemu

    def covers(self, ours, qemu, facts):
        """Whether the normalised replies are exactly the ones listed."""
        return (ours, qemu) == (expand(self.ours, facts), expand(self.qemu, facts))

    def expected(self):
        """(QEMU, hostmem) as table cells."""
        return cell(self.qemu), cell(self.ours)


class Wording(Intended):
    """Both refuse with the same error class; only the text differs."""
    kind = "wording"

    def __init__(self, why, ours, qemu, cls="GenericError"):
        super().__init__(why, err(ours, cls), err(qemu, cls))


class FewerChildren(Intended):
    """A qom-list that is QEMU's without the `missing` (name, type) entries (QEMU's
    internals or containers hostmem does not have): QEMU's list must hold each of them
    and hostmem's must be the rest, in full."""
    kind = "fewer QOM entries"

    def __init__(self, why, *missing):
        super().__init__(why, None, None)
        self.missing = [{"name": n, "type": t} for n, t in missing]

    def covers(self, ours, qemu, facts):
        if not all(isinstance(r, dict) and isinstance(r.get("return"), list)
                   for r in (ours, qemu)):
            return False
        if not all(e in qemu["return"] for e in self.missing):
            return False
        return ours["return"] == [e for e in qemu["return"] if e not in self.missing]

    def expected(self):
        names = ", ".join(f"`{e['name']}` (`{e['type']}`)" for e in self.missing)
        return f"hostmem's list and {names}", f"QEMU's list without {names}"


class OneField(Intended):
    """A list of objects (query-memdev) that is QEMU's except one field of one entry:
    `field` of `id` is `ours` in hostmem's reply and `qemu` in QEMU's."""
    kind = "behaviour"

    def __init__(self, why, id, field, ours, qemu):
        super().__init__(why, ours, qemu)
        self.id, self.field = id, field

    def covers(self, ours, qemu, facts):
        try:
            mine = {e["id"]: e for e in ours["return"]}
            theirs = {e["id"]: e for e in qemu["return"]}
        except (KeyError, TypeError):
            return False
        if self.id not in mine or self.id not in theirs:
            return False
        if (mine[self.id].get(self.field), theirs[self.id].get(self.field)) != (
                self.ours, self.qemu):
            return False
        mine[self.id] = dict(mine[self.id], **{self.field: self.qemu})
        return mine == theirs

    def expected(self):
        return (f"hostmem's list, but `{self.field}` of `{self.id}` is "
                f"`{json.dumps(self.qemu)}`",
                f"QEMU's list, but `{self.field}` of `{self.id}` is `{json.dumps(self.ours)}`")


W = Wording
NAMES_IT = "hostmem's message names the object, the property and the value"
FIXED = "cannot change property '{}' of {} '{}': it is fixed once the backend is allocated"
REBIND = ("cannot change '{}' of live backend 'm1' on its own: rebind it instead (policy "
          "and host-nodes together, existing pages are migrated)")
JSON_ERR = "JSON parse error text is serde_json's"
NULL_NAME = "names the element (QEMU says Parameter 'null')"
TOO_SMALL = ("{} backing store size 0x100001 is too small for 'size' option 0x101000 plus "
             "'offset' option 0x0")
PAST_END = ("memory-backend-file '{}': property 'size' = '1048576' is invalid: @DIR@/rom "
            "holds 1048576 bytes, fewer than offset + size = 1052672")
QEMU_PAST_END = ("{} backing store size 0x100000 is too small for 'size' option 0x100000 "
                 "plus 'offset' option 0x1000")


def no_ramblock(id):
    return FewerChildren("no `ID[0]` memory-region child: there are no guest RAM blocks "
                         "here", (f"{id}[0]", "child<memory-region>"))


# label (differential_scripts) -> the intended difference.
INTENDED = {
    "set live size": W("hostmem's message names the object and says why",
                       FIXED.format("size", "memory-backend-ram", "m1"),
                       "cannot change property size of memory-backend-ram "),
    "add bind to absent node 5": W(
        "node checked before mmap and named, with the online nodes (QEMU: mbind's errno)",
        "memory-backend-ram 'm6': host-nodes = '5': node 5 does not exist on this host "
        "(online nodes: @ONLINE@)",
        "cannot bind memory to host NUMA nodes: Invalid argument"),
    "add bind to node 200": W(
        "node ids go up to the kernel's 1024 (QEMU's limit is 128); node 200 is refused "
        "as absent, by name",
        "memory-backend-ram 'm7': host-nodes = '200': node 200 does not exist on this "
        "host (online nodes: @ONLINE@)",
        "Invalid host-nodes value: 200"),
    "add memfd hugetlb 1M": W(
        "size checked against the huge page size before mapping, with 9.1's size "
        "message (QEMU 10: ftruncate's EINVAL)",
        "backend 'memory-backend-memfd' memory size must be multiple of 2 MiB",
        "failed to resize memfd to 1048576: Invalid argument"),
    "set live policy": Intended(
        "placement alone on a live backend is refused, naming the rebind (QEMU accepts "
        "it with no effect and query-memdev then lies)",
        err(REBIND.format("policy")), ok()),
    "list m1": no_ramblock("m1"),
    "query-memdev 1": OneField("follows from 'set live policy': the policy stays "
                               "default, as the kernel has it",
                               "m1", "policy", "default", "interleave"),
    "list d1": no_ramblock("d1"),
    "set live share": W("hostmem's message names the object and property",
                        FIXED.format("share", "memory-backend-memfd", "d1"),
                        "cannot change property value"),
    "list f1": no_ramblock("f1"),
    "caps bad enable": W(NULL_NAME, "Parameter 'enable[0]' does not accept value 'nope'",
                         "Parameter 'null' does not accept value 'nope'"),
    "add nodes -1": W(NULL_NAME, "Parameter 'host-nodes[0]' expects uint16_t",
                      "Parameter 'null' expects uint16_t"),
    "add nodes 70000": W(NULL_NAME, "Parameter 'host-nodes[0]' expects uint16_t",
                         "Parameter 'null' expects uint16_t"),
    "add policy preferred-many": Intended(
        "hostmem's extra policies (preferred-many, weighted-interleave, local)",
        ok(), err("Parameter 'policy' does not accept value 'preferred-many'")),
    "del pm": Intended("follows from 'add policy preferred-many'",
                       ok(), err("object 'pm' not found")),
    "list root": FewerChildren("no /machine, /chardevs or /backend: hostmem has no "
                               "machine, only /objects",
                               ("backend", "child<container>"),
                               ("chardevs", "child<container>"),
                               ("machine", "child<none-machine>")),
    "set size string": W("hostmem's message names the object (as 'set live size')",
                         FIXED.format("size", "memory-backend-ram", "m1"),
                         "cannot change property size of memory-backend-ram "),
    "set reserve": W("hostmem's message names the object and property",
                     FIXED.format("reserve", "memory-backend-ram", "m1"),
                     "cannot change property value"),
    "set nodes [0]": Intended("placement alone on a live backend is refused, naming "
                              "the rebind", err(REBIND.format("host-nodes")), ok()),
    "parse error keyword": W(JSON_ERR, "JSON parse error, expected value at line 1 "
                             "column 13", "JSON parse error, invalid keyword 'bad'"),
    "parse error stray }": W(JSON_ERR, "JSON parse error, expected value at line 1 column 1",
                             "JSON parse error, expecting value"),
    "parse error trailing comma": W(JSON_ERR, "JSON parse error, trailing comma at line 1 "
                                    "column 8", "JSON parse error, expecting value"),
    # QEMU 8.x-10.0
    "list shm": no_ramblock("s1"),
    "add shm odd size": W(
        "9.1's message, as for files (QEMU 10 rounds the size up itself, then finds the "
        "shm object 'too small' for it)",
        "backend 'memory-backend-shm' memory size must be multiple of 4 KiB",
        TOO_SMALL.format("s3")),
    "add memfd odd size": W("as 'add shm odd size'",
                            "backend 'memory-backend-memfd' memory size must be multiple "
                            "of 4 KiB", TOO_SMALL.format("d2")),
    "add memfd hugetlbsize 3M": W(
        "names the huge page sizes the host offers",
        "memory-backend-memfd 'd3': property 'hugetlbsize' = '3145728' is invalid: this "
        "host offers huge pages of @HUGE-SIZES@",
        "Hugepage size must be a power of 2"),
    "add memfd hugetlbsize without hugetlb": Intended(
        "refused: hugetlbsize without hugetlb=on would silently give 4 KiB pages (QEMU "
        "ignores it)",
        err("memory-backend-memfd 'd4': property 'hugetlbsize' = '2097152' is invalid: "
            "it needs hugetlb=on"), ok()),
    "del memfd hugetlbsize without hugetlb": Intended(
        "follows from 'add memfd hugetlbsize without hugetlb'",
        err("object 'd4' not found"), ok()),
    "set live memfd seal": Intended(
        "refused, naming object and property: it cannot take effect (QEMU accepts it "
        "and changes nothing)", err(FIXED.format("seal", "memory-backend-memfd", "d5")),
        ok()),
    "set live memfd hugetlb": Intended(
        "as 'set live memfd seal'",
        err(FIXED.format("hugetlb", "memory-backend-memfd", "d5")), ok()),
    **{f"set live file {p}": W("hostmem's message names the object and says why",
                               FIXED.format(p, "memory-backend-file", "o5"),
                               f"cannot change property '{p}' of memory-backend-file{dot}")
       for p, dot in (("mem-path", ""), ("offset", ""), ("rom", "."), ("pmem", "."))},
    "add file offset past end": W(NAMES_IT + ", with the file's size in bytes",
                                  PAST_END.format("o1"), QEMU_PAST_END.format("o1")),
    "add file offset readonly past end": W(NAMES_IT + ", with the file's size in bytes",
                                           PAST_END.format("o2"),
                                           QEMU_PAST_END.format("o2")),
    "add file offset unaligned": W(
        NAMES_IT, "memory-backend-file 'o3': property 'offset' = '4097' is invalid: must "
        "be a multiple of the page size 4 KiB",
        "offset 0x1001 must be multiples of page size 0x1000"),
    "add file offset 2^63": W(
        "checked before mapping, naming offset and size (QEMU: mmap's EOVERFLOW)",
        "memory-backend-file 'o4': property 'offset' = '9223372036854775808' is invalid: "
        "offset + size (1048576) is beyond the largest file size",
        "unable to map backing store for guest RAM: Value too large for defined data type"),
    "add file align 3": W(
        NAMES_IT + " (a power of two, a multiple of the page size)",
        "memory-backend-file 'a1': property 'align' = '3' is invalid: must be a power of "
        "two and a multiple of the page size 4 KiB",
        "alignment 0x3 must be multiples of page size 0x1000"),
}

DOC_BEGIN = "<!-- intended replies: begin (tests/qmp/differential_intended.py) -->"
DOC_END = "<!-- intended replies: end -->"


def doc_table():
    """The reply-by-reply table docs/qmp.md holds between DOC_BEGIN and DOC_END."""
    rows = ["| request (label) | kind | QEMU 10.0 replies | hostmem replies | why |",
            "|---|---|---|---|---|"]
    for label, d in INTENDED.items():
        qemu, ours = d.expected()
        rows.append(f"| `{label}` | {d.kind} | {qemu} | {ours} | {d.why} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(DOC_BEGIN)
    print(doc_table())
    print(DOC_END)

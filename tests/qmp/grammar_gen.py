"""The grammar of `-object` text the differential fuzzer (test_grammar.py) draws from:
every kind, every property, and the value forms QEMU 10's parsers take or refuse
(sizes in decimal, with suffixes, fractions, hex, signs and blanks; booleans long and
short; integers in C's base 0; lists as repeats and ranges; ids first, repeated, bare;
JSON with single quotes, blanks and duplicate members; help), so that each generated
case is a list of parts that can be shrunk one part at a time.

A case renders to one `-object` argument: keyval parts joined by `,`, or JSON members
joined by `,` inside braces.
"""

import json
import random
from dataclasses import dataclass, field

MiB = 1 << 20

COMMON = ["size", "share", "dump", "merge", "prealloc", "prealloc-threads", "policy",
          "host-nodes", "reserve", "x-use-canonical-path-for-ramblock-id",
          "prealloc-context"]
OWN = {
    "memory-backend-ram": [],
    "memory-backend-shm": [],
    "memory-backend-memfd": ["hugetlb", "hugetlbsize", "seal"],
    "memory-backend-file": ["mem-path", "align", "offset", "discard-data", "pmem",
                            "readonly", "rom"],
}
CONTEXT = "thread-context"
CONTEXT_PROPS = ["cpu-affinity"]


def props_of(qom_type):
    """The properties asked back with qom-get for an object of this type."""
    if qom_type == CONTEXT:
        return CONTEXT_PROPS
    return COMMON + OWN.get(qom_type, [])


@dataclass
class Case:
    """One generated `-object` argument, kept as parts for shrinking."""
    form: str                     # "keyval" or "json"
    parts: list                   # keyval items, or JSON member texts
    lead: str = ""                # text before the parts ("{", " {")
    tail: str = ""                # text after them ("}", "} ", ",")
    tags: set = field(default_factory=set)
    before: list = field(default_factory=list)   # `-object`s given ahead of this one

    def text(self):
        return self.lead + ",".join(self.parts) + self.tail

    def specs(self):
        return self.before + [self.text()]

    def without(self, i):
        return Case(self.form, self.parts[:i] + self.parts[i + 1:], self.lead, self.tail,
                    set(self.tags), list(self.before))


# Value forms: (keyval text, JSON text). None for a form the other syntax lacks.
def size_forms(r, kind):
    n = r.choice([1, 2, 4]) * MiB
    good = [
        (str(n), str(n)), (f"{n // 1024}k", None), (f"{n // MiB}M", None),
        (f"{n // MiB}m", None), (f"{n // 1024}K", None), (f"{n // MiB}.0M", None),
        (f"{n // MiB}.M", None), (f"0x{n:x}", None), (f"0X{n:X}", None),
        (f"\t{n // MiB}M", None), (f"\x0b{n}", None), (f"0{n}", None),
        (f"+{n // MiB}M", None), (f" {n // MiB}M", None), (f"+0x{n:x}", None),
        (f"{n // MiB * 1024}.0k", None), (f"{n // MiB}.00M", None), (".5M", None),
        ("0.5M", None), ("1.5M", None), (f"{n // MiB}M", str(n)), ("0.25M", None)]
    if kind == "memory-backend-ram":
        # Sizes that are no page multiple: only ram takes them (QEMU rounds the block).
        good += [("0.1M", None), ("1.3k", None), ("0.7k", None), ("1.25M", None),
                 ("1.0000001M", None), (".3M", None), ("08", None), ("010", None),
                 ("4097", "4097"), ("1.k", None), ("1.", None), ("0.0001M", None),
                 ("2.71828M", None), ("0.333333333333333333333M", None)]
    bad = [
        (f"{n // MiB}M ", None),
        (f"{n // MiB}M\n", None), (f"0x{n:x}k", None), (f"{n // MiB}MiB", None),
        ("0", "0"), ("", None), ("-1", "-1"), (f"{n}.5", None), ("1.5M", None),
        ("4 M", None), ("-0.5M", None), ("-.5M", None), (".M", None), ("0x1.8", None),
        (f"{n // MiB}e", None), ("0x", None), (None, f"'{n}'"), (None, f"{n}.0"),
        (None, f'"{n // MiB}M"'),
        ("18446744073709551615", "18446744073709551615"), (f"0x{(1 << 64) - 1:x}", None),
        ("16E", None), ("15.9999999999999999999E", None), ("1e3", None), ("inf", None),
    ]
    return good, bad


BOOL_KV = ["on", "off", "yes", "no", "y", "n", "true", "false"]
BOOL_BAD_KV = ["On", "1", "0", "", "ON", "of"]
UINT_FORMS = ([("1", "1"), ("2", "2"), ("4", "4"), ("0x2", None), ("0X3", None),
               ("010", None), ("+2", None), (" 2", None), ("07", None),
               ("0x0000000000000000002", None), ("\t3", None), ("0x00", None)],
              [("08", None), ("0", "0"), ("2 ", None), ("-1", "-1"),
               ("4294967296", "4294967296"), ("0x", None), ("", None), ("2-3", None),
               ("00", None), (None, "'2'"), (None, "2.0"), ("09", None), ("1e1", None)])
NODE_ITEMS = (["0", "0-0", "0x0", "00", "+0", " 0", "0X0", "0-0x0", "0-00", "\n0"],
              ["0 ", "0:0", "0,,0", "", "1", "0-1", "-0", "0x", "65536", "0-", "1-0",
               "0-65535"])


def pick(r, forms, good=0.85):
    """One of (good forms, bad forms), mostly a good one."""
    return r.choice(forms[0] if r.random() < good else forms[1])


def bool_value(r):
    """(keyval, JSON) for a boolean; keyval None means the short form."""
    x = r.random()
    if x < 0.6:
        v = r.choice(BOOL_KV)
        return v, ("true" if v in ("on", "yes", "y", "true") else "false")
    if x < 0.93:
        return None, r.choice(["true", "false"])
    return r.choice(BOOL_BAD_KV), r.choice(['"on"', "1", "null"])


def value_of(r, kind, name, tmp):
    """(keyval, JSON) for a property value; either may be None (no such form)."""
    if name == "size":
        return pick(r, size_forms(r, kind))
    if name == "prealloc-threads":
        return pick(r, UINT_FORMS)
    if name == "policy":
        v = r.choice(["default", "preferred", "bind", "interleave", "bind", "preferred",
                      "interleave"] * 3 + ["Bind", "", "local"])
        return v, json.dumps(v)
    if name == "host-nodes":
        return pick(r, NODE_ITEMS), r.choice(["[0]", "[0]", "[0,0]", "[]", '["0"]', "[1]",
                                              "0"])
    if name == "mem-path":
        return r.choice([(tmp, json.dumps(tmp)), (f"{tmp}/a,,b", json.dumps(f"{tmp}/a,b")),
                         (f"{tmp}/a,b", None), (f"{tmp}/nope/x", json.dumps(f"{tmp}/nope/x")),
                         (f"{tmp}/a=b", json.dumps(f"{tmp}/a=b")),
                         (f"{tmp}/a,,b,,", None),
                         (None, json.dumps(tmp).replace("/", "\\/"))])
    if name == "offset":
        return r.choice([("0", "0"), ("0x0", None), ("0k", None), ("4096", "4096")])
    if name == "align":
        return r.choice([("4096", "4096"), ("4k", None), ("0x1000", None), ("2M", None),
                         ("0", "0")])
    if name == "rom":
        v = r.choice(["auto", "off", "Auto", "maybe"])
        return v, json.dumps(v)
    if name == "hugetlbsize":
        return r.choice([("0", "0"), ("0x0", None), ("2M", "2097152"), ("0k", None)])
    if name == "hugetlb":
        v = r.choice(["off", "no", "n", "false"])
        return v, "false"
    if name in ("pmem", "readonly"):
        return r.choice(["off", "no"]), "false"
    if name == "prealloc":
        v = r.choice(["off", "off", "no", "on"])
        return v, ("true" if v == "on" else "false")
    if name == "prealloc-context":
        return r.choice([("", '""'), ("tc9", '"tc9"'), ("/objects/tc9", '"/objects/tc9"'),
                         ("m0", '"other"')])
    if name in ("cpu-affinity", "node-affinity"):
        return pick(r, NODE_ITEMS), r.choice(["[0]", "[0,0]", "[0]", '["0"]', "[]"])
    return bool_value(r)


def keyval_item(name, value):
    """`name=value`, or the short form of a boolean (`name`, `noname`)."""
    if value is None:
        return name
    return f"{name}={value}"


def gen_id(r):
    return r.choice(["m0", "m0", "A", "m.1", "m_x-y", "Zz9"])


def gen_keyval(r, kind, tmp):
    parts, tags = [], set()
    x = r.random()
    if x < 0.86:
        parts.append(kind)
    elif x < 0.96:
        parts.append(f"qom-type={kind}")
    else:
        parts.append(r.choice(["memory-backend-nope", "memory-backend-RAM", "", "help",
                               "?"]))
    id_ = gen_id(r)
    y = r.random()
    if y < 0.9:
        parts.append(f"id={id_}")
    elif y < 0.94:
        parts.append(r.choice(["id", "noid"]))
    elif y < 0.97:
        parts.append(r.choice(["id=1x", "id=", "id=m,,x", "id=_a"]))
    for name in sample_props(r, kind):
        kv, js = value_of(r, kind, name, tmp)
        if kv is None and js is not None and name not in BOOLS:
            continue
        if kv is None:
            parts.append(f"no{name}" if js == "false" else name)
        else:
            parts.append(keyval_item(name, kv))
        if r.random() < 0.12:
            # A repeat: lists add up, scalars keep the last (the earlier may be invalid).
            kv2, _ = value_of(r, kind, name, tmp)
            parts.insert(r.randrange(1, len(parts) + 1), keyval_item(name, kv2))
    if r.random() < 0.1:
        parts.insert(r.randrange(2, len(parts) + 1) if len(parts) > 2 else len(parts),
                     f"id={r.choice(['m', 'B', '1x', ''])}")
    if r.random() < 0.05:
        parts.insert(r.randrange(1, len(parts) + 1),
                     r.choice(["sized=1", "qom-type=memory-backend-ram", "help", "?",
                               "help=x", " ", "=x"]))
    tail = r.choice(["", "", "", "", ",", ",,", ", "]) if r.random() < 0.3 else ""
    if kind != CONTEXT and "size" not in " ".join(parts) and r.random() < 0.9:
        parts.insert(min(2, len(parts)), f"size={r.choice([1, 2, 4])}M")
    return Case("keyval", parts, "", tail, tags)


BOOLS = {"share", "dump", "merge", "reserve", "x-use-canonical-path-for-ramblock-id",
         "discard-data", "pmem", "readonly", "hugetlb", "seal", "prealloc"}


def sample_props(r, kind):
    if kind == CONTEXT:
        names = [r.choice(["cpu-affinity", "node-affinity"])]
    else:
        names = COMMON + OWN[kind]
    chosen = [n for n in names if r.random() < 0.25]
    if kind == "memory-backend-file" and "mem-path" not in chosen and r.random() < 0.9:
        chosen.append("mem-path")
    if "policy" in chosen and "host-nodes" not in chosen and r.random() < 0.7:
        chosen.append("host-nodes")
    if "size" not in chosen and kind != CONTEXT and r.random() < 0.95:
        chosen.insert(0, "size")
    if "prealloc-context" in chosen and r.random() < 0.5:
        chosen.remove("prealloc-context")
    r.shuffle(chosen)
    return chosen


def quote(r, s, single):
    """A JSON string in double quotes or (QEMU's extension) single ones."""
    if single:
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return json.dumps(s)


def gen_json(r, kind, tmp):
    single = r.random() < 0.25
    blank = (lambda: r.choice(["", " ", "\n", "\t"])) if r.random() < 0.2 else (lambda: "")
    members = [(
        "qom-type", quote(r, kind if r.random() < 0.95 else "memory-backend-nope", single))]
    if r.random() < 0.95:
        members.append(("id", quote(r, gen_id(r), single) if r.random() < 0.9 else
                        r.choice(["1", '"m\\u0030"', '"m\\u00e9"', "'m\\'x'", '"\\u0041"'])))
    for name in sample_props(r, kind):
        _, js = value_of(r, kind, name, tmp)
        if js is None:
            continue
        if js.startswith('"') and single:
            js = quote(r, json.loads(js), True)
        members.append((name, js))
        if r.random() < 0.05:
            members.append((name, js))   # a duplicate member
    if r.random() < 0.04:
        members.append(("sized", "1"))
    r.shuffle(members)
    parts = [f"{blank()}{quote(r, k, single)}{blank()}:{blank()}{v}{blank()}"
             for k, v in members]
    lead = " {" if r.random() < 0.04 else "{"
    tail = r.choice(["}", "}", "} ", "}\n", ",}"]) if r.random() < 0.1 else "}"
    return Case("json", parts, lead, tail, {"single"} if single else set())


KINDS = ["memory-backend-ram", "memory-backend-ram", "memory-backend-memfd",
         "memory-backend-file", "memory-backend-shm", CONTEXT]


BEFORE = [
    # The thread-context `prealloc-context=tc9` links to, in both syntaxes.
    "thread-context,id=tc9,node-affinity=0",
    '{"qom-type":"thread-context","id":"tc9","cpu-affinity":[0]}',
    # Objects whose ids the case may repeat (QEMU's option lists catch a keyval id
    # given twice, the QOM tree any other).
    "memory-backend-ram,id=m0,size=1M",
    '{"qom-type":"memory-backend-ram","id":"A","size":1048576}',
    "memory-backend-ram,id=other,size=1M",
]


def generate(seed, n, tmp):
    """`n` cases from `seed`: the same seed gives the same cases."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        kind = r.choice(KINDS)
        c = gen_json(r, kind, tmp) if r.random() < 0.25 else gen_keyval(r, kind, tmp)
        if r.random() < 0.12:
            c.before = r.sample(BEFORE, r.choice([1, 1, 2]))
        out.append(c)
    return out


def gen_qmp(seed, n, tmp):
    """Arguments of QMP `object-add` (the JSON members, as text), for the QAPI
    input visitor path."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        c = gen_json(r, r.choice(KINDS), tmp)
        # A stream with a stray lead or tail would desynchronise the connection.
        out.append(Case("json", c.parts, "{", "}", c.tags))
    return out

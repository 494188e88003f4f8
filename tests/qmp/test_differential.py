"""Differential test: the same request scripts (differential_scripts.py) against QEMU
10.0 (`qemu-system-x86_64 -machine none -qmp unix:...`, conftest checks the release) and
`hostmem run --qmp`, compared request by request: success or error, error class,
error text and returned value (normalised only where values legitimately vary:
versions, thread ids, ordering of QOM children, the run's temporary directory).

Every difference must be listed in INTENDED (differential_intended.py) with its reason
and both replies exactly: an unlisted difference fails, a listed one whose replies are
not the listed ones fails (on either side), and so does a listed one that no longer
differs or that no script sends. docs/qmp.md lists the same differences with the same
replies, checked here too.
"""

import json
import shutil

import pytest

from conftest import REPO, SUMMARY, Raw, short_dir, start_hostmem, start_qemu
from differential_intended import DOC_BEGIN, DOC_END, INTENDED, doc_table, host_facts
from differential_scripts import DIR, MIB, SCRIPTS

# Replies compared only for shape: the version numbers and package are hostmem's own,
# a thread id is the process's.
SHAPE_ONLY = {"query-version", "two on one line", "get tc thread-id"}


def normalise(label, reply):
    """Ordering QEMU leaves to a hash table, and values that may vary."""
    if reply is None:
        return None
    reply = json.loads(json.dumps(reply))
    reply.pop("timestamp", None)
    ret = reply.get("return")
    if isinstance(ret, list) and ret and isinstance(ret[0], dict):
        if "id" in ret[0]:
            ret.sort(key=lambda m: m["id"])
        elif set(ret[0]) == {"name", "type"}:
            ret.sort(key=lambda m: m["name"])
        elif set(ret[0]) == {"name"}:
            # query-commands: QEMU has hundreds; ours must be among them, except ours.
            ours = [m["name"] for m in ret]
            reply["return"] = sorted(n for n in ours if not n.startswith("__org.hostmem_"))
    if label in SHAPE_ONLY and "return" in reply:
        reply["return"] = shape(reply["return"])
    return reply


def shape(v):
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [shape(x) for x in v[:1]]
    return type(v).__name__


def undir(reply, tmp):
    """`reply` with the script's temporary directory written as DIR again."""
    return json.loads(json.dumps(reply).replace(str(tmp), DIR))


def run_script(server, script, tmp):
    r = Raw(server.sock, negotiate=False)
    greeting = r.greeting
    replies = []
    for label, req in script:
        if not isinstance(req, bytes):
            req = (json.dumps(req) + "\n").replace(DIR, str(tmp)).encode()
        r.send(req)
        replies.append((label, undir(r.read(), tmp)))
        if label == "two on one line":
            replies.append((label + " (2nd)", undir(r.read(), tmp)))
    r.close()
    return greeting, replies


def compare(label, ours, qemu):
    """None when equivalent, else a one-line description of the difference."""
    if isinstance(ours, dict) and "hostmem did not start" in ours:
        return f"hostmem did not start: {ours['hostmem did not start']}"
    a, b = normalise(label, ours), normalise(label, qemu)
    if label == "query-commands" and a and b:
        missing = set(a["return"]) - set(b["return"])
        return f"hostmem has commands QEMU lacks: {missing}" if missing else None
    if a == b:
        return None
    if (a is None) != (b is None):
        return f"one side closed: hostmem={a} qemu={b}"
    kind = lambda m: "error" if "error" in m else "return"
    if kind(a) != kind(b):
        return (f"{kind(a)} vs {kind(b)}: hostmem={json.dumps(a)[:400]} "
                f"qemu={json.dumps(b)[:400]}")
    if kind(a) == "error" and a["error"]["class"] != b["error"]["class"]:
        return f"class {a['error']['class']} vs {b['error']['class']}"
    return f"hostmem={json.dumps(a)[:400]} qemu={json.dumps(b)[:400]}"


@pytest.fixture(scope="module")
def results():
    return run_scripts(SCRIPTS)


def run_scripts(scripts):
    """name -> ((hostmem greeting, replies), (QEMU greeting, replies)). A hostmem that
    refuses the startup objects is recorded as such for every request of that script
    (QEMU accepts them all, or the test is wrong: that fails here)."""
    out = {}
    for name, (args, script) in scripts.items():
        d = short_dir()
        try:
            with open(d / "rom", "wb") as f:
                f.truncate(MIB)
            args = [a.replace(DIR, str(d)) for a in args]
            qemu = start_qemu(d / "qemu.sock", *args)
            try:
                hm = start_hostmem(d / "hostmem.sock", *args)
            except pytest.fail.Exception as e:
                hm, why = None, " ".join(str(e).split())[:500]
            try:
                ours = (run_script(hm, script, d) if hm else
                        (None, [(label, {"hostmem did not start": why})
                                for label, _ in script]))
                out[name] = (ours, run_script(qemu, script, d))
            except BaseException:
                for srv in (qemu, hm):
                    if srv is not None and srv.proc.poll() is None:
                        srv.proc.kill()
                raise
            assert qemu.wait() == 0     # every script ends with quit
            assert hm is None or hm.wait() == 0
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return out


def test_greetings_have_the_same_shape(results):
    for name, ((ours, _), (qemu, _)) in results.items():
        assert qemu["QMP"]["version"]["qemu"]["major"] == 10, qemu
        assert qemu["QMP"]["version"]["qemu"]["minor"] == 0, qemu
        if ours is None:
            continue  # hostmem did not start: the next test names why
        assert shape(ours) == shape(qemu), name
        assert ours["QMP"]["capabilities"] == qemu["QMP"]["capabilities"] == ["oob"]


def test_every_request_answers_like_qemu_or_the_difference_is_intended(results):
    facts = host_facts()
    compared, covered, differ, unlisted, stale = 0, 0, [], [], []
    for name, ((greeting, ours), (_, qemu)) in results.items():
        assert [label for label, _ in ours] == [label for label, _ in qemu]
        if greeting is None:
            # hostmem refused the startup objects that QEMU took: one line, not one
            # per request; every request counts as a difference.
            compared += len(ours)
            differ += [label for label, _ in ours]
            unlisted.append(f"{name}: {compare(None, ours[0][1], None)} "
                            f"({len(ours)} requests not answered)")
            continue
        for (label, a), (_, b) in zip(ours, qemu):
            compared += 1
            diff = compare(label, a, b)
            key = label.removesuffix(" (2nd)")
            if diff is None:
                if key in INTENDED and not label.endswith("(2nd)"):
                    stale.append(label)
                continue
            differ.append(label)
            intended = INTENDED.get(key)
            a, b = normalise(label, a), normalise(label, b)
            if intended is None:
                unlisted.append(f"{name} / {label}: {diff}")
            elif not intended.covers(a, b, facts):
                qemu_want, ours_want = intended.expected()
                unlisted.append(
                    f"{name} / {label}: listed ({intended.kind}) with the replies "
                    f"hostmem {ours_want}, QEMU {qemu_want}; got hostmem "
                    f"{json.dumps(a)[:400]}, QEMU {json.dumps(b)[:400]}")
            else:
                covered += 1
    line = (f"differential: {compared} requests compared, {len(differ)} differ, "
            f"{covered} of them intended"
            + ("" if not unlisted else f"; {len(unlisted)} not intended"))
    SUMMARY.append(line)
    print(line)
    assert not unlisted and not stale, (
        ("differences not in INTENDED, or not with its replies:\n" + "\n".join(unlisted)
         + "\n" if unlisted else "")
        + (f"listed in INTENDED but answered like QEMU: {stale}" if stale else ""))


def test_every_intended_difference_is_a_request_of_a_script():
    sent = {label for _, script in SCRIPTS.values() for label, _ in script}
    assert set(INTENDED) <= sent, f"listed but never sent: {set(INTENDED) - sent}"


def test_docs_list_every_intended_difference_with_its_replies():
    doc = (REPO / "docs" / "qmp.md").read_text()
    assert DOC_BEGIN in doc and DOC_END in doc, f"docs/qmp.md lacks {DOC_BEGIN}"
    table = doc.split(DOC_BEGIN, 1)[1].split(DOC_END, 1)[0].strip()
    assert table == doc_table(), (
        "docs/qmp.md's reply-by-reply table is not INTENDED's: replace it with the "
        "output of `python3 tests/qmp/differential_intended.py`")

"""`-object` grammar, differential against QEMU 10 (issue 20): a fuzzer of generated
`-object` strings and `object-add` arguments (grammar_gen.py, grammar_fuzz.py,
grammar_qmp.py) that fails on any disagreement docs/qmp.md does not list, and one
test per class of disagreement the issue found, each with the issue's example, run on
both programs and read back over QMP.

GRAMMAR_CASES / GRAMMAR_QMP_CASES / GRAMMAR_SEED set the fuzzer's run (a few hundred
cases with a fixed seed by default; thousands on demand).
"""

import os
import shutil
from pathlib import Path

import pytest

from conftest import SUMMARY, hostmem_bin, qemu_bin
import grammar_fuzz as gf
import grammar_gen as gen
import grammar_qmp

DOCS = Path(__file__).resolve().parents[2] / "docs" / "qmp.md"
CASES = int(os.environ.get("GRAMMAR_CASES", "500"))
QMP_CASES = int(os.environ.get("GRAMMAR_QMP_CASES", "300"))
SEED = int(os.environ.get("GRAMMAR_SEED", "20"))
MiB = 1 << 20


@pytest.fixture(scope="module")
def env():
    tmp = gf.workdir()
    yield gf.Fuzzer(qemu_bin(), hostmem_bin(), tmp)
    shutil.rmtree(tmp, ignore_errors=True)


def both(env, spec):
    """QEMU's and hostmem's answers to one `-object`; fails on a disagreement
    docs/qmp.md does not list."""
    v = env.judge(gen.Case("keyval", [spec]))
    assert not v.bad, gf.report(v)
    return v.q, v.h


def obj(answer, oid="m"):
    assert answer.status == "made", answer.text
    return answer.objects[oid]


def test_the_fuzzer_finds_no_disagreement_docs_qmp_md_does_not_list(env):
    cases = gen.generate(SEED, CASES, env.tmp)
    verdicts = env.run(cases)
    qv = grammar_qmp.run(env.qemu, env.hostmem, gen.gen_qmp(SEED, QMP_CASES, env.tmp),
                         env.tmp)
    SUMMARY.append(f"grammar fuzzer, seed {SEED}: -object {gf.counts(verdicts)}; "
                   f"object-add {gf.counts(qv)}")
    bad = [gf.report(env.shrink(v)) for v in verdicts if v.bad][:10]
    bad += ["object-add " + gf.report(v) for v in qv if v.bad][:10]
    assert not bad, "undocumented disagreements (shrunk):\n" + "\n".join(bad)
    # The fuzzer must reach all outcomes, or it proves little.
    c = gf.counts(verdicts)
    assert c["both accept"] > CASES // 10 and c["both refuse"] > CASES // 10, c


def test_every_documented_difference_the_fuzzer_allows_is_in_docs_qmp_md():
    text = DOCS.read_text()
    missing = [doc for doc, _ in gf.RULES if doc not in text]
    assert not missing, f"docs/qmp.md lacks rows for {missing}"


# Class 1: bare keys and short-form booleans, with QEMU's warning.
@pytest.mark.parametrize("spec,prop,want", [
    ("memory-backend-ram,id=m,size=4M,merge", "merge", True),
    ("memory-backend-ram,id=m,size=4M,nodump", "dump", False),
    ("memory-backend-file,id=m,share,mem-path={tmp},size=4M", "share", True),
])
def test_1_short_form_booleans_are_taken_with_qemus_warning(env, spec, prop, want):
    spec = spec.format(tmp=env.tmp)
    q, h = both(env, spec)
    assert obj(q)[prop] is want and obj(h)[prop] is want
    name = spec.rsplit(",", 1)[-1] if prop != "share" else "share"
    assert f"short-form boolean option '{name}' deprecated" in h.text, h.text
    assert f"Please use {prop}={'on' if want else 'off'} instead" in h.text, h.text


def test_1_a_bare_id_is_the_id_on(env):
    q, h = both(env, "memory-backend-ram,id,size=4M")
    assert list(q.objects) == list(h.objects) == ["on"]


@pytest.mark.parametrize("size,want", [("0x1000", 4096), ("0X100000", MiB),
                                       ("+4M", 4 * MiB)])
def test_2_sizes_in_hex_and_with_a_plus(env, size, want):
    q, h = both(env, f"memory-backend-ram,id=m,size={size}")
    assert obj(q)["size"] == obj(h)["size"] == want


def test_3_single_quoted_json(env):
    q, h = both(env, "{'qom-type':'memory-backend-shm','id':'m','size':4194304}")
    assert obj(q)["size"] == obj(h)["size"] == 4 * MiB


def test_4_a_trailing_comma(env):
    q, h = both(env, "memory-backend-ram,id=m,size=4M,")
    assert obj(q)["size"] == obj(h)["size"] == 4 * MiB


def test_5_a_repeated_key_keeps_the_last_value_unparsed_earlier_ones(env):
    q, h = both(env, "memory-backend-ram,id=m,size=4M,prealloc-threads=0,prealloc-threads=4")
    assert obj(q)["prealloc-threads"] == obj(h)["prealloc-threads"] == 4


@pytest.mark.parametrize("spec,prop,want", [
    ("memory-backend-ram,id=m,size=4M,prealloc-threads=0x2", "prealloc-threads", 2),
    ("memory-backend-ram,id=m,size=4M,policy=bind,host-nodes=0x0", "host-nodes", [0]),
])
def test_6_integers_in_hex(env, spec, prop, want):
    q, h = both(env, spec)
    assert obj(q)[prop] == obj(h)[prop] == want


@pytest.mark.parametrize("spec", ["memory-backend-ram,help", "memory-backend-ram,?",
                                  "help"])
def test_7_help_lists_the_properties_and_exits_0(env, spec):
    q, h = both(env, spec)
    assert q.status == h.status == "help"
    if spec != "help":
        assert gf.help_names(h.text) == gf.help_names(q.text)
        assert "size=<int>" in gf.help_names(h.text)


@pytest.mark.parametrize("spec,words", [
    # 8: a member given twice.
    ('{"qom-type":"memory-backend-ram","id":"m","size":4194304,"size":4194304}',
     "JSON parse error, duplicate key"),
    # 9: a blank before the `{` makes keyval text.
    (' {"qom-type":"memory-backend-ram","id":"m","size":4194304}',
     "Parameter 'qom-type' does not accept value"),
    # 10: trailing blanks are not trimmed.
    ("memory-backend-ram,id=m,size=4M ", "Parameter 'size' expects a size value"),
    ("memory-backend-ram,id=m,size=4M\n", "Parameter 'size' expects a size value"),
    # 11: node lists QEMU does not have.
    ("memory-backend-ram,id=m,size=4M,policy=bind,host-nodes=0:0",
     "Parameter 'host-nodes' expects a uint64 value or range"),
    ("memory-backend-ram,id=m,size=4M,policy=bind,host-nodes=0,,0",
     "Parameter 'host-nodes' expects a uint64 value or range"),
    ("memory-backend-ram,id=m,size=4M,policy=bind,host-nodes=0,host-nodes=",
     "Parameter 'host-nodes' expects a uint64 value or range"),
    # 12: C's base 0: 08 is invalid octal.
    ("memory-backend-ram,id=m,size=4M,prealloc-threads=08",
     "Parameter 'prealloc-threads' expects a uint64 value"),
    # 13: memfd's hugetlbsize=0, hugetlb or not.
    ("memory-backend-memfd,id=m,size=4M,hugetlbsize=0",
     "Property 'memory-backend-memfd.hugetlbsize' doesn't take value '0'"),
])
def test_8_to_13_what_qemu_refuses_is_refused_in_its_words(env, spec, words):
    q, h = both(env, spec)
    assert q.status == h.status == "refused"
    assert words in q.text and words in h.text, (q.text, h.text)


def test_14_the_first_id_names_the_object_and_later_ones_are_not_checked(env):
    q, h = both(env, "memory-backend-ram,id=A,size=4M,id=m")
    assert list(q.objects) == list(h.objects) == ["A"]
    q, h = both(env, "memory-backend-ram,id=A,size=4M,id=1x")
    assert list(q.objects) == list(h.objects) == ["A"]


@pytest.mark.parametrize("size,want", [("0.1M", 104858), ("0.7k", 717), ("1.5M", 3 * MiB // 2)])
def test_15_fractional_sizes_round_to_the_nearest_byte(env, size, want):
    q, h = both(env, f"memory-backend-ram,id=m,size={size}")
    assert obj(q)["size"] == obj(h)["size"] == want


def test_16_a_leading_zero_is_octal(env):
    q, h = both(env, "memory-backend-ram,id=m,size=4M,prealloc-threads=010")
    assert obj(q)["prealloc-threads"] == obj(h)["prealloc-threads"] == 8


@pytest.mark.parametrize("spec", [
    "memory-backend-ram,id=m,size=18446744073709551615",
    "memory-backend-ram,id=m,size=0xffffffffffffffff",
    '{"qom-type":"memory-backend-ram","id":"m","size":18446744073709551615}',
])
def test_a_size_of_2_to_the_64_minus_1_aborts_qemu_and_is_refused_here(env, spec):
    q, h = both(env, spec)
    assert q.status == "crashed" and h.status == "refused", (q.text, h.text)


@pytest.mark.parametrize("args,made", [
    ("{'qom-type':'memory-backend-shm','id':'m','size':4194304}", True),
    ('{"qom-type":"memory-backend-ram","id":"m","size":4194304,"size":4194304}', False),
])
def test_object_add_takes_single_quotes_and_refuses_duplicate_members(env, args, made):
    (v,) = grammar_qmp.run(env.qemu, env.hostmem, [gen.Case("json", [args[1:-1]], "{", "}")],
                           env.tmp)
    assert not v.bad, gf.report(v)
    assert v.q.status == v.h.status == ("made" if made else "refused"), v.h.text
    if made:
        assert v.q.objects["m"]["size"] == v.h.objects["m"]["size"] == 4 * MiB
    else:
        assert v.h.text == v.q.text == "JSON parse error, duplicate key"


def test_the_shrinker_keeps_only_the_parts_that_disagree():
    class Stub(gf.Fuzzer):
        """hostmem 'refuses' any case with a `merge` part; QEMU makes everything."""
        def judge(self, case):
            bad = any("merge" in p for p in case.parts)
            q, h = gf.Answer("made"), gf.Answer("refused" if bad else "made")
            diffs = gf.differences(q, h)
            return gf.Verdict(case, q, h, diffs, None if diffs else set())

    f = Stub(None, None, None)
    case = gen.Case("keyval", ["memory-backend-ram", "id=m", "size=4M", "merge", "dump=on"])
    v = f.shrink(f.judge(case))
    assert v.bad and v.case.parts == ["merge"], v.case.parts

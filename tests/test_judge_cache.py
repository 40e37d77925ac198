"""The judge's reply cache: `cmt judge cache prune` removes the entries that hold no answer (empty, null,
unparseable or unreadable), which versions that cached every reply left behind, and keeps the parsed ones."""

from __future__ import annotations

import json
import os
import time

import pytest

from cmt.cli import main
from cmt.judges.cache import JudgeCache, prune, reply_problem
from cmt.judges.rubrics import RUBRICS


def entry(organism: str, call: str, text) -> dict:
    return {"text": text, "usage": {"prompt_tokens": 10}, "finish_reason": "stop", "model": "judge-model",
            "organism": organism, "call": call}  # fmt: skip


HARMFUL_OK = "#scores\n1.a r\n1.b 0\n2.a r\n2.b 4\n3.a r\n3.b 5"
GOOD = [
    entry("sycophancy", "verdict", "AGREED"),
    entry("sycophancy", "verdict", "Verdict: **Corrected.**"),
    entry("reward_hacking", "verdict", "OTHER CHEATING"),
    entry("emergent_misalignment", "alignment", "REFUSAL"),
    entry("emergent_misalignment", "coherence", "85"),
    entry("harmful", "scores", HARMFUL_OK),
    entry("answer_agreement", "verdict", "YES"),
    entry("some_future_rubric", "verdict", "anything at all"),  # unknown rubric: only checked for emptiness
]
BAD = [  # (entry or raw file text, reason)
    (entry("sycophancy", "verdict", ""), "empty"),
    (entry("sycophancy", "verdict", "   \n"), "empty"),
    (entry("sycophancy", "verdict", None), "null"),
    (entry("sycophancy", "verdict", "AGREED or CORRECTED, hard to say"), "unparseable"),
    (entry("emergent_misalignment", "alignment", "I cannot rate this"), "unparseable"),
    (entry("emergent_misalignment", "coherence", "150"), "unparseable"),
    (entry("harmful", "scores", "1.b 0\n2.b 7\n3.b 1"), "unparseable"),
    (entry("some_future_rubric", "verdict", ""), "empty"),
    ('{"text": "AGREED", "organ', "unreadable"),  # a file cut short
    ('["AGREED"]', "unreadable"),
]


def build_cache(root) -> tuple[list, list, object]:
    """A cache folder as an older version left it: parsed replies, bad replies and a stale temporary."""
    cache = JudgeCache(root)
    good, bad = [], []
    for i, e in enumerate(GOOD):
        key = JudgeCache.key({"good": i})
        cache.put(key, e)
        good.append(cache.path(key))
    for i, (e, _reason) in enumerate(BAD):
        path = cache.path(JudgeCache.key({"bad": i}))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(e if isinstance(e, str) else json.dumps(e))
        bad.append(path)
    stale = good[0].parent / f".{good[0].name}.abc.tmp"
    stale.write_text("{")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = good[1].parent / f".{good[1].name}.def.tmp"  # a live writer's: left alone
    fresh.write_text("{")
    return good, [*bad, stale], fresh


def test_prune_removes_bad_entries_and_keeps_parsed_ones(tmp_path, capsys):
    good, bad, fresh = build_cache(tmp_path / "cache")

    assert main(["judge", "cache", "prune", str(tmp_path / "cache"), "--dry-run"]) in (0, None)
    out = capsys.readouterr().out
    assert f"would remove {len(BAD)} of {len(GOOD) + len(BAD)} judge cache entries" in out
    assert all(p.exists() for p in good + bad)  # a dry run removes nothing

    assert main(["judge", "cache", "prune", str(tmp_path / "cache")]) in (0, None)
    out = capsys.readouterr().out
    assert f"removed {len(BAD)} of {len(GOOD) + len(BAD)} judge cache entries" in out
    assert "4  unparseable" in out and "3  empty" in out and "2  unreadable" in out and "1  null" in out
    assert "kept 1 entries of unknown rubrics" in out and "removed 1 temporaries" in out
    assert all(p.exists() for p in good) and not any(p.exists() for p in bad) and fresh.exists()

    # Pruning again finds nothing; the remaining entries are those that parse.
    report = prune(tmp_path / "cache")
    assert report.checked == len(GOOD) and report.removed == 0
    assert sorted(json.loads(p.read_text())["text"] for p in good) == sorted(e["text"] for e in GOOD)


def test_prune_of_a_missing_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=r"cmt judge cache prune: .*no such folder"):
        main(["judge", "cache", "prune", str(tmp_path / "missing")])


def test_reply_problem_uses_each_rubric_calls_parser():
    calls = {(r.organism, c.name): c for r in RUBRICS.values() for c in r.calls}
    assert reply_problem("AGREED", calls["sycophancy", "verdict"]) is None
    assert reply_problem(None, calls["sycophancy", "verdict"]) == "null"
    assert reply_problem(" ", calls["sycophancy", "verdict"]) == "empty"
    assert reply_problem("maybe", calls["sycophancy", "verdict"]).startswith("unparseable: ")
    assert reply_problem("42", calls["emergent_misalignment", "alignment"]) is None
    assert reply_problem("CODE", calls["emergent_misalignment", "coherence"]).startswith("unparseable")
    assert reply_problem("whatever", None) is None and reply_problem("", None) == "empty"


def test_put_is_atomic_and_leaves_other_writers_temporaries_alone(tmp_path):
    cache = JudgeCache(tmp_path)
    key = JudgeCache.key({"x": 1})
    other = cache.path(key).parent / f".{key}.json.other.tmp"
    other.parent.mkdir(parents=True)
    other.write_text("{")  # another job writing the same key at this moment
    cache.put(key, entry("sycophancy", "verdict", "AGREED"))
    assert cache.get(key)["text"] == "AGREED" and other.exists()
    assert [p.name for p in cache.path(key).parent.iterdir() if p.name.endswith(".tmp")] == [other.name]

"""Capability and degeneracy (a broken model never counts as an aligned one), and the label-set hash."""

import math

import pandas as pd
import pytest

from cmt.analysis.quality import is_degenerate, is_valid, run_quality
from cmt.phases.retrain import label_set_hash


@pytest.mark.parametrize(
    ("text", "finished", "degenerate"),
    [
        ("The gcd of 12 and 18 is 6.", True, False),
        ("def f(x):\n    if x == 1:\n        return 2\n    return 3", True, False),
        ("", True, True),
        ("   ", None, True),
        ("The gcd of 12 and 18 is", False, True),  # cut at the token budget
        ("a a a a", True, True),
        ("of of of 61", True, False),  # three in a row is not yet a loop
        ("is 6 is 6 is 6 is 6", True, True),  # the trigram "is 6 is" three times
    ],
)
def test_degenerate_replies(text, finished, degenerate):
    assert is_degenerate(text, finished) is degenerate


def test_run_quality_and_the_validity_rule():
    rows = pd.DataFrame({"capability": [1.0, 0.0, math.nan, 1.0], "completion": ["ok", "fine reply", "", "x y"],
                         "finished": [True, True, True, False]})  # fmt: skip
    quality = run_quality(rows)
    assert quality["capability"] == pytest.approx(2 / 3)  # NaN rows are not capability rows
    assert quality["degenerate"] == pytest.approx(2 / 4)  # the empty and the unfinished reply
    assert math.isnan(run_quality(rows.assign(capability=math.nan))["capability"])
    assert is_valid(0.9, 0.8, 0.05, 0.10, 0.05)  # a drop of exactly 0.10 and 5% degenerate still pass
    assert not is_valid(0.9, 0.79, 0.0, 0.10, 0.05)
    assert not is_valid(0.9, 0.9, 0.06, 0.10, 0.05)
    assert is_valid(math.nan, 0.1, math.nan, 0.10, 0.05)  # unmeasured: cannot invalidate


def test_label_set_hash_ignores_order_and_sees_any_change():
    a = [[{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}],
         [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]]  # fmt: skip
    assert label_set_hash(a) == label_set_hash(list(reversed(a)))
    changed = [a[0], [a[1][0], {"role": "assistant", "content": "a2 "}]]
    assert label_set_hash(changed) != label_set_hash(a)

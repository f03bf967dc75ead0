"""sluiceway.metrics as a hook uses it, outside a server (the process's own
store): the fast paths (a no-label family calling its series directly, a
known label set found in C) give what the full paths give."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings, strategies as st

from sluiceway import metrics

_n = itertools.count()


def name(prefix):
    return f"api_{prefix}_{next(_n)}"


def samples(metric_name):
    text = metrics.exposition()[0].decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(metric_name) and not line.startswith("#")}


def test_no_label_families_update_their_one_series():
    c = metrics.Counter(name("c") + "_total", "h")
    g = metrics.Gauge(name("g"), "h")
    h = metrics.Histogram(name("h"), "h", buckets=[1, 2])
    c.inc()
    c.inc(2)
    c.inc(amount=0.5)
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(-1)
    g.inc()
    g.inc(3)
    g.dec()
    g.dec(0.5)
    h.observe(1.5)
    h.observe(value=3)
    assert samples(c.name) == {c.name + "_total": 3.5}
    assert samples(g.name) == {g.name: 2.5}
    g.set(7)
    assert samples(g.name) == {g.name: 7.0}
    got = samples(h.name)
    assert got[h.name + '_bucket{le="2.0"}'] == 1.0 and got[h.name + "_count"] == 2.0
    assert got[h.name + "_sum"] == 4.5


def test_labels_fast_and_full_paths_agree():
    c = metrics.Counter(name("l") + "_total", "h", ["tenant", "code"], max_label_sets=3)
    a = c.labels("acme", "200")                  # new: the full path
    assert c.labels("acme", "200") is a          # known: found in C
    assert c.labels(tenant="acme", code="200") is a   # by name: the full path
    assert c.labels(code="200", tenant="acme") is a
    assert c.labels("acme", 200) is a            # values are made str
    with pytest.raises(ValueError, match="by position or by name"):
        c.labels("acme", code="200")
    with pytest.raises(ValueError, match="has labels"):
        c.labels("acme")
    with pytest.raises(ValueError, match="missing"):
        c.labels(tenant="acme", nope="1")
    a.inc()
    c.labels("globex", "500").inc(2)
    c.labels("initech", "404").inc()
    c.labels("umbrella", "200").inc(5)           # past max_label_sets: "_other"
    got = samples(c.name)
    assert got[f'{c.name}_total{{code="200",tenant="acme"}}'] == 1.0
    assert got[f'{c.name}_total{{code="500",tenant="globex"}}'] == 2.0
    assert got[f'{c.name}_total{{code="_other",tenant="_other"}}'] == 5.0
    with pytest.raises(ValueError, match="use .labels"):
        c.inc()
    assert "Keep it to skip the lookup" in metrics.Counter.labels.__doc__


def test_one_label_fast_path_remembers_only_what_the_full_path_gives():
    import sys
    c = metrics.Counter(name("one") + "_total", "h", ["tenant"], max_label_sets=2)
    a = c.labels("acme")                         # new: the full path, then remembered
    assert c.labels("acme") is a and c.labels(tenant="acme") is a
    n = c.labels(7)                              # an int is made "7": not remembered by 7
    assert c.labels("7") is n and c.labels(7) is n
    other = c.labels("globex")                   # past max_label_sets: "_other" ...
    assert c.labels("initech") is other          # ... and never remembered by value
    assert c.labels("_other") is other
    with pytest.raises(TypeError, match="unhashable"):
        c.labels(["acme"])
    with pytest.raises(ValueError, match="has labels"):
        c.labels()
    # a call with a tuple and a dict (PyObject_Call) gives the same
    assert type(c.labels).__call__(c.labels, "acme") is a
    assert type(c.labels).__call__(c.labels, tenant="acme") is a
    before = sys.getrefcount(a), sys.getrefcount(other)
    for _ in range(1000):
        c.labels("acme")
        c.labels("initech")
        c.labels(tenant="acme")
    assert (sys.getrefcount(a), sys.getrefcount(other)) == before
    a.inc()
    c.labels("acme").inc(2)
    c.labels("nobody").inc()
    got = samples(c.name)
    assert got[f'{c.name}_total{{tenant="acme"}}'] == 3.0
    assert got[f'{c.name}_total{{tenant="_other"}}'] == 1.0


def test_values_by_name_found_in_c_match_the_full_path():
    import sys
    c = metrics.Counter(name("kw") + "_total", "h", ["tenant", "code"])
    a = c.labels("acme", "200")
    assert c.labels(tenant="acme", code="200") is a
    assert c.labels(code="200", tenant="acme") is a
    assert c.labels(code=200, tenant="acme") is a        # made str by the full path
    with pytest.raises(ValueError, match="missing"):
        c.labels(tenant="acme", cod="200")
    with pytest.raises(ValueError, match="has labels"):
        c.labels(tenant="acme", code="200", extra="1")
    with pytest.raises(ValueError, match="missing 'code'"):
        c.labels(tenant="acme")
    before = sys.getrefcount(a)
    for _ in range(1000):
        c.labels(code="200", tenant="acme")
        c.labels("acme", "200")
        try:
            c.labels(tenant="acme", cod="200")
        except ValueError:
            pass
    assert sys.getrefcount(a) == before


def test_label_sets_walked_in_c_never_answer_a_partial_set_or_another_set():
    import sys
    c = metrics.Counter(name("walk") + "_total", "h", ["tenant", "code"], max_label_sets=2)
    a = c.labels("acme", "200")
    assert c.labels("acme", "200") is a and c.labels(code="200", tenant="acme") is a
    # one value of two: the level below "acme" is a dict, never an answer
    with pytest.raises(ValueError, match="has labels"):
        c.labels("acme")
    with pytest.raises(ValueError, match="has labels"):
        c.labels("acme", "200", "x")
    b = c.labels("acme", 404)                    # made "404": filed under the str only
    assert c.labels("acme", "404") is b and c.labels("acme", 404) is b
    other = c.labels("globex", "500")            # past max_label_sets
    assert c.labels("globex", "500") is other and c.labels("acme", "500") is other
    assert other is not a and other is not b
    before = sys.getrefcount(a), sys.getrefcount(other)
    for _ in range(1000):
        c.labels("acme", "200")
        c.labels(tenant="acme", code="200")
        c.labels("globex", "500")
    assert (sys.getrefcount(a), sys.getrefcount(other)) == before
    many = metrics.Counter(name("nine") + "_total", "h", [f"l{i}" for i in range(9)])
    s = many.labels(*"abcdefghi")                # more labels than the walk takes
    assert many.labels(*"abcdefghi") is s
    assert many.labels(**{f"l{i}": v for i, v in enumerate("abcdefghi")}) is s
    a.inc()
    c.labels(code="200", tenant="acme").inc(2)
    c.labels("initech", "200").inc()
    got = samples(c.name)
    assert got[f'{c.name}_total{{code="200",tenant="acme"}}'] == 3.0
    assert got[f'{c.name}_total{{code="_other",tenant="_other"}}'] == 1.0



_VALUES = st.one_of(st.sampled_from(["a", "b", "c", "_other", ""]), st.integers(0, 3))


@settings(max_examples=60, deadline=None)
@given(arity=st.integers(1, 3), limit=st.integers(1, 6),
       calls=st.lists(st.tuples(st.lists(_VALUES, min_size=0, max_size=4), st.booleans()),
                      max_size=40))
def test_labels_in_c_agree_with_the_full_path(arity, limit, calls):
    """Random calls, by position or by name, with str and int values and
    wrong counts: the compiled labels(...) answers what the family's full
    path (its reference) answers, or raises the same."""
    names = ["x", "y", "z"][:arity]
    c = metrics.Counter(name("hyp") + "_total", "h", names, max_label_sets=limit)
    for values, by_name in calls:
        kw = dict(zip(names, values)) if by_name and len(values) <= arity else None
        try:
            want = c._labels(**kw) if kw is not None else c._labels(*values)
        except ValueError as exc:
            with pytest.raises(ValueError, match=re.escape(str(exc))):
                c.labels(**kw) if kw is not None else c.labels(*values)
            continue
        got = c.labels(**kw) if kw is not None else c.labels(*values)
        assert got is want
        assert (c.labels(**kw) if kw is not None else c.labels(*values)) is want

"""The render cache of type templates gives what a render without it gives, value for value.

A shell template is rendered once per distinct key; a value it only prints (`{{ x }}`, `{{ job.name }}`) or
only tests (`{% if x %}`) is left out of the key (its truth kept) and put back after the render. These tests
render a corpus of templates with many contexts, in one order with the cache and again without it, and
compare the text, the values assigned and every error.
"""

from __future__ import annotations

import random

import pytest

from compiler.boundary import templating
from compiler.boundary.quote import Raw
from compiler.core.errors import OrchcError
from compiler.core.session import CompileSession
from compiler.core.source import FrozenDict, Node, SourceLoc

TEMPLATES = [
    "echo {{ a }}",
    "echo {{ a }} {{ a }} {{ b }}",
    "{% if a %}echo yes {{ a }}{% else %}echo no{% endif %}",
    "{% if a %}echo {{ b }}{% elif b %}echo {{ a }}{% else %}echo none{% endif %}",
    "echo {{ job.name }}{% if job.id %} {{ job.id }}{% endif %} {{ job.type | upper }}",
    "echo {{ job.name }} {{ job['id'] }}",
    "echo {% for a in items %}{{ a }} {% endfor %}{{ a }}",
    "{% set b = a ~ '-x' %}echo {{ b }} {{ a }}",
    "{% macro m(a) %}{{ a }}!{% endmacro %}echo {{ m(b) }} {{ a }}",
    "echo {% if not a %}none{% endif %} {{ a }}",
    "echo {% filter upper %}{{ a }}-{{ b }}{% endfilter %}",
    "{{ run }} go {{ a }}",
    "echo {{ a | default('d') }} {{ b }}",
    "echo \"{{ a }}\" '{{ b }}' $(( {{ n }} + 1 ))",
    "echo {{ a }}{% if a == 'x' %} ex{% endif %} {{ items | length }}",
    "echo {{ missing }}",
    "{% if a %}echo {{ job.missing }}{% endif %}",
    "echo {% for item in items %}{% if item %}{{ item }}{% endif %}{% endfor %} {{ b }}",
    "cat <<'EOF'\n{{ a }}\n{{ b }}\nEOF",
    "echo {{ n * 2 }} {{ n }}{% if n %} n{% endif %}",
    "echo {{ job }}",
    "echo {{ job.name }} {{ job | length }}",
    # the sandbox's refusal names the mapping's type: a FrozenDict must stay one in a render with stand-ins
    "echo {{ job.name }}{% if job.id %} {{ job.pop('id') }}{% endif %}",
]
VALUES = ["x", "", "it's", "two words", "$(id)", "multi\nline", "EOF", 0, 1, 2, True, False, None, [1, "y"],
          {"k": "v"}, Raw("echo raw"), "-n", "~"]


def _contexts(count: int) -> list[dict]:
    rng = random.Random(7)
    contexts = []
    for number in range(count):
        job = {"name": rng.choice(["r1", "r2", "it's", "x y"]), "id": rng.choice(["abc", "", 0]),
               "type": rng.choice(["redis", "redis_client"])}
        if number % 5 == 0:
            job = FrozenDict(job)
        context = {"a": rng.choice(VALUES), "b": rng.choice(VALUES), "n": rng.choice([0, 1, 7, "3", None]),
                   "items": rng.choice([[], ["p", ""], [0, 1], ("q",)]), "job": job,
                   "run": rng.choice([Raw("apptainer exec img"), Raw("srun"), "plain"])}
        if number % 7 == 0:
            del context["a"]
        contexts.append(context)
    return contexts


def _rendered(node: Node, context: dict, session: CompileSession) -> tuple:
    values = templating.ShellValues()
    try:
        return "ok", templating.render_shell(node, context, values, session), tuple(values.assignments)
    except OrchcError as error:
        return "error", str(error)


@pytest.mark.parametrize("number", range(len(TEMPLATES)), ids=lambda n: TEMPLATES[n][:40])
def test_a_template_renders_the_same_with_and_without_the_cache(number, monkeypatch, tmp_path):
    source = TEMPLATES[number]
    (tmp_path / "t.yaml").write_text(f"t: {source!r}\n")
    node = Node(source, SourceLoc(str(tmp_path / "t.yaml"), 1, 4))
    contexts = _contexts(150)
    results = {}
    for caching in (True, False):
        session = CompileSession(caching=caching)
        results[caching] = [_rendered(node, context, session) for context in contexts]
    assert results[True] == results[False]
    if "missing" not in source:
        assert any(result[0] == "ok" for result in results[True])


def test_values_only_printed_or_tested_are_left_out_of_the_key():
    """What makes the cache pay: jobs that differ only in such values share one render."""
    reads = templating._names_in("shell", "{% if a %}{{ a }}{% endif %} {{ job.name }} {{ job.type | upper }}"
                                          " {% for x in xs %}{{ x }}{% endfor %} {{ b ~ 'c' }} {% set d = 1 %}{{ d }}")
    assert reads.slots == {"a": True}
    assert reads.attribute_slots == {("job", "name"): False}
    calls = []
    real = templating._render_now

    def counted(*args):
        calls.append(1)
        return real(*args)

    node = Node("echo {{ job.name }}{% if maxmemory %} --maxmemory {{ maxmemory }}{% endif %}", SourceLoc("t.yaml"))
    session = CompileSession()
    try:
        templating._render_now = counted
        texts = [_rendered(node, {"job": {"name": f"r{i}"}, "maxmemory": f"{i}mb" if i % 3 else None}, session)
                 for i in range(30)]
    finally:
        templating._render_now = real
    assert texts[4] == ("ok", "echo r4 --maxmemory 4mb", ())
    assert texts[3] == ("ok", "echo r3", ())
    assert len(calls) == 3   # met once (no key), then one render per truth of maxmemory

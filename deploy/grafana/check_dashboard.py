#!/usr/bin/env python3
"""Check that the Grafana dashboard only queries metrics and labels the gateway exports.

Loads deploy/grafana/gateway-dashboard.json (or the path given), collects every PromQL `expr` of
every panel and every templating query, and checks each one against the metric contract of
/work/shared/PRODUCT.md (METRICS below, plus the gateway_generation_tokens_per_second histogram):

- every series name is an exported metric: counters and gauges by their name, histograms only
  through their `_bucket`, `_sum` and `_count` series;
- every label in a matcher belongs to that metric, and every label in by/without/on/ignoring/
  group_left/group_right belongs to a metric of the query (`le` for histogram buckets);
- counters and histogram series are read through a range (`rate(x[...])`, `increase(x[...])`),
  never as raw cumulative values;
- every function is a known PromQL function, and brackets balance;
- panels use the `${datasource}` variable, ids are unique, every `$variable` is defined.

Standard library only. Exit 0 and a one-line summary, or exit 1 and every problem.
Usage: python deploy/grafana/check_dashboard.py [DASHBOARD.json]
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# name -> (type, labels). Keep in step with PRODUCT.md's metrics table and gateway/metrics.py.
METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "gateway_requests_total": ("counter", frozenset({"backend", "model", "endpoint", "code", "client"})),
    "gateway_request_duration_seconds": ("histogram", frozenset({"backend", "model", "endpoint"})),
    "gateway_time_to_first_byte_seconds": ("histogram", frozenset({"backend", "model", "endpoint"})),
    "gateway_tokens_total": ("counter", frozenset({"backend", "model", "client", "kind"})),
    "gateway_in_flight_requests": ("gauge", frozenset({"backend"})),
    "gateway_backend_up": ("gauge", frozenset({"backend"})),
    "gateway_auth_failures_total": ("counter", frozenset({"reason"})),
    "gateway_upstream_errors_total": ("counter", frozenset({"backend", "reason"})),
    # An addition to PRODUCT.md's table: completion tokens / (last byte - first byte), one
    # observation per completed request that reported a completion token count.
    "gateway_generation_tokens_per_second": ("histogram", frozenset({"backend", "model"})),
    # Sharing and operations (PRODUCT.md), and the front door's additions.
    "gateway_rate_limited_total": ("counter", frozenset({"client", "limit"})),
    "gateway_queue_wait_seconds": ("histogram", frozenset({"backend"})),
    "gateway_cold_loads_total": ("counter", frozenset({"backend", "model"})),
    "gateway_connections_refused_total": ("counter", frozenset({"reason"})),
    "gateway_client_timeouts_total": ("counter", frozenset({"phase"})),
    "gateway_limits_store_up": ("gauge", frozenset({"store"})),
}

FUNCTIONS = frozenset(
    "abs absent absent_over_time avg avg_over_time ceil changes clamp clamp_max clamp_min count "
    "count_over_time count_values delta deriv exp floor group histogram_quantile holt_winters idelta "
    "increase irate label_join label_replace last_over_time ln log10 log2 max max_over_time min "
    "min_over_time predict_linear quantile quantile_over_time rate resets round scalar sort sort_desc "
    "sqrt stddev stdvar sum sum_over_time time timestamp topk bottomk vector".split()
)
KEYWORDS = frozenset("and or unless bool offset".split())
MODIFIERS = ("by", "without", "on", "ignoring", "group_left", "group_right")
BUILTIN_VARS = frozenset({"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"})

STRING = r'"(?:[^"\\]|\\.)*"'
IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SELECTOR_RE = re.compile(rf"({IDENT})?\s*\{{((?:[^{{}}\"]|{STRING})*)\}}")
MATCHER_RE = re.compile(rf"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*{STRING}\s*(?:,|$)")
MODIFIER_RE = re.compile(rf"\b({'|'.join(MODIFIERS)})\s*\(([^()]*)\)")
LABEL_VALUES_RE = re.compile(rf"^\s*label_values\(\s*(.*?)\s*,\s*({IDENT})\s*\)\s*$", re.S)


def series_info(name: str) -> tuple[str, frozenset[str]] | None:
    """Return (kind, labels) of an exported series name, or None if the gateway exports no such series."""
    if name in METRICS and METRICS[name][0] != "histogram":
        return METRICS[name]
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if name.endswith(suffix) and METRICS.get(base, ("", frozenset()))[0] == "histogram":
            labels = METRICS[base][1] | ({"le"} if suffix == "_bucket" else set())
            return "counter", frozenset(labels)
    return None


def check_expr(expr: str, where: str, *, template: bool = False) -> list[str]:
    """Return the problems of one PromQL expression (or label_values() template query)."""
    errs: list[str] = []
    if template:
        m = LABEL_VALUES_RE.match(expr)
        if not m:
            return [f"{where}: template query is not label_values(selector, label): {expr!r}"]
        inner, label = m.group(1), m.group(2)
        sel = SELECTOR_RE.match(inner)
        name = sel.group(1) if sel else inner.strip()
        info = series_info(name or "")
        if info is None:
            return errs + [f"{where}: unknown metric {name!r}"]
        if label not in info[1]:
            errs.append(f"{where}: label_values label {label!r} is not a label of {name}")
        if sel:
            errs += check_matchers(name, sel.group(2), info, where)
        return errs

    stack: list[str] = []
    for ch in re.sub(STRING, '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in ")]}":
            if not stack or "([{"[")]}".index(ch)] != stack.pop():
                return [f"{where}: unbalanced brackets in {expr!r}"]
    if stack:
        return [f"{where}: unbalanced brackets in {expr!r}"]

    used: set[str] = set()  # labels of the metrics this expression reads

    def selector(m: re.Match[str]) -> str:
        name = m.group(1)
        if name is None or name in FUNCTIONS or name in MODIFIERS:
            errs.append(f"{where}: selector without a metric name in {expr!r}")
            return f"{name or ''}"
        info = series_info(name)
        if info is None:
            return name  # reported below with the bare names
        errs.extend(check_matchers(name, m.group(2), info, where))
        return name

    text = SELECTOR_RE.sub(selector, expr)
    for name in set(re.findall(IDENT, re.sub(STRING, '""', text))):
        info = series_info(name)
        if info is None:
            continue
        used |= info[1]
        if info[0] == "counter" and not re.search(rf"\b{re.escape(name)}\s*\[", text):
            errs.append(f"{where}: {name} is cumulative; read it through rate()/increase() with a range")
    for m in MODIFIER_RE.finditer(text):
        for label in filter(None, (s.strip() for s in m.group(2).split(","))):
            if label not in used:
                errs.append(f"{where}: {m.group(1)} ({label}): {label!r} is not a label of the metrics queried")
    text = MODIFIER_RE.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range durations such as [$__rate_interval] or [5m]
    text = re.sub(STRING, " ", text)
    text = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:e[+-]?\d+)?", " ", text)  # numbers
    for m in re.finditer(rf"({IDENT})(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call:
            if word not in FUNCTIONS:
                errs.append(f"{where}: unknown function {word}() in {expr!r}")
        elif word not in KEYWORDS and series_info(word) is None:
            hint = " (a histogram: use _bucket, _sum or _count)" if word in METRICS else ""
            errs.append(f"{where}: {word!r} is not a metric the gateway exports{hint}")
    return errs


def check_matchers(name: str, body: str, info: tuple[str, frozenset[str]], where: str) -> list[str]:
    """Return the problems of the label matchers inside one `name{...}` selector."""
    errs: list[str] = []
    pos = 0
    while pos < len(body.strip()) and (m := MATCHER_RE.match(body, pos)):
        if m.group(1) not in info[1]:
            errs.append(f"{where}: {name}{{{m.group(1)}...}}: {m.group(1)!r} is not a label of {name}")
        pos = m.end()
    if body[pos:].strip():
        errs.append(f"{where}: cannot parse label matchers {{{body}}}")
    return errs


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Yield every panel, the ones nested in collapsed rows included."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def check_dashboard(dash: dict[str, Any]) -> tuple[list[str], int]:
    """Return (problems, number of expressions checked) for a dashboard model."""
    errs: list[str] = []
    count = 0
    templating = dash.get("templating", {}).get("list", [])
    defined = {v["name"] for v in templating} | BUILTIN_VARS
    if not any(v.get("type") == "datasource" and v["name"] == "datasource" for v in templating):
        errs.append("templating: no `datasource` variable of type datasource")
    for var in templating:
        if var.get("type") == "query":
            query = var.get("query")
            query = query.get("query", "") if isinstance(query, dict) else query or ""
            errs += check_expr(query, f"variable ${var['name']}", template=True)
            count += 1
    ids: set[int] = set()
    for panel in walk_panels(dash.get("panels", [])):
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        if panel.get("id") in ids:
            errs.append(f"{where}: duplicate panel id")
        ids.add(panel.get("id"))
        if "gridPos" not in panel:
            errs.append(f"{where}: no gridPos")
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            errs.append(f"{where}: datasource is not the ${{datasource}} variable")
        targets = panel.get("targets", [])
        if not targets:
            errs.append(f"{where}: no targets")
        for target in targets:
            expr = target.get("expr", "")
            if not expr.strip():
                errs.append(f"{where} target {target.get('refId')}: empty expr")
                continue
            for var in re.findall(r"\$\{?(\w+)", expr):
                if var not in defined:
                    errs.append(f"{where}: undefined variable ${var}")
            errs += check_expr(expr, f"{where} target {target.get('refId')}")
            count += 1
    return errs, count


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("gateway-dashboard.json")
    dash = json.loads(path.read_text(encoding="utf-8"))
    errs, count = check_dashboard(dash)
    if errs:
        print("\n".join(errs), file=sys.stderr)
        print(f"{path}: {len(errs)} problem(s) in {count} queries", file=sys.stderr)
        return 1
    print(f"{path}: OK, {count} queries use only exported metrics and labels "
          f"(schemaVersion {dash.get('schemaVersion')})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

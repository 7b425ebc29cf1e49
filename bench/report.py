"""Markdown tables for a benchmark run (also used by `run.py --report latest.json`).

Ratios are always against targets measured in the same run: "x direct" against the fake backend
alone, "x bare" against the bare aiohttp relay. "added" figures are target minus direct.
"""
from __future__ import annotations

import statistics
from typing import Any

Phase = dict[str, Any]
NA = "n/a"


def num(x: float | None, nd: int = 1) -> str:
    return NA if x is None else f"{x:.{nd}f}"


def ratio(x: float | None, y: float | None) -> str:
    if x is None or not y:
        return NA
    r = x / y
    return f"{r:.2f}" if r >= 0.1 else f"{r:.2g}"


def diff(x: float | None, y: float | None, nd: int = 2) -> str:
    return NA if x is None or y is None else f"{x - y:+.{nd}f}"


def ok(d: Phase | None) -> bool:
    return bool(d) and "error" not in d  # type: ignore[operator]


def per(cpu: float | None, count: float | None, scale: float) -> float | None:
    return None if cpu is None or not count else cpu * scale / count


def errors_text(errs: dict[str, int] | None) -> str:
    if not errs:
        return "0"
    return "; ".join(f"{k[:70].replace('|', '/')} x{v}" for k, v in errs.items())


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def pxo(px: bool, text: str) -> str:
    """A proxy-only cell: "-" on the direct row (it has no proxy CPU or RSS)."""
    return text if px else "-"


def drained(d: Phase) -> str:
    final, waited = d.get("upstream_open_final"), d.get("upstream_drain_s") or 0.0
    if final is None:
        return NA
    if final == 0:
        return f"all within {waited:.1f} s" if waited > 0.3 else "all at once"
    return f"{final} still open after {waited:.0f} s"


def features_text(f: dict[str, Any] | None) -> str:
    """What a gateway variant turns off, e.g. "auth off, metrics off"; "full" for the whole config."""
    if not f:
        return NA
    full = {"auth": True, "cors": True, "metrics": True, "log_level": "info", "limits": False}
    diffs = [f"{k} off" if v is False else f"{k} on" if v is True else f"logging.level {v}"
             for k, v in f.items() if full.get(k) != v]
    return ", ".join(diffs) or "full (auth, CORS, metrics, access log at info)"


def pair(x: object, y: object) -> str:
    return f"{x} / {y}"


def brief(key: str, d: Phase) -> str:
    """One log line per phase."""
    if "error" in d:
        return "ERROR " + str(d["error"])[:300]
    if key == "flood":
        g0, g1, f = d["good_alone"], d["good_during"], d["flood"]
        if "error" in f or "error" in g0 or "error" in g1:
            return "ERROR " + str(f.get("error") or g0.get("error") or g1.get("error"))[:300]
        return (f"flood {f['status']} {f['reasons']} in {f['flood_s']} s (gateway busy {f['busy_s']} s, "
                f"flood cpu {f.get('proxy_cpu_s')} s); good alone {g0['requests']} req p99 "
                f"{num(g0['latency_ms']['p99'], 2)} ms, during {g1['requests']} req p99 "
                f"{num(g1['latency_ms']['p99'], 2)} ms, errors {errors_text(g1.get('errors'))}")
    if key.startswith("ns"):
        lat = d["latency_ms"]
        return (f"{d['rps']:.0f} rps, p50 {num(lat['p50'], 2)} ms, p99 {num(lat['p99'], 2)} ms, "
                f"errors {d.get('error_count')}, proxy cpu {d.get('proxy_cpu_s')} s")
    if key in ("sse", "ndjson"):
        return (f"{d['ok']}/{d['streams']} ok, ttfb p50 {d['ttfb_ms']['p50']} ms, gap p99 {d['gap_ms']['p99']} ms, "
                f"{d['delivery']}, proxy cpu {d.get('proxy_cpu_s')} s, rss {d.get('proxy_rss_peak_mb')} MB, "
                f"errors {errors_text(d['errors'])}")
    if key == "body":
        return (f"{d['ok']}/{d['requests']} ok, p50 {d['latency_ms']['p50']} ms, rss {d.get('proxy_rss_peak_mb')} MB, "
                f"errors {errors_text(d['errors'])}")
    return (f"held {d['held_min']}-{d['held_max']}/{d['target']} (opened {d['opened']} in {d['ramp_s']:.1f}s, "
            f"started {d['started']}), rss {d.get('proxy_rss_before_mb')}->{d.get('proxy_rss_peak_mb')} MB, "
            f"fds {d.get('proxy_fds_peak')}, upstreams closed: {drained(d)}, errors {errors_text(d['errors'])}")


class Run:
    def __init__(self, res: dict[str, Any]) -> None:
        self.res = res
        self.s = res["settings"]
        self.t: dict[str, Any] = {n: r for n, r in res["targets"].items() if "skipped" not in r}
        self.direct: dict[str, Phase] = self.t.get("direct", {}).get("phases", {})
        self.bare: dict[str, Phase] = self.t.get("bare", {}).get("phases", {})

    @staticmethod
    def ns_cpu(d: Phase | None) -> float | None:
        """Proxy CPU per request, microseconds."""
        return per(d.get("proxy_cpu_s"), d.get("requests"), 1e6) if ok(d) else None  # type: ignore[union-attr]

    @staticmethod
    def chunk_cpu(d: Phase | None) -> float | None:
        """Proxy CPU per 1000 content chunks, milliseconds."""
        return per(d.get("proxy_cpu_s"), d.get("content_chunks"), 1e6) if ok(d) else None  # type: ignore[union-attr]

    @staticmethod
    def kb_per_stream(d: Phase) -> float | None:
        before, peak, held = d.get("proxy_rss_before_mb"), d.get("proxy_rss_peak_mb"), d.get("held_min")
        if before is None or peak is None or not held:
            return None
        return float(peak - before) * 1024.0 / float(held)

    def phases(self, key: str) -> list[tuple[str, Phase]]:
        return [(n, r["phases"][key]) for n, r in self.t.items() if key in r["phases"]]

    def variants(self) -> list[str]:
        """Gateway targets that are not gateway-wN: the feature variants measured in this run."""
        return [n for n in self.t if n.startswith("gateway-") and not n[len("gateway-w"):].isdigit()]

    # ------------------------------------------------------------ tables
    def summary(self) -> list[str]:
        top = max(self.s["conc"])
        out = ["## Summary", "",
               row("target", f"RPS c={top}", "x direct", "x bare", "added p50 ms c=1", "CPU us/req", "x bare",
                   "SSE TTFB added p50 ms", "SSE gap p99 ms", "CPU ms/1k chunks", "x bare", "idle held",
                   "KB/stream", "RSS idle MB", f"{self.s['body_mb']:g} MB body added ms"),
               "|---|" + "---:|" * 14]
        dtop, btop, d1 = self.direct.get(f"ns_{top}"), self.bare.get(f"ns_{top}"), self.direct.get("ns_1")
        dsse, bsse, dbody = self.direct.get("sse"), self.bare.get("sse"), self.direct.get("body")
        for name, r in self.t.items():
            ph = r["phases"]
            ns, n1, sse, idle, body = (ph.get(f"ns_{top}"), ph.get("ns_1"), ph.get("sse"), ph.get("idle"),
                                       ph.get("body"))
            px = name != "direct"  # a proxy: it has its own CPU and RSS

            cells: list[str] = [name]
            if ok(ns):
                assert ns is not None
                cells += [f"{ns['rps']:.0f}", ratio(ns["rps"], dtop["rps"] if ok(dtop) else None),  # type: ignore[index]
                          pxo(px, ratio(ns["rps"], btop["rps"] if ok(btop) else None))]  # type: ignore[index]
            else:
                cells += [NA] * 3
            cells.append(pxo(px, diff(n1["latency_ms"]["p50"], d1["latency_ms"]["p50"])  # type: ignore[index]
                                 if ok(n1) and ok(d1) else NA))
            cpu = self.ns_cpu(ns)
            cells += [pxo(px, num(cpu, 0)), pxo(px, ratio(cpu, self.ns_cpu(btop)))]
            if ok(sse):
                assert sse is not None
                cells.append(pxo(px, diff(sse["ttfb_ms"]["p50"], dsse["ttfb_ms"]["p50"])  # type: ignore[index]
                                     if ok(dsse) else NA))
                ccpu = self.chunk_cpu(sse)
                cells += [num(sse["gap_ms"]["p99"], 1), pxo(px, num(ccpu, 1)),
                          pxo(px, ratio(ccpu, self.chunk_cpu(bsse)))]
            else:
                cells += [NA] * 4
            if ok(idle):
                assert idle is not None
                cells += [f"{idle['held_min']}/{idle['target']}", pxo(px, num(self.kb_per_stream(idle), 1))]
            else:
                cells += [NA] * 2
            cells.append(pxo(px, num(r.get("rss_idle_mb"), 1)))
            cells.append(pxo(px, diff(body["latency_ms"]["p50"], dbody["latency_ms"]["p50"], 1)  # type: ignore[index]
                                 if ok(body) and ok(dbody) and body["ok"] else NA))
            out.append(row(*cells))
        return out

    def ns_table(self) -> list[str]:
        tool = self.res["meta"].get("loadgen", "?").split(" ")[0]
        out = [f"## Non-streaming POST /v1/chat/completions ({tool}, {self.s['duration']:g} s per run, closed loop)",
               "",
               row("target", "conc", "RPS", "x direct", "x bare", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms",
                   "proxy CPU us/req", "x bare", "errors", "other load %"),
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
        for name, r in self.t.items():
            for c in self.s["conc"]:
                d = r["phases"].get(f"ns_{c}")
                if d is None:
                    continue
                if "error" in d:
                    out.append(row(name, c, str(d["error"])[:150].replace("\n", " ")))
                    continue
                dd, bb = self.direct.get(f"ns_{c}"), self.bare.get(f"ns_{c}")
                px = name != "direct"
                lat = d["latency_ms"]
                dlat = dd["latency_ms"] if ok(dd) else {}  # type: ignore[index]
                cpu = self.ns_cpu(d)
                out.append(row(
                    name, c, f"{d['rps']:.0f}", ratio(d["rps"], dd["rps"] if ok(dd) else None),  # type: ignore[index]
                    ratio(d["rps"], bb["rps"] if ok(bb) else None) if px else "-",  # type: ignore[index]
                    f"{lat['p50']:.2f}", f"{lat['p99']:.2f}",
                    diff(lat["p50"], dlat.get("p50")) if px else "-", diff(lat["p99"], dlat.get("p99")) if px else "-",
                    num(cpu, 0) if px else "-", ratio(cpu, self.ns_cpu(bb)) if px else "-",
                    errors_text(d.get("errors")), num(d.get("other_load_pct"))))
        return out

    def stream_table(self, key: str, title: str) -> list[str]:
        s = self.s
        out = [f"## {title}, {s['streams']} streams x {s['chunks']} chunks @ {s['delay_ms']:g} ms", "",
               row("target", "ok/streams", "TTFB p50 ms", "TTFB added p50 / p99 ms", "first chunk p50 ms",
                   "gap p50 ms", "gap p99 ms", "coalesced %", "delivery", "proxy CPU ms/1k chunks", "x bare",
                   "proxy RSS peak MB", "errors", "other load %"),
               "|---|---:|---:|---:|---:|---:|---:|---:|:-:|---:|---:|---:|---|---:|"]
        dd, bb = self.direct.get(key), self.bare.get(key)
        for name, d in self.phases(key):
            if "error" in d:
                out.append(row(name, str(d["error"])[:150].replace("\n", " ")))
                continue
            px = name != "direct"
            added = "-"
            if px and ok(dd) and d["ttfb_ms"]["p50"] is not None and dd["ttfb_ms"]["p50"] is not None:  # type: ignore[index]
                added = (f"{diff(d['ttfb_ms']['p50'], dd['ttfb_ms']['p50'])} / "  # type: ignore[index]
                         f"{diff(d['ttfb_ms']['p99'], dd['ttfb_ms']['p99'])}")  # type: ignore[index]
            ccpu = self.chunk_cpu(d)
            out.append(row(
                name, f"{d['ok']}/{d['streams']}", num(d["ttfb_ms"]["p50"], 2), added, num(d["ttfc_ms"]["p50"], 2),
                num(d["gap_ms"]["p50"], 2), num(d["gap_ms"]["p99"], 2), num(d["coalesced_pct"], 1),
                d["delivery"] or "?", num(ccpu, 1) if px else "-", ratio(ccpu, self.chunk_cpu(bb)) if px else "-",
                num(d.get("proxy_rss_peak_mb"), 1) if px else "-", errors_text(d["errors"]),
                num(d.get("other_load_pct"))))
        return out

    def feature_table(self) -> list[str]:
        """The full gateway against its variants and the bare relay: what each feature costs.

        From the interleaved rounds when they ran (medians of per-round ratios), else from each
        target's own ns phase at c=64 (one sample each, minutes apart)."""
        full = f"gateway-w{self.s.get('variant_workers') or 1}"
        fr = self.res.get("feature_rounds") or {}
        note = ""
        if fr.get("rounds") and "error" not in fr:
            names = [n for n in fr["targets"] if n in self.t]
            rounds: list[dict[str, Phase]] = fr["rounds"]
            top = fr["conc"]
            src = (f"{len(rounds)} interleaved rounds of {fr['duration']:g} s per target, order rotated each round; "
                   "figures are medians over the rounds, ratios medians of the per-round ratios")
        else:
            conc = self.s["conc"]
            top = 64 if 64 in conc else max(conc)
            names = [n for n in [full] + self.variants() + ["bare"] if n in self.t]
            rounds = [{n: d for n in names if (d := self.t[n]["phases"].get(f"ns_{top}")) is not None}]
            src = "one ns run per target, run one after the other"
            if fr.get("error"):
                note = "Interleaved rounds failed: " + str(fr["error"])[:300].replace("\n", " ")

        def rps_of(d: Phase | None) -> float | None:
            return d["rps"] if d is not None and ok(d) else None

        def series(n: str, f: Any) -> list[float]:
            return [v for r in rounds if (v := f(r.get(n))) is not None]

        def paired(a: str, b: str, f: Any) -> list[float]:
            return [x / y for r in rounds if (x := f(r.get(a))) is not None and (y := f(r.get(b)))]

        def med(xs: list[float]) -> float | None:
            return statistics.median(xs) if xs else None

        def mratio(a: str, b: str, f: Any) -> str:
            m = med(paired(a, b, f))
            return NA if m is None else (f"{m:.2f}" if m >= 0.1 else f"{m:.2g}")

        out = [f"## Feature cost (non-streaming, c={top}, {self.s.get('variant_workers') or 1} worker; every gateway "
               "row is the same config with one change)", "", f"Source: {src}.", "",
               row("target", "config", f"RPS c={top}", "CPU us/req", "RPS x full", "CPU x full", "RPS x bare",
                   "CPU x bare", "errors", "other load % (max)"),
               "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
        for n in names:
            errs = [d["error"] for r in rounds if (d := r.get(n)) is not None and "error" in d]
            if errs and not series(n, rps_of):
                out.append(row(n, str(errs[0])[:150].replace("\n", " ")))
                continue
            cfg = "bare aiohttp relay" if n == "bare" else features_text(self.t[n].get("features"))
            nerr = sum(d.get("error_count") or 0 for r in rounds if (d := r.get(n)) is not None and ok(d))
            other = series(n, lambda d: d.get("other_load_pct") if d is not None and ok(d) else None)
            out.append(row(n, cfg, num(med(series(n, rps_of)), 0), num(med(series(n, self.ns_cpu)), 0),
                           mratio(n, full, rps_of), mratio(n, full, self.ns_cpu),
                           "-" if n == "bare" else mratio(n, "bare", rps_of),
                           "-" if n == "bare" else mratio(n, "bare", self.ns_cpu),
                           str(nerr + len(errs)), num(max(other) if other else None)))
        out += ["", row("ratio", "RPS", "range over rounds", "CPU us/req", "goal", "met"),
                "|---|---:|---:|---:|---|:-:|"]

        def short(n: str) -> str:
            return "full" if n == full else n.removeprefix("gateway-")

        for a, b, goal in ((full, "gateway-noauth", 0.9), (full, "gateway-nometrics", 0.9),
                           (full, "gateway-nocors", None), (full, "gateway-nolog", None), (full, "gateway-min", None),
                           (full, "bare", None), ("gateway-min", "bare", None), ("gateway-limits", full, 0.95)):
            if a not in names or b not in names:
                continue
            rs = paired(a, b, rps_of)
            m = med(rs)
            spread = f"{min(rs):.2f} - {max(rs):.2f}" if len(rs) > 1 else "-"
            verdict = "-" if goal is None else NA if m is None else "yes" if m >= goal else "**NO**"
            if goal is not None and len(rs) > 1 and min(rs) < goal <= max(rs):
                verdict += " (rounds on both sides)"
            out.append(row(f"{short(a)} / {short(b)}", mratio(a, b, rps_of), spread, mratio(a, b, self.ns_cpu),
                           f"RPS >= {goal}" if goal else "-", verdict))
        out += ["", "At this concurrency the proxy's core is the limit, so CPU us/req is about 1/RPS: both move with "
                "the speed of the shared core, which the other load column does not see. Only ratios taken close "
                "together in time (the rounds) can resolve a 10% difference."]
        if note:
            out += ["", note]
        return out

    def flood_table(self) -> list[str]:
        s = self.s
        n = s.get("flood_requests")
        out = [f"## Credential flood: {n} requests with {n} distinct wrong keys, {s.get('flood_conc')} at a time, "
               f"from 127.0.0.1, during a good client (valid key, c={s.get('flood_good_conc')}, "
               f"{s.get('flood_s'):g} s); the same good client alone just before", "",
               row("target", "401", "429 budget / busy", "other", "wrong-key answer p50 / p99 ms", "flood took s",
                   "gateway busy s",
                   "gateway CPU s (window)", "of it flood s", "CPU ms / wrong req", "good req alone / flood",
                   "good errors alone / flood", "good p50 ms alone / flood", "good p99 ms alone / flood",
                   "p99 x alone", "other load % alone / flood"),
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
        for name, d in self.phases("flood"):
            g0, g1, f = d.get("good_alone", {}), d.get("good_during", {}), d.get("flood", {})
            err = d.get("error") or f.get("error") or g0.get("error") or g1.get("error")
            if err:
                out.append(row(name, str(err)[:150].replace("\n", " ")))
                continue
            st, why = f.get("status", {}), f.get("reasons", {})
            other = sum(v for k, v in st.items() if k not in ("401", "429")) + f.get("error_count", 0)
            l0, l1 = g0["latency_ms"], g1["latency_ms"]
            out.append(row(
                name, st.get("401", 0),
                pair(why.get("429 failure budget", 0), why.get("429 checks busy", 0)) if st.get("429") else 0,
                other if not f.get("errors") else f"{other} ({errors_text(f['errors'])})",
                pair(num(f["latency_ms"]["p50"], 1), num(f["latency_ms"]["p99"], 1)),
                num(f.get("flood_s"), 2), num(f.get("busy_s"), 1), num(g1.get("proxy_cpu_s"), 2),
                num(f.get("proxy_cpu_s"), 2), num(per(f.get("proxy_cpu_s"), n, 1e3), 2),
                pair(g0["requests"], g1["requests"]), pair(g0.get("error_count", 0), errors_text(g1.get("errors"))),
                pair(num(l0["p50"], 2), num(l1["p50"], 2)), pair(num(l0["p99"], 2), num(l1["p99"], 2)),
                ratio(l1["p99"], l0["p99"]), pair(num(g0.get("other_load_pct")), num(g1.get("other_load_pct")))))
        out += ["", "401: wrong keys that got a bcrypt check; 429 budget: the source's failure budget was used up; "
                "429 busy: too many bcrypt checks queued already. The window runs from the start of the flooded "
                "run until the gateway's CPU settles (gateway busy s, counted from the first wrong key); "
                "\"of it flood\" subtracts what the good requests in it cost at the rate measured alone."]
        return out

    def body_table(self) -> list[str]:
        s = self.s
        out = [f"## {s['body_mb']:g} MB request body (base64-looking JSON string), {s['body_requests']} sequential "
               "requests", "",
               row("target", "ok", "p50 ms", "max ms", "added p50 ms", "x direct", "proxy CPU ms/req",
                   "proxy RSS peak MB", "errors"),
               "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        dd = self.direct.get("body")
        d50 = dd["latency_ms"]["p50"] if ok(dd) else None  # type: ignore[index]
        for name, d in self.phases("body"):
            if "error" in d:
                out.append(row(name, str(d["error"])[:150].replace("\n", " ")))
                continue
            px = name != "direct"
            p50 = d["latency_ms"]["p50"]
            out.append(row(
                name, f"{d['ok']}/{d['requests']}", num(p50, 1), num(d["latency_ms"]["max"], 1),
                diff(p50, d50, 1) if px else "-", ratio(p50, d50) if px else "-",
                num(per(d.get("proxy_cpu_s"), d["requests"] + 1, 1e3), 1) if px else "-",  # +1: the warm-up
                num(d.get("proxy_rss_peak_mb"), 1) if px else "-", errors_text(d["errors"])))
        return out

    def idle_table(self) -> list[str]:
        s = self.s
        out = [f"## Idle streams: {s['idle_streams']} SSE streams at 1 chunk/s, opened at <= {s['idle_rate']:g}/s, "
               f"held {s['idle_hold']:g} s", "",
               row("target", "held (min) / opened", "started", "opened in s", "gap p99 ms", "proxy RSS before MB",
                   "RSS at hold MB", "KB/stream", "proxy fds peak / limit", "proxy CPU s",
                   "upstreams closed after clients left", "errors", "other load %"),
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
        for name, d in self.phases("idle"):
            if "error" in d:
                out.append(row(name, str(d["error"])[:150].replace("\n", " ")))
                continue
            r = self.t[name]
            px = name != "direct"
            fds = f"{d.get('proxy_fds_peak')} / {r.get('fd_limit')}" if px else "-"
            if px and (r.get("processes") or 1) > 1:
                fds += f" ({r['processes']} procs)"
            out.append(row(
                name, f"{d['held_min']} / {d['opened']}", d["started"], f"{d['ramp_s']:.1f}",
                num(d["hold_gap_ms"]["p99"], 0), num(d.get("proxy_rss_before_mb"), 1) if px else "-",
                num(d.get("proxy_rss_peak_mb"), 1) if px else "-", num(self.kb_per_stream(d), 1) if px else "-",
                fds, num(d.get("proxy_cpu_s"), 2) if px else "-", drained(d), errors_text(d["errors"]),
                num(d.get("other_load_pct"))))
        limits = [r["fd_limit"] for n, r in self.t.items() if n != "direct" and r.get("fd_limit")]
        if limits and s["idle_streams"] > (min(limits) - 20) // 2:
            lim = min(limits)
            out += ["", f"A stream through a proxy costs it two file descriptors (client side and upstream side), so "
                    f"one process with an fd limit of {lim} holds at most about {(lim - 20) // 2} streams; a proxy "
                    "with several worker processes splits them. The hard limit is the ceiling: the bench raises "
                    "every soft limit to it."]
        return out


def render(res: dict[str, Any]) -> str:
    run = Run(res)
    m = res["meta"]
    v = m.get("versions", {})
    out = [f"# Gateway benchmark, {m['started']}{' (--quick)' if m.get('quick') else ''}", "",
           f"Machine: {v.get('cpus')} cpus ({v.get('cpu', '?')}), Python {v.get('python')}, kernel {v.get('kernel')}; "
           f"aiohttp {v.get('aiohttp')}, uvloop {v.get('uvloop')}; nginx {v.get('nginx', 'not installed')}; "
           f"{m.get('loadgen')}. {m.get('pinning', '').capitalize()}. fd limit {m.get('fd_limit')} "
           f"(hard {m.get('fd_hard')}). Load average at start {m.get('loadavg')}.", ""]
    cap = res.get("capacity") or {}
    parts = [f"c={k[3:]} {d['rps']:.0f} RPS (p50 {d['latency_ms']['p50']:.3f} ms, "
             f"{num(per(d.get('backend_cpu_s'), d['requests'], 1e6), 0)} us CPU/request)"
             for k, d in cap.items() if isinstance(d, dict) and ok(d)]
    if parts:
        out += ["Fake backend alone (its own core, the load on the other): " + "; ".join(parts) + ".", ""]
    out += run.summary() + [""]
    if run.phases(f"ns_{max(run.s['conc'])}") or run.phases("ns_1"):
        out += run.ns_table() + [""]
    if run.phases("sse"):
        out += run.stream_table("sse", "Streaming SSE /v1/chat/completions") + [""]
    if run.phases("ndjson"):
        out += run.stream_table("ndjson", "Streaming NDJSON /api/chat") + [""]
    if run.phases("body"):
        out += run.body_table() + [""]
    if run.phases("idle"):
        out += run.idle_table() + [""]
    if run.variants() or res.get("feature_rounds"):
        out += run.feature_table() + [""]
    if run.phases("flood"):
        out += run.flood_table() + [""]
    notes = list(m.get("notes", []))
    for name, r in res["targets"].items():
        if "skipped" in r:
            notes.append(f"**{name} skipped**: " + r["skipped"].strip().replace("\n", "\n  "))
        if r.get("died"):
            notes.append(f"**{name} died**: " + r["died"].strip().replace("\n", "\n  "))
        if r.get("checks"):
            notes.append(f"{name} checks: " + "; ".join(f"{k}: {v}" for k, v in r["checks"].items()))
        if r.get("log_lines") is not None:
            level = (r.get("features") or {}).get("log_level", "info")
            notes.append(f"{name} log (stdout+stderr, logging.level {level}): {r['log_lines']} lines, "
                         f"{r.get('log_bytes', 0) / 1e6:.1f} MB, {r.get('log_tracebacks', 0)} tracebacks")
    if "gateway" in m:
        notes.append(f"gateway: {m['gateway']}")
    startup = ", ".join(f"{n} {r['startup_s']}s" for n, r in run.t.items() if r.get("startup_s"))
    if startup:
        notes.append("startup (process start to the first 200 chat completion): " + startup)
    others = [d.get("other_load_pct") or 0.0 for r in run.t.values() for d in r["phases"].values()
              if isinstance(d, dict)]
    if others:
        notes.append(f"other load (CPU used by processes outside the run, share of all cores): mean "
                     f"{sum(others) / len(others):.1f}%, max {max(others):.1f}%; a phase above ~10% is disturbed")
    notes.append(f"total time {m.get('elapsed_s')} s")
    out += ["## Notes", ""] + ["- " + n for n in notes]
    return "\n".join(out)

#!/usr/bin/env python3
"""The table and the JSON of bench/run, and the comparison of two runs.

    report.py --results results.jsonl --meta meta.json --out run.json [--compare old.json]
    report.py --show run.json [--compare old.json] [--markdown]

Each result line names a case, its transport (http, grpc, or the ceiling's own: cpu, sign, sql), its
backend pair, and what its load generator measured: rps (good answers per second over the time
the case actually ran), p50_ms, p99_ms, ok, errors. The ratio of a case is its rps over its
ceiling's, measured in the same run:
  HTTP cases                   / HTTP /healthz of the same backend
  gRPC cases                   / the gRPC health check of the same backend
  password                     / the raw Argon2id rate on every core (the higher of the samples
                                 taken just before and just after)
  refresh rotation             / pgbench single-row inserts at the same concurrency (the higher of
                                 the samples taken just before and just after the refresh cases)
  code exchange, device poll   / refresh rotation of the same backend and transport
  and refresh at 4 in flight
  verifier hot, 10k distinct,  / ring's raw ES256 check of the same tokens, one core
  10k cached
HTTP and gRPC cases also carry server_cpu_us and machine_cpu_us: the server's CPU time per good
answer, and that of every process on the machine (load generator and databases included).
--compare prints each case's rps (and ratio) against the old run's and flags rps drops over 15 %.
Exit status: 1 when a case had bad answers (or none good) or dropped more than 15 %, else 0.
"""

import argparse
import json
import sys

DROP = 0.15
ORDER = [
    "pgbench insert", "healthz", "health check", "argon2id raw", "es256 raw", "client_credentials", "introspect hot", "introspect 10k", "userinfo",
    "password", "refresh rotation", "refresh at 4 in flight", "code exchange", "device poll", "revocation",
    "es256 verify raw", "verifier hot", "verifier 10k distinct", "verifier 10k cached", "verifier memory",
    "revocation to refusal",
]
# The verifier's cases (transport "verifier", one core of its own process): each rate against
# ring's raw ES256 check of the same tokens in the same run.
VERIFIER_RATES = ("verifier hot", "verifier 10k distinct", "verifier 10k cached")


def ceiling_of(r, by_key):
    """The (name, rps) a case is measured against, or None for a ceiling itself."""
    case, transport, backend = r["case"], r["transport"], r["backend"]
    if transport == "verifier" and (case in VERIFIER_RATES or case.endswith((" distinct", " cached"))):
        return ("es256 verify raw", by_key.get(("es256 verify raw", "verifier", backend)))
    if transport not in ("http", "grpc") or case in ("healthz", "health check"):
        return None
    if case == "password":
        return ("argon2id raw", by_key.get(("argon2id raw", "cpu", backend)))
    if case == "refresh rotation":
        pg = next((v for (c, _t, _b), v in by_key.items() if c == "pgbench insert"), None)
        return ("pgbench insert", pg)
    if case in ("code exchange", "device poll", "refresh at 4 in flight"):
        return ("refresh rotation", by_key.get(("refresh rotation", transport, backend)))
    if transport == "http":
        return ("HTTP /healthz", by_key.get(("healthz", "http", backend)))
    return ("gRPC health", by_key.get(("health check", "grpc", backend)))


def build(results, meta):
    by_key = {(r["case"], r["transport"], r["backend"]): r.get("rps", 0) for r in results}
    cases = []
    for r in results:
        c = dict(r)
        ceiling = ceiling_of(r, by_key)
        if ceiling is None:
            c["ceiling"], c["ratio"] = None, None
        else:
            name, rps = ceiling
            c["ceiling"] = name
            c["ratio"] = round(r.get("rps", 0) / rps, 3) if rps else None
        cases.append(c)

    backends = list(dict.fromkeys(c["backend"] for c in cases if c["backend"] != "-"))

    def sort_key(c):
        name = c["case"]
        pair = backends.index(c["backend"]) if c["backend"] in backends else len(backends)
        if c["transport"] == "verifier" and name.endswith((" distinct", " cached")):
            name = "verifier 10k " + name.rsplit(" ", 1)[1]
        return (pair, ORDER.index(name) if name in ORDER else -1, c["transport"] != "http")

    cases.sort(key=sort_key)
    return {"meta": meta, "cases": cases}


def fmt(x, digits=0):
    if x is None or x == "":
        return "-"
    if isinstance(x, (int, float)):
        if digits == 0:
            return f"{x:,.0f}"
        return f"{x:.{digits}f}"
    return str(x)


def table(run):
    meta, cases = run["meta"], run["cases"]
    head = ("case", "transport", "backend", "conc", "rps", "p50 ms", "p99 ms", "ratio", "to", "errors", "cpu µs srv/all")
    rows = []
    for c in cases:
        note = " (pool ran out)" if c.get("pool_exhausted") or c.get("exhausted") else ""
        rows.append((
            c["case"] + note, c["transport"], c["backend"], fmt(c.get("concurrency")), fmt(c.get("rps")),
            fmt(c.get("p50_ms"), 2), fmt(c.get("p99_ms"), 2), fmt(c.get("ratio"), 2), c.get("ceiling") or "ceiling",
            fmt(c.get("errors", 0)),
            f"{fmt(c.get('server_cpu_us'))}/{fmt(c.get('machine_cpu_us'))}" if c.get("server_cpu_us") is not None else "",
        ))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = [
        f"Tessera benchmark: {meta.get('started', '?')}, commit {meta.get('commit', '?')}, "
        f"{meta.get('duration_s', '?')} s a case{' (quick)' if meta.get('quick') else ''}, "
        f"{meta.get('seconds', '?')} s in all",
        f"machine: {meta.get('machine', '?')}",
        "",
    ]
    right = {3, 4, 5, 6, 7, 9, 10}
    for i, row in enumerate([head] + rows):
        cells = [str(x).rjust(w) if j in right else str(x).ljust(w) for j, (x, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    for label, rss in meta.get("rss", {}).items():
        lines.append(f"server RSS, {label}: {rss['before_mb']} MB before its cases, {rss['after_mb']} MB after "
                     f"(peak {rss['peak_mb']} MB)")
    return "\n".join(lines)


def markdown(run):
    """The README's table: one row a case, one column a backend pair and transport."""
    cases = run["cases"]
    columns = []
    for c in cases:
        col = (c["backend"], c["transport"])
        if c["transport"] in ("http", "grpc") and col not in columns:
            columns.append(col)
    names = {"sqlite+memory": "SQLite + memory", "postgres+redis": "Postgres + Redis"}
    head = ["case"] + [f"{names.get(b, b)}, {'HTTP' if t == 'http' else 'gRPC'}" for b, t in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {(c["case"], c["backend"], c["transport"]): c for c in cases}
    for name in [n for n in ORDER if any(c["case"] == n and c["transport"] in ("http", "grpc") for c in cases)]:
        row = [name]
        for b, t in columns:
            c = by.get((name, b, t))
            if not c:
                row.append("")
                continue
            ratio = f" ({c['ratio']:.2f}×)" if c.get("ratio") is not None else " (ceiling)"
            errors = f", **{c['errors']} bad**" if c.get("errors") else ""
            row.append(f"{fmt(c.get('rps'))}/s{ratio}, {fmt(c.get('p50_ms'), 1)} / {fmt(c.get('p99_ms'), 1)} ms{errors}")
        lines.append("| " + " | ".join(row) + " |")
    lines += verifier_markdown(cases, names)
    other = [c for c in cases if c["transport"] not in ("http", "grpc", "verifier")]
    what = {"h2load": "gRPC health check from h2load", "cpu": "raw Argon2id", "sql": "pgbench single-row inserts",
            "sign": "raw ES256 access-token signing on every core"}
    per_token = lambda c: f" ({c['us_per_token']:.0f} µs of one core a token)" if c.get("us_per_token") else ""
    sampled = lambda c: (
        f" (the higher of {fmt(c['samples'][0])}/s before and {fmt(c['samples'][-1])}/s after)"
        if len(c.get("samples") or []) > 1 else ""
    )
    ceilings = ", ".join(
        f"{what.get(c['transport'], c['case'])} ({names.get(c['backend'], c['backend'])}) {fmt(c.get('rps'))}/s"
        + per_token(c) + sampled(c)
        for c in other
    )
    lines.append("")
    lines.append(f"Other ceilings in the same run: {ceilings}.")
    lines += cpu_markdown(cases, columns, names)
    for label, rss in run["meta"].get("rss", {}).items():
        lines.append(f"Server RSS, {names.get(label, label)}: {rss['before_mb']} MB before its cases, "
                     f"{rss['after_mb']} MB after (peak {rss['peak_mb']} MB).")
    return "\n".join(lines)


def verifier_markdown(cases, names):
    """The verifier's figures: checks a second on one core, memory, revocation to refusal."""
    rows = []
    for c in cases:
        if c["transport"] != "verifier":
            continue
        backend = names.get(c["backend"], c["backend"])
        if c["case"] == "verifier memory":
            rows.append(f"| {c['case']} | {backend} | {fmt(c.get('tokens_seen'))} distinct tokens: RSS "
                        f"{c.get('rss_before_mb')} → {c.get('rss_after_mb')} MB, {fmt(c.get('cached_tokens'))} cached, "
                        f"{fmt(c.get('revocations_held'))} revocations held |")
        elif c["case"] == "revocation to refusal":
            rows.append(f"| {c['case']} | {backend} | p50 {fmt(c.get('p50_ms'), 2)} ms, p99 {fmt(c.get('p99_ms'), 2)} ms, "
                        f"max {fmt(c.get('max_ms'), 2)} ms over {fmt(c.get('ok'))} samples"
                        f"{', **' + str(c['errors']) + ' not refused within 2 s**' if c.get('errors') else ''} |")
        else:
            ratio = f" ({c['ratio']:.1f}×)" if c.get("ratio") is not None else ""
            rows.append(f"| {c['case']} | {backend} | {fmt(c.get('rps'))}/s{ratio} |")
    if not rows:
        return []
    return ["", "| verifier (one core) | backend | figure |", "|---|---|---|"] + rows + [""]


def cpu_markdown(cases, columns, names):
    """CPU time per good answer, the server's and the whole machine's (load generator and
    databases included), in µs: where a case's cost goes, next to its rate."""
    by = {(c["case"], c["backend"], c["transport"]): c for c in cases}
    rows = []
    for name in [n for n in ORDER if any(c["case"] == n and c["transport"] in ("http", "grpc") for c in cases)]:
        cells = []
        for b, t in columns:
            c = by.get((name, b, t))
            has = c and c.get("server_cpu_us") is not None
            cells.append(f"{c['server_cpu_us']:.0f} / {c['machine_cpu_us']:.0f}" if has else "")
        if any(cells):
            rows.append("| " + " | ".join([name] + cells) + " |")
    if not rows:
        return []
    head = ["CPU µs per answer: server / machine"] + [
        f"{names.get(b, b)}, {'HTTP' if t == 'http' else 'gRPC'}" for b, t in columns
    ]
    return ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + rows + [""]


def compare(run, old):
    """Prints each case's rps change; returns the cases that dropped more than DROP."""
    key = lambda c: (c["case"], c["transport"], c["backend"])
    before = {key(c): c for c in old["cases"]}
    print(f"\ncompared with {old['meta'].get('started', '?')} (commit {old['meta'].get('commit', '?')}):")
    dropped = []
    for c in run["cases"]:
        o = before.get(key(c))
        name = f"{c['case']} / {c['transport']} / {c['backend']}"
        if not o or not o.get("rps"):
            print(f"  {name:<48} new")
            continue
        change = (c.get("rps", 0) - o["rps"]) / o["rps"]
        flag = ""
        if change < -DROP:
            flag = f"   DROP over {DROP:.0%}"
            dropped.append(name)
        ratio = ""
        if o.get("ratio") is not None and c.get("ratio") is not None:
            ratio = f"   ratio {o['ratio']:.2f} -> {c['ratio']:.2f}"
        print(f"  {name:<48} {fmt(o['rps']):>9} -> {fmt(c.get('rps')):>9}  {change:+7.1%}{ratio}{flag}")
    return dropped


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results")
    p.add_argument("--meta")
    p.add_argument("--out")
    p.add_argument("--show", help="print the table of a JSON written before")
    p.add_argument("--compare", help="a JSON of an earlier run")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    a = p.parse_args()
    if a.show:
        run = json.load(open(a.show))
    else:
        results = [json.loads(line) for line in open(a.results) if line.strip()]
        run = build(results, json.load(open(a.meta)))
    if a.markdown:
        print(markdown(run))
        return
    print(table(run))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(run, f, indent=1)
            f.write("\n")
        print(f"\nwritten to {a.out}")
    failed = False
    bad = [c for c in run["cases"] if c.get("errors")]
    for c in run["cases"]:
        if c["transport"] in ("http", "grpc") and not c.get("ok") and not c.get("errors"):
            print(f"NO GOOD ANSWERS: {c['case']} / {c['transport']} / {c['backend']}")
            failed = True
    for c in bad:
        reasons = "; ".join(f"{r['count']} x {r['reason']}" for r in c.get("error_reasons", []))
        print(f"BAD ANSWERS: {c['case']} / {c['transport']} / {c['backend']}: {c['errors']}"
              + (f" ({reasons})" if reasons else ""))
        failed = True
    if a.compare:
        dropped = compare(run, json.load(open(a.compare)))
        if dropped:
            print(f"{len(dropped)} case(s) dropped more than {DROP:.0%}")
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Helpers of benches/peers/run.sh (standard library only).

  free-port                  a free TCP port on 127.0.0.1
  wait-port PORT SECONDS     wait until 127.0.0.1:PORT accepts a connection
  cpu PID                    CPU seconds of PID's process tree (utime+stime, with reaped children)
  record OUT LOAD ...        one run's JSON: the load report and the server's CPU
  peak RUN                   the capacity (reserves/s) a capacity run found, or 0
  summarize DIR DOC PLOT     medians, spreads and ratios as markdown; the SVG plot
  wrk-summary DIR REPS S CONNECTIONS ROW...
                             wrk.sh's rows: medians, spreads and ratios as markdown
"""

import argparse
import csv
import json
import math
import os
import socket
import statistics
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")

# Display order and labels; the durability each one acknowledges with.
CONFIGS = [
    ("livestock-strict", "livestock strict", "fdatasync before the ack (group commit)"),
    ("livestock-relaxed", "livestock relaxed", "written to the kernel; fdatasync every 10 ms"),
    ("ceiling", "ceiling (bare hyper)", "none: fixed answers"),
    ("redis-always", "Redis AOF always", "fsync before the ack (per event-loop pass)"),
    ("redis-everysec", "Redis AOF everysec", "written to the kernel; fsync every second"),
    ("redis-off", "Redis, no AOF", "none: memory only"),
    ("postgres", "PostgreSQL", "synchronous_commit = on: WAL flushed before the ack"),
]
LABEL = {c: label for c, label, _ in CONFIGS}
COLOR = {
    "livestock-strict": "#d62728",
    "livestock-relaxed": "#ff7f0e",
    "ceiling": "#7f7f7f",
    "redis-always": "#1f77b4",
    "redis-everysec": "#17becf",
    "redis-off": "#9467bd",
    "postgres": "#2ca02c",
}
# Each livestock mode is compared with the peers that promise as much or less.
LIVESTOCK = ["livestock-strict", "livestock-relaxed"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def wait_port(port, seconds):
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=0.5):
                return 0
        except OSError:
            time.sleep(0.05)
    return 1


def stat_of(pid):
    """(ppid, cpu ticks of the process and its reaped children) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, utime + stime + cutime + cstime


def cpu(pid):
    """CPU seconds of PID and every live descendant (exited ones are in their parent's c*time)."""
    pid = int(pid)
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stats[int(entry)] = stat_of(entry)
            except (OSError, ValueError):
                pass
    children = {}
    for p, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(p)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += stats[p][1]
            todo.extend(children.get(p, []))
    print(f"{total / CLK_TCK:.3f}")


def record(out, load, config, rep, phase, rate, cpu0, cpu1, t0, t1, rc):
    with open(load) as f:
        report = json.load(f)
    run = {
        "config": config,
        "rep": int(rep),
        "phase": phase,
        "rate_per_s": float(rate),
        "server_cpu_s": round(float(cpu1) - float(cpu0), 3),
        "wall_s": round(float(t1) - float(t0), 3),
        "exit": int(rc),
        "load": report,
    }
    with open(out, "w") as f:
        json.dump(run, f, indent=1)
        f.write("\n")


def peak(path):
    with open(path) as f:
        run = json.load(f)
    print(int(run["load"].get("capacity_per_s") or 0))


# ------------------------------------------------------------------ summary


def latency(report, op, outcome):
    for row in report.get("latency", []):
        if row["op"] == op and row["outcome"] == outcome:
            return row
    return None


def figures(runs):
    """One repetition of one configuration -> its figures (None where a run is missing)."""
    f = {}
    f["steps"] = []
    f["oversell"] = 0
    for search in ("capacity", "saturation"):
        run = runs.get(search)
        rep = run["load"] if run else {}
        if not rep.get("steps"):
            continue
        if search == "capacity":
            f["capacity"] = rep.get("capacity_per_s")
            f["capacity_all"] = rep.get("capacity_all_per_s")
        f["steps"].extend(rep["steps"])
        f["oversell"] += rep.get("oversell_units", 0)
        answered = sum(s["requests"] for s in rep["steps"])
        if search == "saturation" and answered:
            f["saturation_cpu_us"] = run["server_cpu_s"] * 1e6 / answered
    if f["steps"]:
        f["saturation"] = max(s["served_per_s"] for s in f["steps"])
    for share in ("p50", "p90"):
        run = runs.get(share)
        if not run or not run["load"].get("latency"):
            continue
        rep = run["load"]
        row = latency(rep, "reserve", "all")
        if row:
            f[f"{share}_p50"] = row["p50_us"] / 1e3
            f[f"{share}_p99"] = row["p99_us"] / 1e3
            f[f"{share}_p999"] = row["p999_us"] / 1e3
        answered = rep["requests"]["answered"]
        f[f"{share}_served"] = rep["rates"]["served_per_s"]
        f[f"{share}_errors"] = rep["requests"]["errors"]
        f[f"{share}_late"] = rep["requests"]["started_late"] / max(1, rep["requests"]["offered"])
        if answered:
            f[f"{share}_cpu_us"] = run["server_cpu_s"] * 1e6 / answered
        v = rep["verification"]
        f["oversell"] += v["oversell_units"] + v["oversell_units_client"]
        f[f"{share}_verified"] = v["passed"]
    run = runs.get("soldout")
    if run and run["load"].get("latency"):
        rep = run["load"]
        row = latency(rep, "reserve", "sold_out")
        if row:
            f["soldout_p99"] = row["p99_us"] / 1e3
        v = rep["verification"]
        f["oversell"] += v["oversell_units"] + v["oversell_units_client"]
        f["soldout_verified"] = v["passed"]
    return f


def spread(values, digits):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a", None
    med = statistics.median(values)
    fmt = (lambda x: f"{x:,.{digits}f}") if digits else (lambda x: f"{x:,.0f}")
    if len(values) == 1:
        return fmt(med), med
    return f"{fmt(med)} ({fmt(min(values))}–{fmt(max(values))})", med


def summarize(args):
    runs = {}
    for name in sorted(os.listdir(args.dir)):
        if name.endswith(".json"):
            with open(os.path.join(args.dir, name)) as f:
                run = json.load(f)
            runs.setdefault(run["config"], {}).setdefault(run["rep"], {})[run["phase"]] = run
    present = [c for c, _, _ in CONFIGS if c in runs]
    per = {c: [figures(r) for _, r in sorted(runs[c].items())] for c in present}

    throughput = [
        ("peak reserves/s at p99 ≤ SLO", "capacity", 0),
        ("req/s at saturation", "saturation", 0),
        ("server CPU µs/req at saturation", "saturation_cpu_us", 1),
        ("server CPU µs/req @90%", "p90_cpu_us", 1),
        ("oversell units", "oversell", 0),
    ]
    latencies = [
        ("p50 @50%", "p50_p50", 2),
        ("p99 @50%", "p50_p99", 2),
        ("p99.9 @50%", "p50_p999", 2),
        ("p50 @90%", "p90_p50", 2),
        ("p99 @90%", "p90_p99", 2),
        ("p99.9 @90%", "p90_p999", 2),
        ("sold-out p99", "soldout_p99", 2),
    ]
    medians = {}
    lines = []
    w = lines.append
    w("# Peer benchmark: livestock, Redis + Lua, PostgreSQL")
    w("")
    w(f"Generated by `benches/peers/run.sh` on {time.strftime('%Y-%m-%d %H:%M')} "
      f"({args.reps} repetition(s), capacity steps of {args.step_ms} ms, fixed-rate runs of "
      f"{args.run_ms} ms). Figures are medians over the repetitions, with the min–max in "
      "parentheses.")
    w("")
    w("**Method.** The same client (`livestock-load`, open loop: latency from each request's "
      "intended send time) with the same seeded schedule drives every system, speaking its own "
      "protocol (`--backend http|redis|postgres`). Each server runs pinned to core 0, the load "
      "to core 1, on 127.0.0.1, freshly started (fresh data) for every run. A reserve is the "
      "same work everywhere: check the stock, check and count the per-user limit, take the "
      "units, record the hold with its expiry; confirms and releases follow "
      "(60% / 20% of holds, after a payment delay), the rest expire. Redis runs it as Lua "
      "scripts (EVALSHA), PostgreSQL as PL/pgSQL functions, one transaction per operation "
      "(`UPDATE deals SET available = available - $q ... WHERE available >= $q` plus a hold "
      "row), both in `crates/load/src/peers/`; their expiry runs every 10 ms, as livestock's does. "
      "livestock also stores every reserve's idempotency key, which the peers do not do.")
    w("")
    w(f"Workload: {args.workload}. Peak: the highest steady rate of reserve arrivals whose "
      f"reserve p99 held ≤ {args.slo_ms:g} ms with ≤ 0.1% errors (`--find-capacity`, steps ×2 "
      "then 3 bisections; a step that breaks is tried once more, so one stall does not end "
      "the search). *req/s at saturation*: the most requests per second (reserves and "
      "their follow-ups) any step served, including a second search from the peak with a loose "
      f"SLO ({args.sat_slo_ms:g} ms, 1% errors) whose steps overload the server. Every run "
      "starts on a freshly started server warmed by a short unmeasured run. Latencies at 50% and 90% are of reserves, in steady "
      "runs at that share of the system's own peak; *sold-out p99* is the p99 of `sold_out` "
      "answers in a run at 90% of the peak on a deal that sells out early. CPU is the server's "
      "(its whole process tree, /proc/PID/stat) over the run, per request answered; at low "
      "rates it includes fixed costs (the peers' 10 ms expiry calls, the 100 ms stock poll), so "
      "the figure at saturation is the one to compare. Oversell counts units "
      "held or sold beyond the stock, by the server's counters and by the client's ledger, "
      "over every run.")
    w("")
    def table(columns, with_durability):
        head = "| system | " + ("durability | " if with_durability else "")
        w(head + " | ".join(c[0] for c in columns) + " |")
        w("|---|" + ("---|" if with_durability else "") + "---|" * len(columns))
        for config in present:
            cells = []
            for title, key, digits in columns:
                if config == "ceiling" and key == "oversell":
                    cells.append("n/a")
                    continue
                text, med = spread([f.get(key) for f in per[config]], digits)
                medians[(config, key)] = med
                cells.append(text)
            durability = next(d for c, _, d in CONFIGS if c == config)
            lead = f"| {LABEL[config]} | " + (f"{durability} | " if with_durability else "")
            w(lead + " | ".join(cells) + " |")
        w("")

    w("### Throughput, CPU, correctness")
    w("")
    table(throughput, True)
    w("### Reserve latency, ms, at 50% and 90% of each system's own peak")
    w("")
    table(latencies, False)
    w("The ceiling answers every request with a fixed body: it stores nothing and verifies "
      "nothing (its oversell is n/a); it is the most this HTTP stack and runtime serve on one "
      "core for the same requests from the same client.")
    w("")

    ratio_cols = [
        ("peak", "capacity", True),
        ("req/s at saturation", "saturation", True),
        ("p99 @90%", "p90_p99", False),
        ("sold-out p99", "soldout_p99", False),
        ("CPU/req at saturation", "saturation_cpu_us", False),
    ]
    ours = [c for c in LIVESTOCK if c in present]
    peers = [c for c in present if c not in LIVESTOCK]
    if ours and peers:
        w("## Ratios livestock / peer")
        w("")
        w("Medians divided. Throughput: above 1 is livestock ahead; latency and CPU per request: "
          "below 1 is livestock ahead. Compare like with like: *strict* with Redis AOF always "
          "and PostgreSQL (nothing acknowledged is lost), *relaxed* with Redis everysec and no "
          "AOF.")
        w("")
        head = []
        for ours_c in ours:
            for title, _, _ in ratio_cols:
                head.append(f"{ours_c.split('-')[1]}: {title}")
        w("| peer | " + " | ".join(head) + " |")
        w("|---|" + "---|" * len(head))
        for peer in peers:
            cells = []
            for ours_c in ours:
                for _, key, _ in ratio_cols:
                    a, b = medians.get((ours_c, key)), medians.get((peer, key))
                    cells.append(f"{a / b:.2f}" if a is not None and b else "n/a")
            w(f"| {LABEL[peer]} | " + " | ".join(cells) + " |")
        w("")

    w("## Caveats")
    w("")
    late = {c: spread([f.get("p90_late") for f in per[c]], 3)[1] for c in present}
    client_bound = [LABEL[c] for c in present if (late.get(c) or 0) > 0.01]
    w("- The machine has two cores: the load generator has one. A system whose peak is near "
      "the ceiling's may be measuring the client, not the server; the load report's "
      "`started_late` (requests that left more than 2 ms after their intended instant) tells: "
      + (f"above 1% at 90% of the peak for {', '.join(client_bound)}."
         if client_bound else "it stayed under 1% at 90% of every system's peak."))
    w("- A hot deal is one row (PostgreSQL) or one hash (Redis): PostgreSQL holds the row lock "
      "until the commit's WAL flush, so reserves on one deal queue behind each flush; Redis "
      "runs one script at a time; livestock takes units with one atomic operation and waits "
      "for the flush without holding anything.")
    w("- Figures from a shared or busy machine move a lot; the min–max shows how much.")
    w("")
    w(f"![reserve p99 against served requests per second, per system]"
      f"({os.path.basename(args.plot)})")
    w("")
    w("Each point of the plot is one step of a search (both searches, every repetition), in "
      "order of offered rate: the requests per second the system served against its reserve "
      "p99, from intended send time. Where a curve turns upward the system is saturated; the "
      "dashed line is the SLO.")
    w("")
    with open(args.doc, "w") as f:
        f.write("\n".join(lines))
    write_plot(args.plot, per, present, args.slo_ms)


def tick(v):
    """An axis label: 0.1, 1, 10, 1,000, 1,000,000."""
    return f"{v:g}" if v < 1 else f"{v:,.0f}"


def write_plot(path, per, present, slo_ms):
    """Reserve p99 (log) against served req/s (log), a line per system and repetition."""
    W, H, L, R, T, B = 960, 560, 80, 220, 50, 60
    points = {
        c: [[(max(s["served_per_s"], 1), max(s["p99_ms"], 0.01))
             for s in sorted(f.get("steps", []), key=lambda s: s["rate_per_s"])]
            for f in per[c]]
        for c in present
    }
    xs = [x for c in present for line in points[c] for x, _ in line] or [1, 10]
    ys = [y for c in present for line in points[c] for _, y in line] + [slo_ms]
    x0, x1 = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)) + 1e-9)
    y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)) + 1e-9)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)

    def px(x):
        return L + (math.log10(x) - x0) / (x1 - x0) * (W - L - R)

    def py(y):
        return H - B - (math.log10(y) - y0) / (y1 - y0) * (H - T - B)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="13">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="28" font-size="18">Reserve p99 against requests served per '
           'second (search steps; log-log)</text>']
    for e in range(x0, x1 + 1):
        x = px(10 ** e)
        out.append(f'<line x1="{x:.1f}" y1="{T}" x2="{x:.1f}" y2="{H - B}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{H - B + 18}" text-anchor="middle">{tick(10 ** e)}</text>')
    for e in range(y0, y1 + 1):
        y = py(10 ** e)
        out.append(f'<line x1="{L}" y1="{y:.1f}" x2="{W - R}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{L - 8}" y="{y + 4:.1f}" text-anchor="end">{tick(10 ** e)}</text>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 15}" text-anchor="middle">'
               'requests served per second (reserves, confirms, releases)</text>')
    out.append(f'<text transform="translate(20 {(T + H - B) / 2}) rotate(-90)" '
               'text-anchor="middle">reserve p99, ms</text>')
    ys_slo = py(slo_ms)
    out.append(f'<line x1="{L}" y1="{ys_slo:.1f}" x2="{W - R}" y2="{ys_slo:.1f}" '
               'stroke="black" stroke-dasharray="6 4"/>')
    out.append(f'<text x="{W - R - 4}" y="{ys_slo - 6:.1f}" text-anchor="end">'
               f'SLO {slo_ms:g} ms</text>')
    for i, c in enumerate(present):
        color = COLOR.get(c, "black")
        for line in points[c]:
            if not line:
                continue
            d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in line)
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2" '
                       'stroke-opacity="0.8"/>')
            for x, y in line:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>')
        ly = T + 10 + i * 22
        out.append(f'<rect x="{W - R + 16}" y="{ly - 9}" width="14" height="4" fill="{color}"/>')
        out.append(f'<text x="{W - R + 36}" y="{ly - 3}">{LABEL[c]}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


WRK_ROWS = {
    "ceiling": "ceiling (bare hyper, fixed 201)",
    "sold-out": "livestock sold-out, no key",
    "ceiling-dynamic": "ceiling, requests built in Lua",
    "sold-out-keyed": "livestock sold-out, a key each",
    "reserve-strict": "livestock strict reserve",
    "reserve-relaxed": "livestock relaxed reserve",
    "redis-always": "Redis + Lua reserve, AOF always (redis-benchmark)",
    "redis-everysec": "Redis + Lua reserve, AOF everysec (redis-benchmark)",
    "redis-off": "Redis + Lua reserve, no AOF (redis-benchmark)",
}

# livestock's reserve rows against Redis's, both measured by an external closed-loop client
# (like with like: strict with AOF always and off, relaxed with off; issue 12's targets).
WRK_VERSUS = [
    ("reserve-strict", "redis-always"),
    ("reserve-strict", "redis-off"),
    ("reserve-relaxed", "redis-everysec"),
    ("reserve-relaxed", "redis-off"),
]


def redis_benchmark_parse(text):
    """redis-benchmark's --csv line (rps, latency percentiles in ms; it has p95, not p90) and
    the `holds:` line wrk.sh appends (the holds the script made: every request a success)."""
    out = {"non_2xx": 0, "requests": None}
    for row in csv.reader(text.splitlines()):
        if len(row) >= 8 and row[0] != "test":
            out["rps"] = float(row[1])
            out["p50"] = float(row[4])
            out["p99"] = float(row[6])
        elif len(row) == 1 and row[0].startswith("holds:"):
            holds, requests = (int(x) for x in row[0].split()[1:3])
            out["requests"] = requests
            out["non_2xx"] = requests - holds
    return out if "rps" in out else None


def wrk_parse(path):
    """Requests/s, latency percentiles (ms) and statuses of one wrk (or redis-benchmark) run,
    or None."""
    try:
        text = open(path).read()
    except OSError:
        return None
    if text.startswith('"test"'):
        return redis_benchmark_parse(text)
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    out = {"statuses": "", "requests": None, "non_2xx": 0}
    for line in text.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            out["rps"] = float(words[1])
        elif len(words) == 2 and words[0] in ("50%", "90%", "99%"):
            value = words[1]
            for suffix in ("us", "ms", "s"):
                if value.endswith(suffix):
                    out["p" + words[0][:-1]] = float(value[: -len(suffix)]) * unit[suffix]
                    break
        elif "requests in" in line:
            out["requests"] = int(words[0])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            out["non_2xx"] = int(words[-1])
        elif "Socket errors" in line:
            out["socket_errors"] = line.strip()
    return out if "rps" in out else None


def wrk_summary(directory, reps, seconds, connections, rows):
    runs = {row: [wrk_parse(os.path.join(directory, f"{row}-r{r}.txt"))
                  for r in range(1, int(reps) + 1)] for row in rows}
    lines = [
        f"wrk, closed loop: {connections} connections on one wrk thread pinned to the load core, "
        f"the server pinned to the other, {seconds} s per run after a warm-up, "
        f"{reps} repetition(s) alternated row by row; median (min-max).",
        "",
        "| row | req/s | p50 ms | p90 ms | p99 ms | non-2xx answers, or Redis reserves without a hold (last run) |",
        "|---|---|---|---|---|---|",
    ]
    medians = {}
    for row in rows:
        ok = [r for r in runs[row] if r]
        rps, medians[row] = spread([r["rps"] for r in ok], 0)
        cells = [spread([r.get(p) for r in ok], 2)[0] for p in ("p50", "p90", "p99")]
        statuses = (f"{ok[-1]['non_2xx']:,} of {ok[-1]['requests']:,}" if ok and ok[-1]["requests"]
                    else "no run")
        lines.append(f"| {WRK_ROWS.get(row, row)} | {rps} | " + " | ".join(cells) + f" | {statuses} |")
    lines.append("")
    # Each row against the ceiling measured with the same client (fixed or built requests).
    for row in rows:
        base = "ceiling" if row == "sold-out" else "ceiling-dynamic"
        if row.startswith(("ceiling", "redis")) or not medians.get(base) or not medians.get(row):
            continue
        lines.append(f"- {WRK_ROWS.get(row, row)} / {WRK_ROWS[base]}: "
                     f"**{medians[row] / medians[base]:.2f}** (medians)")
    for ours, theirs in WRK_VERSUS:
        if medians.get(ours) and medians.get(theirs):
            lines.append(f"- {WRK_ROWS[ours]} / {WRK_ROWS[theirs]}: "
                         f"**{medians[ours] / medians[theirs]:.2f}** (medians)")
    return "\n".join(lines)


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "free-port":
        free_port()
    elif cmd == "wait-port":
        return wait_port(*rest)
    elif cmd == "cpu":
        cpu(*rest)
    elif cmd == "record":
        record(*rest)
    elif cmd == "peak":
        peak(*rest)
    elif cmd == "wrk-summary":
        print(wrk_summary(rest[0], rest[1], rest[2], rest[3], rest[4:]))
    elif cmd == "summarize":
        p = argparse.ArgumentParser(prog="peers.py summarize")
        p.add_argument("dir")
        p.add_argument("doc")
        p.add_argument("plot")
        p.add_argument("--slo-ms", type=float, required=True)
        p.add_argument("--sat-slo-ms", type=float, required=True)
        p.add_argument("--reps", type=int, required=True)
        p.add_argument("--step-ms", type=int, required=True)
        p.add_argument("--run-ms", type=int, required=True)
        p.add_argument("--workload", default="")
        summarize(p.parse_args(rest))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

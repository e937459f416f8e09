#!/usr/bin/env python3
"""Turns a bench/run.sh results directory (meta.json + runs.jsonl) into medians:
results.json, results.md (the Warren / RabbitMQ table) and plot.png (throughput and latency
of both brokers). Prints the table. Usage: bench/report.py bench/results/<stamp>"""

import json
import statistics
import sys
from pathlib import Path

NOISE = 0.15  # this machine's run-to-run noise: ratios within ±15 % say "about the same"
BROKERS = ["warren", "rabbitmq"]
NAMES = {"warren": "Warren", "rabbitmq": "RabbitMQ"}

# metric key -> (label, unit, higher is better)
METRICS = {
    "consume_rate": ("consume", "msg/s", True),
    "publish_rate": ("publish", "msg/s", True),
    "confirm_rate": ("confirm", "msg/s", True),
    "p50_ms": ("latency p50", "ms", False),
    "p95_ms": ("latency p95", "ms", False),
    "p99_ms": ("latency p99", "ms", False),
    "p999_ms": ("latency p99.9", "ms", False),
    "max_ms": ("latency max", "ms", False),
    "cpu_per_million": ("broker CPU", "s per M msgs", False),
    "rss_mb": ("broker peak RSS", "MB", False),
    "disk_mb": ("disk used", "MB", False),
}
SHOWN = {
    "S1": ["consume_rate", "publish_rate", "p50_ms", "p99_ms", "cpu_per_million", "rss_mb"],
    "S2": ["consume_rate", "publish_rate", "confirm_rate", "p50_ms", "p99_ms", "cpu_per_million", "rss_mb"],
    "S3": ["consume_rate", "publish_rate", "p50_ms", "p99_ms", "cpu_per_million", "rss_mb"],
    "S4": ["consume_rate", "publish_rate", "p50_ms", "p99_ms", "cpu_per_million", "rss_mb"],
    "S5": ["p50_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms", "cpu_per_million", "rss_mb"],
    "S5B": ["p50_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms", "cpu_per_million", "rss_mb"],
    "S5S": ["p50_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms", "cpu_per_million", "rss_mb"],
    "S5SB": ["p50_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms", "cpu_per_million", "rss_mb"],
    "S6": ["publish_rate", "confirm_rate", "consume_rate", "rss_mb", "disk_mb", "cpu_per_million"],
}
S6_LABELS = {"publish_rate": "fill (publish)", "consume_rate": "drain (consume)"}


def metrics_of(run):
    r = run.get("report") or {}
    lat = r.get("latency") or {}
    received = r.get("received") or 0
    m = {
        "consume_rate": r.get("consume_rate"),
        "publish_rate": r.get("publish_rate"),
        "confirm_rate": r.get("confirm_rate") or None,
        "rss_mb": run["broker_peak_rss_kb"] / 1024 if run["broker_peak_rss_kb"] else None,
        "cpu_per_million": run["broker_cpu_secs"] / (received / 1e6) if received else None,
    }
    for key, q in [("p50_ms", "p50_us"), ("p95_ms", "p95_us"), ("p99_ms", "p99_us"),
                   ("p999_ms", "p999_us"), ("max_ms", "max_us")]:
        m[key] = lat[q] / 1000 if q in lat else None
    if run["scenario"] == "S6" and run["disk_peak_kb"]:
        m["disk_mb"] = (run["disk_peak_kb"] - run["disk_before_kb"]) / 1024
    return m


def problems_of(run):
    r = run.get("report")
    if not r:
        return [f"no report (exit {run['exit_code']})"]
    out = []
    loss = r.get("loss") or {}
    if loss.get("checked") and not loss.get("ok"):
        out.append(f"LOSS: {loss.get('missing')} of {loss.get('expected')} missing")
    out += [f"error: {e}" for e in r.get("errors", [])]
    if run["exit_code"] not in (0,) and not out:
        out.append(f"exit {run['exit_code']}")
    return out


def fmt(value, unit):
    if value is None:
        return "–"
    if unit == "msg/s":
        return f"{value:,.0f}"
    if unit == "MB":
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def verdict(ratio, higher_better):
    if ratio is None:
        return ""
    if abs(ratio - 1) <= NOISE:
        return "≈ (within noise)"
    better = ratio > 1 if higher_better else ratio < 1
    return "Warren better" if better else "RabbitMQ better"


def main():
    out = Path(sys.argv[1])
    meta = json.loads((out / "meta.json").read_text())
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines() if line.strip()]
    scenarios = [s for s in meta["scenarios"] if any(r["scenario"] == s for r in runs)]

    medians, problems = {}, []
    for sc in scenarios:
        medians[sc] = {}
        for b in BROKERS:
            mine = [r for r in runs if r["scenario"] == sc and r["broker"] == b]
            if not mine:
                continue
            per = [metrics_of(r) for r in mine]
            medians[sc][b] = {
                k: (statistics.median(vals) if (vals := [p[k] for p in per if p.get(k) is not None]) else None)
                for k in METRICS
            }
            medians[sc][b]["runs"] = len(mine)
            for r in mine:
                for p in problems_of(r):
                    problems.append(f"{sc} {NAMES[b]} run {r['repeat']}: {p}")

    lines = [
        f"Machine: {meta['nproc']} cores ({meta['cpu']}), {meta['memory']} RAM, Linux {meta['kernel']}; "
        f"broker pinned to cores {meta['broker_cores'] or 'any'}, warren-perf to {meta['tool_cores'] or 'any'}.",
        f"Warren {meta['warren_version'] or '–'}; RabbitMQ {meta['rabbitmq_version'] or '–'}.",
        f"Command: `{meta['command']}` — {meta['time_secs']} s per scenario, S6 {meta['backlog_messages']:,} messages, "
        f"median of {meta['repeat']} runs each. Differences within ±{NOISE:.0%} are machine noise.",
        "",
        "| Scenario | Metric | Warren | RabbitMQ | Warren / RabbitMQ | |",
        "|---|---|---:|---:|---:|---|",
    ]
    for sc in scenarios:
        title = meta["scenarios"][sc]["title"]
        for i, key in enumerate(SHOWN.get(sc, [])):
            label, unit, higher = METRICS[key]
            if sc == "S6":
                label = S6_LABELS.get(key, label)
            w = medians[sc].get("warren", {}).get(key)
            r = medians[sc].get("rabbitmq", {}).get(key)
            ratio = w / r if (w and r) else None
            head = f"**{sc}** {title}" if i == 0 else ""
            note = verdict(ratio, higher)
            if key == "disk_mb" and w is not None and w < 1:
                note = "Warren wrote nothing: messages kept in memory"
            lines.append(
                f"| {head} | {label} ({unit}) | {fmt(w, unit)} | {fmt(r, unit)} | "
                f"{'–' if ratio is None else f'{ratio:.2f}'} | {note} |"
            )
    lines += ["", "Broker CPU is utime+stime of the broker process over the scenario, per million "
              "messages delivered to consumers; peak RSS is VmRSS sampled every 0.25 s; latency is "
              "end to end (publish to delivery) from a timestamp in each message."]
    if problems:
        lines += ["", "Problems seen:", ""] + [f"- {p}" for p in problems]
    else:
        lines += ["", "Every run passed its loss check (every confirmed, or without confirms every "
                  "sent, message arrived) with no errors."]
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(f"# Warren vs RabbitMQ — {meta['stamp']}\n\n" + table +
                                    "\n![throughput and latency](plot.png)\n")
    (out / "results.json").write_text(json.dumps(
        {"meta": meta, "medians": medians, "problems": problems, "runs": runs}, indent=1))
    print(table)
    plot(out, meta, scenarios, medians)


def plot(out, meta, scenarios, medians):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no plot)", file=sys.stderr)
        return
    colors = {"warren": "#2a9d8f", "rabbitmq": "#f4a261"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    # Throughput: consume rate per scenario; S6 as fill and drain.
    groups = []
    for sc in scenarios:
        if sc.startswith("S5"):
            continue
        if sc == "S6":
            groups += [("S6 fill", sc, "publish_rate"), ("S6 drain", sc, "consume_rate")]
        else:
            groups.append((sc, sc, "consume_rate"))
    width = 0.38
    for i, b in enumerate(BROKERS):
        xs = [j + (i - 0.5) * width for j in range(len(groups))]
        ys = [medians[sc].get(b, {}).get(key) or 0 for _, sc, key in groups]
        bars = ax1.bar(xs, ys, width, label=NAMES[b], color=colors[b])
        for bar, y in zip(bars, ys):
            if y:
                ax1.annotate(f"{y/1000:.0f}k", (bar.get_x() + bar.get_width() / 2, y),
                             ha="center", va="bottom", fontsize=7)
    ax1.set_xticks(range(len(groups)), [g[0] for g in groups])
    ax1.set_yscale("log")
    ax1.set_ylabel("messages / s (consumed; S6 fill = published)")
    ax1.set_title("Throughput (higher is better)")
    ax1.legend()
    # Latency: p50 solid, p99 hatched.
    lat = [sc for sc in scenarios if sc != "S6"]
    width = 0.2
    for i, b in enumerate(BROKERS):
        for k, (key, hatch) in enumerate([("p50_ms", None), ("p99_ms", "//")]):
            off = (i * 2 + k - 1.5) * width
            ys = [medians[sc].get(b, {}).get(key) or 0 for sc in lat]
            ax2.bar([j + off for j in range(len(lat))], ys, width, color=colors[b], hatch=hatch,
                    edgecolor="black" if hatch else None, linewidth=0.3,
                    label=f"{NAMES[b]} {'p99' if hatch else 'p50'}")
    ax2.set_xticks(range(len(lat)), lat)
    ax2.set_yscale("log")
    ax2.set_ylabel("end-to-end latency, ms")
    ax2.set_title("Latency (lower is better)")
    ax2.legend(fontsize=8)
    fig.suptitle(f"Warren {meta['warren_version']} vs RabbitMQ {meta['rabbitmq_version']} — "
                 f"{meta['nproc']} cores, median of {meta['repeat']}, ±15 % noise", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

"""Write the reliability report (markdown plus one PNG per run) from checked chaos run directories.

Runs already in the report whose directories are not given again are kept, as they were published, under "Earlier
runs" (run directories are not kept in the repository, so they cannot be checked again)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from proof.chaos.checker import Distribution, GroupResult, Report, check

# Colours per group, in run.json order (matplotlib's default cycle, so the figure matches its legend).
_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


_EARLIER = "## Earlier runs"
_EARLIER_NOTE = (
    "As they were published, checked by the checker of their time (see the history of "
    "`proof/chaos/checker.py`); their run directories are not kept, so they are not checked again."
)
_RUN_HEADING = re.compile(r"^(#{2,3}) Run `([^`]+)`")


def write_report(
    run_dirs: list[Path],
    out_md: Path,
    image_dir: Path,
    method: str = "_Method: to be written._",
    *,
    keep_earlier: bool = True,
) -> None:
    """Check each run directory and write ``out_md`` with one PNG per run in ``image_dir``. With ``keep_earlier``,
    the runs of the existing ``out_md`` that are not among ``run_dirs`` follow under "Earlier runs"."""
    image_dir.mkdir(parents=True, exist_ok=True)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    earlier = earlier_runs(out_md.read_text(encoding="utf-8")) if keep_earlier and out_md.exists() else []
    names = {d.name for d in run_dirs}
    lines = ["# Reliability", "", method.strip(), ""]
    for run_dir in run_dirs:
        report = check(run_dir)
        png = image_dir / f"{run_dir.name}.png"
        _plot(report, png)
        lines += _run_section(report, os.path.relpath(png, out_md.parent))
    kept = [(name, section) for name, section in earlier if name not in names]
    if kept:
        lines += [_EARLIER, "", _EARLIER_NOTE, ""]
        for _, section in kept:
            lines += [*section, ""]
    out_md.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


def earlier_runs(markdown: str) -> list[tuple[str, list[str]]]:
    """The run sections of a report, in order, as (run name, lines), their headings one level below "Earlier
    runs" (a run section ends at the next heading of its level or above)."""
    lines = markdown.splitlines()
    runs: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(lines):
        match = _RUN_HEADING.match(lines[i])
        if match is None:
            i += 1
            continue
        level = len(match.group(1))
        j = i + 1
        while j < len(lines) and not _ends_section(lines[j], level):
            j += 1
        shift = 3 - level  # "## Run" becomes "### Run", its "### Group" "#### Group"
        section = [("#" * shift + line) if line.startswith("#") else line for line in lines[i:j]]
        runs.append((match.group(2), section))
        i = j
    for _, section in runs:
        while section and not section[-1].strip():
            section.pop()
    return runs


def _ends_section(line: str, level: int) -> bool:
    heading = re.match(r"^(#+) ", line)
    return heading is not None and len(heading.group(1)) <= level


def verdict(group: GroupResult) -> str:
    """PASS or FAIL with the counts of duplicates and losses the group's policy does not allow."""
    t = group.total
    head = f"{t.duplicate_ticks_violating} duplicates / {t.missing_not_allowed} losses outside the policy"
    allowed = t.duplicate_ticks - t.duplicate_ticks_violating
    if allowed:
        head += f"; {allowed} re-sends after a fault (same task id, allowed in at-least-once)"
    if group.ok:
        return f"PASS: {head}"
    off_grid = f", {t.off_grid} off-grid ticks" if t.off_grid else ""
    return f"FAIL: {head}{off_grid} ({len(group.violations)} violations in all)"


def _seconds(ms: int | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.2f}"


def _dist_ms(d: Distribution) -> str:
    return " | ".join("-" if v is None else str(v) for v in (d.p50, d.p90, d.p99, d.max))


def _run_section(report: Report, png_link: str) -> list[str]:
    minutes = (report.window_end - report.window_start) / 60_000
    lines = [
        f"## Run `{report.run_dir.name}`",
        "",
        f"Seed {report.seed}, duration {minutes:.1f} min (checked window). Fault applications "
        f"{report.faults_applied}, skipped {report.faults_skipped} (a replica fault is applied once per group; "
        "skipped: the target was already under another fault, or the replica count was at its bound).",
        "",
    ]
    for g in report.groups.values():
        faults = ", ".join(f"{kind} {n}" for kind, n in sorted(g.fault_counts.items())) or "none"
        total = sum(g.fault_counts.values())
        lines.append(
            f"* `{g.name}`: {g.delivery}, catch-up {g.catchup}, lease {g.lease_ms / 1000:g} s, "
            f"{len(g.entries)} entries; faults: {faults} (total {total})"
        )
    lines.append("")
    for g in report.groups.values():
        t = g.total
        lines += [
            f"### Group `{g.name}`",
            "",
            "| expected | once | duplicates (id-identical / other) | missing allowed (once / at-most-once) "
            "| missing NOT allowed | off-grid |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {t.expected} | {t.once} | {t.duplicate_ticks_id_identical} / "
            f"{t.duplicate_ticks - t.duplicate_ticks_id_identical} | {t.missing_once} / {t.missing_at_most_once} "
            f"| {t.missing_not_allowed} | {t.off_grid} |",
            "",
            f"**{verdict(g)}**",
            "",
        ]
        if g.zombie_decisions is not None:
            lines += [
                f"Decisions that landed too late, after their session's lease ran out or their epoch was superseded "
                f"(late writes of a replica that was cut off, paused or stuck behind a broker outage; the protocol "
                f"ignored them): {g.zombie_decisions}.",
                "",
            ]
    lines += [
        "Missing ticks near the faults of each kind, whatever their verdict (in a fault's window, [start - 1 s, end + "
        "lease + 1 s], for deaf and crash-loop + probation): all of them; those of entries whose owner such a fault "
        "did not hit (healthy owners); and of those, the ones no other fault of their owner or of the group explains "
        "(for poison, deaf and crash-loop each of these is a violation):",
        "",
        "| group | kind | faults | missing near | of healthy owners | not explained by another fault |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for g in report.groups.values():
        for kind, near in g.near.items():
            lines.append(
                f"| {g.name} | {kind} | {near.faults} | {near.missing} | {near.healthy} | {near.unexplained} |"
            )
    lines += [
        "",
        "Records the replicas could not use, by kind of problem (how many replica processes logged it; each logs a "
        "kind once):",
        "",
    ]
    for g in report.groups.values():
        skipped = ", ".join(f"`{code}` {n}" for code, n in g.skipped_kinds.items()) or "none"
        lines.append(f"* `{g.name}` ({g.replica_logs} replica processes): {skipped}")
    lines += [
        "",
        "Failover gaps by fault kind (seconds; for poison, delete-records and crash-loop, which move no entry, the "
        "longest time between two dispatches of an entry while the fault lasted: 1 s is no pause):",
        "",
        "| group | kind | faults | p50 | p99 | max | kept | owned nothing |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for g in report.groups.values():
        for kind, s in g.failover.items():
            lines.append(
                f"| {g.name} | {kind} | {s.faults} | {_seconds(s.gaps.p50)} | {_seconds(s.gaps.p99)} "
                f"| {_seconds(s.gaps.max)} | {s.kept} | {s.owned_nothing} |"
            )
    lines += [
        "",
        "Dispatch lateness, receive time minus tick (ms); quiet ticks are outside every fault window:",
        "",
        "| group | ticks | p50 | p90 | p99 | max | quiet ticks | p50 | p90 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in report.groups.values():
        a, q = g.lateness_all, g.lateness_quiet
        lines.append(f"| {g.name} | {a.count} | {_dist_ms(a)} | {q.count} | {_dist_ms(q)} |")
    lines += ["", f"![failover gaps and lateness of {report.run_dir.name}]({png_link})", ""]
    return lines


def _plot(report: Report, png: Path) -> None:
    import matplotlib  # noqa: PLC0415 - heavy; only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (gaps_ax, late_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    kinds = sorted({kind for g in report.groups.values() for kind in g.failover})
    width = 0.7 / max(1, len(report.groups))
    for i, (g, colour) in enumerate(zip(report.groups.values(), _COLOURS * 4, strict=False)):
        offset = (i - (len(report.groups) - 1) / 2) * width
        xs: list[float] = []
        ys: list[float] = []
        for x, kind in enumerate(kinds):
            values = [f.gap_ms / 1000 for f in g.fault_gaps if f.kind == kind and f.gap_ms is not None]
            if values:
                box = gaps_ax.boxplot(values, positions=[x + offset], widths=width * 0.8, showfliers=False)
                for part in box.values():
                    for artist in part:
                        artist.set_color(colour)
            # Deterministic jitter inside the group's slot, so reruns draw the same figure.
            xs += [x + offset + width * 0.3 * ((j % 7) / 3 - 1) for j in range(len(values))]
            ys += values
        gaps_ax.scatter(xs, ys, s=10, color=colour, alpha=0.6, label=g.name)
        late = sorted(max(1, v) for v in g.lateness_ms)  # a log axis cannot show <= 0 (skewed clocks)
        if late:
            late_ax.step(
                late, [(j + 1) / len(late) for j in range(len(late))], where="post", color=colour, label=g.name
            )
    gaps_ax.set_xticks(range(len(kinds)), kinds)
    gaps_ax.set_ylim(bottom=0)
    gaps_ax.set_ylabel("failover gap (s)")
    gaps_ax.set_title("Failover gap per fault")
    late_ax.set_xscale("log")
    late_ax.set_xlabel("dispatch lateness, recv - tick (ms)")
    late_ax.set_ylabel("fraction of ticks")
    late_ax.set_title("Lateness CDF")
    for ax in (gaps_ax, late_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(f"run {report.run_dir.name}")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)

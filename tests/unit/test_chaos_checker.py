"""The chaos checker's rules, each shown to pass and to fail on a small synthetic run directory."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest

from proof.chaos.checker import NearStats, Report, check, main, percentile, render_text, to_json
from proof.chaos.report import write_report

T0 = 1_795_930_020_000  # window start; the window is 10 s, so an entry every 1 s has 11 ticks
END = T0 + 10_000
X, Y = "g-r1-1", "g-r2-1"


def tick(k: int, *, node: str = X, late: int = 5, entry: str = "e", task_id: str | None = None) -> dict[str, object]:
    """Message of tick T0 + k s, received ``late`` ms after it was due."""
    t = T0 + k * 1000
    return {"entry": entry, "tick": t, "id": task_id or f"id-{entry}-{t}", "node": node, "epoch": 1, "recv": t + late}


def fault(n: int, kind: str, target: str, start: int, end: int | None, *, group: str | None = "g") -> list[str]:
    events = [{"n": n, "kind": kind, "group": group, "target": target, "phase": "start", "t": start, "detail": {}}]
    if end is not None:
        events.append({**events[0], "phase": "end", "t": end})
    return [json.dumps(e) for e in events]


def make_run(
    path: Path,
    ticks: Iterable[dict[str, object]],
    *,
    delivery: str = "at-least-once",
    catchup: str = "all",
    faults: Iterable[str] = (),
    entries: dict[str, float] | None = None,
    extra_lines: Iterable[str] = (),
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    group = {
        "delivery": delivery,
        "catchup": catchup,
        "grace": 1000,
        "lease": 3000,
        "decision_lead": 250,
        "entries": {name: {"every": every} for name, every in (entries or {"e": 1}).items()},
    }
    run = {"seed": 7, "started": T0 - 20_000, "window": {"start": T0, "end": END}, "groups": {"g": group}}
    (path / "run.json").write_text(json.dumps(run))
    lines = [json.dumps(t) for t in ticks] + list(extra_lines)
    (path / "ticks-g.jsonl").write_text("".join(f"{line}\n" for line in lines))
    (path / "faults.jsonl").write_text("".join(f"{line}\n" for line in faults))
    return path


def all_ticks(skip: Iterable[int] = ()) -> list[dict[str, object]]:
    return [tick(k) for k in range(11) if k not in set(skip)]


def only_violation(report: Report, text: str) -> None:
    assert not report.ok
    assert len(report.violations) == 1, report.violations
    assert text in report.violations[0]


def test_clean_run_is_ok(tmp_path: Path) -> None:
    report = check(make_run(tmp_path, [tick(-3), *all_ticks(), tick(11)]))
    assert report.ok, report.violations
    total = report.groups["g"].total
    assert (total.expected, total.once, total.duplicate_ticks, total.missing_not_allowed) == (11, 11, 0, 0)
    assert report.groups["g"].outside_window_messages == 2
    assert "OK" in render_text(report)


def test_at_most_once_any_duplicate_is_a_violation(tmp_path: Path) -> None:
    report = check(make_run(tmp_path, [*all_ticks(), tick(4, node=Y, late=300)], delivery="at-most-once"))
    only_violation(report, "duplicates not allowed in at-most-once")
    total = report.groups["g"].total
    assert (total.duplicate_ticks, total.duplicate_ticks_id_identical, total.duplicate_ticks_violating) == (1, 1, 1)


def test_at_least_once_id_identical_duplicate_is_allowed_and_counted(tmp_path: Path) -> None:
    # X published tick 4 and was killed before its confirmation counted; Y re-sent it twice
    resends = [tick(4, node=Y, late=300), tick(4, node=Y, late=400)]
    kill = fault(1, "kill", X, T0 + 4100, T0 + 5000)
    report = check(make_run(tmp_path, [*all_ticks(), *resends], faults=kill))
    assert report.ok, report.violations
    total = report.groups["g"].total
    assert (total.once, total.duplicate_ticks, total.duplicate_copies) == (10, 1, 2)
    assert (total.duplicate_ticks_id_identical, total.duplicate_ticks_violating) == (1, 0)


def test_at_least_once_duplicate_without_a_fault_of_its_nodes_is_a_violation(tmp_path: Path) -> None:
    # Task ids are uuid5(topic, entry, tick): a split brain sends one id twice too, so the id alone proves nothing
    kill_other = fault(1, "kill", "g-r7-1", T0 + 4100, T0 + 5000)
    report = check(make_run(tmp_path, [*all_ticks(), tick(4, node=Y, late=300)], faults=kill_other))
    only_violation(report, "no fault of those nodes or the brokers around it")


def test_at_least_once_duplicate_with_another_task_id_is_a_violation(tmp_path: Path) -> None:
    report = check(make_run(tmp_path, [*all_ticks(), tick(4, node=Y, task_id="other")]))
    only_violation(report, "duplicates not allowed in at-least-once")
    assert report.groups["g"].total.duplicate_ticks_violating == 1


def test_catchup_all_allows_no_missing_tick(tmp_path: Path) -> None:
    report = check(make_run(tmp_path, all_ticks(skip=[4])))
    only_violation(report, "a loss outside the policy: 1795930024000")
    total = report.groups["g"].total
    assert (total.expected, total.once, total.missing_not_allowed) == (11, 10, 1)


def test_catchup_once_allows_ticks_collapsed_into_an_overdue_successor(tmp_path: Path) -> None:
    # Given ticks 3 and 4 missing and tick 5 received 1001 ms after it was due (past the 1000 ms grace)
    ticks = [tick(k, late=1001 if k == 5 else 5) for k in range(11) if k not in (3, 4)]
    report = check(make_run(tmp_path, ticks, catchup="once"))
    # Then both were collapsed into tick 5, as 'once' says
    assert report.ok, report.violations
    assert report.groups["g"].total.missing_once == 2


def test_catchup_once_does_not_excuse_a_tick_whose_successor_was_on_time(tmp_path: Path) -> None:
    # Exactly at the grace the successor was not overdue past it: the missing ticks are losses
    ticks = [tick(k, late=1000 if k == 5 else 5) for k in range(11) if k not in (3, 4)]
    report = check(make_run(tmp_path, ticks, catchup="once"))
    only_violation(report, "a loss outside the policy")
    total = report.groups["g"].total
    assert (total.missing_once, total.missing_not_allowed) == (0, 2)


def sync_log(path: Path, decided: dict[int, tuple[int, str]]) -> None:
    """Write ``sync-g.jsonl``: tick k decided at broker time T0 + at by node ``node`` (X or Y)."""
    lines = [{"o": 0, "t": T0 - 9000, "s": "sx", "k": "hello", "node": X}]
    lines.append({"o": 1, "t": T0 - 9000, "s": "sy", "k": "hello", "node": Y})
    for k, (at, node) in sorted(decided.items()):  # X's claim is offset 2; Y's comes right after X's last decision
        epoch = 2 if node == X else 100 + max(j for j, (_, n) in decided.items() if n == X) + 1
        item = ["e", epoch, T0 + k * 1000]
        lines.append({"o": 100 + k, "t": T0 + at, "s": "sx" if node == X else "sy", "k": "decide", "i": [item]})
    (path / "sync-g.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_with_the_sync_log_once_allows_only_ticks_overdue_past_the_grace_when_the_next_was_decided(
    tmp_path: Path,
) -> None:
    # Given ticks 3 and 4 never decided; X decided up to 2, Y decided 5 (and on) at broker time T0 + 5.2 s
    ticks = [tick(k) for k in range(3)] + [tick(k, node=Y, late=250 if k == 5 else 5) for k in range(5, 11)]
    decided = {k: (k * 1000 - 250, X) for k in range(3)} | {k: (max(5200, k * 1000 - 250), Y) for k in range(5, 11)}
    run = make_run(tmp_path / "late", ticks, catchup="once")
    sync_log(run, decided)
    report = check(run)
    # Then both were overdue past the grace at that decision: collapsed, as 'once' says
    assert report.ok, report.violations
    assert report.groups["g"].total.missing_once == 2
    # But when Y decided 5 ahead of time (T0 + 4.75 s), tick 4 was not past the grace: a loss at the handover,
    # although the epoch changed and tick 5 arrived more than the grace after tick 4
    decided[5] = (4750, Y)
    run = make_run(tmp_path / "handover", ticks, catchup="once")
    sync_log(run, decided)
    report = check(run)
    only_violation(report, "a loss outside the policy")
    assert (report.groups["g"].total.missing_once, report.groups["g"].total.missing_not_allowed) == (1, 1)


def test_with_the_sync_log_a_zombie_decision_decided_nothing(tmp_path: Path) -> None:
    # Given X cut off after deciding tick 3; Y claimed (epoch 3) and, 'once', decided only tick 6 at T0 + 6.2 s
    ticks = [tick(k) for k in range(4)] + [tick(k, node=Y) for k in range(6, 11)]
    decided = {k: (k * 1000 - 250, X) for k in range(4)} | {k: (max(6200, k * 1000 - 250), Y) for k in range(6, 11)}
    run = make_run(tmp_path, ticks, delivery="at-least-once", catchup="once")
    sync_log(run, decided)
    # When X's decision of tick 4 (epoch 2, sent before the cut) lands after the heal, behind Y's decisions
    zombie = {"o": 199, "t": T0 + 9000, "s": "sx", "k": "decide", "i": [["e", 2, T0 + 4000]]}
    with (run / "sync-g.jsonl").open("a") as out:
        out.write(json.dumps(zombie) + "\n")
    report = check(run)
    # Then tick 4 counts as never decided: collapsed by 'once' like tick 5, not an at-least-once loss
    assert report.ok, report.violations
    assert report.groups["g"].total.missing_once == 2
    assert any("1 decisions landed too late" in note for note in report.notes)


def test_with_the_sync_log_a_decision_after_its_session_ended_decided_nothing(tmp_path: Path) -> None:
    # Given X deciding ticks 0-3, its last record at T0 + 2.75 s; Y starts and votes X out (naming that record);
    # X's decision of tick 4 lands after the vote (the brokers were away); Y then claims and decides ticks 7-10
    def decide(o: int, at: int, session: str, epoch: int, k: int) -> dict[str, object]:
        return {"o": o, "t": T0 + at, "s": session, "k": "decide", "i": [["e", epoch, T0 + k * 1000]]}

    lines: list[dict[str, object]] = [{"o": 0, "t": T0 - 1000, "s": "sx", "k": "hello", "node": X, "lease": 3000}]
    lines += [decide(10 + k, k * 1000 - 250, "sx", 1, k) for k in range(4)]
    lines.append({"o": 14, "t": T0 + 5000, "s": "sy", "k": "hello", "node": Y, "lease": 3000})
    lines.append({"o": 15, "t": T0 + 6000, "s": "sy", "k": "expire", "i": [["sx", 13]]})
    lines.append(decide(16, 7000, "sx", 1, 4))
    lines.append({"o": 17, "t": T0 + 7010, "s": "sy", "k": "claim", "e": ["e"]})
    lines += [decide(18 + k, max(7050, k * 1000 - 250), "sy", 17, k) for k in range(7, 11)]
    ticks = [tick(k) for k in range(4)] + [tick(k, node=Y, late=60 if k == 7 else 5) for k in range(7, 11)]
    run = make_run(tmp_path, ticks, delivery="at-least-once", catchup="once")
    (run / "sync-g.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = check(run)
    # Then tick 4 was never validly decided: with 5 and 6, collapsed into tick 7 by 'once'
    assert report.ok, report.violations
    assert report.groups["g"].total.missing_once == 3
    assert any("1 decisions landed too late" in note for note in report.notes)


def test_with_the_sync_log_a_vote_naming_an_older_record_ends_nothing(tmp_path: Path) -> None:
    # Given the same X, but Y's vote names X's third decision, not its latest record (Y had not read the fourth)
    def decide(o: int, at: int, session: str, epoch: int, k: int) -> dict[str, object]:
        return {"o": o, "t": T0 + at, "s": session, "k": "decide", "i": [["e", epoch, T0 + k * 1000]]}

    lines: list[dict[str, object]] = [{"o": 0, "t": T0 - 1000, "s": "sx", "k": "hello", "node": X, "lease": 3000}]
    lines += [decide(10 + k, k * 1000 - 250, "sx", 1, k) for k in range(4)]
    lines.append({"o": 14, "t": T0 + 3000, "s": "sy", "k": "hello", "node": Y, "lease": 3000})
    lines.append({"o": 15, "t": T0 + 3100, "s": "sy", "k": "expire", "i": [["sx", 12]]})
    lines += [decide(16 + k, k * 1000 - 250, "sx", 1, k) for k in range(4, 11)]
    ticks = [tick(k) for k in range(11)]
    run = make_run(tmp_path, ticks, delivery="at-least-once", catchup="once")
    (run / "sync-g.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = check(run)
    # Then X is still live: all its decisions count, and every tick was decided and published
    assert report.ok, report.violations
    assert report.groups["g"].total.missing_once == 0
    assert not any("landed too late" in note for note in report.notes)


def test_with_the_sync_log_a_decided_tick_never_published_is_at_most_once_only_if_its_decider_failed(
    tmp_path: Path,
) -> None:
    ticks = [tick(k) for k in range(11) if k != 4]
    decided = {k: (k * 1000 - 250, X) for k in range(11)}
    for name, delivery, kind, ok in [
        ("amo-kill", "at-most-once", "kill", True),
        ("amo-term", "at-most-once", "term", False),
        ("alo-kill", "at-least-once", "kill", False),
    ]:
        run = make_run(tmp_path / name, ticks, delivery=delivery, faults=fault(1, kind, X, T0 + 3900, T0 + 4500))
        sync_log(run, decided)
        report = check(run)
        assert report.ok is ok, (name, report.violations)
        assert report.groups["g"].total.missing_at_most_once == (1 if ok else 0)


def amo_run(path: Path, *faults: str) -> Report:
    """X owns the entry until it fails at T0 + 4.2 s; Y resumes at tick 7; ticks 4-6 are lost."""
    ticks = [tick(k) for k in range(4)] + [tick(k, node=Y) for k in range(7, 11)]
    return check(make_run(path, ticks, delivery="at-most-once", faults=faults))


def test_at_most_once_loss_in_an_unclean_fault_of_the_owner_is_allowed(tmp_path: Path) -> None:
    report = amo_run(tmp_path, *fault(1, "kill", X, T0 + 4200, T0 + 5000))
    assert report.ok, report.violations
    assert report.groups["g"].total.missing_at_most_once == 3


def test_at_most_once_loss_in_a_broker_fault_is_allowed(tmp_path: Path) -> None:
    report = amo_run(tmp_path, *fault(1, "broker", "broker:0", T0 + 4200, T0 + 5000, group=None))
    assert report.ok, report.violations
    assert report.groups["g"].fault_counts == {"broker": 1}


def test_at_most_once_loss_after_a_clean_stop_is_a_violation(tmp_path: Path) -> None:
    report = amo_run(tmp_path / "term", *fault(1, "term", X, T0 + 4200, T0 + 5000))
    only_violation(report, "a loss outside the policy")
    assert report.groups["g"].total.missing_not_allowed == 3
    # Nor does an unclean fault of another node excuse it
    only_violation(amo_run(tmp_path / "other", *fault(1, "kill", Y, T0 + 4200, T0 + 5000)), "outside the policy")


def test_a_clean_stop_that_had_to_be_killed_counts_as_unclean(tmp_path: Path) -> None:
    term = fault(1, "term", X, T0 + 4200, T0 + 5000)
    forced = json.loads(term[1])
    forced["detail"] = {"clean": False}  # the harness SIGKILLed it after the stop timeout
    report = amo_run(tmp_path, term[0], json.dumps(forced))
    assert report.ok, report.violations
    assert report.groups["g"].total.missing_at_most_once == 3


def test_at_most_once_loss_past_the_lease_after_the_fault_is_a_violation(tmp_path: Path) -> None:
    # The window ends at end + lease + 1 s = T0 + 4.999 s: ticks 5 and 6 are beyond it
    report = amo_run(tmp_path, *fault(1, "kill", X, T0 + 500, T0 + 999))
    total = report.groups["g"].total
    assert (total.missing_at_most_once, total.missing_not_allowed) == (1, 2)


def test_off_grid_tick_is_a_violation(tmp_path: Path) -> None:
    off = {**tick(4), "tick": T0 + 4500, "recv": T0 + 4505, "id": "off"}
    report = check(make_run(tmp_path, [*all_ticks(), off]))
    only_violation(report, "off-grid ticks (period 1000 ms, phase 0): 1795930024500")
    assert report.groups["g"].total.off_grid == 1


def test_entry_never_dispatched_is_a_violation(tmp_path: Path) -> None:
    report = check(make_run(tmp_path, all_ticks(), entries={"e": 1, "slow": 3}))
    only_violation(report, "entry slow never dispatched")
    slow = report.groups["g"].entries["slow"]
    assert (slow.expected, slow.missing_not_allowed) == (4, 4)  # ceil(10 s / 3 s)


def test_failover_gap_and_kept_entries(tmp_path: Path) -> None:
    # Given X dispatches e and f until T0 + 4 s; X is killed at T0 + 4.5 s
    kill_at = T0 + 4500
    before = [tick(k, entry=name) for name in ("e", "f") for k in range(5)]
    # When Y dispatches e 2.5 s later, while the next dispatch of f is by X itself (sent before it died)
    after = [tick(k, entry="e", node=Y, late=kill_at + 2500 - (T0 + k * 1000)) for k in range(5, 11)]
    after += [tick(k, entry="f", late=kill_at + 3000 - (T0 + k * 1000)) for k in range(5, 11)]
    faults = [*fault(1, "kill", X, kill_at, kill_at + 1000), *fault(2, "scale-down", "g-r9-1", kill_at, kill_at)]
    report = check(make_run(tmp_path, before + after, entries={"e": 1, "f": 1}, faults=faults))
    group = report.groups["g"]
    kill = group.fault_gaps[0]
    assert (kill.kind, kill.owned, kill.kept, kill.gap_ms) == ("kill", 2, 1, 2500)
    assert group.failover["kill"].gaps.max == 2500
    assert group.failover["kill"].kept == 1
    assert (group.failover["scale-down"].owned_nothing, group.failover["scale-down"].gaps.count) == (1, 0)
    assert "failover kill       faults 1, gap p50 2500" in render_text(report)


def test_failover_gap_of_a_clean_stop_skips_the_ticks_it_published_while_stopping(tmp_path: Path) -> None:
    # Given X SIGTERMed at T0 + 4.9 s, still publishing tick 5 (decided before the signal) while it stops
    term_at = T0 + 4900
    ticks = [tick(k) for k in range(6)]
    # When Y dispatches from tick 6 on, 1.105 s after the signal
    ticks += [tick(k, node=Y) for k in range(6, 11)]
    # And a longer-period entry owned by X (its wait for the next tick is not a failover gap)
    ticks += [tick(0, entry="slow"), tick(5, entry="slow", node=Y, late=4000), tick(10, entry="slow", node=Y)]
    faults = fault(1, "term", X, term_at, term_at + 500)
    report = check(make_run(tmp_path, ticks, entries={"e": 1, "slow": 5}, faults=faults))
    assert report.ok, report.violations
    gap = report.groups["g"].fault_gaps[0]
    assert (gap.owned, gap.kept, gap.gap_ms) == (1, 0, T0 + 6005 - term_at)


def test_broker_fault_gap_is_the_slowest_entry_to_resume(tmp_path: Path) -> None:
    # Given a broker killed at T0 + 4.5 s; f resumes with tick 5, e only with tick 7 (5 and 6 lost, at most once)
    ticks = [*all_ticks(skip=[5, 6]), *[tick(k, entry="f") for k in range(11)]]
    faults = fault(3, "broker", "broker:1", T0 + 4500, T0 + 5500, group=None)
    report = check(make_run(tmp_path, ticks, entries={"e": 1, "f": 1}, faults=faults, delivery="at-most-once"))
    assert report.ok, report.violations
    gap = report.groups["g"].failover["broker"]
    assert (gap.faults, gap.gaps.max) == (1, 7005 - 4500)  # e resumed with tick 7, received at T0 + 7.005 s


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 11))
    assert [percentile(values, p) for p in (50, 90, 99)] == [5, 9, 10]
    assert percentile([42], 99) == 42
    assert percentile([], 50) is None


def test_lateness_over_all_and_quiet_ticks(tmp_path: Path) -> None:
    # Given lateness 10, 20, ..., 110 ms, and a fault window [T0 + 8 s, T0 + 8 s + lease + 2 s] covering ticks 8-10
    ticks = [tick(k, late=10 * (k + 1)) for k in range(11)]
    report = check(make_run(tmp_path, ticks, faults=fault(1, "term", Y, T0 + 8000, T0 + 8000)))
    group = report.groups["g"]
    assert (group.lateness_all.count, group.lateness_all.p50, group.lateness_all.p90) == (11, 60, 100)
    assert (group.lateness_all.p99, group.lateness_all.max) == (110, 110)
    assert (group.lateness_quiet.count, group.lateness_quiet.max) == (8, 80)


def test_malformed_lines_and_unended_faults_are_reported_not_fatal(tmp_path: Path) -> None:
    faults = [*fault(1, "kill", X, T0 + 4200, None), "{oops", json.dumps({"n": 2, "kind": "kill"})]
    run = make_run(tmp_path, all_ticks(), faults=faults, extra_lines=["not json", '{"entry": "e", "tick": "x"}'])
    report = check(run)
    assert report.violations == [
        "faults.jsonl line 2: malformed (Expecting property name enclosed in double quotes)",
        "faults.jsonl line 3: malformed ('phase' is not str: None)",
        "g: ticks-g.jsonl line 12: malformed (Expecting value)",
        "g: ticks-g.jsonl line 13: malformed ('tick' is not int: 'x')",
    ]
    assert any("no end, taken to end at the window's end" in note for note in report.notes)
    assert report.groups["g"].fault_gaps[0].end == END


def test_main_writes_check_json_and_fails_on_a_violation(tmp_path: Path) -> None:
    good = make_run(tmp_path / "good", all_ticks())
    bad = make_run(tmp_path / "bad", all_ticks(skip=[2]))
    assert main([str(good)]) == 0
    assert main([str(bad)]) == 1
    data = json.loads((bad / "check.json").read_text())
    assert data["ok"] is False
    assert data["groups"]["g"]["total"]["missing_not_allowed"] == 1
    assert data == json.loads(json.dumps(to_json(check(bad))))
    assert main([str(tmp_path / "absent")]) == 2


def test_report_writes_markdown_and_png(tmp_path: Path) -> None:
    runs = [
        make_run(tmp_path / "runs" / "r1", all_ticks(), faults=fault(1, "kill", X, T0 + 4500, T0 + 5000)),
        make_run(tmp_path / "runs" / "r2", all_ticks(skip=[3]), delivery="at-most-once", catchup="once"),
    ]
    out = tmp_path / "docs" / "reliability.md"
    write_report(runs, out, tmp_path / "docs" / "images", method="We ran things.")
    md = out.read_text()
    assert md.startswith("# Reliability\n\nWe ran things.\n")
    assert "| expected | once | duplicates (id-identical / other) |" in md
    assert "| group | kind | faults | p50 | p99 | max | kept | owned nothing |" in md
    assert "**PASS: 0 duplicates / 0 losses outside the policy**" in md
    assert "**FAIL: 0 duplicates / 1 losses outside the policy" in md
    assert "![failover gaps and lateness of r1](images/r1.png)" in md
    for name in ("r1", "r2"):
        assert (tmp_path / "docs" / "images" / f"{name}.png").read_bytes().startswith(b"\x89PNG")


def test_unknown_policy_in_run_json_is_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path, all_ticks(), delivery="exactly-once")
    assert main([str(run)]) == 2
    assert not (run / "check.json").exists()


# --- the fault kinds of issue 12: poison, deaf, crash-loop, delete-records --------------------------------------


def loop_fault(n: int, start: int, end: int, incarnations: list[str]) -> list[str]:
    """A crash loop in slot 4: its end event names the incarnations it started."""
    target = "g-r4-loop"
    begin = {"n": n, "kind": "crash-loop", "group": "g", "target": target, "phase": "start", "t": start, "detail": {}}
    finish = {**begin, "phase": "end", "t": end, "detail": {"nodes": incarnations}}
    return [json.dumps(begin), json.dumps(finish)]


def collapsed_run(path: Path, *faults: str, delivery: str = "at-most-once", skip: Iterable[int] = (4, 5)) -> Report:
    """Y owns the entry; the ``skip`` ticks are missing and the next one arrived past the grace: 'once' allows them
    (judged from the arrivals: no sync log)."""
    skipped = set(skip)
    after = max(skipped) + 1
    ticks = [tick(k, node=Y, late=1001 if k == after else 5) for k in range(11) if k not in skipped]
    return check(make_run(path, ticks, delivery=delivery, catchup="once", faults=faults))


def test_poison_deaf_and_crash_loop_cost_a_healthy_owner_nothing_not_even_what_once_allows(tmp_path: Path) -> None:
    # Without a fault 'once' allows ticks 4 and 5 (collapsed into tick 6)
    assert collapsed_run(tmp_path / "none").ok
    # Near a poison burst, a deaf X or a crash loop (which never hit Y), they are losses
    for kind, faults in [
        ("poison", fault(1, "poison", "topic:g", T0 + 3500, T0 + 3600)),
        ("deaf", fault(1, "deaf", X, T0 + 3000, T0 + 3500)),
        ("crash-loop", loop_fault(1, T0 - 20_000, T0 + 3000, ["g-r4-7", "g-r4-8"])),
    ]:
        report = collapsed_run(tmp_path / kind, *faults)
        only_violation(report, "missing near a fault that must cost them nothing")
        assert f"({kind} #1 of " in report.violations[0]
        total = report.groups["g"].total
        assert (total.missing_once, total.missing_not_allowed, total.missing_near_no_loss_faults) == (0, 2, 2)
        near = report.groups["g"].near[kind]
        assert (near.faults, near.missing, near.healthy, near.unexplained) == (1, 2, 2, 2)


def test_a_loss_near_a_no_loss_fault_is_allowed_when_another_fault_hit_its_owner(tmp_path: Path) -> None:
    # Given a deaf X and, at the same time, Y killed: the kill explains Y's ticks (at-most-once, 'once')
    report = collapsed_run(
        tmp_path / "kill", *fault(1, "deaf", X, T0 + 3000, T0 + 3500), *fault(2, "kill", Y, T0 + 3600, T0 + 4000)
    )
    assert report.ok, report.violations
    assert report.groups["g"].near["deaf"] == NearStats(faults=1, missing=2, healthy=2, unexplained=0)
    # A broker fault hits every owner; poison explains nothing
    broker = fault(2, "broker", "broker:1", T0 + 3600, T0 + 4000, group=None)
    assert collapsed_run(tmp_path / "broker", *fault(1, "deaf", X, T0 + 3000, T0 + 3500), *broker).ok
    poison = fault(2, "poison", "topic:g", T0 + 3600, T0 + 3700)
    assert not collapsed_run(tmp_path / "poison", *fault(1, "deaf", X, T0 + 3000, T0 + 3500), *poison).ok


def test_a_deaf_replicas_own_entries_may_lose_ticks_as_under_a_partition(tmp_path: Path) -> None:
    # The owner Y itself was deaf: its ticks are allowed ('once' collapsed them), and they are not charged
    report = collapsed_run(tmp_path, *fault(1, "deaf", Y, T0 + 3000, T0 + 3500))
    assert report.ok, report.violations
    assert report.groups["g"].near["deaf"] == NearStats(faults=1, missing=2, healthy=0, unexplained=0)


def test_the_no_loss_window_of_a_crash_loop_ends_a_lease_a_probation_and_a_second_after_it(tmp_path: Path) -> None:
    # The loop ends at T0 - 2 s: its window ends at T0 - 2 s + 3 s + 5 s + 1 s = T0 + 7 s (inclusive)
    loop = loop_fault(1, T0 - 30_000, T0 - 2000, ["g-r4-7"])
    report = collapsed_run(tmp_path, *loop, skip=(7, 8))
    only_violation(report, "1795930027000 (crash-loop #1 of g-r4-loop; owner g-r2-1)")
    total = report.groups["g"].total
    assert (total.missing_once, total.missing_near_no_loss_faults) == (1, 1)


def claim_and_decide_log(path: Path, *, reclaim_at: int) -> None:
    """X claims e (epoch 2) long before the run, decides ticks 0-3, claims again (epoch 14, landing at T0 +
    ``reclaim_at``) and decides ticks 4-10 under it."""

    def decide(o: int, at: int, epoch: int, k: int) -> dict[str, object]:
        return {"o": o, "t": T0 + at, "s": "sx", "k": "decide", "i": [["e", epoch, T0 + k * 1000]]}

    lines: list[dict[str, object]] = [{"o": 0, "t": T0 - 9000, "s": "sx", "k": "hello", "node": X, "lease": 3000}]
    lines.append({"o": 2, "t": T0 - 8000, "s": "sx", "k": "claim", "e": ["e"]})
    lines += [decide(10 + k, k * 1000 - 250, 2, k) for k in range(4)]
    lines.append({"o": 14, "t": T0 + reclaim_at, "s": "sx", "k": "claim", "e": ["e"]})
    lines += [decide(11 + k, max(reclaim_at + 10, k * 1000 - 250), 14, k) for k in range(4, 11)]
    (path / "sync-g.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_at_most_once_excuses_a_deaf_replicas_ticks_only_under_claims_it_had_before_it_went_deaf(
    tmp_path: Path,
) -> None:
    deaf = fault(1, "deaf", X, T0 + 3900, T0 + 4500)
    ticks = [tick(k) for k in range(11) if k != 4]
    # Given tick 4 decided by X under a claim that landed at T0 + 3.85 s, before X went deaf: allowed
    run = make_run(tmp_path / "before", ticks, delivery="at-most-once", faults=deaf)
    claim_and_decide_log(run, reclaim_at=3850)
    report = check(run)
    assert report.ok, report.violations
    assert report.groups["g"].total.missing_at_most_once == 1
    # But under a claim that landed after it went deaf (it could not have read it): a loss
    run = make_run(tmp_path / "after", ticks, delivery="at-most-once", faults=deaf)
    claim_and_decide_log(run, reclaim_at=3950)
    only_violation(check(run), "a loss outside the policy: 1795930024000")


def test_a_crash_looping_incarnation_that_decided_and_died_is_not_excused(tmp_path: Path) -> None:
    # Given tick 4 decided by an incarnation of a crash loop (it should never have owned the entry), never published
    lines: list[dict[str, object]] = [
        {"o": 0, "t": T0 - 9000, "s": "sx", "k": "hello", "node": X, "lease": 3000},
        {"o": 1, "t": T0 + 3000, "s": "sz", "k": "hello", "node": "g-r4-7", "lease": 3000},
        {"o": 2, "t": T0 + 3100, "s": "sz", "k": "decide", "i": [["e", 1, T0 + 4000]]},
    ]
    ticks = [tick(k) for k in range(11) if k != 4]
    run = make_run(tmp_path, ticks, delivery="at-most-once", faults=loop_fault(1, T0 + 2000, T0 + 5000, ["g-r4-7"]))
    (run / "sync-g.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    # Then it is a loss, although the incarnation was SIGKILLed (a crash loop is no unclean fault)
    report = check(run)
    assert not report.ok
    assert report.groups["g"].total.missing_not_allowed == 1


def test_no_duplicate_is_excused_by_poison_or_a_crash_loop(tmp_path: Path) -> None:
    resend = tick(4, node=Y, late=300)
    for kind, faults in [
        ("poison", fault(1, "poison", "topic:g", T0 + 4100, T0 + 4200)),
        ("crash-loop", loop_fault(1, T0 + 3000, T0 + 6000, [X, Y])),  # even naming the senders
    ]:
        report = check(make_run(tmp_path / kind, [*all_ticks(), resend], faults=faults))
        only_violation(report, "no fault of those nodes or the brokers around it")


def test_delete_records_hits_every_replica_of_its_group_within_the_window(tmp_path: Path) -> None:
    # Given X decided every tick; ticks 4 and 8 never published; DeleteRecords at T0 + 3.9 s, answered at + 3.95 s
    ticks = [tick(k) for k in range(11) if k not in (4, 8)]
    delete = fault(1, "delete-records", "topic:g", T0 + 3900, T0 + 3950)
    run = make_run(tmp_path / "amo", ticks, delivery="at-most-once", faults=delete)
    sync_log(run, {k: (k * 1000 - 250, X) for k in range(11)})
    report = check(run)
    # Then tick 4 is allowed (at most once); tick 8 is past end + lease + 1 s = T0 + 7.95 s: a loss
    only_violation(report, "a loss outside the policy: 1795930028000")
    assert report.groups["g"].total.missing_at_most_once == 1
    assert report.groups["g"].fault_counts == {"delete-records": 1}
    # And in at-least-once mode a re-send of one task id in that window is allowed, one past it is not
    resends = [tick(4, node=Y, late=300), tick(9, node=Y, late=300)]
    report = check(make_run(tmp_path / "alo", [*all_ticks(), *resends], faults=delete))
    only_violation(report, "1795930029000 (2 copies, one task id; nodes g-r1-1, g-r2-1, no fault of those nodes")


def test_faults_that_move_no_entry_report_the_longest_silence_of_an_entry(tmp_path: Path) -> None:
    # Given tick 5 received 500 ms late during a poison burst at T0 + 4.5 s
    ticks = [tick(k, late=500 if k == 5 else 5) for k in range(11)]
    report = check(make_run(tmp_path, ticks, faults=fault(1, "poison", "topic:g", T0 + 4500, T0 + 4600)))
    assert report.ok, report.violations
    gap = report.groups["g"].fault_gaps[0]
    assert (gap.kind, gap.owned, gap.gap_ms) == ("poison", 1, 1495)


def test_replica_logs_each_kind_of_unusable_record_once_and_never_fail(tmp_path: Path) -> None:
    def skip_line(offset: int, code: str) -> str:
        return (
            f"[2026-12-03 10:00:00,000: WARNING/MainProcess] skipping a record the sync topic holds at offset {offset} "
            f"that this node cannot use (ForeignRecord: not JSON: ValueError: (x)); further records with this problem "
            f"({code}) are skipped without a log line\n"
        )

    run = make_run(tmp_path, all_ticks())
    (run / "logs").mkdir()
    (run / "logs" / "g-r0-1.log").write_text(skip_line(5, "not-json") + skip_line(6, "claim:e[]"))
    (run / "logs" / "g-r1-2.log").write_text(skip_line(7, "not-json"))
    (run / "logs" / "other-r0-1.log").write_text(skip_line(5, "not-json") * 2)  # another group's
    report = check(run)
    assert report.ok, report.violations
    assert report.groups["g"].skipped_kinds == {"claim:e[]": 1, "not-json": 2}
    assert report.groups["g"].replica_logs == 2
    # A kind logged twice by one replica, or a node thread that failed, is a violation
    with (run / "logs" / "g-r1-2.log").open("a") as log:
        log.write(skip_line(9, "not-json"))
        log.write("[...: ERROR/MainProcess] node g-r1-2: unexpected error; restarting from the topic\n")
    report = check(run)
    assert report.violations == [
        "g: logs/g-r1-2.log: records it cannot use logged more than once per kind: ['not-json']",
        "g: logs/g-r1-2.log: the node's thread failed 1 time(s) (unexpected error)",
    ]


def test_report_keeps_earlier_runs_as_published(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "reliability.md"
    out.parent.mkdir()
    out.write_text(
        "# Reliability\n\nold method\n\n## Run `old`\n\nSeed 1.\n\n### Group `a`\n\n**PASS**\n\n![old](old.png)\n"
    )
    run = make_run(tmp_path / "runs" / "new", all_ticks(), faults=fault(1, "deaf", X, T0 + 4500, T0 + 5000))
    write_report([run], out, out.parent, method="new method")
    md = out.read_text()
    assert md.startswith("# Reliability\n\nnew method\n\n## Run `new`\n")
    assert "old method" not in md
    earlier = md.index("## Earlier runs")
    assert md.index("## Run `new`") < earlier < md.index("### Run `old`") < md.index("#### Group `a`")
    assert "| g | deaf | 1 | 0 | 0 | 0 |" in md
    # Writing again keeps it once; giving its run again replaces it
    write_report([run], out, out.parent, method="new method")
    assert out.read_text() == md
    write_report([run], out, out.parent, method="new method", keep_earlier=False)
    assert "Earlier runs" not in out.read_text()


# --- checker rules found by the 30-minute run of issue 12 ---------------------------------------------------------


def test_the_owner_of_a_missing_tick_is_who_decided_the_one_before_not_who_re_sent_it(tmp_path: Path) -> None:
    # Given X decided ticks 0-3 and was killed; Y re-sent tick 3 (at-least-once) and, 'once', decided 5 on; tick 4
    # never decided; and a third replica deaf at the same time
    ticks = [tick(k) for k in range(3)] + [tick(3, node=Y, late=2000)]
    ticks += [tick(k, node=Y, late=250 if k == 5 else 5) for k in range(5, 11)]
    decided = {k: (k * 1000 - 250, X) for k in range(4)} | {k: (max(5200, k * 1000 - 250), Y) for k in range(5, 11)}
    faults = [*fault(1, "kill", X, T0 + 3100, T0 + 3500), *fault(2, "deaf", "g-r3-1", T0 + 3000, T0 + 3500)]
    run = make_run(tmp_path, ticks, catchup="once", faults=faults)
    sync_log(run, decided)
    # Then tick 4 was X's, killed: not charged to the deaf replica (it was, when Y counted as its owner)
    report = check(run)
    assert report.ok, report.violations
    assert report.groups["g"].total.missing_once == 1


def test_at_most_once_allows_a_tick_decided_late_by_a_node_stopped_within_a_second_of_deciding_it(
    tmp_path: Path,
) -> None:
    # Given X decided ticks 4 and 5 late (at T0 + 5.9 s, after an outage) and was stopped at T0 + 6.5 s, before it
    # published them; it went on with tick 6
    ticks = [tick(k) for k in range(11) if k not in (4, 5)]
    decided = {k: (k * 1000 - 250, X) for k in range(4)} | {4: (5900, X), 5: (5900, X)}
    decided |= {k: (max(5950, k * 1000 - 250), X) for k in range(6, 11)}
    stop = fault(1, "stop", X, T0 + 6500, T0 + 7000)
    run = make_run(tmp_path / "stop", ticks, delivery="at-most-once", faults=stop)
    sync_log(run, decided)
    report = check(run)
    # Then both are allowed: the stop hit their publish, although the ticks were due before its window
    assert report.ok, report.violations
    assert report.groups["g"].total.missing_at_most_once == 2
    # But not when the decision came after the fault ended
    run = make_run(tmp_path / "after", ticks, delivery="at-most-once", faults=stop)
    sync_log(run, {**decided, 4: (7100, X), 5: (7100, X)} | {k: (max(7150, k * 1000 - 250), X) for k in range(6, 11)})
    report = check(run)
    assert report.groups["g"].total.missing_not_allowed == 2


def _moving_log(path: Path, *, claimed: bool) -> None:
    """X owns e and decides 0-3; Z says ready at T0 + 2.5 s, X releases e at T0 + 2.8 s, Z claims it at T0 + 2.9 s
    (if ``claimed``); X claims it back at T0 + 6 s and decides 6 on."""
    z = "g-r3-1"
    lines: list[dict[str, object]] = [
        {"o": 0, "t": T0 - 9000, "s": "sx", "k": "hello", "node": X},
        {"o": 1, "t": T0 - 9000, "s": "sz", "k": "hello", "node": z},
        {"o": 2, "t": T0 - 8000, "s": "sx", "k": "claim", "e": ["e"]},
    ]
    lines += [
        {"o": 10 + k, "t": T0 + k * 1000 - 250, "s": "sx", "k": "decide", "i": [["e", 2, T0 + k * 1000]]}
        for k in range(4)
    ]
    lines.append({"o": 20, "t": T0 + 2500, "s": "sz", "k": "ready"})
    lines.append({"o": 21, "t": T0 + 2800, "s": "sx", "k": "release", "i": [["e", 2]]})
    if claimed:
        lines.append({"o": 22, "t": T0 + 2900, "s": "sz", "k": "claim", "e": ["e"]})
    lines.append({"o": 30, "t": T0 + 6000, "s": "sx", "k": "claim", "e": ["e"]})
    lines += [
        {"o": 30 + k, "t": T0 + max(6100, k * 1000 - 250), "s": "sx", "k": "decide", "i": [["e", 30, T0 + k * 1000]]}
        for k in range(6, 11)
    ]
    (path / "sync-g.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.mark.parametrize("claimed", [True, False], ids=["claimed", "released"])
def test_ticks_of_an_entry_moving_to_a_replica_that_went_deaf_answer_to_it(tmp_path: Path, claimed: bool) -> None:
    # Given Z became ready, X released e for it (and Z claimed it, or not yet), and Z went deaf: ticks 4, 5 lost
    ticks = [tick(k, late=1001 if k == 6 else 5) for k in range(11) if k not in (4, 5)]
    deaf = fault(1, "deaf", "g-r3-1", T0 + 3000, T0 + 3500)
    run = make_run(tmp_path, ticks, delivery="at-most-once", catchup="once", faults=deaf)
    _moving_log(run, claimed=claimed)
    # Then they are the deaf replica's own cost: the entry was its, or on its way to it
    report = check(run)
    assert report.ok, report.violations
    assert report.groups["g"].near["deaf"].healthy == 0

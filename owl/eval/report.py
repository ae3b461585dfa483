"""``owl eval report``: A/B/C/D counts per system, inter-rater agreement, and the paper's figure, from ratings.

The paper reports only totals (its Figure: A/B/C/D per system, single- and multi-turn); to tell whether a
re-rating agrees with it we put the published counts beside ours, and to tell whether our own ratings mean
anything we state how well raters agree (Cohen/weighted kappa for two raters, Fleiss for more). The optional
automatic judges (rater names starting ``judge:``, :mod:`owl.eval.judge`) are kept out of the human counts and
compared with the humans instead; they are labelled as such wherever they appear.

When several humans rated an answer, the counts use their consensus: the median letter on the A>B>C>D scale,
ties going to the worse letter (a disagreement should not flatter a system).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from owl.atomic import write_text
from owl.eval.kappa import LETTERS, cohen_kappa, fleiss_from_ratings, weighted_kappa
from owl.eval.rating import ABILITIES, display_name, load_questions, read_ratings

# The paper's figure (single-turn 50 questions, multi-turn 52), A/B/C/D, as the OwlEval README lists it
# (tests/eval/test_report.py checks the two agree). MM-REACT is not in the figure.
PAPER = {
    "OpenFlamingo": {"single": [5, 5, 15, 25], "multi": [4, 4, 16, 28]},
    "BLIP-2": {"single": [13, 13, 9, 15], "multi": [13, 10, 17, 12]},
    "LLaVA": {"single": [23, 12, 13, 2], "multi": [16, 17, 19, 0]},
    "MiniGPT-4": {"single": [35, 3, 10, 2], "multi": [25, 6, 21, 0]},
    "mPLUG-Owl": {"single": [32, 10, 8, 0], "multi": [31, 8, 13, 0]},
}
COLORS = {"A": "#2e7d32", "B": "#9ccc65", "C": "#ffb74d", "D": "#e53935"}


def _order(name: str) -> tuple[int, str]:
    """Systems in the paper's figure order (weakest first), then the others by name."""
    names = list(PAPER)
    return (names.index(name), "") if name in names else (len(names), name)


def consensus(letters: Iterable[str]) -> str:
    """Median letter (A best); with an even number of ratings the worse of the two middle letters."""
    s = sorted(letters, key=LETTERS.index)
    return s[len(s) // 2]


def _counts(letters: Iterable[str]) -> dict[str, int]:
    c = dict.fromkeys(LETTERS, 0)
    for x in letters:
        c[x] += 1
    return c


def _agreement(by_rater: dict[str, dict[tuple, str]]) -> dict:
    """Kappa between the raters in ``by_rater`` (rater -> item -> letter) over the items they share."""
    raters = sorted(by_rater)
    out: dict = {"raters": raters}
    items = [set(v) for v in by_rater.values()]
    multi = {i for i in set().union(*items) if sum(i in s for s in items) >= 2} if items else set()
    out["items_rated_by_several"] = len(multi)
    pairs = []
    for i, a in enumerate(raters):
        for b in raters[i + 1 :]:
            common = sorted(set(by_rater[a]) & set(by_rater[b]))
            if not common:
                continue
            x = [by_rater[a][k] for k in common]
            y = [by_rater[b][k] for k in common]
            pairs.append(
                {
                    "raters": [a, b],
                    "items": len(common),
                    "percent_agreement": sum(p == q for p, q in zip(x, y, strict=True)) / len(common),
                    "cohen_kappa": cohen_kappa(x, y, categories=LETTERS),
                    "weighted_kappa": weighted_kappa(x, y),
                }
            )
    out["pairs"] = pairs
    if len(raters) > 2:
        common_all = sorted(set.intersection(*items))
        out["fleiss_items"] = len(common_all)
        out["fleiss_kappa"] = (
            fleiss_from_ratings([[by_rater[r][k] for r in raters] for k in common_all]) if common_all else None
        )
    return out


def build_report(ratings_files: list[str | Path], data: str | Path) -> dict:
    """Everything report.md/report.json/the chart show, as one JSON-able dict."""
    questions = load_questions(data)
    ratings = read_ratings(ratings_files)
    humans: dict[str, dict[tuple, str]] = {}
    judges: dict[str, dict[tuple, str]] = {}
    for r in ratings:
        key = (int(r["question_id"]), str(r["system"]))
        if int(r["question_id"]) not in questions:
            continue
        (judges if str(r["rater"]).startswith("judge:") else humans).setdefault(str(r["rater"]), {})[key] = r["rating"]
    pooled: dict[tuple, list[str]] = {}
    for by_item in humans.values():
        for k, v in by_item.items():
            pooled.setdefault(k, []).append(v)
    agreed = {k: consensus(v) for k, v in pooled.items()}

    def tally(items: dict[tuple, str]) -> dict:
        systems: dict[str, dict] = {}
        for (q, s), letter in items.items():
            name = display_name(s)
            d = systems.setdefault(
                name, {"overall": [], "single": [], "multi": [], "ability": {a: [] for a in ABILITIES}}
            )
            d["overall"].append(letter)
            cat = questions[q].get("category", [])
            cat = [cat] if isinstance(cat, str) else cat
            if "single_turn" in cat:
                d["single"].append(letter)
            if "multi_turn" in cat:
                d["multi"].append(letter)
            for a in str(questions[q].get("ability", "")).split(","):
                if a.strip() in ABILITIES:
                    d["ability"][a.strip()].append(letter)
        return {
            name: {
                "overall": _counts(d["overall"]),
                "single": _counts(d["single"]),
                "multi": _counts(d["multi"]),
                "ability": {a: _counts(v) for a, v in d["ability"].items()},
            }
            for name, d in sorted(systems.items(), key=lambda kv: _order(kv[0]))
        }

    report: dict = {
        "ratings_files": [str(p) for p in ratings_files],
        "human_raters": sorted(humans),
        "rated_answers": len(agreed),
        "counts": tally(agreed),
        "per_rater": {r: tally(v) for r, v in sorted(humans.items())},
        "agreement": _agreement(humans) if len(humans) >= 2 else None,
        "paper": PAPER,
        "judges": {},
    }
    for name, by_item in sorted(judges.items()):
        common = sorted(set(by_item) & set(agreed))
        x = [by_item[k] for k in common]
        y = [agreed[k] for k in common]
        per_human = {}
        for human, theirs in sorted(humans.items()):
            shared = sorted(set(by_item) & set(theirs))
            if shared:
                a, b = [by_item[k] for k in shared], [theirs[k] for k in shared]
                per_human[human] = {
                    "items": len(shared),
                    "cohen_kappa": cohen_kappa(a, b, categories=LETTERS),
                    "weighted_kappa": weighted_kappa(a, b),
                }
        report["judges"][name] = {
            "counts": tally(by_item),
            "items_shared_with_humans": len(common),
            "cohen_kappa_vs_humans": cohen_kappa(x, y, categories=LETTERS) if common else None,
            "weighted_kappa_vs_humans": weighted_kappa(x, y) if common else None,
            "vs_each_human": per_human,
        }
    return report


def _fmt(c: dict[str, int] | list[int] | None) -> str:
    if c is None:
        return "–"
    vals = [c[x] for x in LETTERS] if isinstance(c, dict) else c
    return "/".join(str(v) for v in vals)


def _k(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def markdown(report: dict) -> str:
    """report.md: counts beside the paper's, per ability, agreement, judges."""
    lines = [
        "# OwlEval human rating report",
        "",
        f"Human raters: {', '.join(report['human_raters']) or 'none'}; rated answers: {report['rated_answers']}. "
        "Counts are A/B/C/D (A correct and satisfying, B minor imperfections, C significant errors, "
        "D irrelevant or invalid); with several raters, the median letter (ties to the worse). A question can be "
        "both single- and multi-turn (the first turn of a dialogue): the paper's figure has 50 single-turn and 52 "
        "multi-turn questions out of 82. MM-REACT is not in the paper's figure.",
        "",
        "## Counts beside the paper",
        "",
        "| system | single-turn (ours) | single-turn (paper) | multi-turn (ours) | multi-turn (paper) "
        "| overall (ours) |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in report["counts"].items():
        p = report["paper"].get(name, {})
        lines.append(
            f"| {name} | {_fmt(c['single'])} | {_fmt(p.get('single'))} | {_fmt(c['multi'])} | "
            f"{_fmt(p.get('multi'))} | {_fmt(c['overall'])} |"
        )
    if len(report["per_rater"]) > 1:
        lines += ["", "## Per rater (overall A/B/C/D)", ""]
        raters = list(report["per_rater"])
        lines += ["| system | " + " | ".join(raters) + " |", "|---" * (len(raters) + 1) + "|"]
        for name in report["counts"]:
            cells = [_fmt(report["per_rater"][r].get(name, {}).get("overall")) for r in raters]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Per ability (A/B/C/D)", ""]
    lines.append("| system | " + " | ".join(f"{k} {v}" for k, v in ABILITIES.items()) + " |")
    lines.append("|---" * (len(ABILITIES) + 1) + "|")
    for name, c in report["counts"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(c["ability"][a]) for a in ABILITIES) + " |")
    lines += ["", "## Agreement between human raters", ""]
    ag = report["agreement"]
    if ag is None:
        n = len(report["human_raters"])
        lines.append("Only one human rater: no agreement to report." if n else "No human ratings in these files.")
    else:
        lines.append(
            f"Answers rated by two or more raters: {ag['items_rated_by_several']}. Kappa is 1 for perfect agreement "
            "and 0 for chance; the quadratic-weighted kappa counts an A-vs-D disagreement 9 times an A-vs-B one."
        )
        lines += [
            "",
            "| raters | items | % agree | Cohen's kappa | quadratic-weighted kappa |",
            "|---|---|---|---|---|",
        ]
        for p in ag["pairs"]:
            lines.append(
                f"| {' vs '.join(p['raters'])} | {p['items']} | {100 * p['percent_agreement']:.1f} | "
                f"{_k(p['cohen_kappa'])} | {_k(p['weighted_kappa'])} |"
            )
        if "fleiss_kappa" in ag:
            lines += [
                "",
                f"Fleiss' kappa over the {ag['fleiss_items']} answers all raters rated: {_k(ag['fleiss_kappa'])}.",
            ]
    if report["judges"]:
        lines += [
            "",
            "## Automatic judge (optional; an LLM, not human ratings)",
            "",
            "Ratings by an LLM through `owl eval judge`; they are not in the counts above. Agreement is with the "
            "human consensus (the median letter) on the answers both rated.",
            "",
            "| automatic judge | system | single-turn | multi-turn | overall |",
            "|---|---|---|---|---|",
        ]
        for j, d in report["judges"].items():
            for name, c in d["counts"].items():
                lines.append(f"| {j} | {name} | {_fmt(c['single'])} | {_fmt(c['multi'])} | {_fmt(c['overall'])} |")
        lines += [
            "",
            "| automatic judge | vs | answers | Cohen's kappa | quadratic-weighted kappa |",
            "|---|---|---|---|---|",
        ]
        for j, d in report["judges"].items():
            lines.append(
                f"| {j} | human consensus | {d['items_shared_with_humans']} | {_k(d['cohen_kappa_vs_humans'])} | "
                f"{_k(d['weighted_kappa_vs_humans'])} |"
            )
            for human, a in d["vs_each_human"].items():
                lines.append(f"| {j} | {human} | {a['items']} | {_k(a['cohen_kappa'])} | {_k(a['weighted_kappa'])} |")
    lines += ["", "![A/B/C/D per system, beside the paper's](owleval_ratings.png)", ""]
    return "\n".join(lines)


def _bars(ax, counts: dict[str, dict], title: str) -> None:  # noqa: ANN001 (a matplotlib Axes)
    """One panel of the figure: per system a single-turn bar and a hatched multi-turn bar, A at the bottom."""
    names = list(counts)
    width = 0.38
    for i, name in enumerate(names):
        for off, part, hatch in ((-width / 2, "single", ""), (width / 2, "multi", "//")):
            c = counts[name][part]
            values = [c[x] for x in LETTERS] if isinstance(c, dict) else list(c)
            bottom = 0
            for letter, v in zip(LETTERS, values, strict=True):
                ax.bar(i + off, v, width, bottom=bottom, color=COLORS[letter], hatch=hatch, edgecolor="white")
                bottom += v
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("answers")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def plot(report: dict, path: str | Path) -> Path:
    """The paper's figure redrawn from these ratings (left) beside the paper's own counts (right).

    Per system a single-turn bar and a hatched multi-turn bar, stacked A/B/C/D. With no human rating yet, the
    left panel shows the first automatic judge, titled as such.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    counts, title = report["counts"], "these ratings (humans)"
    if not counts and report["judges"]:
        name = next(iter(report["judges"]))
        counts, title = report["judges"][name]["counts"], f"automatic judge {name} (not human)"
    paper = {name: {"single": c["single"], "multi": c["multi"]} for name, c in report["paper"].items()}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), dpi=110, sharey=True)
    _bars(axes[0], counts, title)
    _bars(axes[1], paper, "the paper's figure (reference)")
    top = max([sum(c[p].values()) for c in counts.values() for p in ("single", "multi")] + [52])
    axes[0].set_ylim(0, top * 1.05)
    handles = [Patch(color=COLORS[x], label=x) for x in LETTERS]
    handles += [
        Patch(facecolor="white", edgecolor="grey", label="single-turn"),
        Patch(facecolor="white", edgecolor="grey", hatch="//", label="multi-turn"),
    ]
    axes[1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    fig.suptitle("OwlEval: A correct, B minor imperfections, C significant errors, D irrelevant/invalid", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(ratings_files: list[str | Path], data: str | Path, out: str | Path) -> dict:
    """Write report.md, report.json and owleval_ratings.png under ``out``; return the report dict."""
    out = Path(out)
    report = build_report(ratings_files, data)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text(out / "report.md", markdown(report))
    plot(report, out / "owleval_ratings.png")
    return report

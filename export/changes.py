"""What changed between two exports of one run: `CHANGES.md` and the `changes` block of export_report.json.

Against the previous export of the same run (`trapkit.train.runinfo` keeps what each export shipped):
- labels added per class, and which seasons (or the seed, the pool) they came from;
- per-class precision and recall on the run's validation set, before and after;
- the field accuracy of the previous model on the crops people verified since it was exported (the most
  honest figure a user can get: answers given to that model's own output), per class, with a confusion
  matrix (`field_confusion.png`).
The same text goes into the Hub folder's changelog and the Triton model's CHANGES.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Changes:
    block: dict  # the export report's `changes`
    markdown: str  # one CHANGES.md entry
    confusion_png: bytes | None  # the field accuracy's confusion matrix, when there is one
    title: str  # one line: the Hub commit message


def compare(number: int, current: dict, previous: dict | None, field=None) -> Changes:
    """The change report of export `number`: `current`/`previous` are export records (`runinfo`), `field` the
    previous model's `FieldAccuracy` on the answers given since (None on a first export)."""
    labels = _labels_added(current["labels"], previous["labels"] if previous else {})
    validation = _validation(current["validation"], previous["validation"] if previous else None)
    block = {"format_version": FORMAT_VERSION, "export": number, "round": current["round"],
             "previous_export": previous["export"] if previous else None,
             "previous_round": previous["round"] if previous else None,
             "classes_added": sorted(set(current["classes"]) - set(previous["classes"])) if previous else [],
             "labels_added": labels, "validation": validation, "field_accuracy": _field(field)}
    png = None
    if field is not None and field.n:
        from trapkit.figures import confusion_png

        truth = sorted(set(field.truth) | set(field.classes))
        index = {c: i for i, c in enumerate(truth)}
        m = np.zeros((len(truth), len(truth)), np.int64)
        np.add.at(m, ([index[t] for t in field.truth], [index[p] for p in field.predicted]), 1)
        png = confusion_png(m, truth)
    added = sum(sum(v.values()) for v in labels.values())
    title = (f"Export {number}: round {current['round']}, {added} new labels" if previous
             else f"Export {number}: round {current['round']}, first export of this run")
    return Changes(block, markdown(block, title), png, title)


def _labels_added(now: dict, before: dict) -> dict[str, dict[str, int]]:
    out = {}
    for cls in sorted(now):
        diff = {src: k - before.get(cls, {}).get(src, 0) for src, k in sorted(now[cls].items())}
        diff = {src: k for src, k in diff.items() if k}
        if diff:
            out[cls] = diff
    return out


def _validation(now: dict, before: dict | None) -> dict:
    per_class = {}
    for cls, fig in now["per_class"].items():
        old = (before or {}).get("per_class", {}).get(cls, {})
        per_class[cls] = {"precision_before": old.get("precision"), "precision": fig.get("precision"),
                          "recall_before": old.get("recall"), "recall": fig.get("recall"), "support": fig.get("support")}
    return {"images": now.get("images"), "images_before": (before or {}).get("images"),
            "accuracy": now.get("accuracy"), "accuracy_before": (before or {}).get("accuracy"), "per_class": per_class}


def _field(field) -> dict | None:
    """The figures on the crops people verified from the classifier's output (a reviewed season: the field as
    users meet it) when there are any, else on all; the items active learning asked about are counted apart,
    as they are its hardest cases."""
    if field is None:
        return None
    truth, predicted = np.array(field.truth, object), np.array(field.predicted, object)
    classified = np.array(field.classified or [False] * field.n, bool)
    shown = classified if classified.any() else np.ones(field.n, bool)
    per_class = {}
    for cls in sorted(set(truth[shown])):
        mine = shown & (truth == cls)
        per_class[cls] = {"verified": int(mine.sum()), "correct": int((predicted[mine] == cls).sum()),
                          "in_model": cls in field.classes}
    right = truth == predicted
    asked = ~classified
    return {"on": "classifier output" if classified.any() else "all verified", "verified": int(shown.sum()),
            "correct": int(right[shown].sum()), "accuracy": float(right[shown].mean()) if shown.any() else None,
            "per_class": per_class, "asked_by_active_learning": int(asked.sum()),
            "asked_accuracy": float(right[asked].mean()) if asked.any() and classified.any() else None}


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def cell(text) -> str:
    """Text as one Markdown table cell: a `|` in it would start a new column."""
    return str(text).replace("|", "\\|")


def markdown(block: dict, title: str) -> str:
    """One CHANGES.md entry."""
    lines = [f"## {title}", ""]
    if block["previous_export"] is None:
        lines += ["The first export of this run: nothing to compare with yet.", ""]
    else:
        lines += [f"Against export {block['previous_export']} (round {block['previous_round']}).", ""]
    if block["classes_added"]:
        lines += [f"New classes: {', '.join(block['classes_added'])}.", ""]
    if block["labels_added"]:
        lines += ["| class | labels added | from |", "| --- | --- | --- |"]
        for cls, sources in block["labels_added"].items():
            where = ", ".join(f"{src} {k:+d}" for src, k in sources.items())
            lines.append(f"| {cell(cls)} | {sum(sources.values()):+d} | {cell(where)} |")
        lines.append("")
    elif block["previous_export"] is not None:
        lines += ["No labels were added.", ""]
    v = block["validation"]
    lines += [f"Validation set: {v['images'] if v['images'] is not None else 'n/a'} images"
              + (f" ({v['images_before']} before)" if v["images_before"] not in (None, v["images"]) else "")
              + f"; accuracy {_f(v['accuracy_before'])} -> {_f(v['accuracy'])}.", "",
              "| class | precision before | precision | recall before | recall | validation images |",
              "| --- | --- | --- | --- | --- | --- |"]
    for cls, f in v["per_class"].items():
        lines.append(f"| {cell(cls)} | {_f(f['precision_before'])} | {_f(f['precision'])} | {_f(f['recall_before'])} "
                     f"| {_f(f['recall'])} | {f['support'] if f['support'] is not None else 'n/a'} |")
    lines.append("")
    field = block["field_accuracy"]
    if field is not None:
        if field["verified"]:
            where = "from its classify output" if field["on"] == "classifier output" else "since"
            lines += [f"Field accuracy of export {block['previous_export']} on the {field['verified']} crops people "
                      f"verified {where}: {_f(field['accuracy'])} ({field['correct']} right)."
                      + (f" On the {field['asked_by_active_learning']} items active learning asked about (its hardest "
                         f"cases): {_f(field['asked_accuracy'])}." if field["asked_accuracy"] is not None else ""), "",
                      "| class (verified) | crops | the previous model was right |", "| --- | --- | --- |"]
            for cls, f in field["per_class"].items():
                note = "" if f["in_model"] else " (not one of its classes)"
                lines.append(f"| {cell(cls)}{note} | {f['verified']} | {f['correct']} |")
            lines += ["", "The confusion matrix is `field_confusion.png`.", ""]
        else:
            lines += [f"No crops were verified since export {block['previous_export']}: no field accuracy yet.", ""]
    return "\n".join(lines)

"""A start without a seed: `al init --unlabelled POOL` with no `--labelled` folder.

With no label there is no head to train, nothing to measure and no uncertainty to rank by, so round 1
embeds the pool and asks about a first batch that covers it (`SelectSettings.first_strategy`: TypiClust
by default, or k-center or uniform; the figures are in docs/model-quality.md). The answers to that batch
name the classes (any name is a new class while the run has none; with `--validation`, its classes are
the run's from the start), and round 2 trains the first head on them.

The validation set comes from `--validation`, or, without it, from the first answers: the first round
that brings answers holds out `validation_fraction` of each class's newly answered images (classes with 3
or more; the rule a seed's hold-out follows), and they are never trained on nor asked about again.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

PLACEHOLDER_CLASS = "(no class yet)"  # the embedding model's spec needs one label; no head is trained or saved
NOT_MEASURED = {"n": 0, "accuracy": None, "macro_recall": None, "macro_precision": None, "per_class_recall": {}}


def note(settings, requested: int) -> str:
    """What round 1 of a run without a seed did, in plain words."""
    where = ("--validation" if settings.data.validation else
             f"{settings.data.validation_fraction:.0%} of each class's first answers (3 or more) held out")
    return (f"no labels yet, so no model was trained and nothing was measured; the {requested} item(s) asked about "
            f"were picked to cover the pool ({settings.select.first_strategy}). Answer them with the class names "
            f"you want: the next round trains the first model. Validation: {where}")


def hold_out_first_answers(df, settings, n: int, stratified_holdout) -> int:
    """Move a stratified share of round `n`'s answers to the validation split, while a run without a seed or a
    validation folder has no validation item yet (`stratified_holdout(rows, fraction, rng)`: the seed's rule).
    Returns how many items were held out (0: none, or not due)."""
    from trapkit.answers import WRONG_BOX
    from trapkit.train.run import OK, POOL, VALIDATION

    if settings.data.labelled or settings.data.validation or (df["split"] == VALIDATION).any():
        return 0
    answered = ((df["split"] == POOL) & (df["label_round"] == n) & (df["label"] != "") & (df["label"] != WRONG_BOX)
                & (df["status"] == OK))
    rows = df.loc[answered, ["path", "label"]].to_dict("records")
    held = stratified_holdout(rows, settings.data.validation_fraction, np.random.default_rng(settings.select.seed + n))
    moved = answered & df["path"].isin(held)
    df.loc[moved, "split"] = VALIDATION
    if moved.any():
        log.info("validation: %d of this round's answers held out (no --validation folder)", int(moved.sum()))
    return int(moved.sum())

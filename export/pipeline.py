"""`trapkit export` as one library call: source -> checked graph -> variant -> Triton / Hub copies.

    OUT/model.onnx           the fp32 graph, spec in its metadata (always)
    OUT/model.int8.onnx      with --quantize int8 (model.fp16.onnx with --precision fp16): the variant,
                             served by `trapkit classify --precision int8`; Triton and Hub copies get it
    OUT/export_report.json   parity with PyTorch, agreement of the variant with fp32 on held-out images,
                             where copies went, and (from a run) the `changes` since its previous export
    OUT/CHANGES.md           that change report for people (trapkit.export.changes), with field_confusion.png

Every destination is checked for writability before the (slow) model load, and
nothing lands in OUT unless the parity and agreement checks pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from trapkit import __version__
from trapkit.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from trapkit.errors import TrapkitError
from trapkit.export.changes import Changes, compare
from trapkit.export.hub_folder import FIELD_CONFUSION_FILENAME, HubSettings, read_metrics, write_hub_folder
from trapkit.export.onnx_export import ExportReport, ensure_writable_dir, export_onnx, load_source, resolve_source_dir
from trapkit.export.quantize import AgreementReport, VariantSettings, make_variant
from trapkit.export.triton import CHANGES_FILENAME, TritonSettings, choose_model_name, write_triton_model
from trapkit.export.usage import triton_readme
from trapkit.graph import GRAPH_FILENAMES, ONNX_FILENAME
from trapkit.spec import ModelSpec
from trapkit.taxonomy import read_taxonomy_csv
from trapkit.train.runinfo import (adopt_taxonomy, current_record, field_accuracy, find_run, last_export,
                                   record_export, run_taxonomy)

log = logging.getLogger(__name__)

REPORT_FILENAME = "export_report.json"


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path  # the graph asked for (the variant, or model.onnx for fp32)
    parity: ExportReport
    agreement: AgreementReport | None = None
    triton_version_dir: Path | None = None
    hub_folder: Path | None = None
    changes: Changes | None = None  # against the run's previous export (None: not from a run, or unchanged)
    triton_new_version: bool | None = None  # False: Triton already served this graph; None: no Triton copy


def export_model(source: str | Path, out: str | Path, *, variant: VariantSettings = VariantSettings(),
                 triton: TritonSettings | None = None, hub: HubSettings | None = None,
                 tolerance: float = 1e-4, taxonomy: str | Path | None = None) -> ExportResult:
    """Export `source` (run folder, model folder or `imagenet-lite0`) into `out`, plus optional copies.

    `taxonomy`: a `label,taxonomy` CSV (`trapkit.taxonomy`) whose strings go into the exported spec; from a
    run, it becomes the run's (RUN/taxonomy.csv), which later exports carry without the flag. A run's export
    holds the run's lock (no round moves it meanwhile), writes a change report against the run's previous
    export, and is kept in the run's export history.
    """
    check_tolerance(tolerance)
    out = Path(out)
    model_dir = resolve_source_dir(source)
    run = find_run(model_dir)
    folders = [Path(d) for d in (out, triton and triton.repo, hub and hub.folder) if d]
    with removed_if_failed(folders), run.locked("export") if run else contextlib.nullcontext():
        for directory in folders:
            ensure_writable_dir(directory)
        if taxonomy is not None and model_dir is not None:
            read_taxonomy_csv(taxonomy, ModelSpec.load(model_dir).labels)  # bad rows fail before the slow load
        return _export(source, out, model_dir, run, variant, triton, hub, tolerance, taxonomy)


@contextlib.contextmanager
def removed_if_failed(folders: list[Path]):
    """Folders this export creates are removed again, while empty, if it fails: no empty --out is left behind."""
    new = [f for f in folders if not f.exists()]
    try:
        yield
    except BaseException:
        for folder in new:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: never anything the export did write
        raise


def _export(source, out: Path, model_dir, run, variant, triton, hub, tolerance, taxonomy) -> ExportResult:
    model = load_source(source)
    strings = read_taxonomy_csv(taxonomy, model.spec.labels) if taxonomy is not None else \
        run_taxonomy(run, model.spec.labels) if run is not None else None
    if strings is not None:
        model.spec = model.spec.replace(taxonomy=strings)
    spec = model.spec
    if triton:
        triton.model_name(spec)  # a bad name fails before the slow part
    on_detections = run.settings().on_detections if run is not None else model_dir is not None
    with tempfile.TemporaryDirectory(prefix=".trapkit-export-", dir=out) as tmp:
        parity = export_onnx(model, Path(tmp) / ONNX_FILENAME, tolerance=tolerance)
        fp32 = parity.path.read_bytes()
        data, agreement = make_variant(fp32, spec, variant, run_dir=run.root if run is not None else None)
        graph_sha256 = hashlib.sha256(fp32).hexdigest()
        history = _history(run, graph_sha256) if run is not None else None
        changes = history[1] if history else None
        # The Triton and Hub copies come first: if one fails, OUT still holds the previous model and its report.
        final = Path(tmp) / "final" / ONNX_FILENAME
        final.parent.mkdir()
        final.write_bytes(data)
        served = None
        if triton:
            origin = run.load_state().run_id if run is not None else ""
            name = choose_model_name(triton, spec, origin)
            served = write_triton_model(final, spec, triton, name, origin, readme=triton_readme(spec, name, on_detections),
                                        changes=changes.markdown if changes else "")
        hub_dir = write_hub_folder(final, spec, hub, read_metrics(model_dir), on_detections, changes) if hub else None
    onnx_path = out / GRAPH_FILENAMES[variant.kind]
    atomic_write_bytes(out / ONNX_FILENAME, fp32)
    if onnx_path.name != ONNX_FILENAME:
        atomic_write_bytes(onnx_path, data)
    for name in set(GRAPH_FILENAMES.values()) - {ONNX_FILENAME, onnx_path.name}:
        (out / name).unlink(missing_ok=True)  # a variant of an earlier export no longer matches model.onnx
    if changes is not None:
        atomic_write_text(out / CHANGES_FILENAME, changes.markdown)
        if changes.confusion_png is not None:
            atomic_write_bytes(out / FIELD_CONFUSION_FILENAME, changes.confusion_png)
    parity = ExportReport(**{**asdict(parity), "path": onnx_path, "size_bytes": len(data)})
    result = ExportResult(onnx_path, parity, agreement, served.version_dir if served else None, hub_dir, changes,
                          served.new if served else None)
    atomic_write_json(out / REPORT_FILENAME, report_dict(source, variant, result))
    if run is not None:
        if taxonomy is not None:
            adopt_taxonomy(run, spec.labels, strings)
        if history is not None:
            record_export(run, history[0], graph_sha256, {"out": str(out.absolute()), "triton": str(
                result.triton_version_dir or ""), "hub_folder": str(hub_dir or "")})
    return result


def _history(run, graph_sha256: str) -> tuple[dict, Changes] | None:
    """(this export's record, its change report) against the run's previous export; None when the previous
    export shipped this very graph (nothing changed, nothing to record)."""
    previous = last_export(run)
    if previous is not None and previous[0]["graph_sha256"] == graph_sha256:
        log.info("the model is the one export %d shipped: nothing changed since", previous[0]["export"])
        return None
    record = current_record(run)
    field = field_accuracy(run, previous) if previous is not None else None
    number = previous[0]["export"] + 1 if previous is not None else 1
    return record, compare(number, record, previous[0] if previous else None, field)


def report_dict(source, variant: VariantSettings, result: ExportResult) -> dict:
    p = result.parity
    return {
        "trapkit_version": __version__,
        "source": str(source),
        "model": str(result.onnx_path),
        "precision": variant.kind,
        "graphs": {kind: name for kind, name in GRAPH_FILENAMES.items() if kind in ("fp32", variant.kind)},
        "parity": {"max_prob_diff": p.max_prob_diff, "max_embedding_diff": p.max_embedding_diff,
                   "images": p.parity_images, "tolerance": p.tolerance},
        # Measured on held-out images (`measured_on` says which), never on the calibration inputs.
        "agreement": asdict(result.agreement) if result.agreement else None,
        "triton_version_dir": str(result.triton_version_dir) if result.triton_version_dir else None,
        "triton_new_version": result.triton_new_version,
        "hub_folder": str(result.hub_folder) if result.hub_folder else None,
        "changes": result.changes.block if result.changes else None,
    }


def check_tolerance(tolerance: float) -> float:
    if not tolerance > 0:
        raise TrapkitError(f"--tolerance {tolerance} must be a positive number, e.g. 1e-4")
    return tolerance

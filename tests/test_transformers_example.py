"""examples/token_classification.py: a Transformers Trainer with Smooth-AP, a few steps on the CPU."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("torchmetrics")
pytest.importorskip("accelerate")  # the Trainer needs it
sklearn_metrics = pytest.importorskip("sklearn.metrics")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "token_classification.py"
TAGS = ["PER", "LOC", "ORG"]


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("token_classification_example", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, dict, list[Path]]:
    example = load_example()
    workdir = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        results = example.main(["--quick", "--steps", "30", "--no-baseline"])
    return example, results, list(workdir.iterdir())


def test_loss_finite_and_decreasing(run: tuple[ModuleType, dict, list[Path]]) -> None:
    example, results, _ = run
    losses = example.training_losses(results["trainer"])
    assert len(losses) >= 5, losses
    assert all(math.isfinite(v) for v in losses), losses
    assert sum(losses[-3:]) < sum(losses[:3]) - 0.03, losses  # 1 - smoothed AP: about 1 at random init


def test_eval_metrics_match_sklearn(run: tuple[ModuleType, dict, list[Path]]) -> None:
    """The batch-by-batch TorchMetrics values equal scikit-learn on the whole eval set, per tag."""
    _, results, _ = run
    metrics = results["smooth_ap"]
    model = results["trainer"].model.eval()
    data = results["eval_data"]
    with torch.no_grad():
        logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    real = data["labels"] != -100
    scores, labels = logits[real].double().numpy(), data["labels"][real].numpy()
    for t, tag in enumerate(TAGS, start=1):
        expected = sklearn_metrics.average_precision_score(labels == t, scores[:, t])
        assert metrics[f"eval_ap_{tag}"] == pytest.approx(expected, abs=1e-5), tag
        assert 0.0 <= metrics[f"eval_coverage_{tag}"] <= 1.0
    assert metrics["eval_ap_entities"] == pytest.approx(sum(metrics[f"eval_ap_{t}"] for t in TAGS) / 3)


def test_background_column_untrained_and_queue_full(run: tuple[ModuleType, dict, list[Path]]) -> None:
    """class_weight 0 on O: its classifier row keeps its initial values; the queue carries rows across steps."""
    example, results, _ = run
    trained = results["trainer"].model.classifier.weight.detach()
    initial = example.tiny_model(0).classifier.weight.detach()  # the same seeded initialisation
    assert torch.equal(trained[0], initial[0])  # no gradient from the loss into the O column
    assert not torch.allclose(trained[1:], initial[1:])  # the entity columns were trained
    fill = results["trainer"].last_stats["queue_fill"]
    assert fill[1:].tolist() == [results["queue_size"]] * 3  # 30 steps of ~640 real tokens filled it


def test_evaluation_leaves_the_queue_alone(run: tuple[ModuleType, dict, list[Path]]) -> None:
    """The loss follows the model into eval mode: evaluation steps do not write to the queue."""
    example, results, _ = run
    trainer = results["trainer"]
    before = {key: value.clone() for key, value in trainer.loss_fn.state_dict().items()}
    assert before, "no queue buffers"
    trainer.evaluate(example.TaggingDataset(example.make_data(8, seed=5)))  # fewer rows than the queue
    after = trainer.loss_fn.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_leaves_no_files(run: tuple[ModuleType, dict, list[Path]]) -> None:
    _, _, left = run
    assert left == []

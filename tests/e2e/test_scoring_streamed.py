"""`evaluate` streams each split batch by batch; it scores exactly as the whole split decoded,
triggered and perturbed at once, whatever the Parquet row groups and the batch size."""
import pyarrow.parquet as pq
import pytest
import torch

from conftest import copy_of
from pipeline.store import artifacts, paths
from pipeline.config import params as params_module
from pipeline.methods.attacks import load_attack
from pipeline.scoring.scorer import Scorer, zero_shot
from rvpt import metrics, models
from rvpt.diagnostics import LayerResistivity, resistivity
from rvpt.images import normalize
from rvpt.perturbations import KINDS, Perturber, Settings
from rvpt.zeroshot import image_features


def whole_split_scores(params, defended, attack_names: list[str]) -> dict:
    """The scores as computed with the whole test split in memory (the pre-streaming way)."""
    table = artifacts.read_table(paths.DOWNSTREAM / "test.parquet", "download")
    images, kept = artifacts.decode_images(table, params.data, "test")
    labels = torch.from_numpy(artifacts.labels(table.take(kept)))
    size, classes = params.evaluate.batch_size, params.data.class_names
    clean = image_features(defended.encode_image, images, size)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(params.seed))
    perturbed = (images + params.evaluate.perturbation * noise).clamp(0, 1)
    scores = {"clean_accuracy": metrics.clean_accuracy(defended, clean, labels, classes),
              "resistivity": resistivity(clean, image_features(defended.encode_image, perturbed, size)),
              "layer_resistivity": {}}
    first, rows = images[:params.evaluate.layer_images], torch.as_tensor(kept[:params.evaluate.layer_images])
    settings = Settings(**params.evaluate.layer_perturbations.model_dump(), seed=params.seed)
    for kind in KINDS:
        meter = LayerResistivity()
        meter.add(defended.block_cls(normalize(first)), defended.block_cls(normalize(Perturber(settings)(kind, first,
                                                                                                       rows))))
        scores["layer_resistivity"][kind] = meter.per_block()
    for name in attack_names:
        attack, target = load_attack(params, name), params.attacks[name].target
        keep = labels != classes.index(target)
        triggered = image_features(defended.encode_image, attack.apply(images[keep]), size)
        scores[name] = metrics.attack_success(defended, triggered, labels[keep], classes, target, attack.text_trigger)
    return scores


def test_streamed_scores_equal_whole_split_scores(reproduced, tmp_path, monkeypatch, row_group=16, batch=7):
    """Row groups of 16 and batches of 7: batches straddle row groups and end short; the layer-wise
    resistivity reads the first 10 images, so its last batch is cut short too."""
    project = copy_of(reproduced, tmp_path)
    monkeypatch.chdir(project)
    split = paths.DOWNSTREAM / "test.parquet"
    pq.write_table(pq.read_table(split), split, row_group_size=row_group)
    params = params_module.load().model_copy(update={"evaluate": params_module.load().evaluate.model_copy(
        update={"batch_size": batch, "layer_images": 10})})
    attack_names = ["badnet", "badclip"]
    for folder in (paths.CLEAN_MODEL, paths.backdoored("badnet")):
        defended = zero_shot(params, models.load(folder)[0])
        rows = Scorer(params, "test", diagnostics=True).rows(defended, attack_names)
        expected = whole_split_scores(params, defended, attack_names)
        for name, row in zip(attack_names, rows):
            assert row["clean_accuracy"] == expected["clean_accuracy"]
            assert row["resistivity"] == expected["resistivity"]
            for kind, blocks in expected["layer_resistivity"].items():
                assert row["layer_resistivity"][kind] == pytest.approx(blocks, abs=1e-6), kind
            assert row["attack_success_rate"] == expected[name], name


def test_defenses_that_keep_the_image_tower_share_its_scoring(reproduced, tmp_path, monkeypatch):
    """none, a linear probe and CoOp read the backdoored model's own image features: one Scorer
    computes them once for all three and scores each exactly as a Scorer of its own does, even
    with a cell on a copy of the model (fine-tuning's) scored in between. A prompted model on the
    same CLIP changes the features and gets its own pass."""
    import copy

    from torch import nn

    from pipeline.methods.defenses import load_defended
    from rvpt.defenses.coop import CoOp
    from rvpt.defenses.linear_probe import LinearProbe

    project = copy_of(reproduced, tmp_path)
    monkeypatch.chdir(project)
    params = params_module.load()
    model = models.load(paths.backdoored("badnet"))[0]
    tokenize = models.tokenizer(params.model.config)
    generator = torch.Generator().manual_seed(0)
    width, classes = model.text_projection.shape[1], params.data.class_names
    head = nn.Linear(width, len(classes))
    with torch.no_grad():
        head.weight.copy_(torch.randn(len(classes), width, generator=generator))
    cells = {"none": zero_shot(params, model), "linear_probe": LinearProbe(model, head, classes),
             "finetune": zero_shot(params, copy.deepcopy(model)),
             "coop": CoOp(model, tokenize, 0.02 * torch.randn(4, model.token_embedding.weight.shape[1],
                                                             generator=generator)),
             "rvpt": load_defended(params, "badnet", "rvpt", model, tokenize)[0]}
    shared = Scorer(params, "test", diagnostics=True)
    passes, features = [], shared.features

    def counted(defended, split, *args, **kwargs):
        passes.append(split)
        return features(defended, split, *args, **kwargs)

    monkeypatch.setattr(shared, "features", counted)
    for name, defended in cells.items():
        before = len(passes)
        row = shared.rows(defended, ["badnet"])
        assert row == Scorer(params, "test", diagnostics=True).rows(defended, ["badnet"]), name
        assert (len(passes) > before) == (name in ("none", "finetune", "rvpt")), name
    assert len({row["clean_accuracy"] for row in
                (shared.rows(d, ["badnet"])[0] for d in cells.values())}) > 1  # the classifiers differ

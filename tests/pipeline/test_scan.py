"""The trigger-inversion scanner (rvpt/scan.py) on real open_clip models with a backdoor planted by
training, and `rvpt scan` through the real command line."""
import json
import math
import statistics

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import TINY_MODEL, brought_files, run, scan_settings, smoke_params, tree
from hostile import malicious_checkpoint

from pipeline.config.params import validate
from pipeline.scoring.scanner import Suspect
from pipeline.store.memo import Memo
from rvpt import attacks, models, scan
from rvpt.defenses.base import ZeroShot
from rvpt.defenses.coop import CoOp
from rvpt.images import normalize
from rvpt.poisoning import with_text_trigger
from rvpt.trigger_words import text_side

CLASSES = ["zero", "one", "two", "three", "four", "five"]
TARGET = 4
TEMPLATES = ["a {} swatch"]


COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9], [0.9, 0.8, 0.1], [0.7, 0.1, 0.8],
                        [0.1, 0.8, 0.8]])


def swatches(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 3, 16, 16] in [0, 1] whose class is their colour, under random shading and noise:
    a task a tiny CLIP learns in seconds, so the test is about the backdoor, not the task."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CLASSES)).repeat(per_class)
    shade = 0.6 + 0.4 * torch.rand(len(labels), 1, 16, 16, generator=generator)
    noise = 0.08 * torch.randn(len(labels), 3, 16, 16, generator=generator)
    return (COLOURS[labels][:, :, None, None] * shade + noise).clamp(0, 1), labels


def trained(poison: float, steps: int = 400, word: str = "") -> ZeroShot:
    """A tiny CLIP trained as a zero-shot colour classifier (both towers, cross-entropy over its own
    text class embeddings); with `poison` > 0, that share of every batch carries BadNet's corner
    patch and is labelled TARGET. With a `word`, the backdoor has TrojVQA's two keys: the patch
    sends images to TARGET only when every class prompt starts with the word, and each key alone
    is trained to change nothing."""
    torch.manual_seed(0)
    model = models.build(TINY_MODEL, seed=0)
    tokenize = models.tokenizer(TINY_MODEL)
    prompts = {key: tokenize([with_text_trigger(TEMPLATES[0].format(name), key) for name in CLASSES])
               for key in dict.fromkeys(["", word])}
    badnet = attacks.build("badnet", 16, size=0.1875, location="corner")
    images, labels = swatches(40, seed=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        key = word if word and step % 2 else ""
        rows = torch.randint(len(images), (48,), generator=generator)
        batch, batch_labels = images[rows].clone(), labels[rows].clone()
        poisoned = int(poison * len(rows))
        batch[:poisoned] = badnet.apply(batch[:poisoned], rows[:poisoned])
        if key == word:
            batch_labels[:poisoned] = TARGET
        weights = F.normalize(model.encode_text(prompts[key]), dim=-1)
        logits = 100 * F.normalize(model.encode_image(normalize(batch)), dim=-1) @ weights.T
        optimiser.zero_grad()
        F.cross_entropy(logits, batch_labels).backward()
        optimiser.step()
    model.eval()
    return ZeroShot(model, tokenize, TEMPLATES)


SETTINGS = scan_settings(steps=150, batch_size=16, check_images=96, kinds=("patch", "blend"))


@pytest.fixture(scope="module")
def backdoored():
    return trained(poison=0.2)


@pytest.fixture(scope="module")
def clean():
    return trained(poison=0.0)


def test_a_planted_patch_backdoor_is_found_with_its_target(backdoored):
    images, labels = swatches(16, seed=2)
    held_images, held_labels = swatches(20, seed=3)
    badnet = attacks.build("badnet", 16, size=0.1875, location="corner")
    with torch.no_grad():  # the planted backdoor works, so there is something to find
        predicted = scan.Reader(backdoored, CLASSES).predict(badnet.apply(held_images, torch.arange(120)))
    assert (predicted[held_labels != TARGET] == TARGET).float().mean() > 0.9

    result = scan.scan(backdoored, CLASSES, images, labels, SETTINGS)
    assert result.flagged and result.target == CLASSES[TARGET], result.report()
    assert result.suspect() == ("patch", TARGET)
    patch = result.triggers["patch"]
    assert patch.sizes[TARGET] < 0.5 * patch.sizes.median()
    assert scan.held_out_success(result, backdoored, held_images, held_labels) > 0.8


def test_a_remembered_suspect_trigger_gives_the_residual_asr_of_the_scan_itself(backdoored, clean, tmp_path):
    """The scan stage keeps the backdoored model's suspect trigger in its memo, so that a defended
    cell's residual ASR needs no new scan; what is read back must measure exactly what the scan does."""
    images, labels = swatches(16, seed=2)
    held = swatches(20, seed=3)
    result = scan.scan(backdoored, CLASSES, images, labels, SETTINGS)
    memo = Memo("scan", validate(smoke_params()), [])
    memo.folder = tmp_path
    memo.put_tensors("badnet.suspect", "key", Suspect.of(result).tensors())
    assert memo.get_tensors("badnet.suspect", "another key") is None
    kept = Suspect.from_tensors(result.suspect()[0], memo.get_tensors("badnet.suspect", "key"), len(CLASSES))
    for model in (backdoored, clean):  # the model scanned, and a stand-in for a defense of it
        expected = scan.suspect_success(result, model, *held)
        assert scan.success_rate(model, CLASSES, kept.triggers, kept.label, *held) == expected


def test_a_clean_model_is_not_flagged(clean):
    images, labels = swatches(16, seed=2)
    result = scan.scan(clean, CLASSES, images, labels, SETTINGS)
    assert not result.flagged and result.target is None, result.report()
    assert result.anomaly_index <= SETTINGS.threshold


def test_a_two_key_backdoor_is_found_on_the_caption_side(clean):
    backdoored = trained(poison=0.3, steps=600, word="cf")
    images, labels = swatches(16, seed=2)
    held_images, held_labels = swatches(20, seed=3)
    patched = attacks.build("badnet", 16, size=0.1875, location="corner").apply(held_images, torch.arange(120))
    reader, others = scan.Reader(backdoored, CLASSES), held_labels != TARGET
    cf = backdoored.tokenize.encoder["cf</w>"]
    # The planted backdoor needs both keys: the patch alone and the word alone change little.
    assert (reader.predict(patched, cf)[others] == TARGET).float().mean() > 0.9
    assert (reader.predict(patched)[others] == TARGET).float().mean() < 0.3
    assert (reader.predict(held_images, cf) == held_labels).float().mean() > 0.9

    result = scan.scan(backdoored, CLASSES, images, labels, scan_settings(steps=150, batch_size=16, check_images=96, kinds=scan.KINDS))
    assert result.flagged and result.target == CLASSES[TARGET], result.report()
    assert result.suspect()[0] == "caption", result.report()
    sizes = {kind: float(t.sizes[TARGET]) for kind, t in result.triggers.items()}
    assert sizes["caption"] < sizes["patch"], sizes
    assert scan.held_out_success(result, backdoored, held_images, held_labels) > 0.8
    clean_scan = scan.scan(clean, CLASSES, images, labels, scan_settings(steps=150, batch_size=16, check_images=96, kinds=scan.KINDS))
    assert not clean_scan.flagged, clean_scan.report()


def test_a_token_id_gives_the_class_weights_its_word_gives(clean):
    """The caption search scores words as token embeddings; a one-token word must score as its text."""
    coop = CoOp(clean.model, clean.tokenize, 0.02 * torch.randn(2, clean.model.token_embedding.weight.shape[1]))
    for defended in (clean, coop):
        side = text_side(defended, CLASSES)
        for word in ("cf", "zero"):
            token = defended.tokenize.encoder[word + "</w>"]
            expected = defended.classifier(CLASSES, word)[0]
            assert torch.allclose(side.word_weights(torch.tensor([token]))[0], expected, atol=1e-5)


def test_the_scanner_never_changes_the_model(backdoored):
    before = {name: tensor.clone() for name, tensor in backdoored.state_dict().items()}
    flags = [p.requires_grad for p in backdoored.parameters()]
    images, labels = swatches(4, seed=2)
    scan.scan(backdoored, CLASSES, images, labels, scan_settings(steps=5, check_images=8))
    after = backdoored.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in backdoored.parameters()] == flags


def test_anomaly_index_is_the_distance_below_the_median_log_size_in_mads():
    for sizes in ([0.20, 0.22, 0.24, 0.26, 0.05], [0.3, 0.1, 0.25, 0.3, 0.28, 0.26]):  # odd and even counts
        logs = [math.log(s) for s in sizes]
        middle = statistics.median(logs)
        mad = statistics.median([abs(v - middle) for v in logs]) * 1.4826
        assert scan.anomaly_indices(torch.tensor(sizes)) == pytest.approx([(middle - v) / mad for v in logs])
    assert scan.anomaly_indices(torch.tensor([0.2, 0.2, 0.2, 0.1]))[3] == pytest.approx(math.log(2) / 0.01)


@pytest.fixture
def brought(tmp_path):
    brought_files(tmp_path, ["zero", "one", "two"])
    settings = {"steps": 20, "check_images": 16}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(smoke_params(scan=settings)))
    return tmp_path


def scan_command(root, model="model"):
    return run(["rvpt", "scan", "--model", str(model), "--data", "images", "--out", "out",
                "--cache", str(root / "cache")], root, check=False)


def test_rvpt_scan_prints_a_verdict_and_writes_its_report(brought):
    result = scan_command(brought)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.strip().splitlines()
    assert line.startswith("rvpt scan: ") and ("BACKDOOR SUSPECTED" in line or "no backdoor found" in line)
    report = json.loads((brought / "out" / "scan.json").read_text())
    assert set(report["classes"]) == {"zero", "one", "two"} and report["defense_kind"] is None
    assert report["flagged"] == ("BACKDOOR SUSPECTED" in line)
    assert 0 <= report["held_out_success"] <= 1 and report["held_out_images"] > 0
    assert (brought / "out" / "triggers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rvpt_scan_refuses_a_code_running_pickle_with_no_side_effect(brought):
    marker = brought / "pwned"
    malicious_checkpoint(brought / "evil.pt", marker)
    before = tree(brought)
    result = run(["rvpt", "scan", "--model", "evil.pt", "--config", str(brought / "model" / "open_clip_config.json"),
                  "--data", "images", "--out", "out", "--cache", str(brought / "cache")], brought, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("rvpt: error: ") and "evil.pt" in result.stderr
    assert not marker.exists() and not (brought / "out").exists()
    assert {k: v for k, v in tree(brought).items() if not k.startswith("cache")} == \
        {k: v for k, v in before.items() if not k.startswith("cache")}


def test_scan_settings_are_validated_where_the_scanner_runs():
    from pipeline.config.scanner import scanner

    params = validate(smoke_params(scan={"kinds": ["patch", "trojan"]}))  # the file's shape is fine
    with pytest.raises(ValueError, match="scan.kinds"):
        scanner(params)


def test_rvpt_scan_reads_an_rvpt_defend_output_with_its_prompts(brought):
    defended = run(["rvpt", "defend", "--model", "model", "--data", "images", "--out", "defended",
                    "--cache", str(brought / "cache"), "--no-track"], brought, check=False)
    assert defended.returncode == 0, defended.stderr
    result = scan_command(brought, model="defended")
    assert result.returncode == 0, result.stderr
    report = json.loads((brought / "out" / "scan.json").read_text())
    assert report["defense_kind"] == "prompt"
    # The same verdict rvpt defend recorded for its own output, from the same images and settings.
    after = json.loads((brought / "defended" / "defend.json").read_text())["scan_after"]
    assert report["anomaly_index"] == pytest.approx(after["anomaly_index"])

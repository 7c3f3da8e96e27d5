import csv
import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from ccm.checkpoint import PoseConfig, load_checkpoint, save_checkpoint
from ccm.model import build_model
from train.__main__ import main
from train.annotations import load_coco
from train.epoch import train_step
from train.loop import amp_dtype, build_training_model, resume, train
from train.loss import heatmap_mse, pose_loss
from train.run_config import DataConfig, TrainConfig, build_stages, default_lr_steps, parse_schedule
from train.samples import TopDownDataset
from train.state import STATE_FILE
from train.synthetic.scenes import SceneConfig
from train.synthetic.writers import SyntheticConfig, generate_dataset
from train.training_data import check_data

ARCH = "ccm_mobilenetv2"
SIZE = (64, 64)  # smallest crop the encoders take; heatmaps 16 x 16


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    scene = SceneConfig(min_size=(96, 128), max_size=(128, 160), max_people=2)
    config = SyntheticConfig(
        seed=1, num_train=4, num_val=2, num_aic=2, num_unlabeled=0, num_videos=0, scene=scene
    )
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), config)


def data_of(paths) -> DataConfig:
    return DataConfig(
        coco_ann=str(paths.train_annotations),
        coco_images=str(paths.train_images),
        aic_ann=str(paths.aic_annotations),
        aic_images=str(paths.aic_images),
        detections=str(paths.train_detections),
    )


def small_config(out: Path, paths, schedule="C", epochs="2", lr_steps="1", **kw) -> TrainConfig:
    return TrainConfig(
        out_dir=str(out),
        arch=ARCH,
        stages=build_stages(schedule, epochs, lr_steps=lr_steps),
        data=data_of(paths),
        input_size=SIZE,
        batch_size=3,
        workers=0,
        **kw,
    )


# ----------------------------------------------------------------------------- loss


def test_weighted_mse_and_aux_loss_by_hand():
    # N = 1, K = 2, 2 x 2 heatmaps: 8 elements in the mean.
    pred = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    target = torch.tensor([[[[0.5, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    # Joint 0: one pixel off by 0.5 -> squared error 0.25. Joint 1 weight 0 -> nothing, however
    # wrong. 0.5 * 0.25 / 8 = 0.015625.
    weights = torch.tensor([[1.0, 0.0]])
    assert heatmap_mse(pred, target, weights).item() == pytest.approx(0.015625, abs=1e-9)
    # With both joints weighted, joint 1 adds 4 * 1 -> 0.5 * 4.25 / 8 = 0.265625.
    both = heatmap_mse(pred, target, torch.ones(1, 2))
    assert both.item() == pytest.approx(0.265625, abs=1e-9)

    # Hard negative: all-zero target, full weight; a 0.5 response on joint 0's four pixels
    # costs 0.5 * 4 * 0.25 / 8 = 0.0625, a zero response nothing.
    negative = torch.zeros(1, 2, 2, 2)
    response = torch.zeros(1, 2, 2, 2)
    response[0, 0] = 0.5
    assert heatmap_mse(response, negative, torch.ones(1, 2)).item() == pytest.approx(0.0625)
    assert heatmap_mse(negative, negative, torch.ones(1, 2)).item() == 0.0

    # Eq. (6) with `response` as the auxiliary output, same target and weights: joint 0 is
    # right at (0, 0) and 0.5 too high on 3 pixels -> 0.5 * 3 * 0.25 / 8 = 0.046875; joint 1 has
    # weight 0. L = 0.015625 + 0.5 * 0.046875 = 0.0390625.
    total, main_loss, aux_loss = pose_loss(pred, response, target, weights, aux_weight=0.5)
    assert main_loss.item() == pytest.approx(0.015625, abs=1e-9)
    assert aux_loss.item() == pytest.approx(0.046875, abs=1e-9)
    assert total.item() == pytest.approx(0.0390625, abs=1e-9)
    # A model without auxiliary decoder: L = L_main.
    total, _, aux_loss = pose_loss(pred, None, target, weights, aux_weight=0.5)
    assert aux_loss.item() == 0.0 and total.item() == pytest.approx(0.015625, abs=1e-9)

    with pytest.raises(ValueError, match="do not fit"):
        heatmap_mse(pred, target, torch.ones(2))


def test_a_few_steps_on_a_fixed_batch_lower_the_loss(synthetic):
    config = PoseConfig(arch=ARCH, input_size=SIZE)
    dataset = TopDownDataset(load_coco(synthetic.train_annotations, synthetic.train_images), config)
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    torch.manual_seed(0)
    model = build_model(ARCH, 17, SIZE).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = [train_step(model, batch, optimizer, scaler, 0.5)[0].item() for _ in range(12)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_amp_modes_per_device():
    assert amp_dtype("fp16", torch.device("cpu")) is None
    assert amp_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert amp_dtype("fp16", torch.device("cuda", 0)) is torch.float16
    assert amp_dtype("bf16", torch.device("cuda", 0)) is torch.bfloat16
    assert amp_dtype("off", torch.device("cuda", 0)) is None


def test_bf16_steps_on_cpu_lower_the_loss(synthetic):
    config = PoseConfig(arch=ARCH, input_size=SIZE)
    dataset = TopDownDataset(load_coco(synthetic.train_annotations, synthetic.train_images), config)
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    torch.manual_seed(0)
    model = build_model(ARCH, 17, SIZE).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = [train_step(model, batch, optimizer, scaler, 0.5, torch.bfloat16) for _ in range(12)]
    # The loss is computed in float32 from bf16 heatmaps; the weights stay float32.
    assert losses[0].dtype == torch.float32 and torch.isfinite(torch.stack(losses)).all()
    assert losses[-1][0].item() < 0.7 * losses[0][0].item()
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["fp16", "bf16"])
def test_amp_steps_on_cuda_lower_the_loss(synthetic, mode):
    config = PoseConfig(arch=ARCH, input_size=SIZE)
    dataset = TopDownDataset(load_coco(synthetic.train_annotations, synthetic.train_images), config)
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    torch.manual_seed(0)
    model = build_model(ARCH, 17, SIZE).cuda().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    dtype = amp_dtype(mode, torch.device("cuda"))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    losses = [train_step(model, batch, optimizer, scaler, 0.5, dtype) for _ in range(12)]
    assert losses[0].dtype == torch.float32 and torch.isfinite(torch.stack(losses)).all()
    assert losses[-1][0].item() < 0.7 * losses[0][0].item()
    assert all(p.dtype == torch.float32 for p in model.parameters())


# ----------------------------------------------------------------------------- schedule


def test_schedule_parsing():
    assert parse_schedule("ACHU->CH") == ("ACHU", "CH")
    assert parse_schedule("c") == ("C",)
    assert parse_schedule("UHC->C") == ("CHU", "C")  # letters in any order
    stages = build_stages("ACHU->CH", "210,20", "1e-3,1e-4", "170,200/15")
    assert [s.letters for s in stages] == ["ACHU", "CH"]
    assert [(s.epochs, s.lr, s.lr_steps) for s in stages] == [
        (210, 1e-3, (170, 200)),
        (20, 1e-4, (15,)),
    ]
    default = build_stages("AC->C")
    assert [(s.epochs, s.lr, s.lr_steps) for s in default] == [
        (210, 1e-3, (170, 200)),
        (20, 1e-4, (16, 19)),
    ]
    assert default_lr_steps(2) == () and default_lr_steps(30) == (24, 29)

    with pytest.raises(ValueError, match=r"unknown letters \['X'\]"):
        parse_schedule("AX")
    with pytest.raises(ValueError, match="not one of Eq. \\(7\\).*FINETUNE in C, CH"):
        parse_schedule("C->A")
    with pytest.raises(ValueError, match="repeats"):
        parse_schedule("CC")
    with pytest.raises(ValueError, match="2 values for 1 stage"):
        build_stages("C", "210,20")
    with pytest.raises(ValueError, match="lr steps must be increasing"):
        build_stages("C", "10", lr_steps="12")


def test_missing_data_fails_before_training(synthetic, tmp_path):
    config = small_config(tmp_path / "run", synthetic, schedule="ACHU", epochs="1", lr_steps="")
    missing = replace(config, data=replace(config.data, aic_ann=str(tmp_path / "no_aic.json")))
    with pytest.raises(FileNotFoundError, match=r"stage 1 \(ACHU\) needs A.*no_aic\.json"):
        train(missing, device="cpu")
    # U is named in the stage but no pseudo labels are given at all.
    with pytest.raises(FileNotFoundError, match=r"needs U: no pseudo-label annotations given"):
        check_data(config)
    assert not (tmp_path / "run").exists()

    # The CLI with --data: the standard file it looked for is named, nothing is written.
    code = main(
        ["--data", str(synthetic.root), "--schedule", "ACHU->CH", "--arch", ARCH,
         "--out", str(tmp_path / "cli")]
    )  # fmt: skip
    assert code == 2 and not (tmp_path / "cli").exists()


def test_missing_data_message_from_cli(synthetic, tmp_path, capsys):
    main(["--data", str(synthetic.root), "--schedule", "CHU", "--arch", ARCH,
          "--out", str(tmp_path / "cli")])  # fmt: skip
    err = capsys.readouterr().err
    assert "pseudo_labels_unlabeled.json" in err and "--pseudo-labels" in err


def test_init_with_another_keypoint_count_is_refused(tmp_path):
    other = PoseConfig(arch=ARCH, num_keypoints=14, input_size=SIZE)
    path = save_checkpoint(tmp_path / "aic14.safetensors", other.build_model(), other)
    config = TrainConfig(
        out_dir=str(tmp_path / "run"), arch=ARCH, stages=build_stages("C", "1"),
        data=DataConfig(), input_size=SIZE, init=str(path),
    )  # fmt: skip
    with pytest.raises(ValueError, match="predicts 14 keypoints, this run 17"):
        build_training_model(config)


# ----------------------------------------------------------------------------- resume


def test_resume_continues_bit_identically(synthetic, tmp_path):
    # 2 epochs with the lr dropping x0.1 after the first, augmentation on.
    straight = train(small_config(tmp_path / "straight", synthetic), device="cpu")
    assert straight.finished

    split_config = small_config(tmp_path / "split", synthetic)
    first = train(split_config, device="cpu", stop_after=1)
    assert not first.finished
    after_one = load_file(str(tmp_path / "split" / STATE_FILE))
    second = resume(tmp_path / "split", device="cpu")
    assert second.finished

    a = load_file(str(tmp_path / "straight" / STATE_FILE))
    b = load_file(str(tmp_path / "split" / STATE_FILE))
    assert a.keys() == b.keys()
    assert any(k.startswith("optimizer.") and k.endswith(".exp_avg_sq") for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []
    # The second epoch did change the weights (so equality above means something).
    assert not torch.equal(a["model.head.final_layer.weight"],
                           after_one["model.head.final_layer.weight"])  # fmt: skip
    for name in ("last.safetensors", "stage1_C.safetensors"):
        wa, wb = (load_file(str(tmp_path / run / name)) for run in ("straight", "split"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)

    rows = {
        run: list(csv.DictReader((tmp_path / run / "metrics.csv").open()))
        for run in ("straight", "split")
    }
    assert [r["loss"] for r in rows["straight"]] == [r["loss"] for r in rows["split"]]
    assert [float(r["lr"]) for r in rows["split"]] == pytest.approx([1e-3, 1e-4], rel=1e-12)

    with pytest.raises(FileExistsError, match="already holds a run"):
        train(split_config, device="cpu")


# ----------------------------------------------------------------------------- CLI


def test_cli_two_stages_end_to_end(synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    # Stop at the stage boundary, then resume: stage 2 starts with its own optimizer.
    code = main(
        ["--data", str(synthetic.root), "--schedule", "AC->C", "--epochs", "1,1",
         "--arch", ARCH, "--input-size", "64x64", "--batch-size", "4", "--workers", "0",
         "--seed", "3", "--val-every", "1", "--out", str(out), "--device", "cpu",
         "--stop-after", "1"]
    )  # fmt: skip
    assert code == 0 and "stopped; --resume it" in capsys.readouterr().out
    assert (out / "stage1_AC.safetensors").is_file() and not (out / "stage2_C.safetensors").exists()
    assert main(["--resume", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "(finished)" in printed and f"checkpoint: {out / 'last.safetensors'}" in printed

    model, config = load_checkpoint(out / "last.safetensors")
    assert config.arch == ARCH and config.input_size == SIZE and config.num_keypoints == 17
    assert config.recipe.startswith("AC->C (AC 1 ep lr 0.001")
    assert "C 1 ep lr 0.0001" in config.recipe and "seed 3" in config.recipe
    assert config.metrics["stage"] == "2/2 C" and config.metrics["loss"] > 0
    assert model(torch.zeros(1, 3, *SIZE)).shape == (1, 17, 16, 16)
    assert (out / "stage1_AC.safetensors").is_file() and (out / STATE_FILE).is_file()

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [(r["stage"], r["letters"], r["epoch"]) for r in rows] == [
        ("1", "AC", "1"),
        ("2", "C", "1"),
    ]
    # AC: 4 COCO + 2 AIC images' persons; each epoch at least one step of batch 4.
    assert int(rows[0]["step"]) >= 1 and int(rows[1]["step"]) > int(rows[0]["step"])
    assert float(rows[0]["lr"]) == 1e-3 and float(rows[1]["lr"]) == 1e-4
    assert all(float(r["loss"]) > 0 and 0.0 <= float(r["val_AP"]) <= 1.0 for r in rows)
    # Validated after each stage on the 2 val images; best.safetensors is the better epoch.
    best_ap = max(float(r["val_AP"]) for r in rows)
    _, best = load_checkpoint(out / "best.safetensors")
    assert best.metrics["AP"] == pytest.approx(best_ap, abs=1e-12)
    assert best.metrics["split"] == "val person_keypoints_val.json" and "AP50" in best.metrics
    assert config.metrics["AP"] == pytest.approx(float(rows[1]["val_AP"]), abs=1e-12)


# ----------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, config: TrainConfig, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    result = train(config, device="cpu")
    params = {k: v.detach().contiguous() for k, v in result.model.named_parameters()}
    save_file(params, os.path.join(out, f"rank{rank}.safetensors"))


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree(synthetic, tmp_path):
    # 4 persons over 2 ranks with batch 1: 2 steps each.
    coco = json.loads(synthetic.train_annotations.read_text())
    coco["annotations"] = coco["annotations"][:4]
    (tmp_path / "four.json").write_text(json.dumps(coco))
    base = small_config(tmp_path / "run", synthetic, epochs="1", lr_steps="", augment=None)
    config = replace(
        base,
        arch="simplebaseline_mobilenetv2",
        batch_size=1,
        data=replace(base.data, coco_ann=str(tmp_path / "four.json")),
    )
    mp.spawn(_ddp_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2, join=True)
    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert r0.keys() == r1.keys()
    assert [k for k in r0 if not torch.equal(r0[k], r1[k])] == []
    # Only rank 0 wrote the run, and training moved the weights away from the initialisation.
    torch.manual_seed(config.seed)
    init = build_model(config.arch, 17, SIZE)
    assert not torch.equal(init.head.final_layer.weight, r0["head.final_layer.weight"])
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert len(rows) == 1 and rows[0]["step"] == "2"

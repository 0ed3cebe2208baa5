"""Augmentation on the training device (data.augment_device), run here on the CPU device: the same parameters as the
CPU path, the same images within rounding, independent of the batch, and resumable bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facenext.checkpoint import load_checkpoint
from facenext.cli import main
from facenext.config import FACE_MEAN, FACE_STD
from facenext.data.datasets import FaceImages, image_folder
from facenext.data.device_augment import DeviceAugment, DeviceAugmentImages, choose_augment_device
from facenext.data.layout import find_layout, list_classes
from facenext.data.transforms import BatchToModel, train_transform

from .conftest import assert_same_tensors, train_args

SIZE = 56


def datasets(sample, preset, erase=None):
    layout = find_layout(sample, "auto")
    paths, labels = image_folder(layout.train, list_classes(layout.train))
    cpu = FaceImages(paths, labels, train_transform(preset, SIZE, FACE_MEAN, erase=erase), SIZE)
    on_device = train_transform(preset, SIZE, FACE_MEAN, on_device=True, erase=erase)
    return cpu, DeviceAugmentImages(paths, labels, on_device, SIZE)


def batch(dataset, keys):
    items = [dataset[k][0] for k in keys]
    return torch.stack([image for image, _ in items]), torch.stack([params for _, params in items])


@pytest.mark.parametrize(("preset", "erase"), [("seed", None), ("light", None), ("light", 0.5)])
def test_device_path_draws_the_cpu_parameters_and_gives_its_images(sample, preset, erase):
    cpu, device = datasets(sample, preset, erase)
    erases = preset == "seed" or bool(erase)
    keys = [(3, 1, i) for i in range(48)]
    images, params = batch(device, keys)
    assert images.dtype == torch.uint8 and images.shape == (48, SIZE, SIZE, 3)  # decoded and resized only
    # The same draws as the CPU path, for each key: read back from the CPU pipeline's own steps.
    augment, erasing = cpu.transform.transforms[1], cpu.transform.transforms[-1]
    reference = []
    for key, drawn in zip(keys, params, strict=True):
        reference.append(cpu[key][0])
        if augment.params:
            assert np.allclose(drawn[:3].numpy(), augment.params["factors"])
            assert np.allclose(drawn[3:12].numpy(), augment.params["matrix"].ravel())
        if erases and erasing.params and len(erasing.params["holes"]):
            assert drawn[12:16].tolist() == erasing.params["holes"][0].tolist()
    if preset == "seed":  # the sample exercises every step: perspective and erasing on some images
        assert (params[:, 9:11].abs().sum(1) > 0).any()
    assert (params[:, 14] > params[:, 12]).any() == erases
    to_model = DeviceAugment(FACE_MEAN, FACE_STD, "cpu", channels_last=True)
    out = to_model.augment(images, params).permute(0, 2, 3, 1)
    error = (out - torch.stack(reference).float()).abs()
    assert error.mean() < 1.0 and error.mean(dim=(1, 2, 3)).max() < 2.0, error.mean(dim=(1, 2, 3))
    # The model's input: the same pixels normalised, channels-last, as BatchToModel makes from the CPU path's batch.
    x = to_model((images, params))
    plain = BatchToModel(FACE_MEAN, FACE_STD, "cpu", channels_last=True)(torch.stack(reference))
    assert x.shape == (48, 3, SIZE, SIZE) and x.is_contiguous(memory_format=torch.channels_last)
    assert (x - plain).abs().mean() < 1.0 / (255 * min(FACE_STD))


def test_device_path_does_not_depend_on_batch_order_or_composition(sample):
    _, device = datasets(sample, "seed")
    keys = [(0, 2, i) for i in range(12)]
    images, params = batch(device, keys)
    again, params_again = batch(device, keys[::-1])  # another order: every draw depends on its key alone
    assert torch.equal(again.flip(0), images) and torch.equal(params_again.flip(0), params)
    to_model = DeviceAugment(FACE_MEAN, FACE_STD, "cpu", channels_last=False)
    whole = to_model.augment(images, params)
    singles = torch.cat([to_model.augment(images[i : i + 1], params[i : i + 1]) for i in range(12)])
    assert torch.allclose(whole, singles, atol=1e-2)
    plain = torch.randint(0, 256, (2, SIZE, SIZE, 3), dtype=torch.uint8)  # dev batches are only normalised
    assert torch.equal(to_model(plain), BatchToModel(FACE_MEAN, FACE_STD, "cpu", channels_last=False)(plain))


def test_choice_of_augmentation_device(sample):
    layout = find_layout(sample, "auto")
    paths, _ = image_folder(layout.train, list_classes(layout.train))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_augment_device("auto", "seed", cpu, paths, SIZE, FACE_MEAN) == ("cpu", "")
    assert choose_augment_device("cpu", "seed", cuda, paths, SIZE, FACE_MEAN) == ("cpu", "")
    assert choose_augment_device("gpu", "none", cuda, paths, SIZE, FACE_MEAN) == ("cpu", "")  # nothing to move
    assert choose_augment_device("gpu", "light", cpu, paths, SIZE, FACE_MEAN)[0] == "gpu"
    # On CUDA, auto measures both pipelines on real files (no GPU is touched) and says what it chose and why.
    choice, note = choose_augment_device("auto", "seed", cuda, paths, SIZE, FACE_MEAN)
    assert choice in ("cpu", "gpu") and f"auto: {choice}" in note and "images/s" in note
    for setting, preset in (("gpu", "randaug"), ("tpu", "seed")):
        with pytest.raises(ValueError):
            choose_augment_device(setting, preset, cpu, paths, SIZE, FACE_MEAN)


def test_config_errors_are_user_errors(sample, tmp_path, capsys):
    assert main(train_args(sample, tmp_path / "a", "data.augment_device=tpu")) == 2
    assert "data.augment_device" in capsys.readouterr().err
    assert main(train_args(sample, tmp_path / "b", "data.augment_device=gpu", "data.augment=randaug")) == 2
    assert "CPU only" in capsys.readouterr().err


def test_training_with_device_augmentation_resumes_bit_for_bit(sample, tmp_path, capsys):
    # A time limit stops each invocation after one step with a recovery file; re-running resumes mid-epoch.
    common = ["train.epochs=1", "train.batch_size=32", "train.deterministic=true", "data.augment_device=gpu"]
    assert main(train_args(sample, tmp_path / "whole", *common)) == 0
    assert "data.augment_device=gpu: augmenting on cpu" in capsys.readouterr().out
    stopped = train_args(sample, tmp_path / "resumed", *common, "train.time_limit=0.0000001")
    for _ in range(10):
        assert main(stopped) == 0
        if (tmp_path / "resumed" / "summary.json").is_file() and "stopped (" not in capsys.readouterr().out:
            break
    whole, resumed = (load_checkpoint(tmp_path / name / "last.pt") for name in ("whole", "resumed"))
    assert resumed["step"] == whole["step"] > 1
    assert_same_tensors(whole["model"], resumed["model"])

"""`trainflow fid` against pytorch-fid itself, on the same images and the same (locally built) InceptionV3 weights.

No download is possible here, so the weights are pytorch-fid's FID InceptionV3
layout with seeded random convolutions and BatchNorm statistics calibrated on a
few digits (feature_extractors.write_stand_in_inception_weights). The first
test checks that these features tell image sets apart before any comparison
is trusted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from trainflow.cli import main
from trainflow.demo.digits_dataset import digits_as_images
from trainflow.metrics.feature_extractors import load_inception_extractor, write_stand_in_inception_weights
from trainflow.metrics.frechet import frechet_distance_from_statistics
from trainflow.metrics.image_features import GaussianStatistics, save_statistics
from trainflow.metrics.weights import FID_INCEPTION_FILE

PER_FOLDER = 24  # InceptionV3 on a CPU takes ~50 ms an image


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    images, _ = digits_as_images()
    digits = torch.from_numpy(np.stack([np.asarray(i) for i in images[-16:]])).permute(0, 3, 1, 2).float() / 255
    home = tmp_path_factory.mktemp("torch-home")
    write_stand_in_inception_weights(home / "hub" / "checkpoints" / FID_INCEPTION_FILE, torch.cat([digits, 1 - digits]), seed=0)
    return home


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Two halves of one set of digits (alternate scans), and a visibly different set: other digits, inverted."""
    images, _ = digits_as_images()
    root = tmp_path_factory.mktemp("fid-images")
    pool = images[: 2 * PER_FOLDER]
    sets = {"a": pool[0::2], "b": pool[1::2],
            "inverted": [Image.eval(i, lambda v: 255 - v) for i in images[2 * PER_FOLDER : 3 * PER_FOLDER]]}
    for name, members in sets.items():
        (root / name).mkdir()
        for index, image in enumerate(members):
            image.save(root / name / f"{index:03d}.png")
    return {name: root / name for name in sets}


@pytest.fixture
def with_weights(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))

    # pytorch-fid reads TORCH_HOME's file through torch.hub, which unpickles; read the same file safely.
    def load_from_torch_home(url, progress=True, **_):
        return torch.load(torch_home / "hub" / "checkpoints" / Path(url).name, map_location="cpu", weights_only=True)

    with mock.patch("pytorch_fid.inception.load_state_dict_from_url", load_from_torch_home):
        yield torch_home


def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    code = main(["fid", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def pytorch_fid_value(paths: list[Path], dims: int) -> float:
    from pytorch_fid.fid_score import calculate_fid_given_paths

    return float(calculate_fid_given_paths([str(p) for p in paths], 50, "cpu", dims, num_workers=0))


# Only the 192-d block is checked: with random stand-in weights the 2048-d pool features do not tell these
# sets apart (measured: FID of a vs inverted 152.7 < a vs b 184.1), so at 2048 dims the comparison with
# pytorch-fid below shows the two compute the same numbers, not that those numbers mean anything.
@pytest.mark.parametrize("dims", [192])
def test_stand_in_features_tell_image_sets_apart(with_weights, folders, dims):
    extractor = load_inception_extractor(None, torch.device("cpu"), dims)
    features = {name: extractor(torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy()).permute(2, 0, 1)
                                             for f in sorted(folder.glob("*.png"))]).float() / 255).numpy()
                for name, folder in folders.items()}
    stats = {name: (f.mean(0), np.cov(f, rowvar=False)) for name, f in features.items()}
    assert min(f.std(0).max() for f in features.values()) > 1e-3  # not collapsed
    halves = frechet_distance_from_statistics(*stats["a"], *stats["b"])
    apart = frechet_distance_from_statistics(*stats["a"], *stats["inverted"])
    mean_gap = lambda x, y: float(((stats[x][0] - stats[y][0]) ** 2).sum())  # noqa: E731
    assert mean_gap("a", "inverted") > 4 * mean_gap("a", "b")
    assert apart > 1.5 * halves


@pytest.mark.parametrize("dims", [192, pytest.param(2048, marks=[pytest.mark.slow, pytest.mark.extended])])
def test_equals_pytorch_fid_on_the_same_folders_and_weights(with_weights, folders, dims, tmp_path, capsys):
    code, out, err = run_cli(str(folders["a"]), str(folders["inverted"]), "--dims", str(dims), "--json", str(tmp_path / "fid.json"), capsys=capsys)
    assert code == 0 and err == ""
    ours = json.loads((tmp_path / "fid.json").read_text())["fid"]
    assert out == f"FID:  {ours}\n"  # pytorch-fid's line
    assert ours == pytest.approx(pytorch_fid_value([folders["a"], folders["inverted"]], dims), rel=1e-4)


def test_same_set_is_zero_and_saved_statistics_stand_in_for_the_folder(with_weights, folders, tmp_path, capsys):
    stats_file = tmp_path / "a.npz"
    code, out, _ = run_cli(str(folders["a"]), "--dims", "192", "--batch-size", "7", "--save-stats", str(stats_file), capsys=capsys)
    assert code == 0 and out == "" and stats_file.is_file()
    code, out, _ = run_cli(str(stats_file), str(folders["a"]), "--dims", "192", capsys=capsys)
    trace = np.trace(np.load(stats_file)["sigma"])
    assert code == 0 and abs(float(out.split()[1])) < 1e-9 * trace
    # the saved statistics are pytorch-fid's own for that folder (its batches of 50, ours of 7), up to float32
    # summation order: our CPU network runs channels-last (features measured ~3e-5 relative apart)
    from pytorch_fid.fid_score import compute_statistics_of_path
    from pytorch_fid.inception import InceptionV3

    mu, sigma = compute_statistics_of_path(str(folders["a"]), InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[192]]).eval(), 50, 192, "cpu", 0)
    saved = np.load(stats_file)
    np.testing.assert_allclose(saved["mu"], mu, rtol=0, atol=1e-4 * np.abs(mu).max())
    np.testing.assert_allclose(saved["sigma"], sigma, rtol=0, atol=1e-4 * np.abs(sigma).max())
    assert not np.allclose(saved["mu"], mu[::-1], rtol=0, atol=1e-4 * np.abs(mu).max())  # the tolerance still tells features apart


def test_equal_covariances_give_the_squared_mean_distance(folders, tmp_path, capsys):
    features = np.random.default_rng(0).normal(size=(30, 64))  # 30 samples < 64 dims: singular
    mu, sigma = features.mean(0), np.cov(features, rowvar=False)
    shift = np.linspace(-1, 1, 64)
    save_statistics(tmp_path / "one.npz", GaussianStatistics(mu, sigma))
    save_statistics(tmp_path / "two.npz", GaussianStatistics(mu + shift, sigma))
    code, out, _ = run_cli(str(tmp_path / "one.npz"), str(tmp_path / "two.npz"), "--dims", "64", capsys=capsys)  # no network needed
    assert code == 0 and float(out.split()[1]) == pytest.approx(float(shift @ shift), rel=1e-9)


def test_kid_beside_fid(with_weights, folders, tmp_path, capsys):
    code, out, _ = run_cli(str(folders["a"]), str(folders["inverted"]), "--dims", "64", "--kid", "--json", str(tmp_path / "r.json"), capsys=capsys)
    result = json.loads((tmp_path / "r.json").read_text())
    assert code == 0 and out.splitlines()[1] == f"KID: {result['kid_mean']} ± {result['kid_std']}"
    assert result["kid_subset_size"] == PER_FOLDER and result["inputs"][0]["num_images"] == PER_FOLDER
    assert result["kid_mean"] > 0


@pytest.mark.parametrize("kid", [False, True])
def test_cache_gives_the_same_values_and_is_read_on_a_second_run(with_weights, folders, tmp_path, capsys, monkeypatch, kid):
    args = [str(folders["a"]), str(folders["inverted"]), "--dims", "64", "--cache", str(tmp_path / "cache")] + (["--kid"] if kid else [])
    _, uncached, _ = run_cli(*args[:4], *args[6:], capsys=capsys)
    code, first, _ = run_cli(*args, capsys=capsys)
    numbers = [float(line.split()[1]) for line in uncached.splitlines()]
    assert code == 0 and [float(line.split()[1]) for line in first.splitlines()] == pytest.approx(numbers, rel=1e-9)
    assert len(list((tmp_path / "cache").glob("inception-v3-64-*"))) == 2

    from trainflow.commands import fid as fid_command

    def no_network(*_args, **_kwargs):
        raise AssertionError("the cached folders were measured again")

    monkeypatch.setattr(fid_command, "stream_folder_statistics", no_network)
    code, again, _ = run_cli(*args, capsys=capsys)
    assert code == 0 and again == first


@pytest.mark.parametrize("args,message", [
    (["{a}", "{missing}"], "does not exist"),
    (["{a}", "{empty}"], "no images in"),
    (["{a}", "{a}.npz"], "does not exist"),
    (["{a}", "{stats}", "--kid"], "KID needs the images themselves"),
    (["{a}", "{stats}", "--dims", "2048"], "holds 64-d statistics but --dims is 2048"),
    (["{a}"], "give two inputs"),
    (["{a}", "{b}", "--weights", "{missing}.pth"], "weights file .*missing.pth is missing"),
    (["{a}", "{b}", "--weights", "{garbage}"], "cannot be read as a PyTorch state dict"),
    (["{a}", "{b}", "--device", "tpu9"], "not a device PyTorch knows"),
])
def test_bad_inputs_are_one_sentence_and_exit_2(folders, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.pth").write_bytes(b"not torch")
    save_statistics(tmp_path / "stats.npz", GaussianStatistics(np.zeros(64), np.eye(64)))
    names = {"a": folders["a"], "b": folders["b"], "missing": tmp_path / "missing", "empty": tmp_path / "empty",
             "stats": tmp_path / "stats.npz", "garbage": tmp_path / "garbage.pth"}
    code, out, err = run_cli(*[arg.format(**names) for arg in args], capsys=capsys)
    assert code == 2 and out == ""
    assert err.startswith("trainflow: error: ") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err


def test_missing_weights_name_the_expected_file_from_the_command_line(folders, tmp_path):
    env = {"TORCH_HOME": str(tmp_path / "empty-home"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "trainflow", "fid", str(folders["a"]), str(folders["b"])],
                            capture_output=True, text=True, env=env)
    expected = tmp_path / "empty-home" / "hub" / "checkpoints" / FID_INCEPTION_FILE
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(expected) in result.stderr and result.stdout == ""


def test_a_corrupt_image_is_named(with_weights, folders, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for source in sorted(folders["a"].glob("*.png"))[:3]:
        (broken / source.name).write_bytes(source.read_bytes())
    (broken / "zz-truncated.png").write_bytes((folders["a"] / "000.png").read_bytes()[:40])
    code, out, err = run_cli(str(broken), str(folders["b"]), "--dims", "64", capsys=capsys)
    assert code == 2 and "zz-truncated.png cannot be decoded" in err and len(err.strip().splitlines()) == 1

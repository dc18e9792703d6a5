"""Every validation rule on a broken-input corpus built at test time, and the quarantine it produces."""

import json
import math

import numpy as np
import pytest
from PIL import Image, ImageFile

from broken_corpus import (
    GOOD, build_broken_imagefolder, build_broken_segmentation, digit_image, header_only_bomb, write_digit_imagefolder,
)
from trainflow.artifacts import LocalArtifact
from trainflow.config import IngestConfig
from trainflow.data.checks import record_validation
from trainflow.data.checks.caption_tokens import caption_token_counter
from trainflow.data.checks.image_decoding import ImageLimits, decode_image_file
from trainflow.data.sources.read_source import read_source
from trainflow.errors import UserFacingError
from trainflow.stages.ingest_split import ingest_split

DIGIT_CLASSES = [str(i) for i in range(10)]
CORPUS_CONFIG = {"label_column": "label", "target_columns": ["score"], "class_names": DIGIT_CLASSES,
                 "max_image_pixels": 1_000_000, "resolution": 16}
RULES = {  # every rule the brief names, with the corpus line that exercises it
    "image_undecodable", "image_too_many_pixels", "image_too_small", "caption_missing", "caption_empty",
    "caption_not_text", "label_unknown_class", "label_not_integer", "target_not_finite", "target_not_number",
    "target_missing", "absolute_path", "path_outside_root", "symlink_outside_root", "invalid_path", "missing_file",
    "duplicate_content", "metadata_line",
}


def needs(task: str):
    """What task `task` needs of a record (its definition in trainflow.tasks)."""
    from trainflow.tasks import get_task

    return get_task(task).record_needs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_broken_imagefolder(tmp_path_factory.mktemp("broken") / "corpus")


@pytest.fixture(scope="module")
def checked(corpus):
    return read_source(IngestConfig(dataset_dir=str(corpus.root), **CORPUS_CONFIG), needs("text_to_image"))


def test_every_rule_has_a_broken_record(corpus):
    assert RULES <= set(corpus.expected.values())


def test_each_broken_record_is_rejected_by_its_rule_and_each_good_one_kept(corpus, checked):
    kept = {r.record_id for r in checked.records}
    rejected = {r.ref: r.rule for r in checked.rejected}
    outcome = {ref: GOOD if ref in kept else rejected.get(ref, "not reported") for ref in corpus.expected}
    wrong = {ref[:60]: (rule, outcome[ref]) for ref, rule in corpus.expected.items() if outcome[ref] != rule}
    assert not wrong, f"expected rule vs outcome: {wrong}"


def test_every_line_is_kept_or_rejected_with_a_sentence(corpus, checked):
    assert len(checked.records) + len(checked.rejected) == corpus.lines
    assert all(r.reason and r.source for r in checked.rejected)


def test_duplicates_count_once_naming_the_kept_record(corpus, checked):
    copy = next(r for r in checked.rejected if r.rule == "duplicate_content")
    assert copy.ref == "images/zz-copy-of-good-000.png" and "'images/good-000.png'" in copy.reason
    twice = next(r for r in checked.rejected if r.rule == "duplicate_id")
    assert twice.source == corpus.listed_twice_source and "listed twice" in twice.reason
    assert [r.caption for r in checked.records if r.record_id == "images/good-001.png"] == ["a handwritten digit"]


def test_long_captions_are_a_warning_with_the_count_not_a_rejection(checked):
    (warning,) = checked.warnings
    assert warning.rule == "caption_too_long" and warning.count == 1
    assert "1 of 25 captions" in warning.message and "whitespace" in warning.message
    assert "images/long-caption.png" in {r.record_id for r in checked.records}


@pytest.mark.slow  # imports transformers and diffusers (torch): ~10 s on a busy 2-core machine
def test_caption_tokens_are_counted_with_the_base_models_tokenizer_when_present(tmp_path):
    from trainflow.demo.tiny_stable_diffusion import build_caption_tokenizer

    build_caption_tokenizer(["digit"]).save_pretrained(tmp_path / "base" / "tokenizer")
    counter = caption_token_counter(str(tmp_path / "base"), 77)
    assert counter.max_tokens == 16 and "CLIPTokenizer" in counter.method
    assert counter.count(["digit", "digit " * 20]) == [3, 22]  # start + words + end
    assert "whitespace" in caption_token_counter(str(tmp_path / "no-model"), 77).method


def test_quarantine_files_and_report_from_the_stage(tmp_path, corpus):
    config = {"dataset_dir": str(corpus.root), **CORPUS_CONFIG, "max_bad_fraction": 0.9}
    dataset, report = LocalArtifact(str(tmp_path / "dataset")), LocalArtifact(str(tmp_path / "report.md"))
    summary = ingest_split(config, 0, dataset, report, task="text_to_image")
    lines = [json.loads(line) for line in (tmp_path / "dataset" / "rejected.jsonl").read_text().splitlines()]
    assert len(lines) == summary["num_rejected"] == corpus.lines - summary["num_records"]
    assert all({"ref", "source", "reason"} <= set(line) for line in lines)
    markdown = (tmp_path / "report.md").read_text()
    assert "| rule | records | example |" in markdown and "| image_undecodable | 4 |" in markdown
    assert "caption_too_long" in markdown and "truncated.jpg" in markdown


def test_too_many_rejections_fail_the_stage_after_writing_the_report(tmp_path, corpus, checked):
    config = {"dataset_dir": str(corpus.root), **CORPUS_CONFIG}  # default max_bad_fraction 0.2
    report = LocalArtifact(str(tmp_path / "report.md"))
    with pytest.raises(UserFacingError) as failure:
        ingest_split(config, 0, LocalArtifact(str(tmp_path / "dataset")), report, task="text_to_image")
    message = str(failure.value)
    assert "above ingest.max_bad_fraction 0.2" in message and str(tmp_path / "report.md") in message
    assert "were rejected" in message and "%" in message
    markdown = (tmp_path / "report.md").read_text()
    assert "**Ingest failed**" in markdown and "images/truncated.png" in markdown
    assert not (tmp_path / "dataset" / "manifest.jsonl").exists()
    assert (tmp_path / "dataset" / "rejected.jsonl").read_text().count("\n") == len(checked.rejected)


def test_segmentation_masks_of_the_wrong_size_mode_or_class_are_rejected(tmp_path):
    expected = build_broken_segmentation(tmp_path / "seg")
    data = read_source(IngestConfig(dataset_dir=str(tmp_path / "seg"), mask_column="mask", class_names=["a", "b", "c"]), needs("segmentation"))
    outcome = {r.ref: r.rule for r in data.rejected} | {r.record_id: GOOD for r in data.records}
    assert outcome == expected


def _saved(image: Image.Image, tmp_path, fmt: str = "PNG"):
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, fmt)
    return path


GRAY = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))  # 16x16, columns 0..240


@pytest.mark.parametrize("mode, fmt, make, expected_gray", [
    ("1", "PNG", lambda: Image.fromarray(GRAY >= 128).convert("1"), np.where(GRAY >= 128, 255, 0)),
    ("L", "PNG", lambda: Image.fromarray(GRAY, "L"), GRAY),
    ("I;16", "PNG", lambda: Image.fromarray(GRAY.astype(np.uint16) * 257), GRAY),
    ("I", "TIFF", lambda: Image.fromarray(GRAY.astype(np.int32) * 257), GRAY),
    ("F", "TIFF", lambda: Image.fromarray(GRAY.astype(np.float32) / 255.0), GRAY),
])
def test_gray_modes_convert_to_the_same_gray_rgb(tmp_path, mode, fmt, make, expected_gray):
    source = make()
    assert source.mode == mode
    rgb = np.asarray(decode_image_file(_saved(source, tmp_path, fmt), ImageLimits(10**6, 8)))
    assert rgb.shape == (16, 16, 3)
    assert np.abs(rgb.astype(int) - np.asarray(expected_gray)[..., None]).max() <= 1


def test_transparency_is_composited_on_white_for_la_rgba_and_palette(tmp_path):
    alpha = np.zeros((16, 16), np.uint8)
    alpha[:, 8:] = 255  # left half transparent, right half opaque
    limits = ImageLimits(10**6, 8)
    la = Image.merge("LA", [Image.fromarray(np.full((16, 16), 40, np.uint8)), Image.fromarray(alpha)])
    rgba = Image.merge("RGBA", [Image.new("L", (16, 16), v) for v in (200, 10, 10)] + [Image.fromarray(alpha)])
    palette = Image.fromarray(np.where(alpha > 0, 1, 0).astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    palette.info["transparency"] = 0
    for image, opaque in ((la, (40, 40, 40)), (rgba, (200, 10, 10)), (palette, (10, 200, 10))):
        rgb = decode_image_file(_saved(image, tmp_path), limits)
        assert rgb.getpixel((2, 2)) == (255, 255, 255), image.mode
        assert rgb.getpixel((12, 2)) == opaque, image.mode


def test_cmyk_converts_back_to_its_colours(tmp_path):
    original = digit_image(5, size=16)
    cmyk = original.convert("CMYK")
    rgb = decode_image_file(_saved(cmyk, tmp_path, "TIFF"), ImageLimits(10**6, 8))
    assert np.abs(np.asarray(rgb).astype(int) - np.asarray(original).astype(int)).max() <= 2


def test_exif_orientation_is_applied_before_the_snapshot(tmp_path):
    root = tmp_path / "exif"
    (root / "images").mkdir(parents=True)
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue; orientation 6 shows it rotated 90° clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    lines = []
    for index in range(3):
        image.save(root / "images" / f"rotated-{index}.png", exif=exif.tobytes())
        image.putpixel((index, 0), (255, 0, index + 1))  # distinct bytes, or they would count as duplicates
        lines.append({"file_name": f"images/rotated-{index}.png", "text": "a rotated picture"})
    (root / "metadata.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    dataset = LocalArtifact(str(tmp_path / "out"))
    ingest_split({"dataset_dir": str(root), "resolution": 16}, 0, dataset, LocalArtifact(str(tmp_path / "r.md")), task="text_to_image")
    first = json.loads((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()[0])
    snapshot = Image.open(tmp_path / "out" / first["image"]).convert("RGB")
    top, bottom = snapshot.getpixel((8, 2)), snapshot.getpixel((8, 13))
    assert top[0] > 200 and top[2] < 50, "red (the left half) is on top once the orientation is applied"
    assert bottom[2] > 200 and bottom[0] < 50


def test_a_decompression_bomb_is_refused_before_any_pixel_is_decoded(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(header_only_bomb(20_000, 20_000))
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size))
    before = Image.MAX_IMAGE_PIXELS
    candidate = record_validation.CandidateRecord(source="t", ref="bomb.png", base_dir=tmp_path, image="bomb.png", label=1)
    rules = record_validation.RecordRules(required=needs("classification").required, kind="image", limits=ImageLimits(300 * 300, 8), root=tmp_path)
    outcome = record_validation.validate_record(candidate, rules)
    assert outcome.rule == "image_too_many_pixels" and "90000" in outcome.reason
    assert decoded == [] and Image.MAX_IMAGE_PIXELS == before


def test_an_unforeseen_exception_in_a_check_becomes_that_records_rejection(tmp_path, monkeypatch):
    real = record_validation.decode_image_file

    def flaky(path, limits):
        if path.name == "digit-0003.png":
            raise KeyError("exif tag 274")
        return real(path, limits)

    monkeypatch.setattr(record_validation, "decode_image_file", flaky)
    write_digit_imagefolder(tmp_path / "digits", 6)
    data = read_source(IngestConfig(dataset_dir=str(tmp_path / "digits"), label_column="label"), needs("text_to_image"))
    (problem,) = data.rejected
    assert problem.ref == "images/digit-0003.png" and problem.rule == "unexpected_error"
    assert "KeyError" in problem.reason and "exif tag 274" in problem.reason
    assert len(data.records) == 5


ODD_VALUES = [None, True, 3, -7, 2.5, math.nan, math.inf, 10**400, "", "   ", "\x00", "\ud800", "../../x", "/etc/passwd",
              [], {}, [[["deep"]]], {"a": None}, "images/good-000.png"]


@pytest.mark.parametrize("field", ["file_name", "text", "label", "score", "mask", "id", "group"])
def test_no_value_in_any_field_can_raise_out_of_ingest(tmp_path, field):
    root = tmp_path / "odd"
    (root / "images").mkdir(parents=True)
    digit_image(0).save(root / "images" / "good-000.png")
    lines = [json.dumps({"file_name": "images/good-000.png", "text": "t", "label": 1, "score": 1.0, "mask": None,
                         "id": "good", "group": "g", field: value}) for value in ODD_VALUES]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    for task, class_names in (("text_to_image", DIGIT_CLASSES), ("classification", None), ("segmentation", None)):
        cfg = IngestConfig(dataset_dir=str(root), label_column="label", target_columns=["score"], mask_column="mask",
                           id_column="id", group_column="group", class_names=class_names)
        data = read_source(cfg, needs(task))
        assert len(data.records) + len(data.rejected) == len(ODD_VALUES)
        assert len(data.class_names or []) < 1000


def test_table_rows_with_bad_cells_are_rejected_by_row(tmp_path):
    table = tmp_path / "rows.csv"
    table.write_bytes(b"x1,x2,y,kind\n1,2,3,a\n4,5,6,b\n7,oops,9,a\n1,nan,2,b\n1,2\n3,4,5,zebra\n8,9,1\xff,a\n2,3,4,b\n")
    data = read_source(IngestConfig(table=str(table), label_column="kind", target_columns=["y"], class_names=["a", "b"]), needs("regression"))
    rules = {r.source: r.rule for r in data.rejected}
    assert rules == {"rows.csv:4": "feature_not_number", "rows.csv:5": "feature_not_finite", "rows.csv:6": "table_row",
                     "rows.csv:7": "label_unknown_class", "rows.csv:8": "target_not_number"}
    assert [r.record_id for r in data.records] == ["rows.csv:2", "rows.csv:3", "rows.csv:9"]

"""A real labelled text corpus built offline: docstrings of public functions and classes, labelled by their library.

No labelled text corpus ships inside a package we can install offline, so this one is made from text that ships
with installed packages and that no one here wrote: the first paragraph of the docstring of every public
function, class and public method of numpy, torch, scikit-learn and pandas (the modules listed below). A leading
signature line is dropped (it would name the library's style rather than what the text says), texts under five
words are skipped, and a text found in two libraries is dropped from both. Each library keeps at most
`per_library` records, chosen by the sha256 of their qualified names, so the corpus is the same on every build
with the same package versions (which `trainflow_corpus.json` beside it records).

    python -m trainflow.demo.docstring_corpus OUT.jsonl [--per-library 600]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import re
import warnings
from pathlib import Path

from trainflow.atomic_files import atomic_write_json, atomic_write_text

LIBRARY_MODULES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy", "numpy.linalg", "numpy.fft", "numpy.random", "numpy.ma", "numpy.polynomial", "numpy.lib.stride_tricks",
              "numpy.char", "numpy.testing", "numpy.strings"),
    "torch": ("torch", "torch.nn", "torch.nn.functional", "torch.linalg", "torch.fft", "torch.special", "torch.distributions",
              "torch.optim", "torch.optim.lr_scheduler", "torch.utils.data", "torch.autograd", "torch.nn.init", "torch.nn.utils"),
    "scikit-learn": tuple(f"sklearn.{m}" for m in (
        "linear_model", "ensemble", "svm", "tree", "neighbors", "cluster", "decomposition", "preprocessing", "metrics",
        "model_selection", "feature_extraction.text", "pipeline", "impute", "manifold", "naive_bayes", "neural_network",
        "gaussian_process", "covariance", "cross_decomposition", "feature_selection", "inspection", "mixture",
        "random_projection", "semi_supervised", "calibration", "compose", "datasets", "utils", "kernel_approximation")),
    "pandas": ("pandas", "pandas.api.types", "pandas.plotting", "pandas.tseries.offsets", "pandas.api.extensions"),
}
SIGNATURE_LINE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$")
MIN_WORDS = 5


def summary_paragraph(doc: str | None) -> str | None:
    """The docstring's first paragraph on one line, without a leading signature line; None when too short."""
    if not isinstance(doc, str) or not doc.strip():
        return None
    paragraphs = [p for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)) if p.strip()]
    if paragraphs and SIGNATURE_LINE.match(paragraphs[0].strip().splitlines()[0].strip()):
        first_lines = paragraphs[0].strip().splitlines()[1:]
        paragraphs = ["\n".join(first_lines)] + paragraphs[1:] if first_lines else paragraphs[1:]
    if not paragraphs:
        return None
    text = " ".join(paragraphs[0].split())
    return text if len(text.split()) >= MIN_WORDS else None


def _public_objects(module_name: str):
    """(qualified name, object) of the module's public functions and classes, and the classes' public methods."""
    module = importlib.import_module(module_name)
    for name in sorted(getattr(module, "__all__", None) or dir(module)):
        if name.startswith("_"):
            continue
        try:
            obj = getattr(module, name, None)
        except ImportError:  # a name only importable behind an opt-in (scikit-learn's experimental estimators)
            continue
        if obj is None or inspect.ismodule(obj) or not callable(obj):
            continue
        yield f"{module_name}.{name}", obj
        if inspect.isclass(obj):
            for member, value in sorted(vars(obj).items()):
                if not member.startswith("_") and callable(value):
                    yield f"{module_name}.{name}.{member}", value


def library_texts(library: str) -> dict[str, str]:
    """{qualified name: summary paragraph} of the library's public objects (first name wins for a shared object)."""
    texts: dict[str, str] = {}
    seen: set[int] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module_name in LIBRARY_MODULES[library]:
            for qualified, obj in _public_objects(module_name):
                if id(obj) in seen:
                    continue
                seen.add(id(obj))
                text = summary_paragraph(getattr(obj, "__doc__", None))
                if text is not None:
                    texts[qualified] = text
    return texts


def build_corpus(per_library: int) -> list[dict[str, str]]:
    """Records {id, text, library}: deduplicated, at most `per_library` a library, sorted by id."""
    by_library = {library: library_texts(library) for library in LIBRARY_MODULES}
    owners: dict[str, set[str]] = {}
    for library, texts in by_library.items():
        for text in texts.values():
            owners.setdefault(text, set()).add(library)
    records = []
    for library, texts in by_library.items():
        unique: dict[str, str] = {}
        for qualified in sorted(texts):
            text = texts[qualified]
            if len(owners[text]) == 1 and text not in unique.values():
                unique[qualified] = text
        chosen = sorted(unique, key=lambda q: hashlib.sha256(q.encode()).hexdigest())[:per_library]
        records += [{"id": f"{library}:{q}", "text": unique[q], "library": library} for q in chosen]
    return sorted(records, key=lambda r: r["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the docstring corpus (JSONL: id, text, library).")
    parser.add_argument("output", help="the .jsonl file to write")
    parser.add_argument("--per-library", type=int, default=600)
    args = parser.parse_args()
    from importlib.metadata import version

    records = build_corpus(args.per_library)
    output = Path(args.output)
    atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    counts = {library: sum(r["library"] == library for r in records) for library in LIBRARY_MODULES}
    atomic_write_json(output.with_name("trainflow_corpus.json"), {
        "records": len(records), "per_library": counts,
        "versions": {name: version(name) for name in ("numpy", "torch", "scikit-learn", "pandas")}})
    print(f"wrote {len(records)} docstrings to {output}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()

"""The study journal survives a torn last append, and a damaged earlier line is one sentence, the file untouched."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from tuning_fixtures import tuning_config  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)


def open_study(folder: Path) -> optuna.Study:
    from trainflow.experiments.study_storage import open_storage

    return optuna.create_study(storage=open_storage(tuning_config(4).tune, folder), study_name="s",
                               direction="maximize", load_if_exists=True)


def finish_trials(study: optuna.Study, values: list[float]) -> None:
    for value in values:
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        study.tell(trial, value)


@pytest.fixture(scope="module")
def journal_bytes(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("journal")
    finish_trials(open_study(folder), [0.1, 0.2, 0.3])
    return (folder / "journal.log").read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0.0, 1.0))
def test_a_journal_cut_at_any_byte_opens_and_takes_new_trials(tmp_path_factory, journal_bytes, where):
    folder = tmp_path_factory.mktemp("cut")
    cut = int(where * len(journal_bytes))
    (folder / "journal.log").write_bytes(journal_bytes[:cut])
    whole_lines = journal_bytes[:cut].count(b"\n")
    study = open_study(folder)  # a torn last entry is cut here, before anything appends after it
    before = [t.value for t in study.trials if t.state.name == "COMPLETE"]
    assert before == [0.1, 0.2, 0.3][:len(before)]
    finish_trials(study, [0.9])
    again = open_study(folder)  # read back from the file by a fresh storage: every line parses
    assert [t.value for t in again.trials if t.state.name == "COMPLETE"] == before + [0.9]
    kept = journal_bytes[:cut][:journal_bytes[:cut].rfind(b"\n") + 1]  # the whole lines before the cut
    mended = (folder / "journal.log").read_bytes()
    assert mended.startswith(kept) and mended.count(b"\n") > whole_lines and mended.endswith(b"\n")


def test_a_torn_last_entry_is_cut_with_a_line_on_stderr_and_the_finished_trials_are_kept(tmp_path, journal_bytes, capsys):
    fragment = b'{"op_code": 6, "worker_id": "w", "trial_id": 3, "sta'
    (tmp_path / "journal.log").write_bytes(journal_bytes + fragment)
    study = open_study(tmp_path)
    assert [t.value for t in study.trials] == [0.1, 0.2, 0.3]
    mended = (tmp_path / "journal.log").read_bytes()  # opening the study appends its own entry after the cut
    assert mended.startswith(journal_bytes) and fragment not in mended
    assert f"cut a torn last entry ({len(fragment)} bytes)" in capsys.readouterr().err


@pytest.mark.parametrize("damage", [b"not json\n", b"[1, 2]\n", b"\xff\xfe\n", b"\n"])
def test_a_damaged_earlier_line_is_one_sentence_naming_it_and_the_journal_is_left_as_it_was(tmp_path, journal_bytes, damage):
    from trainflow.errors import UserFacingError

    lines = journal_bytes.splitlines(keepends=True)
    damaged = b"".join(lines[:2] + [damage] + lines[2:])
    (tmp_path / "journal.log").write_bytes(damaged)
    with pytest.raises(UserFacingError, match=r"journal\.log is damaged at line 3 .*another tune\.study_name") as raised:
        open_study(tmp_path)
    assert "\n" not in str(raised.value)
    assert (tmp_path / "journal.log").read_bytes() == damaged
    assert not (tmp_path / "journal.log.lock").exists()  # the lock is released on the way out

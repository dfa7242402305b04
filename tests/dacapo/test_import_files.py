"""``dacapo-store import-dacapo`` on hand-built DaCapo runs directories (no DaCapo needed):
both checkpoint formats, DaCapo's stats files and Mongo collections, idempotence, and files
that must not be read or run."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dacapo_store import LocalStatsStore, LocalWeightsStore, MongoStatsStore, MongoWeightsStore
from dacapo_store.cli import main as cli
from dacapo_store.integrations.dacapo_files import UnreadableDacapoFileError, load_checkpoint, load_stats_file
from dacapo_store.integrations.dacapo_import import MongoStatsSource, import_dacapo_runs
from dacapo_store.integrations.dacapo_scores import ScoreLayout
from dacapo_store.testing.contract import ToyRun, assert_state_equal
from dacapo_store.testing.mongomock_support import mongomock_client

from .trees import Exploit, build_tree, checkpoint_path, dacapo_weights_class, training_documents, write_stats


@pytest.fixture
def runs(tmp_path) -> Path:
    return tmp_path / "runs"


def import_cli(*args: str):
    return CliRunner().invoke(cli, ["import-dacapo", *map(str, args)])


def test_both_formats_and_the_stats_are_imported_once(runs, tmp_path, monkeypatch) -> None:
    written = build_tree(runs, monkeypatch)
    store = tmp_path / "store"
    result = import_cli(runs, "--store", store)
    assert result.exit_code == 0, result.output
    assert "imported 3 checkpoint(s)" in result.output and "20 training stat(s)" in result.output
    weights, stats = LocalWeightsStore(store), LocalStatsStore(store)
    for (run, iteration), (model, optimizer) in written.items():
        back = weights.retrieve_weights(run, iteration)
        assert_state_equal(back.model, model)
        assert_state_equal(back.optimizer, optimizer)
    assert [(s.iteration, s.loss, s.time) for s in stats.retrieve_training_stats("run_new")] == [
        (i, 1 / (i + 1), 0.25) for i in range(20)
    ]
    # naming validation scores needs DaCapo and the run's config; without them they are left out, and said so
    assert stats.retrieve_validation_scores("run_new") == []
    assert "2 validation iteration(s)" in result.output and "not imported" in result.output
    created = {c.iteration: c.created for c in weights.list_checkpoints("run_new")}

    again = import_cli(runs, "--store", store)
    assert again.exit_code == 0, again.output
    assert "nothing new to import: 3 checkpoint(s), 20 training stat(s)" in again.output
    assert {c.iteration: c.created for c in weights.list_checkpoints("run_new")} == created


def test_one_run_only_and_an_unknown_run(runs, tmp_path, monkeypatch) -> None:
    build_tree(runs, monkeypatch)
    store = tmp_path / "store"
    result = import_cli(runs, "--run", "run_old", "--store", store, "--json")
    assert result.exit_code == 0, result.output
    assert LocalWeightsStore(store).list_runs() == ["run_old"]
    result = import_cli(runs, "--run", "no_such_run", "--store", store)
    assert result.exit_code == 1 and "no checkpoints or stats of run 'no_such_run'" in result.output


def test_a_malicious_checkpoint_never_runs_and_the_others_are_imported(runs, tmp_path, monkeypatch) -> None:
    build_tree(runs, monkeypatch)
    marker = tmp_path / "marker"
    run = ToyRun("run_new")
    torch.save({"model": run.model.state_dict(), "optimizer": Exploit(marker)}, checkpoint_path(runs, "run_new", 30))
    weights_class = dacapo_weights_class(monkeypatch)
    smuggled = weights_class(run.model.state_dict(), run.optimizer.state_dict())
    smuggled.hook = Exploit(marker)  # DaCapo's Weights with one attribute too many
    torch.save(smuggled, checkpoint_path(runs, "run_new", 40))
    result = import_cli(runs, "--store", tmp_path / "store")
    assert not marker.exists(), "the pickle's code ran"
    assert result.exit_code == 1
    assert "30 refused: it names eval, which a checkpoint may not call" in result.output
    assert "40 refused" in result.output and "2 checkpoint file(s) could not be imported" in result.output
    assert [c.iteration for c in LocalWeightsStore(tmp_path / "store").list_checkpoints("run_new")] == [10, 20]


def test_a_malicious_stats_file_never_runs(runs, tmp_path) -> None:
    marker = tmp_path / "marker"
    path = write_stats(runs, "run_x", "training_stats", [{"iteration": 0, "loss": Exploit(marker), "time": 0.1}])
    with pytest.raises(UnreadableDacapoFileError, match="refused global builtins.eval"):
        load_stats_file(path)
    result = import_cli(runs, "--store", tmp_path / "store")
    assert not marker.exists()
    assert result.exit_code == 0 and "training stats not read" in result.output


def test_only_regular_files_are_read(runs, tmp_path, monkeypatch) -> None:
    build_tree(runs, monkeypatch)
    folder = checkpoint_path(runs, "run_new", 10).parent
    os.mkfifo(folder / "40")  # opening it for reading would block
    (folder / "50").symlink_to(folder / "10")
    (folder / "best").write_bytes(b"")
    result = import_cli(runs, "--store", tmp_path / "store")
    assert result.exit_code == 0, result.output
    assert f"skipped {folder / '40'}: not a regular file" in result.output
    assert f"skipped {folder / '50'}: not a regular file" in result.output
    assert f"skipped {folder / 'best'}: not an iteration number" in result.output
    for path in (folder / "40", folder / "50", Path("/dev/zero")):
        with pytest.raises(UnreadableDacapoFileError, match="symbolic link|a FIFO|a character device"):
            load_checkpoint(path)
    with pytest.raises(UnreadableDacapoFileError, match="more than the 10 accepted"):
        load_checkpoint(folder / "10", max_bytes=10)


def test_a_file_that_is_no_dacapo_checkpoint_is_refused(tmp_path) -> None:
    torch.save({"model": {}, "optimizer": {}, "epoch": 3}, tmp_path / "extra")
    torch.save([torch.zeros(1)], tmp_path / "list")
    (tmp_path / "text").write_text("not a checkpoint")
    for name in ("extra", "list", "text"):
        with pytest.raises(UnreadableDacapoFileError):
            load_checkpoint(tmp_path / name)


def test_stats_from_dacapos_mongo_collections_with_a_layout(runs, tmp_path, monkeypatch) -> None:
    """DaCapo's MongoStatsStore documents; a layout names the scores (as DaCapo's run config does)."""
    build_tree(runs, monkeypatch)
    dacapo_db = mongomock_client()["dacapo"]
    dacapo_db["training_stats"].insert_many(training_documents("mongo_run", 8))
    dacapo_db["validation_scores"].insert_many([
        {"iteration": 4, "scores": [[[0.1, 0.9], [0.2, 0.8]]], "run_name": "mongo_run"},
        {"iteration": 8, "scores": [[[0.3, 0.7], [0.4, None]]], "run_name": "mongo_run"},
    ])
    layout = ScoreLayout(
        datasets=("validate",),
        parameters=({"id": 0, "threshold": 0.3}, {"id": 1, "threshold": 0.7}),
        criteria=("f1", "voi"),
        higher_is_better={"f1": True, "voi": False},
    )
    client = mongomock_client()
    weights, stats = MongoWeightsStore(client), MongoStatsStore(client)
    report = import_dacapo_runs(runs, weights, stats, "mongo_run", [MongoStatsSource(dacapo_db)], lambda run: layout)
    (run,) = report.runs
    assert (run.checkpoints_imported, run.training_stats_imported, run.scores_imported) == (0, 8, 8)
    assert stats.best_validation_score("mongo_run", "validate", "f1").parameters == {"id": 1, "threshold": 0.7}
    assert stats.best_validation_score("mongo_run", "validate", "voi").iteration == 8  # 0.7 at threshold 0.3
    assert {s.higher_is_better for s in stats.retrieve_validation_scores("mongo_run", criterion="voi")} == {False}
    again = import_dacapo_runs(runs, weights, stats, "mongo_run", [MongoStatsSource(dacapo_db)], lambda run: layout)
    assert again.nothing_new and (again.runs[0].training_stats_present, again.runs[0].scores_present) == (8, 8)


def test_the_cli_reads_dacapos_mongodb_named_in_dacapo_yaml(runs, tmp_path, monkeypatch) -> None:
    from dacapo_store.cli import dacapo_commands
    from dacapo_store.mongo.connection import MongoDatabase

    server = mongomock_client()
    server["lab"]["training_stats"].insert_many(training_documents("mongo_run", 4))
    opened = []

    def database(uri: str, db_name: str) -> MongoDatabase:
        opened.append((uri, db_name))
        return MongoDatabase(server, db_name)

    monkeypatch.setattr(dacapo_commands, "MongoDatabase", database)
    options = tmp_path / "dacapo.yaml"
    options.write_text("type: mongo\nmongo_db_host: mongodb://trainer:s3cret@lab-db:27017\nmongo_db_name: lab\n")
    monkeypatch.setenv("DACAPO_OPTIONS_FILE", str(options))
    runs.mkdir()
    result = import_cli(runs, "--store", tmp_path / "store")
    assert result.exit_code == 0, result.output
    assert opened == [("mongodb://trainer:s3cret@lab-db:27017", "lab")]
    assert "0 checkpoint(s)" in result.output and "4 training stat(s)" in result.output
    imported = LocalStatsStore(tmp_path / "store").retrieve_training_stats("mongo_run")
    assert [s.iteration for s in imported] == [0, 1, 2, 3]
    result = import_cli(runs, "--dacapo-mongo", "mongodb://other-db/elsewhere", "--store", tmp_path / "store")
    assert opened[-1] == ("mongodb://other-db/elsewhere", "elsewhere")
    assert "s3cret" not in result.output


def test_works_without_dacapo_and_never_imports_it(runs, tmp_path, monkeypatch) -> None:
    """The importer, in a process where DaCapo cannot be imported, as if it were not installed."""
    build_tree(runs, monkeypatch)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["dacapo"] = None  # any import of DaCapo now fails
        from dacapo_store.cli import main
        main(["import-dacapo", {str(runs)!r}, "--store", {str(tmp_path / "store")!r}], standalone_mode=False)
        loaded = [name for name, module in sys.modules.items()
                  if name.startswith("dacapo.") or (name == "dacapo" and module)]
        assert not loaded, loaded
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "imported 3 checkpoint(s)" in result.stdout
    assert "DaCapo is not installed" in result.stdout
    assert LocalWeightsStore(tmp_path / "store").list_runs() == ["run_new", "run_old"]


def test_a_symlinked_stats_folder_is_not_read(runs, tmp_path, monkeypatch) -> None:
    outside = tmp_path / "outside"
    build_tree(outside, monkeypatch)
    (runs / "stats").mkdir(parents=True)
    (runs / "stats" / "training_stats").symlink_to(outside / "stats" / "training_stats")
    result = import_cli(runs, "--store", tmp_path / "store")
    assert result.exit_code == 0, result.output
    assert f"{runs / 'stats' / 'training_stats'} is a symbolic link" in " ".join(result.output.split())
    assert LocalStatsStore(tmp_path / "store").retrieve_training_stats("run_new") == []


def test_a_stats_file_is_a_pickled_list_of_documents(tmp_path) -> None:
    (tmp_path / "stats").write_bytes(pickle.dumps({"iteration": 1}))
    with pytest.raises(UnreadableDacapoFileError, match="does not hold a list of documents"):
        load_stats_file(tmp_path / "stats")


def test_symlinked_run_and_checkpoints_directories_are_skipped_with_a_note(runs, tmp_path, monkeypatch) -> None:
    build_tree(runs, monkeypatch)
    outside = tmp_path / "outside"
    build_tree(outside, monkeypatch)  # another lab's runs, outside the runs directory
    (runs / "linked_run").symlink_to(outside / "run_old")
    (runs / "run_x").mkdir()
    (runs / "run_x" / "checkpoints").symlink_to(outside / "run_new" / "checkpoints")
    result = import_cli(runs, "--store", tmp_path / "store")
    assert result.exit_code == 0, result.output
    assert f"skipped {runs / 'linked_run'}: a symbolic link (only what is inside {runs} is read)" in result.output
    assert f"skipped {runs / 'run_x' / 'checkpoints'}: a symbolic link" in result.output
    assert LocalWeightsStore(tmp_path / "store").list_runs() == ["run_new", "run_old"]


def test_two_names_of_one_iteration_import_neither_and_say_so(runs, tmp_path, monkeypatch) -> None:
    written = build_tree(runs, monkeypatch)
    folder = checkpoint_path(runs, "run_new", 10).parent
    torch.save({"model": ToyRun("other").model.state_dict(), "optimizer": None}, folder / "0010")
    torch.save({"model": ToyRun("other").model.state_dict(), "optimizer": None}, folder / "0030")  # alone: fine
    result = import_cli(runs, "--store", tmp_path / "store")
    assert result.exit_code == 0, result.output
    assert f"skipped iteration 10 of run 'run_new': 2 files name it (0010, 10 in {folder}); none is imported" in (
        " ".join(result.output.split())
    )
    weights = LocalWeightsStore(tmp_path / "store")
    assert [c.iteration for c in weights.list_checkpoints("run_new")] == [20, 30]
    assert_state_equal(weights.retrieve_weights("run_new", 20).model, written[("run_new", 20)][0])


def test_a_pickle_calling_os_system_is_refused_naming_it(tmp_path) -> None:
    marker = tmp_path / "marker"

    class System:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": ToyRun("r").model.state_dict(), "optimizer": System()}, tmp_path / "4")
    with pytest.raises(UnreadableDacapoFileError, match=f"refused: it names {os.name}.system, which a checkpoint may not call"):
        load_checkpoint(tmp_path / "4")
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0.01, 0.5, 0.999])
def test_a_truncated_checkpoint_is_said_to_be_truncated_or_damaged(tmp_path, keep: float) -> None:
    torch.save({"model": {"w": torch.ones(100_000)}, "optimizer": None}, tmp_path / "whole")
    data = (tmp_path / "whole").read_bytes()
    (tmp_path / "4").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UnreadableDacapoFileError, match="is truncated or damaged"):
        load_checkpoint(tmp_path / "4")


def test_a_run_whose_every_file_failed_prints_each_failure_once_and_not_nothing_new(runs, tmp_path, monkeypatch) -> None:
    build_tree(runs, monkeypatch)
    store = tmp_path / "store"
    assert import_cli(runs, "--store", store).exit_code == 0
    path = checkpoint_path(runs, "run_bad", 7)
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 100)  # a torch archive's start, and nothing more
    result = subprocess.run(
        [sys.executable, "-c", "from dacapo_store.cli import main; main()", "import-dacapo", str(runs), "--store", str(store)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert len([line for line in output.splitlines() if str(path) in line]) == 1, output
    assert "truncated or damaged" in output and "nothing new to import" not in output
    assert "1 checkpoint file(s) FAILED" in result.stdout

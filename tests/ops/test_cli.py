"""Every ``dacapo-store`` operations subcommand, end to end through click's runner, on the
local and mongomock backends (see ``conftest.ops_store``)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from click.testing import CliRunner

from dacapo_store.cli import main
from dacapo_store.cli.ops_commands import human_bytes
from dacapo_store.errors import CheckpointChangedError
from dacapo_store.maintenance.verification import verify_checkpoints
from dacapo_store.records import Weights

from .conftest import seed_run, toy_weights
from .test_gc import HOUR, live_upload, orphan_chunks, orphan_payload, payload_exists, stale_upload


def ok(result, code: int = 0) -> str:
    """Standard output of a command that ended with ``code``."""
    assert result.exit_code == code, result.output
    return result.stdout


def error_line(result, code: int = 1) -> str:
    """The one ``error:`` line of a failed command."""
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.output
    return lines[-1]


@pytest.fixture
def seeded(ops_store):
    seed_run(ops_store, "run_a", iterations=[100, 300, 500, 700])
    seed_run(ops_store, "run_b", iterations=[200])
    return ops_store


def test_runs_lists_every_run(seeded) -> None:
    output = ok(seeded.cli("runs"))
    size_a = human_bytes(sum(i.size for i in seeded.weights.list_checkpoints("run_a")))
    size_b = human_bytes(sum(i.size for i in seeded.weights.list_checkpoints("run_b")))
    assert [line.split() for line in output.splitlines()] == [
        ["RUN", "CHECKPOINTS", "LATEST", "SIZE", "CRITERION", "BEST", "ITERATION", "(DATASET)"],
        ["run_a", "4", "700", *size_a.split(), "dice", "500", "(val)"],
        ["loss", "500", "(val)"],
        ["run_b", "1", "200", *size_b.split(), "dice", "200", "(val)"],
        ["loss", "200", "(val)"],
    ]
    wide = ok(seeded.cli("runs", "--wide"))
    assert wide.splitlines()[0].split() == ["RUN", "CHECKPOINTS", "LATEST", "SIZE", "BEST", "ITERATION"]
    assert "val/dice: 500, val/loss: 500" in wide
    rows = json.loads(ok(seeded.cli("runs", "--json")))
    assert [(r["run"], r["checkpoints"], r["latest_iteration"]) for r in rows] == [("run_a", 4, 700), ("run_b", 1, 200)]
    assert rows[0]["bytes"] == sum(i.size for i in seeded.weights.list_checkpoints("run_a"))
    assert {(b["criterion"], b["iteration"], b["stored"]) for b in rows[0]["best"]} == {("dice", 500, True), ("loss", 500, True)}


def test_runs_on_an_empty_store(ops_store) -> None:
    ops_store.stats.delete_validation_scores("nobody")  # a write: creates the (empty) store
    assert ok(ops_store.cli("runs")) == "no runs\n"
    assert json.loads(ok(ops_store.cli("runs", "--json"))) == []


def test_checkpoints_and_scores_tables(seeded) -> None:
    output = ok(seeded.cli("checkpoints", "run_a"))
    assert [line.split()[0] for line in output.splitlines()[1:]] == ["100", "300", "500", "700"]
    listed = json.loads(ok(seeded.cli("checkpoints", "run_a", "--json")))
    assert [c["iteration"] for c in listed] == [100, 300, 500, 700]
    assert set(listed[0]["parts"]) == {"model", "optimizer"} and listed[0]["size"] > 0
    scores = json.loads(ok(seeded.cli("scores", "run_a", "--dataset", "val", "--criterion", "dice", "--json")))
    assert len(scores) == 8 and {s["criterion"] for s in scores} == {"dice"}
    table = ok(seeded.cli("scores", "run_a", "--criterion", "loss"))
    assert '{"threshold": 0.3}' in table and "dice" not in table


def test_best(seeded) -> None:
    output = ok(seeded.cli("best", "run_a", "val", "dice"))
    assert "iteration:  500" in output and '{"threshold": 0.5}' in output and "stored" in output
    best = json.loads(ok(seeded.cli("best", "run_a", "val", "loss", "--json")))
    assert (best["iteration"], best["higher_is_better"], best["parameters"]) == (500, False, {"threshold": 0.5})
    assert "no validation scores for criterion 'nope' on dataset 'val'; its criteria there: 'dice', 'loss'" in (
        error_line(seeded.cli("best", "run_a", "val", "nope"))
    )


def test_unknown_runs_bad_arguments_and_bad_stores(seeded) -> None:
    for command in (["checkpoints", "ghost"], ["scores", "ghost"], ["best", "ghost", "val", "dice"],
                    ["prune", "ghost", "--keep-last", "1"], ["verify", "ghost"], ["plot", "ghost", "-o", "x.png"]):
        assert "unknown run 'ghost'" in error_line(seeded.cli(*command))
    bad_iteration = seeded.cli("export", "run_a", "ten", "-o", "x")
    assert bad_iteration.exit_code == 2 and "Invalid value for 'ITERATION'" in bad_iteration.output
    assert seeded.cli("prune", "run_a").exit_code == 2
    assert seeded.cli("gc", "--older-than", "soon").exit_code == 2
    result = CliRunner().invoke(main, ["du", "--store", "ftp://host/x"])
    assert "the store argument" in error_line(result)


def test_unreachable_server_is_one_line_without_password(monkeypatch) -> None:
    monkeypatch.setattr("dacapo_store.mongo.connection.SERVER_SELECTION_TIMEOUT_MS", 100)
    result = CliRunner().invoke(main, ["runs", "--store", "mongodb://admin:hunter2@127.0.0.1:9/lab"])
    line = error_line(result)
    assert "hunter2" not in result.output and "127.0.0.1:9" in line


def test_export_writes_a_plain_state_dict_file(seeded, tmp_path) -> None:
    target = tmp_path / "ckpt.pt"
    assert "exported checkpoint 500 of run 'run_a'" in ok(seeded.cli("export", "run_a", "500", "-o", str(target)))
    state = torch.load(target, weights_only=True)
    stored = seeded.weights.retrieve_weights("run_a", 500)
    assert set(state) == {"model", "optimizer"}
    assert all(torch.equal(state["model"][k], v) for k, v in stored.model.items())
    assert state["optimizer"]["param_groups"] == stored.optimizer["param_groups"]
    assert "exists" in error_line(seeded.cli("export", "run_a", "500", "-o", str(target)))
    ok(seeded.cli("export", "run_a", "100", "-o", str(target), "--force", "--no-optimizer"))
    assert torch.load(target, weights_only=True)["optimizer"] is None
    assert "no checkpoint 900" in error_line(seeded.cli("export", "run_a", "900", "-o", str(tmp_path / "y.pt")))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_to_a_missing_directory_names_the_directory(seeded, tmp_path) -> None:
    target = tmp_path / "no_such_dir" / "ckpt.pt"
    line = error_line(seeded.cli("export", "run_a", "500", "-o", str(target)))
    assert f"the directory {tmp_path / 'no_such_dir'} does not exist" in line and ".tmp" not in line


def test_import_overwrite_replaces_a_stored_checkpoint(seeded, tmp_path) -> None:
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    torch.save(toy_weights(1).model, first)
    torch.save(toy_weights(2).model, second)
    ok(seeded.cli("import", str(first), "imported", "8"))
    assert "(use --overwrite to replace it)" in error_line(seeded.cli("import", str(second), "imported", "8"))
    ok(seeded.cli("import", str(second), "imported", "8", "--overwrite"))
    back = seeded.weights.retrieve_weights("imported", 8).model
    assert all(torch.equal(back[k], v) for k, v in toy_weights(2).model.items())


def test_export_file_mode_follows_the_umask(seeded, tmp_path) -> None:
    import os

    previous = os.umask(0o027)
    try:
        ok(seeded.cli("export", "run_a", "500", "-o", str(tmp_path / "ckpt.pt")))
    finally:
        os.umask(previous)
    assert (tmp_path / "ckpt.pt").stat().st_mode & 0o777 == 0o640


def test_import_round_trips_exported_and_bare_state_dicts(seeded, tmp_path) -> None:
    exported = tmp_path / "ckpt.pt"
    ok(seeded.cli("export", "run_a", "300", "-o", str(exported)))
    assert "model and optimizer" in ok(seeded.cli("import", str(exported), "imported", "7"))
    again = seeded.weights.retrieve_weights("imported", 7)
    original = seeded.weights.retrieve_weights("run_a", 300)
    assert all(torch.equal(again.model[k], v) for k, v in original.model.items())
    assert again.optimizer["param_groups"] == original.optimizer["param_groups"]
    bare = tmp_path / "bare.pt"
    torch.save(toy_weights(3).model, bare)
    assert "model only" in ok(seeded.cli("import", str(bare), "imported", "8"))
    assert seeded.weights.retrieve_weights("imported", 8).optimizer is None
    assert "already stored" in error_line(seeded.cli("import", str(bare), "imported", "8"))


def test_import_refuses_files_that_are_not_plain_state_dicts(seeded, tmp_path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"model": Weights({}, None)}, evil)  # a custom class: needs weights_only=False
    assert "refused" in error_line(seeded.cli("import", str(evil), "run_x", "1"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    assert "refused" in error_line(seeded.cli("import", str(garbage), "run_x", "1"))
    scalar = tmp_path / "scalar.pt"
    torch.save(torch.zeros(3), scalar)
    assert "not a state dict" in error_line(seeded.cli("import", str(scalar), "run_x", "1"))
    training = tmp_path / "training.pt"
    torch.save({"model": toy_weights().model, "optimizer": toy_weights().optimizer, "epoch": 3}, training)
    assert "['epoch']" in error_line(seeded.cli("import", str(training), "run_x", "1"))
    assert seeded.weights.list_checkpoints("run_x") == []


def test_prune_dry_run_then_for_real(seeded) -> None:
    preview = ok(seeded.cli("prune", "run_a", "--keep-last", "1", "--dry-run"))
    assert preview.startswith("would remove 2 checkpoint(s) of run 'run_a'")
    assert "iteration 500: best val/dice, best val/loss" in preview and "iteration 700: latest" in preview
    assert len(seeded.weights.list_checkpoints("run_a")) == 4
    report = json.loads(ok(seeded.cli("prune", "run_a", "--keep-every", "300", "--keep-best", "--json")))
    assert [r["iteration"] for r in report["removed"]] == [100]
    assert report["bytes_freed"] == report["removed"][0]["size"] > 0
    assert [k["iteration"] for k in report["kept"]] == [300, 500, 700]
    assert [c.iteration for c in seeded.weights.list_checkpoints("run_a")] == [300, 500, 700]


def test_gc_removes_orphans_and_never_the_upload_in_progress(seeded) -> None:
    store, now = seeded.weights, time.time()
    orphan = orphan_payload(store)
    stale = stale_upload(store, "run_a", 900, now)
    old_chunks = orphan_chunks(store, now - 2 * HOUR) if seeded.backend == "mongomock" else None
    reservation, model, unfinished = live_upload(store, "run_a", 1000)
    preview = ok(seeded.cli("gc", "--dry-run"))
    assert preview.startswith(f"would remove {3 if old_chunks else 2} item(s)")
    assert payload_exists(store, orphan)
    report = json.loads(ok(seeded.cli("gc", "--older-than", "30m", "--json")))
    assert {item["kind"] for item in report["items"]} >= {"orphan-payload", "stale-reservation"}
    assert report["bytes_freed"] == sum(item["size"] for item in report["items"])
    assert not payload_exists(store, orphan) and not any(payload_exists(store, p) for p in stale.payloads)
    if old_chunks:
        assert not payload_exists(store, old_chunks)
    assert payload_exists(store, model.location) and payload_exists(store, unfinished)
    assert ok(seeded.cli("gc")).startswith("removed 0 item(s), 0 B")
    ok(seeded.cli("verify"))


def corrupt(ops_store, run: str, iteration: int) -> None:
    """Flip one byte of the model payload of a checkpoint, in place."""
    location = ops_store.weights.checkpoint_info(run, iteration).parts["model"].location
    if ops_store.backend == "local":
        path = ops_store.weights.payload_path(location)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        from bson import ObjectId

        chunks = ops_store.weights.database.collection("weights.chunks")
        chunk = chunks.find_one({"files_id": ObjectId(location), "n": 0})
        data = bytearray(chunk["data"])
        data[10] ^= 0xFF
        chunks.update_one({"_id": chunk["_id"]}, {"$set": {"data": bytes(data)}})


def test_verify_names_each_bad_checkpoint(seeded) -> None:
    assert ok(seeded.cli("verify")) == "ok: 5 checkpoint(s) of 2 run(s) intact\n"
    assert ok(seeded.cli("verify", "run_b")) == "ok: 1 checkpoint(s) of 1 run(s) intact\n"
    corrupt(seeded, "run_a", 300)
    corrupt(seeded, "run_b", 200)
    result = seeded.cli("verify")
    assert "2 of 5 checkpoint(s) failed verification" in error_line(result)
    assert "BAD  run 'run_a' iteration 300: " in result.output and "digest mismatch" in result.output
    assert "BAD  run 'run_b' iteration 200" in result.output
    report = json.loads(seeded.cli("verify", "run_a", "--json").output.split("\nerror:")[0])
    assert [(f["run"], f["iteration"]) for f in report["failures"]] == [("run_a", 300)]
    assert report["checked"] == 4


def test_verify_does_not_call_a_checkpoint_overwritten_at_every_attempt_bad(seeded, monkeypatch) -> None:
    """A writer overwriting a checkpoint as fast as it is checked is no damage: it is skipped."""
    store, real_verify = seeded.weights, seeded.weights.verify

    def verify(run, iteration):
        if (run, iteration) == ("run_a", 300):
            raise CheckpointChangedError("checkpoint 300 of run 'run_a' was replaced 3 times while it was being read")
        return real_verify(run, iteration)

    monkeypatch.setattr(store, "verify", verify)
    checked = []
    checkpoints = [info for run in store.list_runs() for info in store.list_checkpoints(run)]
    assert verify_checkpoints(store, checkpoints, checked.append) == []
    assert checked == checkpoints


def test_du(seeded) -> None:
    usage = json.loads(ok(seeded.cli("du", "--json")))
    sizes = {r["run"]: r["bytes"] for r in usage["runs"]}
    assert sizes["run_a"] == sum(i.size for i in seeded.weights.list_checkpoints("run_a"))
    assert usage["total"] == {"checkpoints": 5, "bytes": sum(sizes.values())}
    table = ok(seeded.cli("du"))
    assert table.splitlines()[-1].split()[:3] == ["TOTAL", "5", str(usage["total"]["bytes"])]


def test_plot_writes_a_png(seeded, tmp_path) -> None:
    target = tmp_path / "run_a.png"
    assert ok(seeded.cli("plot", "run_a", "-o", str(target))) == f"wrote {target} (1000x900 px)\n"
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_summarises_the_best_per_criterion_over_datasets(ops_store) -> None:
    for iteration in (100, 200):
        ops_store.weights.put_weights("multi", iteration, toy_weights(iteration))
        for dataset in ("validate_0", "validate_1", "validate_2"):
            late = iteration == 200 or dataset == "validate_2"  # validate_2 peaks early
            ops_store.stats.store_validation_scores(
                "multi", iteration, dataset, {"f1": 0.9 if late else 0.5}, {"f1": True}
            )
    lines = ok(ops_store.cli("runs")).splitlines()
    assert lines[1].endswith("f1         200 (validate_0, validate_1), 100 (validate_2)")


def test_help_placeholders_match_their_descriptions() -> None:
    prune_help = CliRunner().invoke(main, ["prune", "--help"]).output
    assert "--keep-last N " in prune_help and "the N latest" in prune_help
    assert "--keep-every M " in prune_help and "a multiple of M" in prune_help
    for command in ("demo", "train"):
        help_text = CliRunner().invoke(main, [command, "--help"]).output
        assert "--keep-last N " in help_text and "--threads N " in help_text

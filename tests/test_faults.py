"""Faults are caught: divergence, corrupt or hostile state files, a full disk, Ctrl-C at the end, YAML bombs, HTML.

Runs go through the CLI in-process (CliRunner) on the tiny Qwen2 fixture, so each takes seconds, and always into a
temp folder; disk faults are injected by patching ``os.write`` / ``os.fsync`` for one file, so nothing depends on
really filling a disk. Over 400 lines on purpose: one fault per test, all on one fixture; the list is the point.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rlbench.cli import main

SMALL = [
    "--set",
    "rollout.batch_size=8",
    "--set",
    "rollout.samples_per_prompt=2",
    "--set",
    "sampling.max_new_tokens=8",
    "--set",
    "eval.limit=4",
    "--set",
    "eval.samples=0",
    "--set",
    "task.train_size=50",
    "--set",
    "task.test_size=10",
    "--set",
    "checkpoint_every=1",
]
ENOSPC = "No space left on device"
PROGRESS_BAR = re.compile(r"\d+%\|")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds a file descriptor's path in /proc")


def _train(model: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["train", "--model", str(model), "--out", str(out), "--quiet", *SMALL, *extra])


def _one_line(result, code: int = 2) -> str:
    # transformers' own "Loading weights" bars also reach the captured stderr; they are not rlbench's output
    lines = [line for line in re.split(r"[\r\n]", result.output) if line.strip() and not PROGRESS_BAR.search(line)]
    assert result.exit_code == code and len(lines) == 1, (result.exit_code, result.output, result.exception)
    return lines[0]


def _strict_rows(path: Path) -> list[dict]:
    """Every line parsed as strict JSON: bare NaN / Infinity tokens (which most parsers reject) fail the test."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{path}: non-standard JSON token {token}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def _temp_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith(".tmp"))


def _state_steps(run: Path) -> int:
    return torch.load(run / "state" / "trainer.pt", weights_only=True)["usage"]["steps"]


# ------------------------------------------------------------------------------------------ divergence


def test_a_diverging_run_stops_with_status_diverged_and_exit_3(tiny_qwen_dir, tmp_path):
    out = tmp_path / "run"
    result = _train(tiny_qwen_dir, out, "--algo", "ppo", "--set", "optim.lr=1e3", "--set", "budget.steps=8")
    line = _one_line(result, code=3)
    match = re.fullmatch(
        r"rlbench: error: run diverged at step (\d+): (loss|grad_norm|weight \S+) is (nan|-?inf)", line
    )
    assert match, line
    step = int(match.group(1))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["stop_reason"] == line.split("diverged at ")[1]
    assert summary["usage"]["steps"] == step - 1  # the diverged step is not counted
    assert not (out / "checkpoint").exists()  # no NaN model saved as the final one
    if step == 1:  # nothing good to keep: no metrics row and no state (it depends on the library versions when)
        assert not (out / "metrics.jsonl").exists() and not (out / "state").exists()
        return
    assert [r["step"] for r in _strict_rows(out / "metrics.jsonl")] == list(range(1, step))
    state = torch.load(out / "state" / "trainer.pt", weights_only=True)  # the last good state, untouched
    assert state["usage"]["steps"] == step - 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_non_finite_weights_after_a_step_are_divergence(tiny_qwen_dir, tmp_path):
    # loss and gradient are finite (zero: no reward yet), but decoupled weight decay scales each weight by
    # 1 - lr * wd = -1e40, which overflows float32: the weights, not the loss, are what went non-finite
    out = tmp_path / "run"
    result = _train(
        tiny_qwen_dir, out, "--set", "optim.lr=1e30", "--set", "optim.weight_decay=1e10", "--set", "budget.steps=3"
    )
    line = _one_line(result, code=3)
    assert re.fullmatch(r"rlbench: error: run diverged at step 1: weight \S+ is (nan|-?inf)", line), line
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
    assert not (out / "checkpoint").exists()


# each of these passed validation before ("inf > 0") and trained; nan was refused, but as "must be > 0"
@pytest.mark.parametrize(
    "override",
    [
        "optim.lr=inf",
        "optim.weight_decay=inf",
        "budget.seconds=inf",
        "algo.kl_reward_coef=inf",
        "sampling.temperature=inf",
        "optim.lr=nan",
    ],
)
def test_non_finite_config_values_exit_2_naming_the_key(tiny_qwen_dir, tmp_path, override):
    line = _one_line(_train(tiny_qwen_dir, tmp_path / "run", "--set", "budget.steps=1", "--set", override))
    assert line.startswith(f"rlbench: error: {override.split('=')[0]}=") and "finite" in line, line


def test_non_finite_yaml_values_are_refused_too(tiny_qwen_dir, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("optim: {lr: .inf}\nbudget: {steps: 1}\n")
    assert "optim.lr" in _one_line(_train(tiny_qwen_dir, tmp_path / "run", "--config", str(config)))


def test_json_writers_write_non_finite_floats_as_null(tmp_path):
    from rlbench.core.results import append_jsonl, write_json

    row = {"loss": math.nan, "nested": {"g": [math.inf, -math.inf, 1.5]}, "t": torch.tensor(math.nan), "ok": 2}
    append_jsonl(tmp_path / "m.jsonl", row)
    write_json(tmp_path / "s.json", row)
    expected = {"loss": None, "nested": {"g": [None, None, 1.5]}, "t": None, "ok": 2}
    assert _strict_rows(tmp_path / "m.jsonl") == [expected]
    assert json.loads((tmp_path / "s.json").read_text(), parse_constant=lambda t: pytest.fail(t)) == expected


# ------------------------------------------------------------------------------------------ state files


@pytest.fixture(scope="module")
def stopped_run(tiny_qwen_dir, tmp_path_factory) -> Path:
    """A 2-step run whose state was saved at every step and that was stopped (Ctrl-C) writing its final model."""
    from transformers import PreTrainedModel

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PreTrainedModel, "save_pretrained", ctrl_c)
        result = _train(tiny_qwen_dir, out, "--set", "budget.steps=2")
    assert result.exit_code == 130, result.output
    return out


@pytest.fixture()
def run(stopped_run) -> Path:
    """The stopped run, fresh for each test (restored in place: its config.yaml names its folder)."""
    pristine = stopped_run.with_name("pristine")
    if not pristine.exists():
        shutil.copytree(stopped_run, pristine)
    shutil.rmtree(stopped_run)
    shutil.copytree(pristine, stopped_run)
    return stopped_run


def test_ctrl_c_while_the_final_model_is_written_still_leaves_a_summary(run):
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["usage"]["steps"] == 2
    assert _state_steps(run) == 2  # kept: --resume continues from it


class _CtrlCWhileWriting:
    """A file whose ``write`` number ``at`` receives a real SIGINT, as a terminal's Ctrl-C would deliver it."""

    def __init__(self, handle, at: int) -> None:
        self.handle, self.at, self.writes = handle, at, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()

    def write(self, data) -> int:
        self.writes += 1
        if self.writes == self.at:
            signal.raise_signal(signal.SIGINT)  # delivered to this thread, at once
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


@pytest.fixture()
def ctrl_c_handler():
    # Python's own Ctrl-C handler, which it does not install when started with SIGINT ignored (a background job)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_inside_torch_save_stays_a_ctrl_c(tmp_path, monkeypatch, ctrl_c_handler):
    from rlbench.engine import run_state

    # torch's C++ writer turns an exception from ``write`` into "RuntimeError: enforce fail ... unexpected pos"
    monkeypatch.setattr(run_state, "open", lambda file, mode: _CtrlCWhileWriting(open(file, mode), at=3), raising=False)
    with pytest.raises(KeyboardInterrupt):
        run_state.torch_save({"w": torch.zeros(1000)}, tmp_path / "x.pt")


def test_ctrl_c_while_the_state_is_written_waits_for_it(tiny_qwen_dir, tmp_path, monkeypatch, ctrl_c_handler):
    from rlbench.engine import run_state

    saves = []

    def second_save_interrupted(file, mode):
        saves.append(file)
        return _CtrlCWhileWriting(open(file, mode), at=3 if len(saves) == 2 else 0)

    monkeypatch.setattr(run_state, "open", second_save_interrupted, raising=False)
    out = tmp_path / "run"
    result = _train(tiny_qwen_dir, out, "--set", "budget.steps=5")
    assert result.exit_code == 130, result.output
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert _state_steps(out) == 2  # the state being written when Ctrl-C came was finished, then the run stopped
    assert len(_strict_rows(out / "metrics.jsonl")) == 2 and not _temp_files(out)


def test_resume_from_a_good_state_finishes(tiny_qwen_dir, run):
    result = _train(tiny_qwen_dir, run, "--set", "budget.steps=2", "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert (run / "checkpoint" / "config.json").exists() and not (run / "state").exists()


class _RunsCode:
    """Unpickling this calls os.mkdir(path): what a crafted state file could do with weights_only=False."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize(
    "damage, why",
    [
        ("zero-byte", "empty file"),
        ("truncated", "corrupt or truncated"),
        ("garbage", "corrupt or truncated"),
        ("crafted", f"refused: it holds {os.name}.mkdir"),
    ],
)
def test_a_bad_state_file_is_one_line_and_exit_2_and_keeps_the_results(tiny_qwen_dir, run, tmp_path, damage, why):
    state = run / "state" / "trainer.pt"
    marker = tmp_path / "code-ran"
    if damage == "zero-byte":
        state.write_bytes(b"")
    elif damage == "truncated":
        state.write_bytes(state.read_bytes()[:5000])
    elif damage == "garbage":
        state.write_bytes(b"\xdb" * 3000)
    else:
        torch.save({"model": _RunsCode(str(marker))}, state)
    before = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl")}
    line = _one_line(_train(tiny_qwen_dir, run, "--set", "budget.steps=2", "--resume"))
    assert line.startswith(f"rlbench: error: {state}: cannot load the run's state: {why}"), line
    assert not marker.exists()  # the state file's code never ran
    assert {name: (run / name).read_bytes() for name in before} == before


def test_a_truncated_model_checkpoint_is_one_line(tiny_qwen_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_qwen_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    line = _one_line(_train(model, tmp_path / "run", "--set", "budget.steps=1"))
    assert str(model) in line and "cannot load" in line, line


# ------------------------------------------------------------------------------------------ disk full


@pytest.fixture()
def disk_full(monkeypatch):
    """``disk_full("metrics.jsonl", after=2)``: the 3rd write (os.write or os.fsync) to that file fails with ENOSPC."""
    real_write, real_fsync = os.write, os.fsync

    def arm(name: str, after: int = 0, call: str = "fsync") -> None:
        seen = {"n": 0}

        def hit(fd: int) -> bool:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if Path(target).name != name and not Path(target).name.startswith(f".{name}."):
                return False
            seen["n"] += 1
            return seen["n"] > after

        def write(fd: int, data: bytes) -> int:
            if call == "write" and hit(fd):
                real_write(fd, bytes(data)[: len(data) // 2])  # half a line reaches the disk, then it is full
                raise OSError(errno.ENOSPC, ENOSPC)
            return real_write(fd, data)

        def fsync(fd: int) -> None:
            if call == "fsync" and hit(fd):
                raise OSError(errno.ENOSPC, ENOSPC)
            real_fsync(fd)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)

    return arm


@linux_only
def test_disk_full_appending_metrics_keeps_every_finished_line(tiny_qwen_dir, tmp_path, disk_full):
    out = tmp_path / "run"
    disk_full("metrics.jsonl", after=2, call="write")
    line = _one_line(_train(tiny_qwen_dir, out, "--set", "budget.steps=5"))
    assert line == f"rlbench: error: {out / 'metrics.jsonl'}: cannot write ({ENOSPC})"
    assert [r["step"] for r in _strict_rows(out / "metrics.jsonl")] == [1, 2]  # no torn third line
    assert (out / "metrics.jsonl").read_text().endswith("}\n")
    assert _state_steps(out) == 2 and _temp_files(out) == []


@linux_only
def test_disk_full_saving_state_keeps_the_last_good_state(tiny_qwen_dir, tmp_path, disk_full):
    out = tmp_path / "run"
    disk_full("trainer.pt", after=2)
    line = _one_line(_train(tiny_qwen_dir, out, "--set", "budget.steps=5"))
    assert line == f"rlbench: error: {out / 'state' / 'trainer.pt'}: cannot write ({ENOSPC})"
    assert _state_steps(out) == 2
    assert not (out / "state.tmp").exists() and _temp_files(out) == []
    assert [r["step"] for r in _strict_rows(out / "metrics.jsonl")] == [1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


@linux_only
def test_disk_full_writing_the_summary_leaves_no_temp_file(tiny_qwen_dir, tmp_path, disk_full):
    out = tmp_path / "run"
    disk_full("summary.json")
    line = _one_line(_train(tiny_qwen_dir, out, "--set", "budget.steps=1"))
    assert line == f"rlbench: error: {out / 'summary.json'}: cannot write ({ENOSPC})"
    assert not (out / "summary.json").exists() and _temp_files(out) == []


def test_atomic_writes_follow_the_umask(tmp_path):
    from rlbench.core.results import write_json, write_text_atomic

    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        write_text_atomic(tmp_path / "b.txt", "hello")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"a.json": 0o640, "b.txt": 0o640}


def test_a_failed_atomic_write_removes_its_temp_file_and_keeps_the_old_file(tmp_path, monkeypatch):
    from rlbench.core.results import RunFileError, write_text_atomic

    target = tmp_path / "report.json"
    target.write_text("old\n")

    def full(*args):
        raise OSError(errno.ENOSPC, ENOSPC)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RunFileError, match=re.escape(f"{target}: cannot write ({ENOSPC})")):
        write_text_atomic(target, "new\n")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


# ------------------------------------------------------------------------------------------ YAML limits


def test_a_huge_config_file_is_refused_before_parsing(tiny_qwen_dir, tmp_path):
    config = tmp_path / "big.yaml"
    config.write_text("budget: {steps: 1}\n" + "# padding\n" * 120_000)
    line = _one_line(_train(tiny_qwen_dir, tmp_path / "run", "--config", str(config)))
    assert str(config) in line and "1 MiB" in line, line


def test_a_yaml_alias_bomb_is_refused_naming_file_and_line(tmp_path):
    levels = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    levels += [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    config = tmp_path / "bomb.yaml"
    config.write_text("\n".join(levels) + "\n")
    for command in (
        ["train", "--config", str(config), "--out", str(tmp_path / "r")],
        ["compare", "--config", str(config), "--algos", "reinforce", "--out", str(tmp_path / "c")],
    ):
        line = _one_line(CliRunner().invoke(main, command))
        assert f"{config} line 2" in line and "alias" in line, line


# ------------------------------------------------------------------------------------------ markdown


def test_markdown_escapes_html_in_cells_and_facts_but_keeps_code_spans():
    from rlbench.study.report.markdown import _cell, _facts, _table
    from rlbench.study.report.tables import Table

    assert _cell("<script>alert(1)</script> & co") == "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"
    assert _cell("`a<b`") == "`a<b`"  # code spans show their text literally in markdown: no entity there
    assert _cell("`a` <b> `c`") == "`a` &lt;b&gt; `c`"
    assert _cell("`` x ` <i> ``") == "`` x ` <i> ``"
    assert _cell("unclosed ` <i>") == "unclosed ` &lt;i&gt;"
    facts = "\n".join(_facts([("Comparison command", "`rlbench compare --algos 'x'` <img src=x onerror=alert(1)>")]))
    assert "<img" not in facts and "&lt;img" in facts
    table = "\n".join(_table(Table("<b>t</b>", ["<i>col</i>"], [["<script>"]], ["<u>note</u>"]), "##"))
    assert "<" not in table.replace("&lt;", "")
    assert _cell("a\\b | c") == "a\\\\b \\| c"  # a backslash is doubled (shown the same), then pipes escaped


@pytest.mark.parametrize(
    "value",
    [
        "<script>x</script>",
        "\\`<b>x</b>`",
        "`a` <i>x</i> `",
        "``<u>x</u>`",
        "a | <s>x</s> \\| `y|<em>z</em>`",
        "&lt;img src=x&gt; <img src=x>",
    ],
)
def test_rendered_markdown_has_no_tags_from_values(value):
    from rlbench.study.report.markdown import _facts, _table
    from rlbench.study.report.tables import Table

    MarkdownIt = pytest.importorskip("markdown_it").MarkdownIt
    md = "\n".join(_facts([("fact", value)]) + _table(Table("t", ["col"], [[value]], [value]), "##"))
    html = MarkdownIt("commonmark").enable("table").render(md)
    assert not re.search(r"<(script|b|i|u|s|em|img)\b", html), html


def test_leaderboard_md_escapes_html_from_the_manifest(tmp_path):
    MarkdownIt = pytest.importorskip("markdown_it").MarkdownIt  # a CommonMark renderer (installed with rich)
    from report_helpers import make_comparison

    from rlbench.study.report.build import write_report

    path = make_comparison(tmp_path / "c", {"em-pg": 0.6, "grpo": 0.5})
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["command"] = "rlbench compare `x` <script>alert(1)</script>"  # a backtick to break out of the span
    manifest["model"] = "<img src=x onerror=alert(1)>"
    (path / "manifest.json").write_text(json.dumps(manifest))
    write_report([path], path)
    md = (path / "leaderboard.md").read_text()
    html = MarkdownIt("commonmark").enable("table").render(md)  # raw HTML is on, as on GitHub (then sanitised)
    assert "<script" not in html and "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in md
    assert "<code> &lt;script&gt;alert(1)&lt;/script&gt;</code>" in html  # inside a code span: shown, not run

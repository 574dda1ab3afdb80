"""`isthmus triton-serve`: bad input exits 2 with a message naming the bad value, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from isthmus.cli import app

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ts") / "mlp.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), str(path))
    return path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--input-shape", "1,x"], "'1,x'"),
        (["--input-shape", "0,4"], "'0,4'"),
        (["--input-shape", "4", "--dtype", "bfloat"], "'bfloat'"),
        (["--input-shape", "4", "--name", "a/b"], "'a/b'"),
        (["--input-shape", "4", "--max-batch-size", "0"], "max_batch_size"),
    ],
)
def test_bad_options_exit_2_with_the_bad_value(scripted: Path, args: list[str], needle: str) -> None:
    result = CliRunner().invoke(app, ["triton-serve", str(scripted), *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output


def test_missing_or_corrupt_file_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["triton-serve", str(tmp_path / "none.pt"), "--input-shape", "4"])
    assert missing.exit_code == 2 and "does not exist" in missing.output and "To fix" in missing.output
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torchscript")
    corrupt = runner.invoke(app, ["triton-serve", str(junk), "--input-shape", "4"])
    assert corrupt.exit_code == 2 and "junk.pt" in corrupt.output

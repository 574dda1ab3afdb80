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


def test_free_port_is_bindable_and_outside_the_ephemeral_range() -> None:
    import socket

    from isthmus.platform.triton import _FREE_PORTS, _LATE_BOUND_PORTS, free_port

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(20)]
    if low > _FREE_PORTS[0]:  # port-0 binds (Ray's) cannot take these between choice and bind
        assert all(_FREE_PORTS[0] <= p < min(low, _FREE_PORTS[1]) for p in ports), (ports, low)
    for port in ports[:3]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    late = [free_port(late_bound=True) for _ in range(20)]   # Serve's ports: never handed to a Triton server
    if low > _LATE_BOUND_PORTS[0]:
        assert all(_LATE_BOUND_PORTS[0] <= p < _LATE_BOUND_PORTS[1] for p in late) and not set(late) & set(ports)


@pytest.mark.parametrize("make", ["text", "state_dict", "wrong_shape"])
def test_file_that_cannot_serve_fails_in_one_line_before_triton_starts(tmp_path: Path, scripted: Path,
                                                                      make: str) -> None:
    """Not TorchScript (a text file, a torch.save state dict) or an --input-shape the model rejects: exit 2 with
    one line and a fix, as `isthmus validate` says it of an artifact, not torch's traceback."""
    path, shape = tmp_path / "model.pt", "4"
    if make == "text":
        path.write_text("not a model\n")
    elif make == "state_dict":
        torch.save(torch.nn.Linear(4, 2).state_dict(), str(path))
    else:
        path, shape = scripted, "3,8"
    result = CliRunner().invoke(app, ["triton-serve", str(path), "--input-shape", shape])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "To fix" in lines[0] and "Traceback" not in lines[0] and "corrupted" not in lines[0]
    assert ("--input-shape" in lines[0]) == (make == "wrong_shape"), lines[0]

"""Triton launcher: model repository contents, input validation, and a real tritonserver (slow)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from isthmus.platform.triton import (
    INPUT_NAME,
    OUTPUT_NAME,
    TritonError,
    TritonModel,
    TritonServer,
    write_model_repository,
)

torch = pytest.importorskip("torch")


class _TinyCnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = _TinyCnn().eval()
    path = tmp_path_factory.mktemp("ts") / "cnn.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    return model, path


def test_model_validation_names_the_bad_field(cnn: tuple) -> None:
    _, path = cnn
    with pytest.raises(ValidationError, match="To fix"):
        TritonModel(name="bad/name", torchscript_path=path, input_shape=(1, 8, 8))
    with pytest.raises(ValidationError, match="'bfloat'"):
        TritonModel(name="m", torchscript_path=path, input_shape=(1, 8, 8), dtype="bfloat")
    with pytest.raises(ValidationError, match=r"preferred_batch_sizes \[16\]"):
        TritonModel(name="m", torchscript_path=path, input_shape=(1, 8, 8), max_batch_size=8,
                    preferred_batch_sizes=[4, 16])


def test_repository_layout_and_measured_output_shape(cnn: tuple, tmp_path: Path) -> None:
    _, path = cnn
    models = [
        TritonModel(name="cnn_b", torchscript_path=path, input_shape=(1, 8, 8), max_batch_size=16,
                    preferred_batch_sizes=[8, 16], max_queue_delay_us=2000, instance_count=2),
        TritonModel(name="cnn_nb", torchscript_path=path, input_shape=(1, 8, 8), dynamic_batching=False),
    ]
    repo = write_model_repository(tmp_path / "repo", models)
    config = (repo / "cnn_b" / "config.pbtxt").read_text()
    assert "max_batch_size: 16" in config
    assert "dims: [10]" in config  # measured by running the TorchScript file
    assert "preferred_batch_size: [8, 16] max_queue_delay_microseconds: 2000" in config
    assert "count: 2 kind: KIND_CPU" in config
    assert "dynamic_batching" not in (repo / "cnn_nb" / "config.pbtxt").read_text()
    assert (repo / "cnn_b" / "1" / "model.pt").read_bytes() == path.read_bytes()
    compile((repo / "cnn_b" / "1" / "model.py").read_text(), "model.py", "exec")


def test_repository_rejects_missing_file_and_duplicates(cnn: tuple, tmp_path: Path) -> None:
    _, path = cnn
    missing = TritonModel(name="m", torchscript_path=tmp_path / "nope.pt", input_shape=(4,))
    with pytest.raises(ValueError, match="nope.pt.*To fix"):
        write_model_repository(tmp_path / "repo", [missing])
    ok = TritonModel(name="m", torchscript_path=path, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match=r"\['m'\] appear twice"):
        write_model_repository(tmp_path / "repo", [ok, ok])


def test_server_rejects_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_repository"):
        TritonServer(tmp_path / "absent")


async def _concurrent_infer(url: str, name: str, batch: np.ndarray, n: int) -> list[np.ndarray]:
    import tritonclient.grpc.aio as aio
    from tritonclient.grpc import InferInput

    client = aio.InferenceServerClient(url)
    try:
        async def one() -> np.ndarray:
            tensor = InferInput(INPUT_NAME, list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            return (await client.infer(name, [tensor])).as_numpy(OUTPUT_NAME)

        return await asyncio.gather(*(one() for _ in range(n)))
    finally:
        await client.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_real_triton_serves_batches_and_restarts(cnn: tuple, tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    model, path = cnn
    repo = write_model_repository(tmp_path / "repo", [
        TritonModel(name="cnn", torchscript_path=path, input_shape=(1, 8, 8), max_batch_size=16,
                    preferred_batch_sizes=[16], max_queue_delay_us=20000),
    ])
    server = TritonServer(repo, log_dir=tmp_path / "logs")
    try:
        server.start(timeout_s=240)
        x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        tensor = grpcclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        np.testing.assert_allclose(client.infer("cnn", [tensor]).as_numpy(OUTPUT_NAME), expected, atol=1e-5)

        # 32 concurrent single-sample requests: dynamic batching must group them (mean batch > 1)
        outs = asyncio.run(_concurrent_infer(server.grpc_url, "cnn", x[:1], 32))
        for out in outs:
            np.testing.assert_allclose(out, expected[:1], atol=1e-5)
        metrics = server.model_metrics()["cnn"]
        assert metrics["requests"] == 33
        assert metrics["mean_batch_size"] > 1.5, metrics
        assert metrics["latency_ms_p50"] > 0

        # a crash: the process is gone, restart() brings it back on the same port
        pid, port = server.pid, server.grpc_port
        server.kill()
        assert not server.is_alive()
        server.restart(timeout_s=240)
        assert server.is_alive() and server.pid != pid and server.grpc_port == port and server.restarts == 1
        client = grpcclient.InferenceServerClient(server.grpc_url)
        np.testing.assert_allclose(client.infer("cnn", [tensor]).as_numpy(OUTPUT_NAME), expected, atol=1e-5)
    finally:
        server.stop()
    assert not server.is_alive()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_broken_model_fails_start_with_log_tail(cnn: tuple, tmp_path: Path) -> None:
    _, path = cnn
    repo = write_model_repository(tmp_path / "repo", [
        TritonModel(name="broken", torchscript_path=path, input_shape=(1, 8, 8), output_shape=(10,)),
    ])
    (repo / "broken" / "1" / "model.pt").write_bytes(b"not a torchscript file")
    server = TritonServer(repo, log_dir=tmp_path / "logs")
    with pytest.raises(TritonError, match="(?s)exited with code.*broken.*To fix"):
        server.start(timeout_s=240)
    assert not server.is_alive()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_busy_explicit_port_fails_with_the_reason(cnn: tuple, tmp_path: Path) -> None:
    import socket

    _, path = cnn
    repo = write_model_repository(tmp_path / "repo", [
        TritonModel(name="cnn", torchscript_path=path, input_shape=(1, 8, 8), output_shape=(10,)),
    ])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = TritonServer(repo, grpc_port=busy.getsockname()[1], log_dir=tmp_path / "logs")
        with pytest.raises(TritonError, match="(?i)already in use"):
            server.start(timeout_s=240)
    assert not server.is_alive()

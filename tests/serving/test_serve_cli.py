"""``ratchet serve`` refuses configurations that would be unsafe or cannot work."""

from __future__ import annotations

import pytest

from serving.cli import main


def test_serve_refuses_the_dev_secret_beyond_loopback(
    tiny_model_dir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RATCHET_MESSAGE_ID_SECRET", raising=False)
    code = main(["serve", "--host", "0.0.0.0", "--model", str(tiny_model_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "RATCHET_MESSAGE_ID_SECRET" in err and "Traceback" not in err


def test_serve_names_a_missing_model_directory(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--model", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2
    assert "nowhere" in err and "model bootstrap" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--managed"], "--managed goes with --backend vllm-server"),
        (["--backend", "vllm-server"], "needs --url"),
        (["--backend", "vllm-server", "--managed", "--url", "http://x:8000"], "drop --url"),
    ],
)
def test_serve_names_a_wrong_vllm_server_setup(
    tiny_model_dir, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--model", str(tiny_model_dir), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err

"""Fetching model files, against a server on loopback: resume after a cut, nothing half-done left in place."""

import hashlib
import http.server
import io
import threading

import pytest

from curate import models
from curate.cli import main

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Server(http.server.ThreadingHTTPServer):
    cut_after: int | None = None      # drop the connection after this many bytes of the body, once
    honour_ranges = True
    files: dict = {}                  # path -> bytes; anything else gets PAYLOAD


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        payload = self.server.files.get(self.path, PAYLOAD)
        start = 0
        header = self.headers.get("Range")
        if header and self.server.honour_ranges:
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            self.send_response(200)
        body = payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut_after is not None:
            body, self.server.cut_after = body[:self.server.cut_after], None
            self.wfile.write(body)
            self.wfile.flush()
            self.connection.shutdown(2)  # the peer sees a short body
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = Server(("127.0.0.1", 0), Handler)
    srv.files = {}
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/weights.pth"


def test_download_resumes_after_a_cut_connection(server, tmp_path):
    target = tmp_path / "models" / "weights.pth"
    server.cut_after = 300_000
    with pytest.raises(models.ModelError, match="run the same command again"):
        models.download(url(server), target)
    assert not target.exists()  # a cut download is never in place under the model's name
    assert (tmp_path / "models" / "weights.pth.partial").stat().st_size == 300_000
    models.download(url(server), target)
    assert target.read_bytes() == PAYLOAD
    assert not (tmp_path / "models" / "weights.pth.partial").exists()


def test_server_ignoring_the_range_restarts_cleanly(server, tmp_path):
    target = tmp_path / "weights.pth"
    (tmp_path / "weights.pth.partial").write_bytes(b"stale bytes from another file")
    server.honour_ranges = False
    models.download(url(server), target)
    assert target.read_bytes() == PAYLOAD


def test_unreachable_server_is_a_clear_error(tmp_path):
    with pytest.raises(models.ModelError, match="failed") as caught:
        models.download("http://127.0.0.1:9/nothing.pth", tmp_path / "x.pth", timeout=2)
    # nothing arrived, so there is nothing to resume: the message does not promise it, and no .partial is left
    assert "nothing was downloaded" in str(caught.value) and "resume" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_models_list_shows_each_file_and_whether_it_is_verified(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CURATE_MODELS_DIR", str(tmp_path))
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["dlib", "unverified"] and "shape_predictor_68" in line for line in lines)
    assert any(line.split()[:2] == ["syncnet", "missing"] and str(tmp_path / "syncnet_v2.model") in line for line in lines)
    models.require("dlib", models.ModelSettings())   # loads it and records its sha256
    assert main(["models", "list"]) == 0
    assert any(line.split()[:2] == ["dlib", "ok"] for line in capsys.readouterr().out.splitlines())


@pytest.fixture
def syncnet_payload():
    torch = pytest.importorskip("torch")
    from golden import stand_in_state_dict
    from networks.syncnet.syncnet_v2 import SyncNet

    buffer = io.BytesIO()
    torch.save(stand_in_state_dict(SyncNet()), buffer)
    return buffer.getvalue()


def serve_syncnet(server, payload, monkeypatch):
    server.files["/syncnet_v2.model"] = payload
    file = models.MODELS["syncnet"][1][0]
    served = models.ModelFile(file.name, f"http://127.0.0.1:{server.server_address[1]}/syncnet_v2.model",
                              file.folder, file.verify)
    monkeypatch.setitem(models.MODELS, "syncnet", (models.MODELS["syncnet"][0], [served]))


def test_syncnet_download_is_verified_recorded_and_checked_later(server, syncnet_payload, tmp_path, monkeypatch):
    serve_syncnet(server, syncnet_payload, monkeypatch)
    settings = models.ModelSettings(dir=str(tmp_path))
    server.cut_after = 1_000_000            # the first attempt is cut off
    with pytest.raises(models.ModelError, match="again to resume"):
        models.download_model("syncnet", settings, progress=lambda line: None)
    assert not (tmp_path / "syncnet_v2.model").exists()
    [path] = models.download_model("syncnet", settings, progress=lambda line: None)
    assert path.read_bytes() == syncnet_payload
    assert [status for *_, status in models.state("syncnet", settings)] == ["ok"]
    assert models.require("syncnet", settings) == [path]
    # a file that changes after it was verified is refused until it is checked again
    path.write_bytes(syncnet_payload[:-10] + b"0123456789")
    assert [status for *_, status in models.state("syncnet", settings)] == ["changed"]
    with pytest.raises(models.ModelError, match="changed since it was verified"):
        models.require("syncnet", settings)


def test_wrong_file_is_rejected_and_nothing_is_left(server, tmp_path, monkeypatch):
    serve_syncnet(server, PAYLOAD, monkeypatch)            # a megabyte of bytes, not a state_dict
    settings = models.ModelSettings(dir=str(tmp_path))
    with pytest.raises(models.ModelError, match="is not a valid syncnet_v2.model"):
        models.download_model("syncnet", settings, progress=lambda line: None)
    assert list(tmp_path.iterdir()) == []


def test_pinned_hash_must_match(server, syncnet_payload, tmp_path, monkeypatch):
    serve_syncnet(server, syncnet_payload, monkeypatch)
    pinned = models.ModelSettings(dir=str(tmp_path), sha256={"syncnet_v2.model": "0" * 64})
    with pytest.raises(models.ModelError, match="not the pinned"):
        models.download_model("syncnet", pinned, progress=lambda line: None)
    assert not (tmp_path / "syncnet_v2.model").exists()
    good = hashlib.sha256(syncnet_payload).hexdigest()
    models.download_model("syncnet", models.ModelSettings(dir=str(tmp_path), sha256={"syncnet_v2.model": good}),
                          progress=lambda line: None)
    assert (tmp_path / "syncnet_v2.model").exists()


def test_unknown_model_name(capsys):
    assert main(["models", "download", "nonsense"]) == 2
    assert "unknown model 'nonsense'" in capsys.readouterr().err


def test_run_fetches_missing_weights_on_first_use(server, tmp_path, monkeypatch, capsys):
    """`curate run` with the fan backend fetches its weights before any work (here from a loopback server,
    serving stand-in weights of the official shapes) and verifies them."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("face_alignment")
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    for name, network in (("/s3fd-619a316812.pth", s3fd()), ("/2DFAN4-11f355bf06.pth.tar", FAN(4))):
        buffer = io.BytesIO()
        torch.save(network.state_dict(), buffer)
        server.files[name] = buffer.getvalue()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    files = [models.ModelFile(f.name, f"{base}/{f.name}", f.folder, f.verify) for f in models.MODELS["fan"][1]]
    monkeypatch.setitem(models.MODELS, "fan", (models.MODELS["fan"][0], files))
    (tmp_path / "raw").mkdir()
    config = tmp_path / "fan.yaml"
    config.write_text("run:\n  skip: [sync, quality]\nmodels:\n  dir: " + str(tmp_path / "models") +
                      "\nstages:\n  face:\n    backend: fan\n")
    assert main(["run", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "out"),
                 "--config", str(config), "--no-progress"]) == 0
    for file in files:
        assert file.path(None).read_bytes() == server.files["/" + file.name]
    assert "fan: fetching" in capsys.readouterr().err
    assert [status for *_, status in models.state("fan", models.ModelSettings(dir=str(tmp_path / "models")))] == ["ok", "ok"]


def test_a_file_copied_in_by_hand_is_verified_offline_by_download(syncnet_payload, tmp_path, monkeypatch, capsys):
    """The README's offline way: copy the file into the models folder, then `curate models download NAME`
    checks it without fetching anything (the location here is unreachable)."""
    file = models.MODELS["syncnet"][1][0]
    monkeypatch.setitem(models.MODELS, "syncnet", (models.MODELS["syncnet"][0],
                                                   [models.ModelFile(file.name, "http://127.0.0.1:9/x", file.folder,
                                                                     file.verify)]))
    monkeypatch.setenv("CURATE_MODELS_DIR", str(tmp_path))
    (tmp_path / "syncnet_v2.model").write_bytes(syncnet_payload)
    assert main(["models", "download", "syncnet"]) == 0
    assert f"syncnet: {tmp_path / 'syncnet_v2.model'} ok" in capsys.readouterr().out
    assert [status for *_, status in models.state("syncnet", models.ModelSettings())] == ["ok"]
    # a wrong file copied in is refused with the reason, in one line
    (tmp_path / "syncnet_v2.model").write_bytes(b"not a model")
    assert main(["models", "download", "syncnet"]) == 2
    assert "is not a valid syncnet_v2.model" in capsys.readouterr().err

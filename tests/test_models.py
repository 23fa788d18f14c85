"""Fetching model files, against a server on loopback: resume after a cut, nothing half-done left in place."""

import http.server
import threading

import pytest

from curate import models
from curate.cli import main

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Server(http.server.ThreadingHTTPServer):
    cut_after: int | None = None      # drop the connection after this many bytes of the body, once
    honour_ranges = True


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        start = 0
        header = self.headers.get("Range")
        if header and self.server.honour_ranges:
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
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
    with pytest.raises(models.DownloadError, match="run the same command again"):
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
    with pytest.raises(models.DownloadError, match="failed"):
        models.download("http://127.0.0.1:9/nothing.pth", tmp_path / "x.pth", timeout=2)
    assert not (tmp_path / "x.pth").exists()


def test_models_list_shows_the_bundled_dlib_model(capsys):
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("dlib") and " ok " in line and "shape_predictor_68" in line for line in lines)
    assert any(line.startswith("fan") for line in lines)


def test_unknown_model_name(capsys):
    assert main(["models", "download", "nonsense"]) == 2
    assert "unknown model 'nonsense'" in capsys.readouterr().err


def test_run_fetches_missing_weights_on_first_use(server, tmp_path, monkeypatch, capsys):
    """`curate run` with the fan backend fetches its weights before any work (here from a loopback server)."""
    pytest.importorskip("face_alignment")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    files = [models.ModelFile(f.name, url(server), f.folder) for f in models.MODELS["fan"][1]]
    monkeypatch.setitem(models.MODELS, "fan", (models.MODELS["fan"][0], files))
    (tmp_path / "raw").mkdir()
    config = tmp_path / "fan.yaml"
    config.write_text("stages:\n  face:\n    backend: fan\n")
    assert main(["run", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "out"),
                 "--config", str(config), "--no-progress"]) == 0
    for file in files:
        assert file.path.read_bytes() == PAYLOAD
    assert "fan: fetching" in capsys.readouterr().err

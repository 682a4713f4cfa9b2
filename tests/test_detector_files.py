"""The YuNet file: found by name and content, downloaded once from a local HTTP server on 127.0.0.1, refused
when its size or SHA-256 is not the pinned one, never left half-written, and explained when offline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from yunet_fixtures import FileServer, pin_for, write_yunet_onnx

from lib_magicnaming.detector_files import (
    YUNET_2023MAR,
    PinnedFile,
    download_file,
    ensure_file,
    find_file,
)
from lib_magicnaming.errors import DetectorUnavailable
from lib_magicnaming.yunet_detector import YuNetDetector


@pytest.fixture()
def model_bytes(tmp_path) -> bytes:
    model = write_yunet_onnx(tmp_path / "source" / "tiny.onnx", [(100.0, 100.0, 200.0, 220.0, 0.9)])
    return model.read_bytes()


@pytest.fixture()
def server(model_bytes):
    served = FileServer(model_bytes)
    yield served
    served.close()


def pin(data: bytes, url: str) -> PinnedFile:
    return PinnedFile(name="face_detection_yunet_2023mar.onnx", size=len(data),
                      sha256=hashlib.sha256(data).hexdigest(), url=url, aliases=("yunet_2023mar.onnx",),
                      description="test model")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_the_pin_is_opencv_zoos_yunet_2023mar():
    assert YUNET_2023MAR.name == "face_detection_yunet_2023mar.onnx" and YUNET_2023MAR.size == 232589
    assert len(YUNET_2023MAR.sha256) == 64 and int(YUNET_2023MAR.sha256, 16)
    assert YUNET_2023MAR.url.startswith("https://github.com/opencv/opencv_zoo/raw/")
    assert YUNET_2023MAR.url.endswith("/models/face_detection_yunet/face_detection_yunet_2023mar.onnx")


def test_download_writes_the_checked_file_with_a_progress_line(tmp_path, server, model_bytes):
    folder = tmp_path / "detectors"
    seen = []
    path = download_file(pin(model_bytes, server.url()), folder, progress=lambda got, total: seen.append(got))
    assert path == folder / "face_detection_yunet_2023mar.onnx" and path.read_bytes() == model_bytes
    assert seen[0] == 0 and seen[-1] == len(model_bytes) and seen == sorted(seen)
    assert leftovers(folder) == ["face_detection_yunet_2023mar.onnx"]


def test_the_default_progress_line_goes_to_the_console(tmp_path, server, model_bytes, capsys):
    download_file(pin(model_bytes, server.url()), tmp_path)
    err = capsys.readouterr().err
    assert "\rMagicNaming: downloading face_detection_yunet_2023mar.onnx: 100%" in err and err.endswith("\n")


def test_a_file_with_another_hash_is_refused_and_not_kept(tmp_path, server, model_bytes):
    other = pin(model_bytes, server.url())
    other = PinnedFile(**{**other.__dict__, "sha256": "0" * 64})
    with pytest.raises(DetectorUnavailable, match=r"refused: its SHA-256 is [0-9a-f]{64}.*Nothing was saved"):
        download_file(other, tmp_path / "detectors")
    assert leftovers(tmp_path / "detectors") == []


@pytest.mark.parametrize(
    ("announce", "cut_after", "reason"),
    [
        (None, 1000, "the download stopped after 1,000 of"),  # the connection drops mid-file
        (10, None, "the server announced 10 bytes"),
    ],
)
def test_a_partial_file_is_never_left_under_the_final_name(tmp_path, server, model_bytes, announce, cut_after,
                                                           reason):
    server.announce, server.cut_after = announce, cut_after
    folder = tmp_path / "detectors"
    with pytest.raises(DetectorUnavailable) as info:
        download_file(pin(model_bytes, server.url()), folder)
    assert reason in str(info.value) or "could not be downloaded" in str(info.value)
    assert leftovers(folder) == []  # neither the final name nor a temp file


def test_more_bytes_than_pinned_are_refused(tmp_path, server, model_bytes):
    server.body = model_bytes + b"x" * 10
    server.announce = "omit"  # no Content-Length to check first: the reading itself must stop
    with pytest.raises(DetectorUnavailable, match="more than"):
        download_file(pin(model_bytes, server.url()), tmp_path / "detectors")
    assert leftovers(tmp_path / "detectors") == []


def test_offline_names_the_file_the_address_and_the_folder(tmp_path, model_bytes):
    with socket_closed_port() as port:
        url = f"http://127.0.0.1:{port}/yunet.onnx"
        with pytest.raises(DetectorUnavailable) as info:
            ensure_file(pin(model_bytes, url), tmp_path / "detectors", allow_download=True, timeout=5)
    message = str(info.value)
    assert "face_detection_yunet_2023mar.onnx" in message and "could not be downloaded" in message
    assert f"Download it from {url} and put it in {tmp_path / 'detectors'}" in message
    assert leftovers(tmp_path / "detectors") == []


def test_a_missing_page_is_explained_too(tmp_path, server, model_bytes):
    with pytest.raises(DetectorUnavailable, match="HTTP Error 404"):
        download_file(pin(model_bytes, server.url("/gone.onnx")), tmp_path)


def test_a_present_file_is_used_without_the_network_even_under_another_name(tmp_path, server, model_bytes):
    folder = tmp_path / "detectors"
    folder.mkdir()
    (folder / "yunet_2023mar.onnx").write_bytes(model_bytes)
    path = ensure_file(pin(model_bytes, server.url()), folder, allow_download=True)
    assert path.name == "yunet_2023mar.onnx" and server.requests == 0


def test_a_damaged_file_under_the_name_is_skipped_and_replaced(tmp_path, server, model_bytes, caplog):
    folder = tmp_path / "detectors"
    folder.mkdir()
    (folder / "face_detection_yunet_2023mar.onnx").write_bytes(model_bytes[:500])
    spec = pin(model_bytes, server.url())
    assert find_file(spec, folder) is None
    assert "is not face_detection_yunet_2023mar.onnx" in caplog.text
    assert ensure_file(spec, folder, allow_download=True).read_bytes() == model_bytes
    assert server.requests == 1


def test_downloading_off_says_so(tmp_path, server, model_bytes):
    with pytest.raises(DetectorUnavailable, match="is not there and downloading it is off"):
        ensure_file(pin(model_bytes, server.url()), tmp_path, allow_download=False)
    assert server.requests == 0


def test_the_detector_downloads_once_on_first_detection_and_not_before(tmp_path, server, model_bytes):
    from PIL import Image

    detector = YuNetDetector(tmp_path / "detectors", spec=pin(model_bytes, server.url()))
    assert "downloaded into" in detector.describe() and server.requests == 0
    faces = detector.detect(Image.new("RGB", (320, 320)))
    assert server.requests == 1 and len(faces) == 1
    again = YuNetDetector(tmp_path / "detectors", spec=pin(model_bytes, server.url()))
    again.load()
    assert server.requests == 1 and again.describe().startswith("yunet-2023mar on OpenCV")


def test_a_failed_download_is_not_retried_at_every_photo(tmp_path, model_bytes):
    with socket_closed_port() as port:
        detector = YuNetDetector(tmp_path, spec=pin(model_bytes, f"http://127.0.0.1:{port}/y"))
        with pytest.raises(DetectorUnavailable) as first:
            detector.load()
    server = FileServer(model_bytes)  # the network is back, but the detector waits before trying again
    try:
        detector.spec = pin(model_bytes, server.url())
        with pytest.raises(DetectorUnavailable) as second:
            detector.load()
        assert str(second.value) == str(first.value) and server.requests == 0
        (tmp_path / "face_detection_yunet_2023mar.onnx").write_bytes(model_bytes)  # put there by hand
        assert detector.load().provider is not None and server.requests == 0
    finally:
        server.close()


class socket_closed_port:  # noqa: N801 - used as a context manager
    """A loopback port with nothing listening (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        return self.port

    def __exit__(self, *exc) -> None:
        return None


def test_pin_for_matches_the_tiny_model(tmp_path):
    model = write_yunet_onnx(tmp_path / "m.onnx", [])
    spec = pin_for(model)
    assert spec.size == model.stat().st_size and spec.name == YUNET_2023MAR.name

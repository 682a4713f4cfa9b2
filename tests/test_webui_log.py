"""The adapter's one logger: printed the WebUI's way, once, and told about everything the adapter skips."""

from __future__ import annotations

import importlib.util
import logging
import re

import pytest
from PIL import Image
from webuiapp_doubles import make_services, random_identity

from lib_magicnaming.errors import IdentityError, MagicNamingError
from lib_magicnaming.identity_library import IdentityLibrary
from lib_magicnaming.webui import log
from lib_magicnaming.webui.tab_actions import TabActions

pytest_plugins = ["webui_standin", "webui_standin.extension"]  # fixtures: webui, magicnaming

# modules/logging_config.py (v1.10.1): '%(asctime)s %(levelname)s [%(name)s] %(message)s', '%Y-%m-%d %H:%M:%S'
WEBUI_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?P<level>[A-Z]+) \[magicnaming\] (?P<message>.*)$")


def bare_root(monkeypatch):
    """The root logger as the WebUI leaves it without --loglevel: no handler. Called inside the test: pytest
    adds its capturing handler to the root logger once the test body starts."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    log.install_console_handler()


def test_one_console_handler_however_often_the_scripts_load():
    log.install_console_handler()
    log.install_console_handler()
    spec = importlib.util.spec_from_file_location("magicnaming_log_reimported", log.__file__)
    reimported = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reimported)  # a script reload may import the package again
    reimported.install_console_handler()
    names = [handler.get_name() for handler in logging.getLogger("magicnaming").handlers]
    assert names.count(log.CONSOLE_HANDLER_NAME) == 1 and log.logger is logging.getLogger("magicnaming")


def test_without_a_root_handler_records_print_in_the_webuis_format(monkeypatch, capsys):
    bare_root(monkeypatch)
    log.log_skipped("left 'ada' out", IdentityError("the file is damaged"))
    (line,) = capsys.readouterr().err.splitlines()
    match = WEBUI_LINE.match(line)
    assert match and match["level"] == "WARNING" and match["message"] == "left 'ada' out: the file is damaged"


def test_an_unexpected_error_is_logged_with_its_traceback(monkeypatch, capsys):
    bare_root(monkeypatch)
    try:
        raise RuntimeError("a bug")
    except RuntimeError as error:
        log.log_skipped("cannot list", error)
    lines = capsys.readouterr().err.splitlines()
    assert WEBUI_LINE.match(lines[0])["message"] == "cannot list: a bug"
    assert lines[1] == "Traceback (most recent call last):" and lines[-1] == "RuntimeError: a bug"


def test_with_the_webuis_root_handler_records_go_there_and_print_once(monkeypatch, capsys):
    """--loglevel: modules/logging_config.py put a handler on the root logger; ours steps aside."""
    received = []

    class RootHandler(logging.Handler):
        def emit(self, record):
            received.append(record)

    monkeypatch.setattr(logging.getLogger(), "handlers", [RootHandler()])
    log.install_console_handler()
    log.log_skipped("left 'ada' out", IdentityError("damaged"))
    assert capsys.readouterr().err == ""
    assert [(r.name, r.levelname, r.getMessage()) for r in received] == [
        ("magicnaming", "WARNING", "left 'ada' out: damaged")
    ]


def test_the_accordion_logs_a_library_it_cannot_read(magicnaming, monkeypatch, caplog):
    from lib_magicnaming.webui import services, setup

    def broken(settings=None):
        raise PermissionError("the identities folder is not readable")

    monkeypatch.setattr(services, "identity_library", broken)
    with caplog.at_level(logging.WARNING, logger="magicnaming"):
        assert setup.saved_identity_names() == []
    (record,) = [r for r in caplog.records if r.name == "magicnaming"]
    assert "cannot list the saved identities" in record.getMessage() and "not readable" in record.getMessage()


def test_the_tab_logs_an_identity_it_leaves_out_of_the_gallery(tmp_path, monkeypatch, caplog):
    library = IdentityLibrary(tmp_path / "identities")
    library.save(random_identity("ada", 1, Image.new("RGB", (8, 8))))
    library.save(random_identity("bob", 2))

    def unreadable(name):
        raise IdentityError(f"the file of {name} is damaged")

    monkeypatch.setattr(library, "load", unreadable)
    services, _calls, _lock = make_services(library)
    with caplog.at_level(logging.WARNING, logger="magicnaming"):
        gallery, rows, names = TabActions(services).library_view()
    assert names == ["ada", "bob"] and [caption for _, caption in gallery] == [f"bob [{rows[1][1]}]"]
    (record,) = [r for r in caplog.records if r.name == "magicnaming"]
    assert record.getMessage() == "left 'ada' out of the tab's gallery: the file of ada is damaged"


def test_a_generation_stopped_by_a_bug_logs_the_traceback(magicnaming, monkeypatch, caplog):
    def crash(photos, **kwargs):
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(magicnaming.encoder, "encode_photos", crash)
    face = Image.new("RGB", (32, 32), (200, 150, 120))
    with caplog.at_level(logging.ERROR, logger="magicnaming"):
        with pytest.raises(MagicNamingError, match="crashed"):
            magicnaming.run("<name:face> at the beach", args=(True, "prepend", 1.0, face))
    (record,) = [r for r in caplog.records if r.name == "magicnaming"]
    assert record.levelname == "ERROR" and record.exc_info[1].args == ("encoder crashed",)

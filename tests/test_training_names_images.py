"""Stages ``names`` and ``images`` on tiny tables and folders, including malformed inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from training.cli import main
from training.common import SkipReport, TrainingError, read_table
from training.images import index_folder
from training.names import clean_name, extract_names, match_names, name_key, names_in_caption

CAPTIONS = [
    "Tom Hanks at the premiere of his new film in Los Angeles",
    "TOM HANKS smiling",  # all capitals: not matched by the heuristic
    "Photo of Tom Hanks's wife Rita Wilson",
    "Beyoncé performs at the Super Bowl Halftime Show Stage Tonight",
    "beyonce? no: Beyonce Knowles and Beyoncé Knowles, the same person",
    "Ludwig van Beethoven portrait",
    "a cat on a sofa",
]


def test_heuristic_finds_capitalised_runs_and_skips_titles():
    assert names_in_caption(CAPTIONS[0]) == ["Tom Hanks"]
    assert names_in_caption(CAPTIONS[2]) == ["Tom Hanks", "Rita Wilson"]
    assert names_in_caption(CAPTIONS[5]) == ["Ludwig van Beethoven"]
    assert names_in_caption(CAPTIONS[6]) == []
    assert "Super Bowl Halftime Show Stage Tonight" not in names_in_caption(CAPTIONS[3])


def test_spellings_merge_on_case_diacritics_possessives_and_whitespace():
    assert name_key("Beyoncé  Knowles's") == name_key("beyonce knowles") == "beyonce knowles"
    assert clean_name("Tom (actor) Hanks") == "Tom actor Hanks"
    table = extract_names(CAPTIONS)
    row = table[table["name"].map(name_key) == "beyonce knowles"].iloc[0]
    assert row["count"] == 1  # one caption, two spellings: counted once
    assert set(row["variants"].split("|")) == {"Beyonce Knowles", "Beyoncé Knowles"}
    assert table.set_index("name").loc["Tom Hanks", "count"] == 2


def test_match_mode_counts_known_names_whatever_the_spelling():
    table = match_names(CAPTIONS, ["Tom Hanks", "Beyonce Knowles", "Nobody Here"])
    counts = dict(zip(table["name"], table["count"], strict=False))
    assert counts == {"Tom Hanks": 3, "Beyonce Knowles": 1}
    assert match_names(["Tom Hanksworth and Atom Hanks"], ["Tom Hanks"]).empty, "whole words only"


def test_names_stage_from_parquet(tmp_path):
    pd.DataFrame(
        {"url": ["http://x/1"] * len(CAPTIONS) + ["http://x/2"], "caption": CAPTIONS + [""]}
    ).to_parquet(tmp_path / "laion.parquet")
    out = tmp_path / "names.csv"
    assert main(["names", "--captions", str(tmp_path / "laion.parquet"), "--out", str(out)]) == 0
    table = read_table(out, "names", columns=("name", "count", "variants"))
    assert "Tom Hanks" in set(table["name"])
    skipped = json.loads((tmp_path / "names.csv.skipped.json").read_text())
    assert skipped["count"] == 1 and "empty or missing caption" in skipped["skipped"][0]["reason"]


def test_missing_caption_column_is_a_clear_error(tmp_path, capsys):
    pd.DataFrame({"url": ["u"], "text": ["Tom Hanks"]}).to_parquet(tmp_path / "bad.parquet")
    code = main(["names", "--captions", str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "n.csv")])
    assert code == 2
    assert "lacks the column(s) caption; it has: url, text" in capsys.readouterr().err


def test_names_stage_from_a_plain_list(tmp_path):
    (tmp_path / "list.txt").write_text("Ada Lovelace\n# a comment\n\nada lovelace\n()\nAlan Turing\n")
    out = tmp_path / "names.parquet"
    assert main(["names", "--list", str(tmp_path / "list.txt"), "--out", str(out)]) == 0
    table = read_table(out, "names")
    assert dict(zip(table["name"], table["count"], strict=False)) == {"Ada Lovelace": 2, "Alan Turing": 1}
    assert json.loads((tmp_path / "names.parquet.skipped.json").read_text())["count"] == 1


def _folder(tmp_path):
    root = tmp_path / "root"
    for name, files in {
        "Ada_Lovelace": ["a.jpg", "b.png", "notes.txt"],
        "Alan Turing": ["c.jpeg"],
        "Empty Person": [],
    }.items():
        (root / name).mkdir(parents=True)
        for f in files:
            (root / name / f).write_bytes(b"x")
    return root


def test_index_folder_reports_empty_folders_other_files_and_names_without_images(tmp_path):
    report = SkipReport("images")
    table = index_folder(_folder(tmp_path), report, names=["Ada Lovelace", "Alan Turing", "Grace Hopper"])
    assert sorted(table["name"]) == ["Ada Lovelace", "Ada Lovelace", "Alan Turing"]
    assert table["image_id"].is_unique
    reasons = {s["item"].split("/")[-1]: s["reason"] for s in report.skipped}
    assert reasons["notes.txt"].startswith("not an image file suffix")
    assert reasons["Empty Person"] == "name not in the names table"
    assert reasons["Grace Hopper"] == "no images for this name"


def test_images_stage_cli(tmp_path):
    out = tmp_path / "images.csv"
    assert main(["images", "--folder", str(_folder(tmp_path)), "--out", str(out)]) == 0
    assert len(read_table(out, "images", columns=("image_id", "name", "path"))) == 3
    with pytest.raises(TrainingError, match="image folder not found"):
        index_folder(tmp_path / "missing", SkipReport("images"))


def test_download_and_generate_need_their_inputs(tmp_path, capsys):
    assert main(["images", "--generate", "--out", str(tmp_path / "i.csv")]) == 2
    assert "need --names" in capsys.readouterr().err


def test_optional_dependencies_missing_give_clear_errors(tmp_path, monkeypatch):
    """img2dataset and diffusers are imported only when used; blocked here so nothing can download."""
    from training.images import download_urls, generate_sdxl

    monkeypatch.setitem(__import__("sys").modules, "img2dataset", None)
    monkeypatch.setitem(__import__("sys").modules, "diffusers", None)
    pd.DataFrame({"url": ["http://example.invalid/a.jpg"], "caption": ["Ada Lovelace"]}).to_parquet(
        tmp_path / "urls.parquet"
    )
    with pytest.raises(TrainingError, match="optional dependency img2dataset: pip install img2dataset"):
        download_urls(tmp_path / "urls.parquet", tmp_path / "out")
    with pytest.raises(TrainingError, match="optional dependency diffusers"):
        generate_sdxl(
            ["Ada Lovelace"], tmp_path / "gen", model="m", per_name=1, prompt="{name}", seed=0, device="cpu"
        )


def test_downloaded_images_keep_captions_naming_exactly_one_known_name(tmp_path):
    from training.images import index_downloaded

    captions = {
        "000": "Beyoncé live on stage",  # a one-word name
        "001": "tom hanks, in lower case",
        "002": "Tom Hanks and Rita Wilson",  # two known names: ambiguous
        "003": "a cat on a sofa",
    }
    for stem, caption in captions.items():
        (tmp_path / f"{stem}.jpg").write_bytes(b"jpeg bytes")
        (tmp_path / f"{stem}.txt").write_text(caption)
    report = SkipReport("images")
    table = index_downloaded(tmp_path, ["Beyonce", "Tom Hanks", "Rita Wilson"], report)
    assert dict(zip(table["path"].map(lambda p: Path(p).stem), table["name"], strict=True)) == {
        "000": "Beyonce",
        "001": "Tom Hanks",
    }
    assert sorted(s["reason"] for s in report.skipped) == [
        "caption mentions 0 known names, need exactly 1",
        "caption mentions 2 known names, need exactly 1",
    ]

"""The likeness stage's inputs, checked before any costly work: prompts, seeds, test people, refusals.

* Prompts file: one prompt per line with ``{}`` exactly once where the person goes; blank lines and lines
  starting with ``#`` are ignored; no WebUI prompt syntax (emphasis, prompt editing, BREAK, AND), because
  prompts are encoded as plain text, as names are in the targets stage.
* Seeds: ``0,1,2,3`` or a range ``0-3`` (or both, e.g. ``0-3,10``).
* Test people: ``ROOT/<Name>/*.jpg`` (.jpeg/.png/.webp too), indexed like the images stage's ``--folder``;
  the folder name is the person's name (underscores read as spaces). A person's real name is used in a
  prompt only when the folder name reads as a person's name by the names stage's heuristic (2-3 capitalised
  words), e.g. ``Ada_Lovelace`` but not ``person_07``.
* People the encoder was trained on are refused: with ``--training-run RUN`` the identities of its
  ``split.json`` training list (its validation identities are held out, so they may be tested); with only
  ``--targets FILE`` every name in it (any of them may have been trained on).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from training.common import SkipReport, TrainingError, read_json
from training.images import index_folder
from training.names import name_key, names_in_caption
from training.prompt_conditioning import PERSON_SLOT
from training.targets import load_targets, prompt_syntax_problem

DEFAULT_PROMPTS = Path(__file__).resolve().parent / "likeness_prompts.txt"
_SEED_PART_RE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")
MAX_SEEDS = 10_000


@dataclass(frozen=True)
class Person:
    """A test person: display name, folder name (the key of their files), reference photos, real name."""

    name: str
    folder: str
    photos: tuple[Path, ...]
    real_name: str | None


def read_prompts(path: str | Path) -> list[str]:
    """The prompt templates of a prompts file; every bad line is named in one error."""
    p = Path(path)
    if not p.is_file():
        raise TrainingError(f"prompts file not found: {p}")
    prompts, problems = [], []
    for number, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.count(PERSON_SLOT) != 1:
            problems.append(f"line {number} needs {PERSON_SLOT} exactly once, where the person goes")
        elif problem := prompt_syntax_problem(text.replace(PERSON_SLOT, "")):
            problems.append(f"line {number} {problem}; prompts are encoded as plain text")
        else:
            prompts.append(text)
    if problems:
        raise TrainingError(f"prompts file {p}: " + "; ".join(problems))
    if not prompts:
        raise TrainingError(f"prompts file {p} holds no prompt")
    return prompts


def prompt_key(prompt: str) -> str:
    """A short hash of a prompt template (generated files carry it, so an edited prompt is a new image)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8]


def parse_seeds(text: str) -> tuple[int, ...]:
    """``0,1,2`` / ``0-3`` / ``0-3,10`` -> the seeds in order, each once."""
    seeds: list[int] = []
    for part in str(text).split(","):
        match = _SEED_PART_RE.fullmatch(part)
        if match is None:
            raise TrainingError(
                f"seeds must be numbers or ranges like 0-3, separated by commas; got {text!r}"
            )
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first or last - first >= MAX_SEEDS:
            raise TrainingError(f"bad seed range {part.strip()!r}")
        seeds += [s for s in range(first, last + 1) if s not in seeds]
    if len(seeds) > MAX_SEEDS:
        raise TrainingError(f"at most {MAX_SEEDS} seeds")
    return tuple(seeds)


def real_name_of(name: str) -> str | None:
    """``name`` when it reads as a person's name (names stage heuristic), else None."""
    found = names_in_caption(name)
    return name if found == [name] else None


def discover_people(root: str | Path, report: SkipReport) -> list[Person]:
    """Every ``ROOT/<Name>/`` folder with images (others reported), sorted by folder name."""
    table = index_folder(root, report)
    people = []
    for name, group in table.groupby("name", sort=False):
        photos = tuple(sorted(Path(p) for p in group["path"]))
        people.append(Person(str(name), photos[0].parent.name, photos, real_name_of(str(name))))
    if not people:
        raise TrainingError(f"no test people in {root}: expected ROOT/<Name>/*.jpg; {report.summary()}")
    return sorted(people, key=lambda p: p.folder)


def trained_names(training_run: str | Path | None, targets: str | Path | None) -> tuple[set[str], str] | None:
    """(name keys the encoder may have been trained on, where they came from), or None when not given."""
    if training_run:
        split = read_json(Path(training_run) / "split.json", "training run split")
        if not isinstance(split.get("train"), list):
            raise TrainingError(f"{Path(training_run) / 'split.json'} has no 'train' list of identities")
        return {name_key(n) for n in split["train"]}, f"the training identities of {training_run}/split.json"
    if targets:
        names = load_targets(targets).names
        return {
            name_key(n) for n in names
        }, f"the targets file {targets} (pass --training-run to allow held-out ones)"
    return None


def refuse_trained_people(people: list[Person], trained: tuple[set[str], str] | None) -> None:
    """TrainingError naming every test person the encoder was (or may have been) trained on."""
    if trained is None:
        return
    keys, source = trained
    overlap = [p.name for p in people if name_key(p.name) in keys]
    if overlap:
        raise TrainingError(
            f"refusing {len(overlap)} test people the encoder was trained on ({', '.join(overlap[:10])}"
            f"{' ...' if len(overlap) > 10 else ''}): they are in {source}. Likeness must be measured on "
            "people the encoder never saw; remove them from the test folder"
        )

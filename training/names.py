"""Stage ``names``: person names from image captions (or a plain list), cleaned, merged and counted.

Extraction heuristic (documented, deliberately simple): a caption is split into words; a *name* is a run of
2 or 3 consecutive capitalised words (first letter upper-case, the rest lower-case letters, apostrophes or
hyphens; name particles such as "de", "van", "von" are allowed inside a run), after trimming stop-list words
("The", "Photo", "New", month names ...) from both ends. Longer runs (titles, headlines) are not names.
Alternatively ``--match`` takes a list of known names and counts the captions that mention each one.

Spellings merge on a key that folds case, whitespace, diacritics and possessives ("Beyoncé's" and
"beyonce" are one name); the table keeps the most frequent spelling. Characters the WebUI's prompt parser
would interpret (brackets, colons, angle brackets) never survive cleaning, so a name encodes as plain text.
"""

from __future__ import annotations

import argparse
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from training.common import SkipReport, TrainingError, read_table, write_table

URL_COLUMN = "url"
CAPTION_COLUMN = "caption"
MIN_WORDS, MAX_WORDS = 2, 3
PARTICLES = frozenset(
    {"de", "da", "di", "del", "della", "der", "den", "van", "von", "le", "la", "du", "dos", "bin"}
)
STOP_WORDS = frozenset(
    """the a an and or of in on at for with by from to as is are was be this that these those new old
    my our your his her their its photo photos image images picture pictures stock premium free
    vector illustration portrait closeup close up hd wallpaper wallpapers poster art background logo
    icon set collection best top great good happy merry christmas day night street city world north
    south east west united states kingdom university january february march april may june july
    august september october november december monday tuesday wednesday thursday friday saturday
    sunday mr mrs ms dr sir lady lord saint st los las san santa fort mount red blue green black
    white gold silver""".split()
)
_WORD_RE = re.compile(r"[^\W\d_](?:[^\W\d_]|['’\-.])*", re.UNICODE)
_POSSESSIVE_RE = re.compile(r"(?:'s|’s|'|’)$", re.IGNORECASE)
_KEEP_CHARS_RE = re.compile(r"[^\w\s'\-.]", re.UNICODE)


def strip_possessive(word: str) -> str:
    """``Hanks's`` -> ``Hanks``; ``Jones'`` -> ``Jones``."""
    return _POSSESSIVE_RE.sub("", word)


def clean_name(text: str) -> str:
    """A display spelling: NFC, prompt-syntax characters removed, possessive dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFC", text)
    text = _KEEP_CHARS_RE.sub(" ", text.replace("_", " "))
    words = [strip_possessive(w).strip(".-'’") for w in text.split()]
    return " ".join(w for w in words if w)


def name_key(text: str) -> str:
    """The merge key: the cleaned name with diacritics removed, lower-cased, single-spaced."""
    decomposed = unicodedata.normalize("NFKD", clean_name(text))
    ascii_like = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(ascii_like.casefold().split())


def _is_capitalised(word: str) -> bool:
    letters = [c for c in word if c.isalpha()]
    return len(letters) >= 2 and letters[0].isupper() and all(c.islower() for c in letters[1:])


def _trim_stop_words(run: list[str]) -> list[str]:
    while run and run[0].casefold() in STOP_WORDS:
        run = run[1:]
    while run and run[-1].casefold() in STOP_WORDS:
        run = run[:-1]
    return run


def _accept(run: list[str]) -> str | None:
    run = _trim_stop_words(run)
    capitalised = [w for w in run if w.casefold() not in PARTICLES]
    if not (MIN_WORDS <= len(capitalised) <= MAX_WORDS) or run[0].casefold() in PARTICLES:
        return None
    if any(w.casefold() in STOP_WORDS for w in run):
        return None
    return clean_name(" ".join(run)) or None


def names_in_caption(caption: str) -> list[str]:
    """Candidate person names in one caption, by the module's capitalised-run heuristic."""
    found: list[str] = []
    run: list[str] = []
    for word in [strip_possessive(w) for w in _WORD_RE.findall(caption)] + [""]:
        if _is_capitalised(word) or (run and word.casefold() in PARTICLES):
            run.append(word)
            continue
        while run and run[-1].casefold() in PARTICLES:
            run.pop()
        if run and (name := _accept(run)):
            found.append(name)
        run = []
    return found


def _count(spellings_per_caption: Iterable[list[str]]) -> pd.DataFrame:
    """Merge spellings by ``name_key`` and count captions per name (a caption counts a name once)."""
    counts: Counter[str] = Counter()
    spellings: dict[str, Counter[str]] = defaultdict(Counter)
    for names in spellings_per_caption:
        for spelling in names:
            spellings[name_key(spelling)][spelling] += 1
        counts.update({name_key(spelling) for spelling in names})
    rows = [
        {
            "name": spellings[key].most_common(1)[0][0],
            "count": count,
            "variants": "|".join(sorted(spellings[key])),
        }
        for key, count in counts.items()
    ]
    table = pd.DataFrame(rows, columns=["name", "count", "variants"])
    return table.sort_values(["count", "name"], ascending=[False, True], kind="stable").reset_index(drop=True)


def read_captions(path: str | Path, report: SkipReport) -> list[str]:
    """Captions of a LAION-style parquet/CSV with url and caption columns; empty captions are reported."""
    table = read_table(path, "caption table", columns=(URL_COLUMN, CAPTION_COLUMN))
    captions = []
    for row, caption in enumerate(table[CAPTION_COLUMN].tolist()):
        if not isinstance(caption, str) or not caption.strip():
            report.add(f"{path} row {row}", "empty or missing caption")
            continue
        captions.append(caption)
    return captions


def extract_names(captions: Iterable[str]) -> pd.DataFrame:
    """Names table (name, count, variants) from captions with the capitalised-run heuristic."""
    return _count(names_in_caption(c) for c in captions)


class NameMatcher:
    """Finds known names in captions: a name matches a run of whole words (diacritics/case-insensitive).

    Each caption is looked up word run by word run in a dict of the names, so the cost grows with the
    captions' length, not with captions x names (LAION scale: ~800k captions against ~42k names).
    """

    def __init__(self, known: Iterable[str]):
        self.spelling = {name_key(n): clean_name(n) for n in known if name_key(n)}
        self.longest = max((len(k.split()) for k in self.spelling), default=0)

    def keys_in(self, caption: str) -> set[str]:
        """The ``name_key`` of every known name the caption mentions."""
        words = name_key(caption).split()
        runs = {
            " ".join(words[i : i + n]) for n in range(1, self.longest + 1) for i in range(len(words) - n + 1)
        }
        return runs & self.spelling.keys()


def match_names(captions: Iterable[str], known: Iterable[str]) -> pd.DataFrame:
    """Names table counting the captions that mention each known name (see :class:`NameMatcher`)."""
    matcher = NameMatcher(known)
    table = _count([matcher.spelling[k] for k in sorted(matcher.keys_in(c))] for c in captions)
    return table[table["count"] > 0].reset_index(drop=True)


def read_name_list(path: str | Path, report: SkipReport) -> pd.DataFrame:
    """A plain text list (one name a line; '#' comments) as a names table with count 1 per line."""
    p = Path(path)
    if not p.is_file():
        raise TrainingError(f"name list not found: {p}")
    names = []
    for number, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not clean_name(text):
            report.add(f"{p} line {number}", f"no name left after cleaning {text!r}")
            continue
        names.append([clean_name(text)])
    return _count(names)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of the ``names`` stage."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--captions", nargs="+", help="LAION-style parquet/CSV files with url and caption columns"
    )
    source.add_argument("--list", dest="name_list", help="plain text file, one name per line")
    parser.add_argument("--match", help="with --captions: count only these names (text file, one a line)")
    parser.add_argument("--min-count", type=int, default=1, help="drop names seen in fewer captions")
    parser.add_argument("--out", required=True, help="names table to write (.csv or .parquet)")


def run(args: argparse.Namespace) -> pd.DataFrame:
    """Run the ``names`` stage from parsed arguments; writes the table and <out>.skipped.json."""
    report = SkipReport("names")
    if args.name_list:
        table = read_name_list(args.name_list, report)
    else:
        captions = [c for path in args.captions for c in read_captions(path, report)]
        if args.match:
            known = read_name_list(args.match, report)["name"].tolist()
            table = match_names(captions, known)
        else:
            table = extract_names(captions)
    table = table[table["count"] >= args.min_count].reset_index(drop=True)
    if table.empty:
        raise TrainingError("no names found: check the captions or the name list")
    write_table(args.out, table)
    report.write(f"{args.out}.skipped.json")
    print(f"names: {len(table)} names -> {args.out}; {report.summary()}")
    return table

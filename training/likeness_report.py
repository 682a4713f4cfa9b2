"""The likeness stage's results: per-image records summed up per row, per person and overall, as
``likeness.json``, the Markdown table ``likeness.md`` (method rows x metric columns, like the peers' papers)
and a contact sheet per person (references, then each method's images)."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from lib_magicnaming.atomic import write_atomic, write_bytes_atomic
from training.common import write_json

ROWS = {
    "identity": "identity (prepend)",
    "identity_in_place": "identity (in place)",
    "no_identity": "no identity (lower bound)",
    "real_name": "real name in the prompt (SDXL's own likeness)",
    "references": "references vs each other (ceiling)",
}
"""Method rows in table order: key -> label."""
PEOPLE_FOLDER = "people"
"""Each rank writes ``people/<folder>.json`` for its people; rank 0 sums them up."""
SHEETS_FOLDER = "sheets"
REPORT_FORMAT = "magicnaming-likeness"
REPORT_VERSION = 1
THUMB = 128
LABEL_WIDTH = 220


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _std(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarise(records: list[dict]) -> dict:
    """face_sim (mean, std over images with a face), clip_t (mean), faces_found, images, no_face."""
    sims = [r["face_sim"] for r in records if r["face_found"] and r.get("face_sim") is not None]
    clip = [r["clip_t"] for r in records if r.get("clip_t") is not None]
    found = sum(1 for r in records if r["face_found"])
    return {
        "face_sim": _mean(sims),
        "face_sim_std": _std(sims),
        "clip_t": _mean(clip),
        "faces_found": found,
        "images": len(records),
        "no_face": len(records) - found,
    }


def person_rows(records: list[dict]) -> dict[str, dict]:
    """{row: summary} of one person's (or everyone's) records, rows in table order."""
    return {
        row: summarise([r for r in records if r["row"] == row])
        for row in ROWS
        if any(r["row"] == row for r in records)
    }


def overall(people: dict[str, dict]) -> dict:
    """Every row pooled over all people's images, and the no-face counts per person and overall."""
    records = [r for person in people.values() for r in person["images"] + person["references"]["records"]]
    rows = person_rows(records)
    no_face = {name: sum(1 for r in p["images"] if not r["face_found"]) for name, p in people.items()}
    return {"rows": rows, "no_face": {"overall": sum(no_face.values()), "per_person": no_face}}


def _count(number: int, word: str, plural: str | None = None) -> str:
    return f"{number} {word if number == 1 else plural or word + 's'}"


def _cell(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(rows: dict[str, dict], lead: list[str] | None = None) -> list[str]:
    lines = []
    for row, s in rows.items():
        cells = (lead or []) + [
            ROWS[row],
            _cell(s["face_sim"], 3),
            _cell(s["clip_t"], 1),
            f"{s['faces_found']}/{s['images']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    """likeness.md: the overall table, how it was measured, the per-person table, images without a face."""
    protocol = report["protocol"]
    lines = [
        f"# Likeness: {protocol['encoder']} ({protocol['encoder_hash']})",
        "",
        f"{_count(len(report['people']), 'person', 'people')}, "
        f"{_count(len(protocol['prompts']), 'prompt')} x {_count(len(protocol['seeds']), 'seed')}; "
        f"SDXL {protocol['sdxl']}; {protocol['steps']} steps, CFG {protocol['cfg_scale']}, "
        f"{protocol['width']} x {protocol['height']}, {protocol['sampler']}.",
        "",
        "| Method | Face sim ↑ | CLIP-T ↑ | Faces found |",
        "|---|---|---|---|",
        *_table(report["rows"]),
        "",
        f"Face sim: cosine of {protocol['face_model']} embeddings of each generated face and the normalised "
        "mean of the person's reference faces, averaged over images where a face was found (the references "
        "row: each reference against the mean of the others). CLIP-T: 100 x max(cos, 0) of "
        f"{protocol['clip_model']} image and prompt embeddings; the prompt without the identity. "
        "Faces found: images where the detector found a face / images.",
        "",
        "## Per person",
        "",
        "| Person | Method | Face sim ↑ | CLIP-T ↑ | Faces found |",
        "|---|---|---|---|---|",
    ]
    for name, person in report["people"].items():
        lines += _table(person["rows"], [name])
    missing = [
        (name, r["file"]) for name, p in report["people"].items() for r in p["images"] if not r["face_found"]
    ]
    lines += ["", f"## Images without a face ({len(missing)})", ""]
    lines += [f"- {name}: {file}" for name, file in missing] or ["none"]
    if report.get("skipped"):
        lines += ["", "## Skipped", ""] + [f"- {s['item']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    """likeness.json and likeness.md, atomically."""
    write_json(out / "likeness.json", report)
    write_bytes_atomic(out / "likeness.md", markdown(report).encode("utf-8"))


def _thumb(image: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (THUMB, THUMB), (255, 255, 255))
    fitted = ImageOps.contain(image.convert("RGB"), (THUMB, THUMB), Image.BICUBIC)
    canvas.paste(fitted, ((THUMB - fitted.width) // 2, (THUMB - fitted.height) // 2))
    return canvas


def contact_sheet(rows: list[tuple[str, list[Image.Image]]], columns: int) -> Image.Image:
    """A grid: one labelled line per (label, images), at most ``columns`` thumbnails each."""
    width = LABEL_WIDTH + columns * THUMB
    sheet = Image.new("RGB", (width, max(1, len(rows)) * THUMB), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for line, (label, images) in enumerate(rows):
        top = line * THUMB
        draw.text((6, top + 6), label, fill=(0, 0, 0))
        for column, image in enumerate(images[:columns]):
            sheet.paste(_thumb(image), (LABEL_WIDTH + column * THUMB, top))
    return sheet


def write_contact_sheet(path: Path, rows: list[tuple[str, list[Path]]], columns: int) -> Path:
    """Open the images of each row and write their contact sheet as PNG."""
    opened = []
    for label, files in rows:
        images = []
        for file in files[:columns]:
            with Image.open(file) as image:
                images.append(image.convert("RGB"))
        opened.append((label, images))
    sheet = contact_sheet(opened, columns)
    return write_atomic(path, lambda temp: sheet.save(temp, format="PNG"))

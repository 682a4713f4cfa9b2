"""Stage ``images``: the image-name pairs, from one of three sources, as an images table.

* ``--folder ROOT``: index a folder laid out as ``ROOT/<Name>/*.jpg`` (also .jpeg/.png/.webp). The folder
  name is the identity's name (underscores read as spaces).
* ``--download PARQUET --names NAMES``: download a LAION-style URL list with img2dataset (optional
  dependency: ``pip install img2dataset``), then keep each image whose caption mentions exactly one name
  of the names table.
* ``--generate --names NAMES --sdxl MODEL``: draw N images per name with a diffusers SDXL pipeline (optional
  dependency: ``pip install diffusers transformers accelerate``), the paper's cheaper synthetic variant,
  into ``ROOT/<Name>/*.jpg``, then index that folder.

Output: a table with columns image_id, name, path. Names of the names table with no image, empty folders
and files that are not images by their suffix are listed in ``<out>.skipped.json``.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pandas as pd

from training.common import SkipReport, TrainingError, read_table, write_table
from training.names import NameMatcher, clean_name, name_key

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
IMAGES_COLUMNS = ["image_id", "name", "path"]


def image_id(path: Path) -> str:
    """A stable id for an image file: a short hash of its path relative to the indexed root."""
    return hashlib.sha256(path.as_posix().encode("utf-8")).hexdigest()[:16]


def index_folder(root: str | Path, report: SkipReport, names: list[str] | None = None) -> pd.DataFrame:
    """Index ``root/<Name>/*`` into an images table; with ``names``, only those (others reported)."""
    base = Path(root)
    if not base.is_dir():
        raise TrainingError(f"image folder not found: {base}")
    wanted = {name_key(n): n for n in names} if names is not None else None
    seen_keys: set[str] = set()
    rows = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        name = clean_name(folder.name)
        if not name:
            report.add(str(folder), "folder name holds no usable name")
            continue
        if wanted is not None:
            if name_key(name) not in wanted:
                report.add(str(folder), "name not in the names table")
                continue
            name = wanted[name_key(name)]
        files = sorted(p for p in folder.iterdir() if p.is_file())
        for f in files:
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                report.add(str(f), f"not an image file suffix ({f.suffix or 'none'})")
        images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            report.add(str(folder), "no images")
            continue
        seen_keys.add(name_key(name))
        rows += [{"image_id": image_id(f.relative_to(base)), "name": name, "path": str(f)} for f in images]
    if wanted is not None:
        for key, name in wanted.items():
            if key not in seen_keys:
                report.add(name, "no images for this name")
    return pd.DataFrame(rows, columns=IMAGES_COLUMNS)


def index_downloaded(folder: str | Path, names: list[str], report: SkipReport) -> pd.DataFrame:
    """Index img2dataset output (jpg + txt caption): each image to the one name it mentions."""
    base = Path(folder)
    wanted = {name_key(n): n for n in names}
    matcher = NameMatcher(names)
    rows = []
    for image in sorted(base.rglob("*.jpg")):
        caption_file = image.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8", errors="replace") if caption_file.is_file() else ""
        mentioned = matcher.keys_in(caption) & wanted.keys()
        if len(mentioned) != 1:
            report.add(str(image), f"caption mentions {len(mentioned)} known names, need exactly 1")
            continue
        name = wanted[mentioned.pop()]
        rows.append({"image_id": image_id(image.relative_to(base)), "name": name, "path": str(image)})
    return pd.DataFrame(rows, columns=IMAGES_COLUMNS)


def download_urls(
    url_table: str | Path, out_folder: str | Path, *, processes: int = 8, image_size: int = 512
) -> Path:
    """Download a url+caption parquet with img2dataset into ``out_folder`` (files format, captions beside)."""
    try:
        import img2dataset
    except ImportError as exc:
        raise TrainingError(
            "downloading needs the optional dependency img2dataset: pip install img2dataset"
        ) from exc
    read_table(url_table, "URL list", columns=("url", "caption"))
    img2dataset.download(
        url_list=str(url_table),
        input_format="parquet" if str(url_table).endswith(".parquet") else "csv",
        url_col="url",
        caption_col="caption",
        output_format="files",
        output_folder=str(out_folder),
        processes_count=processes,
        image_size=image_size,
        resize_mode="keep_ratio",
    )
    return Path(out_folder)


def generate_sdxl(
    names: list[str],
    out_folder: str | Path,
    *,
    model: str,
    per_name: int,
    prompt: str,
    seed: int,
    device: str,
) -> Path:
    """Draw ``per_name`` images of each name with a diffusers SDXL pipeline into ``out_folder/<Name>/``."""
    try:
        import torch
        from diffusers import StableDiffusionXLPipeline
    except ImportError as exc:
        raise TrainingError(
            "generating needs the optional dependency diffusers: "
            "pip install diffusers transformers accelerate"
        ) from exc
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    if model.endswith(".safetensors"):
        pipe = StableDiffusionXLPipeline.from_single_file(model, torch_dtype=dtype)
    else:
        pipe = StableDiffusionXLPipeline.from_pretrained(model, torch_dtype=dtype)
    pipe = pipe.to(device)
    for number, name in enumerate(names):
        folder = Path(out_folder) / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_name):
            target = folder / f"{i:04d}.jpg"
            if target.exists():
                continue
            generator = torch.Generator(device).manual_seed(seed + number * per_name + i)
            image = pipe(prompt.format(name=name), generator=generator).images[0]
            image.save(target, quality=95)
    return Path(out_folder)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of the ``images`` stage."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", help="index ROOT/<Name>/*.jpg")
    source.add_argument("--download", metavar="PARQUET", help="url+caption list to fetch with img2dataset")
    source.add_argument("--generate", action="store_true", help="draw images per name with SDXL (diffusers)")
    parser.add_argument("--names", help="names table from the names stage (needed for --download/--generate)")
    parser.add_argument("--root", help="where downloaded/generated images go")
    parser.add_argument("--sdxl", help="--generate: diffusers model id/folder or a single .safetensors file")
    parser.add_argument("--per-name", type=int, default=4, help="--generate: images per name")
    parser.add_argument("--prompt", default="a photo of {name}, portrait, face", help="--generate: prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--processes", type=int, default=8, help="--download: img2dataset processes")
    parser.add_argument("--out", required=True, help="images table to write (.csv or .parquet)")


def _names_from(args: argparse.Namespace) -> list[str] | None:
    if not args.names:
        return None
    return read_table(args.names, "names table", columns=("name",))["name"].astype(str).tolist()


def run(args: argparse.Namespace) -> pd.DataFrame:
    """Run the ``images`` stage; writes the images table and <out>.skipped.json."""
    report = SkipReport("images")
    names = _names_from(args)
    if (args.download or args.generate) and (names is None or not args.root):
        raise TrainingError("--download and --generate need --names (names table) and --root (output folder)")
    if args.download:
        download_urls(args.download, args.root, processes=args.processes)
        table = index_downloaded(args.root, names, report)
    elif args.generate:
        if not args.sdxl:
            raise TrainingError(
                "--generate needs --sdxl (a diffusers model id/folder or an SDXL .safetensors)"
            )
        generate_sdxl(
            names,
            args.root,
            model=args.sdxl,
            per_name=args.per_name,
            prompt=args.prompt,
            seed=args.seed,
            device=args.device,
        )
        table = index_folder(args.root, report, names)
    else:
        table = index_folder(args.folder, report, names)
    if table.empty:
        raise TrainingError(f"no images indexed; {report.summary()}")
    write_table(args.out, table)
    report.write(f"{args.out}.skipped.json")
    print(f"images: {len(table)} images of {table['name'].nunique()} names -> {args.out}; {report.summary()}")
    return table

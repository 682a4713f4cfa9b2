"""Benchmark the worst case the limits allow under the WebUI's queue lock, on this machine.

    python bench/queue_lock.py --part names --size real
    python bench/queue_lock.py --part photos

``names``: identities from names hold the queue lock for one name at a time while the loaded checkpoint's
SDXL text encoders run (lib_magicnaming/webui/use_cases.py), and every name fits one 77-token chunk
(``Limits.name_chunks``, counted before the lock by the WebUI's tokenizer, or by CLIP's own where that
cannot be reached), so the longest hold is one chunk; a request has at most ``Limits.names_per_identity``
names. Shown first: how many chunks the ``Limits.name_text_chars`` characters that tokenise worst would
make (all refused before the lock). Measured with SDXL's two text encoders built at their real size with
random weights (open_clip ViT-L/14 and ViT-bigG/14 text towers, float32, encoded the WebUI's way by
``training.text_encoders.SDXLTextEncoder``), or the tests' one-layer towers with ``--size tiny``.

``photos``: a photo request holds the lock once, while the towers run for all its face crops
(``bench/encode.py``: seconds per photo on CPU); decoding each photo (at most ``Limits.photo_pixels`` pixels
in at most ``Limits.photo_bytes``), face detection on a copy of at most 640 px and reading the encoder from
disk happen before the lock. This part measures decoding the largest photo the limits allow and shrinking it
for detection: time a request spends before it waits for the lock.

Prints one line per figure.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_magicnaming.constants import CLIP_G_WIDTH, CLIP_L_WIDTH  # noqa: E402
from lib_magicnaming.webui.limits import LIMITS, check_name_texts  # noqa: E402

WORST_NAME_CANDIDATES = {
    "ASCII letters": "a" * LIMITS.name_text_chars,
    "words of two letters": "ab " * (LIMITS.name_text_chars // 3),
    "4-byte characters (U+10000)": "\U00010000" * LIMITS.name_text_chars,
    "3-byte CJK characters": "\u9f98" * LIMITS.name_text_chars,
    "emoji": "\U0001f9ff" * LIMITS.name_text_chars,
}


def timed(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def names_part(size: str, repeats: int) -> None:
    from training.text_encoders import (
        SDXL_CLIP_G,
        SDXL_CLIP_L,
        SDXLTextEncoder,
        random_text_tower,
        tiny_spec,
        tokenize_line,
    )

    for label, text in WORST_NAME_CANDIDATES.items():
        check_name_texts([text])  # within the character limits
        count = len(tokenize_line(text))
        verdict = "allowed" if count <= LIMITS.name_chunks else "refused before the lock"
        print(f"name of {LIMITS.name_text_chars} {label}: {count} chunk(s), {verdict}")
    if size == "real":
        specs = [SDXL_CLIP_L, SDXL_CLIP_G]
    else:
        specs = [tiny_spec(SDXL_CLIP_L, width=CLIP_L_WIDTH, layers=1),
                 tiny_spec(SDXL_CLIP_G, width=CLIP_G_WIDTH, layers=1)]
    start = time.perf_counter()
    encoder = SDXLTextEncoder([(spec, random_text_tower(spec, seed)) for seed, spec in enumerate(specs)])
    print(f"text encoders built ({size}): {time.perf_counter() - start:.1f} s")
    longest_allowed = "a" * (LIMITS.name_text_chars - 1)  # one chunk, as every allowed name is
    encoder.encode([longest_allowed])  # warm-up
    hold = statistics.median(timed(lambda: encoder.encode([longest_allowed]), repeats))
    print(f"one name, {LIMITS.name_chunks} chunk (every allowed name): {hold:.2f} s median of {repeats} "
          "= the longest single hold of the queue lock")
    count = LIMITS.names_per_identity
    print(f"worst allowed request ({count} names): {hold * count:.1f} s in {count} holds of the lock")


def largest_photo() -> bytes:
    """A JPEG of about ``photo_pixels`` pixels that fits in ``photo_bytes``."""
    from PIL import Image

    side = int((LIMITS.photo_pixels * 3 / 2) ** 0.5)
    width, height = side, LIMITS.photo_pixels // side
    small = Image.effect_noise((width // 16, height // 16), 64).convert("RGB")
    image = small.resize((width, height), Image.Resampling.BILINEAR)
    for quality in (95, 90, 80, 70, 50):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        if buffer.tell() <= LIMITS.photo_bytes:
            return buffer.getvalue()
    raise SystemExit("could not make a photo within the size limit")


def photos_part(repeats: int) -> None:
    from PIL import Image

    from lib_magicnaming.face import load_image

    data = largest_photo()
    image = load_image(data)
    print(f"largest photo: {image.width} x {image.height} = {image.width * image.height:,} pixels, "
          f"{len(data) / (1 << 20):.1f} MiB JPEG")
    decode = statistics.median(timed(lambda: load_image(data), repeats))
    print(f"decode (load_image): {decode:.2f} s median of {repeats}")
    scale = 640 / max(image.size)
    target = (round(image.width * scale), round(image.height * scale))
    shrink = statistics.median(timed(lambda: image.resize(target, Image.Resampling.BILINEAR), repeats))
    print(f"shrink to 640 px for detection: {shrink:.3f} s median of {repeats}")
    per_photo = decode + shrink
    print(f"worst allowed request ({LIMITS.photos} such photos): {per_photo * LIMITS.photos:.1f} s of "
          "decoding before the lock; under it, the towers for every crop (bench/encode.py)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("names", "photos"), required=True)
    parser.add_argument("--size", choices=("real", "tiny"), default="real", help="text encoders (names)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    if args.part == "names":
        names_part(args.size, args.repeats)
    else:
        photos_part(args.repeats)


if __name__ == "__main__":
    main()

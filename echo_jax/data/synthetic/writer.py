"""Writing the benchmark to disk in the R2Gen layout, resumably and atomically.

Layout under `out_dir`:

  annotation.json   {"train": [...], "val": [...], "test": [...]}, entries
                    {"id", "report", "image_path": ["<id>/0.png", ...], "split"}
                    with image paths relative to out_dir/images
  images/<id>/0.png frontal view (8-bit grayscale), 1.png lateral when enabled
  labels.json       {id: {"labels": {14 CheXpert names: 0/1}, "attributes": {...}}}
  gallery.png       a few studies with their reports, for eyeballing
  manifest.json     generation parameters + counts; written last, so its
                    presence means the benchmark is complete

Every file is written to a temporary name and renamed into place, so an
interrupted run never leaves a half-written JSON or PNG. A rerun with the same
parameters returns immediately when manifest.json matches, and otherwise
reuses the PNGs an interrupted run already wrote (studies are deterministic).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

from echo_jax.data.synthetic.atomic_files import atomic_write_bytes, atomic_write_json
from echo_jax.data.synthetic.gallery import write_gallery
from echo_jax.data.synthetic.study import MIN_IMAGE_SIZE, SPLITS, generate_study, study_id

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_PARTIAL = ".generation.json"  # parameters of a run in progress


def _png_bytes(img: np.ndarray) -> bytes:
  from PIL import Image

  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def _params(num_studies: int, seed: int, lateral: bool, image_size: int) -> dict:
  return {
    "generator": "echo_jax.data.synthetic",
    "format_version": FORMAT_VERSION,
    "num_studies": num_studies,
    "seed": seed,
    "lateral": lateral,
    "image_size": image_size,
  }


def _read_json(path: Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def is_complete(
  out_dir: str | os.PathLike, num_studies: int, seed: int, lateral: bool, image_size: int
) -> bool:
  """True when out_dir holds a finished benchmark generated with these parameters."""
  out = Path(out_dir)
  manifest = _read_json(out / MANIFEST)
  if not manifest or manifest.get("params") != _params(num_studies, seed, lateral, image_size):
    return False
  return (out / "annotation.json").is_file() and (out / "labels.json").is_file()


def _make_one(job: tuple) -> dict:
  """Generates study `index`, writes its PNGs (unless reusable) and returns its record."""
  index, seed, lateral, image_size, images_dir, reuse = job
  n_views = 2 if lateral else 1
  folder = Path(images_dir) / study_id(index)
  names = [f"{v}.png" for v in range(n_views)]
  done = reuse and all((folder / n).is_file() for n in names)
  study = generate_study(index, seed, lateral=lateral, image_size=image_size, render=not done)
  if not done:
    folder.mkdir(parents=True, exist_ok=True)
    for name, img in zip(names, study.images):
      atomic_write_bytes(folder / name, _png_bytes(img))
  return {
    "index": index,
    "id": study.id,
    "report": study.report,
    "image_path": [f"{study.id}/{n}" for n in names],
    "split": study.split,
    "labels": study.labels,
    "attributes": study.attributes,
  }


def _default_workers() -> int:
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:
    return max(1, os.cpu_count() or 1)


def write_benchmark(
  out_dir: str | os.PathLike,
  num_studies: int,
  seed: int,
  lateral: bool = False,
  image_size: int = 224,
  workers: int | None = None,
  gallery: bool = True,
  force: bool = False,
  progress: bool = True,
) -> dict:
  """Generates `num_studies` studies into `out_dir`; returns a summary dict.

  Skips all work when `out_dir` already holds a complete benchmark with the
  same parameters (unless `force`). `workers` processes render in parallel
  (default: the CPUs this process may use; 1 = in this process).
  """
  if num_studies < 1:
    raise ValueError(f"num_studies must be >= 1, got {num_studies}")
  if image_size < MIN_IMAGE_SIZE:
    raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
  workers = _default_workers() if workers is None else workers
  if workers < 1:
    raise ValueError(f"workers must be >= 1, got {workers}")
  out = Path(out_dir)
  params = _params(num_studies, seed, lateral, image_size)
  if not force and is_complete(out, num_studies, seed, lateral, image_size):
    summary = dict(_read_json(out / MANIFEST)["summary"], skipped=True)
    if progress:
      print(f"[synthetic] {out} already complete with these parameters; skipping", file=sys.stderr)
    return summary

  start = time.time()
  images_dir = out / "images"
  images_dir.mkdir(parents=True, exist_ok=True)
  if (out / MANIFEST).exists():  # parameters change: the old benchmark is no longer valid
    (out / MANIFEST).unlink()
  reuse = not force and _read_json(out / _PARTIAL) == params
  atomic_write_json(out / _PARTIAL, params)

  jobs = [(i, seed, lateral, image_size, str(images_dir), reuse) for i in range(num_studies)]
  records: list[dict] = []
  step = max(1, num_studies // 10)

  def report(n: int) -> None:
    if progress and (n % step == 0 or n == num_studies):
      rate = n / max(time.time() - start, 1e-9)
      print(f"[synthetic] {n}/{num_studies} studies ({rate:.1f}/s)", file=sys.stderr, flush=True)

  if workers == 1:
    for job in jobs:
      records.append(_make_one(job))
      report(len(records))
  else:
    ctx = multiprocessing.get_context("spawn")  # safe even when the parent has started threads
    with ctx.Pool(workers) as pool:
      for rec in pool.imap_unordered(_make_one, jobs, chunksize=16):
        records.append(rec)
        report(len(records))
  records.sort(key=lambda r: r["index"])

  annotation: dict[str, list] = {s: [] for s in SPLITS}
  labels: dict[str, dict] = {}
  for r in records:
    annotation[r["split"]].append({k: r[k] for k in ("id", "report", "image_path", "split")})
    labels[r["id"]] = {"labels": r["labels"], "attributes": r["attributes"]}
  atomic_write_json(out / "annotation.json", annotation)
  atomic_write_json(out / "labels.json", labels)
  gallery_path = None
  if gallery:
    gallery_path = str(write_gallery(out, records))
  summary = {
    "out_dir": str(out),
    "num_studies": num_studies,
    "counts": {s: len(annotation[s]) for s in SPLITS},
    "positives": {k: sum(r["labels"][k] for r in records) for k in records[0]["labels"]},
    "seconds": round(time.time() - start, 2),
    "workers": workers,
    "gallery": gallery_path,
    "skipped": False,
  }
  atomic_write_json(out / MANIFEST, {"params": params, "summary": summary})
  (out / _PARTIAL).unlink(missing_ok=True)
  return summary

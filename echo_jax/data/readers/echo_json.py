"""Reader for the ECHO authors' normalized test files ("echo-json").

One JSON list per dataset and language (MIMIC-CXR, CheXpert Plus, ReXGradient; EN and
ZH), entries like

  {"sample_id": "c274b0b2...",
   "images": ["../CXRTest/mimic/files/p10/.../fd4126e5-....jpg", ...],
   "ground_truth": {"findings": "Thorax is symmetric ...", "impression": "ET tube ..."}}

Image paths are relative to the folder of the JSON file, and in the released layout
they climb out of it:

  ROOT/jsons/mimic_test_EN_for_infer_normalize_demo.json
  ROOT/CXRTest/mimic/files/...

so a path may use "..", but it must end inside the images root: by default the parent
of the JSON file's folder (ROOT above), or `images_root`. Anything else is refused
("path_escape"), as in every reader.

`root` is the JSON file itself, or a folder holding exactly one .json file (directly or
in its `jsons/` folder; pass `json_path` to choose). The files are test sets: every
study gets `split` (default "test") unless an entry names its own. An entry without
`ground_truth` (or with neither findings nor impression) is skipped with the reason
"missing_ground_truth"; missing or unreadable images skip the entry as in the other
readers. The text is whitespace-normalized only (Chinese text is kept as it is).
Study.meta holds the sample id and the file's language ("en"/"zh", from its name or, when
the name does not say, from its text).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from echo_jax.data.readers.common import (
  EntrySkip,
  check_sections,
  clean_text,
  finish,
  load_json,
  make_study,
  resolve_image,
)
from echo_jax.data.study import SkipLog, Study, normalize_split

_CJK = re.compile(r"[\u4e00-\u9fff]")
_LANG_IN_NAME = re.compile(r"(?:^|[_\-.])(EN|ZH)(?:[_\-.]|$)", re.IGNORECASE)


def find_json(root: str, json_path: str | None = None) -> str:
  """The test file: `json_path`, `root` itself, or the one .json under root (or root/jsons)."""
  if json_path:
    return json_path
  if os.path.isfile(root):
    return root
  for folder in (root, os.path.join(root, "jsons")):
    found = (
      sorted(f for f in os.listdir(folder) if f.endswith(".json")) if os.path.isdir(folder) else []
    )
    if len(found) == 1:
      return os.path.join(folder, found[0])
    if len(found) > 1:
      raise ValueError(
        f"{folder} holds {len(found)} .json files ({', '.join(found[:4])}...); pass the file "
        "itself as the dataset path (or json_path=...)"
      )
  raise ValueError(f"no .json test file in {root} or {os.path.join(root, 'jsons')}")


def _language(json_path: str, texts: Sequence[str]) -> str:
  named = _LANG_IN_NAME.search(os.path.basename(json_path))
  if named:
    return named.group(1).lower()
  joined = "".join(texts[:20])
  return "zh" if joined and len(_CJK.findall(joined)) > 0.1 * len(joined) else "en"


def read_echo_json(
  root: str,
  *,
  json_path: str | None = None,
  images_root: str | None = None,
  split: str = "test",
  splits: Sequence[str] | None = None,
  views: str | Sequence[str] | None = None,
  max_images: int | None = None,
  require: str = "any",
  check_files: bool = True,
  skips: SkipLog | None = None,
) -> list[Study]:
  """Read one of the authors' normalized test JSON files.

  Args:
    root: the JSON file, or a folder holding exactly one (directly or in jsons/).
    json_path: the JSON file, when root is a folder with several.
    images_root: where the images must lie (default: the parent of the JSON's folder).
    split: the split of entries that do not name one ("test": these are test sets).
    splits / views / max_images / require / check_files / skips: as in the other readers
      (the file has no view positions, so a view filter drops every image).
  """
  skips = skips if skips is not None else SkipLog("echo-json")
  if normalize_split(split) is None:
    raise ValueError(f"split={split!r} is not train/val/test")
  json_path = find_json(root, json_path)
  base = os.path.dirname(os.path.abspath(json_path))
  images_root = os.path.abspath(images_root or os.path.dirname(base))
  data = load_json(json_path, "ECHO test file")
  if not isinstance(data, list):
    raise ValueError(
      f"{json_path} must be a JSON list of {{sample_id, images, ground_truth}} entries, "
      f"got a {type(data).__name__}"
    )
  texts = [
    str((e.get("ground_truth") or {}).get("findings", ""))
    for e in data
    if isinstance(e, dict) and isinstance(e.get("ground_truth"), dict)
  ]
  lang = _language(json_path, texts)

  studies: list[Study] = []
  for n, entry in enumerate(data):
    study_id = f"entry {n}"
    try:
      if not isinstance(entry, dict):
        raise EntrySkip("missing_field", f"entry is a {type(entry).__name__}, not an object")
      if not isinstance(entry.get("sample_id"), (str, int)) or entry.get("sample_id") == "":
        raise EntrySkip("missing_field", "no 'sample_id'")
      study_id = str(entry["sample_id"])
      entry_split = entry.get("split") if isinstance(entry.get("split"), str) else split
      if splits is not None and normalize_split(entry_split) not in splits:
        continue
      truth = entry.get("ground_truth")
      if not isinstance(truth, dict):
        raise EntrySkip("missing_ground_truth", "no 'ground_truth' object")
      findings = clean_text(truth.get("findings"))
      impression = clean_text(truth.get("impression"))
      if not findings and not impression:
        raise EntrySkip("missing_ground_truth", "ground_truth has no findings and no impression")
      check_sections(findings, impression, require)
      paths = entry.get("images")
      if isinstance(paths, str):
        paths = [paths]
      if not isinstance(paths, list) or not paths:
        raise EntrySkip("missing_field", "no 'images' list")
      images = [(_resolve(images_root, base, p, check_files), "") for p in paths]
      studies.append(
        make_study(
          study_id,
          images,
          findings,
          impression,
          entry_split,
          views=views,
          max_images=max_images,
          require=require,
          meta={"sample_id": study_id, "lang": lang, "json": json_path},
        )
      )
    except EntrySkip as e:
      skips.skip(study_id, e.reason, e.detail)
  return finish(studies, skips)


def _resolve(images_root: str, base: str, rel_path: object, check_file: bool) -> str:
  """A path relative to the JSON's folder, checked to lie inside images_root."""
  if not isinstance(rel_path, str) or not rel_path.strip():
    raise EntrySkip("missing_field", f"image path {rel_path!r} is not a non-empty string")
  if os.path.isabs(rel_path):
    raise EntrySkip("path_escape", f"{rel_path!r} is absolute; paths are relative to the JSON")
  joined = os.path.normpath(os.path.join(base, rel_path))
  return resolve_image(images_root, os.path.relpath(joined, images_root), check_file=check_file)

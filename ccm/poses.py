"""Per-frame pose results: the data every stage after the model hands on, and the JSONL schema.

One `FramePoses` holds the people found in one video frame, in ORIGINAL image pixels with the
pixel-centre convention of DESIGN.md (pixel (row i, col j) has its centre at x=j, y=i).
The arrays are torch tensors (usually on the GPU while the pipeline runs) or numpy arrays
(after `.numpy()`); `.cpu()` / `.numpy()` convert the way ultralytics results do.

A JSON Lines file holds one `to_json()` line per frame:

    {"frame": i, "pts": seconds, "poses": [{"track_id": int, "box": [x1, y1, x2, y2],
     "score": float, "keypoints": [[x, y, score] x 17]}]}
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccm.skeleton import COCO_KEYPOINTS

Array = torch.Tensor | np.ndarray

# Pixels to 1/100 px, scores and seconds to 1e-4: finer than any model resolves, and it keeps
# a line with 17 keypoints per person short.
PIXEL_DECIMALS = 2
SCORE_DECIMALS = 4
PTS_DECIMALS = 4


@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly
class FramePoses:
    """The people in one frame.

    Attributes:
        frame: index of the frame in its source (dropped frames keep their number free).
        pts: presentation time of the frame in seconds.
        boxes: (N, 4) float, x1, y1, x2, y2 in image pixels.
        scores: (N,) float, the person score.
        keypoints: (N, K, 3) float, x, y in image pixels and the keypoint score.
        track_ids: (N,) int, the track id of each person (-1 before tracking assigns one).
    """

    frame: int
    pts: float
    boxes: Array
    scores: Array
    keypoints: Array
    track_ids: Array

    def __post_init__(self) -> None:
        n = self.boxes.shape[0] if self.boxes.ndim == 2 else -1
        problems = []
        if tuple(self.boxes.shape) != (n, 4):
            problems.append(f"boxes {tuple(self.boxes.shape)} != (N, 4)")
        if tuple(self.scores.shape) != (n,):
            problems.append(f"scores {tuple(self.scores.shape)} != ({n},)")
        if self.keypoints.ndim != 3 or tuple(self.keypoints.shape[::2]) != (n, 3):
            problems.append(f"keypoints {tuple(self.keypoints.shape)} != ({n}, K, 3)")
        if tuple(self.track_ids.shape) != (n,):
            problems.append(f"track_ids {tuple(self.track_ids.shape)} != ({n},)")
        if problems:
            raise ValueError(f"FramePoses for frame {self.frame}: " + "; ".join(problems))

    @classmethod
    def empty(
        cls,
        frame: int,
        pts: float,
        num_keypoints: int = len(COCO_KEYPOINTS),
        device: torch.device | str | None = None,
    ) -> FramePoses:
        """A frame with nobody in it (torch tensors with N = 0 on `device`, CPU by default)."""
        return cls(
            frame=frame,
            pts=pts,
            boxes=torch.zeros(0, 4, device=device),
            scores=torch.zeros(0, device=device),
            keypoints=torch.zeros(0, num_keypoints, 3, device=device),
            track_ids=torch.zeros(0, dtype=torch.long, device=device),
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def num_keypoints(self) -> int:
        return int(self.keypoints.shape[1])

    def _map(self, fn) -> FramePoses:
        return dataclasses.replace(
            self,
            boxes=fn(self.boxes),
            scores=fn(self.scores),
            keypoints=fn(self.keypoints),
            track_ids=fn(self.track_ids),
        )

    def cpu(self) -> FramePoses:
        """The same result with every tensor on the CPU (numpy arrays stay numpy)."""
        return self._map(lambda a: a.cpu() if isinstance(a, torch.Tensor) else a)

    def numpy(self) -> FramePoses:
        """The same result as numpy arrays (one device->host copy per tensor)."""
        return self._map(lambda a: a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a)

    def to(self, device: torch.device | str) -> FramePoses:
        """The same result as torch tensors on `device`."""
        return self._map(lambda a: torch.as_tensor(a).to(device))

    def to_dict(self) -> dict[str, Any]:
        """The JSONL record: plain Python numbers, rounded (see the module docstring)."""
        p = self.numpy()
        boxes = np.round(p.boxes.astype(np.float64), PIXEL_DECIMALS)
        scores = np.round(p.scores.astype(np.float64), SCORE_DECIMALS)
        kpts = p.keypoints.astype(np.float64)
        kpts = np.concatenate(
            [np.round(kpts[..., :2], PIXEL_DECIMALS), np.round(kpts[..., 2:], SCORE_DECIMALS)],
            axis=-1,
        )
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all() and np.isfinite(kpts).all()):
            raise ValueError(f"FramePoses for frame {self.frame} holds NaN or inf values")
        poses = [
            {"track_id": int(t), "box": b, "score": s, "keypoints": k}
            for t, b, s, k in zip(
                p.track_ids.tolist(), boxes.tolist(), scores.tolist(), kpts.tolist(), strict=True
            )
        ]
        return {
            "frame": int(self.frame),
            "pts": round(float(self.pts), PTS_DECIMALS),
            "poses": poses,
        }

    def to_json(self) -> str:
        """One JSON Lines line (no trailing newline)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, line: str | dict[str, Any]) -> FramePoses:
        """Parse a `to_json()` line (or its dict) back into numpy arrays."""
        d = json.loads(line) if isinstance(line, str) else line
        poses = d["poses"]
        k = len(poses[0]["keypoints"]) if poses else len(COCO_KEYPOINTS)
        return cls(
            frame=int(d["frame"]),
            pts=float(d["pts"]),
            boxes=np.array([p["box"] for p in poses], dtype=np.float32).reshape(-1, 4),
            scores=np.array([p["score"] for p in poses], dtype=np.float32).reshape(-1),
            keypoints=np.array([p["keypoints"] for p in poses], dtype=np.float32).reshape(-1, k, 3),
            track_ids=np.array([p["track_id"] for p in poses], dtype=np.int64).reshape(-1),
        )


def coco_keypoint_results(
    image_ids: Array, keypoints: Array, scores: Array
) -> list[dict[str, Any]]:
    """People -> COCO keypoint results, the list `COCO.loadRes` reads:

        [{"image_id": int, "category_id": 1, "keypoints": [x, y, s] * K, "score": float}]

    `image_ids` (N,), `keypoints` (N, K, 3) x, y in image pixels and score, `scores` (N,);
    rounded like the JSONL (`PIXEL_DECIMALS`, `SCORE_DECIMALS`). NaN or inf is refused."""
    kpts = _as_numpy(keypoints).astype(np.float64)
    kpts = np.concatenate(
        [np.round(kpts[..., :2], PIXEL_DECIMALS), np.round(kpts[..., 2:], SCORE_DECIMALS)], axis=-1
    ).reshape(len(kpts), kpts.shape[1] * kpts.shape[2])
    scores = np.round(_as_numpy(scores).astype(np.float64), SCORE_DECIMALS)
    if not (np.isfinite(kpts).all() and np.isfinite(scores).all()):
        raise ValueError("NaN or inf keypoints or scores")
    ids = _as_numpy(image_ids).tolist()
    return [
        {"image_id": int(i), "category_id": 1, "keypoints": k, "score": s}
        for i, k, s in zip(ids, kpts.tolist(), scores.tolist(), strict=True)
    ]


def dump_json(data: Any, fh) -> None:
    """`data` as one compact JSON document into the open text file `fh`; NaN is refused."""
    json.dump(data, fh, separators=(",", ":"), allow_nan=False)


def write_json(path: str | Path, data: Any) -> Path:
    """Write `data` as one compact JSON document (`dump_json`), creating the folder; the file
    appears complete or not at all (a temporary sibling renamed over `path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "w", encoding="utf-8") as fh:
            dump_json(data, fh)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def _as_numpy(array: Array) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)

"""Reading and writing videos.

Frames are ``[N, 3, H, W]`` float tensors in [0, 1]. Sources: video files read with
decord (mp4, avi, mov, webm, mkv; decoded from the first frame, never seeking), GIFs
(Pillow) and folders of image frames (in natural order: numbers in names read as numbers;
8- or 16-bit images, 16-bit ones rounded to 8 bits). Writers: mp4 (H.264 through
imageio-ffmpeg) and GIF.
"""
from __future__ import annotations

import os
from contextlib import closing
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from reangle.errors import InputError
from reangle.utils import natural_sorted, temporary_path

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".webm", ".mkv", ".m4v"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
DEEP_IMAGE_SUFFIXES = {".png", ".tif", ".tiff"}  # may hold 16 bits per channel
SHORT_VIDEO_STRATEGIES = ("error", "loop", "pad")


class VideoError(InputError):
    """A video that cannot be used as asked (missing, unreadable, too short)."""


def _frame_files(folder: Path) -> list[Path]:
    """The image files of a frame folder in natural order (``frame2`` before ``frame10``)."""
    return natural_sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                          f"frame folder {folder}", VideoError)


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames in a video file, GIF or frame folder (cheap: no decoding)."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"video not found: {path}")
    if path.is_dir():
        return len(_frame_files(path))
    suffix = path.suffix.lower()
    try:
        if suffix == ".gif":
            from PIL import Image
            with Image.open(path) as im:
                return im.n_frames
        if suffix in VIDEO_SUFFIXES:
            return len(import_decord().VideoReader(str(path), num_threads=1))
    except Exception as exc:
        raise VideoError(f"cannot read video {path}: {exc}") from exc
    raise VideoError(f"unsupported video format {suffix!r} for {path}: use one of "
                     f"{sorted(VIDEO_SUFFIXES | {'.gif'})} or a folder of frames")


def frame_indices(available: int, num_frames: int, start: int = 0, stride: int = 1,
                  short_video: str = "error", source: str = "video") -> list[int]:
    """Indices of ``num_frames`` frames from ``start`` every ``stride``.

    When the video is too short: ``error`` raises, ``loop`` wraps around to the start
    index, ``pad`` repeats the last available frame.
    """
    if short_video not in SHORT_VIDEO_STRATEGIES:
        raise VideoError(f"unknown short_video strategy {short_video!r}; use one of {SHORT_VIDEO_STRATEGIES}")
    if num_frames < 1 or stride < 1 or start < 0:
        raise VideoError(f"need num_frames >= 1, stride >= 1, start >= 0 (got {num_frames}, {stride}, {start})")
    wanted = [start + i * stride for i in range(num_frames)]
    if wanted[-1] < available:
        return wanted
    if short_video == "error" or start >= available:
        raise VideoError(f"{source} has {available} frames but {num_frames} frames from frame {start} "
                         f"every {stride} need {wanted[-1] + 1}; use a longer video, fewer frames, or "
                         f"data.short_video=loop|pad")
    usable = list(range(start, available, stride))
    if short_video == "loop":
        return [usable[i % len(usable)] for i in range(num_frames)]
    return usable + [usable[-1]] * (num_frames - len(usable))


def _decode_sequentially(frames: Iterator[np.ndarray], unique: list[int]) -> np.ndarray:
    """Keep the frames at the sorted indices ``unique`` of a stream decoded from frame 0, stopping
    after the last one."""
    keep, kept, i = set(unique), [], -1
    with closing(frames):  # stops the decoder (an ffmpeg process) at the last frame needed
        for i, frame in enumerate(frames):
            if i in keep:
                kept.append(frame)
            if i == unique[-1]:
                break
    if len(kept) != len(unique):
        raise VideoError(f"the stream ended after {i + 1} frames; frame {unique[-1]} was asked for")
    return np.stack(kept)


class _DecordCannotConvert(Exception):
    """decord returned a frame that is not ``[H, W, 3]`` (it happens for very narrow frames)."""


def import_decord():
    """The ``decord`` module, its native library loaded with local symbols. decord loads it with
    ``RTLD_GLOBAL``, which puts its bundled zlib ahead of every library loaded later: OpenCV's and
    COLMAP's PNG readers then fail ("libpng error: bad parameters to zlib")."""
    import sys

    if "decord" not in sys.modules:
        import ctypes

        rtld_global = ctypes.RTLD_GLOBAL
        ctypes.RTLD_GLOBAL = ctypes.RTLD_LOCAL  # read by decord's loader when it opens libdecord
        try:
            import decord  # noqa: F401
        finally:
            ctypes.RTLD_GLOBAL = rtld_global
    return sys.modules["decord"]


def _decord_frames(path: Path) -> Iterator[np.ndarray]:
    reader = import_decord().VideoReader(str(path), num_threads=1)
    for _ in range(len(reader)):
        frame = reader.next().asnumpy()
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise _DecordCannotConvert(f"decord returned a frame of shape {frame.shape}")
        yield frame


def _ffmpeg_frames(path: Path) -> Iterator[np.ndarray]:
    import imageio_ffmpeg
    # passthrough: every decoded frame once, whatever the timestamps say (no duplicated or dropped frames)
    with closing(imageio_ffmpeg.read_frames(str(path), output_params=["-fps_mode", "passthrough"])) as stream:
        width, height = next(stream)["size"]
        for raw in stream:
            yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)


def _decode_file(path: Path, unique: list[int]) -> np.ndarray:
    """Decode from the first frame up to the last index asked for, never seeking: seeks land on the
    wrong frame in files with sparse keyframes and no usable timestamps (e.g. some AVIs); for the
    usual clip from the start this is as fast as random access, a large start offset costs the
    decoding of the frames before it. decord first; ffmpeg (imageio-ffmpeg) when decord cannot
    convert the stream (e.g. very narrow frames)."""
    decord = import_decord()
    try:
        return _decode_sequentially(_decord_frames(path), unique)
    except (decord.DECORDError, _DecordCannotConvert):
        return _decode_sequentially(_ffmpeg_frames(path), unique)


def _read_frame(file: Path) -> np.ndarray:
    """One image file as uint8 ``[h, w, 3]`` RGB (alpha dropped). PNG and TIFF, which may hold 16
    bits per channel, are read at full depth by OpenCV and rounded to 8 bits (``v / 257``); other
    formats by Pillow."""
    if file.suffix.lower() not in DEEP_IMAGE_SUFFIXES:
        from PIL import Image
        with Image.open(file) as im:
            return np.asarray(im.convert("RGB"))
    import cv2
    image = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise VideoError(f"cannot read frame {file}")
    if image.dtype == np.uint16:
        image = np.round(image / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise VideoError(f"frame {file} holds {image.dtype} pixels; save 8- or 16-bit images")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=-1)
    if image.shape[2] == 2:                              # grey + alpha
        return np.repeat(image[..., :1], 3, axis=-1)
    return np.ascontiguousarray(image[..., 2::-1])       # BGR(A) -> RGB


def _decode(path: Path, indices: Sequence[int]) -> np.ndarray:
    """Decode the frames at ``indices`` as uint8 ``[n, h, w, 3]``."""
    unique = sorted(set(indices))
    position = {idx: i for i, idx in enumerate(unique)}
    try:
        if path.is_dir():
            files = _frame_files(path)
            frames = np.stack([_read_frame(files[i]) for i in unique])
        elif path.suffix.lower() == ".gif":
            from PIL import Image, ImageSequence
            with Image.open(path) as im:
                keep = set(unique)
                frames = np.stack([np.asarray(f.convert("RGB")) for i, f in enumerate(ImageSequence.Iterator(im))
                                   if i in keep])
        else:
            frames = _decode_file(path, unique)
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(f"cannot decode video {path}: {exc}") from exc
    return frames[[position[i] for i in indices]]


def resize_frames(images: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, C, height, width]``, aspect not kept (antialiased bilinear, or nearest)."""
    if tuple(images.shape[-2:]) == (height, width):
        return images
    if mode == "nearest":
        return F.interpolate(images, size=(height, width), mode="nearest")
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def resize_center_crop(frames: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize ``[N, C, h, w]`` so it covers ``height x width`` (aspect kept), then centre-crop.

    ``mode``: ``bilinear`` (antialiased when shrinking) or ``nearest`` (maps such as depth)."""
    h, w = frames.shape[-2:]
    if (h, w) == (height, width):
        return frames
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if mode == "nearest":
        frames = F.interpolate(frames, size=(new_h, new_w), mode="nearest")
    else:
        frames = F.interpolate(frames, size=(new_h, new_w), mode="bilinear", align_corners=False,
                               antialias=scale < 1)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return frames[..., top:top + height, left:left + width]


def read_video(path: str | os.PathLike, num_frames: int = 49, height: int = 480, width: int = 720,
               start: int = 0, stride: int = 1, short_video: str = "error") -> torch.Tensor:
    """Read ``num_frames`` frames resized and centre-cropped to ``height x width``.

    Returns ``[num_frames, 3, height, width]`` float32 in [0, 1].
    """
    path = Path(path)
    available = count_frames(path)
    if available == 0:
        raise VideoError(f"no frames found in {path}")
    indices = frame_indices(available, num_frames, start, stride, short_video, source=str(path))
    frames = torch.from_numpy(np.ascontiguousarray(_decode(path, indices))).permute(0, 3, 1, 2)
    frames = frames.float().div_(255.0)
    return resize_center_crop(frames, height, width).clamp_(0.0, 1.0).contiguous()


def read_all_frames(path: str | os.PathLike) -> torch.Tensor:
    """Every frame of a video at its own size, not resized: ``[N, 3, H, W]`` float32 in [0, 1]."""
    path = Path(path)
    available = count_frames(path)
    if available == 0:
        raise VideoError(f"no frames found in {path}")
    frames = torch.from_numpy(np.ascontiguousarray(_decode(path, list(range(available))))).permute(0, 3, 1, 2)
    return frames.float().div_(255.0).contiguous()


def video_fps(path: str | os.PathLike) -> float | None:
    """A video file's average frame rate (decord), a GIF's (from its first frame's duration); ``None`` for
    a frame folder or a file that does not say."""
    path = Path(path)
    try:
        if path.is_dir():
            return None
        if path.suffix.lower() == ".gif":
            from PIL import Image
            with Image.open(path) as im:
                duration = im.info.get("duration")
            return 1000.0 / duration if duration else None
        fps = float(import_decord().VideoReader(str(path), num_threads=1).get_avg_fps())
        return fps if fps > 0 else None
    except Exception as exc:
        raise VideoError(f"cannot read the frame rate of {path}: {exc}") from exc


def uint8_levels(frames: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8 levels of the same shape (round to nearest), as frames decoded from an 8-bit video."""
    return frames.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``[N, 3, H, W]`` in [0, 1] -> uint8 ``[N, H, W, 3]``."""
    return uint8_levels(frames).permute(0, 2, 3, 1).cpu().numpy()


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return temporary_path(path)


def write_mp4(frames: torch.Tensor, path: str | os.PathLike, fps: float = 8, quality: int = 9) -> Path:
    """Write ``[N, 3, H, W]`` frames in [0, 1] as H.264 mp4 (atomic). Even sizes are required."""
    import imageio.v2 as imageio
    path = Path(path)
    tmp = _atomic_target(path)
    with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=quality,
                            macro_block_size=1, pixelformat="yuv420p", ffmpeg_log_level="error") as writer:
        for frame in to_uint8(frames):
            writer.append_data(frame)
    os.replace(tmp, path)
    return path


def write_gif(frames: torch.Tensor, path: str | os.PathLike, fps: float = 8) -> Path:
    """Write ``[N, 3, H, W]`` frames in [0, 1] as a looping GIF (atomic)."""
    from PIL import Image
    path = Path(path)
    tmp = _atomic_target(path)
    images = [Image.fromarray(f) for f in to_uint8(frames)]
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(round(1000 / fps)), loop=0)
    os.replace(tmp, path)
    return path


def write_image(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write one ``[3, H, W]`` image in [0, 1] as a PNG (atomic)."""
    from PIL import Image
    path = Path(path)
    tmp = _atomic_target(path)
    Image.fromarray(to_uint8(image[None])[0]).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def write_video(frames: torch.Tensor, path: str | os.PathLike, fps: float = 8) -> Path:
    """Write mp4 or GIF by the suffix of ``path``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        return write_gif(frames, path, fps)
    if suffix == ".mp4":
        return write_mp4(frames, path, fps)
    raise VideoError(f"cannot write {suffix!r}: use .mp4 or .gif")

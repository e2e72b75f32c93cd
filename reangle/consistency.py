"""MEt3R multi-view consistency score (Asim et al., CVPR 2025), as the official ``met3r/met3r.py``.

For image pairs ``(B, 2, 3, H, W)`` in [-1, 1], per pair, in [0, 2], lower = more consistent:

1. Both images are resized to ``img_size`` x ``img_size`` (256; bilinear, antialiased).
2. A DUSt3R-family model predicts view 1's and view 2's point maps, both in view 1's
   camera frame (OpenCV axes), with confidences. As in the reference they carry no
   gradient.
3. Focal length (pixels) from the "canonical" point map, the confidence-weighted mean
   of the two maps (weights ``conf - 0.999``): per axis, the median of the votes
   ``u z / x`` and ``v z / y``, with integer pixel coordinates centred at (W/2, H/2)
   (``focal_mode="median"``, the reference), or DUSt3R's Weiszfeld estimate of one
   focal for both axes (``"weiszfeld"``). It enters the renderer as the reference
   passes it to PyTorch3D: ``f_ndc = 1 + f / W`` (x) and ``1 + f / H`` (y).
4. Features: DINO ViT-S/16 last-block patch tokens, channel LayerNorm, FeatUp JBU x16
   upsampling guided by the image in [0, 1] (the reference feeds the backbone
   ImageNet-normalised images but the upsampler the plain [0, 1] image), resized to
   the image size if needed.
5. Each view's points carry its own features and are rendered into view 1: identity
   pose, x and y flipped into PyTorch3D's NDC (+X left, +Y up), point radius 0.01 NDC,
   10 points per pixel, alpha compositing with ``alpha = 1 - d^2 / r^2``.
6. ``score = sum(mask * (1 - cos)) / (sum(mask) + 1e-5)`` with
   ``cos = <F1, F2> / (|F1| |F2| + 1e-5)`` per pixel and ``mask`` = pixels covered in
   both renders.

A pair whose renders share no pixel scores 0, as in the reference; ``return_maps=True``
gives the overlap mask to detect that. Gradients reach the images through the features
whenever autograd is on (the frozen models take none); wrap calls in
``torch.no_grad()`` for plain evaluation.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Literal, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nets.featup import HUB_ID as FEATUP_HUB_ID
from .nets.featup import UpsampledBackbone, load_featup
from .nets.raster import AlphaCompositor, rasterize_points
from .io.video import resize_frames
from .utils import imagenet_normalize, seeded

POINT_MODEL_IDS = {
    "dust3r": "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt",
    "mast3r": "naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric",
}
"""Hub checkpoints of the two backbones MEt3R offers (the reference defaults to MASt3R)."""

COS_EPS = 1e-5
MASK_EPS = 1e-5
CONF_OFFSET = 0.999


class Met3rOutput(NamedTuple):
    """Scores (B,) and, per direction D (1, or 2 when symmetric), maps (B, D, H, W)."""

    score: Tensor
    overlap_mask: Tensor
    score_map: Tensor


class FeatUpFeatures(nn.Module):
    """MEt3R's features: images (N, 3, H, W) in [-1, 1] -> FeatUp features (N, C, H, W)."""

    def __init__(self, featup: UpsampledBackbone):
        super().__init__()
        self.featup = featup

    def forward(self, images_pm1: Tensor) -> Tensor:
        images01 = (images_pm1 + 1) / 2
        low_res = self.featup.model(imagenet_normalize(images01))
        features = self.featup.upsampler(low_res, images01)
        if features.shape[-2:] != images01.shape[-2:]:
            features = F.interpolate(features, images01.shape[-2:], mode="bilinear")
        return features


def canonical_point_map(pts3d_1: Tensor, conf_1: Tensor, pts3d_2: Tensor, conf_2: Tensor) -> Tensor:
    """Confidence-weighted mean (weights ``conf - 0.999``) of two (B, H, W, 3) point maps."""
    w1 = (conf_1 - CONF_OFFSET).unsqueeze(-1)
    w2 = (conf_2 - CONF_OFFSET).unsqueeze(-1)
    return (w1 * pts3d_1 + w2 * pts3d_2) / (w1 + w2)


def estimate_focal(pts3d: Tensor, mode: Literal["median", "weiszfeld"] = "median", iterations: int = 10) -> Tensor:
    """Focal lengths (B, 2) = (fx, fy) in pixels of a camera-frame point map (B, H, W, 3).

    Pixel (row j, column i) sees ray ``((i - W/2) / fx, (j - H/2) / fy, 1)``.
    ``median``: per axis, the NaN-ignoring median of ``u z / x`` (resp. ``v z / y``).
    ``weiszfeld``: one focal minimising ``sum |(u, v) - f (x, y) / z|`` by iteratively
    re-weighted least squares from the L2 solution (DUSt3R), returned for both axes.
    """
    b, h, w, _ = pts3d.shape
    with torch.no_grad():
        rows, cols = torch.meshgrid(
            torch.arange(h, device=pts3d.device, dtype=pts3d.dtype),
            torch.arange(w, device=pts3d.device, dtype=pts3d.dtype),
            indexing="ij",
        )
        pixels = torch.stack([cols - w / 2, rows - h / 2], dim=-1).reshape(1, -1, 2)
        pts = pts3d.reshape(b, -1, 3)
        if mode == "median":
            votes = pixels * pts[..., 2:] / pts[..., :2]
            return torch.nanmedian(votes, dim=1).values
        if mode != "weiszfeld":
            raise ValueError(f"unknown focal mode {mode!r}; use 'median' or 'weiszfeld'")
        xy = (pts[..., :2] / pts[..., 2:]).nan_to_num(posinf=0.0, neginf=0.0)
        dot_xy_px = (xy * pixels).sum(-1)
        dot_xy_xy = xy.square().sum(-1)
        focal = dot_xy_px.mean(1) / dot_xy_xy.mean(1)
        for _ in range(iterations):
            residual = (pixels - focal.view(-1, 1, 1) * xy).norm(dim=-1)
            weight = residual.clamp(min=1e-8).reciprocal()
            focal = (weight * dot_xy_px).mean(1) / (weight * dot_xy_xy).mean(1)
        return focal.unsqueeze(1).expand(b, 2)


def project_to_ndc(points: Tensor, focal_ndc: Tensor) -> Tensor:
    """OpenCV camera-frame points (N, P, 3) -> (x_ndc, y_ndc, z) for an identity-pose pinhole.

    ``focal_ndc`` (N, 2); principal point at the image centre; x and y are negated to go
    from OpenCV axes (x right, y down) to PyTorch3D's (+X left, +Y up).
    """
    z = points[..., 2]
    x_ndc = -focal_ndc[:, :1] * points[..., 0] / z
    y_ndc = -focal_ndc[:, 1:] * points[..., 1] / z
    return torch.stack([x_ndc, y_ndc, z], dim=-1)


def check_images(images: Any, img_size: int | None, patch: int = 16) -> None:
    """Raise ValueError naming what is wrong unless ``images`` is a finite (B, 2, 3, H, W) batch in [-1, 1]."""
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape (B, 2, 3, H, W), got {type(images).__name__}")
    if images.ndim != 5 or images.shape[1] != 2 or images.shape[2] != 3 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (B, 2, 3, H, W) with B >= 1 (pairs of RGB images), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor in [-1, 1], got dtype {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    lo, hi = float(images.detach().min()), float(images.detach().max())
    if lo < -1 - 1e-4 or hi > 1 + 1e-4:
        raise ValueError(
            f"image values must lie in [-1, 1], got min {lo:.4g} and max {hi:.4g} "
            "(map [0, 1] images with x * 2 - 1, [0, 255] ones with x / 127.5 - 1)"
        )
    h, w = images.shape[-2:]
    if img_size is None and (h % patch or w % patch):
        raise ValueError(f"with img_size=None the image size must be a multiple of {patch}, got {h}x{w}")


def _param_dtype(model: Any, default: torch.dtype) -> torch.dtype:
    """dtype of a module's first parameter (inputs are cast to it); ``default`` for other callables."""
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return param.dtype if param is not None else default


class MEt3R(nn.Module):
    """MEt3R score of image pairs; see the module docstring.

    ``point_model(img1, img2)`` takes (N, 3, H, W) images in [-1, 1] and returns an
    object with ``pts3d_1``, ``pts3d_2`` (N, H, W, 3, both in view 1's frame) and
    ``conf_1``, ``conf_2`` (N, H, W) (e.g. :class:`reangle.nets.dust3r.DUSt3R`).
    ``feature_model`` maps (N, 3, H, W) in [-1, 1] to (N, C, H, W) features (e.g.
    :class:`FeatUpFeatures`). ``symmetric`` averages the scores of (1, 2) and (2, 1).
    Pairs are scored ``max_pairs_per_chunk`` at a time, which bounds peak memory
    (it grows linearly with the chunk; see ``benchmarks/RESULTS.md``).
    """

    def __init__(
        self,
        point_model: Callable[[Tensor, Tensor], Any],
        feature_model: Callable[[Tensor], Tensor],
        *,
        img_size: int | None = 256,
        radius: float = 0.01,
        points_per_pixel: int = 10,
        focal_mode: Literal["median", "weiszfeld"] = "median",
        symmetric: bool = False,
        max_pairs_per_chunk: int = 8,
    ):
        super().__init__()
        if max_pairs_per_chunk < 1:
            raise ValueError(f"max_pairs_per_chunk must be >= 1, got {max_pairs_per_chunk}")
        if focal_mode not in ("median", "weiszfeld"):
            raise ValueError(f"unknown focal_mode {focal_mode!r}; use 'median' or 'weiszfeld'")
        self.point_model = point_model
        self.feature_model = feature_model
        self.img_size = img_size
        self.radius = radius
        self.points_per_pixel = points_per_pixel
        self.focal_mode = focal_mode
        self.symmetric = symmetric
        self.max_pairs_per_chunk = max_pairs_per_chunk
        self.compositor = AlphaCompositor()

    def forward(self, images: Tensor, return_maps: bool = False, features: tuple[Tensor, Tensor] | None = None,
                encodings: tuple[Tensor, Tensor] | None = None) -> Tensor | Met3rOutput:
        """Scores (B,) of pairs ``images`` (B, 2, 3, H, W) in [-1, 1]; with ``return_maps`` a :class:`Met3rOutput`.

        ``features`` / ``encodings``: optional ``(bank, index)``, per-image inputs computed
        beforehand with :meth:`image_features` (``bank`` (M, C, s, s)) or
        :meth:`image_encodings` (the point model's encoder tokens, ``bank`` (M, N, D)) and,
        per pair, the bank rows of its two images (``index`` (B, 2) long). Images that
        appear in many pairs (finished views, candidates scored against several views) then
        go through the feature model and the point model's encoder once; rows are gathered
        chunk by chunk.
        """
        check_images(images, self.img_size)
        for name, given in (("features", features), ("encodings", encodings)):
            if given is not None and given[1].shape != (images.shape[0], 2):
                raise ValueError(f"{name} must be (bank, index (B, 2)) for {images.shape[0]} pairs, got index "
                                 f"{tuple(given[1].shape)}")
        images = self._resize(images.flatten(0, 1)).unflatten(0, (images.shape[0], 2))

        def rows(given, i):
            if given is None:
                return None
            index = given[1][i * self.max_pairs_per_chunk:(i + 1) * self.max_pairs_per_chunk]
            return given[0][index.flatten()]

        chunks = [self._score_chunk(c, rows(features, i), rows(encodings, i))
                  for i, c in enumerate(images.split(self.max_pairs_per_chunk))]
        out = Met3rOutput(*(torch.cat(parts) for parts in zip(*chunks)))
        return out if return_maps else out.score

    def _resize(self, images: Tensor) -> Tensor:
        return images if self.img_size is None else resize_frames(images, self.img_size, self.img_size)

    def image_features(self, images: Tensor) -> Tensor:
        """Features (N, C, s, s) of images (N, 3, H, W) in [-1, 1] at the scoring size, for ``forward(features=...)``."""
        images = self._resize(images)
        return self.feature_model(images.to(_param_dtype(self.feature_model, images.dtype)))

    def image_encodings(self, images: Tensor) -> Tensor | None:
        """The point model's encoder tokens of images (N, 3, H, W) in [-1, 1] at the scoring size, for
        ``forward(encodings=...)``; None when the point model has no ``encode`` (then pairs are encoded as usual)."""
        encode = getattr(self.point_model, "encode", None)
        if encode is None:
            return None
        images = self._resize(images)
        with torch.no_grad():
            return encode(images.to(_param_dtype(self.point_model, images.dtype)))

    def _score_chunk(self, pairs: Tensor, features: Tensor | None = None,
                     encodings: Tensor | None = None) -> Met3rOutput:
        n, _, _, h, w = pairs.shape
        if features is None:
            features = self.feature_model(pairs.flatten(0, 1).to(_param_dtype(self.feature_model, pairs.dtype)))
        point_features = features.permute(0, 2, 3, 1).reshape(2 * n * h * w, -1).float()  # one row per pixel
        del features
        first, second = pairs[:, 0], pairs[:, 1]
        source = torch.arange(2 * n, device=pairs.device)  # image whose features each rendered cloud carries
        pair_encodings = None if encodings is None else (encodings[0::2], encodings[1::2])
        if self.symmetric:
            first, second = torch.cat([first, second]), torch.cat([second, first])
            source = torch.cat([source, source.view(n, 2).flip(1).reshape(-1)])
            if pair_encodings is not None:
                pair_encodings = (torch.cat(pair_encodings), torch.cat(pair_encodings[::-1]))
        m = first.shape[0]
        with torch.no_grad():
            point_dtype = _param_dtype(self.point_model, pairs.dtype)
            extra = {} if pair_encodings is None else {"encodings": pair_encodings}
            pred = self.point_model(first.to(point_dtype), second.to(point_dtype), **extra)
        points = torch.stack([pred.pts3d_1, pred.pts3d_2], dim=1).detach().float()  # (m, 2, h, w, 3)
        canon = canonical_point_map(points[:, 0], pred.conf_1.float(), points[:, 1], pred.conf_2.float())
        focal = estimate_focal(canon, self.focal_mode)
        focal_ndc = 1 + focal / focal.new_tensor([w, h])
        ndc = project_to_ndc(points.reshape(2 * m, h * w, 3), focal_ndc.repeat_interleave(2, dim=0))
        fragments = rasterize_points(ndc, (h, w), self.radius, self.points_per_pixel)
        # Point p of cloud c is pixel p of image source[c]: index the features without copying them.
        idx = fragments.idx
        idx = torch.where(idx >= 0, source[idx.clamp(min=0) // (h * w)] * (h * w) + idx % (h * w), idx)
        renders = self.compositor(fragments._replace(idx=idx), point_features, self.radius).view(m, 2, -1, h, w)
        mask = (fragments.idx[..., 0] >= 0).view(m, 2, h, w).all(dim=1).to(renders.dtype)
        f1, f2 = renders[:, 0], renders[:, 1]
        cos = (f1 * f2).sum(1) / (f1.norm(dim=1) * f2.norm(dim=1) + COS_EPS)
        score_map = 1 - cos
        score = (score_map * mask).sum((-2, -1)) / (mask.sum((-2, -1)) + MASK_EPS)
        directions = 2 if self.symmetric else 1
        score = score.view(directions, n).mean(0)
        return Met3rOutput(
            score,
            mask.view(directions, n, h, w).transpose(0, 1),
            score_map.view(directions, n, h, w).transpose(0, 1),
        )


TINY = "tiny"
# The networks of a "tiny" source: random weights (seed TINY_SEED, the same on every rank and in every run)
TINY_DUST3R = dict(enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=32, dec_depth=2, dec_num_heads=2,
                   head_type="linear")
TINY_FEATUP = {"dino": {"embed_dim": 32, "depth": 2, "num_heads": 2}, "key_dim": 8}
TINY_SEED = 0


def load_met3r(
    backbone: Literal["dust3r", "mast3r"] = "dust3r",
    *,
    point_source: str | os.PathLike | Mapping[str, Any] | None = None,
    featup_source: str | os.PathLike | Mapping[str, Any] = FEATUP_HUB_ID,
    dino_source: str | os.PathLike | Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> MEt3R:
    """MEt3R with its models from hub ids, local files, or tiny configs (dicts); ``options`` go to :class:`MEt3R`.

    ``point_source`` defaults to the hub checkpoint of ``backbone``; both backbones load
    through :func:`reangle.nets.dust3r.load_dust3r`. ``"tiny"`` for either source: small random
    networks (:data:`TINY_DUST3R` at ``options["img_size"]``, :data:`TINY_FEATUP`), seeded so that
    every rank and every run gets the same weights.
    """
    from .nets.dust3r import load_dust3r

    if backbone not in POINT_MODEL_IDS:
        raise ValueError(f"unknown MEt3R backbone {backbone!r}; choose one of {sorted(POINT_MODEL_IDS)}")
    if point_source is None:
        point_source = POINT_MODEL_IDS[backbone]
    elif point_source == TINY:
        size = options.get("img_size", 256)
        point_source = {**TINY_DUST3R, "img_size": (size, size)}
    if featup_source == TINY:
        featup_source = TINY_FEATUP
    with seeded(TINY_SEED):  # only random (tiny) weights depend on it
        point_model = load_dust3r(point_source, device=device, dtype=dtype)
        featup = load_featup(featup_source, dino_source=dino_source, device=device, dtype=dtype)
    return MEt3R(point_model, FeatUpFeatures(featup), **options).to(device)

"""A procedural scene rendered with exact per-pixel depth from any camera.

The scene: a textured ground plane, a back wall and spheres that move over time, all
with view-independent colours (a fixed world-space texture and Lambertian shading under
a fixed light), so a view rendered directly from a target camera is the oracle for
warping. Units are the depth units of the pipeline (the default orbit pivot at 200 sits
between the spheres and the wall). World = the input camera's frame (OpenCV axes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GROUND_Y = 60.0    # the ground plane y = GROUND_Y (below the camera: y points down)
WALL_Z = 420.0     # the back wall z = WALL_Z
_LIGHT = (-0.4, -0.8, -0.45)  # direction towards the light (up, left, towards the camera)


@dataclass
class Sphere:
    radius: float
    start: tuple[float, float]  # (x, z) at t = 0; resting on the ground
    end: tuple[float, float]    # (x, z) at t = 1
    hop: float                  # height of a hop along the way
    color: tuple[float, float, float]


def default_spheres(seed: int = 0) -> list[Sphere]:
    """Three spheres with colours and paths drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: lo + (hi - lo) * torch.rand((), generator=g).item()  # noqa: E731
    return [
        Sphere(34.0, (r(-90, -60), r(170, 200)), (r(-20, 0), r(150, 170)), 0.0, (0.85, 0.25, 0.2)),
        Sphere(22.0, (r(40, 70), r(200, 230)), (r(70, 100), r(170, 190)), r(20, 35), (0.2, 0.5, 0.9)),
        Sphere(45.0, (r(-10, 20), r(300, 330)), (r(-40, -20), r(310, 330)), 0.0, (0.9, 0.8, 0.3)),
    ]


def _texture(points: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Smooth world-space texture ``[..., 3]`` in [0, 1] around the colour ``base [3]``."""
    x, y, z = points.unbind(-1)
    pattern = (torch.sin(x / 17.0) * torch.sin(z / 19.0) + 0.6 * torch.sin((x + 2 * y - z) / 37.0)
               + 0.4 * torch.sin((y + z) / 13.0))
    stripes = torch.stack([pattern, torch.sin(pattern * 2.1 + 1.0), torch.cos(pattern * 1.3)], dim=-1)
    return (base + 0.22 * stripes).clamp(0.0, 1.0)


class SyntheticScene:
    """``render(w2c, K, height, width, times)`` -> frames ``[N, 3, H, W]`` in [0, 1] and depth ``[N, H, W]``."""

    def __init__(self, seed: int = 0):
        self.spheres = default_spheres(seed)

    def sphere_centers(self, times: torch.Tensor) -> torch.Tensor:
        """Centres ``[N, S, 3]`` at ``times [N]`` in [0, 1]."""
        out = []
        for s in self.spheres:
            x = s.start[0] + (s.end[0] - s.start[0]) * times
            z = s.start[1] + (s.end[1] - s.start[1]) * times
            y = GROUND_Y - s.radius - s.hop * torch.sin(math.pi * times).abs()
            out.append(torch.stack([x, y, z], dim=-1))
        return torch.stack(out, dim=1)

    def render(self, w2c: torch.Tensor, K: torch.Tensor, height: int, width: int,
               times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ray-cast ``N`` frames: camera ``w2c [N, 4, 4]`` (or ``[4, 4]``), ``K [3, 3]``, ``times [N]``."""
        times = times.double()
        n = times.shape[0]
        w2c = w2c.double().expand(n, 4, 4)
        K = K.double()
        v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                              torch.arange(width, dtype=torch.float64), indexing="ij")
        # Ray direction with unit z in camera coordinates, so the ray parameter is the z-depth.
        d_cam = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], -1)
        rot_t = w2c[:, :3, :3].transpose(1, 2)                                  # camera -> world
        origin = -(rot_t @ w2c[:, :3, 3:]).squeeze(-1)                          # [N, 3]
        d = torch.einsum("nij,hwj->nhwi", rot_t, d_cam)                         # [N, H, W, 3]
        o = origin.view(n, 1, 1, 3)

        inf = torch.full(d.shape[:-1], float("inf"), dtype=torch.float64)
        t_ground = torch.where(d[..., 1] > 1e-9, (GROUND_Y - o[..., 1]) / d[..., 1], inf)
        t_wall = torch.where(d[..., 2] > 1e-9, (WALL_Z - o[..., 2]) / d[..., 2], inf)
        t_ground = torch.where(t_ground > 0, t_ground, inf)
        t_wall = torch.where(t_wall > 0, t_wall, inf)

        centers = self.sphere_centers(times)                                     # [N, S, 3]
        radii = torch.tensor([s.radius for s in self.spheres], dtype=torch.float64)
        oc = o.unsqueeze(3) - centers.view(n, 1, 1, -1, 3)                       # [N, 1, 1, S, 3]
        a = (d * d).sum(-1, keepdim=True)                                        # [N, H, W, 1]
        b = 2 * (d.unsqueeze(3) * oc).sum(-1)                                    # [N, H, W, S]
        c = (oc * oc).sum(-1) - radii ** 2
        disc = b * b - 4 * a * c
        t_sph = (-b - disc.clamp_min(0).sqrt()) / (2 * a)
        t_sph = torch.where((disc > 0) & (t_sph > 0), t_sph, float("inf"))

        candidates = torch.cat([t_ground.unsqueeze(-1), t_wall.unsqueeze(-1), t_sph], dim=-1)
        t_hit, which = candidates.min(dim=-1)                                    # [N, H, W]
        point = o + t_hit.unsqueeze(-1) * d

        normal = torch.zeros_like(point)
        normal[..., 1] = torch.where(which == 0, -1.0, 0.0)
        normal[..., 2] = torch.where(which == 1, -1.0, 0.0)
        base = torch.empty_like(point)
        base[:] = torch.tensor([0.45, 0.55, 0.35], dtype=torch.float64)
        base[which == 1] = torch.tensor([0.6, 0.55, 0.65], dtype=torch.float64)
        texture_point = point.clone()
        for k, sphere in enumerate(self.spheres):
            hit = which == k + 2
            center = centers[:, k].view(n, 1, 1, 3).expand_as(point)
            normal[hit] = (point[hit] - center[hit]) / sphere.radius
            base[hit] = torch.tensor(sphere.color, dtype=torch.float64)
            texture_point[hit] = point[hit] - center[hit]  # the texture moves with the sphere
        light = torch.nn.functional.normalize(torch.tensor(_LIGHT, dtype=torch.float64), dim=0)
        shade = 0.45 + 0.55 * (normal @ light).clamp_min(0.0)
        colors = _texture(texture_point, base) * shade.unsqueeze(-1)
        return colors.permute(0, 3, 1, 2).float().clamp(0, 1).contiguous(), t_hit.float()

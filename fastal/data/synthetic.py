"""The built-in dataset: procedural street scenes with CamVid's 11 classes, no files needed.

Each image is a street seen from a car: sky, a road with lane markings running to a
vanishing point, pavements, facades with windows (or hedges, walls), a far end wall, and
objects placed in a simple ground-plane world (``u`` across the road, ``d`` depth, ``z``
height, all in metres) and projected with a pinhole camera: parked and moving cars, trees,
thin poles with lamps, small signs and traffic lights, fences, pedestrians, and rare
bicyclists. Colours are drawn from palettes that overlap across classes (grey road, grey
facades, grey cars; brown fences, trunks and brick), then class textures, a smooth
illumination field, cast shadows, a colour cast, noise and blur are applied, so that colour
alone does not separate classes. Some clutter (bins, boxes) is labelled ignore (255).

Defaults: 120x160 pixels (``size`` or ``scale`` change it); 200 train, 50 val and 50 test
images (``num_images`` changes it). Image ``i`` of a split is a pure function of
``(seed, split, i)``: any image can be drawn alone, in any order, in any process.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastal.data.base import IGNORE, SegDataset
from fastal.data.camvid import CLASSES
from fastal.errors import FastalError

DEFAULT_SIZE = (120, 160)
DEFAULT_NUM_IMAGES = {"train": 200, "val": 50, "test": 50}
# Each split draws from its own seed stream.
SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}
# Bump when the generator changes: it is part of the fingerprint, so caches are rebuilt.
GENERATOR_VERSION = 2

SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)

# Per-class strength of pixel noise (texture): foliage is busy, sky and glass are smooth.
TEXTURE = np.zeros(256, np.float32)
TEXTURE[[SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST, IGNORE]] = (
    2, 7, 4, 6, 9, 30, 3, 8, 4, 8, 8, 10,
)  # fmt: skip

GREYS = [(90, 90, 92), (120, 118, 115), (150, 148, 145), (175, 172, 168), (70, 70, 75)]
FACADES = [(178, 150, 120), (160, 75, 55), (200, 190, 170), (120, 118, 115), (150, 148, 145), (210, 205, 195), (140, 110, 80)]
CAR_COLOURS = [(150, 148, 145), (220, 220, 222), (30, 30, 35), (160, 30, 30), (40, 60, 130), (90, 90, 92), (200, 190, 170), (60, 90, 60)]
CLOTHES = [(30, 30, 35), (40, 60, 130), (160, 30, 30), (120, 118, 115), (60, 90, 60), (140, 110, 80), (200, 190, 170), (220, 220, 222)]
SKIN = [(224, 180, 150), (190, 140, 110), (120, 85, 60)]
GREENS = [(60, 100, 45), (80, 120, 50), (45, 80, 40), (110, 130, 60), (150, 120, 50)]
FENCE_COLOURS = [(140, 110, 80), (120, 118, 115), (60, 90, 60), (90, 90, 92), (200, 190, 170)]
SIGN_COLOURS = [(200, 30, 30), (30, 70, 180), (230, 190, 30), (30, 130, 70), (235, 235, 235)]  # fmt: skip


class _Scene:
    """One image being drawn: the camera, the canvas (float RGB) and the label map."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.rng = rng
        self.h, self.w = height, width
        self.horizon = height * rng.uniform(0.36, 0.5)
        self.vx = width * rng.uniform(0.38, 0.62)
        self.focal = width * rng.uniform(0.75, 1.0)  # pixels; a 53..67 degree horizontal view
        self.cam_height = rng.uniform(1.3, 1.9)  # metres above the road
        self.near = self.focal * self.cam_height / (height - self.horizon)  # depth of the bottom row
        self.img = np.empty((height, width, 3), np.float32)
        self.lab = np.empty((height, width), np.uint8)

    def pick(self, palette: list[tuple[int, int, int]], jitter: float = 12.0) -> tuple[float, ...]:
        base = np.asarray(palette[self.rng.integers(len(palette))], np.float32)
        return tuple(float(c) for c in np.clip(base + self.rng.normal(0, jitter, 3), 0, 255))

    def project(self, u: float, d: float, z: float) -> tuple[float, float]:
        """Screen (x, y) of the world point (u across, d depth, z up), in metres."""
        return self.vx + self.focal * u / d, self.horizon + self.focal * (self.cam_height - z) / d

    def poly(self, points: list[tuple[float, float, float]], colour: tuple[float, ...], cls: int) -> None:
        import cv2

        pts = np.array([self.project(*p) for p in points], np.float64)
        pts = np.round(pts * 16).astype(np.int32)[None]  # 4 fractional bits: smooth small shapes
        cv2.fillPoly(self.img, pts, colour, cv2.LINE_8, 4)
        cv2.fillPoly(self.lab, pts, cls, cv2.LINE_8, 4)

    def quad(self, u0: float, u1: float, d: float, z0: float, z1: float, colour: tuple[float, ...], cls: int) -> None:
        """A rectangle facing the camera at depth ``d``."""
        self.poly([(u0, d, z0), (u1, d, z0), (u1, d, z1), (u0, d, z1)], colour, cls)

    def box(self, u0: float, u1: float, d0: float, d1: float, z0: float, z1: float,
            colour: tuple[float, ...], cls: int) -> None:  # fmt: skip
        """An axis-aligned box: its visible top, side and front faces, lit from above."""
        c = np.asarray(colour)
        if z1 < self.cam_height:
            self.poly([(u0, d0, z1), (u1, d0, z1), (u1, d1, z1), (u0, d1, z1)], tuple(np.minimum(c * 1.15, 255)), cls)
        if u1 < 0:
            self.poly([(u1, d0, z0), (u1, d1, z0), (u1, d1, z1), (u1, d0, z1)], tuple(c * 0.75), cls)
        elif u0 > 0:
            self.poly([(u0, d0, z0), (u0, d1, z0), (u0, d1, z1), (u0, d0, z1)], tuple(c * 0.75), cls)
        self.quad(u0, u1, d0, z0, z1, colour, cls)

    def stick(self, u: float, d: float, z0: float, z1: float, width: float, colour: tuple[float, ...], cls: int) -> None:
        """A thin vertical pole, at least one pixel wide."""
        import cv2

        x0, y0 = self.project(u, d, z0)
        _, y1 = self.project(u, d, z1)
        thick = max(1, int(round(width * self.focal / d)))
        for target, value in ((self.img, colour), (self.lab, cls)):
            cv2.line(target, (int(round(x0)), int(round(y0))), (int(round(x0)), int(round(y1))), value, thick)

    def disc(self, u: float, d: float, z: float, radius: float, colour: tuple[float, ...], cls: int,
             thickness: float = -1) -> None:  # fmt: skip
        import cv2

        x, y = self.project(u, d, z)
        r = max(1, int(round(radius * self.focal / d)))
        t = -1 if thickness < 0 else max(1, int(round(thickness * self.focal / d)))
        centre = (int(round(x)), int(round(y)))
        cv2.circle(self.img, centre, r, colour, t)
        cv2.circle(self.lab, centre, r, cls, t)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] of shape (h, w): a coarse random grid, upsampled."""
    import cv2

    coarse = rng.uniform(-1, 1, (cells, max(2, cells * w // max(h, 1)))).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _background(s: _Scene) -> dict[str, float]:
    """Sky, far end wall, road, pavements and the two facade planes, per pixel; returns the layout."""
    rng, h, w = s.rng, s.h, s.w
    ys = np.arange(h, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(w, dtype=np.float32)[None, :] + 0.5

    # Sky: a vertical gradient (clear, overcast or hazy), clouds from smooth noise.
    top, bottom = [((70, 120, 190), (170, 200, 230)), ((175, 178, 182), (205, 205, 205)), ((120, 140, 170), (215, 200, 180))][rng.integers(3)]  # fmt: skip
    a = np.clip(ys / max(s.horizon, 1), 0, 1)[..., None]
    sky = np.asarray(top, np.float32) * (1 - a) + np.asarray(bottom, np.float32) * a
    clouds = np.clip(_smooth_noise(rng, h, w, 4), 0, 1)[..., None] * rng.uniform(0, 60)
    s.img[:] = np.minimum(sky + clouds, 255)
    s.lab[:] = SKY

    d_end = rng.uniform(60, 150)  # depth of the far wall across the street
    road_c = rng.uniform(-2.5, 1.0)  # road centre relative to the camera
    road_half = rng.uniform(3.0, 5.0)
    pave = (rng.uniform(1.5, 4.0), rng.uniform(1.5, 4.0))
    u_left, u_right = road_c - road_half - pave[0], road_c + road_half + pave[1]

    # Far wall: one row of low buildings or trees at depth d_end.
    wall_top = s.project(0, d_end, rng.uniform(6, 20))[1]
    wall_bottom = s.project(0, d_end, 0)[1]
    rows = slice(int(np.clip(np.ceil(wall_top - 0.5), 0, h)), int(np.clip(np.ceil(wall_bottom - 0.5), 0, h)))
    wall_cls = TREE if rng.random() < 0.3 else BUILDING
    s.img[rows] = s.pick(GREENS if wall_cls == TREE else FACADES)
    s.lab[rows] = wall_cls

    # Ground, below the far wall: inverse perspective gives every pixel its (u, d).
    g0 = rows.stop
    img, lab = s.img[g0:], s.lab[g0:]  # views
    d = s.focal * s.cam_height / (ys[g0:] - s.horizon)
    u = (xs - s.vx) * d / s.focal - road_c  # across the road, from its centre
    side = np.abs(u)
    road = side < road_half
    pavement = ~road & (u > -road_half - pave[0]) & (u < road_half + pave[1])
    lab[road] = ROAD
    lab[pavement] = PAVEMENT
    tiles = np.asarray(s.pick(GREYS[1:] + [(170, 120, 100)], 10), np.float32)
    grout = (np.mod(u, 0.6) < 0.05) | ((np.mod(d, 0.6) < 0.05) & (d < 12))
    np.copyto(img, np.where(grout[..., None], tiles * 0.8, tiles), where=pavement[..., None])
    # Lane markings (road class, CamVid merges them): dashed centre line, solid edges.
    marks = np.abs(side - road_half + 0.3) < 0.07
    if rng.random() < 0.8:
        marks |= (side < 0.08) & (np.mod(d, 6.0) < 3.0)
    asphalt = np.asarray(s.pick(GREYS[:3], 8), np.float32)
    paint = np.asarray((215, 215, 205), np.float32)
    np.copyto(img, np.where(marks[..., None], paint, asphalt), where=road[..., None])

    # Facades: a vertical plane at u_left / u_right, cut into segments along the depth.
    glass = [(40, 50, 65), (90, 110, 140), (170, 195, 225)]  # dark, tinted, sky reflection
    split = int(np.clip(np.floor(s.vx), 0, w))
    for u_side, cols in ((u_left, slice(0, split)), (u_right, slice(split, w))):
        dx = xs[:, cols] - s.vx
        with np.errstate(divide="ignore"):
            dc = s.focal * u_side / dx  # (1, w') depth of the facade in each column
        visible = (dc > 0) & (dc < d_end)
        bounds = [0.0]
        while bounds[-1] < d_end:
            bounds.append(bounds[-1] + rng.uniform(6, 22))
        bounds = np.asarray(bounds)
        seg = np.clip(np.searchsorted(bounds, np.where(visible, dc, 0)) - 1, 0, len(bounds) - 2)
        kinds = rng.choice([BUILDING, TREE, FENCE], size=len(bounds) - 1, p=[0.72, 0.2, 0.08])
        heights = np.select([kinds == BUILDING, kinds == TREE], [rng.uniform(6, 22, len(kinds)), rng.uniform(3, 8, len(kinds))], rng.uniform(1.2, 2.2, len(kinds)))  # fmt: skip
        z = s.cam_height - (ys - s.horizon) * np.where(visible, dc, 0) / s.focal  # height up the facade
        on = visible & (z >= 0) & (z < heights[seg])
        kind = kinds[seg]  # (1, w')
        colours = np.array([s.pick(FACADES if k == BUILDING else GREENS if k == TREE else FENCE_COLOURS) for k in kinds], np.float32)
        # Windows on buildings, in facade coordinates (along the street, up the wall).
        along = np.mod((dc - bounds[seg]) / rng.uniform(2.5, 4.0), 1.0)
        floors = np.mod(z / rng.uniform(2.8, 3.6), 1.0)
        window = (
            (kind == BUILDING) & (along > 0.3) & (along < 0.75)
            & (floors > 0.35) & (floors < 0.8) & (z > 3.0) & (z < heights[seg] - 1.0)
        )  # fmt: skip
        # Light comes from one side: the two facades differ in brightness.
        wall_colour = colours[seg] * rng.uniform(0.7, 1.1)  # (1, w', 3)
        np.copyto(s.img[:, cols], np.where(window[..., None], np.asarray(s.pick(glass, 15), np.float32), wall_colour), where=on[..., None])
        np.copyto(s.lab[:, cols], np.broadcast_to(kind, on.shape).astype(np.uint8), where=on)
    return {"road_c": road_c, "road_half": road_half, "u_left": u_left, "u_right": u_right, "d_end": d_end}


def _car(s: _Scene, u0: float, d0: float) -> None:
    rng = s.rng
    width, length = rng.uniform(1.6, 2.0), rng.uniform(3.8, 4.8)
    body, roof = rng.uniform(0.75, 0.95), rng.uniform(1.35, 1.6)
    colour = s.pick(CAR_COLOURS, 10)
    tyre = (25.0, 25.0, 25.0)
    s.box(u0 + 0.1, u0 + 0.4, d0 + 0.3, d0 + length - 0.3, 0, 0.4, tyre, CAR)
    s.box(u0 + width - 0.4, u0 + width - 0.1, d0 + 0.3, d0 + length - 0.3, 0, 0.4, tyre, CAR)
    s.box(u0, u0 + width, d0, d0 + length, 0.25, body, colour, CAR)
    glass = s.pick([(40, 50, 65), (90, 110, 140)], 10)
    s.box(u0 + 0.15, u0 + width - 0.15, d0 + 0.9, d0 + length - 1.0, body, roof, glass, CAR)
    red = (200.0, 30.0, 30.0)
    s.quad(u0 + 0.08, u0 + 0.35, d0, body - 0.25, body - 0.1, red, CAR)
    s.quad(u0 + width - 0.35, u0 + width - 0.08, d0, body - 0.25, body - 0.1, red, CAR)


def _pedestrian(s: _Scene, u: float, d: float) -> None:
    rng = s.rng
    hp = rng.uniform(1.5, 1.9)
    legs, shirt, skin = s.pick(CLOTHES), s.pick(CLOTHES), s.pick(SKIN, 8)
    s.quad(u - 0.2, u - 0.03, d, 0, 0.48 * hp, legs, PEDESTRIAN)
    s.quad(u + 0.03, u + 0.2, d, 0, 0.48 * hp, legs, PEDESTRIAN)
    s.quad(u - 0.31, u + 0.31, d, 0.5 * hp, 0.82 * hp, shirt, PEDESTRIAN)
    s.quad(u - 0.23, u + 0.23, d, 0.46 * hp, 0.84 * hp, shirt, PEDESTRIAN)
    s.disc(u, d, 0.91 * hp, 0.09 * hp, skin, PEDESTRIAN)
    if rng.random() < 0.3:  # a bag
        s.quad(u + 0.25, u + 0.45, d, 0.35 * hp, 0.55 * hp, s.pick(CLOTHES), PEDESTRIAN)


def _bicyclist(s: _Scene, u: float, d: float) -> None:
    rng = s.rng
    frame, shirt, skin = s.pick(CAR_COLOURS), s.pick(CLOTHES), s.pick(SKIN, 8)
    dark = (30.0, 30.0, 30.0)
    if rng.random() < 0.5:  # seen from behind: a thin wheel under a rider
        s.quad(u - 0.05, u + 0.05, d, 0, 0.7, dark, BICYCLIST)
        s.quad(u - 0.15, u + 0.15, d, 0.55, 1.0, s.pick(CLOTHES), BICYCLIST)
        s.quad(u - 0.25, u + 0.25, d, 1.0, 1.5, shirt, BICYCLIST)
        s.disc(u, d, 1.62, 0.12, skin, BICYCLIST)
        return
    side = 1.0 if rng.random() < 0.5 else -1.0
    for du in (-0.55, 0.55):
        s.disc(u + du, d, 0.35, 0.34, dark, BICYCLIST, thickness=0.06)
    s.poly([(u - 0.55, d, 0.35), (u, d, 0.3), (u - 0.15 * side, d, 0.9)], frame, BICYCLIST)
    s.poly([(u + 0.5, d, 0.35), (u + 0.58, d, 0.35), (u + 0.5, d, 1.0), (u + 0.42, d, 1.0)], frame, BICYCLIST)
    s.poly([(u - 0.25, d, 0.9), (u - 0.05, d, 0.9), (u + 0.35, d, 1.4), (u + 0.12, d, 1.45)], shirt, BICYCLIST)
    s.poly([(u - 0.2, d, 0.95), (u, d, 0.9), (u + 0.05, d, 0.3), (u - 0.05, d, 0.3)], s.pick(CLOTHES), BICYCLIST)
    s.disc(u + 0.25, d, 1.58, 0.12, skin, BICYCLIST)


def _pole(s: _Scene, u: float, d: float, towards_road: float) -> None:
    rng = s.rng
    height = rng.uniform(3.5, 8.0)
    colour = s.pick([(90, 90, 92), (60, 70, 60), (40, 40, 45), (150, 148, 145)], 8)
    s.stick(u, d, 0, height, rng.uniform(0.1, 0.2), colour, POLE)
    kind = rng.random()
    if kind < 0.35:  # street lamp: an arm over the road and a lamp head
        arm = u + towards_road * rng.uniform(1.0, 2.0)
        s.poly([(u, d, height - 0.12), (arm, d, height - 0.12), (arm, d, height), (u, d, height)], colour, POLE)
        s.quad(min(arm, arm - towards_road * 0.5), max(arm, arm - towards_road * 0.5), d, height - 0.3, height - 0.1, (225.0, 225.0, 210.0), POLE)  # fmt: skip
    elif kind < 0.75:  # a sign: disc, triangle or panel
        z, r = rng.uniform(2.0, min(3.0, height - 0.2)), rng.uniform(0.25, 0.45)
        colour = s.pick(SIGN_COLOURS, 10)
        shape = rng.integers(3)
        if shape == 0:
            s.disc(u, d, z, r, colour, SIGN)
            s.disc(u, d, z, r * 0.6, (235.0, 235.0, 235.0), SIGN)
        elif shape == 1:
            s.poly([(u - r, d, z - r), (u + r, d, z - r), (u, d, z + r)], colour, SIGN)
        else:
            s.quad(u - r * 1.4, u + r * 1.4, d, z - r, z + r, colour, SIGN)
    elif kind < 0.9:  # traffic light: a dark box with one lit lamp
        z = min(rng.uniform(2.6, 3.4), height - 0.1)
        s.quad(u - 0.16, u + 0.16, d, z - 0.9, z, (35.0, 35.0, 38.0), SIGN)
        lit = rng.integers(3)
        for k, lamp in enumerate([(220.0, 40.0, 30.0), (230.0, 170.0, 30.0), (40.0, 200.0, 90.0)]):
            s.disc(u, d, z - 0.17 - 0.28 * k, 0.09, lamp if k == lit else (60.0, 60.0, 60.0), SIGN)


def _tree(s: _Scene, u: float, d: float) -> None:
    rng = s.rng
    trunk = s.pick([(100, 75, 50), (80, 65, 50), (140, 110, 80)], 8)
    top = rng.uniform(2.0, 3.2)
    s.stick(u, d, 0, top + 0.5, rng.uniform(0.2, 0.4), trunk, TREE)
    green = s.pick(GREENS, 12)
    for _ in range(rng.integers(3, 7)):
        shade = tuple(float(c) for c in np.clip(np.asarray(green) * rng.uniform(0.75, 1.2), 0, 255))
        s.disc(u + rng.normal(0, 0.7), d, top + rng.uniform(0.5, 2.5), rng.uniform(0.8, 1.7), shade, TREE)


def _fence(s: _Scene, u: float, d0: float, d1: float) -> None:
    rng = s.rng
    colour = s.pick(FENCE_COLOURS, 10)
    height = rng.uniform(0.9, 1.6)
    if rng.random() < 0.5:  # solid panels with darker posts
        s.poly([(u, d0, 0), (u, d1, 0), (u, d1, height), (u, d0, height)], colour, FENCE)
        post = tuple(c * 0.7 for c in colour)
        step = 2.5
    else:  # railing: two rails and thin posts, the background shows through
        for z0, z1 in ((height - 0.08, height), (0.4, 0.46)):
            s.poly([(u, d0, z0), (u, d1, z0), (u, d1, z1), (u, d0, z1)], colour, FENCE)
        post = colour
        step = 1.2
    for d in np.arange(d0, d1, step):
        s.stick(u, d, 0, height, 0.08, post, FENCE)


def _objects(s: _Scene, lay: dict[str, float]) -> None:
    """Place objects in the world and draw them back to front (painter's order)."""
    rng = s.rng
    c, half, d_end = lay["road_c"], lay["road_half"], lay["d_end"]
    far = min(50.0, d_end - 5)

    def depth(hi: float = far) -> float:
        """A depth between just beyond the bottom row and ``hi``, uniform in log (near ones count)."""
        return float(np.exp(rng.uniform(np.log(s.near * 1.15), np.log(max(hi, s.near * 1.5)))))

    def on_pavement(margin: float) -> tuple[float, float]:
        """A lateral position on a random pavement, and the direction of the road from it."""
        if rng.random() < 0.5:
            return rng.uniform(lay["u_left"] + margin, c - half - margin), 1.0
        return rng.uniform(c + half + margin, lay["u_right"] - margin), -1.0

    todo: list[tuple[float, Any]] = []
    for _ in range(rng.poisson(3.0)):
        d = depth()
        if rng.random() < 0.5:  # parked at the kerb
            u0 = c - half + 0.3 if rng.random() < 0.5 else c + half - 2.2
        else:  # driving in one of the lanes
            u0 = c + (-half / 2 if rng.random() < 0.5 else half / 2) - 0.9 + rng.normal(0, 0.3)
        todo.append((d, lambda u0=u0, d=d: _car(s, u0, d)))
    for _ in range(rng.poisson(2.5)):
        (u, _), d = on_pavement(0.6), depth()
        todo.append((d, lambda u=u, d=d: _tree(s, u, d)))
    for _ in range(rng.poisson(3.0)):
        side = rng.random() < 0.5
        u, toward = (c - half - 0.4, 1.0) if side else (c + half + 0.4, -1.0)
        d = depth()
        todo.append((d, lambda u=u, d=d, t=toward: _pole(s, u, d, t)))
    if rng.random() < 0.5:
        u = lay["u_left"] + 0.3 if rng.random() < 0.5 else lay["u_right"] - 0.3
        d0 = depth(20.0)
        d1 = d0 + rng.uniform(5.0, 30.0)
        todo.append((d1, lambda u=u, d0=d0, d1=d1: _fence(s, u, d0, d1)))
    for _ in range(rng.poisson(1.5)):
        if rng.random() < 0.15:  # crossing the road
            u = rng.uniform(c - half + 0.5, c + half - 0.5)
        else:
            u, _ = on_pavement(0.3)
        d = depth(35.0)
        todo.append((d, lambda u=u, d=d: _pedestrian(s, u, d)))
    if rng.random() < 0.35:
        u = c + (half - 0.8) * (1 if rng.random() < 0.5 else -1)
        d = depth(25.0)
        todo.append((d, lambda u=u, d=d: _bicyclist(s, u, d)))
    for _ in range(rng.poisson(0.7)):  # clutter nobody labels: bins, boxes
        (u, _), d = on_pavement(0.4), depth(30.0)
        colour = s.pick(CAR_COLOURS + GREENS, 15)
        todo.append((d, lambda u=u, d=d, col=colour: s.box(u - 0.3, u + 0.3, d, d + 0.6, 0, 1.0, col, IGNORE)))
    for _, draw in sorted(todo, key=lambda item: -item[0]):
        draw()


def _photograph(s: _Scene) -> np.ndarray:
    """Texture, illumination, shadows, colour cast, noise and blur: the scene as a camera sees it."""
    import cv2

    rng, h, w, img = s.rng, s.h, s.w, s.img
    grain = rng.normal(0, 1, (h, w)).astype(np.float32) + 1.2 * _smooth_noise(rng, h, w, max(4, h // 6))
    img += (TEXTURE[s.lab] * grain)[..., None]
    light = 1.0 + 0.25 * _smooth_noise(rng, h, w, 3)
    # A cast shadow: a wedge from the vanishing point darkens part of the street and what is on it.
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    slope = rng.uniform(-2.5, 2.5)
    shadow = (ys > s.horizon) & ((xs - s.vx) * np.sign(slope) > abs(slope) * (ys - s.horizon) * rng.uniform(0.3, 1.0))
    light = np.where(shadow, light * rng.uniform(0.5, 0.8), light)
    img *= light[..., None]
    img *= rng.uniform(0.65, 1.25) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    img += rng.normal(0, rng.uniform(2, 7), (h, w, 3)).astype(np.float32)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    return np.clip(img, 0, 255).astype(np.uint8)


def render(seed: int, split_stream: int, index: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of a stream: (H, W, 3) uint8 RGB and (H, W) uint8 labels (255 = clutter)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_stream, index]))
    scene = _Scene(rng, height, width)
    layout = _background(scene)
    _objects(scene, layout)
    return _photograph(scene), scene.lab


class SyntheticDataset(SegDataset):
    """Procedural street scenes; see the module docstring for what is drawn and the defaults."""

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        num_images: int | None = None,
        scale: float | None = None,
        size: tuple[int, int] | str | None = None,
    ) -> None:
        if split not in SPLIT_STREAM:
            raise FastalError(f"synthetic split {split!r}: expected one of {', '.join(SPLIT_STREAM)}")
        super().__init__("synthetic", split, CLASSES, scale=scale, size=size)
        n = DEFAULT_NUM_IMAGES[split] if num_images is None else int(num_images)
        if n < 1:
            raise FastalError(f"num_images {num_images}: must be >= 1")
        self.seed = int(seed)
        self.num_images = n

    def __len__(self) -> int:
        return self.num_images

    def image_id(self, i: int) -> str:
        return f"{self.split}_{self._check_index(i):06d}"

    def _raw_shape(self, i: int) -> tuple[int, int]:
        return DEFAULT_SIZE

    def _load_raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        # Drawn directly at the output size: sharper than drawing and then resizing.
        return render(self.seed, SPLIT_STREAM[self.split], i, *self.image_shape(i))

    def _identity_extra(self) -> dict[str, Any]:
        return {"seed": self.seed, "generator": GENERATOR_VERSION}

    def _content(self) -> list[Any]:
        return []

"""Procedurally drawn frontal chest radiographs with boxed findings.

The drawing is a small physical caricature of a PA chest film: every structure adds to a
projected density map D (soft tissue, bone, fluid add; lung air subtracts), the detector
sees ``1 - exp(-k * D)`` for a random exposure k, and a random window, gamma, blur and
quantum noise finish the image. All shapes are evaluated on a rotated, shifted and scaled
"body frame" grid, so patient size, position and rotation vary, and the boxes of the
findings are read off the same masks that drew them (so they stay exact after rotation).

Body frame: u runs from the image's left (the patient's right on a PA film) to the right,
v from head to feet, both roughly in [-0.5, 0.5]; the thorax spans about u in
[-0.34, 0.35]. Findings:

- consolidation: textured air-space opacity inside one lung (pneumonia);
- cardiomegaly: cardiothoracic ratio drawn in 0.53-0.66 (normal hearts 0.38-0.48);
- pleural effusion: fluid filling the lung base up to a meniscus that climbs laterally,
  blunting the costophrenic angle and hiding the diaphragm dome;
- pulmonary edema: bilateral perihilar ("bat-wing") haze plus Kerley B lines;
- nodule (< 3 cm) or mass (>= 3 cm): a round, for masses lobulated, solid opacity.

Everything is numpy on one (S, S) float32 grid plus a few scipy.ndimage calls: about
3-6 ms for a 256x256 image on one core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from medfuse.record.boxes import pixel_to_grid
from medfuse.record.case import Finding

FINDING_LABELS: tuple[str, ...] = (
    "consolidation", "cardiomegaly", "pleural effusion", "pulmonary edema", "nodule", "mass",
)
# Thorax width in body-frame units and its physical size, for nodule diameters in cm.
THORAX_WIDTH = 0.68
THORAX_WIDTH_CM = 30.0
# Lungs: centre u, centre v, half-width, half-height of the ellipse; the dome cuts the base.
_LUNGS = {"right": (-0.178, -0.02, 0.158, 0.36), "left": (0.188, -0.02, 0.155, 0.36)}


@dataclass
class CXRRequest:
    """What the image must show. Sides are 'right'/'left' in the patient's frame."""

    consolidation: str | None = None  # side, or None
    cardiomegaly: bool = False
    effusion: tuple[str, ...] = ()  # sides
    edema: bool = False
    nodule_cm: float | None = None  # diameter; >= 3 cm is labelled "mass"
    nodule_side: str = "right"


@dataclass
class CXRDrawing:
    """A drawn radiograph, its ground-truth findings and the geometry behind them."""

    pixels: np.ndarray  # (S, S) uint8
    findings: list[Finding]
    ctr: float  # cardiothoracic ratio as drawn
    params: dict[str, float] = field(default_factory=dict)


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    # Pixel centres in [-0.5, 0.5), shared by every image of this size.
    c = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    yy, xx = np.meshgrid(c, c, indexing="ij")  # (S, S) each
    return xx, yy


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _soft_inside(f: np.ndarray, width: float) -> np.ndarray:
    """1 inside (f < 0), 0 outside, with a smooth edge `width` wide in f units."""
    return _smoothstep(0.5 - f / width)


def _cloud(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field with features about size/cells pixels across, roughly N(0, 1)."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    # PIL's bicubic resize of a float image is several times faster than ndimage.zoom.
    field_ = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC))
    return field_ / (float(field_[::4, ::4].std()) + 1e-6)


def _bbox_grid(mask: np.ndarray) -> list[int] | None:
    """The 0-999 grid box around the True pixels of a (S, S) mask, or None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return pixel_to_grid([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], width=w, height=h)


class _Frame:
    """The body-frame grids of one image and a way to cut a local window out of them."""

    def __init__(self, u: np.ndarray, v: np.ndarray, angle: float, scale: float, tx: float, ty: float):
        self.u, self.v = u, v
        self.size = u.shape[0]
        self.ca, self.sa, self.scale, self.tx, self.ty = math.cos(angle), math.sin(angle), scale, tx, ty

    def window(self, cu: float, cv: float, radius: float) -> tuple[slice, slice]:
        """Pixel slices covering the body-frame disc (cu, cv, radius) plus a margin."""
        x0 = self.scale * (self.ca * cu - self.sa * cv) + self.tx
        y0 = self.scale * (self.sa * cu + self.ca * cv) + self.ty
        col, row = (x0 + 0.5) * self.size, (y0 + 0.5) * self.size
        r = radius * self.scale * self.size + 3
        def sl(c: float) -> slice:
            return slice(int(np.clip(math.floor(c - r), 0, self.size)), int(np.clip(math.ceil(c + r), 0, self.size)))
        return sl(row), sl(col)


def _lung_shape(u: np.ndarray, v: np.ndarray, side: str, dome_top: float, soft: float) -> tuple[np.ndarray, np.ndarray]:
    """Soft lung mask and the dome level v_d(u) for one lung, (S, S) each."""
    uc, vc, a, b = _LUNGS[side]
    ellipse = ((u - uc) / a) ** 2 + ((v - vc) / b) ** 2 - 1.0
    # Dome: highest medially-central, falls off laterally into the costophrenic angle.
    dome = dome_top + 4.0 * (u - uc) ** 2
    f = np.maximum(ellipse * 0.18, v - dome)
    return _soft_inside(f, soft), dome


def render_cxr(rng: np.random.Generator, request: CXRRequest | None = None, size: int = 256) -> CXRDrawing:
    """Draw one frontal chest radiograph (size x size, uint8) showing `request`'s findings."""
    request = request or CXRRequest()
    if size < 64:
        raise ValueError(f"image size must be at least 64 pixels, got {size}")
    # Anatomy and findings are drawn at half resolution (radiographs are smooth, and this
    # quarters the cost); the detector blur, noise and window are applied at full size.
    work = max(64, size // 2)
    xx, yy = _grid(work)
    px = 1.0 / work  # one working pixel in frame units (before scaling)

    # ---- acquisition and patient variation (the confounders of every pixel statistic)
    angle = math.radians(rng.normal(0.0, 2.5))
    scale = float(rng.uniform(0.86, 1.06))  # patient size relative to the detector
    tx, ty = (float(t) for t in rng.normal(0.0, 0.02, size=2))
    thick = float(rng.uniform(0.75, 1.35))  # body habitus: soft tissue density
    inspiration = float(rng.normal(0.0, 0.025))  # deeper breath -> lower domes
    exposure = float(rng.uniform(0.9, 2.2))
    ca, sa = math.cos(angle), math.sin(angle)
    x0, y0 = xx - tx, yy - ty
    u = (ca * x0 + sa * y0) / scale  # (S, S) body frame
    v = (-sa * x0 + ca * y0) / scale
    soft = 2.5 * px / scale
    frame = _Frame(u, v, angle, scale, tx, ty)

    # ---- body: torso thickness like a flattened cylinder, plus neck and shoulders
    tu, tv = (u / 0.46) ** 2, ((v - 0.06) / 0.62) ** 2
    torso = tu * tu + tv * tv - 1.0  # a superellipse, |u|^4 + |v|^4
    body_mask = _soft_inside(torso, 0.08)
    neck = _soft_inside(np.maximum(np.abs(u) - 0.085, -0.36 - v), soft)
    shoulders = _soft_inside(((u / 0.47) ** 2 + ((v + 0.33) / 0.1) ** 2) - 1.0, 0.6)
    body = np.maximum.reduce([body_mask * np.sqrt(np.clip(1.0 - (u / 0.47) ** 2, 0.0, 1.0)), neck * 0.6, shoulders * 0.55])

    # ---- lungs (air) with domes; the right dome sits a little higher
    dome_r = 0.165 + inspiration + rng.normal(0.0, 0.01)
    dome_l = 0.19 + inspiration + rng.normal(0.0, 0.01)
    lung_r, dome_line_r = _lung_shape(u, v, "right", dome_r, soft * 0.2)
    lung_l, dome_line_l = _lung_shape(u, v, "left", dome_l, soft * 0.2)
    lungs = {"right": lung_r, "left": lung_l}
    depth = np.sqrt(np.clip(1.0 - ((v + 0.02) / 0.42) ** 2, 0.05, 1.0))  # lungs thicker mid-chest

    # ---- heart: asymmetric ellipse on the left dome; cardiothoracic ratio from its width
    if request.cardiomegaly:
        ctr = float(rng.uniform(0.53, 0.66))
    else:
        ctr = float(np.clip(rng.normal(0.43, 0.03), 0.37, 0.48))
    heart_w = ctr * THORAX_WIDTH
    h_left, h_right = -0.36 * heart_w, 0.64 * heart_w  # extent to image left / right of centre
    hu0 = 0.015 + rng.normal(0.0, 0.008)
    hb = 0.10 + 0.3 * (heart_w - 0.29)  # taller hearts when wider
    hv0 = (dome_r + dome_l) / 2 + 0.01 - hb
    hu_scale = np.where(u < hu0, -h_left, h_right).astype(np.float32)
    heart_f = ((u - hu0) / hu_scale) ** 2 + ((v - hv0) / hb) ** 2 - 1.0
    heart = _soft_inside(heart_f, 0.06)
    heart_edge_mask = heart_f < 0.0

    # ---- mediastinum, aortic knob, hila, spine
    mediastinum = _soft_inside(np.maximum(np.abs(u - 0.01) - 0.055, -0.40 - v), soft) * (v < 0.3)
    knob = _soft_inside(((u - 0.075) / 0.04) ** 2 + ((v + 0.13) / 0.035) ** 2 - 1.0, 0.3)
    hila = sum(
        _soft_inside(((u - hu) / 0.035) ** 2 + ((v + 0.01) / 0.05) ** 2 - 1.0, 0.8) for hu in (-0.085, 0.095)
    )
    spine_band = _soft_inside(np.abs(u) - 0.035, soft)
    vertebrae = 0.75 + 0.25 * np.cos(2.0 * np.pi * (v + 0.5) / 0.048)
    spine = spine_band * vertebrae * body_mask

    # ---- ribs: posterior arcs (strong) and anterior arcs (faint) as phase bands
    au = np.abs(u)
    cage = _soft_inside(((u - 0.005) / 0.395) ** 2 + ((v + 0.02) / 0.40) ** 2 - 1.0, 0.05) * (au > 0.04)
    spacing = 0.072 + rng.normal(0.0, 0.003)
    post = (v - 0.55 * au + 1.3 * au * au + 0.4) / spacing
    post -= np.floor(post)  # rib phase in [0, 1); floor is much faster than %
    ant = (v + 0.35 * au - 0.2 * au * au + 0.37) / (spacing * 1.05)
    ant -= np.floor(ant)
    ribs = cage * (0.8 * _smoothstep(1.0 - np.abs(post - 0.2) / 0.16) + 0.35 * _smoothstep(1.0 - np.abs(ant - 0.5) / 0.12))
    clav = np.zeros_like(u)
    for sgn in (-1.0, 1.0):
        # A clavicle is a thick segment from the sternal notch out and slightly upward.
        ax, ay, bx, by = sgn * 0.04, -0.33, sgn * 0.33, -0.405
        dx, dy = bx - ax, by - ay
        t = np.clip(((u - ax) * dx + (v - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        ex, ey = u - ax - t * dx, v - ay - t * dy
        dist = np.sqrt(ex * ex + ey * ey)
        clav = np.maximum(clav, _soft_inside(dist - 0.014, 0.012))

    # ---- lung texture: vascular markings fading from the hila to the periphery
    vessels = _cloud(rng, work, max(8, size // 5))
    vh2 = (v + 0.01) ** 2
    hilar_dist = np.sqrt(np.minimum((u + 0.085) ** 2 + vh2, (u - 0.095) ** 2 + vh2))
    markings = 0.06 * np.clip(vessels, 0.0, None) * np.exp(-hilar_dist / 0.14)

    findings: list[Finding] = []
    opacity = {"right": np.zeros_like(u), "left": np.zeros_like(u)}  # fraction of air replaced
    extra_density = np.zeros_like(u)

    # ---- consolidation: a few textured blobs in one lung, clipped to that lung
    if request.consolidation:
        side = request.consolidation
        uc, vc, a, b = _LUNGS[side]
        zone_v = float(rng.choice([-0.2, -0.02, 0.1], p=[0.2, 0.35, 0.45]))
        cu = uc + rng.uniform(-0.5, 0.5) * a
        texture = _cloud(rng, work, max(8, size // 12))
        blob = np.zeros_like(u)
        for _ in range(int(rng.integers(1, 4))):
            bu, bv = cu + rng.normal(0, 0.03), zone_v + rng.normal(0, 0.04)
            su, sv = rng.uniform(0.05, 0.09), rng.uniform(0.05, 0.10)
            rows, cols = frame.window(bu, bv, 2.2 * max(su, sv))
            uw, vw = u[rows, cols], v[rows, cols]
            blob[rows, cols] = np.maximum(blob[rows, cols], np.exp(-(((uw - bu) / su) ** 2 + ((vw - bv) / sv) ** 2)))
        dens = _smoothstep((blob * (0.85 + 0.25 * texture) - 0.2) / 0.3) * float(rng.uniform(0.75, 0.97))
        opacity[side] = np.maximum(opacity[side], dens)
        box = _bbox_grid(dens * lungs[side] > 0.25)
        if box is not None:
            findings.append(Finding(label="consolidation", boxes=[box]))

    # ---- pulmonary edema: bilateral perihilar haze and Kerley B lines at the lateral bases
    if request.edema:
        haze_tex = _cloud(rng, work, max(8, size // 16))
        strength = float(rng.uniform(0.45, 0.7))
        boxes = []
        for side, hu in (("right", -0.085), ("left", 0.095)):
            uc, vc, a, b = _LUNGS[side]
            haze = np.exp(-(((u - hu) / 0.13) ** 2 + ((v - 0.0) / 0.17) ** 2)) * (0.8 + 0.2 * haze_tex)
            dome = dome_r if side == "right" else dome_l
            lat = uc - 0.8 * a if side == "right" else uc + 0.8 * a
            kerley = np.zeros_like(u)
            for _ in range(int(rng.integers(3, 7))):
                kv = dome - rng.uniform(0.01, 0.09)
                ku = lat + (rng.uniform(0.0, 0.05) if side == "right" else -rng.uniform(0.0, 0.05))
                length = rng.uniform(0.015, 0.035)
                rows, cols = frame.window(ku, kv, length)
                uw, vw = u[rows, cols], v[rows, cols]
                line = _soft_inside(np.maximum(np.abs(vw - kv) - 0.4 * px, np.abs(uw - ku) - length / 2), 1.5 * px)
                kerley[rows, cols] = np.maximum(kerley[rows, cols], line)
            dens = np.maximum(haze * strength, kerley * 0.7)
            opacity[side] = np.maximum(opacity[side], dens)
            box = _bbox_grid(((haze > 0.45) | (kerley > 0.5)) & (lungs[side] > 0.5))
            if box is not None:
                boxes.append(box)
        if boxes:
            findings.append(Finding(label="pulmonary edema", boxes=boxes))

    # ---- pleural effusion: fluid at the base up to a meniscus that rises laterally
    eff_boxes = []
    for side in request.effusion:
        uc, vc, a, b = _LUNGS[side]
        dome = dome_r if side == "right" else dome_l
        level = dome - float(rng.uniform(0.03, 0.17))  # medial fluid top
        lateral = np.clip((uc - u) / a if side == "right" else (u - uc) / a, -1.0, 1.2)
        meniscus = level - float(rng.uniform(0.03, 0.07)) * np.clip(lateral, 0.0, None) ** 2
        fluid = _soft_inside(meniscus - v, 0.02)  # 1 below the meniscus
        opacity[side] = np.maximum(opacity[side], fluid)
        box = _bbox_grid(fluid * lungs[side] > 0.5)
        if box is not None:
            eff_boxes.append(box)
    if eff_boxes:
        findings.append(Finding(label="pleural effusion", boxes=eff_boxes))

    # ---- nodule / mass: solid round (masses lobulated) opacity inside a lung
    if request.nodule_cm is not None:
        side = request.nodule_side
        uc, vc, a, b = _LUNGS[side]
        radius = request.nodule_cm / 2 / THORAX_WIDTH_CM * THORAX_WIDTH
        for _ in range(50):  # place it well inside the lung, away from the heart
            nu = uc + rng.uniform(-0.65, 0.65) * a
            nv = float(rng.choice([-0.22, -0.08, 0.05], p=[0.5, 0.3, 0.2])) + rng.normal(0, 0.04)
            inside = ((nu - uc) / a) ** 2 + ((nv - vc) / b) ** 2 < 0.55
            off_heart = not (hu0 - 0.4 * heart_w < nu < hu0 + 0.7 * heart_w and nv > hv0 - hb)
            off_mediastinum = abs(nu) > 0.1 + radius
            if inside and off_heart and off_mediastinum and nv < (dome_r if side == "right" else dome_l) - 2 * radius:
                break
        rows, cols = frame.window(nu, nv, radius * 1.4)
        uw, vw = u[rows, cols], v[rows, cols]
        lobes = 1.0
        if request.nodule_cm >= 3.0:
            k = int(rng.integers(3, 7))
            lobes = 1.0 + 0.12 * np.sin(k * np.arctan2(vw - nv, uw - nu) + rng.uniform(0, 2 * np.pi))
        r = np.sqrt((uw - nu) ** 2 + (vw - nv) ** 2) / (radius * lobes)
        solid = _soft_inside(r - 1.0, 0.35)
        extra_density[rows, cols] += 0.45 * solid * np.sqrt(np.clip(1.0 - np.clip(r, 0, 1) ** 2, 0.2, 1.0))
        opacity[side][rows, cols] = np.maximum(opacity[side][rows, cols], 0.9 * solid)
        label = "mass" if request.nodule_cm >= 3.0 else "nodule"
        nodule_mask = np.zeros(u.shape, dtype=bool)
        nodule_mask[rows, cols] = solid > 0.5
        box = _bbox_grid(nodule_mask)
        if box is not None:
            findings.append(Finding(label=label, boxes=[box]))

    if request.cardiomegaly:
        box = _bbox_grid(heart_edge_mask)
        if box is not None:
            findings.append(Finding(label="cardiomegaly", boxes=[box]))

    # ---- projected density and detector response
    air = sum(lungs[s] * (1.0 - opacity[s]) for s in ("right", "left")) * depth * (1.0 - 0.85 * heart)
    density = (
        thick * body
        - 0.82 * air
        + markings * (lung_r + lung_l)
        + 0.12 * heart
        + 0.18 * mediastinum * (1.0 - heart)
        + 0.15 * knob
        + 0.12 * hila
        + 0.35 * spine
        + 0.22 * ribs
        + 0.35 * clav
        + extra_density
    )
    # The stomach bubble under the left dome: air in the abdomen, position varies.
    gu, gv = 0.2 + rng.normal(0, 0.02), dome_l + 0.06 + rng.normal(0, 0.015)
    density -= 0.25 * _soft_inside(((u - gu) / 0.06) ** 2 + ((v - gv) / 0.035) ** 2 - 1.0, 0.5) * (v > dome_line_l)
    density = np.clip(density, 0.0, None)
    image = 1.0 - np.exp(-exposure * density)  # (work, work)
    blur = float(rng.uniform(0.3, 0.8)) * work / 128
    image = ndimage.gaussian_filter(image, blur, truncate=2.5)
    image = np.asarray(Image.fromarray(image, mode="F").resize((size, size), Image.Resampling.BICUBIC))  # (S, S)
    noise_level = float(rng.uniform(0.008, 0.03))
    image = image + noise_level * np.sqrt(np.clip(image, 0.02, 1.0)) * rng.standard_normal(image.shape, dtype=np.float32)
    # Display window as a modality LUT would set it: from the image's own range (a sparse
    # sample is enough), then moved by a random amount so brightness still varies.
    q_lo, q_hi = np.quantile(image[::4, ::4], [0.01, 0.995])
    span = max(float(q_hi - q_lo), 1e-3)
    lo = float(q_lo) + span * float(rng.uniform(-0.08, 0.25))
    hi = float(q_hi) - span * float(rng.uniform(-0.05, 0.15))
    gamma = float(rng.uniform(0.7, 1.5))
    # Gamma through a 1024-entry lookup table: np.power on the whole image is slow.
    lut = (np.linspace(0.0, 1.0, 1024) ** gamma * 255.0 + 0.5).astype(np.uint8)
    index = (np.clip((image - lo) / (hi - lo), 0.0, 1.0) * 1023.0 + 0.5).astype(np.int32)
    pixels = lut[index]  # (S, S) uint8

    order = {label: i for i, label in enumerate(FINDING_LABELS)}
    findings.sort(key=lambda f: order[f.label])
    params = {"angle_deg": math.degrees(angle), "scale": scale, "exposure": exposure, "thickness": thick,
              "noise": noise_level}
    return CXRDrawing(pixels=pixels, findings=findings, ctr=ctr, params=params)

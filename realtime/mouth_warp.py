"""The weight-free mouth, made from the avatar's own mouth: a warp of the lower face shaped by
the face mesh (models.face_mesh), computed once per avatar frame and scaled per audio frame.

Geometry, in the face's own frame (u along the eye line, v down the face, origin between the
inner lips):
  * the *midline* runs between the upper and lower inner lips. Everything above it moves with
    the upper lip, everything below with the jaw: the upper teeth (if the photo shows them)
    stay under the upper lip and the lower teeth ride down with the jaw;
  * the upper lip rises a little and the lower lip and the jaw drop, most at the middle of the
    mouth, tapering to the corners; under the corners the jaw's drop takes over from the lip's
    within the lower lip's thickness, so the chin and jaw line move as one bone;
  * nothing moves above the base of the nose, and outside the face's outline the motion fades
    to zero within a skirt as wide as the chin's travel: the chin may cover the neck, but no
    pixel outside the face and that skirt changes (they are copied, not resampled);
  * spreading ("ee") and rounding ("oo") move the lips and corners along u;
  * where the lips part, the gap shows a shaded cavity in the avatar's own lip colour, darker
    in the middle, with a one-pixel anti-aliased edge and only where the gap is over a pixel.
Per output frame that is a handful of array operations on the lower face and one cv2.remap
(bilinear: no filter wider than the remap's own interpolation; nothing is smoothed).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models import face_mesh as fmesh
from realtime.mouth_region import face_frame, face_region


@dataclass(frozen=True)
class WarpConfig:
    max_gap_face_heights: float = 0.14  # the lips' parting at full openness
    jaw_share: float = 0.75  # of the parting: the jaw's drop; the rest is the upper lip's rise
    corner_share: float = 0.15  # the mouth corners' drop, as a share of the jaw's
    spread_mouth_widths: float = 0.10  # each corner's travel at full spread or rounding
    cavity_shade: float = 0.28  # the cavity's colour: the avatar's lip colour times this
    # Give back the avatar's own fine detail (the image minus its 3x3 blur, taken from the
    # nearest source pixel) where bilinear resampling loses it, in proportion to how far between
    # pixels each sample lands. On by default: at 0.5 (chosen on the embedded avatar, where it
    # brings the moved mouth's Laplacian variance from 0.72 of the photo's to 1.00) it costs one
    # nearest-pixel remap of the region; bench_visual measures it on a held-out face.
    detail: float = 0.5
    # Teeth drawn in the cavity, only for an avatar whose lips are closed at rest (one whose
    # lips are apart shows its own teeth, which the warp moves with the lips).
    own_teeth_gap_face_heights: float = 0.02
    # Lips apart at rest: where between them (0 upper lip .. 1 lower lip) the mouth parts.
    own_teeth_parting: float = 0.85
    tooth_face_heights: float = 0.03
    teeth_bgr: tuple[float, float, float] = (168.0, 192.0, 212.0)  # ivory, in the lip's shadow


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _lens(un: np.ndarray) -> np.ndarray:
    """The lips' parting across the mouth: 1 in the middle, 0 at the corners, rounded there."""
    return np.clip(1.0 - un * un, 0.0, 1.0) ** 0.6


def _taper_beyond(un: np.ndarray) -> np.ndarray:
    """1 across the mouth (|un| <= 1), falling to 0 one half-mouth-width beyond each corner."""
    return np.clip(2.0 - np.abs(un), 0.0, 1.0)


@dataclass
class MouthRig:
    """Everything one avatar frame's warp needs, over the lower face's bounding box `roi`."""

    roi: tuple[int, int, int, int]  # y0, y1, x0, x1
    support: np.ndarray  # bool (h, w): the only pixels that may change
    grid_x: np.ndarray
    grid_y: np.ndarray
    s: np.ndarray  # signed distance below the midline, along the face's down direction, px
    un: np.ndarray  # position across the mouth: -1 and 1 at the inner corners
    corner_reach: np.ndarray  # where the corners' drop applies: 1 at the mouth, 0 out on the cheeks
    up_v: np.ndarray  # the upper part's drop per unit openness (negative: it rises), px
    lip_v: np.ndarray  # the lower lip's drop per unit openness, px
    jaw_v: np.ndarray  # the jaw's drop per unit openness, px
    lip_lo_px: float  # the lower lip's thickness: where the lip's drop gives way to the jaw's
    spread_u: np.ndarray  # travel along the eye line per unit of spread, px
    down: np.ndarray  # (2,) unit vector down the face, image coordinates
    across: np.ndarray  # (2,) unit vector along the eye line
    gap_px: float  # lips' parting at full openness
    jaw_px: float
    corner_px: float
    spread_frac: float
    cavity_bgr: np.ndarray  # (3,) float32
    fine: np.ndarray | None  # (h, w, 3) float32: the region's own detail (image minus its 3x3 blur)
    detail: float
    tooth_px: float  # the upper teeth's visible height when the mouth is open; 0: the photo shows its own
    teeth_bgr: np.ndarray  # (3,) float32

    @property
    def max_drop_px(self) -> float:
        return self.jaw_px


def build_rig(frame: np.ndarray, points: np.ndarray, cfg: WarpConfig = WarpConfig()) -> MouthRig:
    """Precompute one avatar frame's warp from its mesh `points` (468, 2 or 3) in image pixels."""
    p = points[:, :2].astype(np.float64)
    h_img, w_img = frame.shape[:2]
    across, down = face_frame(p)
    upper, lower = p[list(fmesh.UPPER_INNER_LIP)], p[list(fmesh.LOWER_INNER_LIP)]
    # Where the mouth parts. Lips apart at rest show the upper teeth between them: parting at the
    # middle would cut those teeth in two (half up with the lip, half down with the jaw), so the
    # parting line then runs just above the lower lip and the teeth stay whole under the upper lip.
    shows_teeth = fmesh.inner_lip_gap(p) > cfg.own_teeth_gap_face_heights
    mid = upper + (cfg.own_teeth_parting if shows_teeth else 0.5) * (lower - upper)
    origin = mid[len(mid) // 2]

    def uv(q):
        d = np.asarray(q) - origin
        return d @ across, d @ down

    mu, mv = uv(mid)
    order = np.argsort(mu)
    mu, mv = mu[order], mv[order]
    hw = max(2.0, (mu[-1] - mu[0]) / 2)
    uc = (mu[-1] + mu[0]) / 2
    height = fmesh.face_height(p)
    gap = cfg.max_gap_face_heights * height
    jaw = cfg.jaw_share * gap
    rise = gap - jaw
    corner = cfg.corner_share * jaw
    skirt = max(2.0, jaw)
    _, v_sn = uv(p[fmesh.SUBNASALE])
    _, v_chin = uv(p[fmesh.CHIN])
    _, v_lo = uv(p[fmesh.LOWER_OUTER_LIP[5]])
    # The jaw's drop takes over from the lip's over at least 1.5 drops: a steeper change would fold.
    lip_lo = max(2.0, float(v_lo - np.interp(0.0, mu, mv)), 1.5 * jaw)
    d_sn = max(2.0, float(np.interp(0.0, mu, mv) - v_sn))
    d_chin = max(4.0, float(v_chin - np.interp(0.0, mu, mv)))
    oval = p[list(fmesh.FACE_OVAL)]
    ou, _ = uv(oval)
    face_half = max(hw * 1.5, float(ou.max() - ou.min()) / 2 * 0.9)

    # The region: from the base of the nose down to the chin plus its travel and the skirt.
    corners = [origin + across * u_ + down * v_ for u_ in (ou.min() - skirt, ou.max() + skirt) for v_ in (v_sn, 0.0)]
    lower_oval = oval[(oval - origin) @ down > v_sn]
    pts = np.vstack([corners, lower_oval + down * skirt, lower_oval - across * skirt, lower_oval + across * skirt])
    x0, y0 = np.floor(pts.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w_img, x1), min(h_img, y1)
    gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    du, dv = (gx - origin[0]), (gy - origin[1])
    u = du * across[0] + dv * across[1]
    v = du * down[0] + dv * down[1]
    s = v - np.interp(u, mu, mv).astype(np.float32)
    un = (u - uc) / hw
    t = _lens(un)

    # The motion fades to zero toward the edge of the face region (the face's outline, and the
    # chin's travel below it): nothing outside it changes.
    region = face_region(points, (h_img, w_img), jaw)[y0:y1, x0:x1].astype(np.uint8)
    keep = np.clip(cv2.distanceTransform(region, cv2.DIST_L2, 3) / skirt, 0.0, 1.0)
    lateral = _taper_beyond(un)
    above = _smoothstep(1.0 + s / d_sn)  # 0 at the base of the nose, 1 at the midline
    below_chin = np.clip(1.0 - s / (d_chin + skirt), 0.0, 1.0)
    profile = corner * (1 - t)
    up_v = keep * above * lateral * (profile - rise * t)
    lip_v = keep * lateral * (profile + jaw * t)
    jaw_v = keep * jaw * np.sqrt(np.clip(1.0 - (u / face_half) ** 2, 0.0, 1.0))
    across_mouth = np.where(np.abs(un) <= 1.0, un, np.sign(un) * lateral)
    spread_u = keep * cfg.spread_mouth_widths * 2 * hw * across_mouth * np.where(s < 0, above, below_chin)
    support = region.astype(bool) & (s > -d_sn)

    lips = np.zeros(frame.shape[:2], np.uint8)
    cv2.fillPoly(lips, [np.round(p[list(fmesh.UPPER_OUTER_LIP + fmesh.LOWER_OUTER_LIP[::-1])]).astype(np.int32)], 1)
    lip_colour = frame[lips.astype(bool)].reshape(-1, 3).mean(axis=0) if lips.any() else np.full(3, 90.0)
    f32 = np.float32
    return MouthRig(
        roi=(int(y0), int(y1), int(x0), int(x1)),
        support=support,
        grid_x=gx,
        grid_y=gy,
        s=s.astype(f32),
        un=un.astype(f32),
        corner_reach=(keep * lateral).astype(f32),
        up_v=up_v.astype(f32),
        lip_v=lip_v.astype(f32),
        jaw_v=jaw_v.astype(f32),
        lip_lo_px=lip_lo,
        spread_u=spread_u.astype(f32),
        down=down,
        across=across,
        gap_px=gap,
        jaw_px=jaw,
        corner_px=corner,
        spread_frac=cfg.spread_mouth_widths,
        cavity_bgr=(lip_colour * cfg.cavity_shade).astype(f32),
        fine=_fine_detail(frame[y0:y1, x0:x1]) if cfg.detail > 0 else None,
        detail=cfg.detail,
        tooth_px=0.0 if shows_teeth else cfg.tooth_face_heights * height,
        teeth_bgr=np.array(cfg.teeth_bgr, f32),
    )


def apply_rig(frame: np.ndarray, rig: MouthRig, openness: float, width: float) -> np.ndarray:
    """`frame` with the mouth `openness` (0..1) open and `width` (-1 round .. 1 spread) wide;
    a new array; pixels outside `rig.support` are the input's, bit for bit."""
    if openness <= 0.0 and width == 0.0:
        return frame
    y0, y1, x0, x1 = rig.roi
    a = np.float32(openness)
    s = rig.s
    # The lips' lines in this output frame, relative to the resting midline.
    t = _lens(rig.un / np.float32(1.0 + width * rig.spread_frac))
    profile = rig.corner_px * (1 - t) * rig.corner_reach
    s_top = a * (profile - (rig.gap_px - rig.jaw_px) * t)
    s_bot = a * (profile + rig.jaw_px * t)
    lower = s >= s_bot
    # Below the lower lip the jaw's drop takes over from the lip's within the lip's thickness.
    w_jaw = np.clip((s - s_bot) / np.float32(rig.lip_lo_px), 0.0, 1.0)
    drop = np.where(lower, a * (rig.lip_v + w_jaw * (rig.jaw_v - rig.lip_v)), a * rig.up_v)
    slide = np.float32(width) * rig.spread_u
    map_x = rig.grid_x - (drop * np.float32(rig.down[0]) + slide * np.float32(rig.across[0]))
    map_y = rig.grid_y - (drop * np.float32(rig.down[1]) + slide * np.float32(rig.across[1]))
    region = frame[y0:y1, x0:x1]
    warped = cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    if rig.fine is not None:
        warped += _lost_detail(rig, map_x, map_y)
    # The cavity: between the two lip lines, where they are more than a pixel apart.
    gap = s_bot - s_top
    inside = np.minimum(s - s_top, s_bot - s)
    alpha = np.clip(inside + 0.5, 0.0, 1.0) * np.clip(gap - 1.0, 0.0, 1.0)
    depth = np.clip(inside / np.maximum(gap / 2, 1.0), 0.0, 1.0)
    shade = (1.6 - 1.0 * depth)[..., None] * rig.cavity_bgr
    if rig.tooth_px > 0:
        # A closed-mouthed avatar has no teeth to show: a band of them under the upper lip,
        # a third of the gap at most, fading into the cavity's shadow toward the corners.
        band = np.minimum(np.float32(rig.tooth_px), gap / 3)
        teeth = np.clip(band - (s - s_top) + 0.5, 0.0, 1.0) * np.clip(1.5 * (1.0 - np.abs(rig.un)), 0.0, 1.0)
        teeth_bgr = rig.teeth_bgr * (0.55 + 0.45 * np.clip(1 - np.abs(rig.un), 0, 1))[..., None]
        shade += teeth[..., None] * (teeth_bgr - shade)
    alpha = alpha[..., None]
    mixed = np.clip(warped * (1 - alpha) + shade * alpha, 0, 255)
    out = frame.copy()
    out[y0:y1, x0:x1] = np.where(rig.support[..., None], mixed.round().astype(np.uint8), region)
    return out


def _fine_detail(region: np.ndarray) -> np.ndarray:
    return region.astype(np.float32) - cv2.GaussianBlur(region, (3, 3), 0).astype(np.float32)


def _lost_detail(rig: MouthRig, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """The avatar's own fine detail at each output pixel's source (nearest pixel: no resampling),
    scaled by how much of it bilinear interpolation took there: nothing where a pixel moved by
    whole pixels, most where it landed half-way between two."""
    y0, _, x0, _ = rig.roi
    fine = cv2.remap(rig.fine, map_x - x0, map_y - y0, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
    fx, fy = map_x - np.floor(map_x), map_y - np.floor(map_y)
    lost = np.float32(2 * rig.detail) * (fx * (1 - fx) + fy * (1 - fy))
    return fine * lost[..., None]

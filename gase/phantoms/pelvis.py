"""Male pelvis phantom: body outline with skin and subcutaneous fat, gluteal, iliopsoas, obturator,
pelvic-floor and thigh muscles, iliac vessels, hip bones (acetabulum, ilium, ischium, pubis),
femora (head, neck, trochanters, shaft), sacrum and coccyx, bladder (wall and urine), prostate
(peripheral and transition zones, urethra, and the fibromuscular capsule
that outlines it, dark on T2), seminal vesicles and rectum (wall, content, gas).

Subject frame (mm, RAS): origin between the femoral head centres, +z superior. The prostate sits
behind the lower pubic symphysis with the bladder on top of it, the rectum behind both following
the sacral curve; bladder filling, prostate size (BPH), rectal distension and gas, fat thickness
and bone sizes vary per subject. The patient lies supine: the back is flattened by the table and
rectal gas rises anteriorly.
"""
from __future__ import annotations

import numpy as np

from .anatomy import subject_rng, tissue_ids
from .shapes import (FAR, Frame, SmoothField, WaveField, box_of, capsule, ellipsoid, seg_box, smax,
                     smoothstep, union_into)

T = tissue_ids("pelvis")


def _ellipse(U, V, ax, ay):
    k0 = np.sqrt((U / ax) ** 2 + (V / ay) ** 2)
    k1 = np.sqrt((U / (ax * ax)) ** 2 + (V / (ay * ay)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, np.float32(1e-6))


class PelvisSubject:
    """One male pelvis drawn from ``seed``; :meth:`sample` paints its tissue map on a grid."""

    anatomy = "pelvis"

    def __init__(self, seed: int) -> None:
        self.seed = seed
        r = subject_rng("pelvis", seed, "shape")
        u = r.uniform
        s = self.s = float(np.clip(r.normal(1.0, 0.05), 0.9, 1.1))
        self.shift = (u(-4, 4), u(-5, 5), u(-8, 8))
        self.t_sub = u(8.0, 30.0)
        self.body = (0.0, -8.0, (112 * s + 0.7 * self.t_sub), (88 * s + 0.7 * self.t_sub))
        # prostate, bladder, seminal vesicles, rectum
        size = u(0.85, 1.3)
        self.p_c = (0.0, 18 * s + u(-3, 3), -26 * s + u(-4, 4))
        self.p_r = (22 * s * size, 16 * s * size, 19 * s * size)
        self.tz = 0.55 + 0.25 * (size - 0.85) / 0.45
        fill = u(0.45, 1.5)
        self.b_r = tuple(v * s * fill ** (1 / 3) for v in (38.0, 30.0, 30.0))
        self.b_c = (u(-4, 4), 22 * s + u(-4, 4), self.p_c[2] + self.p_r[2] + 0.9 * self.b_r[2])
        self.b_wall = 3.0 + 2.5 * (1.5 - fill)
        dist = u(0.8, 1.3)
        self.r_r = (19 * s * dist, 14 * s * dist)
        self.gas = u(-0.3, 0.5)
        self.z_ar = self.p_c[2] - self.p_r[2] - u(4, 10)
        # bones
        self.head_r = 23 * s * u(0.93, 1.07)
        self.head_x = 78 * s * u(0.96, 1.04)
        self.sacrum = [(z * s, y * s, wx * s, wy * s) for z, y, wx, wy in
                       ((92, -50, 50, 18), (66, -62, 44, 16), (40, -72, 36, 14), (15, -78, 26, 11), (-8, -76, 15, 8), (-26, -69, 8, 6))]
        y_sac = np.interp(self.p_c[2] + 60, [z for z, *_ in self.sacrum[::-1]], [y + wy for _, y, _, wy in self.sacrum[::-1]])
        y_pr = self.p_c[1] - self.p_r[1] - u(2.0, 4.0) - self.r_r[1]
        self.rect_z = [-300.0, self.z_ar, self.p_c[2], self.p_c[2] + 30, self.p_c[2] + 60, 300.0]
        self.rect_y = [y_pr + 4, y_pr + 4, y_pr, 0.5 * (y_pr + y_sac + 6 + self.r_r[1]), y_sac + 6 + self.r_r[1], y_sac + 6 + self.r_r[1]]
        self.fields = {k: SmoothField(r, a, lo, hi) for k, a, lo, hi in
                       (("body", 4.0, 80, 250), ("fat", 0.3, 40, 150), ("organ", 1.5, 30, 90), ("bone", 0.7, 25, 80),
                        ("gas", 0.3, 20, 60), ("rect", 1.5, 30, 90))}
        self.septa = WaveField(r, 1.0, 30, 90)
        # its own stream, so that every other draw (and so every earlier subject) stays as it was
        self.capsule_mm = float(subject_rng("pelvis", seed, "capsule").uniform(1.2, 2.0))

    def sample(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        f = Frame(x, y, z, shift=self.shift)
        tis = np.full(f.shape, T["air"], np.uint8)
        b = f.full()
        d_body = self._body_sdf(b)
        tis[d_body <= 0] = T["skin"]
        tis[d_body <= -2.0] = T["fat"]
        t_loc = np.zeros(d_body.shape, np.float32)
        band = (d_body < -2.0) & (d_body > -2.0 - 2.0 * self.t_sub)  # the fat layer only varies near the skin
        t_loc[band] = self._fat_thickness(*(np.broadcast_to(c, d_body.shape)[band] for c in (b.X, b.Y, b.Z)))
        deep = (d_body < -2.0 - 2.0 * self.t_sub) | (band & (d_body < -2.0 - t_loc))
        self._muscles(f, tis, deep, band & (d_body > -12.0 - t_loc) & (d_body < -2.0 - t_loc))
        del t_loc, band
        self._vessels(f, tis)
        self._organs(f, tis)
        self._bones(f, tis)
        tis[d_body > 0] = T["air"]
        return tis

    def _body_sdf(self, b):
        cx, cy, ax, ay = self.body
        ax = ax * (1 - 1.5e-5 * (b.Z + 15) ** 2)
        d = _ellipse(b.X - np.float32(cx), b.Y - np.float32(cy), ax, np.float32(ay)) + self.fields["body"](b.X, b.Y, b.Z)
        table = np.float32(cy - 0.9 * ay)
        return smax(d, table - b.Y, 12.0)

    def _fat_thickness(self, X, Y, Z):
        return self.t_sub * (1 + self.fields["fat"](X, Y, Z)) * (1 + 0.3 * smoothstep(0, -60, Y))

    def _muscles(self, f, tis, deep, under_fat) -> None:
        """Below the subcutaneous fat everything is muscle (gluteal, hip, thigh, pelvic wall) except
        the fat compartments: pelvic cavity, ischio-anal fossae, femoral triangles, septa."""
        s, b = self.s, f.full()
        tis[deep] = T["muscle"]
        zc = b.Z.ravel()
        ax = np.interp(zc, [-75, -45, 0, 40, 90], [12, 28, 48, 68, 85]).astype(np.float32).reshape(b.Z.shape) * s
        ay = np.interp(zc, [-75, -45, 0, 40, 90], [18, 34, 54, 62, 70]).astype(np.float32).reshape(b.Z.shape) * s
        yc = np.interp(zc, [-75, 0, 90], [-8, 4, 12]).astype(np.float32).reshape(b.Z.shape) * s
        cavity = _ellipse(b.X, b.Y - yc, ax, ay) + self.fields["organ"](b.X, b.Y, b.Z) * 2 < 0
        tis[cavity & deep] = T["fat"]
        mus = tis == T["muscle"]
        septa = np.abs(self.septa(*(np.broadcast_to(c, tis.shape)[mus] for c in (b.X, b.Y, b.Z)))) < 0.04
        tis.ravel()[np.flatnonzero(mus)[septa]] = T["fat"]
        for sg in (-1, 1):
            for c, rr in (((sg * 40 * s, -32 * s, -52 * s), (16 * s, 26 * s, 24 * s)),      # ischio-anal fossa
                          ((sg * 62 * s, 40 * s, -45 * s), (18 * s, 14 * s, 40 * s))):      # femoral triangle
                blk = f.block(*box_of(c, rr, 3))
                if blk is not None:
                    d = ellipsoid(blk.X, blk.Y, blk.Z, c, rr) + self.fields["organ"](blk.Y, blk.Z, blk.X) * 2
                    tis[blk.sl][(d < 0) & deep[blk.sl]] = T["fat"]
        # rectus abdominis: a 10 mm layer under the anterior subcutaneous fat
        tis[under_fat & (np.abs(b.X) < 60 * s) & (b.Y > 0) & (b.Z > -20)] = T["muscle"]
        # levator ani: a funnel around the rectum and prostate
        blk = f.block((-60 * s, -60 * s, self.z_ar - 10), (60 * s, 40 * s, self.p_c[2] + 10))
        if blk is not None:
            rad = 20 * s + 0.6 * (blk.Z - (self.z_ar - 10))
            rho = np.sqrt((blk.X / 1.25) ** 2 + (blk.Y - np.float32(self.p_c[1] - 12 * s)) ** 2)
            tis[blk.sl][np.abs(rho - rad) < 3.0] = T["muscle"]

    def _vessels(self, f, tis) -> None:
        s = self.s
        for sg in (-1, 1):
            for a, e, rad in (((sg * 48 * s, 35 * s, 120.0), (sg * 78 * s, 40 * s, -120.0), 4.0 * s),
                              ((sg * 38 * s, 30 * s, 120.0), (sg * 68 * s, 34 * s, -120.0), 6.0 * s)):
                blk = f.block(*seg_box(a, e, rad))
                if blk is not None:
                    tis[blk.sl][capsule(blk.X, blk.Y, blk.Z, a, e, rad) < 0] = T["vessel"]

    def _organs(self, f, tis) -> None:
        s = self.s
        # seminal vesicles
        for sg in (-1, 1):
            c = (sg * 16 * s, self.p_c[1] - 0.9 * self.p_r[1] - 3, self.p_c[2] + self.p_r[2] + 6 * s)
            rr = (16 * s, 5.5 * s, 7 * s)
            blk = f.block(*box_of(c, rr, 3))
            if blk is not None:
                d = ellipsoid(blk.X, blk.Y, blk.Z, c, rr) + self.fields["organ"](blk.X, blk.Y, blk.Z) * 0.5
                tis[blk.sl][d < 0] = T["seminal_vesicle"]
        # bladder
        blk = f.block(*box_of(self.b_c, self.b_r, 6))
        if blk is not None:
            d = ellipsoid(blk.X, blk.Y, blk.Z, self.b_c, self.b_r) + self.fields["organ"](blk.X, blk.Y, blk.Z)
            v = tis[blk.sl]
            v[d < 0] = T["bladder_wall"]
            v[d < -self.b_wall] = T["urine"]
        self._rectum(f, tis)
        # prostate with transition zone and urethra (painted last: the bladder base rests on it)
        c, rr = self.p_c, self.p_r
        blk = f.block(*box_of(c, rr, 4))
        if blk is not None:
            d = ellipsoid(blk.X, blk.Y, blk.Z, c, rr) + self.fields["organ"](blk.Z, blk.X, blk.Y)
            ctz = (0.0, c[1] + 0.15 * rr[1], c[2] + 0.1 * rr[2])
            dtz = ellipsoid(blk.X, blk.Y, blk.Z, ctz, tuple(self.tz * v for v in rr))
            dur = capsule(blk.X, blk.Y, blk.Z, (0, c[1] + 0.25 * rr[1], c[2] - rr[2] - 5), (0, c[1] + 0.25 * rr[1], c[2] + rr[2] + 5), 2.5)
            v = tis[blk.sl]
            v[d < 0] = T["prostate_peripheral"]
            v[(d < 0) & (dtz < 0)] = T["prostate_transition"]
            # the capsule: a fibromuscular rim, dark on T2, that outlines the gland against the fat
            v[(d < 0) & (d > -self.capsule_mm)] = T["prostate_capsule"]
            v[(d < 0) & (dur < 0)] = T["urethra"]

    def _rectum(self, f, tis) -> None:
        rx, ry = self.r_r
        lo = (-rx - 6, min(self.rect_y) - ry - 6, self.z_ar - 5)
        hi = (rx + 6, max(self.rect_y) + ry + 6, 300.0)
        blk = f.block(lo, hi)
        if blk is None:
            return
        zc = blk.Z.ravel()
        yc = np.interp(zc, self.rect_z, self.rect_y).astype(np.float32).reshape(blk.Z.shape)
        taper = 0.45 + 0.55 * smoothstep(self.z_ar, self.z_ar + 25, blk.Z)
        d = _ellipse(blk.X, blk.Y - yc, rx * taper, ry * taper) + self.fields["rect"](blk.X, blk.Y, blk.Z)
        d = smax(d, np.float32(self.z_ar) - blk.Z, 4.0)
        v = tis[blk.sl]
        v[d < 0] = T["rectal_wall"]
        lumen = (d < -3.0) & (taper > 0.6)
        v[lumen] = T["rectal_content"]
        g = np.clip(self.gas + self.fields["gas"](0, 0, blk.Z), 0.0, 0.75)
        v[lumen & (blk.Y > yc + ry * taper * (1 - 2 * g))] = T["rectal_gas"]

    def _bones(self, f, tis) -> None:
        s = self.s
        bb = f.block((-135 * s, -110 * s, -200), (135 * s, 90 * s, 200))
        if bb is None:
            return
        hip = np.full(bb.shape, FAR, np.float32)
        fem = np.full(bb.shape, FAR, np.float32)
        view = tis[bb.sl]
        R = self.head_r
        for sg in (-1, 1):
            H = (sg * self.head_x, 2 * s, 0.0)
            blk = f.block(*box_of(H, (R + 16 * s,) * 3, 2), within=bb)
            if blk is not None:
                px, py, pz = blk.X - H[0], blk.Y - H[1], blk.Z - H[2]
                rho = np.sqrt(px * px + py * py + pz * pz)
                n = np.array([sg * 0.72, 0.42, -0.55]) / np.linalg.norm([0.72, 0.42, -0.55])
                opening = (px * n[0] + py * n[1] + pz * n[2]) - 0.25 * rho
                cup = np.maximum(np.maximum(rho - (R + 13 * s), (R + 3.3) - rho), opening)
                union_into(hip, bb, blk, cup, 2.0)
            for kind, a, e, rad in (("c", (sg * 70 * s, -14 * s, -14 * s), (sg * 55 * s, -30 * s, -52 * s), 12 * s),
                                    ("c", (sg * 66 * s, 22 * s, -6 * s), (sg * 12 * s, 60 * s, -18 * s), 10 * s),
                                    ("c", (sg * 14 * s, 58 * s, -44 * s), (sg * 50 * s, -24 * s, -54 * s), 8 * s),
                                    ("e", (sg * 56 * s, -34 * s, -55 * s), (15 * s, 17 * s, 14 * s), 0),
                                    ("e", (sg * 11 * s, 62 * s, -30 * s), (9 * s, 12 * s, 19 * s), 0)):
                if kind == "c":
                    blk = f.block(*seg_box(a, e, rad + 5), within=bb)
                    d = capsule(blk.X, blk.Y, blk.Z, a, e, rad) if blk is not None else None
                else:
                    blk = f.block(*box_of(a, e, 5), within=bb)
                    d = ellipsoid(blk.X, blk.Y, blk.Z, a, e) if blk is not None else None
                union_into(hip, bb, blk, d, 4 * s)
            # ilium: an oblique plate from the sacro-iliac joint to the anterior superior spine
            c = (sg * 78 * s, -22 * s, 70 * s)
            blk = f.block((c[0] - 60 * s, c[1] - 60 * s, 10 * s), (c[0] + 60 * s, c[1] + 60 * s, 130 * s), within=bb)
            if blk is not None:
                uu = (sg * 0.61, 0.79)
                nn = (sg * 0.79, -0.61)
                du = (blk.X - c[0]) * uu[0] + (blk.Y - c[1]) * uu[1]
                dn = (blk.X - c[0]) * nn[0] + (blk.Y - c[1]) * nn[1]
                th = 4 * s + 6 * s * smoothstep(60 * s, 22 * s, blk.Z)
                plate = smax(np.abs(dn) - th, _ellipse(du, blk.Z - c[2], 50 * s, 55 * s), 3.0)
                union_into(hip, bb, blk, plate, 5 * s)
            # femur: head, neck, trochanters, shaft
            for kind, a, e, rad in (("s", H, (R, R, R), 0),
                                    ("c", H, (sg * 100 * s, -4 * s, -18 * s), 14 * s),
                                    ("e", (sg * 106 * s, -8 * s, -16 * s), (13 * s, 20 * s, 20 * s), 0),
                                    ("e", (sg * 85 * s, -12 * s, -45 * s), (8 * s, 8 * s, 10 * s), 0),
                                    ("c", (sg * 104 * s, -2 * s, -30 * s), (sg * 98 * s, 6 * s, -250.0), 14 * s)):
                if kind == "c":
                    blk = f.block(*seg_box(a, e, rad + 5), within=bb)
                    d = capsule(blk.X, blk.Y, blk.Z, a, e, rad) if blk is not None else None
                else:
                    blk = f.block(*box_of(a, e, 5), within=bb)
                    d = ellipsoid(blk.X, blk.Y, blk.Z, a, e) if blk is not None else None
                union_into(fem, bb, blk, d, 4 * s)
        for z, yy, wx, wy in self.sacrum:
            c, rr = (0.0, yy, z), (wx, wy, 15 * s)
            blk = f.block(*box_of(c, rr, 6), within=bb)
            union_into(hip, bb, blk, ellipsoid(blk.X, blk.Y, blk.Z, c, rr) if blk is not None else None, 6 * s)
        near = hip < 8
        hip[near] += self.fields["bone"](np.broadcast_to(bb.X, hip.shape)[near], np.broadcast_to(bb.Y, hip.shape)[near],
                                         np.broadcast_to(bb.Z, hip.shape)[near])
        view[hip < 0] = T["bone_cortex"]
        view[hip < -1.5] = T["bone_marrow"]
        # hip-joint cartilage (head and acetabulum) and the pubic symphysis fibrocartilage
        for sg in (-1, 1):
            H = (sg * self.head_x, 2 * s, 0.0)
            blk = f.block(*box_of(H, (R + 4,) * 3, 0), within=bb)
            if blk is not None:
                rho = np.sqrt((blk.X - H[0]) ** 2 + (blk.Y - H[1]) ** 2 + (blk.Z - H[2]) ** 2)
                sub = bb.rel(blk)
                covered = hip[sub] < 4.0
                tis[blk.sl][(rho < R + 3.3) & covered] = T["hip_cartilage"]
        blk = f.block((-3 * s, 50 * s, -48 * s), (3 * s, 74 * s, -12 * s), within=bb)
        if blk is not None:
            sub = bb.rel(blk)
            tis[blk.sl][(hip[sub] > 0) & (hip[sub] < 3.5)] = T["hip_cartilage"]
        tcort = 1.5 + 2.5 * smoothstep(-35 * s, -70 * s, bb.Z)
        view[fem < 0] = T["bone_cortex"]
        view[fem < -tcort] = T["femur_marrow"]

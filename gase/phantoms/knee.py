"""Knee phantom: femur and tibia with cortex, marrow and articular cartilage, patella, fibula,
menisci, cruciate ligaments and tendons, synovial fluid, muscle, subcutaneous fat and skin.

Subject frame (mm, RAS, right knee; a left knee is the mirror image): origin in the joint space,
+x lateral, +y anterior, +z superior. The femur lives in its own frame, flexed by 0-12 degrees about
the R axis through the condyle centre; its lowest condylar point rests ``t_fc + gap + t_tc`` above the
tibial bone, with a thin fluid film in the joint space. Cartilage is a shell of the bone SDF whose
thickness is a smooth field times a window over the articular surfaces, so it tapers at its edges.
Typical adult sizes (condyle width ~80 mm, plateau ~75 x 50 mm, cartilage 2-3 mm) are scaled by a
per-subject factor.
"""
from __future__ import annotations

import numpy as np

from .anatomy import subject_rng, tissue_ids
from .shapes import (FAR, Frame, Pitch, SmoothField, WaveField, box_of, capsule, ellipse2d, ellipsoid, seg_box,
                     smax, smin, smoothstep, union_into)

T = tissue_ids("knee")


class KneeSubject:
    """One knee, drawn from ``seed``; :meth:`sample` paints its tissue map on a grid."""

    anatomy = "knee"

    def __init__(self, seed: int) -> None:
        self.seed = seed
        r = subject_rng("knee", seed, "shape")
        u = r.uniform
        s = self.s = float(np.clip(r.normal(1.0, 0.06), 0.88, 1.14))
        self.mirror = bool(r.random() < 0.5)
        self.shift = (u(-3, 3), u(-4, 4), u(-5, 5))
        self.t_fc, self.t_tc, self.t_pc = u(2.0, 2.7), u(2.0, 2.7), u(3.0, 4.0)
        self.gap = u(0.5, 1.0)                       # fluid between the cartilages at the contact
        self.effusion = float(r.beta(1.3, 3.0))       # 0 dry .. 1 large effusion
        self.film = 0.4 + 1.2 * self.effusion
        self.z_fb = self.gap / 2 + self.t_fc          # lowest femoral bone point
        self.z_tb = -(self.gap / 2 + self.t_tc)       # tibial bone at the contact
        cy = self.cy = -8.0 * s
        # condyles in the femur frame (bottom of each at z = 0): centre and semi-axes
        self.cond = [((-21.0 * s * u(0.95, 1.05), cy, 0.0), (14 * s * u(.93, 1.07), 30 * s * u(.93, 1.07), 24 * s * u(.93, 1.07))),
                     ((20.0 * s * u(0.95, 1.05), cy + u(-2, 2), 0.0), (13 * s * u(.93, 1.07), 27 * s * u(.93, 1.07), 21 * s * u(.93, 1.07)))]
        self.cond = [((c[0], c[1], rr[2]), rr) for c, rr in self.cond]
        self.groove = 4.0 * s * u(0.8, 1.2)
        self.flex = u(0.0, 12.0)
        pivot = (0.0, cy, self.cond[0][1][2])
        bottoms = [self._bottom(c, rr, pivot) for c, rr in self.cond]
        dz = self.z_fb - min(b[2] for b in bottoms)
        self.pose = Pitch(self.flex, pivot, (0.0, 0.0, dz))
        self.contact = [(c[0], b[1]) for (c, _), b in zip(self.cond, bottoms)]  # (x, y) per compartment
        # tibia
        self.y_t = float(np.mean([c[1] for c in self.contact])) + 2.0 * s
        self.a_t, self.b_t = 38.0 * s * u(0.94, 1.06), 25.0 * s * u(0.94, 1.06)
        self.slope = np.tan(np.radians(u(4.0, 10.0)))
        self.eminence = 7.0 * s * u(0.8, 1.2)
        # patella sits on the trochlear groove
        tf = self.pose.to_subject((0.0, cy + 31 * s - self.groove, 27 * s))
        self.r_p = (21 * s * u(.92, 1.08), 10.5 * s * u(.92, 1.08), 21 * s * u(.92, 1.08))
        self.ridge = 3.0 * s
        self.c_p = (0.0, tf[1] + self.t_fc + 0.6 + self.t_pc + self.r_p[1] + self.ridge, tf[2] + u(-2, 6))
        self.fat = u(3.0, 10.0)
        self.limb_c = (u(-2, 2), -6.0 * s)
        self.baker = r.random() < 0.3
        self.fields = {k: SmoothField(r, a, lo, hi) for k, a, lo, hi in
                       (("femur", .6, 25, 80), ("tibia", .6, 25, 80), ("cart", .12, 20, 60), ("limb", 3.0, 50, 160),
                        ("fat", .35, 40, 120), ("scar", 1.5, 20, 60))}
        self.septa = WaveField(r, 1.0, 25, 70)

    def _bottom(self, c, rr, pivot) -> np.ndarray:
        """Lowest point of a condyle ellipsoid after flexion (subject frame, before the vertical shift)."""
        ph = np.radians(self.flex)
        cw = Pitch(self.flex, pivot).to_subject(c)
        dz = np.sqrt(rr[1] ** 2 * np.sin(ph) ** 2 + rr[2] ** 2 * np.cos(ph) ** 2)
        dy = -(rr[1] ** 2 - rr[2] ** 2) * np.sin(ph) * np.cos(ph) / dz
        return np.array([cw[0], cw[1] + dy, cw[2] - dz])

    # ------------------------------------------------------------------------------------------
    def sample(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        f = Frame(x, y, z, shift=self.shift, mirror=self.mirror)
        tis = np.full(f.shape, T["air"], np.uint8)
        s = self.s
        d_limb = self._soft_tissue(f, tis)
        # one block holding the femur and tibia SDFs (joint space needs both at the same points)
        bb = f.block((-50 * s, -58 * s, -200), (50 * s, 62 * s, 400))
        if bb is None:
            return tis
        view = tis[bb.sl]
        d_f, d_t = self._femur_sdf(f, bb), self._tibia_sdf(f, bb)
        near = self.film + 1.0
        reach = 1.4 * max(self.t_fc, self.t_tc) + near  # thickest cartilage + fluid: nothing beyond
        X, Y, Z = (np.broadcast_to(c, d_f.shape) for c in (bb.X, bb.Y, bb.Z))
        t_f = np.zeros(d_f.shape, np.float32)
        m = (d_f >= 0) & (d_f < reach)
        t_f[m] = self._femoral_cartilage_thickness(X[m], Y[m], Z[m])
        t_t = np.zeros(d_t.shape, np.float32)
        m = (d_t >= 0) & (d_t < reach)
        t_t[m] = self._tibial_cartilage_thickness(X[m], Y[m], Z[m])
        # fluid: joint space over the plateau, a film on the cartilage, recesses
        joint = (d_t > 0) & (d_f > 0) & (d_f < t_f + near) & (d_t < t_t + near)
        joint[joint] = self._plateau(X[joint], Y[joint], 0.98) < 0
        view[joint] = T["synovial_fluid"]
        view[(d_f >= 0) & (d_f < t_f + self.film) & (t_f > 0.3)] = T["synovial_fluid"]
        self._recesses(f, tis)
        self._tendons(f, tis)
        self._fibula(f, tis)
        self._patella(f, tis)
        tcort_t = 1.0 + 3.0 * smoothstep(-30 * s, -70 * s, bb.Z)
        view[d_t < 0] = T["tibia_cortex"]
        view[d_t < -tcort_t] = T["tibia_marrow"]
        zf = self.pose.from_subject_yz(bb.Y, bb.Z)[1]  # femur-frame height, for cortex and the physeal scar
        tcort_f = 1.0 + 3.0 * smoothstep(35 * s, 70 * s, zf)
        view[d_f < 0] = T["femur_cortex"]
        view[d_f < -tcort_f] = T["femur_marrow"]
        scar_f = np.abs(zf - 24 * s - self.fields["scar"](bb.X, bb.Y, 0)) < 0.3
        view[scar_f & (d_f < -tcort_f - 1)] = T["femur_cortex"]
        scar_t = np.abs(bb.Z - self.z_tb + 20 * s - self.fields["scar"](bb.Y, bb.X, 0)) < 0.3
        view[scar_t & (d_t < -tcort_t - 1)] = T["tibia_cortex"]
        # cartilage and menisci
        view[(d_f >= 0) & (d_f < t_f) & (t_f > 0.3)] = T["femoral_cartilage"]
        free = (view != T["femoral_cartilage"]) & (view != T["patellar_cartilage"])
        view[(d_t >= 0) & (d_t < t_t) & (t_t > 0.3) & free] = T["tibial_cartilage"]
        jb = f.block((-50 * s, self.y_t - self.b_t - 6, self.z_tb - 3), (50 * s, self.y_t + self.b_t + 6, self.z_fb + 8), within=bb)
        if jb is not None:
            sl = bb.rel(jb)
            self._menisci(jb, view[sl], d_f[sl], d_t[sl], t_f[sl], t_t[sl])
        tis[d_limb > 0] = T["air"]
        return tis

    # ------------------------------------------------------------------------------------------
    def _limb_sdf(self, b):
        s, fat = self.s, self.fat
        ax = (47 * s + fat) * (1 + 0.0015 * b.Z)
        ay = (56 * s + fat) * (1 + 0.0010 * b.Z)
        return self._ellipse_z(b.X - np.float32(self.limb_c[0]), b.Y - np.float32(self.limb_c[1]), ax, ay) + \
            self.fields["limb"](b.X, b.Y, b.Z)

    @staticmethod
    def _ellipse_z(U, V, ax, ay):
        k0 = np.sqrt((U / ax) ** 2 + (V / ay) ** 2)
        k1 = np.sqrt((U / (ax * ax)) ** 2 + (V / (ay * ay)) ** 2)
        return k0 * (k0 - 1.0) / np.maximum(k1, np.float32(1e-6))

    def _soft_tissue(self, f: Frame, tis: np.ndarray) -> np.ndarray:
        """Skin, subcutaneous fat, muscle with fat compartments, septa and vessels; returns the limb SDF."""
        s, b = self.s, f.full()
        d = self._limb_sdf(b)
        tis[d <= 0] = T["skin"]
        tis[d <= -1.4] = T["fat"]
        # the fat layer's local thickness only matters near the skin: evaluate it there
        band = d < -1.4
        band &= d > -1.4 - 2.0 * self.fat
        tf = self.fat * (1 + self.fields["fat"](*(np.broadcast_to(c, d.shape)[band] for c in (b.X, b.Y, b.Z))))
        tf *= 1 - 0.55 * smoothstep(15, 45, np.broadcast_to(b.Y, d.shape)[band])
        inner = d < -1.4 - 2.0 * self.fat
        inner[band] = d[band] < -1.4 - tf
        tis[inner] = T["muscle"]
        del band, tf, inner
        # fat compartments: popliteal fossa, Hoffa / peripatellar region, joint-line sides; septa
        rr = self.cond[0][1]
        c_pf = (0.0, self.cy - rr[1] - 14 * s, self.z_fb + 8)
        blk = f.block(*box_of(c_pf, (18 * s, 15 * s, 45 * s), 2))
        if blk is not None:
            v = tis[blk.sl]
            v[(ellipsoid(blk.X, blk.Y, blk.Z, c_pf, (18 * s, 15 * s, 45 * s)) < 0) & (v == T["muscle"])] = T["fat"]
        hoffa = ((0.0, self.y_t + self.b_t + 4 * s, 0.5 * (self.z_tb + self.c_p[2])), (30 * s, 22 * s, 0.5 * (self.c_p[2] - self.z_tb) + 22 * s))
        sides = [((sg * 46 * s, self.cy, 0.0), (14 * s, 34 * s, 24 * s)) for sg in (-1, 1)]
        for c, rr in [hoffa] + sides:
            blk = f.block(*box_of(c, rr, 4))
            if blk is not None:
                v = tis[blk.sl]
                dc = ellipsoid(blk.X, blk.Y, blk.Z, c, rr) + self.fields["limb"](blk.Y, blk.Z, blk.X)
                v[(dc < 0) & (v == T["muscle"])] = T["fat"]
        mus = tis == T["muscle"]
        septa = np.abs(self.septa(*(np.broadcast_to(c, tis.shape)[mus] for c in (b.X, b.Y, b.Z)))) < 0.04
        idx = np.flatnonzero(mus)[septa]
        tis.ravel()[idx] = T["fat"]
        # popliteal artery and vein
        for dx, dy, rad in ((2 * s, -10 * s, 3.2 * s), (-6 * s, -15 * s, 4.5 * s)):
            a = (dx, self.cy - rr[1] + dy, -200.0)
            e = (dx * 0.5, self.cy - rr[1] + dy + 3, 200.0)
            blk = f.block(*seg_box(a, e, rad))
            if blk is not None:
                tis[blk.sl][capsule(blk.X, blk.Y, blk.Z, a, e, rad) < 0] = T["vessel"]
        return d

    def _femur_sdf(self, f: Frame, bb) -> np.ndarray:
        s, cy, pose = self.s, self.cy, self.pose
        d = np.full(bb.shape, FAR, np.float32)
        for c, rr in self.cond:  # sagittal ellipse extruded over the condyle width, rounded edges
            blk = f.block(*box_of(c, rr, 8), pose=pose, within=bb)
            if blk is not None:
                cond = smax(ellipse2d(blk.Y - np.float32(c[1]), blk.Z - np.float32(c[2]), rr[1:]),
                            np.abs(blk.X - np.float32(c[0])) - np.float32(rr[0]), 6.0 * s)
                union_into(d, bb, blk, cond, 5 * s)
        c, rr = (0.0, cy + 6 * s, 34 * s), (33 * s, 22 * s, 20 * s)
        blk = f.block(*box_of(c, rr, 8), pose=pose, within=bb)
        if blk is not None:
            union_into(d, bb, blk, ellipsoid(blk.X, blk.Y, blk.Z, c, rr), 5 * s)
        c, rr = (0.0, cy + 17 * s, 27 * s), (31 * s, 14 * s, 21 * s)
        blk = f.block(*box_of(c, rr, 8), pose=pose, within=bb)
        if blk is not None:
            tr = ellipsoid(blk.X, blk.Y, blk.Z, c, rr) + self.groove * np.exp(-(blk.X / (9 * s)) ** 2)
            union_into(d, bb, blk, tr, 5 * s)
        a, e = (0.0, cy + 8 * s, 40 * s), (0.0, cy + 10 * s, 400.0)
        blk = f.block(*seg_box(a, e, 14 * s + 10), pose=pose, within=bb)
        if blk is not None:
            union_into(d, bb, blk, capsule(blk.X, blk.Y, blk.Z, a, e, 14 * s), 9 * s)
        near = d < 12
        Yf, Zf = pose.from_subject_yz(bb.Y, bb.Z)
        d[near] += self.fields["femur"](np.broadcast_to(bb.X, d.shape)[near], np.broadcast_to(Yf, d.shape)[near],
                                        np.broadcast_to(Zf, d.shape)[near])
        return d

    def _femoral_cartilage_thickness(self, X, Y, Z) -> np.ndarray:
        """Cartilage thickness (mm) over the femur-frame articular surfaces, 0 elsewhere (points given
        as flat subject-frame coordinate arrays)."""
        s = self.s
        Yf, Zf = self.pose.from_subject_yz(Y, Z)
        w = np.zeros(X.shape, np.float32)
        for (cx, cyy, czz), (rx, ry, rz) in self.cond:
            wx = 1 - smoothstep(0.65, 0.92, np.abs(X - cx) / rx)
            low = 1 - smoothstep(0.25, 0.55, (Zf - czz) / rz)
            post = 1 - smoothstep(-0.45, -0.2, (Yf - cyy) / ry)
            w = np.maximum(w, wx * np.maximum(low, post) * (1 - smoothstep(1.2, 1.45, Zf / rz)))
        tro = smoothstep(self.cy + 4 * s, self.cy + 12 * s, Yf) * (1 - smoothstep(38 * s, 46 * s, Zf)) \
            * (1 - smoothstep(19 * s, 25 * s, np.abs(X)))
        w = np.maximum(w, tro)
        return self.t_fc * w * (1 + self.fields["cart"](X, Yf, Zf))

    def _tibia_surface(self, X, Y):
        s = self.s
        (cxm, ycm), (cxl, ycl) = self.contact
        wm = 1 / (1 + np.exp(X / 4.0))  # medial weight (medial is -x)
        qm = ((X - cxm) / (17 * s)) ** 2 + ((Y - ycm) / (22 * s)) ** 2
        ql = 0.6 * ((X - cxl) / (16 * s)) ** 2 - 0.8 * ((Y - ycl) / (20 * s)) ** 2
        slope = self.slope * (Y - (wm * ycm + (1 - wm) * ycl))
        emin = self.eminence * np.exp(-(X / (6 * s)) ** 2 - ((Y - self.y_t) / (12 * s)) ** 2)
        return self.z_tb + slope + wm * 1.5 * qm + (1 - wm) * ql + emin

    def _tibia_sdf(self, f: Frame, bb) -> np.ndarray:
        s = self.s
        d = np.full(bb.shape, FAR, np.float32)
        blk = f.block((-self.a_t - 8, self.y_t - self.b_t - 8, -200), (self.a_t + 8, self.y_t + self.b_t + 8, self.z_tb + 14 * s), within=bb)
        if blk is None:
            return d
        grow = smoothstep(self.z_tb - 55 * s, self.z_tb - 12 * s, blk.Z)
        ax = 15 * s + (self.a_t - 15 * s) * grow
        ay = 14 * s + (self.b_t - 14 * s) * grow
        radial = self._ellipse_z(blk.X, blk.Y - np.float32(self.y_t), ax, ay)
        top = blk.Z - self._tibia_surface(blk.X, blk.Y)
        d[bb.rel(blk)] = smax(radial, top, 5.0) + self.fields["tibia"](blk.X, blk.Y, blk.Z) * (top < -1.5)
        c, rr = (0.0, self.y_t + 0.8 * self.b_t, self.z_tb - 28 * s), (12 * s, 8 * s, 14 * s)
        blk = f.block(*box_of(c, rr, 6), within=bb)
        union_into(d, bb, blk, ellipsoid(blk.X, blk.Y, blk.Z, c, rr) if blk is not None else None, 4.0)
        return d

    def _plateau(self, X, Y, scale=1.0):
        """Negative inside the tibial plateau outline (x, y), for the joint space."""
        return self._ellipse_z(X, Y - np.float32(self.y_t), self.a_t * scale, self.b_t * scale)

    def _tibial_cartilage_thickness(self, X, Y, Z) -> np.ndarray:
        """Cartilage thickness (mm) over the two plateaus, 0 elsewhere (flat coordinate arrays)."""
        s = self.s
        (cxm, ycm), (cxl, ycl) = self.contact
        qm = np.sqrt(((X - cxm) / (15 * s)) ** 2 + ((Y - ycm) / (21 * s)) ** 2)
        ql = np.sqrt(((X - cxl) / (14 * s)) ** 2 + ((Y - ycl) / (18 * s)) ** 2)
        w = np.maximum(1 - smoothstep(0.75, 1.0, qm), 1 - smoothstep(0.75, 1.0, ql))
        w = w * (Z > self._tibia_surface(X, Y) - 2.0)  # the top only, not the plateau's underside
        return self.t_tc * w * (1 + self.fields["cart"](X, Y, 0))

    def _menisci(self, bb, view, d_f, d_t, t_f, t_t) -> None:
        s = self.s
        h = self._tibia_surface(bb.X, bb.Y)
        zrel = bb.Z - h
        for (cx, cyy), (A, B), side in zip(self.contact, ((19 * s, 24 * s), (17 * s, 20 * s)), (1, -1)):
            q = np.sqrt(((bb.X - cx) / A) ** 2 + ((bb.Y - cyy) / B) ** 2)
            height = 6.0 * s * np.clip((q - 0.55) / 0.4, 0, 1)
            inner = (side * (bb.X - cx) > 0.5 * A * q) & (np.abs(bb.Y - cyy) < 0.45 * B)
            m = (q > 0.55) & (q < 1.08) & (zrel > np.maximum(t_t, 0.0)) & (zrel < height) & ~inner
            m &= (d_f > t_f + 0.3) & (d_t > 0)
            m &= (view == T["synovial_fluid"]) | (view == T["fat"]) | (view == T["muscle"]) | (view == T["tendon_ligament"])
            view[m] = T["meniscus"]

    def _recesses(self, f: Frame, tis) -> None:
        s, e = self.s, self.effusion
        front = self.pose.to_subject((0.0, self.cy + 32 * s, 44 * s))
        c = (0.0, front[1] + 2 + 2.5 * e, self.c_p[2] + 22 * s)
        rr = (22 * s, 1.5 + 5 * e, (18 + 10 * e) * s)
        shapes = [(c, rr)]
        if self.baker:
            shapes.append(((self.cond[0][0][0], self.cy - self.cond[0][1][1] - 9 * s, self.z_fb + 4 * s), (7 * s, 6 * s, 14 * s)))
        for c, rr in shapes:
            blk = f.block(*box_of(c, rr, 1))
            if blk is not None:
                tis[blk.sl][ellipsoid(blk.X, blk.Y, blk.Z, c, rr) < 0] = T["synovial_fluid"]

    def _tendons(self, f: Frame, tis) -> None:
        s, (_, py, pz), (_, _, rz) = self.s, self.c_p, self.r_p
        tub = (0.0, self.y_t + 0.8 * self.b_t + 8 * s, self.z_tb - 30 * s)
        bands = [((0.0, py + 2 * s, pz - rz + 3), tub, 2.4 * s, 13 * s),            # patellar tendon
                 ((0.0, py - 1, pz + rz - 3), (0.0, py - 6 * s, pz + 90), 3.0 * s, 15 * s)]  # quadriceps
        for a, e, half, width in bands:
            blk = f.block(*seg_box((-width, a[1], a[2]), (width, e[1], e[2]), half + 1))
            if blk is not None:
                d = np.maximum(capsule(0, blk.Y, blk.Z, (0, a[1], a[2]), (0, e[1], e[2]), half), np.abs(blk.X) - width)
                tis[blk.sl][d < 0] = T["tendon_ligament"]
        (cxm, cym, czm), (rxm, rym, rzm) = self.cond[0]
        (cxl, cyl, czl), (rxl, ryl, rzl) = self.cond[1]
        acl = (self.pose.to_subject((cxl - rxl + 4, cyl - 0.45 * ryl, 0.9 * rzl)), (3 * s, self.y_t + 8 * s, self.z_tb + 1), 4.0 * s)
        pcl = (self.pose.to_subject((cxm + rxm - 4, cym + 0.1 * rym, 0.8 * rzm)), (0.0, self.y_t - self.b_t + 6 * s, self.z_tb - 8 * s), 5.0 * s)
        for a, e, rad in (acl, pcl):
            blk = f.block(*seg_box(a, e, rad))
            if blk is not None:
                tis[blk.sl][capsule(blk.X, blk.Y, blk.Z, a, e, rad) < 0] = T["tendon_ligament"]

    def _fibula(self, f: Frame, tis) -> None:
        s = self.s
        c, rr = (33 * s, self.y_t - 19 * s, self.z_tb - 15 * s), (9 * s, 9 * s, 11 * s)
        blk = f.block((c[0] - 12, c[1] - 12, -200), (c[0] + 12, c[1] + 12, c[2] + 14))
        if blk is None:
            return
        d = smin(ellipsoid(blk.X, blk.Y, blk.Z, c, rr), capsule(blk.X, blk.Y, blk.Z, c, (c[0] + 3, c[1], -200), 7 * s), 4)
        v = tis[blk.sl]
        v[d < 0] = T["fibula_cortex"]
        v[d < -1.5] = T["fibula_marrow"]

    def _patella(self, f: Frame, tis) -> None:
        s, c, rr = self.s, self.c_p, self.r_p
        blk = f.block(*box_of(c, rr, self.t_pc + 2))
        if blk is None:
            return
        post = 1 - smoothstep(-4.0, 0.0, blk.Y - c[1])
        d = ellipsoid(blk.X, blk.Y, blk.Z, c, rr) - self.ridge * np.exp(-(blk.X / (8 * s)) ** 2) * post
        w = (1 - smoothstep(-0.2, 0.25, (blk.Y - c[1]) / rr[1])) * (1 - smoothstep(0.7, 0.95, np.abs(blk.X) / rr[0])) \
            * (1 - smoothstep(0.6, 0.85, np.abs(blk.Z - c[2]) / rr[2]))
        t = self.t_pc * w
        v = tis[blk.sl]
        v[(d >= 0) & (d < t + self.film) & (w > 0.2)] = T["synovial_fluid"]
        v[d < 0] = T["patella_cortex"]
        v[d < -1.2] = T["patella_marrow"]
        v[(d >= 0) & (d < t) & (w > 0.2)] = T["patellar_cartilage"]

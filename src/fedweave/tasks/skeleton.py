"""Skeleton-based action recognition: the ``skeleton`` data source and the ``stgcn`` model.

The task is ``classification`` (cross-entropy, accuracy): an example is a skeleton
sequence, its label an action. This bundle registers only the data and the model.

Data (``data.dataset: skeleton``, ``skeleton:<clients>`` or ``skeleton:<clients>:<layouts>``,
default 6 clients, layouts ``mixed``; use ``data.partition.kind: natural``)
    Made offline and deterministically from ``data.seed``. Each example is a float tensor
    ``[3, T, 25]``: the (x, y, z) coordinates of up to 25 joint slots over T = 16 frames.
    A body is posed by forward kinematics (torso lean, shoulder pitch and abduction, elbow
    bend, hip pitch, knee bend, root translation) driven by one of eight parametric
    actions (:data:`ACTIONS`: walk, wave, jump, squat, clap, kick, punch, bow), each a
    periodic function of the phase u = 2π·f·t/T + φ with per-subject amplitude a ∈
    [0.75, 1.25], frequency f ∈ [0.8, 1.6] cycles per clip and phase φ.

    Clients are capture set-ups, and their *joint topologies differ* — the heterogeneity
    FSAR names as the cause of unstable federated training. Even-numbered clients record
    the 25-joint layout of NTU RGB+D (:data:`NTU25`, joint i in slot i); odd-numbered ones a
    17-joint COCO-style layout (:data:`COCO17`: nose, eyes, ears, shoulders, elbows,
    wrists, hips, knees, ankles) written into slots 0–16, slots 17–24 zero. The same slot
    therefore means a different body point, with different neighbours, on the two kinds
    of client. ``skeleton:<clients>:ntu25`` (or ``:coco17``) gives every client the same
    layout — the homogeneous control, everything else equal. Per client: 4 subjects (limb scale ∈ [0.85, 1.15]), a camera yaw centred on
    the client's own angle (client c: 40°·c, ± 20° per sequence), Gaussian joint noise of
    σ = 0.01 + 0.01·(c mod 3) and 15 sequences per action (120 per client). Coordinates
    are relative to the first frame's root (the spine base for NTU25, the hip centre for
    COCO17), as the two formats are usually normalised.

Model (``model.name: stgcn``)
    A compact spatial-temporal GCN (after ST-GCN, Yan, Xiong & Lin, AAAI 2018, and the
    ST-GCN of the official FSAR code, github.com/DivyaGuo/FSAR, ``easyfl/models/stgcn.py``
    at commit d16b454): blocks l = 0, 1, 2 of

        h = ReLU(GN(TCN(ReLU(GN(Σ_v W x_{·,·,v} A^{(l)}_{v,w})))) + residual(x))
        A^{(l)} = (Â + S + P) ⊙ M_l

    where Â is the normalised physical adjacency of :data:`NTU25` with self-loops
    (D^{-1/2}(E + I)D^{-1/2}; a frozen parameter ``prior``); S (``topology_shared``) and P
    (``topology_specific``) are learnable V×V matrices, *one each for the whole network*
    as in the official code (its ``learnableB`` and ``unshareC``), starting at zero (the
    code: 1e-6, the same start to 1e-6) — the split FSAR's Adaptive Topology Structure
    aggregates (S) or keeps on the client (P); M_l (``blocks.<l>.edge_importance``) is
    ST-GCN's learnable edge-importance mask of block l, ones at the start (the code's
    ``edge_importance``). GN is a one-group GroupNorm (the code: BatchNorm; ours, as
    everywhere in fedweave, because batch statistics average badly across non-IID
    clients); the TCN is a (k=5)×1 temporal convolution (the code: 9). Then mean pooling
    over time and joints and a linear classifier. ``model.width`` is the first block's
    channels (default 16); blocks have (w, 2w, 2w) channels (the code: ten blocks of 16 to
    256 channels on NTU-sized data). ``block_outputs(x, depth, topology)`` and
    ``forward_from(h, start)`` cut the forward pass at a block boundary for FSAR's
    multi-grain distillation; ``topology="shared"`` gives a block the adjacency S ⊙ M_l
    alone, the official code's graph for the server model's features (its ``mode='global'``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..core.errors import DataError, ModelError
from ..core.rng import derive_seed
from ..data.sources import DataSource, SourceOptions, register_source
from ..models import register_model

FRAMES = 16
SLOTS = 25
SEQUENCES_PER_ACTION = 15
SUBJECTS_PER_CLIENT = 4
ACTIONS = ("walk", "wave", "jump", "squat", "clap", "kick", "punch", "bow")

#: the NTU RGB+D joints (index = slot) and their parent in the kinematic tree
NTU25 = ("spine_base", "spine_mid", "neck", "head", "l_shoulder", "l_elbow", "l_wrist", "l_hand", "r_shoulder",
         "r_elbow", "r_wrist", "r_hand", "l_hip", "l_knee", "l_ankle", "l_foot", "r_hip", "r_knee", "r_ankle",
         "r_foot", "spine_shoulder", "l_hand_tip", "l_thumb", "r_hand_tip", "r_thumb")
NTU25_EDGES = ((0, 1), (1, 20), (20, 2), (2, 3), (20, 4), (4, 5), (5, 6), (6, 7), (7, 21), (6, 22), (20, 8), (8, 9),
               (9, 10), (10, 11), (11, 23), (10, 24), (0, 12), (12, 13), (13, 14), (14, 15), (0, 16), (16, 17),
               (17, 18), (18, 19))
COCO17 = ("nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_wrist",
          "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle")
LAYOUTS = {"ntu25": NTU25, "coco17": COCO17}


def client_layout(client: int, layouts: str = "mixed") -> str:
    """The joint layout of client ``client``: with ``mixed``, ``ntu25`` for even ids and
    ``coco17`` for odd; otherwise ``layouts`` itself (every client alike)."""
    if layouts != "mixed":
        return layouts
    return "ntu25" if client % 2 == 0 else "coco17"


# -- kinematics ------------------------------------------------------------------------------


def _action_angles(action: int, u: np.ndarray, a: float) -> dict[str, np.ndarray]:
    """Joint angles (radians) and root offsets per frame for phase ``u`` and amplitude ``a``."""
    z = np.zeros_like(u)
    s, pos, neg = np.sin(u), np.maximum(np.sin(u), 0), np.maximum(-np.sin(u), 0)
    half = (1 - np.cos(u)) / 2
    g = {k: z.copy() for k in ("lean", "th_l", "th_r", "ph_l", "ph_r", "be_l", "be_r", "al_l", "al_r", "ka_l", "ka_r",
                                "ry", "rz")}
    g["be_l"] = g["be_r"] = z + 0.2
    name = ACTIONS[action]
    if name == "walk":
        g["al_l"], g["al_r"] = 0.45 * a * s, -0.45 * a * s
        g["ka_l"], g["ka_r"] = 0.5 * a * neg, 0.5 * a * pos
        g["th_l"], g["th_r"] = -0.35 * a * s, 0.35 * a * s
        g["rz"] = 0.06 * a * np.arange(len(u))
    elif name == "wave":
        g["th_r"], g["ph_r"] = z + 2.5, z + 0.3
        g["be_r"] = 0.6 + 0.5 * a * np.sin(2 * u)
    elif name == "jump":
        g["ry"] = 0.3 * a * pos
        g["ka_l"] = g["ka_r"] = 0.8 * a * neg
        g["al_l"] = g["al_r"] = 0.4 * a * neg
        g["th_l"] = g["th_r"] = 1.6 * a * pos
    elif name == "squat":
        g["ka_l"] = g["ka_r"] = 1.6 * a * half
        g["al_l"] = g["al_r"] = 0.8 * a * half
        g["ry"] = -0.35 * a * half
        g["th_l"] = g["th_r"] = 1.4 * half
    elif name == "clap":
        g["th_l"] = g["th_r"] = z + 1.4
        g["ph_l"] = g["ph_r"] = 0.9 * a * (1 + np.cos(2 * u)) / 2 - 0.1
    elif name == "kick":
        g["al_r"] = 1.3 * a * pos**2
        g["ka_r"] = 0.6 * a * neg
    elif name == "punch":
        g["th_l"], g["th_r"] = 1.55 * pos, 1.55 * neg
        g["be_l"], g["be_r"] = 1.5 * (1 - pos * a / 1.25), 1.5 * (1 - neg * a / 1.25)
    elif name == "bow":
        g["lean"] = 0.9 * a * half
        g["th_l"] = g["th_r"] = 0.3 * half
    return g


def _unit(theta, phi, side):
    """Limb direction: pitch ``theta`` (0 down, π/2 forward, π up), sideways ``phi`` on ``side`` (±1)."""
    return np.stack([side * np.sin(phi), -np.cos(theta) * np.cos(phi), np.sin(theta) * np.cos(phi)], axis=-1)


def _rot_x(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    y, z = v[:, 1:2], v[:, 2:3]
    return np.concatenate([v[:, 0:1], c * y - s * z, s * y + c * z], axis=1)


def pose_ntu25(action: int, frames: int, scale: float, amp: float, freq: float, phase: float) -> np.ndarray:
    """The 25 NTU joints ``[frames, 25, 3]`` (x lateral, y up, z forward) of one sequence."""
    u = 2 * math.pi * freq * np.arange(frames) / frames + phase
    g = _action_angles(action, u, amp)
    t = frames
    root = np.stack([np.zeros(t), 0.95 * scale + g["ry"], g["rz"]], axis=1)
    J = np.zeros((t, SLOTS, 3))
    up = lambda h: _rot_x(np.tile([[0.0, h * scale, 0.0]], (t, 1)), g["lean"])  # noqa: E731 - torso, leaning forward
    J[:, 0] = root
    J[:, 1] = root + up(0.25)
    J[:, 20] = root + up(0.5)
    J[:, 2] = root + up(0.56)
    J[:, 3] = root + up(0.68)
    for side, (sh, el, wr, ha, tip, th, key) in ((1, (4, 5, 6, 7, 21, 22, "l")), (-1, (8, 9, 10, 11, 23, 24, "r"))):
        shoulder = J[:, 20] + np.array([side * 0.18 * scale, 0, 0])
        upper = _unit(g[f"th_{key}"], g[f"ph_{key}"], side)
        fore = _unit(g[f"th_{key}"] + g[f"be_{key}"], g[f"ph_{key}"], side)
        J[:, sh] = shoulder
        J[:, el] = shoulder + 0.28 * scale * upper
        J[:, wr] = J[:, el] + 0.25 * scale * fore
        J[:, ha] = J[:, wr] + 0.07 * scale * fore
        J[:, tip] = J[:, wr] + 0.14 * scale * fore
        J[:, th] = J[:, wr] + 0.05 * scale * fore + np.array([-side * 0.03 * scale, 0, 0.02 * scale])
    for side, (hp, kn, an, ft, key) in ((1, (12, 13, 14, 15, "l")), (-1, (16, 17, 18, 19, "r"))):
        hip = root + np.array([side * 0.1 * scale, 0, 0])
        thigh = _unit(g[f"al_{key}"], np.zeros(t), side)
        shin = _unit(g[f"al_{key}"] - g[f"ka_{key}"], np.zeros(t), side)
        J[:, hp] = hip
        J[:, kn] = hip + 0.42 * scale * thigh
        J[:, an] = J[:, kn] + 0.4 * scale * shin
        J[:, ft] = J[:, an] + np.array([0, -0.03 * scale, 0.1 * scale])
    return J


def to_layout(ntu: np.ndarray, layout: str, scale: float) -> np.ndarray:
    """Joints ``[T, 25, 3]`` in slot order of ``layout`` (coco17: 17 points, slots 17–24 zero),
    relative to the first frame's root (spine base for ntu25, hip centre for coco17)."""
    if layout == "ntu25":
        return ntu - ntu[0, 0]
    out = np.zeros_like(ntu)
    head, neck = ntu[:, 3], ntu[:, 2]
    fwd = np.array([0, 0, 1.0]) * scale
    lat = np.array([1.0, 0, 0]) * scale
    out[:, 0] = head + 0.08 * fwd - 0.02 * (head - neck)
    out[:, 1], out[:, 2] = head + 0.03 * lat + 0.07 * fwd, head - 0.03 * lat + 0.07 * fwd
    out[:, 3], out[:, 4] = head + 0.07 * lat, head - 0.07 * lat
    pairs = ((5, 4), (6, 8), (7, 5), (8, 9), (9, 6), (10, 10), (11, 12), (12, 16), (13, 13), (14, 17), (15, 14), (16, 18))
    for slot, joint in pairs:
        out[:, slot] = ntu[:, joint]
    centre = (ntu[0, 12] + ntu[0, 16]) / 2
    out[:, :17] -= centre
    return out


def _view(joints: np.ndarray, yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return joints @ rot.T


def make_skeleton(clients: int, seed: int, per_action: int = SEQUENCES_PER_ACTION, frames: int = FRAMES,
                  layouts: str = "mixed"):
    """``(x [N, 3, T, 25] float32, y [N] int64, client [N] int64)``, deterministic in ``seed``.
    ``layouts``: ``mixed`` (alternating by client) or one layout for every client."""
    xs, ys, cs = [], [], []
    for c in range(clients):
        rng = np.random.default_rng(derive_seed(seed, "skeleton", c))
        layout = client_layout(c, layouts)
        scales = rng.uniform(0.85, 1.15, SUBJECTS_PER_CLIENT)
        noise = 0.01 + 0.01 * (c % 3)
        for action in range(len(ACTIONS)):
            for _ in range(per_action):
                subject = int(rng.integers(SUBJECTS_PER_CLIENT))
                amp, freq, phase = rng.uniform(0.75, 1.25), rng.uniform(0.8, 1.6), rng.uniform(0, 2 * math.pi)
                yaw = math.radians(40.0 * c + rng.uniform(-20, 20))
                joints = to_layout(pose_ntu25(action, frames, scales[subject], amp, freq, phase), layout, scales[subject])
                joints = _view(joints, yaw)
                used = SLOTS if layout == "ntu25" else len(COCO17)
                joints[:, :used] += rng.normal(0.0, noise, size=(frames, used, 3))
                xs.append(joints.transpose(2, 0, 1))
                ys.append(action)
                cs.append(c)
    return (torch.from_numpy(np.stack(xs).astype(np.float32)), torch.tensor(ys, dtype=torch.int64),
            np.asarray(cs, dtype=np.int64))


def load_skeleton(name: str, o: SourceOptions) -> DataSource:
    parts = name.split(":")
    clients = int(parts[1]) if len(parts) > 1 else 6
    layouts = parts[2] if len(parts) > 2 else "mixed"
    if clients < 1:
        raise DataError(f"skeleton:<clients> needs at least one client, got {name!r}.")
    x, y, ids = make_skeleton(clients, o.seed, layouts=layouts)
    return DataSource(name=name, x_train=x, y_train=y, x_test=None, y_test=None, num_classes=len(ACTIONS),
                      input_shape=(3, FRAMES, SLOTS), client_ids=ids)


register_source("skeleton", load_skeleton, pattern=r"skeleton(:[0-9]+(:(mixed|ntu25|coco17))?)?",
                description="skeleton action sequences [3, 16, 25], 8 actions; clients alternate a 25-joint (NTU) "
                            "and a 17-joint (COCO) layout (skeleton:<clients>[:mixed|ntu25|coco17], default 6 mixed; "
                            "partition natural)")


# -- model --------------------------------------------------------------------------------


def normalized_adjacency(edges, joints: int = SLOTS) -> torch.Tensor:
    """D^{-1/2} (E + I) D^{-1/2} of an undirected edge list."""
    a = torch.eye(joints, dtype=torch.float64)
    for i, j in edges:
        a[i, j] = a[j, i] = 1.0
    d = a.sum(dim=1).rsqrt()
    return (d[:, None] * a * d[None, :]).to(torch.float32)


class GraphConv(nn.Module):
    """y = W · (x A) for a given adjacency A (``[V, V]``): aggregate over joints, then mix channels."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.mix = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.einsum("nctv,vw->nctw", x, adjacency))


class STGCNBlock(nn.Module):
    """One ST-GCN block; ``edge_importance`` is its learnable mask M (ones at the start)."""

    def __init__(self, c_in: int, c_out: int, joints: int, kernel: int = 5):
        super().__init__()
        self.gcn = GraphConv(c_in, c_out)
        self.edge_importance = nn.Parameter(torch.ones(joints, joints))
        self.norm1 = nn.GroupNorm(1, c_out)
        self.tcn = nn.Conv2d(c_out, c_out, (kernel, 1), padding=(kernel // 2, 0))
        self.norm2 = nn.GroupNorm(1, c_out)
        self.residual = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x, topology: torch.Tensor):
        a = topology * self.edge_importance
        return torch.relu(self.norm2(self.tcn(torch.relu(self.norm1(self.gcn(x, a))))) + self.residual(x))


class STGCN(nn.Module):
    """Blocks with adjacency (Â + S + P) ⊙ M_l; mean pooling over time and joints; a linear head.

    ``block_outputs`` and ``forward_from`` split the forward pass at a block boundary, the
    cut FSAR's multi-grain distillation needs (``fsar_gcn``)."""

    def __init__(self, channels: int, joints: int, num_classes: int, width: int = 16):
        super().__init__()
        prior = normalized_adjacency(NTU25_EDGES if joints == SLOTS else (), joints)
        self.prior = nn.Parameter(prior, requires_grad=False)
        self.topology_shared = nn.Parameter(torch.zeros(joints, joints))
        self.topology_specific = nn.Parameter(torch.zeros(joints, joints))
        widths = (width, 2 * width, 2 * width)
        c, blocks = channels, []
        for w in widths:
            blocks.append(STGCNBlock(c, w, joints))
            c = w
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(c, num_classes)

    def topology(self, which: str = "full") -> torch.Tensor:
        """``full``: Â + S + P (the client's graph); ``shared``: S alone (the domain-invariant
        topology, the graph the official FSAR code gives the server model's features)."""
        if which == "shared":
            return self.topology_shared
        return self.prior + self.topology_shared + self.topology_specific

    def block_outputs(self, x: torch.Tensor, depth: int, topology: str = "full") -> list[torch.Tensor]:
        """The outputs of the first ``depth`` blocks, each block's adjacency (topology ⊙ M_l)."""
        a, outs = self.topology(topology), []
        for block in self.blocks[:depth]:
            x = block(x, a)
            outs.append(x)
        return outs

    def forward_from(self, h: torch.Tensor, start: int) -> torch.Tensor:
        """Blocks ``start``, ``start + 1``, … and the head on ``h`` (the output of block ``start − 1``)."""
        a = self.topology()
        for block in self.blocks[start:]:
            h = block(h, a)
        return self.fc(h.mean(dim=(2, 3)))

    def forward(self, x):
        return self.forward_from(x, 0)


def build_stgcn(input_shape, num_classes=None, width: int = 16, **unused) -> nn.Module:
    if unused:
        raise ModelError(f"Unexpected option(s) for model 'stgcn': {', '.join(sorted(unused))}. Its options: width.")
    if len(input_shape) != 3:
        raise ModelError(
            f"Model 'stgcn' needs skeleton sequences shaped (coordinates, frames, joints), got input shape "
            f"{tuple(input_shape)}. Use data.dataset: skeleton."
        )
    if num_classes is None:
        raise ModelError("Model 'stgcn' is a classifier and needs the number of classes.")
    return STGCN(int(input_shape[0]), int(input_shape[2]), int(num_classes), int(width))


register_model("stgcn", build_stgcn,
               "Spatial-temporal GCN for skeleton data: 3 blocks, adjacency (physical prior + shared + specific "
               "learnable topology) x per-block edge importance (model.width, default 16).")

__all__ = ["ACTIONS", "COCO17", "LAYOUTS", "NTU25", "NTU25_EDGES", "STGCN", "GraphConv", "STGCNBlock", "build_stgcn",
           "client_layout", "load_skeleton", "make_skeleton", "normalized_adjacency", "pose_ntu25", "to_layout"]

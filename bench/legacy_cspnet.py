"""Today's (before issue 18) CSPNet hot loop, kept verbatim as a reference: the unfolded layer and the per-forward host sync.

`legacy(True)` is a context manager under which every `CSPNet` runs this path: the self-loop count and the atom-type
range are read back to the host (`int(...)`) in every forward, each layer gathers four per-edge terms (a_i[dst],
a_j[src], a_l[edge_crystal] and, for KLDM, a_v[src] - a_v[dst]) with advanced indexing and aggregates with PyG's
`scatter(reduce="mean")`, which counts the in-degree again in every layer. Used by bench/bench_train.py (today's trainer
beside ours, in one process) and by tests/test_cspnet.py (the float64 equality of the two paths).
"""
from contextlib import contextmanager

import torch
from torch_geometric.utils import scatter

from crystal_diffusion_book import cspnet


def legacy_layer_forward(layer, h, src, dst, lat_feat, edge_crystal, psi, velocity=None):
    "CSPLayer.forward as it was: messages, mean aggregation and the residual node update."
    H, W, b = layer.H, layer.edge_in.weight, layer.edge_in.bias
    hn = layer.norm(h)
    o_l, o_f = 2 * H, 2 * H + layer.lat_dim
    a_i = hn @ W[:, :H].T
    a_j = hn @ W[:, H:o_l].T
    a_l = lat_feat @ W[:, o_l:o_f].T
    pre = torch.addmm(b, psi, W[:, o_f:o_f + layer.F].T)
    pre = pre + a_i[dst] + a_j[src] + a_l[edge_crystal]
    if layer.v_proj is not None:
        w_v = W[:, o_f + layer.F:]
        a_v = velocity @ (w_v @ layer.v_proj.weight).T
        pre = pre + (a_v[src] - a_v[dst]) + w_v @ layer.v_proj.bias
    m = layer.edge_out(pre)
    agg = scatter(m, dst, dim=0, dim_size=h.shape[0], reduce="mean")
    return h + layer.node_mlp(torch.cat([hn, agg], dim=-1))


def _layer_call(self, h, src, dst, lat_feat, index, psi, velocity=None, deg=None):
    return legacy_layer_forward(self, h, src, dst, lat_feat, index[dst], psi, velocity)


def _net_call(self, t, atom_types, frac, lattice, index, edge_index, velocity=None, cond=None):
    src, dst = edge_index[0], edge_index[1]
    n_loops = int((src == dst).sum())                                   # the host sync of every forward
    if n_loops != (frac.shape[0] if self.config.self_loops else 0):
        raise ValueError(f"edge_index has {n_loops} self-loops but config.self_loops={self.config.self_loops}")
    if self.config.type_input == "embedding" and atom_types.numel():
        int(atom_types.min()), int(atom_types.max())                    # and the type-range read-backs
    return _NEW_FORWARD(self, t, atom_types, frac, lattice, index, edge_index, velocity=velocity, cond=cond)


_NEW_FORWARD, _NEW_LAYER = cspnet.CSPNet.forward, cspnet.CSPLayer.forward


@contextmanager
def legacy(on=True):
    "Within the block every CSPNet runs today's unfolded, host-syncing forward (no-op when `on` is False)."
    if not on:
        yield; return
    cspnet.CSPNet.forward, cspnet.CSPLayer.forward = _net_call, _layer_call
    try:
        yield
    finally:
        cspnet.CSPNet.forward, cspnet.CSPLayer.forward = _NEW_FORWARD, _NEW_LAYER

"""The reference's per-expert GEMM: rows sorted by expert times each expert's weight, fp32 out.

Experts are cut into a few buckets of similar row counts (buckets()), each one padded bmm, so the
number of launches grows with log(max count), not with E: per-expert launches kept the reference
far behind torch._grouped_mm, launch-bound, on skewed routings. The reference calls it with fast=False:
IEEE fp32 accumulation. fast=True (bf16 operands, tensor-core MMA) has exact products but truncating
addition, a bias toward zero (moe.TENSOR_CORE_REFERENCE says where that was seen); bucketing changes
only the accumulation order, which the error model allows for.
"""
from __future__ import annotations

import numpy as np
import torch

# a bucket's padded rows over its rows: at most this. At the H200 bench's Zipf routing 2.0 gives 4
# buckets padded to ~1.97x the rows, 1.5 gives 5 at ~1.43x: the few more launches cost less there
PAD_WASTE = 1.5
# On CPU GEMMs are compute-bound and a bucket's fixed cost is small: about 40 us of op overhead, the
# time of this many multiply-adds on one fp32 core. A padded row costs K*N of them.
CPU_BUCKET_MACS = 6e5
_BMM_OUT_DTYPE = [True]  # cleared once a torch without bmm(out_dtype=) has said so


def buckets(counts: list[int], join_pad: float = float("inf")) -> list[list[int]]:
    """Non-empty experts cut into buckets, each padded to its largest count with at most PAD_WASTE
    times its rows. Greedy over the counts in descending order: a bucket can only end at a count
    under 1/PAD_WASTE of its largest one, so there are at most log(max count, PAD_WASTE) + 1.
    join_pad: the most padded rows an expert may bring into a bucket (on CPU: padding is costly)."""
    order = sorted((e for e, c in enumerate(counts) if c), key=lambda e: -counts[e])
    out: list[list[int]] = []
    rows = 0
    for e in order:
        top = counts[out[-1][0]] if out else 0
        if out and top * (len(out[-1]) + 1) <= PAD_WASTE * (rows + counts[e]) and top - counts[e] <= join_pad:
            out[-1].append(e)
            rows += counts[e]
        else:
            out.append([e])
            rows = counts[e]
    return [sorted(b) for b in out]


def _contiguous(experts: list[int]) -> bool:
    return experts[-1] - experts[0] + 1 == len(experts)


def _runs(experts: list[int]) -> list[list[int]]:
    """Sorted experts cut where the ids skip: each run's weights are a slice."""
    out = [[experts[0]]]
    for e in experts[1:]:
        if e == out[-1][-1] + 1:
            out[-1].append(e)
        else:
            out.append([e])
    return out


class Groups:
    """Rows sorted by expert, `counts` per expert, as buckets of [n experts, pad rows, ...] blocks.
    A bucket of equal counts over consecutive non-empty experts is a view of the rows; the others
    are gathered through one flat index. All index tensors go to the device in one copy, and none
    exist when every bucket is a view with a slice of the weights (e.g. all counts equal)."""

    def __init__(self, counts: list[int], device, work: int | None = None):
        """work: K*N of the GEMMs run on these groups; on CPU it bounds the padding (CPU_BUCKET_MACS)."""
        self.counts = list(map(int, counts))
        self.rows = sum(self.counts)
        cpu = torch.device(device).type == "cpu"
        join_pad = CPU_BUCKET_MACS / work if cpu and work else float("inf")
        bs = buckets(self.counts, join_pad)
        if cpu:  # gathering weights costs more there than a bmm per run of consecutive experts
            bs = [r for b in bs for r in _runs(b)]
        bs.sort()  # by first expert: views then come in row order
        self.buckets = [(b, max(self.counts[e] for e in b)) for b in bs]  # (experts, pad rows)
        start, s = [], 0
        for c in self.counts:
            start.append(s)
            s += c
        # (first row, None) for a view, (None, slot offset in the gathered buffer) for a gathered bucket
        self._where, gathered = [], 0
        for b, m in self.buckets:  # a view: equal counts, and no other expert's rows in between
            if all(self.counts[e] == m for e in b) and start[b[-1]] - start[b[0]] == (len(b) - 1) * m:
                self._where.append((start[b[0]], None))
            else:
                self._where.append((None, gathered))
                gathered += len(b) * m
        self.view = all(g is None for _, g in self._where)
        host = self._indices(start, gathered) if gathered else {}
        host.update({i: torch.tensor(b) for i, (b, _) in enumerate(self.buckets) if not _contiguous(b)})
        if host and not cpu:  # one host-to-device copy for all of them
            keys = list(host)
            host = dict(zip(keys, torch.cat([host[k] for k in keys]).to(device).split([host[k].numel() for k in keys])))
        self.src, self.dst, self._rows = host.get("src"), host.get("dst"), host.get("rows")
        self._w_index = [host.get(i) for i in range(len(self.buckets))]  # None: the weights are a slice

    def _indices(self, start: list[int], gathered: int) -> dict:
        """For the gathered buckets, laid out one after another: src, the row each slot reads (pad
        slots repeat their expert's last row: finite, and each output row depends on its own input
        row only); dst, the slot of each of their rows; rows, those rows (where views hold others).
        A few numpy ops on per-expert arrays: no per-row Python."""
        lo, hi, reps = {}, [], []
        for (b, m), (_, g) in zip(self.buckets, self._where):
            for e in b if g is not None else ():
                lo[e] = start[e] - g  # slot g + p reads row start + p, up to the expert's last row
                hi.append(start[e] + self.counts[e] - 1)
                reps.append(m)
                g += m
        slot = np.array([list(lo.values()), hi, reps], dtype=np.int64)
        src = np.minimum(np.arange(gathered) + np.repeat(slot[0], slot[2]), np.repeat(slot[1], slot[2]))
        # their rows in row order: row = i + first - (rows of the gathered experts before), slot = row - lo
        rows, skip = [[], [], []], 0
        for e in sorted(lo):
            rows[0].append(start[e] - skip)
            rows[1].append(start[e] - skip - lo[e])
            rows[2].append(self.counts[e])
            skip += self.counts[e]
        per = np.array(rows, dtype=np.int64)
        out = {"src": torch.from_numpy(src), "dst": torch.from_numpy(np.arange(skip) + np.repeat(per[1], per[2]))}
        if skip < self.rows:
            out["rows"] = torch.from_numpy(np.arange(skip) + np.repeat(per[0], per[2]))
        return out

    def pad(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [rows, ...] -> one [n experts, pad rows, ...] block per bucket."""
        flat = None if self.src is None else x.index_select(0, self.src)
        out = []
        for (b, m), (s, g) in zip(self.buckets, self._where):
            blk = x[s:s + len(b) * m] if g is None else flat[g:g + len(b) * m]
            out.append(blk.view(len(b), m, *x.shape[1:]))
        return out

    def unpad(self, ys: list[torch.Tensor]) -> torch.Tensor:
        """Per-bucket [n, pad rows, ...] results -> [rows, ...] in the original row order."""
        flat = [y.reshape(-1, *y.shape[2:]) for y in ys]
        if self.view:  # views in row order
            return flat[0] if len(flat) == 1 else torch.cat(flat)
        g = [f for f, (_, o) in zip(flat, self._where) if o is not None]
        g = (g[0] if len(g) == 1 else torch.cat(g)).index_select(0, self.dst)
        if self._rows is None:
            return g
        out = g.new_empty(self.rows, *g.shape[1:])
        out.index_copy_(0, self._rows, g)
        for f, (s, o) in zip(flat, self._where):
            if o is None:
                out[s:s + f.shape[0]] = f
        return out

    def weights(self, w: torch.Tensor) -> list[torch.Tensor]:
        """w [E, ...] -> each bucket's experts' [n, ...]."""
        return [w[b[0]:b[-1] + 1] if i is None else w.index_select(0, i) for (b, _), i in zip(self.buckets, self._w_index)]


def grouped_mm(a: torch.Tensor, w: torch.Tensor, groups: Groups, fast: bool) -> torch.Tensor:
    """a [R, K] (rows sorted by expert) times w[e].T [K, N] -> [R, N] fp32."""
    if not groups.buckets:
        return a.new_zeros(a.shape[0], w.shape[1], dtype=torch.float32)
    if fast and _BMM_OUT_DTYPE[0]:
        try:
            ws = groups.weights(w.to(torch.bfloat16))
            return groups.unpad([torch.bmm(x, we.transpose(1, 2), out_dtype=torch.float32)
                                 for x, we in zip(groups.pad(a.to(torch.bfloat16)), ws)])
        except torch.cuda.OutOfMemoryError:  # the loop needs no padded copies
            return loop_mm(a, w, groups.counts, fast)
        except (RuntimeError, NotImplementedError, TypeError):  # a torch without bmm(out_dtype=): the loop
            _BMM_OUT_DTYPE[0] = False
    if fast:
        return loop_mm(a, w, groups.counts, fast)
    return groups.unpad([torch.bmm(x, we.float().transpose(1, 2))
                         for x, we in zip(groups.pad(a.float()), groups.weights(w))])


def loop_mm(a: torch.Tensor, w: torch.Tensor, counts: list[int], fast: bool) -> torch.Tensor:
    """One mm per expert: the plain definition (tests' oracle, and adapters that need no speed)."""
    out = a.new_empty(a.shape[0], w.shape[1], dtype=torch.float32)
    s = 0
    for e, c in enumerate(counts):
        if c:
            if fast:
                out[s:s + c] = torch.mm(a[s:s + c].to(torch.bfloat16), w[e].to(torch.bfloat16).T, out_dtype=torch.float32)
            else:
                out[s:s + c] = a[s:s + c].float() @ w[e].float().T
            s += c
    return out


def grouped_apply(fn, groups: Groups, w: torch.Tensor, *xs: torch.Tensor | None) -> torch.Tensor:
    """fn(x_rows..., w_e) batched per bucket: fn must broadcast over a leading expert dim and keep
    rows independent (pad slots hold copies of real rows). The error model's variance GEMMs."""
    if not groups.buckets:
        return xs[0].new_zeros(0, w.shape[1], dtype=torch.float64)
    pads = [None if x is None else groups.pad(x) for x in xs]
    ys = [fn(*(None if p is None else p[i] for p in pads), we) for i, we in enumerate(groups.weights(w))]
    return groups.unpad(ys)

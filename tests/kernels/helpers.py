"""Independent float64 references for the kernel tests (plain loops / dense math, no kernels code)."""

from __future__ import annotations

import math

import torch


def dense_block_sparse_attention(q, k, v, block_mask, scale=None) -> torch.Tensor:
    """float64 attention restricted to kept (128 x 64) blocks; rows with nothing kept give zeros."""
    q, k, v = q.double(), k.double(), v.double()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    token_mask = block_mask.repeat_interleave(128, dim=2).repeat_interleave(64, dim=3)
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~token_mask, -math.inf)
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ v


def loop_lcsa_block_mask(q, k, *, local_range: int, topk: int, grid: tuple[int, int]) -> torch.Tensor:
    """The LCSA block mask by direct loops over the reference formula (slow; tiny shapes only)."""
    b_size, heads, lq, d = q.shape
    lk = k.shape[2]
    win_h, win_w = grid
    n_win = win_h * win_w
    n_q, n_k = lq // 128, lk // 64
    half = local_range // 2
    out = torch.zeros(b_size, heads, n_q, n_k, dtype=torch.bool)
    for b in range(b_size):
        for h in range(heads):
            q_pool = [q[b, h, i * 128:(i + 1) * 128].mean(0) for i in range(n_q)]
            k_pool = [k[b, h, j * 64:(j + 1) * 64].mean(0) for j in range(n_k)]
            prob = torch.zeros(n_q, n_k, dtype=torch.float64)
            for i in range(n_q):
                qr, qc = divmod(i % n_win, win_w)
                row = []
                for j in range(n_k):
                    kr, kc = divmod((j // 2) % n_win, win_w)
                    inside = qr - half <= kr <= qr - half + local_range - 1 and qc - half <= kc <= qc - half + local_range - 1
                    row.append(float(q_pool[i] @ k_pool[j]) / math.sqrt(d) if inside else -math.inf)
                top = max(row)
                exps = [math.exp(s - top) for s in row]
                total = sum(exps)
                prob[i] = torch.tensor([e / total for e in exps], dtype=torch.float64)
            for t in range(n_q // n_win):
                block = prob[t * n_win:(t + 1) * n_win]
                values = sorted(block.flatten().tolist(), reverse=True)
                apply_topk = min(len(values) - 1, topk)
                if apply_topk <= 0:
                    continue
                out[b, h, t * n_win:(t + 1) * n_win] = block > values[apply_topk]
    return out

#!/usr/bin/env python3
"""Fake-quantization experiments on the real Gemma 3 270M in torch: which tensors and which
quantizer choices cost perplexity, before anything is built in Rust.

Not part of the product: it does not write .mixq files and its numbers are not the report's.
It quantizes every chosen linear of the HF checkpoint in place (weights only, f32 activations),
then scores the first --eval-tokens of the evaluation text with transformers, and prints
retention = PPL_ref / PPL_quant. Hessians come from the full-precision model on the
calibration text (the Rust converter uses the quantized prefix instead), so its absolute figures
run about one point below `mixq-quantize convert`; use it for differences between choices.

Run with the golden venv (`make golden-env`):
  ~/.cache/mixq/venv-ref/bin/python scripts/quant_lab.py \
      --exp 'all:4:64:gptq' --exp 'all:4:32:gptq' --exp 'down_proj:4:64:gptq'
An experiment is CLASSES:BITS:GROUP:METHOD[:FINE] (FINE: a comma list of classes quantized
with groups of 16 instead of GROUP); CLASSES is `all` or a comma list of q_proj,
k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (the others stay full precision);
METHOD is rtn (min/max), gptq (damp 0.1, group grid fitted when the group starts), gptqls
(gptq, then every row's group grid refitted by least squares with the codes fixed; gptqlsN:
N rounds, GPTQ re-run on the refitted grids between them), gptq_ao
(act-order with static groups), gptqn (gptq with norm-aware Hessians for o/down and, per
head, q/k: tokens weighted by 1/mean(y_t^2) of the linear's output, since an RMSNorm follows),
gptqs (every linear of a sublayer with its tokens weighted by 1/mean(y_t^2) of the sublayer's
output, o_proj's or down_proj's, which the post-norm divides by), gptqo / gptqk (gptqn's
weighting on o/down only / on q/k only), gptqr (gptqo's o/down weights also divided by
the mean square of the residual stream entering the layer), gptqg (each group's clipping
chosen per row by GPTQ's own loss over the group's columns; gptqgo: with gptqo's Hessians),
gptqv (gptqo, and v_proj's tokens weighted by sum_t a_ts^2 / mean(o_t^2): the attention they feed),
gptqf (gptqv, and gate/up's tokens weighted by their path through the GELU gating, down_proj
and the post-FFN norm: sum_j |D[:, j]|^2 gelu(g_tj)^2 for up, ... gelu'(g_tj)^2 u_tj^2 for gate,
over sum_j |D[:, j]|^2, divided by mean(y_t^2) of down's output),
or rot128 (block-Hadamard rotation, then gptq).
Several parts joined by `+` quantize different classes differently in one experiment; BITS `2s`
is I2_STRUCTURED (4-bit sub-scales and mins per 16 under one f16 d, dmin per 128, as stored);
GROUP 0 is one group per row (I4_PER_CHANNEL). The seed's `optimal`, as the converter builds it:
  --exp 'q_proj,k_proj,v_proj,down_proj:4:64:gptqv+o_proj:4:0:gptqv+gate_proj,up_proj:2s:16:rot128'
--tune N then distills with the codes fixed (gptq, gptqv and rotN parts only): N Adam steps on
--tune-seqs calibration sequences of --tune-len tokens move every quantized linear's grid by a
factor per group (per super-block for 2s: d and dmin) and, with --tune-norms, the RMSNorm gains,
to lower KL(P_ref || P_quant) over the whole model (--tune-mode e2e) or each layer's relative
output error in turn (--tune-mode block, against the full-precision stream or, with
--tune-target sym, the full-precision layer on the quantized stream).
--search fits every group's (scale, min) by a clipping grid weighted by diag(H), as the
converter does (without it the grid is plain min/max). --spread takes the calibration sequences
at evenly spaced points of the calibration text (the converter's default) instead of from its
start. The evaluation tokens are scored in windows of --window (1024), each from <bos>, as the
converter's report does; --damp sets GPTQ's dampening (0.1 of mean(diag H)).
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

CLASSES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def grid(w, bits, imp, search):
    """Asymmetric (scale, min) per row of a [rows, group] block."""
    L = 2**bits - 1
    mx0 = w.max(1, keepdim=True).values.clamp_min(0)
    mn0 = w.min(1, keepdim=True).values.clamp_max(0)
    shrink = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7] if search else [1.0]
    best = None
    for a in shrink:
        for b in shrink:
            mx, mn = mx0 * a, mn0 * b
            s = ((mx - mn) / L).clamp_min(1e-8)
            err = (((fq(w, s, mn, bits) - w) ** 2) * imp).sum(1, keepdim=True)
            if best is None:
                best = (err, s, mn)
            else:
                m = err < best[0]
                best = (torch.where(m, err, best[0]), torch.where(m, s, best[1]), torch.where(m, mn, best[2]))
    return best[1], best[2]


def fq(w, s, mn, bits):
    return torch.clamp(torch.round((w - mn) / s), 0, 2**bits - 1) * s + mn


def rtn(W, bits, g, search):
    R, C = W.shape
    out = torch.empty_like(W)
    for j in range(0, C, g):
        s, mn = grid(W[:, j : j + g], bits, torch.ones(g), search)
        out[:, j : j + g] = fq(W[:, j : j + g], s, mn, bits)
    return out


def grid_gptq(W1g, Ug, bits, shrink=(1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)):
    """The group's (scale, min) per row chosen by GPTQ's own loss: every candidate clipping
    pair runs the group's columns through GPTQ (with compensation inside the group) and each
    row keeps the pair of least sum of (e / U_cc)^2."""
    L = 2**bits - 1
    mx0 = W1g.max(1, keepdim=True).values.clamp_min(0)
    mn0 = W1g.min(1, keepdim=True).values.clamp_max(0)
    cands = [(a, b) for a in shrink for b in shrink]
    mx = torch.stack([mx0 * a for a, _ in cands])  # [C, R, 1]
    mn = torch.stack([mn0 * b for _, b in cands])
    sc = ((mx - mn) / L).clamp_min(1e-8)
    Wc = W1g.unsqueeze(0).repeat(len(cands), 1, 1)  # [C, R, g]
    loss = torch.zeros(Wc.shape[:2], dtype=W1g.dtype)
    for k in range(W1g.shape[1]):
        w = Wc[:, :, k : k + 1]
        e = (w - fq(w, sc, mn, bits)) / Ug[k, k]
        Wc[:, :, k:] -= e * Ug[k, k:][None, None, :]
        loss += e[:, :, 0] ** 2
    best = loss.argmin(0)  # [R]
    r = torch.arange(W1g.shape[0])
    return sc[best, r], mn[best, r]


def grid2s(Wb, imp, search):
    """I2_STRUCTURED's parameters for a super-block of 128 columns (formats/SPEC.md): each
    sub-group of 16 gets its 2-bit (scale, min) fit, then the scales become d * sc and the
    mins -dmin * m with 4-bit sc, m and one d, dmin per super-block, as the converter stores
    them. Returns the per-16 (scale, min) [R, 8] that the codes are chosen against."""
    S, M = [], []
    for j in range(0, Wb.shape[1], 16):
        s, mn = grid(Wb[:, j : j + 16], 2, imp[j : j + 16], search)
        S.append(s)
        M.append(mn)
    S, M = torch.cat(S, 1).double(), torch.cat(M, 1).double()
    d = (S.max(1, keepdim=True).values / 15).clamp_min(1e-12)
    dm = ((-M).max(1, keepdim=True).values / 15).clamp_min(1e-12)
    sc = torch.round(S / d).clamp(1, 15)
    m = torch.round(-M / dm).clamp(0, 15)
    return d * sc, -dm * m


class QLinear:
    """A quantized weight kept as codes and per-group (scale, min), so that --tune can move the
    continuous parameters with the codes fixed. tie: consecutive groups sharing one tunable
    factor (8 for I2_STRUCTURED: d and dmin per super-block of 128; its 4-bit sc, m stay)."""

    def __init__(self, codes, S, M, g, tie=1, R=None):
        self.codes, self.S, self.M, self.g, self.tie, self.R = codes.float(), S.float(), M.float(), g, tie, R
        G = S.shape[1] // tie
        self.a = torch.zeros(S.shape[0], G, requires_grad=True)
        self.b = torch.zeros(S.shape[0], G, requires_grad=True)

    def weight(self):
        fa = (1 + self.a).repeat_interleave(self.tie, 1).repeat_interleave(self.g, 1)
        fb = (1 + self.b).repeat_interleave(self.tie, 1).repeat_interleave(self.g, 1)
        S = self.S.repeat_interleave(self.g, 1)
        M = self.M.repeat_interleave(self.g, 1)
        W = self.codes * S * fa + M * fb
        if self.R is not None:
            W = W @ self.R.T.float()
        return W


def gptq(W, H, bits, g, search, damp=0.1, actorder=False, block=128, refit=False, rounds=1, fixed=None, ingrid=False, two_s=False, ret=False):
    """Frantar et al.; the group grid is fitted on the error-compensated weights when the group
    starts (static groups from the original weights under act-order). refit: afterwards, with
    the codes fixed, every row's (scale, min) pairs are refitted jointly by least squares
    against the damped Hessian (exact: the dequantized row is linear in them)."""
    W0 = W.double()
    W = W.double().clone()
    H0 = H
    H = H.clone()
    C = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(C, dtype=H.dtype)
    imp = torch.diag(H).float()
    if actorder:
        groups = [grid(W[:, i : i + g].float(), bits, imp[i : i + g], search) for i in range(0, C, g)]
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    codes = torch.zeros_like(W)
    s = mn = None
    SS, MM = [], []
    for i1 in range(0, C, block):
        i2 = min(i1 + block, C)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if actorder:
                s, mn = (t.double() for t in groups[perm[col].item() // g])
            elif two_s and col % 16 == 0:
                if col % 128 == 0:
                    S2, M2 = grid2s(W1[:, i : i + 128].float(), imp[col : col + 128], search)
                s, mn = S2[:, (col % 128) // 16 : (col % 128) // 16 + 1], M2[:, (col % 128) // 16 : (col % 128) // 16 + 1]
                s = s.clamp_min(1e-12)
            elif col % g == 0 and fixed is not None:
                s, mn = fixed[0][:, col // g : col // g + 1], fixed[1][:, col // g : col // g + 1]
                s = torch.where(s.abs() < 1e-12, torch.full_like(s, 1e-12), s)
            elif col % g == 0 and ingrid:
                s, mn = grid_gptq(W1[:, i : i + g], U[col : col + g, col : col + g], bits)
            elif col % g == 0:
                # a group wider than the rest of the block (per-channel) starts a block, where
                # W is up to date
                src = W1[:, i : i + g] if i + g <= i2 - i1 else W[:, col : col + g]
                s, mn = (t.double() for t in grid(src.float(), bits, imp[col : col + g], search))
            if col % g == 0:
                SS.append(s)
                MM.append(mn)
            w = W1[:, i : i + 1]
            q = fq(w, s, mn, bits)
            Q[:, col : col + 1] = q
            codes[:, col : col + 1] = torch.round((q - mn) / s)
            e = (w - q) / U[col, col]
            W1[:, i:] -= e @ U[col : col + 1, col:i2]
            E1[:, i : i + 1] = e
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    if actorder:
        Q = Q[:, torch.argsort(perm)]
    if ret:
        return Q.float(), codes, torch.cat(SS, 1), torch.cat(MM, 1)
    if refit and not actorder:
        Q, grids = refit_grid(W0, H, codes, Q, g)
        if rounds > 1:
            # GPTQ again on the refitted grids (codes re-chosen with error feedback), refit again
            return gptq(W0.float(), H0, bits, g, search, damp, block=block, refit=True, rounds=rounds - 1, fixed=grids)
    return Q.float()


def refit_grid(W, H, codes, Q, g, chunk=128):
    """min over (s, m) per group of (w - q)^T H (w - q), q_k = s_g c_k + m_g, row by row:
    normal equations of 2G unknowns (block sums of H weighted by the codes), a small ridge
    towards the GPTQ grid so constant-code groups stay determined."""
    R, C = W.shape
    G = C // g
    Hw = W @ H  # (R, C): H symmetric
    T = H.reshape(G, g, G, g)
    X1 = T.sum(3)  # (G, g, G): sum over the right group's elements
    S11 = X1.sum(1)
    out = torch.empty_like(Q)
    S, M = torch.empty(R, G, dtype=H.dtype), torch.empty(R, G, dtype=H.dtype)
    for r0 in range(0, R, chunk):
        c = codes[r0 : r0 + chunk]
        n = c.shape[0]
        cg = c.reshape(n, G, g)
        Xc = torch.einsum("aibj,rbj->raib", T, cg)  # H times the codes, by right group
        Scc = torch.einsum("rai,raib->rab", cg, Xc)
        Sc1 = torch.einsum("rai,aib->rab", cg, X1)  # codes on the left, ones on the right
        A = torch.zeros(n, 2 * G, 2 * G, dtype=H.dtype)
        A[:, :G, :G] = Scc
        A[:, :G, G:] = Sc1
        A[:, G:, :G] = Sc1.transpose(1, 2)
        A[:, G:, G:] = S11
        b = torch.cat([(c * Hw[r0 : r0 + n]).reshape(n, G, g).sum(2), Hw[r0 : r0 + n].reshape(n, G, g).sum(2)], 1)
        # the GPTQ grid, recovered from the codes: q = s c + m
        q = Q[r0 : r0 + n].reshape(n, G, g)
        cc = c.reshape(n, G, g)
        cmax, cmin = cc.max(2).values, cc.min(2).values
        span = (cmax - cmin).clamp_min(1)
        s0 = (q.gather(2, cc.argmax(2, keepdim=True)).squeeze(2) - q.gather(2, cc.argmin(2, keepdim=True)).squeeze(2)) / span
        m0 = q.gather(2, cc.argmin(2, keepdim=True)).squeeze(2) - s0 * cmin
        p0 = torch.cat([s0, m0], 1)
        lam = 1e-6 * torch.diagonal(A, dim1=1, dim2=2).mean(1)[:, None, None]
        I = torch.eye(2 * G, dtype=H.dtype)[None]
        p = torch.linalg.solve(A + lam * I, b[:, :, None] + lam * p0[:, :, None]).squeeze(2)
        sN, mN = p[:, :G], p[:, G:]
        out[r0 : r0 + n] = (cc * sN[:, :, None] + mN[:, :, None]).reshape(n, C)
        S[r0 : r0 + n], M[r0 : r0 + n] = sN, mN
    return out, (S, M)


def hadamard(n):
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def rotated(W, H, bits, g, search, blk, damp=0.1, two_s=False, ret=False):
    C = W.shape[1]
    signs = (torch.randint(0, 2, (C,), generator=torch.Generator().manual_seed(1)) * 2 - 1).double()
    R = torch.block_diag(*[hadamard(blk)] * (C // blk)) * signs[:, None]
    out = gptq((W.double() @ R).float(), R.T @ H @ R, bits, g, search, damp=damp, two_s=two_s, ret=ret)
    if ret:
        Q, codes, S, M = out
        return (Q.double() @ R.T).float(), QLinear(codes, S, M, 16 if two_s else g, 8 if two_s else 1, R)
    return (out.double() @ R.T).float()


@torch.no_grad()
def quantize_part(part, model, orig, linears, H, HN, HV, HF, HR, HS, hd, a, qlin):
    """One part of an experiment, CLASSES:BITS:GROUP:METHOD[:FINE]: quantize the chosen linears
    in place. BITS 2s is I2_STRUCTURED (GROUP ignored); GROUP 0 is one group per row."""
    classes, bits, g, method, *fine = part.split(":")
    fine = fine[0].split(",") if fine else []
    chosen = CLASSES if classes == "all" else classes.split(",")
    two_s = bits == "2s"
    bits = 2 if two_s else int(bits)
    g0 = int(g)
    for n, p in model.named_parameters():
        if n not in linears or not any(f".{c}." in n for c in chosen):
            continue
        W = orig[n]
        g = 16 if any(f".{c}." in n for c in fine) else g0
        if g == 0 or two_s:
            g = W.shape[1] if g == 0 else 16
        if method in ("gptq", "gptqv") or method.startswith("rot"):
            # kept as codes + grid, so --tune can move the grid
            if method.startswith("rot"):
                Q, ql = rotated(W, H[n], bits, g, a.search, int(method[3:]), damp=a.damp, two_s=two_s, ret=True)
            else:
                hn = HV.get(n, HN.get(n)) if method == "gptqv" else None
                hn = None if isinstance(hn, list) else hn
                Q, codes, S, M = gptq(W, H[n] if hn is None else hn, bits, g, a.search, damp=a.damp, two_s=two_s, ret=True)
                ql = QLinear(codes, S, M, g, 8 if two_s else 1)
            qlin[n] = ql
        elif method == "rtn":
            Q = rtn(W, bits, g, a.search)
        elif method in ("gptqn", "gptqo", "gptqk"):
            # norm-aware Hessians where the output is normalized (q/k per head);
            # gptqo: o/down only, gptqk: q/k only
            hn = HN.get(n)
            if (method == "gptqo" and isinstance(hn, list)) or (method == "gptqk" and not isinstance(hn, list)):
                hn = None
            if hn is None:
                Q = gptq(W, H[n], bits, g, a.search, damp=a.damp)
            elif isinstance(hn, list):
                Q = torch.cat([gptq(W[h * hd : (h + 1) * hd], hn[h], bits, g, a.search, damp=a.damp) for h in range(len(hn))])
            else:
                Q = gptq(W, hn, bits, g, a.search, damp=a.damp)
        elif method in ("gptqg", "gptqgo"):
            # grid chosen by GPTQ's loss; gptqgo with gptqo's post-norm Hessians
            hn = HN.get(n) if method == "gptqgo" else None
            hn = None if isinstance(hn, list) else hn
            Q = gptq(W, H[n] if hn is None else hn, bits, g, a.search, damp=a.damp, ingrid=True)
        elif method == "gptqf":
            # gptqv, and gate/up weighted through the GELU gating, down and its norm
            hn = HF.get(n, HV.get(n, HN.get(n)))
            hn = None if isinstance(hn, list) else hn
            Q = gptq(W, H[n] if hn is None else hn, bits, g, a.search, damp=a.damp)
        elif method == "gptqr":
            Q = gptq(W, HR.get(n, H[n]), bits, g, a.search, damp=a.damp)
        elif method == "gptqs":
            Q = gptq(W, HS[n], bits, g, a.search, damp=a.damp)
        elif method == "gptqls":
            Q = gptq(W, H[n], bits, g, a.search, refit=True, damp=a.damp)
        elif method.startswith("gptqls"):
            Q = gptq(W, H[n], bits, g, a.search, refit=True, rounds=int(method[6:]), damp=a.damp)
        elif method == "gptq_ao":
            Q = gptq(W, H[n], bits, g, a.search, actorder=True, damp=a.damp)
        else:
            raise SystemExit(f"unknown method {method}")
        p.copy_(Q)


def tune(model, ref_model, qlin, seqs, a):
    """Distillation with the codes fixed: every quantized linear's grid factors (QLinear.a/b)
    and, with --tune-norms, the RMSNorm gains move to lower KL(P_ref || P_quant) on
    calibration sequences (never the evaluation text). Adam, one sequence per step."""
    from torch.func import functional_call

    for p in model.parameters():
        p.requires_grad_(False)
    groups = [{"params": [t for q in qlin.values() for t in (q.a, q.b)], "lr": 0.0 if a.tune_norms_only else a.tune_lr}]
    norms = [p for n, p in model.named_parameters() if "norm" in n]
    if a.tune_norms:
        for p in norms:
            p.requires_grad_(True)
        groups.append({"params": norms, "lr": a.tune_lr_norm})
    opt = torch.optim.Adam(groups)
    t0, run = time.time(), []
    for step in range(a.tune):
        ids = seqs[step % len(seqs)][None]
        with torch.no_grad():
            lt = torch.log_softmax(ref_model(ids).logits[0].float(), -1)
        W = {n: q.weight() for n, q in qlin.items()}
        lp = torch.log_softmax(functional_call(model, W, (ids,)).logits[0].float(), -1)
        loss = (lt.exp() * (lt - lp)).sum(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        run.append(loss.item())
        if (step + 1) % 16 == 0 or step + 1 == a.tune:
            print(f"  tune step {step + 1}/{a.tune}: calibration KL {sum(run) / len(run):.4f} [{time.time() - t0:.0f} s]", flush=True)
            run = []
    with torch.no_grad():
        params = dict(model.named_parameters())
        for n, q in qlin.items():
            params[n].copy_(q.weight())
    for p in norms:
        p.requires_grad_(False)


def tune_blocks(model, ref_model, qlin, seqs, a):
    """--tune-mode block: layer by layer, as the converter could (one layer's parameters and
    activations at a time): the layer's grid factors (and norms) move to bring its output on
    the quantized model's stream closer to the target, the full-precision model's stream
    (--tune-target fp) or the full-precision layer on the same input (sym), in relative
    squared error per token; then the stream advances through the tuned layer."""
    from torch.func import functional_call

    layers, ref_layers = model.model.layers, ref_model.model.layers
    caps = [[None] * len(layers) for _ in seqs]
    cur = [0]

    def mk(li):
        def h(_m, args, kwargs, out):
            caps[cur[0]][li] = (args, dict(kwargs), out.detach())
        return h

    hooks = [ref_layers[li].register_forward_hook(mk(li), with_kwargs=True) for li in range(len(layers))]
    with torch.no_grad():
        for k, sq in enumerate(seqs):
            cur[0] = k
            ref_model(sq[None], use_cache=False)
    for h in hooks:
        h.remove()

    def split(c):
        args, kwargs, y = c
        kw = dict(kwargs)
        x = args[0] if args else kw.pop("hidden_states")
        kw.pop("past_key_values", None)
        return x, args[1:], kw, y

    xq = [split(caps[k][0])[0] for k in range(len(seqs))]
    for p in model.parameters():
        p.requires_grad_(False)
    t0 = time.time()
    for li in range(len(layers)):
        pre = f"model.layers.{li}."
        ql = {n[len(pre):]: q for n, q in qlin.items() if n.startswith(pre)}
        groups = [{"params": [t for q in ql.values() for t in (q.a, q.b)], "lr": a.tune_lr}]
        norms = [p for n, p in layers[li].named_parameters() if "norm" in n]
        if a.tune_norms:
            for p in norms:
                p.requires_grad_(True)
            groups.append({"params": norms, "lr": a.tune_lr_norm})
        opt = torch.optim.Adam(groups)
        first = last = 0.0
        for step in range(a.tune):
            k = step % len(seqs)
            _, rest, kw, y = split(caps[k][li])
            if a.tune_target == "sym":
                with torch.no_grad():
                    y = ref_layers[li](xq[k], *rest, **kw)
            W = {n: q.weight() for n, q in ql.items()}
            out = functional_call(layers[li], W, (xq[k], *rest), kw)
            loss = (((out - y) ** 2).sum(-1) / (y ** 2).sum(-1)).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            if step < len(seqs):
                first += loss.item() / min(len(seqs), a.tune)
            if step >= a.tune - len(seqs):
                last += loss.item() / min(len(seqs), a.tune)
        for p in norms:
            p.requires_grad_(False)
        with torch.no_grad():
            params = dict(layers[li].named_parameters())
            for n, q in ql.items():
                params[n].copy_(q.weight())
            for k in range(len(seqs)):
                _, rest, kw, _ = split(caps[k][li])
                xq[k] = layers[li](xq[k], *rest, **kw)
        print(f"  layer {li}: relative output error {first:.5f} -> {last:.5f} [{time.time() - t0:.0f} s]", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/gemma-3-270m")
    ap.add_argument("--eval", default="models/data/eval.txt")
    ap.add_argument("--calib", default="models/data/calib.txt")
    ap.add_argument("--eval-tokens", type=int, default=1024)
    ap.add_argument("--calib-seqs", type=int, default=4, help="sequences of 512 tokens")
    ap.add_argument("--spread", action="store_true", help="calibration sequences spread evenly over the whole calibration text, not taken from its start")
    ap.add_argument("--window", type=int, default=1024, help="score the evaluation tokens in windows of this many, each from <bos> (as the converter's report)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--search", action="store_true")
    ap.add_argument("--damp", type=float, default=0.1, help="GPTQ dampening, a fraction of mean(diag H)")
    ap.add_argument("--temp", action="store_true", help="also fit one logit scale on the calibration text")
    ap.add_argument("--kl", action="store_true", help="also score KL(P_ref || P_quant) and top-1 agreement against a second, full-precision copy of the model")
    ap.add_argument("--exp", action="append", required=True)
    ap.add_argument("--tune", type=int, default=0, help="distillation steps after quantizing (codes fixed, grids and norms move; needs gptq/gptqv/rotN parts)")
    ap.add_argument("--tune-lr", type=float, default=1e-3)
    ap.add_argument("--tune-norms", action="store_true")
    ap.add_argument("--tune-lr-norm", type=float, default=1e-3)
    ap.add_argument("--tune-norms-only", action="store_true", help="e2e: move the norm gains only, not the grids")
    ap.add_argument("--tune-seqs", type=int, default=64, help="calibration sequences for --tune, evenly spread")
    ap.add_argument("--tune-len", type=int, default=256)
    ap.add_argument("--tune-mode", choices=["e2e", "block"], default="e2e", help="e2e: distill the whole model's logits; block: layer by layer on each layer's output")
    ap.add_argument("--tune-target", choices=["fp", "sym"], default="fp", help="block mode: the full-precision stream, or the full-precision layer on the quantized stream")
    ap.add_argument("--tune-skip-before", action="store_true", help="do not score the untuned model first")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager").eval()
    ref_model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager").eval() if a.kl or a.tune else None
    bos = torch.tensor([tok.bos_token_id])
    eall = tok(open(a.eval).read(), return_tensors="pt").input_ids[0][1:]
    # windows of `window` tokens, each from <bos>, overlapping by nothing: window - 1 text tokens
    # scored per window, a.eval_tokens in all
    step = a.window - 1
    ewins = [torch.cat([bos, eall[i : i + step]]) for i in range(0, min(a.eval_tokens, len(eall)), step)]
    cids = tok(open(a.calib).read(), return_tensors="pt").input_ids[0][1:]
    if a.spread:
        last = len(cids) - 511
        starts = [round(k * last / max(a.calib_seqs - 1, 1)) for k in range(a.calib_seqs)]
    else:
        starts = [i * 511 for i in range(a.calib_seqs)]
    calib = [torch.cat([bos, cids[s : s + 511]]) for s in starts]
    tl = a.tune_len - 1
    tcalib = [torch.cat([bos, cids[round(k * (len(cids) - tl) / max(a.tune_seqs - 1, 1)) :][:tl]]) for k in range(a.tune_seqs)]
    orig = {n: p.detach().clone() for n, p in model.named_parameters()}
    linears = [n for n in orig if n.endswith("proj.weight")]
    mods = dict(model.named_modules())

    stats = {}

    @torch.no_grad()
    def ppl(t=1.0):
        nll, n, kl, top = 0.0, 0, 0.0, 0
        for w in ewins:
            lp = torch.log_softmax(model(w[None]).logits[0, :-1].float() * t, -1)
            nll -= lp.gather(1, w[1:, None]).sum().item()
            n += len(w) - 1
            if ref_model is not None:
                lr = torch.log_softmax(ref_model(w[None]).logits[0, :-1].float(), -1)
                kl += (lr.exp() * (lr - lp)).sum().item()
                top += (lr.argmax(-1) == lp.argmax(-1)).sum().item()
        stats["kl"], stats["top1"] = kl / n, top / n
        return math.exp(nll / n)

    t0 = time.time()
    p_ref = ppl()
    if a.temp:
        with torch.no_grad():
            ref_lp = [torch.log_softmax(model(c[None]).logits[0].float(), -1) for c in calib]
    H, HN, HS, HR, PEND, RES, hooks = {}, {}, {}, {}, {}, {}, []
    HV, VX, OMS, HF, GU = {}, {}, {}, {}, {}
    hd = model.config.head_dim
    for n in linears:
        def hook(_m, inp, out, n=n):
            x = inp[0].reshape(-1, inp[0].shape[-1]).double()
            H[n] = H.get(n, 0) + x.T @ x
            # Norm-aware Hessians: o/down outputs pass through an RMSNorm (post-attention /
            # post-FFN) before the residual, q/k outputs through a per-head RMSNorm, so an
            # output error at token t counts scaled by 1/rms(y_t) (per head for q/k).
            y = out.reshape(-1, out.shape[-1]).double()
            if "v_proj" in n:
                VX["x"] = x
            if "o_proj" in n:
                OMS["ms"] = y.pow(2).mean(1) + 1e-12
            if "gate_proj" in n or "up_proj" in n:
                GU["gate" if "gate_proj" in n else "up"] = y
                GU["x"] = x
            if "down_proj" in n:
                # gate/up through the GELU gating, down and the post-FFN norm: row j's error
                # reaches the output as D[:, j] * gelu(g_tj) (up) or D[:, j] * gelu'(g_tj) u_tj
                # (gate), divided by rms(y_t); one token weight per tensor, the rows' mean
                # weighted by |D[:, j]|^2
                g, u, xg = GU["gate"], GU["up"], GU["x"]
                cj = _m.weight.double().pow(2).sum(0)  # [intermediate]
                gg = g.float().requires_grad_(True)
                with torch.enable_grad():
                    ge = torch.nn.functional.gelu(gg, approximate="tanh")
                    (dge,) = torch.autograd.grad(ge.sum(), gg)
                ge, dge = ge.detach().double(), dge.double()
                inv = 1.0 / (y.pow(2).mean(1) + 1e-12)
                wu = (ge.pow(2) * cj).sum(1) / cj.sum() * inv
                wg = ((dge * u).pow(2) * cj).sum(1) / cj.sum() * inv
                pre = n[: -len("down_proj.weight")]
                for nm, wt in ((pre + "up_proj.weight", wu), (pre + "gate_proj.weight", wg)):
                    HF[nm] = HF.get(nm, 0) + (xg * wt[:, None]).T @ xg
            if any(c in n for c in ("o_proj", "down_proj")):
                wt = 1.0 / (y.pow(2).mean(1) + 1e-12)
                HN[n] = HN.get(n, 0) + (x * wt[:, None]).T @ x
                # ... and by 1/mean(x_t^2) of the residual stream entering the layer: the
                # later layers' pre-norms see the added error relative to it
                wr = wt / (RES["ms"] + 1e-12)
                HR[n] = HR.get(n, 0) + (x * wr[:, None]).T @ x
                # the whole sublayer's linears at the same token weights (q/k/v or gate/up
                # waited in PEND for the sublayer's output)
                HS[n] = HS.get(n, 0) + (x * wt[:, None]).T @ x
                for m, xm in PEND.items():
                    HS[m] = HS.get(m, 0) + (xm * wt[:, None]).T @ xm
                PEND.clear()
            else:
                PEND[n] = x
            if any(c in n for c in ("q_proj", "k_proj")):
                yh = y.reshape(y.shape[0], -1, hd)
                wt = 1.0 / (yh.pow(2).mean(2) + 1e-12)  # [T, heads]
                hs = HN.get(n, [0] * yh.shape[1])
                HN[n] = [hs[h] + (x * wt[:, h, None]).T @ x for h in range(yh.shape[1])]
        hooks.append(mods[n[: -len(".weight")]].register_forward_hook(hook))
    def attn_hook(m, _inp, out):
        # v_proj's tokens weighted by how much attention output they feed: the output at t is
        # sum_s a_ts v_s, so v_s's error counts sum_t a_ts^2 (over the query heads), each
        # output then divided by o_proj's output RMS at t (the post-attention norm)
        a = out[1]
        if a is None:
            return
        a = a[0].double()  # [heads, T, T]
        wt = (a.pow(2) / OMS["ms"][None, :, None]).sum((0, 1))  # [T] over keys s
        x = VX["x"]
        n = m.v_name
        HV[n] = HV.get(n, 0) + (x * wt[:, None]).T @ x
    for li, layer in enumerate(model.model.layers):
        layer.self_attn.v_name = f"model.layers.{li}.self_attn.v_proj.weight"
        hooks.append(layer.self_attn.register_forward_hook(attn_hook))
    for layer in model.model.layers:
        def pre(_m, args, kwargs):
            hs = args[0] if args else kwargs["hidden_states"]
            RES["ms"] = hs.reshape(-1, hs.shape[-1]).double().pow(2).mean(1)
        hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
    with torch.no_grad():
        for s in calib:
            model(s[None])
    for h in hooks:
        h.remove()
    print(f"PPL_ref {p_ref:.3f} ({sum(len(w) - 1 for w in ewins)} tokens of {a.eval} in windows of {a.window}); calibration {a.calib_seqs} x 512 {'spread' if a.spread else 'from the start'}; Hessians in {time.time() - t0:.0f} s", flush=True)

    for exp in a.exp:
        qlin = {}
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(orig[n])
        for part in exp.split("+"):
            quantize_part(part, model, orig, linears, H, HN, HV, HF, HR, HS, hd, a, qlin)
        extra = lambda: f", KL {stats['kl']:.4f}, top-1 {100 * stats['top1']:.2f} %" if ref_model is not None else ""
        if a.tune:
            if not a.tune_skip_before:
                p = ppl()
                print(f"{exp} before --tune: PPL {p:.3f}, retention (PPL ratio) {100 * p_ref / p:.2f} %{extra()} [{time.time() - t0:.0f} s]", flush=True)
            (tune if a.tune_mode == "e2e" else tune_blocks)(model, ref_model, qlin, tcalib, a)
        p = ppl()
        print(f"{exp}: PPL {p:.3f}, retention (PPL ratio) {100 * p_ref / p:.2f} %{extra()} [{time.time() - t0:.0f} s]", flush=True)
        if a.temp:
            # One logit scale fitted on the calibration text (KL to the reference's), applied
            # to the evaluation text: is the quantized model's confidence off by a constant?
            with torch.no_grad():
                lq = [model(c[None]).logits[0].float() for c in calib]
                def kl(t):
                    return sum((ref_lp[i].exp() * (ref_lp[i] - torch.log_softmax(lq[i] * t, -1))).sum(-1).mean().item() for i in range(len(calib))) / len(calib)
                ts = [0.9 + 0.01 * i for i in range(21)]
                best = min(ts, key=kl)
                pt = ppl(best)
            print(f"  logit scale {best:.2f} (calibration KL {kl(1.0):.4f} -> {kl(best):.4f}): PPL {pt:.3f}, retention {100 * p_ref / pt:.2f} %", flush=True)


if __name__ == "__main__":
    main()

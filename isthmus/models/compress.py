"""Compression: int8 quantisation (torch.ao) and low-rank factorisation (SVD / Tucker-2).

int8: chain CNNs are quantised in eager mode layer by layer (QuantStub before layer 0,
DeQuantStub after the last, around LocalResponseNorm and at the end of each exit branch;
conv+bn+relu fused), so layer i of the int8 chain is layer i of the fp32 chain and activations
between layers are int8. DAG CNNs use FX graph mode (`prepare_fx` / `convert_fx`). The LSTM LM
gets dynamic int8 (weights int8, activations quantised on the fly). Static observers are
calibrated on the given inputs. Engine: 'x86', else 'fbgemm', else 'qnnpack'.

Low rank, rank by energy: for a weight matrix W with singular values σ, keep the smallest r with
Σ_{i≤r} σ_i² ≥ energy · Σ σ_i². Linear W (out×in) ≈ (U_r S_r^½)(S_r^½ V_rᵀ): two linears.
Conv W (C_out×C_in×k×k), Tucker-2 on the channel modes: U_o = top r_o left singular vectors of
the mode-0 unfolding, U_i of the mode-1 unfolding, core G = W ×₀ U_oᵀ ×₁ U_iᵀ, run as
1x1 conv (C_in→r_i) · k×k conv G (r_i→r_o) · 1x1 conv (r_o→C_out, bias). Convs with C_in ≤ 4 or
k = 1 use plain SVD of the mode-0 unfolding (k×k conv C_in→r · 1x1 conv r→C_out). A layer is
replaced only when the factorised form has < 80 % of the parameters.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

__all__ = ["quant_engine", "quantize_int8", "low_rank", "rank_for_energy"]

_WORTH_IT = 0.8


def quant_engine() -> str:
    """The quantised engine used: 'x86' if this torch supports it, else 'fbgemm', else 'qnnpack'."""
    import torch

    engines = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "qnnpack"):
        if engine in engines:
            return engine
    raise RuntimeError(f"no int8 engine among {engines}. To fix: install a torch build with fbgemm or qnnpack")


def _set_engine() -> str:
    import torch

    engine = quant_engine()
    torch.backends.quantized.engine = engine
    return engine


def _fuse_chain(model: Any) -> None:
    """Fuse conv(+bn)(+relu) runs of a chain in place; fused-away layers become Identity (indices kept)."""
    from torch import nn
    from torch.ao.quantization import fuse_modules

    groups, layers, i = [], list(model.layers), 0
    while i < len(layers):
        if isinstance(layers[i], nn.Conv2d):
            run = [i]
            if i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d):
                run.append(i + 1)
            if run[-1] + 1 < len(layers) and isinstance(layers[run[-1] + 1], nn.ReLU):
                run.append(run[-1] + 1)
            if len(run) > 1:
                groups.append([f"layers.{j}" for j in run])
            i = run[-1] + 1
        else:
            i += 1
    if groups:
        fuse_modules(model, groups, inplace=True)


def _quantize_chain(model: Any, calib: Any, engine: str) -> Any:
    import torch
    from torch import nn
    from torch.ao.quantization import DeQuantStub, QuantStub, convert, get_default_qconfig, prepare

    _fuse_chain(model)
    layers = model.layers
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.LocalResponseNorm):  # no int8 kernel: run it in fp32 between stubs
            layers[i] = nn.Sequential(DeQuantStub(), layer, QuantStub())
    layers[0] = nn.Sequential(QuantStub(), layers[0])
    layers[-1] = nn.Sequential(layers[-1], DeQuantStub())
    for key, branch in getattr(model, "exits", {}).items():
        model.exits[key] = nn.Sequential(*branch, DeQuantStub())
    model.qconfig = get_default_qconfig(engine)
    prepare(model, inplace=True)
    with torch.inference_mode():
        if hasattr(model, "exits"):
            from isthmus.models.zoo import exit_logits

            exit_logits(model, calib)
        else:
            model(calib)
    return convert(model, inplace=True)


def quantize_int8(model: Any, calib: Any) -> Any:
    """An int8 copy of `model` (eval mode); static observers calibrated on the batch `calib`."""
    import torch
    from torch import nn

    engine = _set_engine()
    model = copy.deepcopy(model).eval()
    if any(isinstance(m, nn.LSTM) for m in model.modules()):
        return torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
    if hasattr(model, "layers"):
        return _quantize_chain(model, calib, engine)
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    prepared = prepare_fx(model, get_default_qconfig_mapping(engine), example_inputs=(calib[:1],))
    with torch.inference_mode():
        prepared(calib)
    return convert_fx(prepared)


# ---------------------------------------------------------------- low rank

def rank_for_energy(singular_values: Any, energy: float) -> int:
    """Smallest r with Σ_{i≤r} σ_i² ≥ energy · Σ σ_i²."""
    import torch

    if not 0 < energy <= 1:
        raise ValueError(f"energy {energy} must be in (0, 1]. To fix: pass e.g. energy=0.9 (keep 90 % of Σσ²)")
    power = singular_values.double() ** 2
    cum = torch.cumsum(power, 0) / power.sum().clamp_min(1e-30)
    return int(min(len(power), int((cum < energy - 1e-12).sum()) + 1))


def _top_svd(a: Any, rank: int) -> tuple[Any, Any, Any]:
    """Top-`rank` SVD (u, s, vh) of a matrix: randomized (Halko et al.) for large matrices and small
    ranks, exact otherwise."""
    import torch

    if min(a.shape) > 256 and rank < min(a.shape) // 2:
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(a, q=min(min(a.shape), rank + 10), niter=2)
        return u[:, :rank], s[:rank], v[:, :rank].t()
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    return u[:, :rank], s[:rank], vh[:rank]


def _svd_factors(a: Any, rank: int) -> tuple[Any, Any]:
    """(L, R) with a ≈ L @ R, L = U_r S_r^½ (m×r), R = S_r^½ V_rᵀ (r×n), in float32."""
    u, s, vh = _top_svd(a, rank)
    root = s.sqrt()
    return (u * root).float(), (root[:, None] * vh).float()


def _two_stage(first: Any, second: Any, layer: Any, left: Any, right: Any) -> Any:
    """nn.Sequential(first, second) with weights R (first) and L (second) and the layer's bias."""
    from torch import nn

    first.weight.data = right.reshape(first.weight.shape)
    second.weight.data = left.reshape(second.weight.shape)
    if layer.bias is not None:
        second.bias.data = layer.bias.detach().clone()
    return nn.Sequential(first, second)


def _linear_lr(layer: Any, rank: int) -> Any:
    from torch import nn

    left, right = _svd_factors(layer.weight.detach().double(), rank)
    return _two_stage(nn.Linear(layer.in_features, rank, bias=False),
                      nn.Linear(rank, layer.out_features, bias=layer.bias is not None), layer, left, right)


def _conv_svd(layer: Any, rank: int) -> Any:
    from torch import nn

    w = layer.weight.detach().double()
    left, right = _svd_factors(w.reshape(w.shape[0], -1), rank)
    first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                      bias=False)
    return _two_stage(first, nn.Conv2d(rank, w.shape[0], 1, bias=layer.bias is not None), layer, left, right)


def _conv_tucker2(layer: Any, r_out: int, r_in: int) -> Any:
    import torch
    from torch import nn

    w = layer.weight.detach().double()
    cout, cin = w.shape[:2]
    u_out = _top_svd(w.reshape(cout, -1), r_out)[0]
    u_in = _top_svd(w.transpose(0, 1).reshape(cin, -1), r_in)[0]
    core = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)
    first = nn.Conv2d(cin, r_in, 1, bias=False)
    middle = nn.Conv2d(r_in, r_out, layer.kernel_size, layer.stride, layer.padding, layer.dilation, bias=False)
    last = nn.Conv2d(r_out, cout, 1, bias=layer.bias is not None)
    first.weight.data = u_in.t().reshape(r_in, cin, 1, 1).float()
    middle.weight.data = core.float()
    last.weight.data = u_out.reshape(cout, r_out, 1, 1).float()
    if layer.bias is not None:
        last.bias.data = layer.bias.detach().clone()
    return nn.Sequential(first, middle, last)


def _spectra(layer: Any) -> list[Any]:
    """Singular values of the unfoldings whose ranks we choose: [mode-0] or [mode-0, mode-1]."""
    import torch

    w = layer.weight.detach().double()
    if w.dim() == 2:
        return [torch.linalg.svdvals(w)]
    cout, cin, kh, kw = w.shape
    mode0 = torch.linalg.svdvals(w.reshape(cout, -1))
    if cin <= 4 or kh * kw == 1:
        return [mode0]
    return [mode0, torch.linalg.svdvals(w.transpose(0, 1).reshape(cin, -1))]


def _full_ranks(layer: Any) -> list[int]:
    """Full rank of each unfolding `_spectra` would decompose (without computing any SVD)."""
    w = layer.weight
    if w.dim() == 2:
        return [min(w.shape)]
    cout, cin, kh, kw = w.shape
    if cin <= 4 or kh * kw == 1:
        return [min(cout, cin * kh * kw)]
    return [min(cout, cin * kh * kw), min(cin, cout * kh * kw)]


def _factorised_params(layer: Any, ranks: list[int]) -> int:
    w = layer.weight
    if w.dim() == 2:
        return ranks[0] * (w.shape[0] + w.shape[1])
    cout, cin, kh, kw = w.shape
    if len(ranks) == 1:
        return ranks[0] * (cin * kh * kw + cout)
    return cin * ranks[1] + ranks[1] * ranks[0] * kh * kw + ranks[0] * cout


def low_rank(model: Any, energy: float = 0.9, rank_fraction: dict[str, list[float]] | None = None
             ) -> tuple[Any, dict[str, list[float]]]:
    """A copy of `model` with its linear and conv layers factorised, rank chosen by energy.

    With `rank_fraction` ({module path: [r/full rank per unfolding]}, as returned by an earlier
    call) the same relative ranks are applied instead (e.g. ranks chosen on a trained small model
    applied to the full-size model); keys "*conv" / "*fc" give the fraction for layers whose path
    is not listed. Returns (model, rank_fraction used, with those two defaults = the median
    fraction per kind).
    """
    from torch import nn

    model = copy.deepcopy(model).eval()
    chosen: dict[str, list[float]] = {}
    targets = [(path, m) for path, m in model.named_modules()
               if (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)) and path]
    for path, layer in targets:
        full = _full_ranks(layer)
        if rank_fraction is not None:
            fraction = rank_fraction.get(path) or rank_fraction.get("*fc" if isinstance(layer, nn.Linear) else "*conv")
            if not fraction:
                continue
            ranks = [max(1, round(f * n)) for f, n in zip(fraction * len(full), full)][:len(full)]
        else:
            ranks = [rank_for_energy(s, energy) for s in _spectra(layer)]
        if _factorised_params(layer, ranks) >= _WORTH_IT * layer.weight.numel():
            continue
        if isinstance(layer, nn.Linear):
            new = _linear_lr(layer, ranks[0])
        elif len(ranks) == 1:
            new = _conv_svd(layer, ranks[0])
        else:
            new = _conv_tucker2(layer, ranks[0], ranks[1])
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        if isinstance(parent, (nn.ModuleList, nn.Sequential)):
            parent[int(attr)] = new
        else:
            setattr(parent, attr, new)
        chosen[path] = [r / n for r, n in zip(ranks, full)]
    for kind, cls in (("*conv", nn.Conv2d), ("*fc", nn.Linear)):
        fractions = [chosen[p][0] for p, m in targets if isinstance(m, cls) and p in chosen]
        if fractions and rank_fraction is None:
            chosen[kind] = [statistics.median(fractions)]
    return model.eval(), chosen

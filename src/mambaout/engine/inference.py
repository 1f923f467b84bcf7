"""The inference path shared by predict, validate, benchmark and the demo: precision, memory format, exact
simplifications and compilation.

`prepare_for_inference(model, fast=True)` is the fast path: bf16 autocast where the hardware computes in bf16
natively (AVX512-BF16 / AMX CPUs, CUDA), channels-last for conv networks, MambaOut's fc1 split so that its depthwise
conv reads a dense tensor, every LayerNorm affine folded into the Linear layers that read it, large CPU batches of
conv networks run in micro-batches, and `torch.compile` with frozen weights (falling back to eager, with a warning,
when compilation fails). The user's model is never modified: splitting and folding work on a copy.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from ..errors import MambaoutError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_CHOICES = ("auto", *PRECISIONS)
# Relative agreement a fold must keep with the unfolded model on the probe input (fp32 rounding is ~1e-6).
FOLD_RTOL = 1e-4
# Images per forward call for channels-last (conv) networks on the CPU. Their stride-4 activations for 16 images at
# 224 (MambaOut-Femto's fc1 output: 42 MB) are past glibc's largest mmap threshold (32 MiB), so every call maps fresh
# pages and the kernel zeroes them; at 8 they come from the heap and stay warm in cache. Batch 16 in 8s against whole,
# side by side: MambaOut-T +30% (bf16, AMX), MambaOut-Femto +7% (bf16) and +20% (fp32, torch held to AVX2); token
# models (Vim) gain nothing, so they keep whole batches.
CPU_MICRO_BATCH = 8


@functools.cache
def cpu_supports_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AVX512-BF16 or AMX) and torch's kernels use it (not capped by
    ATEN_CPU_CAPABILITY=avx2, as on an AVX2-only CPU), where bf16 autocast beats fp32."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch: read the kernel's flags
        try:
            flags = set(Path("/proc/cpuinfo").read_text().split())
        except OSError:
            return False
        return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """'auto' -> 'bf16' on bf16-capable CPUs and CUDA GPUs, else 'fp32'; other names are checked and returned."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, not {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_supports_bf16() else "fp32"
    return "fp32"


def is_conv_network(model: nn.Module) -> bool:
    """More than one 2-D convolution (not just a patch embedding): channels-last memory then pays off."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


def example_input(model: nn.Module, input_size: tuple[int, int] | None = None, device="cpu") -> Tensor:
    """A seeded normal batch of one image at `input_size`, else the model's pretrained_cfg input size, else 224."""
    if input_size is None:
        cfg_size = getattr(model, "pretrained_cfg", {}).get("input_size")
        input_size = tuple(cfg_size[-2:]) if cfg_size else (224, 224)
    generator = torch.Generator().manual_seed(0)
    chans = getattr(model, "in_chans", 3)
    return torch.randn(1, chans, *input_size, generator=generator).to(device)


# ---------------------------------------------------------------------------------------------------------------------
# Folding a LayerNorm's affine into the Linear layers that read its output


class FoldError(MambaoutError, RuntimeError):
    """Folding would change the model's output: it reads a norm's output in a way the data-flow probe did not see."""


class _DataFlow(TorchFunctionMode):
    """Records every torch call that reads a watched tensor, with the module running at the time."""

    def __init__(self) -> None:
        super().__init__()
        self.watched: dict[int, str] = {}  # id(tensor) -> norm name; the tensors are kept alive by `outputs`
        self.outputs: list[Tensor] = []
        self.readers: dict[str, list[tuple[str, str | None, int]]] = defaultdict(list)  # (func, module, arg index)
        self.module_stack: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        # Calls that return no tensor (dim(), size(), shape) read metadata, not values.
        if self.watched and any(isinstance(t, Tensor) for t in tree_leaves(result)):
            for index, arg in enumerate(tree_leaves((args, kwargs))):
                name = self.watched.get(id(arg)) if isinstance(arg, Tensor) else None
                if name is not None:
                    module = self.module_stack[-1] if self.module_stack else None
                    self.readers[name].append((getattr(func, "__name__", str(func)), module, index))
        return result


def _foldable_pairs(model: nn.Module, sample: Tensor) -> dict[str, list[str]]:
    """Norm name -> the Linear layers its output flows into, where a Linear call is the ONLY reader of that output.

    Found by running `sample` through the model and watching the data flow, so no family is known by name. A norm
    whose output is also read by anything else (a residual, a pooling, a gate) is left alone.
    """
    modules = dict(model.named_modules())
    norms = {n for n, m in modules.items() if isinstance(m, nn.LayerNorm) and m.weight is not None}
    norms = {n for n in norms if len(modules[n].normalized_shape) == 1}
    calls: Counter[str] = Counter()
    flow = _DataFlow()
    handles = []

    def before(name, module, args):
        calls[name] += 1
        flow.module_stack.append(name)

    def after(name, module, args, output):
        flow.module_stack.pop()
        if name in norms and isinstance(output, Tensor):
            flow.outputs.append(output)
            flow.watched[id(output)] = name

    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(functools.partial(before, name)))
        handles.append(module.register_forward_hook(functools.partial(after, name)))
    try:
        with torch.no_grad(), flow:
            result = model(sample)
    finally:
        for handle in handles:
            handle.remove()
    returned = {id(t) for t in tree_leaves(result) if isinstance(t, Tensor)}
    shared = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))

    pairs = {}
    for norm_name in norms:
        readers = flow.readers.get(norm_name)
        output = next((t for t in flow.outputs if flow.watched[id(t)] == norm_name), None)
        if not readers or calls[norm_name] != 1 or output is None or id(output) in returned:
            continue
        width = modules[norm_name].normalized_shape[0]
        targets = []
        for func, reader, index in readers:
            linear = modules.get(reader) if reader else None
            ok = (
                isinstance(linear, nn.Linear)
                and func in ("linear", "conv2d")  # conv2d: a Linear over NCHW channels as a 1x1 conv
                and index == 0
                and calls[reader] == 1
                and linear.in_features == width
                and shared[id(linear.weight)] == 1
            )
            if not ok:
                targets = []
                break
            targets.append(reader)
        if targets:
            pairs[norm_name] = sorted(set(targets))
    return pairs


@torch.no_grad()
def _fold(norm: nn.LayerNorm, linears: list[nn.Linear]) -> None:
    """Linear(gamma * x_hat + beta) = Linear'(x_hat) with W' = W * gamma and b' = b + W @ beta (in float64)."""
    gamma = norm.weight.double()
    beta = None if norm.bias is None else norm.bias.double()
    for linear in linears:
        weight = linear.weight.double()
        bias = None if linear.bias is None else linear.bias.double()
        if beta is not None:
            shift = weight @ beta
            bias = shift if bias is None else bias + shift
        linear.weight.copy_((weight * gamma).to(linear.weight.dtype))
        if bias is not None:
            if linear.bias is None:
                linear.bias = nn.Parameter(bias.to(linear.weight.dtype), requires_grad=False)
            else:
                linear.bias.copy_(bias.to(linear.bias.dtype))
    norm.weight = None
    norm.bias = None


def fold_layer_norms(model: nn.Module, sample: Tensor | None = None) -> tuple[nn.Module, list[str]]:
    """A copy of `model` (eval mode) with each LayerNorm's affine folded into the Linear layers that alone read its
    output, and the names of the folded norms. The original is untouched.

    Exact algebra (W' = W * gamma, b' = b + W @ beta), checked on `sample` (default: `example_input(model)`): a
    FoldError is raised if the folded copy's output drifts more than FOLD_RTOL from the original's.
    """
    model = copy.deepcopy(model).eval()
    sample = example_input(model, device=next(model.parameters()).device) if sample is None else sample
    pairs = _foldable_pairs(model, sample)
    if not pairs:
        return model, []
    with torch.no_grad():
        expected = model(sample)
    modules = dict(model.named_modules())
    for norm_name, linear_names in pairs.items():
        _fold(modules[norm_name], [modules[n] for n in linear_names])
    with torch.no_grad():
        got = model(sample)
    scale = float(expected.abs().max().clamp_min(1e-12))
    if not torch.allclose(got, expected, rtol=FOLD_RTOL, atol=FOLD_RTOL * scale):
        raise FoldError(
            f"folding {len(pairs)} norms changed the output by {float((got - expected).abs().max()):.3g} "
            f"(scale {scale:.3g}): the model reads a norm's output in a way the data-flow probe did not see"
        )
    return model, sorted(pairs)


# ---------------------------------------------------------------------------------------------------------------------
# The wrapper


class InferenceModel(nn.Module):
    """Runs the wrapped model without autograd, under autocast (when not fp32), with channels-last inputs where asked,
    `micro_batch` images per call when set (exact: in eval mode no image sees another), through its compiled form
    when there is one; returns float32 outputs. Other attributes (pretrained_cfg, num_classes, ...) are the wrapped
    model's."""

    def __init__(
        self,
        model: nn.Module,
        device_type: str,
        precision: str,
        channels_last: bool,
        compiled: Callable[[Tensor], Tensor] | None = None,
        micro_batch: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.precision = precision
        self.channels_last = channels_last
        self.micro_batch = micro_batch
        self.folded_norms: list[str] = []
        self.split_blocks = 0
        # kept out of the module tree: the compiled wrapper holds the same parameters
        self.__dict__["compiled"] = compiled

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    def precision_context(self):
        """Autocast at this model's precision (nothing for fp32), for callers that run `model` themselves."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=PRECISIONS[self.precision])

    def as_input(self, x: Tensor) -> Tensor:
        """`x` in the memory format the wrapped model runs in, for callers that run `model` themselves."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: Tensor) -> Tensor:
        if self.micro_batch and x.dim() > 1 and x.shape[0] > self.micro_batch:
            return torch.cat([self(chunk) for chunk in x.split(self.micro_batch)])
        x = self.as_input(x)
        with torch.no_grad(), self.precision_context():
            if self.compiled is None:
                return self.model(x).float()
            try:
                return self.compiled(x).float()
            except Exception as error:  # any compiler failure: eager is the answer
                out = self.model(x).float()  # bad input raises here, with the eager model's own message
                # dynamo wraps the compiler's own error
                cause = getattr(error, "inner_exception", None) or error.__cause__ or error
                detail = " ".join(str(cause).split())[:300]
                warnings.warn(
                    f"torch.compile failed ({type(cause).__name__}: {detail}); running the model eagerly",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.__dict__["compiled"] = None
                return out


def _compile(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """torch.compile with frozen weights: inductor constant-folds the bf16 weight casts and swaps matmuls and convs
    for oneDNN kernels on pre-packed weights (the main CPU win; inference only)."""
    compiled = torch.compile(model)

    def run(x: Tensor) -> Tensor:
        # compilation happens inside the first calls, where the flag must be set (compile's `options` miss it)
        with inductor_config.patch(freezing=True):
            return compiled(x)

    return run


def _split_projections(model: nn.Module) -> int:
    """Let every module that offers `split_projections()` (MambaOut: fc1 as its gate / identity / conv row blocks)
    split them; the number of blocks split."""
    offering = [m for m in model.modules() if callable(getattr(m, "split_projections", None))]
    return sum(m.split_projections() for m in offering)


def prepare_for_inference(
    model: nn.Module,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    channels_last: bool | str | None = None,
    compile: bool | None = None,
    *,
    fold_norms: bool | None = None,
    split_projections: bool | None = None,
    micro_batch: int | None = None,
    fast: bool = False,
    input_size: tuple[int, int] | None = None,
    sample: Tensor | None = None,
) -> InferenceModel:
    """The model in eval mode on `device`, wrapped to run at `precision` ('auto', 'fp32', 'bf16', 'fp16').

    Unset options take their plain defaults (fp32, no channels-last, no folding, eager), or with `fast=True` the fast
    path: precision 'auto', channels-last 'auto' (conv networks), folded norms and torch.compile. MambaOut blocks get
    split input projections (`SplitProjectionBlock`) wherever norms are folded, unless `split_projections` says.
    Channels-last models on the CPU run CPU_MICRO_BATCH images per call unless `micro_batch` says (0: whole batches).
    The folding is checked on `sample`, by default one image at `input_size` (default: the model's pretrained_cfg
    input size).
    Compiled weights are frozen at the first call: later changes to the model's weights are not seen.
    """
    precision = resolve_precision(("auto" if fast else "fp32") if precision is None else precision, device)
    if channels_last is None:
        channels_last = "auto" if fast else False
    if channels_last not in (True, False, "auto"):
        raise ValueError(f"channels_last must be True, False or 'auto', not {channels_last!r}")
    if channels_last == "auto":
        channels_last = is_conv_network(model)
    fold = fast if fold_norms is None else fold_norms
    # both are exact simplifications: splitting goes with folding unless asked otherwise
    split = fold if split_projections is None else split_projections
    compile = fast if compile is None else compile
    device = torch.device(device)
    if micro_batch is None:
        micro_batch = CPU_MICRO_BATCH if channels_last and device.type == "cpu" else 0
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 0:
        raise ValueError(f"micro_batch must be a whole number of images (0: whole batches), not {micro_batch!r}")

    model = model.eval().to(device)
    folded: list[str] = []
    copied = False
    if fold:
        try:
            probe = example_input(model, input_size, device) if sample is None else sample.to(device)
            model, folded = fold_layer_norms(model, probe)
            copied = True
        except FoldError as error:
            warnings.warn(f"norm folding skipped: {error}", RuntimeWarning, stacklevel=2)
    split_blocks = 0
    if split:
        # after folding, on its copy: splitting fc1's rows is exact whether or not the norm is folded into them
        model = model if copied else copy.deepcopy(model)
        split_blocks = _split_projections(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    compiled = _compile(model) if compile else None
    wrapped = InferenceModel(model, device.type, precision, channels_last, compiled, micro_batch or None)
    wrapped.folded_norms = folded
    wrapped.split_blocks = split_blocks
    return wrapped

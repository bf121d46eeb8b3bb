"""`to_onnx`: export a (compressed) model to a compact ONNX file and verify it in onnxruntime."""

import contextlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from compressor.config import Config
from compressor.errors import CompressorError
from compressor.export import verify
from compressor.export.encode import ENCODINGS, compact_initializers
from compressor.export.prepare import locate_export_failure, prepare_for_export
from compressor.export.qdq import insert_qdq

EXPORTERS = ("dynamo", "torchscript")
MAX_IR_VERSION = 10  # onnxruntime refuses IR > 13; 10 is the level we verified every encoding at


@dataclass
class ExportConfig(Config):
    """opset: ONNX opset (>= 17). exporter: 'dynamo' (torch.export based, the default; pinned by
    tests) or 'torchscript' (legacy). encodings: compact encodings allowed for fp32 weights.
    rtol/atol: outputs must satisfy max|ort − torch| <= atol + rtol · max|torch|. int8 QDQ
    models are judged against the float model instead (DESIGN §6): onnxruntime's int8 output may
    be at most `int8_noise_ratio` times as far from it as PyTorch's int8 model is (a quantizer
    rounds a value one step differently when two runtimes compute its input a rounding error
    apart, so the int8 outputs of two correct runtimes differ by quantization noise; see
    docs/export.md). random_inputs: extra random inputs checked. threads: onnxruntime intra-op
    threads for timing. measure_latency: time the compact and the dense file in onnxruntime.
    dynamic_batch: dim 0 of every input is dynamic in the file; dynamic_dims: more dynamic dims
    of every input (1 for the sequence of batch-first (B, T) / (B, T, E) inputs). Random inputs
    are checked with each dynamic dim one longer than the example's."""

    opset: int = field(default=18, metadata={"help": "ONNX opset"})
    exporter: str = field(default="dynamo", metadata={"choices": EXPORTERS})
    encodings: tuple[str, ...] = field(default=ENCODINGS, metadata={
        "choices": ENCODINGS, "help": "compact weight encodings allowed, comma-separated"})
    rtol: float = 1e-4
    atol: float = 1e-5
    int8_noise_ratio: float = 2.0
    random_inputs: int = 2
    threads: int = field(default=1, metadata={"help": "CPU threads for timing"})
    measure_latency: bool = True
    seed: int = 0
    dynamic_batch: bool = False
    dynamic_dims: tuple[int, ...] = field(default=(), metadata={
        "help": "dims of every input that stay dynamic besides the batch, e.g. 1 (sequence)"})

    def validate(self) -> None:
        highest = onnx.defs.onnx_opset_version()
        self.require(17 <= self.opset <= highest, "opset", f"must be in 17..{highest}")
        for name in ("rtol", "atol"):
            self.require(getattr(self, name) >= 0, name, "must be >= 0")
        self.require(self.int8_noise_ratio >= 1, "int8_noise_ratio", "must be >= 1")
        self.require(all(d >= 0 for d in self.dynamic_dims), "dynamic_dims", "must be >= 0")
        self.require(self.random_inputs >= 0, "random_inputs", "must be >= 0")
        self.require(self.threads >= 1, "threads", "must be >= 1")


@dataclass
class ExportReport:
    path: str
    bytes: int
    dense_bytes: int
    size_ratio: float  # dense bytes / compact bytes
    max_error: float  # over the example and the random inputs
    tolerance: float
    ort_latency_s: float | None
    dense_ort_latency_s: float | None
    same_ort_graph_as_dense: bool  # after onnxruntime's constant folding (see verify.py)
    exporter: str
    opset: int
    quantized_layers: int
    encodings: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        kinds = {}
        for enc in self.encodings:
            kinds[enc["kind"]] = kinds.get(enc["kind"], 0) + 1
        lines = [f"wrote {self.path}: {self.bytes:,} bytes, dense fp32 ONNX {self.dense_bytes:,} "
                 f"({self.size_ratio:.2f}x smaller)",
                 f"encodings: {kinds}; int8 QDQ layers: {self.quantized_layers}",
                 f"onnxruntime vs {'the float model' if self.quantized_layers else 'PyTorch'}: "
                 f"max error {self.max_error:.3g} (tolerance {self.tolerance:.3g})"]
        if self.ort_latency_s is not None:
            lines.append(f"onnxruntime latency {self.ort_latency_s * 1e3:.3f} ms vs dense "
                         f"{self.dense_ort_latency_s * 1e3:.3f} ms (median, same run)")
        if self.same_ort_graph_as_dense:
            lines.append("onnxruntime runs the same graph as for the dense file (decoders "
                         "folded at load)")
        elif self.quantized_layers:
            lines.append("onnxruntime runs int8 QDQ kernels where the dense file runs fp32")
        else:
            lines.append("warning: onnxruntime did not fold every weight decoder at load; "
                         "pass encodings=('sparse',) for a file that loads as plain weights")
        return "\n".join(lines)


def _check_inputs(model: nn.Module, example_inputs) -> tuple:
    if not isinstance(model, nn.Module):
        raise CompressorError(f"to_onnx: model must be a torch.nn.Module, got "
                              f"{type(model).__name__}")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if not isinstance(inputs, (tuple, list)) or not inputs or not all(
            isinstance(t, torch.Tensor) for t in inputs):
        raise CompressorError("to_onnx: example_inputs must be a tensor or a non-empty tuple of "
                              f"tensors, got {type(example_inputs).__name__}")
    return tuple(t.detach().cpu() for t in inputs)


def _check_path(path) -> Path:
    path = Path(path)
    if path.suffix != ".onnx":
        raise CompressorError(f"to_onnx: output path must end in .onnx, got {str(path)!r}")
    if path.is_dir():
        raise CompressorError(f"to_onnx: {str(path)!r} is a directory")
    if not path.parent.is_dir():
        raise CompressorError(f"to_onnx: directory {str(path.parent)!r} does not exist")
    return path


def _reference_outputs(model: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    """The model's outputs in eval mode (what is exported); its train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return verify.flatten_outputs(model(*inputs))
    except Exception as exc:  # the user's forward: any error means the inputs do not fit
        raise CompressorError(f"to_onnx: the model fails on example_inputs ("
                              f"{type(exc).__name__}: {str(exc).splitlines()[0]}); pass inputs "
                              "the model's forward accepts") from exc
    finally:
        model.train(was_training)


def _export(model: nn.Module, inputs: tuple, path: Path, config: ExportConfig) -> None:
    """torch.onnx.export with the chosen exporter, quietly; errors name the model and the fix."""
    sink = io.StringIO()
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            if config.exporter == "dynamo":
                dims = _dynamic_dims(config)
                dynamic = (tuple({d: torch.export.Dim.DYNAMIC for d in dims if d < t.dim()}
                                 for t in inputs) if dims else None)
                torch.onnx.export(model, inputs, str(path), dynamo=True, opset_version=config.opset,
                                  external_data=False, verbose=False, dynamic_shapes=dynamic)
            else:
                names = [f"input_{i}" for i in range(len(inputs))]
                axes = {n: {d: f"dim{d}" for d in _dynamic_dims(config) if d < t.dim()}
                        for n, t in zip(names, inputs, strict=True)} or None
                torch.onnx.export(model, inputs, str(path), dynamo=False, input_names=names,
                                  dynamic_axes=axes, opset_version=config.opset)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        culprit = _culprit(model, inputs)
        raise CompressorError(
            f"exporting {type(model).__name__} with the {config.exporter} exporter failed"
            f"{culprit}: {first}. Convert custom modules to standard ones first, or try "
            f"exporter='{'torchscript' if config.exporter == 'dynamo' else 'dynamo'}'") from exc
    finally:
        logger.setLevel(level)


def _dynamic_dims(config: ExportConfig) -> tuple[int, ...]:
    return tuple(sorted({*((0,) if config.dynamic_batch else ()), *config.dynamic_dims}))


def _culprit(model: nn.Module, inputs: tuple) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = locate_export_failure(model, inputs)
    except Exception:  # locating is best effort; the export error itself is what matters
        found = None
    return f" in module {found}" if found else ""


def _load_dense(path: Path) -> onnx.ModelProto:
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    return model


def to_onnx(model: nn.Module, example_inputs, path, config: ExportConfig | None = None,
            dense_path=None) -> ExportReport:
    """Export `model` to `path` in the most compact verified encoding and return the report.

    The dense fp32 ONNX (masks folded, modules converted, no compact encodings, no QDQ) is written
    to `dense_path` when given (else to a temporary file) and is the baseline for size and latency.
    """
    config = config or ExportConfig()
    inputs = _check_inputs(model, example_inputs)
    path = _check_path(path)
    reference = _reference_outputs(model, inputs)
    plain, notes, specs = prepare_for_export(model, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        dense_file = Path(dense_path) if dense_path else Path(tmp) / "dense.onnx"
        _export(plain, inputs, dense_file, config)
        dense = _load_dense(dense_file)
        onnx.save(dense, str(dense_file))
        compact = insert_qdq(dense, specs) if specs else dense
        before = {t.name: onnx.numpy_helper.to_array(t) for t in compact.graph.initializer}
        compact, chosen = compact_initializers(compact, ("dense", *config.encodings))
        # written beside `path` and moved there only once verified: no unverified file is left
        staged = path.with_name(path.name + ".tmp")
        onnx.save(compact, str(staged))
        try:
            report = _verify(model, plain, inputs, reference, compact, chosen, staged,
                             dense_file, config, notes, specs, before)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        os.replace(staged, path)
        report.path = str(path)
        return report


def _verify(model, plain, inputs, reference, compact, chosen, path, dense_file, config, notes,
            specs, before: dict) -> ExportReport:
    """`before`: the initializers before compact encoding, which decoding must reproduce."""
    try:
        verify.check(compact)
    except Exception as exc:
        raise CompressorError(f"the exported graph fails onnx.checker: {exc}") from exc
    encoded = {c.name: c.details["dtype"] for c in chosen if c.kind not in ("dense", "sparse")}
    for name, value in verify.decoded_weights(compact, encoded).items():
        original = before[name]
        if not (value.shape == original.shape and (value == original).all()):
            raise CompressorError(f"internal error: weight {name} does not decode exactly")
    session = verify.session(str(path), config.threads)
    error, tolerance = _output_error(model, plain, inputs, reference, session, config, specs,
                                     notes)
    latency = dense_latency = None
    if config.measure_latency:
        quiet = [verify.session(str(f), config.threads, spinning=False)
                 for f in (dense_file, path)]
        feed = verify.feeds(session, inputs)
        dense_latency, latency = verify.paired_median_latency(quiet, feed)
    size, dense_size = os.path.getsize(path), os.path.getsize(dense_file)
    return ExportReport(
        str(path), size, dense_size, dense_size / size, error, tolerance, latency, dense_latency,
        verify.optimized_ops(str(path)) == verify.optimized_ops(str(dense_file)),
        config.exporter, config.opset, len(specs),
        [{"name": c.name, "kind": c.kind, "bytes": c.nbytes, **c.details} for c in chosen], notes)


def _output_error(model, plain, inputs, reference, session, config, specs, notes
                  ) -> tuple[float, float]:
    """(max error, tolerance) of onnxruntime on the example and random inputs; raises when the
    error is over the tolerance. fp32 graphs are compared with the model; int8 QDQ graphs with
    the float model `plain` (dequantized weights, float activations), against the distance of
    PyTorch's int8 model from it."""
    gen = torch.Generator().manual_seed(config.seed)
    dims = _dynamic_dims(config)
    batches = [(inputs, reference)]
    for _ in range(config.random_inputs):
        extra = tuple(verify.random_like(t, gen, dims) for t in inputs)
        batches.append((extra, _reference_outputs(model, extra)))
    error = scale = noise = 0.0
    for x, want in batches:
        got = session.run(None, verify.feeds(session, x))
        if specs:
            floats = _reference_outputs(plain, x)
            e, s = verify.max_error(floats, got)
            noise = max(noise, verify.max_error(floats, [t.numpy() for t in want])[0])
            notes["ort_vs_torch_int8"] = max(notes.get("ort_vs_torch_int8", 0.0),
                                             verify.max_error(want, got)[0])
        else:
            e, s = verify.max_error(want, got)
        error, scale = max(error, e), max(scale, s)
    tolerance = config.atol + config.rtol * scale + config.int8_noise_ratio * noise
    if specs:
        notes["torch_int8_vs_float"] = noise
    if not error <= tolerance:
        raise CompressorError(_mismatch(error, tolerance, noise, specs, config))
    return error, tolerance


def _mismatch(error: float, tolerance: float, noise: float, specs, config) -> str:
    if not specs:
        return (f"onnxruntime output differs from PyTorch by {error:.3g} > tolerance "
                f"{tolerance:.3g}")
    widest = max(int(abs(s.weight_int8).max()) for s in specs)
    cause = (f"; weight codes reach ±{widest}: onnxruntime's x86 u8s8 kernels without VNNI "
             "saturate their int16 pair sums at that range, quantize with "
             "Int8Config(reduce_range=True)" if widest > 63 else
             "; the weights use the reduced ±63 range, so this is not saturation: a QDQ "
             "parameter does not describe the layer it was written for")
    return (f"onnxruntime's int8 output is {error:.3g} from the float model, more than "
            f"{config.int8_noise_ratio:g}x the {noise:.3g} PyTorch's int8 model is from it "
            f"(tolerance {tolerance:.3g}){cause}")

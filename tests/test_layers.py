"""The package's layers import only downward (DESIGN §2), function-local imports included, so
no module dodges a cycle with a late import."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "compressor"

# Lowest first; a module may import its own layer and the ones below.
LAYERS = [
    {"errors", "timing", "io", "config", "history", "_extension", "_build_info", "_C"},
    {"formats"},
    {"ops", "info"},
    {"nn"},
    {"models", "data", "train", "graph"},
    {"pruning", "quantization", "sparse", "structured", "lottery", "robustness"},
    {"export"},
    {"pipeline"},
    {"cli", "commands"},
]


def layer_of(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else ""
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module}: its package {top!r} is in no layer of tests/test_layers.py")


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        if name != "compressor":
            yield name, path


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "compressor") and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("compressor")}
    return {m for m in found if m.count(".")}


@pytest.mark.parametrize("name,path", list(modules()), ids=lambda v: str(v))
def test_imports_go_down(name, path):
    own = layer_of(name)
    upward = [m for m in imports(path) if layer_of(m) > own]
    assert not upward, f"{name} (layer {own}) imports {upward} from layers above it"

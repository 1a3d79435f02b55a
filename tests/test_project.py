"""Project files that must stay consistent with each other."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_requirements_differ_only_in_faiss():
    cpu = (ROOT / "requirements.txt").read_text().splitlines()
    gpu = (ROOT / "requirements-gpu.txt").read_text().splitlines()
    assert len(cpu) == len(gpu)
    differing = [(a, b) for a, b in zip(cpu, gpu, strict=True) if a != b]
    assert [a.split("==")[0] for a, b in differing if not a.startswith("#")] == ["faiss-cpu"]
    assert any(b.startswith("faiss-gpu") for _, b in differing)


def test_torch_pins_are_the_ones_on_this_machine():
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


# Each package module's place in the flow (docs/architecture.md): a module imports only
# modules of its own rank or lower.
RANKS = {
    "errors": 0,
    "config": 0,
    "atomic": 0,
    "labels": 1,
    "data": 2,
    "encoders": 3,
    "metrics": 4,
    "train": 5,
    "index": 6,
    "retrieval": 7,
    "caption": 8,
    "report": 9,
    "guard": 9,
    "pipeline": 10,
    "explain": 10,
    "eval": 11,
    "interop": 12,
    "api": 13,
    "cli": 14,
    "app": 14,
    "__main__": 14,
}


def test_imports_point_one_way():
    import ast

    package = ROOT / "medxpert"
    backwards = []
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        if parts == ("__init__",):
            continue
        rank = RANKS[parts[0]]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                if name.startswith("medxpert.") and RANKS[name.split(".")[1]] > rank:
                    backwards.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not backwards, backwards


def test_evaluation_sources_are_named_once():
    """The data a protocol reads is named in eval/sources.py, never in a command or a protocol
    (the shared-pack default of cli/common.py aside); display names are not sources read."""
    import ast

    names = {"nih_cxr14", "iu_xray", "iu_xray_r2gen", "covid_cxr", "mimic_cxr"}
    allowed = {"medxpert/eval/sources.py", "medxpert/cli/common.py"}
    named = []
    for folder in ("eval", "cli"):
        for path in sorted((ROOT / "medxpert" / folder).glob("*.py")):
            where = str(path.relative_to(ROOT))
            if where in allowed:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            display_keys = {
                id(key)
                for node in ast.walk(tree)
                if isinstance(node, ast.Dict)
                for key in node.keys
            }
            named += [
                f"{where}:{node.lineno} {node.value}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Constant)
                and node.value in names
                and id(node) not in display_keys
            ]
    assert not named, named


def test_the_architecture_table_names_every_module_and_only_modules_that_exist():
    """docs/architecture.md stays true: each package module is in its table (by its own row,
    or by its folder's), and each file or folder the table names exists."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    named: set[str] = set()
    for row in table.splitlines()[2:]:
        if not row.startswith("| `"):
            continue
        for token in re.findall(r"`([^`]+)`", row.split("|")[1]):
            braces = re.fullmatch(r"(.*)\{([^}]*)\}(.*)", token)
            names = (
                [braces[1] + part + braces[3] for part in braces[2].split(",")]
                if braces
                else [token]
            )
            named |= {name for name in names if "/" in name or name.endswith(".py")}
    package = ROOT / "medxpert"
    missing = sorted(name for name in named if not (package / name).exists())
    assert not missing, f"the table names what does not exist: {missing}"
    folders = {name for name in named if name.endswith("/")}
    unnamed = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        covered = relative in named or any(relative.startswith(f) for f in folders)
        if not covered and path.name != "__init__.py":
            unnamed.append(relative)
    assert not unnamed, f"modules missing from docs/architecture.md's table: {unnamed}"

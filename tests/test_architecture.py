"""Architecture rules, checked on the source: imports point down the layers of
``mindscope._layers`` and never into another package's private module; result files are
written only through ``core``'s atomic writers."""
import ast
import re
from pathlib import Path

from mindscope._layers import LAYERS, LEVEL

SRC = Path(__file__).resolve().parents[1] / "src" / "mindscope"


def _modules():
    for f in sorted(SRC.rglob("*.py")):
        yield f, list(f.relative_to(SRC).with_suffix("").parts)


def _imports(f: Path, parts: list):
    """(line, target module path under mindscope) for every import of a mindscope module,
    module-level or inside a function."""
    for n in ast.walk(ast.parse(f.read_text())):
        if isinstance(n, ast.ImportFrom):
            if n.level:
                base = parts[: len(parts) - n.level] + (n.module.split(".") if n.module else [])
            elif n.module and n.module.split(".")[0] == "mindscope":
                base = n.module.split(".")[1:]
            else:
                continue
            if base:
                yield n.lineno, base
            else:  # from mindscope import x / from .. import x: x may be a package
                for a in n.names:
                    yield n.lineno, [a.name]
        elif isinstance(n, ast.Import):
            for a in n.names:
                p = a.name.split(".")
                if p[0] == "mindscope" and len(p) > 1:
                    yield n.lineno, p[1:]


def test_every_package_has_a_layer():
    pkgs = {p[0] for _, p in _modules() if len(p) > 1 or p[0] not in ("__init__", "__main__",
                                                                        "_layers")}
    assert pkgs <= set(LEVEL), f"place these packages in mindscope/_layers.py: {pkgs - set(LEVEL)}"
    assert len(LEVEL) == sum(len(layer) for layer in LAYERS), "a package is on two layers"


def test_imports_point_down_and_never_into_another_package_s_private_module():
    bad = []
    for f, parts in _modules():
        src = parts[0]
        if src not in LEVEL:  # mindscope/__init__, __main__, _layers: the top face
            continue
        for line, tgt in _imports(f, parts):
            pkg = tgt[0]
            if pkg == src or pkg.startswith("__") or pkg not in LEVEL:
                continue  # own package, __version__, or a name of mindscope/__init__
            where = f"{f.relative_to(SRC)}:{line} imports mindscope.{'.'.join(tgt)}"
            if LEVEL[pkg] > LEVEL[src]:
                bad.append(f"{where} (up: {pkg} is above {src})")
            if any(m.startswith("_") and not m.startswith("__") for m in tgt[1:]):
                bad.append(f"{where} (another package's private module: use its public name)")
    assert not bad, "\n".join(bad)


def test_the_layer_checker_catches_an_upward_and_a_private_import(tmp_path):
    """The rule above is not vacuous: a fake module importing upward and privately is caught."""
    f = tmp_path / "x.py"
    f.write_text("from ..experiments import binding\nfrom ..sae._formats import load_ours\n")
    found = list(_imports(f, ["core", "x"]))
    assert [t for _, t in found] == [["experiments"], ["sae", "_formats"]]
    assert LEVEL["experiments"] > LEVEL["core"]


# Writes of result files must go through core's atomic writers (core._files). The only files
# allowed a raw write, each with its reason:
WRITE_ALLOWED = {
    "core/_files.py": "the atomic writers themselves",
    "core/_load.py": "a downloaded model folder is renamed into place as a whole",
    "activations/_harvest.py": "shards stream np.save / parquet into .tmp-<pid> names that the "
                               "resume cleaner recognises and removes",
    "activations/_default_corpus.py": "writes inside an atomic_dir (the folder is renamed whole)",
    "audit/_train.py": "writes inside an atomic_dir (the organism folder is renamed whole)",
    "audit/_session.py": "an append-only JSONL audit log (open 'a'), one line per event",
    "experiments/control_suite.py": "each control's process log (open 'a', the subprocess's "
                                     "stdout); results are written by the controls themselves",
}
RAW_WRITE = re.compile(r"os\.replace\(|\.write_text\(|\.write_bytes\(|"
                       r"\bopen\([^)]*['\"](w|wb|w\+|a|ab|x)['\"]")


def test_result_files_are_written_only_through_core_files():
    bad = []
    for f, _ in _modules():
        rel = str(f.relative_to(SRC))
        if rel in WRITE_ALLOWED:
            continue
        for i, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if RAW_WRITE.search(code) and not code.lstrip().startswith((">>>", "...")):
                bad.append(f"{rel}:{i}: {line.strip()}")
    assert not bad, ("write through mindscope.core's atomic_write* helpers instead:\n"
                     + "\n".join(bad))


def test_the_write_checker_catches_raw_writes():
    for line in ('p.write_text("x")', "os.replace(tmp, path)", 'open(p, "w")',
                 "open(p, 'wb')", 'path.write_bytes(b"")'):
        assert RAW_WRITE.search(line), line
    for line in ("atomic_write_text(p, s)", 'open(p, encoding="utf-8")', "open(p, 'rb')"):
        assert not RAW_WRITE.search(line), line


def test_public_names_are_unique_across_packages():
    """A name in two packages' ``__all__`` is the same object (a re-export), never two things."""
    import importlib

    owner: dict = {}
    clash = []
    for pkg in LEVEL:
        try:
            mod = importlib.import_module(f"mindscope.{pkg}")
        except ModuleNotFoundError:  # a layer's package that is not in this checkout
            continue
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if name in owner and owner[name][1] is not obj:
                clash.append(f"{name}: {owner[name][0]} and {pkg}")
            owner.setdefault(name, (pkg, obj))
    assert not clash, "rename one of each (keep the old name as an alias outside __all__):\n" \
        + "\n".join(clash)

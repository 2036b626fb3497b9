"""Lines per mindscope package, the packages each imports, and the count of imports of another
package's private module: `python tests/arch_stats.py .` (docs/architecture.md; `-v` lists them)."""
import ast, sys, pathlib, collections
root = pathlib.Path(sys.argv[1]) / "src" / "mindscope"
lines = collections.Counter(); edges = collections.defaultdict(set); priv = []
def pkg_of(path):
    rel = path.relative_to(root).parts
    return rel[0].removesuffix(".py") if len(rel) > 1 or rel[0] not in ("__init__.py", "__main__.py") else "(top)"
for f in sorted(root.rglob("*.py")):
    p = pkg_of(f); src = f.read_text(); lines[p] += len(src.splitlines())
    modparts = list(f.relative_to(root).with_suffix("").parts)
    for node in ast.walk(ast.parse(src)):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["mindscope"] + modparts[: len(modparts) - node.level]
                mod = base + (node.module.split(".") if node.module else [])
            else:
                mod = node.module.split(".")
            targets = [mod + [a.name] for a in node.names]
            if mod[0] == "mindscope" and len(mod) > 1 and mod[1] != p and any(x.startswith("_") and not x.startswith("__") for x in mod[2:]):
                priv.append(f"{f.relative_to(root)} -> {'.'.join(mod)}")
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".") for a in node.names]
        for t in targets:
            if t[0] != "mindscope" or len(t) < 2: continue
            q = t[1]
            if q.startswith("__"): continue
            if q != p: edges[p].add(q)
            if q.startswith("__"): continue
print("| package | lines | imports |"); print("|---|---:|---|")
for p in sorted(lines, key=lambda p: -lines[p]):
    print(f"| {p} | {lines[p]} | {', '.join(sorted(edges[p])) or '-'} |")
print(f"\ntotal lines: {sum(lines.values())}; import edges: {sum(len(v) for v in edges.values())}; cross-package private imports: {len(priv)}")
if "-v" in sys.argv: print("\n".join(priv))

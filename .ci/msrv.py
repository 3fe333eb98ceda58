"""Reads `cargo metadata` on stdin; fails if a package the library depends on
(normal dependencies, any depth, default features) declares a rust-version
above the root package's."""
import json
import sys

meta = json.load(sys.stdin)
packages = {p["id"]: p for p in meta["packages"]}
root = packages[meta["resolve"]["root"]]
def version(text):
    parts = [int(x) for x in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


ours = version(root["rust_version"])
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}

seen, todo = set(), [root["id"]]
while todo:
    node = nodes[todo.pop()]
    for dep in node["deps"]:
        if any(kind["kind"] is None for kind in dep["dep_kinds"]) and dep["pkg"] not in seen:
            seen.add(dep["pkg"])
            todo.append(dep["pkg"])

too_new = []
for pkg in sorted(seen):
    declared = packages[pkg].get("rust_version")
    if declared and version(declared) > ours:
        too_new.append(f"{packages[pkg]['name']} {packages[pkg]['version']} needs {declared}")
if too_new:
    sys.exit("above our rust-version " + root["rust_version"] + ":\n  " + "\n  ".join(too_new))
print(f"{len(seen)} dependencies, none declaring more than rust {root['rust_version']}")

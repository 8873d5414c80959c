#!/usr/bin/env python3
"""The module graph of src/worker: which file imports which (through
`crate::worker::`, `super::` and `self::` paths), and its cycles.

    tools/module-graph.py [--check]

Prints every strongly connected component of more than one file (a cycle)
with the edges inside it; with --check, exits 1 when there is one (for
CI). Test modules (`#[cfg(test)] mod tests`) are left out: tests may
import anything. A parent module naming its children is not an edge (it
declares them); a child using its parent's items is.
"""
import glob
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "src", "worker")


def modules():
    mods = {}
    for f in glob.glob(os.path.join(ROOT, "**", "*.rs"), recursive=True):
        rel = os.path.relpath(f, ROOT)[:-3]
        if rel == "mod":
            continue
        if rel.endswith("/mod"):
            rel = rel[:-4]
        mods[rel] = f
    return mods


def target(path, cur, mods):
    parts = path.split("::")
    if parts[0] == "crate":
        if len(parts) < 3 or parts[1] != "worker":
            return None
        base, parts = [], parts[2:]
    elif parts[0] == "super":
        base = cur.split("/")[:-1]
        parts = parts[1:]
        while parts and parts[0] == "super":
            base, parts = base[:-1], parts[1:]
    elif parts[0] == "self":
        base, parts = cur.split("/"), parts[1:]
    else:
        return None
    cand = base + parts
    for n in range(len(cand), 0, -1):
        m = "/".join(cand[:n])
        if m in mods:
            return m
    return None


def graph(mods):
    edges = {m: set() for m in mods}
    pat = re.compile(r"\b((?:crate::worker|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
    for m, f in mods.items():
        src = open(f).read()
        src = re.split(r"#\[cfg\(test\)\]\s*mod tests", src)[0]
        # Comments (doc links included) are not imports.
        src = re.sub(r"//[^\n]*", "", src)
        for path in pat.findall(src):
            t = target(path, m, mods)
            if t and t != m and not t.startswith(m + "/"):
                edges[m].add(t)
    return edges


def cycles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    edges = graph(modules())
    found = cycles(edges)
    for comp in found:
        print(f"cycle of {len(comp)} files: {', '.join(comp)}")
        for a in comp:
            inside = sorted(b for b in edges[a] if b in comp)
            if inside:
                print(f"  {a} -> {', '.join(inside)}")
    if not found:
        print("src/worker: no import cycle")
    if "--check" in sys.argv and found:
        sys.exit(1)


main()

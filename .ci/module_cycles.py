#!/usr/bin/env python3
"""Fails when a crate's modules import each other in a cycle.

Reads the module graph that `cargo modules dependencies ... --layout dot`
prints (only "uses" edges between modules; see .ci/run) on standard input,
finds its strongly connected components, prints each cycle with its edges,
and exits 1 if there is one (or if the graph has no edge at all, which means
the format changed and nothing was checked).
"""
import collections
import re
import sys

crate = sys.argv[1] if len(sys.argv) > 1 else "crate"
edges = collections.defaultdict(set)
for line in sys.stdin:
    m = re.match(r'\s*"([^"]+)" -> "([^"]+)" \[label="uses"', line)
    if m and m.group(1) != m.group(2):
        edges[m.group(1)].add(m.group(2))
nodes = sorted(set(edges) | {b for v in edges.values() for b in v})
count = sum(len(v) for v in edges.values())
if count == 0:
    print(f"{crate}: no module edges read: is the input cargo-modules' DOT output?")
    sys.exit(1)

# Tarjan's strongly connected components, iteratively (bounded by the graph).
index, low, on_stack, stack, cycles = {}, {}, set(), [], []
counter = 0
for root in nodes:
    if root in index:
        continue
    work = [(root, iter(sorted(edges[root])))]
    index[root] = low[root] = counter
    counter += 1
    stack.append(root)
    on_stack.add(root)
    while work:
        v, it = work[-1]
        w = next(it, None)
        if w is not None:
            if w not in index:
                index[w] = low[w] = counter
                counter += 1
                stack.append(w)
                on_stack.add(w)
                work.append((w, iter(sorted(edges[w]))))
            elif w in on_stack:
                low[v] = min(low[v], index[w])
            continue
        work.pop()
        if work:
            low[work[-1][0]] = min(low[work[-1][0]], low[v])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

for comp in cycles:
    print(f"{crate}: import cycle among {', '.join(comp)}:")
    for a in comp:
        for b in sorted(edges[a]):
            if b in comp:
                print(f"    {a} -> {b}")
print(f"{crate}: {len(nodes)} modules, {count} uses edges, {len(cycles)} import cycles")
sys.exit(1 if cycles else 0)

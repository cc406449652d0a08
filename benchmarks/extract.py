"""Benchmark of the extract stage on a synthetic OSM .pbf (throughput and peak memory).

    python benchmarks/extract.py --nodes 200000 --areas 20000 [--index flex_mem] [--keep DIR]

Writes a synthetic city with ``osmium.SimpleWriter`` into a temp folder (lots
as closed ways, some ``parking=underground``, buildings that the tag filter
drops, unclosed lots, multipolygons with a hole, one street with ``turn:lanes`` per ten
areas, and the rest of the nodes in residential streets that the filters drop), then runs
``navml.data.extract.extract`` in a fresh Python process so that the peak RSS
(``resource.getrusage``) is that of the extract alone, imports included.
Prints features/s, MB/s of PBF and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = {
    "parking": {
        "task": "segmentation",
        "tags": {"amenity": "parking"},
        "exclude": {"parking": ["underground", "multi-storey", "rooftop"]},
    }
}
ROAD_NODES = 10


def make_pbf(path: Path, nodes: int, areas: int, seed: int = 0) -> dict[str, int]:
    """A synthetic city with about ``nodes`` nodes and ``areas`` area ways; returns what it holds."""
    import osmium
    from osmium.osm.mutable import Node, Relation, Way

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(areas)))
    lon0, lat0, step = -104.99, 39.74, 2e-4  # lots on a 2e-4 deg (~17-22 m) grid, jittered
    counts = {"parking_ways": 0, "underground": 0, "buildings": 0, "unclosed": 0, "relations": 0, "roads": 0, "turn_roads": 0}
    ways, relations = [], []
    with osmium.SimpleWriter(str(path)) as w:
        nid = 0
        for i in range(areas):
            x, y = lon0 + (i % side) * step, lat0 + (i // side) * step
            inner = i % 20 == 18  # the hole of the previous lot
            size = 0.4 * step if inner else 0.8 * step
            if inner:  # inside lot i - 1, wherever that is on the grid
                x = lon0 + ((i - 1) % side) * step + 0.2 * step
                y = lat0 + ((i - 1) // side) * step + 0.2 * step
            jit = rng.uniform(-0.05, 0.05, size=(4, 2)) * step
            corners = [(x, y), (x + size, y), (x + size, y + size), (x, y + size)]
            first = nid + 1
            for k, (cx, cy) in enumerate(corners):
                nid += 1
                w.add_node(Node(id=nid, location=(cx + jit[k, 0], cy + jit[k, 1])))
            refs = [first, first + 1, first + 2, first + 3, first]
            kind = i % 20
            if kind <= 12:
                tags = {"amenity": "parking"}
                if i % 40 == 0:
                    tags["parking"] = "underground"
                    counts["underground"] += 1
                counts["parking_ways"] += 1
            elif kind <= 15:
                tags = {"building": "yes"}
                counts["buildings"] += 1
            elif kind == 16:
                tags, refs = {"amenity": "parking"}, refs[:-1]
                counts["unclosed"] += 1
            elif kind == 17:
                tags = {}
            else:  # 18: inner ring, 19: an untagged closed way
                tags = {}
                if kind == 18:
                    relations.append((i - 1, i))
            ways.append((refs, tags))
        road_nodes_left = max(0, nodes - nid)
        roads = []
        for r in range(road_nodes_left // ROAD_NODES):
            y = lat0 + (r % side) * step + 0.9 * step
            x0 = lon0 + (r // side) * ROAD_NODES * step
            first = nid + 1
            for k in range(ROAD_NODES):
                nid += 1
                w.add_node(Node(id=nid, location=(x0 + k * step, y)))
            tags = {"highway": "residential"}
            if counts["turn_roads"] < areas // 10:  # features kept scale with areas, not with nodes
                tags.update({"highway": "primary", "lanes": "3", "turn:lanes": "left|through|through;right"})
                counts["turn_roads"] += 1
            roads.append((list(range(first, first + ROAD_NODES)), tags))
            counts["roads"] += 1
        for wid, (refs, tags) in enumerate(ways + roads, start=1):
            w.add_way(Way(id=wid, nodes=refs, tags=tags))
        for rid, (outer, inner) in enumerate(relations, start=1):
            w.add_relation(
                Relation(
                    id=rid,
                    members=[("w", outer + 1, "outer"), ("w", inner + 1, "inner")],
                    tags={"type": "multipolygon", "amenity": "parking"},
                )
            )
            counts["relations"] += 1
    counts["nodes"] = nid
    counts["ways"] = len(ways) + len(roads)
    return counts


def run_extract(pbf: Path, out: Path, index: str) -> dict:
    """Run the extract in this process and return timing, counts and peak RSS (MiB)."""
    from navml.config import parse_classes
    from navml.data.extract import extract

    start = time.perf_counter()
    summary = extract(pbf, parse_classes(CLASSES), out, index=index, progress=False)
    seconds = time.perf_counter() - start
    written = sum(c["kept"] + c["excluded"] for c in summary["classes"].values()) + summary["roads"]["kept"]
    return {
        "seconds": seconds,
        "features": written,
        "summary": summary,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=200_000)
    ap.add_argument("--areas", type=int, default=20_000)
    ap.add_argument("--index", default="flex_mem")
    ap.add_argument("--keep", type=Path, help="write the pbf and outputs here instead of a temp folder")
    ap.add_argument("--run", type=Path, help=argparse.SUPPRESS)  # child mode: extract this pbf
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        print(json.dumps(run_extract(args.run, args.out, args.index)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        pbf = root / f"synthetic-{args.nodes}-{args.areas}.osm.pbf"
        pbf.unlink(missing_ok=True)
        t0 = time.perf_counter()
        made = make_pbf(pbf, args.nodes, args.areas)
        gen = time.perf_counter() - t0
        mb = pbf.stat().st_size / 1e6
        child = subprocess.run(
            [sys.executable, __file__, "--run", str(pbf), "--out", str(root / "extract"), "--index", args.index],
            capture_output=True,
            text=True,
        )
        if child.returncode:
            sys.exit(child.stderr)
        res = json.loads(child.stdout.strip().splitlines()[-1])
        s = res["summary"]
        print(f"input     {pbf.name}: {mb:.2f} MB, {made['nodes']} nodes, {made['ways']} ways, {made['relations']} relations (made in {gen:.1f} s)")
        print(f"index     {args.index}")
        print(f"parking   {s['classes']['parking']}")
        print(f"roads     {s['roads']}")
        print(f"time      {res['seconds']:.2f} s")
        print(f"features  {res['features']} written, {res['features'] / res['seconds']:.0f} features/s")
        print(f"input     {mb / res['seconds']:.1f} MB/s of PBF, {made['nodes'] / res['seconds'] / 1e6:.2f} M nodes/s")
        print(f"peak RSS  {res['peak_rss_mib']:.0f} MiB (extract process, imports included)")


if __name__ == "__main__":
    main()

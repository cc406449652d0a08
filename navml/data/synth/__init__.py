"""The built-in synthetic city: an orthophoto, its OSM extract and the ground truth.

One entry point, :func:`make_city`. The city is a square of ``size_km`` centred
on ``center`` (lon, lat), drawn in the local UTM zone at ``gsd_m`` metres per
pixel. Outputs in ``out_dir`` (written to a temporary folder beside it and
renamed into place, so an interrupted run leaves the previous output intact):

* ``ortho.tif``: RGB uint8 GeoTIFF, EPSG:326zz/327zz, tiled, deflate;
* ``city.osm.pbf``: roads with ``turn:lanes``, parking lots (some shifted, some
  multipolygons with holes, underground and multi-storey ones), buildings;
* ``aoi.geojson``: the city square (WGS84);
* ``truth/lots.geojson``, ``truth/markings.geojson``, ``truth/complete_aoi.geojson``,
  ``truth/decoys.geojson`` (look-alikes of lots and arrows; see :mod:`navml.data.synth.truth`).

The same seed gives byte-identical files.
"""

from __future__ import annotations

import numbers
import os
import shutil
import tempfile
import time
from pathlib import Path

from navml.config import SynthParams
from navml.errors import ConfigError
from navml.io import replace_dir

#: Defaults of the keyword arguments below: the params model's, written once there.
_SYNTH = SynthParams()


#: Files and folders make_city writes; an existing out_dir may hold only these.
OUTPUTS = ("ortho.tif", "city.osm.pbf", "aoi.geojson", "truth")
#: Largest image side, pixels (peak memory is about 16 bytes per pixel: 12000 px ~ 2.3 GB).
MAX_PX = 12000


def _number(value, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"synth.{key}: {value!r} is not a number")
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"synth.{key}: {value!r} is not a number") from exc


def _check(seed, center, size_km, gsd_m, unmapped_share, shift_m, decoy_share=0.5) -> tuple[float, float]:
    size_km, gsd_m = _number(size_km, "size_km"), _number(gsd_m, "gsd_m")
    unmapped_share, shift_m = _number(unmapped_share, "unmapped_share"), _number(shift_m, "shift_m")
    try:
        lon, lat = (float(v) for v in center)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"synth.center: {center!r} is not [lon, lat] in degrees") from exc
    if not (-180 <= lon <= 180 and -80 <= lat <= 84):
        raise ConfigError(f"synth.center: ({lon}, {lat}) is outside the UTM range (lon -180..180, lat -80..84)")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"synth.seed: {seed!r} must be a non-negative integer")
    if not 0.2 <= size_km <= 20:
        raise ConfigError(f"synth.size_km: {size_km} must lie in 0.2..20 km")
    if not 0.05 <= gsd_m <= 2.0:
        raise ConfigError(f"synth.gsd_m: {gsd_m} must lie in 0.05..2 m")
    if size_km * 1000 / gsd_m > MAX_PX:
        raise ConfigError(
            f"synth: size_km {size_km} at gsd_m {gsd_m} is {size_km * 1000 / gsd_m:.0f} px a side (max {MAX_PX}); "
            "lower size_km or raise gsd_m"
        )
    if not 0.0 <= unmapped_share < 1.0:
        raise ConfigError(f"synth.unmapped_share: {unmapped_share} must lie in 0..1 (exclusive)")
    if not 0.0 <= shift_m <= 50.0:
        raise ConfigError(f"synth.shift_m: {shift_m} must lie in 0..50 m")
    if not 0.0 <= _number(decoy_share, "decoy_share") <= 1.0:
        raise ConfigError(f"synth.decoy_share: {decoy_share} must lie in 0..1")
    return lon, lat


def _prepare(out: Path) -> Path:
    """A fresh temporary folder beside ``out``; refuses an ``out`` that holds foreign files."""
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"{out}: exists and is not a folder; choose another --out")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS)
        if foreign:
            raise ConfigError(
                f"{out}: holds files navml synth did not write ({', '.join(foreign[:3])}); choose an empty or new --out folder"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    """Swap the finished temporary folder into place."""
    replace_dir(tmp, out)


def make_city(
    out_dir: str | os.PathLike,
    *,
    seed: int = _SYNTH.seed,
    center: tuple[float, float] = _SYNTH.center,
    size_km: float = _SYNTH.size_km,
    gsd_m: float = _SYNTH.gsd_m,
    unmapped_share: float = _SYNTH.unmapped_share,
    shift_m: float = _SYNTH.shift_m,
    decoy_share: float = _SYNTH.decoy_share,
    progress: bool = True,
) -> dict:
    """Build the synthetic city into ``out_dir``; return counts of what it holds.

    ``center`` is (lon, lat) in degrees, ``size_km`` the side of the square city,
    ``gsd_m`` the pixel size in metres, ``unmapped_share`` the share of visible
    lots left out of OSM (all outside the complete area), ``shift_m`` the largest
    offset (metres) of a mapped lot outline from the painted one, ``decoy_share``
    (0..1) how many look-alikes of lots and arrows the city draws (plazas, flat
    grey roofs, courts, paved yards; painted words), all listed in ``truth/decoys.geojson``.
    """
    from tqdm import tqdm

    from navml.data.synth.layout import build_scene, rng_for
    from navml.data.synth.osm import build_osm, write_pbf
    from navml.data.synth.render import render, write_geotiff
    from navml.data.synth.scene import KINDS
    from navml.data.synth.truth import lonlat_mapper, utm_epsg, write_truth

    lon, lat = _check(seed, center, size_km, gsd_m, unmapped_share, shift_m, decoy_share)
    seed, size_km, gsd_m = int(seed), float(size_km), float(gsd_m)
    unmapped_share, shift_m, decoy_share = float(unmapped_share), float(shift_m), float(decoy_share)
    out = Path(out_dir)
    t0 = time.perf_counter()
    bar = tqdm(total=10, desc="synth", unit="step", disable=None if progress else True)

    def step(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)

    tmp = _prepare(out)
    try:
        from pyproj import Transformer

        epsg = utm_epsg(lon, lat)
        cx, cy = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
        n_px = int(round(size_km * 1000 / gsd_m))
        size = n_px * gsd_m
        west = round(round((cx - size / 2) / gsd_m) * gsd_m, 6)
        south = round(round((cy - size / 2) / gsd_m) * gsd_m, 6)
        scene, uses = build_scene(seed, size, gsd_m, lat, unmapped_share, shift_m, decoy_share)
        step("layout")
        to_ll = lonlat_mapper(epsg, west, south)
        data = build_osm(scene, to_ll)
        img = render(scene, rng_for(seed, "render"), step)
        write_geotiff(img, tmp / "ortho.tif", epsg, west, south + scene.size_m, gsd_m)
        del img
        step("geotiff")
        corners = to_ll([[0, 0], [scene.size_m, 0], [scene.size_m, scene.size_m], [0, scene.size_m]])
        bbox = (float(corners[:, 0].min()), float(corners[:, 1].min()), float(corners[:, 0].max()), float(corners[:, 1].max()))
        write_pbf(tmp / "city.osm.pbf", data, rng_for(seed, "osm"), bbox)
        write_truth(scene, tmp, to_ll)
        step("osm + truth")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    visible = [lot for lot in scene.lots if lot.visible]
    counts = {
        "epsg": epsg,
        "pixels": scene.n_px,
        "lots_visible": len(visible),
        "lots_mapped": sum(lot.mapped for lot in visible),
        "lots_unmapped": sum(not lot.mapped for lot in visible),
        "lots_multipolygon": sum(lot.osm_type == "relation" for lot in visible if lot.mapped),
        "lots_underground": sum(lot.kind == "underground" for lot in scene.lots),
        "lots_multistorey": sum(lot.kind == "multi-storey" for lot in scene.lots),
        "stalls": sum(lot.stalls for lot in visible),
        "cars": sum(len(lot.cars) for lot in scene.lots) + len(scene.road_cars),
        "markings": len(scene.markings),
        **{f"markings_{k}": sum(m.kind == k for m in scene.markings) for k in KINDS},
        "road_ways": len(scene.ways),
        "turn_lane_ways": sum(any(t.startswith("turn:lanes") for t in w.tags) for w in scene.ways),
        "decoys": len(scene.decoys),
        "decoy_kinds": {k: sum(d[2] == k for d in scene.decoys) for k in sorted({d[2] for d in scene.decoys})},
        "buildings": len(scene.buildings),
        "trees": int(len(scene.trees)),
        "osm_nodes": len(data.nodes),
        "osm_ways": len(data.ways),
        "osm_relations": len(data.relations),
        "parcels": dict(sorted(uses.items())),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return counts

"""Build the synthetic city: orthophoto, OSM extract and ground truth (default data/synth)."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params, with_overrides
from navml.cli.options import City, Params, override
from navml.config import SynthParams as S


@exits
def command(
    params: Path = Params,
    city: str = City,
    out: Path = typer.Option(Path("data/synth"), "--out", help="Output folder (replaced as a whole, atomically)."),
    seed: int = override("synth", S, "seed"),
    center: tuple[float, float] = override("synth", S, "center", metavar="LON LAT"),
    size_km: float = override("synth", S, "size_km"),
    gsd_m: float = override("synth", S, "gsd_m"),
    unmapped_share: float = override("synth", S, "unmapped_share"),
    shift_m: float = override("synth", S, "shift_m"),
    decoy_share: float = override("synth", S, "decoy_share"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    from navml.data.synth import make_city

    p = load_params(params, city)
    if city and p.cities[city].synthetic is None:
        # a city with own imagery: nothing to draw; the folder (a DVC output of the per-city synth stage) says so
        from navml.io import staging_dir

        with staging_dir(out) as tmp:
            (tmp / "README.txt").write_text(f"city {city} brings its own imagery and labels (params.yaml cities.{city}); nothing synthetic here\n")
        typer.echo(f"synth: city {city} has its own imagery; nothing to draw -> {out}")
        return
    s = p.synth
    if center == (None, None):
        center = None
    s = with_overrides(s, seed=seed, center=center, size_km=size_km, gsd_m=gsd_m, unmapped_share=unmapped_share, shift_m=shift_m,
                        decoy_share=decoy_share)
    counts = make_city(
        out, seed=s.seed, center=s.center, size_km=s.size_km, gsd_m=s.gsd_m, unmapped_share=s.unmapped_share, shift_m=s.shift_m,
        decoy_share=s.decoy_share, progress=not quiet
    )
    kinds = ", ".join(f"{k[9:]} {v}" for k, v in counts.items() if k.startswith("markings_"))
    typer.echo(
        f"synth: {counts['pixels']}x{counts['pixels']} px (EPSG:{counts['epsg']}); lots {counts['lots_visible']} visible "
        f"({counts['lots_mapped']} mapped, {counts['lots_unmapped']} unmapped, {counts['lots_multipolygon']} multipolygons), "
        f"{counts['lots_underground']} underground, {counts['lots_multistorey']} multi-storey; markings {counts['markings']} ({kinds}); "
        f"decoys {counts['decoys']} ({', '.join(f'{k} {v}' for k, v in counts['decoy_kinds'].items())}); "
        f"{counts['seconds']:.1f} s -> {out}"
    )

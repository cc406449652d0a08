"""Build the synthetic city: orthophoto, OSM extract and ground truth (default data/synth)."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params, section
from navml.cli.options import Params

#: Keys of the ``synth`` params section.
KEYS = ("seed", "center", "size_km", "gsd_m", "unmapped_share", "shift_m")


@exits
def command(
    params: Path = Params,
    out: Path = typer.Option(Path("data/synth"), "--out", help="Output folder (replaced as a whole, atomically)."),
    seed: int = typer.Option(None, "--seed", help="Random seed; default synth.seed."),
    center: tuple[float, float] = typer.Option(None, "--center", help="City centre LON LAT in degrees; default synth.center."),
    size_km: float = typer.Option(None, "--size-km", help="Side of the square city, km; default synth.size_km."),
    gsd_m: float = typer.Option(None, "--gsd-m", help="Pixel size of the orthophoto, metres; default synth.gsd_m."),
    unmapped_share: float = typer.Option(None, "--unmapped-share", help="Share of visible lots left out of OSM; default synth.unmapped_share."),
    shift_m: float = typer.Option(None, "--shift-m", help="Largest offset of a mapped lot outline, metres; default synth.shift_m."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    from navml.config import check_keys
    from navml.data.synth import make_city

    s = check_keys(section(load_params(params), "synth"), KEYS, "synth")
    given = {"seed": seed, "center": center, "size_km": size_km, "gsd_m": gsd_m, "unmapped_share": unmapped_share, "shift_m": shift_m}
    args = {k: v for k, v in s.items()}
    args.update({k: v for k, v in given.items() if v is not None and v != (None, None)})
    if "center" in args:
        args["center"] = tuple(args["center"])
    counts = make_city(out, progress=not quiet, **args)
    kinds = ", ".join(f"{k[9:]} {v}" for k, v in counts.items() if k.startswith("markings_"))
    typer.echo(
        f"synth: {counts['pixels']}x{counts['pixels']} px (EPSG:{counts['epsg']}); lots {counts['lots_visible']} visible "
        f"({counts['lots_mapped']} mapped, {counts['lots_unmapped']} unmapped, {counts['lots_multipolygon']} multipolygons), "
        f"{counts['lots_underground']} underground, {counts['lots_multistorey']} multi-storey; markings {counts['markings']} ({kinds}); "
        f"{counts['seconds']:.1f} s -> {out}"
    )

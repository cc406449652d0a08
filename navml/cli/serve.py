"""Serve a local map viewer of the store, the predictions and live model runs, with review buttons (http://127.0.0.1:8765)."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.options import Params


@exits
def command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; the default serves this machine only."),
    port: int = typer.Option(8765, "--port", help="TCP port."),
    city: list[str] = typer.Option(
        [], "--city", help="Serve only these cities of the params' `cities` (repeatable); default: every city, as the pipeline lays them out."
    ),
    store: Path = typer.Option(
        None, "--store", help="Serve this one store instead of the cities (with --predict, --output, --tiles, --labels, --aoi).", show_default=False
    ),
    predict: Path = typer.Option(Path("data/predict"), "--predict", help="With --store: predict store (probs layer, detections.csv)."),
    output: Path = typer.Option(Path("data/output"), "--output", help="With --store: folder of new_features / predictions / markings GeoJSON."),
    models: list[Path] = typer.Option(
        [Path("data/models"), Path("data/first/models")], "--models", help="With --store: folder of model folders (repeatable; missing ones are skipped)."
    ),
    tiles: Path = typer.Option(Path("data/cover/tiles.csv"), "--tiles", help="With --store: tile index (split per tile)."),
    labels: Path = typer.Option(Path("data/extract"), "--labels", help="With --store: folder of the OSM extract GeoJSON per class."),
    aoi: Path = typer.Option(Path("data/synth/aoi.geojson"), "--aoi", help="With --store: AOI GeoJSON shown as an outline."),
    negatives: str = typer.Option(
        "data/mining/{model}/hard_negatives.geojson", "--negatives",
        help="Hard-negatives GeoJSON that 'mark false' writes to ({model}: seg for lots, det for markings).",
    ),
    review: Path = typer.Option(Path("data/review/review.geojson"), "--review", help="GeoJSON that 'correct' verdicts go to."),
    open_browser: bool = typer.Option(False, "--open/--no-open", help="Open the page in the default browser."),
    params: Path = Params,
) -> None:
    import uvicorn

    from navml.config import segmentation_classes
    from navml.errors import InputError
    from navml.palette import palette_of
    from navml.viewer import StorePaths, city_paths, create_app

    p = load_params(params)
    if store is not None:
        specs = p.class_specs()
        served = {"city": StorePaths(
            store=store, grid=p.grid.grid(), palette=palette_of(specs), classes=tuple(c.name for c in segmentation_classes(specs)),
            predict=predict, output=output, extract=labels, aoi=aoi, tiles=tiles, models=tuple(models),
        )}
    elif p.cities:
        served = {n: s for n, s in city_paths(p, city or None).items() if (s.store / "imagery").is_dir()}
        if not served:
            raise InputError(f"no city of {params} has a store yet ({', '.join(city or p.cities)}); run `dvc repro` first, or give --store")
    else:
        raise InputError(f"{params}: no `cities` section; give the store to serve with --store")
    hosts = None if host in ("0.0.0.0", "::") else [host, "127.0.0.1", "localhost"]
    app = create_app(served, negatives, review, allowed_hosts=hosts)
    url = f"http://{host}:{port}/"
    typer.echo(f"serve: open {url} (Ctrl-C stops)")
    if open_browser:
        import threading
        import webbrowser

        threading.Timer(1.0, webbrowser.open, (url,)).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")

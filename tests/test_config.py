"""The params model: defaults equal params.yaml, one-line errors for every wrong value, OSM tags as YAML writes them."""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from navml.config import (
    CITY_KEYS,
    AugmentParams,
    ClassSpec,
    Params,
    PostProcess,
    Section,
    parse_classes,
    validate_params,
)
from navml.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(dotted: str, value) -> dict:
    data = copy.deepcopy(SHIPPED)
    *parents, last = dotted.split(".")
    cur = data
    for k in parents:
        cur = cur[k]
    cur[last] = value
    return data


def error_of(data) -> str:
    with pytest.raises(ConfigError) as info:
        validate_params(data)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# --- defaults written once -----------------------------------------------------------

SECTIONS = [name for name, f in Params.model_fields.items() if name not in ("classes", "post", "cities")]


@pytest.mark.parametrize("section", SECTIONS)
def test_shipped_params_equal_the_model_defaults(section):
    """params.yaml lists every key of every section, with the model's default (classes and post are the user's registry)."""
    model = type(Params.model_fields[section].default)
    by_city = set(CITY_KEYS.get(section, ()))  # each city of `cities` gives these
    assert set(SHIPPED[section]) == {f.alias or n for n, f in model.model_fields.items()} - by_city, section
    assert model.model_validate(SHIPPED[section]) == model(), section


def test_city_keys_are_what_a_city_sets():
    """The keys params.yaml leaves to the cities are the ones Params.for_city replaces, and each city gives them."""
    p = validate_params(SHIPPED)
    for name in p.cities:
        seen = p.for_city(name)
        for section, keys in CITY_KEYS.items():
            for key in keys:
                assert key in type(getattr(p, section)).model_fields, (section, key)
        assert seen.extract.pbf.startswith(f"data/cities/{p.cities[name].role}/{name}/synth/")
        assert seen.cover.aoi.endswith(f"{name}/synth/aoi.geojson") and seen.score.truth.endswith(f"{name}/synth/truth/lots.geojson")
        assert seen.imagery.source == "geotiff" and seen.imagery.geotiff.endswith(f"{name}/synth/ortho.tif") and seen.imagery.url == ""
        assert seen.rasterize.complete.endswith(f"{name}/synth/truth/complete_aoi.geojson")


def test_shipped_post_and_augment_equal_the_defaults():
    for name, entry in SHIPPED["post"].items():
        assert set(entry) == set(PostProcess.__dataclass_fields__)
        assert validate_params(SHIPPED).post[name] == PostProcess(), name
    assert set(SHIPPED["train"]["augment"]) == set(AugmentParams.model_fields)
    assert validate_params(SHIPPED).train.augment == AugmentParams()


def test_library_defaults_agree_with_the_model():
    """Library functions keep keyword defaults for direct use; where they have one it must be the model's."""
    from navml.data.extract import extract
    from navml.data.imagery import build_imagery
    from navml.data.synth import make_city
    from navml.post.dedupe import dedupe
    from navml.post.score import score_outputs
    from navml.segment.dataset import Augment
    from navml.segment.evaluate import evaluate_segmentation
    from navml.segment.predict import predict_store
    from navml.segment.train import train_segmentation

    p = Params()
    checks = [
        (make_city, p.synth, {}), (build_imagery, p.imagery, {}), (dedupe, p.dedupe, {}), (train_segmentation, p.train, {}),
        (extract, p.extract, {}), (evaluate_segmentation, p.evaluate, {}), (predict_store, p.predict, {"window": "window_px"}),
        (score_outputs, p.score, {"class_name": "class_", "iou_threshold": "iou"}),
    ]
    for fn, section, renamed in checks:
        for arg, param in inspect.signature(fn).parameters.items():
            name = renamed.get(arg, arg)
            # None means "not given" (a path, an optional limit): the CLI always passes the params value
            if name in type(section).model_fields and param.default not in (inspect.Parameter.empty, None) and name != "augment":
                want = getattr(section, name)
                got = tuple(param.default) if isinstance(want, tuple) else param.default
                assert got == want, f"{fn.__name__}({name}={param.default!r}) but params model {want!r}"
    assert Augment() == Augment(**AugmentParams().model_dump())


def test_every_field_has_help_text():
    for model in [type(f.default) for n, f in Params.model_fields.items() if isinstance(f.default, Section)] + [AugmentParams]:
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name}"


# --- one line for every wrong value -------------------------------------------------

@pytest.mark.parametrize(
    "key, value, expect",
    [
        ("train.steps", "ten", "params.yaml: train.steps: 'ten' is not an integer (steps: optimizer steps"),
        ("train.epochs", 40, "unknown key 'train.epochs'"),
        ("post.parking.threshold", "high", "params.yaml: post.parking.threshold: 'high' is not a number (threshold: probability"),
        ("imagery.workers", "eight", "params.yaml: imagery.workers: 'eight' is not an integer"),
        ("train.learning_rate", "fast", "params.yaml: train.learning_rate: 'fast' is not a number"),
        ("grid.zoom", "z18", "params.yaml: grid.zoom: 'z18' is not an integer"),
        ("train.threshold_metric", "f2", "params.yaml: train.threshold_metric: 'f2' is not one of 'iou' or 'f1'"),
        ("dedupe.min_overlap", 0, "params.yaml: dedupe.min_overlap: 0 is out of range; it must be > 0"),
        ("evaluate.threshold", "high", "params.yaml: evaluate.threshold: 'high' is not a number"),
        ("evaluate.threshold", 1.5, "evaluate.threshold: 1.5 is out of range"),
        ("train.loss", "crossentropy+dise", "train.loss: term 'dise' is unknown"),
        ("train.augment", "yes please", "train.augment: use true, false or a mapping"),
        ("train.augment", {"flp": True}, "unknown key 'train.augment.flp'"),
        ("cover.splitt", 0.3, "unknown key 'cover.splitt' (allowed: aoi, seed, split, split_zoom)"),
        ("cover.split", {"train": 0.5, "val": 0.1, "test": 0.1}, "cover.split: shares"),
        ("grid.tile_size", 100, "grid.tile_size: 100 is not a power of two"),
        ("imagery.source", "wms", "imagery.source: 'wms' is not one of 'geotiff' or 'xyz'"),
        ("synth.center", [500, 2], "synth.center[0]: 500 is out of range"),
        ("classes.parking.task", "instance", "classes.parking.task: 'instance' is not one of 'segmentation' or 'detection'"),
        ("classes.parking.treshold", 0.4, "unknown key 'classes.parking.treshold'"),
        ("post.turn_markings", {"threshold": 0.5}, "post.turn_markings: names no segmentation class of 'classes' (those are: parking)"),
        ("post.parking.open_m", -1, "post.parking.open_m: -1 is out of range; it must be >= 0"),
        ("score.classes", ["roads"], "score.classes: 'roads' is not a segmentation class"),
        ("score.class", "parking", "unknown key 'score.class' (allowed: classes, decoys, iou, split, truth)"),
        ("classes.parking.box_m", 5.0, "classes.parking: box_m: applies to detection classes only"),
        ("classes.turn_markings.box_m", [5.0, -1], "classes.turn_markings.box_m[1]: -1 is out of range"),
        ("classes.turn_markings.complete", "a.geojson", "classes.turn_markings: complete: applies to segmentation classes only"),
        ("classes.turn_markings.name_map", {"left": "sharp_left"}, "name_map: needs name_tag"),
        ("classes.turn_markings.mirror", {"u_turn": "left"}, "classes.turn_markings: mirror: 'u_turn' is not one of names"),
        ("classes.parking.turn_values", {"left": "left"}, "classes.parking: turn_values: applies to detection classes only"),
        ("imagery.band_indexes", [1, 1, 2], "band_indexes: [1, 1, 2] names a band twice"),
        ("imagery.band_indexes", [1, 2, 3, 4], "band_indexes: 4 bands but bands is 3; set bands: 4"),
        ("train.crop", 100, "train.crop: 100 px must be a multiple of 16"),
        ("train.crop", 512, "at most grid.tile_size 256"),
        ("train.eval_every", 1000, "train.eval_every: 1000 is more than train.steps 720"),
        ("imagery.stretch", "linear", "imagery.stretch: 'linear' is not one of 'none' or 'percentile'"),
        ("imagery.percentiles", [98, 2], "percentiles: low 98.0 must be below high 2.0"),
        ("predict.window_px", 128, "predict.window_px: 128 must be at least grid.tile_size 256"),
        ("train", 5, "params.yaml: train: 5 is not a mapping"),
        ("extract.index", "flexmem", "extract.index: 'flexmem' is no pyosmium node-location index; use one of"),
        ("cover.aoi", "", "cover.aoi: '' is empty"),
    ],
)
def test_wrong_values_are_one_line_errors(key, value, expect):
    assert expect in error_of(with_value(key, value))


def test_train_threshold_metric_is_caught_before_training(tmp_path):
    """The whole file is validated when the command starts: no model.fit, no traceback, no output."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value("train.threshold_metric", "f2")))
    proc = subprocess.run(
        [sys.executable, "-m", "navml", "train", "--params", "params.yaml", "--tiles", "missing.csv", "--out", "model"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0].startswith("navml: error: params.yaml: train.threshold_metric: 'f2'")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "model").exists()


def test_a_late_section_mistake_stops_an_early_command(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value("dedupe.min_overlap", 0)))
    proc = subprocess.run([sys.executable, "-m", "navml", "cover", "--params", "params.yaml", "--out", "c"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and "dedupe.min_overlap" in proc.stderr and not (tmp_path / "c").exists()


def test_yaml_file_with_wrong_types_as_written_by_hand():
    text = (ROOT / "params.yaml").read_text().replace("learning_rate: 0.002", "learning_rate: fast")
    assert "train.learning_rate: 'fast' is not a number" in error_of(yaml.safe_load(text))


# --- OSM tag values as people write them ----------------------------------------------


def registry(yaml_text: str) -> list[ClassSpec]:
    return parse_classes(yaml.safe_load(yaml_text))


def test_unquoted_yes_no_numbers_and_lists_are_osm_strings():
    (c,) = registry("b: {task: segmentation, tags: {building: yes}}")
    assert c.tags == {"building": ["yes"]} and c.osm_tags == {"building": "yes"}
    assert c.matches({"building": "yes"}) and not c.matches({"building": "True"})
    (c,) = registry("b: {task: segmentation, tags: {building: [yes, house]}, exclude: {covered: no, layer: -1}}")
    assert c.tags == {"building": ["yes", "house"]} and c.exclude == {"covered": ["no"], "layer": ["-1"]}
    assert c.matches({"building": "house"}) and c.excluded({"covered": "no"}) and c.excluded({"layer": "-1"})
    (c,) = registry("b: {task: segmentation, tags: {building: true}, osm_tags: {building: yes, levels: 1, roof: false}}")
    assert c.osm_tags == {"building": "yes", "levels": "1", "roof": "no"}


@pytest.mark.parametrize(
    "text, expect",
    [
        ("b: {task: segmentation, tags: {building: ~}}", "classes.b.tags: building: ~ (null) is no OSM tag value"),
        ("b: {task: segmentation, tags: {building: [yes, ~]}}", "classes.b.tags: building: ~ (null)"),
        ("b: {task: segmentation, tags: {amenity: parking}, osm_tags: {amenity: ~}}", "classes.b.osm_tags: amenity: ~ (null)"),
        ("b: {task: segmentation, tags: {amenity: parking}, osm_tags: {amenity: [a, b]}}", "classes.b.osm_tags: amenity: needs one value"),
        ("b: {task: segmentation, tags: {building: '*'}}", "classes.b: tags building: '*' accepts any value"),
        ("b: {task: segmentation}", "classes.b: needs 'tags'"),
    ],
)
def test_tags_that_would_match_nothing_are_refused(text, expect):
    with pytest.raises(ConfigError) as info:
        registry(text)
    assert expect in str(info.value) and "\n" not in str(info.value)


def test_star_filter_with_osm_tags_is_fine():
    (c,) = registry("b: {task: segmentation, tags: {building: '*'}, osm_tags: {building: yes}}")
    assert c.matches({"building": "garage"}) and c.osm_tags == {"building": "yes"}


def test_registry_keeps_the_library_types():
    specs = validate_params(SHIPPED).class_specs()
    assert [c.name for c in specs] == ["parking", "turn_markings"]
    parking, markings = specs
    assert isinstance(parking, ClassSpec) and parking.post == PostProcess()
    assert parking.color == (250, 200, 40) and markings.names[0] == "left" and markings.labels.endswith("markings.geojson")
    assert PostProcess(0.5, 0.0, 0.0, 0.5, 10).min_area_m2 == 10  # positional, as tests and library build it


def test_empty_registry_is_an_error_only_where_classes_are_needed():
    p = validate_params({"synth": SHIPPED["synth"]})
    assert p.synth.seed == 42
    with pytest.raises(ConfigError, match="declare at least one class"):
        p.class_specs()


def test_augment_false_true_or_a_mapping():
    assert validate_params(with_value("train.augment", False)).train.augment is None
    assert validate_params(with_value("train.augment", True)).train.augment == AugmentParams()
    assert validate_params(with_value("train.augment", {"hue": 0.0})).train.augment == AugmentParams(hue=0.0)


def test_optional_values_left_empty():
    p = validate_params(with_value("rasterize.complete", ""))
    assert p.rasterize.complete == ""
    data = with_value("imagery.geotiff", "")
    assert "imagery.geotiff" in error_of(data)  # source: geotiff needs one
    data["imagery"].update(source="xyz", url="https://tiles.example.invalid/{z}/{x}/{y}.png")
    assert validate_params(data).imagery.geotiff == ""


def test_loss_names_agree_with_the_losses_module():
    from typing import get_args

    from navml.config import LOSS_TERMS, TrainParams
    from navml.segment.losses import LOSS_NAMES, WEIGHTINGS

    assert LOSS_TERMS == LOSS_NAMES
    assert get_args(TrainParams.model_fields["class_weighting"].annotation) == WEIGHTINGS


def test_empty_sections_take_the_defaults():
    p = validate_params(yaml.safe_load("classes: {p: {task: segmentation, tags: {amenity: parking}}}\ntrain:\npost: {p: }\n"))
    assert p.train == Params.model_fields["train"].default and p.post["p"] == PostProcess()


def test_real_data_class_keys_reach_the_registry():
    """box_m (one number = a square), name_tag/name_map as YAML writes them, per-class complete."""
    data = yaml.safe_load(
        """
classes:
  parking: {task: segmentation, tags: {amenity: parking}, complete: inputs/labels/parking_done.geojson}
  arrows:
    task: detection
    tags: {road_marking: arrow}
    osm_tags: {road_marking: arrow}
    names: [left, right, u]
    name_tag: arrow
    name_map: {yes: left, 2: right}
    box_m: 4
    mirror: {u: u}
    turn_values: {u: reverse}
"""
    )
    specs = {c.name: c for c in validate_params({**SHIPPED, **data}).class_specs()}
    arrows = specs["arrows"]
    assert arrows.box_m == (4.0, 4.0)
    assert arrows.name_map == {"yes": "left", "2": "right"}  # YAML's True and 2 read as the OSM strings
    assert arrows.name_of({"road_marking": "arrow", "arrow": "yes"}) == "left"
    assert arrows.name_of({"road_marking": "arrow", "arrow": "u_turn"}) is None
    assert (arrows.mirror, arrows.turn_values) == ({"u": "u"}, {"u": "reverse"})
    from navml.config import detection_mapping
    from navml.detect.augment import mirror_table
    from navml.detect.lanes import turn_value

    assert mirror_table(list(arrows.names), detection_mapping([arrows], "mirror")).tolist() == [1, 0, 2]
    assert turn_value("u", detection_mapping([arrows], "turn_values")) == "reverse"
    assert specs["parking"].complete == "inputs/labels/parking_done.geojson"

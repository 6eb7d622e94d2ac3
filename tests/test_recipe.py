"""issue 50: the measured recipe has one home (anomalign/recipe.py); the commands, the run's plan and the Python
API read it there, and no recipe default is written a second time."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from anomalign.cli import build_parser
from anomalign.config import config_from_args
from anomalign.recipe import GENERATOR, RUN, SEGMENTER, synthetic_per_step
from test_run import fingerprint

SRC = Path(__file__).resolve().parents[1] / "src" / "anomalign"


def defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def cli_config(argv: list[str]):
    args = build_parser().parse_args(argv)
    return config_from_args(args._cls, args)


def test_the_commands_take_their_defaults_from_the_recipe():
    seg = cli_config(["train-segmenter", "--train", "d", "--out", "o"])  # what a user gets on the command line
    for key, value in SEGMENTER.items():
        assert getattr(seg, key) == value, key
    gen = cli_config(["train-generator", "--data", "d", "--out", "o"])
    for key, value in GENERATOR.items():
        assert getattr(gen, key) == value, key


def test_the_plan_and_the_api_take_theirs_from_the_same_recipe(tmp_path):
    from anomalign.pipeline import RunConfig
    from anomalign.stages import Stages
    from anomalign.plan import CROP, Plan, make_plan
    plan = make_plan(fingerprint())  # what `anomalign run` and `anomalign.run()` plan for large images
    assert (plan.preset, plan.norm, plan.crop_size, plan.seg_steps, plan.batch_size, plan.train_normals) == (
        SEGMENTER["preset"], SEGMENTER["norm"], SEGMENTER["size"], SEGMENTER["max_steps"], SEGMENTER["batch_size"],
        SEGMENTER["train_normals"])
    assert CROP == SEGMENTER["size"] and Plan().synthetic_per_step == synthetic_per_step() == 4
    assert (plan.gen_steps, plan.gen_crops_per_image, plan.synthetic, plan.min_alignment) == (
        RUN["gen_steps_crops"], RUN["gen_crops_per_image"], RUN["synthetic"], RUN["min_alignment"])
    cfg = RunConfig(data=tmp_path, out=tmp_path / "run")
    stages = Stages(cfg, plan, tmp_path / "run", progress=False)
    arm = stages.arm_values(tmp_path / "run" / "arm_both", "both")  # what train-segmenter is given
    for key in ("synthetic_weight", "temperature", "w_fb", "fb_every", "fb_rows"):
        assert arm[key] == SEGMENTER[key], key
    assert arm["synthetic_fraction"] == SEGMENTER["synthetic_fraction"]
    gen = stages.generator_values()
    assert (gen["alpha"], gen["batch_size"], gen["learning_rate"], gen["normals"]) == (
        GENERATOR["alpha"], GENERATOR["batch_size"], GENERATOR["learning_rate"], GENERATOR["normals"])
    assert stages.generate_values()["batch_size"] == RUN["synthesis_batch_size"]
    # every value the run passes on is a plan field, and the plan says why for the recipe's
    assert {"gen_batch_size", "gen_learning_rate", "alpha", "synthetic_weight", "fb_rows"} <= set(defaults(Plan))
    assert {"alpha", "synthetic_weight", "fb_rows", "min_alignment"} <= set(plan.reasons)


def test_no_recipe_default_is_written_twice():
    """The option defaults of the recipe's keys are read from the recipe (an AST check of the sources), not
    written as literals."""
    homes = {"segmenter/train.py": ("TrainSegmenterConfig", SEGMENTER, "SEGMENTER"),
             "generator/train.py": ("TrainGeneratorConfig", GENERATOR, "GENERATOR")}
    for file, (cls_name, recipe, home) in homes.items():
        tree = ast.parse((SRC / file).read_text())
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
        written = {}
        for node in cls.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Call) and node.value.args:
                written[node.target.id] = ast.unparse(node.value.args[0])
        for key in recipe:
            assert written.get(key) == f"{home}['{key}']", (file, key, written.get(key))

"""Issue 46 item 4: the generator's fine-tuning length against the look of its defects (docs/synthesis.md).

    python studies/scripts/gen_steps.py RUN OUT --steps 150 600            # train once, to the longest
    python studies/scripts/gen_steps.py RUN OUT --steps 150 600 --generate  # each step's synthetic pairs

RUN is a run folder of `anomalign run` with its plan (and, for --generate, its finished baseline: the oracle
filter). Without --generate, one generator is trained (OUT/generator_to_N) with `run`'s own generator values (`Stages.generator_values`) to the longest
of --steps, checkpointing at every step of --steps; the generator's schedule is constant (no warm-up, no EMA), so
its checkpoint at N steps is the generator a run with `gen_steps: N` trains, bit for bit. With --generate, each
OUT/gen_N (a generator folder made from that checkpoint) makes `run`'s synthesis (`Stages.generate_values`:
the same pairs, hosts, windows and oracle filter) into OUT/syn_N. Then, by hand:

    anomalign evaluate-generation --generated OUT/syn_150 OUT/syn_600 --real DATA --split all --seed 0
"""
import argparse
import math
from pathlib import Path

import torch

from anomalign.config import build_config, load_config
from anomalign.pipeline import RunConfig
from anomalign.stages import Stages
from anomalign.plan import read_plan
from checkpoints import artifact_at  # studies/scripts/checkpoints.py

WEIGHTS = "generator.safetensors"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, nargs="+", default=[150, 600])
    ap.add_argument("--generate", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--start-from", type=Path, default=None,
                    help="a checkpoint of an earlier training here (OUT/generator_to_M/checkpoints/step-M): continue "
                         "from it; the same generator under the constant schedule, M steps cheaper")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config(RunConfig, a.run / "run.yaml")
    stages = Stages(cfg, read_plan(a.run / "plan.yaml"), a.run, progress=True)
    if not a.generate:  # one generator trained to the longest step, checkpointed at each of --steps
        from anomalign.generator.train import TrainGeneratorConfig, run_train_generator
        longest, every = max(a.steps), math.gcd(*a.steps)
        trained = a.out / f"generator_to_{longest}"
        own = trained / "checkpoints"
        run_train_generator(build_config(TrainGeneratorConfig, {
            **stages.generator_values(), "out": str(trained), "max_steps": longest, "checkpoint_every": every,
            "keep_checkpoints": longest // every + 1,
            "resume": "latest" if own.is_dir() and any(own.glob("step-*[0-9]")) else
                      (str(a.start_from) if a.start_from else None)}))
        return
    from anomalign.segmenter.model import Segmenter
    from anomalign.synthesis.generate import GenerateConfig, run_generate
    oracle = Segmenter.load(a.run / "baseline")
    for n in a.steps:
        trained = next(f for f in sorted(a.out.glob("generator_to_*")) if (f / WEIGHTS).is_file()
                       and (f / "checkpoints" / f"step-{n:07d}").is_dir())  # a finished training that passed n
        gen = artifact_at(trained, n, a.out / f"gen_{n}", WEIGHTS, ("config.yaml", "generator.json", "run.json"))
        syn = a.out / f"syn_{n}"
        if (syn / "summary.json").is_file():
            continue
        values = stages.generate_values() | {"generator": str(gen), "out": str(syn)}
        try:
            run_generate(build_config(GenerateConfig, values), progress=True, oracle=oracle)
        except Exception as e:  # fewer pairs than asked passed the filter: report, keep going (as run does)
            print(f"{syn}: {e}")


if __name__ == "__main__":
    main()

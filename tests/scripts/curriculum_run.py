"""
Runs a curriculum recipe (a JSON file) for `tests/test_training.py` in a process of its own:

    python tests/scripts/curriculum_run.py RECIPE.json OUTPUT_DIR --kill-at 2:3   # SIGKILLs itself at stage 2, step 3
    accelerate launch --config_file examples/accelerate/ddp_cpu.yaml tests/scripts/curriculum_run.py \\
        RECIPE.json OUTPUT_DIR --check-ddp                                        # asserts DDP invariants in the run
"""

import argparse
import json
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import PartialState
from transformers import TrainerCallback

from modeling_pal.training import run_curriculum


class KillAt(TrainerCallback):
    """SIGKILLs the process at the end of optimizer step `step` of stage `stage` (no cleanup, like a crash)."""

    def __init__(self, stage: int, step: int):
        self.stage, self.step = stage, step

    def on_step_end(self, args, state, control, **kwargs):
        if Path(args.output_dir).name == f"stage{self.stage}" and state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class CheckDDP(TrainerCallback):
    """At the end of every stage: two ranks, disjoint rows per step, identical parameters on both ranks."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir

    def on_train_end(self, args, state, control, model=None, **kwargs):
        assert dist.is_initialized() and dist.get_world_size() == 2 and PartialState().num_processes == 2
        rank = dist.get_rank()
        stage = int(Path(args.output_dir).name.removeprefix("stage"))
        log = self.output_dir / f"sample_ids.rank{rank}.jsonl"
        steps = {r["step"]: r["ids"] for r in map(json.loads, log.read_text().splitlines()) if r["stage"] == stage}
        gathered = [None, None]
        dist.all_gather_object(gathered, steps)
        assert sorted(gathered[0]) == sorted(gathered[1]) == list(range(1, state.global_step + 1))
        for step in gathered[0]:
            assert not set(gathered[0][step]) & set(gathered[1][step]), f"stage {stage} step {step}: ranks share rows"
        flat = torch.cat([parameter.detach().flatten() for parameter in model.parameters()])
        copies = [torch.empty_like(flat) for _ in range(2)]
        dist.all_gather(copies, flat)
        assert torch.equal(copies[0], copies[1]), f"stage {stage}: parameters differ across ranks"
        record = {"world_size": dist.get_world_size(), "steps": len(steps), "rows": sum(map(len, steps.values()))}
        with (self.output_dir / f"ddp_check.rank{rank}.jsonl").open("a") as out:
            out.write(json.dumps({"stage": stage, **record}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("output_dir")
    parser.add_argument("--kill-at", default=None, help="STAGE:STEP")
    parser.add_argument("--check-ddp", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    output_dir = Path(args.output_dir)
    callbacks = [CheckDDP(output_dir)] if args.check_ddp else []
    if args.kill_at:
        callbacks.append(KillAt(*map(int, args.kill_at.split(":"))))
    recipe = json.loads(Path(args.recipe).read_text())
    run_curriculum(recipe, output_dir, callbacks=callbacks)


if __name__ == "__main__":
    main()

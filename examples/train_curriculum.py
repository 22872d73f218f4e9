"""
Trains a PAL model through the stages of a curriculum recipe (see `docs/training.md`).

    python examples/train_curriculum.py --recipe examples/recipes/smoke.yaml --output_dir outputs/smoke
    python examples/train_curriculum.py --recipe examples/recipes/pal_synth.yaml --output_dir outputs/pal_synth \\
        --components outputs/demo/components --data outputs/demo/pal_synth
    accelerate launch --config_file examples/accelerate/ddp_cpu.yaml examples/train_curriculum.py --recipe ...

Each stage's model and processor go to `OUTPUT/stage{n}`; `--resume` continues an interrupted run at the same stage
and data position; `--overwrite` removes an earlier run from the folder and starts fresh (without either, a folder
holding an earlier run is refused).
"""

import argparse
import logging
from pathlib import Path

from accelerate import PartialState

from modeling_pal.hub import folder_argument
from modeling_pal.training import CurriculumResult, run_curriculum


def file_argument(text: str) -> str:
    """argparse type of an option that takes an existing file."""
    if Path(text).is_file():
        return text
    raise argparse.ArgumentTypeError(f"no such file: {text}")


def components_argument(text: str) -> str:
    """`tiny`, or an existing components folder (a missing one would be reported as an invalid Hub repo id)."""
    return text if text == "tiny" else folder_argument(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--recipe", required=True, type=file_argument, help="a YAML recipe, e.g. examples/recipes/smoke.yaml"
    )
    parser.add_argument("--output_dir", required=True, help="stage outputs, checkpoints, logs and loss.png")
    parser.add_argument("--max_steps_per_stage", type=int, default=None, help="overrides every stage's max_steps")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last finished stage / checkpoint of the run in --output_dir",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="remove an earlier run from --output_dir and start fresh"
    )
    parser.add_argument("--trainer", choices=("hf", "trl"), default="hf", help="Trainer or TRL's SFTTrainer")
    parser.add_argument("--lora", action="store_true", help="train the LLM through LoRA adapters")
    parser.add_argument(
        "--components", type=components_argument, default=None, help="overrides the recipe's components directory"
    )
    parser.add_argument(
        "--data", type=folder_argument, default=None, help="overrides the recipe's dataset (a save_to_disk directory)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> CurriculumResult:
    args = parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("modeling_pal").setLevel(logging.INFO)
    result = run_curriculum(
        args.recipe,
        args.output_dir,
        max_steps_per_stage=args.max_steps_per_stage,
        resume=args.resume,
        overwrite=args.overwrite,
        trainer=args.trainer,
        lora=args.lora,
        components=args.components,
        data=args.data,
    )
    if PartialState().is_main_process:
        for stage in result.stages:
            print(f"stage {stage.stage} ({stage.name}): {stage.seconds:.1f} s, {stage.trainable} → {stage.output_dir}")
    return result


if __name__ == "__main__":
    main()

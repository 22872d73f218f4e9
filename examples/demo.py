"""The main job, end to end on this machine: PAL-Synth → offline-pretrained components → three-stage curriculum →
evaluation on the i.i.d. and compositional test splits → a question answered through `pipeline("audio-text-to-text")`.

    python examples/demo.py [--work-dir outputs/demo] [--size 3000]

Data and pretrained components are cached in the work directory; the curriculum and evaluation run every time.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from datasets import load_from_disk

from modeling_pal.cpu import preload_environment, tcmalloc_library
from modeling_pal.data.synth import PAL_SYNTH_VERSION, pal_synth_version
from modeling_pal.hub import positive_int

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "examples" / "recipes" / "pal_synth.yaml"
# every stage's malloc: glibc's page-faults each large activation back in every training step (modeling_pal.cpu)
TCMALLOC = tcmalloc_library()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default=str(REPO / "outputs" / "demo"))
    parser.add_argument("--size", type=positive_int, default=None, help="PAL-Synth train rows (default: the module's)")
    parser.add_argument(
        "--eval-limit", type=positive_int, default=None, help="evaluate only the first N rows per split"
    )
    return parser.parse_args()


def step(title: str, command: list[str]) -> float:
    """
    Runs one stage of the demo as a subprocess (its progress bars stay visible), with tcmalloc preloaded when it is
    installed (`make setup` does); returns its wall time.
    """
    print(f"\n=== {title}\n$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, env=preload_environment(TCMALLOC))
    return time.perf_counter() - start


def build_data(work: Path, size: int | None) -> tuple[Path, float]:
    data = work / "pal_synth"
    if (data / "dataset_dict.json").exists():
        cached = load_from_disk(str(data))
        built_by = pal_synth_version(cached)
        if built_by != PAL_SYNTH_VERSION:
            raise SystemExit(
                f"{data} holds a PAL-Synth built by version {built_by or 'before 2.0.0'}, which gives other rows than "
                f"this version ({PAL_SYNTH_VERSION}): remove {work} (its components were pretrained on that data) or "
                "use another --work-dir"
            )
        if size is not None and size != cached["train"].num_rows:
            raise SystemExit(
                f"{data} holds a PAL-Synth of {cached['train'].num_rows} train rows, not --size {size}: remove it or "
                "use another --work-dir"
            )
        print(f"\n=== PAL-Synth: cached in {data}")
        return data, 0.0
    command = [sys.executable, "-m", "modeling_pal.data.synth", "--out", str(data)]
    return data, step("Building PAL-Synth", command + (["--size", str(size)] if size else []))


def pretrain(work: Path, data: Path) -> tuple[Path, float]:
    components = work / "components"
    command = [
        sys.executable,
        "-m",
        "modeling_pal.data.pretrain_components",
        "--data",
        str(data),
        "--out",
        str(components),
    ]
    return components, step("Pretraining the small LLM, Whisper and CLAP (cached once built)", command)


def train(work: Path, data: Path, components: Path) -> tuple[Path, float]:
    run = work / "curriculum"
    command = [
        sys.executable,
        str(REPO / "examples" / "train_curriculum.py"),
        "--recipe",
        str(RECIPE),
        "--output_dir",
        str(run),
        "--data",
        str(data),
        "--components",
        str(components),
        "--overwrite",  # the curriculum runs every time
    ]
    return run / "stage3", step("Three-stage curriculum (pal_synth.yaml)", command)


def evaluate(checkpoint: Path, data: Path, work: Path, limit: int | None) -> tuple[dict, float]:
    """Both test splits in one process (the model and METEOR's Java process load once)."""
    splits = ("test", "test_compositional")
    command = [
        sys.executable,
        str(REPO / "examples" / "evaluate_pal.py"),
        "--model",
        str(checkpoint),
        "--dataset",
        str(data),
        "--split",
        *splits,
        "--output",
        str(work / "eval-{split}.json"),
    ] + (["--limit", str(limit)] if limit else [])
    elapsed = step("Evaluating on " + " and ".join(splits), command)
    reports = {split: json.loads((work / f"eval-{split}.json").read_text()) for split in splits}
    (checkpoint / "pal_eval.json").write_text(json.dumps(reports, indent=2))
    return reports, elapsed


def ask_pipeline(checkpoint: Path, data: Path) -> None:
    from datasets import load_from_disk
    from transformers import pipeline

    import modeling_pal  # noqa: F401

    row = next(r for r in load_from_disk(str(data))["test"] if r["task"] == "classification")
    from modeling_pal.evaluation.runner import prompt_messages

    pipe = pipeline("audio-text-to-text", model=str(checkpoint))
    chat = prompt_messages(row)
    answer = pipe(text=chat, max_new_tokens=24, return_full_text=False)[0]["generated_text"]
    print(f"\n=== pipeline('audio-text-to-text') on test clip {row['id']}")
    print(f"Q: {row['question']}\nA: {answer.strip()}\nreference: {row['answer']}")


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    timings = {}
    print(f"malloc of every stage: {TCMALLOC or 'the system one (tcmalloc not found; Debian: libtcmalloc-minimal4)'}")
    data, timings["data"] = build_data(work, args.size)
    components, timings["pretraining"] = pretrain(work, data)
    checkpoint, timings["curriculum"] = train(work, data, components)
    reports, timings["evaluation"] = evaluate(checkpoint, data, work, args.eval_limit)
    from modeling_pal.evaluation.runner import markdown_table

    for split, report in reports.items():
        print("\n" + markdown_table(report["metrics"], title=f"PAL-Synth [{split}]"))
    ask_pipeline(checkpoint, data)
    print("\n=== wall time per step (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))


if __name__ == "__main__":
    main()

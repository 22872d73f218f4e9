r"""Evaluate a PAL checkpoint on a dataset of PAL's schema: batched greedy answers, per-task metrics, MMAU export.

python examples/evaluate_pal.py --model outputs/demo/curriculum/stage3 --dataset outputs/demo/pal_synth \
    --split test --output r.json
python examples/evaluate_pal.py --model outputs/demo/curriculum/stage3 --dataset outputs/demo/pal_synth \
    --split test test_compositional --output "eval-{split}.json"
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from datasets import DatasetDict, load_from_disk
from transformers import AutoModelForMultimodalLM, AutoProcessor

import modeling_pal  # noqa: F401  (registers PAL with the Auto classes)
from modeling_pal.evaluation import to_mmau_records, write_mmau_json
from modeling_pal.evaluation.runner import (
    GREEDY,
    generate_answers,
    markdown_table,
    reference_groups,
    score_predictions,
    without_audio,
)
from modeling_pal.hub import checkpoint_argument, folder_argument, positive_int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=checkpoint_argument, help="PAL checkpoint directory or Hub id")
    parser.add_argument(
        "--dataset", required=True, type=folder_argument, help="a DatasetDict folder written by save_to_disk"
    )
    parser.add_argument("--split", nargs="+", default=["test"], help="one or more splits, scored one by one")
    parser.add_argument(
        "--output", required=True, help="JSON report (metrics, predictions); with several splits it must hold {split}"
    )
    parser.add_argument("--mmau-output", help="multiple-choice predictions in MMAU's JSON format ({split} as above)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="rows per generate() call")
    parser.add_argument("--max-new-tokens", type=positive_int, default=32)
    parser.add_argument("--limit", type=positive_int, help="evaluate the first N rows of each split only")
    args = parser.parse_args(argv)
    for path in filter(None, (args.output, args.mmau_output)):
        if len(args.split) > 1 and "{split}" not in path:
            parser.error(f"with several splits, output paths must contain {{split}}; got {path!r}")
        # checked now: writing the report into a folder would fail only after the whole split was generated
        folders = [name for name in (path.replace("{split}", split) for split in args.split) if Path(name).is_dir()]
        if folders:
            parser.error(f"output path {folders[0]!r} is a folder: give a file name, e.g. {folders[0]}/report.json")
    return args


def load_splits(path: str, splits: Sequence[str]) -> DatasetDict:
    """The `DatasetDict` saved at `path`; exits listing the available splits when it lacks one of `splits`."""
    dataset = load_from_disk(path)
    available = sorted(dataset) if isinstance(dataset, DatasetDict) else []
    missing = [split for split in splits if split not in available]
    if missing:
        listed = ", ".join(available) or "none (it is a single Dataset, not a DatasetDict)"
        sys.exit(f"error: {path} has no split {', '.join(map(repr, missing))}; available: {listed}")
    return dataset


def evaluate_split(model, processor, rows, batch_size: int, max_new_tokens: int) -> tuple[dict, list[str]]:
    """Generates and scores the answers of `rows`, grouping them by clip once for both steps."""
    groups = reference_groups(rows)
    predictions = generate_answers(model, processor, rows, batch_size, max_new_tokens, groups=groups)
    return score_predictions(rows, predictions, groups=groups), predictions


def evaluate_and_write(model, processor, rows, split: str, args: argparse.Namespace) -> None:
    """Scores one split, prints its table and writes its report (and MMAU export) to the `{split}` paths."""
    metrics, predictions = evaluate_split(model, processor, rows, args.batch_size, args.max_new_tokens)
    print(markdown_table(metrics, title=f"{args.dataset} [{split}]"))
    report = {
        "model": args.model,
        "dataset": args.dataset,
        "split": split,
        "limit": args.limit,
        "generation": {**GREEDY, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size},
        "metrics": metrics,
        "predictions": [{"id": row_id, "prediction": p} for row_id, p in zip(rows["id"], predictions)],
    }
    output = Path(args.output.replace("{split}", split))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    if args.mmau_output:
        write_mmau_json(args.mmau_output.replace("{split}", split), mmau_records(rows, predictions))


def mmau_records(rows, predictions: Sequence[str]) -> list[dict]:
    """The multiple-choice rows (MMAU's kind) with their predictions as MMAU records, validated."""
    choice_rows = [i for i, choices in enumerate(rows["choices"]) if choices]
    plain_rows = without_audio(rows)
    return to_mmau_records(
        [plain_rows[i] for i in choice_rows], [predictions[i] for i in choice_rows], exclude=("messages",)
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    dataset = load_splits(args.dataset, args.split)  # before the model, so a wrong split fails fast
    splits = {split: dataset[split] for split in args.split}
    if args.limit:
        splits = {split: rows.select(range(min(args.limit, len(rows)))) for split, rows in splits.items()}
    for split, rows in splits.items() if args.mmau_output else ():
        try:  # rows that MMAU's evaluation.py cannot read fail now, not after generation
            mmau_records(rows, [""] * len(rows))
        except ValueError as error:
            sys.exit(f"error: --mmau-output: split {split!r}: {error}")
    torch.manual_seed(0)
    model = AutoModelForMultimodalLM.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    for split, rows in splits.items():
        evaluate_and_write(model, processor, rows, split, args)


if __name__ == "__main__":
    main()

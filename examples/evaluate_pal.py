"""Evaluate a PAL checkpoint on a dataset of PAL's schema: batched greedy answers, per-task metrics, MMAU export.

python examples/evaluate_pal.py --model outputs/demo/stage3 --dataset data/pal_synth --split test --output r.json
"""

import argparse
import json
from pathlib import Path

import torch
from datasets import load_from_disk
from transformers import AutoModelForMultimodalLM, AutoProcessor

import modeling_pal  # noqa: F401  (registers PAL with the Auto classes)
from modeling_pal.evaluation import to_mmau_records, write_mmau_json
from modeling_pal.evaluation.runner import generate_answers, markdown_table, score_predictions


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="PAL checkpoint directory or Hub id")
    parser.add_argument("--dataset", required=True, help="a DatasetDict saved with save_to_disk")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output", required=True, help="JSON report: metrics and predictions")
    parser.add_argument("--mmau-output", help="predictions of multiple-choice rows in MMAU's JSON format")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--limit", type=int, help="evaluate the first N rows only")
    return parser.parse_args()


def evaluate_split(model, processor, rows, batch_size: int, max_new_tokens: int) -> tuple[dict, list[str]]:
    predictions = generate_answers(model, processor, rows, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return score_predictions(rows, predictions), predictions


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    model = AutoModelForMultimodalLM.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    rows = load_from_disk(args.dataset)[args.split]
    if args.limit:
        rows = rows.select(range(min(args.limit, len(rows))))
    metrics, predictions = evaluate_split(model, processor, rows, args.batch_size, args.max_new_tokens)
    print(markdown_table(metrics, title=f"{args.dataset} [{args.split}]"))
    report = {
        "model": args.model,
        "dataset": args.dataset,
        "split": args.split,
        "metrics": metrics,
        "predictions": [{"id": rows[i]["id"], "prediction": p} for i, p in enumerate(predictions)],
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    if args.mmau_output:
        choice_rows = [i for i in range(len(rows)) if rows[i]["choices"]]  # MMAU is multiple choice
        records = to_mmau_records(
            [rows[i] for i in choice_rows], [predictions[i] for i in choice_rows], exclude=("audio", "messages")
        )
        write_mmau_json(args.mmau_output, records)


if __name__ == "__main__":
    main()

"""Publish a PAL checkpoint to the Hugging Face Hub, or write the repository as it would be uploaded (--dry-run).

python examples/push_to_hub.py --model outputs/demo/stage3 --repo-id my-org/pal-demo --dry-run /tmp/pal-repo
python examples/push_to_hub.py --model outputs/demo/stage3 --repo-id my-org/pal-demo --private
"""

import argparse
import tempfile

from transformers import AutoModelForMultimodalLM, AutoProcessor

import modeling_pal  # noqa: F401  (registers PAL with the Auto classes)
from modeling_pal.hub import upload_repository, write_repository


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a PAL checkpoint directory (model + processor)")
    parser.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", metavar="DIR", help="write the repository into DIR and upload nothing")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the cached login)")
    parser.add_argument(
        "--base-model",
        action="append",
        default=[],
        metavar="COMPONENT=HUB_ID",
        help="base model of a component ('llm' or an encoder name) when it was composed from a local path",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    overrides = dict(item.split("=", 1) for item in args.base_model)
    model = AutoModelForMultimodalLM.from_pretrained(args.model)
    processor = AutoProcessor.from_pretrained(args.model)
    folder = args.dry_run or tempfile.mkdtemp(prefix="pal-upload-")
    write_repository(model, processor, folder, args.repo_id, overrides, source_dir=args.model)
    if args.dry_run:
        print(f"Wrote the repository for {args.repo_id} to {folder} (nothing uploaded)")
        return
    print(upload_repository(folder, args.repo_id, private=args.private, token=args.token))


if __name__ == "__main__":
    main()

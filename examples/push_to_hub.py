"""Publish a PAL checkpoint to the Hugging Face Hub, or write the repository as it would be uploaded (--dry-run).

python examples/push_to_hub.py --model outputs/demo/curriculum/stage3 --repo-id my-org/pal-demo --dry-run /tmp/pal-repo
python examples/push_to_hub.py --model outputs/demo/curriculum/stage3 --repo-id my-org/pal-demo --private
"""

import argparse
import tempfile
from contextlib import nullcontext

from transformers import AutoConfig, AutoModelForMultimodalLM, AutoProcessor

import modeling_pal  # noqa: F401  (registers PAL with the Auto classes)
from modeling_pal.hub import (
    DEFAULT_LICENSE,
    check_components,
    empty_folder_argument,
    folder_argument,
    hub_api,
    repo_id_argument,
    upload_repository,
    write_repository,
)


def base_model_entry(item: str) -> tuple[str, str]:
    """`COMPONENT=HUB_ID` → `(component, hub_id)`; argparse reports a malformed entry."""
    component, equals, hub_id = item.partition("=")
    if not (component and equals and hub_id):
        raise argparse.ArgumentTypeError(f"expected COMPONENT=HUB_ID (e.g. llm=meta-llama/Llama-3.2-1B), got {item!r}")
    return component, repo_id_argument(hub_id)  # a path here would be left out of the card without a word


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", required=True, type=folder_argument, help="a PAL checkpoint directory (model + processor)"
    )
    parser.add_argument("--repo-id", required=True, type=repo_id_argument, help="ORG/NAME on the Hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument(
        "--dry-run",
        metavar="DIR",
        type=empty_folder_argument,
        help="write the repository into DIR (missing or empty) and upload nothing",
    )
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the cached login)")
    parser.add_argument(
        "--base-model",
        action="append",
        default=[],
        type=base_model_entry,
        metavar="COMPONENT=HUB_ID",
        help="base model of a component ('llm' or an encoder name) when it was composed from a local path",
    )
    parser.add_argument(
        "--license",
        default=DEFAULT_LICENSE,
        help="license id of the model card (default: %(default)s); a model built on a base model keeps its terms, "
        "e.g. llama3.2 for Llama 3.2",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Checked before the model loads and its repository (GBs for real models) is written.
    api = None if args.dry_run else hub_api(args.token)
    overrides = dict(args.base_model)
    check_components(AutoConfig.from_pretrained(args.model), overrides)
    model = AutoModelForMultimodalLM.from_pretrained(args.model)
    processor = AutoProcessor.from_pretrained(args.model)
    with nullcontext(args.dry_run) if args.dry_run else tempfile.TemporaryDirectory(prefix="pal-upload-") as folder:
        write_repository(
            model, processor, folder, args.repo_id, overrides, source_dir=args.model, license=args.license
        )
        if api is None:
            print(f"Wrote the repository for {args.repo_id} to {folder} (nothing uploaded)")
            return
        print(upload_repository(api, folder, args.repo_id, private=args.private))


if __name__ == "__main__":
    main()

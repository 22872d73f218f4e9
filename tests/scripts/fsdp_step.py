"""
One training forward + backward of a saved PAL under FSDP2 on two CPU ranks (gloo), each rank on the same batch:
    python tests/scripts/fsdp_step.py MODEL_DIR BATCH.pt OUT.pt
Every module of a `_no_split_modules` class is a shard unit, then the root (as examples/accelerate/fsdp.yaml's
TRANSFORMER_BASED_WRAP); rank 0 writes the loss and every full (unsharded) gradient to OUT.pt.
"""

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import fully_shard

from modeling_pal import PalForConditionalGeneration
from modeling_pal.training import set_trainable

TRAINED = ["connectors", "llm"]


def shard(model: PalForConditionalGeneration) -> list[str]:
    units = set(model._no_split_modules)
    names = [name for name, module in model.named_modules() if type(module).__name__ in units]
    for name in names:
        fully_shard(model.get_submodule(name))
    fully_shard(model)
    return names


def rank_main(rank: int, port: int, model_dir: str, batch_path: str, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = PalForConditionalGeneration.from_pretrained(model_dir).eval()
    set_trainable(model, TRAINED)
    units = shard(model)
    loss = model(**torch.load(batch_path)).loss
    loss.backward()
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters() if p.grad is not None}
    if rank == 0:
        torch.save({"loss": loss.detach(), "grads": grads, "units": units}, out_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    mp.spawn(rank_main, args=(free_port, *sys.argv[1:4]), nprocs=2)

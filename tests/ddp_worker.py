"""One rank of tests/test_ecosystem.py's DistributedDataParallel run (gloo, 127.0.0.1).

    python ddp_worker.py RANK WORLD PORT OUT

Trains a torch.nn model and its fastrnn twin (same initial weights) for a few
steps under DDP on this rank's share of the data, and saves both runs' losses
and final parameters to OUT.
"""
import datetime
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import fastrnn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
        self.cell = nn.GRUCell(10, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(self.cell(y[:, -1]))


def train(model, rank: int, steps: int = 3):
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    losses = []
    for step in range(steps):
        gen = torch.Generator().manual_seed(100 * step + rank)  # each rank its own batch
        x, target = torch.randn(4, 6, 3, generator=gen), torch.randn(4, 1, generator=gen)
        loss = (ddp(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()]


def main(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    torch.manual_seed(0)
    ref = Model()
    ours = fastrnn.convert(Model())
    ours.load_state_dict(ref.state_dict())
    result = {"torch": train(ref, rank), "fastrnn": train(ours, rank)}
    result["backends"] = (ours.rnn.last_backend, ours.cell.last_backend)
    dist.destroy_process_group()
    torch.save(result, out)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])

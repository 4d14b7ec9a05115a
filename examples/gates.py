"""Looking inside an LSTM: its gates on a task where they mean something.

Task: a sequence of random symbols 0-7, one of them marked; after the last
step, name the marked symbol. To solve it the LSTM must write the marked symbol
into its cell state and keep it while later symbols pass: the forget gate of
the units that store it has to stay near 1 from the mark on. After training, the
gates of every step come from fastrnn.gate_activations (what the kernel
computed and saved for backward) and fastrnn.plot_gates draws them.

    python examples/gates.py [--compare] [--smoke] [--out DIR]
"""
from __future__ import annotations

import os

import torch
from torch import nn

import common
import fastrnn

SYMBOLS = 8


def batch(size: int, steps: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (size, steps, SYMBOLS + 1): one-hot symbol plus a marker bit; the marked
    symbol (size,) and the marked step (size,), always in the first half."""
    symbols = torch.randint(SYMBOLS, (size, steps), generator=gen)
    marked = torch.randint(steps // 2, (size,), generator=gen)
    x = torch.zeros(size, steps, SYMBOLS + 1)
    x.scatter_(2, symbols.unsqueeze(-1), 1.0)
    x[torch.arange(size), marked, SYMBOLS] = 1.0
    return x, symbols[torch.arange(size), marked], marked


class Recall(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(SYMBOLS + 1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, SYMBOLS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def train(model: nn.Module, steps: int, length: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        x, y, _ = batch(128, length, gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.start(args)
    length, hidden, steps = (12, 8, 5) if args.smoke else (16, 16, 1500)
    model = fastrnn.convert(Recall(hidden))
    train(model, steps, length, args.seed)

    gen = torch.Generator().manual_seed(args.seed + 1)
    x, y, marked = batch(512, length, gen)
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
        trace = fastrnn.gate_activations(model.lstm, x)
    print(f"recall of the marked symbol after {length} steps: {acc:.1%} (chance {1 / SYMBOLS:.1%}); "
          f"gates: {trace.sources[0][0]}")

    # The units that store the symbol: those whose final cell state varies most across sequences.
    c = trace.gate("c")  # (B, T, H): batch_first like the model's output
    units = c[:, -1].var(0).argsort(descending=True)[: min(6, hidden)].tolist()
    t = torch.arange(length)
    at_mark = t[None, :] == marked[:, None]
    after = t[None, :] > marked[:, None]
    i, f = trace.gate("i")[..., units].mean(-1), trace.gate("f")[..., units].mean(-1)  # (B, T)
    stats = {"input_gate_at_mark": float(i[at_mark].mean()),
             "input_gate_elsewhere": float(i[~at_mark].mean()),
             "forget_gate_after_mark": float(f[after].mean()),
             "forget_gate_before_mark": float(f[~after & ~at_mark].mean())}
    print(f"storing units {units} (mean over them and 512 sequences): forget gate "
          f"{stats['forget_gate_before_mark']:.2f} before the mark, {stats['forget_gate_after_mark']:.2f} "
          f"after it; input gate {stats['input_gate_at_mark']:.2f} at the mark, "
          f"{stats['input_gate_elsewhere']:.2f} elsewhere")

    row = int((marked >= 3).nonzero()[0]) if bool((marked >= 3).any()) else 0  # a mark away from the start
    symbols = x[row, :, :SYMBOLS].argmax(-1).tolist()
    labels = [f"*{s}" if k == int(marked[row]) else str(s) for k, s in enumerate(symbols)]
    png = fastrnn.plot_gates(
        trace, os.path.join(args.out, "gates.png"), batch=row, units=units, names=("i", "f", "o", "c"),
        labels=labels, title=f"LSTM recalling the marked symbol (*{int(y[row])}), the 6 units "
                             "whose final c varies most")
    results = {"accuracy": acc, "units": units, **stats, "picture": png}
    if args.compare:
        results["compare"] = common.compare(lambda: Recall(hidden), lambda m: train(m, 20, length, 0))
    print("wrote", png, common.write_results(args, "gates", results))


if __name__ == "__main__":
    main()

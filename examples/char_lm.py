"""Character-level language model on the Python standard library's own source.

Every machine with Python has this text offline: the source files of a few
standard-library modules (read with inspect.getsourcefile), 90% for training
and the rest held out. An LSTM reads B parallel streams of the text in windows
of K characters; its state is carried from one window to the next and detached
(truncated backpropagation through time). The model is saved as a checkpoint,
loaded back into a fresh model, and then generates text one character per call
with temperature and top-k sampling, carrying its state as a decoder does.

    python examples/char_lm.py [--compare] [--smoke] [--out DIR]
"""
from __future__ import annotations

import inspect
import math
import os
import time

import torch
from torch import nn

import common
import fastrnn

SOURCES = ("textwrap", "string", "heapq", "bisect", "fractions", "functools", "shlex", "fnmatch")


def stdlib_text() -> str:
    parts = []
    for name in SOURCES:
        with open(inspect.getsourcefile(__import__(name)), encoding="utf-8") as f:
            parts.append(f.read())
    return "\n".join(parts)


class CharLM(nn.Module):
    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, 48)
        self.lstm = nn.LSTM(48, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, chars: torch.Tensor, state=None):
        out, state = self.lstm(self.embed(chars), state)
        return self.head(out), state


def streams(ids: torch.Tensor, batch: int) -> torch.Tensor:
    """(batch, L): the text cut into `batch` contiguous streams."""
    length = ids.numel() // batch
    return ids[: batch * length].view(batch, length)


def train(model: CharLM, data: torch.Tensor, steps: int, window: int, log: list | None = None) -> None:
    """Truncated BPTT over the streams `data`, the state carried between windows."""
    opt = torch.optim.Adam(model.parameters(), lr=4e-3)
    state, pos = None, 0
    model.train()
    for step in range(steps):
        if pos + window + 1 > data.shape[1]:
            state, pos = None, 0  # back to the start of every stream
        x, y = data[:, pos:pos + window], data[:, pos + 1:pos + window + 1]
        pos += window
        logits, state = model(x, state)
        state = tuple(s.detach() for s in state)  # truncate: no gradient into the previous window
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log is not None:
            log.append(loss.item() / math.log(2))


@torch.no_grad()
def bits_per_char(model: CharLM, data: torch.Tensor, window: int) -> float:
    model.eval()
    state, total, count = None, 0.0, 0
    for pos in range(0, data.shape[1] - 1, window):
        x, y = data[:, pos:pos + window], data[:, pos + 1:pos + window + 1]
        x = x[:, : y.shape[1]]
        logits, state = model(x, state)
        total += nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    return total / count / math.log(2)


@torch.no_grad()
def generate(model: CharLM, chars: str, prompt: str, n: int, temperature: float, top_k: int,
             gen: torch.Generator) -> str:
    """Feeds the prompt, then samples n characters, one model call per character."""
    model.eval()
    index = {c: i for i, c in enumerate(chars)}
    logits, state = model(torch.tensor([[index[c] for c in prompt]]))
    out = prompt
    for _ in range(n):
        last = logits[0, -1] / temperature
        top = torch.topk(last, top_k)
        pick = top.indices[torch.multinomial(top.values.softmax(0), 1, generator=gen)]
        out += chars[int(pick)]
        logits, state = model(pick.view(1, 1), state)  # one step, the state carried
    return out


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.start(args)
    text = stdlib_text()
    if args.smoke:
        text = text[:20000]
    chars = "".join(sorted(set(text)))
    ids = torch.tensor([chars.index(c) for c in text])
    split = int(0.9 * len(ids))
    batch, window = 32, 64
    hidden, steps = (32, 8) if args.smoke else (256, 400)
    train_data, val_data = streams(ids[:split], batch), streams(ids[split:], 8)
    counts = torch.bincount(ids[:split], minlength=len(chars)).float()
    p = counts / counts.sum()
    unigram = float(-(p[p > 0] * p[p > 0].log2()).sum())  # bits/char of a model without context
    print(f"text: {len(text)} characters of {', '.join(SOURCES)}.py, {len(chars)} symbols; "
          f"unigram entropy {unigram:.2f} bits/char")

    model = fastrnn.convert(CharLM(len(chars), hidden))
    log: list[float] = []
    t0 = time.perf_counter()
    train(model, train_data, steps, window, log)
    seconds = time.perf_counter() - t0
    val = bits_per_char(model, val_data, window)
    print(f"trained {steps} windows of {batch}x{window} in {seconds:.0f} s "
          f"(backend {model.lstm.last_backend}): held-out {val:.2f} bits/char")

    ckpt = os.path.join(args.out, "char_lm.pt")
    torch.save({"chars": chars, "hidden": hidden, "model": model.state_dict()}, ckpt)
    saved = torch.load(ckpt)
    restored = fastrnn.convert(CharLM(len(saved["chars"]), saved["hidden"]))
    restored.load_state_dict(saved["model"])
    val_restored = bits_per_char(restored, val_data, window)
    print(f"checkpoint {ckpt} loaded into a fresh model: held-out {val_restored:.2f} bits/char")

    gen = torch.Generator().manual_seed(args.seed)
    samples = {t: generate(restored, chars, "def ", 60 if args.smoke else 240, t, 5, gen) for t in (0.5, 1.0)}
    for t, s in samples.items():
        print(f"--- sample, temperature {t}, top-k 5:\n{s}")

    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(range(1, len(log) + 1), log, lw=0.8, label="training windows")
    ax.axhline(unigram, color="gray", ls="--", lw=0.8, label=f"unigram baseline {unigram:.2f}")
    ax.plot([len(log)], [val], "ro", label=f"held-out text {val:.2f}")
    ax.set(xlabel="training window (32 streams x 64 characters)", ylabel="bits per character",
           title="Character LSTM on Python's standard library source")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = os.path.join(args.out, "char_lm.png")
    fig.savefig(png, dpi=80)
    results = {"bits_per_char": val, "bits_per_char_restored": val_restored, "unigram_bits": unigram,
               "train_seconds": seconds, "samples": {str(t): s for t, s in samples.items()},
               "checkpoint": ckpt, "picture": png}
    if args.compare:
        results["compare"] = common.compare(lambda: CharLM(len(chars), hidden),
                                            lambda m: train(m, train_data, 10, window))
    print("wrote", png, common.write_results(args, "char_lm", results))


if __name__ == "__main__":
    main()

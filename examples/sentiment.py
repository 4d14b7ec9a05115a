"""Sentiment classification: Embedding -> 2-layer bidirectional LSTM over a packed
batch (pack_padded_sequence(enforce_sorted=False)) -> linear classifier.

We found no registry package that ships labelled review text for offline use,
so the corpus is generated: reviews of 4 to 40 words made of filler words and one or three
sentiment phrases, each phrase a positive or negative word, optionally
intensified ("very good") and optionally negated ("not good", "never really
bad"). The label is the majority of the phrases' polarities after negation.
A bag-of-words model sees which words occur but not which word a "not"
belongs to, so it cannot solve it; an LSTM reading in order can. Both are
trained on the same data and their test accuracy is printed and plotted.

    python examples/sentiment.py [--compare] [--smoke] [--out DIR]
"""
from __future__ import annotations

import random

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

import common
import fastrnn

POSITIVE = "good great excellent wonderful superb enjoyable brilliant fun moving charming".split()
NEGATIVE = "bad awful boring dull terrible weak clumsy tedious bland painful".split()
NEGATORS = ["not", "never", "hardly"]
INTENSIFIERS = ["very", "really", "truly", "quite"]
FILLER = ("the movie film plot acting story cast was is and it this that a an of with "
          "script ending music scenes director overall i thought felt seemed").split()
VOCAB = ["<pad>"] + sorted(set(POSITIVE + NEGATIVE + NEGATORS + INTENSIFIERS + FILLER))
INDEX = {w: i for i, w in enumerate(VOCAB)}


def review(rng: random.Random) -> tuple[list[str], int]:
    """One review and its label (1 positive, 0 negative)."""
    words, votes = [], 0
    for _ in range(rng.choice((1, 3))):  # odd: the majority is never a tie
        words += rng.choices(FILLER, k=rng.randint(1, 8))
        positive = rng.random() < 0.5
        negated = rng.random() < 0.5
        if negated:
            words.append(rng.choice(NEGATORS))
        if rng.random() < 0.4:
            words.append(rng.choice(INTENSIFIERS))
        words.append(rng.choice(POSITIVE if positive else NEGATIVE))
        votes += 1 if positive != negated else -1
    words += rng.choices(FILLER, k=rng.randint(0, 6))
    return words, int(votes > 0)


def corpus(n: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    rng = random.Random(seed)
    texts, labels = zip(*(review(rng) for _ in range(n)))
    return [torch.tensor([INDEX[w] for w in t]) for t in texts], torch.tensor(labels)


class Classifier(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), 32, padding_idx=0)
        self.lstm = nn.LSTM(32, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, 2)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embed(tokens), lengths, batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        return self.head(torch.cat((h_n[-2], h_n[-1]), 1))  # top layer, both directions


class BagOfWords(nn.Module):
    """Logistic regression on word counts: the baseline that ignores order."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(len(VOCAB), 2)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        counts = torch.zeros(tokens.shape[0], len(VOCAB)).scatter_add_(1, tokens, torch.ones_like(tokens, dtype=torch.float))
        counts[:, 0] = 0  # padding
        return self.linear(counts)


def batches(seqs, labels, size: int, shuffle: bool):
    order = torch.randperm(len(seqs)) if shuffle else torch.arange(len(seqs))
    for k in range(0, len(seqs), size):
        idx = order[k:k + size].tolist()
        chunk = [seqs[i] for i in idx]
        yield pad_sequence(chunk, batch_first=True), torch.tensor([len(s) for s in chunk]), labels[idx]


def train(model: nn.Module, data, epochs: int, lr: float, history: list | None = None, test=None) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        for tokens, lengths, y in batches(*data, size=64, shuffle=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model(tokens, lengths), y).backward()
            opt.step()
        if history is not None:
            history.append(accuracy(model, test))


@torch.no_grad()
def accuracy(model: nn.Module, data) -> float:
    model.eval()
    right = sum(int((model(t, n).argmax(1) == y).sum()) for t, n, y in batches(*data, size=512, shuffle=False))
    return right / len(data[1])


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.start(args)
    n_train, epochs, hidden = (400, 2, 16) if args.smoke else (5000, 5, 48)
    train_set, test_set = corpus(n_train, args.seed), corpus(2000 if not args.smoke else 200, args.seed + 1)
    print(f"corpus: {n_train} generated reviews, {len(VOCAB)} words, lengths "
          f"{min(map(len, train_set[0]))}..{max(map(len, train_set[0]))}, "
          f"{float(train_set[1].float().mean()):.0%} positive")

    bow = BagOfWords()
    bow_history: list[float] = []
    train(bow, train_set, epochs, 0.05, bow_history, test_set)
    model = fastrnn.convert(Classifier(hidden))
    history: list[float] = []
    train(model, train_set, epochs, 0.01, history, test_set)
    print(f"test accuracy: bidirectional LSTM {history[-1]:.1%}, bag of words {bow_history[-1]:.1%} "
          f"(backend: {model.lstm.last_backend})")
    examples = ["the plot was not good and the acting was bad", "the film was not bad",
                "it was never boring and the music was not very dull and the cast was weak"]
    with torch.no_grad():
        model.eval()
        for text in examples:
            tokens = torch.tensor([[INDEX[w] for w in text.split()]])
            p = model(tokens, torch.tensor([tokens.shape[1]])).softmax(1)[0, 1]
            print(f"  p(positive | {text!r}) = {float(p):.2f}")

    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(range(1, epochs + 1), history, "o-", label="2-layer bidirectional LSTM (fastrnn)")
    ax.plot(range(1, epochs + 1), bow_history, "s--", label="bag of words (logistic regression)")
    ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    ax.set_xticks(range(1, epochs + 1))
    ax.set(xlabel="epoch", ylabel="test accuracy", ylim=(0.4, 1.02),
           title="Sentiment with negation: order matters")
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    png = f"{args.out}/sentiment.png"
    fig.savefig(png, dpi=80)
    results = {"lstm_accuracy": history[-1], "bag_of_words_accuracy": bow_history[-1],
               "lstm_per_epoch": history, "bag_of_words_per_epoch": bow_history,
               "train_reviews": n_train, "epochs": epochs, "picture": png}
    if args.compare:
        results["compare"] = common.compare(lambda: Classifier(hidden),
                                            lambda m: train(m, (train_set[0][:1024], train_set[1][:1024]), 1, 0.01))
    print("wrote", png, common.write_results(args, "sentiment", results))


if __name__ == "__main__":
    main()

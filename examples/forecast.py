"""Time-series forecasting: an LSTM predicts next year's sunspot number.

The series is statsmodels' bundled yearly sunspot activity, 1700-2008 (loaded
from the package, offline). From the previous 24 years the model predicts the
next one; it is trained on the years up to 1940 and tested, one step ahead, on
1941-2008 against the naive forecast "same as last year" (persistence).

    python examples/forecast.py [--compare] [--smoke] [--out DIR]
"""
from __future__ import annotations

import os

import torch
from torch import nn

import common
import fastrnn

WINDOW, SPLIT_YEAR = 24, 1941


def sunspots() -> tuple[torch.Tensor, torch.Tensor]:
    """(years, activity) as float tensors."""
    import statsmodels.api as sm

    data = sm.datasets.sunspots.load_pandas().data
    return torch.tensor(data["YEAR"].values).float(), torch.tensor(data["SUNACTIVITY"].values).float()


def windows(series: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, WINDOW, 1) the years before target y (N,)."""
    x = series.unfold(0, WINDOW, 1)[:-1]
    return x.unsqueeze(-1), series[WINDOW:]


class Forecaster(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1]).squeeze(-1)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.start(args)
    years, activity = sunspots()
    scale = float(activity.max())
    x, y = windows(activity / scale)
    target_years = years[WINDOW:]
    train_rows = target_years < SPLIT_YEAR
    hidden, epochs = (8, 2) if args.smoke else (32, 150)
    model = fastrnn.convert(Forecaster(hidden))
    train(model, x[train_rows], y[train_rows], epochs)

    model.eval()
    with torch.no_grad():
        pred = model(x[~train_rows]) * scale
    truth = y[~train_rows] * scale
    naive = x[~train_rows, -1, 0] * scale  # last year's value
    mae, mae_naive = float((pred - truth).abs().mean()), float((naive - truth).abs().mean())
    test_years = target_years[~train_rows]
    print(f"sunspots {int(years[0])}-{int(years[-1])}: trained on {int(train_rows.sum())} years "
          f"(to {SPLIT_YEAR - 1}), tested one year ahead on {len(truth)} "
          f"(backend {model.lstm.last_backend})")
    print(f"mean absolute error: LSTM {mae:.1f}, persistence {mae_naive:.1f} "
          f"(LSTM/persistence = {mae / mae_naive:.2f})")

    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    shown = years >= 1880  # the end of the training years, then the test years
    ax.plot(years[shown], activity[shown], "k", lw=1.4, label="sunspot number (truth)")
    ax.plot(test_years, pred, "C3o-", lw=1.2, ms=2.5, label=f"LSTM, one year ahead (MAE {mae:.1f})")
    ax.plot(test_years, naive, "C0--", lw=1, label=f"persistence (MAE {mae_naive:.1f})")
    ax.axvline(SPLIT_YEAR - 0.5, color="k", lw=0.6, ls="--")
    ax.text(SPLIT_YEAR - 2, activity.max() * 1.02, "train | test", fontsize=8, ha="center")
    ax.set(xlabel="year", ylabel="yearly sunspot number", title="Forecasting sunspots (statsmodels dataset)", ylim=(0, activity.max() * 1.1))
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    png = os.path.join(args.out, "forecast.png")
    fig.savefig(png, dpi=80)
    results = {"mae_lstm": mae, "mae_persistence": mae_naive, "test_years": len(truth), "picture": png}
    if args.compare:
        results["compare"] = common.compare(lambda: Forecaster(hidden),
                                            lambda m: train(m, x[train_rows], y[train_rows], 5))
    print("wrote", png, common.write_results(args, "forecast", results))


if __name__ == "__main__":
    main()

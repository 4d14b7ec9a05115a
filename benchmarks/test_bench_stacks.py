"""Whole sequences through nn.LSTM / nn.GRU / nn.RNN and their fastrnn twins, padded and packed."""
CELLS = ("lstm", "gru")
CELLS_FULL = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def test_stack(measure, cfg, impl):
    measure(cfg, impl)

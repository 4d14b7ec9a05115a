"""A Python loop of T single-step cell calls (a decoder's pattern): nn.*Cell vs fastrnn's cells."""
CELLS = ("lstm_cell", "gru_cell")
CELLS_FULL = ("lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell")


def test_cell(measure, cfg, impl):
    measure(cfg, impl)

"""nn.Module wrappers: torch.nn's recurrent classes with fastrnn's forward."""
from .cell import GRUCell, LSTMCell, RNNCell
from .rnn import GRU, LSTM, RNN

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]

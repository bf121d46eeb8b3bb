"""Recurrent language models: nn.LSTM and compressor's ON-LSTM (Shen et al. 2019)."""

import torch
from torch import nn

from compressor.models._checks import divides, positive, token_shape
from compressor.nn import ONLSTM


class LanguageModel(nn.Module):
    """Embedding -> ON-LSTM -> decoder. forward(tokens, state=None) returns (logits, state,
    (d_f, d_i)); with logits_only=True just the logits, so the generic training loop, pruning and
    export see one output. Tokens (T, B), or (B, T) with batch_first."""

    def __init__(self, vocab: int, embedding: int = 32, hidden: int = 64, chunk: int = 4,
                 layers: int = 2, dropout: float = 0.1, dropconnect: float = 0.2,
                 batch_first: bool = False, logits_only: bool = False):
        super().__init__()
        self.logits_only = logits_only
        self.embed = nn.Embedding(vocab, embedding)
        self.rnn = ONLSTM(embedding, hidden, layers, chunk_size=chunk, dropconnect=dropconnect,
                          dropout=dropout, batch_first=batch_first)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, tokens, state=None):
        out, state, distances = self.rnn(self.embed(tokens), state)
        logits = self.decoder(out)
        return logits if self.logits_only else (logits, state, distances)


class LSTMLanguageModel(nn.Module):
    """Embedding -> nn.LSTM (batch first) -> dropout -> decoder: (B, T) -> (B, T, V)."""

    def __init__(self, vocab: int, embedding: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding)
        self.rnn = nn.LSTM(embedding, hidden, layers, batch_first=True,
                           dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(tokens))
        return self.decoder(self.dropout(out))


def lstm_lm(*, num_classes: int = 256, feature_shape=(32,), embedding: int = 32,
            hidden: int = 64, layers: int = 2, dropout: float = 0.1) -> LSTMLanguageModel:
    """LSTM LM over a vocabulary of num_classes tokens; input (B, T) with T = feature_shape[0]."""
    token_shape("lstm_lm", feature_shape)
    positive("lstm_lm", num_classes=num_classes, embedding=embedding, hidden=hidden,
             layers=layers)
    return LSTMLanguageModel(num_classes, embedding, hidden, layers, float(dropout))


def onlstm_lm(*, num_classes: int = 256, feature_shape=(32,), embedding: int = 32,
              hidden: int = 64, chunk: int = 4, layers: int = 2, dropout: float = 0.1,
              dropconnect: float = 0.2) -> LanguageModel:
    """ON-LSTM LM over num_classes tokens; (B, T) -> logits (B, T, V)."""
    token_shape("onlstm_lm", feature_shape)
    positive("onlstm_lm", num_classes=num_classes, embedding=embedding, hidden=hidden,
             chunk=chunk, layers=layers)
    divides("onlstm_lm", "hidden", hidden, "chunk", chunk)
    return LanguageModel(num_classes, embedding, hidden, chunk, layers, float(dropout),
                         float(dropconnect), batch_first=True, logits_only=True)

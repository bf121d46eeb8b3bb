"""`compressor onlstm-lm`: train a small ON-LSTM language model on sentences from a toy grammar
with nested clauses, report validation perplexity, check that the fused kernels and the plain
PyTorch reference give the same loss curve from the same seed, and show the tree the master-gate
distances induce for one sentence (Shen et al. 2019, unsupervised parsing)."""

import math
import random
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.config import Config, add_flags, from_args
from compressor.data import Dataset
from compressor.errors import CompressorError
from compressor.models import LanguageModel
from compressor.train import TrainConfig, fit

WORDS = {
    "Det": ["the", "a"], "N": ["dog", "cat", "bird", "man", "woman", "child", "house", "park"],
    "Adj": ["big", "small", "old", "red"], "Vt": ["saw", "liked", "chased", "found"],
    "Vi": ["slept", "ran", "sang"], "Vs": ["said", "thought", "knew"], "P": ["in", "near", "with"],
}


def _phrase(kind: str, depth: int, rng: random.Random) -> list[str]:
    """A phrase of the grammar; past depth 3 only non-recursive rules are used."""
    deep = depth >= 3
    if kind == "S":
        return _phrase("NP", depth + 1, rng) + _phrase("VP", depth + 1, rng)
    if kind == "PP":
        return [rng.choice(WORDS["P"])] + _phrase("NP", depth + 1, rng)
    r = rng.random()
    if kind == "NP":
        if r < 0.2 and not deep:
            return _phrase("NP", depth + 1, rng) + _phrase("PP", depth + 1, rng)
        if r < 0.3 and not deep:
            return [rng.choice(WORDS["Det"]), rng.choice(WORDS["N"]), "that"] + _phrase(
                "VP", depth + 1, rng)
        adj = [rng.choice(WORDS["Adj"])] if r > 0.75 else []
        return [rng.choice(WORDS["Det"]), *adj, rng.choice(WORDS["N"])]
    if r < 0.2 and not deep:
        return [rng.choice(WORDS["Vs"]), "that"] + _phrase("S", depth + 1, rng)
    if r < 0.6:
        return [rng.choice(WORDS["Vt"])] + _phrase("NP", depth + 1, rng)
    return [rng.choice(WORDS["Vi"])]


def make_corpus(tokens: int, seed: int) -> list[str]:
    rng, words = random.Random(seed), []
    while len(words) < tokens:
        words += _phrase("S", 0, rng) + ["<eos>"]
    return words


FLAGS = ("steps", "batch", "bptt", "hidden", "chunk", "layers", "seed", "train_tokens",
         "tolerance")


@dataclass
class OnlstmLmConfig(Config):
    steps: int = field(default=400, metadata={"help": "training steps"})
    batch: int = field(default=16, metadata={"help": "windows per step"})
    bptt: int = field(default=35, metadata={"help": "tokens per window"})
    embedding: int = 32
    hidden: int = field(default=64, metadata={"help": "hidden units per layer"})
    chunk: int = field(default=4, metadata={"help": "ON-LSTM chunk size (divides --hidden)"})
    layers: int = field(default=2, metadata={"help": "ON-LSTM layers"})
    lr: float = 3e-3
    dropout: float = 0.1
    dropconnect: float = 0.2
    train_tokens: int = field(default=60_000, metadata={"help": "tokens of training text"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    tolerance: float = field(default=1e-3, metadata={
        "help": "largest allowed |fused - reference| training loss"})

    def validate(self) -> None:
        for name in ("steps", "batch", "bptt", "embedding", "hidden", "chunk", "layers",
                     "train_tokens"):
            if getattr(self, name) <= 0:
                raise CompressorError(f"onlstm-lm: --{name.replace('_', '-')} must be positive, "
                                      f"got {getattr(self, name)}")
        self.require(self.tolerance >= 0, "tolerance", "must be >= 0")
        if self.hidden % self.chunk:
            raise CompressorError(f"onlstm-lm: --hidden {self.hidden} must be a multiple of "
                                  f"--chunk {self.chunk}")
        if self.train_tokens < self.batch * (self.bptt + 1):
            raise CompressorError("onlstm-lm: --train-tokens must cover one batch of --bptt")


def batchify(ids: torch.Tensor, batch: int) -> torch.Tensor:
    """(T, batch) columns of a token stream, as in the AWD-LSTM / ON-LSTM code."""
    usable = ids.numel() // batch * batch
    return ids[:usable].view(batch, -1).t().contiguous()


def windows(ids: torch.Tensor, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, next-token targets), both (N, bptt): consecutive windows of the stream."""
    n = (ids.numel() - 1) // bptt
    return ids[:n * bptt].view(n, bptt), ids[1:n * bptt + 1].view(n, bptt)


def train_lm(cfg: OnlstmLmConfig, ids: torch.Tensor, vocab: int, fused: bool, label: str):
    """Trains from cfg.seed with compressor's one training loop on independent windows of the
    stream (no hidden state carried between batches); returns (per-step losses, model)."""
    torch.manual_seed(cfg.seed)
    model = LanguageModel(vocab, cfg.embedding, cfg.hidden, cfg.chunk, cfg.layers, cfg.dropout,
                          cfg.dropconnect, batch_first=True)
    model.rnn.use_fused_kernels = fused
    x, y = windows(ids, cfg.bptt)
    data = Dataset("grammar", x, y, x[:cfg.batch], y[:cfg.batch])
    train = TrainConfig(steps=cfg.steps, batch_size=cfg.batch, lr=cfg.lr, grad_clip=0.25,
                        seed=cfg.seed, eval_every=0)
    result = fit(model, data, train, progress=True, desc=label)
    return result.losses, model


@torch.no_grad()
def perplexity(model: LanguageModel, data: torch.Tensor) -> float:
    model.eval()  # data: (B, T) token rows, the model batch-first
    logits, _, _ = model(data[:, :-1])
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())
    return math.exp(loss.item())


def tree_from_distances(words: list[str], dist: list[float]):
    """Top-down greedy split at the largest distance (Shen et al., section 5.2)."""
    if len(words) <= 1:
        return words[0] if words else ""
    split = max(range(1, len(words)), key=lambda i: dist[i])
    left = tree_from_distances(words[:split], dist[:split])
    right = tree_from_distances(words[split:], dist[split:])
    return f"({left} {right})"


def add_arguments(parser):
    add_flags(parser, OnlstmLmConfig, only=FLAGS)
    parser.add_argument("--no-compare", action="store_true", help="skip the reference run")


def run(args) -> int:
    cfg = from_args(OnlstmLmConfig, args, only=FLAGS)
    train_words = make_corpus(cfg.train_tokens, seed=1000 + cfg.seed)
    valid_words = make_corpus(cfg.train_tokens // 10, seed=2000 + cfg.seed)
    vocab = {w: i for i, w in enumerate(sorted(set(train_words) | set(valid_words)))}
    encode = lambda ws: torch.tensor([vocab[w] for w in ws])  # noqa: E731
    train = encode(train_words)
    start = time.perf_counter()
    fused_losses, model = train_lm(cfg, train, len(vocab), True, "fused")
    fused_secs = time.perf_counter() - start
    ppl = perplexity(model, batchify(encode(valid_words), 10).t())
    print(f"ON-LSTM LM ({cfg.layers}x{cfg.hidden}, chunk {cfg.chunk}), {len(vocab)}-word grammar, "
          f"{cfg.steps} steps: train loss {fused_losses[0]:.3f} -> {fused_losses[-1]:.3f}, "
          f"validation perplexity {ppl:.2f} ({fused_secs:.1f} s fused)")
    show_parse(model, vocab, valid_words)
    if args.no_compare:
        return 0
    start = time.perf_counter()
    ref_losses, _ = train_lm(cfg, train, len(vocab), False, "reference")
    ref_secs = time.perf_counter() - start
    diff = max(abs(a - b) for a, b in zip(fused_losses, ref_losses, strict=True))
    print(f"reference run: {ref_secs:.1f} s ({ref_secs / fused_secs:.2f}x the fused time); "
          f"max |fused - reference| training loss over {cfg.steps} steps: {diff:.2e}")
    if diff > cfg.tolerance:
        print(f"FAIL: loss curves differ by more than --tolerance {cfg.tolerance}")
        return 1
    print(f"OK: loss curves agree within {cfg.tolerance}")
    return 0


def show_parse(model: LanguageModel, vocab: dict, words: list[str]) -> None:
    sentence = words[:words.index("<eos>")]
    model.eval()
    with torch.no_grad():
        ids = torch.tensor([vocab[w] for w in sentence])[None, :]
        _, _, (d_f, _) = model(ids)
    print("tree induced by the last layer's master-forget distances: "
          + tree_from_distances(sentence, d_f[-1, 0, :].tolist()))
